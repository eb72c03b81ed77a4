//! Sealing in place: content an older parley stored in plaintext gets its conversation's own data
//! key, at `parley serve` start (before it listens) and with `parley encrypt-store`.
//!
//! A conversation is unsealed while its `request_json` does not start with the sealed prefix.
//! Each batch of them goes through three steps, each durable before the next:
//!
//! 1. keys: made for the batch with one key store sync (or found, if an earlier run made them);
//! 2. blobs: each read, sealed under the key with the AAD `sealed::seal_blob` uses, and put back
//!    under the same blob key, unless it already opens under the key;
//! 3. rows: the four fields, the content events' properties and the content deliveries' bodies,
//!    sealed exactly as `SealedStore` seals them and rewritten in one store transaction.
//!
//! Blobs go before the rows because the rows are what says a conversation is done: a crash
//! between 2 and 3 leaves rows in plaintext, so the next run takes the conversation again, finds
//! its key, and leaves the blobs that open under it alone. Whether a blob is sealed is told by
//! opening it, not by its first byte: a WAV starts with `RIFF` and a sealed value with 0x01, but
//! only the authentication tag proves a blob was sealed under this key for this place. The
//! opposite order would leave, after a crash, sealed rows beside a plaintext blob that the read
//! path cannot open and no later run would look at. Nobody reads in between: `parley serve` seals
//! before it listens, and a conversation's key never changes while its rows are unsealed.
//!
//! Afterwards the store is compacted (`ConversationStore::compact`), so the plaintext of the
//! rewritten rows is not left in free pages. On SQLite a marker file beside the database says a
//! compaction is owed until it is done, so a kill between the last batch and the `VACUUM` is
//! caught by the next start. See docs/KEYS.md, "Upgrading a store written in plaintext".

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use futures::TryStreamExt;
use parley_blobs::{BlobError, BlobKey, Blobs};
use parley_domain::{ConversationId, EventType, KeyOwner, Timestamp};
use parley_keys::{ConversationKey, DataKey, KeyError, KeyStore};
use parley_store::{ConversationStore, Resealed, UnsealedConversation};
use serde_json::Value;

use crate::app::{lock_database, open_blobs, open_keys, open_store};
use crate::config::{Database, EncryptConfig};
use crate::progress::Progress;
use crate::sealed;

/// Conversations sealed per store transaction and key store sync, unless told otherwise.
pub const DEFAULT_BATCH: u32 = 500;

/// Blobs read, sealed and written at once.
const BLOB_CONCURRENCY: usize = 8;

/// What to seal, and how.
pub struct SealInPlace<'a> {
    /// The backend's store (not the `SealedStore`): its rows as they are.
    pub store: &'a dyn ConversationStore,
    pub keys: &'a dyn KeyStore,
    pub blobs: &'a Blobs,
    /// Conversations per transaction.
    pub batch_size: u32,
    /// The file that says a compaction is owed (SQLite only: beside the database).
    pub compaction_marker: Option<PathBuf>,
    /// Compact even when nothing was left to seal (`encrypt-store`, which an operator reruns to
    /// finish a run that stopped before its compaction).
    pub always_compact: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SealReport {
    /// Conversations whose rows this run sealed.
    pub conversations: u64,
    /// Blobs this run sealed.
    pub blobs: u64,
    /// Whether it compacted the store.
    pub compacted: bool,
}

/// `parley encrypt-store`: seals what `parley serve` would seal at start, offline and with
/// progress, then compacts the store even if nothing was left to seal.
pub async fn encrypt_store(c: EncryptConfig) -> anyhow::Result<()> {
    let (_lock, compaction_marker) = match c.store.database()? {
        Database::Sqlite(path) => (Some(lock_database(&path)?), Some(compaction_marker(&path))),
        Database::Postgres(_) => (None, None),
    };
    let store = open_store(&c.store).await?;
    let keys = open_keys(&c.keys).await?;
    if let Some(path) = &keys.new_master_key {
        eprintln!(
            "made a new master key in {}: keep a copy apart from the data and the key store; losing \
             it loses every conversation sealed now",
            path.display()
        );
    }
    let blobs = open_blobs(&c.blobs, &c.store)?;
    let report = seal_in_place(SealInPlace {
        store: store.as_ref(),
        keys: keys.store.as_ref(),
        blobs: &blobs,
        batch_size: c.batch_size,
        compaction_marker,
        always_compact: true,
    })
    .await?;
    store.close().await;
    keys.store.close().await;
    eprintln!(
        "sealed {} conversations and {} blobs stored in plaintext, and compacted the database; every \
         conversation's content is now stored only under its own data key",
        report.conversations, report.blobs
    );
    if report.conversations > 0 {
        eprintln!(
            "copies made before this (backups, snapshots, WAL archives, replicas) still hold the plaintext: \
             replace or destroy them (docs/KEYS.md, \"Upgrading a store written in plaintext\")"
        );
    }
    Ok(())
}

