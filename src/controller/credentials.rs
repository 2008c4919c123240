//! Reading a CloudImage's credentials: the Secret named in `spec.cloudRef`,
//! in the CloudImage's own namespace only, and the cloud entry inside it.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::backoff::Pace;
use super::decide::Problem;
use crate::cloud::clouds_yaml::{self, CloudConfig, CloudsYamlError};
use crate::crd::CloudRef;

pub const CLOUDS_YAML_KEY: &str = "clouds.yaml";
pub const CACERT_KEY: &str = "cacert";

/// Why credentials could not be read: a status problem, or an API failure to retry.
#[derive(Debug)]
pub enum CredentialsError {
    Problem(Problem),
    Api(kube::Error),
}

fn missing(msg: String) -> CredentialsError {
    CredentialsError::Problem(Problem::new("CredentialsMissing", msg, Pace::Slow))
}

/// Reads `cloud_ref` from `namespace`. The namespace is always the
/// CloudImage's own: a CloudImage cannot name a Secret elsewhere.
pub async fn read(
    client: &kube::Client,
    namespace: &str,
    cloud_ref: &CloudRef,
) -> Result<CloudConfig, CredentialsError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets.get_opt(&cloud_ref.secret_name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(missing(format!(
                "Secret {namespace}/{} does not exist; create it with a `{CLOUDS_YAML_KEY}` key",
                cloud_ref.secret_name
            )));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(missing(format!(
                "the operator is not allowed to read Secret {namespace}/{} (RBAC: it needs `get` on secrets in this namespace)",
                cloud_ref.secret_name
            )));
        }
        Err(e) => return Err(CredentialsError::Api(e)),
    };
    parse_secret(&secret, namespace, cloud_ref)
}

/// Extracts and parses the cloud entry from a Secret's data.
pub fn parse_secret(
    secret: &Secret,
    namespace: &str,
    cloud_ref: &CloudRef,
) -> Result<CloudConfig, CredentialsError> {
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
    let invalid = |msg: String| {
        CredentialsError::Problem(Problem::new("CredentialsInvalid", msg, Pace::Slow))
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

    fn reason(r: Result<CloudConfig, CredentialsError>) -> &'static str {
        match r {
            Err(CredentialsError::Problem(p)) => p.reason,
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
