//! What each answer of the image API means: a pure table from
//! (dialect, HTTP status, body) to an outcome or a classified error.
//! See `docs/cloud-api-contract.md` ("What each DELETE answer means") for each row.

use std::time::Duration;

use serde_json::Value;

use super::{CloudError, Deletion, Dialect, ErrorKind};

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
        404 => Ok(Deletion::AlreadyGone),
        _ => {
            let body = ErrorBody::parse(&answer.body);
            if dialect == Dialect::Huawei {
                // "Image does not exist / is already being deleted": confirm with GET.
                if matches!(body.code.as_deref(), Some("IMG.0027" | "IMG.0144")) {
                    return Ok(Deletion::Accepted);
                }
            }
            Err(classify_error(answer, body))
        }
    }
}

/// Maps a non-success answer of any image or identity call to an error.
pub fn classify_failure(answer: &Answer) -> CloudError {
    classify_error(answer, ErrorBody::parse(&answer.body))
}

fn classify_error(answer: &Answer, body: ErrorBody) -> CloudError {
    let code = body.code.as_deref().unwrap_or("");
    let lower = body.message.to_ascii_lowercase();
    let kind = match (answer.status, code) {
        (_, "IMG.0028") => ErrorKind::Protected,
        (_, "IMG.0092" | "IMG.0094") => ErrorKind::Forbidden,
        (_, "IMG.0090") => ErrorKind::InUse,
        (_, "APIGW.0301") => ErrorKind::AuthFailed,
        (_, "APIG.0308") => ErrorKind::Throttled,
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
    } else if body.message.is_empty() {
        format!("HTTP {}", answer.status)
    } else {
        format!("HTTP {}: {}", answer.status, body.message)
    };
    if !code.is_empty() {
        message.push_str(&format!(" ({code})"));
    }
    let mut err = CloudError::new(kind, message);
    err.http_status = Some(answer.status);
    err.request_id = answer.request_id.clone();
    err.retry_after = retry_after;
    err
}

/// An error body in any of the shapes Glance, keystonemiddleware, IMS and the
/// Huawei API gateway use, or the raw text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ErrorBody {
    pub message: String,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn parse(raw: &str) -> ErrorBody {
        let json: Option<Value> = serde_json::from_str(raw).ok();
        let found = json.as_ref().and_then(|v| {
            let text = |v: &Value| v.as_str().map(str::to_owned);
            let code = |v: &Value| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            if let Some(e) = v.get("error").filter(|e| e.is_object()) {
                // keystonemiddleware {"error": {"code": 401, ...}} or IMS {"error": {"code": "IMG.0028"}}
                let c = e
                    .get("code")
                    .and_then(code)
                    .filter(|c| !c.chars().all(|ch| ch.is_ascii_digit()));
                return Some(ErrorBody {
                    message: e.get("message").and_then(text).unwrap_or_default(),
                    code: c,
                });
            }
            if let Some(m) = v.get("error_msg").and_then(text) {
                return Some(ErrorBody {
                    message: m,
                    code: v.get("error_code").and_then(text),
                });
            }
            // Glance / WebOb: {"message": "...<br /><br />", "code": "404 Not Found", "title": ...}
            v.get("message").and_then(text).map(|m| ErrorBody {
                message: m,
                code: None,
            })
        });
        let mut body = found.unwrap_or_else(|| ErrorBody {
            message: raw.to_owned(),
            code: None,
        });
        body.message = clean_message(&body.message);
        body
    }
}

/// Strips the HTML WebOb appends and squeezes whitespace; at most 1 KiB.
fn clean_message(raw: &str) -> String {
    let cut = raw.find("<br").map(|i| &raw[..i]).unwrap_or(raw);
    let text = if cut.trim_start().starts_with('<') {
        strip_tags(cut)
    } else {
        cut.to_owned()
    };
    let squeezed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    super::error::truncate(squeezed, 1024)
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

/// Reads a response into an [`Answer`] (status, request id, Retry-After,
/// body) and hands back its headers for anything else the caller needs.
pub async fn read_answer(
    resp: reqwest::Response,
) -> Result<(Answer, reqwest::header::HeaderMap), reqwest::Error> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request_id = header("x-openstack-request-id").or_else(|| header("x-request-id"));
    let retry_after = parse_retry_after(header("retry-after").as_deref());
    let body = resp.text().await?;
    Ok((
        Answer {
            status,
            body,
            request_id,
            retry_after,
        },
        headers,
    ))
}

/// Parses `Retry-After` given in seconds (HTTP dates are not used by these clouds).
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            classify_delete(Dialect::OpenStack, &answer(404, "")),
            Ok(Deletion::AlreadyGone)
        );
        assert_eq!(
            classify_delete(Dialect::Huawei, &answer(404, "")),
            Ok(Deletion::AlreadyGone)
        );
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
                r#"{"message": "You are not authorized"}"#
            ),
            ErrorKind::Forbidden
        );
        assert_eq!(kind(Dialect::OpenStack, 409, ""), ErrorKind::InUse);
        assert_eq!(
            kind(
                Dialect::OpenStack,
                400,
                r#"{"message": "A body is not expected with this request."}"#
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

    #[test]
    fn ims_codes_are_classified_by_what_to_do() {
        let ims = |code: &str| format!(r#"{{"error": {{"message": "m", "code": "{code}"}}}}"#);
        assert_eq!(
            kind(Dialect::Huawei, 400, &ims("IMG.0028")),
            ErrorKind::Protected
        );
        assert_eq!(
            kind(Dialect::Huawei, 400, &ims("IMG.0092")),
            ErrorKind::Forbidden
        );
        assert_eq!(
            kind(Dialect::Huawei, 400, &ims("IMG.0094")),
            ErrorKind::Forbidden
        );
        assert_eq!(
            kind(Dialect::Huawei, 400, &ims("IMG.0090")),
            ErrorKind::InUse
        );
        assert_eq!(
            kind(Dialect::Huawei, 400, &ims("IMG.0001")),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(
                Dialect::Huawei,
                401,
                r#"{"error_msg": "bad token", "error_code": "APIGW.0301"}"#
            ),
            ErrorKind::AuthFailed
        );
        assert_eq!(
            classify_delete(Dialect::Huawei, &answer(400, &ims("IMG.0027"))),
            Ok(Deletion::Accepted)
        );
        assert_eq!(
            classify_delete(Dialect::Huawei, &answer(400, &ims("IMG.0144"))),
            Ok(Deletion::Accepted)
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

    #[test]
    fn html_and_huge_bodies_are_cut_down() {
        let body = ErrorBody::parse("<html><body><h1>414 Request-URI Too Large</h1></body></html>");
        assert_eq!(body.message, "414 Request-URI Too Large");
        let long = "x".repeat(5000);
        assert!(ErrorBody::parse(&long).message.len() <= 1024 + '…'.len_utf8());
    }
}
