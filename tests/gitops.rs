//! What GitOps tools see of a CloudImage, checked with their own code on live
//! objects from the real API server (the operator, Keystone and Glance all
//! real): kstatus, the library behind Flux's health checks and `kstatus`
//! CLIs, through `testenv/go/kstatus`; and the Argo CD health check
//! `deploy/argocd/health.lua`, run by Lua 5.1 as Argo CD runs it.
//!
//! | situation                               | kstatus     | Argo CD script |
//! |-----------------------------------------|-------------|----------------|
//! | image exists and is active              | Current     | Healthy        |
//! | not checked yet / spec change unseen    | InProgress* | Progressing    |
//! | transient cloud failure, retried        | InProgress  | Progressing    |
//! | image not found, credentials broken     | Failed      | Degraded       |
//! | deletion blocked (protected image)      | Terminating | Degraded       |
//! | deletion waiting, no blocker            | Terminating | Progressing    |
//!
//! (*) before the very first status write kstatus has nothing to go on and
//! says Current; the Argo CD script says Progressing.

mod common;

use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use common::gitops::{Verdict, argocd_health, health_lua, kstatus, live_json};
use common::glance::Glance;
use common::relay::Relay;
use common::{CLOUD, SECRET, Scope, T, demo_scope, run_tool, spec};

fn verdict(status: &str, message: impl Into<String>) -> Verdict {
    Verdict {
        status: status.to_owned(),
        message: message.into(),
    }
}

/// `kubectl wait cloudimage/img ARGS` in the test namespace, which must succeed within [`T`].
fn kubectl_wait(s: &Scope, args: &[&str]) {
    let timeout = format!("--timeout={}s", T.as_secs());
    let mut all = vec!["-n", &s.ns, "wait", "cloudimage/img", &timeout];
    all.extend_from_slice(args);
    let (ok, out) = run_tool(&s.env, "KUBECTL", &all);
    assert!(ok, "kubectl wait {args:?}: {out}");
}

