//! Crashes: a hard delete acknowledged before a kill is finished after the restart, and never half done.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backing, Proc, create_on};

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

    let restarted = Proc::start(&dir, &[]);
    dir.wait_for_jobs().await;
    assert!(!dir.has_recording(&id).await);
    assert!(!dir.readable(&id, marker).await);
    drop(restarted);
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

        let deletes: Vec<_> = doomed
            .iter()
            .map(|id| {
                let req = client
                    .delete(format!("{}/v2/conversations/{id}?hard=true", server.base))
                    .header("x-api-key", &key);
                tokio::spawn(async move { req.send().await.map(|r| r.status()).ok() })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        server.kill();
        let mut acknowledged = Vec::new();
        for (id, task) in doomed.iter().zip(deletes) {
            if task.await.unwrap() == Some(StatusCode::NO_CONTENT) {
                acknowledged.push(id.clone());
            }
        }

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
        drop(restarted);
    }
}
