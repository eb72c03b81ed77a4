//! Contract tests for the delete table: soft and hard, of every kind of conversation, and restore.
//!
//! The rows are the README's: active, ended, already soft-deleted, and hard-deleted, unknown or
//! another account's. A soft delete of an active conversation is `StillActive` here; the service
//! ends the call first, then soft-deletes it.

use std::sync::Arc;

use parley_domain::{Conversation, Event, Status};
use tokio::task::JoinSet;

use super::{
    T0, TestStore, assert_same, at, conversation, deliveries_of, ended_call, finish, hard_delete, jobs_of,
    seed, types_and_statuses, usual_jobs, with_callback,
};
use crate::table::Table;
use crate::{ConversationStore, DeleteScope, HardDeleteOutcome, JobKind, SoftDeleteOutcome};

/// Asserts that nothing of any conversation is left but receipts, deliveries and jobs.
async fn assert_no_conversation_rows(store: &dyn ConversationStore) {
    for table in [
        Table::Conversation,
        Table::Participant,
        Table::Event,
        Table::Asset,
    ] {
        let rows = store.count_rows(table).await.expect("count");
        assert_eq!(rows, 0, "rows left in {}", table.name());
    }
}

/// Asserts that the conversation is still stored, whole, and still visible to its account.
async fn assert_untouched(store: &dyn ConversationStore, c: &Conversation) {
    let got = store.get_conversation(&c.account, &c.id).await.expect("get");
    assert!(
        got.is_some_and(|got| got.deleted_at.is_none()),
        "{} was hidden",
        c.id
    );
    assert_eq!(store.list_events(&c.id).await.expect("events").len(), 4);
    let asset = store.get_asset(&c.account, &c.id, "recording.wav").await;
    assert!(asset.expect("asset").is_some());
}

/// Soft, active: refused, and nothing changes.
pub async fn a_soft_delete_of_an_active_conversation_is_refused_as_still_active<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    let outcome = store.soft_delete("acme", &c.id, at(1), at(100)).await;
    assert_eq!(outcome.expect("soft delete"), SoftDeleteOutcome::StillActive);
    let got = store.get_conversation("acme", &c.id).await.expect("get");
    assert_same(&got.expect("still visible"), &c);
    finish(t, &usual_jobs(&c.id)).await;
}

/// Soft, ended: hidden from the account, kept whole, and its retention purge scheduled.
pub async fn a_soft_delete_of_an_ended_conversation_hides_it_and_schedules_its_retention_purge<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let outcome = store.soft_delete("acme", &c.id, at(10), at(86_410)).await;
    assert_eq!(outcome.expect("soft delete"), SoftDeleteOutcome::Deleted);

    assert!(
        store
            .get_conversation("acme", &c.id)
            .await
            .expect("get")
            .is_none()
    );
    let (page, total) = store.list_conversations("acme", None, 10, 0).await.expect("list");
    assert_eq!((page.len(), total), (0, 0));
    let asset = store.get_asset("acme", &c.id, "recording.wav").await;
    assert!(asset.expect("asset").is_none());
    let hidden = store.load_conversation(&c.id).await.expect("load").expect("kept");
    assert_eq!(
        (hidden.status, hidden.deleted_at, hidden.updated_at),
        (Status::Ended, Some(at(10)), at(10))
    );
    // The record and its content are kept, recoverable until the purge.
    assert_eq!(store.list_events(&c.id).await.expect("events").len(), 4);
    assert_eq!(store.count_rows(Table::Asset).await.expect("count"), 1);
    assert_eq!(store.count_rows(Table::Participant).await.expect("count"), 1);
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [
            (JobKind::Finalize, at(2), None, None, 0),
            (JobKind::RetentionPurge, at(86_410), Some(at(10)), None, 0),
        ]
    );
    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::RetentionPurge, &c.id)]).await;
}

/// Soft, already soft-deleted: `AlreadyDeleted`, and the first delete's instant and purge stand.
pub async fn a_soft_delete_of_a_soft_deleted_conversation_changes_nothing<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let first = store.soft_delete("acme", &c.id, at(10), at(100)).await;
    assert_eq!(first.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let second = store.soft_delete("acme", &c.id, at(20), at(200)).await;
    assert_eq!(
        second.expect("soft delete again"),
        SoftDeleteOutcome::AlreadyDeleted
    );
    let hidden = store.load_conversation(&c.id).await.expect("load").expect("kept");
    assert_eq!((hidden.deleted_at, hidden.updated_at), (Some(at(10)), at(10)));
    assert_eq!(
        jobs_of(&*store, &c.id).await[1..],
        [(JobKind::RetentionPurge, at(100), Some(at(10)), None, 0)]
    );
    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::RetentionPurge, &c.id)]).await;
}

