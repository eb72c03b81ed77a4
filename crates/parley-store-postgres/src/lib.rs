//! `ConversationStore` on PostgreSQL: one database shared by any number of parley processes.
//!
//! The rules are the SQLite store's, method by method. What differs is how they hold when several
//! processes write at once: a transaction that reads a conversation and then writes it first locks
//! the row (`FOR UPDATE`), the concurrency cap locks the account row, and jobs and deliveries are
//! claimed with `FOR UPDATE SKIP LOCKED` under a lease, so each runs once and a dead process's
//! lease simply expires.

mod resource;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
use sqlx::migrate::MigrateError;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections per process; several processes share the server's `max_connections`.
const MAX_CONNECTIONS: u32 = 16;

/// How long a request waits for a connection before it fails as `Unavailable`, rather than hang
/// while the database is down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock that serialises delivery claims across processes (see `claim_deliveries`).
/// Any constant works as long as nothing else in the database uses it: "parley" and 1.
const DELIVERY_CLAIM_LOCK: i64 = 0x7061_726c_6579_0001;

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

/// The shared store.
pub struct PostgresStore {
    pool: PgPool,
    vacuum: Arc<Vacuumer>,
}

/// Runs `VACUUM` in the background, coalesced: at most one running and one more queued.
///
/// A purge only asks for it: on PostgreSQL a VACUUM does not zero the erased bytes anyway (see
/// `erase_residue`), and on large tables it can take long enough that a hard delete must not
/// wait for it. If the process dies first, autovacuum does the same work later.
#[derive(Default)]
struct Vacuumer {
    /// A purge happened since the last VACUUM started.
    dirty: AtomicBool,
    /// A background VACUUM task is alive.
    running: AtomicBool,
}

impl Vacuumer {
    /// Makes sure a VACUUM starts after this call.
    fn request(self: &Arc<Self>, pool: &PgPool) {
        self.dirty.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (me, pool) = (Arc::clone(self), pool.clone());
        tokio::spawn(async move {
            loop {
                while me.dirty.swap(false, Ordering::SeqCst) {
                    vacuum(&pool).await;
                }
                me.running.store(false, Ordering::SeqCst);
                // A request that came between the last check and `running = false` saw a live
                // task and left it to us: take it, unless another task already has.
                if !me.dirty.load(Ordering::SeqCst) || me.running.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        });
    }
}

/// What VACUUM does: the erased rows' dead tuples (and their TOAST and index entries) are removed
/// and their space becomes reusable by later writes. What it does not: the bytes are not zeroed,
/// so they stay in the data files until that space is reused; a tuple an open snapshot (a long
/// transaction, a standby's feedback) can still see is kept until a later VACUUM; and the WAL
/// keeps the rows' old images until its segments are recycled after a checkpoint (longer in
/// archives and on replicas). That is weaker than SQLite's secure_delete, and it is the most
/// PostgreSQL offers without blocking every request (VACUUM FULL takes an exclusive lock).
async fn vacuum(pool: &PgPool) {
    let started = std::time::Instant::now();
    // VACUUM cannot run inside a transaction, hence raw_sql: one statement over the simple
    // protocol, never wrapped in one.
    match sqlx::raw_sql("VACUUM conversation, event, asset, participant, delivery")
        .execute(pool)
        .await
    {
        Ok(_) => tracing::debug!(
            duration_ms = started.elapsed().as_millis() as u64,
            "vacuumed the tables of erased rows"
        ),
        Err(e) => tracing::warn!(error = %e, "vacuum after a purge failed; autovacuum will cover it"),
    }
}

impl PostgresStore {
    /// Ends a claimed delivery for good: delivered or given up, and forgotten if its conversation
    /// was hard-deleted (nothing of an erased conversation is kept once sent or abandoned).
    async fn finish_delivery(
        &self,
        delivery: &Delivery,
        finish: Finish<'_>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(conversation_id) = sqlx::query_scalar::<_, String>(
            "SELECT conversation_id FROM delivery WHERE delivery_id = $1 AND attempts = $2",
        )
        .bind(&delivery.id)
        .bind(i64::from(delivery.attempts))
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        else {
            // Erased by a hard delete, or claimed again after our lease expired: not ours to record.
            return Ok(());
        };
        // Holds off a concurrent hard delete until we commit (or sees that it committed), so
        // either it finds this row finished and erases it, or we find the conversation gone and
        // erase it ourselves; without the lock both could keep it. The conversation is locked
        // before the delivery row, in the same order as every other writer, so no deadlock.
        let alive: bool = sqlx::query("SELECT 1 FROM conversation WHERE conversation_id = $1 FOR KEY SHARE")
            .bind(&conversation_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .is_some();
        // The writes check the claim again: the SELECT above locked nothing, so a claimer may have
        // taken the delivery since (our lease expired), and then it is no longer ours to finish.
        if !alive {
            sqlx::query("DELETE FROM delivery WHERE delivery_id = $1 AND attempts = $2")
                .bind(&delivery.id)
                .bind(i64::from(delivery.attempts))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        } else {
            let (status, error) = match finish {
                Finish::Delivered => ("delivered", None),
                Finish::GivenUp(error) => ("failed", Some(error)),
            };
            sqlx::query(
                "UPDATE delivery SET status = $1, finished_at = $2, locked_until = NULL, last_error = $3 \
                 WHERE delivery_id = $4 AND attempts = $5",
            )
            .bind(status)
            .bind(now.as_micros())
            .bind(error)
            .bind(&delivery.id)
            .bind(i64::from(delivery.attempts))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// Connects to the database at `url` (`postgres://…`) and brings its schema up to date.
    ///
    /// Processes starting together are safe: sqlx holds an advisory lock while it migrates.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url).map_err(map_err)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            MigrateError::Execute(e) => map_err(e),
            e => backend(e),
        })?;
        Ok(Self {
            pool,
            vacuum: Arc::default(),
        })
    }
}

