//! A TCP relay in front of the real Glance, which a test can cut and restore.
//!
//! This is fault injection, not a double: every byte goes to and from the
//! real Glance. Stopping the shared Glance itself would break the other tests
//! that run at the same time, so "Glance is down" is made by cutting this
//! relay: new connections are refused (the listener is closed) and open ones
//! are dropped, exactly what a client sees when Glance's process is gone.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

pub struct Relay {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Relay {
    /// Starts relaying a fresh loopback port to `target` (host:port).
    pub async fn start(target: &str) -> Relay {
        let target: SocketAddr = tokio::net::lookup_host(target)
            .await
            .expect("target")
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relay = Relay {
            addr,
            target,
            task: Arc::new(Mutex::new(None)),
        };
        relay.serve(listener).await;
        relay
    }

    async fn serve(&self, listener: TcpListener) {
        let target = self.target;
        let handle = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        *self.task.lock().await = Some(handle);
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
