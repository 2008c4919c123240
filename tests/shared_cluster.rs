//! A shared cluster: whatever one namespace's user writes into a Secret or a
//! CloudImage, and whatever an endpoint of theirs answers, ends in a named
//! reason, loses nothing, crashes nothing, reflects nothing of the answer or
//! of a password, keeps the operator's memory bounded, and does not stall
//! other namespaces. Real kube-apiserver, Keystone and Glance; the hostile
//! endpoints come from `common::hostile` (a test double, named as such).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use common::glance::Glance;
use common::hostile::{Behaviour, Hostile, MARKER};
use common::{Scope, T, spec, wait_for};

const CLOUD: &str = "c";
const ID: &str = "0b7f2a4c-6f57-4d3e-9a34-0c9f4c6b1a20";

/// The demo user's clouds.yaml entry, changed by `f`.
fn entry(s: &Scope, f: impl FnOnce(&mut Value)) -> String {
    let mut e = json!({
        "auth": {
            "auth_url": s.env.keystone_url(),
            "username": "demo",
            "password": s.env.password("demo"),
            "project_name": "demo",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": "RegionOne",
        "interface": "public",
    });
    f(&mut e);
    serde_yaml::to_string(&json!({ "clouds": { CLOUD: e } })).expect("yaml")
}

async fn put_raw_secret(s: &Scope, name: &str, data: &[(&str, Vec<u8>)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.clone())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    s.secrets()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
}

/// One bad input: how the Secret is made, and the reason `Ready` must show.
struct Case {
    name: &'static str,
    secret: Option<Vec<(&'static str, Vec<u8>)>>,
    reason: &'static str,
}

fn yaml(text: String) -> Option<Vec<(&'static str, Vec<u8>)>> {
    Some(vec![("clouds.yaml", text.into_bytes())])
}

fn cases(s: &Scope, h: &Hostile) -> Vec<Case> {
    let set = |path: &'static str, v: Value| {
        move |e: &mut Value| {
            let mut cur = e;
            let parts: Vec<&str> = path.split('.').collect();
            for p in &parts[..parts.len() - 1] {
                cur = &mut cur[*p];
            }
            cur[parts[parts.len() - 1]] = v;
        }
    };
    let drop_key = |path: &'static str| {
        move |e: &mut Value| {
            let (outer, key) = path.split_once('.').unwrap_or(("", path));
            let obj = if outer.is_empty() { e } else { &mut e[outer] };
            if let Some(o) = obj.as_object_mut() {
                o.remove(key);
            }
        }
    };
    let auth_at = |b: Behaviour| format!("{}/v3", h.url(b));
    let image_at = |b: Behaviour| h.url(b);
    let c = |name, secret, reason| Case {
        name,
        secret,
        reason,
    };
    vec![
        // The Secret itself.
        c("no-secret", None, "CredentialsMissing"),
        c(
            "no-clouds-key",
            Some(vec![("other", b"x".to_vec())]),
            "CredentialsMissing",
        ),
        c("not-yaml", yaml("clouds: [".into()), "CredentialsInvalid"),
        c(
            "no-such-cloud",
            yaml("clouds: {other: {}}".into()),
            "CredentialsMissing",
        ),
        c(
            "not-utf8",
            Some(vec![("clouds.yaml", vec![0xff, 0xfe, 0x00])]),
            "CredentialsInvalid",
        ),
        c(
            "cacert-not-pem",
            Some(vec![
                ("clouds.yaml", entry(s, |_| {}).into_bytes()),
                ("cacert", b"not a certificate".to_vec()),
            ]),
            "CredentialsInvalid",
        ),
        c(
            "too-large",
            yaml(entry(s, set("padding", json!("p".repeat(200 * 1024))))),
            "CredentialsInvalid",
        ),
        // clouds.yaml fields.
        c(
            "no-auth-url",
            yaml(entry(s, drop_key("auth.auth_url"))),
            "CredentialsInvalid",
        ),
        c(
            "auth-url-not-url",
            yaml(entry(s, set("auth.auth_url", json!("not a url")))),
            "CredentialsInvalid",
        ),
        c(
            "auth-url-query",
            yaml(entry(
                s,
                set(
                    "auth.auth_url",
                    json!(format!("{}?x=", s.env.keystone_url())),
                ),
            )),
            "CredentialsInvalid",
        ),
        c(
            "auth-url-fragment",
            yaml(entry(
                s,
                set(
                    "auth.auth_url",
                    json!(format!("{}#frag", s.env.keystone_url())),
                ),
            )),
            "CredentialsInvalid",
        ),
        c(
            "auth-url-userinfo",
            yaml(entry(
                s,
                set(
                    "auth.auth_url",
                    json!(s.env.keystone_url().replace("http://", "http://u:p@")),
                ),
            )),
            "CredentialsInvalid",
        ),
        c(
            "endpoint-query",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(format!("{}?x=", s.env.glance_url())),
                ),
            )),
            "CredentialsInvalid",
        ),
        c(
            "auth-type",
            yaml(entry(s, set("auth_type", json!("v3token")))),
            "CredentialsInvalid",
        ),
        c(
            "no-password",
            yaml(entry(s, drop_key("auth.password"))),
            "CredentialsInvalid",
        ),
        c(
            "no-username",
            yaml(entry(s, drop_key("auth.username"))),
            "CredentialsInvalid",
        ),
        c(
            "wrong-password",
            yaml(entry(s, set("auth.password", json!("wrong-password")))),
            "AuthFailed",
        ),
        c(
            "unknown-project",
            yaml(entry(s, set("auth.project_name", json!("no-such-project")))),
            "AuthFailed",
        ),
        c(
            "unknown-region",
            yaml(entry(s, set("region_name", json!("NoSuchRegion")))),
            "CredentialsInvalid",
        ),
        c(
            "unknown-interface",
            yaml(entry(s, set("interface", json!("backstage")))),
            "CredentialsInvalid",
        ),
        c(
            "closed-port",
            yaml(entry(
                s,
                set("auth.auth_url", json!("http://127.0.0.1:9/v3")),
            )),
            "CloudUnavailable",
        ),
        c(
            "denied-address",
            yaml(entry(
                s,
                set("auth.auth_url", json!("http://169.254.169.254/v3")),
            )),
            "CredentialsInvalid",
        ),
        // What a hostile Keystone answers.
        c(
            "keystone-endless",
            yaml(entry(
                s,
                set("auth.auth_url", json!(auth_at(Behaviour::Endless))),
            )),
            "UntrustedAnswer",
        ),
        c(
            "keystone-huge-length",
            yaml(entry(
                s,
                set("auth.auth_url", json!(auth_at(Behaviour::HugeLength))),
            )),
            "UntrustedAnswer",
        ),
        c(
            "keystone-html",
            yaml(entry(
                s,
                set("auth.auth_url", json!(auth_at(Behaviour::HtmlError))),
            )),
            "CloudUnavailable",
        ),
        c(
            "keystone-redirect",
            yaml(entry(
                s,
                set("auth.auth_url", json!(auth_at(Behaviour::Redirect))),
            )),
            "BadRequest",
        ),
        c(
            "keystone-not-json",
            yaml(entry(
                s,
                set("auth.auth_url", json!(auth_at(Behaviour::NotJson))),
            )),
            "UntrustedAnswer",
        ),
        c(
            "keystone-echo",
            yaml(entry(
                s,
                set("auth.auth_url", json!(auth_at(Behaviour::EchoBody))),
            )),
            "AuthFailed",
        ),
        // What a hostile image endpoint answers (tokens from the real Keystone).
        c(
            "image-ingress-404",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(image_at(Behaviour::IngressNotFound)),
                ),
            )),
            "UntrustedAnswer",
        ),
        c(
            "image-not-json",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(image_at(Behaviour::NotJson)),
                ),
            )),
            "UntrustedAnswer",
        ),
        c(
            "image-html",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(image_at(Behaviour::HtmlError)),
                ),
            )),
            "CloudUnavailable",
        ),
        c(
            "image-endless",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(image_at(Behaviour::Endless)),
                ),
            )),
            "UntrustedAnswer",
        ),
        c(
            "image-throttle",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(image_at(Behaviour::Throttle)),
                ),
            )),
            "Throttled",
        ),
        c(
            "image-huge-record",
            yaml(entry(
                s,
                set(
                    "image_endpoint_override",
                    json!(image_at(Behaviour::HugeRecord)),
                ),
            )),
            "ImageAvailable",
        ),
    ]
}

