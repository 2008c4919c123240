//! A problem: why a step could not be completed, in the words status and
//! Events use, with the pace of the retry. Problems go to the object's
//! status; only Kubernetes API failures are errors (see `error`).

use super::backoff::Pace;
use super::reason::Reason;
use crate::cloud::CloudError;

#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
    pub http_status: Option<u16>,
    pub request_id: Option<String>,
    pub pace: Pace,
    pub retry_after: Option<std::time::Duration>,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>, pace: Pace) -> Self {
        Problem {
            reason,
            message: message.into(),
            http_status: None,
            request_id: None,
            pace,
            retry_after: None,
        }
    }

    /// The message with the cloud's request id, as shown in conditions and Events.
    pub fn full_message(&self) -> String {
        match &self.request_id {
            Some(r) => format!("{} (request id {r})", self.message),
            None => self.message.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.full_message())
    }
}

impl From<CloudError> for Problem {
    fn from(e: CloudError) -> Self {
        Problem {
            reason: e.kind.into(),
            pace: if e.kind.is_transient() {
                Pace::Fast
            } else {
                Pace::Slow
            },
            message: e.message,
            http_status: e.http_status,
            request_id: e.request_id,
            retry_after: e.retry_after,
        }
    }
}
