//! One [`HttpImageService`] per Secret entry, so tokens are shared by every
//! CloudImage that uses the same Secret and cloud name. Bounded: at most
//! `capacity` clients (least recently used goes first), none idle longer
//! than `ttl`, and a new Secret version replaces the entry of the old one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::client::HttpImageService;
use super::clouds_yaml::CloudConfig;
use super::egress::EgressPolicy;
use super::{CloudError, ImageService};

/// How many clients the pool keeps by default.
pub const DEFAULT_CAPACITY: usize = 1024;
/// How long an unused client is kept by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// Which client: one per Secret (by uid, so a re-created Secret is another)
/// and cloud name. `secret_version` is the Secret's `resourceVersion`: a
/// new version replaces the client of the old one (and its token).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub namespace: String,
    pub secret_uid: String,
    pub secret_version: String,
    pub cloud_name: String,
}

/// The part of the key that names a slot; the version decides whether the
/// client in it is still current.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Slot {
    namespace: String,
    secret_uid: String,
    cloud_name: String,
}

struct Entry {
    version: String,
    /// Digest of the configuration the client was built from, so a caller
    /// that passes another configuration under the same version still gets
    /// a matching client.
    fingerprint: [u8; 32],
    client: Arc<HttpImageService>,
    last_used: Instant,
}

/// Clients by Secret entry, bounded in number and idle time.
pub struct ClientPool {
    entries: Mutex<HashMap<Slot, Entry>>,
    capacity: usize,
    ttl: Duration,
    egress: Arc<EgressPolicy>,
}

impl Default for ClientPool {
    /// [`DEFAULT_CAPACITY`] clients, [`DEFAULT_TTL`], an open egress policy.
    fn default() -> Self {
        ClientPool::new(DEFAULT_CAPACITY, DEFAULT_TTL, EgressPolicy::default())
    }
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .field("egress", &self.egress)
            .finish()
    }
}

impl ClientPool {
    /// A pool of at most `capacity` clients (at least 1), each dropped after
    /// `ttl` unused, all connecting only where `egress` permits.
    pub fn new(capacity: usize, ttl: Duration, egress: EgressPolicy) -> Self {
        ClientPool {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
            egress: Arc::new(egress),
        }
    }

    /// The egress policy every client of this pool follows.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// The client for `key`, built from `cfg` when there is none for this
    /// Secret version yet. Fails only when a client cannot be built from
    /// `cfg` (`CredentialsInvalid`: bad `cacert`, or an insecure setting the
    /// egress policy refuses); nothing is sent to the cloud here.
    pub fn get(
        &self,
        key: &PoolKey,
        cfg: CloudConfig,
    ) -> Result<Arc<dyn ImageService>, CloudError> {
        self.get_at(key, cfg, Instant::now())
    }

    /// Forgets every client of the Secret `secret_uid` in `namespace` (for
    /// when the Secret is deleted).
    pub fn forget_secret(&self, namespace: &str, secret_uid: &str) {
        self.lock()
            .retain(|slot, _| !(slot.namespace == namespace && slot.secret_uid == secret_uid));
    }

