//! Contract tests for the webhook outbox: order per conversation, retries, fencing, secrets, and
//! what a hard delete keeps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_domain::{Conversation, ConversationId, Event, Timestamp};
use tokio::task::JoinSet;

use super::{
    SECRET, T0, TestStore, after_end_events, at, conversation, deliveries_of, end, finish, hard_delete, seed,
    types_and_statuses, with_callback,
};
use crate::table::Table;
use crate::{ConversationStore, Delivery, DeliveryFilter, DeliveryInfo, JobKind};

/// A call with a callback whose four events are queued, due at `created_at` plus 1 s (the
/// replica's join), 2 s (the shutdown) and 3 s (transcript and recording). Its one job is its finalize.
async fn four_deliveries(
    store: &dyn ConversationStore,
    account: &str,
    created_at: Timestamp,
) -> Conversation {
    let c = with_callback(conversation(account, created_at));
    seed(store, &c).await;
    let joined = Event::replica_joined(created_at.plus_secs(1), &c.replica_id);
    store.record_join(&c.id, &joined).await.expect("join");
    end(store, &c.id, created_at.plus_secs(2)).await;
    let results = after_end_events(created_at.plus_secs(3));
    let stored = store.store_call_results(&c.id, &results, None).await;
    assert!(stored.expect("results"));
    c
}

/// The claimed delivery of this conversation.
fn of<'a>(claimed: &'a [Delivery], c: &Conversation) -> &'a Delivery {
    claimed
        .iter()
        .find(|d| d.conversation_id == c.id.as_str())
        .unwrap_or_else(|| panic!("nothing of {} in {claimed:?}", c.id))
}

/// The delivery with this id, as listed.
async fn info(store: &dyn ConversationStore, id: &str) -> DeliveryInfo {
    let all = store
        .list_deliveries(DeliveryFilter::default())
        .await
        .expect("listing deliveries");
    all.into_iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no delivery {id}"))
}

