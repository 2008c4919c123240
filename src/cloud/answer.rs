//! What each answer of the image API means: a pure table from
//! (dialect, HTTP status, body) to an outcome or a classified error; which
//! answers are trusted, and how much of one is read.
//! See `docs/cloud-api-contract.md` ("What each DELETE answer means") for each row.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::error::{
    MAX_CLOUD_MESSAGE_CHARS, MAX_ERROR_CODE_CHARS, MAX_IMAGE_FIELD_CHARS, MAX_REQUEST_ID_CHARS,
    Peer, transport_error, truncate_chars,
};
use super::{CloudError, Deletion, Dialect, ErrorKind, ImageInfo, Lookup};

/// At most this many bytes of a Keystone answer are read (a token with a
/// large catalog is a few tens of KiB).
pub const MAX_KEYSTONE_BODY_BYTES: usize = 1024 * 1024;
/// At most this many bytes of an image API answer (a record, or an error).
pub const MAX_IMAGE_BODY_BYTES: usize = 64 * 1024;

/// IMS codes that say the image is gone or going (no such image, already
/// being deleted): a DELETE answered with one is confirmed by GET.
pub const IMS_ALREADY_GONE: [&str; 3] = ["IMG.0027", "IMG.0086", "IMG.0144"];

/// What an IMS or API gateway error code means, whatever the HTTP status
/// (`docs/cloud-api-contract.md`, "What each DELETE answer means"), with
/// the words added to the cloud's message, if any.
pub fn ims_code_kind(code: &str) -> Option<(ErrorKind, &'static str)> {
    Some(match code {
        "IMG.0028" => (ErrorKind::Protected, ""),
        // Only the owner may delete; another tenant's image; public image; no permission.
        "IMG.0092" | "IMG.0047" | "IMG.0106" | "IMG.0094" | "IMG.0026" => {
            (ErrorKind::Forbidden, "")
        }
        // Still being created; being exported.
        "IMG.0090" | "IMG.0148" => (ErrorKind::InUse, ""),
        "IMG.0104" => (
            ErrorKind::CredentialsInvalid,
            "the region holds several projects of this account: name the project (auth.project_id, or auth.project_name for IAM passwords)",
        ),
        "IMG.0176" => (
            ErrorKind::Unavailable,
            "the backup behind this whole-machine image could not be deleted; the operator retries (deleteBackup: false keeps the backup)",
        ),
        "APIGW.0301" => (ErrorKind::AuthFailed, ""),
        "APIG.0308" => (ErrorKind::Throttled, ""),
        _ => return None,
    })
}

/// The parts of an HTTP answer that decide what it means.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Maps the answer to `DELETE /v2/images/{id}`.
pub fn classify_delete(dialect: Dialect, answer: &Answer) -> Result<Deletion, CloudError> {
    match answer.status {
        // Only Glance's 204 means "deleted". Any other success (a proxy's
        // 200, an asynchronous 202) is confirmed with GET before release.
        204 if dialect == Dialect::OpenStack => Ok(Deletion::Deleted),
        200..=299 => Ok(Deletion::Accepted),
        404 => {
            if ErrorBody::parse(&answer.body).is_image_not_found() {
                Ok(Deletion::AlreadyGone)
            } else {
                Err(untrusted_not_found(answer))
            }
        }
        _ => {
            let body = ErrorBody::parse(&answer.body);
            // "No such image" / "already being deleted": not trusted
            // blindly, confirmed with GET like an accepted deletion.
            if dialect == Dialect::Huawei
                && body
                    .code
                    .as_deref()
                    .is_some_and(|c| IMS_ALREADY_GONE.contains(&c))
            {
                return Ok(Deletion::Accepted);
            }
            Err(classify_error(answer, body))
        }
    }
}

