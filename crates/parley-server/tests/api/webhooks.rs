//! Webhook delivery to `callback_url`: envelope, order, retries, durability and erasure.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backing, Proc, Receiver, TestApp, create_on, eventually};

const ALL_EVENTS: [&str; 5] = [
    "system.replica_joined",
    "system.shutdown",
    "application.transcription_ready",
    "application.perception_analysis",
    "application.recording_ready",
];

fn types(hits: &[crate::support::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.event_type()).collect()
}

#[tokio::test]
async fn every_event_arrives_once_in_order_in_the_documented_envelope() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    let id = app
        .ended(json!({
            "callback_url": receiver.url,
            "persona_id": "pdac61133ac5",
            "properties": { "enable_recording": true },
        }))
        .await;
    let hits = receiver.wait_delivered(5).await;
    assert_eq!(types(&hits), ALL_EVENTS);
    for hit in &hits {
        let mut keys: Vec<&str> = hit.body.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "conversation_id",
                "event_type",
                "message_type",
                "properties",
                "timestamp",
                "webhook_url"
            ]
        );
        assert_eq!(hit.body["conversation_id"], id.as_str());
        assert_eq!(hit.body["webhook_url"], receiver.url.as_str());
        let system = hit.event_type().starts_with("system.");
        assert_eq!(
            hit.body["message_type"],
            if system { "system" } else { "application" }
        );
        assert!(
            hit.delivery_id.starts_with('d') && hit.delivery_id.len() == 17,
            "{}",
            hit.delivery_id
        );
        assert!(hit.signature.is_none(), "unsigned without an account secret");
        assert_eq!(hit.body["properties"]["replica_id"], "r90bbd427f71");
    }
    assert_eq!(
        hits[1].body["properties"]["shutdown_reason"],
        "end_conversation_endpoint_hit"
    );
    assert!(hits[2].body["properties"]["transcript"][0]["role"] == "system");
    assert!(
        hits[3].body["properties"]["analysis"]
            .as_str()
            .unwrap()
            .contains("Perception")
    );
    // The recording event points at parley's own recording URL, which serves the file.
    let uri = hits[4].body["properties"]["storage_uri"].as_str().unwrap();
    assert_eq!(uri, format!("{}/v2/conversations/{id}/recording", app.base));
    let wav = app
        .client
        .get(uri)
        .header("x-api-key", &app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(wav.status(), StatusCode::OK);
    assert_eq!(&wav.bytes().await.unwrap()[..4], b"RIFF");
    // What verbose shows is what was delivered.
    let (_, verbose) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    let delivered: Vec<_> = hits.iter().map(|h| h.body.clone()).collect();
    assert_eq!(verbose["events"].as_array().unwrap(), &delivered);

    let ids: std::collections::HashSet<_> = hits.iter().map(|h| &h.delivery_id).collect();
    assert_eq!(ids.len(), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.hits().len(), 5, "nothing is sent twice");
    let db = app.db().await;
    let done = db
        .count(
            "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND status = 'delivered'",
            &id,
        )
        .await;
    assert_eq!(done, 5);
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_gets_the_same_delivery_then_the_rest_in_order() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start().await;
    receiver.answer(&[500, 503, 500]);
    let id = app.create(json!({ "callback_url": receiver.url })).await;
    eventually("the first attempt fails", || async {
        !receiver.hits().is_empty()
    })
    .await;
    app.call(Method::POST, &format!("/v2/conversations/{id}/end"))
        .await;

    let delivered = receiver.wait_delivered(3).await;
    assert_eq!(
        types(&delivered),
        [
            "system.replica_joined",
            "system.shutdown",
            "application.transcription_ready"
        ]
    );
    let hits = receiver.hits();
    let joined: Vec<_> = hits.iter().take(4).collect();
    assert!(
        joined.iter().all(|h| h.event_type() == "system.replica_joined"),
        "{:?}",
        types(&hits)
    );
    assert!(
        joined.iter().all(|h| h.delivery_id == joined[0].delivery_id),
        "one delivery id across retries"
    );
    assert_eq!(
        joined.iter().map(|h| h.status).collect::<Vec<_>>(),
        [500, 503, 500, 200]
    );
    assert_eq!(hits.len(), 6, "each later event once: {:?}", types(&hits));
}

