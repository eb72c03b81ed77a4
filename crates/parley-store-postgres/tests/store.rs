//! `PostgresStore` against a real server: each test on a fresh database of its own.
//!
//! The server comes from `PARLEY_TEST_POSTGRES_URL` (see `scripts/postgres.sh`); without it every
//! test that needs one says it did not run and passes. Two stores on one database stand for two processes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use parley_domain::{Conversation, ConversationId, Event, EventType, Status, Timestamp};
use parley_store::{
    Asset, ConversationStore, DeleteScope, DeliveryFilter, EndOutcome, HardDeleteOutcome, JobKind,
    ParticipantOutcome, SoftDeleteOutcome, StoreError,
};
use parley_store_postgres::PostgresStore;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinSet;

/// A fixed instant, so timestamps in the rows can be checked exactly.
const T0: Timestamp = Timestamp::from_micros(1_750_000_000_000_000);

fn at(secs: i64) -> Timestamp {
    T0.plus_secs(secs)
}

/// A job row as `(kind, run_at, not_before, locked_until, attempts)`.
type JobRow = (String, i64, Option<i64>, Option<i64>, i64);

/// A database made for one test, dropped by `finish`. A failed test leaves it for inspection.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
    /// Direct access, to check rows rather than only what the store returns.
    rows: PgPool,
}

