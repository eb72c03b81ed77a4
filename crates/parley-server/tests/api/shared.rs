//! Several `parley serve` processes on one shared PostgreSQL + S3 store: each job once, one truth.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Backing, Proc, Receiver, TestApp, create_on, eventually, parley};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_shared_store_run_every_job_once() {
    // One server per embedded store (see `multiprocess.rs`); sharing needs PostgreSQL.
    let backing = Backing::postgres().await;
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    // Both start at once on the empty store: exactly one of them makes the first account's key.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Proc::start(&backing, &[]));
        let b = s.spawn(|| Proc::start(&backing, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.key.is_some() != b.key.is_some(), "one first key, not two");
    let key = a.key.clone().or(b.key.clone()).unwrap();
    let bases = [a.base.clone(), b.base.clone()];

    // Created on one, ended on the other.
    let mut ids = Vec::new();
    for i in 0..8 {
        let body = json!({ "callback_url": receiver.url, "properties": { "enable_recording": true } });
        let id = create_on(&client, &bases[i % 2], &key, body).await;
        ids.push(id);
    }
    for (i, id) in ids.iter().enumerate() {
        let db = backing.db().await;
        eventually("the replica joins", || async {
            db.count("SELECT COUNT(*) FROM event WHERE conversation_id = ? AND event_type = 'system.replica_joined'", id)
                .await
                == 1
        })
        .await;
        let res = client
            .post(format!("{}/v2/conversations/{id}/end", bases[(i + 1) % 2]))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // joined, shutdown, transcript, recording: each conversation's four, each once, in order.
    receiver.wait_delivered(ids.len() * 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = receiver.hits();
    let mut per_conversation: HashMap<String, Vec<String>> = HashMap::new();
    for hit in &hits {
        per_conversation
            .entry(hit.body["conversation_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(hit.event_type().to_owned());
    }
    for id in &ids {
        assert_eq!(
            per_conversation[id],
            [
                "system.replica_joined",
                "system.shutdown",
                "application.transcription_ready",
                "application.recording_ready"
            ],
            "{id}"
        );
    }
    let distinct: std::collections::HashSet<_> = hits.iter().map(|h| h.delivery_id.clone()).collect();
    assert_eq!(distinct.len(), hits.len(), "no delivery was sent twice");

    // Concurrent hard deletes of one conversation through both processes: exactly one 204.
    let target = &ids[0];
    let deletes = (0..20).map(|i| {
        client
            .delete(format!("{}/v2/conversations/{target}?hard=true", bases[i % 2]))
            .header("x-api-key", &key)
            .send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(deletes)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::NO_CONTENT).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::NO_CONTENT || *s == StatusCode::BAD_REQUEST)
    );
    backing.wait_for_jobs().await;
    let db = backing.db().await;
    assert_eq!(db.rows_of(target).await, (0, 0, 0));
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM erasure_receipt WHERE conversation_id = ?",
            target
        )
        .await,
        1
    );
    assert!(backing.blob_keys(target).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_delivery_has_its_work_finished_by_another() {
    let backing = Backing::postgres().await;
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    receiver.hang();
    let doomed = Proc::start(&backing, &[]);
    let key = doomed.key.clone().unwrap();
    let id = create_on(
        &client,
        &doomed.base,
        &key,
        json!({ "callback_url": receiver.url }),
    )
    .await;
    // The doomed process is in the middle of delivering the join when it dies.
    eventually("a delivery attempt is under way", || async {
        backing
            .db()
            .await
            .count(
                "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND locked_until IS NOT NULL",
                &id,
            )
            .await
            == 1
    })
    .await;
    doomed.kill();
    receiver.release();
    let survivor = Proc::start(&backing, &[]);
    // Only a live process can record the delivery as done.
    let db = backing.db().await;
    eventually(
        "the survivor delivers once the dead process's lease expires",
        || async {
            db.count(
                "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND status = 'delivered'",
                &id,
            )
            .await
                >= 1
        },
    )
    .await;
    let hits = receiver.delivered();
    assert!(
        hits.iter()
            .all(|h| h.event_type() == "system.replica_joined" && h.body["conversation_id"] == id.as_str())
    );
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_endpoint_given_only_in_the_environment_is_used() {
    let source = Backing::sqlite();
    let app = TestApp::spawn_on(source.clone(), |_| {}).await;
    let id = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    app.wait_for_jobs().await;
    app.stop().await;
    let target = Backing::postgres().await;
    // The flags name the bucket; only `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` say where it is.
    let mut args = target.migrate_args("to");
    let at = args.iter().position(|a| a == "--s3-endpoint").unwrap();
    let endpoint = args.drain(at..at + 2).nth(1).unwrap();
    let out = parley()
        .arg("migrate-store")
        .args(source.migrate_args("from"))
        .args(&args)
        .env_remove("PARLEY_S3_ENDPOINT")
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(target.has_recording(&id).await);
}
