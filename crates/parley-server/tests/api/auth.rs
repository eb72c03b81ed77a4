//! Authentication and tenant isolation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, invalid_id};

#[tokio::test]
async fn every_endpoint_needs_a_valid_key() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    let unauthorized = (
        StatusCode::UNAUTHORIZED,
        json!({ "message": "Invalid access token" }),
    );
    let endpoints = [
        (Method::POST, "/v2/conversations".to_owned()),
        (Method::GET, "/v2/conversations".to_owned()),
        (Method::GET, format!("/v2/conversations/{id}")),
        (Method::POST, format!("/v2/conversations/{id}/end")),
        (Method::DELETE, format!("/v2/conversations/{id}?hard=true")),
        (Method::GET, format!("/v2/conversations/{id}/recording")),
    ];
    for (method, path) in &endpoints {
        let missing =
            crate::support::send(app.client.request(method.clone(), format!("{}{path}", app.base))).await;
        assert_eq!(missing, unauthorized, "{method} {path} without a key");
        for bad in [
            "wrong",
            "",
            &app.key[..31],
            &format!("{}0", app.key),
            &"k".repeat(5000),
        ] {
            let got = app.call_as(bad, method.clone(), path).await;
            assert_eq!(got, unauthorized, "{method} {path} with {bad:?}");
        }
    }
    // Nothing happened to the conversation.
    let (status, body) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("active"))
    );
}

#[tokio::test]
async fn another_account_cannot_see_or_touch_a_conversation() {
    let app = TestApp::spawn().await;
    let id = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    let b = app.new_key("account-b");

    for (method, path) in [
        (Method::GET, format!("/v2/conversations/{id}")),
        (Method::GET, format!("/v2/conversations/{id}?verbose=true")),
        (Method::POST, format!("/v2/conversations/{id}/end")),
        (Method::GET, format!("/v2/conversations/{id}/recording")),
        (Method::DELETE, format!("/v2/conversations/{id}")),
        (Method::DELETE, format!("/v2/conversations/{id}?hard=true")),
    ] {
        // Exactly what an unknown id gets, so existence never leaks.
        let foreign = app.call_as(&b, method.clone(), &path).await;
        let unknown = app
            .call_as(&b, method.clone(), &path.replace(&id, "c00000000000000000"))
            .await;
        assert_eq!(
            foreign,
            (StatusCode::BAD_REQUEST, invalid_id()),
            "{method} {path}"
        );
        assert_eq!(foreign, unknown);
    }
    let (_, list) = app.call_as(&b, Method::GET, "/v2/conversations").await;
    assert_eq!(list, json!({ "data": [], "total_count": 0 }));

    // A's conversation is whole.
    let db = app.db().await;
    let (conv, events, assets) = db.rows_of(&id).await;
    assert_eq!((conv, assets), (1, 1));
    assert!(events >= 3);
    let (_, list) = app.call(Method::GET, "/v2/conversations").await;
    assert_eq!(list["total_count"], 1);
}

#[tokio::test]
async fn the_health_check_needs_no_key_and_says_nothing_else() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert_eq!(
        res.json::<serde_json::Value>().await.unwrap(),
        json!({ "status": "ok" })
    );
}
