//! The shared key store: a table of wrapped keys in a PostgreSQL database of its own.
//!
//! Every parley process connects to the same key database with the same master key. The
//! database is separate from the content database (its own URL), so a `pg_dump`, base backup or
//! WAL archive of the content carries no keys, and the key database gets backup rules of its own.
//!
//! # What a destroy leaves behind
//!
//! A destroy is one `DELETE`, committed with `synchronous_commit = on` (forced on this store's
//! connections) before it returns. PostgreSQL does not overwrite the row's bytes: the dead tuple
//! stays in the table file until VACUUM makes its space reusable and a later write reuses it,
//! and the WAL (and any archive or replica of it, and any base backup) keeps the row as it was.
//! Overwriting the row with an `UPDATE` first would not help: an UPDATE writes a new tuple and
//! leaves the old one dead just the same, plus another WAL record. So those leftover copies are
//! wrapped keys, and they are exactly as dead as the master key they were wrapped under. The
//! rule that makes them dead is in `docs/KEYS.md`: rotate the master key and destroy the old one
//! on a schedule no longer than the erasure deadline, and keep backups of the key database no
//! longer than that. A background VACUUM after destroys makes the dead tuples' space reusable
//! sooner; it is a courtesy, not the guarantee.
//!
//! # Rotation with several processes
//!
//! Creating a key holds the `key_store` row `FOR SHARE`, and the rotation's switch takes it
//! `FOR UPDATE` after checking that every key has a copy under the new master key, so no key
//! wrapped only under the old master key can appear after the switch. Processes still running
//! with the old key keep reading (their copies remain) until the retiring pass removes them;
//! from the switch on they cannot create keys ([`KeyError::RotatedOut`]), so restart them with
//! the new key as soon as the rotation has switched.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use parley_domain::{KeyOwner, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::error::{KeyError, KeyResult};
use crate::id::KeyId;
use crate::master::{MasterKey, MasterKeyId};
use crate::seal::DataKey;
use crate::store::{
    ConversationKey, ImportedKey, KeyInfo, KeyStore, KeyStoreStatus, Progress, RotationPhase,
    RotationProgress, UnfinishedRotation,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connections per process: key operations are short, one query each.
const MAX_CONNECTIONS: u32 = 8;

/// How long an operation waits for a connection before it fails as `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys a rotation rewraps per transaction.
const ROTATION_BATCH: i64 = 256;

/// The shared key store.
pub struct PgKeyStore {
    pool: PgPool,
    keys: RwLock<Keys>,
    vacuum: Arc<Vacuumer>,
}

/// The master keys this process holds.
struct Keys {
    current: MasterKey,
    /// The key a rotation in this process is wrapping to: new keys are wrapped under both.
    next: Option<MasterKey>,
}

/// The `key_store` row.
#[derive(Clone, Copy)]
struct Header {
    master: MasterKeyId,
    rotation: Option<UnfinishedRotation>,
    /// The master key the store last switched from, to name it when a process still uses it.
    previous: Option<MasterKeyId>,
}

impl Header {
    fn mismatch(&self, given: MasterKeyId) -> KeyError {
        KeyError::master_mismatch(self.master, self.rotation, self.previous, given)
    }
}

impl PgKeyStore {
    /// Connects to the key database at `url`, migrates it, and checks `master` against it.
    ///
    /// Refuses a database that holds parley's content tables: the keys must not travel in the
    /// content's backups.
    ///
    /// The first process to connect to a new key database records its master key; any later
    /// one with another key is refused ([`KeyError::WrongMasterKey`], or [`KeyError::RotatedOut`]
    /// for a master key rotated out).
    pub async fn connect(url: &str, master: MasterKey) -> KeyResult<Self> {
        // A destroy must be durable before it returns, whatever the server's default.
        let options = PgConnectOptions::from_str(url)
            .map_err(map_err)?
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        // Keys next to the content would travel in the content's dumps and backups.
        let content_here: bool = sqlx::query_scalar("SELECT to_regclass('conversation') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .map_err(map_err)?;
        if content_here {
            return Err(KeyError::Database(
                "this database holds parley's content tables; the key store needs a database of its \
                 own (docs/KEYS.md)"
                    .into(),
            ));
        }
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map_err(e),
            e => KeyError::Database(format!("migrating the key database: {e}")),
        })?;
        sqlx::query(
            "INSERT INTO key_store (key_store_id, master_key_id, rotation) VALUES (1, $1, 'none') \
             ON CONFLICT (key_store_id) DO NOTHING",
        )
        .bind(master.id().to_string())
        .execute(&pool)
        .await
        .map_err(map_err)?;
        let header = read_header(&pool, "").await?;
        check_master(header, master.id())?;
        Ok(Self {
            pool,
            keys: RwLock::new(Keys {
                current: master,
                next: None,
            }),
            vacuum: Arc::default(),
        })
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn current(&self) -> MasterKey {
        self.keys.read().expect("keys lock").current.clone()
    }

    /// The master keys a new row is wrapped under, given the header a create or import locked:
    /// the store's, and the rotation's target when this process is the one rotating.
    fn wrapping_keys(&self, header: Header) -> KeyResult<(MasterKey, Option<MasterKey>)> {
        let (current, next) = {
            let keys = self.keys.read().expect("keys lock");
            (keys.current.clone(), keys.next.clone())
        };
        if header.master != current.id() {
            return Err(header.mismatch(current.id()));
        }
        let next = next.filter(|n| {
            header.rotation
                == Some(UnfinishedRotation::Rewrapping {
                    from: current.id(),
                    to: n.id(),
                })
        });
        Ok((current, next))
    }

    async fn rewrap_pass(&self, target: MasterKeyId, progress: Progress<'_>) -> KeyResult<()> {
        let t = target.to_string();
        loop {
            let (total, todo) = self
                .counts(
                    "master_key_id <> $1 AND other_master_key_id IS DISTINCT FROM $1",
                    &t,
                )
                .await?;
            let mut done = total.saturating_sub(todo);
            let mut cursor = String::new();
            loop {
                let rows = sqlx::query(
                    "SELECT conversation_id, data_key_id, master_key_id, wrapped, other_master_key_id, \
                     other_wrapped FROM data_key WHERE conversation_id > $1 AND master_key_id <> $2 \
                     AND other_master_key_id IS DISTINCT FROM $2 ORDER BY conversation_id LIMIT $3",
                )
                .bind(&cursor)
                .bind(&t)
                .bind(ROTATION_BATCH)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
                let Some(last) = rows.last() else { break };
                cursor = last.try_get("conversation_id").map_err(map_err)?;
                let (current, next) = {
                    let keys = self.keys.read().expect("keys lock");
                    let next = keys.next.clone().filter(|n| n.id() == target);
                    (
                        keys.current.clone(),
                        next.expect("a rewrap pass runs while its target key is held"),
                    )
                };
                let mut tx = self.pool.begin().await.map_err(map_err)?;
                for row in &rows {
                    let stored = StoredKey::from_row(row)?;
                    let kept = stored
                        .wrap_under(current.id())
                        .ok_or_else(|| stored.unwrap_error(&current))?;
                    let key = current
                        .unwrap_key(&stored.owner, stored.key_id, kept)
                        .map_err(|_| stored.unwrap_error(&current))?;
                    sqlx::query(
                        "UPDATE data_key SET master_key_id = $3, wrapped = $4, other_master_key_id = $5, \
                         other_wrapped = $6 WHERE conversation_id = $1 AND data_key_id = $2",
                    )
                    .bind(stored.owner.as_str())
                    .bind(stored.key_id.to_string())
                    .bind(current.id().to_string())
                    .bind(kept)
                    .bind(&t)
                    .bind(next.wrap_key(&stored.owner, stored.key_id, &key))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                tx.commit().await.map_err(map_err)?;
                done += rows.len() as u64;
                report(progress, RotationPhase::Rewrap, done, total)?;
            }
            // The switch: under the header's lock, so no create wrapped only under the old key
            // can slip in between the check and the switch.
            let mut tx = self.pool.begin().await.map_err(map_err)?;
            let header = lock_header(&mut tx, "FOR UPDATE").await?;
            let from = self.current().id();
            if header.master != from
                || header.rotation != Some(UnfinishedRotation::Rewrapping { from, to: target })
            {
                return Err(KeyError::Database(
                    "another process changed the master key rotation while this one ran".into(),
                ));
            }
            let left: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM data_key WHERE master_key_id <> $1 \
                 AND other_master_key_id IS DISTINCT FROM $1)",
            )
            .bind(&t)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if left {
                continue;
            }
            let retiring = UnfinishedRotation::Retiring { from, to: target };
            set_header(&mut tx, target, Some(retiring), Some(from)).await?;
            tx.commit().await.map_err(map_err)?;
            let mut keys = self.keys.write().expect("keys lock");
            keys.current = keys
                .next
                .take()
                .expect("a rewrap pass runs while its target key is held");
            return Ok(());
        }
    }

    async fn retire_pass(&self, progress: Progress<'_>) -> KeyResult<()> {
        let current = self.current().id().to_string();
        let stale = "(master_key_id <> $1 OR other_master_key_id IS NOT NULL)";
        loop {
            let (total, todo) = self.counts(stale, &current).await?;
            let mut done = total.saturating_sub(todo);
            loop {
                // Keeps the copy under the current key, wherever it is, and drops the other.
                let moved = sqlx::query(&format!(
                    "UPDATE data_key SET master_key_id = $1, \
                     wrapped = CASE WHEN master_key_id = $1 THEN wrapped ELSE other_wrapped END, \
                     other_master_key_id = NULL, other_wrapped = NULL \
                     WHERE conversation_id IN (SELECT conversation_id FROM data_key WHERE {stale} \
                     AND (master_key_id = $1 OR other_master_key_id = $1) ORDER BY conversation_id LIMIT $2)"
                ))
                .bind(&current)
                .bind(ROTATION_BATCH)
                .execute(&self.pool)
                .await
                .map_err(map_err)?
                .rows_affected();
                if moved == 0 {
                    break;
                }
                done += moved;
                report(progress, RotationPhase::Retire, done, total)?;
            }
            let mut tx = self.pool.begin().await.map_err(map_err)?;
            let header = lock_header(&mut tx, "FOR UPDATE").await?;
            let stranded: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM data_key WHERE master_key_id <> $1 AND other_master_key_id IS DISTINCT FROM $1",
            )
            .bind(&current)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
            if stranded > 0 {
                return Err(KeyError::Corrupt(format!(
                    "{stranded} keys have no copy wrapped under the current master key {current}"
                )));
            }
            let left: bool =
                sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM data_key WHERE {stale})"))
                    .bind(&current)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_err)?;
            if left {
                continue;
            }
            if header.rotation.is_some() {
                set_header(&mut tx, header.master, None, header.previous).await?;
            }
            tx.commit().await.map_err(map_err)?;
            self.vacuum.request(&self.pool);
            return Ok(());
        }
    }

    /// All keys, and those matching `filter` (with `$1` bound to `arg`).
    async fn counts(&self, filter: &str, arg: &str) -> KeyResult<(u64, u64)> {
        let row = sqlx::query(&format!(
            "SELECT COUNT(*) AS total, COUNT(*) FILTER (WHERE {filter}) AS todo FROM data_key"
        ))
        .bind(arg)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        let count = |c: &str| row.try_get::<i64, _>(c).map(|n| n.max(0) as u64).map_err(map_err);
        Ok((count("total")?, count("todo")?))
    }

    /// The error for a process whose master key no longer matches the store's.
    async fn stale_master(&self) -> KeyError {
        let mine = self.current().id();
        match read_header(&self.pool, "").await {
            Ok(header) => header.mismatch(mine),
            Err(e) => e,
        }
    }
}

