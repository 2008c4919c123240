//! The one HTTP implementation of [`ImageService`]: GET and DELETE of
//! `/v2/images/{id}` in either dialect, with a Keystone token that is renewed
//! before expiry and once more on a 401.

use std::time::Duration;

use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::{Instrument, debug, info, info_span};

use super::answer::{Answer, classify_delete, classify_failure, read_answer};
use super::clouds_yaml::CloudConfig;
use super::error::describe_transport;
use super::keystone::{self, Session};
use super::{CloudError, Deletion, Dialect, ErrorKind, ImageInfo, ImageService, Lookup};

/// Everything but unreserved characters is escaped in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Timeouts for calls to the cloud.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An image service reached over HTTP with Keystone tokens.
pub struct HttpImageService {
    cfg: CloudConfig,
    http: reqwest::Client,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for HttpImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpImageService")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl HttpImageService {
    pub fn new(cfg: CloudConfig) -> Result<Self, CloudError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // Never follow redirects: X-Auth-Token (and Keystone's password
            // body on 307/308) would go wherever the redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cloudimage-operator/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &cfg.cacert {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|_| {
                CloudError::new(
                    ErrorKind::CredentialsInvalid,
                    "the Secret's `cacert` is not valid PEM",
                )
            })?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if !cfg.verify_tls {
            builder = builder.danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| {
            CloudError::new(
                ErrorKind::CredentialsInvalid,
                format!("cannot build an HTTP client: {e}"),
            )
        })?;
        Ok(HttpImageService {
            cfg,
            http,
            session: Mutex::new(None),
        })
    }

    /// A valid session, authenticating when there is none or it is about to expire.
    async fn session(&self, force_new: bool) -> Result<Session, CloudError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard
            .as_ref()
            .filter(|s| !force_new && !s.needs_renewal(Utc::now()))
        {
            return Ok(s.clone());
        }
        let fresh = keystone::authenticate(&self.http, &self.cfg).await?;
        debug!(token = %keystone::token_fingerprint(&fresh.token), expires_at = %fresh.expires_at, "new Keystone token");
        *guard = Some(fresh.clone());
        Ok(fresh)
    }

    /// Sends one request to `/v2/images/{id}`; on 401 renews the token once and retries.
    async fn call(
        &self,
        method: Method,
        image_id: &str,
        body: Option<String>,
    ) -> Result<Answer, CloudError> {
        let mut renewed = false;
        loop {
            let session = self.session(renewed).await?;
            let answer = self
                .send(&session, method.clone(), image_id, body.clone())
                .await?;
            if answer.status == 401 && !renewed {
                renewed = true;
                continue;
            }
            return Ok(answer);
        }
    }

    async fn send(
        &self,
        session: &Session,
        method: Method,
        image_id: &str,
        body: Option<String>,
    ) -> Result<Answer, CloudError> {
        let url = image_url(&session.image_url, image_id);
        let span = info_span!("http", method = %method, path = %url.path(), status = tracing::field::Empty, request_id = tracing::field::Empty);
        async move {
            let mut req = self
                .http
                .request(method, url)
                .header("Accept", "application/json")
                .header("X-Auth-Token", &session.token);
            if let Some(b) = body {
                req = req.header("Content-Type", "application/json").body(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| CloudError::new(ErrorKind::Unavailable, describe_transport(&e)))?;
            let (answer, _) = read_answer(resp)
                .await
                .map_err(|e| CloudError::new(ErrorKind::Unavailable, describe_transport(&e)))?;
            let span = tracing::Span::current();
            span.record("status", answer.status);
            if let Some(r) = &answer.request_id {
                span.record("request_id", r.as_str());
            }
            info!(
                status = answer.status,
                request_id = answer.request_id.as_deref().unwrap_or(""),
                "cloud answered"
            );
            Ok(answer)
        }
        .instrument(span)
        .await
    }
}

/// `{base}/images/{percent-encoded id}`.
pub fn image_url(base: &url::Url, image_id: &str) -> url::Url {
    let mut u = base.clone();
    let path = format!(
        "{}/images/{}",
        base.path().trim_end_matches('/'),
        utf8_percent_encode(image_id, SEGMENT)
    );
    u.set_path(&path);
    u.set_query(None);
    u
}

