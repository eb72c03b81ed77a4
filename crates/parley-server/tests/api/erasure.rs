//! Content is only ciphertext at rest, and a hard delete leaves no byte of it readable: not in
//! plaintext in any file of an embedded store or any row and object of a shared one, and not
//! under any key the key store still holds.

use std::collections::HashSet;

use parley_blobs::BlobKey;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{Backing, Receiver, TestApp, files_containing};

/// The shortest shared run that counts: 32 samples of 16-bit audio.
const RUN: usize = 64;

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

    // The marker is in the transcript and opens from the stored bytes before: the test can fail.
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
    assert!(!app.backing.holds(marker).await, "content is stored in plaintext");
    assert!(app.backing.readable(&id, marker).await);
    assert!(app.backing.has_recording(&id).await);
    let key_id = app.backing.data_keys().await[id.as_str()].key_id.clone();
    assert!(app.backing.key_store_mentions(&key_id).await);

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // The key is gone from the key store's bytes before the 204 reached us.
    assert!(
        !app.backing.key_store_mentions(&key_id).await,
        "the destroyed key is still stored"
    );
    app.wait_for_jobs().await;

    assert!(!app.backing.readable(&id, marker).await, "the marker survives");
    assert!(!app.backing.data_keys().await.contains_key(&id));
    // The receipt names the destroyed key and when it went, and holds no content.
    let receipts = app.backing.cli(&["receipts"]);
    let line = receipts.lines().find(|l| l.contains(&id)).expect("a receipt");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[7], key_id, "{line}");
    assert!(fields[8].ends_with('Z'), "{line}");
    assert!(!receipts.contains(marker));
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
    assert!(app.backing.readable(&keep, survivor).await);
    assert!(!app.backing.holds(survivor).await);

    // Also after a restart (an embedded store replays its WAL on open): still gone.
    let backing = app.stop().await;
    assert!(!backing.readable(&id, marker).await);
}

#[tokio::test]
async fn every_content_field_is_ciphertext_at_rest_and_plaintext_through_the_api() {
    let app = TestApp::spawn().await;
    // The receiver never answers: the webhook bodies stay queued, sealed, in the delivery table.
    let port = Receiver::reserve_port().await;
    let m = |field: &str| format!("AT-REST-{field}-9c41");
    let id = app
        .ended(json!({
            "persona_id": "pdac61133ac5",
            "conversation_name": m("name"),
            "conversational_context": m("context"),
            "custom_greeting": m("greeting"),
            "callback_url": format!("http://127.0.0.1:{port}/hook"),
            "properties": { "enable_recording": true, "language": "english" },
        }))
        .await;
    app.wait_for_jobs().await;
    let db = app.db().await;
    let queued = db
        .count(
            "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND CAST(carries_content AS INTEGER) = 1",
            &id,
        )
        .await;
    assert!(queued >= 2, "content deliveries queued: {queued}");
    db.close().await;

    // Through the API, everything reads as sent.
    let (_, got) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    assert_eq!(got["conversation_name"], m("name"));
    let events = got["events"].to_string();
    assert!(events.contains(&m("context")), "{events}");
    let wav = recording(&app, &id).await;

    // At rest: no marker in any file (database, WAL, blobs) or any row and object.
    for field in ["name", "context", "greeting"] {
        assert!(
            !app.backing.holds(&m(field)).await,
            "{field} is stored in plaintext"
        );
        // Each sits in the sealed content, under the conversation's key: the check can fail.
        assert!(
            app.backing.readable(&id, &m(field)).await,
            "{field} does not open"
        );
    }
    let audio = wav_data(&wav);
    assert_eq!(blobs_holding(&app.backing, audio).await, Vec::<String>::new());
    if app.backing.is_sqlite() {
        let run = &audio[audio.len() / 2..audio.len() / 2 + RUN];
        assert!(files_containing(app.data_dir(), run).is_empty());
    }
    // The opened content holds the queued webhook bodies' transcript and the recording.
    let opened = app.backing.readable_content(&id).await;
    assert!(opened.contains(&wav), "the recording does not open");
}