/// SQLSTATEs that mean the server cannot serve us now, though it may shortly: connection
/// exceptions (class 08), shutdown (57P01 admin, 57P02 crash), still starting (57P03), and no
/// connection slot free (53300).
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// SQLSTATE `disk_full` (53100): the server could not extend a file. Not merely unavailable:
/// it lasts until someone frees space, and `/health` reports it as such.
fn is_disk_full_code(code: &str) -> bool {
    code == "53100"
}

fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| is_disk_full_code(&c)) => {
            StoreError::disk_full()
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unavailable_code(&c)) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => StoreError::Unavailable(e.to_string()),
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

/// A `u32` field, stored as BIGINT because PostgreSQL has no unsigned integers.
fn uint(row: &PgRow, column: &str) -> StoreResult<u32> {
    let raw: i64 = row.try_get(column).map_err(map_err)?;
    u32::try_from(raw).map_err(|_| StoreError::Backend(format!("{column} out of range: {raw}").into()))
}

fn opt_uint(row: &PgRow, column: &str) -> StoreResult<Option<u32>> {
    let raw: Option<i64> = row.try_get(column).map_err(map_err)?;
    raw.map(|raw| {
        u32::try_from(raw).map_err(|_| StoreError::Backend(format!("{column} out of range: {raw}").into()))
    })
    .transpose()
}

/// A count or size read back; never negative in practice, and clamped like the SQLite store.
fn count(raw: i64) -> u64 {
    u64::try_from(raw).unwrap_or(0)
}

fn attempts(raw: i64) -> u32 {
    u32::try_from(raw).unwrap_or(u32::MAX)
}

fn row_to_conversation(row: &PgRow) -> StoreResult<Conversation> {
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
        max_call_duration: uint(row, "max_call_duration")?,
        participant_left_timeout: uint(row, "participant_left_timeout")?,
        participant_absent_timeout: uint(row, "participant_absent_timeout")?,
        participants_present: uint(row, "participants_present")?,
        participant_joined_at: ts(row.get("participant_joined_at")),
        participant_left_at: ts(row.get("participant_left_at")),
    })
}

fn row_to_job(row: &PgRow) -> StoreResult<Job> {
    let kind: String = row.get("kind");
    let id: String = row.get("conversation_id");
    Ok(Job {
        id: row.get("job_id"),
        kind: JobKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown job kind {kind:?}").into()))?,
        conversation_id: ConversationId::parse(&id).map_err(backend)?,
        not_before: ts(row.get("not_before")),
        attempts: attempts(row.get("attempts")),
    })
}

fn row_to_account(row: &PgRow) -> StoreResult<Account> {
    Ok(Account {
        name: row.get("account_id"),
        max_concurrent: opt_uint(row, "max_concurrent")?,
        retention_days: opt_uint(row, "retention_days")?,
    })
}

/// Locks a conversation's row for the rest of the transaction and returns it.
///
/// Every transaction that reads a conversation and then writes it starts here, so two processes
/// acting on one conversation take turns: the second sees what the first committed (or that the
/// row is gone). It also keeps a conversation's delivery rows in commit order, because their
/// `delivery_seq` is drawn only while the row is held.
async fn lock_conversation(tx: &mut PgConnection, id: &ConversationId) -> StoreResult<Option<Conversation>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        columns!(),
        " FROM conversation WHERE conversation_id = $1 FOR UPDATE"
    ))
    .bind(id.as_str())
    .fetch_optional(tx)
    .await
    .map_err(map_err)?;
    row.as_ref().map(row_to_conversation).transpose()
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

/// Stores an event and, when the conversation has a callback URL, its delivery: one transaction.
///
/// The caller holds the conversation's row lock (see `lock_conversation`).
async fn insert_event(
    tx: &mut PgConnection,
    id: &ConversationId,
    target: &Target,
    event: &Event,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO event (conversation_id, event_type, message_type, occurred_at, properties) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.as_str())
    .bind(event.event_type.as_str())
    .bind(event.event_type.message_type())
    .bind(event.timestamp.as_micros())
    .bind(event.properties.to_string())
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some(delivery) = event.delivery(id, target.callback_url.as_deref(), target.test_mode) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO delivery (delivery_id, conversation_id, account_id, event_type, carries_content, url, \
         payload, next_attempt_at, retry_from, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8)",
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
    .await
    .map_err(map_err)?;
    Ok(())
}

