//! What every reconcile shares ([`Context`]), and the helpers the phases
//! use: the per-object key, the paced retry, the image service for an
//! object (its Secret read, held and parsed), other claims on an image, and
//! lookups in the caches.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::backoff::{self, BackoffConfig, Counts, Pace};
use super::credentials;
use super::error::{Error, Failure};
use super::problem::Problem;
use super::reason::Reason;
use super::secret_hold::{self, SecretMeta};
use crate::cloud::ImageService;
use crate::cloud::pool::ClientPool;
use crate::crd::CloudImage;
use crate::metrics::Metrics;

/// A key for per-object state that survives reconciles but not a recreation.
pub fn object_key(obj: &CloudImage) -> String {
    format!(
        "{}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
        obj.uid().unwrap_or_default()
    )
}

/// How the controller behaves, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Report what would be deleted; never call DELETE.
    pub dry_run: bool,
    /// How often a healthy object's image is checked again.
    pub resync: Duration,
    /// How often an IMS deletion that was accepted is checked for completion.
    pub accepted_poll: Duration,
    pub backoff: BackoffConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dry_run: false,
            resync: Duration::from_secs(300),
            accepted_poll: Duration::from_secs(3),
            backoff: BackoffConfig::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub clouds: ClientPool,
    pub failures: Counts,
    pub settings: Settings,
    /// The caches of all watched CloudImages, to find other claims on an image.
    pub stores: Vec<Store<CloudImage>>,
    pub metrics: Arc<Metrics>,
    /// Objects whose DELETE the cloud accepted (IMS), with how many GETs
    /// have checked since. Kept in memory as well as in status so a stale
    /// cache never sends a second DELETE; after a restart status is used.
    pub accepted: Counts,
    /// The caches of watched Secrets' metadata (never their data).
    pub secret_stores: Vec<Store<SecretMeta>>,
    /// Parsed credentials by Secret version.
    pub credentials: credentials::Cache,
    /// Uids of deleted Secrets whose `SecretInUse` Event was recorded.
    pub announced: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Context {
    /// Other CloudImages, not being deleted themselves, that claim the same
    /// image id as `obj`, as `namespace/name`. `None` while a watch has not
    /// listed its CloudImages yet: a claim could be missed, so the caller
    /// must not delete.
    pub async fn other_claims(&self, obj: &CloudImage) -> Option<Vec<String>> {
        let mut claims = Vec::new();
        for store in &self.stores {
            tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
                .await
                .ok()?
                .ok()?;
            for other in store.state() {
                if other.spec.image_id == obj.spec.image_id
                    && other.uid() != obj.uid()
                    && other.metadata.deletion_timestamp.is_none()
                {
                    claims.push(format!(
                        "{}/{}",
                        other.namespace().unwrap_or_default(),
                        other.name_any()
                    ));
                }
            }
        }
        claims.sort();
        claims.dedup();
        Some(claims)
    }

    /// Whether every CloudImage watch has listed its objects, waiting up to `wait`.
    pub async fn stores_ready(&self, wait: Duration) -> bool {
        for store in &self.stores {
            match tokio::time::timeout(wait, store.wait_until_ready()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
        true
    }

    /// The CloudImages that need Secret `namespace/name`, from the caches.
    pub fn secret_users(&self, namespace: &str, name: &str) -> Vec<String> {
        let mut all = Vec::new();
        for store in &self.stores {
            let state = store.state();
            all.extend(secret_hold::users(
                namespace,
                name,
                state.iter().map(|o| o.as_ref()),
            ));
        }
        all.sort();
        all.dedup();
        all
    }

    /// Secret `namespace/name` as the metadata watch last saw it.
    pub fn secret_meta(&self, namespace: &str, name: &str) -> Option<Arc<SecretMeta>> {
        let key = ObjectRef::new(name).within(namespace);
        self.secret_stores.iter().find_map(|s| s.get(&key))
    }

    /// True the first time it is asked about this deleted Secret (by uid).
    pub fn first_announcement(&self, secret: &SecretMeta) -> bool {
        let uid = secret.uid().unwrap_or_default();
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid)
    }

    pub fn forget_announcement(&self, secret: &SecretMeta) {
        let uid = secret.uid().unwrap_or_default();
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }

    /// Paces the retry of a problem for `obj`.
    pub fn retry(&self, obj: &CloudImage, problem: &Problem) -> Action {
        let failures = self.failures.record(&object_key(obj));
        Action::requeue(backoff::jittered(
            &self.settings.backoff,
            problem.pace,
            failures,
            problem.retry_after,
        ))
    }

    /// The image service for `obj`, built from its own namespace's Secret,
    /// which is held (see `secret_hold`) while `obj` needs it. A bad spec or
    /// missing or invalid credentials are a problem; only Kubernetes API
    /// failures are errors.
    pub async fn cloud_for(&self, obj: &CloudImage) -> Result<Arc<dyn ImageService>, Failure> {
        if !crate::crd::is_canonical_image_id(&obj.spec.image_id) {
            return Err(Problem::new(
                Reason::InvalidSpec,
                format!(
                    "spec.imageId `{}` is not a lower-case UUID",
                    crate::cloud::error::truncate(obj.spec.image_id.clone(), 64)
                ),
                Pace::Slow,
            )
            .into());
        }
        let ns = obj.namespace().unwrap_or_default();
        let secret_name = &obj.spec.cloud_ref.secret_name;
        let current = self.secret_meta(&ns, secret_name);
        let (seen, cfg) = credentials::read(
            &self.client,
            &self.credentials,
            current.as_deref().map(|m| &m.metadata),
            &ns,
            &obj.spec.cloud_ref,
            || self.metrics.secret_read(),
        )
        .await;
        // A Secret already being deleted cannot take a new finalizer.
        if let Some(seen) = seen
            && !seen.held
            && !seen.deleting
        {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            match secret_hold::hold(&api, secret_name).await {
                Ok(()) => {
                    info!(secret = %secret_name, "holding the credentials Secret while CloudImages need it")
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(kube::Error::Api(e)) if e.code == 403 => warn!(
                    secret = %secret_name,
                    "not allowed to add a finalizer to the credentials Secret (RBAC: `patch` on secrets); deleting it together with its CloudImages will leave them waiting for it"
                ),
                Err(e) => return Err(Error::HoldSecret(e).into()),
            }
        }
        Ok(self.clouds.get(cfg?).map_err(Problem::from)?)
    }
}
