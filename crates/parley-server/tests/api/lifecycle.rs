//! Create, get, end, verbose events, recordings, the concurrency cap, retention and the CLI.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backing, Proc, TestApp, cli_new_key, eventually};

fn is_wire_timestamp(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    // 2025-05-13T06:42:58.291561Z
    s.len() == 27 && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

#[tokio::test]
async fn create_returns_the_documented_fields_and_stores_every_create_field() {
    let app = TestApp::spawn().await;
    let body = json!({
        "replica_id": "r90bbd427f71",
        "persona_id": "pdac61133ac5",
        "audio_only": "false",
        "callback_url": "http://127.0.0.1:9/hook",
        "conversation_name": "A Meeting",
        "conversational_context": "context",
        "custom_greeting": "Hey!",
        "memory_stores": ["anna"],
        "document_ids": ["doc_1234567890"],
        "document_retrieval_strategy": "quality",
        "document_tags": ["sales"],
        "test_mode": false,
        "require_auth": true,
        "max_participants": 3,
        "enable_dynamic_greeting": true,
        "policy": "eu",
        "not_a_field": 1,
        "properties": {
            "max_call_duration": 600,
            "participant_left_timeout": 30,
            "participant_absent_timeout": 120,
            "enable_recording": true,
            "enable_closed_captions": true,
            "apply_greenscreen": false,
            "language": "english",
            "recording_s3_bucket_name": "bucket",
        },
    });
    let (status, c) = crate::support::send(app.req(Method::POST, "/v2/conversations").json(&body)).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let id = c["conversation_id"].as_str().unwrap();
    assert!(id.len() == 17 && id.starts_with('c'), "{id}");
    assert_eq!(c["status"], "active");
    assert_eq!(c["conversation_name"], "A Meeting");
    assert_eq!(c["callback_url"], "http://127.0.0.1:9/hook");
    assert_eq!(c["conversation_url"], format!("{}/rooms/{id}", app.base));
    assert_eq!(c["replica_id"], "r90bbd427f71");
    assert_eq!(c["persona_id"], "pdac61133ac5");
    assert!(is_wire_timestamp(&c["created_at"]), "{}", c["created_at"]);
    assert!(c["meeting_token"].as_str().is_some_and(|t| !t.is_empty()));

    let db = app.db().await;
    let stored: String = db
        .text(
            "SELECT request_json FROM conversation WHERE conversation_id = ?",
            id,
        )
        .await;
    // Sealed at rest; it opens under the conversation's key to exactly what was sent.
    assert!(stored.starts_with("pe1:"), "{stored}");
    let data_key = &app.backing.data_keys().await[id].key;
    let aad = parley_keys::content_aad(
        &parley_domain::KeyOwner::from(parley_domain::ConversationId::parse(id).unwrap()),
        "conversation.request_json",
    );
    let stored: Value = serde_json::from_str(&data_key.open_text(&aad, &stored).unwrap()).unwrap();
    let mut expected = body.clone();
    expected.as_object_mut().unwrap().remove("not_a_field");
    expected["audio_only"] = json!(false);
    assert_eq!(stored, expected);

    let (status, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for field in [
        "conversation_id",
        "conversation_name",
        "conversation_url",
        "callback_url",
        "status",
        "replica_id",
        "persona_id",
        "created_at",
    ] {
        assert_eq!(got[field], c[field], "{field}");
    }
    assert!(is_wire_timestamp(&got["updated_at"]));
    assert!(got.get("events").is_none());
    assert!(got.get("meeting_token").is_none());
}

#[tokio::test]
async fn pal_and_face_ids_are_accepted_as_aliases() {
    let app = TestApp::spawn().await;
    // What livekit-plugins-tavus 1.8.9 sends.
    let id = app
        .create(json!({
            "pal_id": "pb87e71797da",
            "face_id": "r4067604db72",
            "conversation_name": "lk_conversation_x",
            "properties": { "livekit_ws_url": "wss://x", "livekit_room_token": "t" },
        }))
        .await;
    let (_, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(got["persona_id"], "pb87e71797da");
    assert_eq!(got["replica_id"], "r4067604db72");
}

#[tokio::test]
async fn unknown_replicas_and_personas_are_rejected_without_storing_anything() {
    let app = TestApp::spawn().await;
    for (body, error) in [
        (json!({ "replica_id": "r000000bad" }), "Invalid replica_id"),
        (json!({ "face_id": "r000000bad" }), "Invalid replica_id"),
        (json!({ "persona_id": "p000000bad" }), "Invalid persona_id"),
        (json!({ "pal_id": "nope" }), "Invalid persona_id"),
    ] {
        let got = crate::support::send(app.req(Method::POST, "/v2/conversations").json(&body)).await;
        assert_eq!(
            got,
            (StatusCode::BAD_REQUEST, json!({ "error": error })),
            "{body}"
        );
    }
    let db = app.db().await;
    let n: i64 = db.scalar("SELECT COUNT(*) FROM conversation").await;
    assert_eq!(n, 0);
}

#[tokio::test]
async fn end_produces_the_events_and_a_real_recording() {
    let app = TestApp::spawn().await;
    let id = app
        .create(json!({ "persona_id": "pdac61133ac5", "properties": { "enable_recording": true } }))
        .await;
    app.wait_joined(&id).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = app
        .call(Method::POST, &format!("/v2/conversations/{id}/end"))
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({ "conversation_id": id, "status": "ended" })
        )
    );
    // Ending again is fine and changes nothing.
    let (status, body) = app
        .call(Method::POST, &format!("/v2/conversations/{id}/end"))
        .await;
    assert_eq!((status, body["status"].clone()), (StatusCode::OK, json!("ended")));

    let (_, got) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=TRUE"))
        .await;
    assert_eq!(got["status"], "ended");
    let events = got["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["event_type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "system.replica_joined",
            "system.shutdown",
            "application.transcription_ready",
            "application.perception_analysis",
            "application.recording_ready",
        ]
    );
    for e in events {
        assert_eq!(e["conversation_id"], id.as_str());
        assert!(is_wire_timestamp(&e["timestamp"]));
        let mt = if e["event_type"].as_str().unwrap().starts_with("system.") {
            "system"
        } else {
            "application"
        };
        assert_eq!(e["message_type"], mt);
    }
    assert_eq!(
        events[1]["properties"]["shutdown_reason"],
        "end_conversation_endpoint_hit"
    );
    let transcript = events[2]["properties"]["transcript"].as_array().unwrap();
    assert_eq!(transcript[0]["role"], "system");
    assert!(transcript.len() >= 4);
    let recording = &events[4]["properties"];
    assert!(recording["duration"].as_u64().unwrap() >= 1);
    assert_eq!(
        recording["storage_uri"],
        format!("{}/v2/conversations/{id}/recording", app.base)
    );

    let res = app
        .req(Method::GET, &format!("/v2/conversations/{id}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "audio/wav");
    let wav = res.bytes().await.unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..12], b"WAVE");
    let stored = app
        .backing
        .blobs()
        .get(&format!("conversations/{id}/assets/recording.wav"))
        .await
        .unwrap();
    // Sealed at rest under the conversation's key, bound to where it is stored.
    assert_ne!(wav, stored);
    let data_key = &app.backing.data_keys().await[&id].key;
    let field = format!("blob:conversations/{id}/assets/recording.wav");
    let owner = parley_domain::KeyOwner::from(parley_domain::ConversationId::parse(&id).unwrap());
    let aad = parley_keys::content_aad(&owner, &field);
    assert_eq!(wav, data_key.open(&aad, &stored).unwrap());
    // 8 kHz, 16-bit mono: two bytes a sample, a second or more of call.
    assert!(wav.len() >= 44 + 16_000, "{}", wav.len());
}

