//! The admin endpoints for probes and scraping: `/livez`, `/readyz` (ready
//! once every watch has listed its CloudImages) and `/metrics` (Prometheus
//! text format, bounded labels only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::runtime::reflector::Store;

use crate::crd::CloudImage;

/// Counters of what the operator did. Labels are `reason()` strings only.
#[derive(Default)]
pub struct Metrics {
    reconciles: AtomicU64,
    images_deleted: AtomicU64,
    secret_reads: AtomicU64,
    secrets_released: AtomicU64,
    problems: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn reconciled(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub fn image_deleted(&self) {
        self.images_deleted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a GET of a credentials Secret (a cache miss).
    pub fn secret_read(&self) {
        self.secret_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Secret let go by the guard (its finalizer removed).
    pub fn secret_released(&self) {
        self.secrets_released.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a problem seen in `phase` (`live` or `cleanup`) with `reason`.
    pub fn problem(&self, phase: &'static str, reason: &'static str) {
        let mut m = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((phase, reason)).or_insert(0) += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP cloudimage_reconciles_total Reconciles run.\n# TYPE cloudimage_reconciles_total counter\n");
        out.push_str(&format!(
            "cloudimage_reconciles_total {}\n",
            self.reconciles.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP cloudimage_images_deleted_total Images confirmed deleted in the cloud.\n# TYPE cloudimage_images_deleted_total counter\n");
        out.push_str(&format!(
            "cloudimage_images_deleted_total {}\n",
            self.images_deleted.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP cloudimage_secret_reads_total GETs of credentials Secrets (the parsed entry is cached per Secret version).\n# TYPE cloudimage_secret_reads_total counter\n");
        out.push_str(&format!(
            "cloudimage_secret_reads_total {}\n",
            self.secret_reads.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP cloudimage_secrets_released_total Credentials Secrets whose finalizer was removed because no CloudImage needs them.\n# TYPE cloudimage_secrets_released_total counter\n");
        out.push_str(&format!(
            "cloudimage_secrets_released_total {}\n",
            self.secrets_released.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP cloudimage_problems_total Failed or held steps, by phase and reason.\n# TYPE cloudimage_problems_total counter\n");
        let m = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        for ((phase, reason), n) in m.iter() {
            out.push_str(&format!(
                "cloudimage_problems_total{{phase=\"{phase}\",reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    stores: Vec<Store<CloudImage>>,
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, &'static str) {
    // A store is readable only after its watch's first complete list.
    let ready = futures::future::join_all(s.stores.iter().map(|st| {
        let st = st.clone();
        async move {
            tokio::time::timeout(std::time::Duration::from_millis(10), st.wait_until_ready())
                .await
                .is_ok()
        }
    }))
    .await
    .into_iter()
    .all(|r| r);
    if ready {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet\n")
    }
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stores: Vec<Store<CloudImage>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.metrics.render() }),
        )
        .with_state(AdminState { metrics, stores });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.reconciled();
        m.image_deleted();
        m.problem("cleanup", "Protected");
        m.problem("cleanup", "Protected");
        let text = m.render();
        assert!(text.contains("cloudimage_reconciles_total 1\n"));
        assert!(text.contains("cloudimage_images_deleted_total 1\n"));
        assert!(
            text.contains("cloudimage_problems_total{phase=\"cleanup\",reason=\"Protected\"} 2\n")
        );
    }
}