/// Soft, hard-deleted / unknown / another account's: `NotFound`, and nothing changes.
pub async fn a_soft_delete_of_a_hard_deleted_unknown_or_other_accounts_conversation_is_not_found<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let gone = ended_call(&*store, "acme", T0).await;
    hard_delete(&*store, &gone, at(5)).await;
    let theirs = ended_call(&*store, "acme", at(10)).await;
    let unknown = conversation("acme", T0).id;
    for (account, id) in [("acme", &gone.id), ("acme", &unknown), ("other", &theirs.id)] {
        let outcome = store.soft_delete(account, id, at(20), at(100)).await;
        assert_eq!(
            outcome.expect("soft delete"),
            SoftDeleteOutcome::NotFound,
            "{account} {id}"
        );
    }
    assert_untouched(&*store, &theirs).await;
    assert!(store.load_conversation(&gone.id).await.expect("load").is_none());
    finish(
        t,
        &[
            (JobKind::Finalize, &gone.id),
            (JobKind::Purge, &gone.id),
            (JobKind::Finalize, &theirs.id),
        ],
    )
    .await;
}

/// Hard, active: the call is ended on the way (its shutdown still goes out), then erased.
pub async fn a_hard_delete_of_an_active_conversation_ends_it_then_erases_it<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    store
        .participant_join(&c.id, "p1", at(1))
        .await
        .expect("participant");
    let joined = Event::replica_joined(at(1), &c.replica_id);
    store.record_join(&c.id, &joined).await.expect("replica");

    let (receipt, purge) = hard_delete(&*store, &c, at(5)).await;
    // Two events: the join, and the shutdown written by the delete itself.
    assert_eq!(
        (
            &receipt.conversation_id,
            receipt.account.as_str(),
            receipt.erased_at,
            receipt.reason.as_str()
        ),
        (&c.id, "acme", at(5), "hard_delete")
    );
    assert_eq!((receipt.events, receipt.assets, receipt.asset_bytes), (2, 0, 0));
    // No lease was asked for: the runner claims the purge.
    assert_eq!(
        (&purge.conversation_id, purge.kind, purge.attempts),
        (&c.id, JobKind::Purge, 0)
    );
    assert!(store.load_conversation(&c.id).await.expect("load").is_none());
    assert_no_conversation_rows(&*store).await;
    // Its timers went with it.
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [(JobKind::Purge, at(5), None, None, 0)]
    );

    // Unsent deliveries without content still go: the join, then the end of the call.
    let owed = deliveries_of(&*store, &c.id).await;
    assert_eq!(
        types_and_statuses(&owed),
        [
            ("system.replica_joined", "pending"),
            ("system.shutdown", "pending")
        ]
    );
    let first = store.claim_deliveries(at(6), at(60), 10).await.expect("claim");
    assert_eq!(first[0].event_type, "system.replica_joined");
    store.delivery_succeeded(&first[0], at(7)).await.expect("sent");
    let last = store.claim_deliveries(at(8), at(60), 10).await.expect("claim");
    let payload: serde_json::Value = serde_json::from_str(&last[0].payload).expect("JSON");
    assert_eq!(payload["event_type"], "system.shutdown");
    assert_eq!(payload["properties"]["shutdown_reason"], "conversation_deleted");
    assert_eq!(payload["timestamp"], at(5).to_string());
    store.delivery_succeeded(&last[0], at(9)).await.expect("sent");
    // Once sent, nothing of the conversation is left but its receipt.
    assert!(deliveries_of(&*store, &c.id).await.is_empty());
    assert_eq!(store.list_receipts(None).await.expect("receipts").len(), 1);
    finish(t, &[(JobKind::Purge, &c.id)]).await;
}

