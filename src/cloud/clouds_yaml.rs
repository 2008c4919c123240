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
    auth: RawAuth,
    auth_type: Option<String>,
    profile: Option<String>,
    region_name: Option<String>,
    interface: Option<String>,
    endpoint_type: Option<String>,
    image_endpoint_override: Option<String>,
    verify: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawAuth {
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
    application_credential_id: Option<String>,
    application_credential_name: Option<String>,
    application_credential_secret: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    security_token: Option<String>,
}

/// A name or an id, as Keystone accepts either.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum NameOrId {
    Name(String),
    Id(String),
}

/// How the operator proves who it is to one cloud. `Debug` never shows a
/// password, a secret or a secret key.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Auth {
    /// Keystone v3 password (`auth_type` absent, `password` or
    /// `v3password`); Huawei IAM accepts the same request.
    Password(PasswordAuth),
    /// Keystone v3 application credential (`auth_type: v3applicationcredential`).
    ApplicationCredential(ApplicationCredential),
    /// Huawei Cloud AK/SK request signing (`auth_type: aksk`): every image
    /// request is signed, no token is ever asked for.
    AkSk(AkSk),
}

/// Keystone v3 password authentication.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PasswordAuth {
    pub auth_url: String,
    pub user: NameOrId,
    pub user_domain: Option<NameOrId>,
    pub password: String,
    pub project: Option<NameOrId>,
    pub project_domain: Option<NameOrId>,
}

impl fmt::Debug for PasswordAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordAuth")
            .field("auth_url", &self.auth_url)
            .field("user", &self.user)
            .field("user_domain", &self.user_domain)
            .field("password", &"<redacted>")
            .field("project", &self.project)
            .field("project_domain", &self.project_domain)
            .finish()
    }
}

/// Which application credential: by id, or by name together with its user.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum AppCredRef {
    Id(String),
    Name {
        name: String,
        user: NameOrId,
        user_domain: Option<NameOrId>,
    },
}

/// Keystone v3 application credential authentication. The credential is
/// bound to one project, so the request carries no scope.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApplicationCredential {
    pub auth_url: String,
    pub credential: AppCredRef,
    pub secret: String,
}

impl fmt::Debug for ApplicationCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationCredential")
            .field("auth_url", &self.auth_url)
            .field("credential", &self.credential)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Huawei Cloud access key pair, permanent or temporary (with a security token).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AkSk {
    pub access_key: String,
    pub secret_key: String,
    /// Sent (and signed) as `X-Project-Id` when set.
    pub project_id: Option<String>,
    /// Temporary keys only: sent (and signed) as `X-Security-Token`.
    pub security_token: Option<String>,
}

impl fmt::Debug for AkSk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AkSk")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("project_id", &self.project_id)
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Auth {
    /// The Keystone (or Huawei IAM) URL, for the auth types that ask for a token.
    pub fn keystone_url(&self) -> Option<&str> {
        match self {
            Auth::Password(p) => Some(&p.auth_url),
            Auth::ApplicationCredential(a) => Some(&a.auth_url),
            Auth::AkSk(_) => None,
        }
    }

    /// The `auth_type` as the operator names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Password(_) => "password",
            Auth::ApplicationCredential(_) => "v3applicationcredential",
            Auth::AkSk(_) => "aksk",
        }
    }

    /// Every secret in the credentials: what no message, log or status may show.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Auth::Password(p) => vec![p.password.as_str()],
            Auth::ApplicationCredential(a) => vec![a.secret.as_str()],
            Auth::AkSk(k) => {
                let mut v = vec![k.secret_key.as_str()];
                v.extend(k.security_token.as_deref());
                v
            }
        }
    }
}