#[tokio::test]
async fn a_receiver_that_is_down_for_a_while_gets_everything_when_it_comes_up() {
    let app = TestApp::spawn().await;
    let port = Receiver::reserve_port().await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let id = app
        .ended(json!({ "callback_url": url, "properties": { "enable_recording": true } }))
        .await;
    let db = app.db().await;
    eventually("a few attempts are refused", || async {
        let attempts: i64 = db
            .count(
                "SELECT COALESCE(MAX(attempts), 0) FROM delivery WHERE conversation_id = ?",
                &id,
            )
            .await;
        attempts >= 3
    })
    .await;
    let error: String = db
        .text(
            "SELECT last_error FROM delivery WHERE conversation_id = ? AND attempts > 0",
            &id,
        )
        .await;
    assert_eq!(error, "connection failed");

    let receiver = Receiver::start_on(port).await;
    let hits = receiver.wait_delivered(4).await;
    assert_eq!(
        types(&hits),
        [
            "system.replica_joined",
            "system.shutdown",
            "application.transcription_ready",
            "application.recording_ready"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_before_delivering_delivers_after_restart() {
    let dir = Backing::fresh().await;
    let client = reqwest::Client::new();
    let receiver = Receiver::start().await;
    // A process that runs no background work commits events and deliveries but never sends them:
    // killing it is a kill between the event and its delivery.
    let first = Proc::start(&dir, &["--run-jobs", "false"]);
    let key = first.key.clone().unwrap();
    let body = json!({ "callback_url": receiver.url, "properties": { "enable_recording": true } });
    let id = create_on(&client, &first.base, &key, body).await;
    let res = client
        .post(format!("{}/v2/conversations/{id}/end", first.base))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let db = dir.db().await;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND status = 'pending'",
            &id
        )
        .await,
        1
    );
    first.kill();
    assert!(receiver.hits().is_empty());

    let second = Proc::start(&dir, &[]);
    let hits = receiver.wait_delivered(3).await;
    assert_eq!(
        types(&hits),
        [
            "system.shutdown",
            "application.transcription_ready",
            "application.recording_ready"
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.hits().len(), 3, "none twice");
    drop(second);
}

#[tokio::test]
async fn a_hard_delete_before_delivery_sends_no_content_but_still_the_shutdown() {
    let app = TestApp::spawn().await;
    let port = Receiver::reserve_port().await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let marker = "MARKER-webhook-6e1f";
    // Ended while the receiver is down: transcript and recording wait behind the first event.
    let ended = app
        .ended(json!({ "callback_url": url, "conversational_context": marker, "properties": { "enable_recording": true } }))
        .await;
    // A live call deleted while the receiver is down: its shutdown must still be sent.
    let live = app.create(json!({ "callback_url": url })).await;
    app.wait_joined(&live).await;
    let db = app.db().await;
    assert!(
        db.count("SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND CAST(carries_content AS INTEGER) = 1",
            &ended
        )
        .await
            >= 2
    );
    assert!(app.backing.readable(&ended, marker).await);
    assert!(
        !app.backing.holds(marker).await,
        "a queued body is stored in plaintext"
    );

    for id in [&ended, &live] {
        let (status, _) = app
            .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    app.wait_for_jobs().await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND CAST(carries_content AS INTEGER) = 1",
            &ended
        )
        .await,
        0
    );
    assert!(
        !app.backing.readable(&ended, marker).await,
        "the queued transcript is erased too"
    );

    let receiver = Receiver::start_on(port).await;
    let hits = receiver.wait_delivered(4).await;
    let of = |id: &str| -> Vec<String> {
        hits.iter()
            .filter(|h| h.body["conversation_id"] == id)
            .map(|h| h.event_type().to_owned())
            .collect()
    };
    assert_eq!(of(&ended), ["system.replica_joined", "system.shutdown"]);
    assert_eq!(of(&live), ["system.replica_joined", "system.shutdown"]);
    let live_shutdown = hits
        .iter()
        .find(|h| h.body["conversation_id"] == live.as_str() && h.event_type() == "system.shutdown")
        .unwrap();
    assert_eq!(
        live_shutdown.body["properties"]["shutdown_reason"],
        "conversation_deleted"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver
            .hits()
            .iter()
            .all(|h| !h.event_type().starts_with("application."))
    );
    // Once sent, nothing of the erased conversations is kept.
    eventually(
        "sent deliveries of erased conversations are forgotten",
        || async {
            db.count("SELECT COUNT(*) FROM delivery WHERE conversation_id = ?", &ended)
                .await
                == 0
                && db
                    .count("SELECT COUNT(*) FROM delivery WHERE conversation_id = ?", &live)
                    .await
                    == 0
        },
    )
    .await;
}

#[tokio::test]
async fn a_hung_receiver_blocks_neither_the_api_nor_other_receivers() {
    let app = TestApp::spawn_with(|c| c.webhook_timeout = Duration::from_secs(30)).await;
    let stuck = Receiver::start().await;
    stuck.hang();
    let healthy = Receiver::start().await;
    let a = app.ended(json!({ "callback_url": stuck.url })).await;
    let b = app.ended(json!({ "callback_url": healthy.url })).await;
    // The healthy receiver gets everything while the stuck one still holds its first request.
    let hits = healthy.wait_delivered(3).await;
    assert!(hits.iter().all(|h| h.body["conversation_id"] == b.as_str()));
    assert!(
        stuck.hits().is_empty(),
        "the stuck receiver has answered nothing yet"
    );
    let (status, _) = app.call(Method::GET, &format!("/v2/conversations/{a}")).await;
    assert_eq!(status, StatusCode::OK);
    stuck.release();
    stuck.wait_delivered(3).await;
}

#[tokio::test]
async fn deliveries_are_signed_with_the_account_secret() {
    let app = TestApp::spawn().await;
    let out = app.backing.cli(&["webhooks", "secret", "--account", "default"]);
    let secret = out.trim().to_owned();
    assert!(secret.starts_with("whsec_"));
    let receiver = Receiver::start().await;
    app.ended(json!({ "callback_url": receiver.url })).await;
    for hit in receiver.wait_delivered(3).await {
        let header = hit.signature.clone().expect("a signature header");
        let (t, v1) = header.split_once(',').unwrap();
        let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
        let v1 = v1.strip_prefix("v1=").unwrap();
        assert_eq!(v1, parley_server::webhook::sign(&secret, t, &hit.raw));
        assert_ne!(v1, parley_server::webhook::sign("whsec_wrong", t, &hit.raw));
    }
}

#[tokio::test]
async fn failed_deliveries_are_given_up_listed_and_retried_by_the_operator() {
    let app = TestApp::spawn_with(|c| c.webhook_retry_for = Duration::from_millis(300)).await;
    let receiver = Receiver::start().await;
    receiver.answer(&[500; 64]);
    let id = app.create(json!({ "callback_url": receiver.url })).await;
    let db = app.db().await;
    eventually("the delivery is given up", || async {
        db.count(
            "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND status = 'failed'",
            &id,
        )
        .await
            == 1
    })
    .await;

    let out = app.backing.cli(&["webhooks", "list", "--failed"]);
    let listing = out;
    let line = listing
        .lines()
        .find(|l| l.contains(&id))
        .expect("the failed delivery is listed");
    assert_eq!(line.split_whitespace().nth(3), Some("failed"), "{line}");
    assert!(
        line.contains("system.replica_joined") && line.contains("receiver answered HTTP 500"),
        "{line}"
    );
    let delivery_id = line.split_whitespace().next().unwrap().to_owned();

    // The receiver is fixed.
    receiver.clear_script();
    app.backing.cli(&["webhooks", "retry", &delivery_id]);
    eventually("the retried delivery lands", || async {
        receiver.delivered().iter().any(|h| h.delivery_id == delivery_id)
    })
    .await;
    // The receiver has the request before parley has its answer and records the delivery.
    eventually("the listing shows it delivered", || async {
        app.backing
            .cli(&["webhooks", "list", "--conversation", &id])
            .lines()
            .any(|l| l.contains(&delivery_id) && l.contains("delivered"))
    })
    .await;
}

#[tokio::test]
async fn the_failed_list_shows_deliveries_waiting_to_retry_beside_those_given_up() {
    // Retried for a day, an hour apart: after its first failure the delivery waits.
    let app = TestApp::spawn_with(|c| c.webhook_retry_base = Duration::from_secs(3600)).await;
    let down = Receiver::start().await;
    down.answer(&[503; 64]);
    let up = Receiver::start().await;
    let waiting = app.create(json!({ "callback_url": down.url })).await;
    let fine = app.create(json!({ "callback_url": up.url })).await;
    up.wait_delivered(1).await;
    let db = app.db().await;
    eventually("the first attempt fails", || async {
        db.count(
            "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND last_error IS NOT NULL",
            &waiting,
        )
        .await
            == 1
    })
    .await;

    let listing = app.backing.cli(&["webhooks", "list", "--failed"]);
    let line = listing
        .lines()
        .find(|l| l.contains(&waiting))
        .unwrap_or_else(|| panic!("a delivery waiting to retry is listed: {listing}"));
    let columns: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(columns[3], "retrying", "{line}");
    assert_eq!(columns[4], "1", "one attempt so far: {line}");
    assert!(line.contains("receiver answered HTTP 503"), "{line}");
    assert!(!listing.contains(&fine), "a delivered one is not: {listing}");
}

#[tokio::test]
async fn shared_deployments_refuse_private_callback_urls() {
    let app = TestApp::spawn_with(|c| c.webhook_deny_private = true).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.8/hook",
        "http://[::1]/hook",
    ] {
        let (status, body) = crate::support::send(
            app.req(Method::POST, "/v2/conversations")
                .json(&json!({ "callback_url": url })),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("Invalid callback_url:") && error.contains("non-public"),
            "{url}: {error}"
        );
    }
    let db = app.db().await;
    let n: i64 = db.scalar("SELECT COUNT(*) FROM conversation").await;
    assert_eq!(n, 0);
}
