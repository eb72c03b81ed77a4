//! `parley rotate-master-key`: every data key rewrapped under a new master key with the content
//! untouched, the old key refused by servers and opening nothing in the key store's bytes, and a
//! rotation cut short (Ctrl-C, or a kill) finished by running the same command again.

use std::path::Path;
use std::process::Command;

use parley_domain::{ConversationId, KeyOwner, Timestamp};
use parley_keys::{KeyStoreStatus, MasterKey};
use serde_json::json;

use crate::support::{Backing, Running, TestApp, parley, view};

/// `parley rotate-master-key` on `backing`'s key store and master key, to the key in `new`.
fn rotate(backing: &Backing, new: &Path, extra: &[&str]) -> Command {
    let mut command = parley();
    command
        .arg("rotate-master-key")
        .args(backing.key_args())
        .arg("--new-master-key-file")
        .arg(new)
        .args(extra)
        .env_remove("PARLEY_MASTER_KEY");
    command
}

/// Every conversation's `request_json` as stored: sealed, and the same bytes after a rotation.
async fn stored_requests(backing: &Backing) -> Vec<String> {
    let db = backing.db().await;
    let rows = db
        .rows(
            "SELECT request_json FROM conversation ORDER BY conversation_id",
            &[],
        )
        .await;
    db.close().await;
    rows.iter().map(|r| sqlx::Row::get(r, 0)).collect()
}

