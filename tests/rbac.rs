//! Proves the shipped RBAC is enough: the operator runs with only a token of
//! its ServiceAccount (not the admin certificate) and completes a deletion,
//! once with `deploy/rbac.yaml` (cluster-wide), once installed by the Helm
//! chart watching a single namespace (RoleBinding only), and once installed by
//! the chart with Secret access only in a namespace that opted in.

mod common;

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, Scope as ApiScope};
use kube::{Api, ResourceExt};
use serde_json::json;

use common::glance::Glance;
use common::{Scope, T, run_tool, spec};

/// Applies every document of a manifest file with server-side apply.
async fn apply_manifest(client: &kube::Client, path: &str) {
    let text = std::fs::read_to_string(path).expect("manifest");
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let obj: DynamicObject = serde::Deserialize::deserialize(doc).expect("document");
        let gvk = obj
            .types
            .as_ref()
            .map(|t| kube::api::GroupVersionKind::try_from(t).expect("gvk"))
            .expect("types");
        let (ar, caps) = discovery.resolve_gvk(&gvk).expect("known kind");
        let api: Api<DynamicObject> = match caps.scope {
            ApiScope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.namespace().as_deref().unwrap_or("default"),
                &ar,
            ),
            ApiScope::Cluster => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("cloudimage-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {}: {e}", obj.name_any()));
    }
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

/// A CloudImage is created, seen Ready, deleted, and its image is gone.
async fn deletion_works_as(s: &Scope, kubeconfig: &Path) {
    s.put_secret("creds", &s.env.clouds_yaml("c", "demo", json!({})))
        .await;
    let g = Glance::as_user(&s.env, "demo").await;
    let id = g.create_image("rbac", "private").await;
    let _op = s.start_operator_with_kubeconfig(kubeconfig, &[]);
    s.create("img", spec(&id, "creds", "c"))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
    s.wait_event("img", "ImageDeleted", T).await;
}

#[tokio::test]
async fn the_operator_works_with_only_the_plain_manifest_rbac() {
    let s = Scope::new("rbac").await;
    apply_manifest(
        &s.client,
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml"),
    )
    .await;
    let kc = service_account_kubeconfig(&s, "cloudimage-system", "cloudimage-operator").await;
    deletion_works_as(&s, &kc).await;
}

/// Installs the operator's chart as release `s.ns` in `s.ns`, with `--set`
/// values; returns the kubeconfig of the chart's ServiceAccount.
async fn install_chart(s: &Scope, set: &[String]) -> PathBuf {
    let release = s.ns.clone();
    let out = std::process::Command::new(s.env.var("HELM"))
        .args(["upgrade", "--install", &release])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/cloudimage-operator"
        ))
        .args([
            "--namespace",
            &s.ns,
            "--kubeconfig",
            &s.env.var("KUBECONFIG"),
        ])
        .args(set.iter().map(|v| format!("--set={v}")))
        .args(["--wait=false", "--timeout", "60s"])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sa = format!("{release}-cloudimage-operator");
    service_account_kubeconfig(s, &s.ns, &sa).await
}

/// A client that authenticates with `kubeconfig`.
async fn client_of(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

/// The HTTP status of a refused request, or `None` when it was allowed.
fn refused<T>(r: Result<T, kube::Error>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(kube::Error::Api(e)) => Some(e.code),
        Err(e) => panic!("not an API answer: {e}"),
    }
}

#[tokio::test]
async fn the_helm_chart_installs_and_its_namespaced_rbac_is_enough() {
    let s = Scope::new("chart").await;
    // The chart's ServiceAccount, bound only in this namespace.
    let kc = install_chart(&s, &[format!("watchNamespaces={{{}}}", s.ns)]).await;
    deletion_works_as(&s, &kc).await;
}

