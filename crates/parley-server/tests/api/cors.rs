//! Browser apps on another origin: preflights without a key, and readable responses, errors included.

use parley_server::http::cors::AllowedOrigins;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestApp;

const APP: &str = "http://localhost:5173";

/// The preflight a browser sends before a cross-origin POST with `x-api-key` and a JSON body.
async fn preflight(app: &TestApp, origin: &str, path: &str) -> (StatusCode, HeaderMap, String) {
    let res = app
        .client
        .request(Method::OPTIONS, format!("{}{path}", app.base))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key,content-type")
        .send()
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).map_or("", |v| v.to_str().unwrap())
}

/// The comma-separated values of a header, lower-cased.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn a_preflight_is_answered_204_without_a_key_on_every_api_path() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    for path in [
        "/v2/conversations".to_owned(),
        format!("/v2/conversations/{id}"),
        format!("/v2/conversations/{id}/end"),
        format!("/v2/conversations/{id}/recording"),
        "/v2/personas".to_owned(),
        "/health".to_owned(),
    ] {
        let (status, headers, body) = preflight(&app, APP, &path).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{path}");
        assert_eq!(body, "", "{path}");
        assert_eq!(header(&headers, "access-control-allow-origin"), "*", "{path}");
        let methods = values(&headers, "access-control-allow-methods");
        for method in ["get", "post", "patch", "put", "delete", "options"] {
            assert!(methods.contains(&method.to_owned()), "{path}: {methods:?}");
        }
        let allowed = values(&headers, "access-control-allow-headers");
        for name in ["x-api-key", "content-type"] {
            assert!(allowed.contains(&name.to_owned()), "{path}: {allowed:?}");
        }
        assert_eq!(header(&headers, "access-control-max-age"), "7200", "{path}");
        assert!(values(&headers, "vary").contains(&"origin".to_owned()), "{path}");
        // No cookies are involved, so credentials are never allowed.
        assert!(headers.get("access-control-allow-credentials").is_none());
    }
    // The preflight changed nothing.
    let (status, body) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("active"))
    );
}

#[tokio::test]
async fn a_preflight_asking_for_authorization_may_send_it() {
    let app = TestApp::spawn().await;
    let res = app
        .client
        .request(Method::OPTIONS, format!("{}/v2/conversations", app.base))
        .header("origin", APP)
        .header("access-control-request-method", "DELETE")
        .header("access-control-request-headers", "authorization,x-api-key")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let allowed = values(res.headers(), "access-control-allow-headers");
    assert!(allowed.contains(&"authorization".to_owned()), "{allowed:?}");
}

#[tokio::test]
async fn cross_origin_responses_and_errors_are_readable_by_the_page() {
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 64 * 1024).await;
    let cross = |req: reqwest::RequestBuilder| req.header("origin", APP);
    let id = app.create(json!({})).await;
    let long = json!({ "conversational_context": "x".repeat(100 * 1024) });
    let cases = [
        (
            "create",
            cross(app.req(Method::POST, "/v2/conversations")).json(&json!({})),
            StatusCode::OK,
        ),
        (
            "get",
            cross(app.req(Method::GET, &format!("/v2/conversations/{id}"))),
            StatusCode::OK,
        ),
        (
            "no key",
            cross(app.client.post(format!("{}/v2/conversations", app.base))).json(&json!({})),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "bad body",
            cross(app.req(Method::POST, "/v2/conversations"))
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad id",
            cross(app.req(Method::GET, "/v2/conversations/not-an-id")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown path",
            cross(app.req(Method::GET, "/v2/deployments")),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            cross(app.req(Method::PUT, "/v2/conversations")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "too large",
            cross(app.req(Method::POST, "/v2/conversations")).json(&long),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, req, expected) in cases {
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), expected, "{what}");
        assert_eq!(
            header(res.headers(), "access-control-allow-origin"),
            "*",
            "{what}"
        );
        // The page can read the retry hint of a 503.
        assert!(
            values(res.headers(), "access-control-expose-headers").contains(&"retry-after".to_owned()),
            "{what}"
        );
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body.is_object(), "{what}: {body}");
    }
}

