//! `parley verify`: a clean state verifies clean; each kind of damage, made for real in the stores,
//! is reported, and `--repair` mends it without touching any other conversation.

use parley_blobs::BlobKey;
use parley_domain::{ConversationId, KeyOwner, Timestamp};
use parley_store::{DeleteScope, HardDeleteOutcome, JobKind};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::verify::claim;
use crate::support::{Backing, TestApp};

/// A conversation a test made: its id and the marker in its content.
struct Made {
    id: String,
    marker: String,
}

/// A server with `n` ended conversations, each with a transcript, a recording and its own marker.
async fn with_conversations(n: usize) -> (TestApp, Vec<Made>) {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 100).await;
    let mut made = Vec::new();
    for i in 0..n {
        let marker = format!("VERIFY-{i}-{:08x}", rand::random::<u32>());
        let id = app
            .ended(json!({ "conversational_context": marker, "properties": { "enable_recording": true } }))
            .await;
        made.push(Made { id, marker });
    }
    app.wait_for_jobs().await;
    (app, made)
}

/// A server on the state again, with the key of the first one.
async fn restart(backing: Backing, key: &str) -> TestApp {
    let mut app = TestApp::spawn_on(backing, |_| {}).await;
    app.key = key.to_owned();
    app
}

/// Asserts that each conversation reads whole through the API: its marker and its recording.
async fn assert_readable(app: &TestApp, kept: &[&Made]) {
    for m in kept {
        let (status, body) = app
            .call(Method::GET, &format!("/v2/conversations/{}?verbose=true", m.id))
            .await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", m.id);
        assert!(body.to_string().contains(&m.marker), "{} lost its content", m.id);
        let res = app
            .req(Method::GET, &format!("/v2/conversations/{}/recording", m.id))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{} lost its recording", m.id);
        assert!(res.bytes().await.unwrap().starts_with(b"RIFF"));
    }
}

/// Asserts that nothing of the conversation can be read any more, and its key id is nowhere in
/// the key store.
async fn assert_erased(backing: &Backing, m: &Made, key_id: &str) {
    assert!(!backing.readable(&m.id, &m.marker).await, "{} is readable", m.id);
    assert!(backing.blob_keys(&m.id).await.is_empty(), "{} has blobs", m.id);
    assert!(
        !backing.key_store_mentions(key_id).await,
        "the key of {} remains",
        m.id
    );
}

