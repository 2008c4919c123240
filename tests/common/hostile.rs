//! A HOSTILE CLOUD DOUBLE, for tests only. It plays a namespace user who
//! points the operator at an endpoint of their own (a fake Keystone or image
//! service) to crash, stall or spy through it. No real peer here misbehaves
//! on purpose, so this local HTTP server stands in for one.
//!
//! One server serves every behaviour; the first path segment picks it, so a
//! Secret selects one with `auth_url: http://127.0.0.1:PORT/<behaviour>/v3`
//! (Keystone answers) or `image_endpoint_override:
//! http://127.0.0.1:PORT/<behaviour>` (image answers).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Text the double puts in its answers; it must never reach status or Events.
pub const MARKER: &str = "HOSTILE-MARKER-7f3a";

/// What the double answers, by the first path segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A 200 whose body never ends.
    Endless,
    /// A 200 announcing a 2 GiB `Content-Length`, then a trickle.
    HugeLength,
    /// Answers after 60 s.
    Tarpit,
    /// 307 to another host.
    Redirect,
    /// 503 with an HTML page holding the marker.
    HtmlError,
    /// 404 as an ingress's default backend says it (plain text).
    IngressNotFound,
    /// 200 with a body that is not JSON (and holds the marker).
    NotJson,
    /// 200 image record with long strings (still under the operator's body
    /// cap, so they are read and must be cut), and a long request id.
    HugeRecord,
    /// A Keystone-shaped 401 echoing the request body (the password) back.
    EchoBody,
    /// 429 with Retry-After.
    Throttle,
    /// 403 with a Glance-shaped body saying forbidden.
    Forbidden,
}

impl Behaviour {
    pub const ALL: [Behaviour; 11] = [
        Behaviour::Endless,
        Behaviour::HugeLength,
        Behaviour::Tarpit,
        Behaviour::Redirect,
        Behaviour::HtmlError,
        Behaviour::IngressNotFound,
        Behaviour::NotJson,
        Behaviour::HugeRecord,
        Behaviour::EchoBody,
        Behaviour::Throttle,
        Behaviour::Forbidden,
    ];

    pub fn segment(self) -> &'static str {
        match self {
            Behaviour::Endless => "endless",
            Behaviour::HugeLength => "huge-length",
            Behaviour::Tarpit => "tarpit",
            Behaviour::Redirect => "redirect",
            Behaviour::HtmlError => "html-error",
            Behaviour::IngressNotFound => "ingress-404",
            Behaviour::NotJson => "not-json",
            Behaviour::HugeRecord => "huge-record",
            Behaviour::EchoBody => "echo-body",
            Behaviour::Throttle => "throttle",
            Behaviour::Forbidden => "forbidden",
        }
    }
}

pub struct Hostile {
    port: u16,
    /// Requests received, all behaviours together.
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hostile {
    pub async fn start() -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = serve(sock).await;
                });
            }
        });
        Hostile {
            port,
            requests,
            task,
        }
    }

    /// The base URL of a behaviour: an `image_endpoint_override`, or with
    /// `/v3` appended an `auth_url`.
    pub fn url(&self, b: Behaviour) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, b.segment())
    }
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    // Read the head, then the body by Content-Length (enough for the operator's requests).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let behaviour = Behaviour::ALL.into_iter().find(|b| b.segment() == segment);
    let Some(behaviour) = behaviour else {
        return respond(
            &mut sock,
            "404 Not Found",
            "text/plain",
            &[],
            "no such behaviour",
        )
        .await;
    };
    match behaviour {
        Behaviour::Endless => {
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await?;
            let piece = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            loop {
                sock.write_all(piece.as_bytes()).await?;
            }
        }
        Behaviour::HugeLength => {
            sock.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n{\"token\":",
            )
            .await?;
            loop {
                sock.write_all(&[b' '; 1024]).await?;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Behaviour::Tarpit => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            respond(&mut sock, "503 Service Unavailable", "text/plain", &[], "late").await
        }
        Behaviour::Redirect => {
            respond(
                &mut sock,
                "307 Temporary Redirect",
                "text/plain",
                &[("Location", "http://192.0.2.1:9999/steal")],
                MARKER,
            )
            .await
        }
        Behaviour::HtmlError => {
            let page = format!(
                "<html><head><title>{MARKER}</title></head><body><h1>Internal</h1><p>{MARKER} redis at 10.0.3.7:6379</p></body></html>"
            );
            respond(&mut sock, "503 Service Unavailable", "text/html", &[], &page).await
        }
        Behaviour::IngressNotFound => {
            respond(
                &mut sock,
                "404 Not Found",
                "text/plain",
                &[],
                &format!("default backend - 404 {MARKER}"),
            )
            .await
        }
        Behaviour::NotJson => {
            respond(
                &mut sock,
                "200 OK",
                "application/json",
                &[],
                &format!("<<{MARKER}>> this is not json"),
            )
            .await
        }
        Behaviour::HugeRecord => {
            let huge = "n".repeat(8 * 1024);
            let id = path.rsplit('/').next().unwrap_or("x");
            let record = format!(
                r#"{{"id":"{id}","name":"{huge}","status":"active","protected":false,"checksum":"{huge}","visibility":"{huge}","updated_at":"{huge}","size":1}}"#
            );
            let rid = format!("req-{}", "r".repeat(8 * 1024));
            respond(
                &mut sock,
                "200 OK",
                "application/json",
                &[("X-Openstack-Request-Id", &rid)],
                &record,
            )
            .await
        }
        Behaviour::EchoBody => {
            let echoed = body.replace('\\', "\\\\").replace('"', "'");
            let answer = format!(
                r#"{{"error": {{"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication. You sent: {echoed}"}}}}"#
            );
            respond(&mut sock, "401 Unauthorized", "application/json", &[], &answer).await
        }
        Behaviour::Throttle => {
            respond(
                &mut sock,
                "429 Too Many Requests",
                "application/json",
                &[("Retry-After", "1")],
                r#"{"message": "slow down", "code": "429 Too Many Requests", "title": "Too Many Requests"}"#,
            )
            .await
        }
        Behaviour::Forbidden => {
            respond(
                &mut sock,
                "403 Forbidden",
                "application/json",
                &[],
                r#"{"message": "You are not authorized to complete delete_image action.", "code": "403 Forbidden", "title": "Forbidden"}"#,
            )
            .await
        }
    }
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}
