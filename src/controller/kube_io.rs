//! The Kubernetes side effects of a reconcile: status writes (server-side
//! apply, skipped when nothing changed), adding and releasing the
//! finalizer, and Events.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cloud::error::truncate;
use crate::crd::{CloudImage, CloudImageStatus, FINALIZER};

pub const FIELD_MANAGER: &str = "cloudimage-operator";

/// Writes `status` unless it equals what the object already has.
pub async fn write_status(
    api: &Api<CloudImage>,
    obj: &CloudImage,
    status: &CloudImageStatus,
) -> Result<(), kube::Error> {
    if obj.status.as_ref() == Some(status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "cloudimage.dev/v1alpha1",
        "kind": "CloudImage",
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Adds the finalizer; the JSON patch's `test` makes it fail (and retry)
/// rather than overwrite a concurrent change of the finalizer list.
pub async fn add_finalizer(api: &Api<CloudImage>, obj: &CloudImage) -> Result<(), kube::Error> {
    let patch = if obj.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": obj.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(())
}

/// Removes this operator's finalizer, and only it.
pub async fn release_finalizer(api: &Api<CloudImage>, obj: &CloudImage) -> Result<(), kube::Error> {
    let Some(i) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": FINALIZER},
        {"op": "remove", "path": path}
    ]))
    .map_err(kube::Error::SerdeError)?;
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Already gone: someone else released it and the object went away.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Records an Event about `obj` (a CloudImage, or a Secret the operator
/// holds). A failure to record is logged, not fatal: the status carries the
/// same information.
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1024)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "could not record an Event");
    }
}
