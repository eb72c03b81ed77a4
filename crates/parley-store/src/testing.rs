//! The store contract: what every `ConversationStore` backend must do, asserted through the trait alone.
//!
//! A backend's tests call [`store_contract!`](crate::store_contract) with an expression that makes
//! a fresh, empty [`TestStore`]. Each contract test then runs on stores of its own, is reported
//! by its own name, and ends with [`finish`], which checks that the job queue holds exactly what
//! the test expects (crates.io's drop check: no stray job) before the store is released.
//!
//! The tests live in one module per concern; the helpers below are public so that a backend's
//! own tests (several processes on one database, say) build the same conversations.

pub mod account;
pub mod conversation;
pub mod copy;
pub mod delete;
pub mod delivery;
pub mod job;
pub mod receipt;
pub mod reseal;
pub mod resource;

use std::future::Future;
use std::sync::Arc;

use parley_domain::{Conversation, ConversationId, Event, EventType, Status, Timestamp};
use serde_json::json;

use crate::{
    Asset, ConversationStore, DeliveryFilter, DeliveryInfo, EndOutcome, HardDeleteOutcome, Job, JobKind,
};

/// Expands to one `#[tokio::test]` per contract test, each on stores of its own.
///
/// `$fresh` is an expression whose value is a future of a fresh, empty [`testing::TestStore`](crate::testing::TestStore);
/// it is evaluated again for every store a test needs. For example, in a backend's
/// `tests/contract.rs`: `parley_store::store_contract!(TempStore::fresh());`.
#[macro_export]
macro_rules! store_contract {
    ($fresh:expr) => {
        $crate::store_contract!(@each $fresh;
            account::accounts_are_created_once_and_carry_their_limits,
            account::keys_authenticate_their_account_until_revoked,
            conversation::a_created_conversation_reads_back_exactly_as_written,
            conversation::conversations_are_listed_newest_first_a_page_at_a_time_with_their_total,
            conversation::conversation_ids_are_paged_in_id_order_in_every_state_but_erased,
            conversation::the_cap_counts_only_active_conversations_outside_test_mode,
            conversation::concurrent_creates_never_exceed_the_cap,
            conversation::a_test_mode_conversation_or_one_without_a_callback_queues_no_webhooks,
            conversation::the_replica_joins_an_active_conversation_once,
            conversation::ending_a_conversation_writes_its_shutdown_and_swaps_its_timers_for_a_finalize_job,
            conversation::call_results_are_stored_once_and_refused_after_a_hard_delete,
            conversation::participants_are_counted_in_and_out_and_an_empty_room_schedules_the_left_timer,
            delete::a_soft_delete_of_an_active_conversation_is_refused_as_still_active,
            delete::a_soft_delete_of_an_ended_conversation_hides_it_and_schedules_its_retention_purge,
            delete::a_soft_delete_of_a_soft_deleted_conversation_changes_nothing,
            delete::a_soft_delete_of_a_hard_deleted_unknown_or_other_accounts_conversation_is_not_found,
            delete::a_hard_delete_of_an_active_conversation_ends_it_then_erases_it,
            delete::a_hard_delete_of_an_ended_conversation_erases_it_and_leaves_a_receipt_and_a_claimed_purge,
            delete::a_hard_delete_of_a_soft_deleted_conversation_purges_it_now,
            delete::a_hard_delete_of_a_hard_deleted_unknown_or_other_accounts_conversation_is_not_found,
            delete::restoring_a_soft_deleted_conversation_brings_it_back_and_cancels_its_retention_purge,
            delete::a_retention_purge_erases_only_the_soft_delete_it_was_scheduled_for,
            delete::a_hard_delete_for_a_lost_key_erases_a_conversation_in_any_state,
            delete::of_fifty_concurrent_hard_deletes_exactly_one_deletes,
            delete::erasing_residue_completes_after_a_purge,
            delete::a_write_probe_writes_nothing_that_is_copied_or_served,
            job::due_jobs_are_claimed_in_run_order_under_a_lease,
            job::an_expired_lease_is_claimed_again_and_the_stale_claim_can_no_longer_finish_the_job,
            job::a_failed_job_runs_again_at_its_retry_time_with_its_error_recorded,
            job::releasing_all_leases_makes_every_claimed_job_and_delivery_claimable_at_once,
            job::concurrent_claimers_never_get_the_same_job,
            delivery::only_the_oldest_pending_delivery_of_each_conversation_is_claimed,
            delivery::a_failing_delivery_holds_back_its_conversation_but_never_another,
            delivery::a_delivery_given_up_is_failed_with_its_error_and_the_next_one_goes,
            delivery::a_delivery_that_succeeds_is_delivered_and_never_claimed_again,
            delivery::a_stale_delivery_claim_can_neither_finish_nor_reschedule_its_successors,
            delivery::retrying_a_delivery_queues_it_now_with_a_fresh_window_and_it_waits_its_turn,
            delivery::deliveries_carry_their_accounts_signing_secret_while_one_is_set,
            delivery::a_hard_delete_keeps_only_unsent_deliveries_without_content_and_forgets_them_once_finished,
            delivery::concurrent_delivery_runners_send_each_conversation_in_order_one_at_a_time,
            delivery::listing_failed_deliveries_shows_those_given_up_and_those_waiting_to_retry,
            receipt::erasure_receipts_say_who_when_and_how_much_newest_first_per_account,
            receipt::a_receipt_records_its_destroyed_key_once,
            copy::every_table_copies_into_a_fresh_store_row_for_row,
            copy::an_export_pages_by_key_and_visits_every_row_once,
            copy::an_import_rerun_after_a_partial_copy_completes_it,
            copy::a_copied_store_numbers_new_rows_after_the_copied_ones,
            reseal::unsealed_conversations_come_a_page_at_a_time_with_every_content_row,
            reseal::resealing_rewrites_every_content_row_of_a_conversation_at_once,
            reseal::a_reseal_naming_another_conversations_row_changes_nothing,
            reseal::compacting_keeps_every_row,
            resource::a_created_resource_reads_back_exactly_and_its_id_is_unique_per_account_and_kind,
            resource::resources_are_listed_newest_first_a_page_at_a_time_with_their_total,
            resource::an_update_writes_only_over_the_version_it_read,
            resource::a_soft_deleted_resource_is_hidden_kept_and_keeps_its_id,
            resource::a_hard_delete_removes_the_row_and_leaves_its_purge_until_finished,
            resource::due_resource_work_is_claimed_once_under_a_lease,
        );
    };
    (@each $fresh:expr; $($module:ident :: $name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testing::$module::$name(async || $fresh.await).await;
            }
        )+
    };
}

