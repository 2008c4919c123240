//! Shared harness of the integration tests: the environment `testenv/env.sh up`
//! started (real kube-apiserver, real Keystone + Glance), a fresh namespace per
//! test, the operator as a real child process, and waits with deadlines.
#![allow(dead_code)]

pub mod fault_relay;
pub mod gitops;
pub mod glance;
pub mod hostile;
pub mod ims_double;
pub mod relay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use cloudimage_operator::crd::{CloudImage, CloudImageStatus};

/// The environment `testenv/env.sh up` started, as its `env.json` describes it
/// (the keys of the sourceable `env` file, every value a string).
#[derive(Clone, Debug)]
pub struct TestEnv {
    pub vars: BTreeMap<String, String>,
}

impl TestEnv {
    /// The state dir: `CLOUDIMAGE_TESTENV_DIR`, else env.sh's default.
    pub fn dir() -> PathBuf {
        std::env::var("CLOUDIMAGE_TESTENV_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                let home = std::env::var("HOME").expect("HOME is set");
                PathBuf::from(home).join(".cache/cloudimage-testenv/run")
            })
    }

    /// Reads `env.json` once per process. Without one there is no environment:
    /// one line on stderr naming the command to run, and exit status 2 (no
    /// panic in every test).
    pub fn load() -> TestEnv {
        static ENV: OnceLock<TestEnv> = OnceLock::new();
        ENV.get_or_init(|| {
            let path = Self::dir().join("env.json");
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    use std::io::Write as _;
                    // Straight to fd 2: the test harness captures `eprintln!`.
                    let _ = writeln!(
                        std::io::stderr(),
                        "no test environment at {}: start one with testenv/env.sh up \
                         (or run everything with testenv/run-tests.sh)",
                        path.display()
                    );
                    std::process::exit(2);
                }
                Err(e) => panic!("cannot read {}: {e}", path.display()),
            };
            let vars = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!("{} is not a JSON object of strings: {e}", path.display())
            });
            TestEnv { vars }
        })
        .clone()
    }

    pub fn var(&self, k: &str) -> String {
        self.vars
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("the test environment's env.json has no {k}"))
    }

    pub fn keystone_url(&self) -> String {
        self.var("KEYSTONE_URL")
    }

    pub fn glance_url(&self) -> String {
        self.var("GLANCE_URL")
    }

    pub fn password(&self, user: &str) -> String {
        self.var(&format!(
            "CLOUDIMAGE_TEST_{}_PASSWORD",
            user.to_ascii_uppercase()
        ))
    }

    /// A clouds.yaml with one cloud named `name` for `user` (admin, demo or
    /// other), with extra keys merged into the cloud entry.
    pub fn clouds_yaml(&self, name: &str, user: &str, extra: serde_json::Value) -> String {
        let mut entry = json!({
            "auth": {
                "auth_url": self.keystone_url(),
                "username": user,
                "password": self.password(user),
                "project_name": user,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": "RegionOne",
            "interface": "public",
            "identity_api_version": 3,
        });
        if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                e.insert(k.clone(), v.clone());
            }
        }
        serde_yaml::to_string(&json!({ "clouds": { name: entry } })).expect("yaml")
    }

    pub async fn kube(&self) -> Client {
        let kc = Kubeconfig::read_from(self.var("KUBECONFIG")).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kube config");
        Client::try_from(cfg).expect("kube client")
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `deadline`
/// with the description and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("(never checked)");
    while start.elapsed() < deadline {
        match check().await {
            Ok(v) => return v,
            Err(s) => last = s,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
}

/// The CRD, applied from the committed file, and waited for until it is served.
pub async fn install_crd(client: &Client) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/cloudimage.dev_cloudimages.yaml"
    ))
    .expect("crd file");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("crd yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &crd.name_any(),
        &PatchParams::apply("cloudimage-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    let cimgs: Api<CloudImage> = Api::all(client.clone());
    wait_for(
        "the CloudImage CRD to be served",
        Duration::from_secs(60),
        || {
            let cimgs = cimgs.clone();
            async move {
                cimgs
                    .list(&ListParams::default().limit(1))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
}

/// One test's namespace, client and helpers.
pub struct Scope {
    pub env: TestEnv,
    pub client: Client,
    pub ns: String,
}

impl Scope {
    /// Loads the environment, installs the CRD and creates a fresh namespace.
    pub async fn new(test: &str) -> Scope {
        let env = TestEnv::load();
        let client = env.kube().await;
        install_crd(&client).await;
        let ns = format!(
            "{}-{}",
            test.replace('_', "-"),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let nss: Api<Namespace> = Api::all(client.clone());
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
        .expect("create namespace");
        Scope { env, client, ns }
    }

    pub fn cimgs(&self) -> Api<CloudImage> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates or replaces the Secret `name` with a `clouds.yaml` key.
    pub async fn put_secret(&self, name: &str, clouds_yaml: &str) {
        let s: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"clouds.yaml": clouds_yaml}
        }))
        .expect("secret");
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("cloudimage-tests").force(),
                &Patch::Apply(&s),
            )
            .await
            .expect("apply secret");
    }

    /// Creates a CloudImage from a spec.
    pub async fn create(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<CloudImage, kube::Error> {
        let obj: CloudImage = serde_json::from_value(json!({
            "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("CloudImage");
        self.cimgs().create(&PostParams::default(), &obj).await
    }

    /// Posts a CloudImage as raw JSON, bypassing the Rust types (for invalid specs).
    pub async fn create_raw(
        &self,
        name: &str,
        spec: serde_json::Value,
    ) -> Result<DynamicObject, kube::Error> {
        let ar = ApiResource::erase::<CloudImage>(&());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.ns, &ar);
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
            "metadata": {"name": name}, "spec": spec
        }))
        .expect("object");
        api.create(&PostParams::default(), &obj).await
    }

    /// `n` private images in Glance and a CloudImage for each
    /// (`{prefix}-{i}`, default Secret and cloud); the image ids, in order.
    pub async fn backed_objects(&self, g: &glance::Glance, prefix: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let id = g.create_image(&format!("{prefix}-{i}"), "private").await;
            self.create(&format!("{prefix}-{i}"), spec(&id, SECRET, CLOUD))
                .await
                .expect("create CloudImage");
            ids.push(id);
        }
        ids
    }

    pub async fn delete(&self, name: &str) {
        self.cimgs()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete CloudImage");
    }

    pub async fn get(&self, name: &str) -> Option<CloudImage> {
        self.cimgs().get_opt(name).await.expect("get CloudImage")
    }

    /// Waits until the object has our finalizer and a status satisfying `pred`.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&CloudImageStatus) -> bool,
    ) -> CloudImage {
        wait_for(what, deadline, || async {
            match self.get(name).await {
                Some(o) if o.status.as_ref().is_some_and(&pred) => Ok(o),
                Some(o) => Err(format!(
                    "status {:?}, finalizers {:?}",
                    o.status, o.metadata.finalizers
                )),
                None => Err("object is gone".into()),
            }
        })
        .await
    }

    /// Waits until `Ready` is True with reason `ImageAvailable`.
    pub async fn wait_ready(&self, name: &str) -> CloudImage {
        self.wait_reason(name, "Ready", "ImageAvailable").await
    }

    /// Waits until the condition `type_` has `reason`.
    pub async fn wait_reason(&self, name: &str, type_: &str, want: &str) -> CloudImage {
        self.wait_status(name, &format!("{type_}={want}"), T, |st| {
            reason(st, type_).as_deref() == Some(want)
        })
        .await
    }

    pub async fn wait_gone(&self, name: &str, deadline: Duration) {
        wait_for(
            &format!("CloudImage {name} to be gone from the API"),
            deadline,
            || async {
                match self.get(name).await {
                    None => Ok(()),
                    Some(o) => Err(format!(
                        "still there: status {:?}, finalizers {:?}",
                        o.status, o.metadata.finalizers
                    )),
                }
            },
        )
        .await
    }

    /// Events about `name` (events.k8s.io/v1), as (type, reason, note).
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&ListParams::default()).await.expect("list events");
        list.items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    pub async fn wait_event(
        &self,
        name: &str,
        reason: &str,
        deadline: Duration,
    ) -> (String, String, String) {
        self.wait_event_with(name, reason, "", deadline).await
    }

    /// Waits for an Event with `reason` whose note contains `text`.
    pub async fn wait_event_with(
        &self,
        name: &str,
        reason: &str,
        text: &str,
        deadline: Duration,
    ) -> (String, String, String) {
        wait_for(
            &format!("an Event {reason} about {name} saying {text:?}"),
            deadline,
            || async {
                let evs = self.events(name).await;
                evs.iter()
                    .find(|e| e.1 == reason && e.2.contains(text))
                    .cloned()
                    .ok_or_else(|| format!("{evs:?}"))
            },
        )
        .await
    }

    /// Starts the operator as a child process watching only this namespace,
    /// with short retry delays so tests finish quickly.
    pub fn start_operator(&self, extra: &[&str]) -> Operator {
        let kubeconfig = PathBuf::from(self.env.var("KUBECONFIG"));
        self.start_operator_with_kubeconfig(&kubeconfig, extra)
    }

    /// Like [`Scope::start_operator`], authenticating with another kubeconfig.
    pub fn start_operator_with_kubeconfig(
        &self,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> Operator {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        // One file per operator process (a test may run several).
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = dir.join(format!("{}-{n}.log", self.ns));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudimage-operator"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", &self.ns])
            // Short delays so tests finish quickly; a flag in `extra` replaces its default.
            .args(
                [
                    ("--retry-fast", "300ms"),
                    ("--retry-slow", "1s"),
                    ("--retry-max", "3s"),
                    ("--accepted-poll-interval", "500ms"),
                    ("--resync-interval", "2s"),
                    ("--health-addr", "127.0.0.1:0"),
                    ("--metrics-addr", "127.0.0.1:0"),
                ]
                .into_iter()
                .filter(|(flag, _)| !extra.contains(flag))
                .flat_map(|(flag, value)| [flag, value]),
            )
            .args(if extra.contains(&"--log-level") {
                vec![]
            } else {
                vec!["--log-level", "cloudimage_operator=debug,info"]
            })
            .args(extra)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true);
        // If the test process dies without running destructors (killed by a
        // timeout, say), the kernel kills the operator too: nothing outlives CI.
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start the operator");
        Operator { child, log_path }
    }
}

