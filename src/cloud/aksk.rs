//! Huawei Cloud AK/SK request signing (`SDK-HMAC-SHA256`), as Huawei's API
//! gateway checks it: a canonical form of the request, hashed, signed with
//! HMAC-SHA256 under the secret key. Pure functions; `client.rs` puts the
//! headers on the wire. See `docs/cloud-api-contract.md` ("Huawei AK/SK").
//!
//! The signature and the secret key never leave this module except inside
//! the `Authorization` header: [`Signed`]'s `Debug` shows neither.

use std::fmt;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::clouds_yaml::AkSk;

/// The signing algorithm's name, first word of the `Authorization` header.
pub const ALGORITHM: &str = "SDK-HMAC-SHA256";
/// `X-Sdk-Date`'s format: UTC, `YYYYMMDDTHHMMSSZ`.
pub const DATE_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// Everything but `A-Z a-z 0-9 - _ . ~` is percent-encoded (upper-case hex).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &str) -> String {
    utf8_percent_encode(s, ENCODE).to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of `bytes` (of the empty body:
/// `e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The canonical URI: each path segment decoded, then encoded again with
/// the strict set, joined by `/`, always ending in `/` (even though the
/// request itself has none).
pub fn canonical_uri(path: &str) -> String {
    let mut out = path
        .split('/')
        .map(|seg| encode(&percent_decode_str(seg).decode_utf8_lossy()))
        .collect::<Vec<_>>()
        .join("/");
    if !out.ends_with('/') {
        out.push('/');
    }
    out
}

/// The canonical query: pairs sorted by key, then by value, each encoded
/// with the strict set, `k=v` joined by `&`; empty without a query.
pub fn canonical_query(url: &url::Url) -> String {
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the `Host` header for `url`: the host, and the port when it
/// is not the scheme's default. The operator sends exactly this value, so
/// what is signed is what goes over the wire.
pub fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// The signed-headers list and the canonical headers block: names
/// lower-cased and sorted, `name:trimmed-value\n` each.
fn canonical_headers(headers: &[(&str, &str)]) -> (String, String) {
    let mut h: Vec<(String, &str)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim()))
        .collect();
    h.sort();
    let names = h
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let block = h.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    (names, block)
}