/// Maps the answer to `GET /v2/images/{id}` for the image `image_id`.
pub fn classify_get(answer: &Answer, image_id: &str) -> Result<Lookup, CloudError> {
    match answer.status {
        200 => {
            let info = parse_image(&answer.body, image_id).map_err(|mut e| {
                e.http_status = Some(200);
                e.request_id = answer.request_id.clone();
                e
            })?;
            // IMS may show a deleted image for a while before answering 404.
            if info.status.as_deref() == Some("deleted") {
                return Ok(Lookup::NotFound);
            }
            Ok(Lookup::Found(info))
        }
        404 if ErrorBody::parse(&answer.body).is_image_not_found() => Ok(Lookup::NotFound),
        404 => Err(untrusted_not_found(answer)),
        201..=299 => {
            let mut err = CloudError::new(
                ErrorKind::Unavailable,
                format!("HTTP {}: no image record in the answer", answer.status),
            );
            err.http_status = Some(answer.status);
            err.request_id = answer.request_id.clone();
            Err(err)
        }
        _ => Err(classify_failure(answer)),
    }
}

/// Maps a non-success answer of any image or identity call to an error.
pub fn classify_failure(answer: &Answer) -> CloudError {
    classify_error(answer, ErrorBody::parse(&answer.body))
}

/// A 404 whose body is not the image service's own "not found" (an
/// ingress's default backend, an HTML page, nothing): the image may well
/// still exist, so it must not count as gone.
fn untrusted_not_found(answer: &Answer) -> CloudError {
    let mut err = CloudError::new(
        ErrorKind::UntrustedAnswer,
        "HTTP 404 without the image service's error body: not taken as \"image gone\" (is the endpoint right?)",
    );
    err.http_status = Some(404);
    err.request_id = answer.request_id.clone();
    err
}

fn classify_error(answer: &Answer, body: ErrorBody) -> CloudError {
    let code = body.code.as_deref().unwrap_or("");
    let lower = body.message.to_ascii_lowercase();
    let by_code = ims_code_kind(code);
    let kind = match (answer.status, by_code) {
        (_, Some((kind, _))) => kind,
        (401, _) => ErrorKind::AuthFailed,
        (403, _) if lower.contains("protected") => ErrorKind::Protected,
        (403, _) => ErrorKind::Forbidden,
        (409, _) => ErrorKind::InUse,
        (429, _) => ErrorKind::Throttled,
        // Redirects are not followed (they would carry the token elsewhere).
        (300..=399, _) => ErrorKind::BadRequest,
        (400..=499, _) => ErrorKind::BadRequest,
        _ => ErrorKind::Unavailable,
    };
    let retry_after = answer.retry_after.or(if code == "APIG.0308" {
        // IMS documents "retry after 2-5 s" without a Retry-After header.
        Some(Duration::from_secs(3))
    } else {
        None
    });
    let mut message = if (300..=399).contains(&answer.status) {
        format!(
            "HTTP {}: the image endpoint redirects, which the operator does not follow; set image_endpoint_override to the real endpoint",
            answer.status
        )
    } else if body.shape == Shape::Unknown {
        // Not an error of Keystone, Glance or IMS: nothing of it is shown.
        format!("HTTP {} {}", answer.status, status_phrase(answer.status))
            .trim_end()
            .to_owned()
    } else if body.message.is_empty() {
        format!("HTTP {}", answer.status)
    } else {
        format!("HTTP {}: {}", answer.status, body.message)
    };
    if !code.is_empty() {
        message.push_str(&format!(" ({code})"));
    }
    if let Some((_, advice)) = by_code.filter(|(_, a)| !a.is_empty()) {
        message.push_str(": ");
        message.push_str(advice);
    }
    let mut err = CloudError::new(kind, message);
    err.http_status = Some(answer.status);
    err.request_id = answer.request_id.clone();
    err.retry_after = retry_after;
    err
}

/// The standard phrase for a status ("Not Found"), never the cloud's own.
fn status_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Which service's error format a body has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// Glance (WebOb): `{"message": "...", "code": "404 Not Found", "title": ...}`.
    Glance,
    /// keystonemiddleware / Keystone: `{"error": {"code": 401, "title": ..., "message": ...}}`.
    Keystone,
    /// IMS: `{"error": {"code": "IMG.0028", "message": ...}}`.
    Ims,
    /// Huawei API gateway and IMS: `{"error_code": "APIGW.0301", "error_msg": ...}`.
    HuaweiGateway,
    /// Anything else: not shown to users, not trusted.
    #[default]
    Unknown,
}

