//! Bad input never gets a 500: each gets a clear 4xx in the contract's shape and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestApp, TestDb, invalid_id};

/// Everything a request could have changed, as one comparable value.
async fn snapshot(db: &TestDb) -> Vec<(String, String, String, Option<i64>, i64)> {
    let rows = db
        .rows(
            "SELECT conversation_id, status, request_json, deleted_at, \
         (SELECT COUNT(*) FROM event e WHERE e.conversation_id = c.conversation_id) FROM conversation c \
         ORDER BY conversation_id",
            &[],
        )
        .await;
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
}

/// Sends a request line byte for byte (no client-side path normalisation) and reads status and body.
async fn raw(app: &TestApp, method: &str, target: &str) -> (u16, String) {
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nx-api-key: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        app.key
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn malformed_and_mistyped_create_bodies_are_400s_naming_the_problem() {
    let app = TestApp::spawn().await;
    let id = app
        .ended(json!({ "conversational_context": "keep", "properties": { "enable_recording": true } }))
        .await;
    let db = app.db().await;
    let before = snapshot(&db).await;

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{".to_vec(), "Invalid JSON body"),
        (b"[]".to_vec(), "Invalid JSON body"),
        (b"\"text\"".to_vec(), "Invalid JSON body"),
        (b"null".to_vec(), "Invalid JSON body"),
        (vec![0xff, 0xfe, b'{'], "Invalid JSON body"),
        (
            br#"{"conversation_name": 42}"#.to_vec(),
            "Invalid conversation_name",
        ),
        (br#"{"test_mode": "sometimes"}"#.to_vec(), "Invalid test_mode"),
        (br#"{"properties": []}"#.to_vec(), "Invalid properties"),
        (
            br#"{"properties": {"max_call_duration": -5}}"#.to_vec(),
            "Invalid properties.max_call_duration",
        ),
        (
            br#"{"properties": {"max_call_duration": 1.5}}"#.to_vec(),
            "Invalid properties.max_call_duration",
        ),
        (
            br#"{"properties": {"max_call_duration": 0}}"#.to_vec(),
            "Invalid properties.max_call_duration",
        ),
        (
            br#"{"properties": {"enable_recording": "perhaps"}}"#.to_vec(),
            "Invalid properties.enable_recording",
        ),
        (br#"{"memory_stores": "anna"}"#.to_vec(), "Invalid memory_stores"),
        (br#"{"document_ids": [1, 2]}"#.to_vec(), "Invalid document_ids"),
        (
            br#"{"document_retrieval_strategy": "fastest"}"#.to_vec(),
            "Invalid document_retrieval_strategy",
        ),
        (br#"{"max_participants": 1}"#.to_vec(), "Invalid max_participants"),
        (
            br#"{"callback_url": "not a url"}"#.to_vec(),
            "Invalid callback_url",
        ),
        (
            br#"{"callback_url": "file:///etc/passwd"}"#.to_vec(),
            "Invalid callback_url",
        ),
        (br#"{"replica_id": 7}"#.to_vec(), "Invalid replica_id"),
        (br#"{"meeting_url": 7}"#.to_vec(), "Invalid meeting_url"),
        (
            br#"{"meeting_url": "zoom meeting"}"#.to_vec(),
            "Invalid meeting_url",
        ),
        (
            br#"{"properties": {"livekit_ws_url": {"host": "lk"}}}"#.to_vec(),
            "Invalid properties.livekit_ws_url",
        ),
        (
            br#"{"properties": {"livekit_ws_url": "mailto:lk@example.com"}}"#.to_vec(),
            "Invalid properties.livekit_ws_url",
        ),
        (
            br#"{"properties": {"livekit_room_token": 12}}"#.to_vec(),
            "Invalid properties.livekit_room_token",
        ),
        (
            br#"{"properties": {"daily_room": true}}"#.to_vec(),
            "Invalid properties.daily_room",
        ),
        (
            br#"{"meeting_url": "https://meet.example/x", "properties": {"daily_room": "https://me.daily.co/r"}}"#
                .to_vec(),
            "Invalid properties.daily_room",
        ),
        (
            br#"{"persona_id": "pdced222244b", "pal_id": "pdac61133ac5"}"#.to_vec(),
            "Invalid persona_id",
        ),
    ];
    for (body, expected) in cases {
        let (status, got) = crate::support::send(
            app.req(Method::POST, "/v2/conversations")
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let error = got["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(expected),
            "{} gave {got}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(snapshot(&db).await, before);
    assert!(app.backing.has_recording(&id).await);
}

#[tokio::test]
async fn oversize_bodies_are_413_and_store_nothing() {
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 64 * 1024).await;
    let big = json!({ "conversational_context": "x".repeat(100 * 1024) });
    let (status, body) = crate::support::send(app.req(Method::POST, "/v2/conversations").json(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body["error"].as_str().unwrap().contains("65536"), "{body}");
    let db = app.db().await;
    assert!(snapshot(&db).await.is_empty());
}

#[tokio::test]
async fn bad_query_values_are_400s_naming_the_parameter() {
    let app = TestApp::spawn().await;
    let id = app.ended(json!({})).await;
    let db = app.db().await;
    let before = snapshot(&db).await;
    for (method, path, param) in [
        (Method::GET, "/v2/conversations?limit=0".to_owned(), "limit"),
        (Method::GET, "/v2/conversations?limit=101".to_owned(), "limit"),
        (Method::GET, "/v2/conversations?limit=ten".to_owned(), "limit"),
        (Method::GET, "/v2/conversations?page=-1".to_owned(), "page"),
        (
            Method::GET,
            "/v2/conversations?page=99999999999".to_owned(),
            "page",
        ),
        (
            Method::GET,
            "/v2/conversations?status=deleted".to_owned(),
            "status",
        ),
        (
            Method::GET,
            format!("/v2/conversations/{id}?verbose=maybe"),
            "verbose",
        ),
        (Method::DELETE, format!("/v2/conversations/{id}?hard=yes"), "hard"),
        (Method::DELETE, format!("/v2/conversations/{id}?hard="), "hard"),
        (
            Method::DELETE,
            format!("/v2/conversations/{id}?hard={}", "1".repeat(5000)),
            "hard",
        ),
    ] {
        let (status, body) = app.call(method.clone(), &path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("Invalid value for {param}")),
            "{path}: {error}"
        );
        assert!(error.len() < 200, "the echo is bounded: {error}");
    }
    assert_eq!(snapshot(&db).await, before);
}

#[tokio::test]
async fn ids_that_are_not_conversation_ids_never_reach_storage() {
    let app = TestApp::spawn().await;
    let id = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    let db = app.db().await;
    let before = snapshot(&db).await;
    let long = format!("c{}", "a".repeat(10_000));
    let targets = [
        "/v2/conversations/..".to_owned(),
        "/v2/conversations/%2e%2e".to_owned(),
        format!("/v2/conversations/{id}/../{id}"),
        format!("/v2/conversations/{id}%2F..%2Fx"),
        format!("/v2/conversations/{id}%00"),
        "/v2/conversations/%00".to_owned(),
        "/v2/conversations/%FF%FE".to_owned(),
        format!("/v2/conversations/{long}"),
        format!("/v2/conversations/{}", id.to_uppercase()),
        "/v2/conversations/agora".to_owned(),
        "/v2/conversations/persona-builder/headless".to_owned(),
        format!("/v2/conversations/{id}/end/now"),
    ];
    for target in &targets {
        for method in ["GET", "DELETE", "POST"] {
            let target = if method == "DELETE" {
                format!("{target}?hard=true")
            } else {
                target.clone()
            };
            let (status, body) = raw(&app, method, &target).await;
            let shown = &target[..target.len().min(80)];
            assert!((400..500).contains(&status), "{method} {shown} gave {status}");
            if status == 400 {
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body, invalid_id(), "{method} {shown}");
            } else {
                assert!(body.contains("\"error\""), "{method} {shown}: {body}");
            }
        }
    }
    assert_eq!(snapshot(&db).await, before);
    assert!(app.backing.has_recording(&id).await);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_4xx() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/v2/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].as_str().unwrap().contains("/v2/nothing-here"));
    let (status, body) = app.call(Method::PUT, "/v2/conversations").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].as_str().unwrap().contains("PUT"));
}
