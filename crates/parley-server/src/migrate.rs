//! `parley migrate-store`: copy every row, data key and blob from one store to another, then verify.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use parley_blobs::{BlobKey, Blobs};
use parley_domain::{ConversationId, KeyOwner, Timestamp};
use parley_keys::{ImportedKey, KeyStore, MasterKey, PgKeyStore, SlotFileKeyStore};
use parley_store::ConversationStore;
use parley_store::table::{Row, Table, Value};

use crate::app::{
    MASTER_KEY_VAR, create_slot_file, generate_master_key, load_master_key, lock_database, open_blob_url,
    open_store,
};
use crate::config::{Database, KeyStoreLocation, MigrateConfig, StoreConfig};
use crate::progress::Progress;
use crate::sealed;

/// Copies `--from` into `--to`, with the data keys that open its content, and checks that every
/// count matches and that every conversation's content opens in the destination.
///
/// The destination must be empty, or hold what an earlier run from the same source left when it
/// failed or was killed: rows are imported by key and skipped when already there, keys already
/// there are skipped, and blobs of the right size are not copied again, so a rerun finishes the
/// copy.
pub async fn migrate_store(c: MigrateConfig) -> anyhow::Result<()> {
    let from = side(&c.from);
    let to = side(&c.to);
    let (from_db, to_db) = (from.database()?, to.database()?);
    ensure!(from_db != to_db, "--from and --to name the same database");
    // A server writing to an embedded source would make the copy inconsistent.
    let _lock = match &from_db {
        Database::Sqlite(path) => Some(lock_database(path).context("stop the servers on the source first")?),
        Database::Postgres(_) => None,
    };
    let src = open_store(&from).await.context("opening the source")?;
    let dst = open_store(&to).await.context("opening the destination")?;
    let endpoint = c.s3_endpoint.as_deref();
    let region = c.s3_region.as_deref();
    let src_blobs = blobs_of(
        &from_db,
        c.from_blob_url.as_deref(),
        "--from-blob-url",
        endpoint,
        region,
    )?;
    let dst_blobs = blobs_of(
        &to_db,
        c.to_blob_url.as_deref(),
        "--to-blob-url",
        endpoint,
        region,
    )?;

    let mut counts = Vec::new();
    for table in Table::ALL {
        counts.push(src.count_rows(table).await?);
    }
    let resuming = check_destination(src.as_ref(), dst.as_ref(), &counts, c.batch_size).await?;
    if resuming {
        eprintln!(
            "the destination already holds an earlier copy (or part of one) from this source: completing and verifying it"
        );
    }
    // After the check, so a refused destination gets no key store or master key file; before the
    // copy, so a key store that does not open fails it before any row is written.
    let keys = open_key_stores(&c).await?;
    let blobs = stored_blobs(&src_blobs)
        .await
        .context("listing the source's blobs")?;
    let blob_bytes: u64 = blobs.iter().map(|(_, size)| size).sum();
    let present: HashMap<String, u64> = stored_blobs(&dst_blobs)
        .await
        .context("listing the destination's blobs")?
        .into_iter()
        .collect();

    let conversations = counts[Table::ALL
        .iter()
        .position(|t| *t == Table::Conversation)
        .expect("a stored table")];
    let total = counts.iter().sum::<u64>() + conversations + blobs.len() as u64;
    let bar = Progress::new(total);
    for (table, count) in Table::ALL.into_iter().zip(&counts) {
        bar.label(table.name());
        let started = Instant::now();
        copy_table(src.as_ref(), dst.as_ref(), table, c.batch_size, &bar).await?;
        bar.note(&format!(
            "{}: {count} rows in {:.1?}, {} of {total} items done",
            table.name(),
            started.elapsed(),
            bar.position()
        ));
    }
    bar.label("data keys");
    let started = Instant::now();
    let found = copy_keys(src.as_ref(), &keys, c.batch_size, &bar).await?;
    bar.note(&format!(
        "data keys: {} keys in {:.1?}, {} of {total} items done",
        found.with_key,
        started.elapsed(),
        bar.position()
    ));
    bar.label("blobs");
    copy_blobs(&src_blobs, &dst_blobs, &blobs, &present, &bar).await?;
    bar.finish();
    keys.report(&found).await?;

    // Verify from the destination itself, not from what we think we wrote.
    println!("{:<16} {:>10} {:>10}", "TABLE", "SOURCE", "COPIED");
    for (table, expected) in Table::ALL.into_iter().zip(&counts) {
        let copied = dst.count_rows(table).await?;
        println!("{:<16} {expected:>10} {copied:>10}", table.name());
        ensure!(
            copied == *expected,
            "{}: {copied} rows copied of {expected}",
            table.name()
        );
    }
    let opened = verify_keys(dst.as_ref(), keys.dst(), c.batch_size).await?;
    println!("{:<16} {:>10} {opened:>10}", "data keys", found.with_key);
    ensure!(
        opened == found.with_key,
        "data keys: {opened} of the destination's conversations and resources have their key, of {} in the source",
        found.with_key
    );
    let copied = stored_blobs(&dst_blobs).await?;
    let copied_bytes: u64 = copied.iter().map(|(_, size)| size).sum();
    println!("{:<16} {:>10} {:>10}", "blobs", blobs.len(), copied.len());
    ensure!(
        copied.len() == blobs.len() && copied_bytes == blob_bytes,
        "blobs: {} ({copied_bytes} bytes) copied of {} ({blob_bytes} bytes)",
        copied.len(),
        blobs.len()
    );
    eprintln!(
        "migrated and verified: every table and blob count matches, and every conversation's \
         content opens with the destination's keys"
    );
    src.close().await;
    dst.close().await;
    Ok(())
}

