//! `parley verify`: cross-checks conversations, their data keys, blobs, erasure receipts and purge
//! jobs, and with `--repair` finishes what a crash (or a lost key) left half done.
//!
//! Memory: the key store's list is read whole (`KeyStore::list`: owner, key id and time, up
//! to about 150 bytes a key), conversations and receipts are paged by key, only purge and finalize
//! jobs are kept from the job table, and the blob listing is streamed; so a check holds the keys,
//! the pending purges and its findings, never every conversation. Every finding is looked up again
//! on its own before it is reported, so a conversation made or erased during the scan of a live
//! shared store is not reported as damage. The README (`parley verify`) lists the findings.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use parley_blobs::{BlobKey, Blobs};
use parley_domain::{ConversationId, KeyOwner, Timestamp};
use parley_keys::{KeyError, KeyId, KeyInfo, KeyStore, PgKeyStore, SlotFileKeyStore, is_sealed_text};
use parley_store::table::{Row, Table, Value};
use parley_store::{ConversationStore, DeleteScope, HardDeleteOutcome, Job, JobKind};
use parley_store_postgres::PostgresStore;
use parley_store_sqlite::SqliteStore;
use serde::Serialize;

use crate::app::{MASTER_KEY_VAR, load_master_key, lock_database, open_blobs};
use crate::config::{Database, KeyStoreLocation, VerifyConfig};
use crate::jobs::purge_conversation;
use crate::sealed::{SealedStore, key_error};

/// Rows read per page.
const PAGE: u32 = 1000;
/// A purge claimed this many times without finishing is stuck.
const STUCK_ATTEMPTS: u32 = 5;
/// A purge due this long ago and still there is stuck: no server runs jobs, or every attempt fails.
const STUCK_AFTER: Duration = Duration::from_secs(3600);
/// How long a repair holds the purge job of a conversation it erases, as a server's inline purge does.
const LEASE: Duration = Duration::from_secs(300);

/// What a finding is about. Each is a problem (the exit status is 1 while one remains) except
/// `purge-pending` and `recent-orphan-key`, which are work in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A conversation whose data key is gone: its content can never be read again.
    KeyMissing,
    /// A conversation without a key whose content was stored before sealing: plaintext at rest.
    Unsealed,
    /// A blob of a conversation whose key is gone.
    BlobWithoutKey,
    /// A blob that a conversation's asset row names, gone from the blob store.
    MissingBlob,
    /// A blob of a conversation that has no row, and no purge or finalisation pending.
    OrphanBlob,
    /// An object under `conversations/` that no conversation id names.
    StrayBlob,
    /// A key of no conversation and no receipt: a create that died between key and row.
    OrphanKey,
    /// A key of an erased conversation (it has a receipt) with no purge pending: must be destroyed.
    ErasedKeyRemains,
    /// A receipt whose key destruction is not recorded, though no key remains.
    ReceiptUnrecorded,
    /// A purge that keeps failing, or that no server has run for long.
    PurgeStuck,
    /// A purge (or the finalisation of an erased conversation) that has yet to run.
    PurgePending,
    /// A key of no conversation younger than `--grace` on a shared key store: maybe a create in flight.
    RecentOrphanKey,
}

impl Kind {
    /// The name printed at the start of the finding's line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeyMissing => "key-missing",
            Self::Unsealed => "unsealed",
            Self::BlobWithoutKey => "blob-without-key",
            Self::MissingBlob => "missing-blob",
            Self::OrphanBlob => "orphan-blob",
            Self::StrayBlob => "stray-blob",
            Self::OrphanKey => "orphan-key",
            Self::ErasedKeyRemains => "erased-key-remains",
            Self::ReceiptUnrecorded => "receipt-unrecorded",
            Self::PurgeStuck => "purge-stuck",
            Self::PurgePending => "purge-pending",
            Self::RecentOrphanKey => "recent-orphan-key",
        }
    }

    /// Whether it makes the check fail; the others are work under way.
    pub const fn is_problem(self) -> bool {
        !matches!(self, Self::PurgePending | Self::RecentOrphanKey)
    }
}

/// What `--repair` did about a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "why", rename_all = "kebab-case")]
pub enum Repair {
    Repaired,
    /// It was tried and failed.
    Failed(String),
    /// It was left alone on purpose.
    Left(String),
}

