//! What only PostgreSQL does: several processes on one database, VACUUM, and an unreachable server.
//!
//! Everything a single store must do is the contract suite's (`tests/contract.rs`). Here two stores
//! on one database stand for two processes, each with its own pool. The server comes from
//! `PARLEY_TEST_POSTGRES_URL` (`scripts/test` sets it); without it these tests fail.

#[path = "support/test_db.rs"]
mod test_db;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_domain::Event;
use parley_store::testing::{
    T0, after_end_events, at, conversation, deliveries_of, end, seed, types_and_statuses, with_callback,
};
use parley_store::{ConversationStore, DeleteScope, DeliveryFilter, HardDeleteOutcome, StoreError};
use parley_store_postgres::PostgresStore;
use test_db::TestDb;
use tokio::task::JoinSet;

/// Two stores on one fresh database.
async fn two_processes() -> (TestDb, Arc<PostgresStore>, Arc<PostgresStore>) {
    let db = TestDb::create().await;
    let (a, b) = (Arc::new(db.store().await), Arc::new(db.store().await));
    (db, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cap_on_active_conversations_holds_across_processes() {
    let (db, a, b) = two_processes().await;
    // Several rounds of a burst from two processes, each on a fresh account.
    for round in 0..3 {
        let account = format!("busy{round}");
        a.ensure_account(&account, T0).await.expect("account");
        let mut tasks = JoinSet::new();
        for i in 0..40 {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let c = conversation(&account, T0);
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
        assert_eq!((created, refused), (5, 35), "round {round}");
        let (_, total) = b.list_conversations(&account, None, 100, 0).await.expect("list");
        assert_eq!(total, 5, "round {round}");
    }
    assert!(a.list_jobs().await.expect("jobs").is_empty());
    db.drop_database(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_fifty_concurrent_hard_deletes_from_two_processes_exactly_one_deletes() {
    let (db, a, b) = two_processes().await;
    let mut erased = Vec::new();
    for round in 0..3 {
        let c = with_callback(conversation("acme", at(round)));
        seed(&*a, &c).await;
        let mut tasks = JoinSet::new();
        for i in 0..50 {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
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
        assert!(b.load_conversation(&c.id).await.expect("load").is_none());
        let receipts = b.list_receipts(None).await.expect("receipts");
        assert_eq!(receipts.iter().filter(|r| r.conversation_id == c.id).count(), 1);
        // One shutdown, from the one delete that ended the call.
        assert_eq!(
            types_and_statuses(&deliveries_of(&*b, &c.id).await),
            [("system.shutdown", "pending")],
            "round {round}"
        );
        erased.push(c.id);
    }
    // One purge each, and nothing else.
    let jobs: Vec<_> = a
        .list_jobs()
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| (j.kind, j.conversation_id))
        .collect();
    let expected: Vec<_> = erased
        .iter()
        .map(|id| ("purge".to_owned(), id.to_string()))
        .collect();
    assert_eq!(jobs, expected);
    db.drop_database(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_claiming_jobs_never_get_the_same_job() {
    let (db, a, b) = two_processes().await;
    for i in 0..100 {
        // Made long enough ago that all three of its jobs are due.
        seed(&*a, &conversation("acme", at(-4000 - i))).await;
    }
    let all: HashSet<i64> = a
        .list_jobs()
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(all.len(), 300);

    let mut tasks = JoinSet::new();
    for i in 0..8 {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = store.claim_due_jobs(T0, at(120), 7).await.expect("claim");
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
        });
    }
    let mut claimed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        claimed.extend(done.expect("task"));
    }
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(unique.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(unique, all);
    let leases: HashSet<_> = b
        .list_jobs()
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| (j.locked_until, j.attempts))
        .collect();
    assert_eq!(leases, HashSet::from([(Some(at(120)), 1)]));
    db.drop_database(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_runners_in_two_processes_never_overlap_on_a_conversation() {
    let (db, a, b) = two_processes().await;
    let mut conversations = Vec::new();
    for i in 0..8 {
        let c = with_callback(conversation("acme", at(i)));
        seed(&*a, &c).await;
        a.record_join(&c.id, &Event::replica_joined(at(1), &c.replica_id))
            .await
            .expect("join");
        end(&*a, &c.id, at(2)).await;
        a.store_call_results(&c.id, &after_end_events(at(3)), None)
            .await
            .expect("results");
        conversations.push(c.id);
    }

    // Sent order per conversation, and who is sending for which conversation right now.
    let sent: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut tasks = JoinSet::new();
    for i in 0..6 {
        let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let (sent, in_flight) = (Arc::clone(&sent), Arc::clone(&in_flight));
        tasks.spawn(async move {
            let mut idle = 0;
            while idle < 50 {
                let claimed = store.claim_deliveries(at(10), at(1000), 3).await.expect("claim");
                if claimed.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                for d in &claimed {
                    let fresh = in_flight
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
                    in_flight.lock().expect("not poisoned").remove(&d.conversation_id);
                    store.delivery_succeeded(&d, at(11)).await.expect("sent");
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("runner");
    }
    let sent = sent.lock().expect("not poisoned").clone();
    assert_eq!(sent.values().map(Vec::len).sum::<usize>(), 8 * 4);
    for id in &conversations {
        let in_order: Vec<String> = deliveries_of(&*a, id).await.into_iter().map(|d| d.id).collect();
        assert_eq!(sent[id.as_str()], in_order, "order of {id}");
    }
    let all = a
        .list_deliveries(DeliveryFilter::default())
        .await
        .expect("deliveries");
    assert!(all.iter().all(|d| d.status == "delivered"), "{all:?}");
    db.drop_database(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_probe_rewrites_one_row() {
    let db = TestDb::create().await;
    let store = db.store().await;
    store.probe_write(at(0)).await.expect("first probe");
    store.probe_write(at(1)).await.expect("second probe");
    let rows = sqlx::PgPool::connect(&db.url).await.expect("connecting");
    let probes: Vec<(i64, i64)> = sqlx::query_as("SELECT write_probe_id, probed_at FROM write_probe")
        .fetch_all(&rows)
        .await
        .expect("probe rows");
    assert_eq!(probes, [(1, at(1).as_micros())]);
    rows.close().await;
    db.drop_database(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasing_residue_vacuums_the_erased_tables() {
    let db = TestDb::create().await;
    let store = Arc::new(db.store().await);
    let c = with_callback(conversation("acme", T0));
    seed(&*store, &c).await;
    store
        .hard_delete(DeleteScope::Account("acme"), &c.id, at(1), None)
        .await
        .expect("delete");
    let mut tasks = JoinSet::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.spawn(async move { store.erase_residue().await });
    }
    while let Some(done) = tasks.join_next().await {
        assert!(done.expect("task").expect("vacuum"));
    }
    // Only the server's statistics show a VACUUM ran, and they arrive a moment after it: poll briefly.
    let stats = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connecting to read statistics");
    let mut vacuumed: Vec<String> = Vec::new();
    for _ in 0..50 {
        vacuumed = sqlx::query_scalar(
            "SELECT relname::TEXT FROM pg_stat_user_tables WHERE vacuum_count > 0 ORDER BY relname",
        )
        .fetch_all(&stats)
        .await
        .expect("stats");
        if vacuumed.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        vacuumed,
        ["asset", "conversation", "delivery", "event", "participant"]
    );
    stats.close().await;
    db.drop_database(&[&store]).await;
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_within_seconds() {
    // Port 1 on loopback: nothing listens there, so the connection is refused. No server needed.
    let started = std::time::Instant::now();
    let result = PostgresStore::connect("postgres://postgres@127.0.0.1:1/parley").await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}