/// The DELETE body for a dialect: none for Glance (it refuses any body with
/// 400), `{"delete_backup": bool}` for IMS.
pub fn delete_body(dialect: Dialect, delete_backup: bool) -> Option<String> {
    match dialect {
        Dialect::OpenStack => None,
        Dialect::Huawei => Some(serde_json::json!({ "delete_backup": delete_backup }).to_string()),
    }
}

#[derive(Deserialize)]
struct ImageRecord {
    id: String,
    name: Option<String>,
    status: Option<String>,
    protected: Option<serde_json::Value>,
    size: Option<i64>,
    checksum: Option<String>,
    os_hash_value: Option<String>,
    visibility: Option<String>,
    updated_at: Option<String>,
}

/// Reads an image record; `protected` may be a Boolean or the string "true".
pub fn parse_image(body: &str) -> Result<ImageInfo, CloudError> {
    let r: ImageRecord = serde_json::from_str(body).map_err(|e| {
        CloudError::new(
            ErrorKind::Unavailable,
            format!("unreadable image record: {e}"),
        )
    })?;
    let protected = match r.protected {
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(serde_json::Value::String(s)) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    };
    Ok(ImageInfo {
        id: r.id,
        name: r.name,
        status: r.status,
        protected,
        size: r.size,
        checksum: r.os_hash_value.or(r.checksum),
        visibility: r.visibility,
        updated_at: r.updated_at,
    })
}

impl ImageService for HttpImageService {
    fn dialect(&self) -> Dialect {
        self.cfg.dialect
    }

    fn get_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<Lookup, CloudError>> {
        async move {
            let answer = self.call(Method::GET, image_id, None).await?;
            match answer.status {
                200 => {
                    let info = parse_image(&answer.body)?;
                    // IMS may show a deleted image for a while before answering 404.
                    if info.status.as_deref() == Some("deleted") {
                        return Ok(Lookup::NotFound);
                    }
                    Ok(Lookup::Found(info))
                }
                404 => Ok(Lookup::NotFound),
                _ => Err(classify_failure(&answer)),
            }
        }
        .boxed()
    }

    fn delete_image<'a>(
        &'a self,
        image_id: &'a str,
        delete_backup: bool,
    ) -> BoxFuture<'a, Result<Deletion, CloudError>> {
        async move {
            let answer = self
                .call(
                    Method::DELETE,
                    image_id,
                    delete_body(self.cfg.dialect, delete_backup),
                )
                .await?;
            classify_delete(self.cfg.dialect, &answer)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_are_percent_encoded_into_one_segment() {
        let base = url::Url::parse("http://g:9292/v2").expect("url");
        assert_eq!(
            image_url(&base, "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90").as_str(),
            "http://g:9292/v2/images/4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90"
        );
        assert_eq!(
            image_url(&base, "../../v3?x=1#f").as_str(),
            "http://g:9292/v2/images/..%2F..%2Fv3%3Fx%3D1%23f"
        );
        assert_eq!(
            image_url(&base, "a b/%00").path(),
            "/v2/images/a%20b%2F%2500"
        );
    }

    #[test]
    fn delete_body_follows_the_dialect() {
        assert_eq!(delete_body(Dialect::OpenStack, true), None);
        assert_eq!(
            delete_body(Dialect::Huawei, true).as_deref(),
            Some(r#"{"delete_backup":true}"#)
        );
        assert_eq!(
            delete_body(Dialect::Huawei, false).as_deref(),
            Some(r#"{"delete_backup":false}"#)
        );
    }

    #[test]
    fn image_records_accept_both_protected_spellings() {
        let a = parse_image(
            r#"{"id": "x", "protected": "true", "os_hash_value": "abc", "checksum": "md5"}"#,
        )
        .expect("parses");
        assert_eq!(a.protected, Some(true));
        assert_eq!(a.checksum.as_deref(), Some("abc"));
        let b = parse_image(r#"{"id": "x", "protected": false, "checksum": "md5", "size": null}"#)
            .expect("parses");
        assert_eq!(b.protected, Some(false));
        assert_eq!(b.checksum.as_deref(), Some("md5"));
    }
}
