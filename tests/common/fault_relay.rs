//! A fault relay: a TEST DOUBLE that stands between the operator and the
//! real Keystone or Glance and, at a configurable rate, answers in their
//! place with the faults a real network and a real cloud produce. Used by
//! `tests/chaos.rs`.
//!
//! Every request that draws no fault goes to the real peer, and its real
//! answer comes back unchanged. A drawn fault is one of [`Fault`]: a 5xx
//! answer made up here, a connection reset before the request reaches the
//! peer, a reset after the peer answered (the answer is lost: a DELETE that
//! happened without the client knowing), no answer at all until the client
//! gives up, the real answer sent back slowly, or a 404 that is not the
//! image service's own (an ingress's default backend). [`FaultRelay::cut`]
//! makes the peer unreachable (the port refuses connections, open ones are
//! dropped) until [`FaultRelay::restore`]. With
//! [`FaultConfig::max_in_flight`] it also acts as a rate-limiting proxy:
//! requests beyond that many in flight are answered 429. Used by
//! `tests/pacing.rs` too: the test Glance never throttles.
//!
//! Each connection carries one request: the relay asks the peer for
//! `Connection: close`, so the client opens a new connection per request
//! and every request is a separate draw. Draws come from a seeded RNG in
//! the order requests arrive: the same seed gives the same sequence of
//! draws, though which request meets which draw depends on timing.
//!
//! The relay also records the tokens it sees (`X-Subject-Token` in
//! Keystone's answers, `X-Auth-Token` in requests), so a test can check
//! that none of them reaches a log, a status or an Event.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What the relay does instead of relaying faithfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A 500, 502, 503 or 504 made up by the relay, in the peer's error
    /// shape or as an HTML page; the request never reaches the peer.
    ServerError,
    /// The connection is reset (RST) before the request reaches the peer.
    ResetBeforeForward,
    /// The request reaches the peer and is carried out; its answer is
    /// dropped and the connection reset.
    LostAnswer,
    /// No answer: the connection stays open, silent, until the client
    /// gives up (or [`FaultConfig::hold`] passes).
    Timeout,
    /// The real answer, with its body sent a few bytes at a time.
    SlowBody,
    /// A 404 that is not the peer's own (an ingress default backend).
    ForeignNotFound,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::ServerError,
        Fault::ResetBeforeForward,
        Fault::LostAnswer,
        Fault::Timeout,
        Fault::SlowBody,
        Fault::ForeignNotFound,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::ServerError => "5xx",
            Fault::ResetBeforeForward => "reset",
            Fault::LostAnswer => "lost-answer",
            Fault::Timeout => "timeout",
            Fault::SlowBody => "slow-body",
            Fault::ForeignNotFound => "foreign-404",
        }
    }

    fn index(self) -> usize {
        Fault::ALL
            .iter()
            .position(|f| *f == self)
            .expect("a listed fault")
    }
}

/// Which peer's error shape a made-up 5xx takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Keystone,
    Glance,
}

/// How often and how the relay misbehaves.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// The share of requests that draw a fault, 0.0 to 1.0.
    pub rate: f64,
    /// Relative weights of the faults, in the order of [`Fault::ALL`].
    pub weights: [u32; 6],
    /// How long a [`Fault::Timeout`] keeps the client waiting at most
    /// (longer than the operator's request timeouts, so it gives up first).
    pub hold: Duration,
    /// The longest a [`Fault::SlowBody`] takes to send its body.
    pub slow_max: Duration,
    /// Answer 429 (a Glance-shaped "Too Many Requests", as a rate-limiting
    /// proxy in front of a cloud does) to requests beyond this many in flight.
    pub max_in_flight: Option<u64>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            rate: 0.30,
            // 5xx, reset, lost answer, timeout, slow body, foreign 404.
            weights: [35, 20, 10, 3, 22, 10],
            hold: Duration::from_secs(35),
            slow_max: Duration::from_secs(3),
            max_in_flight: None,
        }
    }
}

