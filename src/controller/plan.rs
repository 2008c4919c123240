//! The deletion plan, free of I/O. `cleanup` gathers the [`Facts`] about a
//! deleted CloudImage, [`plan`] decides what to do (release the object, hold
//! it, or make one cloud call), and [`after_call`] maps the cloud's answer to
//! how the step ends. Every rule of the README's "How it behaves" list is a
//! row of this module's table test.

use super::backoff::Pace;
use super::context::Claims;
use super::problem::Problem;
use super::reason::Reason;
use super::status::DeletionStep;
use crate::cloud::{Deletion, Dialect, Lookup};
use crate::crd::DeletionPolicy;

/// After an accepted deletion, how many GET checks before the DELETE is sent again.
pub const RESEND_AFTER_CHECKS: u32 = 20;

/// What is known about a deleted CloudImage before any cloud call.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    pub image_id: String,
    pub policy: DeletionPolicy,
    /// Finalizers on the object other than the operator's.
    pub other_finalizers: Vec<String>,
    /// Other CloudImages, not being deleted, that claim the same image;
    /// `None` while a watch has not listed its namespace yet (a claim could
    /// be missed).
    pub claims: Option<Claims>,
    /// Why this object's cloud identity could not be learnt, when claims in
    /// other namespaces need it for comparison.
    pub identity_problem: Option<Problem>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// The cloud accepted a DELETE earlier (`status.deletion.acceptedTime`,
    /// or remembered in memory when the cache has not caught up yet).
    pub accepted: bool,
    /// GET checks since the acceptance, this one included (0 if not accepted).
    pub checks_since_accepted: u32,
    /// The acceptance is older than `--deletion-stall-after`.
    pub accepted_long_ago: bool,
    /// The operator saw the image in the cloud before.
    pub image_seen: bool,
}

/// The one cloud call a step makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// GET, to report what would be deleted (`--dry-run`).
    DryRunLookup,
    /// GET, to confirm an accepted deletion (404 = done).
    ConfirmGone,
    /// DELETE.
    Delete,
}

/// Letting the object go, and what the Event says.
#[derive(Clone, Debug, PartialEq)]
pub struct Release {
    pub reason: Reason,
    /// A Warning Event rather than a Normal one.
    pub warning: bool,
    pub note: String,
}

/// How a step ends.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The image is confirmed gone, retained or left to another claim:
    /// release the finalizer.
    Release(Release),
    /// Not finished: keep the finalizer and report the step.
    Hold(DeletionStep),
}

/// What to do for a deleted CloudImage.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Decided without the cloud.
    Done(Outcome),
    /// Make this cloud call, then [`after_call`].
    Call(Call),
}

