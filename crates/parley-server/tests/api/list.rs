//! Listing: pagination, `total_count`, the status filter and ordering.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestApp;

#[tokio::test]
async fn pages_cover_every_conversation_once_newest_first() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_conversations = 100).await;
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(
            app.create(json!({ "conversation_name": format!("n{i}"), "test_mode": i % 3 == 0 }))
                .await,
        );
    }
    ids.reverse();
    // Joins update `updated_at`; let them land so pages compare equal.
    app.wait_for_jobs().await;

    let mut seen = Vec::new();
    for page in 1..=3 {
        let (status, body) = app
            .call(Method::GET, &format!("/v2/conversations?limit=10&page={page}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["total_count"], 23);
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), if page < 3 { 10 } else { 3 });
        seen.extend(
            data.iter()
                .map(|c| c["conversation_id"].as_str().unwrap().to_owned()),
        );
    }
    assert_eq!(seen, ids);
    // Past the end: an empty page, same total.
    let (_, body) = app.call(Method::GET, "/v2/conversations?limit=10&page=4").await;
    assert_eq!(body, json!({ "data": [], "total_count": 23 }));
    // Defaults: limit 10, page 1; page 0 reads as 1.
    let (_, default) = app.call(Method::GET, "/v2/conversations").await;
    let (_, zero) = app.call(Method::GET, "/v2/conversations?page=0").await;
    assert_eq!(default["data"].as_array().unwrap().len(), 10);
    assert_eq!(default, zero);
    let (_, all) = app.call(Method::GET, "/v2/conversations?limit=100").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 23);
}

#[tokio::test]
async fn the_status_filter_applies_to_data_and_total_count() {
    let app = TestApp::spawn().await;
    let active = app.create(json!({})).await;
    let ended = app.ended(json!({})).await;
    app.create(json!({ "test_mode": true })).await;
    let deleted = app.ended(json!({})).await;
    app.call(Method::DELETE, &format!("/v2/conversations/{deleted}"))
        .await;

    let (_, body) = app.call(Method::GET, "/v2/conversations?status=active").await;
    assert_eq!(body["total_count"], 1);
    assert_eq!(body["data"][0]["conversation_id"], active);
    let (_, body) = app.call(Method::GET, "/v2/conversations?status=ended").await;
    assert_eq!(body["total_count"], 2);
    assert_eq!(body["data"][1]["conversation_id"], ended);
    let item = &body["data"][0];
    for field in [
        "conversation_id",
        "conversation_name",
        "status",
        "conversation_url",
        "callback_url",
        "replica_id",
        "persona_id",
        "created_at",
        "updated_at",
    ] {
        assert!(item.get(field).is_some(), "{field} in {item}");
    }
}