#[tokio::test]
async fn with_a_list_only_those_origins_get_the_headers() {
    let allowed = "https://app.example.com,http://localhost:5173";
    let app = TestApp::spawn_with(|c| {
        c.cors_allowed_origins = AllowedOrigins::parse(allowed).unwrap();
    })
    .await;
    for origin in ["https://app.example.com", "http://localhost:5173"] {
        let (status, headers, _) = preflight(&app, origin, "/v2/conversations").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(header(&headers, "access-control-allow-origin"), origin);
        assert!(values(&headers, "vary").contains(&"origin".to_owned()));
        let res = app
            .req(Method::POST, "/v2/conversations")
            .header("origin", origin)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(res.headers(), "access-control-allow-origin"), origin);
        assert!(values(res.headers(), "vary").contains(&"origin".to_owned()));
    }
    for origin in [
        "https://evil.example",
        "http://localhost:5174",
        "https://app.example.com.evil.example",
    ] {
        let (_, headers, _) = preflight(&app, origin, "/v2/conversations").await;
        assert!(headers.get("access-control-allow-origin").is_none(), "{origin}");
        let res = app
            .req(Method::GET, "/v2/conversations")
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        // The server still answers; only the browser withholds the body from that page.
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            res.headers().get("access-control-allow-origin").is_none(),
            "{origin}"
        );
    }
}

#[tokio::test]
async fn rooms_are_same_origin_pages_without_cors() {
    let app = TestApp::spawn().await;
    let id = app.create(json!({})).await;
    let (status, headers, _) = preflight(&app, APP, &format!("/rooms/{id}/join")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(headers.get("access-control-allow-origin").is_none());
    let res = app
        .client
        .get(format!("{}/rooms/{id}/state", app.base))
        .header("origin", APP)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn the_flag_and_its_variable_refuse_what_is_not_an_origin() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env) in [
        (vec!["--cors-allowed-origins", "https://app.example.com/"], None),
        (vec![], Some("*,https://app.example.com")),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_parley"));
        cmd.current_dir(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("PARLEY_CORS_ALLOWED_ORIGINS")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(value) = env {
            cmd.env("PARLEY_CORS_ALLOWED_ORIGINS", value);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                // A server that wrongly started is not left running.
                child.kill().unwrap();
                panic!("{args:?} {env:?} was served, not refused");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!status.success(), "{args:?} {env:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("is not an origin"), "{stderr}");
    }
}

/// A page of its own on another port (so another origin) that scripts in the browser run from.
#[cfg(feature = "e2e")]
async fn serve_page() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html("<!doctype html><title>app</title><p>app</p>") }),
    );
    tokio::spawn(async move { axum::serve(listener, page).await.unwrap() });
    format!("http://{addr}")
}

/// Runs `fetch` in the page and returns `[status, body]`, or `["failed", message]` when the
/// browser refuses to hand the response to the page.
#[cfg(feature = "e2e")]
async fn fetch_in(browser: &fantoccini::Client, url: &str, init: serde_json::Value) -> serde_json::Value {
    browser
        .execute(
            "return fetch(arguments[0], arguments[1])
                .then(r => r.json().then(b => [r.status, b]))
                .catch(e => ['failed', String(e)]);",
            vec![json!(url), init],
        )
        .await
        .unwrap()
}

#[cfg(feature = "e2e")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_creates_and_reads_errors_with_fetch() {
    let app = TestApp::spawn().await;
    let page = serve_page().await;
    let driver = crate::room::browser::Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&page).await.unwrap();
    assert_ne!(page, app.base, "the page and the API are different origins");

    let url = format!("{}/v2/conversations", app.base);
    let created = fetch_in(
        &browser,
        &url,
        json!({
            "method": "POST",
            "headers": { "x-api-key": app.key, "content-type": "application/json" },
            "body": r#"{"conversation_name": "From the browser"}"#,
        }),
    )
    .await;
    assert_eq!(created[0], 200, "{created}");
    assert_eq!(created[1]["conversation_name"], "From the browser");
    let id = created[1]["conversation_id"].as_str().unwrap();
    let (status, _) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(status, StatusCode::OK);

    let unauthorized = fetch_in(
        &browser,
        &url,
        json!({ "method": "POST", "headers": { "content-type": "application/json" }, "body": "{}" }),
    )
    .await;
    assert_eq!(unauthorized, json!([401, { "message": "Invalid access token" }]));
    let bad = fetch_in(
        &browser,
        &url,
        json!({
            "method": "POST",
            "headers": { "x-api-key": app.key, "content-type": "application/json" },
            "body": "{",
        }),
    )
    .await;
    assert_eq!(bad[0], 400, "{bad}");
    assert!(
        bad[1]["error"].as_str().unwrap().starts_with("Invalid JSON body"),
        "{bad}"
    );

    // The same page against a server that allows only another origin: the browser refuses.
    let strict = TestApp::spawn_with(|c| {
        c.cors_allowed_origins = AllowedOrigins::parse("https://app.example.com").unwrap();
    })
    .await;
    let refused = fetch_in(
        &browser,
        &format!("{}/v2/conversations", strict.base),
        json!({ "headers": { "x-api-key": strict.key } }),
    )
    .await;
    assert_eq!(refused[0], "failed", "{refused}");
    browser.close().await.unwrap();
}
