//! The Helm chart as a platform team installs it, against the real
//! kube-apiserver: with default values it creates two replicas with leader
//! election, a PodDisruptionBudget, a rolling update, a topology spread and
//! the Lease RBAC; its values schema refuses wrong values at `helm install`;
//! the operator, authenticated only with the chart's ServiceAccount token,
//! takes the chart's Lease, leads, completes a deletion and releases the
//! Lease on SIGTERM; `helm uninstall` leaves the CRD (and the CloudImages).

mod common;

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{EnvVar, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::PostParams;
use serde::Deserialize;
use serde_json::json;

use common::glance::Glance;
use common::{Scope, T, run_tool, spec, wait_for};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/cloudimage-operator");

/// The chart's full name (and default Lease name) for a release.
fn fullname(release: &str) -> String {
    format!("{release}-cloudimage-operator")
}

/// `helm install` of the chart as release `s.ns` into `s.ns`, with `--set`
/// values; returns (success, helm's output).
fn helm_install(s: &Scope, set: &[String]) -> (bool, String) {
    let mut args: Vec<String> = vec![
        "install".into(),
        s.ns.clone(),
        CHART.into(),
        "--namespace".into(),
        s.ns.clone(),
        "--wait=false".into(),
        "--timeout".into(),
        "60s".into(),
    ];
    args.extend(set.iter().map(|v| format!("--set={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_tool(&s.env, "HELM", &args)
}

/// A kubeconfig that authenticates as ServiceAccount `sa` in `ns`, not as admin.
async fn service_account_kubeconfig(s: &Scope, ns: &str, sa: &str) -> PathBuf {
    let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), ns);
    let tr: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
            .expect("token request");
    let token = sas
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .expect("a ServiceAccount token")
        .status
        .expect("status")
        .token;
    let admin = std::fs::read_to_string(s.env.var("KUBECONFIG")).expect("kubeconfig");
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&admin).expect("yaml");
    if let Some(users) = kc.get_mut("users").and_then(|u| u.as_sequence_mut()) {
        for u in users {
            u["user"] = serde_yaml::to_value(json!({"token": token})).expect("user");
        }
    }
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-sa.kubeconfig", s.ns));
    std::fs::write(&path, serde_yaml::to_string(&kc).expect("yaml")).expect("write kubeconfig");
    path
}

/// `kubectl auth can-i VERB RESOURCE` as the chart's ServiceAccount in `s.ns`.
fn sa_can(s: &Scope, sa: &str, verb: &str, resource: &str) -> bool {
    let (_, out) = run_tool(
        &s.env,
        "KUBECTL",
        &[
            "auth",
            "can-i",
            verb,
            resource,
            "--namespace",
            &s.ns,
            "--as",
            &format!("system:serviceaccount:{}:{sa}", s.ns),
        ],
    );
    match out.lines().next().map(str::trim) {
        Some("yes") => true,
        Some("no") => false,
        _ => panic!("kubectl auth can-i {verb} {resource}: {out}"),
    }
}

fn env_field_ref(env: &[EnvVar], name: &str) -> Option<String> {
    env.iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

fn rule_verbs(rules: &[PolicyRule], names: Option<&[String]>) -> Vec<String> {
    rules
        .iter()
        .filter(|r| {
            r.api_groups.as_deref() == Some(&["coordination.k8s.io".to_string()][..])
                && r.resources.as_deref() == Some(&["leases".to_string()][..])
                && r.resource_names.as_deref() == names
        })
        .flat_map(|r| r.verbs.clone())
        .collect()
}

#[tokio::test]
async fn the_default_install_has_two_replicas_a_pdb_and_the_lease_rbac() {
    let s = Scope::new("install").await;
    let (ok, out) = helm_install(&s, &[]);
    assert!(ok, "helm install with default values: {out}");
    assert!(
        out.contains("kubectl get cloudimages -A") && out.contains("holderIdentity"),
        "the NOTES tell how to check it works: {out}"
    );
    let name = fullname(&s.ns);

    // The Deployment, as the API server stored it.
    let deploy = Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
        .get(&name)
        .await
        .expect("the Deployment");
    let ds = deploy.spec;
    assert_eq!(ds.replicas, Some(2), "two replicas by default");
    let strategy = ds.strategy.expect("strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let ru = strategy.rolling_update.expect("rollingUpdate");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
    let pod = ds.template.spec.expect("pod spec");
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    for want in [
        "--leader-elect".to_string(),
        format!("--leader-election-id={name}"),
        "--lease-duration=15s".into(),
        "--renew-deadline=10s".into(),
        "--retry-period=2s".into(),
    ] {
        assert!(
            args.contains(&want),
            "{want} in the operator's args {args:?}"
        );
    }
    let env = c.env.clone().unwrap_or_default();
    assert_eq!(
        env_field_ref(&env, "POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        env_field_ref(&env, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace"),
        "the Lease's namespace comes from the downward API"
    );
    assert_eq!(c.image.as_deref(), Some("cloudimage-operator:0.1.0"));
    let tsc = pod
        .topology_spread_constraints
        .expect("a topology spread constraint");
    assert_eq!(tsc.len(), 1);
    assert_eq!(tsc[0].topology_key, "kubernetes.io/hostname");
    assert_eq!(tsc[0].when_unsatisfiable, "ScheduleAnyway");
    let sel = tsc[0]
        .label_selector
        .as_ref()
        .and_then(|l| l.match_labels.clone())
        .expect("spread over the operator's own pods");
    assert_eq!(
        sel.get("app.kubernetes.io/instance").map(String::as_str),
        Some(s.ns.as_str())
    );

    // The PodDisruptionBudget keeps one of the two.
    let pdb = Api::<PodDisruptionBudget>::namespaced(s.client.clone(), &s.ns)
        .get(&name)
        .await
        .expect("the PodDisruptionBudget");
    let ps = pdb.spec.expect("spec");
    assert_eq!(ps.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        ps.selector.and_then(|l| l.match_labels),
        ds.selector.match_labels,
        "the PDB selects the Deployment's pods"
    );

    // The Lease RBAC: a Role in the release namespace, bound to the
    // ServiceAccount, allowing create, and get/update on its Lease only.
    let rname = format!("{name}-leader-election");
    let role = Api::<Role>::namespaced(s.client.clone(), &s.ns)
        .get(&rname)
        .await
        .expect("the leader election Role");
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rule_verbs(&rules, None), ["create"]);
    assert_eq!(
        rule_verbs(&rules, Some(&[name.clone()][..])),
        ["get", "update"]
    );
    let rb = Api::<RoleBinding>::namespaced(s.client.clone(), &s.ns)
        .get(&rname)
        .await
        .expect("the leader election RoleBinding");
    assert_eq!(rb.role_ref.name, rname);
    let subjects = rb.subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|x| x.kind == "ServiceAccount"
            && x.name == name
            && x.namespace.as_deref() == Some(s.ns.as_str())),
        "bound to the chart's ServiceAccount: {subjects:?}"
    );
    // What the API server's authorizer says about the ServiceAccount.
    let lease = format!("leases.coordination.k8s.io/{name}");
    assert!(sa_can(&s, &name, "create", "leases.coordination.k8s.io"));
    assert!(sa_can(&s, &name, "get", &lease));
    assert!(sa_can(&s, &name, "update", &lease));
    assert!(!sa_can(&s, &name, "delete", &lease));
    assert!(!sa_can(
        &s,
        &name,
        "update",
        "leases.coordination.k8s.io/another-operators-lease"
    ));

    // helm uninstall never deletes the CRD (nor, with it, the CloudImages).
    let crds: Api<CustomResourceDefinition> = Api::all(s.client.clone());
    let uid = crds
        .get("cloudimages.cloudimage.dev")
        .await
        .expect("the CRD")
        .metadata
        .uid;
    s.create(
        "kept",
        spec("00000000-0000-0000-0000-000000000000", "none", "none"),
    )
    .await
    .expect("create a CloudImage");
    let (ok, out) = run_tool(
        &s.env,
        "HELM",
        &["uninstall", &s.ns, "--namespace", &s.ns, "--wait"],
    );
    assert!(ok, "helm uninstall: {out}");
    assert_eq!(
        crds.get("cloudimages.cloudimage.dev")
            .await
            .expect("the CRD is still there")
            .metadata
            .uid,
        uid,
        "the same CRD, never deleted and recreated"
    );
    assert!(
        s.get("kept").await.is_some(),
        "the CloudImage is still there"
    );
}

