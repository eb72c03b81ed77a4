//! The storage boundary: the `ConversationStore` trait every backend implements, and its errors.

pub mod resource;
pub mod table;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use parley_domain::{Conversation, ConversationId, Event, ResourceKind, Timestamp};

pub use resource::Resource;

/// What can go wrong in a store, in terms the services can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The account is at its cap of active conversations.
    #[error("User has reached maximum concurrent conversations")]
    ConcurrencyLimit,
    /// The backend cannot be reached now; the caller may retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported.
    #[error("storage error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a write failed when the disk (or the database server's disk) has no space left.
pub const DISK_FULL: &str = "the disk is full";

impl StoreError {
    /// A write failed for lack of disk space: `storage unavailable: the disk is full`.
    pub fn disk_full() -> Self {
        Self::Unavailable(DISK_FULL.to_owned())
    }

    /// Whether this is [`StoreError::disk_full`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Unavailable(why) if why == DISK_FULL)
    }
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// An account as authentication sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    /// Overrides the server's default cap of active conversations.
    pub max_concurrent: Option<u32>,
    /// Overrides the server's default retention of soft-deleted conversations.
    pub retention_days: Option<u32>,
}

/// An API key as listed to an operator: never the secret.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key_id: String,
    pub account: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A stored event, already in envelope terms.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_type: String,
    pub message_type: String,
    pub timestamp: Timestamp,
    pub properties: serde_json::Value,
}

/// A blob that belongs to a conversation.
#[derive(Debug, Clone)]
pub struct Asset {
    pub name: String,
    pub blob_key: String,
    pub content_type: String,
    pub size: u64,
    pub created_at: Timestamp,
}

/// What `end_conversation` did.
#[derive(Debug)]
pub enum EndOutcome {
    /// No such visible conversation.
    NotFound,
    /// It was already over; nothing changed.
    AlreadyEnded(Conversation),
    /// It is now ended; the finalize job produces its assets.
    Ended {
        conversation: Conversation,
        finalize: Job,
    },
}

/// What `soft_delete` did.
#[derive(Debug, PartialEq, Eq)]
pub enum SoftDeleteOutcome {
    NotFound,
    /// The conversation is still active: end it first.
    StillActive,
    Deleted,
    AlreadyDeleted,
}

/// Who may hard-delete: an API caller sees only its own, visible or soft-deleted conversations.
#[derive(Debug, Clone, Copy)]
pub enum DeleteScope<'a> {
    /// An API request from this account.
    Account(&'a str),
    /// The retention job: only if still soft-deleted since this instant.
    RetentionExpired { deleted_at: Timestamp },
    /// `parley verify --repair`: the conversation's data key is gone, so its content can never be
    /// read again; erased in any state, whatever its account (the receipt says `key_lost`).
    KeyLost,
}

/// A conversation as a cross-check pages through them: its id and account, and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRef {
    pub id: ConversationId,
    pub account: String,
}

/// What `hard_delete` did.
#[derive(Debug)]
pub enum HardDeleteOutcome {
    NotFound,
    /// The rows are gone; the purge job removes the blobs and database residue.
    Deleted {
        receipt: ErasureReceipt,
        purge: Job,
    },
}

/// The record kept of an erasure: who, when and how much; never content.
#[derive(Debug, Clone)]
pub struct ErasureReceipt {
    pub conversation_id: ConversationId,
    pub account: String,
    pub erased_at: Timestamp,
    pub reason: String,
    pub events: u64,
    pub assets: u64,
    pub asset_bytes: u64,
    /// The conversation's data key, once destroyed (see [`ConversationStore::record_key_destroyed`]).
    pub key_id: Option<String>,
    /// When the data key was destroyed.
    pub key_destroyed_at: Option<Timestamp>,
}

/// The tables whose rows a runner claims under a lease (`locked_until`): what
/// [`ConversationStore::release_all_leases`] releases.
pub const LEASED_TABLES: [&str; 3] = ["job", "delivery", "resource"];

/// A durable job's id.
pub type JobId = i64;

/// The kinds of durable background work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// The simulated replica joins the call.
    JoinReplica,
    /// An ended call gets its transcript, perception analysis and recording.
    Finalize,
    /// A hard-deleted conversation's blobs and database residue are removed.
    Purge,
    /// A soft-deleted conversation past its retention window is hard-deleted.
    RetentionPurge,
    /// `max_call_duration` is reached.
    MaxDurationTimer,
    /// `participant_absent_timeout` is reached (only ends a call nobody joined).
    AbsentTimer,
    /// `participant_left_timeout` after the room emptied (only ends a call still empty since).
    LeftTimer,
}