/// The key store's status, opened with whichever of the two master keys opens it now.
async fn status_with(backing: &Backing, old: &MasterKey, new: &MasterKey) -> KeyStoreStatus {
    let config = backing.config().keys;
    let keys = match parley_server::app::open_existing_keys(&config, old.clone()).await {
        Ok(keys) => keys,
        Err(_) => parley_server::app::open_existing_keys(&config, new.clone())
            .await
            .expect("the store opens with one of the two keys"),
    };
    let status = keys.status().await.unwrap();
    keys.close().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_store_serves_everything_under_the_new_key_and_the_old_key_opens_nothing() {
    let app = TestApp::spawn().await;
    let markers = ["ROT-MARK-a91f", "ROT-MARK-5c2e", "ROT-MARK-77d0"];
    let recorded = app
        .ended(json!({
            "conversational_context": markers[0],
            "properties": { "enable_recording": true },
        }))
        .await;
    let ended = app
        .ended(json!({ "conversation_name": markers[1], "custom_greeting": "hi" }))
        .await;
    let active = app.create(json!({ "conversational_context": markers[2] })).await;
    app.wait_for_jobs().await;
    let ids = [recorded.clone(), ended, active];
    let mut before = Vec::new();
    for id in &ids {
        before.push(view(&app, id).await);
    }
    assert!(before[0].1.is_some(), "the recording is served");
    let key = app.key.clone();
    let old = app.backing.master_key();
    let keys_before = app.backing.data_keys().await;
    assert_eq!(keys_before.len(), 3);
    let mut backing = app.stop().await;
    let requests = stored_requests(&backing).await;

    let new_path = backing.key_dir().join("rotated/new.key");
    let missing = rotate(&backing, &new_path, &[]).output().unwrap();
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(said.contains("--generate"), "{said}");

    let out = rotate(&backing, &new_path, &["--generate"]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let new = MasterKey::load_file(&new_path).unwrap();
    for expected in [
        new.id().to_string(),
        new_path.display().to_string(),
        "destroy the old master key".into(),
        old.id().to_string(),
    ] {
        assert!(said.contains(&expected), "{expected:?} in {said}");
    }

    // The old master key unwraps nothing in the key store's bytes; the new one every key, the
    // same keys as before (content was not rewritten, and still opens with them).
    assert!(backing.data_keys_under(&old).await.is_empty());
    let keys_after = backing.data_keys_under(&new).await;
    assert_eq!(keys_after.len(), 3);
    for (id, found) in &keys_before {
        assert_eq!(keys_after[id].key_id, found.key_id, "{id}");
    }
    assert_eq!(stored_requests(&backing).await, requests);

    // A server started with the old key is refused, and says why.
    let mut serve = parley();
    serve
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(backing.serve_args())
        .env_remove("PARLEY_MASTER_KEY");
    let (status, said) = Running::start(serve).finish();
    assert!(!status.success());
    assert!(
        said.contains("rotated out") && said.contains(&new.id().to_string()),
        "{said}"
    );

    // Running it again with the old key, as after a lost terminal, finds nothing left to do.
    let (status, said) = Running::start(rotate(&backing, &new_path, &[])).finish();
    assert!(status.success(), "{said}");
    assert!(said.contains("nothing to rotate"), "{said}");

    // With the new key, every conversation reads exactly as before, recording included.
    backing.use_master_key_file(new_path.clone());
    let mut app = TestApp::spawn_on(backing.clone(), |_| {}).await;
    app.key = key;
    for (id, expected) in ids.iter().zip(&before) {
        assert_eq!(&view(&app, id).await, expected, "{id}");
    }
    for (id, marker) in ids.iter().zip(markers) {
        assert!(app.backing.readable(id, marker).await, "{id}");
        assert!(!app.backing.holds(marker).await);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_stopped_or_killed_half_way_finishes_when_run_again() {
    let app = TestApp::spawn().await;
    let marker = "ROT-KILL-3e8b";
    let id = app
        .ended(json!({ "conversational_context": marker, "properties": { "enable_recording": true } }))
        .await;
    app.wait_for_jobs().await;
    let (before, recording) = view(&app, &id).await;
    let key = app.key.clone();
    let mut backing = app.stop().await;
    // Thousands of keys, so that the rotation takes many batches: conversations of an old
    // store would have them, but a key is all a rotation sees.
    let keys = backing.key_store().await;
    let extra: Vec<KeyOwner> = (0..5000)
        .map(|_| KeyOwner::from(ConversationId::from_random(rand::random())))
        .collect();
    for chunk in extra.chunks(1000) {
        keys.create_many(chunk, Timestamp::now()).await.unwrap();
    }
    keys.close().await;
    let old = backing.master_key();
    let new_path = backing.key_dir().join("new.key");
    let new = MasterKey::generate_file(&new_path).unwrap();
    let progress = |line: &str| line.starts_with("rewrap:") || line.starts_with("retire:");

    // Ctrl-C: the rotation stops at the next batch, and says how to resume.
    let mut first = Running::start(rotate(&backing, &new_path, &[]));
    first.wait_for_line(progress).expect("a progress line");
    first.signal("INT");
    let (status, said) = first.finish();
    assert!(!status.success(), "{said}");
    assert!(said.contains("Run the same command again"), "{said}");
    let stopped = status_with(&backing, &old, &new).await;
    assert!(stopped.unfinished_rotation.is_some(), "{stopped:?}");

    // A kill: no chance to finish the batch under way.
    let mut second = Running::start(rotate(&backing, &new_path, &[]));
    let line = second.wait_for_line(progress).expect("a progress line");
    second.kill();
    let killed = status_with(&backing, &old, &new).await;
    assert!(
        killed.unfinished_rotation.is_some(),
        "the kill came after the rotation finished (at {line:?}): {killed:?}"
    );

    let (status, said) = Running::start(rotate(&backing, &new_path, &[])).finish();
    assert!(status.success(), "{said}");
    assert!(
        said.contains("resuming") || said.contains("switched over"),
        "{said}"
    );
    let done = status_with(&backing, &old, &new).await;
    assert_eq!(done.unfinished_rotation, None);
    assert_eq!(done.master_key_id, new.id());
    assert_eq!(done.keys, 5001);
    assert!(backing.data_keys_under(&old).await.is_empty());
    assert_eq!(backing.data_keys_under(&new).await.len(), 5001);

    backing.use_master_key_file(new_path);
    let mut app = TestApp::spawn_on(backing, |_| {}).await;
    app.key = key;
    assert_eq!(view(&app, &id).await, (before, recording));
    assert!(app.backing.readable(&id, marker).await);
    app.stop().await;
}