#[tokio::test]
async fn the_helm_chart_with_secrets_only_in_opted_in_namespaces_is_enough() {
    let s = Scope::new("chartsec").await;
    // Only this namespace opts in, and only for the Secret `creds`;
    // watchNamespaces is left empty: the chart watches the opted-in namespace.
    let kc = install_chart(
        &s,
        &[
            "secretAccess.mode=namespaces".into(),
            format!("secretAccess.namespaces={{{}}}", s.ns),
            "secretAccess.resourceNames={creds}".into(),
        ],
    )
    .await;
    deletion_works_as(&s, &kc).await;

    // What the token cannot do: any Secret of another namespace, or a Secret
    // of this one that is not named.
    s.put_secret("unrelated", "not: credentials").await;
    let sa = client_of(&kc).await;
    let here: Api<Secret> = Api::namespaced(sa.clone(), &s.ns);
    assert_eq!(refused(here.get_metadata("creds").await), None);
    assert_eq!(refused(here.get("unrelated").await), Some(403));
    let hold = json!({"metadata": {"finalizers": ["example.com/x"]}});
    assert_eq!(
        refused(
            here.patch_metadata(
                "unrelated",
                &PatchParams::default(),
                &Patch::Strategic(&hold)
            )
            .await
        ),
        Some(403)
    );
    let elsewhere: Api<Secret> = Api::namespaced(sa.clone(), "default");
    assert_eq!(
        refused(elsewhere.list_metadata(&ListParams::default()).await),
        Some(403)
    );
    let everywhere: Api<Secret> = Api::all(sa);
    assert_eq!(
        refused(everywhere.list_metadata(&ListParams::default()).await),
        Some(403)
    );
}

/// Every values file under the chart's `ci/` (and the defaults) passes
/// `helm lint --strict`, renders, and is accepted by the API server (a
/// server-side dry run, with the Pod Security Standard "restricted" warning
/// on the release namespace).
#[tokio::test]
async fn the_chart_renders_valid_manifests_for_every_ci_values_file() {
    let s = Scope::new("chartci").await;
    let nss: Api<Namespace> = Api::all(s.client.clone());
    nss.patch(
        &s.ns,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/enforce": "restricted",
        }}})),
    )
    .await
    .expect("label the namespace");
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/cloudimage-operator");
    let mut files: Vec<Option<PathBuf>> = vec![None];
    let mut ci: Vec<PathBuf> = std::fs::read_dir(Path::new(chart).join("ci"))
        .expect("the chart's ci/ directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    ci.sort();
    assert!(!ci.is_empty(), "no values files in {chart}/ci");
    files.extend(ci.into_iter().map(Some));
    for (i, file) in files.iter().enumerate() {
        let name = file
            .as_ref()
            .map_or("defaults".into(), |f| f.display().to_string());
        let mut values: Vec<&str> = vec![];
        if let Some(f) = file {
            values.extend(["--values", f.to_str().expect("utf-8 path")]);
        }
        let lint: Vec<&str> = [&["lint", "--strict", chart][..], &values].concat();
        let (ok, out) = run_tool(&s.env, "HELM", &lint);
        assert!(ok, "helm lint --strict with {name}: {out}");
        let release = format!("{}-{i}", s.ns);
        let template: Vec<&str> = [
            &["template", &release, chart, "--namespace", &s.ns][..],
            &values,
        ]
        .concat();
        let out = std::process::Command::new(s.env.var("HELM"))
            .args(&template)
            .output()
            .expect("run helm template");
        assert!(
            out.status.success(),
            "helm template with {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8(out.stdout).expect("utf-8");
        // The namespaces the values name must exist for the dry run.
        for doc in serde_yaml::Deserializer::from_str(&rendered) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("document");
            if let Some(ns) = v["metadata"]["namespace"].as_str()
                && nss.get_opt(ns).await.expect("get namespace").is_none()
            {
                let created = nss
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
                    )
                    .await;
                if let Err(kube::Error::Api(e)) = &created
                    && e.code == 409
                {
                    continue;
                }
                created.expect("create namespace");
            }
        }
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{release}.yaml"));
        std::fs::write(&path, &rendered).expect("write the rendered chart");
        let (ok, out) = run_tool(
            &s.env,
            "KUBECTL",
            &[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-f",
                path.to_str().expect("utf-8 path"),
            ],
        );
        assert!(ok, "server-side dry run of the chart with {name}: {out}");
        assert!(
            !out.contains("Warning"),
            "warnings from the API server with {name}: {out}"
        );
    }
}
