//! Reading a CloudImage's credentials: the Secret named in `spec.cloudRef`,
//! in the CloudImage's own namespace only, and the cloud entry inside it.
//!
//! Parsed entries are cached by the Secret's uid and `resourceVersion`, as the
//! metadata watch of Secrets reports them: while the Secret is unchanged a
//! reconcile reads no Secret from the API. Only Secrets that a CloudImage
//! names are ever read, so only their entries are cached.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;

use super::backoff::Pace;
use super::error::{Error, Failure};
use super::problem::Problem;
use super::reason::Reason;
use crate::cloud::clouds_yaml::{self, CloudConfig, CloudsYamlError};
use crate::crd::{CloudRef, SECRET_FINALIZER};

pub const CLOUDS_YAML_KEY: &str = "clouds.yaml";
pub const CACERT_KEY: &str = "cacert";

fn missing(msg: String) -> Failure {
    Problem::new(Reason::CredentialsMissing, msg, Pace::Slow).into()
}

/// What the reader saw of the Secret itself, for holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretSeen {
    /// The operator's finalizer is on it.
    pub held: bool,
    /// It has a deletion timestamp (no finalizer can be added any more).
    pub deleting: bool,
}

impl SecretSeen {
    pub fn of(meta: &ObjectMeta) -> SecretSeen {
        SecretSeen {
            held: meta
                .finalizers
                .as_ref()
                .is_some_and(|f| f.iter().any(|f| f == SECRET_FINALIZER)),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

/// The version of a Secret an entry was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub uid: String,
    pub resource_version: String,
}

impl Version {
    pub fn of(meta: &ObjectMeta) -> Option<Version> {
        Some(Version {
            uid: meta.uid.clone()?,
            resource_version: meta.resource_version.clone()?,
        })
    }
}

struct Cached {
    version: Version,
    /// Parsed entries by cloud name; a problem is cached as well (a bad
    /// Secret stays bad until it changes).
    clouds: HashMap<String, Result<CloudConfig, Problem>>,
}

/// Parsed cloud entries by Secret (namespace, name). `Debug` shows only
/// which Secrets are cached, never what they hold.
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<(String, String), Cached>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_set().entries(m.keys()).finish()
    }
}

impl Cache {
    fn lookup(
        &self,
        namespace: &str,
        cloud_ref: &CloudRef,
        version: &Version,
    ) -> Option<Result<CloudConfig, Problem>> {
        let m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let c = m.get(&(namespace.to_owned(), cloud_ref.secret_name.clone()))?;
        if &c.version != version {
            return None;
        }
        c.clouds.get(&cloud_ref.cloud_name).cloned()
    }

    fn store(
        &self,
        namespace: &str,
        cloud_ref: &CloudRef,
        version: Version,
        parsed: Result<CloudConfig, Problem>,
    ) {
        let mut m = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = m
            .entry((namespace.to_owned(), cloud_ref.secret_name.clone()))
            .or_insert_with(|| Cached {
                version: version.clone(),
                clouds: HashMap::new(),
            });
        if entry.version != version {
            *entry = Cached {
                version,
                clouds: HashMap::new(),
            };
        }
        entry.clouds.insert(cloud_ref.cloud_name.clone(), parsed);
    }