/// The file beside an embedded database that says a compaction is owed.
pub fn compaction_marker(db: &Path) -> PathBuf {
    db.with_extension("sealing")
}

/// Seals every conversation an older parley left in plaintext, then compacts the store.
pub async fn seal_in_place(job: SealInPlace<'_>) -> anyhow::Result<SealReport> {
    let total = job
        .store
        .count_unsealed()
        .await
        .context("counting conversations in plaintext")?;
    let owed = job.compaction_marker.as_deref().is_some_and(Path::exists);
    let mut report = SealReport::default();
    if total > 0 {
        tracing::warn!(
            conversation.count = total,
            "sealing content an older parley stored in plaintext, under a data key per conversation"
        );
        if let Some(marker) = &job.compaction_marker {
            write_marker(marker)?;
        }
        (report.conversations, report.blobs) = seal_all(&job, total).await?;
    }
    if total > 0 || owed || job.always_compact {
        tracing::info!(
            "compacting the database, so that no copy of the plaintext rows is left in its free space"
        );
        job.store
            .compact()
            .await
            .context("compacting the database after sealing")?;
        if let Some(marker) = &job.compaction_marker {
            remove_marker(marker)?;
        }
        report.compacted = true;
    }
    Ok(report)
}

/// Seals every unsealed conversation, a batch at a time: conversations and blobs sealed.
async fn seal_all(job: &SealInPlace<'_>, total: u64) -> anyhow::Result<(u64, u64)> {
    let blobs_of = blobs_by_conversation(job.blobs).await?;
    let progress = Progress::new(total);
    progress.pass("sealing", 0, total);
    let (mut conversations, blobs_sealed) = (0, AtomicU64::new(0));
    let mut after: Option<ConversationId> = None;
    loop {
        let page = job
            .store
            .unsealed_conversations(after.as_ref(), job.batch_size)
            .await
            .context("reading conversations in plaintext")?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let ids: Vec<ConversationId> = page.iter().map(|c| c.id.clone()).collect();
        let keys = keys_for(job.keys, &ids).await?;

        let work = page.iter().zip(&keys).flat_map(|(c, key)| {
            let blob_keys = blobs_of.get(c.id.as_str()).map(Vec::as_slice).unwrap_or_default();
            blob_keys
                .iter()
                .map(move |blob_key| (&c.id, &key.key, blob_key.as_str()))
        });
        futures::stream::iter(work.map(Ok::<_, anyhow::Error>))
            .try_for_each_concurrent(BLOB_CONCURRENCY, |(id, key, blob_key)| {
                let counter = &blobs_sealed;
                async move {
                    if seal_blob(job.blobs, key, id, blob_key).await? {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    anyhow::Ok(())
                }
            })
            .await?;

        let resealed: Vec<Resealed> = page
            .iter()
            .zip(&keys)
            .map(|(c, key)| reseal(c, &key.key))
            .collect();
        conversations += job
            .store
            .reseal_conversations(&resealed)
            .await
            .context("writing the sealed rows")?;
        progress.inc(page.len() as u64);
    }
    progress.finish();
    let blobs = blobs_sealed.into_inner();
    tracing::info!(
        conversation.count = conversations,
        blob.count = blobs,
        "sealed the content stored in plaintext"
    );
    Ok((conversations, blobs))
}

/// Every blob key, by the conversation whose prefix holds it: one listing for the whole run.
///
/// The listing rather than the asset rows, so that a blob a crashed finalize wrote before its
/// row is sealed too.
async fn blobs_by_conversation(blobs: &Blobs) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let listed = blobs
        .list_prefix(BlobKey::ROOT)
        .await
        .context("listing the blobs")?;
    let mut by_conversation: HashMap<String, Vec<String>> = HashMap::new();
    for (key, _) in listed {
        let Some(id) = key
            .strip_prefix(BlobKey::ROOT)
            .and_then(|rest| rest.split('/').next())
        else {
            continue;
        };
        by_conversation.entry(id.to_owned()).or_default().push(key);
    }
    Ok(by_conversation)
}

