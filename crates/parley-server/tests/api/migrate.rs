//! `parley migrate-store`: everything copied from an embedded store, data keys included, and the
//! copy serves it all.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use parley_domain::{ConversationId, Timestamp};
use parley_keys::{KeyStore, SlotFileKeyStore};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backing, Receiver, TestApp, cli_new_key, eventually, parley};

/// `parley migrate-store` from one state into another.
fn migrate_command(source: &Backing, target: &Backing) -> Command {
    let mut command = parley();
    command
        .arg("migrate-store")
        .args(source.migrate_args("from"))
        .args(target.migrate_args("to"));
    command
}

fn migrate(source: &Backing, target: &Backing) -> Output {
    migrate_command(source, target).output().unwrap()
}

trait Succeeds {
    /// Panics with the command's output unless it succeeded; returns stdout.
    fn success(&self) -> String;
}

impl Succeeds for Output {
    fn success(&self) -> String {
        let stdout = String::from_utf8_lossy(&self.stdout).into_owned();
        assert!(
            self.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&self.stderr)
        );
        stdout
    }
}

/// POSTs `body` as JSON; the status and the answer.
async fn post(app: &TestApp, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    crate::support::send(app.req(Method::POST, path).json(&body)).await
}

/// An embedded store with `n` conversations (test mode, so no cap), stopped; their ids.
async fn source_with(n: usize) -> (Backing, Vec<String>) {
    let source = Backing::sqlite();
    let app = TestApp::spawn_on(source.clone(), |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            app.create(json!({ "test_mode": true, "conversation_name": format!("call {i}") }))
                .await,
        );
    }
    let recorded = app
        .ended(json!({ "conversation_name": "recorded", "properties": { "enable_recording": true } }))
        .await;
    app.wait_for_jobs().await;
    ids.push(recorded);
    app.stop().await;
    (source, ids)
}

