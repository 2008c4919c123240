//! Chaos: a seeded, randomized fault run against the real environment
//! (kube-apiserver with the namespace and garbage-collector controllers,
//! Keystone, Glance), with the README's promises checked at the end:
//! no image lost, none deleted wrongly, nothing stuck, no secret shown,
//! memory bounded.
//!
//! A population of CloudImages across four namespaces and six Secrets
//! (some to delete with `kubectl delete`, a whole namespace deleted, a
//! bundle pruned with `kubectl delete -f`; survivors; `Retain`; protected
//! images unprotected midway; pairs sharing an image id; credentials that
//! are wrong and fixed midway) is deleted while, on a schedule drawn from
//! the seed, two leader-elected operator replicas are SIGKILLed and
//! restarted in turn, Glance and Keystone become unreachable for a few
//! seconds, kube-apiserver is restarted (`testenv/env.sh restart`), and a
//! fault relay (`common::fault_relay`, a test double) in front of Keystone
//! and Glance answers a share of the requests with 5xx, resets, lost
//! answers, timeouts, slow bodies and foreign 404s. Then the faults stop,
//! the run waits for quiescence (with a deadline) and checks the
//! invariants. See `docs/chaos.md`.
//!
//! Knobs (environment): `CHAOS_SEED` (a number; `random` picks one; default
//! fixed), `CHAOS_OBJECTS` (default 100), `CHAOS_SECONDS` (fault phase,
//! default 60), `CHAOS_FAULT_RATE` (default 0.30), `CHAOS_APISERVER_RESTARTS`
//! (`0` turns kube-apiserver restarts off: do so on an environment other
//! test runs share at the same time), `CHAOS_FAULT_WEIGHTS` (six weights:
//! 5xx, reset, lost answer, timeout, slow body, foreign 404; default
//! `35,20,10,3,22,10`), `CHAOS_QUIESCE_SECONDS`,
//! `CHAOS_RSS_MIB` (default 256).
//!
//! The schedule, the population and the relay's sequence of draws follow
//! from the seed; which request meets which draw, and how far the operator
//! got when a fault hits, depend on timing. A failing run prints its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use cloudimage_operator::crd::{CloudImage, FINALIZER, SECRET_FINALIZER};
use common::fault_relay::{FaultConfig, FaultRelay, Peer};
use common::glance::Glance;
use common::{Operator, Scope, TestEnv, run_tool};

/// The seed CI runs with.
const DEFAULT_SEED: u64 = 20_251_201;
const CLOUD: &str = "chaos";

/// Prints straight to stderr: the report shows whether the test passes or
/// fails (the harness captures `println!` of passing tests).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "[chaos] {text}");
}

// ------------------------------------------------------------- settings ---

#[derive(Clone, Debug)]
struct Settings {
    seed: u64,
    objects: usize,
    seconds: u64,
    rate: f64,
    /// Weights of the relay's faults, in the order of `Fault::ALL`.
    weights: [u32; 6],
    apiserver_restarts: bool,
    quiesce: Duration,
    rss_limit_kib: u64,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match var(name) {
        None => default,
        Some(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    }
}

impl Settings {
    fn from_env() -> Settings {
        let seed = match var("CHAOS_SEED").as_deref() {
            None => DEFAULT_SEED,
            Some("random") => rand::random::<u64>() % 1_000_000_000,
            Some(v) => v
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("CHAOS_SEED={v}: a number or `random`")),
        };
        let objects: usize = num("CHAOS_OBJECTS", 100);
        assert!(objects >= 20, "CHAOS_OBJECTS must be at least 20");
        let seconds: u64 = num("CHAOS_SECONDS", 60);
        assert!(seconds >= 20, "CHAOS_SECONDS must be at least 20");
        let default_quiesce = 180u64.max(120 + objects as u64 * 3 / 10);
        Settings {
            seed,
            objects,
            seconds,
            rate: num("CHAOS_FAULT_RATE", 0.30),
            weights: match var("CHAOS_FAULT_WEIGHTS") {
                None => FaultConfig::default().weights,
                Some(v) => v
                    .split(',')
                    .map(|w| w.trim().parse::<u32>().ok())
                    .collect::<Option<Vec<u32>>>()
                    .and_then(|w| w.try_into().ok())
                    .unwrap_or_else(|| {
                        panic!("CHAOS_FAULT_WEIGHTS={v}: six numbers (5xx,reset,lost-answer,timeout,slow-body,foreign-404)")
                    }),
            },
            apiserver_restarts: var("CHAOS_APISERVER_RESTARTS").as_deref() != Some("0"),
            quiesce: Duration::from_secs(num("CHAOS_QUIESCE_SECONDS", default_quiesce)),
            rss_limit_kib: num::<u64>("CHAOS_RSS_MIB", 256) * 1024,
        }
    }
}

// ----------------------------------------------------------- population ---

/// How a CloudImage leaves, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// Never deleted.
    Survive,
    /// Never deleted, created while the faults run.
    Late,
    /// `kubectl delete cloudimage ...`.
    Kubectl,
    /// Its namespace is deleted.
    Namespace,
    /// `kubectl delete -f` of the bundle it was applied with (its Secret too).
    Bundle,
}

impl Fate {
    fn survives(self) -> bool {
        matches!(self, Fate::Survive | Fate::Late)
    }
}

/// The four namespaces (suffixes of the test's namespace) and their Secrets.
const CONTROL: usize = 0; // the Lease lives here; never deleted
const CREDS: usize = 1; // a Secret with a wrong password, fixed midway
const BUNDLE: usize = 2; // applied and pruned with kubectl -f
const DOOMED: usize = 3; // deleted as a whole
const SECRETS: [&[&str]; 4] = [
    &["creds-a", "creds-b"],
    &["creds-ok", "creds-fixme"],
    &["bundle-creds"],
    &["creds"],
];
const WRONG_SECRET: &str = "creds-fixme";