#[async_trait]
impl KeyStore for PgKeyStore {
    async fn create(&self, owner: &KeyOwner, now: Timestamp) -> KeyResult<ConversationKey> {
        let mut keys = self.create_many(std::slice::from_ref(owner), now).await?;
        Ok(keys.pop().expect("one key per owner"))
    }

    async fn create_many(&self, owners: &[KeyOwner], now: Timestamp) -> KeyResult<Vec<ConversationKey>> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Shared with other creates, exclusive with a rotation's switch (see the module docs).
        let header = lock_header(&mut tx, "FOR SHARE").await?;
        let (current, next) = self.wrapping_keys(header)?;
        let mut made = Vec::with_capacity(owners.len());
        let mut columns: [Vec<Option<Vec<u8>>>; 2] = Default::default();
        let (mut ids, mut key_ids, mut other_ids) = (Vec::new(), Vec::new(), Vec::new());
        for owner in owners {
            let (key_id, key) = (KeyId::random(), DataKey::generate());
            ids.push(owner.as_str());
            key_ids.push(key_id.to_string());
            columns[0].push(Some(current.wrap_key(owner, key_id, &key)));
            columns[1].push(next.as_ref().map(|n| n.wrap_key(owner, key_id, &key)));
            other_ids.push(next.as_ref().map(|n| n.id().to_string()));
            made.push(ConversationKey { key_id, key });
        }
        let inserted = sqlx::query(
            "INSERT INTO data_key (conversation_id, data_key_id, created_at, master_key_id, wrapped, \
             other_master_key_id, other_wrapped) \
             SELECT c, k, $3, $4, w, o, ow FROM UNNEST($1::text[], $2::text[], $5::bytea[], $6::text[], \
             $7::bytea[]) AS t(c, k, w, o, ow)",
        )
        .bind(&ids)
        .bind(&key_ids)
        .bind(now.as_micros())
        .bind(current.id().to_string())
        .bind(&columns[0])
        .bind(&other_ids)
        .bind(&columns[1])
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                drop(tx);
                return Err(self.already_exists(owners).await);
            }
            Err(e) => return Err(map_err(e)),
        }
        tx.commit().await.map_err(map_err)?;
        Ok(made)
    }

    async fn import(&self, imported: &[ImportedKey]) -> KeyResult<u64> {
        // The same owner twice in one batch: fine only as the same key.
        let mut batch: HashMap<&str, &ImportedKey> = HashMap::with_capacity(imported.len());
        for new in imported {
            if let Some(first) = batch.insert(new.owner.as_str(), new)
                && !same_key(&first.key, &new.key)
            {
                return Err(import_conflict(first.key.key_id, new));
            }
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // As a create: shared with creates, exclusive with a rotation's switch.
        let header = lock_header(&mut tx, "FOR SHARE").await?;
        let (current, next) = self.wrapping_keys(header)?;
        let unique: Vec<&ImportedKey> = batch.values().copied().collect();
        let mut columns: [Vec<Option<Vec<u8>>>; 2] = Default::default();
        let (mut ids, mut key_ids, mut created, mut other_ids) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in &unique {
            let (owner, key_id) = (&k.owner, k.key.key_id);
            ids.push(owner.as_str());
            key_ids.push(key_id.to_string());
            created.push(k.created_at.as_micros());
            columns[0].push(Some(current.wrap_key(owner, key_id, &k.key.key)));
            columns[1].push(next.as_ref().map(|n| n.wrap_key(owner, key_id, &k.key.key)));
            other_ids.push(next.as_ref().map(|n| n.id().to_string()));
        }
        let inserted: Vec<String> = sqlx::query_scalar(
            "INSERT INTO data_key (conversation_id, data_key_id, created_at, master_key_id, wrapped, \
             other_master_key_id, other_wrapped) \
             SELECT c, k, t, $4, w, o, ow FROM UNNEST($1::text[], $2::text[], $3::bigint[], $5::bytea[], \
             $6::text[], $7::bytea[]) AS u(c, k, t, w, o, ow) \
             ON CONFLICT (conversation_id) DO NOTHING RETURNING conversation_id",
        )
        .bind(&ids)
        .bind(&key_ids)
        .bind(&created)
        .bind(current.id().to_string())
        .bind(&columns[0])
        .bind(&other_ids)
        .bind(&columns[1])
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => KeyError::Database(format!(
                "an imported key's id is already another owner's key: {db}"
            )),
            e => map_err(e),
        })?;
        // Those already there must hold the same key, or the stores are not copies of each other.
        let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
        let held: Vec<&str> = ids.iter().copied().filter(|id| !inserted.contains(*id)).collect();
        if !held.is_empty() {
            let rows = sqlx::query(
                "SELECT conversation_id, data_key_id, master_key_id, wrapped, other_master_key_id, \
                 other_wrapped FROM data_key WHERE conversation_id = ANY($1)",
            )
            .bind(&held)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
            for row in &rows {
                let stored = StoredKey::from_row(row)?;
                let wrapped = stored
                    .wrap_under(current.id())
                    .ok_or_else(|| stored.unwrap_error(&current))?;
                let key = current
                    .unwrap_key(&stored.owner, stored.key_id, wrapped)
                    .map_err(|_| stored.unwrap_error(&current))?;
                let held = ConversationKey {
                    key_id: stored.key_id,
                    key,
                };
                let new = batch[stored.owner.as_str()];
                if !same_key(&held, &new.key) {
                    // Dropping the transaction rolls the whole batch back.
                    return Err(import_conflict(held.key_id, new));
                }
            }
        }
        tx.commit().await.map_err(map_err)?;
        Ok(inserted.len() as u64)
    }

    async fn get(&self, owner: &KeyOwner) -> KeyResult<Option<ConversationKey>> {
        let row = sqlx::query(
            "SELECT conversation_id, data_key_id, master_key_id, wrapped, other_master_key_id, other_wrapped \
             FROM data_key WHERE conversation_id = $1",
        )
        .bind(owner.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let stored = StoredKey::from_row(&row)?;
        let current = self.current();
        let Some(wrapped) = stored.wrap_under(current.id()) else {
            // Another process rotated the store to a key this one does not hold.
            return Err(self.stale_master().await);
        };
        let key = current
            .unwrap_key(owner, stored.key_id, wrapped)
            .map_err(|_| stored.unwrap_error(&current))?;
        Ok(Some(ConversationKey {
            key_id: stored.key_id,
            key,
        }))
    }

    async fn get_many(&self, owners: &[KeyOwner]) -> KeyResult<Vec<Option<ConversationKey>>> {
        // One round trip for a page of a list, not one per owner.
        let ids: Vec<&str> = owners.iter().map(KeyOwner::as_str).collect();
        let rows = sqlx::query(
            "SELECT conversation_id, data_key_id, master_key_id, wrapped, other_master_key_id, other_wrapped \
             FROM data_key WHERE conversation_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let current = self.current();
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let owner: String = row.get(0);
            found.insert(owner, StoredKey::from_row(row)?);
        }
        let mut keys = Vec::with_capacity(owners.len());
        for owner in owners {
            let Some(stored) = found.get(owner.as_str()) else {
                keys.push(None);
                continue;
            };
            let Some(wrapped) = stored.wrap_under(current.id()) else {
                return Err(self.stale_master().await);
            };
            let key = current
                .unwrap_key(owner, stored.key_id, wrapped)
                .map_err(|_| stored.unwrap_error(&current))?;
            keys.push(Some(ConversationKey {
                key_id: stored.key_id,
                key,
            }));
        }
        Ok(keys)
    }

    async fn destroy(&self, owner: &KeyOwner) -> KeyResult<Option<KeyId>> {
        let destroyed: Option<String> =
            sqlx::query_scalar("DELETE FROM data_key WHERE conversation_id = $1 RETURNING data_key_id")
                .bind(owner.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_err)?;
        let Some(key_id) = destroyed else { return Ok(None) };
        self.vacuum.request(&self.pool);
        Ok(Some(parse_key_id(&key_id)?))
    }

    async fn list(&self) -> KeyResult<Vec<KeyInfo>> {
        let rows = sqlx::query(
            "SELECT conversation_id, data_key_id, created_at FROM data_key ORDER BY created_at, conversation_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(KeyInfo {
                    owner: parse_owner(&row.try_get::<String, _>("conversation_id").map_err(map_err)?)?,
                    key_id: parse_key_id(&row.try_get::<String, _>("data_key_id").map_err(map_err)?)?,
                    created_at: Timestamp::from_micros(row.try_get("created_at").map_err(map_err)?),
                })
            })
            .collect()
    }

    async fn rotate(&self, to: MasterKey, progress: Progress<'_>) -> KeyResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let header = lock_header(&mut tx, "FOR UPDATE").await?;
        let current = self.current().id();
        if header.master != current {
            return Err(header.mismatch(current));
        }
        let target = to.id();
        if target == current {
            if let Some(UnfinishedRotation::Rewrapping { to: abandoned, .. }) = header.rotation {
                // Rotating back to the key in use: the copies wrapped for the abandoned target go.
                let retiring = UnfinishedRotation::Retiring {
                    from: abandoned,
                    to: current,
                };
                set_header(&mut tx, current, Some(retiring), header.previous).await?;
            }
            tx.commit().await.map_err(map_err)?;
            self.keys.write().expect("keys lock").next = None;
        } else {
            let rewrapping = UnfinishedRotation::Rewrapping {
                from: current,
                to: target,
            };
            set_header(&mut tx, current, Some(rewrapping), header.previous).await?;
            tx.commit().await.map_err(map_err)?;
            self.keys.write().expect("keys lock").next = Some(to);
            self.rewrap_pass(target, progress).await?;
        }
        self.retire_pass(progress).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn status(&self) -> KeyResult<KeyStoreStatus> {
        let header = read_header(&self.pool, "").await?;
        let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_key")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(KeyStoreStatus {
            master_key_id: header.master,
            unfinished_rotation: header.rotation,
            keys: keys.max(0) as u64,
            repaired_at_open: Vec::new(),
        })
    }
}

