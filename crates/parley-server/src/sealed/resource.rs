//! Sealing resources: a persona's, replica's, document's, guardrail's or objective's fields and
//! blobs under the data key owned by the resource's internal row id.

use bytes::Bytes;
use parley_domain::KeyOwner;
use parley_keys::{DataKey, content_aad};
use parley_store::{Resource, StoreError, StoreResult};

/// What a resource whose key is gone reads as: no fields at all.
pub const UNAVAILABLE: &str = "null";

/// The key owner of a resource row.
pub fn owner(row_id: &str) -> StoreResult<KeyOwner> {
    KeyOwner::parse(row_id)
        .map_err(|_| StoreError::Backend(format!("resource row id {row_id:?} is not a key owner").into()))
}

/// The AAD field of a resource's body; the kind is part of it, so a body moved to another kind
/// of resource does not open.
fn body_field(r: &Resource) -> String {
    format!("resource.{}.body", r.kind.as_str())
}

/// The resource with its body sealed under `key`.
pub fn seal(key: &DataKey, owner: &KeyOwner, r: &Resource) -> Resource {
    let mut sealed = r.clone();
    sealed.body = key.seal_text(&content_aad(owner, &body_field(r)), &r.body);
    sealed
}

/// The resource with its body opened, or [`UNAVAILABLE`] without its key or if it does not open.
pub fn open(key: Option<&DataKey>, owner: &KeyOwner, mut r: Resource) -> Resource {
    let opened = key.and_then(
        |key| match key.open_text(&content_aad(owner, &body_field(&r)), &r.body) {
            Ok(body) => Some(body),
            Err(e) => {
                tracing::error!(resource.row_id = %owner, error = %e, "stored resource does not open");
                None
            }
        },
    );
    r.body = opened.unwrap_or_else(|| UNAVAILABLE.to_owned());
    r
}

/// The AAD field of a resource's blob: its key in the blob store.
fn blob_field(blob_key: &str) -> String {
    format!("blob:{blob_key}")
}

/// A resource's blob, sealed under its key before it is written.
pub fn seal_blob(key: &DataKey, owner: &KeyOwner, blob_key: &str, bytes: &[u8]) -> Bytes {
    Bytes::from(key.seal(&content_aad(owner, &blob_field(blob_key)), bytes))
}

/// Opens a blob made by [`seal_blob`]; `None` when it does not open.
pub fn open_blob(key: &DataKey, owner: &KeyOwner, blob_key: &str, sealed: &[u8]) -> Option<Bytes> {
    match key.open(&content_aad(owner, &blob_field(blob_key)), sealed) {
        Ok(plain) => Some(Bytes::from(plain)),
        Err(e) => {
            tracing::error!(resource.row_id = %owner, blob.key = blob_key, error = %e, "stored resource blob does not open");
            None
        }
    }
}