/// One thing found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// The conversation it is about (for a stray blob, nothing: see `blob`; for a key that is
    /// not a conversation's, nothing: see `key_owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<ConversationId>,
    /// The owner of a key that is not a conversation's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_owner: Option<KeyOwner>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The blob's key, for findings about one blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Facts as `name=value`: times, counts, the job and its last error.
    pub detail: BTreeMap<&'static str, String>,
    /// Set with `--repair`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<Repair>,
}

impl Finding {
    fn new(kind: Kind, id: &ConversationId) -> Self {
        Self {
            kind,
            conversation_id: Some(id.clone()),
            key_owner: None,
            key_id: None,
            blob: None,
            detail: BTreeMap::new(),
            repair: None,
        }
    }

    /// A finding about a key whose owner is not a conversation.
    fn of_key(kind: Kind, owner: &KeyOwner) -> Self {
        Self {
            kind,
            conversation_id: None,
            key_owner: Some(owner.clone()),
            key_id: None,
            blob: None,
            detail: BTreeMap::new(),
            repair: None,
        }
    }

    fn key(mut self, key_id: KeyId) -> Self {
        self.key_id = Some(key_id.to_string());
        self
    }

    fn blob(mut self, blob: &str) -> Self {
        self.blob = Some(blob.to_owned());
        self
    }

    fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.detail.insert(name, value.to_string());
        self
    }

    /// Whether it still counts against the check.
    pub fn remains(&self) -> bool {
        self.kind.is_problem() && self.repair != Some(Repair::Repaired)
    }

    /// Its line: `kind conversation|owner [key] [blob] [name=value…] [-> repair]`.
    pub fn line(&self) -> String {
        let mut line = self.kind.as_str().to_owned();
        for word in [
            self.conversation_id.as_ref().map(ConversationId::as_str),
            self.key_owner.as_ref().map(KeyOwner::as_str),
            self.key_id.as_deref(),
            self.blob.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            line.push(' ');
            line.push_str(word);
        }
        for (name, value) in &self.detail {
            // Values with spaces (an error message) are quoted, so a line splits on whitespace.
            if value.is_empty() || value.contains(char::is_whitespace) || value.contains('"') {
                line.push_str(&format!(" {name}={value:?}"));
            } else {
                line.push_str(&format!(" {name}={value}"));
            }
        }
        match &self.repair {
            None => {}
            Some(Repair::Repaired) => line.push_str(" -> repaired"),
            Some(Repair::Failed(why)) => line.push_str(&format!(" -> repair failed: {why}")),
            Some(Repair::Left(why)) => line.push_str(&format!(" -> left: {why}")),
        }
        line
    }
}

/// What was looked at.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Checked {
    pub conversations: u64,
    pub keys: u64,
    pub blobs: u64,
    pub assets: u64,
    pub receipts: u64,
    pub purges: u64,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checked: Checked,
    pub findings: Vec<Finding>,
    /// Whether `--repair` was given.
    pub repair: bool,
}

impl Report {
    /// Problems not repaired.
    pub fn remaining(&self) -> usize {
        self.findings.iter().filter(|f| f.remains()).count()
    }

    /// True when no problem remains (work in progress may).
    pub fn clean(&self) -> bool {
        self.remaining() == 0
    }

    /// The last line: counts as `name=value`.
    pub fn summary(&self) -> String {
        let c = &self.checked;
        let problems = self.findings.iter().filter(|f| f.kind.is_problem()).count();
        let repaired = self
            .findings
            .iter()
            .filter(|f| f.kind.is_problem() && f.repair == Some(Repair::Repaired))
            .count();
        let pending = self.findings.len() - problems;
        format!(
            "summary conversations={} keys={} blobs={} assets={} receipts={} purges={} \
             problems={problems} repaired={repaired} remaining={} pending={pending} status={}",
            c.conversations,
            c.keys,
            c.blobs,
            c.assets,
            c.receipts,
            c.purges,
            self.remaining(),
            if self.clean() { "clean" } else { "findings" },
        )
    }
}