/// The canonical request:
/// `METHOD\nURI\nQUERY\nHEADERS\nSIGNED_HEADERS\nhex(sha256(body))`, where
/// HEADERS already ends in a newline. Returns it with the signed-headers list.
pub fn canonical_request(
    method: &str,
    url: &url::Url,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (String, String) {
    let (signed, block) = canonical_headers(headers);
    let request = format!(
        "{method}\n{}\n{}\n{block}\n{signed}\n{}",
        canonical_uri(url.path()),
        canonical_query(url),
        sha256_hex(body)
    );
    (request, signed)
}

/// `SDK-HMAC-SHA256\n{X-Sdk-Date}\n{hex sha256 of the canonical request}`.
pub fn string_to_sign(sdk_date: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{sdk_date}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Hex HMAC-SHA256 of `string_to_sign` under the raw secret key.
pub fn signature(secret_key: &str, string_to_sign: &str) -> String {
    // HMAC takes a key of any length: `new_from_slice` cannot fail here.
    match <Hmac<Sha256> as Mac>::new_from_slice(secret_key.as_bytes()) {
        Ok(mut mac) => {
            mac.update(string_to_sign.as_bytes());
            hex(&mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

/// The headers of one signed request, to send as they are. `Debug` shows
/// the header names only.
#[derive(Clone, PartialEq, Eq)]
pub struct Signed {
    /// `(name, value)` to add: `Host`, `X-Sdk-Date`, `X-Project-Id` and
    /// `X-Security-Token` when used, and `Authorization`.
    pub headers: Vec<(&'static str, String)>,
    /// The hex signature, kept only to scrub it from any answer.
    pub signature: String,
    /// The signed header names, `;`-separated (for logs: no secret in it).
    pub signed_headers: String,
}

impl fmt::Debug for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signed_headers", &self.signed_headers)
            .field("signature", &"<redacted>")
            .finish()
    }
}

/// Signs a request to `url` at `now`: `content_type` is signed when the
/// request has one, and so are `x-project-id` and `x-security-token` when
/// the keys carry them; `host` and `x-sdk-date` always.
pub fn sign(
    keys: &AkSk,
    method: &str,
    url: &url::Url,
    content_type: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Signed {
    let date = now.format(DATE_FORMAT).to_string();
    let host = host_header(url);
    let mut signed: Vec<(&'static str, &str)> = vec![("host", &host), ("x-sdk-date", &date)];
    if let Some(ct) = content_type {
        signed.push(("content-type", ct));
    }
    if let Some(p) = &keys.project_id {
        signed.push(("x-project-id", p));
    }
    if let Some(t) = &keys.security_token {
        signed.push(("x-security-token", t));
    }
    let (request, signed_headers) = canonical_request(method, url, &signed, body);
    let sig = signature(&keys.secret_key, &string_to_sign(&date, &request));
    let mut headers: Vec<(&'static str, String)> =
        vec![("Host", host.clone()), ("X-Sdk-Date", date.clone())];
    if let Some(p) = &keys.project_id {
        headers.push(("X-Project-Id", p.clone()));
    }
    if let Some(t) = &keys.security_token {
        headers.push(("X-Security-Token", t.clone()));
    }
    headers.push((
        "Authorization",
        format!(
            "{ALGORITHM} Access={}, SignedHeaders={signed_headers}, Signature={sig}",
            keys.access_key
        ),
    ));
    Signed {
        headers,
        signature: sig,
        signed_headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(u: &str) -> url::Url {
        url::Url::parse(u).expect("url")
    }

    fn sig(
        sk: &str,
        method: &str,
        u: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        date: &str,
    ) -> String {
        let (request, _) = canonical_request(method, &url(u), headers, body);
        signature(sk, &string_to_sign(date, &request))
    }

    /// The published vectors (Huawei's Go SDK; `docs/cloud-api-contract.md`).
    #[test]
    fn the_published_vectors_are_reproduced() {
        let date = "20060102T150405Z";
        assert_eq!(
            sig(
                "SecretKey",
                "GET",
                "https://example.huaweicloud.com/path?limit=1",
                &[("X-Sdk-Date", date)],
                b"",
                date
            ),
            "5a2ce64c865e0e6046321c6f3d5a77ba8413eeaf355c3166c03d58d02ac79624"
        );
        assert_eq!(
            sig(
                "SecretKey",
                "POST",
                "https://example.huaweicloud.com/path?key=value",
                &[("X-Sdk-Date", date)],
                b"{\"Name\":\"test\",\"Id\":1}\n",
                date
            ),
            "cecc2af119b18ab70b4d094c0750f3b42c02f254903179a0fc2cc72fc9db4f59"
        );
        let date = "20191115T033655Z";
        let (request, signed) = canonical_request(
            "GET",
            &url(
                "https://service.region.example.com/v1/77b6a44cba5143ab91d13ab9a8ff44fd/vpcs?marker=13551d6b-755d-4757-b956-536f674975c0&limit=2",
            ),
            &[
                ("X-Sdk-Date", date),
                ("Host", "service.region.example.com"),
                ("Content-Type", "application/json"),
            ],
            b"",
        );
        assert_eq!(signed, "content-type;host;x-sdk-date");
        assert_eq!(
            signature(
                "MFyfvK41ba2giqM7Uio6PznpdUKGpownRZlmVmHc",
                &string_to_sign(date, &request)
            ),
            "7be6668032f70418fcc22abc52071e57aff61b84a1d2381bb430d6870f4f6ebe"
        );
    }

    #[test]
    fn the_canonical_request_has_every_part_in_order() {
        let (request, signed) = canonical_request(
            "DELETE",
            &url("https://ims.ap-southeast-1.myhuaweicloud.com/v2/images/abc"),
            &[
                ("X-Sdk-Date", "20260101T000000Z"),
                ("host", " ims.ap-southeast-1.myhuaweicloud.com "),
            ],
            b"",
        );
        assert_eq!(signed, "host;x-sdk-date");
        assert_eq!(
            request,
            "DELETE\n/v2/images/abc/\n\nhost:ims.ap-southeast-1.myhuaweicloud.com\nx-sdk-date:20260101T000000Z\n\nhost;x-sdk-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_canonical_uri_always_ends_in_a_slash_and_encodes_each_segment() {
        for (path, want) in [
            ("", "/"),
            ("/", "/"),
            ("/v2/images/x", "/v2/images/x/"),
            ("/v2/images/x/", "/v2/images/x/"),
            ("/a%20b/c", "/a%20b/c/"),
            ("/a b/~x_y-z.", "/a%20b/~x_y-z./"),
            ("/%e4%b8%ad", "/%E4%B8%AD/"),
            ("/a+b/c=d/e*f", "/a%2Bb/c%3Dd/e%2Af/"),
            ("/a%2Fb", "/a%2Fb/"),
        ] {
            assert_eq!(canonical_uri(path), want, "{path}");
        }
    }

    #[test]
    fn the_canonical_query_is_sorted_and_encoded() {
        for (u, want) in [
            ("https://h/p", ""),
            ("https://h/p?b=2&a=1", "a=1&b=2"),
            ("https://h/p?a=2&a=1", "a=1&a=2"),
            ("https://h/p?k=a%20b&x=%7E", "k=a%20b&x=~"),
            ("https://h/p?flag", "flag="),
            ("https://h/p?z=1&Z=2", "Z=2&z=1"),
        ] {
            assert_eq!(canonical_query(&url(u)), want, "{u}");
        }
    }

    #[test]
    fn the_empty_body_hash_is_sha256_of_nothing() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(br#"{"delete_backup":false}"#),
            hex(&Sha256::digest(br#"{"delete_backup":false}"#))
        );
    }

    #[test]
    fn the_host_header_has_the_port_only_when_it_is_not_the_default() {
        assert_eq!(host_header(&url("https://ims.x.com/v2")), "ims.x.com");
        assert_eq!(host_header(&url("https://ims.x.com:443/v2")), "ims.x.com");
        assert_eq!(
            host_header(&url("http://127.0.0.1:8080/v2")),
            "127.0.0.1:8080"
        );
        assert_eq!(host_header(&url("http://[::1]:81/")), "[::1]:81");
    }

    fn keys(token: Option<&str>) -> AkSk {
        AkSk {
            access_key: "AccessKey".into(),
            secret_key: "SecretKey".into(),
            project_id: Some("0123456789abcdef".into()),
            security_token: token.map(str::to_owned),
        }
    }

    #[test]
    fn a_signed_delete_signs_host_date_content_type_project_and_token() {
        let now = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .expect("date")
            .with_timezone(&Utc);
        let u = url("https://ims.ap-southeast-1.myhuaweicloud.com/v2/images/4ca46bf1");
        let body = br#"{"delete_backup":true}"#;
        let s = sign(
            &keys(Some("tmp-token")),
            "DELETE",
            &u,
            Some("application/json"),
            body,
            now,
        );
        assert_eq!(
            s.signed_headers,
            "content-type;host;x-project-id;x-sdk-date;x-security-token"
        );
        let header = |n: &str| {
            s.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("X-Sdk-Date").as_deref(), Some("20260304T050607Z"));
        assert_eq!(
            header("Host").as_deref(),
            Some("ims.ap-southeast-1.myhuaweicloud.com")
        );
        assert_eq!(header("X-Security-Token").as_deref(), Some("tmp-token"));
        assert_eq!(header("X-Project-Id").as_deref(), Some("0123456789abcdef"));
        // The same signature, computed from the parts by hand.
        let (request, _) = canonical_request(
            "DELETE",
            &u,
            &[
                ("content-type", "application/json"),
                ("host", "ims.ap-southeast-1.myhuaweicloud.com"),
                ("x-project-id", "0123456789abcdef"),
                ("x-sdk-date", "20260304T050607Z"),
                ("x-security-token", "tmp-token"),
            ],
            body,
        );
        let want = signature("SecretKey", &string_to_sign("20260304T050607Z", &request));
        assert_eq!(s.signature, want);
        assert_eq!(
            header("Authorization"),
            Some(format!(
                "SDK-HMAC-SHA256 Access=AccessKey, SignedHeaders=content-type;host;x-project-id;x-sdk-date;x-security-token, Signature={want}"
            ))
        );
        // Without a body, no content-type; without a token, no token header.
        let g = sign(&keys(None), "GET", &u, None, b"", now);
        assert_eq!(g.signed_headers, "host;x-project-id;x-sdk-date");
        assert!(!g.headers.iter().any(|(k, _)| *k == "X-Security-Token"));
        assert_ne!(g.signature, s.signature);
    }

    #[test]
    fn debug_never_shows_the_signature_or_the_secret_key() {
        let now = Utc::now();
        let s = sign(
            &keys(Some("tmp-token-value")),
            "GET",
            &url("https://h/v2/images/x"),
            None,
            b"",
            now,
        );
        let printed = format!("{s:?} {:?}", keys(Some("tmp-token-value")));
        assert!(!printed.contains(&s.signature), "{printed}");
        assert!(!printed.contains("SecretKey"), "{printed}");
        assert!(!printed.contains("tmp-token-value"), "{printed}");
    }
}
