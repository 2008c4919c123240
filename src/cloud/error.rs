//! Cloud errors, classified by what the operator should do next, and the
//! limits on any text taken from the cloud.

use std::time::Duration;

/// At most this many characters of an image record's string fields (`id`,
/// `name`, `status`, `checksum`, `visibility`, `updated_at`) are kept.
pub const MAX_IMAGE_FIELD_CHARS: usize = 256;
/// At most this many characters of a request id (`X-Openstack-Request-Id`).
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// At most this many characters of an error code from the cloud (`IMG.0028`).
pub const MAX_ERROR_CODE_CHARS: usize = 64;
/// At most this many characters of an error message the cloud wrote.
pub const MAX_CLOUD_MESSAGE_CHARS: usize = 512;
/// At most this many characters of a [`CloudError`]'s whole message (the
/// operator's words around the cloud's message included).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1024;

/// What kind of failure a cloud call ended in. Decides the status reason and
/// the retry pace; never carries secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The image is protected in the cloud (Glance 403 "protected", IMS IMG.0028).
    Protected,
    /// The image is busy (Glance 409, IMS IMG.0090/0148).
    InUse,
    /// The credentials may not delete this image (403, IMS IMG.0092/0047/0106/0094/0026).
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
    /// or several image endpoints in the catalog, an address the egress
    /// policy refuses, an insecure connection the policy refuses).
    CredentialsInvalid,
    /// The cloud answered something this operator does not trust: a body
    /// larger than the limit, a 404 that is not the image service's own
    /// "not found", an image record that is not one.
    UntrustedAnswer,
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
            ErrorKind::UntrustedAnswer => "UntrustedAnswer",
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

    /// Every kind, for tests that check a mapping is complete.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Protected,
        ErrorKind::InUse,
        ErrorKind::Forbidden,
        ErrorKind::AuthFailed,
        ErrorKind::BadRequest,
        ErrorKind::Throttled,
        ErrorKind::Unavailable,
        ErrorKind::CredentialsInvalid,
        ErrorKind::UntrustedAnswer,
    ];
}

/// A failed cloud call: its class, a message for people, and what the cloud
/// said about it. The message never contains tokens, passwords, secret
/// keys or signatures, nor any address the operator connected to (an
/// untrusted TLS certificate names the configured host, see
/// [`transport_error`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {message}", kind.reason())]
pub struct CloudError {
    pub kind: ErrorKind,
    /// At most [`MAX_ERROR_MESSAGE_CHARS`] characters.
    pub message: String,
    pub http_status: Option<u16>,
    /// At most [`MAX_REQUEST_ID_CHARS`] characters.
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
}

impl CloudError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CloudError {
            kind,
            message: truncate_chars(&message.into(), MAX_ERROR_MESSAGE_CHARS),
            http_status: None,
            request_id: None,
            retry_after: None,
        }
    }

    /// Replaces every occurrence of each secret (4 bytes or longer) in the
    /// message and request id with `<redacted>`. Shorter strings would
    /// garble every message and are not secret enough to look for.
    pub fn redact(mut self, secrets: &[&str]) -> Self {
        self.message = truncate_chars(&redact(&self.message, secrets), MAX_ERROR_MESSAGE_CHARS);
        self.request_id = self
            .request_id
            .map(|r| truncate_chars(&redact(&r, secrets), MAX_REQUEST_ID_CHARS));
        self
    }
}

/// Replaces every occurrence of each secret (4 bytes or longer) with `<redacted>`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if s.len() >= 4 && out.contains(s) {
            out = out.replace(s, "<redacted>");
        }
    }
    out
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

/// Cuts text to at most `max` characters, the last of them `…` when cut.
/// Control characters (newlines, escapes) become spaces, so the text is
/// safe for one log line and fits a CRD field with `maxLength: max`.
pub fn truncate_chars(s: &str, max: usize) -> String {
    let clean = |c: char| if c.is_control() { ' ' } else { c };
    if s.chars().count() <= max {
        return s.chars().map(clean).collect();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).map(clean).collect();
    if max > 0 {
        out.push('…');
    }
    out
}

/// Which peer a request went to, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Keystone,
    ImageService,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Keystone => "Keystone",
            Peer::ImageService => "the image service",
        }
    }
}

/// Marks a connection the egress policy refused (see `egress.rs`); found in
/// a transport error's source chain.
#[derive(Debug)]
pub struct EgressRefused;

impl std::fmt::Display for EgressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused by the egress policy")
    }
}

impl std::error::Error for EgressRefused {}