/// What the relay did, for the test's report.
#[derive(Clone, Debug, Default)]
pub struct RelayCounts {
    /// Requests read from clients (a request cut off while being read is not counted).
    pub requests: u64,
    /// Requests relayed to the peer with their answer sent back whole.
    pub relayed: u64,
    /// Per fault, in the order of [`Fault::ALL`].
    pub faults: [u64; 6],
    /// Connections the relay could not open to the peer.
    pub peer_unreachable: u64,
    /// Requests answered 429 because too many were in flight.
    pub throttled: u64,
}

impl RelayCounts {
    pub fn total_faults(&self) -> u64 {
        self.faults.iter().sum()
    }

    /// `5xx=12 reset=3 ...`.
    pub fn describe(&self) -> String {
        let faults = Fault::ALL
            .iter()
            .map(|f| format!("{}={}", f.name(), self.faults[f.index()]))
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "requests={} relayed={} faults={} ({faults}) peer-unreachable={}",
            self.requests,
            self.relayed,
            self.total_faults(),
            self.peer_unreachable
        )
    }
}

struct Shared {
    peer: Peer,
    target: SocketAddr,
    rng: Mutex<ChaCha8Rng>,
    /// The fault rate in parts per million (changed while running).
    rate_ppm: AtomicU32,
    weights: [u32; 6],
    hold: Duration,
    slow_max: Duration,
    requests: AtomicU64,
    relayed: AtomicU64,
    faults: [AtomicU64; 6],
    peer_unreachable: AtomicU64,
    tokens: Mutex<BTreeSet<String>>,
    max_in_flight: Option<u64>,
    in_flight: AtomicU64,
    throttled: AtomicU64,
}

impl Shared {
    /// The fault for the next request, if any, and the numbers a fault
    /// needs (a status, a duration), all from the seeded RNG.
    fn draw(&self) -> (Option<Fault>, u64) {
        let mut rng = self.rng.lock().expect("rng");
        let roll: u32 = rng.random_range(0..1_000_000);
        let extra: u64 = rng.random();
        if roll >= self.rate_ppm.load(Ordering::SeqCst) {
            return (None, extra);
        }
        let total: u32 = self.weights.iter().sum();
        if total == 0 {
            return (None, extra);
        }
        let mut pick = rng.random_range(0..total);
        for (f, w) in Fault::ALL.iter().zip(self.weights) {
            if pick < w {
                return (Some(*f), extra);
            }
            pick -= w;
        }
        (None, extra)
    }

    fn count(&self, f: Fault) {
        self.faults[f.index()].fetch_add(1, Ordering::SeqCst);
    }

    fn remember_token(&self, token: &str) {
        let token = token.trim();
        if token.len() >= 8 {
            self.tokens.lock().expect("tokens").insert(token.to_owned());
        }
    }
}

/// A fault-injecting HTTP relay on a loopback port (see the module docs).
pub struct FaultRelay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        if let Some(h) = self.accept.lock().expect("accept").take() {
            h.abort();
        }
    }
}