impl TestDb {
    /// A fresh database, or `None` (after saying so) when no server is configured.
    async fn create(test: &str) -> Option<Self> {
        let Ok(admin_url) = std::env::var("PARLEY_TEST_POSTGRES_URL") else {
            println!("{test}: not run: PARLEY_TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!("parley_test_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("PARLEY_TEST_POSTGRES_URL must reach a running server");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("creating the test database");
        admin.close().await.expect("closing the admin connection");
        let mut url = url::Url::parse(&admin_url).expect("PARLEY_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        let rows = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .expect("connecting to the test database");
        Some(Self {
            admin_url,
            name,
            url,
            rows,
        })
    }

    /// A store on this database: each call is another "process" with its own pool.
    async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url)
            .await
            .expect("connecting the store")
    }

    async fn count(&self, sql: &str, id: &ConversationId) -> i64 {
        sqlx::query_scalar(sql)
            .bind(id.as_str())
            .fetch_one(&self.rows)
            .await
            .expect(sql)
    }

    /// A conversation's jobs, oldest first.
    async fn jobs_of(&self, id: &ConversationId) -> Vec<JobRow> {
        sqlx::query_as(
            "SELECT kind, run_at, not_before, locked_until, attempts FROM job \
             WHERE conversation_id = $1 ORDER BY job_id",
        )
        .bind(id.as_str())
        .fetch_all(&self.rows)
        .await
        .expect("listing jobs")
    }

    /// `(event_type, status, carries_content)` of a conversation's deliveries, oldest first.
    async fn deliveries_of(&self, id: &ConversationId) -> Vec<(String, String, bool)> {
        sqlx::query_as(
            "SELECT event_type, status, carries_content FROM delivery \
             WHERE conversation_id = $1 ORDER BY delivery_seq",
        )
        .bind(id.as_str())
        .fetch_all(&self.rows)
        .await
        .expect("listing deliveries")
    }

    async fn finish(self, stores: &[&PostgresStore]) {
        for store in stores {
            store.close().await;
        }
        self.rows.close().await;
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("reconnecting to drop the test database");
        sqlx::raw_sql(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await
            .expect("dropping the test database");
    }
}

fn conversation(account: &str, created_at: Timestamp) -> Conversation {
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
        max_call_duration: 3_000_000_000,
        participant_left_timeout: 60,
        participant_absent_timeout: 300,
        participants_present: 0,
        participant_joined_at: None,
        participant_left_at: None,
    }
}

fn with_callback(mut c: Conversation) -> Conversation {
    c.callback_url = Some("https://hooks.example.com/tavus".into());
    c
}

/// Creates an account and a conversation in it with the usual create-time jobs.
async fn seed(store: &PostgresStore, c: &Conversation) {
    store.ensure_account(&c.account, T0).await.expect("account");
    let jobs = [
        (JobKind::JoinReplica, c.created_at),
        (JobKind::MaxDurationTimer, c.created_at.plus_secs(3600)),
        (JobKind::AbsentTimer, c.created_at.plus_secs(300)),
    ];
    store.create_conversation(c, 100, &jobs).await.expect("create");
}

fn after_end_events(at: Timestamp) -> Vec<Event> {
    vec![
        Event {
            event_type: EventType::TranscriptionReady,
            timestamp: at,
            properties: json!({ "transcript": [{ "role": "user", "content": "the secret plan" }] }),
        },
        Event {
            event_type: EventType::RecordingReady,
            timestamp: at,
            properties: json!({ "bucket_name": "parley", "s3_key": "conversations/x/assets/recording.wav" }),
        },
    ]
}

fn recording(id: &ConversationId, at: Timestamp) -> Asset {
    Asset {
        name: "recording.wav".into(),
        blob_key: format!("conversations/{id}/assets/recording.wav"),
        content_type: "audio/wav".into(),
        size: 48_044,
        created_at: at,
    }
}

async fn end(store: &PostgresStore, id: &ConversationId, now: Timestamp) {
    let outcome = store
        .end_conversation(None, id, "end_conversation_endpoint_hit", now, None)
        .await
        .expect("end");
    assert!(matches!(outcome, EndOutcome::Ended { .. }), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_created_read_and_listed_with_their_total() {
    let Some(db) = TestDb::create("conversations_are_created_read_and_listed_with_their_total").await else {
        return;
    };
    let store = db.store().await;
    let mut made = Vec::new();
    for i in 0..5 {
        let c = conversation("acme", at(i));
        seed(&store, &c).await;
        made.push(c);
    }
    // Two created in the same microsecond: the tie breaks on the id, descending.
    let mut twin = conversation("acme", at(4));
    twin.id = ConversationId::parse("c0000000000000001").expect("a valid id");
    seed(&store, &twin).await;
    end(&store, &made[1].id, at(10)).await;
    seed(&store, &conversation("other", at(20))).await;

    let got = store
        .get_conversation("acme", &made[0].id)
        .await
        .expect("get")
        .expect("visible");
    assert_eq!(got.request_json, made[0].request_json);
    assert_eq!(got.conversational_context, made[0].conversational_context);
    assert_eq!(got.max_call_duration, 3_000_000_000);
    assert_eq!(got.created_at, at(0));
    assert!(got.enable_recording && !got.test_mode);
    assert!(
        store
            .get_conversation("other", &made[0].id)
            .await
            .expect("get")
            .is_none()
    );

    let (page, total) = store.list_conversations("acme", None, 2, 1).await.expect("list");
    assert_eq!(total, 6);
    let ids: Vec<_> = page.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, [twin.id.clone(), made[3].id.clone()]);
    let (page, total) = store
        .list_conversations("acme", Some(Status::Ended), 10, 0)
        .await
        .expect("list");
    assert_eq!((page.len(), total), (1, 1));
    assert_eq!(
        page[0].shutdown_reason.as_deref(),
        Some("end_conversation_endpoint_hit")
    );
    let (page, total) = store
        .list_conversations("acme", Some(Status::Active), 10, 10)
        .await
        .expect("list");
    assert_eq!((page.len(), total), (0, 5));

    let jobs = db.jobs_of(&made[0].id).await;
    let kinds: Vec<_> = jobs.iter().map(|j| j.0.as_str()).collect();
    assert_eq!(kinds, ["join_replica", "max_duration_timer", "absent_timer"]);
    assert_eq!(jobs[1].1, at(3600).as_micros());

    let again = store.create_conversation(&made[0], 100, &[]).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cap_on_active_conversations_holds_across_processes() {
    let Some(db) = TestDb::create("the_cap_on_active_conversations_holds_across_processes").await else {
        return;
    };
    let (a, b) = (Arc::new(db.store().await), Arc::new(db.store().await));
    a.ensure_account("acme", T0).await.expect("account");
    for _ in 0..3 {
        a.create_conversation(&conversation("acme", T0), 3, &[])
            .await
            .expect("under the cap");
    }
    let over = a.create_conversation(&conversation("acme", T0), 3, &[]).await;
    assert!(matches!(over, Err(StoreError::ConcurrencyLimit)), "{over:?}");
    let mut test_mode = conversation("acme", T0);
    test_mode.test_mode = true;
    a.create_conversation(&test_mode, 3, &[])
        .await
        .expect("test mode does not count");

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
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM conversation WHERE account_id = $1")
            .bind(&account)
            .fetch_one(&db.rows)
            .await
            .expect("count");
        assert_eq!(rows, 5, "round {round}");
    }
    db.finish(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_stores_results_and_lists_events_in_order() {
    let Some(db) = TestDb::create("ending_stores_results_and_lists_events_in_order").await else {
        return;
    };
    let store = db.store().await;
    let c = with_callback(conversation("acme", T0));
    seed(&store, &c).await;
    let joined = Event::replica_joined(at(1), &c.replica_id);
    assert!(store.record_join(&c.id, &joined).await.expect("join"));
    assert!(!store.record_join(&c.id, &joined).await.expect("join twice"));

    let wrong = store
        .end_conversation(Some("other"), &c.id, "end_conversation_endpoint_hit", at(5), None)
        .await
        .expect("end");
    assert!(matches!(wrong, EndOutcome::NotFound), "{wrong:?}");
    let outcome = store
        .end_conversation(
            Some("acme"),
            &c.id,
            "end_conversation_endpoint_hit",
            at(5),
            Some(at(125)),
        )
        .await
        .expect("end");
    let EndOutcome::Ended {
        conversation: ended,
        finalize,
    } = outcome
    else {
        panic!("not ended: {outcome:?}");
    };
    assert_eq!(ended.status, Status::Ended);
    assert_eq!(ended.ended_at, Some(at(5)));
    assert_eq!((finalize.kind, finalize.attempts), (JobKind::Finalize, 1));
    // The join and the timers are gone; the finalize job is already leased to this caller.
    assert_eq!(
        db.jobs_of(&c.id).await,
        [(
            "finalize".to_owned(),
            at(5).as_micros(),
            None,
            Some(at(125).as_micros()),
            1
        )]
    );
    let again = store
        .end_conversation(None, &c.id, "max_call_duration reached", at(6), None)
        .await
        .expect("end again");
    assert!(matches!(again, EndOutcome::AlreadyEnded(_)), "{again:?}");

    let asset = recording(&c.id, at(7));
    let events = after_end_events(at(7));
    assert!(
        store
            .store_call_results(&c.id, &events, Some(&asset))
            .await
            .expect("results")
    );
    // A retried finalize stores the events once.
    assert!(
        store
            .store_call_results(&c.id, &events, Some(&asset))
            .await
            .expect("results")
    );

    let listed = store.list_events(&c.id).await.expect("events");
    let types: Vec<_> = listed.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "system.replica_joined",
            "system.shutdown",
            "application.transcription_ready",
            "application.recording_ready"
        ]
    );
    assert_eq!(
        listed[1].properties["shutdown_reason"],
        "end_conversation_endpoint_hit"
    );
    assert_eq!(listed[2].properties, events[0].properties);
    assert_eq!(listed[2].timestamp, at(7));

    let got = store
        .get_asset("acme", &c.id, "recording.wav")
        .await
        .expect("asset")
        .expect("stored");
    assert_eq!((got.size, got.blob_key), (48_044, asset.blob_key.clone()));
    assert!(
        store
            .get_asset("other", &c.id, "recording.wav")
            .await
            .expect("asset")
            .is_none()
    );

    // Every event was queued for the callback, with the exact envelope the receiver gets.
    let deliveries = db.deliveries_of(&c.id).await;
    assert_eq!(deliveries.len(), 4);
    assert!(deliveries.iter().all(|d| d.1 == "pending"));
    let (id, payload): (String, String) = sqlx::query_as(
        "SELECT delivery_id, payload FROM delivery WHERE conversation_id = $1 ORDER BY delivery_seq LIMIT 1",
    )
    .bind(c.id.as_str())
    .fetch_one(&db.rows)
    .await
    .expect("first delivery");
    let envelope = Event::envelope(
        "system.replica_joined",
        "system",
        at(1),
        joined.properties.clone(),
        &c.id,
        c.callback_url.as_deref(),
    );
    assert_eq!(payload, envelope.to_string());
    assert!(id.len() == 17 && id.starts_with('d') && id[1..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        !store
            .store_call_results(&conversation("acme", T0).id, &events, None)
            .await
            .expect("gone")
    );
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_hides_restore_brings_back_and_retention_checks_the_instant() {
    let Some(db) =
        TestDb::create("soft_delete_hides_restore_brings_back_and_retention_checks_the_instant").await
    else {
        return;
    };
    let store = db.store().await;
    let c = conversation("acme", T0);
    seed(&store, &c).await;
    let soft = |now: Timestamp| store.soft_delete("acme", &c.id, now, now.plus_secs(86_400));
    assert_eq!(soft(at(1)).await.expect("soft"), SoftDeleteOutcome::StillActive);
    end(&store, &c.id, at(2)).await;
    store
        .store_call_results(&c.id, &[], Some(&recording(&c.id, at(3))))
        .await
        .expect("results");
    assert_eq!(
        store
            .soft_delete("other", &c.id, at(4), at(5))
            .await
            .expect("soft"),
        SoftDeleteOutcome::NotFound
    );
    assert_eq!(soft(at(10)).await.expect("soft"), SoftDeleteOutcome::Deleted);
    assert_eq!(
        soft(at(11)).await.expect("soft"),
        SoftDeleteOutcome::AlreadyDeleted
    );

    assert!(
        store
            .get_conversation("acme", &c.id)
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(
        store
            .list_conversations("acme", None, 10, 0)
            .await
            .expect("list")
            .1,
        0
    );
    assert!(
        store
            .get_asset("acme", &c.id, "recording.wav")
            .await
            .expect("asset")
            .is_none()
    );
    let hidden = store
        .load_conversation(&c.id)
        .await
        .expect("load")
        .expect("still stored");
    assert_eq!(hidden.deleted_at, Some(at(10)));
    let retention = db.jobs_of(&c.id).await;
    assert_eq!(
        retention.last(),
        Some(&(
            "retention_purge".to_owned(),
            at(86_410).as_micros(),
            Some(at(10).as_micros()),
            None,
            0
        ))
    );

    assert!(store.restore(&c.id, at(20)).await.expect("restore"));
    assert!(!store.restore(&c.id, at(21)).await.expect("restore twice"));
    assert!(
        store
            .get_conversation("acme", &c.id)
            .await
            .expect("get")
            .is_some()
    );
    let kinds: Vec<_> = db.jobs_of(&c.id).await.into_iter().map(|j| j.0).collect();
    assert!(!kinds.contains(&"retention_purge".to_owned()), "{kinds:?}");

    // Deleted again: a retention job for the first soft delete no longer applies.
    assert_eq!(soft(at(30)).await.expect("soft"), SoftDeleteOutcome::Deleted);
    let stale = store
        .hard_delete(
            DeleteScope::RetentionExpired { deleted_at: at(10) },
            &c.id,
            at(40),
            None,
        )
        .await
        .expect("stale retention");
    assert!(matches!(stale, HardDeleteOutcome::NotFound), "{stale:?}");
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM conversation WHERE conversation_id = $1",
            &c.id
        )
        .await,
        1
    );
    let expired = store
        .hard_delete(
            DeleteScope::RetentionExpired { deleted_at: at(30) },
            &c.id,
            at(40),
            None,
        )
        .await
        .expect("retention");
    let HardDeleteOutcome::Deleted { receipt, purge } = expired else {
        panic!("not deleted: {expired:?}");
    };
    assert_eq!(receipt.reason, "retention_expired");
    assert_eq!((receipt.assets, receipt.asset_bytes), (1, 48_044));
    // Not leased: the runner picks it up.
    assert_eq!((purge.kind, purge.attempts), (JobKind::Purge, 0));
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_delete_erases_the_rows_and_leaves_a_receipt_and_a_claimed_purge() {
    let Some(db) =
        TestDb::create("a_hard_delete_erases_the_rows_and_leaves_a_receipt_and_a_claimed_purge").await
    else {
        return;
    };
    let store = db.store().await;
    let c = conversation("acme", T0);
    seed(&store, &c).await;
    store.participant_join(&c.id, "p1", at(1)).await.expect("join");
    store
        .record_join(&c.id, &Event::replica_joined(at(1), &c.replica_id))
        .await
        .expect("replica");
    end(&store, &c.id, at(2)).await;
    store
        .store_call_results(&c.id, &after_end_events(at(3)), Some(&recording(&c.id, at(3))))
        .await
        .expect("results");

    let wrong = store
        .hard_delete(DeleteScope::Account("other"), &c.id, at(4), Some(at(100)))
        .await
        .expect("delete");
    assert!(matches!(wrong, HardDeleteOutcome::NotFound), "{wrong:?}");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM event WHERE conversation_id = $1", &c.id)
            .await,
        4
    );

    let outcome = store
        .hard_delete(DeleteScope::Account("acme"), &c.id, at(5), Some(at(100)))
        .await
        .expect("delete");
    let HardDeleteOutcome::Deleted { receipt, purge } = outcome else {
        panic!("not deleted: {outcome:?}");
    };
    assert_eq!(
        (receipt.events, receipt.assets, receipt.asset_bytes),
        (4, 1, 48_044)
    );
    assert_eq!(
        (receipt.reason.as_str(), receipt.erased_at),
        ("hard_delete", at(5))
    );
    assert_eq!((purge.kind, purge.attempts), (JobKind::Purge, 1));
    for table in ["conversation", "event", "asset", "participant"] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE conversation_id = $1");
        assert_eq!(db.count(&sql, &c.id).await, 0, "{table}");
    }
    // The finalize job stays for a finalize in flight; the purge is leased to this caller.
    let jobs = db.jobs_of(&c.id).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0].0, "finalize");
    assert_eq!(
        jobs[1],
        (
            "purge".to_owned(),
            at(5).as_micros(),
            None,
            Some(at(100).as_micros()),
            1
        )
    );
    let stored: (String, i64, String, i64, i64, i64) = sqlx::query_as(
        "SELECT account_id, erased_at, reason, events, assets, asset_bytes FROM erasure_receipt \
         WHERE conversation_id = $1",
    )
    .bind(c.id.as_str())
    .fetch_one(&db.rows)
    .await
    .expect("receipt row");
    assert_eq!(
        stored,
        (
            "acme".to_owned(),
            at(5).as_micros(),
            "hard_delete".to_owned(),
            4,
            1,
            48_044
        )
    );
    let receipts = store.list_receipts(Some("acme")).await.expect("receipts");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].conversation_id, c.id);
    assert!(
        store
            .list_receipts(Some("other"))
            .await
            .expect("receipts")
            .is_empty()
    );

    // After the delete the results of a late finalize are refused, and the id is simply gone.
    assert!(
        !store
            .store_call_results(&c.id, &after_end_events(at(6)), None)
            .await
            .expect("late")
    );
    let again = store
        .hard_delete(DeleteScope::Account("acme"), &c.id, at(7), None)
        .await
        .expect("delete again");
    assert!(matches!(again, HardDeleteOutcome::NotFound), "{again:?}");

    // An active conversation is ended on the way: its timers go with it.
    let live = with_callback(conversation("acme", at(8)));
    seed(&store, &live).await;
    let outcome = store
        .hard_delete(DeleteScope::Account("acme"), &live.id, at(9), None)
        .await
        .expect("delete live");
    let HardDeleteOutcome::Deleted { receipt, purge } = outcome else {
        panic!("not deleted: {outcome:?}");
    };
    assert_eq!((receipt.events, purge.attempts), (1, 0));
    let kinds: Vec<_> = db.jobs_of(&live.id).await.into_iter().map(|j| j.0).collect();
    assert_eq!(kinds, ["purge"]);
    assert_eq!(
        db.deliveries_of(&live.id).await,
        [("system.shutdown".to_owned(), "pending".to_owned(), false)]
    );
    assert!(store.erase_residue().await.expect("vacuum"));
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_fifty_concurrent_hard_deletes_from_two_processes_exactly_one_deletes() {
    let Some(db) =
        TestDb::create("of_fifty_concurrent_hard_deletes_from_two_processes_exactly_one_deletes").await
    else {
        return;
    };
    let (a, b) = (Arc::new(db.store().await), Arc::new(db.store().await));
    for round in 0..3 {
        let c = with_callback(conversation("acme", at(round)));
        seed(&a, &c).await;
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
        let count = |sql| db.count(sql, &c.id);
        assert_eq!(
            count("SELECT COUNT(*) FROM conversation WHERE conversation_id = $1").await,
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = $1").await,
            1
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM job WHERE conversation_id = $1 AND kind = 'purge'").await,
            1
        );
        // One shutdown, from the one delete that ended the call.
        assert_eq!(db.deliveries_of(&c.id).await.len(), 1);
    }
    db.finish(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_claiming_jobs_never_get_the_same_job() {
    let Some(db) = TestDb::create("two_processes_claiming_jobs_never_get_the_same_job").await else {
        return;
    };
    let (a, b) = (Arc::new(db.store().await), Arc::new(db.store().await));
    for i in 0..100 {
        seed(&a, &conversation("acme", at(-4000 - i))).await;
    }
    let all: HashSet<i64> = sqlx::query_scalar("SELECT job_id FROM job")
        .fetch_all(&db.rows)
        .await
        .expect("jobs")
        .into_iter()
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
    let leases: Vec<(Option<i64>, i64)> = sqlx::query_as("SELECT DISTINCT locked_until, attempts FROM job")
        .fetch_all(&db.rows)
        .await
        .expect("leases");
    assert_eq!(leases, [(Some(at(120).as_micros()), 1)]);
    db.finish(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_can_be_claimed_again() {
    let Some(db) = TestDb::create("an_expired_lease_can_be_claimed_again").await else {
        return;
    };
    let (a, b) = (db.store().await, db.store().await);
    let c = conversation("acme", T0);
    a.ensure_account("acme", T0).await.expect("account");
    a.create_conversation(&c, 10, &[(JobKind::JoinReplica, T0)])
        .await
        .expect("create");

    let first = a.claim_due_jobs(at(1), at(11), 10).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert!(
        b.claim_due_jobs(at(10), at(20), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    // The first process died: once its lease is over another takes the job.
    let second = b.claim_due_jobs(at(11), at(21), 10).await.expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!((second[0].id, second[0].attempts), (first[0].id, 2));

    // The first process wakes up late: its claim is stale, so it cannot undo the new one.
    a.fail_job(&first[0], "stale", at(12)).await.expect("stale fail");
    a.complete_job(&first[0]).await.expect("stale complete");
    let row = &db.jobs_of(&c.id).await[0];
    assert_eq!(
        (row.3, row.4),
        (Some(at(21).as_micros()), 2),
        "the stale calls changed nothing"
    );
    b.fail_job(&second[0], "replica unavailable", at(30))
        .await
        .expect("fail");
    let row = &db.jobs_of(&c.id).await[0];
    assert_eq!((row.1, row.3, row.4), (at(30).as_micros(), None, 2));
    let listed = a.list_jobs().await.expect("jobs");
    assert_eq!(listed[0].last_error.as_deref(), Some("replica unavailable"));
    assert!(
        a.claim_due_jobs(at(29), at(40), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let third = a.claim_due_jobs(at(30), at(40), 10).await.expect("claim");
    assert_eq!(third[0].attempts, 3);

    assert_eq!(a.release_all_leases().await.expect("release"), 1);
    let fourth = b.claim_due_jobs(at(31), at(41), 10).await.expect("claim");
    assert_eq!(fourth[0].attempts, 4);
    b.complete_job(&fourth[0]).await.expect("complete");
    assert!(db.jobs_of(&c.id).await.is_empty());

    // A job made already claimed (end with a lease) waits out that lease too.
    end(&a, &c.id, at(50)).await;
    let unknown = a
        .end_conversation(None, &conversation("acme", T0).id, "x", at(50), None)
        .await
        .expect("end an unknown id");
    assert!(matches!(unknown, EndOutcome::NotFound), "{unknown:?}");
    let c2 = conversation("acme", T0);
    a.create_conversation(&c2, 10, &[]).await.expect("create");
    let EndOutcome::Ended { finalize, .. } = a
        .end_conversation(
            None,
            &c2.id,
            "end_conversation_endpoint_hit",
            at(60),
            Some(at(180)),
        )
        .await
        .expect("end")
    else {
        panic!("not ended");
    };
    let due = b.claim_due_jobs(at(179), at(300), 10).await.expect("claim");
    assert!(due.iter().all(|j| j.id != finalize.id), "{due:?}");
    let due = b.claim_due_jobs(at(180), at(300), 10).await.expect("claim");
    assert!(
        due.iter().any(|j| j.id == finalize.id && j.attempts == 2),
        "{due:?}"
    );
    db.finish(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_go_in_order_one_at_a_time_per_conversation() {
    let Some(db) = TestDb::create("deliveries_go_in_order_one_at_a_time_per_conversation").await else {
        return;
    };
    let store = db.store().await;
    let (x, y) = (
        with_callback(conversation("acme", T0)),
        with_callback(conversation("acme", T0)),
    );
    for c in [&x, &y] {
        seed(&store, c).await;
        store
            .record_join(&c.id, &Event::replica_joined(at(1), &c.replica_id))
            .await
            .expect("join");
        end(&store, &c.id, at(2)).await;
        store
            .store_call_results(&c.id, &after_end_events(at(3)), None)
            .await
            .expect("results");
    }
    assert!(
        store
            .set_webhook_secret("acme", Some("whsec_1"))
            .await
            .expect("secret")
    );
    assert!(
        !store
            .set_webhook_secret("nobody", Some("x"))
            .await
            .expect("secret")
    );

    // One per conversation, the oldest, with the exact payload and the signing secret.
    let first = store.claim_deliveries(at(10), at(70), 10).await.expect("claim");
    assert_eq!(first.len(), 2);
    assert!(
        first
            .iter()
            .all(|d| d.event_type == "system.replica_joined" && d.attempts == 1)
    );
    assert_eq!(first[0].signing_secret.as_deref(), Some("whsec_1"));
    assert_eq!(first[0].retry_from, at(1));
    assert!(
        store
            .claim_deliveries(at(11), at(70), 10)
            .await
            .expect("claim")
            .is_empty()
    );
    let (dx, dy) = if first[0].conversation_id == x.id.as_str() {
        (&first[0], &first[1])
    } else {
        (&first[1], &first[0])
    };

    // A failure holds the conversation back until its retry is due, then the same one goes again.
    store
        .delivery_failed(dx, "503 Service Unavailable", Some(at(20)), at(20))
        .await
        .expect("failed");
    store.delivery_succeeded(dy, at(12)).await.expect("sent");
    let next = store.claim_deliveries(at(12), at(70), 10).await.expect("claim");
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].conversation_id.as_str(), next[0].event_type.as_str()),
        (y.id.as_str(), "system.shutdown")
    );
    let retried = store.claim_deliveries(at(20), at(80), 10).await.expect("claim");
    assert_eq!(retried.len(), 1);
    assert_eq!((retried[0].id.as_str(), retried[0].attempts), (dx.id.as_str(), 2));
    assert_eq!(retried[0].payload, dx.payload);

    // A stale claim cannot give it up; the current one can. Then an operator retries it while
    // a later one is out: it waits its turn.
    store
        .delivery_failed(dx, "stale", None, at(40))
        .await
        .expect("stale");
    assert!(
        store
            .list_deliveries(DeliveryFilter {
                conversation_id: Some(x.id.as_str()),
                failed_only: true
            })
            .await
            .expect("list")
            .is_empty()
    );
    store
        .delivery_failed(&retried[0], "410 Gone", None, at(40))
        .await
        .expect("gave up");
    let failed = store
        .list_deliveries(DeliveryFilter {
            conversation_id: Some(x.id.as_str()),
            failed_only: true,
        })
        .await
        .expect("list");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("410 Gone"));
    let shutdown = store.claim_deliveries(at(21), at(90), 10).await.expect("claim");
    let shutdown = shutdown
        .iter()
        .find(|d| d.conversation_id == x.id.as_str())
        .expect("x's shutdown is next");
    assert_eq!(shutdown.event_type, "system.shutdown");
    assert!(store.retry_delivery(&dx.id, at(22)).await.expect("retry"));
    assert!(
        !store
            .retry_delivery("d0000000000000000", at(22))
            .await
            .expect("retry")
    );
    let none_of_x = store.claim_deliveries(at(23), at(90), 10).await.expect("claim");
    assert!(
        none_of_x.iter().all(|d| d.conversation_id != x.id.as_str()),
        "{none_of_x:?}"
    );
    store.delivery_succeeded(shutdown, at(24)).await.expect("sent");
    let back = store.claim_deliveries(at(25), at(90), 10).await.expect("claim");
    let back = back
        .iter()
        .find(|d| d.conversation_id == x.id.as_str())
        .expect("the retried one");
    assert_eq!((back.id.as_str(), back.retry_from), (dx.id.as_str(), at(22)));
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_runners_in_two_processes_never_overlap_on_a_conversation() {
    let Some(db) = TestDb::create("delivery_runners_in_two_processes_never_overlap_on_a_conversation").await
    else {
        return;
    };
    let (a, b) = (Arc::new(db.store().await), Arc::new(db.store().await));
    let mut conversations = Vec::new();
    for i in 0..8 {
        let c = with_callback(conversation("acme", at(i)));
        seed(&a, &c).await;
        a.record_join(&c.id, &Event::replica_joined(at(1), &c.replica_id))
            .await
            .expect("join");
        end(&a, &c.id, at(2)).await;
        a.store_call_results(&c.id, &after_end_events(at(3)), None)
            .await
            .expect("results");
        conversations.push(c.id);
    }
    let total = 8 * 4;

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
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
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
                tokio::time::sleep(std::time::Duration::from_millis(3)).await;
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
    assert_eq!(sent.values().map(Vec::len).sum::<usize>(), total);
    for id in &conversations {
        let in_order: Vec<String> = sqlx::query_scalar(
            "SELECT delivery_id FROM delivery WHERE conversation_id = $1 ORDER BY delivery_seq",
        )
        .bind(id.as_str())
        .fetch_all(&db.rows)
        .await
        .expect("deliveries");
        assert_eq!(sent[id.as_str()], in_order, "order of {id}");
    }
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery WHERE status <> 'delivered'")
        .fetch_one(&db.rows)
        .await
        .expect("count");
    assert_eq!(pending, 0);
    db.finish(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_delete_keeps_only_unsent_deliveries_without_content() {
    let Some(db) = TestDb::create("a_hard_delete_keeps_only_unsent_deliveries_without_content").await else {
        return;
    };
    let store = db.store().await;
    let c = with_callback(conversation("acme", T0));
    seed(&store, &c).await;
    store
        .record_join(&c.id, &Event::replica_joined(at(1), &c.replica_id))
        .await
        .expect("join");
    let joined = store.claim_deliveries(at(1), at(60), 10).await.expect("claim");
    store.delivery_succeeded(&joined[0], at(2)).await.expect("sent");
    end(&store, &c.id, at(3)).await;
    store
        .store_call_results(&c.id, &after_end_events(at(4)), None)
        .await
        .expect("results");
    assert_eq!(
        db.deliveries_of(&c.id).await,
        [
            ("system.replica_joined".to_owned(), "delivered".to_owned(), false),
            ("system.shutdown".to_owned(), "pending".to_owned(), false),
            (
                "application.transcription_ready".to_owned(),
                "pending".to_owned(),
                true
            ),
            (
                "application.recording_ready".to_owned(),
                "pending".to_owned(),
                true
            ),
        ]
    );

    store
        .hard_delete(DeleteScope::Account("acme"), &c.id, at(5), None)
        .await
        .expect("delete");
    // Sent ones and content go; the shutdown is still owed to the receiver and carries none.
    assert_eq!(
        db.deliveries_of(&c.id).await,
        [("system.shutdown".to_owned(), "pending".to_owned(), false)]
    );
    let payload: String = sqlx::query_scalar("SELECT payload FROM delivery WHERE conversation_id = $1")
        .bind(c.id.as_str())
        .fetch_one(&db.rows)
        .await
        .expect("payload");
    assert!(!payload.contains("secret plan"));

    // Once sent, it is forgotten too.
    let owed = store.claim_deliveries(at(6), at(60), 10).await.expect("claim");
    assert_eq!(owed.len(), 1);
    store.delivery_succeeded(&owed[0], at(7)).await.expect("sent");
    assert!(db.deliveries_of(&c.id).await.is_empty());
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_leaving_counts_people_and_schedules_the_left_timer() {
    let Some(db) = TestDb::create("joining_and_leaving_counts_people_and_schedules_the_left_timer").await
    else {
        return;
    };
    let store = db.store().await;
    let c = conversation("acme", T0);
    seed(&store, &c).await;
    let present = |n| ParticipantOutcome::Done { present: n };
    assert_eq!(
        store.participant_join(&c.id, "p1", at(10)).await.expect("join"),
        present(1)
    );
    assert_eq!(
        store.participant_join(&c.id, "p2", at(11)).await.expect("join"),
        present(2)
    );
    let twice = store.participant_join(&c.id, "p1", at(12)).await;
    assert!(matches!(twice, Err(StoreError::Conflict(_))), "{twice:?}");
    assert_eq!(
        store.participant_leave(&c.id, "p1", at(20)).await.expect("leave"),
        present(1)
    );
    assert_eq!(
        store.participant_leave(&c.id, "p1", at(21)).await.expect("leave"),
        present(1)
    );
    assert_eq!(
        store
            .participant_leave(&c.id, "nobody", at(21))
            .await
            .expect("leave"),
        present(1)
    );
    let timers = |jobs: Vec<JobRow>| {
        jobs.into_iter()
            .filter(|j| j.0 == "left_timer")
            .collect::<Vec<_>>()
    };
    assert!(timers(db.jobs_of(&c.id).await).is_empty());

    assert_eq!(
        store.participant_leave(&c.id, "p2", at(30)).await.expect("leave"),
        present(0)
    );
    assert_eq!(
        timers(db.jobs_of(&c.id).await),
        [(
            "left_timer".to_owned(),
            at(90).as_micros(),
            Some(at(30).as_micros()),
            None,
            0
        )]
    );
    let room = store
        .load_conversation(&c.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(room.participants_present, 0);
    assert_eq!(room.participant_joined_at, Some(at(10)));
    assert_eq!(room.participant_left_at, Some(at(30)));
    let left: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT left_at FROM participant WHERE conversation_id = $1 ORDER BY participant_id",
    )
    .bind(c.id.as_str())
    .fetch_all(&db.rows)
    .await
    .expect("participants");
    assert_eq!(left, [Some(at(20).as_micros()), Some(at(30).as_micros())]);

    // Back in: the timer is now stale (the room was not empty since then).
    assert_eq!(
        store.participant_join(&c.id, "p3", at(40)).await.expect("join"),
        present(1)
    );
    let room = store
        .load_conversation(&c.id)
        .await
        .expect("load")
        .expect("exists");
    assert_eq!(
        (room.participant_joined_at, room.participant_left_at),
        (Some(at(10)), Some(at(30)))
    );

    end(&store, &c.id, at(50)).await;
    assert_eq!(
        store.participant_join(&c.id, "p4", at(51)).await.expect("join"),
        ParticipantOutcome::Ended
    );
    assert_eq!(
        store.participant_leave(&c.id, "p3", at(51)).await.expect("leave"),
        ParticipantOutcome::Ended
    );
    let unknown = conversation("acme", T0).id;
    assert_eq!(
        store
            .participant_join(&unknown, "p5", at(52))
            .await
            .expect("join"),
        ParticipantOutcome::NotFound
    );
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_keys_round_trip() {
    let Some(db) = TestDb::create("accounts_and_keys_round_trip").await else {
        return;
    };
    let store = db.store().await;
    assert!(!store.has_accounts().await.expect("has"));
    assert!(store.ensure_account("default", at(0)).await.expect("ensure"));
    assert!(
        !store
            .ensure_account("default", at(1))
            .await
            .expect("ensure twice")
    );
    assert!(store.ensure_account("acme", at(2)).await.expect("ensure"));
    assert!(store.has_accounts().await.expect("has"));
    assert!(
        store
            .set_account_limits("acme", Some(4_000_000_000), Some(7))
            .await
            .expect("limits")
    );
    assert!(
        !store
            .set_account_limits("nobody", None, None)
            .await
            .expect("limits")
    );
    let accounts = store.list_accounts().await.expect("accounts");
    let names: Vec<_> = accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["default", "acme"]);
    assert_eq!(
        (accounts[1].max_concurrent, accounts[1].retention_days),
        (Some(4_000_000_000), Some(7))
    );

    store
        .insert_key("k2", "acme", "hash-b", at(3))
        .await
        .expect("key");
    store
        .insert_key("k1", "acme", "hash-a", at(3))
        .await
        .expect("key");
    let dup = store.insert_key("k3", "acme", "hash-a", at(4)).await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
    let keys: Vec<_> = store
        .list_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.key_id)
        .collect();
    assert_eq!(keys, ["k1", "k2"]);
    let found = store
        .account_for_key("hash-a")
        .await
        .expect("auth")
        .expect("known key");
    assert_eq!((found.name.as_str(), found.retention_days), ("acme", Some(7)));
    assert!(store.revoke_key("k1", at(5)).await.expect("revoke"));
    assert!(!store.revoke_key("k1", at(6)).await.expect("revoke twice"));
    assert!(store.account_for_key("hash-a").await.expect("auth").is_none());
    db.finish(&[&store]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasing_residue_vacuums_the_erased_tables() {
    let Some(db) = TestDb::create("erasing_residue_vacuums_the_erased_tables").await else {
        return;
    };
    let store = Arc::new(db.store().await);
    let c = with_callback(conversation("acme", T0));
    seed(&store, &c).await;
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
    // The statistics arrive a moment after the VACUUM: poll briefly.
    let mut vacuumed: Vec<String> = Vec::new();
    for _ in 0..50 {
        vacuumed = sqlx::query_scalar(
            "SELECT relname::TEXT FROM pg_stat_user_tables WHERE vacuum_count > 0 ORDER BY relname",
        )
        .fetch_all(&db.rows)
        .await
        .expect("stats");
        if vacuumed.len() == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        vacuumed,
        ["asset", "conversation", "delivery", "event", "participant"]
    );
    db.finish(&[&store]).await;
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_within_seconds() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let started = std::time::Instant::now();
    let result = PostgresStore::connect("postgres://postgres@127.0.0.1:1/parley").await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}
