//! Keystone v3 authentication (password or application credential; Huawei
//! IAM speaks the same API): one token per set of credentials, cached until
//! shortly before it expires, and the image endpoint taken from the token's
//! catalog (or from `image_endpoint_override`, or for Huawei Cloud built
//! from the region).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::answer::{MAX_KEYSTONE_BODY_BYTES, classify_failure, read_answer};
use super::clouds_yaml::{
    AppCredRef, ApplicationCredential, Auth, CloudConfig, NameOrId, PasswordAuth, url_problem,
};
use super::egress::EgressPolicy;
use super::error::{MAX_ERROR_MESSAGE_CHARS, Peer, redact, transport_error, truncate_chars};
use super::{CloudError, ErrorKind};

/// Renew a token this long before Keystone says it expires.
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// A token request (connect, send, whole answer) must finish within this.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// A token and where to use it. `Debug` shows a short hash, never the token.
#[derive(Clone)]
pub struct Session {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Base URL of the image API including `/v2`, without a trailing slash.
    pub image_url: url::Url,
    /// Who the token speaks for: see [`identity`].
    pub identity: Option<String>,
}

/// A cloud identity: the Keystone the token came from and the project it is
/// scoped to, as Keystone itself said (not as the Secret claims). Two
/// CloudImages with the same identity reach the same images.
pub fn identity(auth_url: &str, project_id: &str) -> String {
    format!("{}#{project_id}", auth_url.trim_end_matches('/'))
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &token_fingerprint(&self.token))
            .field("expires_at", &self.expires_at)
            .field("image_url", &self.image_url.as_str())
            .field("identity", &self.identity)
            .finish()
    }
}

impl Session {
    /// Whether the token should be renewed before it is used at `now`.
    pub fn needs_renewal(&self, now: DateTime<Utc>) -> bool {
        let margin = chrono::Duration::from_std(RENEW_BEFORE_EXPIRY).unwrap_or_default();
        now + margin >= self.expires_at
    }
}

/// A short, non-reversible label for a token, for logs.
pub fn token_fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(token.as_bytes());
    format!("sha256:{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// `{auth_url}/auth/tokens`, accepting auth URLs with or without `/v3`.
/// The path is built by segments; a URL with a query, a fragment or a user
/// is refused.
pub fn tokens_url(auth_url: &str) -> Result<url::Url, CloudError> {
    let invalid =
        |why: &str| CloudError::new(ErrorKind::CredentialsInvalid, format!("auth_url {why}"));
    let mut url = url::Url::parse(auth_url).map_err(|_| invalid("is not a valid URL"))?;
    if let Some(p) = url_problem(&url) {
        return Err(invalid(p));
    }
    let (ends_in_v3, trailing_empty) = last_segment_is(&url, "v3");
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| invalid("is not a valid URL"))?;
        for _ in 0..trailing_empty {
            segments.pop();
        }
        if !ends_in_v3 {
            segments.push("v3");
        }
        segments.extend(["auth", "tokens"]);
    }
    Ok(url)
}

fn name_or_id(v: &NameOrId) -> Value {
    match v {
        NameOrId::Name(n) => json!({"name": n}),
        NameOrId::Id(i) => json!({"id": i}),
    }
}

fn with_domain(v: &NameOrId, domain: Option<&NameOrId>) -> Value {
    let mut out = name_or_id(v);
    if let (Some(d), Some(obj)) = (domain, out.as_object_mut()) {
        obj.insert("domain".into(), name_or_id(d));
    }
    out
}

/// The JSON body of a password token request, project-scoped when the
/// entry names a project (a project named without a domain, as Huawei IAM
/// allows, is sent without one).
pub fn password_request(p: &PasswordAuth) -> Value {
    let mut user = with_domain(&p.user, p.user_domain.as_ref());
    if let Some(obj) = user.as_object_mut() {
        obj.insert("password".into(), Value::String(p.password.clone()));
    }
    let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": user}}});
    if let Some(project) = &p.project {
        auth["scope"] = json!({"project": with_domain(project, p.project_domain.as_ref())});
    }
    json!({"auth": auth})
}

