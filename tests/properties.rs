//! Property tests for every parser and classifier that reads untrusted
//! input (an answer of the cloud, a user's clouds.yaml, a flag): none
//! panics on any input, none returns more than its documented limit, and
//! each HTTP status code is classified the same way whatever the body says,
//! except where a known error shape of Glance, Keystone or IMS says more.
//!
//! Pure functions of the crate's public API only: no environment needed.
//! Case counts are kept moderate (the whole file runs in seconds); a
//! failure prints the minimal input and proptest keeps its seed in
//! `tests/properties.proptest-regressions` (commit it with the fix).

use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};

use cloudimage_operator::cli::{parse_duration, parse_optional_addr};
use cloudimage_operator::cloud::answer::{
    Answer, ErrorBody, IMS_ALREADY_GONE, Shape, classify_delete, classify_failure, classify_get,
    ims_code_kind, parse_image, parse_retry_after,
};
use cloudimage_operator::cloud::client::image_url;
use cloudimage_operator::cloud::clouds_yaml::{self, CloudsYamlError, MAX_CLOUDS_YAML_BYTES};
use cloudimage_operator::cloud::error::{redact, truncate_chars};
use cloudimage_operator::cloud::keystone::{image_api_base, tokens_url};
use cloudimage_operator::cloud::{
    CloudError, Deletion, Dialect, ErrorKind, Lookup, MAX_CLOUD_MESSAGE_CHARS,
    MAX_ERROR_CODE_CHARS, MAX_ERROR_MESSAGE_CHARS, MAX_IMAGE_FIELD_CHARS,
};

const ID: &str = "5c37dd8f-3b87-4d92-9386-ac2eab6b3059";
/// Put into bodies the operator must not reflect.
const MARKER: &str = "ZQXJ-MARKER";

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ----------------------------------------------------------- strategies ---

/// Text as a hostile or broken peer writes it: any Unicode, control
/// characters, HTML, WebOb's `<br />`, very long runs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[ -~]{0,200}",
        1 => "[a-z <>/\\n\\t\\x1b]{0,80}(<br />)?[a-z ]{0,20}",
        1 => (any::<char>(), 0usize..3000).prop_map(|(c, n)| c.to_string().repeat(n)),
        1 => Just(String::new()),
    ]
}

