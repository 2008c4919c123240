//! Which addresses the operator may connect to on behalf of a Secret, and
//! which connections count as insecure. The policy is checked on the
//! resolved address of every connection (a DNS resolver that drops refused
//! addresses, so DNS rebinding cannot get around it) and on IP-literal hosts
//! before any request (those never reach a resolver).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use super::error::{EgressRefused, Peer, egress_refused};
use super::{CloudError, ErrorKind};

/// Where the operator may connect, and whether it may use plain HTTP or skip
/// TLS verification. The default allows every address and insecure
/// connections (the test environment runs on 127.0.0.1 over HTTP).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// When not empty, only addresses in one of these networks are allowed.
    pub allow: Vec<IpNet>,
    /// Addresses in these networks are refused, whatever `allow` says.
    pub deny: Vec<IpNet>,
    /// Refuse `http://` URLs and `verify: false` (see `CloudConfig::insecurities`).
    pub refuse_insecure: bool,
}

impl EgressPolicy {
    /// The networks every operator should deny besides the cluster's own
    /// service and pod CIDRs: loopback (the operator's own admin port),
    /// "this host" (`0.0.0.0` reaches loopback on Linux), link-local
    /// (cloud metadata services at 169.254.169.254), and AWS's IPv6 metadata
    /// address.
    pub fn recommended_deny() -> Vec<IpNet> {
        [
            "127.0.0.0/8",
            "0.0.0.0/8",
            "169.254.0.0/16",
            "::1/128",
            "::/128",
            "fe80::/10",
            "fd00:ec2::254/128",
        ]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
    }

    /// Whether no address is refused (then proxies from the environment
    /// stay in use; with any rule they are not, see `client.rs`).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether the operator may connect to `ip`. An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`) is judged as the IPv4 address it is.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let matches = |net: &IpNet| net.contains(&ip);
        if self.deny.iter().any(matches) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(matches)
    }

    /// Checks a URL before a request: an IP-literal host must be permitted
    /// (host names are checked by [`PolicyResolver`] once resolved), and a
    /// plain-HTTP URL is refused when `refuse_insecure` is set.
    pub fn check_url(&self, peer: Peer, url: &url::Url) -> Result<(), CloudError> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => None,
            None => {
                return Err(CloudError::new(
                    ErrorKind::CredentialsInvalid,
                    format!("the URL of {} has no host", peer.name()),
                ));
            }
        };
        if ip.is_some_and(|ip| !self.permits(ip)) {
            return Err(egress_refused(peer));
        }
        if self.refuse_insecure && url.scheme() != "https" {
            return Err(CloudError::new(
                ErrorKind::CredentialsInvalid,
                format!(
                    "the operator refuses insecure connections (egress policy): the URL of {} uses http://",
                    peer.name()
                ),
            ));
        }
        Ok(())
    }
}

/// A DNS resolver that drops the addresses the policy refuses, and fails
/// with [`EgressRefused`] when none is left. Resolution itself is the
/// system's (`getaddrinfo`), as reqwest's default.
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        PolicyResolver { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(Box::new(EgressRefused) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("network")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn the_policy_decides_by_deny_then_allow() {
        let open = EgressPolicy::default();
        let deny = EgressPolicy {
            deny: EgressPolicy::recommended_deny(),
            ..Default::default()
        };
        let allow_only = EgressPolicy {
            allow: vec![net("203.0.113.0/24"), net("2001:db8::/32")],
            deny: vec![net("203.0.113.9/32")],
            refuse_insecure: false,
        };
        for (policy, address, permitted) in [
            (&open, "127.0.0.1", true),
            (&open, "169.254.169.254", true),
            (&deny, "169.254.169.254", false),
            (&deny, "::ffff:169.254.169.254", false),
            (&deny, "::ffff:127.0.0.1", false),
            (&deny, "0.0.0.0", false),
            (&deny, "::1", false),
            (&deny, "fd00:ec2::254", false),
            (&deny, "fe80::1", false),
            (&deny, "198.51.100.7", true),
            (&allow_only, "203.0.113.5", true),
            (&allow_only, "203.0.113.9", false),
            (&allow_only, "2001:db8::5", true),
            (&allow_only, "198.51.100.7", false),
        ] {
            assert_eq!(
                policy.permits(ip(address)),
                permitted,
                "{address} under {policy:?}"
            );
        }
        assert!(open.is_open());
        assert!(!deny.is_open());
    }

    #[test]
    fn ip_literal_urls_are_checked_and_the_message_names_no_address() {
        let deny = EgressPolicy {
            deny: EgressPolicy::recommended_deny(),
            ..Default::default()
        };
        for u in [
            "http://169.254.169.254/latest",
            "http://127.1:5000/v3",
            "http://[::ffff:7f00:1]:9292",
            "http://0x7f000001/",
        ] {
            let url = url::Url::parse(u).expect("url");
            let err = deny
                .check_url(Peer::Keystone, &url)
                .expect_err("refused address");
            assert_eq!(err.kind, ErrorKind::CredentialsInvalid, "{u}");
            assert_eq!(
                err.message,
                "the operator may not call this Keystone address (egress policy)"
            );
        }
        let ok = url::Url::parse("http://keystone.example:5000/v3").expect("url");
        assert_eq!(deny.check_url(Peer::Keystone, &ok), Ok(()));
        let strict = EgressPolicy {
            refuse_insecure: true,
            ..Default::default()
        };
        let err = strict
            .check_url(Peer::ImageService, &ok)
            .expect_err("http refused");
        assert!(err.message.contains("uses http://"), "{}", err.message);
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses() {
        use reqwest::dns::Resolve;
        let deny = Arc::new(EgressPolicy {
            deny: vec![net("127.0.0.0/8"), net("::1/128")],
            ..Default::default()
        });
        let r = PolicyResolver::new(deny);
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let err = match r.resolve(name).await {
            Err(e) => e,
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
        };
        assert!(err.downcast_ref::<EgressRefused>().is_some(), "{err}");
        let open = PolicyResolver::new(Arc::new(EgressPolicy::default()));
        let name: reqwest::dns::Name = "localhost".parse().expect("name");
        let addrs: Vec<_> = match open.resolve(name).await {
            Ok(a) => a.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(!addrs.is_empty());
    }
}
