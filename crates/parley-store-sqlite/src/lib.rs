//! `ConversationStore` on one SQLite file: WAL, `secure_delete`, one writer and a pool of readers.

mod resource;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parley_domain::{
    Conversation, ConversationId, Event, ResourceKind, ShutdownReason, Status, Timestamp, random_id,
};
use parley_store::table::{Kind, Row as CopyRow, Table, Value};
use parley_store::{
    Account, Asset, ContentFields, ConversationRef, ConversationStore, DeleteScope, Delivery, DeliveryFilter,
    DeliveryInfo, EndOutcome, ErasureReceipt, HardDeleteOutcome, Job, JobInfo, JobKind, KeyInfo,
    LEASED_TABLES, ParticipantOutcome, RawDelivery, RawEvent, Resealed, Resource, SoftDeleteOutcome,
    StoreError, StoreResult, StoredEvent, UnsealedConversation,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Every write takes the write lock up front, so a read-then-write never fails half way.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// The conversation columns, as a literal so queries are built at compile time.
macro_rules! columns {
    () => {
        "conversation_id, account_id, status, conversation_name, callback_url, \
         replica_id, persona_id, conversational_context, custom_greeting, test_mode, enable_recording, \
         meeting_token, request_json, created_at, updated_at, joined_at, ended_at, shutdown_reason, deleted_at, \
         max_call_duration, participant_left_timeout, participant_absent_timeout, participants_present, \
         participant_joined_at, participant_left_at"
    };
}

/// The embedded store.
pub struct SqliteStore {
    /// One connection: SQLite has one writer at a time, and queueing here is cheaper than busy-waiting.
    writer: SqlitePool,
    readers: SqlitePool,
    checkpoint: Checkpointer,
}

/// Coalesces WAL checkpoints: one that starts after a request covers it.
struct Checkpointer {
    requested: AtomicU64,
    completed: tokio::sync::Mutex<u64>,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database file at `path`.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Every acknowledged write is on disk: FULL syncs the WAL at each commit.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted content is overwritten with zeros, so a hard delete leaves no bytes behind.
            .pragma("secure_delete", "ON");
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> StoreResult<Self> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _| Box::pin(async move { outside_transaction(conn).await }))
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(|conn, _| Box::pin(async move { outside_transaction(conn).await }))
            .connect_with(options.read_only(true))
            .await
            .map_err(map_err)?;
        let store = Self {
            writer,
            readers,
            checkpoint: Checkpointer {
                requested: AtomicU64::new(0),
                completed: tokio::sync::Mutex::new(0),
            },
        };
        // A crash after a purge but before its checkpoint leaves erased pages in the WAL.
        store.erase_residue().await?;
        Ok(store)
    }
}

/// Whether a connection going back to its pool is outside any transaction, and so fit for reuse.
///
/// On SQLITE_FULL (and I/O errors) SQLite rolls the whole transaction back by itself; the
/// `ROLLBACK` sqlx then sends fails with "no transaction is active", and sqlx keeps counting one
/// open transaction. Reused, such a connection refuses every later `BEGIN` ("attempted to call
/// begin_with at non-zero transaction depth"): the writer would be lost until a restart. It is
/// closed instead, and the pool opens a fresh one. The ping first lets the worker run any
/// rollback a dropped transaction queued, so a connection whose rollback did work is kept.
async fn outside_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    // The common case, a committed transaction or none, costs no round trip.
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    conn.ping().await?;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("closing a database connection left inside a failed transaction");
    }
    Ok(clean)
}

/// SQLite's primary result code for "database or disk is full".
const SQLITE_FULL: i32 = 13;

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        // sqlx reports the extended code; its low byte is the primary one.
        sqlx::Error::Database(db)
            if db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == SQLITE_FULL) =>
        {
            StoreError::disk_full()
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(Box::new(e)),
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// A reseal that names a row of another conversation, or none: a caller's bug, refused whole.
fn not_its_row(table: &str, id: &str, conversation: &ConversationId) -> StoreError {
    StoreError::Backend(format!("{table} {id} is not a row of conversation {conversation}").into())
}

fn ts(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(Timestamp::from_micros)
}

fn row_to_conversation(row: &SqliteRow) -> StoreResult<Conversation> {
    let id: String = row.get("conversation_id");
    let status: String = row.get("status");
    Ok(Conversation {
        id: ConversationId::parse(&id).map_err(backend)?,
        account: row.get("account_id"),
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown status {status:?}").into()))?,
        conversation_name: row.get("conversation_name"),
        callback_url: row.get("callback_url"),
        replica_id: row.get("replica_id"),
        persona_id: row.get("persona_id"),
        conversational_context: row.get("conversational_context"),
        custom_greeting: row.get("custom_greeting"),
        test_mode: row.get("test_mode"),
        enable_recording: row.get("enable_recording"),
        meeting_token: row.get("meeting_token"),
        request_json: row.get("request_json"),
        created_at: Timestamp::from_micros(row.get("created_at")),
        updated_at: Timestamp::from_micros(row.get("updated_at")),
        joined_at: ts(row.get("joined_at")),
        ended_at: ts(row.get("ended_at")),
        shutdown_reason: row.get("shutdown_reason"),
        deleted_at: ts(row.get("deleted_at")),
        max_call_duration: row.get("max_call_duration"),
        participant_left_timeout: row.get("participant_left_timeout"),
        participant_absent_timeout: row.get("participant_absent_timeout"),
        participants_present: row.get("participants_present"),
        participant_joined_at: ts(row.get("participant_joined_at")),
        participant_left_at: ts(row.get("participant_left_at")),
    })
}

fn row_to_job(row: &SqliteRow) -> StoreResult<Job> {
    let kind: String = row.get("kind");
    let id: String = row.get("conversation_id");
    Ok(Job {
        id: row.get("job_id"),
        kind: JobKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown job kind {kind:?}").into()))?,
        conversation_id: ConversationId::parse(&id).map_err(backend)?,
        not_before: ts(row.get("not_before")),
        attempts: u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
    })
}

/// Where a conversation's events go.
struct Target {
    account: String,
    callback_url: Option<String>,
    test_mode: bool,
}

impl Target {
    fn of(c: &Conversation) -> Self {
        Self {
            account: c.account.clone(),
            callback_url: c.callback_url.clone(),
            test_mode: c.test_mode,
        }
    }
}

async fn target(tx: &mut sqlx::SqliteConnection, id: &ConversationId) -> Result<Option<Target>, sqlx::Error> {
    let row =
        sqlx::query("SELECT account_id, callback_url, test_mode FROM conversation WHERE conversation_id = ?")
            .bind(id.as_str())
            .fetch_optional(tx)
            .await?;
    Ok(row.map(|r| Target {
        account: r.get(0),
        callback_url: r.get(1),
        test_mode: r.get(2),
    }))
}

/// Stores an event and, when the conversation has a callback URL, its delivery: one transaction.
async fn insert_event(
    tx: &mut sqlx::SqliteConnection,
    id: &ConversationId,
    target: &Target,
    event: &Event,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO event (conversation_id, event_type, message_type, occurred_at, properties) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(event.event_type.as_str())
    .bind(event.event_type.message_type())
    .bind(event.timestamp.as_micros())
    .bind(event.properties.to_string())
    .execute(&mut *tx)
    .await?;
    let Some(delivery) = event.delivery(id, target.callback_url.as_deref(), target.test_mode) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO delivery (delivery_id, conversation_id, account_id, event_type, carries_content, url, \
         payload, next_attempt_at, retry_from, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?8)",
    )
    .bind(random_id('d', rand::random()))
    .bind(id.as_str())
    .bind(&target.account)
    .bind(event.event_type.as_str())
    .bind(delivery.carries_content)
    .bind(&delivery.url)
    .bind(&delivery.payload)
    .bind(event.timestamp.as_micros())
    .execute(tx)
    .await?;
    Ok(())
}