/// The error for an address the egress policy refuses. It never names the
/// address, nor what a host name resolved to.
pub fn egress_refused(peer: Peer) -> CloudError {
    CloudError::new(
        ErrorKind::CredentialsInvalid,
        format!(
            "the operator may not call this {} address (egress policy)",
            match peer {
                Peer::Keystone => "Keystone",
                Peer::ImageService => "image service",
            }
        ),
    )
}

/// Describes a failed exchange in fixed words: never an address, a port, a
/// URL, a header, nor text from the peer or the TLS library (which can
/// quote host names). The one exception is a certificate the operator does
/// not trust: that message names the host as configured (from the URL, not
/// a resolved address, no port), since the fix is about that host's
/// certificate. A connection the egress policy refused is
/// `CredentialsInvalid`; anything else `Unavailable`.
pub fn transport_error(peer: Peer, err: &reqwest::Error) -> CloudError {
    let mut refused_by_policy = false;
    let mut io_kind = None;
    let mut texts = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.downcast_ref::<EgressRefused>().is_some() {
            refused_by_policy = true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        texts.push(s.to_string().to_ascii_lowercase());
        source = s.source();
    }
    if refused_by_policy {
        return egress_refused(peer);
    }
    let text = texts.join(" | ");
    let who = peer.name();
    let message = if err.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        format!("{who} did not answer in time (timeout)")
    } else if err.is_connect() || err.is_request() {
        let why = match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused",
            Some(std::io::ErrorKind::ConnectionReset) => "connection reset",
            _ if text.contains("dns error") || text.contains("lookup address") => {
                "host name not resolved"
            }
            _ if text.contains("certificate") => {
                return CloudError::new(
                    ErrorKind::Unavailable,
                    untrusted_certificate(peer, err, &text),
                );
            }
            _ if text.contains("tls") || text.contains("handshake") || text.contains("rustls") => {
                "TLS handshake failed"
            }
            _ if err.is_connect() => "connection failed",
            _ => "request failed",
        };
        format!("could not connect to {who} ({why})")
    } else if err.is_body() || err.is_decode() {
        format!("the answer of {who} was cut off or unreadable")
    } else {
        format!("the request to {who} failed")
    };
    CloudError::new(ErrorKind::Unavailable, message)
}

/// "could not connect to Keystone at keystone.example (TLS certificate not
/// trusted: ...)": the host from the request's URL, cut to 253 characters,
/// and why, in fixed words.
fn untrusted_certificate(peer: Peer, err: &reqwest::Error, text: &str) -> String {
    let why = if text.contains("unknownissuer") || text.contains("unknown issuer") {
        "issued by a CA the operator does not know; put that CA's PEM certificate in the Secret's `cacert` key"
    } else if text.contains("notvalidforname") || text.contains("not valid for name") {
        "it is not valid for this host name"
    } else if text.contains("expired") {
        "it has expired"
    } else if text.contains("notvalidyet") || text.contains("not valid yet") {
        "it is not valid yet"
    } else {
        "set cacert, or check the host name"
    };
    let at = err
        .url()
        .and_then(|u| u.host_str())
        .map(|h| format!(" at {}", truncate_chars(h, 253)))
        .unwrap_or_default();
    format!(
        "could not connect to {}{at} (TLS certificate not trusted: {why})",
        peer.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_reason() {
        let mut reasons: Vec<_> = ErrorKind::ALL.iter().map(|k| k.reason()).collect();
        reasons.sort();
        reasons.dedup();
        assert_eq!(reasons.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::UntrustedAnswer.reason(), "UntrustedAnswer");
        assert!(!ErrorKind::UntrustedAnswer.is_transient());
    }

    #[test]
    fn truncation_counts_characters_and_cleans_controls() {
        for (input, max, want) in [
            ("short", 10, "short"),
            ("exactly10!", 10, "exactly10!"),
            ("eleven chars", 10, "eleven ch…"),
            ("ééééé", 3, "éé…"),
            ("a\nb\u{1b}[31mc", 20, "a b [31mc"),
            ("anything", 0, ""),
        ] {
            let got = truncate_chars(input, max);
            assert_eq!(got, want, "{input:?} cut to {max}");
            assert!(got.chars().count() <= max);
        }
    }

    #[test]
    fn redaction_replaces_secrets_of_four_bytes_or_more() {
        let e = CloudError::new(
            ErrorKind::AuthFailed,
            "HTTP 401: token gAAAA-tok and pw s3cret, x",
        )
        .redact(&["gAAAA-tok", "s3cret", "x", ""]);
        assert_eq!(e.message, "HTTP 401: token <redacted> and pw <redacted>, x");
    }

    #[test]
    fn messages_are_limited() {
        let e = CloudError::new(ErrorKind::Unavailable, "y".repeat(5000));
        assert_eq!(e.message.chars().count(), MAX_ERROR_MESSAGE_CHARS);
    }
}
