//! Leader election with a `coordination.k8s.io/v1` Lease, so two replicas can
//! run and only one reconciles and writes.
//!
//! The rules, as client-go's leader election has them:
//! - a Lease held by nobody (no holder) is taken at once;
//! - a Lease held by another is taken once its `renewTime` has not changed
//!   for `leaseDurationSeconds`, measured on this process's own clock from
//!   when the record was first seen (no trust in other nodes' clocks);
//! - the holder renews every `retry_period`; every write carries the
//!   `resourceVersion` it read, so two candidates cannot both win;
//! - a holder that has not renewed for `renew_deadline` (shorter than the
//!   lease) stops acting at once, before its lease can run out and another
//!   take over: there are never two writers;
//! - on shutdown the holder clears the holder so a standby takes over at once.
//!
//! The decision is the pure [`decide`]; the loop around it does the I/O.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

/// Who leads, as seen by this process. Without leader election it always leads.
#[derive(Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// Without election, the sender lives as long as any copy.
    _always: Option<Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// Leader election off: this process always leads.
    pub fn always() -> Leadership {
        let (tx, rx) = watch::channel(true);
        Leadership {
            rx,
            _always: Some(Arc::new(tx)),
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Yields each time this process becomes the leader (and once at the
    /// start if it already is).
    pub fn gained(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
        let rx = self.rx.clone();
        futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if first && *rx.borrow_and_update() {
                return Some(((), (rx, false)));
            }
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), (rx, false)));
                }
            }
        })
    }
}

/// How the election runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    /// This process, as written into the Lease (pod name and a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// The election running in the background.
pub struct Handle {
    pub leadership: Leadership,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Handle {
    /// Stops campaigning and, if this process holds the Lease, releases it
    /// so a standby takes over at once.
    pub async fn release(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// What the loop does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create,
    /// Write ourselves as holder (a free or expired Lease).
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live Lease: wait.
    Wait,
}

/// What the loop remembers of the Lease it last saw held by another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Holder and renew time, as read.
    pub record: (String, String),
    /// When this process first saw that record.
    pub since: Instant,
}

/// The next step, given the Lease as read (if any), our identity, what was
/// observed before, and now.
pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    observed: Option<&Observed>,
    default_duration: Duration,
    now: Instant,
) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Step::Acquire;
    }
    if holder == me {
        return Step::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    let record = record_of(spec);
    match observed {
        Some(o) if o.record == record && now.duration_since(o.since) >= duration => Step::Acquire,
        _ => Step::Wait,
    }
}

fn record_of(spec: &LeaseSpec) -> (String, String) {
    (
        spec.holder_identity.clone().unwrap_or_default(),
        spec.renew_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
    )
}

fn held_by(cfg: &Config, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: i32::try_from(cfg.lease_duration.as_secs()).ok(),
        acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Starts campaigning. `on_change` is told each change of leadership (for a metric).
pub fn spawn(
    client: kube::Client,
    cfg: Config,
    on_change: Arc<dyn Fn(bool) + Send + Sync>,
) -> Handle {
    let (tx, rx) = watch::channel(false);
    let (stop, mut stopped) = oneshot::channel();
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let task = tokio::spawn(async move {
        let mut observed: Option<Observed> = None;
        // When the last successful renewal (or acquisition) was sent.
        let mut renewed_at: Option<Instant> = None;
        let mut leading = false;
        info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "leader election: campaigning");
        loop {
            let attempt = Instant::now();
            match tokio::time::timeout(cfg.retry_period, round(&api, &cfg, &mut observed)).await {
                Ok(Ok(true)) => renewed_at = Some(attempt),
                Ok(Ok(false)) => renewed_at = None,
                Ok(Err(e)) => debug!(error = %e, "leader election: Lease call failed"),
                Err(_) => debug!("leader election: Lease call timed out"),
            }
            let now_leading = renewed_at.is_some_and(|t| t.elapsed() < cfg.renew_deadline);
            if now_leading != leading {
                leading = now_leading;
                if leading {
                    info!(identity = %cfg.identity, "leader election: leading");
                } else {
                    warn!(identity = %cfg.identity, "leader election: not leading (lost the Lease or could not renew it in time); stopped acting");
                }
                let _ = tx.send(leading);
                on_change(leading);
            }
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(cfg.retry_period) => {}
            }
        }
        // Stop acting first, then hand over.
        let _ = tx.send(false);
        on_change(false);
        if leading {
            match tokio::time::timeout(cfg.retry_period, release(&api, &cfg)).await {
                Ok(Ok(())) => info!(identity = %cfg.identity, "leader election: Lease released"),
                Ok(Err(e)) => warn!(error = %e, "leader election: could not release the Lease"),
                Err(_) => warn!("leader election: releasing the Lease timed out"),
            }
        }
    });
    Handle {
        leadership: Leadership { rx, _always: None },
        stop,
        task,
    }
}