#[tokio::test]
async fn wrong_values_fail_on_the_schema_at_helm_install() {
    let s = Scope::new("schema").await;
    for (set, names) in [
        ("replicas=two", "/replicas"),
        ("concurrency=-1", "/concurrency"),
        ("logFormat=xml", "/logFormat"),
        ("leaderElection.enabled=maybe", "/leaderElection/enabled"),
        (
            "leaderElection.leaseDuration=soon",
            "/leaderElection/leaseDuration",
        ),
        ("metrics.port=0", "/metrics/port"),
        ("secretAccess.mode=everywhere", "/secretAccess/mode"),
        ("replica=3", "replica"),
    ] {
        let (ok, out) = helm_install(&s, &[set.into()]);
        assert!(!ok, "helm install --set {set} must fail");
        assert!(
            out.contains("schema") && out.contains(names),
            "helm install --set {set} fails on the schema, naming {names}: {out}"
        );
    }
    // A values combination the schema cannot see: the chart refuses it.
    let (ok, out) = helm_install(&s, &["leaderElection.enabled=false".into()]);
    assert!(!ok, "two replicas without leader election must fail");
    assert!(out.contains("needs leaderElection.enabled=true"), "{out}");
    // Nothing was installed.
    let (_, out) = run_tool(&s.env, "HELM", &["list", "--namespace", &s.ns, "-q"]);
    assert!(out.trim().is_empty(), "no release: {out}");
    let deployments = Api::<Deployment>::namespaced(s.client.clone(), &s.ns)
        .list(&Default::default())
        .await
        .expect("list Deployments");
    assert!(deployments.items.is_empty());
}