impl PgKeyStore {
    /// Names an owner of `owners` that has a key, after an insert conflicted.
    async fn already_exists(&self, owners: &[KeyOwner]) -> KeyError {
        let ids: Vec<&str> = owners.iter().map(KeyOwner::as_str).collect();
        let existing: Result<Option<String>, _> = sqlx::query_scalar(
            "SELECT conversation_id FROM data_key WHERE conversation_id = ANY($1) LIMIT 1",
        )
        .bind(&ids)
        .fetch_optional(&self.pool)
        .await;
        let named = existing
            .ok()
            .flatten()
            .and_then(|id| KeyOwner::parse(&id).ok())
            // The same owner twice in one batch.
            .or_else(|| owners.first().cloned());
        match named {
            Some(owner) => KeyError::AlreadyExists(owner),
            None => KeyError::Database("a key insert conflicted with nothing".into()),
        }
    }
}

fn same_key(a: &ConversationKey, b: &ConversationKey) -> bool {
    a.key_id == b.key_id && a.key.expose_bytes() == b.key.expose_bytes()
}

fn import_conflict(held: KeyId, new: &ImportedKey) -> KeyError {
    KeyError::ImportConflict {
        owner: new.owner.clone(),
        held,
        given: new.key.key_id,
    }
}

/// A `data_key` row.
///
/// Its `conversation_id` column holds the key's owner, of any kind: the name dates from when
/// only conversations had keys, and is kept so that existing key databases open unchanged.
struct StoredKey {
    owner: KeyOwner,
    key_id: KeyId,
    wraps: Vec<(MasterKeyId, Vec<u8>)>,
}

