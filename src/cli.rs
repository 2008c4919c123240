//! Command-line flags, each with an environment-variable fallback.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Deletes cloud VM images (OpenStack Glance, Huawei Cloud IMS) when their
/// CloudImage resources are deleted.
#[derive(Clone, Debug, Parser)]
#[command(name = "cloudimage-operator", version)]
pub struct Args {
    /// Path to a kubeconfig. Without it: in-cluster config, else the default kubeconfig.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace to watch; repeat or comma-separate for several. All namespaces when absent.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// How many CloudImages are reconciled at the same time, in all; also
    /// the most calls at once to one cloud identity, whose own limit is
    /// halved when it pushes back (429, 5xx, timeouts) and grows again by
    /// one per round of answers.
    #[arg(long, env = "CLOUDIMAGE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// How often a healthy CloudImage's image is looked up again (e.g. 30s,
    /// 5m, 1h). Each object has its own second in the period (from its uid),
    /// so the lookups of many objects are spread evenly over it.
    #[arg(long, env = "CLOUDIMAGE_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// Image lookups per second, at most, per cloud identity (Keystone URL
    /// and project): a start-up with thousands of new objects, or a sweep,
    /// never sends a burst. Deletions are not limited by this.
    #[arg(long, env = "CLOUDIMAGE_CHECK_RATE", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub check_rate: u32,

    /// First retry delay after a transient failure (cloud unreachable, busy, throttled).
    #[arg(long, env = "CLOUDIMAGE_RETRY_FAST", default_value = "2s", value_parser = parse_duration)]
    pub retry_fast: Duration,

    /// First retry delay after a failure a person must fix (protected, forbidden, credentials).
    #[arg(long, env = "CLOUDIMAGE_RETRY_SLOW", default_value = "30s", value_parser = parse_duration)]
    pub retry_slow: Duration,

    /// Longest delay between retries.
    #[arg(long, env = "CLOUDIMAGE_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub retry_max: Duration,

    /// How often a deletion that Huawei IMS accepted is checked for completion.
    #[arg(long, env = "CLOUDIMAGE_ACCEPTED_POLL_INTERVAL", default_value = "3s", value_parser = parse_duration)]
    pub accepted_poll_interval: Duration,

    /// A deletion the cloud accepted (IMS) but still lists after this long
    /// is reported as DeletionStalled, with a Warning Event; polling goes on.
    #[arg(long, env = "CLOUDIMAGE_DELETION_STALL_AFTER", default_value = "10m", value_parser = parse_duration)]
    pub deletion_stall_after: Duration,

    /// Report what would be deleted, never call DELETE (for a first rollout).
    /// Finalizers are kept: objects being deleted wait until dry run is off.
    #[arg(long, env = "CLOUDIMAGE_DRY_RUN")]
    pub dry_run: bool,

    /// How many CloudImages of one namespace are reconciled at the same
    /// time, at most (default: half of --concurrency, at least 1), so one
    /// namespace cannot hold every slot.
    #[arg(long, env = "CLOUDIMAGE_PER_NAMESPACE_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub per_namespace_concurrency: Option<u16>,

    /// Networks the operator may call (auth_url, image endpoints), as CIDRs;
    /// repeat or comma-separate. Empty: any address not denied.
    #[arg(
        long = "allow-cidr",
        env = "CLOUDIMAGE_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    pub allow_cidrs: Vec<ipnet::IpNet>,

