//! The operator end to end: a real kube-apiserver, the real Keystone and
//! Glance, and the operator binary as a child process per test. Every test
//! asserts what a user sees: the image in Glance, the object in the API, its
//! status and its Events.

mod common;

use kube::api::{Patch, PatchParams};
use serde_json::json;

use common::glance::Glance;
use common::relay::Relay;
use common::{CLOUD, SECRET, Scope, T, condition, demo_scope, spec};

#[tokio::test]
async fn deleting_a_cloudimage_deletes_its_image_then_releases_the_object() {
    let (s, g) = demo_scope("delete").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("to-delete", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");

    let live = s.wait_reason("img", "Ready", "ImageAvailable").await;
    assert!(
        live.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "cloudimage.dev/delete-image"))
    );
    let st = live.status.expect("status");
    assert_eq!(
        st.image.as_ref().and_then(|i| i.status.as_deref()),
        Some("active")
    );
    assert_eq!(
        st.image.as_ref().and_then(|i| i.name.as_deref()),
        Some("to-delete")
    );
    assert_eq!(st.image.as_ref().and_then(|i| i.size), Some(1024));
    assert_eq!(st.observed_generation, live.metadata.generation);
    assert_eq!(
        condition(&st, "Ready").map(|c| c.status),
        Some("True".into())
    );

    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await, "the image is gone from Glance");
    s.wait_event("img", "ImageDeleted", T).await;
}