/// `parley verify`: checks, repairs if asked, prints the report; an error means the check could
/// not be made (exit 2).
pub async fn verify(config: VerifyConfig) -> anyhow::Result<Report> {
    let opened = open(&config).await?;
    let report = check(&opened, &config).await;
    // Both stores: the slot file's lock goes at once, and the key database's pool with it.
    opened.sealed.close().await;
    let report = report?;
    let mut out = std::io::stdout().lock();
    if config.format == "json" {
        let json = serde_json::json!({
            "checked": report.checked,
            "findings": report.findings,
            "repair": report.repair,
            "remaining": report.remaining(),
            "clean": report.clean(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        for finding in &report.findings {
            writeln!(out, "{}", finding.line())?;
        }
        writeln!(out, "{}", report.summary())?;
    }
    Ok(report)
}

/// The stores, opened for a check.
struct Opened {
    inner: Arc<dyn ConversationStore>,
    keys: Arc<dyn KeyStore>,
    sealed: SealedStore,
    blobs: Blobs,
    /// A PostgreSQL key store: other processes may be creating keys as we look.
    shared_keys: bool,
    /// Held while checking an embedded database, as a server holds it.
    _lock: Option<std::fs::File>,
}

/// Opens the stores without making any: a check of a fresh, empty database or key store would
/// call everything in the other an orphan.
async fn open(config: &VerifyConfig) -> anyhow::Result<Opened> {
    let (inner, lock): (Arc<dyn ConversationStore>, _) = match config.store.database()? {
        Database::Sqlite(path) => {
            anyhow::ensure!(
                path.exists(),
                "no database at {}: check --data-dir or --database-url",
                path.display()
            );
            let lock = lock_database(&path)
                .context("parley verify needs the database to itself: stop the server")?;
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening database {}", path.display()))?;
            (Arc::new(store), Some(lock))
        }
        Database::Postgres(url) => {
            let store = PostgresStore::connect(&url)
                .await
                .context("connecting to PostgreSQL")?;
            (Arc::new(store), None)
        }
    };
    let master = load_master_key(&config.keys)?.with_context(|| {
        format!(
            "parley verify needs the master key: set {MASTER_KEY_VAR} or --master-key-file (now {}, which does not exist)",
            config.keys.master_key_file.display()
        )
    })?;
    let (keys, shared_keys): (Arc<dyn KeyStore>, bool) = match config.keys.location() {
        KeyStoreLocation::SlotFile(path) => {
            anyhow::ensure!(
                path.exists(),
                "no key store at {}: check --key-store",
                path.display()
            );
            let store = SlotFileKeyStore::open(&path, master).await.map_err(|e| match e {
                KeyError::Locked(_) => {
                    anyhow::anyhow!("{e}: parley verify needs it to itself, so stop the server")
                }
                other => {
                    anyhow::Error::new(other).context(format!("opening the key store {}", path.display()))
                }
            })?;
            (Arc::new(store), false)
        }
        KeyStoreLocation::Postgres(url) => {
            let store = PgKeyStore::connect(&url, master)
                .await
                .context("connecting to the key database")?;
            (Arc::new(store), true)
        }
    };
    let blobs = open_blobs(&config.blobs, &config.store)?;
    Ok(Opened {
        sealed: SealedStore::new(inner.clone(), keys.clone()),
        inner,
        keys,
        blobs,
        shared_keys,
        _lock: lock,
    })
}

/// A key as the scan knows it.
struct KeyEntry {
    key_id: KeyId,
    created_at: Timestamp,
    /// The conversation has a row.
    row: bool,
    /// The conversation has an erasure receipt.
    receipt: bool,
    /// Blobs listed under the conversation, while it has a row.
    blobs: u32,
}

/// A pending purge or finalisation.
struct PendingJob {
    id: i64,
    kind: JobKind,
    run_at: Timestamp,
    attempts: u32,
    last_error: Option<String>,
}

/// What the scan found, before each finding is confirmed.
#[derive(Default)]
struct Scan {
    keys: HashMap<ConversationId, KeyEntry>,
    /// Keys whose owner is not a conversation: nothing else in the content store owns a key yet,
    /// so each is an orphan.
    other_keys: Vec<KeyInfo>,
    /// Conversations with a row and no key, with their account.
    keyless: BTreeMap<ConversationId, String>,
    /// Rows whose key is there: evidence that the key store and the content store belong together.
    matched: u64,
    jobs: HashMap<ConversationId, Vec<PendingJob>>,
    /// Receipts with no key destruction recorded and no key left.
    unrecorded: Vec<ConversationId>,
    /// Blobs of conversations without a key, and of conversations without a row.
    blobs_keyless: BTreeMap<ConversationId, Vec<String>>,
    blobs_gone: BTreeMap<ConversationId, Vec<String>>,
    /// Blob keys of asset rows of conversations that have fewer blobs listed than asset rows.
    assets_unlisted: Vec<(ConversationId, Vec<String>)>,
    stray: Vec<String>,
    checked: Checked,
}

/// Column `name` of a table's exported rows.
fn column(table: Table, name: &str) -> usize {
    table
        .columns()
        .iter()
        .position(|(c, _)| *c == name)
        .expect("a column of the table, named by us")
}

fn text(row: &[Value], at: usize) -> Option<&str> {
    match &row[at] {
        Value::Text(t) => Some(t),
        _ => None,
    }
}

fn int(row: &[Value], at: usize) -> Option<i64> {
    match &row[at] {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

async fn scan(o: &Opened) -> anyhow::Result<Scan> {
    let mut s = Scan::default();
    // Keys first: a conversation made during the scan then shows as a row without a key, which
    // the confirmation finds has one; never as a key without a row, which a repair would destroy.
    let listed = o.keys.list().await.map_err(key_error).context("listing keys")?;
    s.checked.keys = listed.len() as u64;
    for info in listed {
        // Whose key it is decides what it is checked against; the owners of other kinds of
        // sealed object get their own arm when their rows are checked.
        match info.owner.as_conversation() {
            Some(id) => {
                s.keys.insert(
                    id,
                    KeyEntry {
                        key_id: info.key_id,
                        created_at: info.created_at,
                        row: false,
                        receipt: false,
                        blobs: 0,
                    },
                );
            }
            None => s.other_keys.push(info),
        }
    }

    let mut after: Option<ConversationId> = None;
    loop {
        let page = o
            .inner
            .list_conversation_ids(after.as_ref(), PAGE)
            .await
            .context("listing conversations")?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        s.checked.conversations += page.len() as u64;
        for c in page {
            match s.keys.get_mut(&c.id) {
                Some(entry) => {
                    entry.row = true;
                    s.matched += 1;
                }
                None => {
                    s.keyless.insert(c.id, c.account);
                }
            }
        }
    }

    let table = Table::Job;
    let (id_at, kind_at, conv_at) = (
        column(table, "job_id"),
        column(table, "kind"),
        column(table, "conversation_id"),
    );
    let (run_at, attempts_at, error_at) = (
        column(table, "run_at"),
        column(table, "attempts"),
        column(table, "last_error"),
    );
    for_each_row(o.inner.as_ref(), table, "listing jobs", |row| {
        let kind = text(row, kind_at).and_then(JobKind::parse);
        let Some(kind @ (JobKind::Purge | JobKind::Finalize)) = kind else {
            return;
        };
        let Some(id) = text(row, conv_at).and_then(|id| ConversationId::parse(id).ok()) else {
            return;
        };
        if kind == JobKind::Purge {
            s.checked.purges += 1;
        }
        s.jobs.entry(id).or_default().push(PendingJob {
            id: int(row, id_at).unwrap_or_default(),
            kind,
            run_at: Timestamp::from_micros(int(row, run_at).unwrap_or_default()),
            attempts: u32::try_from(int(row, attempts_at).unwrap_or_default()).unwrap_or(u32::MAX),
            last_error: text(row, error_at).map(str::to_owned),
        });
    })
    .await?;

    let table = Table::ErasureReceipt;
    let (conv_at, destroyed_at) = (
        column(table, "conversation_id"),
        column(table, "key_destroyed_at"),
    );
    for_each_row(o.inner.as_ref(), table, "listing receipts", |row| {
        s.checked.receipts += 1;
        let Some(id) = text(row, conv_at).and_then(|id| ConversationId::parse(id).ok()) else {
            return;
        };
        match s.keys.get_mut(&id) {
            Some(entry) => entry.receipt = true,
            None if int(row, destroyed_at).is_none() => s.unrecorded.push(id),
            None => {}
        }
    })
    .await?;

    let mut listing = o.blobs.stream_prefix(BlobKey::ROOT);
    while let Some((key, _)) = listing.try_next().await.context("listing blobs")? {
        s.checked.blobs += 1;
        let Some(id) = BlobKey::conversation_of(&key) else {
            s.stray.push(key);
            continue;
        };
        if let Some(entry) = s.keys.get_mut(&id).filter(|e| e.row) {
            entry.blobs = entry.blobs.saturating_add(1);
            continue;
        }
        let into = if s.keyless.contains_key(&id) {
            &mut s.blobs_keyless
        } else {
            &mut s.blobs_gone
        };
        into.entry(id).or_default().push(key);
    }

    // A resource's blobs belong to its row, or to its purge until the job runner finishes it;
    // any other is left over, and shown as stray.
    let purging = resource_purges(o).await?;
    let mut listing = o.blobs.stream_prefix(BlobKey::RESOURCE_ROOT);
    while let Some((key, _)) = listing.try_next().await.context("listing blobs")? {
        s.checked.blobs += 1;
        let owned = match BlobKey::resource_of(&key) {
            Some(row_id) => {
                purging.contains(row_id)
                    || o.inner
                        .load_resource(row_id)
                        .await
                        .context("reading a resource")?
                        .is_some()
            }
            None => false,
        };
        if !owned {
            s.stray.push(key);
        }
    }

    // After the blobs, so that each conversation's asset rows can be counted against its blobs
    // (rows come in key order: a conversation's assets are adjacent).
    let table = Table::Asset;
    let (conv_at, key_at) = (column(table, "conversation_id"), column(table, "blob_key"));
    let mut run: Option<(ConversationId, Vec<String>)> = None;
    for_each_row(o.inner.as_ref(), table, "listing assets", |row| {
        s.checked.assets += 1;
        let (Some(id), Some(key)) = (
            text(row, conv_at).and_then(|id| ConversationId::parse(id).ok()),
            text(row, key_at),
        ) else {
            return;
        };
        if run.as_ref().is_none_or(|(current, _)| *current != id) {
            s.end_asset_run(run.take());
            run = Some((id, Vec::new()));
        }
        if let Some((_, keys)) = &mut run {
            keys.push(key.to_owned());
        }
    })
    .await?;
    s.end_asset_run(run);
    Ok(s)
}

/// Calls `f` on every row of `table`, a page at a time in key order.
/// Row ids of hard-deleted resources whose purge has not finished.
async fn resource_purges(o: &Opened) -> anyhow::Result<HashSet<String>> {
    let pending = o.inner.pending_resource_purges(u32::MAX).await;
    Ok(pending.context("listing resource purges")?.into_iter().collect())
}

async fn for_each_row(
    store: &dyn ConversationStore,
    table: Table,
    what: &'static str,
    mut f: impl FnMut(&Row),
) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let page = store
            .export_rows(table, after.as_ref(), PAGE)
            .await
            .context(what)?;
        page.iter().for_each(&mut f);
        match page.into_iter().last() {
            Some(last) => after = Some(last),
            None => return Ok(()),
        }
    }
}

impl Scan {
    /// Keeps a conversation's asset blob keys if it has fewer blobs than asset rows.
    fn end_asset_run(&mut self, run: Option<(ConversationId, Vec<String>)>) {
        let Some((id, keys)) = run else { return };
        let listed = self.keys.get(&id).filter(|e| e.row).map(|e| e.blobs as usize);
        // Conversations without a key are erased by a repair whatever their blobs.
        if listed.is_some_and(|listed| listed < keys.len()) {
            self.assets_unlisted.push((id, keys));
        }
    }
}

/// The state of one conversation now, looked up on its own.
struct Now {
    row: Option<parley_domain::Conversation>,
    key: bool,
}

async fn now_of(o: &Opened, id: &ConversationId) -> anyhow::Result<Now> {
    let row = o
        .inner
        .load_conversation(id)
        .await
        .with_context(|| format!("loading {id}"))?;
    let key = o
        .keys
        .get(&id.into())
        .await
        .map_err(key_error)
        .with_context(|| format!("reading the key of {id}"))?
        .is_some();
    Ok(Now { row, key })
}

/// The scan's candidates, each confirmed by looking it up again.
async fn findings(o: &Opened, s: &Scan, grace: Duration) -> anyhow::Result<Vec<Finding>> {
    let now = Timestamp::now();
    let mut found = Vec::new();

    for (id, account) in &s.keyless {
        let current = now_of(o, id).await?;
        let Some(row) = current.row.filter(|_| !current.key) else {
            continue;
        };
        if !is_sealed_text(&row.request_json) {
            found.push(Finding::new(Kind::Unsealed, id).with("account", account));
            continue;
        }
        found.push(Finding::new(Kind::KeyMissing, id).with("account", account));
        for blob in s.blobs_keyless.get(id).into_iter().flatten() {
            found.push(Finding::new(Kind::BlobWithoutKey, id).blob(blob));
        }
    }

    let stuck_before = now.plus_millis(-(STUCK_AFTER.as_millis() as i64));
    for (id, jobs) in &s.jobs {
        let purge = jobs.iter().find(|j| j.kind == JobKind::Purge);
        let gone_blobs = s.blobs_gone.get(id).map_or(0, Vec::len);
        let job = match purge {
            Some(job) => job,
            // A finalisation pending for an erased conversation removes what it wrote: worth a
            // line only while there is something for it to remove.
            None if gone_blobs > 0 => &jobs[0],
            None => continue,
        };
        let current = now_of(o, id).await?;
        if current.row.is_some() {
            continue;
        }
        let stuck =
            job.kind == JobKind::Purge && (job.attempts >= STUCK_ATTEMPTS || job.run_at < stuck_before);
        let kind = if stuck {
            Kind::PurgeStuck
        } else {
            Kind::PurgePending
        };
        let mut f = Finding::new(kind, id)
            .with("job", job.id)
            .with("attempts", job.attempts)
            .with("due", job.run_at)
            .with("key", if current.key { "remains" } else { "destroyed" })
            .with("blobs", gone_blobs);
        if job.kind != JobKind::Purge {
            f = f.with("by", job.kind.as_str());
        }
        if let Some(error) = &job.last_error {
            f = f.with("error", error);
        }
        if let Some(key) = s.keys.get(id) {
            f = f.key(key.key_id);
        }
        found.push(f);
    }

    let grace_from = now.plus_millis(-(grace.as_millis().min(i64::MAX as u128) as i64));
    for (id, key) in &s.keys {
        if key.row
            || s.jobs
                .get(id)
                .is_some_and(|j| j.iter().any(|j| j.kind == JobKind::Purge))
        {
            continue;
        }
        let current = now_of(o, id).await?;
        if current.row.is_some() || !current.key {
            continue;
        }
        let kind = if key.receipt {
            Kind::ErasedKeyRemains
        } else if o.shared_keys && key.created_at > grace_from {
            Kind::RecentOrphanKey
        } else {
            Kind::OrphanKey
        };
        found.push(
            Finding::new(kind, id)
                .key(key.key_id)
                .with("created", key.created_at),
        );
    }

    // A resource's key belongs to its row; a hard-deleted resource's, to its purge until the job
    // runner finishes it.
    let purging = resource_purges(o).await?;
    for info in &s.other_keys {
        // Destroyed since the list was read: nothing to report.
        if o.keys.get(&info.owner).await.map_err(key_error)?.is_none() {
            continue;
        }
        let owner = info.owner.as_str();
        if purging.contains(owner)
            || o.inner
                .load_resource(owner)
                .await
                .context("reading a resource")?
                .is_some()
        {
            continue;
        }
        let kind = if o.shared_keys && info.created_at > grace_from {
            Kind::RecentOrphanKey
        } else {
            Kind::OrphanKey
        };
        found.push(
            Finding::of_key(kind, &info.owner)
                .key(info.key_id)
                .with("created", info.created_at),
        );
    }

    for id in &s.unrecorded {
        if s.jobs
            .get(id)
            .is_some_and(|j| j.iter().any(|j| j.kind == JobKind::Purge))
        {
            continue;
        }
        if now_of(o, id).await?.key {
            continue;
        }
        found.push(Finding::new(Kind::ReceiptUnrecorded, id));
    }

    for (id, blobs) in &s.blobs_gone {
        if s.jobs.contains_key(id) {
            continue;
        }
        // A conversation made, ended and finalised since its page was read has a row now.
        if now_of(o, id).await?.row.is_some() {
            continue;
        }
        for blob in blobs {
            found.push(Finding::new(Kind::OrphanBlob, id).blob(blob));
        }
    }

    for (id, keys) in &s.assets_unlisted {
        let listed = o
            .blobs
            .list_conversation(id)
            .await
            .with_context(|| format!("listing the blobs of {id}"))?;
        for key in keys.iter().filter(|k| !listed.contains(k)) {
            // Erased since its asset rows were read: not a loss.
            if now_of(o, id).await?.row.is_none() {
                break;
            }
            found.push(Finding::new(Kind::MissingBlob, id).blob(key));
        }
    }

    for blob in &s.stray {
        found.push(Finding {
            kind: Kind::StrayBlob,
            conversation_id: None,
            key_owner: None,
            key_id: None,
            blob: Some(blob.clone()),
            detail: BTreeMap::new(),
            repair: None,
        });
    }
    found.sort_by(|a, b| {
        (&a.conversation_id, &a.key_owner, a.kind, &a.blob).cmp(&(
            &b.conversation_id,
            &b.key_owner,
            b.kind,
            &b.blob,
        ))
    });
    Ok(found)
}

async fn check(o: &Opened, config: &VerifyConfig) -> anyhow::Result<Report> {
    let s = scan(o).await?;
    let mut findings = findings(o, &s, config.grace).await?;
    if config.repair {
        repair(o, &s, &mut findings).await?;
    }
    Ok(Report {
        checked: s.checked,
        findings,
        repair: config.repair,
    })
}

/// Repairs each conversation's findings, one conversation at a time.
async fn repair(o: &Opened, s: &Scan, findings: &mut [Finding]) -> anyhow::Result<()> {
    // Destroying keys and erasing conversations needs evidence that the two stores belong
    // together: a wrong --key-store or --data-dir would otherwise make every key an orphan, or
    // every conversation keyless.
    let unrelated = s.matched == 0;
    let mut by_conversation: BTreeMap<Option<ConversationId>, Vec<usize>> = BTreeMap::new();
    for (i, f) in findings.iter().enumerate() {
        by_conversation
            .entry(f.conversation_id.clone())
            .or_default()
            .push(i);
    }
    let mut purged = false;
    for (id, indices) in by_conversation {
        let Some(id) = id else {
            for i in indices {
                let r = match (findings[i].kind, findings[i].key_owner.clone()) {
                    (Kind::RecentOrphanKey, Some(_)) => Repair::Left(in_flight()),
                    (Kind::OrphanKey, Some(_)) if unrelated => Repair::Left(unrelated_stores()),
                    (Kind::OrphanKey, Some(owner)) => done(destroy_other_key(o, &owner).await),
                    _ => Repair::Left(
                        "not a conversation's blob: remove it by hand if it is not parley's".into(),
                    ),
                };
                findings[i].repair = Some(r);
            }
            continue;
        };
        let kinds: Vec<Kind> = indices.iter().map(|&i| findings[i].kind).collect();
        let has = |k: Kind| kinds.contains(&k);
        let erase = has(Kind::KeyMissing);
        let purge = [
            Kind::ErasedKeyRemains,
            Kind::ReceiptUnrecorded,
            Kind::PurgeStuck,
            Kind::PurgePending,
        ]
        .into_iter()
        .any(has);
        let result = if has(Kind::Unsealed) {
            Some(Repair::Left(
                "its content was stored before sealing: `parley encrypt-store` seals it; erasing it is \
                 the operator's call"
                    .into(),
            ))
        } else if erase && unrelated {
            Some(Repair::Left(unrelated_stores()))
        } else if erase {
            Some(done(erase_keyless(o, &id).await))
        } else if purge {
            Some(done(purge_erased(o, s, &id).await))
        } else {
            None
        };
        if result.as_ref().is_some_and(|r| *r == Repair::Repaired) && (erase || purge) {
            purged = true;
        }
        for (&i, &kind) in indices.iter().zip(&kinds) {
            let r = match kind {
                Kind::RecentOrphanKey => Repair::Left(in_flight()),
                Kind::OrphanKey if unrelated => Repair::Left(unrelated_stores()),
                Kind::OrphanKey => done(destroy_orphan_key(o, &id).await),
                Kind::OrphanBlob => done(delete_orphan_blobs(o, &id).await),
                Kind::MissingBlob => Repair::Left(
                    "the blob is lost and cannot be made again; the conversation keeps the rest".into(),
                ),
                _ => result
                    .clone()
                    .expect("every other kind has a conversation repair"),
            };
            findings[i].repair = Some(r);
        }
    }
    if purged {
        // Removes the database's copies of erased rows (SQLite's WAL), as a server's purge does.
        // A reader blocking it now only delays that to the next purge.
        let _ = o.inner.erase_residue().await;
    }
    Ok(())
}

fn in_flight() -> String {
    "younger than --grace: a create may be in flight; run again later".into()
}

fn unrelated_stores() -> String {
    "not one conversation has its key in this key store: check --key-store and \
     --data-dir/--database-url; nothing was destroyed"
        .into()
}

fn done(result: anyhow::Result<Repair>) -> Repair {
    result.unwrap_or_else(|e| Repair::Failed(format!("{e:#}")))
}

/// Erases a conversation whose key is lost: its rows with a receipt (`key_lost`), then its blobs.
async fn erase_keyless(o: &Opened, id: &ConversationId) -> anyhow::Result<Repair> {
    if o.keys.get(&id.into()).await.map_err(key_error)?.is_some() {
        return Ok(Repair::Left("it has a key now".into()));
    }
    let now = Timestamp::now();
    let lease = now.plus_millis(LEASE.as_millis() as i64);
    match o
        .sealed
        .hard_delete(DeleteScope::KeyLost, id, now, Some(lease))
        .await
        .context("erasing the conversation")?
    {
        HardDeleteOutcome::NotFound => Ok(Repair::Repaired),
        HardDeleteOutcome::Deleted { purge, .. } => {
            purge_conversation(&o.sealed, &o.blobs, id).await?;
            o.inner
                .complete_job(&purge)
                .await
                .context("completing the purge")?;
            Ok(Repair::Repaired)
        }
    }
}

/// Runs the purge of an erased conversation (key destroyed and recorded, blobs deleted) and
/// removes its purge jobs.
async fn purge_erased(o: &Opened, s: &Scan, id: &ConversationId) -> anyhow::Result<Repair> {
    // Never the key of a live conversation, whatever the scan saw.
    if o.inner.load_conversation(id).await?.is_some() {
        return Ok(Repair::Left("the conversation exists".into()));
    }
    purge_conversation(&o.sealed, &o.blobs, id).await?;
    for job in s.jobs.get(id).into_iter().flatten() {
        if job.kind != JobKind::Purge {
            continue;
        }
        // Only if nobody claimed it since the scan (the attempts match), as a runner would.
        let job = Job {
            id: job.id,
            kind: job.kind,
            conversation_id: id.clone(),
            not_before: None,
            attempts: job.attempts,
        };
        o.inner.complete_job(&job).await.context("completing the purge")?;
    }
    Ok(Repair::Repaired)
}

/// Destroys the key of a conversation that has no row.
async fn destroy_orphan_key(o: &Opened, id: &ConversationId) -> anyhow::Result<Repair> {
    if o.inner.load_conversation(id).await?.is_some() {
        return Ok(Repair::Left("the conversation exists now".into()));
    }
    o.keys
        .destroy(&id.into())
        .await
        .map_err(key_error)
        .context("destroying the key")?;
    Ok(Repair::Repaired)
}

/// Destroys a key whose owner is not a conversation: no row of the content store can own it.
async fn destroy_other_key(o: &Opened, owner: &KeyOwner) -> anyhow::Result<Repair> {
    o.keys
        .destroy(owner)
        .await
        .map_err(key_error)
        .context("destroying the key")?;
    Ok(Repair::Repaired)
}

/// Deletes the blobs of a conversation that has no row.
async fn delete_orphan_blobs(o: &Opened, id: &ConversationId) -> anyhow::Result<Repair> {
    if o.inner.load_conversation(id).await?.is_some() {
        return Ok(Repair::Left("the conversation exists now".into()));
    }
    o.blobs.delete_conversation(id).await.context("deleting blobs")?;
    Ok(Repair::Repaired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_prints_as_one_line_that_splits_on_whitespace() {
        let id = ConversationId::parse("c0123abcd").unwrap();
        let f = Finding::new(Kind::PurgeStuck, &id)
            .with("attempts", 7)
            .with("error", "deleting blobs: timed out");
        assert_eq!(
            f.line(),
            "purge-stuck c0123abcd attempts=7 error=\"deleting blobs: timed out\""
        );
        let mut f = Finding::new(Kind::OrphanKey, &id).key(KeyId::from_bytes([0xab; 8]));
        f.repair = Some(Repair::Repaired);
        assert_eq!(f.line(), "orphan-key c0123abcd kabababababababab -> repaired");
        assert!(!f.remains());
    }

    #[test]
    fn work_in_progress_never_fails_the_check() {
        let id = ConversationId::parse("c0123abcd").unwrap();
        let report = Report {
            checked: Checked::default(),
            findings: vec![
                Finding::new(Kind::PurgePending, &id),
                Finding::new(Kind::RecentOrphanKey, &id),
            ],
            repair: false,
        };
        assert!(report.clean());
        assert!(report.summary().ends_with("remaining=0 pending=2 status=clean"));
    }
}