#[tokio::test]
async fn every_bad_input_ends_in_a_named_reason_and_nothing_leaks() {
    let s = Scope::new("badinput").await;
    let h = Hostile::start().await;
    let op = s.start_operator(&["--deny-cidr", "169.254.0.0/16"]);
    let cases = cases(&s, &h);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in &cases {
        if let Some(data) = &case.secret {
            put_raw_secret(&s, case.name, data).await;
        }
        // An id of its own: a shared id would count as another claim.
        let id = uuid::Uuid::new_v4().to_string();
        s.create(case.name, spec(&id, case.name, CLOUD))
            .await
            .expect("create");
    }
    // Specs the API refuses outright, with a message naming the field.
    for (name, bad) in [
        ("upper-case-id", spec(&ID.to_uppercase(), "x", CLOUD)),
        (
            "bad-policy",
            json!({"imageId": ID, "deletionPolicy": "Shred", "cloudRef": {"secretName": "x", "cloudName": CLOUD}}),
        ),
        (
            "empty-secret-name",
            json!({"imageId": ID, "cloudRef": {"secretName": "", "cloudName": CLOUD}}),
        ),
    ] {
        let err = s.create_raw(name, bad).await.expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("imageId")
                || text.contains("deletionPolicy")
                || text.contains("secretName"),
            "{name}: {text}"
        );
    }

    let mut wrong = Vec::new();
    for case in &cases {
        let got = wait_for(
            &format!("{} to settle", case.name),
            Duration::from_secs(90),
            || async {
                let o = s.get(case.name).await.ok_or("gone")?;
                let reason = o
                    .status
                    .as_ref()
                    .and_then(|st| common::reason(st, "Ready"))
                    .ok_or("no Ready yet")?;
                Ok::<_, String>(reason)
            },
        )
        .await;
        if got != case.reason {
            wrong.push(format!("{}: {got} (want {})", case.name, case.reason));
        }
    }
    assert!(wrong.is_empty(), "wrong reasons:\n{}", wrong.join("\n"));

    // Nothing of a hostile answer or a password in any status or Event.
    let password = s.env.password("demo");
    let objs = s.cimgs().list(&ListParams::default()).await.expect("list");
    let statuses = serde_json::to_string(&objs.items).expect("json");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(s.client.clone(), &s.ns);
    let events = serde_json::to_string(
        &events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items,
    )
    .expect("json");
    for text in [&statuses, &events] {
        assert!(!text.contains(MARKER), "a hostile answer was reflected");
        assert!(!text.contains(&password), "the password was reflected");
        assert!(
            !text.contains("10.0.3.7"),
            "an internal address was reflected"
        );
    }
    // Strings from the cloud are cut to the CRD's limits.
    let huge = objs
        .items
        .iter()
        .find(|o| o.name_any() == "image-huge-record")
        .and_then(|o| o.status.clone())
        .and_then(|st| st.image)
        .expect("image record");
    assert!(
        huge.name
            .as_deref()
            .is_some_and(|n| n.chars().count() <= 256)
    );
    assert!(
        huge.checksum
            .as_deref()
            .is_some_and(|n| n.chars().count() <= 256)
    );
    assert!(!op.log().contains(&password), "the password is not logged");

    // Memory stayed bounded (endless bodies were cut, not buffered).
    let rss = op.rss_kib().expect("operator alive");
    assert!(rss < 200 * 1024, "operator RSS {rss} KiB");

    // A 404 that is not Glance's does not release: the object stays.
    s.delete("image-ingress-404").await;
    let held = s
        .wait_reason("image-ingress-404", "Deleting", "UntrustedAnswer")
        .await;
    assert!(
        held.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == "cloudimage.dev/delete-image"))
    );
    assert!(op.rss_kib().is_some(), "the operator is still running");
}