/// Error codes: every code of the IMS table, look-alikes, and junk.
fn code() -> impl Strategy<Value = String> {
    let known: Vec<String> = [
        "IMG.0027",
        "IMG.0086",
        "IMG.0144",
        "IMG.0028",
        "IMG.0092",
        "IMG.0047",
        "IMG.0106",
        "IMG.0094",
        "IMG.0026",
        "IMG.0090",
        "IMG.0148",
        "IMG.0104",
        "IMG.0176",
        "APIGW.0301",
        "APIGW.0101",
        "APIG.0308",
        "IMG.0001",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    prop_oneof![
        3 => proptest::sample::select(known),
        2 => "[A-Z]{2,6}\\.[0-9]{4}",
        1 => "[A-Za-z0-9._-]{60,70}",
        1 => any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Error bodies in the four known shapes (with arbitrary contents), the
/// near misses around them, any JSON, and anything at all.
fn body() -> impl Strategy<Value = String> {
    let opt = |s: BoxedStrategy<Value>| proptest::option::of(s);
    let s = || text().prop_map(Value::String).boxed();
    prop_oneof![
        // Glance (WebOb), with or without its parts.
        (
            opt(s()),
            opt(prop_oneof![
                Just(json!("404 Not Found")),
                Just(json!("403 Forbidden")),
                text().prop_map(Value::String),
                json_value(),
            ]
            .boxed()),
            opt(s())
        )
            .prop_map(|(m, c, t)| {
                let mut o = serde_json::Map::new();
                if let Some(m) = m {
                    o.insert("message".into(), m);
                }
                if let Some(c) = c {
                    o.insert("code".into(), c);
                }
                if let Some(t) = t {
                    o.insert("title".into(), t);
                }
                Value::Object(o).to_string()
            }),
        // Keystone.
        (any::<u16>(), opt(s()), opt(s())).prop_map(|(c, t, m)| {
            json!({"error": {"code": c, "title": t, "message": m}}).to_string()
        }),
        // IMS.
        (code(), text()).prop_map(|(c, m)| json!({"error": {"code": c, "message": m}}).to_string()),
        // Huawei API gateway.
        (
            code(),
            prop_oneof![3 => text().prop_map(Value::String), 1 => json_value()]
        )
            .prop_map(|(c, m)| json!({"error_code": c, "error_msg": m}).to_string()),
        json_value().prop_map(|v| v.to_string()),
        text(),
    ]
}

fn dialect() -> impl Strategy<Value = Dialect> {
    prop_oneof![Just(Dialect::OpenStack), Just(Dialect::Huawei)]
}

fn answer(status: u16, body: String, request_id: Option<String>, retry: Option<u64>) -> Answer {
    Answer {
        status,
        body,
        request_id,
        retry_after: retry.map(Duration::from_secs),
    }
}

/// A body that none of the known shapes reads (an ingress page, HTML, a
/// proxy's text, JSON of another service), carrying [`MARKER`].
fn foreign_body() -> impl Strategy<Value = String> {
    prop_oneof![
        text().prop_map(|t| format!("<html><body><h1>{MARKER}</h1>{t}</body></html>")),
        text().prop_map(|t| format!("default backend - 404 {MARKER} {t}")),
        text().prop_map(|t| json!({"detail": format!("{MARKER}{t}")}).to_string()),
        text().prop_map(|t| json!({"message": format!("{MARKER}{t}")}).to_string()),
        text().prop_map(|t| json!({"error": format!("{MARKER}{t}")}).to_string()),
        text().prop_map(|t| format!("{MARKER}{t}")),
    ]
    .prop_filter("not a known shape", |b| {
        ErrorBody::parse(b).shape == Shape::Unknown
    })
}

// ------------------------------------------------------------- checkers ---

fn clean(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn check_error(err: &CloudError, a: &Answer) -> Result<(), TestCaseError> {
    prop_assert!(
        err.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS,
        "message of {} chars",
        err.message.chars().count()
    );
    prop_assert!(clean(&err.message), "control characters: {:?}", err.message);
    prop_assert_eq!(err.http_status, Some(a.status));
    prop_assert_eq!(&err.request_id, &a.request_id);
    Ok(())
}

/// The kind the status alone gives, when the body carries no code of the
/// IMS table (the README's and `docs/cloud-api-contract.md`'s table).
fn kind_by_status(status: u16, protected_message: bool) -> ErrorKind {
    match status {
        401 => ErrorKind::AuthFailed,
        403 if protected_message => ErrorKind::Protected,
        403 => ErrorKind::Forbidden,
        409 => ErrorKind::InUse,
        429 => ErrorKind::Throttled,
        300..=499 => ErrorKind::BadRequest,
        _ => ErrorKind::Unavailable,
    }
}

/// The code a body carries that changes its class, if any.
fn table_code(body: &str) -> Option<(ErrorKind, &'static str)> {
    ErrorBody::parse(body)
        .code
        .as_deref()
        .and_then(ims_code_kind)
}

// ----------------------------------------------------- answer parsing ---

proptest! {
    #![proptest_config(config(512))]

    /// Error bodies: no panic, text cut to the limits, no control
    /// characters, nothing kept from an unknown shape, the same twice.
    #[test]
    fn error_bodies_are_bounded_and_unknown_shapes_keep_nothing(raw in body()) {
        let b = ErrorBody::parse(&raw);
        prop_assert!(b.message.chars().count() <= MAX_CLOUD_MESSAGE_CHARS);
        prop_assert!(clean(&b.message), "{:?}", b.message);
        if let Some(c) = &b.code {
            prop_assert!(c.chars().count() <= MAX_ERROR_CODE_CHARS);
            prop_assert!(!c.is_empty() && c.bytes().all(|x| x.is_ascii_alphanumeric() || b"._-".contains(&x)));
        }
        if b.shape == Shape::Unknown {
            prop_assert!(b.message.is_empty() && b.code.is_none());
            prop_assert!(!b.is_image_not_found());
        }
        if b.is_image_not_found() {
            prop_assert!(matches!(b.shape, Shape::Glance | Shape::Ims | Shape::HuaweiGateway));
        }
        prop_assert_eq!(ErrorBody::parse(&raw), b);
    }

    /// Every answer to DELETE and GET, any status, any body: classified
    /// without panic, errors bounded and carrying the status and request id.
    #[test]
    fn every_answer_is_classified_within_limits(
        dialect in dialect(),
        status in 100u16..600,
        body in body(),
        request_id in proptest::option::of("[ -~]{0,40}"),
        retry in proptest::option::of(0u64..100_000),
    ) {
        let a = answer(status, body, request_id, retry);
        match classify_delete(dialect, &a) {
            Ok(d) => {
                prop_assert!((200..300).contains(&status) || status == 404 || dialect == Dialect::Huawei,
                    "{status} gave {d:?}");
            }
            Err(e) => check_error(&e, &a)?,
        }
        match classify_get(&a, ID) {
            Ok(Lookup::Found(info)) => {
                prop_assert_eq!(status, 200);
                prop_assert_eq!(info.id.as_str(), ID);
            }
            Ok(Lookup::NotFound) => prop_assert!(status == 200 || status == 404),
            Err(e) => check_error(&e, &a)?,
        }
        let e = classify_failure(&a);
        check_error(&e, &a)?;
        // The same answer is classified the same way, whatever came before.
        prop_assert_eq!(classify_failure(&a), e);
    }

    /// Text from an answer in no known shape never reaches a message.
    #[test]
    fn foreign_answers_are_not_reflected(
        dialect in dialect(),
        status in 300u16..600,
        body in foreign_body(),
    ) {
        let a = answer(status, body, None, None);
        if let Err(e) = classify_delete(dialect, &a) {
            prop_assert!(!e.message.contains(MARKER), "{}", e.message);
        }
        if let Err(e) = classify_get(&a, ID) {
            prop_assert!(!e.message.contains(MARKER), "{}", e.message);
        }
        prop_assert!(!classify_failure(&a).message.contains(MARKER));
    }

    /// A 404 is "gone" only in the image service's own shape; anything else
    /// (an ingress, an HTML page, Keystone's 404, the gateway's "no such
    /// API") is UntrustedAnswer, never a release.
    #[test]
    fn a_404_is_gone_only_in_the_image_services_own_shape(dialect in dialect(), body in body()) {
        let a = answer(404, body.clone(), None, None);
        let own = ErrorBody::parse(&body).is_image_not_found();
        match (classify_delete(dialect, &a), own) {
            (Ok(Deletion::AlreadyGone), true) => {}
            (Err(e), false) => prop_assert_eq!(e.kind, ErrorKind::UntrustedAnswer),
            (other, _) => prop_assert!(false, "404 {body:?} (own shape: {own}) gave {other:?}"),
        }
        match (classify_get(&a, ID), own) {
            (Ok(Lookup::NotFound), true) => {}
            (Err(e), false) => prop_assert_eq!(e.kind, ErrorKind::UntrustedAnswer),
            (other, _) => prop_assert!(false, "GET 404 {body:?} gave {other:?}"),
        }
    }

    /// A 404 in no known shape at all is never gone, for DELETE or GET.
    #[test]
    fn a_foreign_404_never_releases(dialect in dialect(), body in foreign_body()) {
        let a = answer(404, body, None, None);
        prop_assert_eq!(classify_delete(dialect, &a).map_err(|e| e.kind), Err(ErrorKind::UntrustedAnswer));
        prop_assert_eq!(classify_get(&a, ID).map_err(|e| e.kind), Err(ErrorKind::UntrustedAnswer));
    }

    /// For a body with no code of the IMS table, the class is the status's
    /// alone: every 5xx (and 1xx) is Unavailable and transient, 401 is
    /// AuthFailed, 409 InUse, 429 Throttled, 3xx and other 4xx BadRequest,
    /// 403 Forbidden unless a known shape says "protected".
    #[test]
    fn the_status_decides_when_no_code_does(status in 100u16..600, body in body(), dialect in dialect()) {
        prop_assume!(!(200..300).contains(&status) && status != 404);
        prop_assume!(table_code(&body).is_none());
        let parsed = ErrorBody::parse(&body);
        let protected = parsed.shape != Shape::Unknown
            && parsed.message.to_ascii_lowercase().contains("protected");
        let want = kind_by_status(status, protected);
        let got = classify_failure(&answer(status, body.clone(), None, None)).kind;
        prop_assert_eq!(got, want, "status {}", status);
        if !(200..500).contains(&status) {
            prop_assert!(got.is_transient());
        }
        // DELETE agrees, except for IMS's "already gone" codes in its
        // dialect: those are confirmed by GET.
        let gone_code = parsed.code.as_deref().is_some_and(|c| IMS_ALREADY_GONE.contains(&c));
        let delete = classify_delete(dialect, &answer(status, body.clone(), None, None));
        if gone_code && dialect == Dialect::Huawei {
            prop_assert_eq!(delete, Ok(Deletion::Accepted));
        } else {
            prop_assert_eq!(delete.map_err(|e| e.kind), Err(want));
        }
        if status != 200 {
            prop_assert_eq!(classify_get(&answer(status, body, None, None), ID).map_err(|e| e.kind), Err(want));
        }
    }

    /// A code of the IMS table decides the class whatever the status (as
    /// the contract says), and IMS's "already gone" codes only lead to a
    /// confirming GET, in the IMS dialect only.
    #[test]
    fn a_table_code_decides_whatever_the_status(status in 300u16..600, body in body(), dialect in dialect()) {
        prop_assume!(status != 404);
        let code = ErrorBody::parse(&body).code;
        let a = answer(status, body.clone(), None, None);
        if let Some((kind, _)) = table_code(&body) {
            prop_assert_eq!(classify_failure(&a).kind, kind);
        }
        let gone_code = code.as_deref().is_some_and(|c| IMS_ALREADY_GONE.contains(&c));
        match classify_delete(dialect, &a) {
            Ok(d) => {
                prop_assert_eq!(d, Deletion::Accepted);
                prop_assert!(gone_code && dialect == Dialect::Huawei);
            }
            Err(_) => prop_assert!(!(gone_code && dialect == Dialect::Huawei)),
        }
    }

    /// Successful DELETEs: only Glance's 204 is "deleted"; every other 2xx,
    /// and every IMS 2xx, is only "accepted" (confirmed by GET later).
    #[test]
    fn only_glances_204_means_deleted(status in 200u16..300, body in body(), dialect in dialect()) {
        let got = classify_delete(dialect, &answer(status, body, None, None));
        let want = if status == 204 && dialect == Dialect::OpenStack {
            Deletion::Deleted
        } else {
            Deletion::Accepted
        };
        prop_assert_eq!(got, Ok(want));
    }

    /// Retry-After: a number of seconds, at most a day; anything else none.
    #[test]
    fn retry_after_is_bounded(v in any::<String>(), n in any::<u64>()) {
        if let Some(d) = parse_retry_after(Some(&v)) {
            prop_assert!(d <= Duration::from_secs(86_400));
        }
        prop_assert_eq!(parse_retry_after(Some(&n.to_string())), Some(Duration::from_secs(n.min(86_400))));
    }
}

// ------------------------------------------------------- image records ---

fn record() -> impl Strategy<Value = (String, bool)> {
    let field = || {
        proptest::option::of(prop_oneof![
            3 => text().prop_map(Value::String),
            1 => json_value(),
        ])
    };
    (
        any::<bool>(),
        text(),
        proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "name",
                    "status",
                    "protected",
                    "size",
                    "checksum",
                    "os_hash_value",
                    "visibility",
                    "updated_at",
                    "extra",
                ]),
                field(),
            ),
            0..9,
        ),
    )
        .prop_map(|(same_id, other_id, fields)| {
            let mut o = serde_json::Map::new();
            o.insert(
                "id".into(),
                Value::String(if same_id { ID.to_owned() } else { other_id }),
            );
            for (k, v) in fields {
                if let Some(v) = v {
                    o.insert(k.to_owned(), v);
                }
            }
            (Value::Object(o).to_string(), same_id)
        })
}

