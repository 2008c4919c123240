//! The admin endpoints, on two ports: `/livez` and `/readyz` (ready once
//! every watch has listed its CloudImages) for probes, and `/metrics`
//! (OpenMetrics text of `metrics::Metrics`) for scraping.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kube::runtime::reflector::Store;

use crate::crd::CloudImage;
use crate::metrics::Metrics;

async fn readyz(State(stores): State<Vec<Store<CloudImage>>>) -> (StatusCode, &'static str) {
    // A store is readable only after its watch's first complete list.
    let ready = futures::future::join_all(stores.iter().map(|st| {
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

/// Serves `/livez` and `/readyz` on `addr` until `shutdown` resolves.
/// Returns the bound address.
pub async fn serve_health(
    addr: SocketAddr,
    stores: Vec<Store<CloudImage>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(stores);
    serve(addr, app, shutdown).await
}

/// Serves `/metrics` on `addr` until `shutdown` resolves (a port of its own,
/// so it can be bound to loopback or left out while probes stay reachable).
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stores: Vec<Store<CloudImage>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/metrics",
            get(
                |State((m, stores)): State<(Arc<Metrics>, Vec<Store<CloudImage>>)>| async move {
                    m.set_watched(stores.iter().map(|s| s.state().len()).sum());
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                },
            ),
        )
        .with_state((metrics, stores));
    serve(addr, app, shutdown).await
}

async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
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