/// The batch's keys in order: those an interrupted run made, and fresh ones (one sync) for the
/// rest.
async fn keys_for(keys: &dyn KeyStore, ids: &[ConversationId]) -> anyhow::Result<Vec<ConversationKey>> {
    let owners: Vec<KeyOwner> = ids.iter().map(KeyOwner::from).collect();
    let found = keys.get_many(&owners).await.context("reading data keys")?;
    if found.iter().all(Option::is_some) {
        return Ok(found.into_iter().flatten().collect());
    }
    let missing: Vec<KeyOwner> = owners
        .iter()
        .zip(&found)
        .filter(|(_, k)| k.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let mut made = match keys.create_many(&missing, Timestamp::now()).await {
        Ok(made) => made.into_iter(),
        // Another process sealing the same store made one of them first.
        Err(KeyError::AlreadyExists(_)) => one_by_one(keys, &missing).await?.into_iter(),
        Err(e) => return Err(e).context("making data keys"),
    };
    Ok(found
        .into_iter()
        .map(|k| k.unwrap_or_else(|| made.next().expect("a key made for each missing one")))
        .collect())
}

/// The keys of `ids`, each found or made on its own.
async fn one_by_one(keys: &dyn KeyStore, ids: &[KeyOwner]) -> anyhow::Result<Vec<ConversationKey>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let key = match keys.get(id).await? {
            Some(key) => key,
            None => match keys.create(id, Timestamp::now()).await {
                Ok(key) => key,
                Err(KeyError::AlreadyExists(_)) => keys.get(id).await?.context("a key made meanwhile")?,
                Err(e) => return Err(e).context("making a data key"),
            },
        };
        out.push(key);
    }
    Ok(out)
}

/// Seals a blob in place unless it opens under the key already; true if it sealed it.
async fn seal_blob(
    blobs: &Blobs,
    key: &DataKey,
    id: &ConversationId,
    blob_key: &str,
) -> anyhow::Result<bool> {
    let bytes = match blobs.get(blob_key).await {
        Ok(bytes) => bytes,
        // Deleted meanwhile (a purge of another conversation's prefix cannot reach it).
        Err(BlobError::NotFound(_)) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {blob_key}")),
    };
    if sealed::blob_opens(key, id, blob_key, &bytes) {
        return Ok(false);
    }
    blobs
        .put_key(blob_key, sealed::seal_blob(key, id, blob_key, &bytes))
        .await
        .with_context(|| format!("writing {blob_key} sealed"))?;
    Ok(true)
}

/// Whether events of this stored type carry content: the known types say; an unknown one does
/// if it is an application event, as every content event is.
fn carries_content(event_type: &str) -> bool {
    EventType::parse(event_type).map_or_else(
        || event_type.starts_with("application."),
        EventType::carries_content,
    )
}

/// The conversation's content rows sealed as `SealedStore` would have written them.
fn reseal(c: &UnsealedConversation, key: &DataKey) -> Resealed {
    let events = c
        .events
        .iter()
        .filter(|e| carries_content(&e.event_type))
        // Sealed properties are a JSON string; plaintext ones an object.
        .filter(|e| !serde_json::from_str::<Value>(&e.properties).is_ok_and(|v| v.is_string()))
        .map(|e| {
            let sealed = sealed::seal_properties(key, &c.id, &e.event_type, &e.properties);
            (e.event_id, Value::String(sealed).to_string())
        })
        .collect();
    let deliveries = c
        .deliveries
        .iter()
        .filter(|d| d.carries_content || carries_content(&d.event_type))
        .filter_map(|d| {
            let Ok(mut envelope) = serde_json::from_str::<Value>(&d.payload) else {
                tracing::warn!(conversation.id = %c.id, delivery.id = d.delivery_id, "a delivery body is not JSON: left as it is");
                return None;
            };
            let properties = envelope.get("properties")?;
            if properties.is_string() || properties.is_null() {
                return None;
            }
            let sealed = sealed::seal_properties(key, &c.id, &d.event_type, &properties.to_string());
            envelope["properties"] = Value::String(sealed);
            Some((d.delivery_id.clone(), envelope.to_string()))
        })
        .collect();
    Resealed {
        id: c.id.clone(),
        fields: sealed::seal_fields(key, &c.id, &c.fields),
        events,
        deliveries,
    }
}