/// An error body in one of the shapes Glance, Keystone, IMS and the Huawei
/// API gateway use. Anything else gives [`Shape::Unknown`] with no message:
/// text from an unknown page never reaches a status or an Event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorBody {
    /// Cleaned, at most [`MAX_CLOUD_MESSAGE_CHARS`] characters.
    pub message: String,
    /// An error code such as `IMG.0028`, at most [`MAX_ERROR_CODE_CHARS`].
    pub code: Option<String>,
    pub shape: Shape,
    /// The status line Glance puts in `code` ("404 Not Found"); not shown.
    status_code: Option<String>,
}

impl ErrorBody {
    pub fn parse(raw: &str) -> ErrorBody {
        let Ok(Value::Object(v)) = serde_json::from_str::<Value>(raw) else {
            return ErrorBody::default();
        };
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let mut body = if let Some(Value::Object(e)) = v.get("error") {
            match (e.get("code"), text(e.get("message"))) {
                // keystonemiddleware: a numeric code and a title.
                (Some(Value::Number(_)), Some(m)) if text(e.get("title")).is_some() => ErrorBody {
                    message: m,
                    shape: Shape::Keystone,
                    ..Default::default()
                },
                (Some(Value::String(c)), Some(m)) if is_code(c) => ErrorBody {
                    message: m,
                    code: Some(c.clone()),
                    shape: Shape::Ims,
                    ..Default::default()
                },
                _ => ErrorBody::default(),
            }
        } else if let (Some(c), Some(m)) = (text(v.get("error_code")), text(v.get("error_msg"))) {
            if is_code(&c) {
                ErrorBody {
                    message: m,
                    code: Some(c),
                    shape: Shape::HuaweiGateway,
                    ..Default::default()
                }
            } else {
                ErrorBody::default()
            }
        } else if let Some(m) = text(v.get("message")) {
            let status_code = text(v.get("code"));
            if status_code.is_some() || text(v.get("title")).is_some() {
                ErrorBody {
                    message: m,
                    shape: Shape::Glance,
                    status_code: status_code.map(|s| truncate_chars(&s, MAX_ERROR_CODE_CHARS)),
                    ..Default::default()
                }
            } else {
                ErrorBody::default()
            }
        } else {
            ErrorBody::default()
        };
        body.message = clean_message(&body.message);
        body
    }

    /// Whether this is the image service's own "no such image": Glance's
    /// `{"code": "404 Not Found", "message": ...}`, or an IMS error with an
    /// `IMG.` code. A gateway's 404 (`APIGW.0101`, "no such API") is not.
    pub fn is_image_not_found(&self) -> bool {
        match self.shape {
            Shape::Glance => self
                .status_code
                .as_deref()
                .is_some_and(|c| c.starts_with("404")),
            Shape::Ims | Shape::HuaweiGateway => {
                self.code.as_deref().is_some_and(|c| c.starts_with("IMG."))
            }
            Shape::Keystone | Shape::Unknown => false,
        }
    }
}