#[tokio::test]
async fn a_conversation_without_recording_has_no_recording() {
    let app = TestApp::spawn().await;
    let id = app.ended(json!({})).await;
    let (status, body) = app
        .call(Method::GET, &format!("/v2/conversations/{id}/recording"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("No recording"));
    assert!(app.backing.blob_keys(&id).await.is_empty());
}

#[tokio::test]
async fn the_concurrency_cap_counts_active_conversations_only() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 2).await;
    let first = app.create(json!({})).await;
    app.create(json!({})).await;
    // Test-mode conversations start ended and never count.
    let (status, test) = crate::support::send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "test_mode": true })),
    )
    .await;
    assert_eq!((status, test["status"].clone()), (StatusCode::OK, json!("ended")));

    let over = crate::support::send(app.req(Method::POST, "/v2/conversations").json(&json!({}))).await;
    assert_eq!(
        over,
        (
            StatusCode::BAD_REQUEST,
            json!({ "message": "User has reached maximum concurrent conversations" })
        )
    );
    app.call(Method::POST, &format!("/v2/conversations/{first}/end"))
        .await;
    app.create(json!({})).await;

    // The test-mode conversation never has a replica, events or assets.
    let id = test["conversation_id"].as_str().unwrap();
    app.wait_for_jobs().await;
    let db = app.db().await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM event WHERE conversation_id = ?", id)
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_exceed_the_cap() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 5).await;
    let creates =
        (0..30).map(|_| crate::support::send(app.req(Method::POST, "/v2/conversations").json(&json!({}))));
    let results = futures::future::join_all(creates).await;
    let ok = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(ok, 5);
    let db = app.db().await;
    let active: i64 = db
        .scalar("SELECT COUNT(*) FROM conversation WHERE status = 'active'")
        .await;
    assert_eq!(active, 5);
}

