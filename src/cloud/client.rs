//! The one HTTP implementation of [`ImageService`]: GET and DELETE of
//! `/v2/images/{id}` in either dialect, either with a Keystone token that is
//! renewed before expiry and once more on a 401, or (Huawei AK/SK) with
//! every request signed. One authentication runs at a time per client,
//! without a lock held across it, and a failed one is remembered for
//! [`FAILED_AUTH_TTL`].

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use reqwest::Method;
use tracing::{Instrument, debug, info, info_span};

use super::aksk;
use super::answer::{
    Answer, ErrorBody, MAX_IMAGE_BODY_BYTES, classify_delete, classify_failure, classify_get,
    read_answer,
};
use super::clouds_yaml::{AkSk, Auth, CloudConfig};
use super::egress::{EgressPolicy, PolicyResolver};
use super::error::{MAX_ERROR_MESSAGE_CHARS, Peer, redact, transport_error, truncate_chars};
use super::keystone::{self, Session};
use super::{CloudError, Deletion, Dialect, ErrorKind, ImageService, Lookup};

/// Timeouts for calls to the cloud: connecting (Keystone and the image
/// service), and a whole image request. A token request has its own,
/// shorter limit (`keystone::AUTH_TIMEOUT`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A failed authentication is answered from memory this long, so many
/// objects on one bad Secret cost one Keystone request.
pub const FAILED_AUTH_TTL: Duration = Duration::from_secs(15);

/// One authentication in flight, awaited by every caller that needs it.
type AuthFuture = Shared<BoxFuture<'static, Result<Session, CloudError>>>;

/// The client's token state. The mutex around it is held only to read or
/// swap these fields, never across a request.
#[derive(Default)]
struct AuthState {
    current: Option<Session>,
    inflight: Option<AuthFuture>,
    failed: Option<(Instant, CloudError)>,
}

fn lock(m: &Mutex<AuthState>) -> MutexGuard<'_, AuthState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// AK/SK credentials: no Keystone, a fixed image endpoint, and the identity
/// learnt once the cloud accepted a signature.
struct Signing {
    keys: AkSk,
    image_url: url::Url,
    identity: Mutex<Option<String>>,
}

impl Signing {
    /// Who the keys speak for: the image endpoint and the project (or, with
    /// no project id, the access key's default project in the region).
    fn identity_name(&self) -> String {
        let who = match &self.keys.project_id {
            Some(p) => crate::cloud::error::truncate(p.clone(), 64),
            None => format!(
                "ak:{}",
                crate::cloud::error::truncate(self.keys.access_key.clone(), 64)
            ),
        };
        keystone::identity(self.image_url.as_str(), &who)
    }

    /// Remembers the identity when the answer shows the signature was
    /// accepted: a success, or an error IMS itself wrote (an `IMG.` code;
    /// the gateway in front of it checks the signature first).
    fn learn(&self, answer: &Answer) {
        let accepted = (200..300).contains(&answer.status)
            || ErrorBody::parse(&answer.body)
                .code
                .is_some_and(|c| c.starts_with("IMG."));
        if accepted {
            *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.identity_name());
        }
    }
}

