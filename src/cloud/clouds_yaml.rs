//! Reading one cloud entry out of an OpenStack `clouds.yaml` document, the
//! format users already keep their credentials in.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Dialect;

/// Why a clouds.yaml could not give usable credentials. Messages name fields,
/// never values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloudsYamlError {
    #[error("clouds.yaml is not valid YAML: {0}")]
    Unreadable(String),
    #[error("clouds.yaml has no entry `clouds.{0}`")]
    NoSuchCloud(String),
    #[error("cloud `{cloud}`: {problem}")]
    Invalid { cloud: String, problem: String },
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    clouds: BTreeMap<String, Entry>,
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    auth: Auth,
    auth_type: Option<String>,
    profile: Option<String>,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    image_endpoint_override: Option<String>,
    verify: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Auth {
    auth_url: Option<String>,
    username: Option<String>,
    user_id: Option<String>,
    password: Option<String>,
    project_name: Option<String>,
    project_id: Option<String>,
    user_domain_name: Option<String>,
    user_domain_id: Option<String>,
    project_domain_name: Option<String>,
    project_domain_id: Option<String>,
    domain_name: Option<String>,
    domain_id: Option<String>,
}

/// A name or an id, as Keystone accepts either.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum NameOrId {
    Name(String),
    Id(String),
}

/// Everything needed to authenticate to one cloud and find its image service.
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CloudConfig {
    pub auth_url: String,
    pub user: NameOrId,
    pub user_domain: Option<NameOrId>,
    pub password: String,
    pub project: Option<NameOrId>,
    pub project_domain: Option<NameOrId>,
    pub region_name: Option<String>,
    pub interface: String,
    pub image_endpoint_override: Option<String>,
    pub dialect: Dialect,
    pub verify_tls: bool,
    /// PEM text from the Secret's `cacert` key.
    pub cacert: Option<String>,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("auth_url", &self.auth_url)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("project", &self.project)
            .field("region_name", &self.region_name)
            .field("interface", &self.interface)
            .field("image_endpoint_override", &self.image_endpoint_override)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl CloudConfig {
    /// A stable digest of everything in the config, to key caches by without
    /// keeping the password in a map key anyone might print.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [
            self.auth_url.as_str(),
            &format!("{:?}", self.user),
            &format!("{:?}", self.user_domain),
            &self.password,
            &format!("{:?}", self.project),
            &format!("{:?}", self.project_domain),
            self.region_name.as_deref().unwrap_or(""),
            &self.interface,
            self.image_endpoint_override.as_deref().unwrap_or(""),
            &format!("{:?}/{}", self.dialect, self.verify_tls),
            self.cacert.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize().into()
    }
}

fn pick(name: Option<String>, id: Option<String>) -> Option<NameOrId> {
    match (id, name) {
        (Some(id), _) if !id.is_empty() => Some(NameOrId::Id(id)),
        (_, Some(name)) if !name.is_empty() => Some(NameOrId::Name(name)),
        _ => None,
    }
}