/// Decides the step for `f`.
pub fn plan(f: &Facts) -> Plan {
    let id = &f.image_id;
    if f.policy == DeletionPolicy::Retain {
        return Plan::Done(Outcome::Release(Release {
            reason: Reason::ImageRetained,
            warning: false,
            note: format!("deletionPolicy is Retain: image {id} was left in the cloud untouched"),
        }));
    }
    if !f.other_finalizers.is_empty() {
        return Plan::Done(Outcome::Hold(DeletionStep::WaitingForFinalizers(
            f.other_finalizers.clone(),
        )));
    }
    match &f.claims {
        None => {
            return Plan::Done(Outcome::Hold(DeletionStep::Failed {
                problem: Problem::new(
                    Reason::WatchNotSynced,
                    "the operator has not listed every watched namespace yet, so it cannot tell whether another CloudImage claims this image; it will retry",
                    Pace::Fast,
                ),
                attempted: false,
            }));
        }
        // Not ours alone to delete: release this object and leave the
        // image to the other claim. Other namespaces' objects are counted,
        // never named.
        Some(claims) if !claims.is_empty() => {
            let mut by = Vec::new();
            if !claims.here.is_empty() {
                by.push(format!("CloudImage {}", claims.here.join(", ")));
            }
            if claims.elsewhere > 0 {
                by.push(format!(
                    "{} CloudImage(s) in other namespaces using the same cloud project",
                    claims.elsewhere
                ));
            }
            return Plan::Done(Outcome::Release(Release {
                reason: Reason::ImageStillClaimed,
                warning: false,
                note: format!(
                    "image {id} was not deleted: it is still claimed by {}",
                    by.join(" and ")
                ),
            }));
        }
        // Claims elsewhere cannot be compared before this object's own
        // identity is known: hold rather than risk deleting a shared image.
        Some(claims) if claims.elsewhere_unknown => {
            return Plan::Done(Outcome::Hold(DeletionStep::Failed {
                problem: f.identity_problem.clone().unwrap_or_else(|| {
                    Problem::new(
                        Reason::WatchNotSynced,
                        "another namespace claims this image id; the operator must authenticate with these credentials before it can tell whether that is the same cloud project; it will retry",
                        Pace::Fast,
                    )
                }),
                attempted: false,
            }));
        }
        Some(_) => {}
    }
    if f.dry_run {
        return Plan::Call(Call::DryRunLookup);
    }
    // Confirm an accepted deletion with GET; every RESEND_AFTER_CHECKS
    // checks send the DELETE again, in case the cloud's own deletion failed
    // (a repeated DELETE is harmless).
    if f.accepted && !f.checks_since_accepted.is_multiple_of(RESEND_AFTER_CHECKS) {
        return Plan::Call(Call::ConfirmGone);
    }
    Plan::Call(Call::Delete)
}

/// The answer to a [`Call`]: a lookup for the GETs, a deletion for DELETE.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Lookup(Result<Lookup, Problem>),
    Deletion(Result<Deletion, Problem>),
}

/// How the step ends, given the answer to the call [`plan`] asked for.
pub fn after_call(f: &Facts, answer: Answer) -> Outcome {
    let id = &f.image_id;
    let failed = |problem: Problem, attempted: bool| {
        Outcome::Hold(DeletionStep::Failed { problem, attempted })
    };
    let release = |reason, warning, note| {
        Outcome::Release(Release {
            reason,
            warning,
            note,
        })
    };
    match answer {
        Answer::Lookup(r) if f.dry_run => match r {
            Ok(Lookup::Found(info)) => Outcome::Hold(DeletionStep::DryRun(Some(info))),
            Ok(Lookup::NotFound) => Outcome::Hold(DeletionStep::DryRun(None)),
            Err(p) => failed(p, false),
        },
        Answer::Lookup(r) => match r {
            Ok(Lookup::NotFound) => release(
                Reason::ImageDeleted,
                false,
                format!("the cloud no longer lists image {id}: deletion confirmed"),
            ),
            Ok(Lookup::Found(info)) => Outcome::Hold(DeletionStep::Accepted {
                image: Some(info),
                attempted: false,
                stalled: f.accepted_long_ago,
            }),
            Err(p) => failed(p, false),
        },
        Answer::Deletion(r) => match r {
            Ok(Deletion::Deleted) => release(
                Reason::ImageDeleted,
                false,
                format!("image {id} deleted from the cloud"),
            ),
            Ok(Deletion::AlreadyGone) if f.image_seen => release(
                Reason::ImageAlreadyGone,
                false,
                format!("image {id} was already gone from the cloud (404)"),
            ),
            Ok(Deletion::AlreadyGone) => release(
                Reason::ImageNotFound,
                true,
                format!(
                    "image {id} was not found with these credentials (404), so there was nothing to delete. If it exists in a project these credentials cannot see, it was NOT deleted"
                ),
            ),
            Ok(Deletion::Accepted) => Outcome::Hold(DeletionStep::Accepted {
                image: None,
                attempted: true,
                stalled: f.accepted_long_ago,
            }),
            Err(p) => failed(p, true),
        },
    }
}

