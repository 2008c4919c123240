//! Relays in front of the real Keystone and Glance: fault injection and
//! observation, not doubles. Every byte goes to and from the real peer.
//!
//! - [`Relay`]: a TCP relay a test can cut and restore. Stopping the shared
//!   Glance itself would break the other tests that run at the same time, so
//!   "Glance is down" is made by cutting this relay: new connections are
//!   refused (the listener is closed) and open ones are dropped, exactly
//!   what a client sees when Glance's process is gone. [`Relay::counting`]
//!   also counts requests of one kind (e.g. Keystone token requests) in the
//!   bytes the client sends.
//! - [`TlsRelay`]: terminates TLS on loopback with a certificate from a
//!   [`TestCa`] made in the test, and relays the plain bytes to the peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

async fn resolve(target: &str) -> SocketAddr {
    tokio::net::lookup_host(target)
        .await
        .expect("target")
        .next()
        .expect("an address")
}

/// Counts occurrences of a byte string in a stream, across chunk borders.
struct Counter {
    needle: Vec<u8>,
    count: AtomicUsize,
}

impl Counter {
    /// Scans `chunk` after `tail` (the last bytes of the previous chunk)
    /// and returns the new tail.
    fn scan(&self, tail: &[u8], chunk: &[u8]) -> Vec<u8> {
        let mut window = tail.to_vec();
        window.extend_from_slice(chunk);
        let n = self.needle.len();
        if n > 0 && window.len() >= n {
            let found = window.windows(n).filter(|w| *w == self.needle).count();
            self.count.fetch_add(found, Ordering::SeqCst);
        }
        let keep = n.saturating_sub(1).min(window.len());
        window[window.len() - keep..].to_vec()
    }
}

/// Relays one connection; with a counter, scans what the client sends.
async fn relay_connection(
    mut inbound: TcpStream,
    target: SocketAddr,
    counter: Option<Arc<Counter>>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let Some(counter) = counter else {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
        let _ = in_write.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut tail = Vec::new();
    loop {
        let n = match in_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        tail = counter.scan(&tail, &buf[..n]);
        if out_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = out_write.shutdown().await;
    let _ = back.await;
}

pub struct Relay {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    counter: Option<Arc<Counter>>,
}

impl Relay {
    /// Starts relaying a fresh loopback port to `target` (host:port).
    pub async fn start(target: &str) -> Relay {
        Self::start_with(target, None).await
    }

    /// Like [`Relay::start`], counting how often the client side sends
    /// `needle` (e.g. `POST /v3/auth/tokens `): see [`Relay::count`].
    pub async fn counting(target: &str, needle: &str) -> Relay {
        let counter = Counter {
            needle: needle.as_bytes().to_vec(),
            count: AtomicUsize::new(0),
        };
        Self::start_with(target, Some(Arc::new(counter))).await
    }

    async fn start_with(target: &str, counter: Option<Arc<Counter>>) -> Relay {
        let target = resolve(target).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = Relay {
            addr,
            target,
            task: Arc::new(Mutex::new(None)),
            counter,
        };
        relay.serve(listener).await;
        relay
    }

    async fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let counter = self.counter.clone();
        let handle = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(relay_connection(inbound, target, counter.clone()));
            }
        });
        *self.task.lock().await = Some(handle);
    }

    /// How many times the counted request was sent through the relay.
    pub fn count(&self) -> usize {
        self.counter
            .as_ref()
            .map_or(0, |c| c.count.load(Ordering::SeqCst))
    }

    /// Glance "goes down": the port refuses connections, open ones are cut.
    pub async fn cut(&self) {
        if let Some(h) = self.task.lock().await.take() {
            h.abort();
            let _ = h.await;
        }
    }

    /// Glance "comes back" on the same port.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the relay port");
        self.serve(listener).await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A certificate authority made for one test: its PEM certificate goes into
/// a Secret's `cacert`, and it signs the relays' server certificates.
pub struct TestCa {
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cloudimage test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A TLS server configuration for `names` (DNS names or IP addresses).
    fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("server certificate");
        // Two crypto providers are linked in (ring and aws-lc-rs): name one.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        Arc::new(config)
    }
}

/// TLS on a loopback port, for `localhost` and `127.0.0.1`, relayed in
/// plain TCP to `target`.
pub struct TlsRelay {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsRelay {
    pub async fn start(target: &str, ca: &TestCa) -> TlsRelay {
        let target = resolve(target).await;
        let acceptor =
            tokio_rustls::TlsAcceptor::from(ca.server_config(&["localhost", "127.0.0.1"]));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    break;
                };
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    // A client that does not trust the certificate ends
                    // the handshake here.
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return;
                    };
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut outbound).await;
                    }
                });
            }
        });
        TlsRelay { addr, task }
    }

    /// `https://localhost:PORT` (the certificate's name, not the address).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}