/// Parses `clouds.yaml` text and returns the entry `cloud`.
pub fn parse(
    text: &str,
    cloud: &str,
    cacert: Option<String>,
) -> Result<CloudConfig, CloudsYamlError> {
    // serde's messages can quote the offending value (which may be a
    // password), so only the position is reported.
    let file: File = serde_yaml::from_str(text).map_err(|e| {
        CloudsYamlError::Unreadable(match e.location() {
            Some(l) => format!(
                "syntax or type error at line {}, column {}",
                l.line(),
                l.column()
            ),
            None => "syntax or type error".to_owned(),
        })
    })?;
    let mut clouds = file.clouds;
    let entry = clouds
        .remove(cloud)
        .ok_or_else(|| CloudsYamlError::NoSuchCloud(cloud.to_owned()))?;
    let invalid = |problem: &str| CloudsYamlError::Invalid {
        cloud: cloud.to_owned(),
        problem: problem.to_owned(),
    };

    match entry.auth_type.as_deref() {
        None | Some("password") | Some("v3password") => {}
        Some(other) => {
            return Err(invalid(&format!(
                "auth_type `{other}` is not supported yet (supported: password)"
            )));
        }
    }
    let a = entry.auth;
    let auth_url = a
        .auth_url
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("auth.auth_url is missing"))?;
    let parsed = url::Url::parse(&auth_url).map_err(|_| invalid("auth.auth_url is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("auth.auth_url must be http or https"));
    }
    let user = pick(a.username, a.user_id)
        .ok_or_else(|| invalid("auth.username (or auth.user_id) is missing"))?;
    let password = a
        .password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("auth.password is missing"))?;
    let default_domain = pick(a.domain_name, a.domain_id);
    let user_domain = pick(a.user_domain_name, a.user_domain_id).or_else(|| default_domain.clone());
    if matches!(user, NameOrId::Name(_)) && user_domain.is_none() {
        return Err(invalid(
            "auth.user_domain_name (or _id) is needed with auth.username",
        ));
    }
    let project = pick(a.project_name, a.project_id);
    let project_domain = pick(a.project_domain_name, a.project_domain_id).or(default_domain);
    if matches!(project, Some(NameOrId::Name(_))) && project_domain.is_none() {
        return Err(invalid(
            "auth.project_domain_name (or _id) is needed with auth.project_name",
        ));
    }
    if let Some(o) = &entry.image_endpoint_override {
        url::Url::parse(o).map_err(|_| invalid("image_endpoint_override is not a URL"))?;
    }
    let interface = entry
        .interface
        .or(entry.endpoint_type)
        .unwrap_or_else(|| "public".to_owned())
        .trim_end_matches("URL")
        .to_ascii_lowercase();
    let dialect = match entry.profile.as_deref() {
        Some(p) if p.eq_ignore_ascii_case("huaweicloud") || p.eq_ignore_ascii_case("otc") => {
            Dialect::Huawei
        }
        _ => Dialect::OpenStack,
    };
    Ok(CloudConfig {
        auth_url,
        user,
        user_domain,
        password,
        project,
        project_domain,
        region_name: entry.region_name,
        interface,
        image_endpoint_override: entry.image_endpoint_override,
        dialect,
        verify_tls: entry.verify.unwrap_or(true),
        cacert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
clouds:
  mycloud:
    auth:
      auth_url: https://keystone.example:5000/v3
      username: demo
      password: s3cret-pw
      project_name: demo
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: internal
  hw:
    profile: huaweicloud
    auth:
      auth_url: https://iam.ap-southeast-1.myhuaweicloud.com/v3
      username: u
      password: p
      domain_name: acct
      project_name: ap-southeast-1
    image_endpoint_override: https://ims.ap-southeast-1.myhuaweicloud.com
"#;

    #[test]
    fn reads_a_password_entry() {
        let c = parse(YAML, "mycloud", None).expect("valid entry");
        assert_eq!(c.user, NameOrId::Name("demo".into()));
        assert_eq!(c.project, Some(NameOrId::Name("demo".into())));
        assert_eq!(c.interface, "internal");
        assert_eq!(c.dialect, Dialect::OpenStack);
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
    }

    #[test]
    fn huawei_profile_selects_the_ims_dialect_and_domain_applies_to_both() {
        let c = parse(YAML, "hw", None).expect("valid entry");
        assert_eq!(c.dialect, Dialect::Huawei);
        assert_eq!(c.user_domain, Some(NameOrId::Name("acct".into())));
        assert_eq!(c.project_domain, Some(NameOrId::Name("acct".into())));
    }

    #[test]
    fn missing_or_broken_entries_say_what_is_wrong_without_values() {
        assert_eq!(
            parse(YAML, "nope", None),
            Err(CloudsYamlError::NoSuchCloud("nope".into()))
        );
        assert!(matches!(
            parse("clouds: [", "x", None),
            Err(CloudsYamlError::Unreadable(_))
        ));
        let no_pw = "clouds:\n  c:\n    auth:\n      auth_url: http://k/v3\n      username: u\n      user_domain_name: D\n";
        let err = parse(no_pw, "c", None).expect_err("no password");
        assert!(
            err.to_string().contains("auth.password is missing"),
            "{err}"
        );
        let appcred = "clouds:\n  c:\n    auth_type: v3applicationcredential\n    auth: {}\n";
        assert!(
            parse(appcred, "c", None)
                .expect_err("unsupported")
                .to_string()
                .contains("not supported")
        );
    }

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let c = parse(YAML, "mycloud", None).expect("valid entry");
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        let bad = "clouds:\n  c:\n    auth:\n      auth_url: 's3cret-pw'\n      username: u\n      password: s3cret-pw\n";
        let err = parse(bad, "c", None).expect_err("not a url");
        assert!(!err.to_string().contains("s3cret-pw"), "{err}");
        let wrong_type = "clouds:\n  c:\n    verify: s3cret-pw\n";
        let err = parse(wrong_type, "c", None).expect_err("verify is a bool");
        assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    }
}
