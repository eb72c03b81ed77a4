//! A store written by a parley from before sealing (content in plaintext, no key store) is sealed
//! in place: at `parley serve` start, or by `parley encrypt-store`, which a kill does not leave
//! with any conversation half sealed and which a second run finishes.

use std::collections::HashMap;

use parley_blobs::BlobKey;
use parley_store::ConversationStore;
use parley_store::table::{Row, Table, Value as Cell};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backing, Receiver, Running, TestApp, parley, view};

/// The position of a column in a table's exported rows.
fn column(table: Table, name: &str) -> usize {
    table
        .columns()
        .iter()
        .position(|(c, _)| *c == name)
        .unwrap_or_else(|| panic!("{} has no column {name}", table.name()))
}

/// Every row of a table that belongs to `id`.
async fn rows_of(store: &dyn ConversationStore, table: Table, id: &str) -> Vec<Row> {
    let at = column(table, "conversation_id");
    let mut rows: Vec<Row> = Vec::new();
    loop {
        let page = store.export_rows(table, rows.last(), 1000).await.unwrap();
        if page.is_empty() {
            break;
        }
        rows.extend(page);
    }
    rows.retain(|r| r[at] == Cell::Text(id.to_owned()));
    rows
}

/// Adds `n` plaintext copies of the (plaintext) conversation `template`, with its events and
/// deliveries, each with the context `{prefix}-{i}`; every 50th with a copy of its recording.
/// Written with `import_rows`, as `migrate-store` writes rows. Returns the copies' ids.
async fn plaintext_copies(backing: &Backing, template: &str, n: usize, prefix: &str) -> Vec<String> {
    let store = parley_server::app::open_store(&backing.config().store)
        .await
        .unwrap();
    let blobs = backing.blobs();
    let conversation = rows_of(store.as_ref(), Table::Conversation, template).await;
    let events = rows_of(store.as_ref(), Table::Event, template).await;
    let deliveries = rows_of(store.as_ref(), Table::Delivery, template).await;
    let assets = rows_of(store.as_ref(), Table::Asset, template).await;
    let wav = blobs
        .get(&format!("conversations/{template}/assets/recording.wav"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut copies: HashMap<&str, Vec<Row>> = HashMap::new();
    for i in 0..n {
        let id = parley_domain::ConversationId::from_random(rand::random()).to_string();
        let mut c = conversation[0].clone();
        c[column(Table::Conversation, "conversation_id")] = Cell::Text(id.clone());
        c[column(Table::Conversation, "conversational_context")] = Cell::Text(format!("{prefix}-{i}"));
        copies.entry("conversation").or_default().push(c);
        for (j, e) in events.iter().enumerate() {
            let mut e = e.clone();
            e[column(Table::Event, "event_id")] = Cell::Int(1_000_000 + (i * 10 + j) as i64);
            e[column(Table::Event, "conversation_id")] = Cell::Text(id.clone());
            copies.entry("event").or_default().push(e);
        }
        for (j, d) in deliveries.iter().enumerate() {
            let mut d = d.clone();
            d[column(Table::Delivery, "delivery_seq")] = Cell::Int(1_000_000 + (i * 10 + j) as i64);
            d[column(Table::Delivery, "delivery_id")] =
                Cell::Text(format!("d{:016x}", rand::random::<u64>()));
            d[column(Table::Delivery, "conversation_id")] = Cell::Text(id.clone());
            copies.entry("delivery").or_default().push(d);
        }
        if i % 50 == 0 {
            let blob_key = format!("conversations/{id}/assets/recording.wav");
            blobs.put_key(&blob_key, wav.clone()).await.unwrap();
            let mut a = assets[0].clone();
            a[column(Table::Asset, "conversation_id")] = Cell::Text(id.clone());
            a[column(Table::Asset, "blob_key")] = Cell::Text(blob_key);
            copies.entry("asset").or_default().push(a);
        }
        ids.push(id);
    }
    for table in [Table::Conversation, Table::Event, Table::Delivery, Table::Asset] {
        for chunk in copies[table.name()].chunks(500) {
            store.import_rows(table, chunk).await.unwrap();
        }
    }
    store.close().await;
    ids
}

/// Conversations whose content rows are partly sealed and partly not: none, ever.
async fn half_sealed(backing: &Backing) -> i64 {
    let db = backing.db().await;
    let mut found = 0;
    for sql in [
        // Fields of a row against its own request_json.
        "SELECT COUNT(*) FROM conversation WHERE (request_json LIKE 'pe1:%') <> \
         (conversational_context LIKE 'pe1:%')",
        // Content events against their conversation.
        "SELECT COUNT(*) FROM conversation c JOIN event e ON e.conversation_id = c.conversation_id \
         WHERE e.event_type LIKE 'application.%' \
         AND (c.request_json LIKE 'pe1:%') <> (e.properties LIKE '\"pe1:%')",
        // Content deliveries against their conversation.
        "SELECT COUNT(*) FROM conversation c JOIN delivery d ON d.conversation_id = c.conversation_id \
         WHERE CAST(d.carries_content AS INTEGER) = 1 \
         AND (c.request_json LIKE 'pe1:%') <> (d.payload LIKE '%\"properties\":\"pe1:%')",
    ] {
        found += db.scalar(sql).await;
    }
    db.close().await;
    found
}

/// Conversations whose request_json is sealed, and all of them.
async fn sealed_of_all(backing: &Backing) -> (i64, i64) {
    let db = backing.db().await;
    let sealed = db
        .scalar("SELECT COUNT(*) FROM conversation WHERE request_json LIKE 'pe1:%'")
        .await;
    let all = db.scalar("SELECT COUNT(*) FROM conversation").await;
    db.close().await;
    (sealed, all)
}

/// Whether every blob is sealed: it opens under its conversation's key, and is not a WAV.
async fn blobs_sealed(backing: &Backing) -> bool {
    let keys = backing.data_keys().await;
    let blobs = backing.blobs();
    for (blob_key, _) in blobs.list_prefix(BlobKey::ROOT).await.unwrap() {
        let id = blob_key.split('/').nth(1).unwrap();
        let bytes = blobs.get(&blob_key).await.unwrap();
        let cid = parley_domain::KeyOwner::from(parley_domain::ConversationId::parse(id).unwrap());
        let aad = parley_keys::content_aad(&cid, &format!("blob:{blob_key}"));
        let opens = keys.get(id).is_some_and(|k| k.key.open(&aad, &bytes).is_ok());
        if bytes.starts_with(b"RIFF") || !opens {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_in_plaintext_is_sealed_at_start_and_reads_the_same() {
    // A receiver that is down: the content deliveries stay pending, to be sealed too.
    let port = Receiver::reserve_port().await;
    let callback = format!("http://127.0.0.1:{port}/hook");
    let app = TestApp::spawn().await;
    let markers = [
        "UPG-MARK-1a2b",
        "UPG-MARK-3c4d",
        "UPG-MARK-5e6f",
        "UPG-MARK-7a8b",
        "UPG-MARK-9c0d",
    ];
    let recorded = app
        .ended(json!({
            "conversation_name": markers[0],
            "conversational_context": markers[1],
            "callback_url": callback,
            "properties": { "enable_recording": true },
        }))
        .await;
    let active = app.create(json!({ "custom_greeting": markers[2] })).await;
    let plain = app.ended(json!({ "conversational_context": markers[3] })).await;
    let hidden = app.ended(json!({ "conversational_context": markers[4] })).await;
    app.wait_for_jobs().await;
    let ids = [&recorded, &active, &plain, &hidden];
    // A soft delete and a restore move `updated_at`, and nothing else.
    let settled = |(mut conversation, recording): (Value, Option<String>)| {
        conversation.as_object_mut().unwrap().remove("updated_at");
        (conversation, recording)
    };
    let mut before = Vec::new();
    for id in ids {
        before.push(settled(view(&app, id).await));
    }
    assert!(before[0].1.is_some(), "a recording");
    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{hidden}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let key = app.key.clone();
    let backing = app.stop().await;
    let db = backing.db().await;
    let pending = db
        .count(
            "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND status = 'pending' \
             AND CAST(carries_content AS INTEGER) = 1",
            &recorded,
        )
        .await;
    assert!(pending > 0, "a pending delivery with content");
    db.close().await;

    backing.unseal().await;
    // The test can fail: the plaintext is there before the upgrade.
    for marker in markers {
        assert!(backing.holds(marker).await, "{marker} in plaintext");
    }
    assert_eq!(sealed_of_all(&backing).await.0, 0);
    let wav = format!("conversations/{recorded}/assets/recording.wav");
    assert!(backing.blobs().get(&wav).await.unwrap().starts_with(b"RIFF"));

    // The start seals everything before it listens: what it left is checked with the server
    // stopped again, before anything else writes.
    let app = TestApp::spawn_on(backing.clone(), |_| {}).await;
    app.stop().await;
    assert_eq!(sealed_of_all(&backing).await, (4, 4));
    assert_eq!(half_sealed(&backing).await, 0);
    assert!(blobs_sealed(&backing).await);
    for marker in markers {
        // SQLite: in no file at all (the database was vacuumed); PostgreSQL: in no live row.
        assert!(
            !backing.holds(marker).await,
            "{marker} is still stored in plaintext"
        );
    }
    if backing.is_sqlite() {
        assert!(!backing.data_dir().join("parley.sealing").exists());
    }
    for (id, marker) in [
        (&recorded, markers[0]),
        (&active, markers[2]),
        (&hidden, markers[4]),
    ] {
        assert!(backing.readable(id, marker).await, "{id}");
    }

    // Every conversation reads as before, the soft-deleted one once restored.
    let mut app = TestApp::spawn_on(backing.clone(), |_| {}).await;
    app.key = key;
    backing.cli(&["conversations", "restore", &hidden]);
    for (id, expected) in ids.into_iter().zip(&before) {
        assert_eq!(&settled(view(&app, id).await), expected, "{id}");
    }

    // The pending deliveries go out with their content, once the receiver is up.
    let receiver = Receiver::start_on(port).await;
    let db = backing.db().await;
    for row in db
        .rows(
            "SELECT delivery_id FROM delivery WHERE conversation_id = ? AND status = 'pending'",
            &[&recorded],
        )
        .await
    {
        backing.cli(&["webhooks", "retry", &sqlx::Row::get::<String, _>(&row, 0)]);
    }
    db.close().await;
    let hits = receiver.wait_delivered(4).await;
    let transcript = hits
        .iter()
        .find(|h| h.event_type() == "application.transcription_ready")
        .expect("the transcript is delivered");
    assert!(transcript.body["properties"].is_object(), "{}", transcript.raw);
    assert!(transcript.raw.contains(markers[1]), "{}", transcript.raw);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_encrypt_store_leaves_nothing_half_sealed_and_a_rerun_finishes_it() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let marker = "UPG-KILL-42aa";
    let template = app
        .ended(json!({
            "conversational_context": marker,
            "callback_url": receiver.url,
            "properties": { "enable_recording": true },
        }))
        .await;
    app.wait_for_jobs().await;
    let (template_view, _) = view(&app, &template).await;
    let key = app.key.clone();
    let backing = app.stop().await;
    backing.unseal().await;
    let copies = plaintext_copies(&backing, &template, 3000, "UPG-BULK").await;
    let total = copies.len() as i64 + 1;
    assert_eq!(sealed_of_all(&backing).await, (0, total));

    let encrypt = || {
        let mut command = parley();
        command
            .arg("encrypt-store")
            .args(backing.serve_args())
            .args(["--batch-size", "20"])
            .env_remove("PARLEY_MASTER_KEY");
        command
    };
    let mut first = Running::start(encrypt());
    let line = first
        .wait_for_line(|l| l.starts_with("sealing:") && l.contains('%'))
        .expect("a progress line");
    first.kill();
    let (sealed, all) = sealed_of_all(&backing).await;
    assert!(
        0 < sealed && sealed < all,
        "killed half way ({line:?}): {sealed} of {all} sealed"
    );
    assert_eq!(half_sealed(&backing).await, 0);

    let (status, said) = Running::start(encrypt()).finish();
    assert!(status.success(), "{said}");
    assert!(said.contains("compacted"), "{said}");
    assert_eq!(sealed_of_all(&backing).await, (total, total));
    assert_eq!(half_sealed(&backing).await, 0);
    assert!(blobs_sealed(&backing).await);
    for needle in [marker, "UPG-BULK-0", "UPG-BULK-2999"] {
        assert!(
            !backing.holds(needle).await,
            "{needle} is still stored in plaintext"
        );
    }
    if backing.is_sqlite() {
        assert!(!backing.data_dir().join("parley.sealing").exists());
    }

    // Every copy's context opens from the stored bytes (the API does not show it), and
    // everything reads through the API.
    for (i, id) in copies.iter().enumerate().step_by(250) {
        assert!(backing.readable(id, &format!("UPG-BULK-{i}")).await, "{id}");
    }
    let mut app = TestApp::spawn_on(backing.clone(), |_| {}).await;
    app.key = key;
    assert_eq!(view(&app, &template).await.0, template_view);
    for (i, id) in copies.iter().enumerate().step_by(250) {
        let (conversation, recording) = view(&app, id).await;
        let events: Vec<&Value> = conversation["events"].as_array().unwrap().iter().collect();
        assert_eq!(events.len(), template_view["events"].as_array().unwrap().len());
        assert_eq!(recording.is_some(), i % 50 == 0, "{id}");
    }
    app.stop().await;
}