proptest! {
    #![proptest_config(config(512))]

    /// Image records: a record of another image (or not a record) is
    /// UntrustedAnswer; every kept string is cut to 256 characters without
    /// control characters.
    #[test]
    fn image_records_are_bounded_and_must_be_the_image((body, same_id) in record()) {
        // serde reads the string fields as strings (or null); `protected`
        // and `size` may be anything.
        let v: Value = serde_json::from_str(&body).expect("generated JSON");
        let typed = ["name", "status", "checksum", "os_hash_value", "visibility", "updated_at"]
            .iter()
            .all(|k| v.get(*k).is_none_or(|x| x.is_string() || x.is_null()));
        match parse_image(&body, ID) {
            Ok(info) => {
                prop_assert!(same_id && typed);
                prop_assert_eq!(info.id.as_str(), ID);
                for f in [&info.name, &info.status, &info.checksum, &info.visibility, &info.updated_at]
                    .into_iter()
                    .flatten()
                {
                    prop_assert!(f.chars().count() <= MAX_IMAGE_FIELD_CHARS);
                    prop_assert!(clean(f), "{:?}", f);
                }
                let protected = match v.get("protected") {
                    Some(Value::Bool(b)) => Some(*b),
                    Some(Value::String(s)) => Some(s.eq_ignore_ascii_case("true")),
                    _ => None,
                };
                prop_assert_eq!(info.protected, protected);
            }
            Err(e) => {
                prop_assert!(!(same_id && typed), "a record of the image was refused: {}", body);
                prop_assert_eq!(e.kind, ErrorKind::UntrustedAnswer);
            }
        }
        // GET 200 agrees: found (never as "deleted"), gone, or untrusted.
        match classify_get(&answer(200, body, None, None), ID) {
            Ok(Lookup::Found(info)) => prop_assert_ne!(info.status.as_deref(), Some("deleted")),
            Ok(Lookup::NotFound) => prop_assert!(same_id && typed),
            Err(e) => prop_assert_eq!(e.kind, ErrorKind::UntrustedAnswer),
        }
    }

    /// Anything else answered with 200 is never taken for the image.
    #[test]
    fn junk_with_200_is_not_an_image(junk in body()) {
        if let Ok(found) = classify_get(&answer(200, junk.clone(), None, None), ID) {
            prop_assert!(junk.contains(ID), "{found:?} from {junk}");
        }
    }
}