impl JobKind {
    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::JoinReplica => "join_replica",
            Self::Finalize => "finalize",
            Self::Purge => "purge",
            Self::RetentionPurge => "retention_purge",
            Self::MaxDurationTimer => "max_duration_timer",
            Self::AbsentTimer => "absent_timer",
            Self::LeftTimer => "left_timer",
        }
    }

    /// Parses the stored form.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// Work that only makes sense while the call is live: ending it drops these.
    pub const LIVE_CALL: [Self; 4] = [
        Self::JoinReplica,
        Self::MaxDurationTimer,
        Self::AbsentTimer,
        Self::LeftTimer,
    ];

    /// Work that outlives a hard delete: a finalize under way takes back what it wrote, and the
    /// purge erases the rest. A hard delete drops every other kind.
    pub const OUTLIVES_HARD_DELETE: [Self; 2] = [Self::Finalize, Self::Purge];

    /// The kinds as SQL string literals, `'a', 'b'`, for `kind IN (…)` in either dialect; safe to
    /// splice into a query, being constants of ours.
    pub fn sql_list(kinds: &[Self]) -> String {
        kinds
            .iter()
            .map(|k| format!("'{}'", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every kind, so parsing cannot miss one.
    pub const ALL: [Self; 7] = [
        Self::JoinReplica,
        Self::Finalize,
        Self::Purge,
        Self::RetentionPurge,
        Self::MaxDurationTimer,
        Self::AbsentTimer,
        Self::LeftTimer,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_reads_as_storage_unavailable() {
        let e = StoreError::disk_full();
        assert!(e.is_disk_full());
        assert_eq!(e.to_string(), "storage unavailable: the disk is full");
        assert!(!StoreError::Unavailable("pool timed out".into()).is_disk_full());
    }

    #[test]
    fn job_kind_sets_become_sql_lists_of_their_stored_forms() {
        assert_eq!(
            JobKind::sql_list(&JobKind::OUTLIVES_HARD_DELETE),
            "'finalize', 'purge'"
        );
        assert_eq!(
            JobKind::sql_list(&JobKind::LIVE_CALL),
            "'join_replica', 'max_duration_timer', 'absent_timer', 'left_timer'"
        );
    }

    #[test]
    fn every_job_kind_round_trips_through_its_stored_form() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
        }
    }
}

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub kind: JobKind,
    pub conversation_id: ConversationId,
    /// Set for retention jobs: the soft delete this job expires.
    pub not_before: Option<Timestamp>,
    /// Attempts so far, including this one.
    pub attempts: u32,
}

/// A pending job as an operator sees it.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: JobId,
    pub kind: String,
    pub conversation_id: String,
    pub run_at: Timestamp,
    /// Set for timers and retention jobs: the instant the job checks is still current.
    pub not_before: Option<Timestamp>,
    /// Set while a runner holds the job: the end of its lease.
    pub locked_until: Option<Timestamp>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A claimed webhook delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Stable across attempts; receivers use it to drop duplicates.
    pub id: String,
    pub conversation_id: String,
    pub event_type: String,
    pub url: String,
    /// The JSON envelope, exactly as sent on every attempt.
    pub payload: String,
    /// Attempts so far, including this one.
    pub attempts: u32,
    /// Start of the retry window.
    pub retry_from: Timestamp,
    /// The account's signing secret, if it has one.
    pub signing_secret: Option<String>,
}

/// A delivery as an operator sees it.
#[derive(Debug, Clone)]
pub struct DeliveryInfo {
    pub id: String,
    pub conversation_id: String,
    pub event_type: String,
    pub url: String,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryFilter<'a> {
    pub conversation_id: Option<&'a str>,
    /// Only deliveries in trouble: given up, or pending after a failed attempt.
    pub failed_only: bool,
}

/// What starts a sealed `request_json` (the text form of a sealed value, `parley_keys`'
/// `SEALED_TEXT_PREFIX`): a conversation whose `request_json` does not start with it was stored
/// in plaintext by an older parley. The backends' `conversation_unsealed` index spells it out.
pub const SEALED_PREFIX: &str = "pe1:";

/// The four content fields of a conversation row, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentFields {
    pub conversation_name: Option<String>,
    pub conversational_context: Option<String>,
    pub custom_greeting: Option<String>,
    pub request_json: String,
}

/// An event row as stored, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    pub event_id: i64,
    pub event_type: String,
    /// The properties column: JSON text.
    pub properties: String,
}