impl StoredKey {
    fn from_row(row: &PgRow) -> KeyResult<Self> {
        let get_str = |c: &str| row.try_get::<String, _>(c).map_err(map_err);
        let mut wraps = vec![(
            parse_master(&get_str("master_key_id")?)?,
            row.try_get("wrapped").map_err(map_err)?,
        )];
        let other: Option<String> = row.try_get("other_master_key_id").map_err(map_err)?;
        if let (Some(other), Some(wrapped)) = (
            other,
            row.try_get::<Option<Vec<u8>>, _>("other_wrapped")
                .map_err(map_err)?,
        ) {
            wraps.push((parse_master(&other)?, wrapped));
        }
        Ok(Self {
            owner: parse_owner(&get_str("conversation_id")?)?,
            key_id: parse_key_id(&get_str("data_key_id")?)?,
            wraps,
        })
    }

    fn wrap_under(&self, master: MasterKeyId) -> Option<&[u8]> {
        self.wraps
            .iter()
            .find(|(m, _)| *m == master)
            .map(|(_, w)| w.as_slice())
    }

    fn unwrap_error(&self, master: &MasterKey) -> KeyError {
        KeyError::Unwrap {
            owner: self.owner.clone(),
            key_id: self.key_id,
            master: master.id(),
        }
    }
}