/// An error code as IMS and the gateway write them: `IMG.0028`, `APIGW.0301`.
fn is_code(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= MAX_ERROR_CODE_CHARS
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Strips the HTML WebOb appends and squeezes whitespace; at most
/// [`MAX_CLOUD_MESSAGE_CHARS`] characters.
fn clean_message(raw: &str) -> String {
    let cut = raw.find("<br").map(|i| &raw[..i]).unwrap_or(raw);
    let text = if cut.trim_start().starts_with('<') {
        strip_tags(cut)
    } else {
        cut.to_owned()
    };
    let squeezed = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    truncate_chars(&squeezed, MAX_CLOUD_MESSAGE_CHARS)
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[derive(Deserialize)]
struct ImageRecord {
    id: String,
    name: Option<String>,
    status: Option<String>,
    protected: Option<Value>,
    size: Option<Value>,
    checksum: Option<String>,
    os_hash_value: Option<String>,
    visibility: Option<String>,
    updated_at: Option<String>,
}

/// Reads the image record for `image_id`; `protected` may be a Boolean or
/// the string "true". A body that is not a record of that image is
/// `UntrustedAnswer`. String fields are cut to [`MAX_IMAGE_FIELD_CHARS`].
pub fn parse_image(body: &str, image_id: &str) -> Result<ImageInfo, CloudError> {
    let untrusted = |what: &str| {
        CloudError::new(
            ErrorKind::UntrustedAnswer,
            format!("HTTP 200: {what}, not taken as the image's state"),
        )
    };
    // serde's messages quote the offending value, so none is shown.
    let r: ImageRecord =
        serde_json::from_str(body).map_err(|_| untrusted("the answer is not an image record"))?;
    if r.id != image_id {
        return Err(untrusted("the answer describes another image"));
    }
    let protected = match r.protected {
        Some(Value::Bool(b)) => Some(b),
        Some(Value::String(s)) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    };
    let field = |s: Option<String>| s.map(|s| truncate_chars(&s, MAX_IMAGE_FIELD_CHARS));
    Ok(ImageInfo {
        id: truncate_chars(&r.id, MAX_IMAGE_FIELD_CHARS),
        name: field(r.name),
        status: field(r.status),
        protected,
        size: r.size.as_ref().and_then(Value::as_i64),
        checksum: field(r.os_hash_value.or(r.checksum)),
        visibility: field(r.visibility),
        updated_at: field(r.updated_at),
    })
}

/// Reads a response into an [`Answer`] (status, request id, Retry-After,
/// body of at most `limit` bytes) and hands back its headers for anything
/// else the caller needs. A larger body (by `Content-Length`, or once
/// read past the limit) is `UntrustedAnswer`; the rest is never read.
pub async fn read_answer(
    mut resp: reqwest::Response,
    limit: usize,
    peer: Peer,
) -> Result<(Answer, reqwest::header::HeaderMap), CloudError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| truncate_chars(v, MAX_REQUEST_ID_CHARS))
    };
    let request_id = header("x-openstack-request-id").or_else(|| header("x-request-id"));
    let retry_after = parse_retry_after(headers.get("retry-after").and_then(|v| v.to_str().ok()));
    let too_large = || {
        let mut err = CloudError::new(
            ErrorKind::UntrustedAnswer,
            format!(
                "HTTP {status}: the answer of {} is larger than {} KiB, which the operator does not read",
                peer.name(),
                limit / 1024
            ),
        );
        err.http_status = Some(status);
        err.request_id = request_id.clone();
        err
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_error(peer, &e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((
        Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            request_id,
            retry_after,
        },
        headers,
    ))
}

