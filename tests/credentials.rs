//! Credentials the way OpenStack clouds hand them out, against the real
//! Keystone and Glance: application credentials (created in the test
//! Keystone, then revoked), Keystone and Glance behind TLS with a CA made in
//! the test, and one token for many objects. Faults and observation come
//! from relays in front of the real services (`common::relay`), not doubles;
//! the IMS double stands in only for a cloud that notices a revoked token at
//! once (Glance caches token validations for five minutes).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use common::glance::Glance;
use common::ims_double::ImsDouble;
use common::relay::{Relay, TestCa, TlsRelay};
use common::{Scope, T, TestEnv, condition, spec};

const CLOUD: &str = "c";

/// `host:port` of a URL from the test environment.
fn host_port(url: &str) -> String {
    let u = url::Url::parse(url).expect("url");
    format!(
        "{}:{}",
        u.host_str().expect("host"),
        u.port_or_known_default().expect("port")
    )
}

/// The tests' own Keystone client, independent of the operator's code.
struct Keystone {
    url: String,
    http: reqwest::Client,
    token: String,
    user_id: String,
}

impl Keystone {
    /// Logged in as `demo`, project-scoped.
    async fn as_demo(env: &TestEnv) -> Keystone {
        let url = env.keystone_url().trim_end_matches('/').to_owned();
        let http = reqwest::Client::new();
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": "demo", "domain": {"name": "Default"}, "password": env.password("demo")}}},
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}
        }});
        let resp = http
            .post(format!("{url}/auth/tokens"))
            .json(&body)
            .send()
            .await
            .expect("Keystone answers");
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .expect("token")
            .to_owned();
        let v: Value = resp.json().await.expect("token body");
        let user_id = v["token"]["user"]["id"]
            .as_str()
            .expect("user id")
            .to_owned();
        Keystone {
            url,
            http,
            token,
            user_id,
        }
    }

    /// Creates an application credential of `demo` named `name`: (id, secret).
    async fn create_application_credential(&self, name: &str) -> (String, String) {
        let resp = self
            .http
            .post(format!(
                "{}/users/{}/application_credentials",
                self.url, self.user_id
            ))
            .header("X-Auth-Token", &self.token)
            .json(&json!({"application_credential": {"name": name, "description": "cloudimage-operator test"}}))
            .send()
            .await
            .expect("Keystone answers");
        assert_eq!(
            resp.status(),
            reqwest::StatusCode::CREATED,
            "create application credential"
        );
        let v: Value = resp.json().await.expect("body");
        let cred = &v["application_credential"];
        (
            cred["id"].as_str().expect("id").to_owned(),
            cred["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Revokes (deletes) an application credential.
    async fn delete_application_credential(&self, id: &str) {
        let resp = self
            .http
            .delete(format!(
                "{}/users/{}/application_credentials/{id}",
                self.url, self.user_id
            ))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .expect("Keystone answers");
        assert_eq!(resp.status(), reqwest::StatusCode::NO_CONTENT, "revoke");
    }
}

/// A clouds.yaml with one entry `CLOUD`.
fn clouds(entry: Value) -> String {
    serde_yaml::to_string(&json!({ "clouds": { CLOUD: entry } })).expect("yaml")
}

/// An application credential entry by id.
fn appcred_by_id(auth_url: &str, id: &str, secret: &str) -> Value {
    json!({
        "auth_type": "v3applicationcredential",
        "auth": {"auth_url": auth_url, "application_credential_id": id, "application_credential_secret": secret},
        "region_name": "RegionOne",
        "interface": "public",
    })
}

/// Creates or replaces Secret `name` with `clouds.yaml` and, when given, `cacert`.
async fn put_secret(s: &Scope, name: &str, clouds_yaml: &str, cacert: Option<&str>) {
    let mut data = BTreeMap::from([("clouds.yaml".to_owned(), clouds_yaml.to_owned())]);
    if let Some(ca) = cacert {
        data.insert("cacert".to_owned(), ca.to_owned());
    }
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": data,
    }))
    .expect("secret");
    s.secrets()
        .patch(
            name,
            &PatchParams::apply("cloudimage-tests").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply secret");
}

fn message(o: &cloudimage_operator::crd::CloudImage, type_: &str) -> String {
    o.status
        .as_ref()
        .and_then(|st| condition(st, type_))
        .map(|c| c.message)
        .unwrap_or_default()
}