// ------------------------------------------------------------ clouds.yaml ---

/// A password no fixed message can contain by chance.
fn secret() -> impl Strategy<Value = String> {
    "[A-Z0-9]{6,24}".prop_map(|s| format!("Pw{s}Q"))
}

fn url_like() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("https://keystone.example:5000/v3".to_owned()),
        2 => Just("http://127.0.0.1:5000".to_owned()),
        2 => "https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?(/[a-z0-9/._-]{0,20})?",
        1 => "(https?|ftp|file)://[a-z0-9.:@?#/%-]{0,40}",
        1 => text(),
    ]
}

/// A clouds.yaml entry with any subset of the fields the parser reads,
/// each with a plausible or hostile value, and its secrets.
fn clouds_entry() -> impl Strategy<Value = (Value, Vec<String>)> {
    // Each field present more often than not, plausible more often than not.
    let opt = |s: BoxedStrategy<String>| proptest::option::weighted(0.8, s);
    let name = || opt(prop_oneof![4 => "[a-zA-Z0-9_-]{1,20}", 1 => text()].boxed());
    let rare =
        || proptest::option::weighted(0.2, prop_oneof![4 => "[a-zA-Z0-9_-]{1,20}", 1 => text()]);
    (
        (
            opt(url_like().boxed()),
            name(),
            rare(),
            opt(secret().boxed()),
            name(),
            rare(),
            name(),
            name(),
        ),
        (
            proptest::option::weighted(
                0.3,
                prop_oneof![
                    3 => Just("password".to_owned()),
                    1 => Just("v3applicationcredential".to_owned()),
                    1 => Just("aksk".to_owned()),
                    1 => Just("v3token".to_owned()),
                    1 => text(),
                ],
            ),
            proptest::option::weighted(
                0.2,
                prop_oneof![
                    Just("huaweicloud".to_owned()),
                    Just("otc".to_owned()),
                    text()
                ],
            ),
            proptest::option::of(prop_oneof![
                Just("ap-southeast-1".to_owned()),
                Just("RegionOne".to_owned()),
                text()
            ]),
            proptest::option::weighted(
                0.3,
                prop_oneof![
                    Just("public".to_owned()),
                    Just("internalURL".to_owned()),
                    text()
                ],
            ),
            proptest::option::weighted(0.3, url_like()),
            proptest::option::weighted(0.3, secret()),
            rare(),
            proptest::option::weighted(
                0.3,
                prop_oneof![
                    4 => any::<bool>().prop_map(Value::Bool),
                    1 => json_value(),
                ],
            ),
        ),
    )
        .prop_map(
            |(
                (
                    auth_url,
                    username,
                    user_id,
                    password,
                    project_name,
                    project_id,
                    user_domain,
                    project_domain,
                ),
                (auth_type, profile, region, interface, endpoint, secret_key, access_key, verify),
            )| {
                let mut secrets = Vec::new();
                secrets.extend(password.clone());
                secrets.extend(secret_key.clone());
                let auth = json!({
                    "auth_url": auth_url, "username": username, "user_id": user_id,
                    "password": password, "project_name": project_name, "project_id": project_id,
                    "user_domain_name": user_domain, "project_domain_name": project_domain,
                    "application_credential_id": user_id, "application_credential_secret": password,
                    "access_key": access_key, "secret_key": secret_key,
                });
                let entry = json!({
                    "auth": auth, "auth_type": auth_type, "profile": profile,
                    "region_name": region, "interface": interface,
                    "image_endpoint_override": endpoint, "verify": verify,
                });
                (strip_nulls(entry), secrets)
            },
        )
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        other => other,
    }
}