#[derive(Clone, Debug)]
struct Obj {
    ns: usize,
    name: String,
    secret: &'static str,
    image: usize,
    retain: bool,
    fate: Fate,
}

#[derive(Clone, Debug, Default)]
struct Img {
    id: String,
    protected: bool,
}

struct Population {
    objs: Vec<Obj>,
    imgs: Vec<Img>,
}

impl Population {
    /// A fixed core (every kind of case at least once), then random ones.
    fn draw(n: usize, rng: &mut ChaCha8Rng) -> Population {
        let mut p = Population {
            objs: Vec::new(),
            imgs: Vec::new(),
        };
        use Fate::*;
        // (namespace, secret, protected, retain, fates sharing one image)
        let core: [(usize, &'static str, bool, bool, &[Fate]); 15] = [
            (CONTROL, "creds-a", false, false, &[Survive, Kubectl]),
            (CONTROL, "creds-b", false, false, &[Kubectl, Kubectl]),
            (CONTROL, "creds-a", true, false, &[Kubectl]),
            (CONTROL, "creds-b", false, true, &[Kubectl]),
            (CONTROL, "creds-b", false, false, &[Late]),
            (CREDS, WRONG_SECRET, false, false, &[Kubectl]),
            (CREDS, WRONG_SECRET, false, false, &[Survive]),
            (CREDS, "creds-ok", true, false, &[Kubectl]),
            (BUNDLE, "bundle-creds", true, false, &[Bundle]),
            (BUNDLE, "bundle-creds", false, false, &[Survive]),
            (BUNDLE, "bundle-creds", false, true, &[Bundle]),
            (BUNDLE, "bundle-creds", false, false, &[Late]),
            (DOOMED, "creds", false, false, &[Namespace, Namespace]),
            (DOOMED, "creds", true, false, &[Namespace]),
            (DOOMED, "creds", false, true, &[Namespace]),
        ];
        for (ns, secret, protected, retain, fates) in core {
            p.add(ns, secret, protected, retain, fates);
        }
        while p.objs.len() < n {
            let ns = match rng.random_range(0..100) {
                0..35 => CONTROL,
                35..55 => CREDS,
                55..75 => BUNDLE,
                _ => DOOMED,
            };
            let secret = SECRETS[ns][rng.random_range(0..SECRETS[ns].len())];
            let pair = p.objs.len() + 2 <= n && rng.random_bool(0.12);
            let retain = !pair && rng.random_bool(0.12);
            let protected = rng.random_bool(0.08);
            // A late object has its image to itself: a pair partner
            // deleted before it is created would take the image along.
            let mut fate = || match ns {
                CONTROL | CREDS | BUNDLE if !pair && rng.random_bool(0.06) => Late,
                CONTROL | CREDS if rng.random_bool(0.33) => Survive,
                CONTROL | CREDS => Kubectl,
                BUNDLE if rng.random_bool(0.25) => Survive,
                BUNDLE => Bundle,
                _ => Namespace,
            };
            let fates: Vec<Fate> = (0..if pair { 2 } else { 1 }).map(|_| fate()).collect();
            p.add(ns, secret, protected, retain, &fates);
        }
        p
    }

    fn add(&mut self, ns: usize, secret: &'static str, protected: bool, retain: bool, f: &[Fate]) {
        let image = self.imgs.len();
        self.imgs.push(Img {
            id: String::new(),
            protected,
        });
        for fate in f {
            let name = format!("img-{:04}", self.objs.len());
            self.objs.push(Obj {
                ns,
                name,
                secret,
                image,
                retain,
                fate: *fate,
            });
        }
    }

    fn refs(&self, image: usize) -> impl Iterator<Item = &Obj> {
        self.objs.iter().filter(move |o| o.image == image)
    }

    /// Whether the image must still be in Glance at the end: some
    /// CloudImage naming it survives, or was Retain.
    fn must_stay(&self, image: usize) -> bool {
        self.refs(image).any(|o| o.fate.survives() || o.retain)
    }

    fn describe(&self) -> String {
        let count = |f: &dyn Fn(&Obj) -> bool| self.objs.iter().filter(|o| f(o)).count();
        let shared = (0..self.imgs.len())
            .filter(|i| self.refs(*i).count() > 1)
            .count();
        format!(
            "{} CloudImages on {} images: survive {} (created during the faults {}), kubectl delete {}, namespace delete {}, bundle prune {}; \
             Retain {}, protected images {}, image ids shared by two {}, on the wrong-then-fixed Secret {}; \
             images that must stay {}, that must go {}",
            self.objs.len(),
            self.imgs.len(),
            count(&|o| o.fate.survives()),
            count(&|o| o.fate == Fate::Late),
            count(&|o| o.fate == Fate::Kubectl),
            count(&|o| o.fate == Fate::Namespace),
            count(&|o| o.fate == Fate::Bundle),
            count(&|o| o.retain),
            self.imgs.iter().filter(|i| i.protected).count(),
            shared,
            count(&|o| o.secret == WRONG_SECRET),
            (0..self.imgs.len()).filter(|i| self.must_stay(*i)).count(),
            (0..self.imgs.len()).filter(|i| !self.must_stay(*i)).count(),
        )
    }
}

// ------------------------------------------------------------- schedule ---

#[derive(Clone, Debug, PartialEq)]
enum Action {
    /// SIGKILL of operator replica 0 or 1.
    Kill(usize),
    /// Start of a replica (after a kill).
    Start(usize),
    Cut(Peer),
    Restore(Peer),
    RestartApiserver,
    /// `kubectl delete cloudimage` of one batch of names in one namespace.
    DeleteBatch(usize, Vec<String>),
    DeleteNamespace,
    PruneBundle,
    Unprotect(usize),
    /// Creation of a late CloudImage (an index into the population).
    Create(usize),
    FixSecret,
}

impl Action {
    fn describe(&self) -> String {
        match self {
            Action::Kill(r) => format!("SIGKILL operator {r}"),
            Action::Start(r) => format!("start operator {r}"),
            Action::Cut(p) => format!("{p:?} unreachable"),
            Action::Restore(p) => format!("{p:?} back"),
            Action::RestartApiserver => "restart kube-apiserver".into(),
            Action::DeleteBatch(ns, names) => {
                format!(
                    "kubectl delete {} CloudImages in namespace {ns}",
                    names.len()
                )
            }
            Action::DeleteNamespace => "kubectl delete namespace (doomed)".into(),
            Action::PruneBundle => "kubectl delete -f bundle".into(),
            Action::Unprotect(i) => format!("unprotect image {i}"),
            Action::Create(i) => format!("create CloudImage {i}"),
            Action::FixSecret => format!("fix Secret {WRONG_SECRET}"),
        }
    }
}

struct Schedule {
    events: Vec<(Duration, Action)>,
}

impl Schedule {
    fn draw(s: &Settings, pop: &Population, rng: &mut ChaCha8Rng) -> Schedule {
        let phase = s.seconds as f64;
        let mut ev: Vec<(f64, Action)> = Vec::new();
        // SIGKILL and restart, the two replicas in turn, every 3 to 8 s.
        let mut t = rng.random_range(2.0..5.0);
        let mut replica = rng.random_range(0..2usize);
        while t < phase - 2.0 {
            ev.push((t, Action::Kill(replica)));
            ev.push((t + rng.random_range(0.2..2.0), Action::Start(replica)));
            replica = 1 - replica;
            t += rng.random_range(3.0..8.0);
        }
        // Outages of a few seconds: Glance about every 25 s, Keystone every 60 s.
        for (peer, every) in [(Peer::Glance, 25.0), (Peer::Keystone, 60.0)] {
            let n = ((phase / every).floor() as usize).max(1);
            let slot = phase / n as f64;
            for k in 0..n {
                let len = rng.random_range(2.0..6.0);
                let at = k as f64 * slot + rng.random_range(0.0..(slot - len - 1.0).max(0.5));
                ev.push((at, Action::Cut(peer)));
                ev.push((at + len, Action::Restore(peer)));
            }
        }
        if s.apiserver_restarts {
            let n = ((phase / 60.0).floor() as usize).max(1);
            let slot = phase / n as f64;
            for k in 0..n {
                let at = k as f64 * slot + slot * rng.random_range(0.15..0.75);
                ev.push((at, Action::RestartApiserver));
            }
        }
        // Deletions, all within the first 60 % of the phase.
        for ns in [CONTROL, CREDS] {
            let mut names: Vec<String> = pop
                .objs
                .iter()
                .filter(|o| o.ns == ns && o.fate == Fate::Kubectl)
                .map(|o| o.name.clone())
                .collect();
            names.shuffle(rng);
            let batches = (names.len() / 8).clamp(1, 20);
            let size = names.len().div_ceil(batches).max(1);
            for chunk in names.chunks(size) {
                ev.push((
                    phase * rng.random_range(0.0..0.6),
                    Action::DeleteBatch(ns, chunk.to_vec()),
                ));
            }
        }
        ev.push((phase * rng.random_range(0.1..0.5), Action::DeleteNamespace));
        ev.push((phase * rng.random_range(0.1..0.5), Action::PruneBundle));
        for (i, img) in pop.imgs.iter().enumerate() {
            if img.protected {
                ev.push((phase * rng.random_range(0.25..0.7), Action::Unprotect(i)));
            }
        }
        ev.push((phase * rng.random_range(0.3..0.7), Action::FixSecret));
        for (i, o) in pop.objs.iter().enumerate() {
            if o.fate == Fate::Late {
                ev.push((phase * rng.random_range(0.05..0.5), Action::Create(i)));
            }
        }
        ev.sort_by(|a, b| a.0.total_cmp(&b.0));
        Schedule {
            events: ev
                .into_iter()
                .map(|(t, a)| (Duration::from_secs_f64(t.max(0.0)), a))
                .collect(),
        }
    }