/// Writes the marker that says a compaction is owed, durably, before the first row is sealed.
fn write_marker(marker: &Path) -> anyhow::Result<()> {
    let context = || format!("writing {}", marker.display());
    let file = std::fs::File::create(marker).with_context(context)?;
    std::io::Write::write_all(
        &mut &file,
        b"parley is sealing content stored in plaintext; the database is compacted (VACUUM) before this file goes\n",
    )
    .and_then(|()| file.sync_all())
    .with_context(context)?;
    sync_dir(marker).with_context(context)
}

/// Removes the marker once the compaction is done.
fn remove_marker(marker: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(marker) {
        Ok(()) => sync_dir(marker).with_context(|| format!("removing {}", marker.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", marker.display())),
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use parley_keys::{DataKey, SEALED_TEXT_PREFIX, content_aad};
    use parley_store::{ContentFields, RawDelivery, RawEvent, SEALED_PREFIX};

    use super::*;

    #[test]
    fn the_store_and_the_keys_agree_on_what_a_sealed_value_starts_with() {
        assert_eq!(SEALED_PREFIX, SEALED_TEXT_PREFIX);
    }

    fn plaintext() -> UnsealedConversation {
        let id = ConversationId::parse("c0123456789abcdef").unwrap();
        let transcript = r#"{"transcript":[{"role":"user","content":"the plan"}]}"#;
        UnsealedConversation {
            fields: ContentFields {
                conversation_name: Some("name".into()),
                conversational_context: None,
                custom_greeting: Some("hello".into()),
                request_json: r#"{"persona_id":"p1"}"#.into(),
            },
            events: vec![
                RawEvent {
                    event_id: 1,
                    event_type: "system.replica_joined".into(),
                    properties: r#"{"replica_id":"r1"}"#.into(),
                },
                RawEvent {
                    event_id: 2,
                    event_type: "application.transcription_ready".into(),
                    properties: transcript.into(),
                },
            ],
            deliveries: vec![
                RawDelivery {
                    delivery_id: "d1".into(),
                    event_type: "system.replica_joined".into(),
                    carries_content: false,
                    payload: r#"{"properties":{"replica_id":"r1"}}"#.into(),
                },
                RawDelivery {
                    delivery_id: "d2".into(),
                    event_type: "application.transcription_ready".into(),
                    carries_content: true,
                    payload: format!(
                        r#"{{"event_type":"application.transcription_ready","properties":{transcript}}}"#
                    ),
                },
            ],
            assets: Vec::new(),
            id,
        }
    }

    #[test]
    fn a_plaintext_conversation_is_sealed_as_the_sealed_store_reads_it() {
        let (c, key) = (plaintext(), DataKey::generate());
        let r = reseal(&c, &key);
        let aad = |field: &str| content_aad(&KeyOwner::from(&c.id), field);
        let open = |field: &str, text: &str| key.open_text(&aad(field), text).unwrap();
        assert_eq!(
            open("conversation.request_json", &r.fields.request_json),
            c.fields.request_json
        );
        assert_eq!(
            open(
                "conversation.conversation_name",
                r.fields.conversation_name.as_deref().unwrap()
            ),
            "name"
        );
        assert_eq!(r.fields.conversational_context, None);
        // Only the content event and its delivery are rewritten.
        assert_eq!(r.events.len(), 1);
        let (event_id, properties) = &r.events[0];
        assert_eq!(*event_id, 2);
        let Value::String(sealed) = serde_json::from_str(properties).unwrap() else {
            panic!("sealed properties are a JSON string: {properties}");
        };
        let field = "event.application.transcription_ready.properties";
        assert_eq!(open(field, &sealed), c.events[1].properties);
        assert_eq!(r.deliveries.len(), 1);
        let envelope: Value = serde_json::from_str(&r.deliveries[0].1).unwrap();
        assert_eq!(envelope["event_type"], "application.transcription_ready");
        let opened: Value =
            serde_json::from_str(&open(field, envelope["properties"].as_str().unwrap())).unwrap();
        assert_eq!(opened["transcript"][0]["content"], "the plan");
        // What is sealed already is left alone.
        let mut again = c.clone();
        again.events[1].properties = properties.clone();
        again.deliveries[1].payload = r.deliveries[0].1.clone();
        let r = reseal(&again, &key);
        assert!(r.events.is_empty() && r.deliveries.is_empty());
    }

    #[test]
    fn unknown_application_events_count_as_content_and_unknown_system_ones_do_not() {
        assert!(carries_content("application.perception_analysis"));
        assert!(carries_content("application.something_new"));
        assert!(!carries_content("system.shutdown"));
        assert!(!carries_content("system.something_new"));
    }
}