#[tokio::test]
async fn soft_deleted_conversations_are_purged_when_retention_ends_unless_restored() {
    let app = TestApp::spawn_with(|c| c.soft_delete_retention = Duration::from_secs(2)).await;
    let doomed = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    let saved = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    for id in [&doomed, &saved] {
        app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    }
    // An operator restores one in time.
    app.backing.cli(&["conversations", "restore", &saved]);

    let db = app.db().await;
    eventually("retention purges the soft-deleted conversation", || async {
        db.count(
            "SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = ?",
            &doomed,
        )
        .await
            == 1
    })
    .await;
    app.wait_for_jobs().await;
    assert_eq!(db.rows_of(&doomed).await, (0, 0, 0));
    assert!(!app.backing.has_recording(&doomed).await);
    let (status, _) = app.call(Method::GET, &format!("/v2/conversations/{saved}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(app.backing.has_recording(&saved).await);
    let reason: String = db
        .text(
            "SELECT reason FROM erasure_receipt WHERE conversation_id = ?",
            &doomed,
        )
        .await;
    assert_eq!(reason, "retention_expired");
}

#[tokio::test]
async fn keys_are_managed_by_the_cli_while_the_server_runs() {
    let app = TestApp::spawn().await;
    let key = cli_new_key(&app.backing, "team-b");
    let (status, _) = app.call_as(&key, Method::GET, "/v2/conversations").await;
    assert_eq!(status, StatusCode::OK);

    let out = app.backing.cli(&["keys", "list"]);
    let listing = out;
    assert!(
        listing.contains("team-b") && listing.contains("default"),
        "{listing}"
    );
    assert!(
        !listing.contains(&key) && !listing.contains(&app.key),
        "never a secret: {listing}"
    );
    // Only a hash is stored.
    assert!(!app.backing.holds(&key).await);

    let key_id = listing
        .lines()
        .find(|l| l.contains("team-b"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    app.backing.cli(&["keys", "revoke", &key_id]);
    let got = app.call_as(&key, Method::GET, "/v2/conversations").await;
    assert_eq!(
        got,
        (
            StatusCode::UNAUTHORIZED,
            json!({ "message": "Invalid access token" })
        )
    );
    assert_eq!(app.call(Method::GET, "/v2/conversations").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_its_first_key_once_and_stops_cleanly_on_sigterm() {
    let dir = Backing::fresh().await;
    let mut first = Proc::start(&dir, &[]);
    let key = first.key.clone().expect("first start prints a key");
    let client = reqwest::Client::new();
    let list = |base: &str| {
        client
            .get(format!("{base}/v2/conversations"))
            .header("x-api-key", &key)
            .send()
    };
    assert_eq!(list(&first.base).await.unwrap().status(), StatusCode::OK);

    let pid = first.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = first.child.wait().unwrap();
    assert!(status.success(), "{status}");

    let second = Proc::start(&dir, &[]);
    assert!(second.key.is_none(), "the key is shown once");
    assert_eq!(list(&second.base).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_give_one_object_per_request() {
    let dir = Backing::fresh().await;
    let server = Proc::start(&dir, &["--log-format", "json", "--log", "info"]);
    let key = server.key.clone().unwrap();
    let res = reqwest::Client::new()
        .get(format!("{}/v2/conversations", server.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .stderr
            .recv_timeout(deadline - std::time::Instant::now())
            .expect("a request log line");
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if entry["span"]["http.path"] == "/v2/conversations" {
            assert_eq!(entry["fields"]["status"], 200, "{entry}");
            assert_eq!(entry["span"]["http.method"], "GET");
            assert!(!line.contains(&key), "keys never reach the logs");
            break;
        }
    }
}
