//! The Huawei IMS dialect, against the local IMS double (see
//! `common/ims_double.rs` for why a double), with tokens from the real Keystone.

mod common;

use serde_json::json;

use common::ims_double::ImsDouble;
use common::{Scope, T, spec};

const CLOUD: &str = "hwcloud";
const SECRET: &str = "huawei-creds";

async fn ims_scope(test: &str) -> (Scope, ImsDouble) {
    let s = Scope::new(test).await;
    let ims = ImsDouble::start().await;
    s.put_secret(
        SECRET,
        &s.env.clouds_yaml(
            CLOUD,
            "demo",
            json!({"profile": "huaweicloud", "image_endpoint_override": ims.url()}),
        ),
    )
    .await;
    (s, ims)
}

#[tokio::test]
async fn delete_backup_is_sent_exactly_as_the_spec_says() {
    let (s, ims) = ims_scope("hw-body").await;
    let _op = s.start_operator(&[]);
    let (with, without) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    ims.add_image(&with, false, 0);
    ims.add_image(&without, false, 0);
    let mut sp = spec(&with, SECRET, CLOUD);
    sp["deleteBackup"] = json!(true);
    s.create("with-backup", sp).await.expect("create");
    s.create("without-backup", spec(&without, SECRET, CLOUD))
        .await
        .expect("create");
    for n in ["with-backup", "without-backup"] {
        s.wait_ready(n).await;
        s.delete(n).await;
    }
    s.wait_gone("with-backup", T).await;
    s.wait_gone("without-backup", T).await;

    let calls = ims.deletes();
    let body_for = |id: &str| {
        calls
            .iter()
            .find(|c| c.image_id == id)
            .cloned()
            .expect("a DELETE for the image")
    };
    let w = body_for(&with);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&w.body).expect("json"),
        json!({"delete_backup": true})
    );
    assert_eq!(w.content_type.as_deref(), Some("application/json"));
    let wo = body_for(&without);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&wo.body).expect("json"),
        json!({"delete_backup": false})
    );
    assert!(ims.is_deleted(&with) && ims.is_deleted(&without));
}

#[tokio::test]
async fn an_accepted_deletion_is_released_only_after_get_says_404() {
    let (s, ims) = ims_scope("hw-poll").await;
    let _op = s.start_operator(&[]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 4);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_reason("img", "Deleting", "DeletionAccepted").await;
    assert!(ims.is_deleted(&id), "the DELETE was accepted");
    s.wait_gone("img", T).await;
    assert_eq!(
        ims.gets_after_delete(&id),
        4,
        "the object stayed while GET still found the image"
    );
    assert_eq!(ims.deletes().len(), 1, "one DELETE, then GETs");
}

#[tokio::test]
async fn img_0028_is_protected() {
    let (s, ims) = ims_scope("hw-protected").await;
    let _op = s.start_operator(&[]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, true, 0);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    let held = s.wait_reason("img", "Deleting", "Protected").await;
    let err = held
        .status
        .and_then(|st| st.deletion)
        .and_then(|d| d.last_error)
        .expect("last error");
    assert!(err.message.contains("IMG.0028"), "{}", err.message);
    assert_eq!(err.request_id.as_deref(), Some("ims-double-req"));
    assert!(!ims.is_deleted(&id));
    ims.set_protected(&id, false);
    s.wait_gone("img", T).await;
    assert!(ims.is_deleted(&id));
}

#[tokio::test]
async fn a_401_renews_the_token_once_and_the_deletion_goes_on() {
    let (s, ims) = ims_scope("hw-401").await;
    let _op = s.start_operator(&[]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 0);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    // The token the operator has cached (it carried the GETs) is revoked.
    ims.revoke_seen_tokens();
    s.delete("img").await;
    s.wait_gone("img", T).await;
    assert!(ims.is_deleted(&id));
    let tokens = ims.delete_tokens();
    assert_eq!(
        tokens.len(),
        2,
        "a refused DELETE, then one with a fresh token"
    );
    assert_ne!(
        tokens[0], tokens[1],
        "the second DELETE carried a new token"
    );
    let evs = s.events("img").await;
    assert!(
        !evs.iter().any(|e| e.1 == "AuthFailed"),
        "a single 401 is not a failure: {evs:?}"
    );
}

#[tokio::test]
async fn secrets_never_reach_status_events_or_logs() {
    // The IMS double records every token the operator sends, so the check
    // covers the operator's own tokens, not just the test's.
    let (s, ims) = ims_scope("noleak").await;
    let canary = "Leak-Canary-0b7f3e";
    let extra = json!({"profile": "huaweicloud", "image_endpoint_override": ims.url()});
    let wrong = s
        .env
        .clouds_yaml(CLOUD, "demo", extra.clone())
        .replace(&s.env.password("demo"), canary);
    s.put_secret(SECRET, &wrong).await;
    let op = s.start_operator(&["--log-level", "trace"]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 3);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    let failed = s.wait_reason("img", "Ready", "AuthFailed").await;
    // The right password now, so real tokens go over the wire.
    s.put_secret(SECRET, &s.env.clouds_yaml(CLOUD, "demo", extra))
        .await;
    let ready = s.wait_ready("img").await;
    s.delete("img").await;
    let deleting = s.wait_reason("img", "Deleting", "DeletionAccepted").await;
    s.wait_gone("img", T).await;

    let tokens: Vec<String> = ims.tokens();
    assert!(!tokens.is_empty(), "the operator sent tokens");
    let statuses =
        serde_json::to_string(&[failed.status, ready.status, deleting.status]).expect("json");
    let everything = format!("{}\n{:?}\n{statuses}", op.log(), s.events("img").await);
    let mut needles = vec![canary.to_owned(), s.env.password("demo")];
    needles.extend(tokens);
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        assert!(
            !everything.contains(needle.as_str()),
            "a secret leaked into the log, status or Events"
        );
    }
    assert!(
        op.log().contains("AuthFailed"),
        "the log does say what happened"
    );
}