/// The condition `type_` of a live object's JSON.
fn cond<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// (status, reason, message) of the condition `type_`, which must be present.
fn crm(obj: &Value, type_: &str) -> (String, String, String) {
    let c = cond(obj, type_).unwrap_or_else(|| panic!("no {type_} condition in {obj}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("reason"), s("message"))
}

#[tokio::test]
async fn an_active_image_is_current_for_kstatus_and_healthy_for_argo_cd() {
    let (s, g) = demo_scope("gitops-active").await;
    let id = g.create_image("gitops-active", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");

    // Before the operator's first look there is no status at all.
    let unseen = live_json(&s, "img").await;
    assert_eq!(
        argocd_health(&unseen),
        verdict(
            "Progressing",
            "waiting for the operator's first check of the image"
        )
    );

    let op = s.start_operator(&[]);
    // The README's recipe.
    kubectl_wait(&s, &["--for=condition=Ready"]);
    let obj = live_json(&s, "img").await;
    assert!(cond(&obj, "Stalled").is_none(), "{obj}");
    assert!(cond(&obj, "Reconciling").is_none(), "{obj}");
    assert_eq!(kstatus(&obj), verdict("Current", "Resource is Ready"));
    assert_eq!(
        argocd_health(&obj),
        verdict("Healthy", format!("image {id} is active"))
    );

    // A spec change the operator has not seen yet is in progress for both.
    op.kill().await;
    s.cimgs()
        .patch(
            "img",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"deleteBackup": true}})),
        )
        .await
        .expect("change the spec");
    let changed = live_json(&s, "img").await;
    assert_eq!(changed["metadata"]["generation"], 2);
    assert_eq!(
        kstatus(&changed),
        verdict(
            "InProgress",
            "CloudImage generation is 2, but latest observed generation is 1"
        )
    );
    assert_eq!(
        argocd_health(&changed),
        verdict(
            "Progressing",
            "waiting for the operator to check generation 2"
        )
    );

    let _op = s.start_operator(&[]);
    s.wait_status("img", "generation 2 observed", T, |st| {
        st.observed_generation == Some(2)
    })
    .await;
    let obj = live_json(&s, "img").await;
    assert_eq!(kstatus(&obj).status, "Current");
    assert_eq!(argocd_health(&obj).status, "Healthy");

    s.delete("img").await;
    kubectl_wait(&s, &["--for=delete"]);
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn problems_that_need_a_person_are_failed_for_kstatus_and_degraded_for_argo_cd() {
    let (s, g) = demo_scope("gitops-stalled").await;
    let other = Glance::as_user(&s.env, "other").await;
    // Secrets that cannot work: no entry for the cloud, not YAML, a wrong password.
    s.put_secret(
        "no-cloud",
        &s.env.clouds_yaml("elsewhere", "demo", json!({})),
    )
    .await;
    s.put_secret("bad-yaml", "clouds: [this is not: valid")
        .await;
    let wrong = s
        .env
        .clouds_yaml(CLOUD, "demo", json!({}))
        .replace(&s.env.password("demo"), "wrong-password-123");
    s.put_secret("wrong-password", &wrong).await;
    let _op = s.start_operator(&[]);

    let gone = g.create_image("gitops-gone", "private").await;
    let theirs = other.create_image("gitops-theirs", "private").await;
    // The credentials rows never reach Glance: an id nobody created.
    let nobody = uuid::Uuid::new_v4().to_string();
    let rows = [
        (
            "deleted-out-of-band",
            gone.as_str(),
            SECRET,
            "ImageNotFound",
        ),
        ("other-project", theirs.as_str(), SECRET, "ImageNotFound"),
        ("no-secret", nobody.as_str(), "absent", "CredentialsMissing"),
        (
            "no-cloud-entry",
            nobody.as_str(),
            "no-cloud",
            "CredentialsMissing",
        ),
        (
            "bad-yaml",
            nobody.as_str(),
            "bad-yaml",
            "CredentialsInvalid",
        ),
        (
            "wrong-password",
            nobody.as_str(),
            "wrong-password",
            "AuthFailed",
        ),
    ];
    for (name, id, secret, _) in rows {
        s.create(name, spec(id, secret, CLOUD))
            .await
            .expect("create");
    }
    s.wait_ready("deleted-out-of-band").await;
    assert_eq!(
        g.delete_raw(&gone, Some(&g.token)).await,
        reqwest::StatusCode::NO_CONTENT
    );

    for (name, _, _, reason) in rows {
        s.wait_reason(name, "Stalled", reason).await;
        let obj = live_json(&s, name).await;
        let (ready, ready_reason, message) = crm(&obj, "Ready");
        assert_eq!((ready.as_str(), ready_reason.as_str()), ("False", reason));
        assert_eq!(
            crm(&obj, "Stalled"),
            ("True".to_owned(), reason.to_owned(), message.clone()),
            "{name}: Stalled says what Ready says"
        );
        assert!(cond(&obj, "Reconciling").is_none(), "{name}: {obj}");
        assert_eq!(
            kstatus(&obj),
            verdict("Failed", message.clone()),
            "{name}: kstatus fails at once, with the reason's message"
        );
        assert_eq!(
            argocd_health(&obj),
            verdict("Degraded", format!("{reason}: {message}")),
            "{name}"
        );
    }

    // Tidy up without the cloud: Retain releases at once.
    for (name, _, _, _) in rows {
        s.cimgs()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"deletionPolicy": "Retain"}})),
            )
            .await
            .expect("Retain");
        s.delete(name).await;
    }
    for (name, _, _, _) in rows {
        s.wait_gone(name, T).await;
    }
    assert_eq!(
        other.delete_raw(&theirs, Some(&other.token)).await,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn a_transient_cloud_failure_is_in_progress_not_failed_and_clears_itself() {
    let s = Scope::new("gitops-transient").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let glance_hostport = s
        .env
        .glance_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let relay = Relay::start(&glance_hostport).await;
    s.put_secret(
        SECRET,
        &s.env.clouds_yaml(
            CLOUD,
            "demo",
            json!({"image_endpoint_override": relay.url()}),
        ),
    )
    .await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("gitops-flaky", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;

    relay.cut().await;
    s.wait_reason("img", "Reconciling", "CloudUnavailable")
        .await;
    let obj = live_json(&s, "img").await;
    let (_, _, message) = crm(&obj, "Ready");
    assert_eq!(
        crm(&obj, "Reconciling"),
        (
            "True".to_owned(),
            "CloudUnavailable".to_owned(),
            message.clone()
        )
    );
    assert!(cond(&obj, "Stalled").is_none(), "{obj}");
    assert_eq!(kstatus(&obj), verdict("InProgress", message.clone()));
    assert_eq!(
        argocd_health(&obj),
        verdict("Progressing", format!("CloudUnavailable: {message}"))
    );

    relay.restore().await;
    s.wait_status("img", "Ready again, Reconciling gone", T, |st| {
        common::reason(st, "Ready").as_deref() == Some("ImageAvailable")
            && common::condition(st, "Reconciling").is_none()
    })
    .await;
    let obj = live_json(&s, "img").await;
    assert_eq!(kstatus(&obj).status, "Current");
    assert_eq!(argocd_health(&obj).status, "Healthy");

    s.delete("img").await;
    s.wait_gone("img", T).await;
}

#[tokio::test]
async fn a_deletion_blocked_by_a_protected_image_is_terminating_with_the_reason_readable() {
    let (s, g) = demo_scope("gitops-protected").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("gitops-protected", "private").await;
    g.set_protected(&id, true).await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;

    s.delete("img").await;
    // The README's recipe for "is the deletion blocked, and why".
    kubectl_wait(
        &s,
        &["--for=jsonpath={.status.conditions[?(@.type==\"Stalled\")].reason}=Protected"],
    );
    let obj = live_json(&s, "img").await;
    assert!(obj["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        kstatus(&obj).status,
        "Terminating",
        "kstatus only says an object being deleted is Terminating"
    );
    // ... and tools read why from the conditions.
    let (_, _, message) = crm(&obj, "Deleting");
    assert!(
        message.contains("is protected and cannot be deleted"),
        "Glance's words: {message}"
    );
    assert_eq!(
        crm(&obj, "Stalled"),
        ("True".to_owned(), "Protected".to_owned(), message.clone())
    );
    assert!(cond(&obj, "Reconciling").is_none(), "{obj}");
    assert_eq!(
        argocd_health(&obj),
        verdict(
            "Degraded",
            format!("deletion blocked: Protected: {message}")
        )
    );

    g.set_protected(&id, false).await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn a_deletion_waiting_for_other_finalizers_is_terminating_and_progressing() {
    let (s, g) = demo_scope("gitops-waiting").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("gitops-waiting", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    let with_other = json!({"metadata": {"finalizers": ["cloudimage.dev/delete-image", "example.com/backup-first"]}});
    s.cimgs()
        .patch("img", &PatchParams::default(), &Patch::Merge(&with_other))
        .await
        .expect("add a finalizer");

    s.delete("img").await;
    s.wait_reason("img", "Reconciling", "WaitingForFinalizers")
        .await;
    let obj = live_json(&s, "img").await;
    assert_eq!(kstatus(&obj).status, "Terminating");
    let (_, _, message) = crm(&obj, "Deleting");
    assert!(message.contains("example.com/backup-first"), "{message}");
    assert!(cond(&obj, "Stalled").is_none(), "{obj}");
    assert_eq!(
        argocd_health(&obj),
        verdict(
            "Progressing",
            format!("deleting the image: WaitingForFinalizers: {message}")
        )
    );

    let only_ours = json!({"metadata": {"finalizers": ["cloudimage.dev/delete-image"]}});
    s.cimgs()
        .patch("img", &PatchParams::default(), &Patch::Merge(&only_ours))
        .await
        .expect("drop the other finalizer");
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

/// The README's command merges the snippet into an existing `argocd-cm`, and
/// the snippet carries exactly `deploy/argocd/health.lua`.
#[tokio::test]
async fn the_argocd_cm_snippet_installs_the_health_script() {
    const KEY: &str = "resource.customizations.health.cloudimage.dev_CloudImage";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/argocd-cm.yaml");
    let snippet: Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("snippet")).expect("YAML");
    assert_eq!(
        snippet["data"][KEY].as_str(),
        Some(health_lua().as_str()),
        "deploy/argocd/argocd-cm.yaml embeds deploy/argocd/health.lua as it is"
    );

    let s = Scope::new("gitops-argocd-cm").await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    let existing = serde_json::from_value(json!({
        "metadata": {"name": "argocd-cm"},
        "data": {"url": "https://argocd.example.com"}
    }))
    .expect("ConfigMap");
    cms.create(&PostParams::default(), &existing)
        .await
        .expect("create argocd-cm");
    let (ok, out) = run_tool(
        &s.env,
        "KUBECTL",
        &[
            "-n",
            &s.ns,
            "patch",
            "configmap",
            "argocd-cm",
            "--type",
            "merge",
            "--patch-file",
            path,
        ],
    );
    assert!(ok, "kubectl patch: {out}");
    let data = cms.get("argocd-cm").await.expect("get").data.expect("data");
    assert_eq!(
        data.get("url").map(String::as_str),
        Some("https://argocd.example.com")
    );
    assert_eq!(data.get(KEY), Some(&health_lua()));
}