#[tokio::test]
async fn a_protected_image_holds_the_object_until_unprotected() {
    let (s, g) = demo_scope("protected").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("protected", "private").await;
    g.set_protected(&id, true).await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_status("img", "image seen protected", T, |st| {
        st.image.as_ref().and_then(|i| i.protected) == Some(true)
    })
    .await;

    s.delete("img").await;
    let held = s.wait_reason("img", "Deleting", "Protected").await;
    let st = held.status.expect("status");
    let cond = condition(&st, "Deleting").expect("Deleting condition");
    assert_eq!(cond.status, "True");
    assert!(
        cond.message.contains("is protected and cannot be deleted"),
        "Glance's message: {}",
        cond.message
    );
    assert!(
        cond.message.contains("req-"),
        "request id: {}",
        cond.message
    );
    let d = st.deletion.expect("deletion progress");
    assert!(d.attempts >= 1);
    assert_eq!(d.last_error.as_ref().and_then(|e| e.http_status), Some(403));
    let ev = s.wait_event("img", "Protected", T).await;
    assert_eq!(ev.0, "Warning");
    assert!(g.exists(&id).await, "a protected image is not deleted");

    // Retries go on; the Warning is not repeated for the same reason.
    s.wait_status("img", "a retry", T, |st| {
        st.deletion.as_ref().is_some_and(|x| x.attempts >= 2)
    })
    .await;
    assert_eq!(
        s.events("img")
            .await
            .iter()
            .filter(|e| e.1 == "Protected")
            .count(),
        1,
        "one Event per change of reason"
    );

    g.set_protected(&id, false).await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn glance_down_during_deletion_is_retried_across_an_operator_restart() {
    let s = Scope::new("unavailable").await;
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
    let op = s.start_operator(&[]);
    let id = g.create_image("flaky", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;

    relay.cut().await;
    s.delete("img").await;
    let held = s.wait_reason("img", "Deleting", "CloudUnavailable").await;
    let msg = condition(held.status.as_ref().expect("status"), "Deleting")
        .expect("cond")
        .message;
    assert!(
        msg.contains("connection"),
        "says the cloud could not be reached: {msg}"
    );
    s.wait_status("img", "retries", T, |st| {
        st.deletion.as_ref().is_some_and(|d| d.attempts >= 2)
    })
    .await;
    assert!(g.exists(&id).await);
    s.wait_event("img", "CloudUnavailable", T).await;

    // The operator dies while the deletion is pending; the finalizer holds.
    op.kill().await;
    relay.restore().await;
    // Nothing acts while the operator is down: the object and image stay.
    assert!(
        s.get("img").await.is_some(),
        "without the operator the object stays"
    );
    assert!(g.exists(&id).await);

    let _op2 = s.start_operator(&[]);
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn an_image_deleted_out_of_band_is_reported_then_released() {
    let (s, g) = demo_scope("outofband").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("oob", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;

    assert_eq!(
        g.delete_raw(&id, Some(&g.token)).await,
        reqwest::StatusCode::NO_CONTENT
    );
    let missing = s.wait_reason("img", "Ready", "ImageNotFound").await;
    let st = missing.status.expect("status");
    assert_eq!(
        condition(&st, "Ready").map(|c| c.status),
        Some("False".into())
    );
    assert_eq!(st.image.and_then(|i| i.status), Some("NotFound".into()));
    s.wait_event("img", "ImageNotFound", T).await;

    s.delete("img").await;
    s.wait_gone("img", T).await;
    s.wait_event("img", "ImageAlreadyGone", T).await;
}

#[tokio::test]
async fn retain_leaves_the_image_and_releases_the_object() {
    let (s, g) = demo_scope("retain").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("kept", "private").await;
    let mut sp = spec(&id, SECRET, CLOUD);
    sp["deletionPolicy"] = json!("Retain");
    s.create("img", sp).await.expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(g.exists(&id).await, "Retain never touches the image");
    s.wait_event("img", "ImageRetained", T).await;
    assert_eq!(
        g.delete_raw(&id, Some(&g.token)).await,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn another_projects_private_image_is_invisible_and_never_deleted() {
    let (s, _) = demo_scope("otherproject").await;
    let other = Glance::as_user(&s.env, "other").await;
    let _op = s.start_operator(&[]);
    let id = other.create_image("not-yours", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_reason("img", "Ready", "ImageNotFound").await;

    s.delete("img").await;
    s.wait_gone("img", T).await;
    // The release Event (not the earlier live one) says the image may remain.
    let ev = s
        .wait_event_with("img", "ImageNotFound", "NOT deleted", T)
        .await;
    assert_eq!(ev.0, "Warning");
    assert!(
        other.exists(&id).await,
        "the other project's image still exists"
    );
    assert_eq!(
        other.delete_raw(&id, Some(&other.token)).await,
        reqwest::StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn another_projects_public_image_is_forbidden() {
    let (s, _) = demo_scope("forbidden").await;
    let admin = Glance::as_user(&s.env, "admin").await;
    let _op = s.start_operator(&[]);
    let id = admin.create_image("public-image", "public").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    let held = s.wait_reason("img", "Deleting", "Forbidden").await;
    assert_eq!(
        held.status
            .and_then(|st| st.deletion)
            .and_then(|d| d.last_error)
            .and_then(|e| e.http_status),
        Some(403)
    );
    assert!(admin.exists(&id).await);
    // Clean up: the owner deletes it; the next retry sees 404 and releases.
    assert_eq!(
        admin.delete_raw(&id, Some(&admin.token)).await,
        reqwest::StatusCode::NO_CONTENT
    );
    s.wait_gone("img", T).await;
}

#[tokio::test]
async fn broken_credentials_hold_the_object_until_fixed() {
    let s = Scope::new("creds").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("creds", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    let st = s.wait_reason("img", "Ready", "CredentialsMissing").await;
    assert!(
        condition(st.status.as_ref().expect("status"), "Ready")
            .expect("cond")
            .message
            .contains("does not exist")
    );
    s.delete("img").await;
    s.wait_reason("img", "Deleting", "CredentialsMissing").await;

    // The Secret exists but names another cloud.
    s.put_secret(SECRET, &s.env.clouds_yaml("elsewhere", "demo", json!({})))
        .await;
    let st = s
        .wait_status("img", "missing cloud entry", T, |st| {
            condition(st, "Deleting").is_some_and(|c| {
                c.reason == "CredentialsMissing" && c.message.contains("clouds.testcloud")
            })
        })
        .await;
    assert!(st.metadata.finalizers.is_some_and(|f| !f.is_empty()));

    // Unreadable YAML.
    s.put_secret(SECRET, "clouds: [this is not: valid").await;
    s.wait_reason("img", "Deleting", "CredentialsInvalid").await;

    // A wrong password.
    let wrong = s
        .env
        .clouds_yaml(CLOUD, "demo", json!({}))
        .replace(&s.env.password("demo"), "wrong-password-123");
    s.put_secret(SECRET, &wrong).await;
    s.wait_reason("img", "Deleting", "AuthFailed").await;
    assert!(
        g.exists(&id).await,
        "nothing is deleted with broken credentials"
    );
    let ev = s.wait_event("img", "AuthFailed", T).await;
    assert_eq!(ev.0, "Warning");

    // Fixed: the deletion completes on its own.
    s.put_secret(SECRET, &s.env.clouds_yaml(CLOUD, "demo", json!({})))
        .await;
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn other_finalizers_go_first() {
    let (s, g) = demo_scope("finalizers").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("waits", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    let with_other = json!({"metadata": {"finalizers": ["cloudimage.dev/delete-image", "example.com/backup-first"]}});
    s.cimgs()
        .patch("img", &PatchParams::default(), &Patch::Merge(&with_other))
        .await
        .expect("add finalizer");
    s.delete("img").await;
    s.wait_reason("img", "Deleting", "WaitingForFinalizers")
        .await;
    assert!(
        g.exists(&id).await,
        "the image waits for the other finalizer"
    );
    let only_ours = json!({"metadata": {"finalizers": ["cloudimage.dev/delete-image"]}});
    s.cimgs()
        .patch("img", &PatchParams::default(), &Patch::Merge(&only_ours))
        .await
        .expect("drop other finalizer");
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn dry_run_reports_and_deletes_nothing() {
    let (s, g) = demo_scope("dryrun").await;
    let op = s.start_operator(&["--dry-run"]);
    let id = g.create_image("dry", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_reason("img", "Deleting", "DryRun").await;
    s.wait_event("img", "DryRun", T).await;
    assert!(g.exists(&id).await, "dry run never deletes");
    op.terminate().await;
    // Dry run off: the same object completes.
    let _op = s.start_operator(&[]);
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
}

#[tokio::test]
async fn delete_backup_on_openstack_warns_and_deletes_without_a_body() {
    let (s, g) = demo_scope("backupflag").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("with-backup-flag", "private").await;
    let mut sp = spec(&id, SECRET, CLOUD);
    sp["deleteBackup"] = json!(true);
    s.create("img", sp).await.expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    // Glance would answer 400 and keep the image if a body were sent.
    s.wait_gone("img", T).await;
    assert!(!g.exists(&id).await);
    let ev = s.wait_event("img", "DeleteBackupIgnored", T).await;
    assert_eq!(ev.0, "Warning");
}

#[tokio::test]
async fn the_api_server_rejects_bad_specs() {
    let s = Scope::new("validation").await;
    for bad in [
        "not-a-uuid",
        "4CA46BF1-5C61-48FF-B4F3-0AD4E5E3BA90",
        "../../4ca46bf1-5c61-48ff-b4f3-0ad4e5e3",
    ] {
        let err = s
            .create_raw("bad", spec(bad, SECRET, CLOUD))
            .await
            .expect_err("rejected");
        assert!(
            matches!(&err, kube::Error::Api(e) if e.code == 422),
            "{bad}: {err}"
        );
    }
    let err = s
        .create_raw(
            "bad",
            json!({"imageId": "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90"}),
        )
        .await
        .expect_err("cloudRef required");
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 422),
        "{err}"
    );
    let mut sp = spec("4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90", SECRET, CLOUD);
    sp["deletionPolicy"] = json!("Orphan");
    assert!(
        s.create_raw("bad", sp).await.is_err(),
        "unknown deletionPolicy"
    );

    s.create(
        "good",
        spec("4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90", SECRET, CLOUD),
    )
    .await
    .expect("valid spec");
    let change = json!({"spec": {"imageId": "5ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90"}});
    let err = s
        .cimgs()
        .patch("good", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .expect_err("immutable");
    assert!(err.to_string().contains("imageId is immutable"), "{err}");
}

#[tokio::test]
async fn probes_and_metrics_answer_and_sigterm_stops_cleanly() {
    let (s, g) = demo_scope("admin").await;
    let op = s.start_operator(&[]);
    // The addresses (port 0 = a free one) are in the log: probes and
    // metrics listen on ports of their own.
    let health = op.addr("health").await;
    let metrics = op.addr("metrics").await;
    assert_ne!(health, metrics);
    let get = |path: &'static str| {
        let addr = if path == "/metrics" {
            &metrics
        } else {
            &health
        };
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((r.status().as_u16(), r.text().await.unwrap_or_default()))
        }
    };
    assert_eq!(get("/livez").await, Ok((200, "ok\n".into())));
    common::wait_for("/readyz to answer 200", T, || async {
        match get("/readyz").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let id = g.create_image("metrics", "private").await;
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_gone("img", T).await;
    // The counter moves right after the finalizer is released: wait for it.
    common::wait_for("the deletion to be counted in /metrics", T, || async {
        match get("/metrics").await {
            Ok((200, text)) if text.contains("cloudimage_images_deleted_total 1\n") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let status = op.terminate().await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn an_image_claimed_twice_is_deleted_with_the_last_claim() {
    let (s, g) = demo_scope("twoclaims").await;
    let _op = s.start_operator(&[]);
    let id = g.create_image("shared", "private").await;
    s.create("first", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.create("second", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("first").await;
    s.wait_ready("second").await;

    s.delete("first").await;
    s.wait_gone("first", T).await;
    let ev = s.wait_event("first", "ImageStillClaimed", T).await;
    assert!(ev.2.contains("/second"), "names the other claim: {}", ev.2);
    assert!(
        g.exists(&id).await,
        "the image another CloudImage claims stays"
    );

    s.delete("second").await;
    s.wait_gone("second", T).await;
    assert!(!g.exists(&id).await, "the last claim deletes it");
}
