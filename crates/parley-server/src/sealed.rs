//! Content at rest: a `ConversationStore` that keeps every conversation's content only as
//! ciphertext under the conversation's own data key, and destroys that key on hard delete.
//!
//! [`SealedStore`] wraps the backend's store. Writes seal the content fields (name, context,
//! greeting, the create request) and the properties of events that carry content (transcripts,
//! perception analysis, recording links) before the backend sees them; reads open them. Webhook
//! deliveries are built by the backend from the sealed event, so their bodies are sealed too and
//! are opened only when claimed for sending. Blobs are sealed by their writers with [`seal_blob`].
//!
//! A conversation whose key is gone (hard-deleted, or an old copy of the content put back beside
//! today's key store) reads with its content unavailable: content fields empty, content events
//! left out, deliveries given up. Never garbage and never an error. See `docs/KEYS.md`.

pub mod resource;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parley_domain::{Conversation, ConversationId, Event, KeyOwner, ResourceKind, Status, Timestamp};
use parley_keys::{ConversationKey, DataKey, KeyError, KeyStore, content_aad};
use parley_store::{
    Account, Asset, ContentFields, ConversationRef, ConversationStore, DeleteScope, Delivery, DeliveryFilter,
    DeliveryInfo, EndOutcome, ErasureReceipt, HardDeleteOutcome, Job, JobInfo, JobKind, KeyInfo,
    ParticipantOutcome, Resealed, Resource, SoftDeleteOutcome, StoreError, StoreResult, StoredEvent,
    UnsealedConversation, table,
};
use serde_json::Value;

/// The AAD field names of a conversation's sealed columns.
const NAME: &str = "conversation.conversation_name";
const CONTEXT: &str = "conversation.conversational_context";
const GREETING: &str = "conversation.custom_greeting";
const REQUEST: &str = "conversation.request_json";

/// The AAD field of an event's sealed properties; the event type is part of it, so properties
/// moved to another kind of event do not open.
fn event_field(event_type: &str) -> String {
    format!("event.{event_type}.properties")
}

/// The AAD field of a sealed blob: its key in the blob store.
fn blob_field(blob_key: &str) -> String {
    format!("blob:{blob_key}")
}

/// A key store failure in store terms: a full disk and an unreachable key database are what the
/// server already answers 503 for.
pub fn key_error(e: KeyError) -> StoreError {
    match e {
        KeyError::Unavailable(why) => StoreError::Unavailable(format!("key store: {why}")),
        // Nothing is known about what reached the disk after a failed sync: the store refuses
        // everything until a restart reopens it, which operators learn from the 503s and the log.
        KeyError::Stopped(why) => {
            tracing::error!(error = %why, "the key store stopped after a failed write; restart parley");
            StoreError::Unavailable("key store stopped after a failed write; restart the server".into())
        }
        KeyError::Io { ref source, .. }
            if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) =>
        {
            StoreError::disk_full()
        }
        other => StoreError::Backend(Box::new(other)),
    }
}

/// The conversation store with content sealed under per-conversation keys.
pub struct SealedStore {
    inner: Arc<dyn ConversationStore>,
    keys: Arc<dyn KeyStore>,
}

impl SealedStore {
    /// Seals what is written to `inner` under keys kept in `keys`.
    pub fn new(inner: Arc<dyn ConversationStore>, keys: Arc<dyn KeyStore>) -> Self {
        Self { inner, keys }
    }

    /// The key store.
    pub fn keys(&self) -> &Arc<dyn KeyStore> {
        &self.keys
    }

    /// The backend's store, holding ciphertext.
    pub fn inner(&self) -> &Arc<dyn ConversationStore> {
        &self.inner
    }

    /// The conversation's data key, if it still has one.
    pub async fn key(&self, id: &ConversationId) -> StoreResult<Option<ConversationKey>> {
        self.keys.get(&id.into()).await.map_err(key_error)
    }

