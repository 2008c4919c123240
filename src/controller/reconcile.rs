//! The reconcile entry point: dispatches on the finalizer state to `live`
//! (the object exists) or `cleanup` (the object is being deleted).
//!
//! This follows `kube::runtime::finalizer` (same four states, same JSON
//! patches with a `test` op) but does not call it: that helper releases the
//! finalizer whenever cleanup returns `Ok`, while cleanup here has outcomes
//! that must keep the finalizer without being errors (IMS accepted the
//! deletion and is being polled, other finalizers go first, dry run).

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{Instrument, info_span, warn};

use super::backoff::{self, Pace};
use super::context::{Context, object_key};
use super::error::Error;
use super::{cleanup, kube_io, live};
use crate::crd::{CloudImage, FINALIZER};

pub async fn reconcile(obj: Arc<CloudImage>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = info_span!(
        "reconcile",
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
        image_id = %obj.spec.image_id
    );
    // A standby acts on nothing; becoming the leader reconciles everything.
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    // This namespace's share of the slots is taken: give the slot back at
    // once; a slot of this namespace freeing wakes this object (the requeue
    // is only a safety net).
    let Some(_slot) = ctx.slots.take(&obj) else {
        return Ok(Action::requeue(std::time::Duration::from_secs(10)));
    };
    let started = std::time::Instant::now();
    let result = dispatch(obj, ctx.clone()).instrument(span).await;
    ctx.metrics.reconciled(started.elapsed());
    result
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