    /// How many clients are kept.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Slot, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_at(
        &self,
        key: &PoolKey,
        cfg: CloudConfig,
        now: Instant,
    ) -> Result<Arc<dyn ImageService>, CloudError> {
        let slot = Slot {
            namespace: key.namespace.clone(),
            secret_uid: key.secret_uid.clone(),
            cloud_name: key.cloud_name.clone(),
        };
        let fingerprint = cfg.fingerprint();
        if let Some(current) = self.current(&mut self.lock(), &slot, key, fingerprint, now) {
            return Ok(current);
        }
        // Built without the lock held: parsing a CA bundle must not hold up
        // other teams' lookups.
        let client = Arc::new(HttpImageService::with_policy(cfg, self.egress.clone())?);
        Ok(self.insert_or_current(slot, key, fingerprint, client, now))
    }

    /// The client in `slot` if it is for this version and configuration
    /// and not expired (and marks it used).
    fn current(
        &self,
        map: &mut HashMap<Slot, Entry>,
        slot: &Slot,
        key: &PoolKey,
        fingerprint: [u8; 32],
        now: Instant,
    ) -> Option<Arc<HttpImageService>> {
        let e = map.get_mut(slot)?;
        if e.version == key.secret_version
            && e.fingerprint == fingerprint
            && now.saturating_duration_since(e.last_used) <= self.ttl
        {
            e.last_used = now;
            return Some(e.client.clone());
        }
        None
    }

    /// Keeps `client` for `slot`, unless a caller that built one at the
    /// same time put its own there first: then that one is returned, so
    /// every caller shares one client, and so one token (N objects on a new
    /// Secret ask Keystone once, not once per builder).
    fn insert_or_current(
        &self,
        slot: Slot,
        key: &PoolKey,
        fingerprint: [u8; 32],
        client: Arc<HttpImageService>,
        now: Instant,
    ) -> Arc<dyn ImageService> {
        let mut map = self.lock();
        if let Some(current) = self.current(&mut map, &slot, key, fingerprint, now) {
            return current;
        }
        let ttl = self.ttl;
        map.retain(|_, e| now.saturating_duration_since(e.last_used) <= ttl);
        map.insert(
            slot,
            Entry {
                version: key.secret_version.clone(),
                fingerprint,
                client: client.clone(),
                last_used: now,
            },
        );
        while map.len() > self.capacity {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(s, _)| s.clone());
            match oldest {
                Some(s) => {
                    map.remove(&s);
                }
                None => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::clouds_yaml;

    fn cfg(password: &str) -> CloudConfig {
        let y = format!(
            "clouds:\n  c:\n    auth:\n      auth_url: https://k/v3\n      user_id: u\n      password: {password}\n"
        );
        clouds_yaml::parse(&y, "c", None).expect("valid")
    }

    fn key(ns: &str, uid: &str, version: &str) -> PoolKey {
        PoolKey {
            namespace: ns.into(),
            secret_uid: uid.into(),
            secret_version: version.into(),
            cloud_name: "c".into(),
        }
    }

    fn same(a: &Arc<dyn ImageService>, b: &Arc<dyn ImageService>) -> bool {
        std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
    }

    #[test]
    fn one_client_per_secret_entry_and_a_new_version_replaces_it() {
        let pool = ClientPool::default();
        let t = Instant::now();
        let a = pool
            .get_at(&key("ns", "u1", "1"), cfg("pw1"), t)
            .expect("client");
        let again = pool
            .get_at(&key("ns", "u1", "1"), cfg("pw1"), t)
            .expect("client");
        assert!(same(&a, &again));
        let other_cloud = PoolKey {
            cloud_name: "d".into(),
            ..key("ns", "u1", "1")
        };
        let d = pool.get_at(&other_cloud, cfg("pw1"), t).expect("client");
        assert!(!same(&a, &d));
        assert_eq!(pool.len(), 2);
        let v2 = pool
            .get_at(&key("ns", "u1", "2"), cfg("pw2"), t)
            .expect("client");
        assert!(!same(&a, &v2));
        assert_eq!(pool.len(), 2, "the new version took the old one's place");
        pool.forget_secret("ns", "u1");
        assert!(pool.is_empty());
    }

    #[test]
    fn callers_that_build_a_client_at_the_same_time_share_the_first_one() {
        let pool = ClientPool::default();
        let t = Instant::now();
        let k = key("ns", "u1", "1");
        let slot = || Slot {
            namespace: "ns".into(),
            secret_uid: "u1".into(),
            cloud_name: "c".into(),
        };
        let fp = cfg("pw").fingerprint();
        let built = |pw: &str| Arc::new(HttpImageService::new(cfg(pw)).expect("client"));
        // Two callers missed the pool, each built a client; the second to
        // insert gets the first one's.
        let first = pool.insert_or_current(slot(), &k, fp, built("pw"), t);
        let second = pool.insert_or_current(slot(), &k, fp, built("pw"), t);
        assert!(same(&first, &second));
        let got = pool.get_at(&k, cfg("pw"), t).expect("client");
        assert!(same(&first, &got));
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn the_least_recently_used_client_goes_first() {
        let pool = ClientPool::new(2, DEFAULT_TTL, EgressPolicy::default());
        let t = Instant::now();
        let s = Duration::from_secs(1);
        let a = pool
            .get_at(&key("team-a", "a", "1"), cfg("pw"), t)
            .expect("a");
        let _b = pool
            .get_at(&key("team-b", "b", "1"), cfg("pw"), t + s)
            .expect("b");
        // team-a is used again, so team-b is the least recently used.
        let a2 = pool
            .get_at(&key("team-a", "a", "1"), cfg("pw"), t + 2 * s)
            .expect("a");
        assert!(same(&a, &a2));
        let _c = pool
            .get_at(&key("team-c", "c", "1"), cfg("pw"), t + 3 * s)
            .expect("c");
        assert_eq!(pool.len(), 2);
        let a3 = pool
            .get_at(&key("team-a", "a", "1"), cfg("pw"), t + 4 * s)
            .expect("a");
        assert!(same(&a, &a3), "team-a's client survived team-c's arrival");
    }

    #[test]
    fn idle_clients_expire() {
        let ttl = Duration::from_secs(60);
        let pool = ClientPool::new(10, ttl, EgressPolicy::default());
        let t = Instant::now();
        let a = pool.get_at(&key("ns", "a", "1"), cfg("pw"), t).expect("a");
        let b = pool.get_at(&key("ns", "b", "1"), cfg("pw"), t).expect("b");
        let later = t + ttl + Duration::from_secs(1);
        let a2 = pool
            .get_at(&key("ns", "a", "1"), cfg("pw"), later)
            .expect("a");
        assert!(!same(&a, &a2), "an expired client is built anew");
        assert_eq!(pool.len(), 1, "b expired too");
        drop(b);
    }

    #[test]
    fn the_pool_applies_its_egress_policy() {
        let pool = ClientPool::new(
            10,
            DEFAULT_TTL,
            EgressPolicy {
                refuse_insecure: true,
                ..Default::default()
            },
        );
        let y = "clouds:\n  c:\n    auth:\n      auth_url: https://k/v3\n      user_id: u\n      password: pw\n    verify: false\n";
        let insecure = clouds_yaml::parse(y, "c", None).expect("valid");
        let err = match pool.get(&key("ns", "a", "1"), insecure) {
            Err(e) => e,
            Ok(_) => panic!("verify: false is refused"),
        };
        assert_eq!(
            err.message,
            "the operator refuses insecure connections (egress policy): TLS verification is off (verify: false)"
        );
        assert!(pool.is_empty());
        assert!(pool.egress().refuse_insecure);
    }
}
