//! Cloud errors, classified by what the operator should do next.

use std::time::Duration;

/// What kind of failure a cloud call ended in. Decides the status reason and
/// the retry pace; never carries secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The image is protected in the cloud (Glance 403 "protected", IMS IMG.0028).
    Protected,
    /// The image is busy (Glance 409, IMS IMG.0090).
    InUse,
    /// The credentials may not delete this image (403, IMS IMG.0092/0094).
    Forbidden,
    /// Authentication failed (401 after one fresh token, or the token request refused).
    AuthFailed,
    /// The cloud says the request is wrong (400 other than the above).
    BadRequest,
    /// The cloud asked to slow down (429, IMS APIG.0308).
    Throttled,
    /// The cloud could not be reached or failed (5xx, timeout, connection error).
    Unavailable,
    /// The credentials are unusable as written (missing fields, bad URL, no
    /// image endpoint in the catalog).
    CredentialsInvalid,
}

impl ErrorKind {
    /// The bounded label used as condition reason, Event reason and log field.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorKind::Protected => "Protected",
            ErrorKind::InUse => "InUse",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::AuthFailed => "AuthFailed",
            ErrorKind::BadRequest => "BadRequest",
            ErrorKind::Throttled => "Throttled",
            ErrorKind::Unavailable => "CloudUnavailable",
            ErrorKind::CredentialsInvalid => "CredentialsInvalid",
        }
    }

    /// Whether waiting briefly is likely to help (retry fast) or a person has
    /// to act first (retry slowly).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Throttled | ErrorKind::InUse
        )
    }
}

/// A failed cloud call: its class, a message for people, and what the cloud
/// said about it. The message never contains tokens or passwords.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {message}", kind.reason())]
pub struct CloudError {
    pub kind: ErrorKind,
    pub message: String,
    pub http_status: Option<u16>,
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
}

impl CloudError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CloudError {
            kind,
            message: truncate(message.into(), 1024),
            http_status: None,
            request_id: None,
            retry_after: None,
        }
    }
}

/// Cuts a message to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Describes a transport error without its URL query or any header.
pub fn describe_transport(err: &reqwest::Error) -> String {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_decode() {
        "unreadable answer"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(err);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    let host = err
        .url()
        .map(|u| {
            format!(
                " ({}://{}{})",
                u.scheme(),
                u.host_str().unwrap_or(""),
                port_of(u)
            )
        })
        .unwrap_or_default();
    if detail.is_empty() {
        format!("{what}{host}")
    } else {
        format!("{what}{host}: {detail}")
    }
}

fn port_of(u: &url::Url) -> String {
    u.port().map(|p| format!(":{p}")).unwrap_or_default()
}