/// A fresh, empty store made for one test, and what to release after it.
pub trait TestStore: Send + 'static {
    /// The store under test, shared with the tasks a test spawns.
    fn store(&self) -> Arc<dyn ConversationStore>;

    /// Closes the store and removes what was made for it (a file, a database).
    fn tear_down(self) -> impl Future<Output = ()> + Send;
}

/// Ends a test: the job queue holds exactly `expected` (kind and conversation, oldest job first),
/// then the store is released.
///
/// A failed test never gets here, so a backend may leave its store behind for inspection.
pub async fn finish<T: TestStore>(t: T, expected: &[(JobKind, &ConversationId)]) {
    let jobs = t.store().list_jobs().await.expect("listing jobs");
    let queued: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j.kind.as_str(), j.conversation_id.as_str()))
        .collect();
    let expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|(kind, id)| (kind.as_str(), id.as_str()))
        .collect();
    assert_eq!(queued, expected, "the job queue at the end of the test");
    t.tear_down().await;
}

/// A fixed instant, so that stored timestamps can be checked exactly.
pub const T0: Timestamp = Timestamp::from_micros(1_750_000_000_000_000);

/// `secs` seconds after [`T0`] (before it when negative).
pub fn at(secs: i64) -> Timestamp {
    T0.plus_secs(secs)
}

/// Where conversations made [`with_callback`] send their events.
pub const CALLBACK: &str = "https://hooks.example.com/tavus";

/// What the transcript of [`after_end_events`] says: content a hard delete must erase.
pub const SECRET: &str = "the secret plan";

