//! Crashes: a hard delete (of a conversation or a persona) acknowledged before a kill is finished
//! after the restart, and never half done; and `parley verify` after every kill and restart finds
//! only what a kill may leave.
//!
//! What a kill may leave (README, `parley verify`): purges still to run (`purge-pending`: a delete's
//! rows went in its transaction, its key and blobs go with the purge that a restarted server or
//! `verify --repair` runs), and the key of a create in flight (`orphan-key`, or `recent-orphan-key`
//! within the grace period on a shared key store), which `verify --repair` destroys. Nothing else.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;

use crate::support::verify::Verified;
use crate::support::{Backing, Proc, create_on};

/// `parley verify` right after a kill, with no server running: only work in progress, of the kinds
/// given, and nothing that fails the check.
async fn verify_after_kill(dir: &Backing, may_leave: &[&str]) -> Verified {
    let verified = dir.verify(&[]).await;
    for line in verified.findings() {
        let kind = line.split_whitespace().next().unwrap();
        assert!(may_leave.contains(&kind), "a kill left {line}\n{verified}");
    }
    verified
}

/// `parley verify` once a restarted server has drained its jobs: on an embedded state with the
/// server stopped (it holds the database), on a shared one beside it. Nothing is left to find.
async fn verify_after_restart(dir: &Backing, server: Proc) {
    if dir.is_sqlite() {
        server.kill();
    }
    let verified = dir.assert_verifies_clean().await;
    assert!(verified.findings().is_empty(), "{verified}");
}

