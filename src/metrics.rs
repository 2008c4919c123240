//! What the operator counts and times, in Prometheus' registry types
//! (`prometheus-client`), rendered as OpenMetrics text by `admin`. Labels are
//! bounded: a phase name and a [`Reason`].

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::controller::reason::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    phase: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

fn call_histogram() -> Histogram {
    // 5 ms .. ~40 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

fn reconcile_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn release_histogram() -> Histogram {
    // 50 ms .. ~7 h
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_duration: Histogram,
    images_deleted: Counter,
    problems: Family<ProblemLabels, Counter>,
    released: Family<ReleaseLabels, Histogram, fn() -> Histogram>,
    secret_reads: Counter,
    secrets_released: Counter,
    leader: prometheus_client::metrics::gauge::Gauge,
    cloud_calls: Family<CallLabels, Counter>,
    cloud_call_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    blocked: Family<ReleaseLabels, prometheus_client::metrics::gauge::Gauge>,
    blocked_by: std::sync::Mutex<std::collections::HashMap<String, Reason>>,
    watched: prometheus_client::metrics::gauge::Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Counter::default();
        let reconcile_duration = reconcile_histogram();
        let images_deleted = Counter::default();
        let problems = Family::<ProblemLabels, Counter>::default();
        let released = Family::<ReleaseLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            release_histogram,
        );
        let secret_reads = Counter::default();
        let secrets_released = Counter::default();
        let leader = prometheus_client::metrics::gauge::Gauge::default();
        let cloud_calls = Family::<CallLabels, Counter>::default();
        let cloud_call_duration =
            Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                call_histogram,
            );
        let blocked = Family::<ReleaseLabels, prometheus_client::metrics::gauge::Gauge>::default();
        let watched = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "cloudimage_cloud_requests",
            "Calls to the image service, by operation (get, delete) and outcome (a Deletion/Lookup kind or a reason)",
            cloud_calls.clone(),
        );
        registry.register_with_unit(
            "cloudimage_cloud_request_duration",
            "How long a call to the image service took, authentication included",
            Unit::Seconds,
            cloud_call_duration.clone(),
        );
        registry.register(
            "cloudimage_deletions_blocked",
            "CloudImages being deleted whose last attempt failed, by reason",
            blocked.clone(),
        );
        registry.register(
            "cloudimage_objects_watched",
            "CloudImages in the operator's caches",
            watched.clone(),
        );
        registry.register(
            "cloudimage_leader",
            "1 while this process is the leader and acts, 0 while it stands by",
            leader.clone(),
        );
        registry.register(
            "cloudimage_reconciles",
            "Reconciles run",
            reconciles.clone(),
        );
        registry.register_with_unit(
            "cloudimage_reconcile_duration",
            "How long one reconcile took, cloud calls included",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "cloudimage_images_deleted",
            "Images confirmed deleted in the cloud",
            images_deleted.clone(),
        );
        registry.register(
            "cloudimage_problems",
            "Failed or held steps, by phase and reason",
            problems.clone(),
        );
        registry.register_with_unit(
            "cloudimage_delete_to_release",
            "From a CloudImage's deletion timestamp to the release of its finalizer, by how it ended",
            Unit::Seconds,
            released.clone(),
        );
        registry.register(
            "cloudimage_secret_reads",
            "GETs of credentials Secrets (the parsed entry is cached per Secret version)",
            secret_reads.clone(),
        );
        registry.register(
            "cloudimage_secrets_released",
            "Credentials Secrets whose finalizer was removed because no CloudImage needs them",
            secrets_released.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_duration,
            images_deleted,
            problems,
            released,
            secret_reads,
            secrets_released,
            leader,
            cloud_calls,
            cloud_call_duration,
            blocked,
            blocked_by: Default::default(),
            watched,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and how long it took.
    pub fn reconciled(&self, took: Duration) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    /// A finalizer was released with `reason`; `deleted_at` is the object's
    /// deletion timestamp.
    pub fn released(&self, reason: Reason, deleted_at: Option<&Time>) {
        if reason == Reason::ImageDeleted {
            self.images_deleted.inc();
        }
        if let Some(t) = deleted_at {
            let since = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            self.released
                .get_or_create(&ReleaseLabels {
                    reason: reason.as_str(),
                })
                .observe(since.as_secs_f64().max(0.0));
        }
    }

    /// Counts a problem seen in `phase` (`live` or `cleanup`).
    pub fn problem(&self, phase: &'static str, reason: Reason) {
        self.problems
            .get_or_create(&ProblemLabels {
                phase,
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a GET of a credentials Secret (a cache miss).
    pub fn secret_read(&self) {
        self.secret_reads.inc();
    }

    /// Counts a Secret let go by the guard (its finalizer removed).
    pub fn secret_released(&self) {
        self.secrets_released.inc();
    }

    /// Counts one call to the image service.
    pub fn cloud_call(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.cloud_calls
            .get_or_create(&CallLabels { operation, outcome })
            .inc();
        self.cloud_call_duration
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }

    /// Whether the deletion of the object `uid` is blocked now, and by what.
    pub fn set_blocked(&self, uid: &str, reason: Option<Reason>) {
        let mut by = self.blocked_by.lock().unwrap_or_else(|p| p.into_inner());
        let before = match reason {
            Some(r) => by.insert(uid.to_owned(), r),
            None => by.remove(uid),
        };
        if before == reason {
            return;
        }
        if let Some(b) = before {
            self.blocked
                .get_or_create(&ReleaseLabels { reason: b.as_str() })
                .dec();
        }
        if let Some(r) = reason {
            self.blocked
                .get_or_create(&ReleaseLabels { reason: r.as_str() })
                .inc();
        }
    }

    /// How many CloudImages the caches hold.
    pub fn set_watched(&self, n: usize) {
        self.watched.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Whether this process leads now.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot render metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_openmetrics_text() {
        let m = Metrics::default();
        m.reconciled(Duration::from_millis(3));
        m.released(
            Reason::ImageDeleted,
            Some(&Time(k8s_openapi::jiff::Timestamp::now())),
        );
        m.released(Reason::ImageRetained, None);
        m.problem("cleanup", Reason::Protected);
        m.problem("cleanup", Reason::Protected);
        m.secret_read();
        m.cloud_call("delete", "Deleted", Duration::from_millis(20));
        m.set_blocked("u1", Some(Reason::Protected));
        m.set_blocked("u2", Some(Reason::Protected));
        m.set_blocked("u1", Some(Reason::InUse));
        m.set_blocked("u2", None);
        let text = m.render();
        assert!(
            text.contains("cloudimage_deletions_blocked{reason=\"Protected\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("cloudimage_deletions_blocked{reason=\"InUse\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "cloudimage_cloud_requests_total{operation=\"delete\",outcome=\"Deleted\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("cloudimage_reconciles_total 1\n"), "{text}");
        assert!(
            text.contains("cloudimage_images_deleted_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cloudimage_problems_total{phase=\"cleanup\",reason=\"Protected\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("cloudimage_secret_reads_total 1\n"), "{text}");
        assert!(
            text.contains("cloudimage_reconcile_duration_seconds_count 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "cloudimage_delete_to_release_seconds_count{reason=\"ImageDeleted\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