    /// Whether the key store answers: one lookup of an id no conversation has (for `/health`).
    pub async fn key_store_answers(&self) -> StoreResult<()> {
        let nobody = KeyOwner::from(ConversationId::from_random([0; 8]));
        self.keys.get(&nobody).await.map_err(key_error)?;
        Ok(())
    }

    /// Destroys a hard-deleted conversation's data key and records it on the erasure receipt.
    ///
    /// Idempotent: the purge job calls it again after a crash. The key id is written to the
    /// receipt before the key is destroyed (it cannot be learnt after), the time once it is gone.
    pub async fn shred(&self, id: &ConversationId) -> StoreResult<()> {
        if let Some(key) = self.key(id).await? {
            let key_id = key.key_id.to_string();
            drop(key);
            self.inner.record_key_destroyed(id, Some(&key_id), None).await?;
            self.keys.destroy(&id.into()).await.map_err(key_error)?;
        }
        self.inner
            .record_key_destroyed(id, None, Some(Timestamp::now()))
            .await?;
        Ok(())
    }

    /// A resource's data key, if it still has one.
    pub async fn resource_key(&self, row_id: &str) -> StoreResult<Option<ConversationKey>> {
        self.keys.get(&resource::owner(row_id)?).await.map_err(key_error)
    }

    /// Destroys a hard-deleted resource's data key. Idempotent: the purge calls it again after a crash.
    pub async fn shred_resource(&self, row_id: &str) -> StoreResult<()> {
        self.keys
            .destroy(&resource::owner(row_id)?)
            .await
            .map_err(key_error)?;
        Ok(())
    }

    /// Resources with their bodies opened, their keys fetched in one round.
    async fn open_resources(&self, rows: Vec<Resource>) -> StoreResult<Vec<Resource>> {
        let owners = rows
            .iter()
            .map(|r| resource::owner(&r.row_id))
            .collect::<StoreResult<Vec<_>>>()?;
        let keys = self.keys.get_many(&owners).await.map_err(key_error)?;
        Ok(rows
            .into_iter()
            .zip(owners.iter().zip(keys))
            .map(|(r, (owner, key))| resource::open(key.as_ref().map(|k| &k.key), owner, r))
            .collect())
    }

    /// The conversation with its content fields sealed under `key`.
    pub fn seal_conversation(key: &DataKey, c: &Conversation) -> Conversation {
        let fields = seal_fields(
            key,
            &c.id,
            &ContentFields {
                conversation_name: c.conversation_name.clone(),
                conversational_context: c.conversational_context.clone(),
                custom_greeting: c.custom_greeting.clone(),
                request_json: c.request_json.clone(),
            },
        );
        let mut sealed = c.clone();
        sealed.conversation_name = fields.conversation_name;
        sealed.conversational_context = fields.conversational_context;
        sealed.custom_greeting = fields.custom_greeting;
        sealed.request_json = fields.request_json;
        sealed
    }

    /// The conversation with its content fields opened; those that do not open are empty.
    pub fn open_conversation(key: Option<&ConversationKey>, mut c: Conversation) -> Conversation {
        let id = c.id.clone();
        let open = |field: &str, value: Option<String>| -> Option<String> {
            let value = value?;
            let key = key?;
            match key.key.open_text(&conversation_aad(&id, field), &value) {
                Ok(plain) => Some(plain),
                Err(e) => {
                    tracing::error!(conversation.id = %id, field, error = %e, "stored content does not open");
                    None
                }
            }
        };
        c.conversation_name = open(NAME, c.conversation_name.take());
        c.conversational_context = open(CONTEXT, c.conversational_context.take());
        c.custom_greeting = open(GREETING, c.custom_greeting.take());
        c.request_json = open(REQUEST, Some(std::mem::take(&mut c.request_json))).unwrap_or_default();
        c
    }