/// Whether the destination already holds part of a copy from this source (false when empty).
///
/// Accounts are copied first and carry their creation time to the microsecond, so a destination
/// whose accounts are all identical to the source's is a copy of it; anything else is another
/// store, which this command never merges into.
async fn check_destination(
    src: &dyn ConversationStore,
    dst: &dyn ConversationStore,
    counts: &[u64],
    batch: u32,
) -> anyhow::Result<bool> {
    let mut held = 0;
    for (table, count) in Table::ALL.into_iter().zip(counts) {
        let n = dst.count_rows(table).await?;
        ensure!(
            n <= *count,
            "the destination holds more {} rows than the source: migrate into an empty store",
            table.name()
        );
        held += n;
    }
    if held == 0 {
        return Ok(false);
    }
    let source_accounts = all_rows(src, Table::Account, batch).await?;
    for account in all_rows(dst, Table::Account, batch).await? {
        ensure!(
            source_accounts.contains(&account),
            "the destination holds data that is not from this source: migrate into an empty store"
        );
    }
    ensure!(
        !source_accounts.is_empty() && dst.count_rows(Table::Account).await? > 0,
        "the destination holds data that is not from this source: migrate into an empty store"
    );
    Ok(true)
}

/// The data keys of both sides.
struct KeyStores {
    src: Arc<dyn KeyStore>,
    /// The destination's own key store; `None` when it shares the source's, so nothing is copied.
    dst: Option<Arc<dyn KeyStore>>,
    /// The destination's key store as named, for messages.
    dst_name: String,
}

/// What the key copy found.
#[derive(Debug, Default)]
struct KeysFound {
    /// Source conversations with a key (all of them copied, or already there).
    with_key: u64,
    /// Source conversations without one: their content was unavailable already.
    without_key: u64,
    /// Keys this run wrote into the destination.
    imported: u64,
}

impl KeyStores {
    /// The key store the destination's servers will use.
    fn dst(&self) -> &dyn KeyStore {
        self.dst.as_deref().unwrap_or(self.src.as_ref())
    }

    /// Says what happened to the keys, on stderr.
    async fn report(&self, found: &KeysFound) -> anyhow::Result<()> {
        let name = &self.dst_name;
        if self.dst.is_none() {
            eprintln!(
                "data keys: both sides use the key store {name}, so no key was copied; run the \
                 destination's servers with it (--key-store) and its master key"
            );
        } else {
            eprintln!(
                "data keys: {} copied into {name}, {} already there",
                found.imported,
                found.with_key - found.imported
            );
            let held = self
                .src
                .status()
                .await
                .context("counting the source's keys")?
                .keys;
            if let Some(orphans) = held.checked_sub(found.with_key).filter(|n| *n > 0) {
                eprintln!(
                    "data keys without a conversation in the source (left by creates that failed), \
                     not copied: {orphans}"
                );
            }
        }
        if found.without_key > 0 {
            eprintln!(
                "conversations without a data key in the source (their content was unavailable \
                 there already, and stays so): {}",
                found.without_key
            );
        }
        let master = self.dst().status().await?.master_key_id;
        eprintln!("data keys: the destination's key store {name} uses master key {master}");
        Ok(())
    }
}