/// Every conversation of `ids` is served by a server on `target` (with `adjust`ed settings), with
/// `key`, its content readable: its name, and the last one's recording.
async fn serves_all_with(
    target: &Backing,
    adjust: impl FnOnce(&mut parley_server::ServeConfig),
    key: &str,
    ids: &[String],
) {
    let mut copy = TestApp::spawn_on(target.clone(), adjust).await;
    copy.key = key.to_owned();
    let (status, list) = copy.call(Method::GET, "/v2/conversations?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total_count"], ids.len());
    for id in ids {
        let (status, c) = copy.call(Method::GET, &format!("/v2/conversations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert!(
            c["conversation_name"].is_string(),
            "{id}'s content is unavailable: {c}"
        );
    }
    let recording = copy
        .req(
            Method::GET,
            &format!("/v2/conversations/{}/recording", ids.last().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(recording.status(), StatusCode::OK);
    assert!(recording.bytes().await.unwrap().starts_with(b"RIFF"));
    copy.stop().await;
}

async fn serves_all(target: &Backing, key: &str, ids: &[String]) {
    serves_all_with(target, |_| {}, key, ids).await;
}

/// A state's data keys, read from its key store's bytes: conversation → (key id, key).
async fn keys_of(backing: &Backing) -> BTreeMap<String, (String, [u8; 32])> {
    backing
        .data_keys()
        .await
        .into_iter()
        .map(|(id, found)| (id, (found.key_id, *found.key.expose_bytes())))
        .collect()
}

/// Puts a key for a conversation that does not exist into a stopped embedded state's key store,
/// as a create that failed after making its key leaves one; its conversation id.
async fn orphan_key(backing: &Backing) -> String {
    let keys = backing.config().keys;
    let store = SlotFileKeyStore::open(&keys.key_store, backing.master_key())
        .await
        .unwrap();
    let id = ConversationId::from_random(rand::random());
    store.create(&(&id).into(), Timestamp::now()).await.unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_is_copied_whole_into_another_store() {
    // The source: an embedded store with some of everything.
    let source = Backing::sqlite();
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_on(source.clone(), |_| {}).await;
    let key = app.key.clone();
    let recorded = app
        .ended(json!({
            "conversation_name": "kept",
            "callback_url": receiver.url,
            "persona_id": "pdac61133ac5",
            "properties": { "enable_recording": true },
        }))
        .await;
    receiver.wait_delivered(5).await;
    let active = app.create(json!({ "conversation_name": "still on" })).await;
    let hidden = app.ended(json!({ "conversation_name": "soft-deleted" })).await;
    app.call(Method::DELETE, &format!("/v2/conversations/{hidden}"))
        .await;
    let erased = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    app.call(Method::DELETE, &format!("/v2/conversations/{erased}?hard=true"))
        .await;
    let other_key = cli_new_key(&source, "team-b");
    // Resources: a persona, a document fetched into a blob, a guardrail, and an erased persona.
    let pages = crate::documents::DocServer::start("migrated-handbook").await;
    let (_, persona) = post(
        &app,
        "/v2/personas",
        json!({ "persona_name": "Migrated", "system_prompt": "You were copied." }),
    )
    .await;
    let persona = persona["persona_id"].as_str().unwrap().to_owned();
    let (_, doc) = post(
        &app,
        "/v2/documents",
        json!({ "document_url": pages.url("/doc.txt") }),
    )
    .await;
    let doc = doc["document_id"].as_str().unwrap().to_owned();
    let (_, guardrail) = post(
        &app,
        "/v2/guardrails",
        json!({ "guardrail_name": "no_advice", "guardrail_prompt": "Never advise." }),
    )
    .await;
    let guardrail = guardrail["uuid"].as_str().unwrap().to_owned();
    let (_, dropped) = post(
        &app,
        "/v2/personas",
        json!({ "persona_name": "Dropped", "system_prompt": "Gone." }),
    )
    .await;
    let dropped = dropped["persona_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.call(Method::DELETE, &format!("/v2/personas/{dropped}"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let resources = [
        format!("/v2/personas/{persona}"),
        format!("/v2/documents/{doc}"),
        format!("/v2/guardrails/{guardrail}"),
    ];
    crate::support::eventually("the document is fetched", || async {
        app.call(Method::GET, &format!("/v2/documents/{doc}")).await.1["status"] == "ready"
    })
    .await;
    let mut resources_before = Vec::new();
    for path in &resources {
        resources_before.push(app.call(Method::GET, path).await);
    }
    let doc_content = format!("/v2/documents/{doc}/content");
    let content_before = app
        .req(Method::GET, &doc_content)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&content_before).contains("migrated-handbook"));
    app.wait_for_jobs().await;
    let (_, before) = app
        .call(Method::GET, &format!("/v2/conversations/{recorded}?verbose=true"))
        .await;
    let wav_before = app
        .req(Method::GET, &format!("/v2/conversations/{recorded}/recording"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, list_before) = app.call(Method::GET, "/v2/conversations?limit=100").await;
    app.stop().await;
    let orphan = orphan_key(&source).await;
    let source_keys = keys_of(&source).await;
    assert!(source_keys.contains_key(&recorded) && source_keys.contains_key(&orphan));
    assert!(
        !source_keys.contains_key(&erased),
        "a hard delete destroyed its key"
    );

    // The copy: into a fresh store of the run's backend (SQLite, or PostgreSQL and S3).
    let target = Backing::fresh().await;
    let out = parley()
        .arg("migrate-store")
        .args(source.migrate_args("from"))
        .args(target.migrate_args("to"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("conversation") && stdout.contains("blobs") && stdout.contains("data keys"),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "data keys without a conversation in the source (left by creates that failed), not copied: 1"
        ),
        "{stderr}"
    );
    // The destination's key store holds exactly the source's keys of existing conversations,
    // under the destination's own master key (made by the copy: its key folder had none).
    let mut expected = source_keys.clone();
    expected.remove(&orphan);
    assert_eq!(keys_of(&target).await, expected);
    assert_eq!(target.key_count().await, expected.len());
    assert_ne!(target.master_key().id(), source.master_key().id());
    // Copying again finds everything there: nothing changes, and the check still passes.
    let db = target.db().await;
    let events_before = db.scalar("SELECT COUNT(*) FROM event").await;
    let again = migrate(&source, &target);
    again.success();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("0 copied"), "{stderr}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM event").await, events_before);
    db.close().await;
    assert_eq!(keys_of(&target).await, expected);

    // The destination serves the same conversations, events, recordings, keys and receipts.
    let mut copy = TestApp::spawn_on(target.clone(), |_| {}).await;
    copy.key = key;
    let (_, after) = copy
        .call(Method::GET, &format!("/v2/conversations/{recorded}?verbose=true"))
        .await;
    let strip = |mut v: serde_json::Value| {
        // Only the base URL in links differs between the two servers.
        v.as_object_mut().unwrap().remove("conversation_url");
        v
    };
    assert_eq!(strip(after), strip(before));
    let wav_after = copy
        .req(Method::GET, &format!("/v2/conversations/{recorded}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(wav_after.status(), StatusCode::OK);
    assert_eq!(wav_after.bytes().await.unwrap(), wav_before);
    let (_, list_after) = copy.call(Method::GET, "/v2/conversations?limit=100").await;
    assert_eq!(list_after["total_count"], list_before["total_count"]);
    let ids = |l: &serde_json::Value| -> Vec<String> {
        l["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conversation_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&list_after), ids(&list_before));
    assert!(ids(&list_after).contains(&active));
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/conversations/{hidden}"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        copy.call_as(&other_key, Method::GET, "/v2/conversations").await.0,
        StatusCode::OK
    );
    assert!(target.cli(&["receipts"]).contains(&erased));
    target.cli(&["conversations", "restore", &hidden]);
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/conversations/{hidden}"))
            .await
            .0,
        StatusCode::OK
    );
    // The resources come across whole, the document's blob and key included; the erased one does not.
    for (path, before) in resources.iter().zip(&resources_before) {
        assert_eq!(&copy.call(Method::GET, path).await, before, "{path}");
    }
    let content_after = copy
        .req(Method::GET, &doc_content)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(content_after, content_before);
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/personas/{dropped}")).await.0,
        StatusCode::BAD_REQUEST
    );
    // New rows get fresh ids after the copied ones: the copy keeps working.
    let fresh = copy.ended(json!({})).await;
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/conversations/{fresh}"))
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_failed_half_way_is_finished_by_running_it_again() {
    let (source, ids) = source_with(20).await;
    let key = source.cli(&["keys", "create", "--account", "default"]);
    let key = key.trim();
    // A file where the recording's folder must go: the first run copies every row, then fails
    // to write that blob.
    let recorded = ids.last().unwrap();
    let target = Backing::sqlite();
    let blocker = target.data_dir().join("blobs/conversations").join(recorded);
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();
    let failed = migrate(&source, &target);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("recording.wav"), "{stderr}");
    let db = target.db().await;
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM conversation").await,
        ids.len() as i64
    );
    db.close().await;

    std::fs::remove_file(&blocker).unwrap();
    let stdout = migrate(&source, &target).success();
    assert!(stdout.contains("blobs"), "{stdout}");
    serves_all(&target, key, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_was_killed_is_finished_by_running_it_again() {
    let (source, ids) = source_with(150).await;
    let key = source.cli(&["keys", "create", "--account", "default"]);
    let key = key.trim();
    let target = Backing::fresh().await;
    // The schema first, so the copy's progress can be watched from the start.
    target.cli(&["keys", "list"]);
    // One row per transaction, so the kill lands between two of them.
    let mut child = migrate_command(&source, &target)
        .args(["--batch-size", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = target.db().await;
    eventually("the copy reaches the conversations", || async {
        db.scalar("SELECT COUNT(*) FROM conversation").await > 0
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let copied = db.scalar("SELECT COUNT(*) FROM conversation").await;
    assert!(copied < ids.len() as i64, "killed half way: {copied}");

    let stdout = migrate(&source, &target).success();
    assert!(stdout.contains("conversation"), "{stdout}");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM conversation").await,
        ids.len() as i64
    );
    db.close().await;
    serves_all(&target, key, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_holding_another_store_is_refused_and_left_alone() {
    let (source, _) = source_with(3).await;
    let (other, other_ids) = source_with(1).await;
    let target = Backing::fresh().await;
    migrate(&other, &target).success();
    let db = target.db().await;
    let before = db.scalar("SELECT COUNT(*) FROM conversation").await;

    let refused = migrate(&source, &target);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not from this source"), "{stderr}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM conversation").await, before);
    assert_eq!(before, other_ids.len() as i64);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_while_copying_keys_is_finished_by_running_it_again() {
    let (source, ids) = source_with(400).await;
    let key = source.cli(&["keys", "create", "--account", "default"]);
    let key = key.trim();
    let target = Backing::fresh().await;
    // One key per batch, each synced on its own, so the kill lands between two of them.
    let mut child = migrate_command(&source, &target)
        .args(["--batch-size", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the copy reaches the keys", || async {
        target.key_count().await > 0
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let copied = target.key_count().await;
    assert!(copied < ids.len(), "killed half way: {copied} keys");

    let out = migrate(&source, &target);
    let stdout = out.success();
    assert!(stdout.contains("data keys"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already there"), "{stderr}");
    assert_eq!(keys_of(&target).await, keys_of(&source).await);
    assert_eq!(target.key_count().await, ids.len());
    serves_all(&target, key, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_shares_the_source_key_store_gets_no_copy_of_a_key() {
    let (source, ids) = source_with(3).await;
    let key = source.cli(&["keys", "create", "--account", "default"]);
    let target = Backing::fresh().await;
    // The destination names no key store of its own.
    let to = target.migrate_args("to");
    let mut to = to.iter();
    let mut without_keys = Vec::new();
    while let Some(arg) = to.next() {
        if arg.ends_with("-key-store") || arg.ends_with("-master-key-file") {
            to.next();
        } else {
            without_keys.push(arg.clone());
        }
    }
    let out = parley()
        .arg("migrate-store")
        .args(source.migrate_args("from"))
        .args(without_keys)
        .output()
        .unwrap();
    out.success();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("both sides use the key store"), "{stderr}");
    assert_eq!(target.key_count().await, 0);

    let shared = source.config().keys;
    serves_all_with(&target, |c| c.keys = shared, key.trim(), &ids).await;
}