    async fn open_one(&self, c: Conversation) -> StoreResult<Conversation> {
        let key = self.key(&c.id).await?;
        Ok(Self::open_conversation(key.as_ref(), c))
    }

    /// The event with its properties sealed, if it carries content.
    pub fn seal_event(key: &DataKey, id: &ConversationId, event: &Event) -> Event {
        if !event.event_type.carries_content() {
            return event.clone();
        }
        let properties = seal_properties(key, id, event.event_type.as_str(), &event.properties.to_string());
        Event {
            event_type: event.event_type,
            timestamp: event.timestamp,
            properties: Value::String(properties),
        }
    }

    /// Opens sealed properties; `None` when they cannot be opened. Properties that were never
    /// sealed (events without content) are returned as they are.
    pub fn open_properties(
        key: Option<&DataKey>,
        id: &ConversationId,
        event_type: &str,
        properties: Value,
    ) -> Option<Value> {
        let Value::String(sealed) = properties else {
            return Some(properties);
        };
        let opened = key?.open_text(&conversation_aad(id, &event_field(event_type)), &sealed);
        match opened.map(|text| serde_json::from_str(&text)) {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                tracing::error!(conversation.id = %id, error = %e, "opened event properties are not JSON");
                None
            }
            Err(e) => {
                tracing::error!(conversation.id = %id, event_type, error = %e, "stored event properties do not open");
                None
            }
        }
    }

    /// A claimed delivery with its body opened; `None` when its content is unavailable.
    fn open_delivery(key: Option<&DataKey>, mut delivery: Delivery) -> Option<Delivery> {
        let Ok(mut envelope) = serde_json::from_str::<Value>(&delivery.payload) else {
            return Some(delivery);
        };
        if !envelope["properties"].is_string() {
            return Some(delivery);
        }
        let id = ConversationId::parse(&delivery.conversation_id).ok()?;
        let properties =
            Self::open_properties(key, &id, &delivery.event_type, envelope["properties"].take())?;
        envelope["properties"] = properties;
        delivery.payload = envelope.to_string();
        Some(delivery)
    }
}

/// The AAD of a conversation's content: the conversation's id is its data key's owner.
fn conversation_aad(id: &ConversationId, field: &str) -> Vec<u8> {
    content_aad(&KeyOwner::from(id), field)
}

/// Whether a conversation's stored create request (sealed, and held by every conversation) opens
/// under `key`: proof that a key is the one the conversation's content was sealed under.
pub fn request_opens(key: &DataKey, id: &ConversationId, sealed_request: &str) -> bool {
    key.open_text(&conversation_aad(id, REQUEST), sealed_request)
        .is_ok()
}

/// Seals a conversation's four content fields, each bound to its field.
pub(crate) fn seal_fields(key: &DataKey, id: &ConversationId, fields: &ContentFields) -> ContentFields {
    let seal = |field: &str, value: &str| key.seal_text(&conversation_aad(id, field), value);
    ContentFields {
        conversation_name: fields.conversation_name.as_deref().map(|v| seal(NAME, v)),
        conversational_context: fields.conversational_context.as_deref().map(|v| seal(CONTEXT, v)),
        custom_greeting: fields.custom_greeting.as_deref().map(|v| seal(GREETING, v)),
        request_json: seal(REQUEST, &fields.request_json),
    }
}

/// Seals an event's properties (JSON text) into the text form stored as a JSON string, in the
/// event row and in its delivery's envelope alike; the event type is bound in.
pub(crate) fn seal_properties(key: &DataKey, id: &ConversationId, event_type: &str, json: &str) -> String {
    key.seal_text(&conversation_aad(id, &event_field(event_type)), json)
}

/// Whether a blob's bytes open as sealed under the conversation's key, without a word in the log
/// when they do not (sealing in place asks this of every plaintext blob).
pub(crate) fn blob_opens(key: &DataKey, id: &ConversationId, blob_key: &str, bytes: &[u8]) -> bool {
    key.open(&conversation_aad(id, &blob_field(blob_key)), bytes)
        .is_ok()
}