/// Opens the source's key store and the destination's (creating a new slot file, and a master key
/// for it if its file is named and missing), or the one store both sides share.
async fn open_key_stores(c: &MigrateConfig) -> anyhow::Result<KeyStores> {
    let (from, to) = (c.from_keys(), c.to_keys());
    let master = load_master_key(&from)?.with_context(|| {
        format!(
            "the source's key store {} needs its master key: set {MASTER_KEY_VAR} or \
             --from-master-key-file (now {}, which does not exist)",
            from.key_store,
            from.master_key_file.display()
        )
    })?;
    let src: Arc<dyn KeyStore> = match from.location() {
        KeyStoreLocation::SlotFile(path) => Arc::new(
            SlotFileKeyStore::open(&path, master.clone())
                .await
                .with_context(|| {
                    format!(
                        "opening the source's key store {} (--from-key-store; stop the servers on \
                         the source first)",
                        path.display()
                    )
                })?,
        ),
        KeyStoreLocation::Postgres(url) => Arc::new(
            PgKeyStore::connect(&url, master.clone())
                .await
                .context("connecting to the source's key database (--from-key-store)")?,
        ),
    };
    if same_key_store(&from.location(), &to.location()) {
        ensure!(
            c.to_master_key_file.is_none(),
            "--to-master-key-file: both sides use the key store {}, which has one master key",
            from.key_store
        );
        return Ok(KeyStores {
            src,
            dst: None,
            dst_name: from.key_store,
        });
    }
    // The source's master key unless the destination names its own file.
    let dst_master = match &c.to_master_key_file {
        None => Some(master),
        Some(path) if path.exists() => Some(MasterKey::load_file(path)?),
        Some(_) => None,
    };
    let missing = || {
        anyhow!(
            "the destination's master key file {} does not exist: only a new slot file gets a new \
             master key",
            to.master_key_file.display()
        )
    };
    let dst: Arc<dyn KeyStore> = match to.location() {
        KeyStoreLocation::SlotFile(path) if path.exists() => {
            let master = dst_master.ok_or_else(missing)?;
            Arc::new(SlotFileKeyStore::open(&path, master).await.with_context(|| {
                format!(
                    "opening the destination's key store {} (--to-key-store)",
                    path.display()
                )
            })?)
        }
        KeyStoreLocation::SlotFile(path) => {
            let master = match dst_master {
                Some(master) => master,
                None => {
                    let master = generate_master_key(&to.master_key_file)?;
                    eprintln!(
                        "data keys: made a new master key {} in {} for the destination: back it up \
                         apart from the data and the key store; losing it loses every conversation \
                         (docs/KEYS.md)",
                        master.id(),
                        to.master_key_file.display()
                    );
                    master
                }
            };
            let store = create_slot_file(&path, master).await?;
            eprintln!("data keys: created the key store {}", path.display());
            Arc::new(store)
        }
        KeyStoreLocation::Postgres(url) => {
            let master = dst_master.ok_or_else(missing)?;
            Arc::new(
                PgKeyStore::connect(&url, master)
                    .await
                    .context("connecting to the destination's key database (--to-key-store)")?,
            )
        }
    };
    Ok(KeyStores {
        src,
        dst: Some(dst),
        dst_name: to.key_store,
    })
}

/// Whether two key store names are one store: the same slot file, or the same database URL.
fn same_key_store(a: &KeyStoreLocation, b: &KeyStoreLocation) -> bool {
    match (a, b) {
        (KeyStoreLocation::SlotFile(a), KeyStoreLocation::SlotFile(b)) => {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
        }
        (KeyStoreLocation::Postgres(a), KeyStoreLocation::Postgres(b)) => {
            a.trim_end_matches('/') == b.trim_end_matches('/')
        }
        _ => false,
    }
}