/// Optional parts: the ServiceMonitor (with its Service) only when asked;
/// without leader election one replica, Recreate, no PDB, no Lease RBAC.
#[tokio::test]
async fn the_chart_renders_its_optional_parts_only_when_asked() {
    let s = Scope::new("chartopt").await;
    let template = |extra: &[&str]| -> Vec<serde_yaml::Value> {
        let out = std::process::Command::new(s.env.var("HELM"))
            .args(["template", "r", CHART, "--namespace", "ops"])
            .args(extra)
            .output()
            .expect("run helm template");
        assert!(
            out.status.success(),
            "helm template {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("document"))
            .filter(|v: &serde_yaml::Value| !v.is_null())
            .collect()
    };
    let kinds = |docs: &[serde_yaml::Value]| -> Vec<String> {
        docs.iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    let defaults = template(&[]);
    let k = kinds(&defaults);
    assert!(!k.contains(&"ServiceMonitor".into()), "{k:?}");
    assert!(!k.contains(&"Service".into()), "{k:?}");

    let docs = template(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prom",
    ]);
    let sm = docs
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("the metrics Service it scrapes");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");
    let want = sm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("selector");
    for (k, v) in want {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the Service ({k:?})"
        );
    }

    let docs = template(&[
        "--set",
        "replicas=1",
        "--set",
        "leaderElection.enabled=false",
    ]);
    let k = kinds(&docs);
    assert!(!k.contains(&"PodDisruptionBudget".into()), "{k:?}");
    assert!(!k.contains(&"Role".into()), "{k:?}");
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("Deployment");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let args = serde_yaml::to_string(&d["spec"]["template"]["spec"]["containers"][0]["args"])
        .expect("yaml");
    assert!(!args.contains("--leader-elect"), "{args}");
}

#[tokio::test]
async fn the_operator_with_the_charts_token_takes_the_lease_and_deletes() {
    let s = Scope::new("installop").await;
    // Namespaced: the chart binds its ClusterRole in this namespace only.
    let (ok, out) = helm_install(&s, &[format!("watchNamespaces={{{}}}", s.ns)]);
    assert!(ok, "helm install: {out}");
    let name = fullname(&s.ns);
    let kc = service_account_kubeconfig(&s, &s.ns, &name).await;

    s.put_secret("creds", &s.env.clouds_yaml("c", "demo", json!({})))
        .await;
    let g = Glance::as_user(&s.env, "demo").await;
    let id = g.create_image("install", "private").await;
    // As the chart runs it: the Lease named after the release, in its namespace.
    let op = s.start_operator_with_kubeconfig(
        &kc,
        &[
            "--leader-elect",
            "--leader-election-namespace",
            &s.ns,
            "--leader-election-id",
            &name,
        ],
    );
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), &s.ns);
    let holder = wait_for("the operator to hold the chart's Lease", T, || async {
        match leases.get_opt(&name).await.expect("get Lease") {
            Some(l) => l
                .spec
                .and_then(|sp| sp.holder_identity)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| "no holder yet".to_string()),
            None => Err(format!("no Lease yet; operator log:\n{}", op.log())),
        }
    })
    .await;
    wait_for("cloudimage_leader 1 on /metrics", T, || async {
        match op.metric("cloudimage_leader").await as i64 {
            1 => Ok(()),
            v => Err(format!("cloudimage_leader {v}")),
        }
    })
    .await;
    println!("the Lease {}/{name} is held by {holder}", s.ns);

    s.create("img", spec(&id, "creds", "c"))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await, "the image is gone");
    s.wait_event("img", "ImageDeleted", T).await;

    // SIGTERM: the leader releases the Lease (an update the Role allows).
    let log_path = op.log_path.clone();
    let status = op.terminate().await;
    assert!(status.success(), "the operator stops cleanly: {status:?}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.to_ascii_lowercase().contains("lease") && l.to_ascii_lowercase().contains("forbidden")
        })
        .collect();
    assert!(
        refused.is_empty(),
        "no Lease request of the operator was refused: {refused:#?}"
    );
    let released = leases
        .get(&name)
        .await
        .expect("the Lease")
        .spec
        .and_then(|sp| sp.holder_identity)
        .unwrap_or_default();
    assert!(
        released.is_empty(),
        "the Lease is released on SIGTERM, held by {released:?}"
    );
}

