//! Wiring: logging, the Kubernetes client, the startup check, one watch per
//! namespace, and shutdown on SIGTERM / Ctrl-C.

use std::sync::Arc;

use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::utils::Predicate;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{error, info, warn};

use crate::cli::{Args, LogFormat};
use crate::cloud::EgressPolicy;
use crate::cloud::pool::ClientPool;
use crate::controller::backoff::{BackoffConfig, Counts};
use crate::controller::context::{Context, NamespaceSlots, Settings, object_key};
use crate::controller::events::{EventSink, Reporter};
use crate::controller::guard::{guard, guard_error_policy};
use crate::controller::reconcile::{error_policy, reconcile};
use crate::controller::secret_hold::{self as secrets, SecretMeta};
use crate::crd::CloudImage;
use crate::leader::Leadership;
use crate::metrics::Metrics;

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
    #[error("cannot listen on {0} {1}: {2}")]
    Listen(&'static str, std::net::SocketAddr, #[source] std::io::Error),
    #[error("invalid --log-level: {0}")]
    LogFilter(String),
    #[error("invalid flags: {0}")]
    Flags(String),
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

/// Drops from a cached CloudImage what no reconcile reads.
fn trim_cached(obj: &mut CloudImage) {
    obj.metadata.managed_fields = None;
    if let Some(a) = obj.metadata.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Whether a listed object needs no reconcile now: it has the finalizer,
/// is not being deleted, and its status holds the cloud's answer for its
/// generation (see `pace::settled`).
fn answered(obj: &CloudImage) -> bool {
    live_and_held(obj)
        && crate::controller::pace::settled(obj.status.as_ref(), obj.metadata.generation)
}

/// Not being deleted, and carrying the operator's finalizer.
fn live_and_held(obj: &CloudImage) -> bool {
    obj.metadata.deletion_timestamp.is_none()
        && obj.finalizers().iter().any(|f| f == crate::crd::FINALIZER)
}

/// Whether an object is being deleted, as a predicate value.
fn being_deleted(obj: &CloudImage) -> Option<u64> {
    Some(u64::from(obj.metadata.deletion_timestamp.is_some()))
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
    args.validate().map_err(RunError::Flags)?;
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
    let instance: Option<String> = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok());
    let reporter = Reporter {
        controller: "cloudimage-operator".into(),
        instance: instance.clone(),
    };
    let settings = Settings {
        dry_run: args.dry_run,
        resync: args.resync_interval,
        accepted_poll: args.accepted_poll_interval,
        stall_after: args.deletion_stall_after,
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

    let scopes: Vec<(String, Api<CloudImage>, Api<SecretMeta>)> = if args.namespaces.is_empty() {
        vec![(
            "*".into(),
            Api::all(client.clone()),
            Api::all(client.clone()),
        )]
    } else {
        args.namespaces
            .iter()
            .map(|ns| {
                (
                    ns.clone(),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect()
    };
    let watches: Vec<Watch> = scopes
        .into_iter()
        .map(|(scope, cimgs, secrets)| Watch::new(scope, cimgs, secrets))
        .collect();
    let metrics = Arc::new(Metrics::default());
    let election = if args.leader_elect {
        let identity = format!(
            "{}_{:08x}",
            instance
                .clone()
                .unwrap_or_else(|| "cloudimage-operator".into()),
            rand::random::<u32>()
        );
        let m = metrics.clone();
        Some(crate::leader::spawn(
            client.clone(),
            crate::leader::Config {
                namespace: args.leader_election_namespace.clone(),
                name: args.leader_election_id.clone(),
                identity,
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry_period: args.retry_period,
            },
            Arc::new(move |leading| m.set_leader(leading)),
        ))
    } else {
        metrics.set_leader(true);
        None
    };
    let leadership = election
        .as_ref()
        .map(|e| e.leadership.clone())
        .unwrap_or_else(Leadership::always);
    let ctx = Arc::new(Context {
        leader: leadership.clone(),
        recorder: EventSink::new(client.clone(), reporter),
        client: client.clone(),
        clouds: ClientPool::new(
            crate::cloud::pool::DEFAULT_CAPACITY,
            crate::cloud::pool::DEFAULT_TTL,
            EgressPolicy {
                allow: args.allow_cidrs.clone(),
                deny: args.deny_cidrs.clone(),
                refuse_insecure: args.refuse_insecure,
            },
        ),
        failures: Counts::default(),
        settings,
        stores: watches.iter().map(|w| w.cimgs.0.clone()).collect(),
        metrics,
        accepted: Counts::default(),
        secret_stores: watches.iter().map(|w| w.secrets.0.clone()).collect(),
        credentials: Default::default(),
        announced: Default::default(),
        identities: Default::default(),
        insecure_warned: Default::default(),
        checks: crate::controller::pace::Buckets::new(args.check_rate),
        limits: crate::controller::limit::Limits::new(usize::from(args.concurrency)),
        seen: Default::default(),
        slots: NamespaceSlots::new(
            usize::from(args.concurrency),
            args.namespace_slots(),
            watches
                .iter()
                .map(|w| (w.scope.clone(), w.requeue.0.clone()))
                .collect(),
        ),
    });
    let shutdown = shutdown_signal().shared();
    let health = crate::admin::serve_health(args.health_addr, ctx.stores.clone(), shutdown.clone())
        .await
        .map_err(|e| RunError::Listen("--health-addr", args.health_addr, e))?;
    info!(%health, "health endpoints (/livez, /readyz) listening");
    match args.metrics_addr.0 {
        Some(addr) => {
            let metrics = crate::admin::serve_metrics(
                addr,
                ctx.metrics.clone(),
                ctx.stores.clone(),
                shutdown.clone(),
            )
            .await
            .map_err(|e| RunError::Listen("--metrics-addr", addr, e))?;
            info!(%metrics, "metrics endpoint (/metrics) listening");
        }
        None => info!("metrics endpoint off (--metrics-addr off)"),
    }
    let controllers = watches.into_iter().flat_map(|w| {
        info!(namespace = %w.scope, concurrency = args.concurrency, "watching CloudImages and the metadata of Secrets");
        w.run(
            ctx.clone(),
            args.concurrency,
            args.label_selector.clone(),
            shutdown.clone(),
        )
    });
    futures::future::join_all(controllers).await;
    // Reconciles have finished: hand the Lease over at once.
    if let Some(e) = election {
        e.release().await;
    }
    info!("stopped");
    Ok(())
}

/// The watches of one scope (all namespaces, or one): CloudImages, and the
/// metadata of Secrets, each with its cache. Two controllers run on them:
/// the CloudImage reconciler, and the guard of the credentials Secrets.
struct Watch {
    scope: String,
    /// Requeues CloudImages: a changed Secret's users, a namespace's waiters.
    requeue: (
        mpsc::UnboundedSender<ObjectRef<CloudImage>>,
        mpsc::UnboundedReceiver<ObjectRef<CloudImage>>,
    ),
    cimgs: (Store<CloudImage>, Writer<CloudImage>, Api<CloudImage>),
    // An `Api` of metadata: its watch asks for metadata only, never data.
    secrets: (Store<SecretMeta>, Writer<SecretMeta>, Api<SecretMeta>),
}

impl Watch {
    fn new(scope: String, cimgs: Api<CloudImage>, secrets: Api<SecretMeta>) -> Watch {
        let (ci_reader, ci_writer) = reflector::store();
        let (s_reader, s_writer) = reflector::store();
        Watch {
            scope,
            requeue: mpsc::unbounded(),
            cimgs: (ci_reader, ci_writer, cimgs),
            secrets: (s_reader, s_writer, secrets),
        }
    }

    /// The two controllers of this scope, running until `shutdown`.
    ///
    /// Each watch applies its events to its cache itself (what
    /// `WatchStreamExt::reflect` does) so it can compare an object with its
    /// cached previous version first, and so that whatever it triggers runs
    /// only after the cache holds the new version.
    fn run(
        self,
        ctx: Arc<Context>,
        concurrency: u16,
        label_selector: Option<String>,
        shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
    ) -> Vec<futures::future::BoxFuture<'static, ()>> {
        let (ci_reader, mut ci_writer, ci_api) = self.cimgs;
        let (s_reader, mut s_writer, s_api) = self.secrets;
        // A changed Secret requeues the CloudImages that use it.
        let (requeue_tx, requeue_rx) = self.requeue;
        let sweep_tx = requeue_tx.clone();
        // A CloudImage released, gone or moved to another Secret: its Secret's guard looks again.
        let (recheck_tx, recheck_rx) = mpsc::unbounded::<ObjectRef<SecretMeta>>();
        // A relisted CloudImage watch may have missed deletions: every guard looks again.
        let (recheck_all_tx, recheck_all_rx) = mpsc::unbounded::<()>();

        // Pages of 100 objects when listing: a page is read whole before it
        // is decoded, and with managed fields a page of 500 is megabytes.
        let cimg_watch_config = match &label_selector {
            Some(sel) => watcher::Config::default().labels(sel),
            None => watcher::Config::default(),
        }
        .page_size(100);
        let cimg_events = {
            let reader = ci_reader.clone();
            let ctx = ctx.clone();
            watcher(ci_api, cimg_watch_config.clone())
                .default_backoff()
                // The cache keeps what the operator reads, not the managed
                // fields or `kubectl apply`'s copy of the object.
                .modify(trim_cached)
                .inspect_ok(move |event| {
                    let old = match event {
                        watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                            reader.get(&ObjectRef::from_obj(o))
                        }
                        _ => None,
                    };
                    let recheck = secrets::secrets_to_recheck(old.as_deref(), event);
                    ci_writer.apply_watcher_event(event);
                    for r in recheck {
                        let _ = recheck_tx.unbounded_send(r);
                    }
                    match event {
                        // Gone by any means: its counters go too.
                        watcher::Event::Delete(o) => {
                            ctx.failures.reset(&object_key(o));
                            ctx.accepted.reset(&object_key(o));
                            ctx.slots.forget(o);
                            ctx.forget_identity(o);
                            ctx.seen.forget(&o.uid().unwrap_or_default());
                            ctx.checks.forget(&o.uid().unwrap_or_default());
                            ctx.metrics.set_blocked(&o.uid().unwrap_or_default(), None);
                        }
                        watcher::Event::InitDone => {
                            let _ = recheck_all_tx.unbounded_send(());
                        }
                        _ => {}
                    }
                })
                // A (re)list does not reconcile the objects that hold the
                // cloud's answer for their generation: the sweeper looks
                // them up in their second of the period. They are cached
                // all the same; this spares a queue entry per object.
                .try_filter(|event| {
                    std::future::ready(match event {
                        watcher::Event::InitApply(o) => !answered(o),
                        _ => true,
                    })
                })
                .applied_objects()
                // Reconcile on what matters: spec changes, finalizer changes
                // and deletion; not on the operator's own status writes.
                .predicate_filter(
                    predicates::generation
                        .combine(predicates::finalizers)
                        .combine(being_deleted),
                    Default::default(),
                )
        };
        let secret_events = {
            let cimgs = ci_reader.clone();
            let reader = s_reader.clone();
            let ctx = ctx.clone();
            // Changes seen while a relisting watch is not done yet are sent
            // once the cache holds the new list.
            let mut pending: Vec<ObjectRef<CloudImage>> = Vec::new();
            let mut listed = false;
            watcher(s_api, watcher::Config::default())
                .default_backoff()
                .modify(secrets::strip)
                .inspect_ok(move |event| {
                    let users_of = |s: &SecretMeta| -> Vec<ObjectRef<CloudImage>> {
                        let ns = s.namespace().unwrap_or_default();
                        let name = s.name_any();
                        cimgs
                            .state()
                            .iter()
                            .filter(|o| {
                                o.metadata.namespace.as_deref() == Some(ns.as_str())
                                    && o.spec.cloud_ref.secret_name == name
                            })
                            .map(|o| ObjectRef::from_obj(o.as_ref()))
                            .collect()
                    };
                    match event {
                        watcher::Event::Apply(s) => {
                            let old = reader.get(&ObjectRef::from_obj(s));
                            if secrets::change_matters(old.as_deref(), s) {
                                pending.extend(users_of(s));
                            }
                        }
                        // Only on a relist: the first list reconciles everything anyway.
                        watcher::Event::InitApply(s) if listed => {
                            let old = reader.get(&ObjectRef::from_obj(s));
                            if secrets::change_matters(old.as_deref(), s) {
                                pending.extend(users_of(s));
                            }
                        }
                        watcher::Event::InitDone => listed = true,
                        watcher::Event::Delete(s) => {
                            let ns = s.namespace().unwrap_or_default();
                            ctx.credentials.forget(&ns, &s.name_any());
                            ctx.clouds.forget_secret(&ns, &s.uid().unwrap_or_default());
                            pending.extend(users_of(s));
                        }
                        _ => {}
                    }
                    s_writer.apply_watcher_event(event);
                    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        for r in pending.drain(..) {
                            let _ = requeue_tx.unbounded_send(r);
                        }
                    }
                })
                .applied_objects()
        };

        let ci_sweep = ci_reader.clone();
        let shutdown_sweep = shutdown.clone();
        let cloudimages = Controller::for_stream(cimg_events, ci_reader)
            .with_config(ControllerConfig::default().concurrency(concurrency))
            .reconcile_on(requeue_rx)
            // A standby keeps its caches warm; when it becomes the leader
            // it looks at everything.
            .reconcile_all_on(ctx.leader.gained())
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    warn!(error = %e, "controller event");
                }
            });
        let guard = Controller::for_stream(secret_events, s_reader)
            .with_config(ControllerConfig::default().concurrency(2))
            .reconcile_on(recheck_rx)
            .reconcile_all_on(futures::stream::select(recheck_all_rx, ctx.leader.gained()))
            .graceful_shutdown_on(shutdown)
            .run(guard, guard_error_policy, ctx.clone())
            .for_each(|res| async move {
                if let Err(e) = res {
                    warn!(error = %e, "Secret guard event");
                }
            });
        let sweeper = sweep(ci_sweep, sweep_tx, ctx.clone(), shutdown_sweep);
        vec![cloudimages.boxed(), guard.boxed(), sweeper.boxed()]
    }
}

/// The periodic lookups: once a second, requeues the live objects whose
/// second of the resync period has come (`pace::phase`), so each object is
/// looked up once per period and the objects evenly over it, with no timer
/// kept per object. A sweep that runs late catches up on the seconds it
/// missed.
async fn sweep(
    store: Store<CloudImage>,
    requeue: mpsc::UnboundedSender<ObjectRef<CloudImage>>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use crate::controller::pace;
    let period = ctx.settings.resync.as_secs().max(1);
    // Seconds of the wall clock, so that a new leader keeps the phases of
    // the old one.
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    };
    let mut last = clock();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let now = clock();
        if now == last {
            continue;
        }
        // A clock set back counts as one second, not as a pause.
        let from = if now < last {
            now.saturating_sub(1)
        } else {
            last
        };
        last = now;
        if !ctx.leader.is_leader() {
            continue;
        }
        for obj in store.state() {
            if !live_and_held(&obj) {
                continue;
            }
            let Some(uid) = obj.metadata.uid.as_deref() else {
                continue;
            };
            if pace::due(pace::phase(uid, period), period, from, now) {
                ctx.seen.due(uid);
                let _ = requeue.unbounded_send(ObjectRef::from_obj(obj.as_ref()));
            }
        }
    }
}