/// An active conversation of `account` with a fresh random id and every text field set.
pub fn conversation(account: &str, created_at: Timestamp) -> Conversation {
    Conversation {
        id: ConversationId::from_random(rand::random()),
        account: account.to_owned(),
        status: Status::Active,
        conversation_name: Some("Weekly sync".into()),
        callback_url: None,
        replica_id: "r79e1c033f".into(),
        persona_id: "p5317866".into(),
        conversational_context: Some("Talk about the café ☕".into()),
        custom_greeting: None,
        test_mode: false,
        enable_recording: true,
        meeting_token: None,
        // Spacing and key order as a client sent them: stored as bytes, never re-serialised.
        request_json: "{ \"replica_id\":\"r79e1c033f\",  \"persona_id\": \"p5317866\", \"x\": 1.50 }".into(),
        created_at,
        updated_at: created_at,
        joined_at: None,
        ended_at: None,
        shutdown_reason: None,
        deleted_at: None,
        max_call_duration: 3600,
        participant_left_timeout: 60,
        participant_absent_timeout: 300,
        participants_present: 0,
        participant_joined_at: None,
        participant_left_at: None,
    }
}

/// The conversation, sending its events to [`CALLBACK`].
pub fn with_callback(mut c: Conversation) -> Conversation {
    c.callback_url = Some(CALLBACK.into());
    c
}

/// The jobs [`seed`] schedules with a conversation, in the order it makes them.
pub fn usual_jobs(id: &ConversationId) -> [(JobKind, &ConversationId); 3] {
    [
        (JobKind::JoinReplica, id),
        (JobKind::MaxDurationTimer, id),
        (JobKind::AbsentTimer, id),
    ]
}

/// Creates the conversation's account if needed, then the conversation with the usual jobs:
/// the replica's join now, the absent timer after 300 s and the duration timer after 3600 s.
pub async fn seed(store: &dyn ConversationStore, c: &Conversation) {
    store.ensure_account(&c.account, T0).await.expect("account");
    let jobs = [
        (JobKind::JoinReplica, c.created_at),
        (JobKind::MaxDurationTimer, c.created_at.plus_secs(3600)),
        (JobKind::AbsentTimer, c.created_at.plus_secs(300)),
    ];
    store.create_conversation(c, 100, &jobs).await.expect("create");
}

/// Ends the conversation as its account would, and returns the (unclaimed) finalize job.
pub async fn end(store: &dyn ConversationStore, id: &ConversationId, now: Timestamp) -> Job {
    let outcome = store
        .end_conversation(None, id, "end_conversation_endpoint_hit", now, None)
        .await
        .expect("end");
    match outcome {
        EndOutcome::Ended { finalize, .. } => finalize,
        other => panic!("not ended: {other:?}"),
    }
}

/// What a finalize stores after the end: a transcript (with [`SECRET`]) and a recording.
pub fn after_end_events(at: Timestamp) -> Vec<Event> {
    vec![
        Event {
            event_type: EventType::TranscriptionReady,
            timestamp: at,
            properties: json!({ "transcript": [{ "role": "user", "content": SECRET }] }),
        },
        Event {
            event_type: EventType::RecordingReady,
            timestamp: at,
            properties: json!({ "bucket_name": "parley", "s3_key": "conversations/x/assets/recording.wav" }),
        },
    ]
}

/// The recording's asset row: 48,044 bytes.
pub fn recording(id: &ConversationId, at: Timestamp) -> Asset {
    Asset {
        name: "recording.wav".into(),
        blob_key: format!("conversations/{id}/assets/recording.wav"),
        content_type: "audio/wav".into(),
        size: 48_044,
        created_at: at,
    }
}

