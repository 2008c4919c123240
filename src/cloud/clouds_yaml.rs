//! Reading one cloud entry out of an OpenStack `clouds.yaml` document, the
//! format users already keep their credentials in.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Dialect;

/// The largest `clouds.yaml` the operator parses, in bytes.
pub const MAX_CLOUDS_YAML_BYTES: usize = 64 * 1024;
/// The largest `cacert` the operator reads, in bytes.
pub const MAX_CACERT_BYTES: usize = 256 * 1024;

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
    #[error("`{what}` is larger than {limit_kib} KiB")]
    TooLarge {
        what: &'static str,
        limit_kib: usize,
    },
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
    /// What makes connections with this configuration insecure, in words
    /// for a Warning: plain-HTTP URLs and TLS verification turned off.
    /// Catalog endpoints are only known after authentication and are
    /// checked then (see `EgressPolicy::check_url`).
    pub fn insecurities(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        let http = |u: &str| url::Url::parse(u).is_ok_and(|u| u.scheme() == "http");
        if http(&self.auth_url) {
            found.push("auth_url uses http://");
        }
        if self.image_endpoint_override.as_deref().is_some_and(http) {
            found.push("image_endpoint_override uses http://");
        }
        if !self.verify_tls {
            found.push("TLS verification is off (verify: false)");
        }
        found
    }

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

/// Why a URL from clouds.yaml (or a catalog) cannot be used, if it cannot:
/// it must be `http` or `https` with a host, and carry no query, fragment or
/// user name/password (those would travel to wherever the URL points, or
/// change what the operator asks for).
pub fn url_problem(url: &url::Url) -> Option<&'static str> {
    if !matches!(url.scheme(), "http" | "https") {
        Some("must be http or https")
    } else if url.host().is_none() {
        Some("has no host")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("must not carry a user name or password")
    } else if url.query().is_some() {
        Some("must not carry a query (`?...`)")
    } else if url.fragment().is_some() {
        Some("must not carry a fragment (`#...`)")
    } else {
        None
    }
}

/// Parses `clouds.yaml` text and returns the entry `cloud`. Text larger than
/// [`MAX_CLOUDS_YAML_BYTES`] or a `cacert` larger than [`MAX_CACERT_BYTES`]
/// is refused before parsing.
pub fn parse(
    text: &str,
    cloud: &str,
    cacert: Option<String>,
) -> Result<CloudConfig, CloudsYamlError> {
    if text.len() > MAX_CLOUDS_YAML_BYTES {
        return Err(CloudsYamlError::TooLarge {
            what: "clouds.yaml",
            limit_kib: MAX_CLOUDS_YAML_BYTES / 1024,
        });
    }
    if cacert.as_ref().is_some_and(|c| c.len() > MAX_CACERT_BYTES) {
        return Err(CloudsYamlError::TooLarge {
            what: "cacert",
            limit_kib: MAX_CACERT_BYTES / 1024,
        });
    }
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
    if let Some(p) = url_problem(&parsed) {
        return Err(invalid(&format!("auth.auth_url {p}")));
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
        let parsed =
            url::Url::parse(o).map_err(|_| invalid("image_endpoint_override is not a URL"))?;
        if let Some(p) = url_problem(&parsed) {
            return Err(invalid(&format!("image_endpoint_override {p}")));
        }
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

    fn with_urls(auth_url: &str, image: Option<&str>) -> String {
        let mut y = format!(
            "clouds:\n  c:\n    auth:\n      auth_url: '{auth_url}'\n      user_id: u\n      password: s3cret-pw\n"
        );
        if let Some(i) = image {
            y.push_str(&format!("    image_endpoint_override: '{i}'\n"));
        }
        y
    }

    #[test]
    fn urls_with_a_query_fragment_or_user_are_refused() {
        for (auth, image, problem) in [
            (
                "https://k/v3?x=1",
                None,
                Some("auth.auth_url must not carry a query"),
            ),
            (
                "https://k/v3#f",
                None,
                Some("auth.auth_url must not carry a fragment"),
            ),
            (
                "https://me:pw@k/v3",
                None,
                Some("auth.auth_url must not carry a user name"),
            ),
            (
                "https://me@k/v3",
                None,
                Some("auth.auth_url must not carry a user name"),
            ),
            (
                "ftp://k/v3",
                None,
                Some("auth.auth_url must be http or https"),
            ),
            (
                "https://k/v3",
                Some("https://g/?a=b"),
                Some("image_endpoint_override must not carry a query"),
            ),
            (
                "https://k/v3",
                Some("https://u:p@g/"),
                Some("image_endpoint_override must not carry a user name"),
            ),
            (
                "https://k/v3",
                Some("file:///etc/passwd"),
                Some("image_endpoint_override must be http or https"),
            ),
            ("https://k/v3", Some("https://g:9292/"), None),
        ] {
            let r = parse(&with_urls(auth, image), "c", None);
            match problem {
                None => assert!(r.is_ok(), "{auth} {image:?}: {r:?}"),
                Some(p) => {
                    let err = r.expect_err(auth).to_string();
                    assert!(err.contains(p), "{auth} {image:?}: {err}");
                    assert!(!err.contains("pw@") && !err.contains("u:p"), "{err}");
                }
            }
        }
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        let big = format!(
            "{}\n{}",
            with_urls("https://k/v3", None),
            "#".repeat(MAX_CLOUDS_YAML_BYTES)
        );
        assert_eq!(
            parse(&big, "c", None),
            Err(CloudsYamlError::TooLarge {
                what: "clouds.yaml",
                limit_kib: 64
            })
        );
        let cert = "x".repeat(MAX_CACERT_BYTES + 1);
        let err = parse(&with_urls("https://k/v3", None), "c", Some(cert)).expect_err("too large");
        assert_eq!(err.to_string(), "`cacert` is larger than 256 KiB");
        let cert = "x".repeat(MAX_CACERT_BYTES);
        assert!(parse(&with_urls("https://k/v3", None), "c", Some(cert)).is_ok());
    }

    #[test]
    fn insecurities_name_plain_http_and_verify_false() {
        let c = parse(&with_urls("https://k/v3", None), "c", None).expect("valid");
        assert!(c.insecurities().is_empty());
        let c = parse(&with_urls("HTTP://k/v3", Some("http://g:9292")), "c", None).expect("valid");
        assert_eq!(
            c.insecurities(),
            vec![
                "auth_url uses http://",
                "image_endpoint_override uses http://"
            ]
        );
        let y = format!("{}    verify: false\n", with_urls("https://k/v3", None));
        let c = parse(&y, "c", None).expect("valid");
        assert_eq!(
            c.insecurities(),
            vec!["TLS verification is off (verify: false)"]
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