/// The step when the cloud could not even be asked (invalid spec, missing or
/// invalid credentials): held, not counted as an attempt.
pub fn no_cloud(problem: Problem) -> Outcome {
    Outcome::Hold(DeletionStep::Failed {
        problem,
        attempted: false,
    })
}

/// The Warning told once, before the first DELETE, when `deleteBackup` is
/// set for a cloud that has no backups behind images.
pub fn backup_ignored(dialect: Dialect, delete_backup: bool, attempts: i32) -> Option<String> {
    (dialect == Dialect::OpenStack && delete_backup && attempts == 0).then(|| {
        "deleteBackup is true, but this cloud is OpenStack Glance, which has no backups behind images: only the image is deleted".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{CloudError, ErrorKind, ImageInfo};

    const ID: &str = "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90";

    /// A deleted CloudImage with policy Delete, nothing else in the way.
    fn facts() -> Facts {
        Facts {
            image_id: ID.into(),
            policy: DeletionPolicy::Delete,
            other_finalizers: vec![],
            claims: Some(Claims::default()),
            identity_problem: None,
            dry_run: false,
            accepted: false,
            checks_since_accepted: 0,
            accepted_long_ago: false,
            image_seen: true,
        }
    }

    fn info() -> ImageInfo {
        ImageInfo {
            id: ID.into(),
            status: Some("active".into()),
            ..Default::default()
        }
    }

    fn problem(kind: ErrorKind) -> Problem {
        Problem::from(CloudError::new(kind, "the cloud said no"))
    }

    fn released(reason: Reason, warning: bool) -> impl Fn(&Outcome) -> bool {
        move |o| matches!(o, Outcome::Release(r) if r.reason == reason && r.warning == warning)
    }

    fn held(reason: Reason, attempted: bool) -> impl Fn(&Outcome) -> bool {
        move |o| match o {
            Outcome::Hold(step) => {
                step.reason() == reason
                    && match step {
                        DeletionStep::Failed { attempted: a, .. }
                        | DeletionStep::Accepted { attempted: a, .. } => *a == attempted,
                        _ => !attempted,
                    }
            }
            Outcome::Release(_) => false,
        }
    }

    /// One row: the facts, the call the plan must make (if any), the
    /// answer, and the outcome.
    struct Row {
        rule: &'static str,
        facts: Facts,
        call: Option<Call>,
        answer: Option<Answer>,
        outcome: Box<dyn Fn(&Outcome) -> bool>,
    }

    fn row(
        rule: &'static str,
        facts: Facts,
        call: Option<Call>,
        answer: Option<Answer>,
        outcome: impl Fn(&Outcome) -> bool + 'static,
    ) -> Row {
        Row {
            rule,
            facts,
            call,
            answer,
            outcome: Box::new(outcome),
        }
    }

    #[test]
    fn every_rule_of_the_deletion_is_a_row() {
        let rows = vec![
            row(
                "1. Retain releases at once, image untouched (even with other finalizers, unsynced watches, dry run)",
                Facts {
                    policy: DeletionPolicy::Retain,
                    other_finalizers: vec!["x.io/y".into()],
                    claims: None,
                    dry_run: true,
                    ..facts()
                },
                None,
                None,
                released(Reason::ImageRetained, false),
            ),
            row(
                "2. other finalizers go first",
                Facts {
                    other_finalizers: vec!["x.io/y".into()],
                    ..facts()
                },
                None,
                None,
                held(Reason::WaitingForFinalizers, false),
            ),
            row(
                "3. an unsynced watch could hide a claim: hold, no cloud call",
                Facts {
                    claims: None,
                    ..facts()
                },
                None,
                None,
                held(Reason::WatchNotSynced, false),
            ),
            row(
                "3. another live claim: release, leave the image to it",
                Facts {
                    claims: Some(Claims {
                        here: vec!["team-a/img".into()],
                        ..Claims::default()
                    }),
                    ..facts()
                },
                None,
                None,
                released(Reason::ImageStillClaimed, false),
            ),
            row(
                "3. a claim in another namespace of the same verified cloud project: release",
                Facts {
                    claims: Some(Claims {
                        elsewhere: 1,
                        ..Claims::default()
                    }),
                    ..facts()
                },
                None,
                None,
                released(Reason::ImageStillClaimed, false),
            ),
            row(
                "3. claims elsewhere, own identity unknown (authentication failed): hold",
                Facts {
                    claims: Some(Claims {
                        elsewhere_unknown: true,
                        ..Claims::default()
                    }),
                    identity_problem: Some(problem(ErrorKind::AuthFailed)),
                    ..facts()
                },
                None,
                None,
                held(Reason::AuthFailed, false),
            ),
            row(
                "4. Glance 204: deleted, released",
                facts(),
                Some(Call::Delete),
                Some(Answer::Deletion(Ok(Deletion::Deleted))),
                released(Reason::ImageDeleted, false),
            ),
            row(
                "4. IMS 204 (or any other success): accepted, held, counts as an attempt",
                facts(),
                Some(Call::Delete),
                Some(Answer::Deletion(Ok(Deletion::Accepted))),
                held(Reason::DeletionAccepted, true),
            ),
            row(
                "4. accepted: GET until 404, still listed keeps holding",
                Facts {
                    accepted: true,
                    checks_since_accepted: 1,
                    ..facts()
                },
                Some(Call::ConfirmGone),
                Some(Answer::Lookup(Ok(Lookup::Found(info())))),
                held(Reason::DeletionAccepted, false),
            ),
            row(
                "4. accepted: GET 404 confirms, released",
                Facts {
                    accepted: true,
                    checks_since_accepted: 7,
                    ..facts()
                },
                Some(Call::ConfirmGone),
                Some(Answer::Lookup(Ok(Lookup::NotFound))),
                released(Reason::ImageDeleted, false),
            ),
            row(
                "4. accepted: every 20th check sends the DELETE again",
                Facts {
                    accepted: true,
                    checks_since_accepted: RESEND_AFTER_CHECKS,
                    ..facts()
                },
                Some(Call::Delete),
                Some(Answer::Deletion(Ok(Deletion::AlreadyGone))),
                released(Reason::ImageAlreadyGone, false),
            ),
            row(
                "4. accepted long ago and still listed: DeletionStalled, polling goes on",
                Facts {
                    accepted: true,
                    checks_since_accepted: 3,
                    accepted_long_ago: true,
                    ..facts()
                },
                Some(Call::ConfirmGone),
                Some(Answer::Lookup(Ok(Lookup::Found(info())))),
                held(Reason::DeletionStalled, false),
            ),
            row(
                "4. accepted: a failed check is held, not an attempt",
                Facts {
                    accepted: true,
                    checks_since_accepted: 2,
                    ..facts()
                },
                Some(Call::ConfirmGone),
                Some(Answer::Lookup(Err(problem(ErrorKind::Unavailable)))),
                held(Reason::CloudUnavailable, false),
            ),
            row(
                "4. 404 on DELETE for an image seen before: already gone, released",
                facts(),
                Some(Call::Delete),
                Some(Answer::Deletion(Ok(Deletion::AlreadyGone))),
                released(Reason::ImageAlreadyGone, false),
            ),
            row(
                "4. 404 on DELETE for an image never seen: released with a Warning",
                Facts {
                    image_seen: false,
                    ..facts()
                },
                Some(Call::Delete),
                Some(Answer::Deletion(Ok(Deletion::AlreadyGone))),
                released(Reason::ImageNotFound, true),
            ),
            row(
                "4. anything else keeps the finalizer: protected",
                facts(),
                Some(Call::Delete),
                Some(Answer::Deletion(Err(problem(ErrorKind::Protected)))),
                held(Reason::Protected, true),
            ),
            row(
                "4. anything else keeps the finalizer: cloud down",
                facts(),
                Some(Call::Delete),
                Some(Answer::Deletion(Err(problem(ErrorKind::Unavailable)))),
                held(Reason::CloudUnavailable, true),
            ),
            row(
                "4. anything else keeps the finalizer: wrong password",
                facts(),
                Some(Call::Delete),
                Some(Answer::Deletion(Err(problem(ErrorKind::AuthFailed)))),
                held(Reason::AuthFailed, true),
            ),
            row(
                "5. after a restart the repeated DELETE answers 404: done",
                Facts {
                    image_seen: true,
                    ..facts()
                },
                Some(Call::Delete),
                Some(Answer::Deletion(Ok(Deletion::AlreadyGone))),
                released(Reason::ImageAlreadyGone, false),
            ),
            row(
                "dry run: GET only, held with what would be deleted",
                Facts {
                    dry_run: true,
                    ..facts()
                },
                Some(Call::DryRunLookup),
                Some(Answer::Lookup(Ok(Lookup::Found(info())))),
                held(Reason::DryRun, false),
            ),
            row(
                "dry run: never a DELETE, even after an acceptance",
                Facts {
                    dry_run: true,
                    accepted: true,
                    checks_since_accepted: RESEND_AFTER_CHECKS,
                    ..facts()
                },
                Some(Call::DryRunLookup),
                Some(Answer::Lookup(Ok(Lookup::NotFound))),
                held(Reason::DryRun, false),
            ),
            row(
                "dry run: a failed GET is held, not an attempt",
                Facts {
                    dry_run: true,
                    ..facts()
                },
                Some(Call::DryRunLookup),
                Some(Answer::Lookup(Err(problem(ErrorKind::AuthFailed)))),
                held(Reason::AuthFailed, false),
            ),
        ];
        for r in rows {
            let outcome = match (plan(&r.facts), r.call, r.answer) {
                (Plan::Done(o), None, None) => o,
                (Plan::Call(c), Some(want), Some(answer)) => {
                    assert_eq!(c, want, "{}: the call", r.rule);
                    after_call(&r.facts, answer)
                }
                (p, call, _) => panic!("{}: planned {p:?}, expected call {call:?}", r.rule),
            };
            assert!((r.outcome)(&outcome), "{}: got {outcome:?}", r.rule);
        }
    }

    #[test]
    fn without_a_cloud_the_step_is_held_and_not_an_attempt() {
        let p = Problem::new(Reason::CredentialsMissing, "no Secret", Pace::Slow);
        assert!(held(Reason::CredentialsMissing, false)(&no_cloud(p)));
    }

    #[test]
    fn delete_backup_is_warned_about_once_and_only_for_glance() {
        assert!(backup_ignored(Dialect::OpenStack, true, 0).is_some());
        assert!(backup_ignored(Dialect::OpenStack, true, 1).is_none());
        assert!(backup_ignored(Dialect::OpenStack, false, 0).is_none());
        assert!(backup_ignored(Dialect::Huawei, true, 0).is_none());
    }

    #[test]
    fn claims_in_other_namespaces_are_counted_never_named() {
        let f = Facts {
            claims: Some(Claims {
                here: vec!["team-a/mine".into()],
                elsewhere: 2,
                elsewhere_unknown: false,
            }),
            ..facts()
        };
        let Plan::Done(Outcome::Release(r)) = plan(&f) else {
            panic!("released")
        };
        assert!(r.note.contains("team-a/mine"));
        assert!(r.note.contains("2 CloudImage(s) in other namespaces"));
    }

    #[test]
    fn notes_name_the_image() {
        let Outcome::Release(r) = after_call(&facts(), Answer::Deletion(Ok(Deletion::Deleted)))
        else {
            panic!("released")
        };
        assert!(r.note.contains(ID));
    }
}