/// `claim_deliveries`: one at a time per conversation, the oldest, and only when due.
pub async fn only_the_oldest_pending_delivery_of_each_conversation_is_claimed<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let y = four_deliveries(&*store, "acme", T0).await;
    // A conversation whose first event is not due yet.
    let z = with_callback(conversation("acme", T0));
    seed(&*store, &z).await;
    let later = Event::replica_joined(at(50), &z.replica_id);
    store.record_join(&z.id, &later).await.expect("join");

    let first = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    assert_eq!(first.len(), 2, "{first:?}");
    for c in [&x, &y] {
        let d = of(&first, c);
        assert_eq!(
            (
                d.event_type.as_str(),
                d.attempts,
                d.retry_from,
                d.signing_secret.as_deref()
            ),
            ("system.replica_joined", 1, at(1), None)
        );
    }
    // Each conversation has one out: nothing more until it is done.
    assert!(
        store
            .claim_deliveries(at(11), at(70), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    for d in &first {
        store.delivery_succeeded(d, at(11)).await.expect("sent");
    }
    let next = store.claim_deliveries(at(12), at(70), 10).await.expect("claim");
    assert_eq!(next.len(), 2, "{next:?}");
    assert!(next.iter().all(|d| d.event_type == "system.shutdown"));

    let listed = deliveries_of(&*store, &x.id).await;
    let shape: Vec<_> = listed
        .iter()
        .map(|d| {
            (
                d.event_type.as_str(),
                d.status.as_str(),
                d.attempts,
                d.finished_at,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("system.replica_joined", "delivered", 1, Some(at(11))),
            ("system.shutdown", "pending", 1, None),
            ("application.transcription_ready", "pending", 0, None),
            ("application.recording_ready", "pending", 0, None),
        ]
    );
    assert!(
        listed
            .iter()
            .all(|d| d.url == super::CALLBACK && d.conversation_id == x.id.as_str())
    );
    assert_eq!(
        (
            listed[0].created_at,
            listed[0].next_attempt_at,
            listed[2].next_attempt_at
        ),
        (at(1), at(1), at(3))
    );

    // z's join comes due in its own time.
    let due = store.claim_deliveries(at(50), at(110), 10).await.expect("claim");
    assert_eq!(of(&due, &z).event_type, "system.replica_joined");
    let mut expected = vec![(JobKind::Finalize, &x.id), (JobKind::Finalize, &y.id)];
    expected.extend(super::usual_jobs(&z.id));
    finish(t, &expected).await;
}

/// A retry holds back the rest of its conversation, and only its conversation.
pub async fn a_failing_delivery_holds_back_its_conversation_but_never_another<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let y = four_deliveries(&*store, "acme", T0).await;
    let first = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    let (dx, dy) = (of(&first, &x).clone(), of(&first, &y).clone());
    store
        .delivery_failed(&dx, "503 Service Unavailable", Some(at(20)), at(10))
        .await
        .expect("failed");
    let waiting = info(&*store, &dx.id).await;
    assert_eq!(
        (
            waiting.status.as_str(),
            waiting.attempts,
            waiting.next_attempt_at,
            waiting.last_error.as_deref(),
            waiting.finished_at
        ),
        ("pending", 1, at(20), Some("503 Service Unavailable"), None)
    );
    store.delivery_succeeded(&dy, at(11)).await.expect("sent");

    // y goes on to the end while x waits for its retry, though x's later events are due.
    let mut sent = Vec::new();
    for secs in 12..20 {
        for d in store
            .claim_deliveries(at(secs), at(secs + 60), 10)
            .await
            .expect("claim")
        {
            assert_eq!(d.conversation_id, y.id.as_str(), "{d:?}");
            sent.push(d.event_type.clone());
            store.delivery_succeeded(&d, at(secs)).await.expect("sent");
        }
    }
    assert_eq!(
        sent,
        [
            "system.shutdown",
            "application.transcription_ready",
            "application.recording_ready"
        ]
    );
    // At its retry time the same delivery goes again, with the same id and payload.
    let retried = store.claim_deliveries(at(20), at(80), 10).await.expect("claim");
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(
        (retried[0].id.as_str(), retried[0].attempts, retried[0].retry_from),
        (dx.id.as_str(), 2, at(1))
    );
    assert_eq!(retried[0].payload, dx.payload);
    finish(t, &[(JobKind::Finalize, &x.id), (JobKind::Finalize, &y.id)]).await;
}

/// `delivery_failed` without a retry: given up for good, and the conversation moves on.
pub async fn a_delivery_given_up_is_failed_with_its_error_and_the_next_one_goes<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let claimed = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    store
        .delivery_failed(&claimed[0], "410 Gone", None, at(11))
        .await
        .expect("gave up");
    let given_up = info(&*store, &claimed[0].id).await;
    assert_eq!(
        (
            given_up.status.as_str(),
            given_up.attempts,
            given_up.last_error.as_deref(),
            given_up.finished_at
        ),
        ("failed", 1, Some("410 Gone"), Some(at(11)))
    );
    let next = store.claim_deliveries(at(12), at(70), 10).await.expect("claim");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].event_type, "system.shutdown");
    // Once the shutdown is out of the way too, the given-up one is still not sent again.
    store.delivery_succeeded(&next[0], at(13)).await.expect("sent");
    let after = store.claim_deliveries(at(500), at(560), 10).await.expect("claim");
    assert_eq!(after[0].event_type, "application.transcription_ready");
    finish(t, &[(JobKind::Finalize, &x.id)]).await;
}

/// `delivery_succeeded`: delivered, its earlier error cleared, never claimed again.
pub async fn a_delivery_that_succeeds_is_delivered_and_never_claimed_again<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let first = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    store
        .delivery_failed(&first[0], "timed out", Some(at(15)), at(10))
        .await
        .expect("failed");
    let second = store.claim_deliveries(at(15), at(75), 10).await.expect("claim");
    assert_eq!(
        (second[0].id.as_str(), second[0].attempts),
        (first[0].id.as_str(), 2)
    );
    store.delivery_succeeded(&second[0], at(16)).await.expect("sent");
    let done = info(&*store, &first[0].id).await;
    assert_eq!(
        (
            done.status.as_str(),
            done.attempts,
            done.last_error.as_deref(),
            done.finished_at
        ),
        ("delivered", 2, None, Some(at(16)))
    );
    let next = store.claim_deliveries(at(17), at(77), 10).await.expect("claim");
    assert_eq!(next[0].event_type, "system.shutdown");
    finish(t, &[(JobKind::Finalize, &x.id)]).await;
}

