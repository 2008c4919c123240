//! Wiring: logging, the Kubernetes client, the startup check, one watch per
//! namespace, and shutdown on SIGTERM / Ctrl-C.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{error, info, warn};

use crate::admin::Metrics;
use crate::cli::{Args, LogFormat};
use crate::cloud::pool::ClientPool;
use crate::controller::backoff::{BackoffConfig, Counts};
use crate::controller::reconcile::{error_policy, reconcile};
use crate::controller::{Context, Settings};
use crate::crd::CloudImage;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error("cannot configure the Kubernetes client: {0}")]
    ClientConfig(#[source] kube::config::InferConfigError),
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "the CloudImage CRD is not served by this cluster; install it first: kubectl apply -f crds/cloudimage.dev_cloudimages.yaml"
    )]
    CrdMissing,
    #[error("cannot list CloudImages (check the operator's RBAC): {0}")]
    ListCloudImages(#[source] kube::Error),
    #[error("cannot listen on --admin-addr {0}: {1}")]
    Admin(std::net::SocketAddr, #[source] std::io::Error),
    #[error("invalid --log-level: {0}")]
    LogFilter(String),
}

pub fn init_logging(args: &Args) -> Result<(), RunError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| RunError::LogFilter(e.to_string()))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn client(args: &Args) -> Result<Client, RunError> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(RunError::Kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(RunError::Kubeconfig)?
        }
        None => kube::Config::infer()
            .await
            .map_err(RunError::ClientConfig)?,
    };
    Client::try_from(config).map_err(RunError::Client)
}

/// Reconcile on what matters to the operator: spec changes (generation),
/// deletion, and finalizer changes; not on its own status writes.
fn relevant_change(obj: &CloudImage) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.metadata.generation.hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    obj.finalizers().hash(&mut h);
    Some(h.finish())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    info!("shutdown requested: finishing reconciles in flight");
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<(), RunError> {
    let client = client(&args).await?;
    match Api::<CloudImage>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(RunError::CrdMissing),
        Err(e) if args.namespaces.is_empty() => return Err(RunError::ListCloudImages(e)),
        // With namespaced RBAC a cluster-wide list is refused; the watches below say more.
        Err(e) => warn!(error = %e, "cannot list CloudImages cluster-wide"),
    }
    let instance = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok());
    let reporter = Reporter {
        controller: "cloudimage-operator".into(),
        instance,
    };
    let settings = Settings {
        dry_run: args.dry_run,
        resync: args.resync_interval,
        accepted_poll: args.accepted_poll_interval,
        backoff: BackoffConfig {
            fast_base: args.retry_fast,
            slow_base: args.retry_slow,
            max: args.retry_max,
        },
    };
    if settings.dry_run {
        warn!(
            "dry run: no image will be deleted; finalizers of deleted CloudImages are kept until dry run is off"
        );
    }

    let apis: Vec<(String, Api<CloudImage>)> = if args.namespaces.is_empty() {
        vec![("*".into(), Api::all(client.clone()))]
    } else {
        args.namespaces
            .iter()
            .map(|ns| (ns.clone(), Api::namespaced(client.clone(), ns)))
            .collect()
    };
    let watches: Vec<_> = apis
        .into_iter()
        .map(|(scope, api)| {
            let (reader, writer) = reflector::store();
            (scope, api, reader, writer)
        })
        .collect();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        clouds: ClientPool::default(),
        failures: Counts::default(),
        settings,
        stores: watches.iter().map(|w| w.2.clone()).collect(),
        metrics: Arc::new(Metrics::default()),
        accepted: Counts::default(),
    });
    let shutdown = shutdown_signal().shared();
    let admin = crate::admin::serve(
        args.admin_addr,
        ctx.metrics.clone(),
        ctx.stores.clone(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| RunError::Admin(args.admin_addr, e))?;
    info!(%admin, "admin endpoints (/livez, /readyz, /metrics) listening");
    let controllers = watches.into_iter().map(|(scope, api, reader, writer)| {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .applied_objects()
            .predicate_filter(relevant_change, Default::default());
        info!(namespace = %scope, concurrency = args.concurrency, "watching CloudImages");
        Controller::for_stream(stream, reader)
            .with_config(ControllerConfig::default().concurrency(args.concurrency))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    warn!(error = %e, "controller event");
                }
            })
    });
    futures::future::join_all(controllers).await;
    info!("stopped");
    Ok(())
}