/// Seals a blob's bytes under the conversation's key, bound to the blob's key in the store.
pub fn seal_blob(key: &DataKey, id: &ConversationId, blob_key: &str, bytes: &[u8]) -> Bytes {
    Bytes::from(key.seal(&conversation_aad(id, &blob_field(blob_key)), bytes))
}

/// Opens a blob made by [`seal_blob`]; `None` when it does not open.
pub fn open_blob(key: &DataKey, id: &ConversationId, blob_key: &str, sealed: &[u8]) -> Option<Bytes> {
    match key.open(&conversation_aad(id, &blob_field(blob_key)), sealed) {
        Ok(plain) => Some(Bytes::from(plain)),
        Err(e) => {
            tracing::error!(conversation.id = %id, blob.key = blob_key, error = %e, "stored blob does not open");
            None
        }
    }
}

#[async_trait]
impl ConversationStore for SealedStore {
    async fn has_accounts(&self) -> StoreResult<bool> {
        self.inner.has_accounts().await
    }

    async fn ensure_account(&self, name: &str, now: Timestamp) -> StoreResult<bool> {
        self.inner.ensure_account(name, now).await
    }

    async fn set_account_limits(
        &self,
        name: &str,
        max_concurrent: Option<u32>,
        retention_days: Option<u32>,
    ) -> StoreResult<bool> {
        self.inner
            .set_account_limits(name, max_concurrent, retention_days)
            .await
    }

    async fn list_accounts(&self) -> StoreResult<Vec<Account>> {
        self.inner.list_accounts().await
    }

    async fn insert_key(
        &self,
        key_id: &str,
        account: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.inner.insert_key(key_id, account, key_hash, now).await
    }

    async fn list_keys(&self) -> StoreResult<Vec<KeyInfo>> {
        self.inner.list_keys().await
    }

    async fn revoke_key(&self, key_id: &str, now: Timestamp) -> StoreResult<bool> {
        self.inner.revoke_key(key_id, now).await
    }

    async fn account_for_key(&self, key_hash: &str) -> StoreResult<Option<Account>> {
        self.inner.account_for_key(key_hash).await
    }

    async fn create_conversation(
        &self,
        conversation: &Conversation,
        max_active: u32,
        jobs: &[(JobKind, Timestamp)],
    ) -> StoreResult<()> {
        let key = match self
            .keys
            .create(&(&conversation.id).into(), conversation.created_at)
            .await
        {
            Ok(key) => key,
            // Another conversation (or a create that died half way) holds this id: draw again.
            Err(KeyError::AlreadyExists(id)) => {
                return Err(StoreError::Conflict(format!("data key of {id}")));
            }
            Err(e) => return Err(key_error(e)),
        };
        let sealed = Self::seal_conversation(&key.key, conversation);
        drop(key);
        let created = self.inner.create_conversation(&sealed, max_active, jobs).await;
        if created.is_err() {
            // The key is ours alone; a failure to destroy it leaves an orphan `parley verify` finds.
            if let Err(e) = self.keys.destroy(&(&conversation.id).into()).await {
                tracing::warn!(conversation.id = %conversation.id, error = %e, "destroying the key of a failed create failed");
            }
        }
        created
    }

    async fn get_conversation(
        &self,
        account: &str,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        match self.inner.get_conversation(account, id).await? {
            Some(c) => Ok(Some(self.open_one(c).await?)),
            None => Ok(None),
        }
    }

    async fn load_conversation(&self, id: &ConversationId) -> StoreResult<Option<Conversation>> {
        match self.inner.load_conversation(id).await? {
            Some(c) => Ok(Some(self.open_one(c).await?)),
            None => Ok(None),
        }
    }

