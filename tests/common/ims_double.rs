//! A TEST DOUBLE of Huawei Cloud IMS's "OpenStack-native" image API, with
//! the API gateway's AK/SK signature check in front of it.
//!
//! It exists only because no real IMS can be reached from here, and upstream
//! Glance cannot produce IMS's dialect: the `{"delete_backup": bool}` DELETE
//! body, a 204 that only means "accepted" (GET keeps finding the image for a
//! while), `IMG.xxxx` error codes returned as 400, and `SDK-HMAC-SHA256`
//! signatures. It follows `docs/cloud-api-contract.md` and nothing more.
//!
//! Two ways in, as on Huawei Cloud:
//! - a Keystone token (`X-Auth-Token`, from the real Keystone): the double
//!   only checks that one is present, and on DELETE that the test has not
//!   revoked it;
//! - an AK/SK signature: VERIFIED here, with the double's own implementation
//!   of the algorithm (below, written apart from the operator's
//!   `src/cloud/aksk.rs` and checked against Huawei's published vectors in
//!   `tests/huawei.rs`). A bad signature, an unknown key, a missing or
//!   wrong security token, an unsigned `x-sdk-date`, `host`, `content-type`,
//!   `x-project-id` or `x-security-token`, or a date more than 15 minutes
//!   off the double's clock is refused with 401 `APIGW.0301`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{NaiveDateTime, Utc};
use serde_json::json;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
struct Image {
    protected: bool,
    /// After an accepted DELETE: how many more GETs still find the image.
    visible_after_delete: u32,
    deleted: bool,
}

/// One DELETE the double received.
#[derive(Clone, Debug, PartialEq)]
pub struct DeleteCall {
    pub image_id: String,
    pub content_type: Option<String>,
    pub body: String,
}

/// One request whose AK/SK signature the double verified and accepted.
#[derive(Clone, Debug, PartialEq)]
pub struct SignedCall {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub access_key: String,
    /// The `SignedHeaders` list, as sent.
    pub signed_headers: String,
    pub project_id: Option<String>,
    pub security_token: Option<String>,
}

/// An access key the double knows: its secret key and, for a temporary
/// key, the security token that must come with it.
#[derive(Clone, Debug)]
struct Key {
    secret_key: String,
    security_token: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// Tokens the double treats as revoked (401 APIGW.0301).
    revoked: Vec<String>,
    /// Every token seen (GET and DELETE), in order.
    tokens: Vec<String>,
    /// The token of each DELETE, in order.
    delete_tokens: Vec<String>,
    keys: HashMap<String, Key>,
    /// Added to the double's clock when it checks `X-Sdk-Date`.
    clock_offset: chrono::Duration,
    /// Accepted signed requests, in order.
    signed: Vec<SignedCall>,
    /// Every `Signature=` value received, accepted or not.
    signatures: Vec<String>,
    /// Signed requests refused, with the reason.
    refused: Vec<String>,
    images: HashMap<String, Image>,
    /// DELETE answers a test scripted, by image id: (status, code).
    scripted: HashMap<String, (u16, String)>,
    deletes: Vec<DeleteCall>,
    gets_after_delete: HashMap<String, u32>,
    /// GETs answered 404 after a DELETE, by image id.
    gone_gets: HashMap<String, u32>,
}

#[derive(Clone, Default)]
pub struct ImsDouble {
    inner: Arc<Mutex<Inner>>,
    pub addr: Option<SocketAddr>,
}

fn ims_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [
            ("content-type", "application/json"),
            ("x-request-id", "ims-double-req"),
        ],
        json!({"error": {"message": message, "code": code}}).to_string(),
    )
        .into_response()
}

fn gateway_refusal(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            ("content-type", "application/json"),
            ("x-request-id", "ims-double-gw"),
        ],
        json!({"error_msg": message, "error_code": "APIGW.0301"}).to_string(),
    )
        .into_response()
}

// ---- The double's own SDK-HMAC-SHA256 (independent of the operator's). ----

