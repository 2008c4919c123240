//! When a CloudImage is deleted: gather the facts, let `plan` decide, make
//! at most one cloud call, let `plan` read its answer, then act — release
//! the finalizer only when the image is confirmed gone (or retained, or left
//! to another claim), else write status and an Event and retry.
//! Cleanup needs only `spec.imageId`, `spec.cloudRef` and the Secret.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::conditions::DELETING;
use super::context::{Context, object_key};
use super::error::Error;
use super::kube_io;
use super::limit;
use super::plan::{self, Answer, Call, Facts, Outcome, Plan, Release};
use super::reason::Reason;
use super::status::{self, DeletionStep};
use crate::crd::{CloudImage, FINALIZER};

pub async fn cleanup(
    api: &Api<CloudImage>,
    obj: &CloudImage,
    ctx: &Context,
) -> Result<Action, Error> {
    let key = object_key(obj);
    let facts = gather(obj, ctx, &key).await?;
    let outcome = match plan::plan(&facts) {
        Plan::Done(outcome) => outcome,
        // Leadership can be lost while a reconcile runs: check before acting.
        Plan::Call(_) if !ctx.leader.is_leader() => return Ok(Action::await_change()),
        Plan::Call(call) => match ctx.cloud_for(obj).await {
            Err(failure) => plan::no_cloud(failure.into_problem()?),
            Ok(cloud) => {
                let id = &obj.spec.image_id;
                let key = ctx.cloud_key(obj, cloud.as_ref()).await;
                let place = ctx.limits.acquire(&key).await;
                let started = std::time::Instant::now();
                let answer = match call {
                    Call::DryRunLookup | Call::ConfirmGone => {
                        let r = cloud.get_image(id).await;
                        place.done(limit::signal_of(&r));
                        Answer::Lookup(r.map_err(Into::into))
                    }
                    Call::Delete => {
                        let attempts = status::attempts(&prev(obj));
                        if let Some(note) =
                            plan::backup_ignored(cloud.dialect(), obj.spec.delete_backup, attempts)
                        {
                            tell(ctx, obj, true, Reason::DeleteBackupIgnored, note).await;
                        }
                        let r = cloud.delete_image(id, obj.spec.delete_backup).await;
                        place.done(limit::signal_of(&r));
                        Answer::Deletion(r.map_err(Into::into))
                    }
                };
                ctx.remember_identity(obj, cloud.as_ref());
                let (operation, outcome) = match &answer {
                    Answer::Lookup(r) => ("get", lookup_outcome(r)),
                    Answer::Deletion(Ok(d)) => ("delete", deletion_outcome(d)),
                    Answer::Deletion(Err(p)) => ("delete", p.reason.as_str()),
                };
                ctx.metrics
                    .cloud_call(operation, outcome, started.elapsed());
                plan::after_call(&facts, answer)
            }
        },
    };
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    match outcome {
        Outcome::Release(release) => released(api, obj, ctx, &key, release).await,
        Outcome::Hold(step) => held(api, obj, ctx, &key, step).await,
    }
}

/// A bounded label for the answer to a GET.
pub fn lookup_outcome(r: &Result<crate::cloud::Lookup, super::problem::Problem>) -> &'static str {
    match r {
        Ok(crate::cloud::Lookup::Found(_)) => "Found",
        Ok(crate::cloud::Lookup::NotFound) => "NotFound",
        Err(p) => p.reason.as_str(),
    }
}

fn deletion_outcome(d: &crate::cloud::Deletion) -> &'static str {
    match d {
        crate::cloud::Deletion::Deleted => "Deleted",
        crate::cloud::Deletion::Accepted => "Accepted",
        crate::cloud::Deletion::AlreadyGone => "AlreadyGone",
    }
}

fn prev(obj: &CloudImage) -> crate::crd::CloudImageStatus {
    obj.status.clone().unwrap_or_default()
}