/// Hard, ended: rows erased, a receipt with counts, and the purge made already claimed.
pub async fn a_hard_delete_of_an_ended_conversation_erases_it_and_leaves_a_receipt_and_a_claimed_purge<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let outcome = store
        .hard_delete(DeleteScope::Account("acme"), &c.id, at(5), Some(at(100)))
        .await
        .expect("hard delete");
    let HardDeleteOutcome::Deleted { receipt, purge } = outcome else {
        panic!("not deleted: {outcome:?}");
    };
    assert_eq!(
        (receipt.events, receipt.assets, receipt.asset_bytes),
        (4, 1, 48_044)
    );
    assert_eq!(
        (
            receipt.reason.as_str(),
            receipt.erased_at,
            receipt.account.as_str()
        ),
        ("hard_delete", at(5), "acme")
    );
    assert_eq!((purge.kind, purge.attempts), (JobKind::Purge, 1));
    assert!(store.load_conversation(&c.id).await.expect("load").is_none());
    assert!(store.list_events(&c.id).await.expect("events").is_empty());
    assert_no_conversation_rows(&*store).await;
    // The finalize job stays, so that one in flight finds the conversation gone and cleans up
    // after itself; the purge is leased to the caller.
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [
            (JobKind::Finalize, at(2), None, None, 0),
            (JobKind::Purge, at(5), None, Some(at(100)), 1),
        ]
    );
    let before_the_lease_ends = store.claim_due_jobs(at(99), at(200), 10).await.expect("claim");
    let kinds: Vec<_> = before_the_lease_ends.iter().map(|j| j.kind).collect();
    assert_eq!(kinds, [JobKind::Finalize]);
    let after = store.claim_due_jobs(at(100), at(200), 10).await.expect("claim");
    assert_eq!(
        after.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        [(purge.id, 2)]
    );
    let receipts = store.list_receipts(Some("acme")).await.expect("receipts");
    assert_eq!(
        receipts.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>(),
        [format!("{receipt:?}")]
    );
    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::Purge, &c.id)]).await;
}

/// Hard, already soft-deleted: purged now, and its retention purge is no longer needed.
pub async fn a_hard_delete_of_a_soft_deleted_conversation_purges_it_now<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let soft = store.soft_delete("acme", &c.id, at(10), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let (receipt, _) = hard_delete(&*store, &c, at(20)).await;
    assert_eq!(
        (
            receipt.reason.as_str(),
            receipt.events,
            receipt.assets,
            receipt.asset_bytes
        ),
        ("hard_delete", 4, 1, 48_044)
    );
    assert!(store.load_conversation(&c.id).await.expect("load").is_none());
    assert_no_conversation_rows(&*store).await;
    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::Purge, &c.id)]).await;
}

/// Hard, hard-deleted / unknown / another account's: `NotFound`, no second receipt, nothing erased.
pub async fn a_hard_delete_of_a_hard_deleted_unknown_or_other_accounts_conversation_is_not_found<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let gone = ended_call(&*store, "acme", T0).await;
    hard_delete(&*store, &gone, at(5)).await;
    let theirs = ended_call(&*store, "acme", at(10)).await;
    let unknown = conversation("acme", T0).id;
    let cases = [
        (DeleteScope::Account("acme"), &gone.id),
        (DeleteScope::Account("acme"), &unknown),
        (DeleteScope::RetentionExpired { deleted_at: at(1) }, &unknown),
        (DeleteScope::Account("other"), &theirs.id),
    ];
    for (scope, id) in cases {
        let outcome = store.hard_delete(scope, id, at(20), Some(at(80))).await;
        let outcome = outcome.expect("hard delete");
        assert!(
            matches!(outcome, HardDeleteOutcome::NotFound),
            "{scope:?} {id}: {outcome:?}"
        );
    }
    assert_untouched(&*store, &theirs).await;
    assert_eq!(store.list_receipts(None).await.expect("receipts").len(), 1);
    finish(
        t,
        &[
            (JobKind::Finalize, &gone.id),
            (JobKind::Purge, &gone.id),
            (JobKind::Finalize, &theirs.id),
        ],
    )
    .await;
}