fn hex_of(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// HMAC-SHA256 (RFC 2104), by hand over SHA-256.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Percent-decodes `s` (and `+` as a space when `plus_is_space`).
fn unescape(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps `A-Z a-z 0-9 - _ . ~`, encodes every other byte as `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The hex signature Huawei's gateway expects for a request: `path` and
/// `query` as received (still percent-encoded), `signed` the signed headers
/// as (lower-case name, value).
pub fn expected_signature(
    secret_key: &str,
    method: &str,
    path: &str,
    query: Option<&str>,
    signed: &[(String, String)],
    body: &[u8],
    sdk_date: &str,
) -> String {
    let mut uri = path
        .split('/')
        .map(|seg| escape(&unescape(seg, false)))
        .collect::<Vec<_>>()
        .join("/");
    if !uri.ends_with('/') {
        uri.push('/');
    }
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k, true), unescape(v, true))
        })
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = signed
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let mut canonical_headers = String::new();
    for (n, v) in &headers {
        canonical_headers.push_str(&format!("{n}:{v}\n"));
    }
    let names = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{uri}\n{query}\n{canonical_headers}\n{names}\n{}",
        hex_of(&Sha256::digest(body))
    );
    let to_sign = format!(
        "SDK-HMAC-SHA256\n{sdk_date}\n{}",
        hex_of(&Sha256::digest(canonical.as_bytes()))
    );
    hex_of(&hmac_sha256(secret_key.as_bytes(), to_sign.as_bytes()))
}

/// The parts of `Authorization: SDK-HMAC-SHA256 Access=.., SignedHeaders=.., Signature=..`.
fn parse_authorization(value: &str) -> Option<(String, String, String)> {
    let rest = value.strip_prefix("SDK-HMAC-SHA256 ")?;
    let mut access = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Access" => access = Some(v.to_owned()),
            "SignedHeaders" => signed = Some(v.to_owned()),
            "Signature" => signature = Some(v.to_owned()),
            _ => return None,
        }
    }
    Some((access?, signed?, signature?))
}

/// What the gateway decides about a request: `Ok(None)` for a token
/// request, `Ok(Some(call))` for an accepted signature, `Err(message)` for
/// a refusal (401 `APIGW.0301` with that message).
fn admit(
    d: &ImsDouble,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<SignedCall>, String> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut g = d.inner.lock().expect("lock");
    let Some(authorization) = header("authorization") else {
        let Some(token) = header("x-auth-token").filter(|t| !t.is_empty()) else {
            return Err("no token and no signature".to_owned());
        };
        g.tokens.push(token.clone());
        if method == Method::DELETE {
            g.delete_tokens.push(token.clone());
        }
        // Revocation is checked on DELETE only, so a test can revoke the
        // operator's token between its GETs and the DELETE it waits for.
        if method == Method::DELETE && g.revoked.contains(&token) {
            return Err("token invalid".to_owned());
        }
        return Ok(None);
    };
    let refuse = |g: &mut Inner, why: &str| {
        g.refused.push(why.to_owned());
        Err(format!("Incorrect IAM authentication information: {why}"))
    };
    let Some((access_key, signed_headers, signature)) = parse_authorization(&authorization) else {
        return refuse(&mut g, "malformed Authorization header");
    };
    g.signatures.push(signature.clone());
    let Some(key) = g.keys.get(&access_key).cloned() else {
        return refuse(&mut g, "unknown access key");
    };
    let names: Vec<&str> = signed_headers.split(';').collect();
    for must in ["x-sdk-date", "host"] {
        if !names.contains(&must) {
            return refuse(&mut g, &format!("{must} is not signed"));
        }
    }
    for sent in ["content-type", "x-project-id", "x-security-token"] {
        if headers.contains_key(sent) && !names.contains(&sent) {
            return refuse(&mut g, &format!("{sent} is sent but not signed"));
        }
    }
    if header("x-security-token") != key.security_token {
        return refuse(&mut g, "security token missing or wrong");
    }
    let mut signed = Vec::new();
    for n in &names {
        match header(n) {
            Some(v) => signed.push(((*n).to_owned(), v)),
            None => return refuse(&mut g, &format!("signed header {n} is missing")),
        }
    }
    let date = header("x-sdk-date").unwrap_or_default();
    let Ok(at) = NaiveDateTime::parse_from_str(&date, "%Y%m%dT%H%M%SZ") else {
        return refuse(&mut g, "X-Sdk-Date is not YYYYMMDDTHHMMSSZ");
    };
    let skew = (Utc::now() + g.clock_offset).naive_utc() - at;
    if skew.num_seconds().abs() > 15 * 60 {
        return refuse(
            &mut g,
            "the request time differs from the gateway's by more than 15 minutes",
        );
    }
    let want = expected_signature(
        &key.secret_key,
        method.as_str(),
        uri.path(),
        uri.query(),
        &signed,
        body,
        &date,
    );
    if want != signature {
        return refuse(&mut g, "signature mismatch");
    }
    let call = SignedCall {
        method: method.to_string(),
        target: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        access_key,
        signed_headers,
        project_id: header("x-project-id"),
        security_token: header("x-security-token"),
    };
    g.signed.push(call.clone());
    Ok(Some(call))
}

// ---- The image API. ----

async fn list_images(
    State(d): State<ImsDouble>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = admit(&d, &method, &uri, &headers, b"") {
        return gateway_refusal(&refused);
    }
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"images": []}).to_string(),
    )
        .into_response()
}

async fn get_image(
    State(d): State<ImsDouble>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = admit(&d, &method, &uri, &headers, b"") {
        return gateway_refusal(&refused);
    }
    let mut g = d.inner.lock().expect("lock");
    let Some(img) = g.images.get_mut(&id) else {
        return ims_error(StatusCode::NOT_FOUND, "IMG.0027", "image not found");
    };
    if img.deleted {
        if img.visible_after_delete == 0 {
            *g.gone_gets.entry(id).or_insert(0) += 1;
            return ims_error(StatusCode::NOT_FOUND, "IMG.0027", "image not found");
        }
        img.visible_after_delete -= 1;
    }
    let protected = img.protected;
    *g.gets_after_delete.entry(id.clone()).or_insert(0) +=
        u32::from(g.images.get(&id).is_some_and(|i| i.deleted));
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"id": id, "name": "ims-double-image", "status": "active", "visibility": "private",
               "protected": protected, "size": 1024, "checksum": "d41d8cd98f00b204e9800998ecf8427e",
               "__whole_image": "true", "updated_at": "2026-11-30T00:00:00Z"})
        .to_string(),
    )
        .into_response()
}

async fn delete_image(
    State(d): State<ImsDouble>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(refused) = admit(&d, &method, &uri, &headers, &body) {
        return gateway_refusal(&refused);
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut g = d.inner.lock().expect("lock");
    g.deletes.push(DeleteCall {
        image_id: id.clone(),
        content_type: content_type.clone(),
        body: body.clone(),
    });
    let parsed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
    let valid = content_type.as_deref() == Some("application/json")
        && parsed
            .as_ref()
            .and_then(|v| v.get("delete_backup"))
            .is_some_and(|b| b.is_boolean());
    if !valid && !body.is_empty() {
        return ims_error(StatusCode::BAD_REQUEST, "IMG.0001", "invalid request body");
    }
    if let Some((status, code)) = g.scripted.get(&id) {
        return ims_error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            &format!("scripted answer {code}"),
        );
    }
    match g.images.get_mut(&id) {
        None => ims_error(StatusCode::NOT_FOUND, "IMG.0027", "image not found"),
        Some(img) if img.deleted => ims_error(
            StatusCode::BAD_REQUEST,
            "IMG.0144",
            "image is being deleted",
        ),
        Some(img) if img.protected => ims_error(
            StatusCode::BAD_REQUEST,
            "IMG.0028",
            "The image is protected and cannot be deleted.",
        ),
        Some(img) => {
            img.deleted = true;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

impl ImsDouble {
    /// Starts the double on a free loopback port.
    pub async fn start() -> ImsDouble {
        let mut d = ImsDouble::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        d.addr = Some(listener.local_addr().expect("addr"));
        let app = Router::new()
            .route("/v2/images", get(list_images))
            .route("/v2/images/{id}", get(get_image).delete(delete_image))
            .with_state(d.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        d
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    /// Adds an image; after an accepted DELETE, GET still finds it `visible_after_delete` times.
    pub fn add_image(&self, id: &str, protected: bool, visible_after_delete: u32) {
        self.inner.lock().expect("lock").images.insert(
            id.to_owned(),
            Image {
                protected,
                visible_after_delete,
                deleted: false,
            },
        );
    }

    pub fn set_protected(&self, id: &str, protected: bool) {
        if let Some(i) = self.inner.lock().expect("lock").images.get_mut(id) {
            i.protected = protected;
        }
    }

    /// The image is going away by itself: GET finds it `visible` more
    /// times, then answers 404.
    pub fn set_deleted(&self, id: &str, visible: u32) {
        if let Some(i) = self.inner.lock().expect("lock").images.get_mut(id) {
            i.deleted = true;
            i.visible_after_delete = visible;
        }
    }

    /// Every DELETE of `id` is answered with `status` and the IMS error
    /// `code` until [`ImsDouble::unscript_delete`].
    pub fn script_delete(&self, id: &str, status: u16, code: &str) {
        self.inner
            .lock()
            .expect("lock")
            .scripted
            .insert(id.to_owned(), (status, code.to_owned()));
    }

    pub fn unscript_delete(&self, id: &str) {
        self.inner.lock().expect("lock").scripted.remove(id);
    }

    /// A permanent access key pair the gateway accepts.
    pub fn add_access_key(&self, access_key: &str, secret_key: &str) {
        self.inner.lock().expect("lock").keys.insert(
            access_key.to_owned(),
            Key {
                secret_key: secret_key.to_owned(),
                security_token: None,
            },
        );
    }

    /// A temporary key pair: accepted only with its security token.
    pub fn add_temporary_key(&self, access_key: &str, secret_key: &str, security_token: &str) {
        self.inner.lock().expect("lock").keys.insert(
            access_key.to_owned(),
            Key {
                secret_key: secret_key.to_owned(),
                security_token: Some(security_token.to_owned()),
            },
        );
    }

    /// Moves the gateway's clock (for skew checks).
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        self.inner.lock().expect("lock").clock_offset = offset;
    }

    /// Revokes every token seen so far: the next DELETE with one gets 401.
    pub fn revoke_seen_tokens(&self) {
        let mut g = self.inner.lock().expect("lock");
        let seen = g.tokens.clone();
        g.revoked.extend(seen);
    }

    /// Every token the double received (GET and DELETE).
    pub fn tokens(&self) -> Vec<String> {
        self.inner.lock().expect("lock").tokens.clone()
    }

    /// The token each DELETE carried, in order.
    pub fn delete_tokens(&self) -> Vec<String> {
        self.inner.lock().expect("lock").delete_tokens.clone()
    }

    /// Signed requests the double verified and accepted.
    pub fn signed_calls(&self) -> Vec<SignedCall> {
        self.inner.lock().expect("lock").signed.clone()
    }

    /// Every signature received, accepted or refused.
    pub fn signatures(&self) -> Vec<String> {
        self.inner.lock().expect("lock").signatures.clone()
    }

    /// Why each refused signed request was refused.
    pub fn refusals(&self) -> Vec<String> {
        self.inner.lock().expect("lock").refused.clone()
    }

    pub fn deletes(&self) -> Vec<DeleteCall> {
        self.inner.lock().expect("lock").deletes.clone()
    }

    /// GETs answered 200 after the image was deleted (the "still visible" period).
    pub fn gets_after_delete(&self, id: &str) -> u32 {
        self.inner
            .lock()
            .expect("lock")
            .gets_after_delete
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// GETs answered 404 after the image was deleted.
    pub fn gone_gets(&self, id: &str) -> u32 {
        self.inner
            .lock()
            .expect("lock")
            .gone_gets
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    pub fn is_deleted(&self, id: &str) -> bool {
        self.inner
            .lock()
            .expect("lock")
            .images
            .get(id)
            .is_some_and(|i| i.deleted)
    }
}
