//! Status, computed without I/O: from the previous status, what the cloud
//! said (or the step a deletion reached) and the time, to the next status,
//! and whether a user must be told.
//!
//! Beside `Ready` and `Deleting`, every status carries the kstatus pair that
//! GitOps tools read: `Stalled=True` while a person must act (the same reason
//! and message as the condition that explains it), `Reconciling=True` while
//! the operator is still working or retrying something that resolves itself,
//! neither once the image is active.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::backoff::Pace;
use super::conditions::{self, DELETING, Progress, READY, Wanted};
use super::problem::Problem;
use super::reason::Reason;
use crate::cloud::{ImageInfo, Lookup};
use crate::crd::{CloudImageStatus, DeletionError, DeletionProgress, ImageObservation};

/// Where a deletion stands after one step.
#[derive(Clone, Debug, PartialEq)]
pub enum DeletionStep {
    /// Other finalizers must go first.
    WaitingForFinalizers(Vec<String>),
    /// IMS accepted the DELETE; the image is still visible. `stalled`
    /// once it still is after `--deletion-stall-after` (polling goes on).
    Accepted {
        image: Option<ImageInfo>,
        attempted: bool,
        stalled: bool,
    },
    /// `--dry-run`: the image would be deleted now.
    DryRun(Option<ImageInfo>),
    /// The step failed; `attempted` says whether it counts as an attempt.
    Failed { problem: Problem, attempted: bool },
}

impl DeletionStep {
    pub fn reason(&self) -> Reason {
        match self {
            DeletionStep::WaitingForFinalizers(_) => Reason::WaitingForFinalizers,
            DeletionStep::Accepted { stalled: true, .. } => Reason::DeletionStalled,
            DeletionStep::Accepted { .. } => Reason::DeletionAccepted,
            DeletionStep::DryRun(_) => Reason::DryRun,
            DeletionStep::Failed { problem, .. } => problem.reason,
        }
    }

    /// Whether the deletion goes on by itself (other finalizers, an accepted
    /// deletion, a transient failure) or waits for a person (a failure that
    /// needs one; `--dry-run`, which never deletes until it is turned off).
    pub fn progress(&self) -> Progress {
        match self {
            DeletionStep::Accepted { stalled: true, .. } => Progress::Stalled,
            DeletionStep::WaitingForFinalizers(_) | DeletionStep::Accepted { .. } => {
                Progress::Reconciling
            }
            DeletionStep::DryRun(_) => Progress::Stalled,
            DeletionStep::Failed { problem, .. } => problem_progress(problem),
        }
    }
}

/// A problem a person has to fix (the slow retry pace: protected, forbidden,
/// credentials missing or refused, invalid spec, untrusted answers...) stalls
/// the object; a transient one (cloud unavailable, throttled, image in use,
/// watch not synced) is retried while it reconciles.
pub fn problem_progress(problem: &Problem) -> Progress {
    match problem.pace {
        Pace::Slow => Progress::Stalled,
        Pace::Fast => Progress::Reconciling,
    }
}

/// Image states the cloud leaves on its own (the data is being uploaded,
/// saved or imported). Any other state that is not `active` (`killed`,
/// `deactivated`, `deleted`, `pending_delete`, or none at all) needs a person.
const PASSING_IMAGE_STATES: &[&str] = &["queued", "saving", "uploading", "importing"];

fn observation(info: &ImageInfo) -> ImageObservation {
    ImageObservation {
        name: info.name.clone(),
        status: info.status.clone(),
        protected: info.protected,
        size: info.size,
        checksum: info.checksum.clone(),
        visibility: info.visibility.clone(),
        updated_at: info.updated_at.clone(),
    }
}

