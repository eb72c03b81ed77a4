//! Stored personas, replicas, documents, guardrails and objectives: rows whose shape the HTTP layer owns.

use parley_domain::{ResourceKind, Timestamp};

/// One stored resource. Its fields are in `body`, JSON that the server seals before it gets
/// here; the store keeps only what it must query on in the clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Internal and random (`s` + 16 hex): the owner of the resource's data key and the folder
    /// of its blobs.
    pub row_id: String,
    pub account: String,
    pub kind: ResourceKind,
    /// The wire id, unique per account and kind.
    pub id: String,
    /// The machine status (`ready`, `training`, `processing`, `error`, …), in the clear so that
    /// work on it can be found without opening anything.
    pub status: String,
    /// The resource's fields as JSON text (sealed by the server).
    pub body: String,
    /// Bumped by every write; an update names the version it read, so two read-modify-writes
    /// never lose each other's change.
    pub version: i64,
    /// Where the resource's content blob is, if it has one (a fetched document).
    pub blob_key: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Set by a soft delete: hidden, kept.
    pub deleted_at: Option<Timestamp>,
    /// When background work on the resource is due (a document to fetch); `None` when none is.
    pub work_at: Option<Timestamp>,
    /// While a runner holds that work: the end of its lease.
    pub locked_until: Option<Timestamp>,
    /// Attempts at the work so far.
    pub attempts: u32,
}
