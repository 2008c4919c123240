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

/// Two CloudImages on the IMS double, `deleteBackup: true` and unset, each
/// image answering `polls` GETs after its DELETE before 404; both deleted and
/// waited for (an operator runs meanwhile). Their image ids, in that order.
async fn delete_with_and_without_backup(
    s: &Scope,
    ims: &ImsDouble,
    polls: u32,
) -> (String, String) {
    let _op = s.start_operator(&[]);
    let (with, without) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    ims.add_image(&with, false, polls);
    ims.add_image(&without, false, polls);
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
    (with, without)
}

#[tokio::test]
async fn delete_backup_is_sent_exactly_as_the_spec_says() {
    let (s, ims) = ims_scope("hw-body").await;
    let (with, without) = delete_with_and_without_backup(&s, &ims, 0).await;

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

// ---- AK/SK signing (no Keystone at all) ----

const AK: &str = "QTWAOYTTINDUT2QVKYUC";
const SK: &str = "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc-test";
const PROJECT: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";

/// A clouds.yaml entry for AK/SK credentials against the IMS double.
fn aksk_yaml(ims: &ImsDouble, secret_key: &str, security_token: Option<&str>) -> String {
    let mut auth = json!({"access_key": AK, "secret_key": secret_key, "project_id": PROJECT});
    if let Some(t) = security_token {
        auth["security_token"] = json!(t);
    }
    serde_yaml::to_string(&json!({"clouds": {CLOUD: {
        "auth_type": "aksk",
        "profile": "huaweicloud",
        "region_name": "ap-southeast-1",
        "image_endpoint_override": ims.url(),
        "auth": auth,
    }}}))
    .expect("yaml")
}

async fn aksk_scope(test: &str) -> (Scope, ImsDouble) {
    let s = Scope::new(test).await;
    let ims = ImsDouble::start().await;
    ims.add_access_key(AK, SK);
    s.put_secret(SECRET, &aksk_yaml(&ims, SK, None)).await;
    (s, ims)
}

fn last_error(o: &cloudimage_operator::crd::CloudImage) -> String {
    o.status
        .as_ref()
        .and_then(|st| st.deletion.as_ref())
        .and_then(|d| d.last_error.as_ref())
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

fn ready_message(o: &cloudimage_operator::crd::CloudImage) -> String {
    o.status
        .as_ref()
        .and_then(|st| common::condition(st, "Ready"))
        .map(|c| c.message)
        .unwrap_or_default()
}

/// The double's verifier is itself checked against Huawei's published
/// vectors (`docs/cloud-api-contract.md`), so a pass means the operator
/// signs as Huawei's gateway expects, not merely as the double does.
#[test]
fn the_doubles_verifier_reproduces_the_published_vectors() {
    use common::ims_double::expected_signature;
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let date = "20060102T150405Z";
    assert_eq!(
        expected_signature(
            "SecretKey",
            "GET",
            "/path",
            Some("limit=1"),
            &h(&[("x-sdk-date", date)]),
            b"",
            date
        ),
        "5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624"
    );
    assert_eq!(
        expected_signature(
            "SecretKey",
            "POST",
            "/path",
            Some("key=value"),
            &h(&[("x-sdk-date", date)]),
            b"{\"Name\":\"test\",\"Id\":1}\n",
            date
        ),
        "cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59"
    );
    let date = "20191115T033655Z";
    assert_eq!(
        expected_signature(
            "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
            "GET",
            "/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs",
            Some("marker=13551d6b-755d-4757-b956-536f674975c0&limit=2"),
            &h(&[
                ("x-sdk-date", date),
                ("host", "service.region.example.com"),
                ("content-type", "application/json"),
            ]),
            b"",
            date
        ),
        "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
    );
}

#[tokio::test]
async fn aksk_deletes_with_delete_backup_true_and_false() {
    let (s, ims) = aksk_scope("aksk-body").await;
    let (with, without) = delete_with_and_without_backup(&s, &ims, 2).await;

    let body_of = |id: &str| {
        let call = ims
            .deletes()
            .into_iter()
            .find(|c| c.image_id == id)
            .expect("a DELETE for the image");
        assert_eq!(call.content_type.as_deref(), Some("application/json"));
        serde_json::from_str::<serde_json::Value>(&call.body).expect("json")
    };
    assert_eq!(body_of(&with), json!({"delete_backup": true}));
    assert_eq!(body_of(&without), json!({"delete_backup": false}));
    assert!(ims.is_deleted(&with) && ims.is_deleted(&without));
    assert_eq!(
        ims.gets_after_delete(&with),
        2,
        "released only after GET said 404"
    );

    // Every request was signed, verified by the double, and no token was used.
    assert!(ims.tokens().is_empty(), "no Keystone token at all");
    assert!(ims.refusals().is_empty(), "{:?}", ims.refusals());
    let signed = ims.signed_calls();
    assert!(signed.iter().any(|c| c.method == "GET"));
    for c in &signed {
        assert_eq!(c.access_key, AK);
        assert_eq!(c.project_id.as_deref(), Some(PROJECT));
        let want = if c.method == "DELETE" {
            "content-type;host;x-project-id;x-sdk-date"
        } else {
            "host;x-project-id;x-sdk-date"
        };
        assert_eq!(c.signed_headers, want, "{c:?}");
    }
    assert_eq!(signed.iter().filter(|c| c.method == "DELETE").count(), 2);
}

#[tokio::test]
async fn a_wrong_secret_key_is_auth_failed_until_the_secret_is_fixed() {
    let (s, ims) = aksk_scope("aksk-wrong").await;
    s.put_secret(SECRET, &aksk_yaml(&ims, "not-the-secret-key", None))
        .await;
    let _op = s.start_operator(&[]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 0);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    let failed = s.wait_reason("img", "Ready", "AuthFailed").await;
    let msg = ready_message(&failed);
    assert!(msg.contains("APIGW.0301"), "{msg}");
    assert!(msg.contains("signature was refused"), "{msg}");
    s.delete("img").await;
    let held = s.wait_reason("img", "Deleting", "AuthFailed").await;
    assert!(
        last_error(&held).contains("APIGW.0301"),
        "{}",
        last_error(&held)
    );
    s.wait_event("img", "AuthFailed", T).await;
    assert!(!ims.is_deleted(&id), "a refused signature deletes nothing");
    assert!(
        ims.refusals().iter().all(|r| r == "signature mismatch"),
        "{:?}",
        ims.refusals()
    );
    assert!(ims.deletes().is_empty(), "no DELETE got past the gateway");

    s.put_secret(SECRET, &aksk_yaml(&ims, SK, None)).await;
    s.wait_gone("img", T).await;
    assert!(ims.is_deleted(&id));
}

#[tokio::test]
async fn a_clock_more_than_15_minutes_off_is_auth_failed() {
    let (s, ims) = aksk_scope("aksk-skew").await;
    ims.set_clock_offset(chrono::Duration::minutes(20));
    let _op = s.start_operator(&[]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 0);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    let failed = s.wait_reason("img", "Ready", "AuthFailed").await;
    assert!(ready_message(&failed).contains("operator's clock"));
    assert!(
        ims.refusals()
            .iter()
            .any(|r| r.contains("more than 15 minutes")),
        "{:?}",
        ims.refusals()
    );
    ims.set_clock_offset(chrono::Duration::minutes(14));
    s.wait_ready("img").await;
}

/// Each IMS code of `docs/cloud-api-contract.md` as the answer to DELETE,
/// and the reason the object shows. The already-gone codes are confirmed
/// by GET: the object is released only after GET answers 404.
#[tokio::test]
async fn each_ims_code_gives_its_reason() {
    let (s, ims) = aksk_scope("ims-codes").await;
    let _op = s.start_operator(&[]);
    let blocking: [(u16, &str, &str, &str); 12] = [
        (400, "IMG.0028", "Protected", ""),
        (400, "IMG.0090", "InUse", ""),
        (400, "IMG.0148", "InUse", ""),
        (400, "IMG.0092", "Forbidden", ""),
        (400, "IMG.0047", "Forbidden", ""),
        (400, "IMG.0106", "Forbidden", ""),
        (400, "IMG.0094", "Forbidden", ""),
        (403, "IMG.0026", "Forbidden", ""),
        (400, "IMG.0104", "CredentialsInvalid", "name the project"),
        (400, "IMG.0176", "CloudUnavailable", "backup"),
        (401, "APIGW.0301", "AuthFailed", ""),
        (429, "APIG.0308", "Throttled", ""),
    ];
    let gone = ["IMG.0027", "IMG.0086", "IMG.0144"];
    let name = |code: &str| code.to_ascii_lowercase().replace('.', "-");
    let mut ids = std::collections::BTreeMap::new();
    for code in blocking.iter().map(|b| b.1).chain(gone) {
        let id = uuid::Uuid::new_v4().to_string();
        ims.add_image(&id, false, 0);
        s.create(&name(code), spec(&id, SECRET, CLOUD))
            .await
            .expect("create");
        ids.insert(code, id);
    }
    for code in ids.keys() {
        s.wait_ready(&name(code)).await;
    }
    for (status, code, _, _) in blocking {
        ims.script_delete(&ids[code], status, code);
    }
    for code in gone {
        // The image is on its way out: GET finds it 4 more times.
        ims.script_delete(&ids[code], 400, code);
        ims.set_deleted(&ids[code], 4);
    }
    for code in ids.keys() {
        s.delete(&name(code)).await;
    }
    for (_, code, reason, words) in blocking {
        let held = s.wait_reason(&name(code), "Deleting", reason).await;
        let msg = last_error(&held);
        assert!(msg.contains(code), "{code}: {msg}");
        assert!(msg.contains(words), "{code}: {msg}");
        s.wait_event(&name(code), reason, T).await;
    }
    for code in gone {
        s.wait_gone(&name(code), T).await;
        assert_eq!(
            ims.gets_after_delete(&ids[code]),
            4,
            "{code}: every GET that still found the image came before the release"
        );
        assert!(ims.gone_gets(&ids[code]) >= 1, "{code}: a GET answered 404");
        s.wait_event(&name(code), "ImageDeleted", T).await;
    }
    // Still held, and released once IMS lets the DELETE through.
    for (_, code, _, _) in blocking {
        assert!(
            s.get(&name(code)).await.is_some(),
            "{code} holds the object"
        );
        assert!(!ims.is_deleted(&ids[code]), "{code} deleted nothing");
        ims.unscript_delete(&ids[code]);
    }
    for (_, code, _, _) in blocking {
        s.wait_gone(&name(code), T).await;
        assert!(ims.is_deleted(&ids[code]));
    }
}

#[tokio::test]
async fn aksk_secrets_never_reach_status_events_or_logs() {
    let s = Scope::new("aksk-noleak").await;
    let ims = ImsDouble::start().await;
    let token = "tmp-security-token-Canary-5e1d";
    ims.add_temporary_key(AK, SK, token);
    let wrong = "wrong-secret-key-Canary-77aa";
    s.put_secret(SECRET, &aksk_yaml(&ims, wrong, Some(token)))
        .await;
    let op = s.start_operator(&["--log-level", "trace"]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 2);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    let failed = s.wait_reason("img", "Ready", "AuthFailed").await;
    s.put_secret(SECRET, &aksk_yaml(&ims, SK, Some(token)))
        .await;
    let ready = s.wait_ready("img").await;
    s.delete("img").await;
    let deleting = s.wait_reason("img", "Deleting", "DeletionAccepted").await;
    s.wait_gone("img", T).await;

    let signed = ims.signed_calls();
    assert!(
        signed
            .iter()
            .all(|c| c.security_token.as_deref() == Some(token)
                && c.signed_headers.contains("x-security-token")),
        "the temporary key's token went with every request, signed: {signed:?}"
    );
    let signatures = ims.signatures();
    assert!(
        signatures.len() >= 3,
        "signatures were sent: {signatures:?}"
    );
    let statuses =
        serde_json::to_string(&[failed.status, ready.status, deleting.status]).expect("json");
    let everything = format!("{}\n{:?}\n{statuses}", op.log(), s.events("img").await);
    let mut needles = vec![SK.to_owned(), wrong.to_owned(), token.to_owned()];
    needles.extend(signatures);
    for needle in &needles {
        assert!(
            !everything.contains(needle.as_str()),
            "a secret key, token or signature leaked into the log, status or Events"
        );
    }
    assert!(
        op.log().contains("AuthFailed"),
        "the log says what happened"
    );
    assert!(
        op.log().contains("signed the request (AK/SK)"),
        "the trace-level log was checked"
    );
}

#[tokio::test]
async fn an_accepted_deletion_still_visible_past_the_deadline_is_reported_stalled() {
    let (s, ims) = ims_scope("hw-stall").await;
    // Stalled after 2 s; the double keeps listing the image for 12 checks
    // (about 6 s at the tests' 500 ms poll), then lets it go.
    let _op = s.start_operator(&["--deletion-stall-after", "2s"]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 12);
    s.create("img", spec(&id, SECRET, CLOUD))
        .await
        .expect("create");
    s.wait_ready("img").await;
    s.delete("img").await;
    s.wait_reason("img", "Deleting", "DeletionAccepted").await;
    let stalled = s.wait_reason("img", "Deleting", "DeletionStalled").await;
    let st = stalled.status.expect("status");
    assert!(
        st.deletion
            .as_ref()
            .and_then(|d| d.accepted_time.as_ref())
            .is_some(),
        "the acceptance is kept in status"
    );
    assert_eq!(
        common::condition(&st, "Stalled").map(|c| c.reason),
        Some("DeletionStalled".to_owned()),
        "a person should look"
    );
    let ev = s.wait_event("img", "DeletionStalled", T).await;
    assert_eq!(ev.0, "Warning");
    // Polling went on: once the cloud stops listing it, the object goes.
    s.wait_gone("img", T).await;
    assert!(ims.is_deleted(&id));
}
