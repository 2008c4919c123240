//! While a CloudImage exists: look the image up and report what the cloud
//! said. A missing image is reported, never recreated.

use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{debug, info};

use super::conditions::READY;
use super::context::{Context, object_key};
use super::error::Error;
use super::kube_io;
use super::limit;
use super::pace;
use super::problem::Problem;
use super::reason::Reason;
use super::status;
use crate::cloud::Lookup;
use crate::crd::CloudImage;

pub async fn observe(
    api: &Api<CloudImage>,
    obj: &CloudImage,
    ctx: &Context,
) -> Result<Action, Error> {
    // An object whose status already answers for its generation is looked
    // up by the sweeper, in its second of the resync period: not by its
    // first reconcile in this process (a restart, a new leader), nor again
    // right after a lookup (see `pace`).
    let uid = obj.metadata.uid.as_deref().unwrap_or_default();
    let generation = obj.metadata.generation;
    let settled = pace::settled(obj.status.as_ref(), generation);
    let decision = ctx.seen.decide(
        uid,
        generation,
        settled,
        Instant::now(),
        ctx.settings.resync / 2,
    );
    if decision != pace::Lookup::Now {
        debug!(
            ?decision,
            "the cloud's answer for this generation is known: no lookup now"
        );
        return Ok(Action::await_change());
    }
    let prev = obj.status.clone().unwrap_or_default();
    let id = &obj.spec.image_id;
    let result: Result<Lookup, Problem> = match ctx.cloud_for(obj).await {
        Ok(cloud) => {
            let key = ctx.cloud_key(obj, cloud.as_ref()).await;
            if let Err(wait) = ctx.checks.take(&key, uid, Instant::now()) {
                // Its turn is reserved: no slot is held while waiting.
                return Ok(Action::requeue(wait));
            }
            let started = Instant::now();
            let place = ctx.limits.acquire(&key).await;
            let r = cloud.get_image(id).await;
            place.done(limit::signal_of(&r));
            let r = r.map_err(Problem::from);
            match &r {
                Ok(_) => ctx.seen.answered(uid, generation, started),
                Err(_) => ctx.seen.failed(uid),
            }
            ctx.metrics
                .cloud_call("get", super::cleanup::lookup_outcome(&r), started.elapsed());
            ctx.remember_identity(obj, cloud.as_ref());
            r
        }
        Err(failure) => Err(failure.into_problem()?),
    };
    let next = status::live_status(
        &prev,
        obj.metadata.generation,
        id,
        &result,
        Timestamp::now(),
    );
    if status::reason_changed(&prev, &next, READY) {
        match &result {
            Ok(Lookup::NotFound) => {
                let note = format!(
                    "image {id} was not found in the cloud; the operator reports this and does not recreate images"
                );
                kube_io::publish(
                    &ctx.recorder,
                    obj,
                    EventType::Warning,
                    Reason::ImageNotFound,
                    "GetImage",
                    note,
                )
                .await;
            }
            Err(p) => {
                kube_io::publish(
                    &ctx.recorder,
                    obj,
                    EventType::Warning,
                    p.reason,
                    "GetImage",
                    p.full_message(),
                )
                .await;
            }
            Ok(Lookup::Found(_)) => {}
        }
    }
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    kube_io::write_status(api, obj, &next)
        .await
        .map_err(Error::PatchStatus)?;
    match &result {
        Ok(found) => {
            info!(found = matches!(found, Lookup::Found(_)), "image checked");
            ctx.failures.reset(&object_key(obj));
            // The next lookup comes from the sweeper, in this object's phase.
            Ok(Action::await_change())
        }
        Err(p) => {
            ctx.metrics.problem("live", p.reason);
            info!(reason = %p.reason, "image check failed");
            Ok(ctx.retry(obj, p))
        }
    }
}
