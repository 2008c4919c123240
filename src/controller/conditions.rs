//! Kubernetes-style conditions: set one by type, moving `lastTransitionTime`
//! only when its status changes; and the kstatus pair (`Stalled`,
//! `Reconciling`) that GitOps tools read as Failed / InProgress.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::reason::Reason;

pub const READY: &str = "Ready";
pub const DELETING: &str = "Deleting";
/// kstatus: True while the operator cannot make progress until a person acts
/// (Flux and kstatus-based tools report the object as Failed).
pub const STALLED: &str = "Stalled";
/// kstatus: True while the operator is still working towards the state it
/// reports (kstatus reports the object as InProgress).
pub const RECONCILING: &str = "Reconciling";

/// Where the operator stands with an object, in kstatus terms. Both
/// conditions follow the "abnormal-true" convention: present (and True)
/// only while they apply, removed otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing left to do: neither condition.
    Settled,
    /// Working on it, or retrying something that resolves itself: `Reconciling=True`.
    Reconciling,
    /// Blocked until a person acts: `Stalled=True`.
    Stalled,
}

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

/// Sets `Stalled` or `Reconciling` (with `reason` and `message`) as
/// `progress` says, and removes the other one; [`Progress::Settled`] removes both.
pub fn set_progress(
    conditions: &mut Vec<Condition>,
    progress: Progress,
    reason: Reason,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (on, off): (&[&str], &[&str]) = match progress {
        Progress::Settled => (&[], &[STALLED, RECONCILING]),
        Progress::Reconciling => (&[RECONCILING], &[STALLED]),
        Progress::Stalled => (&[STALLED], &[RECONCILING]),
    };
    for type_ in off {
        remove(conditions, type_);
    }
    for type_ in on {
        set(
            conditions,
            Wanted {
                type_,
                status: true,
                reason,
                message: message.to_owned(),
            },
            generation,
            now,
        );
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

    fn find<'a>(c: &'a [Condition], type_: &str) -> Option<&'a Condition> {
        c.iter().find(|c| c.type_ == type_)
    }

    #[test]
    fn stalled_and_reconciling_exclude_each_other_and_go_when_settled() {
        let t0 = at("2026-01-01T00:00:00Z");
        let t1 = at("2026-01-01T00:01:00Z");
        let t2 = at("2026-01-01T00:02:00Z");
        let mut c = Vec::new();
        set(&mut c, wanted(false, Reason::ImageNotFound), Some(1), t0);

        set_progress(
            &mut c,
            Progress::Stalled,
            Reason::ImageNotFound,
            "gone",
            Some(1),
            t0,
        );
        let stalled = find(&c, STALLED).expect("Stalled");
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "ImageNotFound")
        );
        assert_eq!(stalled.message, "gone");
        assert_eq!(find(&c, RECONCILING), None);

        // Another person-needing reason: same status, the time stays.
        set_progress(
            &mut c,
            Progress::Stalled,
            Reason::AuthFailed,
            "401",
            Some(1),
            t1,
        );
        let stalled = find(&c, STALLED).expect("Stalled");
        assert_eq!(stalled.reason, "AuthFailed");
        assert_eq!(stalled.last_transition_time, Time(t0));

        set_progress(
            &mut c,
            Progress::Reconciling,
            Reason::CloudUnavailable,
            "503",
            Some(2),
            t1,
        );
        assert_eq!(find(&c, STALLED), None);
        let rec = find(&c, RECONCILING).expect("Reconciling");
        assert_eq!(
            (
                rec.status.as_str(),
                rec.reason.as_str(),
                rec.message.as_str()
            ),
            ("True", "CloudUnavailable", "503")
        );
        assert_eq!(rec.observed_generation, Some(2));
        assert_eq!(rec.last_transition_time, Time(t1));

        set_progress(
            &mut c,
            Progress::Settled,
            Reason::ImageAvailable,
            "",
            Some(2),
            t2,
        );
        assert_eq!(find(&c, STALLED), None);
        assert_eq!(find(&c, RECONCILING), None);
        assert_eq!(reason(&c, READY), Some("ImageNotFound"), "Ready untouched");

        // Stalled again after a pause: a new transition time.
        set_progress(
            &mut c,
            Progress::Stalled,
            Reason::Forbidden,
            "403",
            Some(2),
            t2,
        );
        assert_eq!(
            find(&c, STALLED).map(|s| s.last_transition_time.clone()),
            Some(Time(t2))
        );
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
