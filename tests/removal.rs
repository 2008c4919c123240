//! Removing things the way people do — a whole namespace, `kubectl delete -f`
//! of a bundle, `helm uninstall`, the garbage collector after an owner — and
//! the credentials Secret that goes with them: every image is deleted from
//! Glance, nothing stays `Terminating`. Runs against the real kube-apiserver
//! with kube-controller-manager (namespace and garbage-collector controllers)
//! and the real Keystone and Glance.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use common::glance::Glance;
use common::{CLOUD, SECRET, Scope, T, demo_scope, run_tool, spec, wait_for};

const SECRET_FINALIZER: &str = "cloudimage.dev/credentials-in-use";

fn has_finalizer(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == SECRET_FINALIZER))
}

/// Waits until the Secret carries (`true`) or lacks (`false`) the operator's finalizer.
async fn wait_secret_held(s: &Scope, name: &str, held: bool) -> Secret {
    wait_for(&format!("Secret {name} held={held}"), T, || async {
        match s.secrets().get_opt(name).await.expect("get Secret") {
            Some(sec) if has_finalizer(&sec.metadata) == held => Ok(sec),
            Some(sec) => Err(format!("finalizers {:?}", sec.metadata.finalizers)),
            None => Err("the Secret is gone".into()),
        }
    })
    .await
}

async fn wait_secret_gone(s: &Scope, name: &str) {
    wait_for(&format!("Secret {name} to be gone"), T, || async {
        match s.secrets().get_opt(name).await.expect("get Secret") {
            None => Ok(()),
            Some(sec) => Err(format!(
                "still there: deletionTimestamp {:?}, finalizers {:?}",
                sec.metadata.deletion_timestamp, sec.metadata.finalizers
            )),
        }
    })
    .await
}

async fn wait_images_gone(g: &Glance, ids: &[String], deadline: Duration) {
    wait_for("the images to be gone from Glance", deadline, || async {
        let mut left = Vec::new();
        for id in ids {
            if g.exists(id).await {
                left.push(id.clone());
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still in Glance: {left:?}"))
        }
    })
    .await
}

/// Writes `text` to a file only the test user can read (it holds a password).
fn private_file(name: &str, text: &str) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("private");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("file");
    f.write_all(text.as_bytes()).expect("write");
    path
}