/// Fencing: a sender whose lease expired and was claimed again cannot record its outcome.
pub async fn a_stale_delivery_claim_can_neither_finish_nor_reschedule_its_successors<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let stale = store.claim_deliveries(at(10), at(20), 10).await.expect("claim");
    assert!(
        store
            .claim_deliveries(at(19), at(79), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let current = store.claim_deliveries(at(20), at(80), 10).await.expect("claim");
    assert_eq!(
        (current[0].id.as_str(), current[0].attempts),
        (stale[0].id.as_str(), 2)
    );

    store
        .delivery_succeeded(&stale[0], at(21))
        .await
        .expect("stale success");
    store
        .delivery_failed(&stale[0], "stale", None, at(21))
        .await
        .expect("stale give-up");
    store
        .delivery_failed(&stale[0], "stale", Some(at(22)), at(21))
        .await
        .expect("stale retry");
    let untouched = info(&*store, &stale[0].id).await;
    assert_eq!(
        (
            untouched.status.as_str(),
            untouched.attempts,
            untouched.next_attempt_at,
            untouched.last_error.as_deref(),
            untouched.finished_at
        ),
        ("pending", 2, at(1), None, None)
    );
    // Still the current sender's: its lease holds the conversation.
    assert!(
        store
            .claim_deliveries(at(30), at(90), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    store.delivery_succeeded(&current[0], at(31)).await.expect("sent");
    assert_eq!(info(&*store, &stale[0].id).await.status, "delivered");
    finish(t, &[(JobKind::Finalize, &x.id)]).await;
}

/// `retry_delivery`: pending again now, with a fresh window, in its place in the order.
pub async fn retrying_a_delivery_queues_it_now_with_a_fresh_window_and_it_waits_its_turn<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let joined = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    let dx = joined[0].clone();
    store
        .delivery_failed(&dx, "410 Gone", None, at(11))
        .await
        .expect("gave up");
    let shutdown = store.claim_deliveries(at(12), at(90), 10).await.expect("claim");
    assert_eq!(shutdown[0].event_type, "system.shutdown");

    assert!(store.retry_delivery(&dx.id, at(22)).await.expect("retry"));
    assert!(
        !store
            .retry_delivery("d0000000000000000", at(22))
            .await
            .expect("retry an unknown delivery")
    );
    let queued = info(&*store, &dx.id).await;
    assert_eq!(
        (
            queued.status.as_str(),
            queued.attempts,
            queued.next_attempt_at,
            queued.finished_at
        ),
        ("pending", 1, at(22), None)
    );
    // It is older, but the shutdown is out: nothing else of x goes until that is done.
    assert!(
        store
            .claim_deliveries(at(23), at(90), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    store
        .delivery_succeeded(&shutdown[0], at(24))
        .await
        .expect("sent");
    let back = store.claim_deliveries(at(25), at(90), 10).await.expect("claim");
    assert_eq!(
        (back[0].id.as_str(), back[0].attempts, back[0].retry_from),
        (dx.id.as_str(), 2, at(22))
    );
    store.delivery_succeeded(&back[0], at(26)).await.expect("sent");
    let next = store.claim_deliveries(at(27), at(90), 10).await.expect("claim");
    assert_eq!(next[0].event_type, "application.transcription_ready");
    finish(t, &[(JobKind::Finalize, &x.id)]).await;
}

/// `set_webhook_secret`: read at each claim, per account, and cleared with `None`.
pub async fn deliveries_carry_their_accounts_signing_secret_while_one_is_set<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let o = four_deliveries(&*store, "other", T0).await;
    assert!(
        store
            .set_webhook_secret("acme", Some("whsec_1"))
            .await
            .expect("secret")
    );
    assert!(
        !store
            .set_webhook_secret("nobody", Some("whsec_x"))
            .await
            .expect("secret of an unknown account")
    );
    let secrets = async |secs| {
        let claimed = store
            .claim_deliveries(at(secs), at(secs + 60), 10)
            .await
            .expect("claim");
        let mut seen = Vec::new();
        for d in &claimed {
            store.delivery_succeeded(d, at(secs)).await.expect("sent");
            seen.push((d.conversation_id.clone(), d.signing_secret.clone()));
        }
        seen.sort();
        seen
    };
    let mut expected = vec![
        (x.id.to_string(), Some("whsec_1".to_owned())),
        (o.id.to_string(), None),
    ];
    expected.sort();
    assert_eq!(secrets(10).await, expected);

    assert!(store.set_webhook_secret("acme", None).await.expect("clear"));
    let cleared = secrets(11).await;
    assert!(cleared.iter().all(|(_, secret)| secret.is_none()), "{cleared:?}");
    assert!(
        store
            .set_webhook_secret("acme", Some("whsec_2"))
            .await
            .expect("rotate")
    );
    let rotated = secrets(12).await;
    assert!(
        rotated.contains(&(x.id.to_string(), Some("whsec_2".to_owned()))),
        "{rotated:?}"
    );
    finish(t, &[(JobKind::Finalize, &x.id), (JobKind::Finalize, &o.id)]).await;
}

/// What a hard delete keeps of the outbox, and that it is forgotten once finished.
pub async fn a_hard_delete_keeps_only_unsent_deliveries_without_content_and_forgets_them_once_finished<
    T: TestStore,
>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    let joined = Event::replica_joined(at(1), &c.replica_id);
    store.record_join(&c.id, &joined).await.expect("join");
    let sent = store.claim_deliveries(at(1), at(60), 10).await.expect("claim");
    store.delivery_succeeded(&sent[0], at(2)).await.expect("sent");
    end(&*store, &c.id, at(3)).await;
    let results = store
        .store_call_results(&c.id, &after_end_events(at(4)), None)
        .await;
    assert!(results.expect("results"));
    // The shutdown is out when the delete comes.
    let out = store.claim_deliveries(at(4), at(60), 10).await.expect("claim");
    assert_eq!(out[0].event_type, "system.shutdown");
    assert_eq!(
        types_and_statuses(&deliveries_of(&*store, &c.id).await),
        [
            ("system.replica_joined", "delivered"),
            ("system.shutdown", "pending"),
            ("application.transcription_ready", "pending"),
            ("application.recording_ready", "pending"),
        ]
    );

    hard_delete(&*store, &c, at(5)).await;
    // Sent ones and content go; the shutdown is still owed to the receiver and carries none.
    assert_eq!(
        types_and_statuses(&deliveries_of(&*store, &c.id).await),
        [("system.shutdown", "pending")]
    );
    assert!(!out[0].payload.contains(SECRET));
    // Once its sender finishes it, it is forgotten.
    store.delivery_succeeded(&out[0], at(6)).await.expect("sent");
    assert!(deliveries_of(&*store, &c.id).await.is_empty());

    // Another: a retry keeps an orphan until it finishes; giving up finishes it too.
    let d = with_callback(conversation("acme", at(10)));
    seed(&*store, &d).await;
    let joined = Event::replica_joined(at(11), &d.replica_id);
    store.record_join(&d.id, &joined).await.expect("join");
    end(&*store, &d.id, at(12)).await;
    hard_delete(&*store, &d, at(13)).await;
    assert_eq!(
        types_and_statuses(&deliveries_of(&*store, &d.id).await),
        [
            ("system.replica_joined", "pending"),
            ("system.shutdown", "pending")
        ]
    );
    let first = store.claim_deliveries(at(14), at(74), 10).await.expect("claim");
    store
        .delivery_failed(&first[0], "503 Service Unavailable", Some(at(20)), at(14))
        .await
        .expect("failed");
    assert_eq!(deliveries_of(&*store, &d.id).await.len(), 2);
    let again = store.claim_deliveries(at(20), at(80), 10).await.expect("claim");
    store
        .delivery_failed(&again[0], "410 Gone", None, at(21))
        .await
        .expect("gave up");
    assert_eq!(
        types_and_statuses(&deliveries_of(&*store, &d.id).await),
        [("system.shutdown", "pending")]
    );
    let last = store.claim_deliveries(at(22), at(82), 10).await.expect("claim");
    store.delivery_succeeded(&last[0], at(23)).await.expect("sent");
    assert_eq!(store.count_rows(Table::Delivery).await.expect("count"), 0);
    finish(
        t,
        &[
            (JobKind::Finalize, &c.id),
            (JobKind::Purge, &c.id),
            (JobKind::Finalize, &d.id),
            (JobKind::Purge, &d.id),
        ],
    )
    .await;
}

/// Racing senders on one store: each conversation's deliveries go one at a time, in order.
pub async fn concurrent_delivery_runners_send_each_conversation_in_order_one_at_a_time<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let mut made = Vec::new();
    for i in 0..8 {
        made.push(four_deliveries(&*store, "acme", at(i)).await);
    }

    // Sent order per conversation, and which conversations have a delivery out right now.
    let sent: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let out: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = JoinSet::new();
    for _ in 0..6 {
        let store = Arc::clone(&store);
        let (sent, out) = (Arc::clone(&sent), Arc::clone(&out));
        tasks.spawn(async move {
            let mut idle = 0;
            while idle < 50 {
                let claimed = store.claim_deliveries(at(20), at(1000), 3).await.expect("claim");
                if claimed.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for d in &claimed {
                    let fresh = out
                        .lock()
                        .expect("not poisoned")
                        .insert(d.conversation_id.clone());
                    assert!(fresh, "two deliveries of {} out at once", d.conversation_id);
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
                for d in claimed {
                    sent.lock()
                        .expect("not poisoned")
                        .entry(d.conversation_id.clone())
                        .or_default()
                        .push(d.id.clone());
                    // Out of the set before the success commits, so the next claim cannot beat it.
                    out.lock().expect("not poisoned").remove(&d.conversation_id);
                    store.delivery_succeeded(&d, at(21)).await.expect("sent");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("runner");
    }
    let sent = sent.lock().expect("not poisoned").clone();
    assert_eq!(sent.values().map(Vec::len).sum::<usize>(), 8 * 4);
    for c in &made {
        let listed = deliveries_of(&*store, &c.id).await;
        let in_order: Vec<_> = listed.iter().map(|d| d.id.clone()).collect();
        assert_eq!(sent[c.id.as_str()], in_order, "order of {}", c.id);
        assert!(listed.iter().all(|d| d.status == "delivered" && d.attempts == 1));
    }
    let expected: Vec<_> = made.iter().map(|c| (JobKind::Finalize, &c.id)).collect();
    finish(t, &expected).await;
}

/// `DeliveryFilter`: by conversation, and `failed_only` for those given up or waiting to retry.
pub async fn listing_failed_deliveries_shows_those_given_up_and_those_waiting_to_retry<T: TestStore>(
    fresh: impl AsyncFn() -> T,
) {
    let t = fresh().await;
    let store = t.store();
    let x = four_deliveries(&*store, "acme", T0).await;
    let y = four_deliveries(&*store, "acme", T0).await;
    let z = four_deliveries(&*store, "acme", T0).await;
    let first = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    // x's join is given up; y's waits to retry; z's failed once and then went through.
    store
        .delivery_failed(of(&first, &x), "410 Gone", None, at(11))
        .await
        .expect("gave up");
    store
        .delivery_failed(of(&first, &y), "503 Service Unavailable", Some(at(100)), at(11))
        .await
        .expect("failed");
    store
        .delivery_failed(of(&first, &z), "timed out", Some(at(12)), at(11))
        .await
        .expect("failed");
    let again = store.claim_deliveries(at(12), at(72), 10).await.expect("claim");
    store
        .delivery_succeeded(of(&again, &z), at(13))
        .await
        .expect("sent");

    let list = async |conversation_id: Option<&ConversationId>, failed_only| {
        let filter = DeliveryFilter {
            conversation_id: conversation_id.map(ConversationId::as_str),
            failed_only,
        };
        let listed = store.list_deliveries(filter).await.expect("listing deliveries");
        listed
            .into_iter()
            .map(|d| (d.conversation_id, d.event_type, d.status))
            .collect::<Vec<_>>()
    };
    let row = |c: &Conversation, event_type: &str, status: &str| {
        (c.id.to_string(), event_type.to_owned(), status.to_owned())
    };
    assert_eq!(
        list(None, true).await,
        [
            row(&x, "system.replica_joined", "failed"),
            row(&y, "system.replica_joined", "pending"),
        ]
    );
    assert_eq!(
        list(Some(&y.id), true).await,
        [row(&y, "system.replica_joined", "pending")]
    );
    assert!(list(Some(&z.id), true).await.is_empty());
    // Without `failed_only`, everything of the conversation, oldest first.
    let all_of_x = list(Some(&x.id), false).await;
    assert_eq!(all_of_x.len(), 4);
    assert_eq!(all_of_x[0], row(&x, "system.replica_joined", "failed"));
    assert_eq!(list(None, false).await.len(), 12);
    finish(
        t,
        &[
            (JobKind::Finalize, &x.id),
            (JobKind::Finalize, &y.id),
            (JobKind::Finalize, &z.id),
        ],
    )
    .await;
}
