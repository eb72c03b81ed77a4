//! Conversation operations: what each endpoint does, independent of HTTP.

use parley_blobs::BlobError;
use parley_domain::{
    Conversation, ConversationId, CreateConversation, NewConversation, ShutdownReason, Status, Timestamp,
    ValidationError,
};
use parley_store::ConversationStore;
use parley_store::{
    Account, DeleteScope, EndOutcome, HardDeleteOutcome, JobKind, SoftDeleteOutcome, StoreError, StoredEvent,
};
use rand::RngCore;

use crate::state::AppState;
use crate::{jobs, webhook};
use crate::{persona, sealed};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Unknown, malformed, another account's, deleted: all look the same from outside.
    #[error("Invalid conversation_id")]
    InvalidConversationId,
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error("User has reached maximum concurrent conversations")]
    ConcurrencyLimit,
    #[error("{0}")]
    NotFound(&'static str),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConcurrencyLimit => Self::ConcurrencyLimit,
            other => Self::Store(other),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Creates a conversation from a JSON body.
pub async fn create_conversation(state: &AppState, account: &Account, body: &[u8]) -> Result<Conversation> {
    let request = CreateConversation::from_json(body)?;
    let cast = persona::cast_of(state, &account.name, &request).await?;
    let new = NewConversation::validate(request, state.settings.limits, cast.persona, cast.replica)?;
    let now = Timestamp::now();
    let request = &new.request;
    let mut conversation = Conversation {
        id: ConversationId::from_random(random_bytes()),
        account: account.name.clone(),
        // Test-mode conversations are created over: the replica never joins.
        status: if new.test_mode {
            Status::Ended
        } else {
            Status::Active
        },
        conversation_name: request.conversation_name.clone(),
        callback_url: request.callback_url.clone(),
        replica_id: new.replica.id.clone(),
        persona_id: new.persona.id.clone(),
        conversational_context: request.conversational_context.clone(),
        custom_greeting: request.custom_greeting.clone(),
        test_mode: new.test_mode,
        enable_recording: new.enable_recording,
        meeting_token: new.require_auth.then(|| hex::encode(random_bytes::<24>())),
        request_json: new.request_json(),
        created_at: now,
        updated_at: now,
        joined_at: None,
        ended_at: new.test_mode.then_some(now),
        shutdown_reason: None,
        deleted_at: None,
        max_call_duration: new.max_call_duration,
        participant_left_timeout: new.participant_left_timeout,
        participant_absent_timeout: new.participant_absent_timeout,
        participants_present: 0,
        participant_joined_at: None,
        participant_left_at: None,
    };
    if state.settings.webhooks.deny_private
        && let Some(url) = &conversation.callback_url
    {
        webhook::check_public(url)
            .await
            .map_err(|why| ValidationError(format!("Invalid callback_url: {why}")))?;
    }
    // Only a request found good uses a seeded or pinned id for the first time.
    persona::store_first_uses(state, &account.name, cast.first_uses).await?;
    let join_delay = state.settings.replica_join_delay;
    let mut jobs = Vec::new();
    if !new.test_mode {
        jobs.push((
            JobKind::JoinReplica,
            now.plus_millis(join_delay.as_millis() as i64),
        ));
        jobs.push((
            JobKind::MaxDurationTimer,
            now.plus_secs(i64::from(new.max_call_duration)),
        ));
        // 0 turns the absent timer off rather than ending every call at once. On an external
        // transport people join where parley cannot see them, so "nobody came" is unknowable.
        if new.participant_absent_timeout > 0 && !new.transport.is_external() {
            jobs.push((
                JobKind::AbsentTimer,
                now.plus_secs(i64::from(new.participant_absent_timeout)),
            ));
        }
    }
    // A create is the write that grows the store most; on a full disk it waits for room, so what
    // room there is goes to ends and deletes (see `disk`).
    state
        .disk
        .check_writable(state.store.as_ref(), &state.blobs)
        .await?;
    let cap = state.settings.max_concurrent_for(account);
    let mut attempts = 0;
    loop {
        match state.store.create_conversation(&conversation, cap, &jobs).await {
            // 64 random bits make a collision all but impossible; if one happens, draw again.
            Err(StoreError::Conflict(_)) if attempts < 3 => {
                attempts += 1;
                conversation.id = ConversationId::from_random(random_bytes());
            }
            other => break other?,
        }
    }
    if !new.test_mode && join_delay.is_zero() {
        state.wake_jobs.notify_one();
    }
    tracing::info!(conversation.id = %conversation.id, account = %account.name, "conversation created");
    Ok(conversation)
}

/// A visible conversation, with its events when `verbose`.
pub async fn get_conversation(
    state: &AppState,
    account: &Account,
    id: &ConversationId,
    verbose: bool,
) -> Result<(Conversation, Option<Vec<StoredEvent>>)> {
    let conversation = state
        .store
        .get_conversation(&account.name, id)
        .await?
        .ok_or(ServiceError::InvalidConversationId)?;
    let events = if verbose {
        Some(state.store.list_events(id).await?)
    } else {
        None
    };
    Ok((conversation, events))
}

/// One page of the account's visible conversations and the total number of matches.
pub async fn list_conversations(
    state: &AppState,
    account: &Account,
    status: Option<Status>,
    limit: u32,
    page: u32,
) -> Result<(Vec<Conversation>, u64)> {
    let offset = u64::from(page.max(1) - 1) * u64::from(limit);
    Ok(state
        .store
        .list_conversations(&account.name, status, limit, offset)
        .await?)
}

/// Ends a conversation (a no-op when already ended) and produces its assets.
pub async fn end_conversation(
    state: &AppState,
    account: &Account,
    id: &ConversationId,
) -> Result<Conversation> {
    let reason = ShutdownReason::EndEndpointHit.as_str();
    match state
        .store
        .end_conversation(
            Some(&account.name),
            id,
            reason,
            Timestamp::now(),
            jobs::inline_lease(state),
        )
        .await?
    {
        EndOutcome::NotFound => Err(ServiceError::InvalidConversationId),
        EndOutcome::AlreadyEnded(c) => Ok(c),
        EndOutcome::Ended {
            conversation,
            finalize,
        } => {
            tracing::info!(conversation.id = %id, shutdown_reason = reason, "conversation ended");
            jobs::run_if_claimed(state, finalize).await;
            state.wake_deliveries.notify_one();
            Ok(conversation)
        }
    }
}

/// Deletes a conversation: soft hides it, hard erases it. See the delete table in `docs/API.md`.
pub async fn delete_conversation(
    state: &AppState,
    account: &Account,
    id: &ConversationId,
    hard: bool,
) -> Result<()> {
    if hard {
        return match state
            .store
            .hard_delete(
                DeleteScope::Account(&account.name),
                id,
                Timestamp::now(),
                jobs::inline_lease(state),
            )
            .await?
        {
            HardDeleteOutcome::NotFound => Err(ServiceError::InvalidConversationId),
            HardDeleteOutcome::Deleted { receipt, purge } => {
                tracing::info!(
                    conversation.id = %id,
                    event.count = receipt.events,
                    asset.count = receipt.assets,
                    "conversation hard-deleted"
                );
                // Purge before answering when we can; the job row makes it happen regardless.
                jobs::run_if_claimed(state, purge).await;
                state.wake_deliveries.notify_one();
                Ok(())
            }
        };
    }
    let retention = state.settings.retention_for(account);
    // An active call is ended first, then hidden. A call is never active again once ended, so
    // the second round settles it whatever concurrent requests did in between.
    for _ in 0..2 {
        let now = Timestamp::now();
        let purge_at = now.plus_millis(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match state.store.soft_delete(&account.name, id, now, purge_at).await? {
            SoftDeleteOutcome::NotFound => return Err(ServiceError::InvalidConversationId),
            SoftDeleteOutcome::Deleted | SoftDeleteOutcome::AlreadyDeleted => {
                state.wake_deliveries.notify_one();
                return Ok(());
            }
            SoftDeleteOutcome::StillActive => {
                let reason = ShutdownReason::Deleted.as_str();
                match state
                    .store
                    .end_conversation(Some(&account.name), id, reason, now, jobs::inline_lease(state))
                    .await?
                {
                    // Another request ended and hid it meanwhile: the next round answers
                    // 204 for a soft-deleted one, 400 for one hard-deleted since.
                    EndOutcome::NotFound | EndOutcome::AlreadyEnded(_) => {}
                    EndOutcome::Ended { finalize, .. } => jobs::run_if_claimed(state, finalize).await,
                }
            }
        }
    }
    // Unreachable by the reasoning above; a retry would settle it.
    Err(ServiceError::Store(StoreError::Unavailable(
        "conversation changed during delete".into(),
    )))
}

/// The bytes of a visible conversation's recording.
pub async fn get_recording(
    state: &AppState,
    account: &Account,
    id: &ConversationId,
) -> Result<(String, bytes::Bytes)> {
    let Some(asset) = state.store.get_asset(&account.name, id, jobs::RECORDING).await? else {
        state
            .store
            .get_conversation(&account.name, id)
            .await?
            .ok_or(ServiceError::InvalidConversationId)?;
        return Err(ServiceError::NotFound("No recording for this conversation"));
    };
    // Without the key there is nothing to open, and the blob may be gone too (an old copy of the
    // database put back beside today's blobs): the same answer either way.
    let unavailable = ServiceError::NotFound("Recording unavailable: its content can no longer be read");
    let Some(key) = state.store.key(id).await? else {
        return Err(unavailable);
    };
    let sealed = match state.blobs.get(&asset.blob_key).await {
        Ok(sealed) => sealed,
        Err(BlobError::NotFound(_)) => {
            tracing::error!(conversation.id = %id, blob.key = %asset.blob_key, "a recording's blob is missing");
            return Err(unavailable);
        }
        Err(e) => return Err(e.into()),
    };
    let bytes = sealed::open_blob(&key.key, id, &asset.blob_key, &sealed).ok_or(unavailable)?;
    Ok((asset.content_type, bytes))
}