/// Status of a live object after a GET of its image (or a failure to make one).
pub fn live_status(
    prev: &CloudImageStatus,
    generation: Option<i64>,
    image_id: &str,
    result: &Result<Lookup, Problem>,
    now: Timestamp,
) -> CloudImageStatus {
    let mut s = prev.clone();
    s.observed_generation = generation;
    s.deletion = None;
    conditions::remove(&mut s.conditions, DELETING);
    let (ready, progress) = match result {
        Ok(Lookup::Found(info)) => {
            s.image = Some(observation(info));
            let state = info.status.as_deref().unwrap_or("unknown");
            let protected = if info.protected == Some(true) {
                ", protected"
            } else {
                ""
            };
            if state == "active" {
                let ready = Wanted {
                    type_: READY,
                    status: true,
                    reason: Reason::ImageAvailable,
                    message: format!("image {image_id} is active{protected}"),
                };
                (ready, Progress::Settled)
            } else {
                let ready = Wanted {
                    type_: READY,
                    status: false,
                    reason: Reason::ImageNotActive,
                    message: format!("image {image_id} is {state}{protected}"),
                };
                let progress = if PASSING_IMAGE_STATES.contains(&state) {
                    Progress::Reconciling
                } else {
                    Progress::Stalled
                };
                (ready, progress)
            }
        }
        Ok(Lookup::NotFound) => {
            // Keep what was last seen of the image (name, size, ...) next to the new status.
            let mut img = s.image.take().unwrap_or_default();
            img.status = Some("NotFound".into());
            s.image = Some(img);
            let ready = Wanted {
                type_: READY,
                status: false,
                reason: Reason::ImageNotFound,
                message: format!(
                    "image {image_id} was not found: it was deleted outside Kubernetes, or these credentials cannot see it (another project's private image). The operator does not recreate images."
                ),
            };
            (ready, Progress::Stalled)
        }
        Err(p) => {
            let ready = Wanted {
                type_: READY,
                status: false,
                reason: p.reason,
                message: p.full_message(),
            };
            (ready, problem_progress(p))
        }
    };
    let (reason, message) = (ready.reason, ready.message.clone());
    conditions::set(&mut s.conditions, ready, generation, now);
    conditions::set_progress(
        &mut s.conditions,
        progress,
        reason,
        &message,
        generation,
        now,
    );
    s
}

/// Status of an object being deleted after one deletion step.
pub fn deleting_status(
    prev: &CloudImageStatus,
    generation: Option<i64>,
    image_id: &str,
    step: &DeletionStep,
    now: Timestamp,
) -> CloudImageStatus {
    let mut s = prev.clone();
    s.observed_generation = generation;
    let mut progress = s.deletion.take().unwrap_or_default();
    let attempted = match step {
        DeletionStep::Accepted { attempted, .. } | DeletionStep::Failed { attempted, .. } => {
            *attempted
        }
        _ => false,
    };
    if matches!(step, DeletionStep::Accepted { .. }) {
        progress.accepted_time.get_or_insert(Time(now));
    }
    if attempted {
        progress.attempts = progress.attempts.saturating_add(1);
        progress.first_attempt_time.get_or_insert(Time(now));
        progress.last_attempt_time = Some(Time(now));
    }
    let message = match step {
        DeletionStep::WaitingForFinalizers(others) => {
            format!(
                "waiting for the other finalizers to be removed before deleting image {image_id}: {}",
                others.join(", ")
            )
        }
        DeletionStep::Accepted { stalled: true, .. } => format!(
            "the cloud accepted the deletion of image {image_id}, but still lists it long after (since {}); the operator keeps checking and sends the DELETE again from time to time. Look at the image in the cloud",
            progress
                .accepted_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        ),
        DeletionStep::Accepted { .. } => format!(
            "the cloud accepted the deletion of image {image_id}; waiting until it no longer lists it"
        ),
        DeletionStep::DryRun(_) => format!(
            "dry run: the operator would delete image {image_id} now; it will not while --dry-run is set"
        ),
        DeletionStep::Failed { problem, .. } => problem.full_message(),
    };
    progress.last_error = match step {
        DeletionStep::Failed { problem, .. } => Some(DeletionError {
            reason: problem.reason.as_str().to_owned(),
            message: crate::cloud::error::truncate(
                problem.message.clone(),
                crate::cloud::error::MAX_ERROR_MESSAGE_CHARS,
            ),
            http_status: problem.http_status,
            request_id: problem.request_id.clone().map(|r| {
                crate::cloud::error::truncate(r, crate::cloud::error::MAX_REQUEST_ID_CHARS)
            }),
        }),
        _ => None,
    };
    if let DeletionStep::Accepted {
        image: Some(info), ..
    }
    | DeletionStep::DryRun(Some(info)) = step
    {
        s.image = Some(observation(info));
    }
    s.deletion = Some(progress);
    conditions::set(
        &mut s.conditions,
        Wanted {
            type_: DELETING,
            status: true,
            reason: step.reason(),
            message: message.clone(),
        },
        generation,
        now,
    );
    conditions::set(
        &mut s.conditions,
        Wanted {
            type_: READY,
            status: false,
            reason: Reason::Deleting,
            message: format!("the CloudImage is being deleted ({})", step.reason()),
        },
        generation,
        now,
    );
    // Tools read why a deletion is held from `Stalled`/`Reconciling`, with
    // the `Deleting` reason and message (`Ready` only says "being deleted").
    conditions::set_progress(
        &mut s.conditions,
        step.progress(),
        step.reason(),
        &message,
        generation,
        now,
    );
    s
}