#[tokio::test]
async fn an_application_credential_deletes_and_a_revoked_one_is_auth_failed() {
    let s = Scope::new("appcred").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let ks = Keystone::as_demo(&s.env).await;
    let name = format!("cloudimage-{}", s.ns);
    let (ac_id, ac_secret) = ks.create_application_credential(&name).await;
    let auth_url = s.env.keystone_url();
    put_secret(
        &s,
        "by-id",
        &clouds(appcred_by_id(&auth_url, &ac_id, &ac_secret)),
        None,
    )
    .await;
    // The same credential by name, with its user.
    put_secret(
        &s,
        "by-name",
        &clouds(json!({
            "auth_type": "v3applicationcredential",
            "auth": {"auth_url": auth_url, "application_credential_name": name,
                     "application_credential_secret": ac_secret,
                     "username": "demo", "user_domain_name": "Default"},
            "region_name": "RegionOne",
        })),
        None,
    )
    .await;
    let op = s.start_operator(&[]);
    let a = g.create_image("appcred-by-id", "private").await;
    let b = g.create_image("appcred-by-name", "private").await;
    let c = g.create_image("appcred-revoked", "private").await;
    s.create("a", spec(&a, "by-id", CLOUD))
        .await
        .expect("create");
    s.create("b", spec(&b, "by-name", CLOUD))
        .await
        .expect("create");
    s.create("c", spec(&c, "by-id", CLOUD))
        .await
        .expect("create");
    for n in ["a", "b", "c"] {
        s.wait_ready(n).await;
    }
    s.delete("a").await;
    s.delete("b").await;
    s.wait_gone("a", T).await;
    s.wait_gone("b", T).await;
    assert!(!g.exists(&a).await, "deleted with the credential by id");
    assert!(!g.exists(&b).await, "deleted with the credential by name");

    // Revoked. Glance would take the token the operator holds for five
    // more minutes (it caches validations), so a restarted operator, which
    // must authenticate again, shows what a revoked credential gives.
    ks.delete_application_credential(&ac_id).await;
    op.terminate().await;
    let _op = s.start_operator(&[]);
    let failed = s.wait_reason("c", "Ready", "AuthFailed").await;
    assert!(
        message(&failed, "Ready").contains("Keystone refused the credentials"),
        "{}",
        message(&failed, "Ready")
    );
    s.delete("c").await;
    let held = s.wait_reason("c", "Deleting", "AuthFailed").await;
    assert!(held.metadata.finalizers.is_some());
    assert!(g.exists(&c).await, "a revoked credential deleted nothing");

    // A new credential in the Secret is used at once.
    let (id2, secret2) = ks.create_application_credential(&format!("{name}-2")).await;
    put_secret(
        &s,
        "by-id",
        &clouds(appcred_by_id(&auth_url, &id2, &secret2)),
        None,
    )
    .await;
    s.wait_gone("c", T).await;
    assert!(!g.exists(&c).await);
    ks.delete_application_credential(&id2).await;
}

/// A cloud that refuses a revoked credential's token at once (the IMS
/// double stands in for it; tokens come from the real Keystone): the first
/// DELETE after the revocation renews the token once, Keystone refuses the
/// credential, and the object shows `AuthFailed`, with no second DELETE.
/// Run at `trace`, this also checks that no secret or token reaches a log
/// line, the status or an Event.
#[tokio::test]
async fn a_revoked_application_credential_is_auth_failed_within_one_retry() {
    let s = Scope::new("appcred-revoked").await;
    let ks = Keystone::as_demo(&s.env).await;
    let (ac_id, ac_secret) = ks
        .create_application_credential(&format!("cloudimage-{}", s.ns))
        .await;
    let keystone =
        Relay::counting(&host_port(&s.env.keystone_url()), "POST /v3/auth/tokens ").await;
    let ims = ImsDouble::start().await;
    let mut entry = appcred_by_id(&format!("{}/v3", keystone.url()), &ac_id, &ac_secret);
    entry["profile"] = json!("huaweicloud");
    entry["image_endpoint_override"] = json!(ims.url());
    put_secret(&s, "creds", &clouds(entry), None).await;
    let op = s.start_operator(&["--log-level", "trace"]);
    let id = uuid::Uuid::new_v4().to_string();
    ims.add_image(&id, false, 0);
    s.create("img", spec(&id, "creds", CLOUD))
        .await
        .expect("create");
    let ready = s.wait_ready("img").await;
    assert_eq!(keystone.count(), 1, "one token so far");

    ks.delete_application_credential(&ac_id).await;
    ims.revoke_seen_tokens();
    s.delete("img").await;
    let held = s.wait_reason("img", "Deleting", "AuthFailed").await;
    assert_eq!(
        keystone.count(),
        2,
        "one renewal after the refused DELETE, which Keystone refused"
    );
    assert_eq!(
        ims.delete_tokens().len(),
        1,
        "one DELETE, refused; none after"
    );
    let msg = message(&held, "Deleting");
    // Keystone answers 404 "Could not find Application Credential".
    assert!(
        msg.starts_with("Keystone refused the credentials: HTTP 40"),
        "{msg}"
    );
    assert!(!ims.is_deleted(&id));
    s.wait_event("img", "AuthFailed", T).await;

    let statuses = serde_json::to_string(&[ready.status, held.status]).expect("json");
    let everything = format!("{}\n{:?}\n{statuses}", op.log(), s.events("img").await);
    let mut needles = vec![ac_secret.clone()];
    needles.extend(ims.tokens());
    assert!(needles.len() >= 2, "the operator's tokens were recorded");
    for needle in &needles {
        assert!(
            !everything.contains(needle.as_str()),
            "a secret or token leaked into the log, status or Events"
        );
    }
}