/// The JSON body of an application credential token request: by id, or by
/// name with its user. No scope: the credential is bound to its project.
pub fn application_credential_request(a: &ApplicationCredential) -> Value {
    let mut cred = match &a.credential {
        AppCredRef::Id(id) => json!({"id": id}),
        AppCredRef::Name {
            name,
            user,
            user_domain,
        } => json!({"name": name, "user": with_domain(user, user_domain.as_ref())}),
    };
    cred["secret"] = Value::String(a.secret.clone());
    json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": cred}}})
}

/// The token request body for `auth`, with the Keystone URL; `None` for
/// AK/SK, which asks Keystone for nothing.
fn token_request(auth: &Auth) -> Option<(&str, Value)> {
    match auth {
        Auth::Password(p) => Some((&p.auth_url, password_request(p))),
        Auth::ApplicationCredential(a) => Some((&a.auth_url, application_credential_request(a))),
        Auth::AkSk(_) => None,
    }
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    expires_at: DateTime<Utc>,
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
    #[serde(default)]
    project: Option<TokenProject>,
}

#[derive(Deserialize)]
struct TokenProject {
    id: String,
}

#[derive(Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    url: String,
    interface: String,
    #[serde(default)]
    region_id: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

/// Whether the last non-empty path segment is `name`, and how many empty
/// segments (trailing slashes) follow it.
fn last_segment_is(url: &url::Url, name: &str) -> (bool, usize) {
    let segments: Vec<&str> = url.path_segments().map(|s| s.collect()).unwrap_or_default();
    let trailing_empty = segments.iter().rev().take_while(|s| s.is_empty()).count();
    let last = segments.iter().rev().find(|s| !s.is_empty());
    (last == Some(&name), trailing_empty)
}

/// At most this many characters of a region name from the catalog in a message.
const MAX_REGION_CHARS: usize = 64;

/// Picks the image endpoint: the override or the region-built Huawei
/// endpoint if there is one (see [`CloudConfig::fixed_image_endpoint`]), else the one distinct
/// URL of the catalog's `image` endpoints with the wanted interface (and
/// region, when set). Several distinct URLs are `CredentialsInvalid`: the
/// operator does not guess which region's image to delete.
fn image_endpoint(cfg: &CloudConfig, catalog: &[CatalogEntry]) -> Result<url::Url, CloudError> {
    if let Some(fixed) = cfg.fixed_image_endpoint() {
        return image_api_base(fixed);
    }
    let matching: Vec<&Endpoint> = catalog
        .iter()
        .filter(|e| e.kind == "image")
        .flat_map(|e| e.endpoints.iter())
        .filter(|ep| {
            ep.interface == cfg.interface
                && cfg.region_name.as_ref().is_none_or(|r| {
                    ep.region_id.as_ref() == Some(r) || ep.region.as_ref() == Some(r)
                })
        })
        .collect();
    let Some(first) = matching.first() else {
        return Err(CloudError::new(
            ErrorKind::CredentialsInvalid,
            format!(
                "the Keystone catalog has no `image` endpoint for interface `{}`{}",
                cfg.interface,
                cfg.region_name
                    .as_ref()
                    .map(|r| format!(" in region `{r}`"))
                    .unwrap_or_default()
            ),
        ));
    };
    if matching.iter().any(|ep| ep.url != first.url) {
        let mut regions: Vec<String> = matching
            .iter()
            .map(|ep| {
                let r = ep.region_id.as_ref().or(ep.region.as_ref());
                truncate_chars(r.map_or("(none)", |r| r.as_str()), MAX_REGION_CHARS)
            })
            .collect();
        regions.sort();
        regions.dedup();
        let mut list = regions
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if regions.len() > 5 {
            list.push_str(", …");
        }
        let hint = if cfg.region_name.is_some() {
            "set image_endpoint_override"
        } else {
            "set region_name"
        };
        return Err(CloudError::new(
            ErrorKind::CredentialsInvalid,
            format!(
                "several image endpoints in the catalog for interface `{}` (regions {list}): {hint}",
                cfg.interface
            ),
        ));
    }
    image_api_base(&first.url).map_err(|_| {
        CloudError::new(
            ErrorKind::CredentialsInvalid,
            "the Keystone catalog's image endpoint is not a usable URL (http or https, no query, fragment or user)",
        )
    })
}

