//! The `CloudImage` custom resource: spec, status and the generated CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The finalizer this operator puts on every `CloudImage` it manages.
pub const FINALIZER: &str = "cloudimage.dev/delete-image";

/// The finalizer this operator puts on a credentials Secret while any
/// CloudImage in its namespace names it, so the Secret outlives the image
/// deletions it serves (a namespace deletion or a GitOps prune removes both
/// at once). Removed when no CloudImage needs the Secret any more.
pub const SECRET_FINALIZER: &str = "cloudimage.dev/credentials-in-use";

/// The canonical shape of an image id: a lower-case UUID, as Glance and IMS issue them.
///
/// Upper-case ids are refused on purpose: Glance answers 404 for them, and a
/// 404 on delete means "already gone", which would release the finalizer of
/// an image that still exists.
pub const IMAGE_ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

/// A cloud VM image (OpenStack Glance or Huawei Cloud IMS) whose lifetime is
/// tied to this object: deleting the object deletes the image.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "cloudimage.dev",
    version = "v1alpha1",
    kind = "CloudImage",
    namespaced,
    shortname = "cimg",
    status = "CloudImageStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Image ID", "type":"string", "jsonPath":".spec.imageId"}"#,
    printcolumn = r#"{"name":"Image Status", "type":"string", "jsonPath":".status.image.status"}"#,
    printcolumn = r#"{"name":"Ready", "type":"string", "jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Policy", "type":"string", "jsonPath":".spec.deletionPolicy"}"#,
    printcolumn = r#"{"name":"Age", "type":"date", "jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CloudImageSpec {
    /// The id of the image in the cloud (a lower-case UUID). Immutable: to
    /// manage another image, create another CloudImage.
    #[schemars(regex(pattern = IMAGE_ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("imageId is immutable"))]
    pub image_id: String,

    /// Huawei Cloud IMS only: when the image is deleted, also delete the
    /// cloud-server backup or CBR backup behind a whole-machine image. Sent as
    /// `delete_backup` in the DELETE body. Ignored (with a Warning Event) by
    /// OpenStack Glance, which has no such backups.
    #[serde(default)]
    pub delete_backup: bool,

    /// Where the credentials for the cloud come from.
    pub cloud_ref: CloudRef,

    /// What happens to the cloud image when this object is deleted: `Delete`
    /// (the default) deletes it and keeps the object until the cloud confirms;
    /// `Retain` leaves the image untouched and lets the object go.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// A reference to the credentials Secret and the cloud entry inside it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudRef {
    /// Name of a Secret in the same namespace as this CloudImage. It holds the
    /// key `clouds.yaml` (OpenStack clouds.yaml format) and optionally `cacert`
    /// (PEM). Secrets of other namespaces are never read.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,

    /// The entry under `clouds:` in the Secret's clouds.yaml to use.
    #[schemars(length(min = 1, max = 253))]
    pub cloud_name: String,
}

/// What to do with the cloud image when the CloudImage is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the image in the cloud, then release the object.
    #[default]
    Delete,
    /// Leave the image in the cloud and release the object at once.
    Retain,
}

/// What the operator last saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudImageStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: True while the image was last seen in the cloud and is usable.
    /// `Deleting`: present once the object is being deleted; True while the
    /// image deletion is not finished, with the reason it is held up.
    /// `Stalled` (kstatus): True while a person has to act, with the reason.
    /// `Reconciling` (kstatus): True while a check or a retry is under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// What the last GET of the image in the cloud answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageObservation>,

    /// Progress of the deletion of the image, once the object is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<DeletionProgress>,
}

/// The image as the cloud last described it. Every string is cut by the
/// cloud client to `cloud::error::MAX_IMAGE_FIELD_CHARS` (256), the
/// `maxLength` the schema declares. When a later GET answers 404,
/// `status` becomes `NotFound` and the other fields keep what was last seen.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageObservation {
    /// Image name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub name: Option<String>,
    /// Image status in the cloud (`active`, `queued`, `deactivated`, ...), or
    /// `NotFound` when the cloud does not know the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub status: Option<String>,
    /// Whether the image is protected against deletion in the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// Size of the image data in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Checksum of the image data (`os_hash_value`, else the MD5 `checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub checksum: Option<String>,
    /// Visibility: `public`, `private`, `shared` or `community`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub visibility: Option<String>,
    /// When the image was last updated in the cloud (as the cloud said it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub updated_at: Option<String>,
}

/// How the deletion of the image went so far.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionProgress {
    /// Number of attempts to delete the image (DELETE calls, or checks that
    /// could not be made).
    #[serde(default)]
    pub attempts: i32,
    /// When the first attempt was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_time: Option<Time>,
    /// When the latest attempt was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// When the cloud accepted a DELETE without confirming the image is gone
    /// (IMS answers 204 on acceptance): from then on the operator confirms
    /// with GET until 404 instead of sending DELETE again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_time: Option<Time>,
    /// Why the latest attempt did not finish the deletion; absent after success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<DeletionError>,
}

/// One failed deletion attempt, as the cloud reported it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionError {
    /// Machine-readable reason, the same as the `Deleting` condition's reason.
    #[schemars(length(max = 64))]
    pub reason: String,
    /// The cloud's message (or the local error), at most 1 KiB.
    #[schemars(length(max = 1024))]
    pub message: String,
    /// The HTTP status the cloud answered with, if it answered.
    // An `int32` in the schema: Kubernetes warns about the `uint16` format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<i32>", range(min = 100, max = 599))]
    pub http_status: Option<u16>,
    /// The cloud's request id (`X-Openstack-Request-Id`), for support requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub request_id: Option<String>,
}

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&CloudImage::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_the_rust_types() {
        let generated = crd_yaml().expect("the CRD serialises");
        for (path, committed) in [
            (
                "crds/",
                include_str!("../crds/cloudimage.dev_cloudimages.yaml"),
            ),
            (
                "charts/cloudimage-operator/crds/",
                include_str!("../charts/cloudimage-operator/crds/cloudimage.dev_cloudimages.yaml"),
            ),
        ] {
            assert_eq!(
                committed, generated,
                "{path} is stale: run `cargo run --bin crdgen > {path}cloudimage.dev_cloudimages.yaml`"
            );
        }
    }

    #[test]
    fn spec_defaults_are_delete_and_no_backup() {
        let spec: CloudImageSpec = serde_json::from_value(serde_json::json!({
            "imageId": "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90",
            "cloudRef": {"secretName": "s", "cloudName": "c"}
        }))
        .expect("minimal spec parses");
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        assert!(!spec.delete_backup);
    }
}

/// Whether `id` has the shape [`IMAGE_ID_PATTERN`] describes. The API server
/// enforces the pattern; this guards objects stored before it did.
pub fn is_canonical_image_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

#[cfg(test)]
mod id_tests {
    use super::is_canonical_image_id;

    #[test]
    fn only_lower_case_uuids_are_image_ids() {
        assert!(is_canonical_image_id(
            "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba90"
        ));
        assert!(!is_canonical_image_id(
            "4CA46BF1-5C61-48FF-B4F3-0AD4E5E3BA90"
        ));
        assert!(!is_canonical_image_id(
            "4ca46bf1-5c61-48ff-b4f3-0ad4e5e3ba9"
        ));
        assert!(!is_canonical_image_id(
            "../../4ca46bf1-5c61-48ff-b4f3-0ad4e5e3"
        ));
        assert!(!is_canonical_image_id(
            "4ca46bf1x5c61-48ff-b4f3-0ad4e5e3ba90"
        ));
    }
}