#[tokio::test]
async fn keystone_and_glance_behind_tls_work_with_cacert_and_fail_clearly_without() {
    let s = Scope::new("tls").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let ca = TestCa::new();
    let keystone = TlsRelay::start(&host_port(&s.env.keystone_url()), &ca).await;
    let glance = TlsRelay::start(&host_port(&s.env.glance_url()), &ca).await;
    let yaml = s.env.clouds_yaml(
        CLOUD,
        "demo",
        json!({"image_endpoint_override": glance.url()}),
    );
    let yaml = yaml.replace(&s.env.keystone_url(), &format!("{}/v3", keystone.url()));
    assert!(yaml.contains("https://localhost:"), "{yaml}");
    put_secret(&s, "with-ca", &yaml, Some(&ca.pem)).await;
    put_secret(&s, "without-ca", &yaml, None).await;
    let _op = s.start_operator(&[]);
    let trusted = g.create_image("tls-trusted", "private").await;
    let untrusted = g.create_image("tls-untrusted", "private").await;
    s.create("trusted", spec(&trusted, "with-ca", CLOUD))
        .await
        .expect("create");
    s.create("untrusted", spec(&untrusted, "without-ca", CLOUD))
        .await
        .expect("create");

    s.wait_ready("trusted").await;
    s.delete("trusted").await;
    s.wait_gone("trusted", T).await;
    assert!(!g.exists(&trusted).await, "deleted over TLS");

    let failed = s
        .wait_reason("untrusted", "Ready", "CloudUnavailable")
        .await;
    let msg = message(&failed, "Ready");
    assert_eq!(
        msg,
        "could not connect to Keystone at localhost (TLS certificate not trusted: issued by a CA the operator does not know; put that CA's PEM certificate in the Secret's `cacert` key)"
    );
    assert!(!msg.contains(&keystone.addr.port().to_string()));
    s.delete("untrusted").await;
    let held = s
        .wait_reason("untrusted", "Deleting", "CloudUnavailable")
        .await;
    assert!(
        message(&held, "Deleting").contains("certificate not trusted"),
        "{}",
        message(&held, "Deleting")
    );
    assert!(g.exists(&untrusted).await);
    // The CA added to the Secret: the deletion goes through.
    put_secret(&s, "without-ca", &yaml, Some(&ca.pem)).await;
    s.wait_gone("untrusted", T).await;
    assert!(!g.exists(&untrusted).await);
}

#[tokio::test]
async fn fifty_objects_on_one_secret_cost_one_keystone_token() {
    const N: usize = 50;
    let s = Scope::new("fifty").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let keystone =
        Relay::counting(&host_port(&s.env.keystone_url()), "POST /v3/auth/tokens ").await;
    let yaml = s
        .env
        .clouds_yaml(CLOUD, "demo", json!({}))
        .replace(&s.env.keystone_url(), &format!("{}/v3", keystone.url()));
    put_secret(&s, "creds", &yaml, None).await;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(g.create_image(&format!("fifty-{i}"), "private").await);
    }
    for (i, id) in ids.iter().enumerate() {
        s.create(&format!("img-{i}"), spec(id, "creds", CLOUD))
            .await
            .expect("create");
    }
    // All 50 need a token at the same moment the operator starts.
    let op = s.start_operator(&[]);
    for i in 0..N {
        s.wait_ready(&format!("img-{i}")).await;
    }
    let deletes = (0..N).map(|i| {
        let name = format!("img-{i}");
        let s = &s;
        async move { s.delete(&name).await }
    });
    futures::future::join_all(deletes).await;
    for i in 0..N {
        s.wait_gone(&format!("img-{i}"), Duration::from_secs(120))
            .await;
    }
    for id in &ids {
        assert!(!g.exists(id).await, "image {id} is gone from Glance");
    }
    let issued = op
        .log()
        .lines()
        .filter(|l| l.contains("Keystone issued a token"))
        .count();
    eprintln!(
        "{N} CloudImages on one Secret: {} token request(s) at Keystone, {issued} \"Keystone issued a token\" log line(s)",
        keystone.count()
    );
    assert_eq!(keystone.count(), 1, "one token request for {N} objects");
    assert_eq!(issued, 1);
}