/// A delivery row's content as stored, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDelivery {
    pub delivery_id: String,
    pub event_type: String,
    pub carries_content: bool,
    /// The envelope as sent, JSON text.
    pub payload: String,
}

/// A conversation whose content is not sealed yet (written by an older parley), with every row
/// that holds content, as stored: what sealing a store in place reads.
#[derive(Debug, Clone)]
pub struct UnsealedConversation {
    pub id: ConversationId,
    pub fields: ContentFields,
    /// Oldest first.
    pub events: Vec<RawEvent>,
    /// Oldest first, whatever their status.
    pub deliveries: Vec<RawDelivery>,
    pub assets: Vec<Asset>,
}

/// New values for a conversation's content rows: see [`ConversationStore::reseal_conversations`].
#[derive(Debug, Clone)]
pub struct Resealed {
    pub id: ConversationId,
    pub fields: ContentFields,
    /// `(event_id, properties)` for each event to rewrite.
    pub events: Vec<(i64, String)>,
    /// `(delivery_id, payload)` for each delivery to rewrite.
    pub deliveries: Vec<(String, String)>,
}

/// What a participant's join did.
#[derive(Debug, PartialEq, Eq)]
pub enum ParticipantOutcome {
    /// No such conversation (or soft-deleted).
    NotFound,
    /// The call is over; nobody can join or leave.
    Ended,
    /// Done; this many people are in the room now.
    Done { present: u32 },
}

