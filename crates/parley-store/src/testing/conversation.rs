//! Contract tests for a conversation's life: create, read, list, join, end, results and the room.

use std::sync::Arc;

use parley_domain::{Conversation, ConversationId, Event, Status};
use serde_json::json;
use tokio::task::JoinSet;

use super::{
    CALLBACK, T0, TestStore, after_end_events, assert_same, at, conversation, deliveries_of, end, ended_call,
    finish, hard_delete, jobs_of, recording, seed, types_and_statuses, usual_jobs, with_callback,
};
use crate::table::{Table, Value};
use crate::{EndOutcome, JobKind, ParticipantOutcome, SoftDeleteOutcome, StoreError};

/// `create_conversation`, `get_conversation` and `load_conversation`, field for field.
pub async fn a_created_conversation_reads_back_exactly_as_written<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let mut full = with_callback(conversation("acme", at(0)));
    full.custom_greeting = Some("Hej! ✨ \"quoted\"".into());
    full.meeting_token = Some("mt_0123".into());
    // The extremes of the unsigned fields, which a backend may store as signed integers.
    full.max_call_duration = u32::MAX;
    full.participant_left_timeout = 0;
    full.participant_absent_timeout = 0;
    seed(&*store, &full).await;
    let mut bare = conversation("acme", at(1));
    bare.conversation_name = None;
    bare.conversational_context = None;
    bare.test_mode = true;
    bare.enable_recording = false;
    bare.request_json = "{}".into();
    store.create_conversation(&bare, 100, &[]).await.expect("create");

    for c in [&full, &bare] {
        let got = store.get_conversation("acme", &c.id).await.expect("get");
        assert_same(&got.expect("visible to its account"), c);
        let loaded = store.load_conversation(&c.id).await.expect("load");
        assert_same(&loaded.expect("stored"), c);
    }
    let unknown = conversation("acme", T0).id;
    assert!(
        store
            .get_conversation("other", &full.id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_conversation("acme", &unknown)
            .await
            .expect("get")
            .is_none()
    );
    assert!(store.load_conversation(&unknown).await.expect("load").is_none());

    // An id is never reused, and the refused create schedules nothing.
    let again = store
        .create_conversation(&full, 100, &[(JobKind::JoinReplica, at(9))])
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    // The jobs come due when asked, unclaimed.
    assert_eq!(
        jobs_of(&*store, &full.id).await,
        [
            (JobKind::JoinReplica, at(0), None, None, 0),
            (JobKind::MaxDurationTimer, at(3600), None, None, 0),
            (JobKind::AbsentTimer, at(300), None, None, 0),
        ]
    );
    finish(t, &usual_jobs(&full.id)).await;
}

/// `list_conversation_ids`: every conversation but the hard-deleted, once, in id order, a page at a time.
pub async fn conversation_ids_are_paged_in_id_order_in_every_state_but_erased<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut kept = Vec::new();
    for i in 0..7 {
        let c = conversation(if i % 2 == 0 { "acme" } else { "other" }, at(i));
        seed(&*store, &c).await;
        kept.push(c);
    }
    let ended = ended_call(&*store, "acme", at(10)).await;
    let hidden = ended_call(&*store, "acme", at(20)).await;
    let soft = store.soft_delete("acme", &hidden.id, at(25), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let gone = ended_call(&*store, "acme", at(30)).await;
    hard_delete(&*store, &gone, at(35)).await;
    kept.extend([ended.clone(), hidden.clone()]);
    let mut expected: Vec<(String, String)> = kept
        .iter()
        .map(|c| (c.id.to_string(), c.account.clone()))
        .collect();
    expected.sort();

    let mut paged = Vec::new();
    let mut after: Option<ConversationId> = None;
    loop {
        let page = store
            .list_conversation_ids(after.as_ref(), 3)
            .await
            .expect("a page");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        paged.extend(page.into_iter().map(|r| (r.id.to_string(), r.account)));
    }
    assert_eq!(paged, expected);
    let all = store.list_conversation_ids(None, 100).await.expect("one page");
    assert_eq!(all.len(), 9);
    let past_the_end = store
        .list_conversation_ids(Some(&all[8].id), 100)
        .await
        .expect("an empty page");
    assert!(past_the_end.is_empty());
    let none = store.list_conversation_ids(None, 0).await.expect("no rows");
    assert!(none.is_empty());

    let mut jobs = Vec::new();
    for c in &kept[..7] {
        jobs.extend(usual_jobs(&c.id));
    }
    jobs.extend([
        (JobKind::Finalize, &ended.id),
        (JobKind::Finalize, &hidden.id),
        (JobKind::RetentionPurge, &hidden.id),
        (JobKind::Finalize, &gone.id),
        (JobKind::Purge, &gone.id),
    ]);
    finish(t, &jobs).await;
}