#[tokio::test]
async fn a_tarpit_namespace_does_not_stall_other_namespaces() {
    let s = Scope::new("fairness").await;
    let g = Glance::as_user(&s.env, "demo").await;
    let h = Hostile::start().await;
    let nss: Api<Namespace> = Api::all(s.client.clone());
    let tarpit_ns = format!("{}-tarpit", s.ns);
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": tarpit_ns}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let tarpit = Scope {
        env: s.env.clone(),
        client: s.client.clone(),
        ns: tarpit_ns.clone(),
    };
    // One operator for both namespaces, 4 slots in all.
    let _op = s.start_operator(&[
        "--namespace",
        &format!("{},{}", s.ns, tarpit_ns),
        "--concurrency",
        "4",
    ]);
    tarpit
        .put_secret(
            "creds",
            &entry(&tarpit, |e| {
                e["image_endpoint_override"] = json!(h.url(Behaviour::Tarpit));
            }),
        )
        .await;
    for i in 0..8 {
        tarpit
            .create(&format!("stuck-{i}"), spec(ID, "creds", CLOUD))
            .await
            .expect("create");
    }
    // Wait until the tarpit holds its share of the slots.
    wait_for("the tarpit to be hit", T, || async {
        if h.requests.load(std::sync::atomic::Ordering::Relaxed) >= 2 {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;

    s.put_secret("creds", &entry(&s, |_| {})).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = g.create_image(&format!("fair-{i}"), "private").await;
        s.create(&format!("img-{i}"), spec(&id, "creds", CLOUD))
            .await
            .expect("create");
        ids.push(id);
    }
    // Each tarpit call takes 30 s; were the slots not shared fairly, these
    // would wait behind them. All of it, Ready then gone, within 20 s.
    let started = std::time::Instant::now();
    let deadline = Duration::from_secs(20);
    let left = || deadline.saturating_sub(started.elapsed());
    for i in 0..20 {
        s.wait_status(&format!("img-{i}"), "Ready", left(), |st| {
            common::reason(st, "Ready").as_deref() == Some("ImageAvailable")
        })
        .await;
    }
    s.cimgs()
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete all");
    for i in 0..20 {
        s.wait_gone(&format!("img-{i}"), left()).await;
    }
    for id in &ids {
        assert!(!g.exists(id).await);
    }
    println!(
        "20 deletions next to 8 tarpit objects took {:?}",
        started.elapsed()
    );
    let _ = nss.delete(&tarpit_ns, &DeleteParams::default()).await;
}

/// A fresh namespace next to `s`, with the clouds.yaml of `user` as Secret `creds`.
async fn neighbour(s: &Scope, suffix: &str, user: &str) -> Scope {
    let nss: Api<Namespace> = Api::all(s.client.clone());
    let ns = format!("{}-{suffix}", s.ns);
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let n = Scope {
        env: s.env.clone(),
        client: s.client.clone(),
        ns,
    };
    n.put_secret(
        "creds",
        &entry(&n, |e| {
            e["auth"]["username"] = json!(user);
            e["auth"]["password"] = json!(n.env.password(user));
            e["auth"]["project_name"] = json!(user);
        }),
    )
    .await;
    n
}

#[tokio::test]
async fn another_namespace_cannot_orphan_an_image_and_claims_elsewhere_are_not_named() {
    let s = Scope::new("claims").await;
    let g = Glance::as_user(&s.env, "demo").await;
    s.put_secret("creds", &entry(&s, |_| {})).await;
    // Another project's user names our image; another namespace of our own
    // project does too.
    let attacker = neighbour(&s, "attacker", "other").await;
    let sibling = neighbour(&s, "sibling", "demo").await;
    let _op = s.start_operator(&[
        "--namespace",
        &format!("{},{},{}", s.ns, attacker.ns, sibling.ns),
    ]);

    let x = g.create_image("claimed-by-attacker", "private").await;
    s.create("a", spec(&x, "creds", CLOUD))
        .await
        .expect("create");
    attacker
        .create("steal", spec(&x, "creds", CLOUD))
        .await
        .expect("create");
    s.wait_ready("a").await;
    // The attacker's credentials cannot see our private image.
    attacker
        .wait_reason("steal", "Ready", "ImageNotFound")
        .await;
    s.delete("a").await;
    s.wait_gone("a", T).await;
    assert!(
        !g.exists(&x).await,
        "a claim from another project does not keep our image"
    );
    let ev = s.wait_event("a", "ImageDeleted", T).await;
    assert!(!ev.2.contains(&attacker.ns));

    let y = g.create_image("shared-in-project", "private").await;
    s.create("b", spec(&y, "creds", CLOUD))
        .await
        .expect("create");
    sibling
        .create("keep", spec(&y, "creds", CLOUD))
        .await
        .expect("create");
    s.wait_ready("b").await;
    sibling.wait_ready("keep").await;
    s.delete("b").await;
    s.wait_gone("b", T).await;
    let ev = s.wait_event("b", "ImageStillClaimed", T).await;
    assert!(
        g.exists(&y).await,
        "the same project's other claim keeps the image"
    );
    assert!(
        !ev.2.contains(&sibling.ns) && !ev.2.contains("keep"),
        "another namespace's object is not named: {}",
        ev.2
    );
    assert!(ev.2.contains("other namespaces"), "{}", ev.2);
    sibling.delete("keep").await;
    sibling.wait_gone("keep", T).await;
    assert!(!g.exists(&y).await, "the last claim deletes it");
}