/// Whether the change from `prev` to `next` should be told in an Event:
/// once per change of reason, not once per retry.
pub fn reason_changed(prev: &CloudImageStatus, next: &CloudImageStatus, type_: &str) -> bool {
    conditions::reason(&prev.conditions, type_) != conditions::reason(&next.conditions, type_)
}

/// Whether the image was ever seen in the cloud by this operator.
pub fn image_was_seen(prev: &CloudImageStatus) -> bool {
    prev.image.as_ref().is_some_and(|i| {
        i.updated_at.is_some() || i.status.as_deref().is_some_and(|s| s != "NotFound")
    })
}

/// Whether the cloud accepted a DELETE of this object's image (kept in
/// `status.deletion.acceptedTime`, not read back from a condition).
pub fn deletion_accepted(s: &CloudImageStatus) -> bool {
    s.deletion
        .as_ref()
        .is_some_and(|d| d.accepted_time.is_some())
}

/// How many deletion attempts the status records so far.
pub fn attempts(s: &CloudImageStatus) -> i32 {
    s.deletion
        .as_ref()
        .map(|d: &DeletionProgress| d.attempts)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{CloudError, ErrorKind};
    use crate::controller::conditions::{RECONCILING, STALLED};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    const ID: &str = "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90";

    fn at(m: u32) -> Timestamp {
        format!("2026-01-01T00:{m:02}:00Z").parse().expect("date")
    }

    fn active(protected: bool) -> ImageInfo {
        ImageInfo {
            id: ID.into(),
            status: Some("active".into()),
            protected: Some(protected),
            name: Some("n".into()),
            ..Default::default()
        }
    }

    fn protected_problem() -> Problem {
        let mut e = CloudError::new(
            ErrorKind::Protected,
            "HTTP 403: Image is protected and cannot be deleted.",
        );
        e.request_id = Some("req-9".into());
        e.http_status = Some(403);
        Problem::from(e)
    }

    #[test]
    fn live_image_is_ready_and_missing_image_is_reported_not_fixed() {
        let s = live_status(
            &Default::default(),
            Some(1),
            ID,
            &Ok(Lookup::Found(active(true))),
            at(0),
        );
        assert_eq!(
            conditions::reason(&s.conditions, READY),
            Some("ImageAvailable")
        );
        assert_eq!(s.conditions[0].status, "True");
        assert!(s.conditions[0].message.contains("protected"));
        assert_eq!(s.image.as_ref().and_then(|i| i.protected), Some(true));
        assert_eq!(s.observed_generation, Some(1));

        let gone = live_status(&s, Some(1), ID, &Ok(Lookup::NotFound), at(1));
        assert_eq!(
            conditions::reason(&gone.conditions, READY),
            Some("ImageNotFound")
        );
        assert_eq!(gone.conditions[0].status, "False");
        assert_eq!(
            gone.image.as_ref().and_then(|i| i.status.as_deref()),
            Some("NotFound")
        );
        assert!(reason_changed(&s, &gone, READY));
    }

    #[test]
    fn a_failed_get_keeps_what_was_last_seen() {
        let s = live_status(
            &Default::default(),
            Some(1),
            ID,
            &Ok(Lookup::Found(active(false))),
            at(0),
        );
        let p = Problem::new(
            Reason::CredentialsMissing,
            "Secret creds not found",
            Pace::Slow,
        );
        let next = live_status(&s, Some(1), ID, &Err(p), at(1));
        assert_eq!(
            conditions::reason(&next.conditions, READY),
            Some("CredentialsMissing")
        );
        assert_eq!(next.image, s.image);
    }

    #[test]
    fn failed_deletions_count_attempts_and_keep_the_first_time() {
        let step = DeletionStep::Failed {
            problem: protected_problem(),
            attempted: true,
        };
        let one = deleting_status(&Default::default(), Some(2), ID, &step, at(0));
        let two = deleting_status(&one, Some(2), ID, &step, at(5));
        let d = two.deletion.as_ref().expect("deletion progress");
        assert_eq!(d.attempts, 2);
        assert_eq!(d.first_attempt_time, Some(Time(at(0))));
        assert_eq!(d.last_attempt_time, Some(Time(at(5))));
        let err = d.last_error.as_ref().expect("last error");
        assert_eq!(
            (
                err.reason.as_str(),
                err.request_id.as_deref(),
                err.http_status
            ),
            ("Protected", Some("req-9"), Some(403))
        );
        let deleting = two
            .conditions
            .iter()
            .find(|c| c.type_ == DELETING)
            .expect("Deleting condition");
        assert_eq!(
            (deleting.status.as_str(), deleting.reason.as_str()),
            ("True", "Protected")
        );
        assert!(deleting.message.contains("req-9"));
        assert!(
            !reason_changed(&one, &two, DELETING),
            "same reason: no second Event"
        );
        assert_eq!(conditions::reason(&two.conditions, READY), Some("Deleting"));
    }

    #[test]
    fn non_attempts_do_not_count_and_clear_the_error() {
        let failed = deleting_status(
            &Default::default(),
            None,
            ID,
            &DeletionStep::Failed {
                problem: protected_problem(),
                attempted: true,
            },
            at(0),
        );
        let waiting = deleting_status(
            &failed,
            None,
            ID,
            &DeletionStep::WaitingForFinalizers(vec!["x/y".into()]),
            at(1),
        );
        assert_eq!(attempts(&waiting), 1);
        assert_eq!(
            waiting.deletion.as_ref().and_then(|d| d.last_error.clone()),
            None
        );
        assert!(reason_changed(&failed, &waiting, DELETING));
        assert_eq!(
            conditions::reason(&waiting.conditions, DELETING),
            Some("WaitingForFinalizers")
        );
    }

    #[test]
    fn cloud_error_classes_map_to_pace() {
        assert_eq!(
            Problem::from(CloudError::new(ErrorKind::Unavailable, "x")).pace,
            Pace::Fast
        );
        assert_eq!(
            Problem::from(CloudError::new(ErrorKind::Throttled, "x")).pace,
            Pace::Fast
        );
        assert_eq!(
            Problem::from(CloudError::new(ErrorKind::Protected, "x")).pace,
            Pace::Slow
        );
        assert_eq!(
            Problem::from(CloudError::new(ErrorKind::Forbidden, "x")).pace,
            Pace::Slow
        );
        assert_eq!(
            Problem::from(CloudError::new(ErrorKind::Unavailable, "x")).reason,
            Reason::CloudUnavailable
        );
    }

    fn cond<'a>(s: &'a CloudImageStatus, type_: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == type_)
    }

    /// A condition present and True, as (reason, message).
    type Said<'a> = Option<(&'a str, &'a str)>;

    /// (Stalled, Reconciling), for short asserts.
    fn pair(s: &CloudImageStatus) -> (Said<'_>, Said<'_>) {
        (true_pair(s, STALLED), true_pair(s, RECONCILING))
    }

    fn true_pair<'a>(s: &'a CloudImageStatus, type_: &str) -> Said<'a> {
        cond(s, type_).map(|c| {
            assert_eq!(c.status, "True", "{type_} is present only while True");
            (c.reason.as_str(), c.message.as_str())
        })
    }

    fn ready_of(s: &CloudImageStatus) -> (&str, &str) {
        let c = cond(s, READY).expect("Ready");
        (c.reason.as_str(), c.message.as_str())
    }

    fn live_failure(prev: &CloudImageStatus, p: Problem, m: u32) -> CloudImageStatus {
        live_status(prev, Some(3), ID, &Err(p), at(m))
    }

    #[test]
    fn problems_that_need_a_person_stall_and_transient_ones_reconcile() {
        let mut problems: Vec<(Problem, bool)> = ErrorKind::ALL
            .iter()
            .map(|k| {
                (
                    Problem::from(CloudError::new(*k, format!("{k:?} from the cloud"))),
                    !k.is_transient(),
                )
            })
            .collect();
        problems.extend([
            (
                Problem::new(Reason::CredentialsMissing, "no Secret", Pace::Slow),
                true,
            ),
            (
                Problem::new(Reason::CredentialsInvalid, "not YAML", Pace::Slow),
                true,
            ),
            (
                Problem::new(Reason::InvalidSpec, "not a UUID", Pace::Slow),
                true,
            ),
            (
                Problem::new(Reason::WatchNotSynced, "not listed yet", Pace::Fast),
                false,
            ),
        ]);
        let stalls: Vec<Reason> = problems
            .iter()
            .filter(|(_, stalls)| *stalls)
            .map(|(p, _)| p.reason)
            .collect();
        for must in [
            Reason::AuthFailed,
            Reason::Forbidden,
            Reason::Protected,
            Reason::UntrustedAnswer,
            Reason::CredentialsInvalid,
            Reason::CredentialsMissing,
            Reason::InvalidSpec,
        ] {
            assert!(stalls.contains(&must), "{must} needs a person");
        }
        for (p, stalls) in problems {
            let s = live_failure(&Default::default(), p.clone(), 0);
            let ready = ready_of(&s);
            assert_eq!(ready.0, p.reason.as_str());
            let want = Some(ready);
            let got = pair(&s);
            if stalls {
                assert_eq!(got, (want, None), "{} stalls", p.reason);
            } else {
                assert_eq!(got, (None, want), "{} reconciles", p.reason);
            }
            let c = cond(&s, if stalls { STALLED } else { RECONCILING }).expect("condition");
            assert_eq!(c.observed_generation, Some(3));
            assert_eq!(c.last_transition_time, Time(at(0)));
        }
    }

    #[test]
    fn the_live_transitions_set_and_clear_the_kstatus_pair() {
        let fresh = live_status(
            &Default::default(),
            Some(1),
            ID,
            &Ok(Lookup::Found(active(false))),
            at(0),
        );
        assert_eq!(pair(&fresh), (None, None), "an active image: neither");

        let gone = live_status(&fresh, Some(1), ID, &Ok(Lookup::NotFound), at(1));
        let (reason, message) = ready_of(&gone);
        assert_eq!(reason, "ImageNotFound");
        assert_eq!(pair(&gone), (Some((reason, message)), None));

        let down = live_failure(
            &gone,
            Problem::from(CloudError::new(ErrorKind::Unavailable, "HTTP 503")),
            2,
        );
        assert_eq!(
            pair(&down),
            (None, Some(("CloudUnavailable", "HTTP 503"))),
            "a transient retry replaces Stalled"
        );
        assert_eq!(ready_of(&down).0, "CloudUnavailable", "Ready as before");

        let throttled = live_failure(
            &down,
            Problem::from(CloudError::new(ErrorKind::Throttled, "HTTP 429")),
            3,
        );
        assert_eq!(
            cond(&throttled, RECONCILING).map(|c| c.last_transition_time.clone()),
            Some(Time(at(2))),
            "still reconciling: the time stays"
        );

        let back = live_status(
            &throttled,
            Some(1),
            ID,
            &Ok(Lookup::Found(active(false))),
            at(4),
        );
        assert_eq!(pair(&back), (None, None), "healthy again: both removed");
        assert_eq!(ready_of(&back).0, "ImageAvailable");

        let gone_again = live_status(&back, Some(1), ID, &Ok(Lookup::NotFound), at(5));
        assert_eq!(
            cond(&gone_again, STALLED).map(|c| c.last_transition_time.clone()),
            Some(Time(at(5))),
            "stalled anew: a new transition time"
        );
        assert_eq!(
            gone_again.conditions.first().map(|c| c.type_.as_str()),
            Some(READY),
            "Ready stays first"
        );
    }

    #[test]
    fn images_on_their_way_reconcile_and_other_inactive_images_stall() {
        for (state, want) in [
            (Some("active"), Progress::Settled),
            (Some("queued"), Progress::Reconciling),
            (Some("saving"), Progress::Reconciling),
            (Some("uploading"), Progress::Reconciling),
            (Some("importing"), Progress::Reconciling),
            (Some("killed"), Progress::Stalled),
            (Some("deactivated"), Progress::Stalled),
            (Some("deleted"), Progress::Stalled),
            (Some("pending_delete"), Progress::Stalled),
            (None, Progress::Stalled),
        ] {
            let mut info = active(false);
            info.status = state.map(str::to_owned);
            let s = live_status(
                &Default::default(),
                Some(1),
                ID,
                &Ok(Lookup::Found(info)),
                at(0),
            );
            let ready = Some(ready_of(&s));
            let got = match pair(&s) {
                (None, None) => Progress::Settled,
                (r, None) if r == ready => Progress::Stalled,
                (None, r) if r == ready => Progress::Reconciling,
                other => panic!("{state:?}: unexpected {other:?}"),
            };
            assert_eq!(got, want, "image state {state:?}");
        }
    }

    #[test]
    fn a_blocked_deletion_stalls_with_the_blocking_reason_and_message() {
        let live = live_status(
            &Default::default(),
            Some(2),
            ID,
            &Ok(Lookup::Found(active(true))),
            at(0),
        );
        let blocked = deleting_status(
            &live,
            Some(2),
            ID,
            &DeletionStep::Failed {
                problem: protected_problem(),
                attempted: true,
            },
            at(1),
        );
        let deleting = cond(&blocked, DELETING).expect("Deleting");
        assert_eq!(
            pair(&blocked),
            (Some(("Protected", deleting.message.as_str())), None)
        );
        assert!(deleting.message.contains("req-9"));
        assert_eq!(ready_of(&blocked).0, "Deleting", "Ready as before");

        let other = |p: Problem| DeletionStep::Failed {
            problem: p,
            attempted: true,
        };
        for (step, want) in [
            (
                DeletionStep::Accepted {
                    image: None,
                    attempted: true,
                    stalled: false,
                },
                (None, Some("DeletionAccepted")),
            ),
            (
                DeletionStep::WaitingForFinalizers(vec!["example.com/x".into()]),
                (None, Some("WaitingForFinalizers")),
            ),
            (DeletionStep::DryRun(None), (Some("DryRun"), None)),
            (
                other(Problem::from(CloudError::new(ErrorKind::InUse, "409"))),
                (None, Some("InUse")),
            ),
            (
                other(Problem::from(CloudError::new(ErrorKind::Unavailable, "x"))),
                (None, Some("CloudUnavailable")),
            ),
            (
                other(Problem::from(CloudError::new(ErrorKind::Forbidden, "403"))),
                (Some("Forbidden"), None),
            ),
            (
                other(Problem::new(
                    Reason::CredentialsMissing,
                    "no Secret",
                    Pace::Slow,
                )),
                (Some("CredentialsMissing"), None),
            ),
        ] {
            // From the blocked deletion, so a Stalled must also go when it no longer applies.
            let s = deleting_status(&blocked, Some(2), ID, &step, at(2));
            let msg = cond(&s, DELETING).expect("Deleting").message.clone();
            let (stalled, reconciling) = pair(&s);
            assert_eq!(
                (stalled.map(|p| p.0), reconciling.map(|p| p.0)),
                want,
                "{step:?}"
            );
            for (_, m) in stalled.into_iter().chain(reconciling) {
                assert_eq!(m, msg, "the Deleting message");
            }
        }
    }

    #[test]
    fn a_stalled_object_that_is_deleted_reports_the_deletion() {
        let gone = live_status(
            &Default::default(),
            Some(1),
            ID,
            &Ok(Lookup::NotFound),
            at(0),
        );
        assert_eq!(pair(&gone).0.map(|p| p.0), Some("ImageNotFound"));
        let accepted = deleting_status(
            &gone,
            Some(1),
            ID,
            &DeletionStep::Accepted {
                image: None,
                attempted: true,
                stalled: false,
            },
            at(1),
        );
        assert_eq!(
            pair(&accepted).0,
            None,
            "the live problem no longer applies"
        );
        assert_eq!(pair(&accepted).1.map(|p| p.0), Some("DeletionAccepted"));
    }

    #[test]
    fn seen_images_are_remembered() {
        let s = live_status(
            &Default::default(),
            None,
            ID,
            &Ok(Lookup::Found(active(false))),
            at(0),
        );
        assert!(image_was_seen(&s));
        let never = live_status(&Default::default(), None, ID, &Ok(Lookup::NotFound), at(0));
        assert!(!image_was_seen(&never));
        let mut seen = active(false);
        seen.updated_at = Some("2026-01-01T00:00:00Z".into());
        let s = live_status(
            &Default::default(),
            None,
            ID,
            &Ok(Lookup::Found(seen)),
            at(0),
        );
        let gone_later = live_status(&s, None, ID, &Ok(Lookup::NotFound), at(1));
        assert!(image_was_seen(&gone_later));
        assert_eq!(
            gone_later.image.as_ref().and_then(|i| i.name.as_deref()),
            Some("n")
        );
    }
}