/// `list_conversations`: order, paging, the status filter and `total_count`.
pub async fn conversations_are_listed_newest_first_a_page_at_a_time_with_their_total<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut made = Vec::new();
    for i in 0..5 {
        let c = conversation("acme", at(i));
        seed(&*store, &c).await;
        made.push(c);
    }
    // Made in the same microsecond as made[4]: the tie breaks on the id, descending.
    let mut twin = conversation("acme", at(4));
    twin.id = ConversationId::parse("c0000000000000001").expect("a valid id");
    seed(&*store, &twin).await;
    let theirs = conversation("other", at(20));
    seed(&*store, &theirs).await;
    end(&*store, &made[1].id, at(10)).await;
    end(&*store, &made[0].id, at(11)).await;
    let soft = store.soft_delete("acme", &made[0].id, at(12), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);

    let ids = |page: &[Conversation]| page.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    let (all, total) = store.list_conversations("acme", None, 10, 0).await.expect("list");
    let newest_first = [&made[4], &twin, &made[3], &made[2], &made[1]].map(|c| c.id.clone());
    assert_eq!((ids(&all), total), (newest_first.to_vec(), 5));
    assert_same(
        &all[4],
        &store
            .load_conversation(&made[1].id)
            .await
            .expect("load")
            .expect("stored"),
    );
    let (page, total) = store.list_conversations("acme", None, 2, 1).await.expect("list");
    assert_eq!(
        (ids(&page), total),
        (vec![twin.id.clone(), made[3].id.clone()], 5)
    );
    let (page, total) = store.list_conversations("acme", None, 0, 0).await.expect("list");
    assert_eq!((page.len(), total), (0, 5));

    let (page, total) = store
        .list_conversations("acme", Some(Status::Ended), 10, 0)
        .await
        .expect("list");
    assert_eq!((ids(&page), total), (vec![made[1].id.clone()], 1));
    assert_eq!(
        page[0].shutdown_reason.as_deref(),
        Some("end_conversation_endpoint_hit")
    );
    let (page, total) = store
        .list_conversations("acme", Some(Status::Active), 2, 2)
        .await
        .expect("list");
    assert_eq!(
        (ids(&page), total),
        (vec![made[3].id.clone(), made[2].id.clone()], 4)
    );
    let (page, total) = store
        .list_conversations("acme", Some(Status::Active), 10, 10)
        .await
        .expect("list");
    assert_eq!((page.len(), total), (0, 4));

    let (page, total) = store
        .list_conversations("other", None, 10, 0)
        .await
        .expect("list");
    assert_eq!((ids(&page), total), (vec![theirs.id.clone()], 1));
    let (page, total) = store
        .list_conversations("nobody", None, 10, 0)
        .await
        .expect("list");
    assert_eq!((page.len(), total), (0, 0));

    let mut expected: Vec<_> = [&made[2], &made[3], &made[4], &twin, &theirs]
        .into_iter()
        .flat_map(|c| usual_jobs(&c.id))
        .collect();
    expected.extend([
        (JobKind::Finalize, &made[1].id),
        (JobKind::Finalize, &made[0].id),
        (JobKind::RetentionPurge, &made[0].id),
    ]);
    finish(t, &expected).await;
}