    /// Networks the operator must never call, as CIDRs; repeat or
    /// comma-separate. Checked on every resolved address, so DNS cannot get
    /// around it. Deny link-local (169.254.0.0/16, the cloud metadata
    /// service) and the cluster's pod and service ranges.
    #[arg(
        long = "deny-cidr",
        env = "CLOUDIMAGE_DENY_CIDRS",
        value_delimiter = ','
    )]
    pub deny_cidrs: Vec<ipnet::IpNet>,

    /// Refuse `http://` endpoints and `verify: false` (CredentialsInvalid)
    /// instead of warning about them.
    #[arg(long, env = "CLOUDIMAGE_REFUSE_INSECURE")]
    pub refuse_insecure: bool,

    /// Run leader election with a Lease, so several replicas can run and
    /// only one acts (the others keep their caches warm and take over).
    #[arg(long, env = "CLOUDIMAGE_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the Lease (one per operator release; shards need one each).
    #[arg(
        long,
        env = "CLOUDIMAGE_LEADER_ELECTION_ID",
        default_value = "cloudimage-operator"
    )]
    pub leader_election_id: String,

    /// Namespace of the Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// How long a Lease is valid without renewal; a standby takes over after it.
    #[arg(long, env = "CLOUDIMAGE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// A leader that could not renew for this long stops acting (shorter
    /// than --lease-duration, so two never act at once).
    #[arg(long, env = "CLOUDIMAGE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often the Lease is renewed or tried.
    #[arg(long, env = "CLOUDIMAGE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// Only CloudImages with these labels (a Kubernetes label selector), to
    /// split a very large fleet between several operator releases, each
    /// with its own --leader-election-id.
    #[arg(long, env = "CLOUDIMAGE_LABEL_SELECTOR")]
    pub label_selector: Option<String>,

    /// Address of the health endpoints (/livez, /readyz). Port 0 picks a free one.
    #[arg(long, env = "CLOUDIMAGE_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: std::net::SocketAddr,

    /// Address of the metrics endpoint (/metrics), or `off`. Port 0 picks a free one.
    #[arg(long, env = "CLOUDIMAGE_METRICS_ADDR", default_value = "0.0.0.0:8080", value_parser = parse_optional_addr)]
    pub metrics_addr: ListenAddr,

    /// Log format.
    #[arg(long, env = "CLOUDIMAGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` EnvFilter syntax (e.g. `info`, `cloudimage_operator=debug`).
    #[arg(long, env = "CLOUDIMAGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A listen address, or none (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub Option<std::net::SocketAddr>);

/// Parses a listen address, or `off` (also empty) for none.
pub fn parse_optional_addr(s: &str) -> Result<ListenAddr, String> {
    match s.trim() {
        "" | "off" => Ok(ListenAddr(None)),
        a => a
            .parse()
            .map(|a| ListenAddr(Some(a)))
            .map_err(|e| format!("`{a}` is not an address like 0.0.0.0:8080 (or off): {e}")),
    }
}

impl Args {
    /// Checks that flags fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.leader_elect && self.renew_deadline >= self.lease_duration {
            return Err("--renew-deadline must be shorter than --lease-duration".into());
        }
        if self.leader_elect && self.retry_period >= self.renew_deadline {
            return Err("--retry-period must be shorter than --renew-deadline".into());
        }
        Ok(())
    }

    /// The per-namespace cap: the flag, else half of --concurrency (at least 1).
    pub fn namespace_slots(&self) -> usize {
        usize::from(
            self.per_namespace_concurrency
                .unwrap_or((self.concurrency / 2).max(1))
                .min(self.concurrency),
        )
    }
}

/// Parses a duration the way `humantime` writes them (`500ms`, `30s`, `5m`,
/// `1h 30m`), or a bare number of seconds (kept for older manifests).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("`{s}` is not a duration like 30s, 5m or 1h"))?
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("`{s}` is not a duration like 30s, 5m or 1h: {e}"))?
    };
    if d.is_zero() {
        return Err("a duration must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn metrics_can_be_turned_off_and_namespaces_get_half_the_slots() {
        let a = Args::try_parse_from(["x", "--metrics-addr", "off"]).expect("parses");
        assert_eq!(a.metrics_addr, ListenAddr(None));
        assert_eq!(a.namespace_slots(), 8, "half of the default 16");
        let a = Args::try_parse_from(["x", "--concurrency", "1"]).expect("parses");
        assert_eq!(a.namespace_slots(), 1);
        let a = Args::try_parse_from([
            "x",
            "--concurrency",
            "8",
            "--per-namespace-concurrency",
            "9",
        ])
        .expect("parses");
        assert_eq!(a.namespace_slots(), 8, "never more than the total");
    }

    #[test]
    fn egress_networks_parse_as_cidrs() {
        let a = Args::try_parse_from(["x", "--deny-cidr", "169.254.0.0/16,10.96.0.0/12"])
            .expect("parses");
        assert_eq!(a.deny_cidrs.len(), 2);
        assert!(Args::try_parse_from(["x", "--deny-cidr", "not-a-net"]).is_err());
    }

    #[test]
    fn namespaces_split_on_commas() {
        let a =
            Args::try_parse_from(["x", "--namespace", "a,b", "--namespace", "c"]).expect("parses");
        assert_eq!(a.namespaces, vec!["a", "b", "c"]);
    }
}
