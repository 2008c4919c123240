//! The Kubernetes side effects of a reconcile: status writes (server-side
//! apply, skipped when nothing changed), adding and releasing the
//! finalizer, and Events.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, TestOperation};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::warn;

use super::events::{EventSink, Note};
use super::reason::Reason;
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

fn finalizers_path() -> PointerBuf {
    PointerBuf::from_tokens(["metadata", "finalizers"])
}

/// The JSON patch that adds the finalizer to an object whose finalizers are
/// `current`. Its `test` makes it fail (and retry) rather than overwrite a
/// concurrent change of the list.
pub fn add_finalizer_patch(current: &[String]) -> json_patch::Patch {
    let (test, add) = if current.is_empty() {
        (
            TestOperation {
                path: finalizers_path(),
                value: Value::Null,
            },
            AddOperation {
                path: finalizers_path(),
                value: json!([FINALIZER]),
            },
        )
    } else {
        let mut end = finalizers_path();
        end.push_back("-");
        (
            TestOperation {
                path: finalizers_path(),
                value: json!(current),
            },
            AddOperation {
                path: end,
                value: json!(FINALIZER),
            },
        )
    };
    json_patch::Patch(vec![PatchOperation::Test(test), PatchOperation::Add(add)])
}

/// The JSON patch that removes the finalizer at `index`, only if it is still there.
pub fn release_finalizer_patch(index: usize) -> json_patch::Patch {
    let mut path = finalizers_path();
    path.push_back(index);
    json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: path.clone(),
            value: json!(FINALIZER),
        }),
        PatchOperation::Remove(RemoveOperation { path }),
    ])
}

/// Adds the finalizer (see [`add_finalizer_patch`]).
pub async fn add_finalizer(api: &Api<CloudImage>, obj: &CloudImage) -> Result<(), kube::Error> {
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::<()>::Json(add_finalizer_patch(obj.finalizers())),
    )
    .await?;
    Ok(())
}

/// Removes this operator's finalizer, and only it.
pub async fn release_finalizer(api: &Api<CloudImage>, obj: &CloudImage) -> Result<(), kube::Error> {
    let Some(i) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(release_finalizer_patch(i)),
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
    events: &EventSink,
    obj: &K,
    type_: EventType,
    reason: Reason,
    action: &str,
    note: String,
) {
    publish_about(events, &obj.object_ref(&()), type_, reason, action, note).await;
}

/// [`publish`], about an object known by its reference.
pub async fn publish_about(
    events: &EventSink,
    regarding: &ObjectReference,
    type_: EventType,
    reason: Reason,
    action: &str,
    note: String,
) {
    let note = Note {
        type_,
        reason: reason.as_str(),
        action,
        note: truncate(note, 1024),
    };
    if let Err(e) = events.publish(&note, regarding).await {
        warn!(error = %e, %reason, "could not record an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizer_patches_test_before_they_change() {
        assert_eq!(
            serde_json::to_value(add_finalizer_patch(&[])).expect("json"),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
            ])
        );
        assert_eq!(
            serde_json::to_value(add_finalizer_patch(&["x.io/y".to_owned()])).expect("json"),
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["x.io/y"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}
            ])
        );
        assert_eq!(
            serde_json::to_value(release_finalizer_patch(1)).expect("json"),
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"}
            ])
        );
    }
}
