//! Kubernetes-style conditions: set one by type, moving `lastTransitionTime`
//! only when its status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::reason::Reason;

pub const READY: &str = "Ready";
pub const DELETING: &str = "Deleting";

/// One condition as the reconciler wants it; the time bookkeeping is done by [`set`].
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: Reason,
    pub message: String,
}

/// Puts `wanted` into `conditions`, keeping `lastTransitionTime` when the
/// status did not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    wanted: Wanted<'_>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if wanted.status { "True" } else { "False" }.to_owned();
    let previous = conditions.iter().position(|c| c.type_ == wanted.type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    let c = Condition {
        type_: wanted.type_.to_owned(),
        status,
        reason: wanted.reason.as_str().to_owned(),
        message: wanted.message,
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = c,
        None => conditions.push(c),
    }
}

/// Removes the condition of `type_`, if present.
pub fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The reason of the condition of `type_`, if present.
pub fn reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("date")
    }

    fn wanted(status: bool, reason: Reason) -> Wanted<'static> {
        Wanted {
            type_: READY,
            status,
            reason,
            message: format!("because {reason}"),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set(
            &mut c,
            wanted(false, Reason::ImageNotFound),
            Some(1),
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time, Time(at("2026-01-01T00:00:00Z")));
        set(
            &mut c,
            wanted(false, Reason::CloudUnavailable),
            Some(2),
            at("2026-01-01T00:05:00Z"),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason, "CloudUnavailable");
        assert_eq!(c[0].observed_generation, Some(2));
        assert_eq!(
            c[0].last_transition_time,
            Time(at("2026-01-01T00:00:00Z")),
            "same status keeps the time"
        );
        set(
            &mut c,
            wanted(true, Reason::ImageAvailable),
            Some(2),
            at("2026-01-01T00:10:00Z"),
        );
        assert_eq!(c[0].status, "True");
        assert_eq!(c[0].last_transition_time, Time(at("2026-01-01T00:10:00Z")));
    }

    #[test]
    fn conditions_are_keyed_by_type() {
        let mut c = Vec::new();
        set(
            &mut c,
            wanted(true, Reason::ImageAvailable),
            None,
            at("2026-01-01T00:00:00Z"),
        );
        set(
            &mut c,
            Wanted {
                type_: DELETING,
                status: true,
                reason: Reason::Protected,
                message: String::new(),
            },
            None,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(reason(&c, DELETING), Some("Protected"));
        assert_eq!(reason(&c, READY), Some("ImageAvailable"));
        remove(&mut c, DELETING);
        assert_eq!(reason(&c, DELETING), None);
        assert_eq!(c.len(), 1);
    }
}