/// `restore`: true only for a soft-deleted conversation, which is visible again with no purge due.
pub async fn restoring_a_soft_deleted_conversation_brings_it_back_and_cancels_its_retention_purge<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let soft = store.soft_delete("acme", &c.id, at(10), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    assert!(store.restore(&c.id, at(20)).await.expect("restore"));
    let back = store.get_conversation("acme", &c.id).await.expect("get");
    let back = back.expect("visible again");
    assert_eq!((back.deleted_at, back.updated_at), (None, at(20)));
    assert_untouched(&*store, &c).await;
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [(JobKind::Finalize, at(2), None, None, 0)]
    );
    assert!(!store.restore(&c.id, at(21)).await.expect("restore twice"));

    let live = conversation("acme", at(30));
    seed(&*store, &live).await;
    let gone = ended_call(&*store, "acme", at(40)).await;
    hard_delete(&*store, &gone, at(45)).await;
    let unknown = conversation("acme", T0).id;
    for id in [&live.id, &gone.id, &unknown] {
        assert!(!store.restore(id, at(50)).await.expect("restore"), "{id}");
    }
    let mut expected = vec![(JobKind::Finalize, &c.id)];
    expected.extend(usual_jobs(&live.id));
    expected.extend([(JobKind::Finalize, &gone.id), (JobKind::Purge, &gone.id)]);
    finish(t, &expected).await;
}