/// The operator under test; killed when dropped.
pub struct Operator {
    pub child: tokio::process::Child,
    pub log_path: PathBuf,
}

impl Operator {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the operator the hard way (SIGKILL), as a crash would.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// The address a listener of the operator logged (`health` or
    /// `metrics`; port 0 = a free one, so it is read from the log).
    pub async fn addr(&self, which: &str) -> String {
        let key = format!("{which}=");
        wait_for(&format!("the {which} endpoint to listen"), T, || async {
            let log = self.log();
            log.lines()
                .find(|l| l.contains("listening") && l.contains(&key))
                .and_then(|l| l.split(&key).nth(1))
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
                .ok_or(log)
        })
        .await
    }

    /// Its `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.addr("metrics").await);
        reqwest::get(url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of an unlabelled counter on its `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// The sum of a labelled metric over the series whose labels contain `label` (e.g. `operation="get"`).
    pub async fn metric_sum(&self, name: &str, label: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory of the operator process, in KiB (VmRSS).
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// Asks the operator to stop (SIGTERM) and waits for it to exit.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("operator stops within 20 s")
            .expect("wait")
    }
}

/// Runs a test tool (kubectl, helm) from the environment against the test
/// cluster; returns (success, stdout + stderr).
pub fn run_tool(env: &TestEnv, tool: &str, args: &[&str]) -> (bool, String) {
    let kubeconfig = env.var("KUBECONFIG");
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tool-home");
    let out = std::process::Command::new(env.var(tool))
        .args(args)
        .args(["--kubeconfig", &kubeconfig])
        .env("HOME", &home)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The reason of the condition `type_`.
pub fn reason(s: &CloudImageStatus, type_: &str) -> Option<String> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

pub fn condition(
    s: &CloudImageStatus,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_).cloned()
}

pub fn spec(image_id: &str, secret: &str, cloud: &str) -> serde_json::Value {
    json!({"imageId": image_id, "cloudRef": {"secretName": secret, "cloudName": cloud}})
}

pub const T: Duration = Duration::from_secs(60);

/// The cloud entry and Secret name most tests use.
pub const CLOUD: &str = "testcloud";
pub const SECRET: &str = "openstack-creds";

/// A fresh namespace holding Secret [`SECRET`] with the `demo` user's
/// credentials under [`CLOUD`], and Glance as `demo`.
pub async fn demo_scope(test: &str) -> (Scope, glance::Glance) {
    let s = Scope::new(test).await;
    s.put_secret(SECRET, &s.env.clouds_yaml(CLOUD, "demo", json!({})))
        .await;
    let g = glance::Glance::as_user(&s.env, "demo").await;
    (s, g)
}
