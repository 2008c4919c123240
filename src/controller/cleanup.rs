//! When a CloudImage is deleted: delete its image in the cloud, and release
//! the finalizer only when the cloud confirmed the image is gone. Cleanup
//! needs only `spec.imageId`, `spec.cloudRef` and the Secret.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::backoff::Pace;
use super::conditions::{self, DELETING};
use super::decide::{self, DeletionStep, Problem};
use super::reconcile::{cloud_for, object_key, retry};
use super::{Context, Error, kube_io};
use crate::cloud::{Deletion, Dialect, Lookup};
use crate::crd::{CloudImage, CloudImageStatus, DeletionPolicy, FINALIZER};

/// After an accepted deletion, how many GET checks before the DELETE is sent again.
const RESEND_AFTER_CHECKS: u32 = 20;

/// The end of a cleanup step.
enum Outcome {
    /// The image is confirmed gone (or retained): release the finalizer.
    Release {
        type_: EventType,
        reason: &'static str,
        note: String,
    },
    /// Not finished: keep the finalizer and report.
    Step(DeletionStep),
}

pub async fn cleanup(
    api: &Api<CloudImage>,
    obj: &CloudImage,
    ctx: &Context,
) -> Result<Action, Error> {
    let prev = obj.status.clone().unwrap_or_default();
    let key = object_key(obj);
    let outcome = decide_step(obj, ctx, &prev, &key).await?;
    match outcome {
        Outcome::Release {
            type_,
            reason,
            note,
        } => {
            kube_io::release_finalizer(api, obj)
                .await
                .map_err(Error::ReleaseFinalizer)?;
            ctx.failures.reset(&key);
            ctx.accepted.reset(&key);
            if reason == "ImageDeleted" {
                ctx.metrics.image_deleted();
            }
            info!(reason, "finalizer released");
            kube_io::publish(&ctx.recorder, obj, type_, reason, "DeleteImage", note).await;
            Ok(Action::await_change())
        }
        Outcome::Step(step) => {
            ctx.metrics.problem("cleanup", step.reason());
            let next = decide::deleting_status(
                &prev,
                obj.metadata.generation,
                &obj.spec.image_id,
                &step,
                Timestamp::now(),
            );
            if decide::reason_changed(&prev, &next, DELETING) {
                let message = next
                    .conditions
                    .iter()
                    .find(|c| c.type_ == DELETING)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                let type_ = if matches!(step, DeletionStep::Failed { .. }) {
                    EventType::Warning
                } else {
                    EventType::Normal
                };
                kube_io::publish(
                    &ctx.recorder,
                    obj,
                    type_,
                    step.reason(),
                    "DeleteImage",
                    message,
                )
                .await;
            }
            kube_io::write_status(api, obj, &next)
                .await
                .map_err(Error::PatchStatus)?;
            info!(
                reason = step.reason(),
                attempts = decide::attempts(&next),
                "image deletion not finished"
            );
            Ok(match &step {
                DeletionStep::Failed { problem, .. } => retry(ctx, obj, problem),
                DeletionStep::Accepted { .. } => {
                    ctx.failures.reset(&key);
                    Action::requeue(ctx.settings.accepted_poll)
                }
                DeletionStep::DryRun(_) | DeletionStep::WaitingForFinalizers(_) => {
                    Action::requeue(ctx.settings.resync)
                }
            })
        }
    }
}

