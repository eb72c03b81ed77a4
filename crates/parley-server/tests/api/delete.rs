//! Every row of the delete table, soft and hard, checked against the rows and files on disk.

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Row;

use crate::support::{TestApp, invalid_id};

fn recorded() -> serde_json::Value {
    json!({ "conversation_name": "delete table", "properties": { "enable_recording": true } })
}

#[tokio::test]
async fn soft_delete_of_an_active_conversation_ends_it_then_hides_it() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 1).await;
    let id = app.create(recorded()).await;
    app.wait_joined(&id).await;

    let (status, body) = app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, json!(null)));

    let db = app.db().await;
    let (status, reason, deleted): (String, Option<String>, Option<i64>) = {
        let r = db
            .row(
                "SELECT status, shutdown_reason, deleted_at FROM conversation WHERE conversation_id = ?",
                &[id.as_str()],
            )
            .await;
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(status, "ended");
    assert_eq!(reason.as_deref(), Some("conversation_deleted"));
    assert!(deleted.is_some());
    let shutdowns = db
        .count(
            "SELECT COUNT(*) FROM event WHERE conversation_id = ? AND event_type = 'system.shutdown'",
            &id,
        )
        .await;
    assert_eq!(shutdowns, 1);
    // Ended first means its assets were produced, and a soft delete keeps them.
    assert!(app.backing.has_recording(&id).await);
    assert_eq!(
        app.call(Method::GET, &format!("/v2/conversations/{id}")).await.1,
        invalid_id()
    );
    // The concurrency slot is free again.
    app.create(json!({})).await;
}

#[tokio::test]
async fn hard_delete_of_an_active_conversation_ends_it_then_purges_it() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 1).await;
    let id = app.create(recorded()).await;
    app.wait_joined(&id).await;

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;

    let db = app.db().await;
    assert_eq!(db.rows_of(&id).await, (0, 0, 0));
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = ?",
            &id
        )
        .await,
        1
    );
    assert!(app.backing.blob_keys(&id).await.is_empty());
    app.create(json!({})).await;
}

#[tokio::test]
async fn soft_delete_of_an_ended_conversation_hides_it_and_keeps_everything() {
    let app = TestApp::spawn().await;
    let id = app.ended(recorded()).await;
    let other = app.create(json!({})).await;
    let db = app.db().await;
    let before = db.rows_of(&id).await;
    assert_eq!(before.0, 1);
    assert!(before.1 >= 3, "joined, shutdown, transcript: {before:?}");

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=false"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Hidden from Get, List, End, the recording and total_count...
    for (method, path) in [
        (Method::GET, format!("/v2/conversations/{id}")),
        (Method::GET, format!("/v2/conversations/{id}?verbose=true")),
        (Method::POST, format!("/v2/conversations/{id}/end")),
        (Method::GET, format!("/v2/conversations/{id}/recording")),
    ] {
        assert_eq!(
            app.call(method, &path).await,
            (StatusCode::BAD_REQUEST, invalid_id()),
            "{path}"
        );
    }
    let (_, list) = app.call(Method::GET, "/v2/conversations").await;
    assert_eq!(list["total_count"], 1);
    assert_eq!(list["data"][0]["conversation_id"], other);
    // ...but the record and its assets are kept.
    assert_eq!(db.rows_of(&id).await, before);
    assert!(app.backing.has_recording(&id).await);
}

#[tokio::test]
async fn hard_delete_of_an_ended_conversation_erases_everything_and_leaves_a_receipt() {
    let app = TestApp::spawn().await;
    let id = app
        .ended(json!({ "persona_id": "pdac61133ac5", "properties": { "enable_recording": true } }))
        .await;
    let keep = app.ended(recorded()).await;
    assert!(app.backing.has_recording(&id).await);
    let db = app.db().await;
    let (_, events, assets) = db.rows_of(&id).await;

    let (status, body) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=TRUE"))
        .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, json!(null)));
    app.wait_for_jobs().await;

    assert_eq!(db.rows_of(&id).await, (0, 0, 0));
    assert!(!app.backing.has_recording(&id).await);
    assert!(app.backing.blob_keys(&id).await.is_empty());
    let (receipt_events, receipt_assets, bytes): (i64, i64, i64) = {
        let r = db
            .row(
                "SELECT events, assets, asset_bytes FROM erasure_receipt WHERE conversation_id = ?",
                &[id.as_str()],
            )
            .await;
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((receipt_events, receipt_assets), (events, assets));
    assert!(bytes > 44, "the receipt counts the recording's bytes");
    // Nothing else was lost.
    assert_eq!(db.rows_of(&keep).await.0, 1);
    assert!(app.backing.has_recording(&keep).await);
    assert_eq!(
        app.call(Method::GET, &format!("/v2/conversations/{keep}"))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn soft_deleting_twice_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = app.ended(json!({})).await;
    app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    let db = app.db().await;
    let first: (i64, i64) = {
        let r = db
            .row(
                "SELECT deleted_at, updated_at FROM conversation WHERE conversation_id = ?",
                &[id.as_str()],
            )
            .await;
        (r.get(0), r.get(1))
    };
    let jobs = db
        .count(
            "SELECT COUNT(*) FROM job WHERE conversation_id = ? AND kind = 'retention_purge'",
            &id,
        )
        .await;

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=0"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let second: (i64, i64) = {
        let r = db
            .row(
                "SELECT deleted_at, updated_at FROM conversation WHERE conversation_id = ?",
                &[id.as_str()],
            )
            .await;
        (r.get(0), r.get(1))
    };
    assert_eq!(first, second);
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM job WHERE conversation_id = ? AND kind = 'retention_purge'",
            &id
        )
        .await,
        jobs
    );
}

