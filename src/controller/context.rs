//! What every reconcile shares ([`Context`]), and the helpers the phases
//! use: the per-object key, the paced retry, the image service for an
//! object (its Secret read, held and parsed), other claims on an image, and
//! lookups in the caches.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
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
use crate::cloud::PoolKey;
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
    /// An accepted deletion still visible after this long is reported as
    /// `DeletionStalled` (polling goes on).
    pub stall_after: Duration,
    pub backoff: BackoffConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dry_run: false,
            resync: Duration::from_secs(300),
            accepted_poll: Duration::from_secs(3),
            stall_after: Duration::from_secs(600),
            backoff: BackoffConfig::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// Whether this process leads (always, without leader election): only
    /// the leader reconciles and writes.
    pub leader: crate::leader::Leadership,
    pub client: kube::Client,
    pub recorder: super::events::EventSink,
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
    /// Reconciles running per namespace, and who waits for a slot.
    pub slots: NamespaceSlots,
    /// The verified cloud identity of each CloudImage (by uid), learnt from
    /// its last token: claims across namespaces count only between equals.
    pub identities: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Calls in flight per cloud identity, sized by the cloud's answers.
    pub limits: Arc<super::limit::Limits>,
    /// Rate limit of image lookups, per cloud identity.
    pub checks: super::pace::Buckets,
    /// Objects this process has reconciled: the first reconcile of a settled
    /// object does not look its image up (see `pace`).
    pub seen: super::pace::Seen,
    /// Secret entries already warned about as insecure (Secret uid, entry, content).
    pub insecure_warned: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Other CloudImages, not being deleted, that claim the same image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims {
    /// In the same namespace, as `namespace/name`.
    pub here: Vec<String>,
    /// In other namespaces with the same verified cloud identity (counted,
    /// never named: another namespace's objects are none of this one's business).
    pub elsewhere: usize,
    /// Claims in other namespaces exist, but this object's own identity is
    /// not known yet, so they cannot be compared.
    pub elsewhere_unknown: bool,
}

impl Claims {
    pub fn is_empty(&self) -> bool {
        self.here.is_empty() && self.elsewhere == 0
    }
}

/// The share of reconcile slots. The total is one number across the
/// cluster (also when the operator watches several namespaces, each with a
/// controller of its own), and each namespace is capped, so objects of one
/// namespace (a tarpit endpoint, a mass prune) cannot hold every slot. A
/// reconcile that finds no slot returns at once and is woken when one frees,
/// the namespace with the fewest running first: no busy waiting.
pub struct NamespaceSlots {
    total: usize,
    per_namespace: usize,
    state: std::sync::Mutex<SlotState>,
    /// Requeues a waiting CloudImage: the `reconcile_on` input of the
    /// controller of each watched scope (a namespace, or `*` for all).
    wake: Vec<(String, Wake)>,
}

type Wake = futures::channel::mpsc::UnboundedSender<ObjectRef<CloudImage>>;

#[derive(Default)]
struct SlotState {
    running: usize,
    busy: std::collections::HashMap<String, usize>,
    waiting: std::collections::HashMap<String, std::collections::VecDeque<ObjectRef<CloudImage>>>,
}

/// A slot taken; freed (and a waiter woken) when dropped.
pub struct Slot<'a> {
    slots: &'a NamespaceSlots,
    namespace: String,
}

impl NamespaceSlots {
    pub fn new(total: usize, per_namespace: usize, wake: Vec<(String, Wake)>) -> Self {
        NamespaceSlots {
            total: total.max(1),
            per_namespace: per_namespace.clamp(1, total.max(1)),
            state: Default::default(),
            wake,
        }
    }

    /// A slot for `obj`, or `None` (then `obj` is woken later).
    pub fn take(&self, obj: &CloudImage) -> Option<Slot<'_>> {
        let ns = obj.namespace().unwrap_or_default();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let busy = st.busy.get(&ns).copied().unwrap_or(0);
        let me = ObjectRef::from_obj(obj);
        if st.running < self.total && busy < self.per_namespace {
            st.running += 1;
            *st.busy.entry(ns.clone()).or_insert(0) += 1;
            // Running now, by whatever trigger: no longer waiting.
            remove_waiter(&mut st, &ns, &me);
            return Some(Slot {
                slots: self,
                namespace: ns,
            });
        }
        let queue = st.waiting.entry(ns).or_default();
        if !queue.contains(&me) {
            queue.push_back(me);
        }
        None
    }

    /// `obj` is gone: it waits no more (a wake for it would be lost).
    pub fn forget(&self, obj: &CloudImage) {
        let ns = obj.namespace().unwrap_or_default();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        remove_waiter(&mut st, &ns, &ObjectRef::from_obj(obj));
    }

    fn next_waiter(&self, st: &mut SlotState) -> Option<ObjectRef<CloudImage>> {
        let ns = st
            .waiting
            .keys()
            .filter(|ns| st.busy.get(*ns).copied().unwrap_or(0) < self.per_namespace)
            .min_by_key(|ns| st.busy.get(*ns).copied().unwrap_or(0))?
            .clone();
        let queue = st.waiting.get_mut(&ns)?;
        let next = queue.pop_front();
        if queue.is_empty() {
            st.waiting.remove(&ns);
        }
        next
    }
}