/// A job row that runs now, created already claimed when `lease_until` is set.
async fn insert_claimed_job(
    tx: &mut PgConnection,
    kind: JobKind,
    id: &ConversationId,
    now: Timestamp,
    lease_until: Option<Timestamp>,
) -> StoreResult<Job> {
    let attempts = u32::from(lease_until.is_some());
    let job_id: i64 = sqlx::query_scalar(
        "INSERT INTO job (kind, conversation_id, run_at, locked_until, attempts, created_at) \
         VALUES ($1, $2, $3, $4, $5, $3) RETURNING job_id",
    )
    .bind(kind.as_str())
    .bind(id.as_str())
    .bind(now.as_micros())
    .bind(lease_until.map(Timestamp::as_micros))
    .bind(i64::from(attempts))
    .fetch_one(tx)
    .await
    .map_err(map_err)?;
    Ok(Job {
        id: job_id,
        kind,
        conversation_id: id.clone(),
        not_before: None,
        attempts,
    })
}

/// A job row for later.
async fn insert_job(
    tx: &mut PgConnection,
    kind: JobKind,
    id: &ConversationId,
    run_at: Timestamp,
    not_before: Option<Timestamp>,
    now: Timestamp,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO job (kind, conversation_id, not_before, run_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(kind.as_str())
    .bind(id.as_str())
    .bind(not_before.map(Timestamp::as_micros))
    .bind(run_at.as_micros())
    .bind(now.as_micros())
    .execute(tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// How a delivery ended.
enum Finish<'a> {
    Delivered,
    GivenUp(&'a str),
}

/// Binds a copied value with its column's type, so a NULL is typed too.
fn bind_value<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    value: &'q Value,
    kind: Kind,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    match (value, kind) {
        (Value::Text(t), _) => q.bind(t.as_str()),
        (Value::Int(n), _) => q.bind(*n),
        (Value::Bool(b), _) => q.bind(*b),
        (Value::Null, Kind::Text) => q.bind(None::<String>),
        (Value::Null, Kind::Bool) => q.bind(None::<bool>),
        (Value::Null, Kind::Int) => q.bind(None::<i64>),
    }
}

#[async_trait]
impl ConversationStore for PostgresStore {
    async fn has_accounts(&self) -> StoreResult<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM account)")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)
    }

    async fn ensure_account(&self, name: &str, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO account (account_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(now.as_micros())
        .execute(&self.pool)
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
            sqlx::query("UPDATE account SET max_concurrent = $1, retention_days = $2 WHERE account_id = $3")
                .bind(max_concurrent.map(i64::from))
                .bind(retention_days.map(i64::from))
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        let rows =
            sqlx::query("SELECT account_id, max_concurrent, retention_days FROM account ORDER BY created_at")
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
        rows.iter().map(row_to_account).collect()
    }

    async fn insert_key(
        &self,
        key_id: &str,
        account: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO api_key (key_id, account_id, key_hash, created_at) VALUES ($1, $2, $3, $4)")
            .bind(key_id)
            .bind(account)
            .bind(key_hash)
            .bind(now.as_micros())
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn list_keys(&self) -> StoreResult<Vec<KeyInfo>> {
        // COLLATE "C": byte order for the tie-break, as SQLite sorts, whatever the database's locale.
        let rows = sqlx::query(
            "SELECT key_id, account_id, created_at, revoked_at FROM api_key \
             ORDER BY created_at, key_id COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
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
        let done = sqlx::query("UPDATE api_key SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL")
            .bind(now.as_micros())
            .bind(key_id)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn account_for_key(&self, key_hash: &str) -> StoreResult<Option<Account>> {
        let row = sqlx::query(
            "SELECT a.account_id, a.max_concurrent, a.retention_days FROM api_key k \
             JOIN account a ON a.account_id = k.account_id WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(row_to_account).transpose()
    }

    async fn create_conversation(
        &self,
        c: &Conversation,
        max_active: u32,
        jobs: &[(JobKind, Timestamp)],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        if c.status == Status::Active && !c.test_mode {
            // Creates of one account take turns on its row, so two processes cannot both count
            // max_active - 1 and both insert. The count is a later statement, so under READ
            // COMMITTED it sees every create that held the lock before us.
            sqlx::query("SELECT 1 FROM account WHERE account_id = $1 FOR UPDATE")
                .bind(&c.account)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let active: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM conversation WHERE account_id = $1 AND status = 'active' AND NOT test_mode",
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
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
             $20, $21, $22, $23, $24, $25)"
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
        .bind(i64::from(c.max_call_duration))
        .bind(i64::from(c.participant_left_timeout))
        .bind(i64::from(c.participant_absent_timeout))
        .bind(i64::from(c.participants_present))
        .bind(c.participant_joined_at.map(Timestamp::as_micros))
        .bind(c.participant_left_at.map(Timestamp::as_micros))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        for (kind, at) in jobs {
            insert_job(&mut tx, *kind, &c.id, *at, None, c.created_at).await?;
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
             WHERE conversation_id = $1 AND account_id = $2 AND deleted_at IS NULL"
        ))
        .bind(id.as_str())
        .bind(account)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(row_to_conversation).transpose()
    }

    async fn load_conversation(&self, id: &ConversationId) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM conversation WHERE conversation_id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
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
        // The status filter is `$2 IS NULL OR …` rather than two query texts: one prepared plan.
        // COLLATE "C": ties on created_at break in byte order, as SQLite sorts, whatever the locale.
        const PAGE: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM conversation WHERE account_id = $1 AND deleted_at IS NULL \
             AND ($2::TEXT IS NULL OR status = $2) \
             ORDER BY created_at DESC, conversation_id COLLATE \"C\" DESC LIMIT $3 OFFSET $4"
        );
        const COUNT: &str = "SELECT COUNT(*) FROM conversation WHERE account_id = $1 AND deleted_at IS NULL \
                             AND ($2::TEXT IS NULL OR status = $2)";
        // REPEATABLE READ: the page and the total come from one snapshot, as in SQLite's read
        // transaction (READ COMMITTED would take a new snapshot per statement).
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(map_err)?;
        let status = status.map(Status::as_str);
        let rows = sqlx::query(PAGE)
            .bind(account)
            .bind(status)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let total: i64 = sqlx::query_scalar(COUNT)
            .bind(account)
            .bind(status)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let list = rows
            .iter()
            .map(row_to_conversation)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((list, count(total)))
    }

    async fn list_conversation_ids(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationRef>> {
        let query = match after {
            Some(after) => sqlx::query("SELECT conversation_id, account_id FROM conversation WHERE conversation_id > $1 ORDER BY conversation_id LIMIT $2").bind(after.as_str()),
            None => sqlx::query("SELECT conversation_id, account_id FROM conversation ORDER BY conversation_id LIMIT $1"),
        };
        let rows = query
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
             WHERE conversation_id = $1 ORDER BY event_id",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(c) = lock_conversation(&mut tx, id).await? else {
            return Ok(false);
        };
        if c.status != Status::Active || c.joined_at.is_some() {
            return Ok(false);
        }
        sqlx::query("UPDATE conversation SET joined_at = $1, updated_at = $1 WHERE conversation_id = $2")
            .bind(event.timestamp.as_micros())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_event(&mut tx, id, &Target::of(&c), event).await?;
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(mut conversation) = lock_conversation(&mut tx, id).await? else {
            return Ok(EndOutcome::NotFound);
        };
        if let Some(account) = account
            && (conversation.account != account || conversation.deleted_at.is_some())
        {
            return Ok(EndOutcome::NotFound);
        }
        if conversation.status == Status::Ended {
            return Ok(EndOutcome::AlreadyEnded(conversation));
        }
        sqlx::query(
            "UPDATE conversation SET status = 'ended', ended_at = $1, updated_at = $1, shutdown_reason = $2 \
             WHERE conversation_id = $3",
        )
        .bind(now.as_micros())
        .bind(reason)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let shutdown = Event::shutdown(now, &conversation.replica_id, reason);
        insert_event(&mut tx, id, &Target::of(&conversation), &shutdown).await?;
        // A replica that has not joined yet never will, and the call's timers have nothing left to end.
        sqlx::query(&format!(
            "DELETE FROM job WHERE conversation_id = $1 AND kind IN ({})",
            JobKind::sql_list(&JobKind::LIVE_CALL)
        ))
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let finalize = insert_claimed_job(&mut tx, JobKind::Finalize, id, now, lease_until).await?;
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Locked, so a hard delete either finishes first (we store nothing) or waits and erases
        // what we store.
        let Some(c) = lock_conversation(&mut tx, id).await? else {
            return Ok(false);
        };
        // A retried finalize must not store its events twice.
        let done_before: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM event WHERE conversation_id = $1 \
             AND event_type = 'application.transcription_ready')",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if !done_before {
            let to = Target::of(&c);
            for event in events {
                insert_event(&mut tx, id, &to, event).await?;
            }
        }
        if let Some(a) = asset {
            sqlx::query(
                "INSERT INTO asset (conversation_id, name, blob_key, content_type, size, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (conversation_id, name) DO UPDATE SET \
                 blob_key = EXCLUDED.blob_key, content_type = EXCLUDED.content_type, size = EXCLUDED.size, \
                 created_at = EXCLUDED.created_at",
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
             WHERE a.conversation_id = $1 AND a.name = $2 AND c.account_id = $3 AND c.deleted_at IS NULL",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(account)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(row.map(|r| Asset {
            name: r.get(0),
            blob_key: r.get(1),
            content_type: r.get(2),
            size: count(r.get(3)),
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(c) = lock_conversation(&mut tx, id)
            .await?
            .filter(|c| c.account == account)
        else {
            return Ok(SoftDeleteOutcome::NotFound);
        };
        if c.deleted_at.is_some() {
            return Ok(SoftDeleteOutcome::AlreadyDeleted);
        }
        if c.status == Status::Active {
            return Ok(SoftDeleteOutcome::StillActive);
        }
        sqlx::query("UPDATE conversation SET deleted_at = $1, updated_at = $1 WHERE conversation_id = $2")
            .bind(now.as_micros())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_job(&mut tx, JobKind::RetentionPurge, id, purge_at, Some(now), now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(SoftDeleteOutcome::Deleted)
    }

    async fn restore(&self, id: &ConversationId, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(c) = lock_conversation(&mut tx, id).await? else {
            return Ok(false);
        };
        if c.deleted_at.is_none() {
            return Ok(false);
        }
        sqlx::query("UPDATE conversation SET deleted_at = NULL, updated_at = $1 WHERE conversation_id = $2")
            .bind(now.as_micros())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("DELETE FROM job WHERE conversation_id = $1 AND kind = $2")
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Concurrent deletes of one id queue on this lock; once the first commits, the row is
        // gone and the others find nothing, so exactly one gets `Deleted` and writes the receipt.
        let Some(conversation) = lock_conversation(&mut tx, id).await? else {
            return Ok(HardDeleteOutcome::NotFound);
        };
        let owner = conversation.account.clone();
        let reason = match scope {
            DeleteScope::Account(account) if account == owner => "hard_delete",
            DeleteScope::KeyLost => "key_lost",
            DeleteScope::RetentionExpired { deleted_at } if conversation.deleted_at == Some(deleted_at) => {
                "retention_expired"
            }
            _ => return Ok(HardDeleteOutcome::NotFound),
        };
        if conversation.status == Status::Active {
            // Ended first: the shutdown is written with its delivery, which outlives the erasure
            // below (it carries no content), so the receiver learns the call is over.
            let shutdown = Event::shutdown(now, &conversation.replica_id, ShutdownReason::Deleted.as_str());
            insert_event(&mut tx, id, &Target::of(&conversation), &shutdown).await?;
        }
        let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event WHERE conversation_id = $1")
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        // SUM of BIGINT is NUMERIC in PostgreSQL; the cast keeps it an i64.
        let (assets, asset_bytes): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM asset WHERE conversation_id = $1",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let drop_jobs = format!(
            "DELETE FROM job WHERE conversation_id = $1 AND kind NOT IN ({})",
            JobKind::sql_list(&JobKind::OUTLIVES_HARD_DELETE)
        );
        for sql in [
            "DELETE FROM event WHERE conversation_id = $1",
            "DELETE FROM asset WHERE conversation_id = $1",
            "DELETE FROM participant WHERE conversation_id = $1",
            // Unsent deliveries without content (joined, shutdown) are still sent; the rest go.
            "DELETE FROM delivery WHERE conversation_id = $1 AND (status <> 'pending' OR carries_content)",
            // See `JobKind::OUTLIVES_HARD_DELETE`.
            drop_jobs.as_str(),
            "DELETE FROM conversation WHERE conversation_id = $1",
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
            events: count(events),
            assets: count(assets),
            asset_bytes: count(asset_bytes),
            key_id: None,
            key_destroyed_at: None,
        };
        sqlx::query(
            "INSERT INTO erasure_receipt (conversation_id, account_id, erased_at, reason, events, assets, \
             asset_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (conversation_id) DO UPDATE SET erased_at = EXCLUDED.erased_at",
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
        let purge = insert_claimed_job(&mut tx, JobKind::Purge, id, now, lease_until).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(HardDeleteOutcome::Deleted { receipt, purge })
    }

    async fn participant_join(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(c) = lock_conversation(&mut tx, id)
            .await?
            .filter(|c| c.deleted_at.is_none())
        else {
            return Ok(ParticipantOutcome::NotFound);
        };
        if c.status != Status::Active {
            return Ok(ParticipantOutcome::Ended);
        }
        sqlx::query(
            "INSERT INTO participant (participant_id, conversation_id, joined_at) VALUES ($1, $2, $3)",
        )
        .bind(participant_id)
        .bind(id.as_str())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let present: i64 = sqlx::query_scalar(
            "UPDATE conversation SET participants_present = participants_present + 1, \
             participant_joined_at = COALESCE(participant_joined_at, $1), updated_at = $1 \
             WHERE conversation_id = $2 RETURNING participants_present",
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
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let Some(c) = lock_conversation(&mut tx, id)
            .await?
            .filter(|c| c.deleted_at.is_none())
        else {
            return Ok(ParticipantOutcome::NotFound);
        };
        if c.status != Status::Active {
            return Ok(ParticipantOutcome::Ended);
        }
        let left = sqlx::query(
            "UPDATE participant SET left_at = $1 \
             WHERE participant_id = $2 AND conversation_id = $3 AND left_at IS NULL",
        )
        .bind(now.as_micros())
        .bind(participant_id)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if left.rows_affected() == 0 {
            // Unknown or already gone: leaving twice changes nothing.
            return Ok(ParticipantOutcome::Done {
                present: c.participants_present,
            });
        }
        let present: i64 = sqlx::query_scalar(
            "UPDATE conversation SET participants_present = GREATEST(participants_present - 1, 0), \
             updated_at = $1, \
             participant_left_at = CASE WHEN participants_present <= 1 THEN $1 ELSE participant_left_at END \
             WHERE conversation_id = $2 RETURNING participants_present",
        )
        .bind(now.as_micros())
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if present == 0 {
            // The timer only ends the call if the room is still empty since this very moment.
            let fire_at = now.plus_secs(i64::from(c.participant_left_timeout));
            insert_job(&mut tx, JobKind::LeftTimer, id, fire_at, Some(now), now).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(ParticipantOutcome::Done {
            present: u32::try_from(present).unwrap_or(0),
        })
    }

    async fn set_webhook_secret(&self, account: &str, secret: Option<&str>) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE account SET webhook_secret = $1 WHERE account_id = $2")
            .bind(secret)
            .bind(account)
            .execute(&self.pool)
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
        // At most one delivery of a conversation is out at a time, across every process; two rules
        // and a lock make it so.
        // - Only the oldest pending delivery of a conversation is eligible (as in SQLite), which
        //   keeps order. Its seq order is commit order because every writer of a conversation's
        //   deliveries holds the conversation's row lock (see `lock_conversation`).
        // - A conversation with any delivery under a live lease is skipped. The oldest pending one
        //   is normally the leased one, but `retry_delivery` can make an older failed one pending
        //   again while a newer one is being sent.
        // - Both rules read a snapshot, and a claim by another process that has not committed yet
        //   is not in it: two claimers could each see a different "oldest, unleased" row of one
        //   conversation (say one before and one after a `retry_delivery` commits). So claimers
        //   take turns on a transaction-scoped advisory lock, taken before the UPDATE: its
        //   snapshot is then newer than every earlier claim's commit. A claim is one short UPDATE,
        //   so the turns cost little; SKIP LOCKED still keeps us from waiting on rows that other
        //   writers (a success being recorded, a hard delete) hold.
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // A claimer stuck mid-transaction (a lost client) must not stall every process's
        // deliveries: past this wait the claim fails and the runner tries again later.
        sqlx::query("SET LOCAL lock_timeout = '5s'")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DELIVERY_CLAIM_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query(
            "UPDATE delivery SET locked_until = $1, attempts = attempts + 1 WHERE delivery_seq IN ( \
               SELECT d.delivery_seq FROM delivery d \
               WHERE d.status = 'pending' AND d.next_attempt_at <= $2 \
                 AND (d.locked_until IS NULL OR d.locked_until <= $2) \
                 AND NOT EXISTS (SELECT 1 FROM delivery e WHERE e.conversation_id = d.conversation_id \
                                 AND e.status = 'pending' AND e.delivery_seq < d.delivery_seq) \
                 AND NOT EXISTS (SELECT 1 FROM delivery e WHERE e.conversation_id = d.conversation_id \
                                 AND e.delivery_seq <> d.delivery_seq AND e.locked_until > $2) \
               ORDER BY d.next_attempt_at, d.delivery_seq LIMIT $3 \
               FOR UPDATE SKIP LOCKED) \
             RETURNING delivery_seq, delivery_id, conversation_id, event_type, url, payload, attempts, \
               retry_from, (SELECT webhook_secret FROM account a WHERE a.account_id = delivery.account_id)",
        )
        .bind(lease_until.as_micros())
        .bind(now.as_micros())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        let mut claimed: Vec<(i64, Delivery)> = rows
            .iter()
            .map(|r| {
                let delivery = Delivery {
                    id: r.get(1),
                    conversation_id: r.get(2),
                    event_type: r.get(3),
                    url: r.get(4),
                    payload: r.get(5),
                    attempts: attempts(r.get(6)),
                    retry_from: Timestamp::from_micros(r.get(7)),
                    signing_secret: r.get(8),
                };
                (r.get(0), delivery)
            })
            .collect();
        // RETURNING has no order; oldest first is what a reader of logs expects.
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, d)| d).collect())
    }

    async fn delivery_succeeded(&self, delivery: &Delivery, now: Timestamp) -> StoreResult<()> {
        self.finish_delivery(delivery, Finish::Delivered, now).await
    }

    async fn delivery_failed(
        &self,
        delivery: &Delivery,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let Some(retry_at) = retry_at else {
            return self.finish_delivery(delivery, Finish::GivenUp(error), now).await;
        };
        sqlx::query(
            "UPDATE delivery SET next_attempt_at = $1, last_error = $2, locked_until = NULL \
             WHERE delivery_id = $3 AND attempts = $4",
        )
        .bind(retry_at.as_micros())
        .bind(error)
        .bind(&delivery.id)
        .bind(i64::from(delivery.attempts))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn list_deliveries(&self, filter: DeliveryFilter<'_>) -> StoreResult<Vec<DeliveryInfo>> {
        let rows = sqlx::query(
            "SELECT delivery_id, conversation_id, event_type, url, status, attempts, next_attempt_at, last_error, \
             created_at, finished_at FROM delivery \
             WHERE ($1::TEXT IS NULL OR conversation_id = $1) AND (NOT $2 OR status = 'failed' OR (status = 'pending' AND last_error IS NOT NULL)) \
             ORDER BY delivery_seq",
        )
        .bind(filter.conversation_id)
        .bind(filter.failed_only)
        .fetch_all(&self.pool)
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
                attempts: attempts(r.get(5)),
                next_attempt_at: Timestamp::from_micros(r.get(6)),
                last_error: r.get(7),
                created_at: Timestamp::from_micros(r.get(8)),
                finished_at: ts(r.get(9)),
            })
            .collect())
    }

    async fn retry_delivery(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE delivery SET status = 'pending', next_attempt_at = $1, retry_from = $1, finished_at = NULL, \
             locked_until = NULL WHERE delivery_id = $2",
        )
        .bind(now.as_micros())
        .bind(id)
        .execute(&self.pool)
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
            "UPDATE erasure_receipt SET key_id = COALESCE(key_id, $1), key_destroyed_at = COALESCE(key_destroyed_at, $2) \
             WHERE conversation_id = $3",
        )
        .bind(key_id)
        .bind(at.map(Timestamp::as_micros))
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_receipts(&self, account: Option<&str>) -> StoreResult<Vec<ErasureReceipt>> {
        let rows = sqlx::query(
            "SELECT conversation_id, account_id, erased_at, reason, events, assets, asset_bytes, key_id, \
             key_destroyed_at FROM erasure_receipt WHERE $1::TEXT IS NULL OR account_id = $1 ORDER BY erased_at DESC",
        )
        .bind(account)
        .fetch_all(&self.pool)
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
                    events: count(r.get(4)),
                    assets: count(r.get(5)),
                    asset_bytes: count(r.get(6)),
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
        // SKIP LOCKED: a row another process is claiming right now is passed over, not waited
        // for. If that claim commits before we lock the row, PostgreSQL re-checks our WHERE on
        // the new version and finds the lease live, so a job is never handed out twice.
        let rows = sqlx::query(
            "UPDATE job SET locked_until = $1, attempts = attempts + 1 WHERE job_id IN ( \
               SELECT job_id FROM job WHERE run_at <= $2 AND (locked_until IS NULL OR locked_until <= $2) \
               ORDER BY run_at, job_id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING job_id, kind, conversation_id, not_before, attempts",
        )
        .bind(lease_until.as_micros())
        .bind(now.as_micros())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut jobs = rows.iter().map(row_to_job).collect::<StoreResult<Vec<_>>>()?;
        jobs.sort_by_key(|j| j.id);
        Ok(jobs)
    }

    async fn release_all_leases(&self) -> StoreResult<u64> {
        // Only for a process that knows it is alone. With a shared database another process's
        // live lease would be cleared and its job run twice, so a server must not call this at
        // startup on Postgres: leases of dead processes expire by themselves.
        let mut tx = self.pool.begin().await.map_err(map_err)?;
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
        sqlx::query("DELETE FROM job WHERE job_id = $1 AND attempts = $2")
            .bind(job.id)
            .bind(i64::from(job.attempts))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn fail_job(&self, job: &Job, error: &str, retry_at: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "UPDATE job SET locked_until = NULL, run_at = $1, last_error = $2 WHERE job_id = $3 AND attempts = $4",
        )
        .bind(retry_at.as_micros())
        .bind(error)
        .bind(job.id)
        .bind(i64::from(job.attempts))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn list_jobs(&self) -> StoreResult<Vec<JobInfo>> {
        let rows = sqlx::query(
            "SELECT job_id, kind, conversation_id, run_at, not_before, locked_until, attempts, last_error \
             FROM job ORDER BY job_id",
        )
        .fetch_all(&self.pool)
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
                attempts: attempts(r.get(6)),
                last_error: r.get(7),
            })
            .collect())
    }

    async fn erase_residue(&self) -> StoreResult<bool> {
        self.vacuum.request(&self.pool);
        Ok(true)
    }

    async fn probe_write(&self, now: Timestamp) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO write_probe (write_probe_id, probed_at) VALUES (1, $1) \
             ON CONFLICT (write_probe_id) DO UPDATE SET probed_at = EXCLUDED.probed_at",
        )
        .bind(now.as_micros())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn count_unsealed(&self) -> StoreResult<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM conversation WHERE left(request_json, 4) <> 'pe1:'")
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(count(n))
    }

    async fn unsealed_conversations(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<UnsealedConversation>> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // One snapshot for the page's rows, as in SQLite.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let rows = sqlx::query(
            "SELECT conversation_id, conversation_name, conversational_context, custom_greeting, request_json \
             FROM conversation WHERE conversation_id > $1 AND left(request_json, 4) <> 'pe1:' \
             ORDER BY conversation_id LIMIT $2",
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
        let ids: Vec<&str> = page.iter().map(|c| c.id.as_str()).collect();
        let index: std::collections::HashMap<String, usize> = page
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.as_str().to_owned(), i))
            .collect();
        let events = sqlx::query(
            "SELECT conversation_id, event_id, event_type, properties FROM event \
             WHERE conversation_id = ANY($1) ORDER BY event_id",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let deliveries = sqlx::query(
            "SELECT conversation_id, delivery_id, event_type, carries_content, payload FROM delivery \
             WHERE conversation_id = ANY($1) ORDER BY delivery_seq",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let assets = sqlx::query(
            "SELECT conversation_id, name, blob_key, content_type, size, created_at FROM asset \
             WHERE conversation_id = ANY($1) ORDER BY conversation_id, name",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        for r in &events {
            page[index[r.get::<&str, _>(0)]].events.push(RawEvent {
                event_id: r.get(1),
                event_type: r.get(2),
                properties: r.get(3),
            });
        }
        for r in &deliveries {
            page[index[r.get::<&str, _>(0)]].deliveries.push(RawDelivery {
                delivery_id: r.get(1),
                event_type: r.get(2),
                carries_content: r.get(3),
                payload: r.get(4),
            });
        }
        for r in &assets {
            page[index[r.get::<&str, _>(0)]].assets.push(Asset {
                name: r.get(1),
                blob_key: r.get(2),
                content_type: r.get(3),
                size: count(r.get(4)),
                created_at: Timestamp::from_micros(r.get(5)),
            });
        }
        Ok(page)
    }

    async fn reseal_conversations(&self, resealed: &[Resealed]) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let mut applied = 0;
        for r in resealed {
            // The row lock this takes makes a second process resealing the same conversation
            // wait, then find it sealed (the condition is checked again after the wait).
            let done = sqlx::query(
                "UPDATE conversation SET conversation_name = $1, conversational_context = $2, \
                 custom_greeting = $3, request_json = $4 \
                 WHERE conversation_id = $5 AND left(request_json, 4) <> 'pe1:'",
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
                let done = sqlx::query(
                    "UPDATE event SET properties = $1 WHERE event_id = $2 AND conversation_id = $3",
                )
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
                    "UPDATE delivery SET payload = $1 WHERE delivery_id = $2 AND conversation_id = $3",
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
        // The tables where content is rewritten in place; VACUUM FULL writes each into a new
        // file without its dead tuples and removes the old one. It cannot run in a transaction.
        sqlx::raw_sql("VACUUM FULL conversation, event, delivery")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn count_rows(&self, table: Table) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {}", table.name()))
            .fetch_one(&self.pool)
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
        // Names come from `Table`, never from input. Ordered as the primary key's index is, so a
        // page is an index range scan however deep it starts.
        let key = table.key().join(", ");
        let n = table.key().len();
        let from = match after {
            Some(_) => format!(
                "WHERE ({key}) > ({})",
                (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
            ),
            None => String::new(),
        };
        let limit_at = if after.is_some() { n + 1 } else { 1 };
        let sql = format!(
            "SELECT {} FROM {} {from} ORDER BY {key} LIMIT ${limit_at}",
            table.column_list(),
            table.name(),
        );
        let mut q = sqlx::query(&sql);
        for (_, kind, value) in after.map(|row| table.key_of(row)).unwrap_or_default() {
            q = bind_value(q, value, kind);
        }
        let rows = q
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
                        .map_err(|e| StoreError::Backend(Box::new(e)))
                    })
                    .collect()
            })
            .collect()
    }

    async fn import_rows(&self, table: Table, rows: &[CopyRow]) -> StoreResult<()> {
        let placeholders = (1..=table.columns().len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({placeholders}) ON CONFLICT DO NOTHING",
            table.name(),
            table.column_list()
        );
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for row in rows {
            let mut q = sqlx::query(&sql);
            for (value, (_, kind)) in row.iter().zip(table.columns()) {
                q = bind_value(q, value, *kind);
            }
            q.execute(&mut *tx).await.map_err(map_err)?;
        }
        if let Some(serial) = table.serial() {
            // Explicit ids do not move a sequence; the next insert must not reuse a copied id.
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{t}', '{serial}'), m) FROM (SELECT MAX({serial}) AS m FROM {t}) s \
                 WHERE m IS NOT NULL",
                t = table.name()
            ))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn create_resource(&self, resource: &Resource) -> StoreResult<()> {
        resource::create(&self.pool, resource).await
    }

    async fn get_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> StoreResult<Option<Resource>> {
        resource::get(&self.pool, account, kind, id).await
    }

    async fn load_resource(&self, row_id: &str) -> StoreResult<Option<Resource>> {
        resource::load(&self.pool, row_id).await
    }

    async fn list_resources(
        &self,
        account: &str,
        kind: ResourceKind,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Resource>, u64)> {
        resource::list(&self.pool, account, kind, limit, offset).await
    }

    async fn update_resource(&self, resource: &Resource) -> StoreResult<bool> {
        resource::update(&self.pool, resource).await
    }

    async fn soft_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        resource::soft_delete(&self.pool, account, kind, id, now).await
    }

    async fn hard_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        resource::hard_delete(&self.pool, account, kind, id, now).await
    }

    async fn claim_resource_work(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Resource>> {
        resource::claim_work(&self.pool, now, lease_until, limit).await
    }

    async fn pending_resource_purges(&self, limit: u32) -> StoreResult<Vec<String>> {
        resource::pending_purges(&self.pool, limit).await
    }

    async fn finish_resource_purge(&self, row_id: &str) -> StoreResult<()> {
        resource::finish_purge(&self.pool, row_id).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{is_disk_full_code, is_unavailable_code};

    #[test]
    fn a_full_disk_on_the_server_is_disk_full_and_nothing_else_is() {
        assert!(is_disk_full_code("53100"));
        // Out of memory, too many connections, other resources: not a full disk.
        for code in ["53000", "53200", "53300", "53400", "08006"] {
            assert!(!is_disk_full_code(code), "{code}");
        }
    }

    #[test]
    fn connection_failures_and_shutdowns_are_unavailable_and_other_errors_are_not() {
        for code in ["08000", "08001", "08006", "57P01", "57P02", "57P03", "53300"] {
            assert!(is_unavailable_code(code), "{code}");
        }
        // Serialisation failures, lock timeouts, a missing database: not a reachability problem.
        for code in ["40001", "40P01", "55P03", "3D000", "57014", "23505"] {
            assert!(!is_unavailable_code(code), "{code}");
        }
    }
}