/// Removes a finished delivery whose conversation was hard-deleted: nothing of it is kept once
/// it was sent (or given up).
async fn forget_orphan(tx: &mut sqlx::SqliteConnection, delivery_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM delivery WHERE delivery_id = ? AND status != 'pending' AND NOT EXISTS \
         (SELECT 1 FROM conversation c WHERE c.conversation_id = delivery.conversation_id)",
    )
    .bind(delivery_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// A job row that runs now, created already claimed when `lease_until` is set.
async fn insert_claimed_job(
    tx: &mut sqlx::SqliteConnection,
    kind: JobKind,
    id: &ConversationId,
    now: Timestamp,
    lease_until: Option<Timestamp>,
) -> Result<Job, sqlx::Error> {
    let attempts = u32::from(lease_until.is_some());
    let row = sqlx::query(
        "INSERT INTO job (kind, conversation_id, run_at, locked_until, attempts, created_at) \
         VALUES (?, ?, ?, ?, ?, ?) RETURNING job_id",
    )
    .bind(kind.as_str())
    .bind(id.as_str())
    .bind(now.as_micros())
    .bind(lease_until.map(Timestamp::as_micros))
    .bind(attempts)
    .bind(now.as_micros())
    .fetch_one(tx)
    .await?;
    Ok(Job {
        id: row.get(0),
        kind,
        conversation_id: id.clone(),
        not_before: None,
        attempts,
    })
}

/// A job row for later.
async fn insert_job(
    tx: &mut sqlx::SqliteConnection,
    kind: JobKind,
    id: &ConversationId,
    run_at: Timestamp,
    not_before: Option<Timestamp>,
    now: Timestamp,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO job (kind, conversation_id, not_before, run_at, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(kind.as_str())
    .bind(id.as_str())
    .bind(not_before.map(Timestamp::as_micros))
    .bind(run_at.as_micros())
    .bind(now.as_micros())
    .execute(tx)
    .await?;
    Ok(())
}

/// Binds a copied value with its column's type, so a NULL is typed too.
fn bind_value<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    value: &'q Value,
    kind: Kind,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    match (value, kind) {
        (Value::Text(t), _) => q.bind(t.as_str()),
        (Value::Int(n), _) => q.bind(*n),
        (Value::Bool(b), _) => q.bind(*b),
        (Value::Null, Kind::Text) => q.bind(None::<String>),
        (Value::Null, _) => q.bind(None::<i64>),
    }
}

const CLAIM_RETURNING: &str = "RETURNING job_id, kind, conversation_id, not_before, attempts";

#[async_trait]
impl ConversationStore for SqliteStore {
    async fn has_accounts(&self) -> StoreResult<bool> {
        let row = sqlx::query("SELECT EXISTS (SELECT 1 FROM account)")
            .fetch_one(&self.readers)
            .await
            .map_err(map_err)?;
        Ok(row.get::<bool, _>(0))
    }

    async fn ensure_account(&self, name: &str, now: Timestamp) -> StoreResult<bool> {
        let done =
            sqlx::query("INSERT INTO account (account_id, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING")
                .bind(name)
                .bind(now.as_micros())
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn set_account_limits(
        &self,
        name: &str,
        max_concurrent: Option<u32>,
        retention_days: Option<u32>,
    ) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE account SET max_concurrent = ?, retention_days = ? WHERE account_id = ?")
                .bind(max_concurrent)
                .bind(retention_days)
                .bind(name)
                .execute(&self.writer)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        let rows =
            sqlx::query("SELECT account_id, max_concurrent, retention_days FROM account ORDER BY created_at")
                .fetch_all(&self.readers)
                .await
                .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| Account {
                name: r.get(0),
                max_concurrent: r.get(1),
                retention_days: r.get(2),
            })
            .collect())
    }

    async fn insert_key(
        &self,
        key_id: &str,
        account: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO api_key (key_id, account_id, key_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(key_id)
            .bind(account)
            .bind(key_hash)
            .bind(now.as_micros())
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn list_keys(&self) -> StoreResult<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT key_id, account_id, created_at, revoked_at FROM api_key ORDER BY created_at, key_id",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| KeyInfo {
                key_id: r.get(0),
                account: r.get(1),
                created_at: Timestamp::from_micros(r.get(2)),
                revoked_at: ts(r.get(3)),
            })
            .collect())
    }

    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE api_key SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL")
            .bind(now.as_micros())
            .bind(key_id)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn account_for_key(&self, key_hash: &str) -> StoreResult<Option<Account>> {
        let row = sqlx::query(
            "SELECT a.account_id, a.max_concurrent, a.retention_days FROM api_key k \
             JOIN account a ON a.account_id = k.account_id WHERE k.key_hash = ? AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(row.map(|r| Account {
            name: r.get(0),
            max_concurrent: r.get(1),
            retention_days: r.get(2),
        }))
    }

    async fn create_conversation(
        &self,
        c: &Conversation,
        max_active: u32,
        jobs: &[(JobKind, Timestamp)],
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        if c.status == Status::Active && !c.test_mode {
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM conversation WHERE account_id = ? AND status = 'active' AND test_mode = 0",
            )
            .bind(&c.account)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if active >= i64::from(max_active) {
                return Err(StoreError::ConcurrencyLimit);
            }
        }
        sqlx::query(concat!(
            "INSERT INTO conversation (",
            columns!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(c.id.as_str())
        .bind(&c.account)
        .bind(c.status.as_str())
        .bind(&c.conversation_name)
        .bind(&c.callback_url)
        .bind(&c.replica_id)
        .bind(&c.persona_id)
        .bind(&c.conversational_context)
        .bind(&c.custom_greeting)
        .bind(c.test_mode)
        .bind(c.enable_recording)
        .bind(&c.meeting_token)
        .bind(&c.request_json)
        .bind(c.created_at.as_micros())
        .bind(c.updated_at.as_micros())
        .bind(c.joined_at.map(Timestamp::as_micros))
        .bind(c.ended_at.map(Timestamp::as_micros))
        .bind(&c.shutdown_reason)
        .bind(c.deleted_at.map(Timestamp::as_micros))
        .bind(c.max_call_duration)
        .bind(c.participant_left_timeout)
        .bind(c.participant_absent_timeout)
        .bind(c.participants_present)
        .bind(c.participant_joined_at.map(Timestamp::as_micros))
        .bind(c.participant_left_at.map(Timestamp::as_micros))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for (kind, at) in jobs {
            insert_job(&mut tx, *kind, &c.id, *at, None, c.created_at)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn get_conversation(
        &self,
        account: &str,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM conversation \
             WHERE conversation_id = ? AND account_id = ? AND deleted_at IS NULL"
        ))
        .bind(id.as_str())
        .bind(account)
        .fetch_optional(&self.readers)
        .await
        .map_err(map_err)?;
        row.as_ref().map(row_to_conversation).transpose()
    }

    async fn load_conversation(&self, id: &ConversationId) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM conversation WHERE conversation_id = ?"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.readers)
        .await
        .map_err(map_err)?;
        row.as_ref().map(row_to_conversation).transpose()
    }

    async fn list_conversations(
        &self,
        account: &str,
        status: Option<Status>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Conversation>, u64)> {
        macro_rules! listing {
            ($filter:literal) => {
                (
                    concat!(
                        "SELECT ",
                        columns!(),
                        " FROM conversation WHERE account_id = ? AND deleted_at IS NULL ",
                        $filter,
                        " ORDER BY created_at DESC, conversation_id DESC LIMIT ? OFFSET ?"
                    ),
                    concat!(
                        "SELECT COUNT(*) FROM conversation WHERE account_id = ? AND deleted_at IS NULL ",
                        $filter
                    ),
                )
            };
        }
        let (page_sql, count_sql) = if status.is_some() {
            listing!("AND status = ?")
        } else {
            listing!("")
        };
        // One read transaction, so the page and the total come from the same snapshot.
        let mut tx = self.readers.begin().await.map_err(map_err)?;
        let mut page = sqlx::query(page_sql).bind(account);
        let mut count = sqlx::query_scalar::<_, i64>(count_sql).bind(account);
        if let Some(s) = status {
            page = page.bind(s.as_str());
            count = count.bind(s.as_str());
        }
        let rows = page
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let total = count.fetch_one(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let list = rows
            .iter()
            .map(row_to_conversation)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((list, u64::try_from(total).unwrap_or(0)))
    }

    async fn list_conversation_ids(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationRef>> {
        let query = match after {
            Some(after) => sqlx::query("SELECT conversation_id, account_id FROM conversation WHERE conversation_id > ? ORDER BY conversation_id LIMIT ?").bind(after.as_str()),
            None => sqlx::query("SELECT conversation_id, account_id FROM conversation ORDER BY conversation_id LIMIT ?"),
        };
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(ConversationRef {
                    id: ConversationId::parse(&r.get::<String, _>(0)).map_err(backend)?,
                    account: r.get(1),
                })
            })
            .collect()
    }

    async fn list_events(&self, id: &ConversationId) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT event_type, message_type, occurred_at, properties FROM event \
             WHERE conversation_id = ? ORDER BY event_id",
        )
        .bind(id.as_str())
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let props: String = r.get(3);
                Ok(StoredEvent {
                    event_type: r.get(0),
                    message_type: r.get(1),
                    timestamp: Timestamp::from_micros(r.get(2)),
                    properties: serde_json::from_str(&props).map_err(backend)?,
                })
            })
            .collect()
    }

    async fn record_join(&self, id: &ConversationId, event: &Event) -> StoreResult<bool> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE conversation SET joined_at = ?, updated_at = ? \
             WHERE conversation_id = ? AND status = 'active' AND joined_at IS NULL",
        )
        .bind(event.timestamp.as_micros())
        .bind(event.timestamp.as_micros())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let Some(to) = target(&mut tx, id).await.map_err(map_err)? else {
            return Ok(false);
        };
        insert_event(&mut tx, id, &to, event).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn end_conversation(
        &self,
        account: Option<&str>,
        id: &ConversationId,
        reason: &str,
        now: Timestamp,
        lease_until: Option<Timestamp>,
    ) -> StoreResult<EndOutcome> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let row = match account {
            Some(account) => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM conversation \
                 WHERE conversation_id = ? AND account_id = ? AND deleted_at IS NULL"
            ))
            .bind(id.as_str())
            .bind(account),
            None => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM conversation WHERE conversation_id = ?"
            ))
            .bind(id.as_str()),
        }
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(EndOutcome::NotFound);
        };
        let mut conversation = row_to_conversation(&row)?;
        if conversation.status == Status::Ended {
            return Ok(EndOutcome::AlreadyEnded(conversation));
        }
        sqlx::query(
            "UPDATE conversation SET status = 'ended', ended_at = ?, updated_at = ?, shutdown_reason = ? \
             WHERE conversation_id = ?",
        )
        .bind(now.as_micros())
        .bind(now.as_micros())
        .bind(reason)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let shutdown = Event::shutdown(now, &conversation.replica_id, reason);
        insert_event(&mut tx, id, &Target::of(&conversation), &shutdown)
            .await
            .map_err(map_err)?;
        // A replica that has not joined yet never will, and the call's timers have nothing left to end.
        sqlx::query(&format!(
            "DELETE FROM job WHERE conversation_id = ? AND kind IN ({})",
            JobKind::sql_list(&JobKind::LIVE_CALL)
        ))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let finalize = insert_claimed_job(&mut tx, JobKind::Finalize, id, now, lease_until)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        conversation.status = Status::Ended;
        conversation.ended_at = Some(now);
        conversation.updated_at = now;
        conversation.shutdown_reason = Some(reason.to_owned());
        Ok(EndOutcome::Ended {
            conversation,
            finalize,
        })
    }

    async fn store_call_results(
        &self,
        id: &ConversationId,
        events: &[Event],
        asset: Option<&Asset>,
    ) -> StoreResult<bool> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let Some(to) = target(&mut tx, id).await.map_err(map_err)? else {
            return Ok(false);
        };
        // A retried finalize must not store its events twice.
        let done_before: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM event WHERE conversation_id = ? AND event_type = 'application.transcription_ready')",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if !done_before {
            for event in events {
                insert_event(&mut tx, id, &to, event).await.map_err(map_err)?;
            }
        }
        if let Some(a) = asset {
            sqlx::query(
                "INSERT OR REPLACE INTO asset (conversation_id, name, blob_key, content_type, size, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(id.as_str())
            .bind(&a.name)
            .bind(&a.blob_key)
            .bind(&a.content_type)
            .bind(i64::try_from(a.size).unwrap_or(i64::MAX))
            .bind(a.created_at.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn get_asset(&self, account: &str, id: &ConversationId, name: &str) -> StoreResult<Option<Asset>> {
        let row = sqlx::query(
            "SELECT a.name, a.blob_key, a.content_type, a.size, a.created_at FROM asset a \
             JOIN conversation c ON c.conversation_id = a.conversation_id \
             WHERE a.conversation_id = ? AND a.name = ? AND c.account_id = ? AND c.deleted_at IS NULL",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(account)
        .fetch_optional(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(row.map(|r| Asset {
            name: r.get(0),
            blob_key: r.get(1),
            content_type: r.get(2),
            size: u64::try_from(r.get::<i64, _>(3)).unwrap_or(0),
            created_at: Timestamp::from_micros(r.get(4)),
        }))
    }

    async fn soft_delete(
        &self,
        account: &str,
        id: &ConversationId,
        now: Timestamp,
        purge_at: Timestamp,
    ) -> StoreResult<SoftDeleteOutcome> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let row = sqlx::query(
            "SELECT status, deleted_at FROM conversation WHERE conversation_id = ? AND account_id = ?",
        )
        .bind(id.as_str())
        .bind(account)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(SoftDeleteOutcome::NotFound);
        };
        if row.get::<Option<i64>, _>(1).is_some() {
            return Ok(SoftDeleteOutcome::AlreadyDeleted);
        }
        if row.get::<String, _>(0) == Status::Active.as_str() {
            return Ok(SoftDeleteOutcome::StillActive);
        }
        sqlx::query("UPDATE conversation SET deleted_at = ?, updated_at = ? WHERE conversation_id = ?")
            .bind(now.as_micros())
            .bind(now.as_micros())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_job(&mut tx, JobKind::RetentionPurge, id, purge_at, Some(now), now)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(SoftDeleteOutcome::Deleted)
    }

    async fn restore(&self, id: &ConversationId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE conversation SET deleted_at = NULL, updated_at = ? WHERE conversation_id = ? AND deleted_at IS NOT NULL",
        )
        .bind(now.as_micros())
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM job WHERE conversation_id = ? AND kind = ?")
            .bind(id.as_str())
            .bind(JobKind::RetentionPurge.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(true)
    }

    async fn hard_delete(
        &self,
        scope: DeleteScope<'_>,
        id: &ConversationId,
        now: Timestamp,
        lease_until: Option<Timestamp>,
    ) -> StoreResult<HardDeleteOutcome> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM conversation WHERE conversation_id = ?"
        ))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(HardDeleteOutcome::NotFound);
        };
        let conversation = row_to_conversation(&row)?;
        let owner = conversation.account.clone();
        let deleted_at = conversation.deleted_at.map(Timestamp::as_micros);
        let reason = match scope {
            DeleteScope::Account(account) if account == owner => "hard_delete",
            DeleteScope::KeyLost => "key_lost",
            DeleteScope::RetentionExpired { deleted_at: at } if deleted_at == Some(at.as_micros()) => {
                "retention_expired"
            }
            _ => return Ok(HardDeleteOutcome::NotFound),
        };
        if conversation.status == Status::Active {
            // Ended first: the shutdown is written with its delivery, which outlives the erasure
            // below (it carries no content), so the receiver learns the call is over.
            let shutdown = Event::shutdown(now, &conversation.replica_id, ShutdownReason::Deleted.as_str());
            insert_event(&mut tx, id, &Target::of(&conversation), &shutdown)
                .await
                .map_err(map_err)?;
        }
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event WHERE conversation_id = ?")
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let (assets, asset_bytes): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM asset WHERE conversation_id = ?")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let drop_jobs = format!(
            "DELETE FROM job WHERE conversation_id = ? AND kind NOT IN ({})",
            JobKind::sql_list(&JobKind::OUTLIVES_HARD_DELETE)
        );
        for sql in [
            "DELETE FROM event WHERE conversation_id = ?",
            "DELETE FROM asset WHERE conversation_id = ?",
            "DELETE FROM participant WHERE conversation_id = ?",
            // Unsent deliveries without content (joined, shutdown) are still sent; the rest go.
            "DELETE FROM delivery WHERE conversation_id = ? AND (status != 'pending' OR carries_content = 1)",
            // See `JobKind::OUTLIVES_HARD_DELETE`.
            drop_jobs.as_str(),
            "DELETE FROM conversation WHERE conversation_id = ?",
        ] {
            sqlx::query(sql)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let receipt = ErasureReceipt {
            conversation_id: id.clone(),
            account: owner,
            erased_at: now,
            reason: reason.to_owned(),
            events: u64::try_from(events).unwrap_or(0),
            assets: u64::try_from(assets).unwrap_or(0),
            asset_bytes: u64::try_from(asset_bytes).unwrap_or(0),
            key_id: None,
            key_destroyed_at: None,
        };
        sqlx::query(
            "INSERT INTO erasure_receipt (conversation_id, account_id, erased_at, reason, events, assets, asset_bytes) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (conversation_id) DO UPDATE SET erased_at = excluded.erased_at",
        )
        .bind(id.as_str())
        .bind(&receipt.account)
        .bind(now.as_micros())
        .bind(reason)
        .bind(events)
        .bind(assets)
        .bind(asset_bytes)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let purge = insert_claimed_job(&mut tx, JobKind::Purge, id, now, lease_until)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(HardDeleteOutcome::Deleted { receipt, purge })
    }

    async fn participant_join(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let row =
            sqlx::query("SELECT status FROM conversation WHERE conversation_id = ? AND deleted_at IS NULL")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(ParticipantOutcome::NotFound);
        };
        if row.get::<String, _>(0) != Status::Active.as_str() {
            return Ok(ParticipantOutcome::Ended);
        }
        sqlx::query("INSERT INTO participant (participant_id, conversation_id, joined_at) VALUES (?, ?, ?)")
            .bind(participant_id)
            .bind(id.as_str())
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let present: i64 = sqlx::query_scalar(
            "UPDATE conversation SET participants_present = participants_present + 1, \
             participant_joined_at = COALESCE(participant_joined_at, ?1), updated_at = ?1 \
             WHERE conversation_id = ?2 RETURNING participants_present",
        )
        .bind(now.as_micros())
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(ParticipantOutcome::Done {
            present: u32::try_from(present).unwrap_or(0),
        })
    }

    async fn participant_leave(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let row = sqlx::query(
            "SELECT status, participant_left_timeout FROM conversation WHERE conversation_id = ? AND deleted_at IS NULL",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(ParticipantOutcome::NotFound);
        };
        if row.get::<String, _>(0) != Status::Active.as_str() {
            return Ok(ParticipantOutcome::Ended);
        }
        let left_timeout: i64 = row.get(1);
        let left = sqlx::query(
            "UPDATE participant SET left_at = ? WHERE participant_id = ? AND conversation_id = ? AND left_at IS NULL",
        )
        .bind(now.as_micros())
        .bind(participant_id)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if left.rows_affected() == 0 {
            // Unknown or already gone: leaving twice changes nothing.
            let present: i64 =
                sqlx::query_scalar("SELECT participants_present FROM conversation WHERE conversation_id = ?")
                    .bind(id.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
            return Ok(ParticipantOutcome::Done {
                present: u32::try_from(present).unwrap_or(0),
            });
        }
        let present: i64 = sqlx::query_scalar(
            "UPDATE conversation SET participants_present = MAX(participants_present - 1, 0), updated_at = ?1, \
             participant_left_at = CASE WHEN participants_present <= 1 THEN ?1 ELSE participant_left_at END \
             WHERE conversation_id = ?2 RETURNING participants_present",
        )
        .bind(now.as_micros())
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if present == 0 {
            // The timer only ends the call if the room is still empty since this very moment.
            let fire_at = now.plus_secs(left_timeout);
            insert_job(&mut tx, JobKind::LeftTimer, id, fire_at, Some(now), now)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(ParticipantOutcome::Done {
            present: u32::try_from(present).unwrap_or(0),
        })
    }

    async fn set_webhook_secret(&self, account: &str, secret: Option<&str>) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE account SET webhook_secret = ? WHERE account_id = ?")
            .bind(secret)
            .bind(account)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        // Only the oldest pending delivery of each conversation is eligible: order per conversation.
        let rows = sqlx::query(
            "UPDATE delivery SET locked_until = ?1, attempts = attempts + 1 WHERE delivery_seq IN ( \
               SELECT d.delivery_seq FROM delivery d \
               WHERE d.status = 'pending' AND d.next_attempt_at <= ?2 \
                 AND (d.locked_until IS NULL OR d.locked_until <= ?2) \
                 AND NOT EXISTS (SELECT 1 FROM delivery e WHERE e.conversation_id = d.conversation_id \
                                 AND e.status = 'pending' AND e.delivery_seq < d.delivery_seq) \
                 AND NOT EXISTS (SELECT 1 FROM delivery e WHERE e.conversation_id = d.conversation_id \
                                 AND e.locked_until > ?2) \
               ORDER BY d.next_attempt_at, d.delivery_seq LIMIT ?3) \
             RETURNING delivery_id, conversation_id, event_type, url, payload, attempts, retry_from, \
               (SELECT webhook_secret FROM account a WHERE a.account_id = delivery.account_id)",
        )
        .bind(lease_until.as_micros())
        .bind(now.as_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| Delivery {
                id: r.get(0),
                conversation_id: r.get(1),
                event_type: r.get(2),
                url: r.get(3),
                payload: r.get(4),
                attempts: u32::try_from(r.get::<i64, _>(5)).unwrap_or(u32::MAX),
                retry_from: Timestamp::from_micros(r.get(6)),
                signing_secret: r.get(7),
            })
            .collect())
    }

    async fn delivery_succeeded(&self, delivery: &Delivery, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        sqlx::query(
            "UPDATE delivery SET status = 'delivered', finished_at = ?, locked_until = NULL, last_error = NULL \
             WHERE delivery_id = ? AND attempts = ?",
        )
        .bind(now.as_micros())
        .bind(&delivery.id)
        .bind(delivery.attempts)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        forget_orphan(&mut tx, &delivery.id).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn delivery_failed(
        &self,
        delivery: &Delivery,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let sql = if retry_at.is_some() {
            "UPDATE delivery SET next_attempt_at = ?, last_error = ?, locked_until = NULL \
             WHERE delivery_id = ? AND attempts = ?"
        } else {
            "UPDATE delivery SET finished_at = ?, last_error = ?, locked_until = NULL, status = 'failed' \
             WHERE delivery_id = ? AND attempts = ?"
        };
        sqlx::query(sql)
            .bind(retry_at.unwrap_or(now).as_micros())
            .bind(error)
            .bind(&delivery.id)
            .bind(delivery.attempts)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if retry_at.is_none() {
            forget_orphan(&mut tx, &delivery.id).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn list_deliveries(&self, filter: DeliveryFilter<'_>) -> StoreResult<Vec<DeliveryInfo>> {
        let rows = sqlx::query(
            "SELECT delivery_id, conversation_id, event_type, url, status, attempts, next_attempt_at, last_error, \
             created_at, finished_at FROM delivery \
             WHERE (?1 IS NULL OR conversation_id = ?1) AND (?2 = 0 OR status = 'failed' OR (status = 'pending' AND last_error IS NOT NULL)) \
             ORDER BY delivery_seq",
        )
        .bind(filter.conversation_id)
        .bind(filter.failed_only)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| DeliveryInfo {
                id: r.get(0),
                conversation_id: r.get(1),
                event_type: r.get(2),
                url: r.get(3),
                status: r.get(4),
                attempts: u32::try_from(r.get::<i64, _>(5)).unwrap_or(u32::MAX),
                next_attempt_at: Timestamp::from_micros(r.get(6)),
                last_error: r.get(7),
                created_at: Timestamp::from_micros(r.get(8)),
                finished_at: ts(r.get(9)),
            })
            .collect())
    }

    async fn retry_delivery(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE delivery SET status = 'pending', next_attempt_at = ?1, retry_from = ?1, finished_at = NULL, \
             locked_until = NULL WHERE delivery_id = ?2",
        )
        .bind(now.as_micros())
        .bind(id)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_key_destroyed(
        &self,
        id: &ConversationId,
        key_id: Option<&str>,
        at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE erasure_receipt SET key_id = COALESCE(key_id, ?), key_destroyed_at = COALESCE(key_destroyed_at, ?) \
             WHERE conversation_id = ?",
        )
        .bind(key_id)
        .bind(at.map(Timestamp::as_micros))
        .bind(id.as_str())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_receipts(&self, account: Option<&str>) -> StoreResult<Vec<ErasureReceipt>> {
        let rows = sqlx::query(
            "SELECT conversation_id, account_id, erased_at, reason, events, assets, asset_bytes, key_id, key_destroyed_at FROM erasure_receipt \
             WHERE ?1 IS NULL OR account_id = ?1 ORDER BY erased_at DESC",
        )
        .bind(account)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                Ok(ErasureReceipt {
                    conversation_id: ConversationId::parse(&id).map_err(backend)?,
                    account: r.get(1),
                    erased_at: Timestamp::from_micros(r.get(2)),
                    reason: r.get(3),
                    events: u64::try_from(r.get::<i64, _>(4)).unwrap_or(0),
                    assets: u64::try_from(r.get::<i64, _>(5)).unwrap_or(0),
                    asset_bytes: u64::try_from(r.get::<i64, _>(6)).unwrap_or(0),
                    key_id: r.get(7),
                    key_destroyed_at: r.get::<Option<i64>, _>(8).map(Timestamp::from_micros),
                })
            })
            .collect()
    }

    async fn claim_due_jobs(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "UPDATE job SET locked_until = ?1, attempts = attempts + 1 WHERE job_id IN ( \
               SELECT job_id FROM job WHERE run_at <= ?2 AND (locked_until IS NULL OR locked_until <= ?2) \
               ORDER BY run_at, job_id LIMIT ?3) {CLAIM_RETURNING}"
        ))
        .bind(lease_until.as_micros())
        .bind(now.as_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await
        .map_err(map_err)?;
        let mut jobs = rows.iter().map(row_to_job).collect::<StoreResult<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn release_all_leases(&self) -> StoreResult<u64> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let mut released = 0;
        for table in LEASED_TABLES {
            let sql = format!("UPDATE {table} SET locked_until = NULL WHERE locked_until IS NOT NULL");
            released += sqlx::query(&sql)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
        }
        tx.commit().await.map_err(map_err)?;
        Ok(released)
    }

    async fn complete_job(&self, job: &Job) -> StoreResult<()> {
        sqlx::query("DELETE FROM job WHERE job_id = ? AND attempts = ?")
            .bind(job.id)
            .bind(job.attempts)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn fail_job(&self, job: &Job, error: &str, retry_at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE job SET locked_until = NULL, run_at = ?, last_error = ? WHERE job_id = ? AND attempts = ?",
        )
        .bind(retry_at.as_micros())
        .bind(error)
        .bind(job.id)
        .bind(job.attempts)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn list_jobs(&self) -> StoreResult<Vec<JobInfo>> {
        let rows = sqlx::query(
            "SELECT job_id, kind, conversation_id, run_at, not_before, locked_until, attempts, last_error \
             FROM job ORDER BY job_id",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| JobInfo {
                id: r.get(0),
                kind: r.get(1),
                conversation_id: r.get(2),
                run_at: Timestamp::from_micros(r.get(3)),
                not_before: ts(r.get(4)),
                locked_until: ts(r.get(5)),
                attempts: u32::try_from(r.get::<i64, _>(6)).unwrap_or(u32::MAX),
                last_error: r.get(7),
            })
            .collect())
    }

    async fn erase_residue(&self) -> StoreResult<bool> {
        let ticket = self.checkpoint.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut completed = self.checkpoint.completed.lock().await;
        if *completed >= ticket {
            return Ok(true);
        }
        let covers = self.checkpoint.requested.load(Ordering::SeqCst);
        // TRUNCATE copies every frame into the database file (where secure_delete zeroed the
        // erased cells) and cuts the WAL to zero bytes, so no old frame keeps erased content.
        let (busy, _log, _done): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&self.writer)
            .await
            .map_err(map_err)?;
        if busy != 0 {
            return Ok(false);
        }
        *completed = covers;
        Ok(true)
    }

    async fn probe_write(&self, now: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO write_probe (write_probe_id, probed_at) VALUES (1, ?1) \
             ON CONFLICT (write_probe_id) DO UPDATE SET probed_at = ?1",
        )
        .bind(now.as_micros())
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn count_unsealed(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM conversation WHERE substr(request_json, 1, 4) <> 'pe1:'",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn unsealed_conversations(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<UnsealedConversation>> {
        // One read transaction: the rows of a page are one snapshot.
        let mut tx = self.readers.begin().await.map_err(map_err)?;
        let rows = sqlx::query(
            "SELECT conversation_id, conversation_name, conversational_context, custom_greeting, request_json \
             FROM conversation WHERE conversation_id > ?1 AND substr(request_json, 1, 4) <> 'pe1:' \
             ORDER BY conversation_id LIMIT ?2",
        )
        .bind(after.map_or("", ConversationId::as_str))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut page = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.get(0);
            page.push(UnsealedConversation {
                id: ConversationId::parse(&id).map_err(backend)?,
                fields: ContentFields {
                    conversation_name: r.get(1),
                    conversational_context: r.get(2),
                    custom_greeting: r.get(3),
                    request_json: r.get(4),
                },
                events: Vec::new(),
                deliveries: Vec::new(),
                assets: Vec::new(),
            });
        }
        if page.is_empty() {
            return Ok(page);
        }
        // The page's ids as one JSON array: `IN (SELECT value FROM json_each(?))` takes any
        // number of them as a single parameter.
        let ids = serde_json::to_string(&page.iter().map(|c| c.id.as_str()).collect::<Vec<_>>())
            .map_err(backend)?;
        let index: std::collections::HashMap<String, usize> = page
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str().to_owned(), i))
            .collect();
        let events = sqlx::query(
            "SELECT conversation_id, event_id, event_type, properties FROM event \
             WHERE conversation_id IN (SELECT value FROM json_each(?)) ORDER BY event_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for r in &events {
            page[index[r.get::<&str, _>(0)]].events.push(RawEvent {
                event_id: r.get(1),
                event_type: r.get(2),
                properties: r.get(3),
            });
        }
        let deliveries = sqlx::query(
            "SELECT conversation_id, delivery_id, event_type, carries_content, payload FROM delivery \
             WHERE conversation_id IN (SELECT value FROM json_each(?)) ORDER BY delivery_seq",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for r in &deliveries {
            page[index[r.get::<&str, _>(0)]].deliveries.push(RawDelivery {
                delivery_id: r.get(1),
                event_type: r.get(2),
                carries_content: r.get(3),
                payload: r.get(4),
            });
        }
        let assets = sqlx::query(
            "SELECT conversation_id, name, blob_key, content_type, size, created_at FROM asset \
             WHERE conversation_id IN (SELECT value FROM json_each(?)) ORDER BY conversation_id, name",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        for r in &assets {
            page[index[r.get::<&str, _>(0)]].assets.push(Asset {
                name: r.get(1),
                blob_key: r.get(2),
                content_type: r.get(3),
                size: u64::try_from(r.get::<i64, _>(4)).unwrap_or(0),
                created_at: Timestamp::from_micros(r.get(5)),
            });
        }
        tx.commit().await.map_err(map_err)?;
        Ok(page)
    }

    async fn reseal_conversations(&self, resealed: &[Resealed]) -> StoreResult<u64> {
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        let mut applied = 0;
        for r in resealed {
            let done = sqlx::query(
                "UPDATE conversation SET conversation_name = ?1, conversational_context = ?2, \
                 custom_greeting = ?3, request_json = ?4 \
                 WHERE conversation_id = ?5 AND substr(request_json, 1, 4) <> 'pe1:'",
            )
            .bind(&r.fields.conversation_name)
            .bind(&r.fields.conversational_context)
            .bind(&r.fields.custom_greeting)
            .bind(&r.fields.request_json)
            .bind(r.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if done.rows_affected() == 0 {
                continue;
            }
            for (event_id, properties) in &r.events {
                let done =
                    sqlx::query("UPDATE event SET properties = ? WHERE event_id = ? AND conversation_id = ?")
                        .bind(properties)
                        .bind(event_id)
                        .bind(r.id.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                if done.rows_affected() != 1 {
                    return Err(not_its_row("event", &event_id.to_string(), &r.id));
                }
            }
            for (delivery_id, payload) in &r.deliveries {
                let done = sqlx::query(
                    "UPDATE delivery SET payload = ? WHERE delivery_id = ? AND conversation_id = ?",
                )
                .bind(payload)
                .bind(delivery_id)
                .bind(r.id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                if done.rows_affected() != 1 {
                    return Err(not_its_row("delivery", delivery_id, &r.id));
                }
            }
            applied += 1;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(applied)
    }

    async fn compact(&self) -> StoreResult<()> {
        // VACUUM writes the whole database anew, without free pages or the unallocated space of
        // pages, where rewritten rows leave their old bytes; it goes through the WAL, which the
        // checkpoint then empties.
        sqlx::raw_sql("VACUUM")
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        for _ in 0..50 {
            if self.erase_residue().await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(StoreError::Unavailable(
            "the WAL could not be emptied after VACUUM: a reader held it for 5 s".into(),
        ))
    }

    async fn count_rows(&self, table: Table) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name()))
            .fetch_one(&self.readers)
            .await
            .map_err(map_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn export_rows(
        &self,
        table: Table,
        after: Option<&CopyRow>,
        limit: u32,
    ) -> StoreResult<Vec<CopyRow>> {
        // Names come from `Table`, never from input.
        let key = table.key().join(", ");
        let from = match after {
            Some(_) => format!("WHERE ({key}) > ({})", vec!["?"; table.key().len()].join(", ")),
            None => String::new(),
        };
        let sql = format!(
            "SELECT {} FROM {} {from} ORDER BY {key} LIMIT ?",
            table.column_list(),
            table.name(),
        );
        let mut q = sqlx::query(&sql);
        for (_, kind, value) in after.map(|row| table.key_of(row)).unwrap_or_default() {
            q = bind_value(q, value, kind);
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                table
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(i, (_, kind))| {
                        match kind {
                            Kind::Text => r
                                .try_get::<Option<String>, _>(i)
                                .map(|v| v.map_or(Value::Null, Value::Text)),
                            Kind::Int => r
                                .try_get::<Option<i64>, _>(i)
                                .map(|v| v.map_or(Value::Null, Value::Int)),
                            Kind::Bool => r
                                .try_get::<Option<bool>, _>(i)
                                .map(|v| v.map_or(Value::Null, Value::Bool)),
                        }
                        .map_err(backend)
                    })
                    .collect()
            })
            .collect()
    }

    async fn import_rows(&self, table: Table, rows: &[CopyRow]) -> StoreResult<()> {
        let placeholders = vec!["?"; table.columns().len()].join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders}) ON CONFLICT DO NOTHING",
            table.name(),
            table.column_list()
        );
        let mut tx = self.writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
        for row in rows {
            let mut q = sqlx::query(&sql);
            for (value, (_, kind)) in row.iter().zip(table.columns()) {
                q = bind_value(q, value, *kind);
            }
            q.execute(&mut *tx).await.map_err(map_err)?;
        }
        // AUTOINCREMENT counters follow explicit ids by themselves.
        tx.commit().await.map_err(map_err)
    }

    async fn create_resource(&self, resource: &Resource) -> StoreResult<()> {
        resource::create(&self.writer, resource).await
    }

    async fn get_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> StoreResult<Option<Resource>> {
        resource::get(&self.readers, account, kind, id).await
    }

    async fn load_resource(&self, row_id: &str) -> StoreResult<Option<Resource>> {
        resource::load(&self.readers, row_id).await
    }

    async fn list_resources(
        &self,
        account: &str,
        kind: ResourceKind,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Resource>, u64)> {
        resource::list(&self.readers, account, kind, limit, offset).await
    }

    async fn update_resource(&self, resource: &Resource) -> StoreResult<bool> {
        resource::update(&self.writer, resource).await
    }

    async fn soft_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        resource::soft_delete(&self.writer, account, kind, id, now).await
    }

    async fn hard_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        resource::hard_delete(&self.writer, account, kind, id, now).await
    }

    async fn claim_resource_work(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Resource>> {
        resource::claim_work(&self.writer, now, lease_until, limit).await
    }

    async fn pending_resource_purges(&self, limit: u32) -> StoreResult<Vec<String>> {
        resource::pending_purges(&self.readers, limit).await
    }

    async fn finish_resource_purge(&self, row_id: &str) -> StoreResult<()> {
        resource::finish_purge(&self.writer, row_id).await
    }

    async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(n: u8, context_bytes: usize) -> Conversation {
        let now = Timestamp::now();
        Conversation {
            id: ConversationId::from_random([n; 8]),
            account: "a".into(),
            status: Status::Ended,
            conversation_name: None,
            callback_url: None,
            replica_id: "rfe12d8b9597".into(),
            persona_id: "pdced222244b".into(),
            conversational_context: Some("x".repeat(context_bytes)),
            custom_greeting: None,
            test_mode: true,
            enable_recording: false,
            meeting_token: None,
            request_json: "{}".into(),
            created_at: now,
            updated_at: now,
            joined_at: None,
            ended_at: Some(now),
            shutdown_reason: None,
            deleted_at: None,
            max_call_duration: 3600,
            participant_left_timeout: 0,
            participant_absent_timeout: 300,
            participants_present: 0,
            participant_joined_at: None,
            participant_left_at: None,
        }
    }

    async fn open(dir: &tempfile::TempDir) -> SqliteStore {
        let store = SqliteStore::open(&dir.path().join("parley.db")).await.unwrap();
        store.ensure_account("a", Timestamp::now()).await.unwrap();
        store
    }

    /// Caps the database file at `pages`: SQLite then answers SQLITE_FULL exactly as on a full disk.
    async fn cap_pages(store: &SqliteStore, pages: i64) {
        sqlx::query(&format!("PRAGMA max_page_count = {pages}"))
            .execute(&store.writer)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_full_database_is_storage_unavailable_and_writes_resume_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let before = conversation(1, 10);
        store.create_conversation(&before, 10, &[]).await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        cap_pages(&store, pages).await;

        let refused = conversation(2, 100_000);
        let full = store.create_conversation(&refused, 10, &[]).await.unwrap_err();
        assert!(full.is_disk_full(), "{full:?}");
        assert_eq!(full.to_string(), "storage unavailable: the disk is full");

        // Space comes back. (SQLite rolled the failed transaction back itself; before the fix the
        // writer kept believing it was inside it and refused every later BEGIN.)
        cap_pages(&store, i64::from(u32::MAX)).await;
        let after = conversation(3, 100_000);
        store.create_conversation(&after, 10, &[]).await.unwrap();
        store.probe_write(Timestamp::now()).await.unwrap();
        store.probe_write(Timestamp::now()).await.unwrap();

        for (c, kept) in [(&before, true), (&refused, false), (&after, true)] {
            assert_eq!(
                store.load_conversation(&c.id).await.unwrap().is_some(),
                kept,
                "{}",
                c.id
            );
        }
        let probes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM write_probe")
            .fetch_one(&store.readers)
            .await
            .unwrap();
        assert_eq!(probes, 1, "the probe rewrites one row");
    }

    #[tokio::test]
    async fn finding_unsealed_conversations_reads_only_the_partial_index_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        for sql in [
            "SELECT COUNT(*) FROM conversation WHERE substr(request_json, 1, 4) <> 'pe1:'",
            "SELECT conversation_id, request_json FROM conversation \
             WHERE conversation_id > '' AND substr(request_json, 1, 4) <> 'pe1:' \
             ORDER BY conversation_id LIMIT 10",
        ] {
            let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&store.readers)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(3))
                .collect();
            // A scan of the partial index is a scan of the unsealed conversations alone.
            assert!(
                plan.iter().all(|d| d.contains("INDEX conversation_unsealed")),
                "{sql}: {plan:?}"
            );
        }
        // The store's own queries spell the index's expression exactly.
        let source = include_str!("lib.rs");
        assert!(source.matches("substr(request_json, 1, 4) <> 'pe1:'").count() >= 4);
        assert_eq!(parley_store::SEALED_PREFIX, "pe1:");
    }

    #[tokio::test]
    async fn a_transaction_given_up_on_purpose_keeps_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        // A per-connection setting marks the writer: a replaced connection would not have it.
        cap_pages(&store, 987_654).await;

        let unknown = ConversationId::from_random([9; 8]);
        let outcome = store
            .end_conversation(None, &unknown, "test", Timestamp::now(), None)
            .await
            .unwrap();
        assert!(matches!(outcome, EndOutcome::NotFound));

        let mark: i64 = sqlx::query_scalar("PRAGMA max_page_count")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        assert_eq!(
            mark, 987_654,
            "the writer was kept: its dropped transaction rolled back cleanly"
        );
    }
}