fn remove_waiter(st: &mut SlotState, ns: &str, obj: &ObjectRef<CloudImage>) {
    if let Some(q) = st.waiting.get_mut(ns) {
        q.retain(|w| w != obj);
        if q.is_empty() {
            st.waiting.remove(ns);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let next = {
            let mut st = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
            st.running = st.running.saturating_sub(1);
            if let Some(b) = st.busy.get_mut(&self.namespace) {
                *b = b.saturating_sub(1);
                if *b == 0 {
                    st.busy.remove(&self.namespace);
                }
            }
            self.slots.next_waiter(&mut st)
        };
        if let Some(obj) = next {
            let ns = obj.namespace.clone().unwrap_or_default();
            for (scope, w) in &self.slots.wake {
                if scope == "*" || *scope == ns {
                    let _ = w.unbounded_send(obj.clone());
                }
            }
        }
    }
}

impl Context {
    /// Other CloudImages that claim the same image id as `obj`: any in its
    /// namespace; in other namespaces only those whose verified cloud
    /// identity equals `obj`'s (so a user cannot stop another team's
    /// deletion by naming its image). `None` while a watch has not listed
    /// its CloudImages yet: a claim could be missed, so the caller must not
    /// delete.
    pub async fn other_claims(&self, obj: &CloudImage) -> Option<Claims> {
        let ns = obj.namespace();
        let mut claims = Claims::default();
        let mut elsewhere: Vec<Arc<CloudImage>> = Vec::new();
        for store in &self.stores {
            tokio::time::timeout(Duration::from_secs(10), store.wait_until_ready())
                .await
                .ok()?
                .ok()?;
            for other in store.state() {
                if other.spec.image_id != obj.spec.image_id
                    || other.uid() == obj.uid()
                    || other.metadata.deletion_timestamp.is_some()
                {
                    continue;
                }
                if other.namespace() == ns {
                    claims.here.push(format!(
                        "{}/{}",
                        other.namespace().unwrap_or_default(),
                        other.name_any()
                    ));
                } else {
                    elsewhere.push(other);
                }
            }
        }
        claims.here.sort();
        claims.here.dedup();
        if elsewhere.is_empty() {
            return Some(claims);
        }
        let mine = self.identity_of(obj);
        for other in elsewhere {
            let mut theirs = self.identity_of(&other);
            // Not looked up since this process started (a restart, a new
            // leader): learn its identity now (a token for its credentials,
            // no image call). What cannot be verified is no claim.
            if theirs.is_none()
                && mine.is_some()
                && let Ok(cloud) = self.cloud_for(&other).await
                && cloud.identify().await.is_ok()
            {
                self.remember_identity(&other, cloud.as_ref());
                theirs = self.identity_of(&other);
            }
            match (&mine, theirs) {
                (Some(m), Some(t)) if *m == t => claims.elsewhere += 1,
                // Learn this object's identity first, then look again.
                (None, _) => claims.elsewhere_unknown = true,
                _ => {}
            }
        }
        Some(claims)
    }

    /// The cloud identity `obj`'s calls count against (rate and calls in
    /// flight): authenticates first (a cached token, or the one the call
    /// needs anyway); credentials that cannot authenticate get a key of
    /// their own.
    pub async fn cloud_key(&self, obj: &CloudImage, cloud: &dyn ImageService) -> String {
        match cloud.identify().await {
            Ok(Some(identity)) => identity,
            _ => format!(
                "{}/{}/{}",
                obj.metadata.namespace.as_deref().unwrap_or_default(),
                obj.spec.cloud_ref.secret_name,
                obj.spec.cloud_ref.cloud_name
            ),
        }
    }

    fn identity_of(&self, obj: &CloudImage) -> Option<String> {
        let uid = obj.uid()?;
        self.identities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&uid)
            .cloned()
    }

    /// Remembers the verified identity behind `obj`'s last cloud call.
    pub fn remember_identity(&self, obj: &CloudImage, cloud: &dyn ImageService) {
        if let (Some(uid), Some(id)) = (obj.uid(), cloud.identity()) {
            self.identities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid, id);
        }
    }

    /// True the first time (per operator run) an insecure Secret entry,
    /// named by `key` (Secret uid, entry, content), is used.
    fn first_insecure_warning(&self, key: &str) -> bool {
        let mut warned = self
            .insecure_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A bound for a cluster whose Secrets change without end.
        if warned.len() >= 4096 {
            warned.clear();
        }
        warned.insert(key.to_owned())
    }

    /// `obj` is gone: forget its identity.
    pub fn forget_identity(&self, obj: &CloudImage) {
        if let Some(uid) = obj.uid() {
            self.identities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uid);
        }
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
        let read = credentials::read(
            &self.client,
            &self.credentials,
            current.as_deref().map(|m| &m.metadata),
            &ns,
            &obj.spec.cloud_ref,
            || self.metrics.secret_read(),
        )
        .await;
        // A Secret already being deleted cannot take a new finalizer.
        if let Some(seen) = read.seen
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
        let cfg = read.config?;
        let version = read.version.unwrap_or(credentials::Version {
            uid: String::new(),
            resource_version: String::new(),
        });
        let fingerprint: String = cfg
            .fingerprint()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let insecure = cfg.insecurities();
        // One warning per Secret entry (and content) per operator run, about
        // the Secret: it is a fact about the Secret, not about each of the
        // (maybe thousands of) CloudImages that use it.
        if !insecure.is_empty()
            && self.first_insecure_warning(&format!(
                "{}/{}/{fingerprint}",
                version.uid, obj.spec.cloud_ref.cloud_name
            ))
        {
            let secret = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                namespace: Some(ns.clone()),
                name: Some(secret_name.clone()),
                uid: Some(version.uid.clone()).filter(|u| !u.is_empty()),
                ..Default::default()
            };
            super::kube_io::publish_about(
                &self.recorder,
                &secret,
                kube::runtime::events::EventType::Warning,
                Reason::InsecureEndpoint,
                "ReadCredentials",
                format!(
                    "cloud {:?} of this Secret is used insecurely (first by CloudImage {}): {}. Use https:// and TLS verification (the operator can be told to refuse this: --refuse-insecure)",
                    obj.spec.cloud_ref.cloud_name,
                    obj.name_any(),
                    insecure.join("; ")
                ),
            )
            .await;
        }
        // The client (and its token) is replaced when the entry's content
        // changes, not on every new resourceVersion: the operator's own
        // finalizer on the Secret moves that too.
        let key = PoolKey {
            namespace: ns,
            secret_uid: version.uid,
            secret_version: fingerprint,
            cloud_name: obj.spec.cloud_ref.cloud_name.clone(),
        };
        Ok(self.clouds.get(&key, cfg).map_err(Problem::from)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn obj(ns: &str, name: &str) -> CloudImage {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"imageId": "0b7f2a4c-6f57-4d3e-9a34-0c9f4c6b1a20",
                     "cloudRef": {"secretName": "s", "cloudName": "c"}}
        }))
        .expect("CloudImage")
    }

    #[tokio::test]
    async fn one_namespace_cannot_take_every_slot_and_waiters_are_woken() {
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let slots = NamespaceSlots::new(4, 2, vec![("*".to_owned(), tx)]);
        let a1 = slots.take(&obj("a", "1")).expect("slot");
        let a2 = slots.take(&obj("a", "2")).expect("slot");
        assert!(slots.take(&obj("a", "3")).is_none(), "a has its share");
        let b1 = slots.take(&obj("b", "1")).expect("b still gets a slot");
        let _b2 = slots.take(&obj("b", "2")).expect("slot");
        assert!(slots.take(&obj("c", "1")).is_none(), "all 4 taken");
        drop(b1);
        // c waits with no slot of its own running: it is woken first.
        assert_eq!(rx.next().await.map(|r| r.name), Some("1".to_owned()));
        // a/3 went away meanwhile: a freed slot wakes nobody for it.
        slots.forget(&obj("a", "3"));
        drop(a1);
        assert!(rx.try_recv().is_err(), "no wake for a gone object");
        // A waiter that got a slot by another trigger waits no more.
        let _a5 = slots.take(&obj("a", "5")).expect("slot");
        let a6 = slots.take(&obj("a", "6"));
        assert!(a6.is_none());
        drop(a2);
        let again = slots.take(&obj("a", "6")).expect("slot");
        drop(again);
        assert_eq!(rx.next().await.map(|r| r.name), Some("6".to_owned()));
        assert!(rx.try_recv().is_err(), "woken once, then it waits no more");
    }
}