    /// Drops what is cached for a Secret (it was deleted, or no CloudImage uses it).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// How many Secrets have cached entries.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`read`] found.
pub struct Read {
    /// The Secret itself, when it was seen.
    pub seen: Option<SecretSeen>,
    /// The Secret version the entry comes from.
    pub version: Option<Version>,
    pub config: Result<CloudConfig, Failure>,
}

/// Reads `cloud_ref` from `namespace`. The namespace is always the
/// CloudImage's own: a CloudImage cannot name a Secret elsewhere.
///
/// `current` is the Secret's metadata as the watch last reported it: when
/// its uid and `resourceVersion` match a cached entry, the entry is used and
/// the API is not asked. `on_get` is called for every Secret GET (a metric).
pub async fn read(
    client: &kube::Client,
    cache: &Cache,
    current: Option<&ObjectMeta>,
    namespace: &str,
    cloud_ref: &CloudRef,
    on_get: impl FnOnce(),
) -> Read {
    if let Some(meta) = current
        && let Some(version) = Version::of(meta)
        && let Some(hit) = cache.lookup(namespace, cloud_ref, &version)
    {
        return Read {
            seen: Some(SecretSeen::of(meta)),
            version: Some(version),
            config: hit.map_err(Failure::Problem),
        };
    }
    on_get();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(&cloud_ref.secret_name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return nothing(missing(format!(
                "Secret {namespace}/{} does not exist; create it with a `{CLOUDS_YAML_KEY}` key",
                cloud_ref.secret_name
            )));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return nothing(missing(format!(
                "the operator is not allowed to read Secret {namespace}/{} (RBAC: it needs `get` on secrets in this namespace)",
                cloud_ref.secret_name
            )));
        }
        Err(e) => return nothing(Error::ReadCredentials(e).into()),
    };
    let seen = SecretSeen::of(&secret.metadata);
    let parsed = parse_secret(&secret, namespace, cloud_ref);
    let version = Version::of(&secret.metadata);
    if let Some(version) = &version {
        let to_cache = match &parsed {
            Ok(cfg) => Some(Ok(cfg.clone())),
            Err(Failure::Problem(p)) => Some(Err(p.clone())),
            Err(Failure::Kube(_)) => None,
        };
        if let Some(c) = to_cache {
            cache.store(namespace, cloud_ref, version.clone(), c);
        }
    }
    Read {
        seen: Some(seen),
        version,
        config: parsed,
    }
}

fn nothing(failure: Failure) -> Read {
    Read {
        seen: None,
        version: None,
        config: Err(failure),
    }
}

/// Extracts and parses the cloud entry from a Secret's data.
pub fn parse_secret(
    secret: &Secret,
    namespace: &str,
    cloud_ref: &CloudRef,
) -> Result<CloudConfig, Failure> {
    let name = &cloud_ref.secret_name;
    let data = secret.data.as_ref();
    let get = |key: &str| -> Option<Vec<u8>> {
        data.and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            })
    };
    let raw = get(CLOUDS_YAML_KEY).ok_or_else(|| {
        missing(format!(
            "Secret {namespace}/{name} has no `{CLOUDS_YAML_KEY}` key"
        ))
    })?;
    let invalid = |msg: String| -> Failure {
        Problem::new(Reason::CredentialsInvalid, msg, Pace::Slow).into()
    };
    let text = String::from_utf8(raw).map_err(|_| {
        invalid(format!(
            "Secret {namespace}/{name}: `{CLOUDS_YAML_KEY}` is not UTF-8 text"
        ))
    })?;
    let cacert = match get(CACERT_KEY) {
        Some(b) => Some(String::from_utf8(b).map_err(|_| {
            invalid(format!(
                "Secret {namespace}/{name}: `{CACERT_KEY}` is not PEM text"
            ))
        })?),
        None => None,
    };
    clouds_yaml::parse(&text, &cloud_ref.cloud_name, cacert).map_err(|e| match e {
        CloudsYamlError::NoSuchCloud(_) => missing(format!("Secret {namespace}/{name}: {e}")),
        _ => invalid(format!("Secret {namespace}/{name}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    fn reason(r: Result<CloudConfig, Failure>) -> &'static str {
        match r {
            Err(Failure::Problem(p)) => p.reason.as_str(),
            other => panic!("expected a problem, got {other:?}"),
        }
    }

    #[test]
    fn missing_keys_and_entries_are_credentials_missing() {
        let r = CloudRef {
            secret_name: "s".into(),
            cloud_name: "c".into(),
        };
        assert_eq!(
            reason(parse_secret(&secret(&[]), "ns", &r)),
            "CredentialsMissing"
        );
        assert_eq!(
            reason(parse_secret(
                &secret(&[("clouds.yaml", "clouds: {}")]),
                "ns",
                &r
            )),
            "CredentialsMissing"
        );
        assert_eq!(
            reason(parse_secret(
                &secret(&[("clouds.yaml", "clouds: [")]),
                "ns",
                &r
            )),
            "CredentialsInvalid"
        );
    }
}