/// Reads the header, with `lock` (`""`, `FOR SHARE`, `FOR UPDATE`) on a transaction or the pool.
async fn read_header<'e>(executor: impl sqlx::PgExecutor<'e>, lock: &str) -> KeyResult<Header> {
    let row = sqlx::query(&format!(
        "SELECT master_key_id, rotation, other_master_key_id, previous_master_key_id FROM key_store \
         WHERE key_store_id = 1 {lock}"
    ))
    .fetch_optional(executor)
    .await
    .map_err(map_err)?
    .ok_or_else(|| KeyError::Corrupt("the key database has no key_store row".into()))?;
    let master = parse_master(&row.try_get::<String, _>("master_key_id").map_err(map_err)?)?;
    let other: Option<String> = row.try_get("other_master_key_id").map_err(map_err)?;
    let other = other.as_deref().map(parse_master).transpose()?;
    let rotation = match (
        row.try_get::<String, _>("rotation").map_err(map_err)?.as_str(),
        other,
    ) {
        ("none", None) => None,
        ("rewrapping", Some(to)) => Some(UnfinishedRotation::Rewrapping { from: master, to }),
        ("retiring", Some(from)) => Some(UnfinishedRotation::Retiring { from, to: master }),
        (state, _) => return Err(KeyError::Corrupt(format!("unknown rotation state {state:?}"))),
    };
    let previous: Option<String> = row.try_get("previous_master_key_id").map_err(map_err)?;
    let previous = previous.as_deref().map(parse_master).transpose()?;
    Ok(Header {
        master,
        rotation,
        previous,
    })
}