/// The facts `plan` decides on. The I/O is waiting for the CloudImage
/// caches (to see other claims) and, only when another namespace claims the
/// same image id, learning this object's cloud identity; the acceptance
/// counter moves here.
async fn gather(obj: &CloudImage, ctx: &Context, key: &str) -> Result<Facts, Error> {
    let prev = prev(obj);
    let accepted = status::deletion_accepted(&prev) || ctx.accepted.count(key) > 0;
    let mut claims = ctx.other_claims(obj).await;
    let mut identity_problem = None;
    // Claims in other namespaces count only for the same cloud project:
    // learn this object's identity (a Keystone call, no image call) first.
    if claims.as_ref().is_some_and(|c| c.elsewhere_unknown) {
        match ctx.cloud_for(obj).await {
            Ok(cloud) => match cloud.identify().await {
                Ok(_) => {
                    ctx.remember_identity(obj, cloud.as_ref());
                    claims = ctx.other_claims(obj).await;
                }
                Err(e) => identity_problem = Some(e.into()),
            },
            Err(failure) => identity_problem = Some(failure.into_problem()?),
        }
    }
    Ok(Facts {
        image_id: obj.spec.image_id.clone(),
        policy: obj.spec.deletion_policy,
        other_finalizers: obj
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .cloned()
            .collect(),
        claims,
        identity_problem,
        dry_run: ctx.settings.dry_run,
        accepted,
        accepted_long_ago: prev
            .deletion
            .as_ref()
            .and_then(|d| d.accepted_time.as_ref())
            .is_some_and(|t| {
                k8s_openapi::jiff::Timestamp::now()
                    .duration_since(t.0)
                    .as_secs_f64()
                    >= ctx.settings.stall_after.as_secs_f64()
            }),
        checks_since_accepted: if accepted {
            ctx.accepted.record(key)
        } else {
            0
        },
        image_seen: status::image_was_seen(&prev),
    })
}

async fn released(
    api: &Api<CloudImage>,
    obj: &CloudImage,
    ctx: &Context,
    key: &str,
    release: Release,
) -> Result<Action, Error> {
    kube_io::release_finalizer(api, obj)
        .await
        .map_err(Error::ReleaseFinalizer)?;
    ctx.failures.reset(key);
    ctx.accepted.reset(key);
    ctx.metrics
        .set_blocked(&obj.uid().unwrap_or_default(), None);
    ctx.metrics
        .released(release.reason, obj.metadata.deletion_timestamp.as_ref());
    info!(reason = %release.reason, "finalizer released");
    tell(ctx, obj, release.warning, release.reason, release.note).await;
    Ok(Action::await_change())
}

async fn held(
    api: &Api<CloudImage>,
    obj: &CloudImage,
    ctx: &Context,
    key: &str,
    step: DeletionStep,
) -> Result<Action, Error> {
    let prev = prev(obj);
    if matches!(
        step,
        DeletionStep::Accepted {
            attempted: true,
            ..
        }
    ) {
        // Remembered in memory too, so a cache that has not caught up with
        // the status never causes a second DELETE.
        ctx.accepted.record(key);
    }
    ctx.metrics.problem("cleanup", step.reason());
    ctx.metrics.set_blocked(
        &obj.uid().unwrap_or_default(),
        match &step {
            DeletionStep::Failed { problem, .. } => Some(problem.reason),
            _ => None,
        },
    );
    let next = status::deleting_status(
        &prev,
        obj.metadata.generation,
        &obj.spec.image_id,
        &step,
        Timestamp::now(),
    );
    if status::reason_changed(&prev, &next, DELETING) {
        let message = next
            .conditions
            .iter()
            .find(|c| c.type_ == DELETING)
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let warning = matches!(
            step,
            DeletionStep::Failed { .. } | DeletionStep::Accepted { stalled: true, .. }
        );
        tell(ctx, obj, warning, step.reason(), message).await;
    }
    kube_io::write_status(api, obj, &next)
        .await
        .map_err(Error::PatchStatus)?;
    info!(
        reason = %step.reason(),
        attempts = status::attempts(&next),
        "image deletion not finished"
    );
    Ok(match &step {
        DeletionStep::Failed { problem, .. } => ctx.retry(obj, problem),
        DeletionStep::Accepted { .. } => {
            ctx.failures.reset(key);
            Action::requeue(ctx.settings.accepted_poll)
        }
        DeletionStep::DryRun(_) | DeletionStep::WaitingForFinalizers(_) => {
            Action::requeue(ctx.settings.resync)
        }
    })
}

/// An Event about the deletion of `obj`'s image.
async fn tell(ctx: &Context, obj: &CloudImage, warning: bool, reason: Reason, note: String) {
    let type_ = if warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    kube_io::publish(&ctx.recorder, obj, type_, reason, "DeleteImage", note).await;
}