/// `create_conversation`'s cap: active conversations outside test mode, per account.
pub async fn the_cap_counts_only_active_conversations_outside_test_mode<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("acme", T0).await.expect("account");
    store.ensure_account("other", T0).await.expect("account");
    let join = [(JobKind::JoinReplica, T0)];
    let mut active = Vec::new();
    for i in 0..3 {
        let c = conversation("acme", at(i));
        store
            .create_conversation(&c, 3, &join)
            .await
            .expect("under the cap");
        active.push(c);
    }
    let over = conversation("acme", at(3));
    let refused = store.create_conversation(&over, 3, &join).await;
    assert!(
        matches!(refused, Err(StoreError::ConcurrencyLimit)),
        "{refused:?}"
    );
    assert!(store.load_conversation(&over.id).await.expect("load").is_none());
    // Nor is there a conversation without its account.
    let orphan = store
        .create_conversation(&conversation("nobody", at(3)), 3, &[])
        .await;
    assert!(orphan.is_err(), "a conversation of an unknown account was stored");

    // Test mode is never counted, nor checked: not even against a cap of 0.
    let mut rehearsal = conversation("acme", at(4));
    rehearsal.test_mode = true;
    store
        .create_conversation(&rehearsal, 0, &[])
        .await
        .expect("test mode does not count");
    // Each account has a cap of its own.
    let theirs = conversation("other", at(5));
    store
        .create_conversation(&theirs, 3, &join)
        .await
        .expect("another account");
    // Ending a call frees its slot.
    end(&*store, &active[0].id, at(6)).await;
    let next = conversation("acme", at(7));
    store
        .create_conversation(&next, 3, &join)
        .await
        .expect("a slot was freed");
    let full = store
        .create_conversation(&conversation("acme", at(8)), 3, &[])
        .await;
    assert!(matches!(full, Err(StoreError::ConcurrencyLimit)), "{full:?}");
    let (_, active_now) = store
        .list_conversations("acme", Some(Status::Active), 10, 0)
        .await
        .expect("list");
    assert_eq!(active_now, 4, "three counted and one in test mode");

    finish(
        t,
        &[
            (JobKind::JoinReplica, &active[1].id),
            (JobKind::JoinReplica, &active[2].id),
            (JobKind::JoinReplica, &theirs.id),
            (JobKind::Finalize, &active[0].id),
            (JobKind::JoinReplica, &next.id),
        ],
    )
    .await;
}

/// The cap holds when many creates of one account race.
pub async fn concurrent_creates_never_exceed_the_cap<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    store.ensure_account("busy", T0).await.expect("account");
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let store = Arc::clone(&store);
        let c = conversation("busy", at(i));
        tasks.spawn(async move { store.create_conversation(&c, 5, &[]).await });
    }
    let (mut created, mut refused) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        match done.expect("task") {
            Ok(()) => created += 1,
            Err(StoreError::ConcurrencyLimit) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((created, refused), (5, 35));
    let (page, total) = store
        .list_conversations("busy", None, 100, 0)
        .await
        .expect("list");
    assert_eq!((page.len(), total), (5, 5));
    finish(t, &[]).await;
}

/// Events are stored either way; deliveries only for a callback outside test mode.
pub async fn a_test_mode_conversation_or_one_without_a_callback_queues_no_webhooks<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut rehearsal = with_callback(conversation("acme", T0));
    rehearsal.test_mode = true;
    let silent = conversation("acme", T0);
    store.ensure_account("acme", T0).await.expect("account");
    for c in [&rehearsal, &silent] {
        store.create_conversation(c, 10, &[]).await.expect("create");
        let joined = Event::replica_joined(at(1), &c.replica_id);
        assert!(store.record_join(&c.id, &joined).await.expect("join"));
        end(&*store, &c.id, at(2)).await;
        let stored = store
            .store_call_results(&c.id, &after_end_events(at(3)), None)
            .await;
        assert!(stored.expect("results"));
        assert_eq!(store.list_events(&c.id).await.expect("events").len(), 4);
    }
    assert_eq!(store.count_rows(Table::Event).await.expect("count"), 8);
    assert_eq!(store.count_rows(Table::Delivery).await.expect("count"), 0);
    finish(
        t,
        &[
            (JobKind::Finalize, &rehearsal.id),
            (JobKind::Finalize, &silent.id),
        ],
    )
    .await;
}