    fn describe(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, a) in &self.events {
            let k = match a {
                Action::Kill(_) => "operator SIGKILLs",
                Action::Start(_) => "operator starts",
                Action::Cut(Peer::Glance) => "Glance outages",
                Action::Cut(Peer::Keystone) => "Keystone outages",
                Action::Restore(_) => continue,
                Action::RestartApiserver => "kube-apiserver restarts",
                Action::DeleteBatch(..) => "kubectl delete batches",
                Action::DeleteNamespace => "namespace deletions",
                Action::PruneBundle => "bundle prunes",
                Action::Unprotect(_) => "unprotects",
                Action::FixSecret => "Secret fixes",
                Action::Create(_) => "late creations",
            };
            *counts.entry(k).or_default() += 1;
        }
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ----------------------------------------------------------- operators ---

/// The two replicas, restarted like a kubelet would when one exits.
struct Replicas {
    ops: [Option<Operator>; 2],
    flags: Vec<String>,
    logs: Vec<PathBuf>,
    kills: usize,
    starts: usize,
    /// Exits the test did not cause (status and the end of the log).
    exits: Vec<String>,
    max_rss_kib: u64,
}

impl Replicas {
    fn start(&mut self, s: &Scope, r: usize) {
        if self.ops[r].is_some() {
            return;
        }
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let op = s.start_operator(&flags);
        self.logs.push(op.log_path.clone());
        self.ops[r] = Some(op);
        self.starts += 1;
    }

    async fn kill(&mut self, r: usize) {
        if let Some(op) = self.ops[r].take() {
            op.kill().await;
            self.kills += 1;
        }
    }