fn check_clouds_error(e: &CloudsYamlError, secrets: &[String]) -> Result<(), TestCaseError> {
    let text = e.to_string();
    // Field names and fixed words only, plus the cloud name asked for.
    prop_assert!(
        text.chars().count() <= 512,
        "{} chars: {}",
        text.chars().count(),
        text
    );
    for s in secrets {
        prop_assert!(!text.contains(s.as_str()), "a secret in {:?}", text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text: no panic; over the size limit refused before parsing.
    #[test]
    fn any_clouds_yaml_text_is_parsed_or_refused(raw in text(), pad in 0usize..2) {
        let raw = if pad == 1 { format!("{raw}\n#{}", "x".repeat(MAX_CLOUDS_YAML_BYTES)) } else { raw };
        match clouds_yaml::parse(&raw, "c", None) {
            Err(CloudsYamlError::TooLarge { .. }) => prop_assert!(raw.len() > MAX_CLOUDS_YAML_BYTES),
            Err(e) => check_clouds_error(&e, &[])?,
            Ok(_) => {}
        }
    }

    /// Generated entries, and the same entries with bytes broken: parsed or
    /// refused with a message that names fields, never a secret; a parsed
    /// config shows no secret in Debug, and knows every secret it holds.
    #[test]
    fn clouds_yaml_errors_and_debug_never_show_a_secret(
        (entry, secrets) in clouds_entry(),
        cut in proptest::option::of((any::<prop::sample::Index>(), any::<char>())),
    ) {
        let mut yaml = serde_yaml::to_string(&json!({"clouds": {"c": entry}})).expect("yaml");
        if let Some((at, ch)) = cut {
            let chars: Vec<char> = yaml.chars().collect();
            let i = at.index(chars.len().max(1));
            yaml = chars[..i].iter().chain(std::iter::once(&ch)).chain(chars[i..].iter()).collect();
        }
        match clouds_yaml::parse(&yaml, "c", None) {
            Err(e) => check_clouds_error(&e, &secrets)?,
            Ok(cfg) => {
                let debug = format!("{cfg:?}");
                for s in &secrets {
                    prop_assert!(!debug.contains(s.as_str()), "a secret in {}", debug);
                }
                let known = cfg.secrets();
                prop_assert!(!known.is_empty());
                for s in known {
                    prop_assert!(!s.is_empty());
                }
                if let Some(u) = cfg.auth.keystone_url() {
                    let parsed = url::Url::parse(u);
                    prop_assert!(parsed.as_ref().is_ok_and(|u| clouds_yaml::url_problem(u).is_none()), "{u}");
                }
            }
        }
        prop_assert!(matches!(clouds_yaml::parse(&yaml, "other", None),
            Err(CloudsYamlError::NoSuchCloud(_) | CloudsYamlError::Unreadable(_))));
    }
}

// ------------------------------------------------------------------ URLs ---

proptest! {
    #![proptest_config(config(512))]

    /// Keystone and image URLs from a clouds.yaml or a catalog: no panic;
    /// what is accepted has a host, http(s), no user, query or fragment,
    /// and the path the operator calls.
    #[test]
    fn endpoint_urls_are_checked(raw in url_like(), id in any::<String>()) {
        if let Ok(u) = tokens_url(&raw) {
            prop_assert!(clouds_yaml::url_problem(&u).is_none(), "{u}");
            prop_assert!(u.path().ends_with("/auth/tokens"), "{u}");
        }
        if let Ok(base) = image_api_base(&raw) {
            prop_assert!(clouds_yaml::url_problem(&base).is_none(), "{base}");
            prop_assert!(base.path().trim_end_matches('/').ends_with("/v2"), "{base}");
            // The id is one path segment, whatever it holds.
            match image_url(&base, &id) {
                Ok(u) => {
                    prop_assert!(u.query().is_none() && u.fragment().is_none());
                    let last = u.path_segments().and_then(|mut s| s.next_back()).unwrap_or_default();
                    let decoded = percent_encoding::percent_decode_str(last).decode_utf8_lossy();
                    prop_assert_eq!(decoded.as_ref(), id.as_str());
                    let base_segments = base
                        .path_segments()
                        .map(|s| {
                            let v: Vec<&str> = s.collect();
                            v.len() - usize::from(v.last() == Some(&""))
                        })
                        .unwrap_or(0);
                    let segments = u.path_segments().map(|s| s.count()).unwrap_or(0);
                    prop_assert_eq!(segments, base_segments + 2, "{}", u);
                }
                Err(e) => prop_assert!(matches!(id.as_str(), "" | "." | "..") , "{e}"),
            }
        }
    }
}

// ------------------------------------------------------------- durations ---

proptest! {
    #![proptest_config(config(512))]

    /// Durations from flags and environment variables: no panic, never
    /// zero; bare numbers are seconds; what humantime writes reads back.
    #[test]
    fn durations_parse_or_are_refused(raw in any::<String>(), secs in 1u64..10_000_000, ms in 1u64..10_000_000_000) {
        if let Ok(d) = parse_duration(&raw) {
            prop_assert!(!d.is_zero());
        }
        prop_assert_eq!(parse_duration(&secs.to_string()), Ok(Duration::from_secs(secs)));
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&humantime::format_duration(d).to_string()), Ok(d));
        let zero = format!("0{}", ["", "s", "ms", "m"][(secs % 4) as usize]);
        prop_assert!(parse_duration(&zero).is_err(), "{}", zero);
        let _ = parse_optional_addr(&raw);
    }

    /// Text cut for statuses and logs: within the limit, no control
    /// characters; redaction leaves none of the secrets (4 bytes or more).
    #[test]
    fn truncation_and_redaction_are_bounded(s in text(), max in 0usize..600, secrets in proptest::collection::vec("[A-Z0-9]{4,12}", 0..3)) {
        let t = truncate_chars(&s, max);
        prop_assert!(t.chars().count() <= max);
        prop_assert!(clean(&t));
        let mixed = format!("{s}{}", secrets.join(&s));
        let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let r = redact(&mixed, &refs);
        for sec in &secrets {
            prop_assert!(!r.contains(sec.as_str()), "{sec} in {r:?}");
        }
        let e = CloudError::new(ErrorKind::Unavailable, mixed).redact(&refs);
        prop_assert!(e.message.chars().count() <= MAX_ERROR_MESSAGE_CHARS);
    }
}