async fn decide_step(
    obj: &CloudImage,
    ctx: &Context,
    prev: &CloudImageStatus,
    key: &str,
) -> Result<Outcome, Error> {
    let id = &obj.spec.image_id;
    if obj.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Outcome::Release {
            type_: EventType::Normal,
            reason: "ImageRetained",
            note: format!("deletionPolicy is Retain: image {id} was left in the cloud untouched"),
        });
    }
    let others: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if !others.is_empty() {
        return Ok(Outcome::Step(DeletionStep::WaitingForFinalizers(others)));
    }
    // Another CloudImage still claims this image: it is not ours alone to
    // delete. Release this object and leave the image to the other claim.
    let Some(claims) = ctx.other_claims(obj).await else {
        let problem = Problem::new(
            "WatchNotSynced",
            "the operator has not listed every watched namespace yet, so it cannot tell whether another CloudImage claims this image; it will retry",
            Pace::Fast,
        );
        return Ok(Outcome::Step(DeletionStep::Failed {
            problem,
            attempted: false,
        }));
    };
    if !claims.is_empty() {
        return Ok(Outcome::Release {
            type_: EventType::Normal,
            reason: "ImageStillClaimed",
            note: format!(
                "image {id} was not deleted: it is still claimed by CloudImage {}",
                claims.join(", ")
            ),
        });
    }
    let cloud = match cloud_for(obj, ctx).await? {
        Ok(c) => c,
        Err(problem) => {
            return Ok(Outcome::Step(DeletionStep::Failed {
                problem,
                attempted: false,
            }));
        }
    };
    let failed = |problem: Problem, attempted: bool| {
        Outcome::Step(DeletionStep::Failed { problem, attempted })
    };

    if ctx.settings.dry_run {
        return Ok(match cloud.get_image(id).await {
            Ok(Lookup::Found(info)) => Outcome::Step(DeletionStep::DryRun(Some(info))),
            Ok(Lookup::NotFound) => Outcome::Step(DeletionStep::DryRun(None)),
            Err(e) => failed(e.into(), false),
        });
    }

    // The cloud accepted an earlier DELETE: confirm with GET until 404. The
    // acceptance is remembered in memory too, so a watch cache that has not
    // caught up with the status never causes a second DELETE. Every
    // RESEND_AFTER_CHECKS checks the DELETE is sent again, in case the
    // cloud's own deletion failed (a repeated DELETE is harmless).
    let accepted = ctx.accepted.count(key) > 0
        || conditions::reason(&prev.conditions, DELETING) == Some("DeletionAccepted");
    if accepted && !ctx.accepted.record(key).is_multiple_of(RESEND_AFTER_CHECKS) {
        return Ok(match cloud.get_image(id).await {
            Ok(Lookup::NotFound) => Outcome::Release {
                type_: EventType::Normal,
                reason: "ImageDeleted",
                note: format!("the cloud no longer lists image {id}: deletion confirmed"),
            },
            Ok(Lookup::Found(info)) => Outcome::Step(DeletionStep::Accepted {
                image: Some(info),
                attempted: false,
            }),
            Err(e) => failed(e.into(), false),
        });
    }

    if cloud.dialect() == Dialect::OpenStack
        && obj.spec.delete_backup
        && decide::attempts(prev) == 0
    {
        let note = "deleteBackup is true, but this cloud is OpenStack Glance, which has no backups behind images: only the image is deleted".to_owned();
        kube_io::publish(
            &ctx.recorder,
            obj,
            EventType::Warning,
            "DeleteBackupIgnored",
            "DeleteImage",
            note,
        )
        .await;
    }
    Ok(match cloud.delete_image(id, obj.spec.delete_backup).await {
        Ok(Deletion::Deleted) => Outcome::Release {
            type_: EventType::Normal,
            reason: "ImageDeleted",
            note: format!("image {id} deleted from the cloud"),
        },
        Ok(Deletion::AlreadyGone) if decide::image_was_seen(prev) => Outcome::Release {
            type_: EventType::Normal,
            reason: "ImageAlreadyGone",
            note: format!("image {id} was already gone from the cloud (404)"),
        },
        Ok(Deletion::AlreadyGone) => Outcome::Release {
            type_: EventType::Warning,
            reason: "ImageNotFound",
            note: format!(
                "image {id} was not found with these credentials (404), so there was nothing to delete. If it exists in a project these credentials cannot see, it was NOT deleted"
            ),
        },
        Ok(Deletion::Accepted) => {
            ctx.accepted.record(key);
            Outcome::Step(DeletionStep::Accepted {
                image: None,
                attempted: true,
            })
        }
        Err(e) => failed(e.into(), true),
    })
}