impl FaultRelay {
    /// Relays a fresh loopback port to `target` (`host:port`), drawing
    /// faults with `config` from an RNG seeded with `seed`.
    pub async fn start(peer: Peer, target: &str, seed: u64, config: &FaultConfig) -> FaultRelay {
        let target = tokio::net::lookup_host(target)
            .await
            .expect("target")
            .next()
            .expect("an address");
        let shared = Arc::new(Shared {
            peer,
            target,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            rate_ppm: AtomicU32::new(rate_ppm(config.rate)),
            weights: config.weights,
            hold: config.hold,
            slow_max: config.slow_max,
            requests: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            faults: Default::default(),
            peer_unreachable: AtomicU64::new(0),
            tokens: Mutex::new(BTreeSet::new()),
            max_in_flight: config.max_in_flight,
            in_flight: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = FaultRelay {
            addr,
            shared,
            accept: Mutex::new(None),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let shared = self.shared.clone();
        let handle = tokio::spawn(async move {
            // Dropped with this task (by `cut`): every open connection goes too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(handle_connection(inbound, shared.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        if let Some(old) = self.accept.lock().expect("accept").replace(handle) {
            old.abort();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the share of requests that draw a fault (0.0 = none).
    pub fn set_rate(&self, rate: f64) {
        self.shared.rate_ppm.store(rate_ppm(rate), Ordering::SeqCst);
    }

    /// The peer "goes down": the port refuses connections, open ones are cut.
    pub async fn cut(&self) {
        let handle = self.accept.lock().expect("accept").take();
        if let Some(h) = handle {
            h.abort();
            let _ = h.await;
        }
    }

    /// Whether the relay is cut.
    pub fn is_cut(&self) -> bool {
        self.accept.lock().expect("accept").is_none()
    }

    /// The peer "comes back" on the same port (a no-op if it is not cut).
    pub async fn restore(&self) {
        if !self.is_cut() {
            return;
        }
        let mut last = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.serve(listener);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot rebind the fault relay on {}: {last:?}", self.addr);
    }

    pub fn counts(&self) -> RelayCounts {
        let s = &self.shared;
        let mut faults = [0; 6];
        for (i, f) in s.faults.iter().enumerate() {
            faults[i] = f.load(Ordering::SeqCst);
        }
        RelayCounts {
            requests: s.requests.load(Ordering::SeqCst),
            relayed: s.relayed.load(Ordering::SeqCst),
            faults,
            peer_unreachable: s.peer_unreachable.load(Ordering::SeqCst),
            throttled: s.throttled.load(Ordering::SeqCst),
        }
    }

    /// Every token seen so far (Keystone's `X-Subject-Token`, clients' `X-Auth-Token`).
    pub fn tokens(&self) -> BTreeSet<String> {
        self.shared.tokens.lock().expect("tokens").clone()
    }
}

fn rate_ppm(rate: f64) -> u32 {
    (rate.clamp(0.0, 1.0) * 1_000_000.0).round() as u32
}

/// The largest request or answer the relay handles (the operator's are a
/// few KiB; a Keystone token with its catalog a few tens).
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Reads up to the end of an HTTP head; returns the head (with its blank
/// line) and whatever was read past it.
async fn read_head(sock: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = tokio::time::timeout(Duration::from_secs(60), sock.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of the first header `name` (case-insensitive) in a head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn with_connection_close(head: &str) -> String {
    let mut lines: Vec<&str> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        })
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n"))
}

/// Resets the connection: RST, not FIN.
fn reset(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

/// Counts a request in flight until dropped; `.0` is the count with it.
struct InFlight<'a>(u64, &'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> InFlight<'a> {
        InFlight(shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1, shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.1.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle_connection(mut client: TcpStream, shared: Arc<Shared>) {
    let Some((head, mut body)) = read_head(&mut client).await else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    if let Some(t) = header(&head, "x-auth-token") {
        shared.remember_token(t);
    }
    let chunked = header(&head, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if chunked || length > MAX_MESSAGE_BYTES {
        // Not what the operator sends; relayed as it is, without faults.
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let Ok(mut upstream) = TcpStream::connect(shared.target).await else {
            shared.peer_unreachable.fetch_add(1, Ordering::SeqCst);
            return;
        };
        if upstream.write_all(head.as_bytes()).await.is_ok()
            && upstream.write_all(&body).await.is_ok()
        {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        return;
    }
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        let n = match tokio::time::timeout(Duration::from_secs(60), client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    shared.requests.fetch_add(1, Ordering::SeqCst);

    let in_flight = InFlight::enter(&shared);
    if shared.max_in_flight.is_some_and(|max| in_flight.0 > max) {
        shared.throttled.fetch_add(1, Ordering::SeqCst);
        let body =
            r#"{"code": 429, "title": "Too Many Requests", "message": "Rate limit exceeded."}"#;
        let answer = format!(
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = client.write_all(answer.as_bytes()).await;
        let _ = client.shutdown().await;
        return;
    }
    let (fault, extra) = shared.draw();
    if let Some(f) = fault {
        shared.count(f);
    }
    match fault {
        Some(Fault::ServerError) => {
            let _ = client.write_all(&server_error(shared.peer, extra)).await;
            let _ = client.shutdown().await;
        }
        Some(Fault::ForeignNotFound) => {
            let body = "default backend - 404";
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(answer.as_bytes()).await;
            let _ = client.shutdown().await;
        }
        Some(Fault::ResetBeforeForward) => reset(client),
        Some(Fault::Timeout) => {
            // Silent until the client gives up (EOF) or the hold ends.
            let _ = tokio::time::timeout(shared.hold, async {
                loop {
                    match client.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        Some(Fault::LostAnswer) => {
            if forward(&shared, &head, &body).await.is_some() {
                reset(client);
            }
        }
        Some(Fault::SlowBody) => {
            let Some(answer) = forward(&shared, &head, &body).await else {
                return;
            };
            let split = find(&answer, b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
            if client.write_all(&answer[..split]).await.is_err() {
                return;
            }
            let rest = &answer[split..];
            let total_ms = extra % (shared.slow_max.as_millis() as u64).max(1);
            let pieces = rest.len().clamp(1, 20);
            let step = rest.len().div_ceil(pieces).max(1);
            let pause = Duration::from_millis(total_ms / pieces as u64);
            for piece in rest.chunks(step) {
                tokio::time::sleep(pause).await;
                if client.write_all(piece).await.is_err() {
                    return;
                }
            }
            let _ = client.shutdown().await;
        }
        None => {
            let Some(answer) = forward(&shared, &head, &body).await else {
                return;
            };
            shared.relayed.fetch_add(1, Ordering::SeqCst);
            let _ = client.write_all(&answer).await;
            let _ = client.shutdown().await;
        }
    }
}

/// Sends the request to the peer with `Connection: close` and reads its
/// whole answer (up to EOF). `None` when the peer cannot be reached; the
/// client's connection is then dropped, as a proxy without a backend does.
async fn forward(shared: &Shared, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.target));
    let Ok(Ok(mut upstream)) = connect.await else {
        shared.peer_unreachable.fetch_add(1, Ordering::SeqCst);
        return None;
    };
    upstream
        .write_all(with_connection_close(head).as_bytes())
        .await
        .ok()?;
    upstream.write_all(body).await.ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), upstream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() > MAX_MESSAGE_BYTES {
            return None;
        }
    }
    if let Some(end) = find(&answer, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&answer[..end + 2]);
        if let Some(t) = header(&head, "x-subject-token") {
            shared.remember_token(t);
        }
    }
    Some(answer)
}

/// A made-up 5xx answer: the status and shape picked by `extra`.
fn server_error(peer: Peer, extra: u64) -> Vec<u8> {
    let (status, phrase) = [
        (500, "Internal Server Error"),
        (502, "Bad Gateway"),
        (503, "Service Unavailable"),
        (504, "Gateway Timeout"),
    ][(extra % 4) as usize];
    let html = (extra >> 2).is_multiple_of(2);
    let retry_after = if (extra >> 3).is_multiple_of(3) {
        "Retry-After: 1\r\n"
    } else {
        ""
    };
    let (content_type, body) = if html {
        (
            "text/html",
            format!(
                "<html><head><title>{status} {phrase}</title></head><body><h1>{phrase}</h1>fault relay (test double)</body></html>"
            ),
        )
    } else {
        let body = match peer {
            Peer::Glance => serde_json::json!({
                "message": format!("fault relay (test double): {phrase}"),
                "code": format!("{status} {phrase}"),
                "title": phrase,
            }),
            Peer::Keystone => serde_json::json!({"error": {
                "code": status,
                "title": phrase,
                "message": format!("fault relay (test double): {phrase}"),
            }}),
        };
        ("application/json", body.to_string())
    };
    format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry_after}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
