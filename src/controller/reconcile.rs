//! The reconcile entry point: dispatches on the finalizer state to `live`
//! (the object exists) or `cleanup` (the object is being deleted).
//!
//! This follows `kube::runtime::finalizer` (same four states, same JSON
//! patches with a `test` op) but does not call it: that helper releases the
//! finalizer whenever cleanup returns `Ok`, while cleanup here has outcomes
//! that must keep the finalizer without being errors (IMS accepted the
//! deletion and is being polled, other finalizers go first, dry run).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{Instrument, info, info_span, warn};

use super::backoff::{self, Pace};
use super::decide::Problem;
use super::{Context, Error, cleanup, credentials, kube_io, live, secrets};
use crate::cloud::ImageService;
use crate::crd::{CloudImage, FINALIZER};

/// A key for per-object state that survives reconciles but not a recreation.
pub fn object_key(obj: &CloudImage) -> String {
    format!(
        "{}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
        obj.uid().unwrap_or_default()
    )
}

pub async fn reconcile(obj: Arc<CloudImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        image_id = %obj.spec.image_id
    );
    ctx.metrics.reconciled();
    dispatch(obj, ctx).instrument(span).await
}

async fn dispatch(obj: Arc<CloudImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<CloudImage> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
    match (obj.metadata.deletion_timestamp.is_some(), has_finalizer) {
        // Deleted before we ever added the finalizer, or already released: nothing of ours to do.
        (true, false) => Ok(Action::await_change()),
        (true, true) => cleanup::cleanup(&api, &obj, &ctx).await,
        // The finalizer comes first, so an object is never deleted unwatched.
        (false, false) => {
            kube_io::add_finalizer(&api, &obj)
                .await
                .map_err(Error::AddFinalizer)?;
            Ok(Action::await_change())
        }
        (false, true) => live::observe(&api, &obj, &ctx).await,
    }
}

/// Paces the retry of a problem for this object.
pub fn retry(ctx: &Context, obj: &CloudImage, problem: &Problem) -> Action {
    let failures = ctx.failures.record(&object_key(obj));
    Action::requeue(backoff::jittered(
        &ctx.settings.backoff,
        problem.pace,
        failures,
        problem.retry_after,
    ))
}

/// Kubernetes API failures: logged and retried with the fast backoff.
pub fn error_policy(obj: Arc<CloudImage>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures.record(&object_key(&obj));
    warn!(namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any(), reason = err.reason(), error = %err, failures, "reconcile failed");
    Action::requeue(backoff::jittered(
        &ctx.settings.backoff,
        Pace::Fast,
        failures,
        None,
    ))
}

/// The image service for `obj`, built from its own namespace's Secret.
/// A problem (bad spec, missing or invalid credentials) is returned as
/// such; only Kubernetes API failures are errors.
pub async fn cloud_for(
    obj: &CloudImage,
    ctx: &Context,
) -> Result<Result<Arc<dyn ImageService>, Problem>, Error> {
    if !crate::crd::is_canonical_image_id(&obj.spec.image_id) {
        return Ok(Err(Problem::new(
            "InvalidSpec",
            format!(
                "spec.imageId `{}` is not a lower-case UUID",
                crate::cloud::error::truncate(obj.spec.image_id.clone(), 64)
            ),
            Pace::Slow,
        )));
    }
    let ns = obj.namespace().unwrap_or_default();
    let secret_name = &obj.spec.cloud_ref.secret_name;
    let current = ctx.secret_meta(&ns, secret_name);
    let (seen, cfg) = credentials::read(
        &ctx.client,
        &ctx.credentials,
        current.as_deref().map(|m| &m.metadata),
        &ns,
        &obj.spec.cloud_ref,
        || ctx.metrics.secret_read(),
    )
    .await;
    // Hold the Secret while this CloudImage needs it (see `secrets`). A
    // Secret already being deleted cannot take a new finalizer.
    if let Some(seen) = seen
        && !seen.held
        && !seen.deleting
    {
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        match secrets::hold(&api, secret_name).await {
            Ok(()) => {
                info!(secret = %secret_name, "holding the credentials Secret while CloudImages need it")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(kube::Error::Api(e)) if e.code == 403 => warn!(
                secret = %secret_name,
                "not allowed to add a finalizer to the credentials Secret (RBAC: `patch` on secrets); deleting it together with its CloudImages will leave them waiting for it"
            ),
            Err(e) => return Err(Error::HoldSecret(e)),
        }
    }
    let cfg = match cfg {
        Ok(cfg) => cfg,
        Err(credentials::CredentialsError::Problem(p)) => return Ok(Err(p)),
        Err(credentials::CredentialsError::Api(e)) => return Err(Error::ReadCredentials(e)),
    };
    Ok(ctx.clouds.get(cfg).map_err(Problem::from))
}