async fn lock_header(tx: &mut Transaction<'_, Postgres>, lock: &str) -> KeyResult<Header> {
    read_header(&mut **tx, lock).await
}

async fn set_header(
    tx: &mut Transaction<'_, Postgres>,
    master: MasterKeyId,
    rotation: Option<UnfinishedRotation>,
    previous: Option<MasterKeyId>,
) -> KeyResult<()> {
    let (state, other) = match rotation {
        None => ("none", None),
        Some(UnfinishedRotation::Rewrapping { to, .. }) => ("rewrapping", Some(to)),
        Some(UnfinishedRotation::Retiring { from, .. }) => ("retiring", Some(from)),
    };
    sqlx::query(
        "UPDATE key_store SET master_key_id = $1, rotation = $2, other_master_key_id = $3, \
         previous_master_key_id = $4 WHERE key_store_id = 1",
    )
    .bind(master.to_string())
    .bind(state)
    .bind(other.map(|o| o.to_string()))
    .bind(previous.map(|p| p.to_string()))
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

fn check_master(header: Header, given: MasterKeyId) -> KeyResult<()> {
    if header.master == given {
        Ok(())
    } else {
        Err(header.mismatch(given))
    }
}

fn report(progress: Progress<'_>, phase: RotationPhase, done: u64, total: u64) -> KeyResult<()> {
    let done = done.min(total);
    match progress(RotationProgress { phase, done, total }) {
        std::ops::ControlFlow::Continue(()) => Ok(()),
        std::ops::ControlFlow::Break(()) => Err(KeyError::RotationInterrupted),
    }
}

fn parse_master(raw: &str) -> KeyResult<MasterKeyId> {
    MasterKeyId::parse(raw).ok_or_else(|| KeyError::Corrupt(format!("malformed master key id {raw:?}")))
}

fn parse_key_id(raw: &str) -> KeyResult<KeyId> {
    KeyId::parse(raw).map_err(|_| KeyError::Corrupt(format!("malformed key id {raw:?}")))
}

fn parse_owner(raw: &str) -> KeyResult<KeyOwner> {
    KeyOwner::parse(raw).map_err(|_| KeyError::Corrupt(format!("malformed key owner {raw:?}")))
}

/// SQLSTATEs that mean the server cannot serve us now, though it may shortly (as the content
/// store reads them): connection exceptions, shutdown, starting up, no connection slot.
fn is_unavailable_code(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

fn map_err(e: sqlx::Error) -> KeyError {
    match &e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unavailable_code(&c)) => {
            KeyError::Unavailable(e.to_string())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => KeyError::Unavailable(e.to_string()),
        _ => KeyError::Database(e.to_string()),
    }
}

/// Runs `VACUUM data_key` in the background after destroys, coalesced: at most one running and
/// one more queued. It makes dead tuples' space reusable sooner; it zeroes nothing.
#[derive(Default)]
struct Vacuumer {
    dirty: AtomicBool,
    running: AtomicBool,
}

impl Vacuumer {
    fn request(self: &Arc<Self>, pool: &PgPool) {
        self.dirty.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (me, pool) = (Arc::clone(self), pool.clone());
        tokio::spawn(async move {
            loop {
                while me.dirty.swap(false, Ordering::SeqCst) {
                    // VACUUM cannot run in a transaction: one statement over the simple protocol.
                    if let Err(e) = sqlx::raw_sql("VACUUM data_key").execute(&pool).await {
                        tracing::debug!(error = %e, "vacuum of the key table failed; autovacuum will cover it");
                    }
                }
                me.running.store(false, Ordering::SeqCst);
                // A request between the last check and `running = false` left the work to us.
                if !me.dirty.load(Ordering::SeqCst) || me.running.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        });
    }
}
