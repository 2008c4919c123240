//! Keystone v3 password authentication: one token per set of credentials,
//! cached until shortly before it expires, and the image endpoint taken from
//! the token's catalog (or from `image_endpoint_override`).

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::answer::{classify_failure, read_answer};
use super::clouds_yaml::{CloudConfig, NameOrId};
use super::error::describe_transport;
use super::{CloudError, ErrorKind};

/// Renew a token this long before Keystone says it expires.
pub const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(300);

/// A token and where to use it. `Debug` shows a short hash, never the token.
#[derive(Clone)]
pub struct Session {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Base URL of the image API including `/v2`, without a trailing slash.
    pub image_url: url::Url,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &token_fingerprint(&self.token))
            .field("expires_at", &self.expires_at)
            .field("image_url", &self.image_url.as_str())
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
pub fn tokens_url(auth_url: &str) -> Result<url::Url, CloudError> {
    let trimmed = auth_url.trim_end_matches('/');
    let base = if trimmed.ends_with("/v3") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v3")
    };
    url::Url::parse(&format!("{base}/auth/tokens"))
        .map_err(|_| CloudError::new(ErrorKind::CredentialsInvalid, "auth_url is not a valid URL"))
}

fn name_or_id(v: &NameOrId) -> Value {
    match v {
        NameOrId::Name(n) => json!({"name": n}),
        NameOrId::Id(i) => json!({"id": i}),
    }
}

/// The JSON body of a password, project-scoped token request.
pub fn password_request(cfg: &CloudConfig) -> Value {
    let mut user = name_or_id(&cfg.user);
    if let (Some(d), Some(obj)) = (&cfg.user_domain, user.as_object_mut()) {
        obj.insert("domain".into(), name_or_id(d));
    }
    if let Some(obj) = user.as_object_mut() {
        obj.insert("password".into(), Value::String(cfg.password.clone()));
    }
    let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": user}}});
    if let Some(p) = &cfg.project {
        let mut project = name_or_id(p);
        if let (Some(d), Some(obj)) = (&cfg.project_domain, project.as_object_mut()) {
            obj.insert("domain".into(), name_or_id(d));
        }
        auth["scope"] = json!({"project": project});
    }
    json!({"auth": auth})
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

/// Picks the image endpoint: the override if given, else the catalog entry
/// of type `image` with the wanted interface (and region, when set).
fn image_endpoint(cfg: &CloudConfig, catalog: &[CatalogEntry]) -> Result<url::Url, CloudError> {
    let raw = match &cfg.image_endpoint_override {
        Some(o) => o.clone(),
        None => catalog
            .iter()
            .filter(|e| e.kind == "image")
            .flat_map(|e| e.endpoints.iter())
            .find(|ep| {
                ep.interface == cfg.interface
                    && cfg.region_name.as_ref().is_none_or(|r| {
                        ep.region_id.as_ref() == Some(r) || ep.region.as_ref() == Some(r)
                    })
            })
            .map(|ep| ep.url.clone())
            .ok_or_else(|| {
                CloudError::new(
                    ErrorKind::CredentialsInvalid,
                    format!(
                        "the Keystone catalog has no `image` endpoint for interface `{}`{}",
                        cfg.interface,
                        cfg.region_name
                            .as_ref()
                            .map(|r| format!(" in region `{r}`"))
                            .unwrap_or_default()
                    ),
                )
            })?,
    };
    image_api_base(&raw)
}

/// Normalises an image endpoint to `.../v2` (catalogs usually list it unversioned).
pub fn image_api_base(raw: &str) -> Result<url::Url, CloudError> {
    let trimmed = raw.trim_end_matches('/');
    let base = if trimmed.ends_with("/v2") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v2")
    };
    url::Url::parse(&base).map_err(|_| {
        CloudError::new(
            ErrorKind::CredentialsInvalid,
            "the image endpoint is not a valid URL",
        )
    })
}

/// Asks Keystone for a token with the configured password.
pub async fn authenticate(
    http: &reqwest::Client,
    cfg: &CloudConfig,
) -> Result<Session, CloudError> {
    let url = tokens_url(&cfg.auth_url)?;
    let resp = http
        .post(url)
        .header("Accept", "application/json")
        .json(&password_request(cfg))
        .send()
        .await
        .map_err(|e| {
            CloudError::new(
                ErrorKind::Unavailable,
                format!("Keystone: {}", describe_transport(&e)),
            )
        })?;
    let (answer, headers) = read_answer(resp).await.map_err(|e| {
        CloudError::new(
            ErrorKind::Unavailable,
            format!("Keystone: {}", describe_transport(&e)),
        )
    })?;
    let status = answer.status;
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != 201 && status != 200 {
        let mut err = classify_failure(&answer);
        err.message = format!("Keystone refused the credentials: {}", err.message);
        if status == 401 || status == 403 || status == 404 {
            // 404 here means an unknown user, project or domain.
            err.kind = ErrorKind::AuthFailed;
        }
        return Err(err);
    }
    let token = token.filter(|t| !t.is_empty()).ok_or_else(|| {
        CloudError::new(
            ErrorKind::Unavailable,
            "Keystone answered without an X-Subject-Token header",
        )
    })?;
    tracing::info!(
        status,
        request_id = answer.request_id.as_deref().unwrap_or(""),
        "Keystone issued a token"
    );
    let parsed: TokenBody = serde_json::from_str(&answer.body).map_err(|e| {
        CloudError::new(
            ErrorKind::Unavailable,
            format!("Keystone token body unreadable: {e}"),
        )
    })?;
    let image_url = image_endpoint(cfg, &parsed.token.catalog)?;
    Ok(Session {
        token,
        expires_at: parsed.token.expires_at,
        image_url,
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
        let body = password_request(&cfg());
        assert_eq!(
            body,
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "demo", "domain": {"name": "Default"}, "password": "pw"}}},
                             "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}}}})
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
