//! The controller: watches CloudImages, keeps their finalizer, reports what
//! the cloud says, and deletes the image when the object is deleted.

pub mod backoff;
pub mod cleanup;
pub mod conditions;
pub mod credentials;
pub mod decide;
pub mod kube_io;
pub mod live;
pub mod reconcile;
pub mod secrets;

use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::events::Recorder;

use crate::cloud::pool::ClientPool;
use backoff::{BackoffConfig, Counts};

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
    pub stores: Vec<kube::runtime::reflector::Store<crate::crd::CloudImage>>,
    pub metrics: std::sync::Arc<crate::admin::Metrics>,
    /// Objects whose DELETE the cloud accepted (IMS), with how many GETs
    /// have checked since. Kept in memory as well as in status so a stale
    /// cache never sends a second DELETE; after a restart status is used.
    pub accepted: Counts,
    /// The caches of watched Secrets' metadata (never their data).
    pub secret_stores: Vec<kube::runtime::reflector::Store<secrets::SecretMeta>>,
    /// Parsed credentials by Secret version.
    pub credentials: credentials::Cache,
    /// Uids of deleted Secrets whose `SecretInUse` Event was recorded.
    pub announced: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Failures of the Kubernetes side of a reconcile (cloud failures are not
/// errors here: they become status and a paced retry).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to add the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("failed to release the finalizer: {0}")]
    ReleaseFinalizer(#[source] kube::Error),
    #[error("failed to write status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("failed to read the credentials Secret: {0}")]
    ReadCredentials(#[source] kube::Error),
    #[error("failed to add the finalizer to the credentials Secret: {0}")]
    HoldSecret(#[source] kube::Error),
    #[error("failed to remove the finalizer from the credentials Secret: {0}")]
    ReleaseSecret(#[source] kube::Error),
    #[error("failed to list the CloudImages of a namespace: {0}")]
    ListCloudImages(#[source] kube::Error),
}

impl Error {
    /// Bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::AddFinalizer(_) => "AddFinalizer",
            Error::ReleaseFinalizer(_) => "ReleaseFinalizer",
            Error::PatchStatus(_) => "PatchStatus",
            Error::ReadCredentials(_) => "ReadCredentials",
            Error::HoldSecret(_) => "HoldSecret",
            Error::ReleaseSecret(_) => "ReleaseSecret",
            Error::ListCloudImages(_) => "ListCloudImages",
        }
    }
}

impl Context {
    /// Other CloudImages, not being deleted themselves, that claim the same
    /// image id as `obj`, as `namespace/name`. `None` while a watch has not
    /// listed its CloudImages yet: a claim could be missed, so the caller
    /// must not delete.
    pub async fn other_claims(&self, obj: &crate::crd::CloudImage) -> Option<Vec<String>> {
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
            all.extend(secrets::users(
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
    pub fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::sync::Arc<secrets::SecretMeta>> {
        let key = kube::runtime::reflector::ObjectRef::new(name).within(namespace);
        self.secret_stores.iter().find_map(|s| s.get(&key))
    }

    /// True the first time it is asked about this deleted Secret (by uid).
    pub fn first_announcement(&self, secret: &secrets::SecretMeta) -> bool {
        let uid = secret.uid().unwrap_or_default();
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid)
    }

    pub fn forget_announcement(&self, secret: &secrets::SecretMeta) {
        let uid = secret.uid().unwrap_or_default();
        self.announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
}