/// Everything needed to authenticate to one cloud and find its image service.
/// `Debug` never shows a password, a secret or a secret key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CloudConfig {
    pub auth: Auth,
    pub region_name: Option<String>,
    pub interface: String,
    pub image_endpoint_override: Option<String>,
    /// Huawei Cloud: the IMS endpoint built from `region_name`
    /// (`https://ims.{region}.myhuaweicloud.com`), used when there is no
    /// override; the catalog is then not consulted.
    pub region_image_endpoint: Option<String>,
    pub dialect: Dialect,
    pub verify_tls: bool,
    /// PEM text from the Secret's `cacert` key.
    pub cacert: Option<String>,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("auth", &self.auth)
            .field("region_name", &self.region_name)
            .field("interface", &self.interface)
            .field("image_endpoint_override", &self.image_endpoint_override)
            .field("region_image_endpoint", &self.region_image_endpoint)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl CloudConfig {
    /// The image endpoint that needs no catalog: the override, else the
    /// region-built Huawei endpoint.
    pub fn fixed_image_endpoint(&self) -> Option<&str> {
        self.image_endpoint_override
            .as_deref()
            .or(self.region_image_endpoint.as_deref())
    }

    /// What makes connections with this configuration insecure, in words
    /// for a Warning: plain-HTTP URLs and TLS verification turned off.
    /// Catalog endpoints are only known after authentication and are
    /// checked then (see `EgressPolicy::check_url`).
    pub fn insecurities(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        let http = |u: &str| url::Url::parse(u).is_ok_and(|u| u.scheme() == "http");
        if self.auth.keystone_url().is_some_and(http) {
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

    /// Every secret of the configuration (see [`Auth::secrets`]).
    pub fn secrets(&self) -> Vec<&str> {
        self.auth.secrets()
    }

    /// A stable digest of everything in the config, to key caches by without
    /// keeping a secret in a map key anyone might print.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let auth_parts: Vec<String> = match &self.auth {
            Auth::Password(p) => vec![
                "password".into(),
                p.auth_url.clone(),
                format!("{:?}", p.user),
                format!("{:?}", p.user_domain),
                p.password.clone(),
                format!("{:?}", p.project),
                format!("{:?}", p.project_domain),
            ],
            Auth::ApplicationCredential(a) => vec![
                "v3applicationcredential".into(),
                a.auth_url.clone(),
                format!("{:?}", a.credential),
                a.secret.clone(),
            ],
            Auth::AkSk(k) => vec![
                "aksk".into(),
                k.access_key.clone(),
                k.secret_key.clone(),
                format!("{:?}", k.project_id),
                format!("{:?}", k.security_token),
            ],
        };
        for part in auth_parts.iter().map(String::as_str).chain([
            self.region_name.as_deref().unwrap_or(""),
            &self.interface,
            self.image_endpoint_override.as_deref().unwrap_or(""),
            self.region_image_endpoint.as_deref().unwrap_or(""),
            &format!("{:?}/{}", self.dialect, self.verify_tls),
            self.cacert.as_deref().unwrap_or(""),
        ]) {
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

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
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

/// Whether `region` can name a Huawei Cloud region in a host name
/// (`ap-southeast-1`, `cn-north-4`): lower-case letters, digits and `-`,
/// starting with a letter, at most 63 characters.
pub fn is_huawei_region(region: &str) -> bool {
    region.len() <= 63
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && !region.ends_with('-')
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The IMS endpoint of a Huawei Cloud region (no project id in the path).
pub fn huawei_ims_endpoint(region: &str) -> String {
    format!("https://ims.{region}.myhuaweicloud.com")
}

/// The IAM (Keystone v3) endpoint of a Huawei Cloud region.
pub fn huawei_iam_url(region: &str) -> String {
    format!("https://iam.{region}.myhuaweicloud.com/v3")
}

/// Whether a value can travel in an HTTP header as is: visible ASCII, no
/// spaces or control characters.
fn is_header_token(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Which cloud family the entry's `profile` names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Profile {
    OpenStack,
    HuaweiCloud,
    Otc,
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

    let profile = match entry.profile.as_deref() {
        Some(p) if p.eq_ignore_ascii_case("huaweicloud") => Profile::HuaweiCloud,
        Some(p) if p.eq_ignore_ascii_case("otc") => Profile::Otc,
        _ => Profile::OpenStack,
    };
    let region_name = non_empty(entry.region_name);
    if let Some(o) = &entry.image_endpoint_override {
        let parsed =
            url::Url::parse(o).map_err(|_| invalid("image_endpoint_override is not a URL"))?;
        if let Some(p) = url_problem(&parsed) {
            return Err(invalid(&format!("image_endpoint_override {p}")));
        }
    }
    let has_override = entry.image_endpoint_override.is_some();
    // With `profile: huaweicloud`, a region id that can be part of a host
    // name builds the IAM URL, the project and the IMS endpoint; any other
    // region name (a private Huawei Cloud Stack, say) leaves them to the
    // entry and the catalog, as for OpenStack.
    let hw_region = region_name
        .as_deref()
        .filter(|r| profile == Profile::HuaweiCloud && is_huawei_region(r));
    let a = entry.auth;
    // The Keystone URL: given, or for Huawei Cloud built from the region.
    let auth_url = |given: Option<String>| -> Result<String, CloudsYamlError> {
        let url = match (non_empty(given), hw_region) {
            (Some(u), _) => u,
            (None, Some(r)) => huawei_iam_url(r),
            (None, None) => return Err(invalid("auth.auth_url is missing")),
        };
        let parsed = url::Url::parse(&url).map_err(|_| invalid("auth.auth_url is not a URL"))?;
        if let Some(p) = url_problem(&parsed) {
            return Err(invalid(&format!("auth.auth_url {p}")));
        }
        Ok(url)
    };
    let default_domain = pick(a.domain_name, a.domain_id);
    let user_domain = pick(a.user_domain_name, a.user_domain_id).or_else(|| default_domain.clone());
    let user = pick(a.username, a.user_id);
    let need_user_domain = |user: &NameOrId| {
        if matches!(user, NameOrId::Name(_)) && user_domain.is_none() {
            Err(invalid(
                "auth.user_domain_name (or _id) is needed with auth.username",
            ))
        } else {
            Ok(())
        }
    };

    let auth_type = entry.auth_type.as_deref().map(str::to_ascii_lowercase);
    let (auth, region_image_endpoint, dialect) = match auth_type.as_deref() {
        None | Some("password") | Some("v3password") => {
            let user = user.ok_or_else(|| invalid("auth.username (or auth.user_id) is missing"))?;
            need_user_domain(&user)?;
            let password =
                non_empty(a.password).ok_or_else(|| invalid("auth.password is missing"))?;
            let mut project = pick(a.project_name, a.project_id);
            let project_domain =
                pick(a.project_domain_name, a.project_domain_id).or(default_domain);
            // Huawei IAM: the project is the region, and may be named
            // without a domain.
            if let (None, Some(r)) = (&project, hw_region) {
                project = Some(NameOrId::Name(r.to_owned()));
            }
            if profile != Profile::HuaweiCloud
                && matches!(project, Some(NameOrId::Name(_)))
                && project_domain.is_none()
            {
                return Err(invalid(
                    "auth.project_domain_name (or _id) is needed with auth.project_name",
                ));
            }
            let region_endpoint = hw_region.filter(|_| !has_override).map(huawei_ims_endpoint);
            let auth = Auth::Password(PasswordAuth {
                auth_url: auth_url(a.auth_url)?,
                user,
                user_domain: user_domain.clone(),
                password,
                project,
                project_domain,
            });
            (auth, region_endpoint, dialect_of(profile))
        }
        Some("v3applicationcredential") => {
            let secret = non_empty(a.application_credential_secret)
                .ok_or_else(|| invalid("auth.application_credential_secret is missing"))?;
            let credential = match (
                non_empty(a.application_credential_id),
                non_empty(a.application_credential_name),
            ) {
                (Some(id), _) => AppCredRef::Id(id),
                (None, Some(name)) => {
                    let user = user.ok_or_else(|| {
                        invalid(
                            "auth.username (or auth.user_id) is needed with auth.application_credential_name",
                        )
                    })?;
                    need_user_domain(&user)?;
                    AppCredRef::Name {
                        name,
                        user,
                        user_domain: user_domain.clone(),
                    }
                }
                (None, None) => {
                    return Err(invalid(
                        "auth.application_credential_id (or auth.application_credential_name) is missing",
                    ));
                }
            };
            let region_endpoint = hw_region.filter(|_| !has_override).map(huawei_ims_endpoint);
            let auth = Auth::ApplicationCredential(ApplicationCredential {
                auth_url: auth_url(a.auth_url)?,
                credential,
                secret,
            });
            (auth, region_endpoint, dialect_of(profile))
        }
        Some("aksk") => {
            let access_key =
                non_empty(a.access_key).ok_or_else(|| invalid("auth.access_key is missing"))?;
            let secret_key =
                non_empty(a.secret_key).ok_or_else(|| invalid("auth.secret_key is missing"))?;
            if non_empty(a.project_name).is_some() && non_empty(a.project_id.clone()).is_none() {
                return Err(invalid(
                    "auth_type aksk names the project by auth.project_id, not auth.project_name",
                ));
            }
            let project_id = non_empty(a.project_id);
            let security_token = non_empty(a.security_token);
            for (field, value) in [
                ("auth.access_key", Some(&access_key)),
                ("auth.project_id", project_id.as_ref()),
                ("auth.security_token", security_token.as_ref()),
            ] {
                if value.is_some_and(|v| !is_header_token(v)) {
                    return Err(invalid(&format!(
                        "{field} may hold only visible ASCII characters (no spaces)"
                    )));
                }
            }
            let region_endpoint = if has_override {
                None
            } else if profile == Profile::Otc {
                return Err(invalid(
                    "image_endpoint_override is needed with auth_type aksk and profile otc",
                ));
            } else {
                let region = region_name
                    .as_deref()
                    .filter(|r| is_huawei_region(r))
                    .ok_or_else(|| {
                        invalid(
                            "region_name (a Huawei Cloud region id like ap-southeast-1) or image_endpoint_override is needed with auth_type aksk",
                        )
                    })?;
                Some(huawei_ims_endpoint(region))
            };
            let auth = Auth::AkSk(AkSk {
                access_key,
                secret_key,
                project_id,
                security_token,
            });
            (auth, region_endpoint, Dialect::Huawei)
        }
        Some(_) => {
            // The value itself is not shown: a password pasted into the
            // wrong field must not reach a status.
            return Err(invalid(
                "auth_type is not supported (supported: password, v3password, v3applicationcredential, aksk)",
            ));
        }
    };
    let interface = entry
        .interface
        .or(entry.endpoint_type)
        .unwrap_or_else(|| "public".to_owned())
        .trim_end_matches("URL")
        .to_ascii_lowercase();
    Ok(CloudConfig {
        auth,
        region_name,
        interface,
        image_endpoint_override: entry.image_endpoint_override,
        region_image_endpoint,
        dialect,
        verify_tls: entry.verify.unwrap_or(true),
        cacert,
    })
}

fn dialect_of(profile: Profile) -> Dialect {
    match profile {
        Profile::HuaweiCloud | Profile::Otc => Dialect::Huawei,
        Profile::OpenStack => Dialect::OpenStack,
    }
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

    fn password(c: &CloudConfig) -> &PasswordAuth {
        match &c.auth {
            Auth::Password(p) => p,
            other => panic!("expected password auth, got {other:?}"),
        }
    }

    fn entry(body: &str) -> Result<CloudConfig, CloudsYamlError> {
        let indented: String = body.lines().map(|l| format!("    {l}\n")).collect();
        parse(&format!("clouds:\n  c:\n{indented}"), "c", None)
    }

    fn problem(body: &str) -> String {
        entry(body).expect_err(body).to_string()
    }

    #[test]
    fn reads_a_password_entry() {
        let c = parse(YAML, "mycloud", None).expect("valid entry");
        let p = password(&c);
        assert_eq!(p.user, NameOrId::Name("demo".into()));
        assert_eq!(p.project, Some(NameOrId::Name("demo".into())));
        assert_eq!(c.interface, "internal");
        assert_eq!(c.dialect, Dialect::OpenStack);
        assert_eq!(c.region_name.as_deref(), Some("RegionOne"));
        assert_eq!(c.fixed_image_endpoint(), None, "the catalog decides");
    }

    #[test]
    fn v3password_is_an_alias_and_ids_work_as_well_as_names() {
        let c = entry(
            "auth_type: v3password\nauth:\n  auth_url: https://k/v3\n  user_id: 6d2a\n  password: pw\n  project_id: 9f1e",
        )
        .expect("valid");
        let p = password(&c);
        assert_eq!(p.user, NameOrId::Id("6d2a".into()));
        assert_eq!(p.user_domain, None, "a user id needs no domain");
        assert_eq!(p.project, Some(NameOrId::Id("9f1e".into())));
        assert_eq!(p.project_domain, None, "a project id needs no domain");
        assert_eq!(c.auth.kind(), "password");
        let c = entry(
            "auth_type: PASSWORD\nauth:\n  auth_url: https://k/v3\n  username: u\n  user_domain_id: default\n  password: pw\n  project_name: p\n  project_domain_id: default",
        )
        .expect("valid");
        let p = password(&c);
        assert_eq!(p.user_domain, Some(NameOrId::Id("default".into())));
        assert_eq!(p.project_domain, Some(NameOrId::Id("default".into())));
    }

    #[test]
    fn huawei_profile_selects_the_ims_dialect_and_domain_applies_to_both() {
        let c = parse(YAML, "hw", None).expect("valid entry");
        assert_eq!(c.dialect, Dialect::Huawei);
        let p = password(&c);
        assert_eq!(p.user_domain, Some(NameOrId::Name("acct".into())));
        assert_eq!(p.project_domain, Some(NameOrId::Name("acct".into())));
        assert_eq!(
            c.fixed_image_endpoint(),
            Some("https://ims.ap-southeast-1.myhuaweicloud.com"),
            "the override"
        );
    }

    #[test]
    fn huawei_iam_needs_only_account_user_password_and_region() {
        let c = entry(
            "profile: huaweicloud\nregion_name: cn-north-4\nauth:\n  username: janitor\n  password: pw\n  user_domain_name: my-account",
        )
        .expect("valid");
        let p = password(&c);
        assert_eq!(p.auth_url, "https://iam.cn-north-4.myhuaweicloud.com/v3");
        assert_eq!(p.project, Some(NameOrId::Name("cn-north-4".into())));
        assert_eq!(p.project_domain, None, "IAM finds a project by its name");
        assert_eq!(
            c.fixed_image_endpoint(),
            Some("https://ims.cn-north-4.myhuaweicloud.com")
        );
        assert_eq!(c.dialect, Dialect::Huawei);
        // A sub-project, an explicit IAM URL and an override are kept.
        let c = entry(
            "profile: huaweicloud\nregion_name: cn-north-4\nimage_endpoint_override: http://127.0.0.1:9/\nauth:\n  auth_url: https://iam.myhuaweicloud.com/v3\n  username: janitor\n  password: pw\n  user_domain_name: my-account\n  project_name: cn-north-4_team",
        )
        .expect("valid");
        let p = password(&c);
        assert_eq!(p.auth_url, "https://iam.myhuaweicloud.com/v3");
        assert_eq!(p.project, Some(NameOrId::Name("cn-north-4_team".into())));
        assert_eq!(c.fixed_image_endpoint(), Some("http://127.0.0.1:9/"));
        // Without a region, the catalog is used, as before.
        let c = entry(
            "profile: huaweicloud\nauth:\n  auth_url: https://iam.myhuaweicloud.com/v3\n  username: janitor\n  password: pw\n  user_domain_name: my-account\n  project_name: cn-north-4",
        )
        .expect("valid");
        assert_eq!(c.fixed_image_endpoint(), None);
        // OTC keeps its catalog.
        let c = entry(
            "profile: otc\nregion_name: eu-de\nauth:\n  auth_url: https://iam.eu-de.otc.t-systems.com/v3\n  username: u\n  password: pw\n  domain_name: OTC-EU-DE-000\n  project_name: eu-de",
        )
        .expect("valid");
        assert_eq!(c.fixed_image_endpoint(), None);
        assert_eq!(c.dialect, Dialect::Huawei);
        // A region name that is no Huawei region id (Huawei Cloud Stack,
        // or worse) builds no URL: the entry must give auth_url, and the
        // catalog gives the endpoint.
        assert!(
            problem("profile: huaweicloud\nregion_name: 'evil.example/x#'\nauth:\n  username: u\n  password: pw\n  user_domain_name: a")
                .contains("auth.auth_url is missing"),
        );
        let c = entry(
            "profile: huaweicloud\nregion_name: RegionOne\nauth:\n  auth_url: https://iam.hcs.example/v3\n  username: u\n  password: pw\n  domain_name: a\n  project_name: p",
        )
        .expect("valid");
        assert_eq!(c.fixed_image_endpoint(), None);
    }

    #[test]
    fn application_credentials_by_id_or_by_name_with_the_user() {
        let c = entry(
            "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_id: ac1\n  application_credential_secret: ac-s3cret\n  project_name: ignored",
        )
        .expect("valid");
        let Auth::ApplicationCredential(a) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!(a.credential, AppCredRef::Id("ac1".into()));
        assert_eq!(a.secret, "ac-s3cret");
        assert_eq!(c.auth.kind(), "v3applicationcredential");
        assert_eq!(c.secrets(), vec!["ac-s3cret"]);
        let c = entry(
            "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_name: janitor\n  application_credential_secret: ac-s3cret\n  username: demo\n  user_domain_name: Default",
        )
        .expect("valid");
        let Auth::ApplicationCredential(a) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!(
            a.credential,
            AppCredRef::Name {
                name: "janitor".into(),
                user: NameOrId::Name("demo".into()),
                user_domain: Some(NameOrId::Name("Default".into())),
            }
        );
        let c = entry(
            "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_name: janitor\n  application_credential_secret: s\n  user_id: u1",
        )
        .expect("valid");
        let Auth::ApplicationCredential(a) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert!(
            matches!(&a.credential, AppCredRef::Name { user: NameOrId::Id(u), user_domain: None, .. } if u == "u1")
        );
        for (body, want) in [
            (
                "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_id: ac1",
                "auth.application_credential_secret is missing",
            ),
            (
                "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_secret: s",
                "auth.application_credential_id (or auth.application_credential_name) is missing",
            ),
            (
                "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_name: n\n  application_credential_secret: s",
                "auth.username (or auth.user_id) is needed with auth.application_credential_name",
            ),
            (
                "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_name: n\n  application_credential_secret: s\n  username: demo",
                "auth.user_domain_name (or _id) is needed with auth.username",
            ),
            (
                "auth_type: v3applicationcredential\nauth:\n  application_credential_id: ac1\n  application_credential_secret: s",
                "auth.auth_url is missing",
            ),
        ] {
            let got = problem(body);
            assert!(got.contains(want), "{body}: {got}");
            assert!(!got.contains("ac1"), "{got}");
        }
    }

    #[test]
    fn aksk_entries_build_the_ims_endpoint_from_the_region() {
        let c = entry(
            "auth_type: aksk\nprofile: huaweicloud\nregion_name: ap-southeast-1\nauth:\n  access_key: AKEXAMPLE\n  secret_key: sk-s3cret\n  project_id: 0a1b2c",
        )
        .expect("valid");
        let Auth::AkSk(k) = &c.auth else {
            panic!("{:?}", c.auth)
        };
        assert_eq!(k.access_key, "AKEXAMPLE");
        assert_eq!(k.project_id.as_deref(), Some("0a1b2c"));
        assert_eq!(k.security_token, None);
        assert_eq!(c.dialect, Dialect::Huawei);
        assert_eq!(
            c.fixed_image_endpoint(),
            Some("https://ims.ap-southeast-1.myhuaweicloud.com")
        );
        assert_eq!(c.auth.keystone_url(), None);
        assert!(c.insecurities().is_empty());
        // Temporary keys; no profile needed; the override wins.
        let c = entry(
            "auth_type: aksk\nregion_name: cn-north-4\nimage_endpoint_override: http://127.0.0.1:8080\nauth:\n  access_key: AK\n  secret_key: sk-s3cret\n  security_token: tok-s3cret",
        )
        .expect("valid");
        assert_eq!(c.fixed_image_endpoint(), Some("http://127.0.0.1:8080"));
        assert_eq!(c.dialect, Dialect::Huawei);
        assert_eq!(c.secrets(), vec!["sk-s3cret", "tok-s3cret"]);
        assert_eq!(
            c.insecurities(),
            vec!["image_endpoint_override uses http://"]
        );
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("sk-s3cret") && !printed.contains("tok-s3cret"),
            "{printed}"
        );
        for (body, want) in [
            (
                "auth_type: aksk\nregion_name: r1\nauth:\n  secret_key: s",
                "auth.access_key is missing",
            ),
            (
                "auth_type: aksk\nregion_name: r1\nauth:\n  access_key: a",
                "auth.secret_key is missing",
            ),
            (
                "auth_type: aksk\nauth:\n  access_key: a\n  secret_key: s",
                "region_name (a Huawei Cloud region id like ap-southeast-1) or image_endpoint_override is needed",
            ),
            (
                "auth_type: aksk\nregion_name: Region One\nauth:\n  access_key: a\n  secret_key: s",
                "region_name (a Huawei Cloud region id like ap-southeast-1) or image_endpoint_override is needed",
            ),
            (
                "auth_type: aksk\nprofile: otc\nregion_name: eu-de\nauth:\n  access_key: a\n  secret_key: s",
                "image_endpoint_override is needed with auth_type aksk and profile otc",
            ),
            (
                "auth_type: aksk\nregion_name: r1\nauth:\n  access_key: a\n  secret_key: s\n  project_name: r1",
                "names the project by auth.project_id",
            ),
            (
                "auth_type: aksk\nregion_name: r1\nauth:\n  access_key: \"a\\r\\nX-Evil: 1\"\n  secret_key: s",
                "auth.access_key may hold only visible ASCII",
            ),
            (
                "auth_type: aksk\nregion_name: r1\nauth:\n  access_key: a\n  secret_key: s\n  security_token: 'a b'",
                "auth.security_token may hold only visible ASCII",
            ),
        ] {
            let got = problem(body);
            assert!(got.contains(want), "{body}: {got}");
        }
    }

    /// The Secrets in `deploy/examples/` parse as documented.
    #[test]
    fn the_example_secrets_parse() {
        let examples = [
            (
                include_str!("../../deploy/examples/openstack-creds.yaml"),
                "mycloud",
                "password",
            ),
            (
                include_str!("../../deploy/examples/openstack-appcred-creds.yaml"),
                "mycloud",
                "v3applicationcredential",
            ),
            (
                include_str!("../../deploy/examples/huawei-creds.yaml"),
                "hwcloud",
                "password",
            ),
            (
                include_str!("../../deploy/examples/huawei-aksk-creds.yaml"),
                "hwcloud",
                "aksk",
            ),
            (
                include_str!("../../deploy/examples/huawei-temporary-aksk-creds.yaml"),
                "hwcloud",
                "aksk",
            ),
        ];
        for (text, cloud, kind) in examples {
            let secret: serde_yaml::Value = serde_yaml::from_str(text).expect("yaml");
            let clouds = secret["stringData"]["clouds.yaml"]
                .as_str()
                .expect("stringData.clouds.yaml");
            let c = parse(clouds, cloud, None).expect("the example parses");
            assert_eq!(c.auth.kind(), kind);
            if cloud == "hwcloud" {
                assert_eq!(c.dialect, Dialect::Huawei);
                assert_eq!(
                    c.fixed_image_endpoint(),
                    Some("https://ims.ap-southeast-1.myhuaweicloud.com")
                );
            }
        }
    }

    #[test]
    fn every_secret_changes_the_fingerprint() {
        let base = "auth_type: aksk\nregion_name: r1\nauth:\n  access_key: a\n  secret_key: s1\n  security_token: t1";
        let f = |b: &str| entry(b).expect("valid").fingerprint();
        assert_eq!(f(base), f(base));
        assert_ne!(f(base), f(&base.replace("s1", "s2")));
        assert_ne!(f(base), f(&base.replace("t1", "t2")));
        let ac = "auth_type: v3applicationcredential\nauth:\n  auth_url: https://k/v3\n  application_credential_id: ac1\n  application_credential_secret: s1";
        assert_ne!(f(ac), f(&ac.replace("s1", "s2")));
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
        let token = "clouds:\n  c:\n    auth_type: v3token\n    auth: {}\n";
        let err = parse(token, "c", None)
            .expect_err("unsupported")
            .to_string();
        assert!(err.contains("auth_type is not supported"), "{err}");
        assert!(!err.contains("v3token"), "values are not shown: {err}");
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
