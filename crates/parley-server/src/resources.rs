//! Personas, replicas, documents, guardrails and objectives: the operations every kind shares.
//!
//! Each kind's routes (`http::persona`, …) shape its JSON; here a resource is a row whose body is
//! a JSON object, sealed under a data key of the resource's own (owned by its internal row id),
//! so deleting it destroys its content the way a conversation's hard delete does: the key first,
//! then the row and blobs, and a purge row, written with the delete, finishes the job after a crash.

use parley_domain::{ResourceKind, Timestamp, random_id};
use parley_store::{ConversationStore, Resource, StoreError};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::service::ServiceError;
use crate::state::AppState;

type Result<T> = std::result::Result<T, ServiceError>;

/// How often a read-modify-write is tried again after another process's write came first.
const UPDATE_ATTEMPTS: usize = 8;
/// Locks that serialise this process's read-modify-writes, by resource.
const STRIPES: usize = 64;

/// Striped locks, one taken per resource for the length of a read-modify-write.
///
/// Writes of one resource from this process then queue rather than collide: without them, sixty
/// concurrent PATCHes of one persona made most of them lose the version race eight times and
/// answer 503. The version check still guards against writers in other processes.
pub struct Stripes([tokio::sync::Mutex<()>; STRIPES]);

impl Default for Stripes {
    fn default() -> Self {
        Self(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl Stripes {
    fn of(&self, account: &str, kind: ResourceKind, id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((account, kind.as_str(), id));
        &self.0[(hash % STRIPES as u64) as usize]
    }
}
/// Purges finished per round of the job runner.
const PURGE_BATCH: u32 = 16;

fn random_bytes() -> [u8; 8] {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A fresh wire id for a resource of `kind`: its prefix and 16 lowercase hex digits.
pub fn new_id(kind: ResourceKind) -> String {
    random_id(kind.id_prefix(), random_bytes())
}

/// A stored resource, opened: its row and its fields.
#[derive(Debug, Clone)]
pub struct Opened {
    pub row: Resource,
    /// The fields as stored; `None` when the resource's key is gone (an old copy of the row
    /// beside today's key store), so its content is unavailable.
    pub fields: Option<Map<String, Value>>,
}

impl Opened {
    fn of(row: Resource) -> Self {
        let fields = match serde_json::from_str::<Value>(&row.body) {
            Ok(Value::Object(fields)) => Some(fields),
            _ => None,
        };
        Self { row, fields }
    }

    /// A field as stored, or `Null`.
    pub fn field(&self, name: &str) -> &Value {
        self.fields
            .as_ref()
            .and_then(|f| f.get(name))
            .unwrap_or(&Value::Null)
    }

    /// A text field, if it is one.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.field(name).as_str()
    }
}

/// What a new resource starts as.
#[derive(Debug, Clone)]
pub struct NewResource {
    pub kind: ResourceKind,
    /// The wire id: `None` to draw a fresh one; `Some` for an id chosen elsewhere (a pinned
    /// id from the hosted service).
    pub id: Option<String>,
    pub status: String,
    pub fields: Map<String, Value>,
    /// Background work due at this time (a document to fetch).
    pub work_at: Option<Timestamp>,
}

/// Stores a new resource of the account's.
///
/// A pinned id that the account already has is a `Conflict`; a drawn id that collides is drawn again.
pub async fn create(state: &AppState, account: &str, new: NewResource) -> Result<Opened> {
    state
        .disk
        .check_writable(state.store.as_ref(), &state.blobs)
        .await?;
    let now = Timestamp::now();
    let pinned = new.id.is_some();
    if new.id.as_deref().is_some_and(|id| !storable(id)) {
        return Err(ServiceError::Validation(parley_domain::ValidationError(format!(
            "Invalid {}_id",
            new.kind.as_str()
        ))));
    }
    let mut row = Resource {
        row_id: random_id(parley_domain::resource::ROW_ID_PREFIX, random_bytes()),
        account: account.to_owned(),
        kind: new.kind,
        id: new.id.unwrap_or_else(|| new_id(new.kind)),
        status: new.status,
        body: Value::Object(new.fields).to_string(),
        version: 1,
        blob_key: None,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        work_at: new.work_at,
        locked_until: None,
        attempts: 0,
    };
    let mut attempts = 0;
    loop {
        match state.store.create_resource(&row).await {
            Err(StoreError::Conflict(_)) if !pinned && attempts < 3 => {
                attempts += 1;
                row.id = new_id(row.kind);
                row.row_id = random_id(parley_domain::resource::ROW_ID_PREFIX, random_bytes());
            }
            other => break other?,
        }
    }
    tracing::info!(resource.kind = row.kind.as_str(), resource.id = %row.id, account, "resource created");
    Ok(Opened::of(row))
}

/// Whether `id` can be a stored wire id at all. Anything else names no resource, and never
/// reaches the store: PostgreSQL refuses a NUL in text, which would otherwise be a 500.
fn storable(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256 && !id.chars().any(char::is_control)
}

/// The account's resource, unless deleted.
pub async fn get(state: &AppState, account: &str, kind: ResourceKind, id: &str) -> Result<Option<Opened>> {
    if !storable(id) {
        return Ok(None);
    }
    Ok(state.store.get_resource(account, kind, id).await?.map(Opened::of))
}

/// A page of the account's resources of a kind, newest first, and how many there are in all.
pub async fn list(
    state: &AppState,
    account: &str,
    kind: ResourceKind,
    limit: u32,
    offset: u64,
) -> Result<(Vec<Opened>, u64)> {
    let (rows, total) = state.store.list_resources(account, kind, limit, offset).await?;
    Ok((rows.into_iter().map(Opened::of).collect(), total))
}

/// Changes the account's resource with `change`, read-modify-write: if another write lands in
/// between, the change is made again on what that write left. `None` when there is no such
/// resource (or its content is unavailable); `change`'s error leaves the resource as it was.
pub async fn update<E>(
    state: &AppState,
    account: &str,
    kind: ResourceKind,
    id: &str,
    mut change: impl FnMut(&mut Map<String, Value>, &mut Resource) -> std::result::Result<(), E>,
) -> Result<Option<std::result::Result<Opened, E>>> {
    let _turn = state.resource_locks.of(account, kind, id).lock().await;
    for _ in 0..UPDATE_ATTEMPTS {
        let Some(opened) = get(state, account, kind, id).await? else {
            return Ok(None);
        };
        let Some(mut fields) = opened.fields else {
            return Ok(None);
        };
        let mut row = opened.row;
        if let Err(e) = change(&mut fields, &mut row) {
            return Ok(Some(Err(e)));
        }
        row.body = Value::Object(fields).to_string();
        row.updated_at = Timestamp::now();
        if state.store.update_resource(&row).await? {
            row.version += 1;
            return Ok(Some(Ok(Opened::of(row))));
        }
    }
    Err(ServiceError::Store(StoreError::Unavailable(
        "the resource kept changing under this update; try again".into(),
    )))
}

/// Deletes the account's resource: hidden when soft, erased when hard. False when there was
/// no such resource (a hard delete also finds soft-deleted ones).
///
/// A hard delete destroys the resource's key before it returns, then its blobs; if either
/// fails, the purge row written with the delete has the job runner finish it.
pub async fn delete(
    state: &AppState,
    account: &str,
    kind: ResourceKind,
    id: &str,
    hard: bool,
) -> Result<bool> {
    if !storable(id) {
        return Ok(false);
    }
    let now = Timestamp::now();
    if !hard {
        return Ok(state.store.soft_delete_resource(account, kind, id, now).await?);
    }
    let Some(row_id) = state.store.hard_delete_resource(account, kind, id, now).await? else {
        return Ok(false);
    };
    tracing::info!(
        resource.kind = kind.as_str(),
        resource.id = id,
        account,
        "resource hard-deleted"
    );
    // The key goes before the answer: that is the promise. The blobs may wait for the runner.
    state.store.shred_resource(&row_id).await?;
    if let Err(e) = purge(state, &row_id).await {
        tracing::warn!(resource.row_id = %row_id, error = format!("{e:#}"), "purging a deleted resource failed; it will be retried");
    }
    Ok(true)
}

/// Destroys a hard-deleted resource's key and blobs, then forgets its purge. Safe to repeat.
pub async fn purge(state: &AppState, row_id: &str) -> anyhow::Result<()> {
    state.store.shred_resource(row_id).await?;
    state.blobs.delete_resource(row_id).await?;
    state.store.finish_resource_purge(row_id).await?;
    Ok(())
}

/// Finishes purges left by deletes that did not get to the end (a crash, an unreachable blob
/// store). Called by the job runner each round.
pub async fn purge_pending(state: &AppState) {
    let pending = match state.store.pending_resource_purges(PURGE_BATCH).await {
        Ok(pending) => pending,
        Err(e) => {
            state.disk.notice(&e);
            tracing::warn!(error = %e, "listing pending resource purges failed");
            return;
        }
    };
    for row_id in pending {
        if let Err(e) = purge(state, &row_id).await {
            state.disk.notice(e.as_ref());
            tracing::warn!(resource.row_id = %row_id, error = format!("{e:#}"), "purging a deleted resource failed; it will be retried");
        }
    }
}
