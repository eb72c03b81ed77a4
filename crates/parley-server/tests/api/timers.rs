//! Call timers end calls with the documented reasons, once, across restarts.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{Backing, Proc, TestApp, create_on, eventually};

async fn shutdown_reason(app: &TestApp, id: &str) -> Option<String> {
    let (_, c) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    if c["status"] != "ended" {
        return None;
    }
    let shutdowns: Vec<&Value> = c["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event_type"] == "system.shutdown")
        .collect();
    assert_eq!(shutdowns.len(), 1, "exactly one shutdown: {c}");
    shutdowns[0]["properties"]["shutdown_reason"]
        .as_str()
        .map(str::to_owned)
}

async fn wait_ended(app: &TestApp, id: &str) -> String {
    eventually("the call ends by itself", || async {
        shutdown_reason(app, id).await.is_some()
    })
    .await;
    shutdown_reason(app, id).await.unwrap()
}

async fn room(app: &TestApp, id: &str, action: &str, query: &str) -> Value {
    let res = app
        .client
        .post(format!("{}/rooms/{id}/{action}{query}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[tokio::test]
async fn max_call_duration_ends_the_call() {
    let app = TestApp::spawn().await;
    let id = app
        .create(json!({ "properties": { "max_call_duration": 1, "enable_recording": true } }))
        .await;
    let participant = room(&app, &id, "join", "").await;
    assert_eq!(participant["participants"], 1);
    assert_eq!(wait_ended(&app, &id).await, "max_call_duration reached");
    // Ending by timer produces the assets like any other end (just after the status flips).
    eventually("the recording is stored", || async {
        app.call(Method::GET, &format!("/v2/conversations/{id}/recording"))
            .await
            .0
            == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn participant_absent_timeout_ends_a_call_nobody_joined() {
    let app = TestApp::spawn().await;
    let nobody = app
        .create(json!({ "properties": { "participant_absent_timeout": 1 } }))
        .await;
    let somebody = app
        .create(json!({ "properties": { "participant_absent_timeout": 1 } }))
        .await;
    room(&app, &somebody, "join", "").await;
    assert_eq!(
        wait_ended(&app, &nobody).await,
        "participant_absent_timeout reached"
    );
    app.wait_for_jobs().await;
    assert_eq!(
        shutdown_reason(&app, &somebody).await,
        None,
        "a call someone joined keeps going"
    );
}

#[tokio::test]
async fn calls_on_external_transports_outlive_the_absent_timeout_but_not_max_duration() {
    let app = TestApp::spawn().await;
    let absent = json!({ "participant_absent_timeout": 1 });
    let here = app.create(json!({ "properties": absent })).await;
    let meeting = app
        .create(json!({ "meeting_url": "https://meet.example/abc-defg-hij", "properties": absent }))
        .await;
    let livekit = app
        .create(json!({ "properties": {
            "participant_absent_timeout": 1,
            "livekit_ws_url": "wss://livekit.example",
            "livekit_room_token": "a-livekit-jwt",
        } }))
        .await;
    let capped = app
        .create(json!({ "properties": {
            "participant_absent_timeout": 1,
            "max_call_duration": 2,
            "livekit_ws_url": "wss://livekit.example",
        } }))
        .await;

    assert_eq!(
        wait_ended(&app, &here).await,
        "participant_absent_timeout reached"
    );
    assert_eq!(wait_ended(&app, &capped).await, "max_call_duration reached");
    app.wait_for_jobs().await;
    for id in [&meeting, &livekit] {
        assert_eq!(
            shutdown_reason(&app, id).await,
            None,
            "nobody could join parley's room for {id}"
        );
        // The replica joins as usual: it is the client's side of the call that is elsewhere.
        app.wait_joined(id).await;
    }
}

#[tokio::test]
async fn participant_left_timeout_ends_an_emptied_call_unless_someone_returns() {
    let app = TestApp::spawn().await;
    let props = json!({ "properties": { "participant_left_timeout": 1 } });
    let left = app.create(props.clone()).await;
    let returned = app.create(props).await;
    for id in [&left, &returned] {
        let me = room(&app, id, "join", "").await;
        let gone = room(
            &app,
            id,
            "leave",
            &format!("?participant_id={}", me["participant_id"].as_str().unwrap()),
        )
        .await;
        assert_eq!(gone["participants"], 0);
    }
    room(&app, &returned, "join", "").await;
    assert_eq!(wait_ended(&app, &left).await, "participant_left_timeout reached");
    app.wait_for_jobs().await;
    assert_eq!(shutdown_reason(&app, &returned).await, None);
}

#[tokio::test]
async fn a_replica_that_cannot_join_ends_the_call() {
    let app = TestApp::spawn_with(|c| c.unjoinable_replicas = vec!["r5dc7c7d0bcb".into()]).await;
    let id = app.create(json!({ "replica_id": "r5dc7c7d0bcb" })).await;
    assert_eq!(
        wait_ended(&app, &id).await,
        "bot_could_not_join_meeting_it_was_probably_ended"
    );
    let db = app.db().await;
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM event WHERE conversation_id = ? AND event_type = 'system.replica_joined'",
            &id
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_timer_survives_a_restart_and_fires_once() {
    let dir = Backing::fresh().await;
    let client = reqwest::Client::new();
    let first = Proc::start(&dir, &[]);
    let key = first.key.clone().unwrap();
    let create = |props: Value| create_on(&client, &first.base, &key, json!({ "properties": props }));
    let long = create(json!({ "max_call_duration": 2, "participant_absent_timeout": 0 })).await;
    let absent = create(json!({ "participant_absent_timeout": 2 })).await;
    let left = create(json!({ "participant_left_timeout": 2 })).await;
    let joined: Value = client
        .post(format!("{}/rooms/{left}/join", first.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let participant = joined["participant_id"].as_str().unwrap();
    let res = client
        .post(format!(
            "{}/rooms/{left}/leave?participant_id={participant}",
            first.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    first.kill();
    // Down past every deadline: the timers are due when the server comes back.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let expected = [
        (&long, "max_call_duration reached"),
        (&absent, "participant_absent_timeout reached"),
        (&left, "participant_left_timeout reached"),
    ];
    let db = dir.db().await;
    let second = Proc::start(&dir, &[]);
    for (id, _) in expected {
        eventually("the timer fires after the restart", || async {
            db.count(
                "SELECT COUNT(*) FROM conversation WHERE conversation_id = ? AND status = 'ended'",
                id,
            )
            .await
                == 1
        })
        .await;
    }
    drop(second);
    // And after another restart: nothing fires twice.
    let third = Proc::start(&dir, &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, reason) in expected {
        let rows = db
            .rows(
                "SELECT properties FROM event WHERE conversation_id = ? AND event_type = 'system.shutdown'",
                &[id],
            )
            .await;
        let reasons: Vec<String> = rows
            .iter()
            .map(|r| {
                let props: Value = serde_json::from_str(&r.get::<String, _>(0)).unwrap();
                props["shutdown_reason"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(reasons, [reason], "{id}");
    }
    drop(third);
}
