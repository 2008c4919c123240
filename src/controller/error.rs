//! The two failure channels of a reconcile, named: a [`Problem`] (goes to the
//! object's status, retried at the problem's pace) and an [`Error`] of the
//! Kubernetes API (goes to `error_policy`, retried fast). [`Failure`] carries
//! either, so `?` works across both.

use super::problem::Problem;

/// Failures of the Kubernetes side of a reconcile.
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
    #[error("failed to add the finalizer to the credentials Secret: {0}")]
    HoldSecret(#[source] kube::Error),
    #[error("failed to remove the finalizer from the credentials Secret: {0}")]
    ReleaseSecret(#[source] kube::Error),
    #[error("failed to list the CloudImages of a namespace: {0}")]
    ListCloudImages(#[source] kube::Error),
}

impl Error {
    /// Bounded label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::AddFinalizer(_) => "AddFinalizer",
            Error::ReleaseFinalizer(_) => "ReleaseFinalizer",
            Error::PatchStatus(_) => "PatchStatus",
            Error::ReadCredentials(_) => "ReadCredentials",
            Error::HoldSecret(_) => "HoldSecret",
            Error::ReleaseSecret(_) => "ReleaseSecret",
            Error::ListCloudImages(_) => "ListCloudImages",
        }
    }
}

/// Either failure channel.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// For the object's status and a paced retry.
    #[error("{0}")]
    Problem(Problem),
    /// For `error_policy`.
    #[error(transparent)]
    Kube(#[from] Error),
}

impl From<Problem> for Failure {
    fn from(p: Problem) -> Self {
        Failure::Problem(p)
    }
}

impl Failure {
    /// Splits off the problem; a Kubernetes error stays an error.
    pub fn into_problem(self) -> Result<Problem, Error> {
        match self {
            Failure::Problem(p) => Ok(p),
            Failure::Kube(e) => Err(e),
        }
    }
}