    /// Samples memory; restarts a replica that exited by itself.
    fn tick(&mut self, s: &Scope) {
        for r in 0..2 {
            let exited = match self.ops[r].as_mut() {
                Some(op) => match op.child.try_wait() {
                    Ok(Some(status)) => {
                        let log = op.log();
                        let tail: Vec<&str> = log.lines().rev().take(5).collect();
                        Some(format!(
                            "replica {r} exited with {status}: {}",
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        ))
                    }
                    _ => {
                        if let Some(kib) = op.rss_kib() {
                            self.max_rss_kib = self.max_rss_kib.max(kib);
                        }
                        None
                    }
                },
                None => None,
            };
            if let Some(e) = exited {
                say(&e);
                self.exits.push(e);
                self.ops[r] = None;
                self.start(s, r);
            }
        }
    }
}

// ------------------------------------------------------------- helpers ---

fn cimgs(client: &Client, ns: &str) -> Api<CloudImage> {
    Api::namespaced(client.clone(), ns)
}

fn secrets(client: &Client, ns: &str) -> Api<Secret> {
    Api::namespaced(client.clone(), ns)
}

/// A clouds.yaml whose Keystone and Glance are the fault relays.
fn clouds_yaml(keystone: &FaultRelay, glance: &FaultRelay, password: &str) -> String {
    serde_yaml::to_string(&json!({"clouds": {CLOUD: {
        "auth": {
            "auth_url": format!("{}/v3", keystone.url()),
            "username": "demo",
            "password": password,
            "project_name": "demo",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": "RegionOne",
        "interface": "public",
        "image_endpoint_override": glance.url(),
    }}}))
    .expect("yaml")
}

fn secret_doc(ns: &str, name: &str, clouds: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {"clouds.yaml": clouds}
    })
}

fn cloudimage_doc(ns: &str, o: &Obj, id: &str) -> serde_json::Value {
    json!({
        "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
        "metadata": {"name": o.name, "namespace": ns},
        "spec": {
            "imageId": id,
            "deletionPolicy": if o.retain { "Retain" } else { "Delete" },
            "cloudRef": {"secretName": o.secret, "cloudName": CLOUD}
        }
    })
}

/// Applies a Secret, retrying while the API server is away.
async fn apply_secret(client: &Client, ns: &str, name: &str, clouds: &str) -> Result<(), String> {
    let doc: Secret = serde_json::from_value(secret_doc(ns, name, clouds)).expect("secret");
    let mut last = String::new();
    for _ in 0..120 {
        match secrets(client, ns)
            .patch(
                name,
                &PatchParams::apply("cloudimage-chaos").force(),
                &Patch::Apply(&doc),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("apply Secret {ns}/{name}: {last}"))
}

/// Runs kubectl until it succeeds (the API server may be restarting), for
/// up to two minutes.
async fn kubectl(env: &TestEnv, args: Vec<String>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let env2 = env.clone();
        let a = args.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            run_tool(&env2, "KUBECTL", &refs)
        })
        .await
        .expect("kubectl task");
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("kubectl {}: {out}", args.join(" ")));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// `testenv/env.sh restart kube-apiserver`, in its own process group (a
/// Ctrl-C of the test must not reach the restarted server).
async fn restart_apiserver() -> Result<Duration, String> {
    let dir = TestEnv::dir();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::process::CommandExt;
        let started = Instant::now();
        let out =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/testenv/env.sh"))
                .arg("restart")
                .arg("kube-apiserver")
                .arg(&dir)
                .stdin(std::process::Stdio::null())
                .process_group(0)
                .output()
                .map_err(|e| format!("run testenv/env.sh: {e}"))?;
        if out.status.success() {
            Ok(started.elapsed())
        } else {
            Err(format!(
                "testenv/env.sh restart kube-apiserver failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .await
    .expect("restart task")
}

/// Every text the operator must never show: the passwords of the
/// Secrets, and every token the relays saw.
#[derive(Clone, Default)]
struct Hidden {
    passwords: Vec<String>,
    /// Keystone's Fernet tokens: URL-safe base64 without padding, so
    /// found as whole words (a set lookup, not a search per token).
    tokens: std::collections::HashSet<String>,
}

impl Hidden {
    fn new(env: &TestEnv, wrong: &str, relays: &[&FaultRelay]) -> Hidden {
        Hidden {
            passwords: vec![env.password("demo"), wrong.to_owned()],
            tokens: relays.iter().flat_map(|r| r.tokens()).collect(),
        }
    }

    /// What `text` shows, in words that show nothing.
    fn find(&self, text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (i, p) in self.passwords.iter().enumerate() {
            if text.contains(p.as_str()) {
                found.push(format!("password #{i}"));
            }
        }
        let tokens = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .filter(|w| w.len() >= 8 && self.tokens.contains(*w))
            .count();
        if tokens > 0 {
            found.push(format!("{tokens} token(s)"));
        }
        found
    }
}

/// Statuses and Events of the test's namespaces that show a secret.
async fn scan_api(client: &Client, namespaces: &[String], hidden: &Hidden) -> Vec<String> {
    let mut found = Vec::new();
    for ns in namespaces {
        let events: Api<Event> = Api::namespaced(client.clone(), ns);
        let texts = [
            events.list(&ListParams::default()).await.ok().map(|l| {
                (
                    "Events",
                    serde_json::to_string(&l.items).unwrap_or_default(),
                )
            }),
            cimgs(client, ns)
                .list(&ListParams::default())
                .await
                .ok()
                .map(|l| {
                    (
                        "CloudImages",
                        serde_json::to_string(&l.items).unwrap_or_default(),
                    )
                }),
        ];
        for (what, text) in texts.into_iter().flatten() {
            for f in hidden.find(&text) {
                found.push(format!("{what} of namespace {ns} show {f}"));
            }
        }
    }
    found
}

// ------------------------------------------------------------ the test ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_no_image_lost_none_deleted_wrongly_nothing_stuck() {
    let settings = Settings::from_env();
    let seed = settings.seed;
    say(&format!(
        "seed {seed} (CHAOS_SEED={seed} reproduces this run's population, schedule and relay draws)"
    ));
    say(&format!(
        "{} objects, {} s of faults, fault rate {:.0} % (weights {:?}), kube-apiserver restarts {}",
        settings.objects,
        settings.seconds,
        settings.rate * 100.0,
        settings.weights,
        if settings.apiserver_restarts {
            "on"
        } else {
            "off (CHAOS_APISERVER_RESTARTS=0)"
        }
    ));
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pop = Population::draw(settings.objects, &mut rng);
    let schedule = Schedule::draw(&settings, &pop, &mut rng);
    say(&pop.describe());
    say(&format!("schedule: {}", schedule.describe()));

    let s = Scope::new("chaos").await;
    let env = s.env.clone();
    let client = s.client.clone();
    let g = Glance::as_user(&env, "demo").await;
    let namespaces: Vec<String> = ["", "creds", "bundle", "doomed"]
        .iter()
        .map(|suffix| {
            if suffix.is_empty() {
                s.ns.clone()
            } else {
                format!("{}-{suffix}", s.ns)
            }
        })
        .collect();
    let nss: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces[1..] {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
    }
    say(&format!("namespaces: {}", namespaces.join(", ")));

    // The relays, quiet until the fault phase.
    let relay_config = FaultConfig {
        rate: 0.0,
        weights: settings.weights,
        ..FaultConfig::default()
    };
    let host_port = |u: &str| {
        let u = url::Url::parse(u).expect("url");
        format!(
            "{}:{}",
            u.host_str().expect("host"),
            u.port_or_known_default().expect("port")
        )
    };
    let keystone = FaultRelay::start(
        Peer::Keystone,
        &host_port(&env.keystone_url()),
        seed.wrapping_add(1),
        &relay_config,
    )
    .await;
    let glance = FaultRelay::start(
        Peer::Glance,
        &host_port(&env.glance_url()),
        seed.wrapping_add(2),
        &relay_config,
    )
    .await;
    let wrong_password = format!("chaos-wrong-{:016x}", rng.random::<u64>());
    let good = clouds_yaml(&keystone, &glance, &env.password("demo"));
    let wrong = clouds_yaml(&keystone, &glance, &wrong_password);

    // Images, straight in Glance (not through the relay).
    let t = Instant::now();
    {
        use futures::StreamExt;
        let ids: Vec<String> = futures::stream::iter(0..pop.imgs.len())
            .map(|i| {
                let g = &g;
                async move {
                    g.create_image(&format!("chaos-{seed}-{i}"), "private")
                        .await
                }
            })
            .buffered(4)
            .collect()
            .await;
        for (img, id) in pop.imgs.iter_mut().zip(ids) {
            img.id = id;
        }
        for img in pop.imgs.iter().filter(|i| i.protected) {
            g.set_protected(&img.id, true).await;
        }
    }
    say(&format!(
        "{} images created in Glance in {:?}",
        pop.imgs.len(),
        t.elapsed()
    ));

    // Secrets and CloudImages; the bundle with kubectl apply -f.
    for (ns, names) in SECRETS.iter().enumerate() {
        for name in names.iter().filter(|n| **n != "bundle-creds") {
            let text = if *name == WRONG_SECRET { &wrong } else { &good };
            apply_secret(&client, &namespaces[ns], name, text)
                .await
                .expect("Secret");
        }
    }
    let mut bundle = vec![secret_doc(&namespaces[BUNDLE], "bundle-creds", &good)];
    bundle.extend(
        pop.objs
            .iter()
            .filter(|o| o.fate == Fate::Bundle)
            .map(|o| cloudimage_doc(&namespaces[BUNDLE], o, &pop.imgs[o.image].id)),
    );
    let bundle_file = {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("private");
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!("{}-bundle.yaml", s.ns));
        let text = bundle
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("yaml"))
            .collect::<Vec<_>>()
            .join("---\n");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("bundle file");
        f.write_all(text.as_bytes()).expect("write bundle");
        path.to_str().expect("path").to_owned()
    };
    kubectl(&env, vec!["apply".into(), "-f".into(), bundle_file.clone()])
        .await
        .expect("kubectl apply the bundle");
    {
        use futures::StreamExt;
        let results: Vec<Result<CloudImage, kube::Error>> = futures::stream::iter(
            pop.objs
                .iter()
                .filter(|o| !matches!(o.fate, Fate::Bundle | Fate::Late)),
        )
        .map(|o| {
            let api = cimgs(&client, &namespaces[o.ns]);
            let doc: CloudImage =
                serde_json::from_value(cloudimage_doc(&namespaces[o.ns], o, &pop.imgs[o.image].id))
                    .expect("CloudImage");
            async move { api.create(&PostParams::default(), &doc).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
        for r in results {
            r.expect("create CloudImage");
        }
    }

    // Two leader-elected replicas.
    let resync = format!("{}s", (settings.objects / 25).clamp(2, 40));
    let mut replicas = Replicas {
        ops: [None, None],
        flags: vec![
            "--namespace".into(),
            namespaces[1..].join(","),
            "--leader-elect".into(),
            "--leader-election-namespace".into(),
            s.ns.clone(),
            "--leader-election-id".into(),
            "chaos".into(),
            "--lease-duration".into(),
            "6s".into(),
            "--renew-deadline".into(),
            "4s".into(),
            "--retry-period".into(),
            "1s".into(),
            "--resync-interval".into(),
            resync,
        ],
        logs: Vec::new(),
        kills: 0,
        starts: 0,
        exits: Vec::new(),
        max_rss_kib: 0,
    };
    replicas.start(&s, 0);
    replicas.start(&s, 1);

    // Everything settles before the faults start: Ready, or AuthFailed on
    // the wrong password.
    let t = Instant::now();
    let settle_deadline = Duration::from_secs(120 + settings.objects as u64 / 5);
    loop {
        replicas.tick(&s);
        let mut pending = 0usize;
        let mut example = String::new();
        for ns in &namespaces {
            let list = cimgs(&client, ns)
                .list(&ListParams::default())
                .await
                .expect("list");
            for o in list.items {
                let reason = o
                    .status
                    .as_ref()
                    .and_then(|st| common::reason(st, "Ready"))
                    .unwrap_or_default();
                let want = if o.spec.cloud_ref.secret_name == WRONG_SECRET {
                    "AuthFailed"
                } else {
                    "ImageAvailable"
                };
                if reason != want || !o.finalizers().iter().any(|f| f == FINALIZER) {
                    pending += 1;
                    example = format!("{ns}/{}: Ready={reason:?}", o.name_any());
                }
            }
        }
        if pending == 0 {
            break;
        }
        assert!(
            t.elapsed() < settle_deadline,
            "seed {seed}: {pending} CloudImages not settled before the faults (e.g. {example})"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    say(&format!(
        "population settled in {:?} ({:?} since start)",
        t.elapsed(),
        started.elapsed()
    ));

    // The leak scanner: statuses and Events, every few seconds.
    let leaks: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let hide_now = Arc::new(Mutex::new(Hidden::new(
        &env,
        &wrong_password,
        &[&keystone, &glance],
    )));
    let scanner = {
        let (client, namespaces, leaks, hide) = (
            client.clone(),
            namespaces.clone(),
            leaks.clone(),
            hide_now.clone(),
        );
        tokio::spawn(async move {
            loop {
                let hide = hide.lock().expect("hide").clone();
                let found = scan_api(&client, &namespaces, &hide).await;
                leaks.lock().expect("leaks").extend(found);
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        })
    };

    // ------------------------------------------------------ fault phase ---
    say("fault phase: starting");
    keystone.set_rate(settings.rate);
    glance.set_rate(settings.rate);
    let phase_start = Instant::now();
    let mut tasks: Vec<(String, tokio::task::JoinHandle<Result<String, String>>)> = Vec::new();
    let mut apiserver: Option<tokio::task::JoinHandle<Result<Duration, String>>> = None;
    let mut apiserver_restarts: Vec<Duration> = Vec::new();
    let mut apiserver_skipped = 0usize;
    let mut problems: Vec<String> = Vec::new();
    for (at, action) in &schedule.events {
        while phase_start.elapsed() < *at {
            replicas.tick(&s);
            let left = at.saturating_sub(phase_start.elapsed());
            tokio::time::sleep(left.min(Duration::from_millis(500))).await;
        }
        // Refresh the tokens to look for.
        *hide_now.lock().expect("hide") = Hidden::new(&env, &wrong_password, &[&keystone, &glance]);
        match action {
            Action::Kill(r) => replicas.kill(*r).await,
            Action::Start(r) => replicas.start(&s, *r),
            Action::Cut(Peer::Glance) => glance.cut().await,
            Action::Cut(Peer::Keystone) => keystone.cut().await,
            Action::Restore(Peer::Glance) => glance.restore().await,
            Action::Restore(Peer::Keystone) => keystone.restore().await,
            Action::RestartApiserver => {
                if apiserver.as_ref().is_some_and(|h| !h.is_finished()) {
                    apiserver_skipped += 1;
                } else {
                    if let Some(h) = apiserver.take() {
                        match h.await.expect("restart task") {
                            Ok(d) => apiserver_restarts.push(d),
                            Err(e) => problems.push(e),
                        }
                    }
                    apiserver = Some(tokio::spawn(restart_apiserver()));
                }
            }
            Action::DeleteBatch(..) | Action::DeleteNamespace | Action::PruneBundle => {
                // What a person or a GitOps tool would run, without waiting.
                let mut args: Vec<String> = vec!["delete".into()];
                match action {
                    Action::DeleteBatch(ns, names) => {
                        args.extend([
                            "cloudimages.cloudimage.dev".into(),
                            "-n".into(),
                            namespaces[*ns].clone(),
                        ]);
                        args.extend(names.iter().cloned());
                    }
                    Action::DeleteNamespace => {
                        args.extend(["namespace".into(), namespaces[DOOMED].clone()]);
                    }
                    _ => args.extend(["-f".into(), bundle_file.clone()]),
                }
                args.extend(["--wait=false".into(), "--ignore-not-found".into()]);
                let env = env.clone();
                let what = action.describe();
                tasks.push((
                    what.clone(),
                    tokio::spawn(async move { kubectl(&env, args).await.map(|_| what) }),
                ));
            }
            Action::Unprotect(i) => g.set_protected(&pop.imgs[*i].id, false).await,
            Action::Create(i) => {
                let o = &pop.objs[*i];
                let api = cimgs(&client, &namespaces[o.ns]);
                let doc: CloudImage = serde_json::from_value(cloudimage_doc(
                    &namespaces[o.ns],
                    o,
                    &pop.imgs[o.image].id,
                ))
                .expect("CloudImage");
                let what = action.describe();
                tasks.push((
                    what.clone(),
                    tokio::spawn(async move {
                        let mut last = String::new();
                        for _ in 0..240 {
                            match api.create(&PostParams::default(), &doc).await {
                                Ok(_) => return Ok(what),
                                // A retry after a lost answer.
                                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(what),
                                Err(e) => last = e.to_string(),
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        Err(last)
                    }),
                ));
            }
            Action::FixSecret => {
                let (client, ns, good) = (client.clone(), namespaces[CREDS].clone(), good.clone());
                let what = action.describe();
                tasks.push((
                    what.clone(),
                    tokio::spawn(async move {
                        apply_secret(&client, &ns, WRONG_SECRET, &good)
                            .await
                            .map(|_| what)
                    }),
                ));
            }
        }
    }
    while phase_start.elapsed() < Duration::from_secs(settings.seconds) {
        replicas.tick(&s);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // ------------------------------------------------------ quiescence ---
    keystone.set_rate(0.0);
    glance.set_rate(0.0);
    keystone.restore().await;
    glance.restore().await;
    if let Some(h) = apiserver.take() {
        match h.await.expect("restart task") {
            Ok(d) => apiserver_restarts.push(d),
            Err(e) => problems.push(e),
        }
    }
    for (what, h) in tasks {
        match h.await.expect("task") {
            Ok(_) => {}
            Err(e) => problems.push(format!("{what}: {e}")),
        }
    }
    assert!(
        problems.is_empty(),
        "seed {seed}: the run itself failed (not the operator):\n{}",
        problems.join("\n")
    );
    replicas.start(&s, 0);
    replicas.start(&s, 1);
    let phase_took = phase_start.elapsed();
    let (keystone_counts, glance_counts) = (keystone.counts(), glance.counts());
    say(&format!("fault phase over after {phase_took:?}"));

    let quiet = Instant::now();
    let mut last = String::new();
    let mut settled = false;
    let mut next_note = Duration::from_secs(15);
    while quiet.elapsed() < settings.quiesce {
        replicas.tick(&s);
        match pending(&client, &pop, &namespaces, &nss).await {
            Ok(()) => {
                settled = true;
                break;
            }
            Err(e) => last = e,
        }
        if quiet.elapsed() >= next_note {
            say(&format!(
                "quiescence: waiting ({:?}): {last}",
                quiet.elapsed()
            ));
            next_note += Duration::from_secs(15);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let quiesce_took = quiet.elapsed();
    say(&format!(
        "quiescence: {} after {quiesce_took:?}",
        if settled { "reached" } else { "NOT reached" }
    ));
    scanner.abort();

    // ------------------------------------------------------- invariants ---
    let mut violations: Vec<String> = Vec::new();
    if !settled {
        violations.push(format!(
            "no quiescence within {:?}; still pending: {last}",
            settings.quiesce
        ));
    }
    let mut lost = 0usize;
    let mut not_deleted = 0usize;
    for (i, img) in pop.imgs.iter().enumerate() {
        let exists = g.exists(&img.id).await;
        let names: Vec<String> = pop
            .refs(i)
            .map(|o| {
                format!(
                    "{}/{} ({:?}{})",
                    o.ns,
                    o.name,
                    o.fate,
                    if o.retain { ", Retain" } else { "" }
                )
            })
            .collect();
        if pop.must_stay(i) && !exists {
            lost += 1;
            violations.push(format!(
                "image {} LOST (wrongly deleted): CloudImages {}",
                img.id,
                names.join(", ")
            ));
        }
        if !pop.must_stay(i) && exists {
            not_deleted += 1;
            violations.push(format!(
                "image {} still in Glance although every CloudImage naming it was deleted with policy Delete: {}",
                img.id,
                names.join(", ")
            ));
        }
    }
    let mut stuck = 0usize;
    for (ns_i, ns) in namespaces.iter().enumerate() {
        let list = cimgs(&client, ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let by_name: BTreeMap<String, &CloudImage> =
            list.iter().map(|o| (o.name_any(), o)).collect();
        for o in pop.objs.iter().filter(|o| o.ns == ns_i) {
            match (o.fate.survives(), by_name.get(&o.name)) {
                (true, None) => violations.push(format!(
                    "CloudImage {ns}/{} was never deleted but is gone",
                    o.name
                )),
                (true, Some(c)) if c.metadata.deletion_timestamp.is_some() => {
                    violations.push(format!("CloudImage {ns}/{} is being deleted", o.name))
                }
                (true, Some(_)) => {}
                (false, Some(c)) => {
                    stuck += 1;
                    violations.push(format!(
                        "CloudImage {ns}/{} STUCK ({:?}): finalizers {:?}, conditions {:?}",
                        o.name,
                        o.fate,
                        c.metadata.finalizers,
                        c.status.as_ref().map(|st| st
                            .conditions
                            .iter()
                            .map(|c| format!(
                                "{}={}/{}: {}",
                                c.type_, c.status, c.reason, c.message
                            ))
                            .collect::<Vec<_>>())
                    ));
                }
                (false, None) => {}
            }
        }
        // Secrets: held exactly while a CloudImage names them.
        let users: BTreeSet<String> = list
            .iter()
            .map(|o| o.spec.cloud_ref.secret_name.clone())
            .collect();
        for sec in secrets(&client, ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let name = sec.name_any();
            let held = sec.finalizers().iter().any(|f| f == SECRET_FINALIZER);
            if held && !users.contains(&name) {
                violations.push(format!(
                    "Secret {ns}/{name} keeps {SECRET_FINALIZER} with no CloudImage naming it"
                ));
            }
            if !held && users.contains(&name) {
                violations.push(format!(
                    "Secret {ns}/{name} is named by a CloudImage but not held"
                ));
            }
        }
        for user in &users {
            if secrets(&client, ns)
                .get_opt(user)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                violations.push(format!(
                    "Secret {ns}/{user} is gone although a CloudImage still names it"
                ));
            }
        }
    }
    if let Ok(Some(n)) = nss.get_opt(&namespaces[DOOMED]).await {
        violations.push(format!(
            "namespace {} STUCK: {:?}; left in it (CloudImages, held Secrets): {:?}",
            namespaces[DOOMED],
            n.status,
            leftovers(&client, &namespaces[DOOMED]).await
        ));
    }
    // No secret in any log line, status or Event.
    let hidden = Hidden::new(&env, &wrong_password, &[&keystone, &glance]);
    let mut found = leaks.lock().expect("leaks").clone();
    found.extend(scan_api(&client, &namespaces, &hidden).await);
    let mut log_lines = 0usize;
    let mut panics = Vec::new();
    for path in &replicas.logs {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        log_lines += text.lines().count();
        for f in hidden.find(&text) {
            found.insert(format!("operator log {} shows {f}", path.display()));
        }
        if let Some(l) = text.lines().find(|l| l.contains("panicked")) {
            panics.push(format!("{}: {l}", path.display()));
        }
    }
    violations.extend(found.iter().cloned());
    violations.extend(panics.iter().map(|p| format!("panic in an operator: {p}")));
    if replicas.max_rss_kib > settings.rss_limit_kib {
        violations.push(format!(
            "operator RSS reached {} KiB (bound {} KiB)",
            replicas.max_rss_kib, settings.rss_limit_kib
        ));
    }

    // -------------------------------------------------------------- report ---
    say(&format!(
        "faults injected: {} operator SIGKILLs ({} starts, {} exits on their own), \
         kube-apiserver restarts {} (took {:?}; {} skipped while one ran), \
         keystone relay {}, glance relay {}",
        replicas.kills,
        replicas.starts,
        replicas.exits.len(),
        apiserver_restarts.len(),
        apiserver_restarts,
        apiserver_skipped,
        keystone_counts.describe(),
        glance_counts.describe(),
    ));
    say(&format!(
        "result: {lost} images lost, {not_deleted} not deleted, {stuck} CloudImages stuck, \
         {} leaks, {} panics, max operator RSS {} KiB, {} operator log lines scanned, {} tokens looked for",
        found.len(),
        panics.len(),
        replicas.max_rss_kib,
        log_lines,
        hidden.tokens.len(),
    ));
    say(&format!(
        "times: fault phase {phase_took:?}, quiescence {quiesce_took:?}, whole run {:?}",
        started.elapsed()
    ));
    if !violations.is_empty() {
        let logs: Vec<String> = replicas
            .logs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        panic!(
            "{} invariant violations; reproduce with CHAOS_SEED={seed} CHAOS_OBJECTS={} CHAOS_SECONDS={}:\n{}\n\
             namespaces (left as they are): {}\noperator logs: {}",
            violations.len(),
            settings.objects,
            settings.seconds,
            violations.join("\n"),
            namespaces.join(", "),
            logs.join(" ")
        );
    }

    // --------------------------------------------------------------- cleanup ---
    for r in 0..2 {
        replicas.kill(r).await;
    }
    for ns in &namespaces {
        let strip = Patch::Merge(json!({"metadata": {"finalizers": null}}));
        for o in cimgs(&client, ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            let _ = cimgs(&client, ns)
                .patch(&o.name_any(), &PatchParams::default(), &strip)
                .await;
        }
        for sec in secrets(&client, ns)
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            if sec.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
                let _ = secrets(&client, ns)
                    .patch(&sec.name_any(), &PatchParams::default(), &strip)
                    .await;
            }
        }
        let _ = nss.delete(ns, &DeleteParams::default()).await;
    }
    let _ = std::fs::remove_file(&bundle_file);
    for img in &pop.imgs {
        if g.exists(&img.id).await {
            if img.protected {
                g.set_protected(&img.id, false).await;
            }
            let _ = g.delete_raw(&img.id, Some(&g.token)).await;
        }
    }
    say(&format!("passed in {:?}", started.elapsed()));
}

/// CloudImages in a namespace, and its Secrets the operator holds.
async fn leftovers(client: &Client, ns: &str) -> Result<(usize, usize), String> {
    let objects = cimgs(client, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
        .len();
    let held = secrets(client, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
        .iter()
        .filter(|s| s.finalizers().iter().any(|f| f == SECRET_FINALIZER))
        .count();
    Ok((objects, held))
}

/// What is not settled yet, if anything: deleted CloudImages still there,
/// survivors not Ready, the doomed namespace still there, Secrets held
/// without a user (or not held with one). API errors count as not settled.
async fn pending(
    client: &Client,
    pop: &Population,
    namespaces: &[String],
    nss: &Api<Namespace>,
) -> Result<(), String> {
    let mut left = Vec::new();
    for (ns_i, ns) in namespaces.iter().enumerate() {
        if ns_i == DOOMED {
            if nss.get_opt(ns).await.map_err(|e| e.to_string())?.is_some() {
                let (objects, held) = leftovers(client, ns).await?;
                if objects == 0 && held == 0 {
                    // Nothing of the operator's is left: the namespace
                    // controller is in its retry back-off (it grows with
                    // every failure while kube-apiserver restarts, up to
                    // 1000 s). An update of the namespace queues it again.
                    let nudge = json!({"metadata": {"annotations": {
                        "chaos.cloudimage.dev/nudge": std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_millis().to_string())
                            .unwrap_or_default()
                    }}});
                    let _ = nss
                        .patch(ns, &PatchParams::default(), &Patch::Merge(nudge))
                        .await;
                }
                left.push(format!(
                    "namespace {ns} still there ({objects} CloudImages, {held} held Secrets)"
                ));
            }
            continue;
        }
        let list = cimgs(client, ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        let by_name: BTreeMap<String, &CloudImage> =
            list.iter().map(|o| (o.name_any(), o)).collect();
        for o in pop.objs.iter().filter(|o| o.ns == ns_i) {
            match by_name.get(&o.name) {
                Some(c) if !o.fate.survives() => left.push(format!(
                    "{ns}/{} not gone ({:?})",
                    o.name,
                    c.status
                        .as_ref()
                        .and_then(|st| common::reason(st, "Deleting"))
                )),
                Some(c) => {
                    let ready = c
                        .status
                        .as_ref()
                        .and_then(|st| common::condition(st, "Ready"))
                        .is_some_and(|c| c.status == "True" && c.reason == "ImageAvailable");
                    if !ready {
                        left.push(format!("{ns}/{} not Ready", o.name));
                    }
                }
                None if o.fate.survives() => {
                    // A survivor that is gone will not come back: reported
                    // by the invariants, no use waiting.
                }
                None => {}
            }
        }
        let users: BTreeSet<&str> = list
            .iter()
            .map(|o| o.spec.cloud_ref.secret_name.as_str())
            .collect();
        for sec in secrets(client, ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
        {
            let held = sec.finalizers().iter().any(|f| f == SECRET_FINALIZER);
            if held != users.contains(sec.name_any().as_str()) {
                left.push(format!("Secret {ns}/{} held={held}", sec.name_any()));
            }
        }
    }
    if !left.is_empty() {
        let n = left.len();
        left.truncate(5);
        return Err(format!("{n} not settled, e.g. {}", left.join("; ")));
    }
    // Images are not waited for: a CloudImage with policy Delete goes only
    // once its image is gone, so an image still there now stays there
    // (the invariants report it).
    Ok(())
}