#[tokio::test]
async fn deleting_a_namespace_deletes_every_image_and_the_namespace_goes() {
    let (s, g) = demo_scope("nsdelete").await;
    let _op = s.start_operator(&[]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = g.create_image(&format!("ns-{i}"), "private").await;
        s.create(&format!("img-{i}"), spec(&id, SECRET, CLOUD))
            .await
            .expect("create");
        ids.push(id);
    }
    for i in 0..3 {
        s.wait_ready(&format!("img-{i}")).await;
    }
    wait_secret_held(&s, SECRET, true).await;

    let nss: Api<Namespace> = Api::all(s.client.clone());
    nss.delete(&s.ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    wait_images_gone(&g, &ids, T).await;
    wait_for(
        "the namespace to be gone",
        Duration::from_secs(90),
        || async {
            match nss.get_opt(&s.ns).await.expect("get namespace") {
                None => Ok(()),
                Some(n) => Err(format!("still there: {:?}", n.status)),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn kubectl_delete_of_a_bundle_with_its_secret_deletes_every_image() {
    let (s, g) = demo_scope("bundle").await;
    let _op = s.start_operator(&[]);
    let a = g.create_image("bundle-a", "private").await;
    let b = g.create_image("bundle-b", "private").await;
    let clouds = s.env.clouds_yaml(CLOUD, "demo", json!({}));
    let mut docs = vec![json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "bundle-creds", "namespace": s.ns},
        "stringData": {"clouds.yaml": clouds}
    })];
    for (name, id) in [("a", &a), ("b", &b)] {
        docs.push(json!({
            "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
            "metadata": {"name": name, "namespace": s.ns},
            "spec": spec(id, "bundle-creds", CLOUD)
        }));
    }
    let yaml = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<Vec<_>>()
        .join("---\n");
    let file = private_file(&format!("{}-bundle.yaml", s.ns), &yaml);
    let file = file.to_str().expect("path");

    let (ok, out) = run_tool(&s.env, "KUBECTL", &["apply", "-f", file]);
    assert!(ok, "kubectl apply: {out}");
    s.wait_ready("a").await;
    s.wait_ready("b").await;
    wait_secret_held(&s, "bundle-creds", true).await;

    // What Argo CD / Flux prune and `helm uninstall` do: everything at once.
    let (ok, out) = run_tool(
        &s.env,
        "KUBECTL",
        &["delete", "-f", file, "--wait=true", "--timeout=90s"],
    );
    let _ = std::fs::remove_file(file);
    assert!(ok, "kubectl delete -f finishes: {out}");
    assert!(
        !g.exists(&a).await && !g.exists(&b).await,
        "both images are gone"
    );
    assert!(s.get("a").await.is_none() && s.get("b").await.is_none());
    assert!(
        s.secrets()
            .get_opt("bundle-creds")
            .await
            .expect("get")
            .is_none(),
        "the Secret is gone too"
    );
}

#[tokio::test]
async fn helm_uninstall_of_a_release_with_its_secret_deletes_every_image() {
    let (s, g) = demo_scope("helmrel").await;
    let _op = s.start_operator(&[]);
    let ids = [
        g.create_image("helm-0", "private").await,
        g.create_image("helm-1", "private").await,
    ];
    let clouds = private_file(
        &format!("{}-clouds.yaml", s.ns),
        &s.env.clouds_yaml(CLOUD, "demo", json!({})),
    );
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/charts/cloudimages");
    let (ok, out) = run_tool(
        &s.env,
        "HELM",
        &[
            "install",
            "imgs",
            chart,
            "--namespace",
            &s.ns,
            "--set-file",
            &format!("cloudsYaml={}", clouds.display()),
            "--set",
            &format!("secretName=helm-creds,images={{{},{}}}", ids[0], ids[1]),
        ],
    );
    let _ = std::fs::remove_file(&clouds);
    assert!(ok, "helm install: {out}");
    s.wait_ready("image-0").await;
    s.wait_ready("image-1").await;
    wait_secret_held(&s, "helm-creds", true).await;

    let (ok, out) = run_tool(
        &s.env,
        "HELM",
        &[
            "uninstall",
            "imgs",
            "--namespace",
            &s.ns,
            "--wait",
            "--timeout",
            "90s",
        ],
    );
    assert!(ok, "helm uninstall finishes: {out}");
    wait_images_gone(&g, &ids, T).await;
    s.wait_gone("image-0", T).await;
    s.wait_gone("image-1", T).await;
    wait_secret_gone(&s, "helm-creds").await;
    let (_, out) = run_tool(&s.env, "HELM", &["list", "--namespace", &s.ns, "-q"]);
    assert!(!out.contains("imgs"), "the release is gone: {out}");
}

#[tokio::test]
async fn a_fixed_password_is_used_at_once_not_at_the_next_retry() {
    let s = Scope::new("fixpw").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let wrong = s
        .env
        .clouds_yaml(CLOUD, "demo", json!({}))
        .replace(&s.env.password("demo"), "not-the-password");
    s.put_secret(SECRET, &wrong).await;
    // Slow retries: after three failures the next one is at least 10 s away
    // (window 20 s, jitter in its upper half).
    let _op = s.start_operator(&["--retry-slow", "5s", "--retry-max", "5m"]);
    let id = g.create_image("fixpw", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_reason("img", "Ready", "AuthFailed").await;
    s.delete("img").await;
    let failed = s
        .wait_status("img", "three failed deletion attempts", T, |st| {
            st.deletion.as_ref().is_some_and(|d| {
                d.attempts >= 3
                    && d.last_error
                        .as_ref()
                        .is_some_and(|e| e.reason == "AuthFailed")
            })
        })
        .await;
    assert!(g.exists(&id).await, "nothing deleted with a wrong password");
    let attempts = failed.status.and_then(|st| st.deletion).map(|d| d.attempts);

    s.put_secret(SECRET, &s.env.clouds_yaml(CLOUD, "demo", json!({})))
        .await;
    let fixed = Instant::now();
    // Well inside the 10 s before the backoff would have retried: only the
    // Secret's change can have started this deletion.
    s.wait_gone("img", Duration::from_secs(8)).await;
    let took = fixed.elapsed();
    assert!(!g.exists(&id).await, "the image is gone");
    println!(
        "deletion completed {took:?} after the Secret was fixed (after {attempts:?} failed attempts)"
    );
}

#[tokio::test]
async fn a_deleted_secret_stays_while_a_cloudimage_needs_it_then_goes() {
    let (s, g) = demo_scope("secretheld").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("held", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    wait_secret_held(&s, SECRET, true).await;

    s.secrets()
        .delete(SECRET, &DeleteParams::default())
        .await
        .expect("delete Secret");
    let ev = s.wait_event(SECRET, "SecretInUse", T).await;
    assert!(
        ev.2.contains("img"),
        "the Event names the CloudImage: {}",
        ev.2
    );
    let sec = s
        .secrets()
        .get(SECRET)
        .await
        .expect("the Secret is still there");
    assert!(sec.metadata.deletion_timestamp.is_some() && has_finalizer(&sec.metadata));
    // Still usable: the CloudImage stays Ready on its next checks.
    s.wait_ready("img").await;

    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(
        !g.exists(&id).await,
        "the image was deleted with the held Secret"
    );
    wait_secret_gone(&s, SECRET).await;
}

#[tokio::test]
async fn a_secret_used_twice_is_held_until_the_last_cloudimage_is_deleted() {
    let (s, g) = demo_scope("secrettwice").await;
    let op = s.start_operator(&[]);
    let a = g.create_image("twice-a", "private").await;
    let b = g.create_image("twice-b", "private").await;
    s.create("a", spec(&a, SECRET, CLOUD))
        .await
        .expect("create");
    s.create("b", spec(&b, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("a").await;
    s.wait_ready("b").await;
    wait_secret_held(&s, SECRET, true).await;

    s.delete("a").await;
    s.wait_gone("a", T).await;
    // The guard looked again after `a` went, and found `b` still needs it.
    wait_for("the guard to keep the Secret for b", T, || async {
        let log = op.log();
        if log
            .lines()
            .any(|l| l.contains("Secret still needed") && l.contains("users=1"))
        {
            Ok(())
        } else {
            Err("no such log line yet".to_owned())
        }
    })
    .await;
    let sec = s.secrets().get(SECRET).await.expect("Secret");
    assert!(has_finalizer(&sec.metadata), "still held for b");

    s.delete("b").await;
    s.wait_gone("b", T).await;
    let sec = wait_secret_held(&s, SECRET, false).await;
    assert!(
        sec.metadata.deletion_timestamp.is_none(),
        "the Secret itself stays; only the finalizer goes"
    );
    assert!(!g.exists(&a).await && !g.exists(&b).await);
}

#[tokio::test]
async fn a_restarted_operator_lets_go_of_a_secret_whose_last_user_left_while_it_was_down() {
    let (s, g) = demo_scope("secretresync").await;
    let op = s.start_operator(&[]);
    let id = g.create_image("resync", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    wait_secret_held(&s, SECRET, true).await;
    op.kill().await;

    // A person releases the CloudImage by hand while the operator is down.
    s.cimgs()
        .patch(
            "img",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("remove the finalizer by hand");
    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(has_finalizer(
        &s.secrets().get(SECRET).await.expect("Secret").metadata
    ));

    let _op = s.start_operator(&[]);
    let sec = wait_secret_held(&s, SECRET, false).await;
    assert!(sec.metadata.deletion_timestamp.is_none());
    assert!(
        g.exists(&id).await,
        "released by hand: the image was not deleted"
    );
}

#[tokio::test]
async fn secret_reads_do_not_grow_with_the_number_of_deletions() {
    let (s, g) = demo_scope("secretreads").await;
    let op = s.start_operator(&[]);
    const N: usize = 12;
    let mut ids = Vec::new();
    for i in 0..N {
        let id = g.create_image(&format!("reads-{i}"), "private").await;
        s.create(&format!("img-{i}"), spec(&id, SECRET, CLOUD))
            .await
            .expect("create");
        ids.push(id);
    }
    for i in 0..N {
        s.wait_ready(&format!("img-{i}")).await;
    }
    let before = op.metric("cloudimage_secret_reads_total").await;
    s.cimgs()
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete all");
    for i in 0..N {
        s.wait_gone(&format!("img-{i}"), T).await;
    }
    wait_images_gone(&g, &ids, T).await;
    let during = op.metric("cloudimage_secret_reads_total").await - before;
    println!("Secret GETs while deleting {N} CloudImages: {during}");
    assert!(
        during <= 1.0,
        "{N} deletions read the unchanged Secret {during} times"
    );
}

#[tokio::test]
async fn an_owned_cloudimage_is_deleted_with_its_owner_in_the_background() {
    let (s, g) = demo_scope("gcbackground").await;
    let _op = s.start_operator(&[]);
    wait_until_gc_sees_cloudimages(&s).await;
    let owner = owner_configmap(&s, "owner").await;
    let id = g.create_image("owned", "private").await;
    create_owned(&s, "img", &id, &owner, false).await;
    s.wait_ready("img").await;

    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    cms.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    s.wait_gone("img", T).await;
    assert!(
        !g.exists(&id).await,
        "the garbage collector's deletion deleted the image"
    );
}

#[tokio::test]
async fn a_foreground_owner_goes_only_after_its_cloudimage_deleted_the_image() {
    let (s, g) = demo_scope("gcforeground").await;
    let _op = s.start_operator(&[]);
    wait_until_gc_sees_cloudimages(&s).await;
    let owner = owner_configmap(&s, "owner").await;
    let id = g.create_image("owned-fg", "private").await;
    g.set_protected(&id, true).await;
    create_owned(&s, "img", &id, &owner, true).await;
    s.wait_ready("img").await;

    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    cms.delete("owner", &DeleteParams::foreground())
        .await
        .expect("delete owner");
    // The image cannot go while protected: the CloudImage holds, and so does its owner.
    s.wait_reason("img", "Deleting", "Protected").await;
    let held = cms.get("owner").await.expect("the owner is still there");
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(g.exists(&id).await);

    g.set_protected(&id, false).await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
    wait_for("the owner to be gone", T, || async {
        match cms.get_opt("owner").await.expect("get owner") {
            None => Ok(()),
            Some(o) => Err(format!("finalizers {:?}", o.metadata.finalizers)),
        }
    })
    .await;
}

/// The garbage collector learns about a new CRD from discovery, every 30 s:
/// until then it does not see CloudImages as dependents (a foreground
/// deletion would not wait for them). Proves it sees them: a probe
/// CloudImage (policy Retain) goes when its owner goes.
async fn wait_until_gc_sees_cloudimages(s: &Scope) {
    let owner = owner_configmap(s, "gc-probe").await;
    let obj: cloudimage_operator::crd::CloudImage = serde_json::from_value(json!({
        "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
        "metadata": {"name": "gc-probe", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap",
            "name": owner.name_any(), "uid": owner.uid().expect("uid")
        }]},
        "spec": {
            "imageId": "00000000-0000-4000-8000-000000000000",
            "deletionPolicy": "Retain",
            "cloudRef": {"secretName": SECRET, "cloudName": CLOUD}
        }
    }))
    .expect("CloudImage");
    s.cimgs()
        .create(&PostParams::default(), &obj)
        .await
        .expect("create probe");
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    cms.delete("gc-probe", &DeleteParams::background())
        .await
        .expect("delete probe owner");
    s.wait_gone("gc-probe", Duration::from_secs(120)).await;
}

async fn owner_configmap(s: &Scope, name: &str) -> ConfigMap {
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), &s.ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}})).expect("cm"),
    )
    .await
    .expect("create owner")
}

async fn create_owned(s: &Scope, name: &str, id: &str, owner: &ConfigMap, block: bool) {
    let obj: cloudimage_operator::crd::CloudImage = serde_json::from_value(json!({
        "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap",
            "name": owner.name_any(), "uid": owner.uid().expect("uid"),
            "blockOwnerDeletion": block
        }]},
        "spec": spec(id, SECRET, CLOUD)
    }))
    .expect("CloudImage");
    s.cimgs()
        .create(&PostParams::default(), &obj)
        .await
        .expect("create owned CloudImage");
}