    async fn list_conversations(
        &self,
        account: &str,
        status: Option<Status>,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Conversation>, u64)> {
        let (page, total) = self
            .inner
            .list_conversations(account, status, limit, offset)
            .await?;
        let ids: Vec<KeyOwner> = page.iter().map(|c| KeyOwner::from(&c.id)).collect();
        let keys = self.keys.get_many(&ids).await.map_err(key_error)?;
        let opened = page
            .into_iter()
            .zip(keys)
            .map(|(c, key)| Self::open_conversation(key.as_ref(), c))
            .collect();
        Ok((opened, total))
    }

    async fn list_conversation_ids(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<ConversationRef>> {
        self.inner.list_conversation_ids(after, limit).await
    }

    async fn list_events(&self, id: &ConversationId) -> StoreResult<Vec<StoredEvent>> {
        let events = self.inner.list_events(id).await?;
        let key = self.key(id).await?;
        let key = key.as_ref().map(|k| &k.key);
        Ok(events
            .into_iter()
            .filter_map(|mut e| {
                // An event whose content is unavailable is left out rather than shown empty.
                e.properties = Self::open_properties(key, id, &e.event_type, e.properties)?;
                Some(e)
            })
            .collect())
    }

    async fn record_join(&self, id: &ConversationId, event: &Event) -> StoreResult<bool> {
        if !event.event_type.carries_content() {
            return self.inner.record_join(id, event).await;
        }
        let Some(key) = self.key(id).await? else {
            return Ok(false);
        };
        self.inner
            .record_join(id, &Self::seal_event(&key.key, id, event))
            .await
    }

    async fn end_conversation(
        &self,
        account: Option<&str>,
        id: &ConversationId,
        reason: &str,
        now: Timestamp,
        lease_until: Option<Timestamp>,
    ) -> StoreResult<EndOutcome> {
        Ok(
            match self
                .inner
                .end_conversation(account, id, reason, now, lease_until)
                .await?
            {
                EndOutcome::NotFound => EndOutcome::NotFound,
                EndOutcome::AlreadyEnded(c) => EndOutcome::AlreadyEnded(self.open_one(c).await?),
                EndOutcome::Ended {
                    conversation,
                    finalize,
                } => EndOutcome::Ended {
                    conversation: self.open_one(conversation).await?,
                    finalize,
                },
            },
        )
    }

    async fn store_call_results(
        &self,
        id: &ConversationId,
        events: &[Event],
        asset: Option<&Asset>,
    ) -> StoreResult<bool> {
        // No key: the conversation was hard-deleted meanwhile, as the backend would find too.
        let Some(key) = self.key(id).await? else {
            return Ok(false);
        };
        let sealed: Vec<Event> = events.iter().map(|e| Self::seal_event(&key.key, id, e)).collect();
        drop(key);
        self.inner.store_call_results(id, &sealed, asset).await
    }

    async fn get_asset(&self, account: &str, id: &ConversationId, name: &str) -> StoreResult<Option<Asset>> {
        self.inner.get_asset(account, id, name).await
    }

    async fn soft_delete(
        &self,
        account: &str,
        id: &ConversationId,
        now: Timestamp,
        purge_at: Timestamp,
    ) -> StoreResult<SoftDeleteOutcome> {
        self.inner.soft_delete(account, id, now, purge_at).await
    }

    async fn restore(&self, id: &ConversationId, now: Timestamp) -> StoreResult<bool> {
        self.inner.restore(id, now).await
    }

    async fn hard_delete(
        &self,
        scope: DeleteScope<'_>,
        id: &ConversationId,
        now: Timestamp,
        lease_until: Option<Timestamp>,
    ) -> StoreResult<HardDeleteOutcome> {
        let mut outcome = self.inner.hard_delete(scope, id, now, lease_until).await?;
        if let HardDeleteOutcome::Deleted { receipt, .. } = &mut outcome {
            // Before the caller answers: from here on no copy of the content opens. Should this
            // fail, the purge job (already committed) destroys the key when it runs.
            let key_id = self.key(id).await?.map(|k| k.key_id.to_string());
            self.shred(id).await?;
            receipt.key_id = key_id;
            receipt.key_destroyed_at = Some(Timestamp::now());
        }
        Ok(outcome)
    }

    async fn participant_join(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome> {
        self.inner.participant_join(id, participant_id, now).await
    }

    async fn participant_leave(
        &self,
        id: &ConversationId,
        participant_id: &str,
        now: Timestamp,
    ) -> StoreResult<ParticipantOutcome> {
        self.inner.participant_leave(id, participant_id, now).await
    }

    async fn record_key_destroyed(
        &self,
        id: &ConversationId,
        key_id: Option<&str>,
        at: Option<Timestamp>,
    ) -> StoreResult<bool> {
        self.inner.record_key_destroyed(id, key_id, at).await
    }

    async fn list_receipts(&self, account: Option<&str>) -> StoreResult<Vec<ErasureReceipt>> {
        self.inner.list_receipts(account).await
    }

    async fn set_webhook_secret(&self, account: &str, secret: Option<&str>) -> StoreResult<bool> {
        self.inner.set_webhook_secret(account, secret).await
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let claimed = self.inner.claim_deliveries(now, lease_until, limit).await?;
        let mut ready = Vec::with_capacity(claimed.len());
        for delivery in claimed {
            let key = match ConversationId::parse(&delivery.conversation_id) {
                Ok(id) => self.key(&id).await?,
                Err(_) => None,
            };
            match Self::open_delivery(key.as_ref().map(|k| &k.key), delivery.clone()) {
                Some(open) => ready.push(open),
                None => {
                    // Its content is gone for good: sending it later cannot succeed either.
                    self.inner
                        .delivery_failed(
                            &delivery,
                            "content unavailable: the conversation's data key no longer exists",
                            None,
                            now,
                        )
                        .await?;
                }
            }
        }
        Ok(ready)
    }

    async fn delivery_succeeded(&self, delivery: &Delivery, now: Timestamp) -> StoreResult<()> {
        self.inner.delivery_succeeded(delivery, now).await
    }

    async fn delivery_failed(
        &self,
        delivery: &Delivery,
        error: &str,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<()> {
        self.inner.delivery_failed(delivery, error, retry_at, now).await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter<'_>) -> StoreResult<Vec<DeliveryInfo>> {
        self.inner.list_deliveries(filter).await
    }

    async fn retry_delivery(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        self.inner.retry_delivery(id, now).await
    }

    async fn claim_due_jobs(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Job>> {
        self.inner.claim_due_jobs(now, lease_until, limit).await
    }

    async fn release_all_leases(&self) -> StoreResult<u64> {
        self.inner.release_all_leases().await
    }

    async fn complete_job(&self, job: &Job) -> StoreResult<()> {
        self.inner.complete_job(job).await
    }

    async fn fail_job(&self, job: &Job, error: &str, retry_at: Timestamp) -> StoreResult<()> {
        self.inner.fail_job(job, error, retry_at).await
    }

    async fn list_jobs(&self) -> StoreResult<Vec<JobInfo>> {
        self.inner.list_jobs().await
    }

    async fn erase_residue(&self) -> StoreResult<bool> {
        self.inner.erase_residue().await
    }

    async fn probe_write(&self, now: Timestamp) -> StoreResult<()> {
        self.inner.probe_write(now).await
    }

    async fn count_unsealed(&self) -> StoreResult<u64> {
        self.inner.count_unsealed().await
    }

    async fn unsealed_conversations(
        &self,
        after: Option<&ConversationId>,
        limit: u32,
    ) -> StoreResult<Vec<UnsealedConversation>> {
        self.inner.unsealed_conversations(after, limit).await
    }

    async fn reseal_conversations(&self, resealed: &[Resealed]) -> StoreResult<u64> {
        self.inner.reseal_conversations(resealed).await
    }

    async fn compact(&self) -> StoreResult<()> {
        self.inner.compact().await
    }

    async fn count_rows(&self, table: table::Table) -> StoreResult<u64> {
        self.inner.count_rows(table).await
    }

    async fn export_rows(
        &self,
        table: table::Table,
        after: Option<&table::Row>,
        limit: u32,
    ) -> StoreResult<Vec<table::Row>> {
        self.inner.export_rows(table, after, limit).await
    }

    async fn import_rows(&self, table: table::Table, rows: &[table::Row]) -> StoreResult<()> {
        self.inner.import_rows(table, rows).await
    }

    async fn create_resource(&self, r: &Resource) -> StoreResult<()> {
        let owner = resource::owner(&r.row_id)?;
        let key = match self.keys.create(&owner, r.created_at).await {
            Ok(key) => key,
            Err(KeyError::AlreadyExists(id)) => {
                return Err(StoreError::Conflict(format!("data key of {id}")));
            }
            Err(e) => return Err(key_error(e)),
        };
        let sealed = resource::seal(&key.key, &owner, r);
        drop(key);
        let created = self.inner.create_resource(&sealed).await;
        if created.is_err() {
            // The key is this row's alone; a failure to destroy it leaves an orphan `parley verify` finds.
            if let Err(e) = self.keys.destroy(&owner).await {
                tracing::warn!(resource.row_id = %owner, error = %e, "destroying the key of a failed create failed");
            }
        }
        created
    }

    async fn get_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
    ) -> StoreResult<Option<Resource>> {
        match self.inner.get_resource(account, kind, id).await? {
            Some(r) => Ok(Some(self.open_resources(vec![r]).await?.remove(0))),
            None => Ok(None),
        }
    }

    async fn load_resource(&self, row_id: &str) -> StoreResult<Option<Resource>> {
        match self.inner.load_resource(row_id).await? {
            Some(r) => Ok(Some(self.open_resources(vec![r]).await?.remove(0))),
            None => Ok(None),
        }
    }

    async fn list_resources(
        &self,
        account: &str,
        kind: ResourceKind,
        limit: u32,
        offset: u64,
    ) -> StoreResult<(Vec<Resource>, u64)> {
        let (rows, total) = self.inner.list_resources(account, kind, limit, offset).await?;
        Ok((self.open_resources(rows).await?, total))
    }

    async fn update_resource(&self, r: &Resource) -> StoreResult<bool> {
        let owner = resource::owner(&r.row_id)?;
        // Without its key the resource's content is unavailable, and stays so: nothing to write.
        let Some(key) = self.keys.get(&owner).await.map_err(key_error)? else {
            return Ok(false);
        };
        let sealed = resource::seal(&key.key, &owner, r);
        drop(key);
        self.inner.update_resource(&sealed).await
    }

    async fn soft_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.inner.soft_delete_resource(account, kind, id, now).await
    }

    async fn hard_delete_resource(
        &self,
        account: &str,
        kind: ResourceKind,
        id: &str,
        now: Timestamp,
    ) -> StoreResult<Option<String>> {
        self.inner.hard_delete_resource(account, kind, id, now).await
    }

    async fn claim_resource_work(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Resource>> {
        let claimed = self.inner.claim_resource_work(now, lease_until, limit).await?;
        self.open_resources(claimed).await
    }

    async fn pending_resource_purges(&self, limit: u32) -> StoreResult<Vec<String>> {
        self.inner.pending_resource_purges(limit).await
    }

    async fn finish_resource_purge(&self, row_id: &str) -> StoreResult<()> {
        self.inner.finish_resource_purge(row_id).await
    }

    async fn close(&self) {
        self.inner.close().await;
        self.keys.close().await;
    }
}