/// The recording's blob key.
fn recording(id: &str) -> String {
    format!("conversations/{id}/assets/recording.wav")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_state_verifies_clean_and_an_embedded_one_only_with_its_server_stopped() {
    let (app, made) = with_conversations(3).await;
    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{}", made[1].id))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v2/conversations/{}?hard=true", made[2].id),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;

    let running = app.backing.verify(&[]).await;
    if app.backing.is_sqlite() {
        // The server holds the database and the slot file: a check beside it could not trust
        // what it reads, nor repair anything safely.
        running.assert_code(2);
        assert!(running.stderr.contains("stop the server"), "{running}");
        assert!(running.stdout.is_empty());
    } else {
        running.assert_code(0);
    }
    let key = app.key.clone();
    let backing = app.stop().await;
    let verified = backing.assert_verifies_clean().await;
    assert!(verified.findings().is_empty(), "{verified}");
    for (name, count) in [
        ("conversations", "2"),
        ("keys", "2"),
        ("blobs", "2"),
        ("assets", "2"),
        ("receipts", "1"),
        ("purges", "0"),
        ("problems", "0"),
    ] {
        assert_eq!(verified.summary(name), count, "{name}: {verified}");
    }
    let json = backing.verify(&["--format", "json"]).await;
    json.assert_code(0);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["clean"], true);
    assert_eq!(report["checked"]["conversations"], 2);
    assert_eq!(report["findings"], json!([]));
    // Nothing was changed by looking.
    let app = restart(backing, &key).await;
    assert_readable(&app, &[&made[0]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_key_is_reported_and_repair_erases_the_conversation_it_made_unreadable() {
    let (app, made) = with_conversations(3).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    let lost = &made[0];
    let keys = backing.key_store().await;
    let id = ConversationId::parse(&lost.id).unwrap();
    keys.destroy(&(&id).into()).await.unwrap().expect("it had a key");
    drop(keys);

    let found = backing.verify(&[]).await;
    found.assert_code(1);
    assert_eq!(
        found.of("key-missing"),
        [format!("key-missing {} account=default", lost.id)]
    );
    assert_eq!(
        found.of("blob-without-key"),
        [format!("blob-without-key {} {}", lost.id, recording(&lost.id))]
    );
    assert_eq!(found.findings().len(), 2, "{found}");

    let repaired = backing.verify(&["--repair"]).await;
    repaired.assert_code(0);
    assert!(
        repaired.findings().iter().all(|l| l.ends_with("-> repaired")),
        "{repaired}"
    );
    assert_eq!(repaired.summary("repaired"), "2");
    backing.assert_verifies_clean().await;

    let db = backing.db().await;
    assert_eq!(db.rows_of(&lost.id).await, (0, 0, 0));
    let reason = db
        .text(
            "SELECT reason FROM erasure_receipt WHERE conversation_id = ?",
            &lost.id,
        )
        .await;
    assert_eq!(reason, "key_lost");
    db.close().await;
    assert!(backing.blob_keys(&lost.id).await.is_empty());
    assert!(!backing.holds(&lost.marker).await);

    let app = restart(backing, &key).await;
    let (status, _) = app
        .call(Method::GET, &format!("/v2/conversations/{}", lost.id))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_readable(&app, &[&made[1], &made[2]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_no_conversation_are_reported_and_repair_destroys_them() {
    let (app, made) = with_conversations(2).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    // A create that died between its key and its row, an hour ago and just now; and the key of
    // a resource row's id, which no conversation can own.
    let keys = backing.key_store().await;
    let old = ConversationId::from_random(rand::random());
    let new = ConversationId::from_random(rand::random());
    let row = KeyOwner::parse(&parley_domain::random_id('o', rand::random())).unwrap();
    let row_key = keys
        .create(&row, Timestamp::now().plus_secs(-3600))
        .await
        .unwrap()
        .key_id
        .to_string();
    let old_key = keys
        .create(&(&old).into(), Timestamp::now().plus_secs(-3600))
        .await
        .unwrap()
        .key_id
        .to_string();
    let new_key = keys
        .create(&(&new).into(), Timestamp::now())
        .await
        .unwrap()
        .key_id
        .to_string();
    drop(keys);

    let found = backing.verify(&[]).await;
    found.assert_code(1);
    let orphan = |id: &str, key_id: &str| format!("orphan-key {id} {key_id} created=");
    let lines = found.of("orphan-key");
    for (owner, key_id) in [(old.as_str(), &old_key), (row.as_str(), &row_key)] {
        assert!(
            lines.iter().any(|l| l.starts_with(&orphan(owner, key_id))),
            "{found}"
        );
    }
    if backing.is_sqlite() {
        // The slot file is verify's alone while it runs: no create can be in flight.
        assert_eq!(lines.len(), 3, "{found}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&orphan(new.as_str(), &new_key)))
        );
    } else {
        // On a shared key store a key this young may be a create in flight on a live server.
        assert_eq!(lines.len(), 2, "{found}");
        let recent = found.of("recent-orphan-key");
        assert_eq!(recent.len(), 1, "{found}");
        assert!(recent[0].starts_with(&format!("recent-orphan-key {new} {new_key}")));
        let repaired = backing.verify(&["--repair"]).await;
        repaired.assert_code(0);
        assert!(repaired.of("recent-orphan-key")[0].contains("-> left: younger than --grace"));
        assert!(backing.key_store_mentions(&new_key).await);
        backing.verify(&["--grace", "0s"]).await.assert_code(1);
    }
    let repaired = backing.verify(&["--repair", "--grace", "0s"]).await;
    repaired.assert_code(0);
    backing.assert_verifies_clean().await;
    for key_id in [&old_key, &new_key, &row_key] {
        assert!(!backing.key_store_mentions(key_id).await, "{key_id} remains");
    }
    let app = restart(backing, &key).await;
    assert_readable(&app, &[&made[0], &made[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_cut_short_or_stuck_are_finished_by_repair() {
    let (app, made) = with_conversations(3).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    let data_keys = backing.data_keys().await;
    let (pending, stuck) = (&made[0], &made[1]);
    let raw = backing.raw_store().await;
    // A purge that fails every time it runs.
    erase_rows(&*raw, &stuck.id).await;
    for _ in 0..5 {
        let job = claim(&*raw, &stuck.id, JobKind::Purge).await;
        raw.fail_job(&job, "deleting blobs: the bucket timed out", Timestamp::now())
            .await
            .unwrap();
    }
    // A delete cut short by a kill after its rows went, before its key was destroyed: the
    // purge job it committed is to finish it.
    erase_rows(&*raw, &pending.id).await;
    raw.close().await;

    let found = backing.verify(&[]).await;
    found.assert_code(1);
    let stuck_line = found.of("purge-stuck");
    assert_eq!(stuck_line.len(), 1, "{found}");
    assert!(stuck_line[0].starts_with(&format!("purge-stuck {} ", stuck.id)));
    assert!(stuck_line[0].contains("attempts=5"), "{found}");
    assert!(stuck_line[0].contains("error=\"deleting blobs: the bucket timed out\""));
    assert!(stuck_line[0].contains(" blobs=1 "), "{found}");
    assert!(stuck_line[0].contains(" key=remains"), "{found}");
    let pending_line = found.of("purge-pending");
    assert_eq!(pending_line.len(), 1, "{found}");
    assert!(pending_line[0].contains("attempts=0"), "{found}");
    assert_eq!(found.findings().len(), 2, "{found}");
    // Work in progress alone does not fail the check: a server would finish it at start.
    assert_eq!(found.summary("pending"), "1");
    assert_eq!(found.summary("remaining"), "1");

    let repaired = backing.verify(&["--repair"]).await;
    repaired.assert_code(0);
    assert_eq!(repaired.summary("repaired"), "1");
    let verified = backing.assert_verifies_clean().await;
    assert!(verified.findings().is_empty(), "{verified}");
    assert_eq!(verified.summary("purges"), "0");
    let db = backing.db().await;
    for m in [pending, stuck] {
        let key_id = &data_keys[m.id.as_str()].key_id;
        assert_erased(&backing, m, key_id).await;
        let row = db
            .row(
                "SELECT key_id, key_destroyed_at FROM erasure_receipt WHERE conversation_id = ?",
                &[&m.id],
            )
            .await;
        use sqlx::Row;
        assert_eq!(row.get::<Option<String>, _>(0).as_deref(), Some(key_id.as_str()));
        assert!(row.get::<Option<i64>, _>(1).is_some());
    }
    db.close().await;
    let app = restart(backing, &key).await;
    assert_readable(&app, &[&made[2]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_whose_key_survived_or_went_unrecorded_and_blobs_left_behind_are_mended() {
    let (app, made) = with_conversations(3).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    let data_keys = backing.data_keys().await;
    let (survived, unrecorded) = (&made[0], &made[1]);
    let raw = backing.raw_store().await;
    // Rows erased and the purge job gone, yet the key and the blob remain.
    erase_rows(&*raw, &survived.id).await;
    let job = claim(&*raw, &survived.id, JobKind::Purge).await;
    raw.complete_job(&job).await.unwrap();
    // The key destroyed, but the receipt never told, and the blob left.
    erase_rows(&*raw, &unrecorded.id).await;
    let keys = backing.key_store().await;
    let id = ConversationId::parse(&unrecorded.id).unwrap();
    keys.destroy(&(&id).into()).await.unwrap().expect("it had a key");
    drop(keys);
    let job = claim(&*raw, &unrecorded.id, JobKind::Purge).await;
    raw.complete_job(&job).await.unwrap();
    raw.close().await;
    // A blob of a conversation that never had a row.
    let nobody = ConversationId::from_random(rand::random());
    let blob = BlobKey::Asset {
        conversation: nobody.clone(),
        asset: "recording.wav".into(),
    };
    backing
        .blobs()
        .put(&blob, bytes::Bytes::from_static(b"not ours"))
        .await
        .unwrap();

    let found = backing.verify(&[]).await;
    found.assert_code(1);
    let survived_key = &data_keys[survived.id.as_str()].key_id;
    assert_eq!(found.of("erased-key-remains").len(), 1, "{found}");
    assert!(
        found.of("erased-key-remains")[0]
            .starts_with(&format!("erased-key-remains {} {survived_key} ", survived.id))
    );
    assert_eq!(
        found.of("receipt-unrecorded"),
        [format!("receipt-unrecorded {}", unrecorded.id)]
    );
    let mut orphans = found.of("orphan-blob");
    orphans.sort();
    let mut expected = vec![
        format!("orphan-blob {} {}", survived.id, recording(&survived.id)),
        format!("orphan-blob {} {}", unrecorded.id, recording(&unrecorded.id)),
        format!("orphan-blob {nobody} {}", blob.path()),
    ];
    expected.sort();
    assert_eq!(orphans, expected, "{found}");
    assert_eq!(found.findings().len(), 5, "{found}");

    backing.verify(&["--repair"]).await.assert_code(0);
    backing.assert_verifies_clean().await;
    assert_erased(&backing, survived, survived_key).await;
    assert!(backing.blob_keys(&unrecorded.id).await.is_empty());
    assert!(backing.blob_keys(nobody.as_str()).await.is_empty());
    let db = backing.db().await;
    let recorded: i64 = db
        .count(
            "SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = ? AND key_destroyed_at IS NOT NULL",
            &unrecorded.id,
        )
        .await;
    assert_eq!(recorded, 1);
    db.close().await;
    let app = restart(backing, &key).await;
    assert_readable(&app, &[&made[2]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_blob_is_reported_and_left_for_the_operator_to_decide() {
    let (app, made) = with_conversations(2).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    let lost = &made[0];
    let id = ConversationId::parse(&lost.id).unwrap();
    assert_eq!(backing.blobs().delete_conversation(&id).await.unwrap(), 1);

    let found = backing.verify(&[]).await;
    found.assert_code(1);
    assert_eq!(
        found.findings(),
        [format!("missing-blob {} {}", lost.id, recording(&lost.id))]
    );
    // No repair can make the recording again; the conversation keeps the rest.
    let left = backing.verify(&["--repair"]).await;
    left.assert_code(1);
    assert!(left.findings()[0].contains("-> left: the blob is lost"), "{left}");

    let app = restart(backing, &key).await;
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/v2/conversations/{}?verbose=true", lost.id),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.to_string().contains(&lost.marker));
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v2/conversations/{}?hard=true", lost.id),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;
    let backing = app.stop().await;
    backing.assert_verifies_clean().await;
    let app = restart(backing, &key).await;
    assert_readable(&app, &[&made[1]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_stored_before_sealing_is_reported_and_never_erased() {
    let (app, made) = with_conversations(1).await;
    let backing = app.stop().await;
    let raw = backing.raw_store().await;
    let source = ConversationId::parse(&made[0].id).unwrap();
    let mut plain = raw.load_conversation(&source).await.unwrap().unwrap();
    plain.id = ConversationId::from_random(rand::random());
    plain.conversational_context = Some("PLAINTEXT-before-sealing".into());
    plain.request_json = "{}".into();
    raw.create_conversation(&plain, 100, &[]).await.unwrap();
    raw.close().await;

    let found = backing.verify(&[]).await;
    found.assert_code(1);
    assert_eq!(
        found.findings(),
        [format!("unsealed {} account=default", plain.id)]
    );
    let left = backing.verify(&["--repair"]).await;
    left.assert_code(1);
    assert!(left.findings()[0].contains("-> left:"), "{left}");
    assert!(backing.holds("PLAINTEXT-before-sealing").await, "it was erased");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_destroys_nothing_on_a_key_store_that_is_not_this_states() {
    let (app, made) = with_conversations(2).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    let other = backing.another_key_store().await;

    let found = backing.verify_on_key_store(&other, &[]).await;
    found.assert_code(1);
    assert_eq!(found.of("key-missing").len(), 2, "{found}");
    assert_eq!(found.of("orphan-key").len(), 1, "{found}");
    let refused = backing.verify_on_key_store(&other, &["--repair"]).await;
    refused.assert_code(1);
    assert!(
        refused
            .findings()
            .iter()
            .all(|l| l.contains("-> left: not one conversation has its key")),
        "{refused}"
    );
    assert_eq!(refused.summary("repaired"), "0");
    // Everything is where it was, in both.
    assert_eq!(
        backing.verify_on_key_store(&other, &[]).await.findings(),
        found.findings()
    );
    backing.assert_verifies_clean().await;
    let app = restart(backing, &key).await;
    assert_readable(&app, &[&made[0], &made[1]]).await;
}

/// Erases a conversation's rows as its owner's hard delete would, leaving what a kill right after
/// that transaction leaves: a receipt, an unclaimed purge job, the key and the blobs.
async fn erase_rows(raw: &dyn parley_store::ConversationStore, id: &str) {
    let id = ConversationId::parse(id).unwrap();
    let outcome = raw
        .hard_delete(DeleteScope::Account("default"), &id, Timestamp::now(), None)
        .await
        .unwrap();
    assert!(
        matches!(outcome, HardDeleteOutcome::Deleted { .. }),
        "{outcome:?}"
    );
}

/// Resources' keys and blobs belong to their rows: a state with a persona, a fetched document and
/// an erased persona verifies clean, and a resource blob that belongs to no row is shown as stray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_keys_and_blobs_are_checked_against_their_rows() {
    let app = TestApp::spawn().await;
    let pages = crate::documents::DocServer::start("verified-handbook").await;
    let post = |path: &'static str, body: serde_json::Value| {
        crate::support::send(app.req(Method::POST, path).json(&body))
    };
    let (status, _) = post(
        "/v2/personas",
        json!({ "persona_name": "Kept", "system_prompt": "Hi." }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, doc) = post("/v2/documents", json!({ "document_url": pages.url("/doc.txt") })).await;
    let doc = doc["document_id"].as_str().unwrap().to_owned();
    let (_, gone) = post(
        "/v2/personas",
        json!({ "persona_name": "Gone", "system_prompt": "Bye." }),
    )
    .await;
    let gone = gone["persona_id"].as_str().unwrap().to_owned();
    let (status, _) = app.call(Method::DELETE, &format!("/v2/personas/{gone}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    crate::support::eventually("the document is fetched", || async {
        app.call(Method::GET, &format!("/v2/documents/{doc}")).await.1["status"] == "ready"
    })
    .await;
    let backing = app.stop().await;

    let clean = backing.assert_verifies_clean().await;
    assert_eq!(clean.summary("keys"), "2", "{clean}");
    assert_eq!(clean.summary("blobs"), "1", "{clean}");

    let stray = "resources/s00000000deadbeef/content";
    backing
        .blobs()
        .put_key(stray, bytes::Bytes::from_static(b"left over"))
        .await
        .unwrap();
    let found = backing.verify(&[]).await;
    found.assert_code(1);
    assert_eq!(found.of("stray-blob").len(), 1, "{found}");
    assert!(found.of("stray-blob")[0].contains(stray), "{found}");
}