/// `record_join`: once, only while active, with its event and its delivery.
pub async fn the_replica_joins_an_active_conversation_once<T: TestStore>(fresh: impl AsyncFn() -> T) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    let joined = Event::replica_joined(at(1), &c.replica_id);
    assert!(store.record_join(&c.id, &joined).await.expect("join"));
    let later = Event::replica_joined(at(2), &c.replica_id);
    assert!(!store.record_join(&c.id, &later).await.expect("join twice"));

    let room = store
        .load_conversation(&c.id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        (room.status, room.joined_at, room.updated_at),
        (Status::Active, Some(at(1)), at(1))
    );
    let events = store.list_events(&c.id).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].event_type.as_str(),
            events[0].message_type.as_str(),
            events[0].timestamp
        ),
        ("system.replica_joined", "system", at(1))
    );
    assert_eq!(events[0].properties, json!({ "replica_id": c.replica_id }));

    // Its delivery carries the exact envelope the receiver gets, under a stable id.
    let claimed = store.claim_deliveries(at(1), at(61), 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    let d = &claimed[0];
    let envelope = Event::envelope(
        "system.replica_joined",
        "system",
        at(1),
        joined.properties.clone(),
        &c.id,
        Some(CALLBACK),
    );
    assert_eq!(d.payload, envelope.to_string());
    assert_eq!(
        (
            d.conversation_id.as_str(),
            d.event_type.as_str(),
            d.url.as_str(),
            d.attempts,
            d.retry_from
        ),
        (c.id.as_str(), "system.replica_joined", CALLBACK, 1, at(1))
    );
    let id_is_d_and_16_hex = d.id.len() == 17
        && d.id.starts_with('d')
        && d.id[1..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    assert!(id_is_d_and_16_hex, "{}", d.id);

    // An ended call is never joined, nor is an unknown one.
    let over = with_callback(conversation("acme", at(2)));
    seed(&*store, &over).await;
    end(&*store, &over.id, at(3)).await;
    let late = Event::replica_joined(at(4), &over.replica_id);
    assert!(!store.record_join(&over.id, &late).await.expect("join"));
    let over_now = store
        .load_conversation(&over.id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(over_now.joined_at, None);
    assert_eq!(store.list_events(&over.id).await.expect("events").len(), 1);
    let unknown = conversation("acme", T0).id;
    assert!(!store.record_join(&unknown, &late).await.expect("join"));

    let mut expected = usual_jobs(&c.id).to_vec();
    expected.push((JobKind::Finalize, &over.id));
    finish(t, &expected).await;
}

/// `end_conversation`: `NotFound`, `Ended` (with and without a lease) and `AlreadyEnded`.
pub async fn ending_a_conversation_writes_its_shutdown_and_swaps_its_timers_for_a_finalize_job<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    // The room emptied once, so a left timer is pending too.
    store.participant_join(&c.id, "p1", at(1)).await.expect("join");
    store.participant_leave(&c.id, "p1", at(2)).await.expect("leave");
    let kinds = |jobs: Vec<super::JobRow>| jobs.into_iter().map(|j| j.0).collect::<Vec<_>>();
    assert_eq!(
        kinds(jobs_of(&*store, &c.id).await),
        [
            JobKind::JoinReplica,
            JobKind::MaxDurationTimer,
            JobKind::AbsentTimer,
            JobKind::LeftTimer
        ]
    );

    let reason = "end_conversation_endpoint_hit";
    let wrong = store
        .end_conversation(Some("other"), &c.id, reason, at(5), None)
        .await;
    assert!(matches!(wrong, Ok(EndOutcome::NotFound)), "{wrong:?}");
    let unknown = conversation("acme", T0).id;
    let nothing = store.end_conversation(None, &unknown, reason, at(5), None).await;
    assert!(matches!(nothing, Ok(EndOutcome::NotFound)), "{nothing:?}");

    let outcome = store
        .end_conversation(Some("acme"), &c.id, reason, at(5), None)
        .await
        .expect("end");
    let EndOutcome::Ended {
        conversation: ended,
        finalize,
    } = outcome
    else {
        panic!("not ended: {outcome:?}");
    };
    assert_eq!(
        (ended.status, ended.ended_at, ended.updated_at),
        (Status::Ended, Some(at(5)), at(5))
    );
    assert_eq!(ended.shutdown_reason.as_deref(), Some(reason));
    assert_same(
        &ended,
        &store
            .load_conversation(&c.id)
            .await
            .expect("load")
            .expect("stored"),
    );
    assert_eq!(
        (
            &finalize.conversation_id,
            finalize.kind,
            finalize.attempts,
            finalize.not_before
        ),
        (&c.id, JobKind::Finalize, 0, None)
    );
    // Every timer and the replica's join are gone: a call that is over has nothing left to end.
    assert_eq!(
        jobs_of(&*store, &c.id).await,
        [(JobKind::Finalize, at(5), None, None, 0)]
    );
    let events = store.list_events(&c.id).await.expect("events");
    let shutdown = events.last().expect("the shutdown event");
    assert_eq!(
        (
            shutdown.event_type.as_str(),
            shutdown.message_type.as_str(),
            shutdown.timestamp
        ),
        ("system.shutdown", "system", at(5))
    );
    assert_eq!(
        shutdown.properties,
        json!({ "replica_id": c.replica_id, "shutdown_reason": reason })
    );
    assert_eq!(
        types_and_statuses(&deliveries_of(&*store, &c.id).await),
        [("system.shutdown", "pending")]
    );
    // Without a lease the finalize job is the runner's to claim.
    let claimed = store.claim_due_jobs(at(5), at(65), 10).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        [(finalize.id, 1)]
    );
    store.complete_job(&claimed[0]).await.expect("complete");

    // Ending again changes nothing, from the account or from background work.
    for account in [None, Some("acme")] {
        let again = store
            .end_conversation(account, &c.id, "max_call_duration reached", at(6), None)
            .await
            .expect("end again");
        let EndOutcome::AlreadyEnded(was) = again else {
            panic!("not already ended: {again:?}");
        };
        assert_eq!(
            (was.ended_at, was.shutdown_reason.as_deref()),
            (Some(at(5)), Some(reason))
        );
    }
    assert_eq!(store.list_events(&c.id).await.expect("events").len(), 1);

    // With a lease, the finalize job is made already claimed, and waits out that lease.
    let leased = conversation("acme", at(10));
    seed(&*store, &leased).await;
    let outcome = store
        .end_conversation(None, &leased.id, reason, at(20), Some(at(140)))
        .await
        .expect("end");
    let EndOutcome::Ended { finalize, .. } = outcome else {
        panic!("not ended: {outcome:?}");
    };
    assert_eq!(finalize.attempts, 1);
    assert_eq!(
        jobs_of(&*store, &leased.id).await,
        [(JobKind::Finalize, at(20), None, Some(at(140)), 1)]
    );
    let early = store.claim_due_jobs(at(139), at(300), 10).await.expect("claim");
    assert!(early.is_empty(), "{early:?}");
    let due = store.claim_due_jobs(at(140), at(300), 10).await.expect("claim");
    assert_eq!(
        due.iter().map(|j| (j.id, j.attempts)).collect::<Vec<_>>(),
        [(finalize.id, 2)]
    );
    store.complete_job(&due[0]).await.expect("complete");

    // A soft-deleted conversation is gone for its account; background work still sees it.
    let hidden = conversation("acme", at(30));
    seed(&*store, &hidden).await;
    end(&*store, &hidden.id, at(31)).await;
    let soft = store.soft_delete("acme", &hidden.id, at(32), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    let by_account = store
        .end_conversation(Some("acme"), &hidden.id, reason, at(33), None)
        .await;
    assert!(matches!(by_account, Ok(EndOutcome::NotFound)), "{by_account:?}");
    let by_job = store
        .end_conversation(None, &hidden.id, reason, at(33), None)
        .await;
    assert!(matches!(by_job, Ok(EndOutcome::AlreadyEnded(_))), "{by_job:?}");

    finish(
        t,
        &[
            (JobKind::Finalize, &hidden.id),
            (JobKind::RetentionPurge, &hidden.id),
        ],
    )
    .await;
}

/// `store_call_results`, `list_events` and `get_asset`.
pub async fn call_results_are_stored_once_and_refused_after_a_hard_delete<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    let joined = Event::replica_joined(at(1), &c.replica_id);
    store.record_join(&c.id, &joined).await.expect("join");
    end(&*store, &c.id, at(2)).await;
    let events = after_end_events(at(3));
    let asset = recording(&c.id, at(3));
    let stored = store.store_call_results(&c.id, &events, Some(&asset)).await;
    assert!(stored.expect("results"));
    // A retried finalize stores its events once, and its asset again.
    let mut redone = asset.clone();
    redone.size = 50_000;
    redone.created_at = at(4);
    let stored = store
        .store_call_results(&c.id, &after_end_events(at(4)), Some(&redone))
        .await;
    assert!(stored.expect("results again"));

    let listed = store.list_events(&c.id).await.expect("events");
    let shape: Vec<_> = listed
        .iter()
        .map(|e| (e.event_type.as_str(), e.message_type.as_str(), e.timestamp))
        .collect();
    assert_eq!(
        shape,
        [
            ("system.replica_joined", "system", at(1)),
            ("system.shutdown", "system", at(2)),
            ("application.transcription_ready", "application", at(3)),
            ("application.recording_ready", "application", at(3)),
        ]
    );
    assert_eq!(listed[2].properties, events[0].properties);
    assert_eq!(listed[3].properties, events[1].properties);
    // Every event was queued for the callback, once.
    assert_eq!(
        types_and_statuses(&deliveries_of(&*store, &c.id).await),
        [
            ("system.replica_joined", "pending"),
            ("system.shutdown", "pending"),
            ("application.transcription_ready", "pending"),
            ("application.recording_ready", "pending"),
        ]
    );

    let got = store
        .get_asset("acme", &c.id, "recording.wav")
        .await
        .expect("asset")
        .expect("stored");
    assert_eq!(
        (
            got.name.as_str(),
            got.blob_key.as_str(),
            got.content_type.as_str(),
            got.size,
            got.created_at
        ),
        (
            "recording.wav",
            asset.blob_key.as_str(),
            "audio/wav",
            50_000,
            at(4)
        )
    );
    let unknown = conversation("acme", T0).id;
    for (account, id, name) in [
        ("other", &c.id, "recording.wav"),
        ("acme", &c.id, "transcript.json"),
        ("acme", &unknown, "recording.wav"),
    ] {
        let none = store.get_asset(account, id, name).await.expect("asset");
        assert!(none.is_none(), "{account} {id} {name}: {none:?}");
    }
    let nowhere = store.store_call_results(&unknown, &events, Some(&asset)).await;
    assert!(!nowhere.expect("results of an unknown id"));
    assert_eq!(store.count_rows(Table::Asset).await.expect("count"), 1);

    // A finalize that finishes after a hard delete stores nothing.
    hard_delete(&*store, &c, at(5)).await;
    let late = store.store_call_results(&c.id, &events, Some(&asset)).await;
    assert!(!late.expect("late results"));
    assert!(store.list_events(&c.id).await.expect("events").is_empty());
    assert_eq!(store.count_rows(Table::Event).await.expect("count"), 0);
    assert_eq!(store.count_rows(Table::Asset).await.expect("count"), 0);
    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::Purge, &c.id)]).await;
}

