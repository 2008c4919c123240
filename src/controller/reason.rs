//! Every reason the operator gives. A condition reason, an Event reason and a
//! metric label are all a [`Reason`]: logic compares values of this type,
//! never strings, and the label set is bounded by construction.

use std::fmt;

use crate::cloud::ErrorKind;

/// Why the operator says what it says. `as_str()` is what users see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    // `Ready` while the object lives.
    ImageAvailable,
    ImageNotActive,
    ImageNotFound,
    /// `Ready` while the object is being deleted.
    Deleting,
    // Failures of a cloud call (see `ErrorKind`).
    Protected,
    Forbidden,
    InUse,
    AuthFailed,
    BadRequest,
    Throttled,
    CloudUnavailable,
    CredentialsInvalid,
    UntrustedAnswer,
    // Problems found before any cloud call.
    CredentialsMissing,
    InvalidSpec,
    WatchNotSynced,
    // Where a deletion stands while it is not finished.
    WaitingForFinalizers,
    DeletionAccepted,
    DeletionStalled,
    DryRun,
    // How a deletion ended (Events when the finalizer is released).
    ImageDeleted,
    ImageAlreadyGone,
    ImageRetained,
    ImageStillClaimed,
    // Other Events.
    DeleteBackupIgnored,
    SecretInUse,
    InsecureEndpoint,
}

impl Reason {
    /// Every reason, for tests and documentation checks.
    pub const ALL: &'static [Reason] = &[
        Reason::ImageAvailable,
        Reason::ImageNotActive,
        Reason::ImageNotFound,
        Reason::Deleting,
        Reason::Protected,
        Reason::Forbidden,
        Reason::InUse,
        Reason::AuthFailed,
        Reason::BadRequest,
        Reason::Throttled,
        Reason::CloudUnavailable,
        Reason::CredentialsInvalid,
        Reason::UntrustedAnswer,
        Reason::CredentialsMissing,
        Reason::InvalidSpec,
        Reason::WatchNotSynced,
        Reason::WaitingForFinalizers,
        Reason::DeletionAccepted,
        Reason::DeletionStalled,
        Reason::DryRun,
        Reason::ImageDeleted,
        Reason::ImageAlreadyGone,
        Reason::ImageRetained,
        Reason::ImageStillClaimed,
        Reason::DeleteBackupIgnored,
        Reason::SecretInUse,
        Reason::InsecureEndpoint,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::ImageAvailable => "ImageAvailable",
            Reason::ImageNotActive => "ImageNotActive",
            Reason::ImageNotFound => "ImageNotFound",
            Reason::Deleting => "Deleting",
            Reason::Protected => "Protected",
            Reason::Forbidden => "Forbidden",
            Reason::InUse => "InUse",
            Reason::AuthFailed => "AuthFailed",
            Reason::BadRequest => "BadRequest",
            Reason::Throttled => "Throttled",
            Reason::CloudUnavailable => "CloudUnavailable",
            Reason::CredentialsInvalid => "CredentialsInvalid",
            Reason::UntrustedAnswer => "UntrustedAnswer",
            Reason::CredentialsMissing => "CredentialsMissing",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::WatchNotSynced => "WatchNotSynced",
            Reason::WaitingForFinalizers => "WaitingForFinalizers",
            Reason::DeletionAccepted => "DeletionAccepted",
            Reason::DeletionStalled => "DeletionStalled",
            Reason::DryRun => "DryRun",
            Reason::ImageDeleted => "ImageDeleted",
            Reason::ImageAlreadyGone => "ImageAlreadyGone",
            Reason::ImageRetained => "ImageRetained",
            Reason::ImageStillClaimed => "ImageStillClaimed",
            Reason::DeleteBackupIgnored => "DeleteBackupIgnored",
            Reason::SecretInUse => "SecretInUse",
            Reason::InsecureEndpoint => "InsecureEndpoint",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorKind> for Reason {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Protected => Reason::Protected,
            ErrorKind::InUse => Reason::InUse,
            ErrorKind::Forbidden => Reason::Forbidden,
            ErrorKind::AuthFailed => Reason::AuthFailed,
            ErrorKind::BadRequest => Reason::BadRequest,
            ErrorKind::Throttled => Reason::Throttled,
            ErrorKind::Unavailable => Reason::CloudUnavailable,
            ErrorKind::CredentialsInvalid => Reason::CredentialsInvalid,
            ErrorKind::UntrustedAnswer => Reason::UntrustedAnswer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_the_cloud_labels() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        for kind in [
            ErrorKind::Protected,
            ErrorKind::InUse,
            ErrorKind::Forbidden,
            ErrorKind::AuthFailed,
            ErrorKind::BadRequest,
            ErrorKind::Throttled,
            ErrorKind::Unavailable,
            ErrorKind::CredentialsInvalid,
            ErrorKind::UntrustedAnswer,
        ] {
            assert_eq!(Reason::from(kind).as_str(), kind.reason());
        }
    }

    /// The README's reasons table and Event lists name exactly these reasons.
    #[test]
    fn the_readme_documents_every_reason_and_no_other() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("### Reasons, and what to do")
            .expect("README has a reasons section");
        let section = &readme[start..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        // The table's first column, then every backticked word of the
        // paragraph listing the Events.
        let mut documented: Vec<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let events = &section[section.find("Normal Events:").expect("Event list")..];
        let events = &events[..events.find("\n\n").unwrap_or(events.len())];
        documented.extend(events.split('`').skip(1).step_by(2));
        documented.sort();
        documented.dedup();
        for r in Reason::ALL {
            assert!(
                documented.contains(&r.as_str()),
                "README does not document reason {r}"
            );
        }
        for d in &documented {
            assert!(
                Reason::ALL.iter().any(|r| r.as_str() == *d),
                "README documents `{d}` as a reason, but it is not a Reason"
            );
        }
    }
}