/// deploy/rbac.yaml's Lease Role fits deploy/operator.yaml's flags: the
/// operator with only that ServiceAccount's token takes the Lease named
/// there, in cloudimage-system, and releases it on SIGTERM.
#[tokio::test]
async fn the_plain_manifests_let_the_operator_take_its_lease() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/operator.yaml"))
            .expect("deploy/operator.yaml");
    let deploy: Deployment = serde_yaml::Deserializer::from_str(&manifest)
        .map(|d| serde_yaml::Value::deserialize(d).expect("document"))
        .find(|v| v["kind"] == "Deployment")
        .map(|v| serde_yaml::from_value(v).expect("a Deployment"))
        .expect("a Deployment in deploy/operator.yaml");
    let spec = deploy.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert!(args.contains(&"--leader-elect".to_string()), "{args:?}");
    let id = args
        .iter()
        .find_map(|a| a.strip_prefix("--leader-election-id="))
        .expect("--leader-election-id")
        .to_owned();
    let env = pod.containers[0].env.clone().unwrap_or_default();
    assert_eq!(
        env_field_ref(&env, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );

    let s = Scope::new("plainlease").await;
    let (ok, out) = run_tool(
        &s.env,
        "KUBECTL",
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "cloudimage-tests",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml"),
        ],
    );
    assert!(ok, "apply deploy/rbac.yaml: {out}");
    let ns = "cloudimage-system";
    let kc = service_account_kubeconfig(&s, ns, "cloudimage-operator").await;
    let op = s.start_operator_with_kubeconfig(
        &kc,
        &[
            "--leader-elect",
            "--leader-election-namespace",
            ns,
            "--leader-election-id",
            &id,
        ],
    );
    // A Lease left held by a killed run is taken once it expires (15 s).
    wait_for("cloudimage_leader 1 on /metrics", T, || async {
        match op.metric("cloudimage_leader").await as i64 {
            1 => Ok(()),
            v => Err(format!("cloudimage_leader {v}; log:\n{}", op.log())),
        }
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), ns);
    let holder = leases
        .get(&id)
        .await
        .expect("the Lease")
        .spec
        .and_then(|sp| sp.holder_identity)
        .unwrap_or_default();
    assert!(!holder.is_empty(), "the Lease {ns}/{id} has a holder");
    assert!(op.terminate().await.success());
    let after = leases
        .get(&id)
        .await
        .expect("the Lease")
        .spec
        .and_then(|sp| sp.holder_identity)
        .unwrap_or_default();
    assert!(
        after.is_empty(),
        "released on SIGTERM, still held by {after:?}"
    );
}

/// The image reference agrees everywhere: the chart's appVersion is the
/// crate's version, `image.repository` and deploy/operator.yaml name the
/// image the Dockerfile documents, and the Dockerfile's user is the one the
/// chart and the manifest run as.
#[test]
fn the_image_reference_and_user_agree_everywhere() {
    let read = |p: &str| {
        std::fs::read_to_string(format!("{}/{p}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let version = env!("CARGO_PKG_VERSION");
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/cloudimage-operator/Chart.yaml")).expect("Chart.yaml");
    assert_eq!(chart["appVersion"].as_str(), Some(version), "appVersion");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read("charts/cloudimage-operator/values.yaml")).expect("values.yaml");
    assert_eq!(values["image"]["repository"], "cloudimage-operator");
    assert_eq!(values["image"]["tag"], "", "the tag defaults to appVersion");
    assert_eq!(values["securityContext"]["runAsUser"], 65532);
    let image = format!("cloudimage-operator:{version}");
    assert!(
        read("deploy/operator.yaml").contains(&format!("image: {image}")),
        "deploy/operator.yaml runs {image}"
    );
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(&format!("-t cloudimage-operator:{version}")),
        "the Dockerfile builds {image}"
    );
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("FROM gcr.io/distroless/cc-debian12:nonroot"));
    assert!(dockerfile.contains("cargo build --release --locked"));
}