/// Persistent state: accounts, keys, conversations, events, assets, receipts and jobs.
///
/// Every method is one transaction; a method either happens whole or not at all.
#[async_trait]
pub trait ConversationStore: Send + Sync + 'static {
    // --- accounts and keys ---

    /// Whether any account exists (first start creates `default`).
    async fn has_accounts(&self) -> StoreResult<bool>;
    /// Creates the account if missing; true when it was created.
    async fn ensure_account(&self, name: &str, now: Timestamp) -> StoreResult<bool>;
    /// Sets or clears an account's overrides; false when no such account.
    async fn set_account_limits(
        &self,
        name: &str,
        max_concurrent: Option<u32>,
        retention_days: Option<u32>,
    ) -> StoreResult<bool>;
    /// All accounts.
    async fn list_accounts(&self) -> StoreResult<Vec<Account>>;
    /// Stores a key by its hash (the account must exist).
    async fn insert_key(
        &self,
        key_id: &str,
        account: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()>;
    /// All keys, oldest first.
    async fn list_keys(&self) -> StoreResult<Vec<KeyInfo>>;
    /// Revokes a key; false when no such unrevoked key.
    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<bool>;
    /// The account of an unrevoked key with this hash.
    async fn account_for_key(&self, key_hash: &str) -> StoreResult<Option<Account>>;

    // --- conversations ---

    /// Inserts a conversation, checking the account's cap of active ones atomically.
    ///
    /// `jobs` are scheduled with it: the replica's join and the call's timers (none for test mode).
    async fn create_conversation(
        &self,
        conversation: &Conversation,
        max_active: u32,
        jobs: &[(JobKind, Timestamp)],
    ) -> StoreResult<()>;
    /// A visible (not soft-deleted) conversation of the account.
    async fn get_conversation(&self, account: &str, id: &ConversationId)
    -> StoreResult<Option<Conversation>>;
    /// A conversation in any state but hard-deleted, for background work.
    async fn load_conversation(&self, id: &ConversationId) -> StoreResult<Option<Conversation>>;
    /// A page of visible conversations, newest first, and the total count of matches.
    async fn list_conversations(
        &self,
        account: &str,
        status: Option<parley_domain::Status>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Conversation>, u64)>;
    /// Up to `limit` conversations in any state but hard-deleted, in id order after `after`: a page
    /// of a cross-check (`parley verify`) that holds one page in memory however many there are.
    ///
    /// Paging by key, not by offset, keeps each page as cheap as the first, and a conversation
    /// made or erased meanwhile moves no other across a page boundary.
    async fn list_conversation_ids(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationRef>>;
    /// The conversation's events, oldest first.
    async fn list_events(&self, id: &ConversationId) -> StoreResult<Vec<StoredEvent>>;
    /// Records the replica's join if the call is still active and not yet joined; true if recorded.
    async fn record_join(&self, id: &ConversationId, event: &Event) -> StoreResult<bool>;
    /// Ends an active conversation: status, shutdown event and a finalize job, in one transaction.
    ///
    /// `account` limits it to visible conversations of that account; `None` is for background work.
    /// With `lease_until` the finalize job is created already claimed, for the caller to run at once.
    async fn end_conversation(
        &self,
        account: Option<&str>,
        id: &ConversationId,
        reason: &str,
        now: Timestamp,
        lease_until: Option<Timestamp>,
    ) -> StoreResult<EndOutcome>;
    /// Stores the assets and after-end events of an ended call; false if it was hard-deleted meanwhile.
    async fn store_call_results(
        &self,
        id: &ConversationId,
        events: &[Event],
        asset: Option<&Asset>,
    ) -> StoreResult<bool>;
    /// The visible conversation's asset of that name.
    async fn get_asset(&self, account: &str, id: &ConversationId, name: &str) -> StoreResult<Option<Asset>>;
    /// Hides an ended conversation and schedules its retention purge at `purge_at`.
    async fn soft_delete(
        &self,
        account: &str,
        id: &ConversationId,
        now: Timestamp,
        purge_at: Timestamp,
    ) -> StoreResult<SoftDeleteOutcome>;
    /// Brings back a soft-deleted conversation; false when there is none.
    async fn restore(&self, id: &ConversationId, now: Timestamp) -> StoreResult<bool>;
    /// Erases a conversation's rows, records a receipt and a purge job, in one transaction.
    ///
    /// An active conversation is ended first (its shutdown event is written, then erased with the rest).
    /// With `lease_until` the purge job is created already claimed, for the caller to run at once.
    async fn hard_delete(
        &self,
        scope: DeleteScope<'_>,
        id: &ConversationId,
        now: Timestamp,
        lease_until: Option<Timestamp>,
    ) -> StoreResult<HardDeleteOutcome>;
    /// A person joins the room of an active, visible conversation.
    async fn participant_join(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome>;
    /// A person leaves; when the room empties, the `participant_left_timeout` timer is scheduled.
    async fn participant_leave(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome>;
    /// Records on the conversation's erasure receipt its data key (`key_id`, written before the key
    /// is destroyed) and when it was destroyed (`at`); values already recorded are kept. False
    /// when there is no receipt.
    async fn record_key_destroyed(
        &self,
        id: &ConversationId,
        key_id: Option<&str>,
        at: Option<Timestamp>,
    ) -> StoreResult<bool>;
    /// Erasure receipts, newest first.
    async fn list_receipts(&self, account: Option<&str>) -> StoreResult<Vec<ErasureReceipt>>;

    // --- webhooks ---

    /// Sets or clears the account's webhook signing secret; false when no such account.
    async fn set_webhook_secret(&self, account: &str, secret: Option<&str>) -> StoreResult<bool>;
    /// Claims up to `limit` due deliveries, each the oldest pending one of its conversation.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;
    /// Marks a claimed delivery done (and forgets it if its conversation was hard-deleted).
    ///
    /// Like every call that finishes claimed work, it only acts if the claim is still the latest
    /// (`attempts` unchanged): a runner whose lease expired cannot undo its successor's work.
    async fn delivery_succeeded(&self, delivery: &Delivery, now: Timestamp) -> StoreResult<()>;
    /// Records a failed attempt: retried at `retry_at`, or given up when `None` (and forgotten if
    /// its conversation was hard-deleted).
    async fn delivery_failed(
        &self,
        delivery: &Delivery,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()>;
    /// Deliveries, oldest first.
    async fn list_deliveries(&self, filter: DeliveryFilter<'_>) -> StoreResult<Vec<DeliveryInfo>>;
    /// Queues a delivery again now, with a fresh retry window; false when no such delivery.
    async fn retry_delivery(&self, id: &str, now: Timestamp) -> StoreResult<bool>;

    // --- durable jobs ---

    /// Claims up to `limit` due jobs, leasing each until `lease_until`.
    async fn claim_due_jobs(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Job>>;
    /// Releases every lease of jobs, deliveries and resource work ([`LEASED_TABLES`]); only for a
    /// process that knows no other runner is alive.
    async fn release_all_leases(&self) -> StoreResult<u64>;
    /// Removes a finished job, if the claim is still the latest (see `delivery_succeeded`).
    async fn complete_job(&self, job: &Job) -> StoreResult<()>;
    /// Releases a failed job to run again at `retry_at`, if the claim is still the latest.
    async fn fail_job(&self, job: &Job, error: &str, retry_at: Timestamp) -> StoreResult<()>;
    /// Pending jobs, for operators and tests.
    async fn list_jobs(&self) -> StoreResult<Vec<JobInfo>>;
    /// Makes erased content unrecoverable from the backend's files (e.g. a WAL checkpoint).
    ///
    /// Returns false when it could not complete now and should be retried.
    async fn erase_residue(&self) -> StoreResult<bool>;
    /// Rewrites one tiny row, to learn whether writes work again after a full disk.
    async fn probe_write(&self, now: Timestamp) -> StoreResult<()>;
    // --- sealing a store written by an older parley in place ---

    /// Conversations whose `request_json` does not start with [`SEALED_PREFIX`]: content an older
    /// parley stored in plaintext. Cheap when there are none (a partial index holds only them).
    async fn count_unsealed(&self) -> StoreResult<u64>;
    /// Up to `limit` such conversations in id order, after `after`, each with its content rows
    /// (fields, events, deliveries, assets) as stored, read in one snapshot.
    async fn unsealed_conversations(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<UnsealedConversation>>;
    /// Rewrites the content rows of each conversation: its four fields, and the events and
    /// deliveries named, all in one transaction, so no conversation is ever left half rewritten.
    ///
    /// A conversation that is gone, or whose `request_json` starts with [`SEALED_PREFIX`] by now
    /// (another process got there first), is skipped whole. An event or delivery that is not the
    /// conversation's fails the whole call and changes nothing. Returns how many conversations
    /// were rewritten.
    async fn reseal_conversations(&self, resealed: &[Resealed]) -> StoreResult<u64>;
    /// Rewrites the database files so that rows since rewritten or deleted leave no bytes in
    /// their free space (SQLite: `VACUUM`, then the WAL emptied; PostgreSQL: `VACUUM FULL` of
    /// the content tables, which locks them while it runs). Old copies in backups, WAL archives
    /// and replicas are out of its reach.
    async fn compact(&self) -> StoreResult<()>;

    // --- copying between stores (`parley migrate-store`) ---

    /// Rows of a table.
    async fn count_rows(&self, table: table::Table) -> StoreResult<u64>;
    /// Up to `limit` rows of a table in key order, after the key of `after` (the last row of the
    /// previous page), values in [`table::Table::columns`] order.
    ///
    /// Paging by key, not by offset, keeps each page as cheap as the first.
    async fn export_rows(
        &self,
        table: table::Table,
        after: Option<&table::Row>,
        limit: u32,
    ) -> StoreResult<Vec<table::Row>>;
    /// Inserts rows as exported (ids included) in one transaction, and moves serial counters past them.
    ///
    /// A row whose key is already there is skipped, so a copy that stopped half way can simply run again.
    async fn import_rows(&self, table: table::Table, rows: &[table::Row]) -> StoreResult<()>;

    // --- personas, replicas, documents, guardrails, objectives ---

    /// Stores a new resource. `Conflict` when the account already has one of that kind and
    /// wire id (soft-deleted ones included).
    async fn create_resource(&self, resource: &Resource) -> StoreResult<()>;
    /// The account's resource of that kind and wire id, unless soft-deleted.
    async fn get_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> StoreResult<Option<Resource>>;
    /// A resource by row id, in any state: for background work.
    async fn load_resource(&self, row_id: &str) -> StoreResult<Option<Resource>>;
    /// A page of the account's resources of a kind, newest first, soft-deleted ones left out,
    /// and how many there are in all (from the same snapshot).
    async fn list_resources(
        &self,
        account: &str,
        kind: ResourceKind,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Resource>, u64)>;
    /// Writes `resource`'s status, body, blob key, `updated_at`, work time, lease and attempts,
    /// if its row is still at `resource.version` and not soft-deleted; the version moves on by
    /// one. False, writing nothing, when another write came first or the row is gone.
    async fn update_resource(&self, resource: &Resource) -> StoreResult<bool>;
    /// Hides the account's resource; true when this call hid it.
    async fn soft_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;
    /// Removes the account's resource (soft-deleted or not) and records a purge of its key and
    /// blobs in the same transaction, so the purge happens even if the process dies next.
    /// Returns the row id, or `None` when there was no such resource.
    async fn hard_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>>;
    /// Up to `limit` resources whose work is due by `now` and not leased, leased until
    /// `lease_until` (each claim moves the version on, so a stale holder can no longer write).
    async fn claim_resource_work(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Resource>>;
    /// Row ids of hard-deleted resources whose purge has not finished, oldest first.
    async fn pending_resource_purges(&self, limit: u32) -> StoreResult<Vec<String>>;
    /// Forgets a finished purge.
    async fn finish_resource_purge(&self, row_id: &str) -> StoreResult<()>;

    /// Releases connections.
    async fn close(&self);
}