/// Parses `Retry-After` given in seconds (HTTP dates are not used by these
/// clouds), at most a day.
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Glance 33's answers for an unknown image id to `DELETE` and `GET`
    /// with `Accept: application/json`, as observed in the test environment.
    const GLANCE_DELETE_404: &str = "{\"message\": \"Failed to find image 5c37dd8f-3b87-4d92-9386-ac2eab6b3059 to delete<br /><br />\\n\\n\\n\", \"code\": \"404 Not Found\", \"title\": \"Not Found\"}";
    const GLANCE_GET_404: &str = "{\"message\": \"No image found with ID 5c37dd8f-3b87-4d92-9386-ac2eab6b3059<br /><br />\\n\\n\\n\", \"code\": \"404 Not Found\", \"title\": \"Not Found\"}";
    /// The same GET without `Accept: application/json`.
    const GLANCE_HTML_404: &str = "<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  <h1>404 Not Found</h1>\n  No image found with ID 5c37dd8f<br /><br />\n\n\n\n </body>\n</html>";
    const ID: &str = "5c37dd8f-3b87-4d92-9386-ac2eab6b3059";

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.into(),
            request_id: Some("req-1".into()),
            retry_after: None,
        }
    }

    fn kind(dialect: Dialect, status: u16, body: &str) -> ErrorKind {
        match classify_delete(dialect, &answer(status, body)) {
            Err(e) => e.kind,
            Ok(d) => panic!("expected an error for {status} {body}, got {d:?}"),
        }
    }

    #[test]
    fn success_answers_depend_on_the_dialect() {
        assert_eq!(
            classify_delete(Dialect::OpenStack, &answer(204, "")),
            Ok(Deletion::Deleted)
        );
        assert_eq!(
            classify_delete(Dialect::Huawei, &answer(204, "")),
            Ok(Deletion::Accepted)
        );
        assert_eq!(
            classify_delete(Dialect::OpenStack, &answer(200, "")),
            Ok(Deletion::Accepted),
            "a 200 from Glance is not a confirmed deletion"
        );
        assert_eq!(
            classify_delete(Dialect::OpenStack, &answer(202, "")),
            Ok(Deletion::Accepted)
        );
        assert_eq!(
            classify_delete(Dialect::OpenStack, &answer(303, "")).map_err(|e| e.kind),
            Err(ErrorKind::BadRequest),
            "a redirect is never success"
        );
        assert_eq!(
            classify_delete(Dialect::OpenStack, &answer(404, GLANCE_DELETE_404)),
            Ok(Deletion::AlreadyGone)
        );
        assert_eq!(
            classify_delete(Dialect::Huawei, &answer(404, GLANCE_DELETE_404)),
            Ok(Deletion::AlreadyGone)
        );
    }

    #[test]
    fn only_the_image_services_own_404_means_gone() {
        let ims = r#"{"error": {"code": "IMG.0027", "message": "The image does not exist."}}"#;
        let ims_flat = r#"{"error_code": "IMG.0027", "error_msg": "The image does not exist."}"#;
        let gateway = r#"{"error_code": "APIGW.0101", "error_msg": "The API does not exist or has not been published in the environment"}"#;
        let keystone = r#"{"error": {"code": 404, "title": "Not Found", "message": "Could not find project."}}"#;
        let glance_other =
            r#"{"message": "not here", "code": "400 Bad Request", "title": "Bad Request"}"#;
        for (body, gone) in [
            (GLANCE_DELETE_404, true),
            (GLANCE_GET_404, true),
            (ims, true),
            (ims_flat, true),
            ("", false),
            ("default backend - 404", false),
            (GLANCE_HTML_404, false),
            (
                "<html><body><h1>404 Not Found</h1>nginx</body></html>",
                false,
            ),
            (r#"{"message": "Not Found"}"#, false),
            (r#"{"detail": "Not Found"}"#, false),
            (gateway, false),
            (keystone, false),
            (glance_other, false),
            ("[1, 2]", false),
            ("null", false),
        ] {
            for dialect in [Dialect::OpenStack, Dialect::Huawei] {
                let delete = classify_delete(dialect, &answer(404, body));
                let get = classify_get(&answer(404, body), ID);
                if gone {
                    assert_eq!(delete, Ok(Deletion::AlreadyGone), "{body}");
                    assert_eq!(get, Ok(Lookup::NotFound), "{body}");
                } else {
                    for r in [delete.map(|_| ()), get.map(|_| ())] {
                        let err = r.expect_err(body);
                        assert_eq!(err.kind, ErrorKind::UntrustedAnswer, "{body}");
                        assert_eq!(err.http_status, Some(404));
                        assert_eq!(err.request_id.as_deref(), Some("req-1"));
                        assert!(!err.message.contains("backend"), "{}", err.message);
                    }
                }
            }
        }
    }

    #[test]
    fn glance_errors_are_classified_by_what_to_do() {
        let protected = r#"{"message": "Image 1 is protected and cannot be deleted.<br /><br />\n\n\n", "code": "403 Forbidden", "title": "Forbidden"}"#;
        assert_eq!(
            kind(Dialect::OpenStack, 403, protected),
            ErrorKind::Protected
        );
        assert_eq!(
            kind(
                Dialect::OpenStack,
                403,
                r#"{"message": "You are not authorized", "code": "403 Forbidden"}"#
            ),
            ErrorKind::Forbidden
        );
        assert_eq!(
            kind(
                Dialect::OpenStack,
                403,
                "<html>this image is protected</html>"
            ),
            ErrorKind::Forbidden,
            "\"protected\" counts only in a Glance-shaped message"
        );
        assert_eq!(kind(Dialect::OpenStack, 409, ""), ErrorKind::InUse);
        assert_eq!(
            kind(
                Dialect::OpenStack,
                400,
                r#"{"message": "A body is not expected with this request.", "code": "400 Bad Request", "title": "Bad Request"}"#
            ),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(
                Dialect::OpenStack,
                401,
                r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#
            ),
            ErrorKind::AuthFailed
        );
        assert_eq!(kind(Dialect::OpenStack, 429, ""), ErrorKind::Throttled);
        for s in [500, 502, 503, 504] {
            assert_eq!(
                kind(Dialect::OpenStack, s, "<html>oops</html>"),
                ErrorKind::Unavailable
            );
        }
    }

    /// Every IMS and gateway code of `docs/cloud-api-contract.md`, as the
    /// answer to a DELETE in the IMS dialect.
    #[test]
    fn ims_codes_are_classified_by_what_to_do() {
        use ErrorKind::*;
        let ims = |code: &str| format!(r#"{{"error": {{"message": "m", "code": "{code}"}}}}"#);
        let gateway = |code: &str| format!(r#"{{"error_msg": "m", "error_code": "{code}"}}"#);
        // (status, code, what the operator does, words it adds)
        let table: [(u16, &str, Result<Deletion, ErrorKind>, &str); 17] = [
            (400, "IMG.0027", Ok(Deletion::Accepted), ""),
            (400, "IMG.0086", Ok(Deletion::Accepted), ""),
            (400, "IMG.0144", Ok(Deletion::Accepted), ""),
            (400, "IMG.0028", Err(Protected), ""),
            (400, "IMG.0090", Err(InUse), ""),
            (400, "IMG.0148", Err(InUse), ""),
            (400, "IMG.0092", Err(Forbidden), ""),
            (400, "IMG.0047", Err(Forbidden), ""),
            (400, "IMG.0106", Err(Forbidden), ""),
            (400, "IMG.0094", Err(Forbidden), ""),
            (403, "IMG.0026", Err(Forbidden), ""),
            (400, "IMG.0104", Err(CredentialsInvalid), "name the project"),
            (
                400,
                "IMG.0176",
                Err(Unavailable),
                "could not be deleted; the operator retries",
            ),
            (401, "APIGW.0301", Err(AuthFailed), ""),
            (429, "APIG.0308", Err(Throttled), ""),
            (400, "IMG.0001", Err(BadRequest), ""),
            (500, "IMG.0001", Err(Unavailable), ""),
        ];
        for (status, code, want, words) in table {
            for body in [ims(code), gateway(code)] {
                let got = classify_delete(Dialect::Huawei, &answer(status, &body));
                match (&got, &want) {
                    (Ok(d), Ok(w)) => assert_eq!(d, w, "{code}"),
                    (Err(e), Err(k)) => {
                        assert_eq!(e.kind, *k, "{code}");
                        assert_eq!(e.http_status, Some(status));
                        assert_eq!(e.request_id.as_deref(), Some("req-1"));
                        assert!(
                            e.message.starts_with(&format!("HTTP {status}: m ({code})")),
                            "{}",
                            e.message
                        );
                        assert!(e.message.contains(words), "{code}: {}", e.message);
                    }
                    _ => panic!("{code}: got {got:?}, want {want:?}"),
                }
            }
        }
        // The already-gone codes are confirmed by GET only in the IMS
        // dialect; from a Glance-configured cloud they are an unknown 400.
        assert_eq!(
            kind(Dialect::OpenStack, 400, &ims("IMG.0086")),
            ErrorKind::BadRequest
        );
        // A trusted 404 is still "already gone" at once (see the contract).
        assert_eq!(
            classify_delete(Dialect::Huawei, &answer(404, &ims("IMG.0027"))),
            Ok(Deletion::AlreadyGone)
        );
        assert_eq!(
            ims_code_kind("IMG.9999"),
            None,
            "an unknown code falls back to the status"
        );
    }

    #[test]
    fn throttling_without_retry_after_gets_the_documented_pause() {
        let err = classify_delete(
            Dialect::Huawei,
            &answer(
                429,
                r#"{"error_msg": "slow down", "error_code": "APIG.0308"}"#,
            ),
        )
        .expect_err("429 is an error");
        assert_eq!(err.kind, ErrorKind::Throttled);
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
        let mut a = answer(503, "");
        a.retry_after = parse_retry_after(Some(" 7 "));
        let err = classify_delete(Dialect::OpenStack, &a).expect_err("503 is an error");
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after(Some("99999999999")),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn messages_keep_the_cloud_text_and_request_id() {
        let body = r#"{"message": "Image 1 is protected and cannot be deleted.<br /><br />\n\n\n", "code": "403 Forbidden"}"#;
        let err = classify_delete(Dialect::OpenStack, &answer(403, body)).expect_err("403");
        assert_eq!(
            err.message,
            "HTTP 403: Image 1 is protected and cannot be deleted."
        );
        assert_eq!(err.request_id.as_deref(), Some("req-1"));
        assert_eq!(err.http_status, Some(403));
    }

    /// Only an error in a known shape is shown; anything else gives the
    /// status and its standard phrase.
    #[test]
    fn only_known_error_shapes_reach_the_message() {
        for (status, body, want) in [
            (
                403,
                r#"{"message": "Forbidden by policy<br />", "code": "403 Forbidden", "title": "Forbidden"}"#,
                "HTTP 403: Forbidden by policy",
            ),
            (
                403,
                r#"{"message": "policy says no", "title": "Forbidden"}"#,
                "HTTP 403: policy says no",
            ),
            (
                401,
                r#"{"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}}"#,
                "HTTP 401: The request you have made requires authentication.",
            ),
            (
                400,
                r#"{"error": {"code": "IMG.0001", "message": "bad"}}"#,
                "HTTP 400: bad (IMG.0001)",
            ),
            (
                401,
                r#"{"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"}"#,
                "HTTP 401: Incorrect IAM authentication information (APIGW.0301)",
            ),
            (
                503,
                "<html><body><h1>503</h1>internal-admin.svc.cluster.local:8080 secret page</body></html>",
                "HTTP 503 Service Unavailable",
            ),
            (
                500,
                "root:x:0:0:root:/root:/bin/bash",
                "HTTP 500 Internal Server Error",
            ),
            (
                403,
                r#"{"message": "a JSON answer without code or title"}"#,
                "HTTP 403 Forbidden",
            ),
            (
                400,
                r#"{"error": {"code": "not a code!", "message": "m"}}"#,
                "HTTP 400 Bad Request",
            ),
            (
                400,
                r#"{"error": {"code": 400, "message": "no title"}}"#,
                "HTTP 400 Bad Request",
            ),
            (
                400,
                r#"{"error_code": "IMG.1", "error_msg": 5}"#,
                "HTTP 400 Bad Request",
            ),
            (599, "x", "HTTP 599"),
        ] {
            let err = classify_failure(&answer(status, body));
            assert_eq!(err.message, want, "{body}");
        }
    }

    #[test]
    fn cloud_text_is_cleaned_and_limited() {
        let long = format!(
            r#"{{"message": "{}", "code": "400 Bad Request"}}"#,
            "x".repeat(5000)
        );
        let body = ErrorBody::parse(&long);
        assert_eq!(body.message.chars().count(), MAX_CLOUD_MESSAGE_CHARS);
        let html = r#"{"message": "<p>Bad</p> <b>thing</b>", "code": "400 Bad Request"}"#;
        assert_eq!(ErrorBody::parse(html).message, "Bad thing");
        let controls = "{\"message\": \"line1\\nline2\\u001b[31m red\", \"title\": \"T\"}";
        assert_eq!(ErrorBody::parse(controls).message, "line1 line2 [31m red");
        let long_code = format!(
            r#"{{"error_code": "{}", "error_msg": "m"}}"#,
            "A".repeat(MAX_ERROR_CODE_CHARS + 1)
        );
        assert_eq!(ErrorBody::parse(&long_code).shape, Shape::Unknown);
    }

    #[test]
    fn image_records_accept_both_protected_spellings() {
        let a = parse_image(
            r#"{"id": "x", "protected": "true", "os_hash_value": "abc", "checksum": "md5"}"#,
            "x",
        )
        .expect("parses");
        assert_eq!(a.protected, Some(true));
        assert_eq!(a.checksum.as_deref(), Some("abc"));
        let b = parse_image(
            r#"{"id": "x", "protected": false, "checksum": "md5", "size": null}"#,
            "x",
        )
        .expect("parses");
        assert_eq!(b.protected, Some(false));
        assert_eq!(b.checksum.as_deref(), Some("md5"));
    }

    #[test]
    fn image_records_are_limited_and_must_be_the_requested_image() {
        let long = "n".repeat(10_000);
        let body = serde_json::json!({
            "id": ID, "name": long, "status": "active\nFAKE", "checksum": long,
            "visibility": long, "updated_at": long, "size": "big"
        })
        .to_string();
        let info = parse_image(&body, ID).expect("parses");
        for f in [
            &info.name,
            &info.checksum,
            &info.visibility,
            &info.updated_at,
        ] {
            assert_eq!(
                f.as_deref().map(|s| s.chars().count()),
                Some(MAX_IMAGE_FIELD_CHARS)
            );
        }
        assert_eq!(info.status.as_deref(), Some("active FAKE"));
        assert_eq!(info.size, None);
        for (body, want) in [
            (
                "<html>ok</html>",
                "HTTP 200: the answer is not an image record, not taken as the image's state",
            ),
            (
                r#"{"id": "another"}"#,
                "HTTP 200: the answer describes another image, not taken as the image's state",
            ),
            (
                r#"{"id": 5}"#,
                "HTTP 200: the answer is not an image record, not taken as the image's state",
            ),
        ] {
            let err = classify_get(&answer(200, body), ID).expect_err(body);
            assert_eq!(err.kind, ErrorKind::UntrustedAnswer);
            assert_eq!(err.message, want);
            assert_eq!(err.http_status, Some(200));
        }
        let deleted = format!(r#"{{"id": "{ID}", "status": "deleted"}}"#);
        assert_eq!(
            classify_get(&answer(200, &deleted), ID),
            Ok(Lookup::NotFound)
        );
        assert_eq!(
            classify_get(&answer(204, ""), ID).map_err(|e| e.kind),
            Err(ErrorKind::Unavailable)
        );
    }

    /// A local server that writes `head` and then, when `endless`, body
    /// bytes until the client goes away.
    async fn serve_once(head: &'static str, endless: bool) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            if sock.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "z".repeat(0x4000));
            if endless {
                while sock.write_all(chunk.as_bytes()).await.is_ok() {}
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_endless_body_is_cut_at_the_limit() {
        let addr = serve_once(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-Openstack-Request-Id: req-x\r\n\r\n",
            true,
        )
        .await;
        let resp = reqwest::get(format!("http://{addr}/"))
            .await
            .expect("answer");
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            read_answer(resp, MAX_IMAGE_BODY_BYTES, Peer::ImageService),
        )
        .await
        .expect("stops at the limit")
        .expect_err("too large");
        assert_eq!(err.kind, ErrorKind::UntrustedAnswer);
        assert_eq!(
            err.message,
            "HTTP 404: the answer of the image service is larger than 64 KiB, which the operator does not read"
        );
        assert_eq!(err.request_id.as_deref(), Some("req-x"));
    }

    #[tokio::test]
    async fn a_huge_content_length_is_refused_before_reading() {
        let addr = serve_once(
            "HTTP/1.1 201 Created\r\nContent-Length: 1000000000000\r\n\r\n",
            false,
        )
        .await;
        let resp = reqwest::get(format!("http://{addr}/"))
            .await
            .expect("answer");
        let err = read_answer(resp, MAX_KEYSTONE_BODY_BYTES, Peer::Keystone)
            .await
            .expect_err("too large");
        assert_eq!(err.kind, ErrorKind::UntrustedAnswer);
        assert!(
            err.message.contains("Keystone is larger than 1024 KiB"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let addr = serve_once(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-Request-Id: r2\r\nRetry-After: 4\r\n\r\n{}",
            false,
        )
        .await;
        let resp = reqwest::get(format!("http://{addr}/"))
            .await
            .expect("answer");
        let (a, _) = read_answer(resp, 2, Peer::ImageService)
            .await
            .expect("read");
        assert_eq!(a.status, 404);
        assert_eq!(a.body, "{}");
        assert_eq!(a.request_id.as_deref(), Some("r2"));
        assert_eq!(a.retry_after, Some(Duration::from_secs(4)));
    }
}
