//! The controller: watches CloudImages, keeps their finalizer, reports what
//! the cloud says, and deletes the image when the object is deleted.

pub mod backoff;
pub mod cleanup;
pub mod conditions;
pub mod credentials;
pub mod decide;
pub mod kube_io;
pub mod live;
pub mod reconcile;

use std::time::Duration;

use kube::runtime::events::Recorder;

use crate::cloud::pool::ClientPool;
use backoff::{BackoffConfig, Failures};

/// How the controller behaves, from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Report what would be deleted; never call DELETE.
    pub dry_run: bool,
    /// How often a healthy object's image is checked again.
    pub resync: Duration,
    /// How often an IMS deletion that was accepted is checked for completion.
    pub accepted_poll: Duration,
    pub backoff: BackoffConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dry_run: false,
            resync: Duration::from_secs(300),
            accepted_poll: Duration::from_secs(3),
            backoff: BackoffConfig::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub clouds: ClientPool,
    pub failures: Failures,
    pub settings: Settings,
}

/// Failures of the Kubernetes side of a reconcile (cloud failures are not
/// errors here: they become status and a paced retry).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to add the finalizer: {0}")]
    AddFinalizer(#[source] kube::Error),
    #[error("failed to release the finalizer: {0}")]
    ReleaseFinalizer(#[source] kube::Error),
    #[error("failed to write status: {0}")]
    PatchStatus(#[source] kube::Error),
    #[error("failed to read the credentials Secret: {0}")]
    ReadCredentials(#[source] kube::Error),
}

impl Error {
    /// Bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::AddFinalizer(_) => "AddFinalizer",
            Error::ReleaseFinalizer(_) => "ReleaseFinalizer",
            Error::PatchStatus(_) => "PatchStatus",
            Error::ReadCredentials(_) => "ReadCredentials",
        }
    }
}
