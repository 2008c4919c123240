//! Proves the shipped RBAC is enough: the operator runs with only a token of
//! its ServiceAccount (not the admin certificate) and completes a deletion,
//! once with `deploy/rbac.yaml` (cluster-wide) and once installed by the Helm
//! chart watching a single namespace (RoleBinding only).

mod common;

use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::{Discovery, Scope as ApiScope};
use kube::{Api, ResourceExt};
use serde_json::json;

use common::glance::Glance;
use common::{Scope, T, spec};

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

#[tokio::test]
async fn the_helm_chart_installs_and_its_namespaced_rbac_is_enough() {
    let s = Scope::new("chart").await;
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
        .arg(format!("--set=watchNamespaces={{{}}}", s.ns))
        .args(["--wait=false", "--timeout", "60s"])
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The chart's ServiceAccount, bound only in this namespace.
    let sa = format!("{release}-cloudimage-operator");
    let kc = service_account_kubeconfig(&s, &s.ns, &sa).await;
    deletion_works_as(&s, &kc).await;
}