/// Copies the key of every source conversation that has one, a page of conversations at a time.
///
/// Keys are found through the conversations, so a key whose conversation is gone (destroyed keys
/// are gone already) is never copied. A key is made in the same instant as its conversation, so
/// the conversation's creation time is the key's.
async fn copy_keys(
    src: &dyn ConversationStore,
    keys: &KeyStores,
    batch: u32,
    bar: &Progress,
) -> anyhow::Result<KeysFound> {
    let mut found = KeysFound::default();
    // Conversations, then resources: every row that owns a key.
    for table in [Table::Conversation, Table::Resource] {
        let mut after: Option<Row> = None;
        loop {
            let rows = src.export_rows(table, after.as_ref(), batch).await?;
            let Some(last) = rows.last() else {
                break;
            };
            let owners = rows
                .iter()
                .map(|row| owner_of(table, row))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let held = keys
                .src
                .get_many(&owners)
                .await
                .context("reading the source's keys")?;
            let mut page = Vec::with_capacity(rows.len());
            for ((owner, row), key) in owners.into_iter().zip(&rows).zip(held) {
                match key {
                    Some(key) => page.push(ImportedKey {
                        owner,
                        key,
                        created_at: Timestamp::from_micros(int_of(table, row, "created_at")?),
                    }),
                    None => found.without_key += 1,
                }
            }
            found.with_key += page.len() as u64;
            if let Some(dst) = &keys.dst {
                found.imported += dst
                    .import(&page)
                    .await
                    .context("copying data keys into the destination's key store")?;
            }
            if table == Table::Conversation {
                bar.inc(rows.len() as u64);
            }
            after = Some(last.clone());
        }
    }
    Ok(found)
}

/// Whose key a row of `table` names.
fn owner_of(table: Table, row: &Row) -> anyhow::Result<KeyOwner> {
    match table {
        Table::Conversation => conversation_of(row).map(KeyOwner::from),
        _ => match column_of(table, row, "row_id") {
            Value::Text(id) => {
                KeyOwner::parse(id).map_err(|_| anyhow!("a stored resource row id is malformed: {id:?}"))
            }
            other => bail!("a stored resource row id is not text: {other:?}"),
        },
    }
}

/// Counts the destination's conversations whose key its key store holds, opening each one's
/// sealed create request with that key, so a key that is there but wrong fails the check.
async fn verify_keys(dst: &dyn ConversationStore, keys: &dyn KeyStore, batch: u32) -> anyhow::Result<u64> {
    let mut opened = 0;
    let mut after: Option<Row> = None;
    loop {
        let rows = dst
            .export_rows(Table::Conversation, after.as_ref(), batch)
            .await?;
        let Some(last) = rows.last() else {
            break;
        };
        let ids = rows
            .iter()
            .map(conversation_of)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let owners: Vec<KeyOwner> = ids.iter().map(KeyOwner::from).collect();
        let held = keys
            .get_many(&owners)
            .await
            .context("reading the destination's keys")?;
        for ((id, row), key) in ids.iter().zip(&rows).zip(held) {
            let Some(key) = key else { continue };
            let request = match column(row, "request_json") {
                Value::Text(sealed) => sealed.as_str(),
                _ => "",
            };
            ensure!(
                sealed::request_opens(&key.key, id, request),
                "conversation {id}: its content does not open under its key {} in the destination's \
                 key store",
                key.key_id
            );
            opened += 1;
        }
        after = Some(last.clone());
    }
    Ok(opened + verify_resource_keys(dst, keys, batch).await?)
}