/// `participant_join` and `participant_leave`, and the left timer an empty room schedules.
pub async fn participants_are_counted_in_and_out_and_an_empty_room_schedules_the_left_timer<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = conversation("acme", T0);
    seed(&*store, &c).await;
    let present = |n| ParticipantOutcome::Done { present: n };
    let join = async |who: &str, secs| store.participant_join(&c.id, who, at(secs)).await;
    let leave = async |who: &str, secs| store.participant_leave(&c.id, who, at(secs)).await;
    assert_eq!(join("p1", 10).await.expect("join"), present(1));
    assert_eq!(join("p2", 11).await.expect("join"), present(2));
    let twice = join("p1", 12).await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    assert_eq!(leave("p1", 20).await.expect("leave"), present(1));
    // Leaving twice, or never having joined, changes nothing.
    assert_eq!(leave("p1", 21).await.expect("leave again"), present(1));
    assert_eq!(leave("nobody", 21).await.expect("leave"), present(1));
    let left_timers = async || {
        let jobs = jobs_of(&*store, &c.id).await;
        jobs.into_iter()
            .filter(|j| j.0 == JobKind::LeftTimer)
            .collect::<Vec<_>>()
    };
    assert!(left_timers().await.is_empty());

    // The room empties: the timer fires after participant_left_timeout (60 s) and only ends the
    // call if the room stayed empty since this instant.
    assert_eq!(leave("p2", 30).await.expect("leave"), present(0));
    assert_eq!(
        left_timers().await,
        [(JobKind::LeftTimer, at(90), Some(at(30)), None, 0)]
    );
    let room = store
        .load_conversation(&c.id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        (
            room.participants_present,
            room.participant_joined_at,
            room.participant_left_at,
            room.updated_at
        ),
        (0, Some(at(10)), Some(at(30)), at(30))
    );

    // Back in: the first join and the last emptying are kept (the timer is now stale).
    assert_eq!(join("p3", 40).await.expect("join"), present(1));
    let room = store
        .load_conversation(&c.id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        (
            room.participants_present,
            room.participant_joined_at,
            room.participant_left_at
        ),
        (1, Some(at(10)), Some(at(30)))
    );
    // Each person's own record says when they came and went.
    let rows = store
        .export_rows(Table::Participant, None, 10)
        .await
        .expect("export");
    let mut visits: Vec<_> = rows
        .into_iter()
        .map(|row| match &row[..] {
            [Value::Text(who), Value::Text(of), joined, left] if *of == c.id.as_str() => {
                (who.clone(), joined.clone(), left.clone())
            }
            other => panic!("not a participant of {}: {other:?}", c.id),
        })
        .collect();
    visits.sort_by(|a, b| a.0.cmp(&b.0));
    let micros = |secs| Value::Int(at(secs).as_micros());
    assert_eq!(
        visits,
        [
            ("p1".to_owned(), micros(10), micros(20)),
            ("p2".to_owned(), micros(11), micros(30)),
            ("p3".to_owned(), micros(40), Value::Null),
        ]
    );

    // Nobody joins or leaves a call that is over, an unknown one, or a soft-deleted one.
    end(&*store, &c.id, at(50)).await;
    assert_eq!(join("p4", 51).await.expect("join"), ParticipantOutcome::Ended);
    assert_eq!(leave("p3", 51).await.expect("leave"), ParticipantOutcome::Ended);
    let unknown = conversation("acme", T0).id;
    let outcome = store.participant_join(&unknown, "p5", at(52)).await;
    assert_eq!(outcome.expect("join"), ParticipantOutcome::NotFound);
    let outcome = store.participant_leave(&unknown, "p5", at(52)).await;
    assert_eq!(outcome.expect("leave"), ParticipantOutcome::NotFound);
    let soft = store.soft_delete("acme", &c.id, at(53), at(1000)).await;
    assert_eq!(soft.expect("soft delete"), SoftDeleteOutcome::Deleted);
    assert_eq!(join("p6", 54).await.expect("join"), ParticipantOutcome::NotFound);
    assert_eq!(
        leave("p3", 54).await.expect("leave"),
        ParticipantOutcome::NotFound
    );

    finish(t, &[(JobKind::Finalize, &c.id), (JobKind::RetentionPurge, &c.id)]).await;
}