#[tokio::test]
async fn hard_delete_of_a_soft_deleted_conversation_purges_it_now() {
    let app = TestApp::spawn().await;
    let id = app.ended(recorded()).await;
    app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    assert!(app.backing.has_recording(&id).await);

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;
    let db = app.db().await;
    assert_eq!(db.rows_of(&id).await, (0, 0, 0));
    assert!(!app.backing.has_recording(&id).await);
    // The pending retention purge went with it.
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM job WHERE conversation_id = ? AND kind = 'retention_purge'",
            &id
        )
        .await,
        0
    );
}

#[tokio::test]
async fn hard_deleted_unknown_and_foreign_ids_are_all_invalid() {
    let app = TestApp::spawn().await;
    let gone = app.ended(json!({})).await;
    app.call(Method::DELETE, &format!("/v2/conversations/{gone}?hard=true"))
        .await;
    let other_key = app.new_key("other");
    let foreign = app.create_as(&other_key, json!({})).await;

    for id in [gone.as_str(), "c0123456789abcdef", foreign.as_str()] {
        for hard in ["", "?hard=true", "?hard=false"] {
            let got = app
                .call(Method::DELETE, &format!("/v2/conversations/{id}{hard}"))
                .await;
            assert_eq!(got, (StatusCode::BAD_REQUEST, invalid_id()), "{id}{hard}");
        }
    }
    // The other account's conversation is untouched.
    let (status, body) = app
        .call_as(&other_key, Method::GET, &format!("/v2/conversations/{foreign}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_hard_deletes_of_one_id_give_exactly_one_204() {
    let app = TestApp::spawn().await;
    let id = app.ended(recorded()).await;
    let path = format!("/v2/conversations/{id}?hard=true");
    let requests = (0..50).map(|_| app.call(Method::DELETE, &path));
    let results = futures::future::join_all(requests).await;
    let ok = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::NO_CONTENT)
        .count();
    assert_eq!(ok, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::NO_CONTENT) {
        assert_eq!((*status, body.clone()), (StatusCode::BAD_REQUEST, invalid_id()));
    }
    app.wait_for_jobs().await;
    let db = app.db().await;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = ?",
            &id
        )
        .await,
        1
    );
    assert!(!app.backing.has_recording(&id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ends_reads_and_deletes_never_fail_with_a_500() {
    let app = TestApp::spawn().await;
    let id = app.create(recorded()).await;
    let paths = [
        (Method::POST, format!("/v2/conversations/{id}/end")),
        (Method::GET, format!("/v2/conversations/{id}?verbose=true")),
        (Method::DELETE, format!("/v2/conversations/{id}")),
        (Method::DELETE, format!("/v2/conversations/{id}?hard=true")),
        (Method::GET, format!("/v2/conversations/{id}/recording")),
    ];
    let calls = (0..40).map(|i| {
        let (m, p) = &paths[i % paths.len()];
        app.call(m.clone(), p)
    });
    for (status, body) in futures::future::join_all(calls).await {
        assert!(status.is_success() || status.is_client_error(), "{status} {body}");
    }
    app.wait_for_jobs().await;
    // Whatever the interleaving, the hard delete won: nothing of it is left.
    let db = app.db().await;
    assert_eq!(db.rows_of(&id).await, (0, 0, 0));
    assert!(app.backing.blob_keys(&id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_request_never_break_later_writes() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 1000).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(app.ended(json!({})).await);
    }
    // Clients that give up after a moment, so requests are dropped at every stage of their work.
    for (i, id) in ids.iter().enumerate() {
        let impatient = reqwest::Client::builder()
            .timeout(std::time::Duration::from_micros(200 + 150 * (i as u64 % 20)))
            .build()
            .unwrap();
        let hard = if i % 3 == 0 { "?hard=true" } else { "" };
        let _ = impatient
            .delete(format!("{}/v2/conversations/{id}{hard}", app.base))
            .header("x-api-key", &app.key)
            .send()
            .await;
    }
    // Every request that reached the server ran to completion, and writes still work.
    let (status, body) =
        crate::support::send(app.req(Method::POST, "/v2/conversations").json(&json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_for_jobs().await;
    let fresh = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{fresh}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;
    assert!(app.backing.blob_keys(&fresh).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_soft_deletes_of_a_live_call_all_answer_204() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let req = app.req(Method::DELETE, &format!("/v2/conversations/{id}"));
        tasks.spawn(async move { req.send().await.unwrap().status() });
    }
    let statuses = tasks.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::NO_CONTENT),
        "{statuses:?}"
    );
    // Ended once, hidden once: one shutdown, one retention purge.
    let db = app.db().await;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM event WHERE conversation_id = ? AND event_type = 'system.shutdown'",
            &id
        )
        .await,
        1
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM job WHERE conversation_id = ? AND kind = 'retention_purge'",
            &id
        )
        .await,
        1
    );
    assert_eq!(
        db.text("SELECT status FROM conversation WHERE conversation_id = ?", &id)
            .await,
        "ended"
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/conversations/{id}")).await.0,
        StatusCode::BAD_REQUEST
    );
}