/// Sends a DELETE of `path(id)` for every id at once, kills the server `kill_after_ms` later, and
/// returns the ids whose delete was acknowledged (204) before the kill.
async fn delete_then_kill(
    client: &reqwest::Client,
    server: Proc,
    key: &str,
    ids: &[String],
    kill_after_ms: u64,
    path: impl Fn(&str) -> String,
) -> Vec<String> {
    let deletes: Vec<_> = ids
        .iter()
        .map(|id| {
            let req = client
                .delete(format!("{}{}", server.base, path(id)))
                .header("x-api-key", key);
            tokio::spawn(async move { req.send().await.map(|r| r.status()).ok() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
    server.kill();
    let mut acknowledged = Vec::new();
    for (id, task) in ids.iter().zip(deletes) {
        if task.await.unwrap() == Some(StatusCode::NO_CONTENT) {
            acknowledged.push(id.clone());
        }
    }
    acknowledged
}

async fn create_ended(client: &reqwest::Client, base: &str, key: &str, marker: &str) -> String {
    let body = json!({ "conversational_context": marker, "properties": { "enable_recording": true } });
    let id = create_on(client, base, key, body).await;
    let res = client
        .post(format!("{base}/v2/conversations/{id}/end"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_cut_short_by_a_kill_is_finished_after_restart() {
    let dir = Backing::fresh().await;
    let client = reqwest::Client::new();
    let marker = "MARKER-crash-91c2";

    let first = Proc::start(&dir, &["--max-concurrent-conversations", "100"]);
    let key = first.key.clone().unwrap();
    let id = create_ended(&client, &first.base, &key, marker).await;
    assert!(dir.has_recording(&id).await);
    first.kill();
    let verified = verify_after_kill(&dir, &[]).await;
    verified.assert_code(0);

    // A process that runs no jobs acknowledges the delete and leaves the purge queued: a kill now
    // is a kill between the 204 and the purge.
    let api_only = Proc::start(&dir, &["--run-jobs", "false"]);
    let res = client
        .delete(format!("{}/v2/conversations/{id}?hard=true", api_only.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let db = dir.db().await;
    assert_eq!(
        db.rows_of(&id).await,
        (0, 0, 0),
        "rows go in the delete's own transaction"
    );
    let purges: i64 = db
        .count(
            "SELECT COUNT(*) FROM job WHERE kind = 'purge' AND conversation_id = ?",
            &id,
        )
        .await;
    assert_eq!(purges, 1);
    assert!(dir.has_recording(&id).await, "the blob waits for the purge");
    db.close().await;
    api_only.kill();
    // The key went before the 204; the blob waits for the purge, which is work in progress.
    let verified = verify_after_kill(&dir, &["purge-pending"]).await;
    verified.assert_code(0);
    let pending = verified.of("purge-pending");
    assert_eq!(pending.len(), 1, "{verified}");
    assert!(
        pending[0].starts_with(&format!("purge-pending {id} ")),
        "{verified}"
    );
    assert!(pending[0].contains(" key=destroyed"), "{verified}");

    let restarted = Proc::start(&dir, &[]);
    dir.wait_for_jobs().await;
    assert!(!dir.has_recording(&id).await);
    assert!(!dir.readable(&id, marker).await);
    verify_after_restart(&dir, restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_moment_of_hard_deletes_leaves_every_conversation_whole_or_gone() {
    let client = reqwest::Client::new();
    for (round, kill_after_ms) in [5u64, 40, 120].into_iter().enumerate() {
        let dir = Backing::fresh().await;
        let server = Proc::start(&dir, &["--max-concurrent-conversations", "1000"]);
        let key = server.key.clone().unwrap();
        let mut ids = Vec::new();
        for i in 0..24 {
            ids.push(create_ended(&client, &server.base, &key, &format!("MARK-{round}-{i}-x")).await);
        }
        let (doomed, bystanders) = ids.split_at(16);

        let acknowledged = delete_then_kill(&client, server, &key, doomed, kill_after_ms, |id| {
            format!("/v2/conversations/{id}?hard=true")
        })
        .await;
        verify_after_kill(&dir, &["purge-pending"]).await.assert_code(0);

        let restarted = Proc::start(&dir, &[]);
        dir.wait_for_jobs().await;
        let db = dir.db().await;
        for (i, id) in ids.iter().enumerate() {
            let (conversations, events, assets) = db.rows_of(id).await;
            let receipt: i64 = db
                .count(
                    "SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = ?",
                    id,
                )
                .await;
            let blob = dir.has_recording(id).await;
            let marker = dir.readable(id, &format!("MARK-{round}-{i}-x")).await;
            let whole = conversations == 1 && events >= 3 && assets == 1 && blob && receipt == 0 && marker;
            let gone = conversations == 0 && events == 0 && assets == 0 && !blob && receipt == 1 && !marker;
            assert!(
                whole || gone,
                "round {round}: {id} is half deleted: rows {conversations}/{events}/{assets}, blob {blob}, receipt {receipt}, marker {marker}"
            );
            if acknowledged.contains(id) {
                assert!(gone, "round {round}: {id} was acknowledged but not erased");
            }
            if bystanders.contains(id) {
                assert!(whole, "round {round}: bystander {id} lost data");
            }
        }
        db.close().await;
        verify_after_restart(&dir, restarted).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_creates_leaves_at_most_orphan_keys_which_repair_destroys() {
    let client = reqwest::Client::new();
    for kill_after_ms in [5u64, 30, 80] {
        let dir = Backing::fresh().await;
        let server = Proc::start(&dir, &["--max-concurrent-conversations", "1000"]);
        let key = server.key.clone().unwrap();
        // Already there: the state holds a conversation with its key, as any in use does.
        let bystander = create_ended(&client, &server.base, &key, "BYSTANDER-c4e1").await;
        let creates: Vec<_> = (0..32)
            .map(|i| {
                let req = client
                    .post(format!("{}/v2/conversations", server.base))
                    .header("x-api-key", &key)
                    .json(&json!({ "conversation_name": format!("created {i}") }));
                tokio::spawn(async move {
                    let res = req.send().await.ok().filter(|r| r.status() == StatusCode::OK)?;
                    let body: serde_json::Value = res.json().await.ok()?;
                    Some((body["conversation_id"].as_str()?.to_owned(), i))
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill();
        let mut created = Vec::new();
        for task in creates {
            created.extend(task.await.unwrap());
        }

        // A create cut between its key and its row leaves the key: the check fails until a
        // repair destroys it (on a shared key store only once it is older than the grace period).
        verify_after_kill(&dir, &["orphan-key", "recent-orphan-key"]).await;
        dir.verify(&["--repair", "--grace", "0s"]).await.assert_code(0);
        let verified = dir.assert_verifies_clean().await;
        assert!(verified.findings().is_empty(), "{verified}");

        let restarted = Proc::start(&dir, &[]);
        for (id, i) in &created {
            let res = client
                .get(format!("{}/v2/conversations/{id}", restarted.base))
                .header("x-api-key", &key)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{id}");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["conversation_name"], format!("created {i}"));
        }
        assert!(dir.readable(&bystander, "BYSTANDER-c4e1").await);
        dir.wait_for_jobs().await;
        verify_after_restart(&dir, restarted).await;
    }
}

/// What the load test made: a conversation, the marker in each of its content fields, and
/// whether it has a recording.
struct Loaded {
    id: String,
    marker: String,
    recording: bool,
}

/// Every marker of the load test starts with this, so one pass over the stored bytes finds any.
const LOAD: &str = "LOAD-";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_conversations_half_erased_through_kills_keep_the_kept_and_leave_nothing_of_the_erased() {
    let started = std::time::Instant::now();
    let dir = Backing::fresh().await;
    let client = reqwest::Client::new();
    let mut server = Proc::start(&dir, &["--max-concurrent-conversations", "10000"]);
    let key = server.key.clone().unwrap();

    let base = server.base.clone();
    let made: Vec<Loaded> = stream::iter(0..1000)
        .map(|i| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            async move {
                let marker = format!("{LOAD}{i:04}-{:08x}", rand::random::<u32>());
                let recording = i % 3 == 0;
                let body = json!({
                    "conversation_name": format!("{marker} name"),
                    "conversational_context": format!("context {marker}"),
                    "custom_greeting": format!("hello {marker}"),
                    "properties": { "enable_recording": recording },
                });
                let id = create_on(&client, &base, &key, body).await;
                let res = client
                    .post(format!("{base}/v2/conversations/{id}/end"))
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                Loaded {
                    id,
                    marker,
                    recording,
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    dir.wait_for_jobs().await;
    eprintln!("load: 1000 created and ended in {:?}", started.elapsed());
    let key_ids: HashMap<String, String> = dir
        .data_keys()
        .await
        .into_iter()
        .map(|(id, k)| (id, k.key_id))
        .collect();
    assert_eq!(key_ids.len(), 1000);
    let (doomed, kept): (Vec<&Loaded>, Vec<&Loaded>) =
        made.iter()
            .enumerate()
            .fold((Vec::new(), Vec::new()), |(mut doomed, mut kept), (i, m)| {
                if i % 2 == 0 {
                    doomed.push(m)
                } else {
                    kept.push(m)
                }
                (doomed, kept)
            });
    assert!(doomed.iter().any(|m| m.recording) && kept.iter().any(|m| m.recording));

    // Hard deletes at concurrency 8, the server killed (-9) three times on the way, each time
    // after so many deletes were acknowledged, and restarted; a delete cut off is sent again to
    // the next server (which answers 400 if the cut-off one had erased it).
    let queue = Arc::new(Mutex::new(
        doomed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
    ));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let gone_before = Arc::new(Mutex::new(Vec::new()));
    let kills = [40, 160, 300];
    for phase in 0..=kills.len() {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (client, base, key) = (client.clone(), server.base.clone(), key.clone());
                let (queue, acknowledged, gone_before) =
                    (queue.clone(), acknowledged.clone(), gone_before.clone());
                tokio::spawn(async move {
                    loop {
                        let Some(id) = queue.lock().unwrap().pop() else {
                            break;
                        };
                        let res = client
                            .delete(format!("{base}/v2/conversations/{id}?hard=true"))
                            .header("x-api-key", &key)
                            .send()
                            .await;
                        match res.map(|r| r.status()) {
                            Ok(StatusCode::NO_CONTENT) => acknowledged.lock().unwrap().push(id),
                            Ok(StatusCode::BAD_REQUEST) => gone_before.lock().unwrap().push(id),
                            Ok(other) => panic!("deleting {id}: {other}"),
                            // The server is gone: the next one gets it.
                            Err(_) => {
                                queue.lock().unwrap().push(id);
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        let Some(&kill_at) = kills.get(phase) else {
            for worker in workers {
                worker.await.unwrap();
            }
            break;
        };
        while acknowledged.lock().unwrap().len() < kill_at {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        server.kill();
        for worker in workers {
            worker.await.unwrap();
        }
        assert!(
            !queue.lock().unwrap().is_empty(),
            "the kill came after the deletes"
        );
        verify_after_kill(&dir, &["purge-pending"]).await.assert_code(0);
        server = Proc::start(&dir, &[]);
    }
    dir.wait_for_jobs().await;
    eprintln!("load: 500 erased through 3 kills by {:?}", started.elapsed());
    let (acknowledged, gone_before) = (
        acknowledged.lock().unwrap().clone(),
        gone_before.lock().unwrap().clone(),
    );
    assert_eq!(acknowledged.len() + gone_before.len(), doomed.len());
    assert!(acknowledged.len() >= kills[2]);

    // Nothing of an erased conversation can be read: no marker in plaintext anywhere, nothing
    // opens under the keys that remain, its key id (as its receipt recorded it) is gone from the
    // key store's bytes, and it has no rows or blobs.
    let pairs: Vec<(&str, &str)> = doomed
        .iter()
        .map(|m| (m.id.as_str(), m.marker.as_str()))
        .collect();
    assert_eq!(dir.readable_among(LOAD, &pairs).await, Vec::<String>::new());
    let db = dir.db().await;
    let receipts: HashMap<String, (Option<String>, Option<i64>)> = db
        .rows(
            "SELECT conversation_id, key_id, key_destroyed_at FROM erasure_receipt",
            &[],
        )
        .await
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let rows: HashSet<String> = db
        .rows("SELECT conversation_id FROM conversation", &[])
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    db.close().await;
    for m in &doomed {
        let (key_id, destroyed_at) = receipts
            .get(&m.id)
            .unwrap_or_else(|| panic!("{} has no receipt", m.id));
        assert_eq!(key_id.as_ref(), Some(&key_ids[&m.id]), "the receipt of {}", m.id);
        assert!(destroyed_at.is_some(), "the receipt of {}", m.id);
        assert!(!rows.contains(&m.id), "{} has a row", m.id);
    }
    let doomed_keys: Vec<&str> = doomed.iter().map(|m| key_ids[&m.id].as_str()).collect();
    assert_eq!(dir.key_store_mentioning(&doomed_keys).await, Vec::<String>::new());
    let left = dir
        .blobs()
        .list_prefix(parley_blobs::BlobKey::ROOT)
        .await
        .unwrap();
    let with_blobs: HashSet<&str> = left.iter().filter_map(|(k, _)| k.split('/').nth(1)).collect();
    assert!(doomed.iter().all(|m| !with_blobs.contains(m.id.as_str())));

    // Every kept conversation reads whole through the API: its three fields and its recording.
    let base = server.base.clone();
    stream::iter(&kept)
        .for_each_concurrent(8, |m| {
            let (client, base, key) = (client.clone(), base.clone(), key.clone());
            async move {
                let res = client
                    .get(format!("{base}/v2/conversations/{}?verbose=true", m.id))
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::OK, "{}", m.id);
                let body: serde_json::Value = res.json().await.unwrap();
                assert_eq!(body["conversation_name"], format!("{} name", m.marker));
                // The context and greeting are not fields of a read; the transcript speaks them.
                let text = body["events"].to_string();
                assert!(text.contains(&format!("context {}", m.marker)), "{}", m.id);
                assert!(text.contains(&format!("hello {}", m.marker)), "{}", m.id);
                if m.recording {
                    let res = client
                        .get(format!("{base}/v2/conversations/{}/recording", m.id))
                        .header("x-api-key", &key)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), StatusCode::OK, "the recording of {}", m.id);
                    assert!(res.bytes().await.unwrap().starts_with(b"RIFF"));
                }
            }
        })
        .await;
    assert!(kept.iter().all(|m| rows.contains(&m.id)));
    verify_after_restart(&dir, server).await;
    eprintln!("load: checked by {:?}", started.elapsed());
}

/// Deleting personas, killed at any moment: each is whole or gone, an acknowledged one is gone
/// (row, key and content), the others lose nothing, and the restart finishes every purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_moment_of_persona_deletes_leaves_each_whole_or_gone() {
    let client = reqwest::Client::new();
    for (round, kill_after_ms) in [30u64, 60, 90].into_iter().enumerate() {
        let dir = Backing::fresh().await;
        let server = Proc::start(&dir, &[]);
        let key = server.key.clone().unwrap();
        let marker = |i: usize| format!("PERSONA-MARK-{round}-{i}-x");
        let mut ids = Vec::new();
        for i in 0..24 {
            let made: serde_json::Value = client
                .post(format!("{}/v2/personas", server.base))
                .header("x-api-key", &key)
                .json(&json!({ "persona_name": marker(i), "system_prompt": format!("Say {}", marker(i)) }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ids.push(made["persona_id"].as_str().unwrap().to_owned());
        }
        let db = dir.db().await;
        let mut row_ids = Vec::new();
        for id in &ids {
            row_ids.push(
                db.text("SELECT row_id FROM resource WHERE resource_id = ?", id)
                    .await,
            );
        }
        db.close().await;
        let (doomed, bystanders) = ids.split_at(16);

        let acknowledged = delete_then_kill(&client, server, &key, doomed, kill_after_ms, |id| {
            format!("/v2/personas/{id}")
        })
        .await;
        // A purge the kill cut short is work in progress, not a finding.
        verify_after_kill(&dir, &[]).await.assert_code(0);

        let restarted = Proc::start(&dir, &[]);
        let db = dir.db().await;
        crate::support::eventually("every resource purge finishes", || async {
            db.scalar("SELECT COUNT(*) FROM resource_purge").await == 0
        })
        .await;
        let keys = dir.data_keys().await;
        for (i, (id, row_id)) in ids.iter().zip(&row_ids).enumerate() {
            let rows = db
                .count("SELECT COUNT(*) FROM resource WHERE resource_id = ?", id)
                .await;
            let keyed = keys.contains_key(row_id);
            let (status, body) = {
                let r = client
                    .get(format!("{}/v2/personas/{id}", restarted.base))
                    .header("x-api-key", &key)
                    .send()
                    .await
                    .unwrap();
                (r.status(), r.text().await.unwrap())
            };
            let readable = status == StatusCode::OK && body.contains(&marker(i));
            let whole = rows == 1 && keyed && readable;
            let gone = rows == 0 && !keyed && status == StatusCode::BAD_REQUEST;
            assert!(
                whole || gone,
                "round {round}: {id} is half deleted: rows {rows}, key {keyed}, read {status} {body}"
            );
            assert!(
                !dir.holds(&marker(i)).await,
                "round {round}: {id}'s content is in plaintext"
            );
            if acknowledged.contains(id) {
                assert!(gone, "round {round}: {id} was acknowledged but not erased");
            }
            if bystanders.contains(id) {
                assert!(whole, "round {round}: bystander {id} lost data");
            }
        }
        db.close().await;
        verify_after_restart(&dir, restarted).await;
    }
}
