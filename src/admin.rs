//! The admin endpoints for probes and scraping: `/livez`, `/readyz` (ready
//! once every watch has listed its CloudImages) and `/metrics` (OpenMetrics
//! text of `metrics::Metrics`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::runtime::reflector::Store;

use crate::crd::CloudImage;
use crate::metrics::Metrics;

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
            get(|State(s): State<AdminState>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.render(),
                )
            }),
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
