//! The guard of the credentials Secrets: a second controller, over the
//! metadata of Secrets, that keeps the operator's finalizer on a Secret while
//! CloudImages need it and removes it when none does (the rules are in
//! `secret_hold`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::{debug, info, warn};

use super::backoff::{self, Pace};
use super::context::Context;
use super::credentials::SecretSeen;
use super::error::Error;
use super::kube_io;
use super::reason::Reason;
use super::secret_hold::{self, SecretMeta};
use crate::crd::CloudImage;

/// Reconciles one Secret's hold: keeps it while CloudImages need it and
/// releases it when none does, including after the operator was down while
/// the last one went away (every Secret is looked at when the watch starts).
pub async fn guard(secret: Arc<SecretMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    if !SecretSeen::of(&secret.metadata).held {
        return Ok(Action::await_change());
    }
    // The CloudImage caches must be complete before "no user" means anything.
    if !ctx.stores_ready(Duration::from_secs(10)).await {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    match secret_hold::guard_step(&secret, ctx.secret_users(&ns, &name)) {
        secret_hold::GuardStep::NotHeld => Ok(Action::await_change()),
        secret_hold::GuardStep::Keep { users, announce } => {
            if announce && ctx.first_announcement(&secret) {
                kube_io::publish(
                    &ctx.recorder,
                    secret.as_ref(),
                    EventType::Normal,
                    Reason::SecretInUse,
                    "HoldSecret",
                    secret_hold::in_use_note(&users),
                )
                .await;
                info!(namespace = %ns, secret = %name, users = users.len(), "deleted Secret kept while CloudImages need it");
            }
            debug!(namespace = %ns, secret = %name, users = users.len(), "Secret still needed");
            ctx.failures.reset(&guard_key(&ns, &name));
            Ok(Action::requeue(ctx.settings.resync))
        }
        secret_hold::GuardStep::LetGo => {
            // The cache may lag behind a CloudImage created a moment ago: ask
            // the API before letting go.
            let api: Api<CloudImage> = Api::namespaced(ctx.client.clone(), &ns);
            let fresh = api
                .list(&ListParams::default())
                .await
                .map_err(Error::ListCloudImages)?;
            if !secret_hold::users(&ns, &name, fresh.items.iter()).is_empty() {
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            if !ctx.leader.is_leader() {
                return Ok(Action::await_change());
            }
            let rv = secret.resource_version().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            match secret_hold::let_go(&secrets, &name, &rv).await {
                Ok(()) => {}
                // Gone already, or changed since the cache saw it: look again.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Err(e) => return Err(Error::ReleaseSecret(e)),
            }
            ctx.credentials.forget(&ns, &name);
            ctx.forget_announcement(&secret);
            ctx.failures.reset(&guard_key(&ns, &name));
            ctx.metrics.secret_released();
            info!(namespace = %ns, secret = %name, "no CloudImage needs this Secret any more: finalizer removed");
            Ok(Action::await_change())
        }
    }
}

fn guard_key(ns: &str, name: &str) -> String {
    format!("secret:{ns}/{name}")
}

/// Kubernetes API failures of the guard: logged and retried with the fast backoff.
pub fn guard_error_policy(secret: Arc<SecretMeta>, err: &Error, ctx: Arc<Context>) -> Action {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let failures = ctx.failures.record(&guard_key(&ns, &name));
    warn!(namespace = %ns, secret = %name, reason = err.reason(), error = %err, failures, "Secret guard failed");
    Action::requeue(backoff::jittered(
        &ctx.settings.backoff,
        Pace::Fast,
        failures,
        None,
    ))
}