/// How one request proves who sends it.
#[derive(Clone, Copy)]
enum Credential<'a> {
    Token(&'a Session),
    Signature(&'a Signing),
}

/// An image service reached over HTTP with Keystone tokens, or with
/// requests signed by an AK/SK pair.
pub struct HttpImageService {
    cfg: Arc<CloudConfig>,
    http: reqwest::Client,
    egress: Arc<EgressPolicy>,
    auth: Arc<Mutex<AuthState>>,
    failed_auth_ttl: Duration,
    /// Set for `auth_type: aksk`: then no token is ever asked for.
    signing: Option<Signing>,
}

impl std::fmt::Debug for HttpImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpImageService")
            .field("cfg", &self.cfg)
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

impl HttpImageService {
    /// A client under the default (open) egress policy.
    pub fn new(cfg: CloudConfig) -> Result<Self, CloudError> {
        Self::with_policy(cfg, Arc::new(EgressPolicy::default()))
    }

    /// A client that connects only where `egress` permits. With
    /// `egress.refuse_insecure`, a configuration with any of
    /// [`CloudConfig::insecurities`] is refused as `CredentialsInvalid`.
    pub fn with_policy(cfg: CloudConfig, egress: Arc<EgressPolicy>) -> Result<Self, CloudError> {
        let insecure = cfg.insecurities();
        if egress.refuse_insecure && !insecure.is_empty() {
            return Err(CloudError::new(
                ErrorKind::CredentialsInvalid,
                format!(
                    "the operator refuses insecure connections (egress policy): {}",
                    insecure.join("; ")
                ),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            // Never follow redirects: X-Auth-Token (and Keystone's password
            // body on 307/308) would go wherever the redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(PolicyResolver::new(egress.clone()))
            .user_agent(concat!("cloudimage-operator/", env!("CARGO_PKG_VERSION")));
        if !egress.is_open() {
            // A proxy resolves and connects on its own: the policy could not see where.
            builder = builder.no_proxy();
        }
        if let Some(pem) = &cfg.cacert {
            let invalid = || {
                CloudError::new(
                    ErrorKind::CredentialsInvalid,
                    "the Secret's `cacert` holds no PEM certificate",
                )
            };
            let certs =
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|_| invalid())?;
            // Text without any certificate parses as an empty bundle: a
            // typo would otherwise silently mean "trust the system roots".
            if certs.is_empty() {
                return Err(invalid());
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if !cfg.verify_tls {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|_| {
            CloudError::new(
                ErrorKind::CredentialsInvalid,
                "cannot build an HTTP client from these settings",
            )
        })?;
        let signing = match &cfg.auth {
            Auth::AkSk(keys) => {
                let endpoint = cfg.fixed_image_endpoint().ok_or_else(|| {
                    CloudError::new(
                        ErrorKind::CredentialsInvalid,
                        "AK/SK credentials need region_name or image_endpoint_override",
                    )
                })?;
                Some(Signing {
                    keys: keys.clone(),
                    image_url: keystone::image_api_base(endpoint)?,
                    identity: Mutex::new(None),
                })
            }
            Auth::Password(_) | Auth::ApplicationCredential(_) => None,
        };
        Ok(HttpImageService {
            cfg: Arc::new(cfg),
            http,
            egress,
            auth: Arc::new(Mutex::new(AuthState::default())),
            failed_auth_ttl: FAILED_AUTH_TTL,
            signing,
        })
    }

    /// A valid session: the cached one, unless it is about to expire or is
    /// the `rejected` token (the image API answered 401 to it). Otherwise
    /// joins the authentication in flight, or starts one. A failure less
    /// than [`FAILED_AUTH_TTL`] old is returned again without a request.
    async fn session(&self, rejected: Option<&str>) -> Result<Session, CloudError> {
        let pending = {
            let mut st = lock(&self.auth);
            if let Some(s) = st
                .current
                .as_ref()
                .filter(|s| !s.needs_renewal(Utc::now()) && rejected != Some(s.token.as_str()))
            {
                return Ok(s.clone());
            }
            if let Some((at, err)) = &st.failed
                && at.elapsed() < self.failed_auth_ttl
            {
                return Err(err.clone());
            }
            match &st.inflight {
                Some(f) => f.clone(),
                None => {
                    let f = self.start_authentication();
                    st.inflight = Some(f.clone());
                    f
                }
            }
        };
        pending.await
    }

    /// Runs one authentication as its own task, so it finishes (within
    /// `AUTH_TIMEOUT`) even when the callers that wait for it give up, and
    /// records its result in the client's state.
    fn start_authentication(&self) -> AuthFuture {
        let http = self.http.clone();
        let cfg = self.cfg.clone();
        let egress = self.egress.clone();
        let state: Weak<Mutex<AuthState>> = Arc::downgrade(&self.auth);
        let task = tokio::spawn(async move {
            let result = keystone::authenticate(&http, &cfg, &egress)
                .await
                .map_err(|e| e.redact(&cfg.secrets()));
            if let Some(state) = state.upgrade() {
                let mut st = lock(&state);
                st.inflight = None;
                match &result {
                    Ok(s) => {
                        debug!(token = %keystone::token_fingerprint(&s.token), expires_at = %s.expires_at, "new Keystone token");
                        st.current = Some(s.clone());
                        st.failed = None;
                    }
                    Err(e) => {
                        st.current = None;
                        st.failed = Some((Instant::now(), e.clone()));
                    }
                }
            }
            result
        });
        async move {
            task.await.unwrap_or_else(|_| {
                Err(CloudError::new(
                    ErrorKind::Unavailable,
                    "the authentication to Keystone was interrupted",
                ))
            })
        }
        .boxed()
        .shared()
    }

    /// Sends one request to `/v2/images/{id}`. With a token, a 401 renews
    /// it once and the request is sent again; a signed request is sent once
    /// (a new signature would not change the gateway's mind).
    async fn call(
        &self,
        method: Method,
        image_id: &str,
        body: Option<String>,
    ) -> Result<Answer, CloudError> {
        if let Some(signing) = &self.signing {
            let url = image_url(&signing.image_url, image_id)?;
            let answer = self
                .send(Credential::Signature(signing), method, url, body)
                .await?;
            signing.learn(&answer);
            return Ok(answer);
        }
        let session = self.session(None).await?;
        let url = image_url(&session.image_url, image_id)?;
        let answer = self
            .send(
                Credential::Token(&session),
                method.clone(),
                url,
                body.clone(),
            )
            .await?;
        if answer.status != 401 {
            return Ok(answer);
        }
        let session = self.session(Some(&session.token)).await?;
        let url = image_url(&session.image_url, image_id)?;
        self.send(Credential::Token(&session), method, url, body)
            .await
    }

    async fn send(
        &self,
        credential: Credential<'_>,
        method: Method,
        url: url::Url,
        body: Option<String>,
    ) -> Result<Answer, CloudError> {
        self.egress.check_url(Peer::ImageService, &url)?;
        let span = info_span!("http", method = %method, path = %url.path(), status = tracing::field::Empty, request_id = tracing::field::Empty);
        async move {
            let content_type = body.as_ref().map(|_| "application/json");
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header("Accept", "application/json");
            // What the answer must not echo into a message.
            let mut secrets: Vec<String> =
                self.cfg.secrets().into_iter().map(str::to_owned).collect();
            match credential {
                Credential::Token(session) => {
                    req = req.header("X-Auth-Token", &session.token);
                    secrets.push(session.token.clone());
                }
                Credential::Signature(signing) => {
                    let signed = aksk::sign(
                        &signing.keys,
                        method.as_str(),
                        &url,
                        content_type,
                        body.as_deref().unwrap_or("").as_bytes(),
                        Utc::now(),
                    );
                    debug!(signed_headers = %signed.signed_headers, "signed the request (AK/SK)");
                    for (name, value) in &signed.headers {
                        req = req.header(*name, value);
                    }
                    secrets.push(signed.signature.clone());
                }
            }
            if let (Some(b), Some(ct)) = (body, content_type) {
                req = req.header("Content-Type", ct).body(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| transport_error(Peer::ImageService, &e))?;
            let (mut answer, _) =
                read_answer(resp, MAX_IMAGE_BODY_BYTES, Peer::ImageService).await?;
            // A cloud that echoes a secret, the token or the signature must
            // not get it into a message.
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            answer.body = redact(&answer.body, &secrets);
            answer.request_id = answer.request_id.map(|r| redact(&r, &secrets));
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

    /// AK/SK: a signed `GET {endpoint}/images?limit=1`, which the gateway
    /// only answers for a valid signature, to learn the identity.
    async fn identify_signed(&self, signing: &Signing) -> Result<Option<String>, CloudError> {
        if let Some(known) = signing
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(Some(known));
        }
        let mut url = signing.image_url.clone();
        url.path_segments_mut()
            .map_err(|_| {
                CloudError::new(
                    ErrorKind::CredentialsInvalid,
                    "the image endpoint is not a valid URL",
                )
            })?
            .pop_if_empty()
            .push("images");
        url.set_query(Some("limit=1"));
        let answer = self
            .send(Credential::Signature(signing), Method::GET, url, None)
            .await?;
        if (200..300).contains(&answer.status) {
            signing.learn(&answer);
            return Ok(Some(signing.identity_name()));
        }
        Err(classify_failure(&answer))
    }

    /// Words for a refused signature: what to check.
    fn explain(&self, mut err: CloudError) -> CloudError {
        if self.signing.is_some() && err.kind == ErrorKind::AuthFailed {
            err.message = truncate_chars(
                &format!(
                    "{}; the AK/SK signature was refused: check access_key and secret_key (a temporary key's security_token expires) and the operator's clock",
                    err.message
                ),
                MAX_ERROR_MESSAGE_CHARS,
            );
        }
        err
    }

    /// The last line of defence: no message leaves this client with the
    /// password or the current token in it.
    fn scrub(&self, err: CloudError) -> CloudError {
        let token = lock(&self.auth).current.as_ref().map(|s| s.token.clone());
        let mut secrets = self.cfg.secrets();
        if let Some(t) = &token {
            secrets.push(t);
        }
        self.explain(err).redact(&secrets)
    }
}

/// `{base}/images/{id}`, the id pushed as one path segment (so `/`, `?`,
/// `#` and `%` in it are percent-encoded), without query or fragment. An
/// empty id, `.` or `..` is `BadRequest`.
pub fn image_url(base: &url::Url, image_id: &str) -> Result<url::Url, CloudError> {
    if matches!(image_id, "" | "." | "..") {
        return Err(CloudError::new(
            ErrorKind::BadRequest,
            "the image id is not a valid id",
        ));
    }
    let mut u = base.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.path_segments_mut()
        .map_err(|_| {
            CloudError::new(
                ErrorKind::CredentialsInvalid,
                "the image endpoint is not a valid URL",
            )
        })?
        .pop_if_empty()
        .push("images")
        .push(image_id);
    Ok(u)
}

/// The DELETE body for a dialect: none for Glance (it refuses any body with
/// 400), `{"delete_backup": bool}` for IMS.
pub fn delete_body(dialect: Dialect, delete_backup: bool) -> Option<String> {
    match dialect {
        Dialect::OpenStack => None,
        Dialect::Huawei => Some(serde_json::json!({ "delete_backup": delete_backup }).to_string()),
    }
}

impl ImageService for HttpImageService {
    fn dialect(&self) -> Dialect {
        self.cfg.dialect
    }

    fn identity(&self) -> Option<String> {
        if let Some(signing) = &self.signing {
            return signing
                .identity
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
        }
        lock(&self.auth).current.as_ref()?.identity.clone()
    }

    fn identify(&self) -> BoxFuture<'_, Result<Option<String>, CloudError>> {
        async move {
            match &self.signing {
                Some(signing) => self.identify_signed(signing).await,
                None => Ok(self.session(None).await?.identity),
            }
        }
        .map(|r| r.map_err(|e| self.scrub(e)))
        .boxed()
    }

    fn get_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<Lookup, CloudError>> {
        async move {
            let answer = self.call(Method::GET, image_id, None).await?;
            classify_get(&answer, image_id)
        }
        .map(|r| r.map_err(|e| self.scrub(e)))
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
        .map(|r| r.map_err(|e| self.scrub(e)))
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    use super::*;
    use crate::cloud::clouds_yaml;

    const PASSWORD: &str = "pw-s3cret-value";
    const ID: &str = "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90";

    #[test]
    fn image_ids_are_percent_encoded_into_one_segment() {
        let base = url::Url::parse("http://g:9292/v2").expect("url");
        let url = |id: &str| image_url(&base, id).map(|u| u.to_string());
        assert_eq!(
            url("4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90"),
            Ok("http://g:9292/v2/images/4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90".into())
        );
        assert_eq!(
            url("../../v3?x=1#f"),
            Ok("http://g:9292/v2/images/..%2F..%2Fv3%3Fx=1%23f".into())
        );
        assert_eq!(
            image_url(&base, "a b/%00").map(|u| u.path().to_owned()),
            Ok("/v2/images/a%20b%2F%2500".into())
        );
        for bad in ["", ".", ".."] {
            assert_eq!(url(bad).map_err(|e| e.kind), Err(ErrorKind::BadRequest));
        }
        let with_slash = url::Url::parse("http://g:9292/v2/").expect("url");
        assert_eq!(
            image_url(&with_slash, "x").map(|u| u.to_string()),
            Ok("http://g:9292/v2/images/x".into())
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

    /// Method, path and query, headers and body of an image request.
    type Seen = (String, String, HeaderMap, Vec<u8>);

    /// A Keystone and an image service in one local server, scripted by the test.
    struct Fake {
        base: OnceLock<String>,
        keystone_calls: AtomicUsize,
        keystone_status: AtomicU16,
        keystone_delay: Duration,
        /// Answer 401 to the first token issued.
        reject_first_token: AtomicBool,
        /// Status and body of every image answer; `{token}` and `{id}` are replaced.
        image: Mutex<(u16, String)>,
        image_calls: AtomicUsize,
        /// Method, path and query, headers and body of the last image request.
        last_image: Mutex<Option<Seen>>,
    }

    impl Fake {
        async fn start(keystone_delay: Duration) -> Arc<Fake> {
            let fake = Arc::new(Fake {
                base: OnceLock::new(),
                keystone_calls: AtomicUsize::new(0),
                keystone_status: AtomicU16::new(201),
                keystone_delay,
                reject_first_token: AtomicBool::new(false),
                image: Mutex::new((200, r#"{"id": "{id}", "status": "active"}"#.into())),
                image_calls: AtomicUsize::new(0),
                last_image: Mutex::new(None),
            });
            let app = axum::Router::new()
                .route("/v3/auth/tokens", post(keystone))
                .route("/v2/images", get(list))
                .route("/v2/images/{id}", get(image).delete(image))
                .with_state(fake.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let _ = fake.base.set(format!("http://{addr}"));
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            fake
        }

        fn base(&self) -> &str {
            self.base.get().map(String::as_str).unwrap_or("")
        }

        fn set_image(&self, status: u16, body: &str) {
            *self.image.lock().unwrap_or_else(|p| p.into_inner()) = (status, body.to_owned());
        }

        fn calls(&self) -> usize {
            self.keystone_calls.load(Ordering::SeqCst)
        }

        fn config(&self) -> CloudConfig {
            config_for(&format!("{}/v3", self.base()), None)
        }
    }

    fn config_for(auth_url: &str, image_override: Option<&str>) -> CloudConfig {
        let mut y = format!(
            "clouds:\n  c:\n    auth:\n      auth_url: '{auth_url}'\n      user_id: u\n      password: {PASSWORD}\n      project_id: p\n"
        );
        if let Some(o) = image_override {
            y.push_str(&format!("    image_endpoint_override: '{o}'\n"));
        }
        clouds_yaml::parse(&y, "c", None).expect("valid")
    }

    async fn keystone(State(f): State<Arc<Fake>>) -> (StatusCode, HeaderMap, String) {
        let n = f.keystone_calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(f.keystone_delay).await;
        let status = f.keystone_status.load(Ordering::SeqCst);
        let mut headers = HeaderMap::new();
        if status != 201 {
            let body = r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#;
            return (
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
                headers,
                body.into(),
            );
        }
        if let Ok(v) = format!("tok-{n}-abcdef").parse() {
            headers.insert("x-subject-token", v);
        }
        let body = serde_json::json!({"token": {
            "expires_at": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            "catalog": [{"type": "image", "endpoints": [
                {"url": f.base(), "interface": "public", "region_id": "RegionOne"}]}]
        }});
        (StatusCode::CREATED, headers, body.to_string())
    }

    async fn list(State(f): State<Arc<Fake>>) -> (StatusCode, String) {
        f.image_calls.fetch_add(1, Ordering::SeqCst);
        let (status, _) = f.image.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            r#"{"images": []}"#.into(),
        )
    }

    async fn image(
        State(f): State<Arc<Fake>>,
        Path(id): Path<String>,
        method: Method,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (StatusCode, String) {
        f.image_calls.fetch_add(1, Ordering::SeqCst);
        *f.last_image.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            method.to_string(),
            uri.path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            headers.clone(),
            body.to_vec(),
        ));
        let token = headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if f.reject_first_token.load(Ordering::SeqCst) && token.starts_with("tok-1-") {
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"message": "no", "code": "401 Unauthorized", "title": "Unauthorized"}"#.into(),
            );
        }
        let (status, body) = f.image.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body.replace("{token}", &token).replace("{id}", &id),
        )
    }

    #[tokio::test]
    async fn one_keystone_request_serves_many_concurrent_calls() {
        let fake = Fake::start(Duration::from_millis(300)).await;
        let client = HttpImageService::new(fake.config()).expect("client");
        let calls = (0..20).map(|_| client.get_image(ID));
        for r in futures::future::join_all(calls).await {
            assert!(matches!(r, Ok(Lookup::Found(_))), "{r:?}");
        }
        assert_eq!(fake.calls(), 1);
        client.get_image(ID).await.expect("cached token");
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test]
    async fn a_failed_authentication_is_remembered_briefly() {
        let fake = Fake::start(Duration::from_millis(100)).await;
        fake.keystone_status.store(401, Ordering::SeqCst);
        let mut client = HttpImageService::new(fake.config()).expect("client");
        let calls = (0..10).map(|_| client.delete_image(ID, false));
        let mut errors: Vec<CloudError> = futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        for _ in 0..5 {
            errors.push(client.get_image(ID).await.expect_err("still refused"));
        }
        assert_eq!(errors.len(), 15);
        assert_eq!(fake.calls(), 1, "one Keystone request for all the calls");
        for e in &errors {
            assert_eq!(e, &errors[0]);
        }
        assert_eq!(errors[0].kind, ErrorKind::AuthFailed);
        assert_eq!(
            errors[0].message,
            "Keystone refused the credentials: HTTP 401: The request you have made requires authentication."
        );
        client.failed_auth_ttl = Duration::ZERO;
        fake.keystone_status.store(201, Ordering::SeqCst);
        client
            .get_image(ID)
            .await
            .expect("a new attempt after the pause");
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test]
    async fn a_401_renews_the_token_once() {
        let fake = Fake::start(Duration::ZERO).await;
        fake.reject_first_token.store(true, Ordering::SeqCst);
        let client = HttpImageService::new(fake.config()).expect("client");
        assert!(matches!(client.get_image(ID).await, Ok(Lookup::Found(_))));
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test]
    async fn secrets_echoed_by_the_cloud_never_reach_a_message() {
        let fake = Fake::start(Duration::ZERO).await;
        fake.set_image(
            403,
            &format!(
                r#"{{"message": "token {{token}} password {PASSWORD}", "code": "403 Forbidden", "title": "Forbidden"}}"#
            ),
        );
        let client = HttpImageService::new(fake.config()).expect("client");
        let err = client.delete_image(ID, false).await.expect_err("403");
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert_eq!(
            err.message,
            "HTTP 403: token <redacted> password <redacted>"
        );
    }

    #[tokio::test]
    async fn a_404_that_is_not_glances_keeps_the_image() {
        let fake = Fake::start(Duration::ZERO).await;
        fake.set_image(404, "default backend - 404");
        let client = HttpImageService::new(fake.config()).expect("client");
        let err = client.delete_image(ID, false).await.expect_err("untrusted");
        assert_eq!(err.kind, ErrorKind::UntrustedAnswer);
        let err = client.get_image(ID).await.expect_err("untrusted");
        assert_eq!(err.kind, ErrorKind::UntrustedAnswer);
        fake.set_image(
            404,
            r#"{"message": "No image found with ID x<br /><br />", "code": "404 Not Found", "title": "Not Found"}"#,
        );
        assert_eq!(
            client.delete_image(ID, false).await,
            Ok(Deletion::AlreadyGone)
        );
        assert_eq!(client.get_image(ID).await, Ok(Lookup::NotFound));
    }

    #[tokio::test]
    async fn connection_errors_name_no_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let client =
            HttpImageService::new(config_for(&format!("http://127.0.0.1:{port}/v3"), None))
                .expect("client");
        let err = client.get_image(ID).await.expect_err("refused");
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert_eq!(
            err.message,
            "could not connect to Keystone (connection refused)"
        );
        let client = HttpImageService::new(config_for("http://no-such-host.invalid:5000/v3", None))
            .expect("client");
        let err = client.get_image(ID).await.expect_err("no such host");
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert!(!err.message.contains("invalid"), "{}", err.message);
        assert!(
            err.message.starts_with("could not connect to Keystone ("),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn the_egress_policy_refuses_host_names_and_literals() {
        let fake = Fake::start(Duration::ZERO).await;
        let deny = Arc::new(EgressPolicy {
            deny: EgressPolicy::recommended_deny(),
            ..Default::default()
        });
        let port = fake.base().rsplit(':').next().unwrap_or("").to_owned();
        for host in ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"] {
            let client = HttpImageService::with_policy(
                config_for(&format!("http://{host}:{port}/v3"), None),
                deny.clone(),
            )
            .expect("client");
            let err = client.get_image(ID).await.expect_err("refused");
            assert_eq!(err.kind, ErrorKind::CredentialsInvalid, "{host}");
            assert_eq!(
                err.message,
                "the operator may not call this Keystone address (egress policy)"
            );
        }
        assert_eq!(fake.calls(), 0, "no request reached the refused address");
        // Keystone is allowed, the image endpoint it leads to is not.
        let only_metadata = Arc::new(EgressPolicy {
            deny: vec!["169.254.0.0/16".parse().expect("net")],
            ..Default::default()
        });
        let client = HttpImageService::with_policy(
            config_for(
                &format!("{}/v3", fake.base()),
                Some("http://169.254.169.254/latest"),
            ),
            only_metadata,
        )
        .expect("client");
        let err = client.delete_image(ID, false).await.expect_err("refused");
        assert_eq!(
            err.message,
            "the operator may not call this image service address (egress policy)"
        );
    }

    #[tokio::test]
    async fn insecure_settings_are_refused_when_the_policy_says_so() {
        let strict = Arc::new(EgressPolicy {
            refuse_insecure: true,
            ..Default::default()
        });
        let err =
            HttpImageService::with_policy(config_for("http://k:5000/v3", None), strict.clone())
                .expect_err("http refused");
        assert_eq!(err.kind, ErrorKind::CredentialsInvalid);
        assert_eq!(
            err.message,
            "the operator refuses insecure connections (egress policy): auth_url uses http://"
        );
        assert!(
            HttpImageService::with_policy(config_for("https://k:5000/v3", None), strict).is_ok()
        );
    }
    fn aksk_config(endpoint: &str, secret_key: &str) -> CloudConfig {
        let y = format!(
            "clouds:\n  c:\n    auth_type: aksk\n    image_endpoint_override: '{endpoint}'\n    auth:\n      access_key: AKTEST\n      secret_key: {secret_key}\n      project_id: proj-1\n      security_token: tmp-token-s3cret\n"
        );
        clouds_yaml::parse(&y, "c", None).expect("valid")
    }

    #[tokio::test]
    async fn aksk_requests_are_signed_and_ask_keystone_nothing() {
        let fake = Fake::start(Duration::ZERO).await;
        let client =
            HttpImageService::new(aksk_config(fake.base(), "sk-s3cret-value")).expect("client");
        assert_eq!(client.dialect(), Dialect::Huawei);
        assert_eq!(
            client.identity(),
            None,
            "no identity before an accepted request"
        );
        fake.set_image(204, "");
        assert_eq!(client.delete_image(ID, true).await, Ok(Deletion::Accepted));
        assert_eq!(fake.calls(), 0, "no Keystone request");
        let (method, path, headers, body) = fake
            .last_image
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("a request");
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("DELETE", &*format!("/v2/images/{ID}"))
        );
        assert_eq!(body, br#"{"delete_backup":true}"#);
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        assert_eq!(h("x-auth-token"), "");
        assert_eq!(h("x-project-id"), "proj-1");
        assert_eq!(h("x-security-token"), "tmp-token-s3cret");
        assert_eq!(h("content-type"), "application/json");
        let authorization = h("authorization");
        let prefix = "SDK-HMAC-SHA256 Access=AKTEST, SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token, Signature=";
        assert!(authorization.starts_with(prefix), "{authorization}");
        // The signature covers exactly the headers and body that arrived.
        let url = url::Url::parse(&format!("{}{path}", fake.base())).expect("url");
        let (request, _) = aksk::canonical_request(
            "DELETE",
            &url,
            &[
                ("content-type", &h("content-type")),
                ("host", &h("host")),
                ("x-project-id", &h("x-project-id")),
                ("x-sdk-date", &h("x-sdk-date")),
                ("x-security-token", &h("x-security-token")),
            ],
            &body,
        );
        let want = aksk::signature(
            "sk-s3cret-value",
            &aksk::string_to_sign(&h("x-sdk-date"), &request),
        );
        assert_eq!(&authorization[prefix.len()..], want);
        assert!(
            client.identity().is_some(),
            "the accepted signature gives the identity"
        );
        // A GET is signed without a content type.
        fake.set_image(200, r#"{"id": "{id}", "status": "active"}"#);
        assert!(matches!(client.get_image(ID).await, Ok(Lookup::Found(_))));
        let (_, _, headers, _) = fake
            .last_image
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .expect("a request");
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            authorization.contains("SignedHeaders=host;x-project-id;x-sdk-date;x-security-token,"),
            "{authorization}"
        );
        assert_eq!(fake.calls(), 0);
    }

    #[tokio::test]
    async fn a_refused_signature_is_auth_failed_at_once_and_scrubbed() {
        let fake = Fake::start(Duration::ZERO).await;
        let client =
            HttpImageService::new(aksk_config(fake.base(), "sk-s3cret-value")).expect("client");
        // A gateway that echoes the request headers back.
        fake.set_image(
            401,
            r#"{"error_msg": "bad signature for sk-s3cret-value tmp-token-s3cret", "error_code": "APIGW.0301"}"#,
        );
        let err = client.delete_image(ID, false).await.expect_err("refused");
        assert_eq!(err.kind, ErrorKind::AuthFailed);
        assert_eq!(
            err.message,
            "HTTP 401: bad signature for <redacted> <redacted> (APIGW.0301); the AK/SK signature was refused: check access_key and secret_key (a temporary key's security_token expires) and the operator's clock"
        );
        assert_eq!(
            fake.image_calls.load(Ordering::SeqCst),
            1,
            "sent once, not retried"
        );
        assert_eq!(client.identity(), None);
        let err = client.identify().await.expect_err("refused");
        assert_eq!(err.kind, ErrorKind::AuthFailed);
        fake.set_image(200, "");
        assert!(client.identify().await.expect("accepted").is_some());
        assert_eq!(fake.calls(), 0);
    }

    fn appcred_config(auth_url: &str) -> CloudConfig {
        let y = format!(
            "clouds:\n  c:\n    auth_type: v3applicationcredential\n    auth:\n      auth_url: '{auth_url}'\n      application_credential_id: ac-1\n      application_credential_secret: {PASSWORD}\n"
        );
        clouds_yaml::parse(&y, "c", None).expect("valid")
    }

    #[tokio::test]
    async fn a_revoked_application_credential_is_auth_failed_within_one_retry() {
        let fake = Fake::start(Duration::ZERO).await;
        let client =
            HttpImageService::new(appcred_config(&format!("{}/v3", fake.base()))).expect("client");
        assert!(matches!(client.get_image(ID).await, Ok(Lookup::Found(_))));
        assert_eq!(fake.calls(), 1);
        // Revoked: the cloud refuses the token, Keystone the credential.
        fake.set_image(
            401,
            r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#,
        );
        fake.keystone_status.store(401, Ordering::SeqCst);
        let err = client.delete_image(ID, false).await.expect_err("revoked");
        assert_eq!(err.kind, ErrorKind::AuthFailed);
        assert!(
            err.message
                .starts_with("Keystone refused the credentials: HTTP 401"),
            "{}",
            err.message
        );
        assert_eq!(fake.calls(), 2, "one renewal, refused");
        assert_eq!(
            fake.image_calls.load(Ordering::SeqCst),
            2,
            "the GET, then one DELETE: no DELETE without a token"
        );
    }

    /// A TLS server on loopback for `localhost`, with a certificate from a
    /// CA made here; answers every request with a Keystone-shaped 401.
    async fn tls_server() -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "unit test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 8192];
                    let _ = tls.read(&mut buf).await;
                    let body = r#"{"error": {"code": 401, "title": "Unauthorized", "message": "over TLS"}}"#;
                    let _ = tls
                        .write_all(
                            format!(
                                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (port, ca_cert.pem())
    }

    #[tokio::test]
    async fn an_untrusted_certificate_names_the_host_and_cacert_fixes_it() {
        let (port, ca_pem) = tls_server().await;
        let auth_url = format!("https://localhost:{port}/v3");
        let client = HttpImageService::new(config_for(&auth_url, None)).expect("client");
        let err = client.get_image(ID).await.expect_err("untrusted");
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert_eq!(
            err.message,
            "could not connect to Keystone at localhost (TLS certificate not trusted: issued by a CA the operator does not know; put that CA's PEM certificate in the Secret's `cacert` key)"
        );
        assert!(
            !err.message.contains(&port.to_string()),
            "no port: {}",
            err.message
        );
        let mut cfg = config_for(&auth_url, None);
        cfg.cacert = Some(ca_pem);
        let client = HttpImageService::new(cfg).expect("client");
        let err = client.get_image(ID).await.expect_err("401 over TLS");
        assert_eq!(err.kind, ErrorKind::AuthFailed, "{}", err.message);
        assert_eq!(
            err.message,
            "Keystone refused the credentials: HTTP 401: over TLS"
        );
    }
}
