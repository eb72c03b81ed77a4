//! A hard delete leaves no byte of the conversation's content: in any file of an embedded store,
//! in any row and object of a shared one.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, files_containing};

#[tokio::test]
async fn hard_delete_leaves_no_trace_of_the_content_in_any_file() {
    let app = TestApp::spawn().await;
    let marker = "MARKER-7f3c9a1e-erase-me";
    let id = app
        .ended(json!({
            "persona_id": "pdac61133ac5",
            "conversation_name": "erasure",
            "conversational_context": format!("The secret word is {marker}."),
            "custom_greeting": format!("Hello {marker}"),
            "properties": { "enable_recording": true },
        }))
        .await;
    // A neighbour that must survive, with its own marker.
    let survivor = "SURVIVOR-5d1e-keep-me";
    let keep = app.ended(json!({ "conversational_context": survivor })).await;

    // The marker is in the transcript and on disk before: the test can fail.
    let (_, verbose) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    let transcript = verbose["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "application.transcription_ready")
        .expect("a transcript event")
        .to_string();
    assert!(transcript.contains(marker));
    assert!(app.backing.holds(marker).await);
    assert!(app.backing.has_recording(&id).await);

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;

    assert!(!app.backing.holds(marker).await, "the marker survives");
    if app.backing.is_sqlite() {
        let left = files_containing(app.data_dir(), id.as_bytes());
        assert!(
            left.iter()
                .all(|p| p.ends_with("parley.db") || p.ends_with("parley.db-wal")),
            "only the receipt and job rows may name the id: {left:?}"
        );
    }
    assert!(!app.backing.has_recording(&id).await);
    // Nothing else is lost: the neighbour's content is still there, in the API and on disk.
    let (_, other) = app
        .call(Method::GET, &format!("/v2/conversations/{keep}?verbose=true"))
        .await;
    assert!(other.to_string().contains(survivor));
    assert!(app.backing.holds(survivor).await);

    // Also after a restart (an embedded store replays its WAL on open): still gone.
    let backing = app.stop().await;
    assert!(!backing.holds(marker).await);
}

#[tokio::test]
async fn soft_delete_keeps_the_content_on_disk() {
    let app = TestApp::spawn().await;
    let marker = "MARKER-soft-2b8e";
    let id = app
        .ended(json!({ "conversational_context": marker, "properties": { "enable_recording": true } }))
        .await;
    let (status, _) = app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;
    assert!(app.backing.holds(marker).await);
    assert!(app.backing.has_recording(&id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_holds_when_pages_split_and_merge_around_the_deleted_rows() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 10_000).await;
    // Enough rows, of mixed sizes, that SQLite splits, rebalances and reuses pages between them.
    let mut ids = Vec::new();
    for i in 0..150 {
        // Some rows spill into overflow pages.
        let padding = "p".repeat((i * 53) % 6000);
        let context = format!("CTX-{i:04}-secret {padding}");
        let body = json!({ "conversational_context": context, "test_mode": i % 2 == 0 });
        ids.push(app.create(body).await);
    }
    let doomed: Vec<usize> = (0..150).filter(|i| i % 3 != 1).collect();
    for &i in &doomed {
        let (status, _) = app
            .call(Method::DELETE, &format!("/v2/conversations/{}?hard=true", ids[i]))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    app.wait_for_jobs().await;
    for i in 0..150 {
        let marker = format!("CTX-{i:04}-secret");
        let found = app.backing.holds(&marker).await;
        if doomed.contains(&i) {
            assert!(!found, "{marker} of an erased conversation survives");
        } else {
            assert!(found, "{marker} of a kept conversation is missing");
        }
    }
}
