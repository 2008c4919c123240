//! Holding credentials Secrets: the operator puts its own finalizer
//! ([`SECRET_FINALIZER`]) on every Secret that a CloudImage names, so that
//! deleting a namespace, pruning an app or uninstalling a release — which
//! delete the Secret and its CloudImages together — cannot take the
//! credentials away before the images are deleted. This module holds the
//! pure rules (who needs a Secret, which changes matter, the guard's step)
//! and the two patches; `guard` runs them.
//!
//! Secrets are watched as metadata only, never their data, and the cached
//! metadata keeps no labels, annotations or managed fields (`kubectl apply`
//! keeps a whole copy of a Secret, data included, in an annotation).

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::credentials::SecretSeen;
use crate::crd::{CloudImage, FINALIZER, SECRET_FINALIZER};

/// A Secret as the operator caches it: metadata only.
pub type SecretMeta = PartialObjectMeta<Secret>;

/// Whether `obj` still needs its credentials Secret: it exists, or it is
/// being deleted and the operator has not released it yet.
pub fn needs_secret(obj: &CloudImage) -> bool {
    obj.metadata.deletion_timestamp.is_none() || obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// The Secret `obj` names, in its own namespace.
pub fn secret_ref(obj: &CloudImage) -> ObjectRef<SecretMeta> {
    ObjectRef::new(&obj.spec.cloud_ref.secret_name).within(&obj.namespace().unwrap_or_default())
}

/// The CloudImages among `objs` that need Secret `namespace/name`, by name, sorted.
pub fn users<'a>(
    namespace: &str,
    name: &str,
    objs: impl IntoIterator<Item = &'a CloudImage>,
) -> Vec<String> {
    let mut names: Vec<String> = objs
        .into_iter()
        .filter(|o| {
            o.metadata.namespace.as_deref() == Some(namespace)
                && o.spec.cloud_ref.secret_name == name
                && needs_secret(o)
        })
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a change of a Secret, seen in its metadata, concerns the
/// CloudImages that use it. Its data is not in the metadata, but every data
/// change moves `resourceVersion`; a change of the finalizer list alone does
/// not concern them, unless the operator's own finalizer went away (they put
/// it back while they need the Secret).
pub fn change_matters(old: Option<&SecretMeta>, new: &SecretMeta) -> bool {
    let Some(old) = old else { return true };
    if old.metadata.resource_version == new.metadata.resource_version {
        return false;
    }
    if old.metadata.uid != new.metadata.uid
        || old.metadata.deletion_timestamp.is_some() != new.metadata.deletion_timestamp.is_some()
    {
        return true;
    }
    if SecretSeen::of(&old.metadata).held && !SecretSeen::of(&new.metadata).held {
        return true;
    }
    old.metadata.finalizers == new.metadata.finalizers
}

/// The Secrets whose guard must look again after a CloudImage watch event.
/// `old` is the object as cached before the event.
pub fn secrets_to_recheck(
    old: Option<&CloudImage>,
    event: &watcher::Event<CloudImage>,
) -> Vec<ObjectRef<SecretMeta>> {
    match event {
        watcher::Event::Delete(obj) => vec![secret_ref(obj)],
        watcher::Event::Apply(obj) => {
            let mut refs = Vec::new();
            if let Some(old) = old
                && old.spec.cloud_ref.secret_name != obj.spec.cloud_ref.secret_name
            {
                refs.push(secret_ref(old));
            }
            if !needs_secret(obj) {
                refs.push(secret_ref(obj));
            }
            refs
        }
        _ => Vec::new(),
    }
}

/// Drops from cached Secret metadata what the operator does not need and
/// must not keep: labels, annotations (which may hold a copy of the data),
/// managed fields and owner references.
pub fn strip(secret: &mut SecretMeta) {
    secret.metadata.annotations = None;
    secret.metadata.labels = None;
    secret.metadata.managed_fields = None;
    secret.metadata.owner_references = None;
}

/// Adds the operator's finalizer to Secret `name`. A strategic merge adds it
/// to the list without touching other finalizers; adding it twice is harmless.
/// Only metadata comes back: the Secret's data is not read here.
pub async fn hold(api: &Api<Secret>, name: &str) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {"finalizers": [SECRET_FINALIZER]}});
    api.patch_metadata(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

/// Removes the operator's finalizer from Secret `name`, only if the Secret is
/// still at `resource_version` (else the API answers 409 and the guard looks again).
pub async fn let_go(
    api: &Api<Secret>,
    name: &str,
    resource_version: &str,
) -> Result<(), kube::Error> {
    let patch = json!({"metadata": {
        "resourceVersion": resource_version,
        "$deleteFromPrimitiveList/finalizers": [SECRET_FINALIZER],
    }});
    api.patch_metadata(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

/// How the guard of one Secret proceeds.
#[derive(Debug, PartialEq, Eq)]
pub enum GuardStep {
    /// Not held by the operator: nothing to do.
    NotHeld,
    /// CloudImages still need it: keep holding it; `announce` when someone
    /// has deleted it meanwhile (it stays `Terminating` until they are done).
    Keep { users: Vec<String>, announce: bool },
    /// The cache shows no user: confirm with a fresh list, then let it go.
    LetGo,
}

/// The guard's decision for `secret`, given the CloudImages that need it
/// according to the cache.
pub fn guard_step(secret: &SecretMeta, users: Vec<String>) -> GuardStep {
    let seen = SecretSeen::of(&secret.metadata);
    if !seen.held {
        GuardStep::NotHeld
    } else if users.is_empty() {
        GuardStep::LetGo
    } else {
        GuardStep::Keep {
            users,
            announce: seen.deleting,
        }
    }
}

/// What the Event on a deleted but still needed Secret says.
pub fn in_use_note(users: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut list = users
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if users.len() > SHOWN {
        list.push_str(&format!(" and {} more", users.len() - SHOWN));
    }
    format!(
        "this Secret is still needed by CloudImage {list}: the finalizer {SECRET_FINALIZER} keeps it (Terminating, still readable) until their images are deleted, then the Secret goes"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use serde_json::json;

    fn cimg(name: &str, ns: &str, secret: &str, deleting: bool, ours: bool) -> CloudImage {
        let mut o: CloudImage = serde_json::from_value(json!({
            "apiVersion": "cloudimage.dev/v1alpha1", "kind": "CloudImage",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"imageId": "0b7f2a4c-6f57-4d3e-9a34-0c9f4c6b1a20",
                     "cloudRef": {"secretName": secret, "cloudName": "c"}}
        }))
        .expect("CloudImage");
        if deleting {
            o.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        if ours {
            o.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        o
    }

    fn secret(rv: &str, finalizers: &[&str], deleting: bool) -> SecretMeta {
        let mut s: SecretMeta = PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some("creds".into()),
                namespace: Some("team-a".into()),
                uid: Some("u1".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        if !finalizers.is_empty() {
            s.metadata.finalizers = Some(finalizers.iter().map(|f| f.to_string()).collect());
        }
        if deleting {
            s.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        s
    }

    #[test]
    fn a_cloudimage_needs_its_secret_until_the_operator_released_it() {
        assert!(needs_secret(&cimg("a", "n", "s", false, false)));
        assert!(needs_secret(&cimg("a", "n", "s", false, true)));
        assert!(needs_secret(&cimg("a", "n", "s", true, true)));
        assert!(!needs_secret(&cimg("a", "n", "s", true, false)));
    }

    #[test]
    fn users_are_the_needing_cloudimages_of_the_same_namespace_and_secret() {
        let objs = [
            cimg("b", "team-a", "creds", false, true),
            cimg("a", "team-a", "creds", true, true),
            cimg("released", "team-a", "creds", true, false),
            cimg("other-secret", "team-a", "other", false, true),
            cimg("other-ns", "team-b", "creds", false, true),
        ];
        assert_eq!(users("team-a", "creds", objs.iter()), vec!["a", "b"]);
        assert!(users("team-c", "creds", objs.iter()).is_empty());
    }

    #[test]
    fn only_changes_that_concern_the_users_requeue_them() {
        let held = secret("1", &[SECRET_FINALIZER], false);
        assert!(change_matters(None, &held), "a new Secret");
        assert!(!change_matters(Some(&held), &held), "same version");
        // Data (or labels) changed: same finalizers, new resourceVersion.
        assert!(change_matters(
            Some(&held),
            &secret("2", &[SECRET_FINALIZER], false)
        ));
        // Deleted by someone.
        assert!(change_matters(
            Some(&held),
            &secret("2", &[SECRET_FINALIZER], true)
        ));
        // The operator's own finalizer was added: nothing for the users.
        assert!(!change_matters(Some(&secret("1", &[], false)), &held));
        // Another finalizer came and went: nothing for the users.
        assert!(!change_matters(
            Some(&held),
            &secret("2", &[SECRET_FINALIZER, "x.io/y"], false)
        ));
        // The operator's finalizer went away: the users put it back.
        assert!(change_matters(Some(&held), &secret("2", &[], false)));
        // Recreated under the same name.
        let mut recreated = secret("9", &[], false);
        recreated.metadata.uid = Some("u2".into());
        assert!(change_matters(Some(&held), &recreated));
    }

    #[test]
    fn the_guard_rechecks_the_old_and_released_secrets_of_a_cloudimage() {
        let live = cimg("a", "n", "s1", false, true);
        let moved = cimg("a", "n", "s2", false, true);
        let released = cimg("a", "n", "s1", true, false);
        let refs =
            |v: Vec<ObjectRef<SecretMeta>>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert!(
            refs(secrets_to_recheck(
                None,
                &watcher::Event::Apply(live.clone())
            ))
            .is_empty()
        );
        assert_eq!(
            refs(secrets_to_recheck(
                Some(&live),
                &watcher::Event::Apply(moved)
            )),
            vec!["s1"]
        );
        assert_eq!(
            refs(secrets_to_recheck(
                Some(&live),
                &watcher::Event::Apply(released)
            )),
            vec!["s1"]
        );
        assert_eq!(
            refs(secrets_to_recheck(
                None,
                &watcher::Event::Delete(live.clone())
            )),
            vec!["s1"]
        );
        assert!(refs(secrets_to_recheck(None, &watcher::Event::InitApply(live))).is_empty());
    }

    #[test]
    fn the_guard_holds_while_needed_announces_when_deleted_and_lets_go_after() {
        let users = vec!["a".to_owned()];
        assert_eq!(
            guard_step(&secret("1", &[], false), users.clone()),
            GuardStep::NotHeld
        );
        assert_eq!(
            guard_step(&secret("1", &[SECRET_FINALIZER], false), users.clone()),
            GuardStep::Keep {
                users: users.clone(),
                announce: false
            }
        );
        assert_eq!(
            guard_step(&secret("1", &[SECRET_FINALIZER], true), users.clone()),
            GuardStep::Keep {
                users,
                announce: true
            }
        );
        assert_eq!(
            guard_step(&secret("1", &[SECRET_FINALIZER], true), vec![]),
            GuardStep::LetGo
        );
    }

    #[test]
    fn cached_secret_metadata_keeps_no_annotation_or_label() {
        let mut s = secret("1", &[], false);
        s.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                "{\"data\":{\"clouds.yaml\":\"c2VjcmV0\"}}".to_owned(),
            )]
            .into(),
        );
        s.metadata.labels = Some([("a".to_owned(), "b".to_owned())].into());
        strip(&mut s);
        assert!(s.metadata.annotations.is_none() && s.metadata.labels.is_none());
    }

    #[test]
    fn the_in_use_note_names_a_few_users_and_counts_the_rest() {
        let many: Vec<String> = (0..8).map(|i| format!("img-{i}")).collect();
        let note = in_use_note(&many);
        assert!(note.contains("img-0, img-1, img-2, img-3, img-4 and 3 more"));
        assert!(note.contains(SECRET_FINALIZER));
    }
}
