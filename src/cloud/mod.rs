//! Talking to the image service of a cloud: credentials, authentication
//! (Keystone tokens, or Huawei AK/SK request signing), the two dialects of
//! `DELETE /v2/images/{id}`, what each answer means, and where the operator
//! may connect (egress policy).
//!
//! Everything a namespace user controls (clouds.yaml, and through a fake
//! Keystone every answer) is bounded here: answers are read up to a limit,
//! text from the cloud is shown only from known error shapes and cut to the
//! `MAX_*_CHARS` limits, and secrets are scrubbed from every message.

pub mod aksk;
pub mod answer;
pub mod client;
pub mod clouds_yaml;
pub mod egress;
pub mod error;
pub mod keystone;
pub mod pool;

pub use egress::EgressPolicy;
pub use error::{
    CloudError, ErrorKind, MAX_CLOUD_MESSAGE_CHARS, MAX_ERROR_CODE_CHARS, MAX_ERROR_MESSAGE_CHARS,
    MAX_IMAGE_FIELD_CHARS, MAX_REQUEST_ID_CHARS,
};
pub use pool::{ClientPool, PoolKey};

use futures::future::BoxFuture;

/// Which flavour of the image API a cloud speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Upstream OpenStack Glance: DELETE has no body, 204 means deleted.
    OpenStack,
    /// Huawei Cloud IMS (`profile: huaweicloud`): DELETE carries
    /// `{"delete_backup": bool}`, 204 means accepted, GET until 404.
    Huawei,
}

/// The parts of an image record the operator reports in status. Every
/// string is at most [`MAX_IMAGE_FIELD_CHARS`] characters, without control
/// characters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub name: Option<String>,
    pub status: Option<String>,
    pub protected: Option<bool>,
    pub size: Option<i64>,
    pub checksum: Option<String>,
    pub visibility: Option<String>,
    pub updated_at: Option<String>,
}

/// What a GET of the image found.
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Found(ImageInfo),
    /// 404: the cloud does not know the image, or these credentials cannot see it.
    NotFound,
}

/// What a DELETE achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Glance 204: the image is gone.
    Deleted,
    /// IMS 204 (or an IMS code that says "maybe already gone"): the cloud
    /// accepted the deletion; only a GET answering 404 confirms it.
    Accepted,
    /// 404: nothing to delete.
    AlreadyGone,
}

/// The image service of one cloud, with one set of credentials.
pub trait ImageService: Send + Sync {
    fn dialect(&self) -> Dialect;
    /// The verified cloud identity (Keystone URL and the project id of the
    /// current token), once a token was issued; `None` before.
    fn identity(&self) -> Option<String> {
        None
    }
    /// Authenticates if needed (no image call) and returns the identity.
    fn identify(&self) -> BoxFuture<'_, Result<Option<String>, CloudError>> {
        Box::pin(async { Ok(None) })
    }
    fn get_image<'a>(&'a self, image_id: &'a str) -> BoxFuture<'a, Result<Lookup, CloudError>>;
    fn delete_image<'a>(
        &'a self,
        image_id: &'a str,
        delete_backup: bool,
    ) -> BoxFuture<'a, Result<Deletion, CloudError>>;
}
