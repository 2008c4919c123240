//! One [`HttpImageService`] per distinct set of credentials, so tokens are
//! shared by every CloudImage that uses the same Secret entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::client::HttpImageService;
use super::clouds_yaml::CloudConfig;
use super::{CloudError, ImageService};

/// Caches clients by a digest of their configuration (never by the password itself).
#[derive(Default)]
pub struct ClientPool {
    clients: Mutex<HashMap<[u8; 32], Arc<HttpImageService>>>,
}

impl ClientPool {
    /// The client for `cfg`, created on first use. A changed Secret gives a
    /// new digest and so a new client (and token).
    pub fn get(&self, cfg: CloudConfig) -> Result<Arc<dyn ImageService>, CloudError> {
        let key = cfg.fingerprint();
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        // Bound the cache: stale entries (rotated passwords) are simply dropped.
        if map.len() >= 1024 {
            map.clear();
        }
        let client = Arc::new(HttpImageService::new(cfg)?);
        map.insert(key, client.clone());
        Ok(client)
    }
}