/// `DeleteScope::RetentionExpired`: only while the conversation is still soft-deleted since that instant.
pub async fn a_retention_purge_erases_only_the_soft_delete_it_was_scheduled_for<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let soft = store.soft_delete("acme", &c.id, at(10), at(100)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    // The claimed retention job carries the instant of the soft delete it expires.
    let due = store.claim_due_jobs(at(100), at(160), 10).await.expect("claim");
    let retention = due.iter().find(|j| j.kind == JobKind::RetentionPurge);
    assert_eq!(
        retention.expect("the retention job is due").not_before,
        Some(at(10))
    );

    // Restored and deleted again before that job ran: it no longer applies.
    assert!(store.restore(&c.id, at(20)).await.expect("restore"));
    let again = store.soft_delete("acme", &c.id, at(30), at(120)).await;
    assert_eq!(again.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let stale = DeleteScope::RetentionExpired { deleted_at: at(10) };
    let outcome = store.hard_delete(stale, &c.id, at(110), None).await;
    assert!(matches!(outcome, Ok(HardDeleteOutcome::NotFound)), "{outcome:?}");
    assert!(store.load_conversation(&c.id).await.expect("load").is_some());
    // A conversation that is not soft-deleted is never a retention purge's.
    let live = conversation("acme", at(40));
    seed(&*store, &live).await;
    let ended = ended_call(&*store, "acme", at(50)).await;
    for id in [&live.id, &ended.id] {
        let any = DeleteScope::RetentionExpired { deleted_at: at(30) };
        let outcome = store.hard_delete(any, id, at(110), None).await;
        assert!(
            matches!(outcome, Ok(HardDeleteOutcome::NotFound)),
            "{id}: {outcome:?}"
        );
    }

    let current = DeleteScope::RetentionExpired { deleted_at: at(30) };
    let outcome = store.hard_delete(current, &c.id, at(120), None).await;
    let HardDeleteOutcome::Deleted { receipt, purge } = outcome.expect("retention purge") else {
        panic!("not deleted");
    };
    assert_eq!(
        (
            receipt.reason.as_str(),
            receipt.account.as_str(),
            receipt.erased_at
        ),
        ("retention_expired", "acme", at(120))
    );
    assert_eq!(
        (receipt.events, receipt.assets, receipt.asset_bytes),
        (4, 1, 48_044)
    );
    assert_eq!((purge.kind, purge.attempts), (JobKind::Purge, 0));
    assert!(store.load_conversation(&c.id).await.expect("load").is_none());

    let mut expected = vec![(JobKind::Finalize, &c.id)];
    expected.extend(usual_jobs(&live.id));
    expected.extend([(JobKind::Finalize, &ended.id), (JobKind::Purge, &c.id)]);
    finish(t, &expected).await;
}

/// `DeleteScope::KeyLost`: erases a conversation in any state, of any account, with its own reason.
pub async fn a_hard_delete_for_a_lost_key_erases_a_conversation_in_any_state<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let live = conversation("acme", T0);
    seed(&*store, &live).await;
    let ended = ended_call(&*store, "other", at(10)).await;
    let hidden = ended_call(&*store, "acme", at(20)).await;
    let soft = store.soft_delete("acme", &hidden.id, at(25), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let bystander = ended_call(&*store, "acme", at(30)).await;

    for (c, events, assets) in [(&live, 1, 0), (&ended, 4, 1), (&hidden, 4, 1)] {
        let outcome = store.hard_delete(DeleteScope::KeyLost, &c.id, at(40), None).await;
        let HardDeleteOutcome::Deleted { receipt, purge } = outcome.expect("hard delete") else {
            panic!("{} was not erased", c.id);
        };
        assert_eq!(
            (
                receipt.reason.as_str(),
                receipt.account.as_str(),
                receipt.events,
                receipt.assets
            ),
            ("key_lost", c.account.as_str(), events, assets)
        );
        assert_eq!((purge.kind, purge.attempts), (JobKind::Purge, 0));
        assert!(store.load_conversation(&c.id).await.expect("load").is_none());
    }
    let again = store
        .hard_delete(DeleteScope::KeyLost, &live.id, at(50), None)
        .await;
    assert!(matches!(again, Ok(HardDeleteOutcome::NotFound)), "{again:?}");
    assert_untouched(&*store, &bystander).await;
    finish(
        t,
        &[
            (JobKind::Finalize, &ended.id),
            (JobKind::Finalize, &hidden.id),
            (JobKind::Finalize, &bystander.id),
            (JobKind::Purge, &live.id),
            (JobKind::Purge, &ended.id),
            (JobKind::Purge, &hidden.id),
        ],
    )
    .await;
}

/// Racing hard deletes of one conversation: exactly one erases it and writes the receipt.
pub async fn of_fifty_concurrent_hard_deletes_exactly_one_deletes<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let mut erased = Vec::new();
    for round in 0..3 {
        let c = with_callback(conversation("acme", at(round)));
        seed(&*store, &c).await;
        let mut tasks = JoinSet::new();
        for _ in 0..50 {
            let store = Arc::clone(&store);
            let id = c.id.clone();
            tasks.spawn(async move {
                store
                    .hard_delete(DeleteScope::Account("acme"), &id, at(100), Some(at(200)))
                    .await
            });
        }
        let mut deleted = 0;
        while let Some(done) = tasks.join_next().await {
            match done.expect("task").expect("hard delete") {
                HardDeleteOutcome::Deleted { .. } => deleted += 1,
                HardDeleteOutcome::NotFound => {}
            }
        }
        assert_eq!(deleted, 1, "round {round}");
        assert!(store.load_conversation(&c.id).await.expect("load").is_none());
        let receipts = store.list_receipts(None).await.expect("receipts");
        let mine = receipts.iter().filter(|r| r.conversation_id == c.id).count();
        assert_eq!(mine, 1, "round {round}");
        // One shutdown, from the one delete that ended the call.
        assert_eq!(
            types_and_statuses(&deliveries_of(&*store, &c.id).await),
            [("system.shutdown", "pending")],
            "round {round}"
        );
        erased.push(c);
    }
    let expected: Vec<_> = erased.iter().map(|c| (JobKind::Purge, &c.id)).collect();
    finish(t, &expected).await;
}

/// `erase_residue` completes, alone or asked for by several callers at once.
pub async fn erasing_residue_completes_after_a_purge<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    assert!(store.erase_residue().await.expect("nothing to erase"));
    let c = ended_call(&*store, "acme", T0).await;
    hard_delete(&*store, &c, at(5)).await;
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.erase_residue().await });
    }
    while let Some(done) = tasks.join_next().await {
        assert!(done.expect("task").expect("erase residue"));
    }
    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::Purge, &c.id)]).await;
}

/// The write probe that tells a full disk is over writes, but nothing a client or a copy sees.
pub async fn a_write_probe_writes_nothing_that_is_copied_or_served<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let c = ended_call(&*store, "acme", T0).await;
    let mut before = Vec::new();
    for table in Table::ALL {
        before.push(store.count_rows(table).await.expect("counting"));
    }
    store.probe_write(at(1)).await.expect("first probe");
    store.probe_write(at(2)).await.expect("second probe");
    for (table, n) in Table::ALL.into_iter().zip(before) {
        assert_eq!(
            store.count_rows(table).await.expect("counting"),
            n,
            "{}",
            table.name()
        );
    }
    finish(t, &[(JobKind::Finalize, &c.id)]).await;
}