/// Counts the destination's resources whose key its key store holds, opening each one's body
/// with that key.
async fn verify_resource_keys(
    dst: &dyn ConversationStore,
    keys: &dyn KeyStore,
    batch: u32,
) -> anyhow::Result<u64> {
    let mut opened = 0;
    let mut after: Option<Row> = None;
    loop {
        let rows = dst.export_rows(Table::Resource, after.as_ref(), batch).await?;
        let Some(last) = rows.last() else {
            return Ok(opened);
        };
        let owners = rows
            .iter()
            .map(|row| owner_of(Table::Resource, row))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let held = keys
            .get_many(&owners)
            .await
            .context("reading the destination's keys")?;
        for (owner, key) in owners.iter().zip(held) {
            let Some(key) = key else { continue };
            let Some(resource) = dst.load_resource(owner.as_str()).await? else {
                continue;
            };
            let body = sealed::resource::open(Some(&key.key), owner, resource).body;
            ensure!(
                body != sealed::resource::UNAVAILABLE,
                "resource {owner}: its content does not open under its key {} in the destination's key store",
                key.key_id
            );
            opened += 1;
        }
        after = Some(last.clone());
    }
}

/// A value of a conversation row.
fn column<'r>(row: &'r Row, name: &str) -> &'r Value {
    column_of(Table::Conversation, row, name)
}

/// A value of a row of `table`.
fn column_of<'r>(table: Table, row: &'r Row, name: &str) -> &'r Value {
    let at = table
        .columns()
        .iter()
        .position(|(column, _)| *column == name)
        .expect("a column of the table, named by us");
    &row[at]
}

fn conversation_of(row: &Row) -> anyhow::Result<ConversationId> {
    match column(row, "conversation_id") {
        Value::Text(id) => {
            ConversationId::parse(id).map_err(|_| anyhow!("a stored conversation id is malformed: {id:?}"))
        }
        other => bail!("a stored conversation id is not text: {other:?}"),
    }
}

fn int_of(table: Table, row: &Row, name: &str) -> anyhow::Result<i64> {
    match column_of(table, row, name) {
        Value::Int(n) => Ok(*n),
        other => bail!("{}.{name} is not an integer: {other:?}", table.name()),
    }
}

async fn all_rows(store: &dyn ConversationStore, table: Table, batch: u32) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    loop {
        let page = store.export_rows(table, rows.last(), batch).await?;
        if page.is_empty() {
            return Ok(rows);
        }
        rows.extend(page);
    }
}

fn side(url: &str) -> StoreConfig {
    StoreConfig {
        data_dir: ".".into(),
        database_url: Some(url.to_owned()),
    }
}

/// One side's blobs: the URL given, else `blobs/` beside an embedded database (a shared one has
/// no place to guess).
fn blobs_of(
    db: &Database,
    url: Option<&str>,
    flag: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> anyhow::Result<Blobs> {
    let default = match (db, url) {
        (Database::Sqlite(path), _) => path
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("blobs"),
        (Database::Postgres(_), Some(_)) => std::path::PathBuf::new(),
        (Database::Postgres(_), None) => bail!("a PostgreSQL side needs {flag} (a folder or s3://…)"),
    };
    open_blob_url(url, &default, endpoint, region)
}

async fn copy_table(
    src: &dyn ConversationStore,
    dst: &dyn ConversationStore,
    table: Table,
    batch: u32,
    bar: &Progress,
) -> anyhow::Result<()> {
    let mut after: Option<Row> = None;
    loop {
        let rows = src.export_rows(table, after.as_ref(), batch).await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        dst.import_rows(table, &rows)
            .await
            .with_context(|| format!("copying {}", table.name()))?;
        bar.inc(rows.len() as u64);
        after = Some(last.clone());
    }
}

/// Every blob parley keeps: conversations' and resources'.
async fn stored_blobs(blobs: &Blobs) -> anyhow::Result<Vec<(String, u64)>> {
    let mut all = blobs.list_prefix(BlobKey::ROOT).await?;
    all.extend(blobs.list_prefix(BlobKey::RESOURCE_ROOT).await?);
    Ok(all)
}

async fn copy_blobs(
    src: &Blobs,
    dst: &Blobs,
    keys: &[(String, u64)],
    present: &HashMap<String, u64>,
    bar: &Progress,
) -> anyhow::Result<()> {
    for (key, size) in keys {
        // A blob is written whole or not at all, so one of the right size is done.
        if present.get(key) != Some(size) {
            let bytes = src.get(key).await.with_context(|| format!("reading {key}"))?;
            dst.put_key(key, bytes)
                .await
                .with_context(|| format!("writing {key}"))?;
        }
        bar.inc(1);
    }
    Ok(())
}
