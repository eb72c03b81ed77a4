//! Routing: known paths keep their contract, unknown ones are 404 and wrong methods 405, all JSON.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, invalid_id};

#[tokio::test]
async fn unknown_paths_are_404_naming_the_path_with_or_without_a_key() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    let long = format!("/v2/{}", "x".repeat(5000));
    let cases = [
        (
            Method::POST,
            "/v2/conversations/persona-builder/headless".to_owned(),
        ),
        (Method::GET, "/v2/conversations/c0123456789abcdef/nope".to_owned()),
        (Method::GET, format!("/v2/conversations/{id}/nope")),
        (Method::POST, format!("/v2/conversations/{id}/end/now")),
        (Method::DELETE, format!("/v2/conversations/{id}/recording/1")),
        (Method::GET, "/v2/deployments".to_owned()),
        (Method::POST, "/v2/replicas/r90bbd427f71/train".to_owned()),
        (Method::GET, "/v2".to_owned()),
        (Method::GET, "/v2/".to_owned()),
        (Method::GET, "/v1/conversations".to_owned()),
        (Method::GET, "/".to_owned()),
        (Method::GET, format!("/rooms/{id}/nope")),
        (Method::GET, long.clone()),
    ];
    for (method, path) in &cases {
        for key in [Some(app.key.as_str()), None] {
            let mut req = app.client.request(method.clone(), format!("{}{path}", app.base));
            if let Some(key) = key {
                req = req.header("x-api-key", key);
            }
            let (status, body) = crate::support::send(req).await;
            let shown = &path[..path.len().min(60)];
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{method} {shown} key={}",
                key.is_some()
            );
            let error = body["error"].as_str().unwrap();
            if path == &long {
                assert!(error.len() < 300, "the echo is bounded: {}", error.len());
                assert!(error.starts_with("No such endpoint: /v2/xxx"), "{error}");
            } else {
                assert_eq!(error, format!("No such endpoint: {path}"), "{method} {path}");
            }
        }
    }
    // Nothing reached the conversation.
    let (status, body) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("active"))
    );
}

#[tokio::test]
async fn wrong_methods_are_405_with_the_allowed_ones() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    let conversation = format!("/v2/conversations/{id}");
    let cases = [
        (
            "/v2/conversations".to_owned(),
            vec![Method::PUT, Method::PATCH, Method::DELETE],
            "GET,HEAD,POST",
        ),
        (
            conversation.clone(),
            vec![Method::POST, Method::PUT, Method::PATCH],
            "GET,HEAD,DELETE",
        ),
        (
            "/v2/conversations/not-an-id".to_owned(),
            vec![Method::POST, Method::PATCH],
            "GET,HEAD,DELETE",
        ),
        (
            format!("{conversation}/end"),
            vec![Method::GET, Method::PUT, Method::DELETE],
            "POST",
        ),
        (
            format!("{conversation}/recording"),
            vec![Method::POST, Method::DELETE],
            "GET,HEAD",
        ),
        (
            "/health".to_owned(),
            vec![Method::POST, Method::DELETE],
            "GET,HEAD",
        ),
        (
            format!("/rooms/{id}"),
            vec![Method::POST, Method::DELETE],
            "GET,HEAD",
        ),
        (format!("/rooms/{id}/state"), vec![Method::POST], "GET,HEAD"),
        (
            format!("/rooms/{id}/join"),
            vec![Method::GET, Method::OPTIONS],
            "POST",
        ),
        (
            format!("/rooms/{id}/leave"),
            vec![Method::GET, Method::PUT],
            "POST",
        ),
    ];
    for (path, methods, allow) in &cases {
        for method in methods {
            for key in [Some(app.key.as_str()), None] {
                let mut req = app.client.request(method.clone(), format!("{}{path}", app.base));
                if let Some(key) = key {
                    req = req.header("x-api-key", key);
                }
                let res = req.send().await.unwrap();
                let what = format!("{method} {path} key={}", key.is_some());
                assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{what}");
                let got: Vec<String> = res.headers()["allow"]
                    .to_str()
                    .unwrap()
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .collect();
                let mut got_sorted = got.clone();
                got_sorted.sort();
                let mut want: Vec<&str> = allow.split(',').collect();
                want.sort_unstable();
                assert_eq!(got_sorted, want, "{what}");
                let body: serde_json::Value = res.json().await.unwrap();
                assert_eq!(
                    body,
                    json!({ "error": format!("Method {method} is not allowed on {path}") }),
                    "{what}"
                );
            }
        }
    }
    let (status, body) = app.call(Method::GET, &conversation).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("active"))
    );
}

#[tokio::test]
async fn bad_ids_on_known_routes_keep_their_400() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        (Method::GET, "/v2/conversations/not-an-id"),
        (Method::DELETE, "/v2/conversations/not-an-id"),
        (Method::DELETE, "/v2/conversations/not-an-id?hard=true"),
        (Method::POST, "/v2/conversations/not-an-id/end"),
        (Method::GET, "/v2/conversations/not-an-id/recording"),
        (Method::GET, "/v2/conversations/persona-builder"),
        (Method::GET, "/v2/conversations/c00000000000000000"),
    ] {
        assert_eq!(
            app.call(method.clone(), path).await,
            (StatusCode::BAD_REQUEST, invalid_id()),
            "{method} {path}"
        );
        // The key is still checked first on a known route.
        let (status, body) =
            crate::support::send(app.client.request(method.clone(), format!("{}{path}", app.base))).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::UNAUTHORIZED,
                json!({ "message": "Invalid access token" })
            ),
            "{method} {path} without a key"
        );
    }
}

/// The official client sends some paths with a trailing slash (`POST /v2/guardrails/`): under
/// `/v2/` the slash makes no difference, as on the hosted API.
#[tokio::test]
async fn a_trailing_slash_reaches_the_same_endpoint() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({ "test_mode": true })).await;
    for path in ["/v2/conversations/?limit=1", "/v2/conversations?limit=1"] {
        let (status, body) = app.call(Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body["total_count"], 1, "{path}");
    }
    let (status, body) = app.call(Method::GET, &format!("/v2/conversations/{id}/")).await;
    assert_eq!(
        (status, body["conversation_id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
}