/// One round: read the Lease and take the step. `Ok(true)` when we hold it
/// after this round.
async fn round(
    api: &Api<Lease>,
    cfg: &Config,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let spec = current.as_ref().and_then(|l| l.spec.as_ref());
    if let Some(spec) = spec {
        let record = record_of(spec);
        if observed.as_ref().is_none_or(|o| o.record != record) {
            *observed = Some(Observed {
                record,
                since: Instant::now(),
            });
        }
    }
    match decide(
        spec,
        &cfg.identity,
        observed.as_ref(),
        cfg.lease_duration,
        Instant::now(),
    ) {
        Step::Wait => Ok(false),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(held_by(cfg, 0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        step @ (Step::Acquire | Step::Renew) => {
            let Some(mut lease) = current else {
                return Ok(false);
            };
            let old = lease.spec.clone().unwrap_or_default();
            lease.spec = Some(if step == Step::Renew {
                held_by(
                    cfg,
                    old.lease_transitions.unwrap_or(0),
                    old.acquire_time.clone(),
                )
            } else {
                held_by(
                    cfg,
                    old.lease_transitions.unwrap_or(0).saturating_add(1),
                    None,
                )
            });
            // The resourceVersion read above makes this a compare-and-swap.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

async fn release(api: &Api<Lease>, cfg: &Config) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
    api.replace(&cfg.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renew: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renew.parse().expect("time"))),
            ..Default::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_or_free_lease_is_taken_and_our_own_is_renewed() {
        let now = Instant::now();
        assert_eq!(decide(None, "me", None, D, now), Step::Create);
        let free = spec(None, "2026-01-01T00:00:00Z");
        assert_eq!(decide(Some(&free), "me", None, D, now), Step::Acquire);
        let mine = spec(Some("me"), "2026-01-01T00:00:00Z");
        assert_eq!(decide(Some(&mine), "me", None, D, now), Step::Renew);
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_stood_still_for_the_lease_duration() {
        let theirs = spec(Some("them"), "2026-01-01T00:00:00Z");
        let start = Instant::now();
        let seen = Observed {
            record: record_of(&theirs),
            since: start,
        };
        assert_eq!(
            decide(
                Some(&theirs),
                "me",
                Some(&seen),
                D,
                start + Duration::from_secs(14)
            ),
            Step::Wait
        );
        assert_eq!(
            decide(
                Some(&theirs),
                "me",
                Some(&seen),
                D,
                start + Duration::from_secs(15)
            ),
            Step::Acquire
        );
        // A renewal (new record) restarts the clock, whatever the clocks say.
        let renewed = spec(Some("them"), "2025-01-01T00:00:00Z");
        assert_eq!(
            decide(
                Some(&renewed),
                "me",
                Some(&seen),
                D,
                start + Duration::from_secs(60)
            ),
            Step::Wait
        );
        // Never seen before: wait, even if the timestamp looks old.
        assert_eq!(decide(Some(&theirs), "me", None, D, start), Step::Wait);
    }
}