// ------------------------------------------------------------------ tables ---

/// Every status code from 100 to 599, against bodies of each known shape
/// and foreign ones: the class of each is fixed (the same for every body
/// without a table code), and the ones the README names are as it says.
#[test]
fn every_status_code_has_one_class() {
    let foreign = [
        "",
        "<html><body>oops</body></html>",
        "default backend - 404",
        r#"{"detail": "x"}"#,
        "null",
    ];
    let glance = |status: u16| {
        json!({"message": "m", "code": format!("{status} X"), "title": "T"}).to_string()
    };
    let keystone =
        |status: u16| json!({"error": {"code": status, "title": "T", "message": "m"}}).to_string();
    for status in 100u16..600 {
        let mut bodies: Vec<String> = foreign.iter().map(|s| (*s).to_owned()).collect();
        bodies.push(glance(status));
        bodies.push(keystone(status));
        let kinds: Vec<ErrorKind> = bodies
            .iter()
            .map(|b| classify_failure(&answer(status, b.clone(), None, None)).kind)
            .collect();
        assert!(
            kinds.iter().all(|k| *k == kinds[0]),
            "status {status}: {kinds:?}"
        );
        let k = kinds[0];
        match status {
            500..=599 | 100..=199 => {
                assert_eq!(k, ErrorKind::Unavailable, "{status}");
                assert!(k.is_transient());
            }
            401 => assert_eq!(k, ErrorKind::AuthFailed),
            403 => assert_eq!(k, ErrorKind::Forbidden),
            409 => assert_eq!(k, ErrorKind::InUse),
            429 => {
                assert_eq!(k, ErrorKind::Throttled);
                assert!(k.is_transient());
            }
            300..=499 => assert_eq!(k, ErrorKind::BadRequest, "{status}"),
            _ => {}
        }
        if status == 404 {
            for b in &foreign {
                for d in [Dialect::OpenStack, Dialect::Huawei] {
                    assert_eq!(
                        classify_delete(d, &answer(404, (*b).to_owned(), None, None))
                            .map_err(|e| e.kind),
                        Err(ErrorKind::UntrustedAnswer),
                        "{b}"
                    );
                }
            }
            assert_eq!(
                classify_delete(Dialect::OpenStack, &answer(404, keystone(404), None, None))
                    .map_err(|e| e.kind),
                Err(ErrorKind::UntrustedAnswer),
                "Keystone's 404 is not Glance's"
            );
            assert_eq!(
                classify_delete(Dialect::OpenStack, &answer(404, glance(404), None, None)),
                Ok(Deletion::AlreadyGone)
            );
        }
    }
}
