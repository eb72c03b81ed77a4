//! The durable job runner: joins, timers, call finalisation, purges and retention, retried until done.

use parley_store::ConversationStore;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::future::join_all;
use parley_blobs::{BlobKey, Blobs};
use parley_domain::replica::{self, RecordingLocation};
use parley_domain::{ConversationId, Event, ShutdownReason, Status, Timestamp};
use parley_store::{Asset, DeleteScope, EndOutcome, HardDeleteOutcome, Job, JobKind};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::sealed::{self, SealedStore};
use crate::state::AppState;

/// Jobs claimed per round.
const BATCH: u32 = 16;
/// The recording's asset name.
pub const RECORDING: &str = "recording.wav";
/// Retry delays of a failed job: 1 s, doubling to 5 min.
const JOB_BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};
/// Longest wait between attempts of a job that failed for lack of space, so it resumes soon
/// after room is back rather than after a long backoff.
const DISK_FULL_RETRY: Duration = Duration::from_secs(5);

/// Runs due jobs until `shutdown` turns true; a job in progress finishes first.
pub async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut resource_work = crate::work::Runner::default();
    while !*shutdown.borrow() {
        crate::resources::purge_pending(&state).await;
        resource_work.claim_due(&state).await;
        let now = Timestamp::now();
        match state
            .store
            .claim_due_jobs(now, state.settings.lease_from(now), BATCH)
            .await
        {
            Ok(jobs) if !jobs.is_empty() => {
                join_all(jobs.into_iter().map(|job| run_claimed(&state, job))).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                state.disk.notice(&e);
                tracing::warn!(error = %e, "claiming jobs failed");
            }
        }
        tokio::select! {
            () = state.wake_jobs.notified() => {}
            () = tokio::time::sleep(state.settings.job_poll_interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    resource_work.stop().await;
}

/// The lease for a job that the caller creates and runs at once, if this process runs jobs.
///
/// A job created already claimed cannot be taken by the runner in between, so the request that
/// made it sees it done (or failed and queued for retry) before answering.
pub fn inline_lease(state: &AppState) -> Option<Timestamp> {
    state
        .settings
        .run_jobs
        .then(|| state.settings.lease_from(Timestamp::now()))
}

/// Runs a job the caller created, if it was created claimed (see [`inline_lease`]).
pub async fn run_if_claimed(state: &AppState, job: Job) {
    if job.attempts > 0 {
        run_claimed(state, job).await;
    }
}

/// Runs a job claimed by the caller; failure is logged, and the job row stays for a retry.
pub async fn run_claimed(state: &AppState, job: Job) {
    let started = std::time::Instant::now();
    match execute(state, &job).await {
        Ok(()) => {
            // A job may have written events; their deliveries can go now.
            state.wake_deliveries.notify_one();
            if let Err(e) = state.store.complete_job(&job).await {
                state.disk.notice(&e);
                tracing::warn!(job.id = job.id, error = %e, "completing job failed; it will run again");
            }
            tracing::debug!(
                job.id = job.id,
                job.kind = job.kind.as_str(),
                conversation.id = %job.conversation_id,
                duration_ms = started.elapsed().as_millis() as u64,
                "job done"
            );
        }
        Err(e) => {
            let mut wait = JOB_BACKOFF.delay(job.attempts);
            if state.disk.notice(e.as_ref()) {
                wait = wait.min(DISK_FULL_RETRY);
            }
            let retry_at = Timestamp::now().plus_millis(wait.as_millis() as i64);
            tracing::warn!(
                job.id = job.id,
                job.kind = job.kind.as_str(),
                conversation.id = %job.conversation_id,
                attempts = job.attempts,
                error = format!("{e:#}"),
                "job failed; will retry"
            );
            if let Err(e) = state.store.fail_job(&job, &format!("{e:#}"), retry_at).await {
                state.disk.notice(&e);
                tracing::warn!(job.id = job.id, error = %e, "recording job failure failed; the lease will expire");
            }
        }
    }
}

async fn execute(state: &AppState, job: &Job) -> anyhow::Result<()> {
    let id = &job.conversation_id;
    match job.kind {
        JobKind::JoinReplica => {
            let Some(c) = state.store.load_conversation(id).await? else {
                return Ok(());
            };
            if state.settings.unjoinable_replicas.contains(&c.replica_id) {
                return end_call(state, id, ShutdownReason::BotCouldNotJoin).await;
            }
            let event = Event::replica_joined(Timestamp::now(), &c.replica_id);
            state.store.record_join(id, &event).await?;
            Ok(())
        }
        JobKind::MaxDurationTimer => end_call(state, id, ShutdownReason::MaxCallDuration).await,
        JobKind::AbsentTimer => {
            match state.store.load_conversation(id).await? {
                // Someone joined in time: the timer has nothing to do.
                Some(c) if c.status == Status::Active && c.participant_joined_at.is_none() => {
                    end_call(state, id, ShutdownReason::ParticipantAbsentTimeout).await
                }
                _ => Ok(()),
            }
        }
        JobKind::LeftTimer => {
            match state.store.load_conversation(id).await? {
                // Only if nobody came back since the room emptied at the moment this timer belongs to.
                Some(c)
                    if c.status == Status::Active
                        && c.participants_present == 0
                        && c.participant_left_at == job.not_before =>
                {
                    end_call(state, id, ShutdownReason::ParticipantLeftTimeout).await
                }
                _ => Ok(()),
            }
        }
        JobKind::Finalize => finalize(state, id).await,
        JobKind::Purge => purge(state, id).await,
        JobKind::RetentionPurge => {
            let deleted_at = job
                .not_before
                .context("retention job without its soft-delete time")?;
            let scope = DeleteScope::RetentionExpired { deleted_at };
            let lease = inline_lease(state);
            if let HardDeleteOutcome::Deleted { purge: job, .. } = state
                .store
                .hard_delete(scope, id, Timestamp::now(), lease)
                .await?
            {
                tracing::info!(conversation.id = %id, "retention window over; conversation erased");
                Box::pin(run_if_claimed(state, job)).await;
            }
            Ok(())
        }
    }
}

/// Ends a call from a timer or a failed join; a call already over is left as it is.
async fn end_call(state: &AppState, id: &ConversationId, reason: ShutdownReason) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let outcome = state
        .store
        .end_conversation(None, id, reason.as_str(), now, inline_lease(state))
        .await?;
    if let EndOutcome::Ended { finalize, .. } = outcome {
        tracing::info!(conversation.id = %id, shutdown_reason = reason.as_str(), "conversation ended");
        Box::pin(run_if_claimed(state, finalize)).await;
    }
    Ok(())
}

/// Destroys a hard-deleted conversation's key (if the delete could not), then removes its blobs
/// and the database's copies of its erased rows.
async fn purge(state: &AppState, id: &ConversationId) -> anyhow::Result<()> {
    let removed = purge_conversation(&state.store, &state.blobs, id).await?;
    if !state
        .store
        .erase_residue()
        .await
        .context("erasing database residue")?
    {
        bail!("database checkpoint was blocked by readers");
    }
    tracing::info!(conversation.id = %id, blob.count = removed, "conversation purged");
    Ok(())
}

/// The part of a purge that is about one conversation: its key destroyed (and recorded on the
/// receipt), then its blobs deleted; returns how many blobs went. Safe to repeat.
///
/// The caller erases the database's residue afterwards (`erase_residue`), once for many purges.
pub async fn purge_conversation(
    store: &SealedStore,
    blobs: &Blobs,
    id: &ConversationId,
) -> anyhow::Result<usize> {
    store.shred(id).await.context("destroying the data key")?;
    blobs.delete_conversation(id).await.context("deleting blobs")
}

/// Produces an ended call's transcript, perception analysis and recording.
async fn finalize(state: &AppState, id: &ConversationId) -> anyhow::Result<()> {
    let (Some(c), Some(data_key)) = (
        state.store.load_conversation(id).await?,
        state.store.key(id).await?,
    ) else {
        // Hard-deleted before we ran: make sure nothing we wrote on an earlier attempt survives.
        state.blobs.delete_conversation(id).await?;
        return Ok(());
    };
    // The transcript and recording can be large: on a full disk they wait for room, and the job
    // is retried (see `disk`).
    state
        .disk
        .check_writable(state.store.as_ref(), &state.blobs)
        .await?;
    let now = Timestamp::now();
    let mut recording = None;
    if c.enable_recording && !c.test_mode {
        let secs = c
            .duration_secs()
            .clamp(1, u64::from(state.settings.max_recording_secs.max(1)));
        let secs = u32::try_from(secs).unwrap_or(u32::MAX);
        // A fresh seed: no two recordings share a run of audio bytes, so one conversation's
        // recording can be shown gone while another's remains (a retry just writes a new one).
        let wav = replica::recording_wav(&c, secs, rand::random());
        let key = BlobKey::Asset {
            conversation: id.clone(),
            asset: RECORDING.into(),
        };
        let sealed = sealed::seal_blob(&data_key.key, id, &key.path(), &wav);
        state.blobs.put(&key, sealed).await.context("storing recording")?;
        let location = RecordingLocation {
            bucket_name: "parley".into(),
            key: key.path(),
            uri: format!("{}/v2/conversations/{id}/recording", state.settings.public_url),
            duration_secs: secs,
        };
        let asset = Asset {
            name: RECORDING.into(),
            blob_key: key.path(),
            content_type: "audio/wav".into(),
            // The recording's own size, as a download gets it.
            size: wav.len() as u64,
            created_at: now,
        };
        recording = Some((location, asset));
    }
    drop(data_key);
    let events = replica::after_end_events(&c, now, recording.as_ref().map(|(l, _)| l));
    let stored = state
        .store
        .store_call_results(id, &events, recording.as_ref().map(|(_, a)| a))
        .await?;
    if !stored {
        // The conversation was hard-deleted while we worked: take back what we wrote.
        state.blobs.delete_conversation(id).await?;
    }
    Ok(())
}