#[tokio::test]
async fn soft_delete_keeps_the_content_and_its_key() {
    let app = TestApp::spawn().await;
    let marker = "MARKER-soft-2b8e";
    let id = app
        .ended(json!({ "conversational_context": marker, "properties": { "enable_recording": true } }))
        .await;
    let (status, _) = app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;
    assert!(app.backing.readable(&id, marker).await);
    assert!(app.backing.has_recording(&id).await);
    // The recording opens too: a restore brings everything back.
    let recording = app
        .backing
        .readable_content(&id)
        .await
        .into_iter()
        .any(|c| c.starts_with(b"RIFF"));
    assert!(recording, "the recording does not open");
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
    for (i, id) in ids.iter().enumerate() {
        let marker = format!("CTX-{i:04}-secret");
        assert!(
            !app.backing.holds(&marker).await,
            "{marker} is stored in plaintext"
        );
        let found = app.backing.readable(id, &marker).await;
        if doomed.contains(&i) {
            assert!(!found, "{marker} of an erased conversation survives");
        } else {
            assert!(found, "{marker} of a kept conversation is missing");
        }
    }
}

#[tokio::test]
async fn identical_calls_get_recordings_that_share_no_audio_and_erasing_one_spares_the_other() {
    let app = TestApp::spawn().await;
    let body = json!({ "conversation_name": "twins", "properties": { "enable_recording": true } });
    let erased = app.ended(body.clone()).await;
    let kept = app.ended(body).await;
    assert_eq!(transcript(&app, &erased).await, transcript(&app, &kept).await);
    let (gone, stays) = (recording(&app, &erased).await, recording(&app, &kept).await);
    let audio = wav_data(&gone);
    // Whole seconds of 8 kHz 16-bit audio: one each, unless the machine stalled for a second.
    assert!(
        !audio.is_empty() && audio.len().is_multiple_of(16_000),
        "{} bytes",
        audio.len()
    );

    assert_ne!(Sha256::digest(&gone), Sha256::digest(&stays));
    assert!(
        !holds_a_run_of(&stays, audio),
        "the twin holds part of the other's audio"
    );
    // At rest the audio is ciphertext; it opens under the conversation's key, so the check after
    // the delete can fail.
    assert_eq!(blobs_holding(&app.backing, audio).await, Vec::<String>::new());
    let opened = app.backing.readable_content(&erased).await;
    assert!(opened.contains(&gone), "the stored recording does not open");

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{erased}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;

    assert_eq!(blobs_holding(&app.backing, audio).await, Vec::<String>::new());
    assert!(app.backing.readable_content(&erased).await.is_empty());
    if app.backing.is_sqlite() {
        // Nor in any other file: the database, its WAL, the blob folder.
        for at in [0, audio.len() / 2, audio.len() - RUN] {
            let left = files_containing(app.data_dir(), &audio[at..at + RUN]);
            assert!(left.is_empty(), "audio at {at} survives in {left:?}");
        }
    }
    // The twin's recording is untouched.
    assert!(app.backing.has_recording(&kept).await);
    assert_eq!(recording(&app, &kept).await, stays);
}

/// The transcript of an ended conversation, from its verbose events.
async fn transcript(app: &TestApp, id: &str) -> Value {
    let (_, verbose) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    let events = verbose["events"].as_array().expect("verbose events");
    events
        .iter()
        .find(|e| e["event_type"] == "application.transcription_ready")
        .expect("a transcript event")["properties"]["transcript"]
        .clone()
}

/// A conversation's recording, downloaded.
async fn recording(app: &TestApp, id: &str) -> Vec<u8> {
    let res = app
        .req(Method::GET, &format!("/v2/conversations/{id}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.bytes().await.unwrap().to_vec()
}

/// The audio of a WAV: its `data` chunk.
fn wav_data(wav: &[u8]) -> &[u8] {
    assert_eq!((&wav[..4], &wav[8..12]), (&b"RIFF"[..], &b"WAVE"[..]));
    let mut at = 12;
    loop {
        let size = u32::from_le_bytes(wav[at + 4..at + 8].try_into().unwrap()) as usize;
        if &wav[at..at + 4] == b"data" {
            return &wav[at + 8..at + 8 + size];
        }
        // Chunks are padded to an even length.
        at += 8 + size + size % 2;
    }
}

/// Whether `haystack` holds any run of `RUN` bytes of `audio`, at any offset.
fn holds_a_run_of(haystack: &[u8], audio: &[u8]) -> bool {
    let runs: HashSet<&[u8]> = audio.windows(RUN).collect();
    haystack.windows(RUN).any(|w| runs.contains(w))
}

/// Keys of the blobs, of any conversation, that hold a run of `audio`.
async fn blobs_holding(backing: &Backing, audio: &[u8]) -> Vec<String> {
    let blobs = backing.blobs();
    let mut found = Vec::new();
    for (key, _) in blobs.list_prefix(BlobKey::ROOT).await.unwrap() {
        let bytes = blobs.get(&key).await.unwrap();
        if holds_a_run_of(&bytes, audio) {
            found.push(key);
        }
    }
    found
}