/// Normalises an image endpoint to `.../v2` (catalogs usually list it
/// unversioned), by path segments. A URL with a query, a fragment or a user
/// is refused.
pub fn image_api_base(raw: &str) -> Result<url::Url, CloudError> {
    let invalid = |why: &str| {
        CloudError::new(
            ErrorKind::CredentialsInvalid,
            format!("the image endpoint {why}"),
        )
    };
    let mut url = url::Url::parse(raw).map_err(|_| invalid("is not a valid URL"))?;
    if let Some(p) = url_problem(&url) {
        return Err(invalid(p));
    }
    let (ends_in_v2, trailing_empty) = last_segment_is(&url, "v2");
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|_| invalid("is not a valid URL"))?;
        for _ in 0..trailing_empty {
            segments.pop();
        }
        if !ends_in_v2 {
            segments.push("v2");
        }
    }
    Ok(url)
}

/// Asks Keystone for a token with the configured password or application
/// credential. The request goes only where `egress` permits, times out
/// after [`AUTH_TIMEOUT`], and reads at most [`MAX_KEYSTONE_BODY_BYTES`] of
/// the answer. The image endpoint found is checked against `egress` too.
pub async fn authenticate(
    http: &reqwest::Client,
    cfg: &CloudConfig,
    egress: &EgressPolicy,
) -> Result<Session, CloudError> {
    let Some((auth_url, body)) = token_request(&cfg.auth) else {
        return Err(CloudError::new(
            ErrorKind::CredentialsInvalid,
            "these credentials sign requests and ask Keystone for no token",
        ));
    };
    let url = tokens_url(auth_url)?;
    egress.check_url(Peer::Keystone, &url)?;
    let resp = http
        .post(url)
        .timeout(AUTH_TIMEOUT)
        .header("Accept", "application/json")
        .json(&body)
        .send()
        .await
        .map_err(|e| transport_error(Peer::Keystone, &e))?;
    let (mut answer, headers) = read_answer(resp, MAX_KEYSTONE_BODY_BYTES, Peer::Keystone).await?;
    // A Keystone that echoes the request must not get a secret into a message.
    answer.body = redact(&answer.body, &cfg.secrets());
    let status = answer.status;
    if status != 201 && status != 200 {
        let mut err = classify_failure(&answer);
        let message = match status {
            // 404 here means an unknown user, project or domain.
            401 | 403 | 404 => {
                err.kind = ErrorKind::AuthFailed;
                format!("Keystone refused the credentials: {}", err.message)
            }
            300..=399 => format!(
                "Keystone answered HTTP {status}: a redirect, which the operator does not follow; set auth_url to the real endpoint"
            ),
            _ => format!("Keystone failed: {}", err.message),
        };
        err.message = truncate_chars(&message, MAX_ERROR_MESSAGE_CHARS);
        return Err(err);
    }
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            CloudError::new(
                ErrorKind::UntrustedAnswer,
                "Keystone answered without an X-Subject-Token header",
            )
        })?;
    tracing::info!(
        status,
        request_id = answer.request_id.as_deref().unwrap_or(""),
        "Keystone issued a token"
    );
    // serde's messages can quote the body, so none is shown.
    let parsed: TokenBody = serde_json::from_str(&answer.body).map_err(|_| {
        CloudError::new(
            ErrorKind::UntrustedAnswer,
            "Keystone's token answer is not a Keystone v3 token",
        )
    })?;
    let image_url = image_endpoint(cfg, &parsed.token.catalog)?;
    egress.check_url(Peer::ImageService, &image_url)?;
    Ok(Session {
        token,
        expires_at: parsed.token.expires_at,
        image_url,
        identity: parsed
            .token
            .project
            .map(|p| identity(auth_url, &crate::cloud::error::truncate(p.id, 64))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::clouds_yaml;

    fn cfg() -> CloudConfig {
        let y = "clouds:\n  c:\n    auth:\n      auth_url: http://k:5000\n      username: demo\n      password: pw\n      project_name: demo\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: RegionOne\n";
        clouds_yaml::parse(y, "c", None).expect("valid")
    }

    #[test]
    fn request_body_is_password_and_project_scoped() {
        let Auth::Password(p) = &cfg().auth else {
            panic!("a password entry")
        };
        let body = password_request(p);
        assert_eq!(
            body,
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "demo", "domain": {"name": "Default"}, "password": "pw"}}},
                             "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}})
        );
    }

    fn parse(body: &str) -> CloudConfig {
        let indented: String = body.lines().map(|l| format!("    {l}\n")).collect();
        clouds_yaml::parse(&format!("clouds:\n  c:\n{indented}"), "c", None).expect("valid")
    }

    fn body_of(cfg: &CloudConfig) -> Value {
        token_request(&cfg.auth).expect("a token request").1
    }

    #[test]
    fn ids_and_huawei_projects_without_a_domain() {
        let by_ids = parse(
            "auth:\n  auth_url: http://k/v3\n  user_id: u1\n  password: pw\n  project_id: p1",
        );
        assert_eq!(
            body_of(&by_ids),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"id": "u1", "password": "pw"}}},
                             "scope": {"project": {"id": "p1"}}}})
        );
        let iam = parse(
            "profile: huaweicloud\nregion_name: ap-southeast-1\nauth:\n  username: janitor\n  password: pw\n  user_domain_name: my-account",
        );
        assert_eq!(
            token_request(&iam.auth).map(|(u, _)| u.to_owned()),
            Some("https://iam.ap-southeast-1.myhuaweicloud.com/v3".to_owned())
        );
        assert_eq!(
            body_of(&iam),
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "janitor", "domain": {"name": "my-account"}, "password": "pw"}}},
                             "scope": {"project": {"name": "ap-southeast-1"}}}})
        );
    }

    #[test]
    fn application_credentials_carry_no_scope() {
        let by_id = parse(
            "auth_type: v3applicationcredential\nauth:\n  auth_url: http://k/v3\n  application_credential_id: ac1\n  application_credential_secret: s3\n  project_name: ignored\n  project_domain_name: Default",
        );
        assert_eq!(
            body_of(&by_id),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"id": "ac1", "secret": "s3"}}}})
        );
        let by_name = parse(
            "auth_type: v3applicationcredential\nauth:\n  auth_url: http://k/v3\n  application_credential_name: janitor\n  application_credential_secret: s3\n  username: demo\n  user_domain_name: Default",
        );
        assert_eq!(
            body_of(&by_name),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"name": "janitor", "secret": "s3", "user": {"name": "demo", "domain": {"name": "Default"}}}}}})
        );
        let by_user_id = parse(
            "auth_type: v3applicationcredential\nauth:\n  auth_url: http://k/v3\n  application_credential_name: janitor\n  application_credential_secret: s3\n  user_id: u1",
        );
        assert_eq!(
            body_of(&by_user_id),
            json!({"auth": {"identity": {"methods": ["application_credential"],
                "application_credential": {"name": "janitor", "secret": "s3", "user": {"id": "u1"}}}}})
        );
        let aksk =
            parse("auth_type: aksk\nregion_name: r1\nauth:\n  access_key: a\n  secret_key: s");
        assert!(
            token_request(&aksk.auth).is_none(),
            "AK/SK asks Keystone nothing"
        );
    }

    #[test]
    fn auth_url_with_or_without_v3() {
        assert_eq!(
            tokens_url("http://k:5000").map(|u| u.to_string()),
            Ok("http://k:5000/v3/auth/tokens".into())
        );
        assert_eq!(
            tokens_url("http://k:5000/v3/").map(|u| u.to_string()),
            Ok("http://k:5000/v3/auth/tokens".into())
        );
    }

    #[test]
    fn urls_are_built_by_path_segments() {
        for (auth_url, want) in [
            ("http://k:5000", "http://k:5000/v3/auth/tokens"),
            ("http://k:5000/", "http://k:5000/v3/auth/tokens"),
            ("http://k:5000/v3", "http://k:5000/v3/auth/tokens"),
            ("http://k:5000/v3//", "http://k:5000/v3/auth/tokens"),
            ("https://k/identity", "https://k/identity/v3/auth/tokens"),
            (
                "https://k/identity/v3/",
                "https://k/identity/v3/auth/tokens",
            ),
        ] {
            assert_eq!(
                tokens_url(auth_url).map(|u| u.to_string()),
                Ok(want.to_owned()),
                "{auth_url}"
            );
        }
        for bad in [
            "http://k:5000/v3?redirect=x",
            "http://k:5000/v3#x",
            "http://u:p@k:5000/v3",
            "mailto:k@example",
            "not a url",
        ] {
            assert_eq!(
                tokens_url(bad).map_err(|e| e.kind),
                Err(ErrorKind::CredentialsInvalid),
                "{bad}"
            );
        }
        for (endpoint, want) in [
            ("http://g:9292", "http://g:9292/v2"),
            ("http://g:9292/", "http://g:9292/v2"),
            ("http://g:9292/v2/", "http://g:9292/v2"),
            ("https://ims.example/image", "https://ims.example/image/v2"),
        ] {
            assert_eq!(
                image_api_base(endpoint).map(|u| u.to_string()),
                Ok(want.to_owned()),
                "{endpoint}"
            );
        }
        for bad in [
            "http://g:9292/?a=1",
            "http://g:9292/#f",
            "http://me@g:9292/",
        ] {
            assert_eq!(
                image_api_base(bad).map_err(|e| e.kind),
                Err(ErrorKind::CredentialsInvalid),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_ambiguous_catalog_is_refused() {
        let catalog: Vec<CatalogEntry> = serde_json::from_value(json!([
            {"type": "image", "endpoints": [
                {"url": "http://one:9292", "interface": "public", "region_id": "RegionOne"},
                {"url": "http://one:9292", "interface": "public", "region_id": "RegionOne"},
                {"url": "http://two:9292", "interface": "public", "region_id": "RegionTwo"},
                {"url": "http://x:9292", "interface": "internal", "region_id": "RegionThree"}]}
        ]))
        .expect("catalog");
        let mut c = cfg();
        c.region_name = None;
        let err = image_endpoint(&c, &catalog).expect_err("ambiguous");
        assert_eq!(err.kind, ErrorKind::CredentialsInvalid);
        assert_eq!(
            err.message,
            "several image endpoints in the catalog for interface `public` (regions RegionOne, RegionTwo): set region_name"
        );
        c.region_name = Some("RegionOne".into());
        assert_eq!(
            image_endpoint(&c, &catalog).map(|u| u.to_string()),
            Ok("http://one:9292/v2".into()),
            "the same URL twice is not ambiguous"
        );
        let bad: Vec<CatalogEntry> = serde_json::from_value(json!([
            {"type": "image", "endpoints": [
                {"url": "http://evil@one:9292/?x", "interface": "public", "region_id": "RegionOne"}]}
        ]))
        .expect("catalog");
        let err = image_endpoint(&c, &bad).expect_err("userinfo");
        assert_eq!(err.kind, ErrorKind::CredentialsInvalid);
        assert!(!err.message.contains("evil"), "{}", err.message);
    }

    #[test]
    fn catalog_picks_image_by_interface_and_region() {
        let catalog: Vec<CatalogEntry> = serde_json::from_value(json!([
            {"type": "identity", "endpoints": [{"url": "http://k", "interface": "public", "region_id": "RegionOne"}]},
            {"type": "image", "endpoints": [
                {"url": "http://other:9292", "interface": "public", "region_id": "RegionTwo"},
                {"url": "http://internal:9292", "interface": "internal", "region_id": "RegionOne"},
                {"url": "http://glance:9292/", "interface": "public", "region_id": "RegionOne"}]}
        ]))
        .expect("catalog");
        assert_eq!(
            image_endpoint(&cfg(), &catalog).map(|u| u.to_string()),
            Ok("http://glance:9292/v2".into())
        );
        let mut c = cfg();
        c.region_name = Some("RegionThree".into());
        assert_eq!(
            image_endpoint(&c, &catalog).map_err(|e| e.kind),
            Err(ErrorKind::CredentialsInvalid)
        );
    }

    #[test]
    fn tokens_expire_early_and_never_print() {
        let s = Session {
            token: "gAAAA-secret-token".into(),
            expires_at: DateTime::parse_from_rfc3339("2026-01-01T01:00:00Z")
                .expect("date")
                .with_timezone(&Utc),
            image_url: url::Url::parse("http://g/v2").expect("url"),
            identity: None,
        };
        let at = |t: &str| {
            DateTime::parse_from_rfc3339(t)
                .expect("date")
                .with_timezone(&Utc)
        };
        assert!(!s.needs_renewal(at("2026-01-01T00:54:00Z")));
        assert!(s.needs_renewal(at("2026-01-01T00:56:00Z")));
        assert!(!format!("{s:?}").contains("secret"));
    }
}