/// A whole call with a callback, made at `created_at` (T0 and the seconds below are relative to it):
/// a participant, the replica's join at +1 s, the end at +2 s and the results at +3 s.
///
/// It holds 4 events, 1 asset of 48,044 bytes, 1 participant, 4 pending deliveries, and one job:
/// its finalize.
pub async fn ended_call(store: &dyn ConversationStore, account: &str, created_at: Timestamp) -> Conversation {
    let c = with_callback(conversation(account, created_at));
    seed(store, &c).await;
    store
        .participant_join(&c.id, &format!("p{}", c.id), created_at)
        .await
        .expect("participant");
    store
        .record_join(
            &c.id,
            &Event::replica_joined(created_at.plus_secs(1), &c.replica_id),
        )
        .await
        .expect("replica");
    end(store, &c.id, created_at.plus_secs(2)).await;
    let results = created_at.plus_secs(3);
    let stored = store
        .store_call_results(
            &c.id,
            &after_end_events(results),
            Some(&recording(&c.id, results)),
        )
        .await
        .expect("results");
    assert!(stored);
    c
}

/// Hard-deletes as the owner would, and returns the receipt and the purge job.
pub async fn hard_delete(
    store: &dyn ConversationStore,
    c: &Conversation,
    now: Timestamp,
) -> (crate::ErasureReceipt, Job) {
    let outcome = store
        .hard_delete(crate::DeleteScope::Account(&c.account), &c.id, now, None)
        .await
        .expect("hard delete");
    match outcome {
        HardDeleteOutcome::Deleted { receipt, purge } => (receipt, purge),
        HardDeleteOutcome::NotFound => panic!("{} was not found", c.id),
    }
}

/// A job as `(kind, run_at, not_before, locked_until, attempts)`: what tests of timers and leases check.
pub type JobRow = (JobKind, Timestamp, Option<Timestamp>, Option<Timestamp>, u32);

/// The conversation's pending jobs, oldest first.
pub async fn jobs_of(store: &dyn ConversationStore, id: &ConversationId) -> Vec<JobRow> {
    store
        .list_jobs()
        .await
        .expect("listing jobs")
        .into_iter()
        .filter(|j| j.conversation_id == id.as_str())
        .map(|j| {
            let kind = JobKind::parse(&j.kind).expect("a known job kind");
            (kind, j.run_at, j.not_before, j.locked_until, j.attempts)
        })
        .collect()
}

/// The conversation's deliveries, oldest first.
pub async fn deliveries_of(store: &dyn ConversationStore, id: &ConversationId) -> Vec<DeliveryInfo> {
    store
        .list_deliveries(DeliveryFilter {
            conversation_id: Some(id.as_str()),
            failed_only: false,
        })
        .await
        .expect("listing deliveries")
}

/// `(event_type, status)` of each delivery.
pub fn types_and_statuses(deliveries: &[DeliveryInfo]) -> Vec<(&str, &str)> {
    deliveries
        .iter()
        .map(|d| (d.event_type.as_str(), d.status.as_str()))
        .collect()
}

/// Asserts two conversations are equal in every field (`Conversation` has no `PartialEq`, and its
/// `Debug` shows every field).
#[track_caller]
pub fn assert_same(got: &Conversation, expected: &Conversation) {
    assert_eq!(format!("{got:#?}"), format!("{expected:#?}"));
}

#[cfg(test)]
mod tests {
    /// Every contract test must be in `store_contract!`'s list, or no backend would run it.
    #[test]
    fn every_contract_test_is_expanded_by_the_macro() {
        let macro_source = include_str!("testing.rs");
        let modules = [
            ("account", include_str!("testing/account.rs")),
            ("conversation", include_str!("testing/conversation.rs")),
            ("copy", include_str!("testing/copy.rs")),
            ("delete", include_str!("testing/delete.rs")),
            ("delivery", include_str!("testing/delivery.rs")),
            ("job", include_str!("testing/job.rs")),
            ("receipt", include_str!("testing/receipt.rs")),
            ("reseal", include_str!("testing/reseal.rs")),
        ];
        let mut count = 0;
        for (module, source) in modules {
            for line in source.lines() {
                let Some(rest) = line.strip_prefix("pub async fn ") else {
                    continue;
                };
                let name = rest.split(['<', '(']).next().expect("a name");
                let listed = format!("{module}::{name},");
                assert!(
                    macro_source.contains(&listed),
                    "{listed} is missing from store_contract!"
                );
                count += 1;
            }
        }
        assert!(
            count > 30,
            "found only {count} contract tests: has the declaration changed?"
        );
    }
}
