//! The room at `conversation_url` over plain HTTP: the page's status and the state it renders.

#[cfg(feature = "e2e")]
pub mod browser;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, eventually, send};

/// Status and body text of a GET without an API key, as a browser would send it.
async fn open(app: &TestApp, path: &str) -> (StatusCode, String, String) {
    let res = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let content_type = res.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, res.text().await.unwrap())
}

async fn state(app: &TestApp, id: &str) -> Value {
    let (status, content_type, body) = open(app, &format!("/rooms/{id}/state")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(content_type.starts_with("application/json"), "{content_type}");
    serde_json::from_str(&body).unwrap()
}

async fn join(app: &TestApp, id: &str) -> Value {
    let res = app
        .client
        .post(format!("{}/rooms/{id}/join", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

async fn wait_state(app: &TestApp, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(what, || async { check(&state(app, id).await) }).await;
    state(app, id).await
}

#[tokio::test]
async fn a_private_room_page_is_403_without_its_meeting_token() {
    let app = TestApp::spawn().await;
    let (_, created) = send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "conversation_name": "Private", "require_auth": true })),
    )
    .await;
    let id = created["conversation_id"].as_str().unwrap();
    let token = created["meeting_token"].as_str().unwrap();
    let page = format!("/rooms/{id}");

    for path in [
        page.clone(),
        format!("{page}?t="),
        format!("{page}?t=not-{token}"),
    ] {
        let (status, content_type, body) = open(&app, &path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        // Still the page, so a person sees why rather than a bare error.
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(body.contains("<title>parley room</title>"));
        assert!(
            !body.contains("Private"),
            "the page alone reveals nothing of the room"
        );
        let (status, _, body) = open(&app, &path.replacen(&page, &format!("{page}/state"), 1)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["status"], "forbidden");
        assert!(body.get("conversation_name").is_none());
    }

    let (status, content_type, _) = open(&app, &format!("{page}?t={token}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    let (status, _, body) = open(&app, &format!("{page}/state?t={token}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["conversation_name"],
        "Private"
    );
}

#[tokio::test]
async fn the_page_answers_404_for_a_room_that_is_not_there() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    assert_eq!(open(&app, &format!("/rooms/{id}")).await.0, StatusCode::OK);
    for missing in ["c0123456789abcdef", "not-an-id", "C0123456789ABCDEF"] {
        let (status, content_type, _) = open(&app, &format!("/rooms/{missing}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert!(content_type.starts_with("text/html"));
    }
    let (status, _) = app.call(Method::DELETE, &format!("/v2/conversations/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(open(&app, &format!("/rooms/{id}")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        open(&app, &format!("/rooms/{id}/state")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_ended_call_empties_the_room_and_says_why_in_words() {
    let app = TestApp::spawn().await;
    let timed = app
        .create(json!({ "properties": { "max_call_duration": 2 } }))
        .await;
    let ended = app.create(json!({})).await;
    join(&app, &timed).await;
    join(&app, &ended).await;
    let live = wait_state(&app, &timed, "the replica is in the room", |s| {
        s["replica"]["joined"] == true
    })
    .await;
    assert_eq!(live["participants"], 1);
    assert!(live["greeting"].is_string());
    assert_eq!(live["shutdown_reason"], Value::Null);
    assert_eq!(live["shutdown_message"], Value::Null);
    assert_eq!(live["transport"], "room");

    let (status, _) = app
        .call(Method::POST, &format!("/v2/conversations/{ended}/end"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let over = wait_state(&app, &timed, "the call reaches its maximum duration", |s| {
        s["status"] == "ended"
    })
    .await;
    for (id, s, reason, words) in [
        (
            &timed,
            over,
            "max_call_duration reached",
            "The call reached its maximum duration.",
        ),
        (
            &ended,
            state(&app, &ended).await,
            "end_conversation_endpoint_hit",
            "The call was ended.",
        ),
    ] {
        assert_eq!(s["status"], "ended", "{id}");
        assert_eq!(
            s["participants"], 0,
            "{id}: nobody is in a room whose call is over"
        );
        assert_eq!(s["replica"]["joined"], false, "{id}");
        assert_eq!(s["greeting"], Value::Null, "{id}");
        assert_eq!(s["shutdown_reason"], reason, "{id}");
        assert_eq!(s["shutdown_message"], words, "{id}");
    }
}

#[tokio::test]
async fn a_call_nobody_could_join_here_says_where_it_takes_place() {
    let app = TestApp::spawn().await;
    for (body, transport) in [
        (
            json!({ "meeting_url": "https://meet.example/abc-defg-hij" }),
            "meeting_url",
        ),
        (
            json!({ "properties": { "livekit_ws_url": "wss://lk.example", "livekit_room_token": "jwt" } }),
            "livekit",
        ),
        (
            json!({ "properties": { "daily_room": "https://me.daily.co/room" } }),
            "daily_room",
        ),
    ] {
        let id = app.create(body).await;
        assert_eq!(state(&app, &id).await["transport"], transport);
    }
}
