//! While a CloudImage exists: look the image up and report what the cloud
//! said. A missing image is reported, never recreated.

use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::conditions::READY;
use super::context::{Context, object_key};
use super::error::Error;
use super::kube_io;
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
    let prev = obj.status.clone().unwrap_or_default();
    let id = &obj.spec.image_id;
    let result: Result<Lookup, Problem> = match ctx.cloud_for(obj).await {
        Ok(cloud) => {
            let started = std::time::Instant::now();
            let r = cloud.get_image(id).await.map_err(Problem::from);
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
            Ok(Action::requeue(ctx.settings.resync))
        }
        Err(p) => {
            ctx.metrics.problem("live", p.reason);
            info!(reason = %p.reason, "image check failed");
            Ok(ctx.retry(obj, p))
        }
    }
}
