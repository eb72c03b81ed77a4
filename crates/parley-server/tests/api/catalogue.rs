//! The stock catalogue, and every list `tavus pal options` reads at once: all must answer 2xx.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, send};

#[tokio::test]
async fn every_list_pal_options_reads_answers_with_data() {
    let app = TestApp::spawn().await;
    // The requests of `tavus pal options` that are not about the PAL or its face and voice.
    for path in [
        "/v2/guardrails?limit=100",
        "/v2/objectives?limit=100",
        "/v2/documents?limit=100&page=0&sort=desc&verbose=true",
        "/v2/tools?limit=100",
        "/v2/skills?limit=100",
        "/v2/pronunciation-dictionaries?limit=100",
    ] {
        let (status, body) = app.call(Method::GET, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body["data"].is_array(), "{path}: {body}");
        assert_eq!(
            body["total_count"].as_u64(),
            Some(body["data"].as_array().unwrap().len() as u64),
            "{path}"
        );
        let (status, _) = send(app.req_as("wrong", Method::GET, path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn tools_are_the_system_ones_and_none_of_the_accounts() {
    let app = TestApp::spawn().await;
    for query in ["", "?type=user", "?limit=25&page=1&type=user&sort=asc"] {
        let (status, body) = app.call(Method::GET, &format!("/v2/tools{query}")).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"data": [], "total_count": 0})),
            "{query}"
        );
    }
    for query in ["?type=system", "?type=all", "?type=all&name_or_uuid=END"] {
        let (status, body) = app.call(Method::GET, &format!("/v2/tools{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(body["total_count"], 1, "{query}");
        let tool = &body["data"][0];
        assert_eq!(tool["tool_id"], "end_call");
        assert_eq!(tool["name"], "end_call");
        assert_eq!(tool["is_system_tool"], true);
        assert_eq!(tool["owner_id"], Value::Null);
        assert_eq!(tool["origin"], "llm");
    }
    let (status, tool) = app.call(Method::GET, "/v2/tools/end_call").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tool["tool_id"], "end_call");
    let (status, body) = app.call(Method::GET, "/v2/tools/t0123456789ab").await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"error": "Tool not found"}))
    );
    let (status, body) = app.call(Method::GET, "/v2/tools?type=robot").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Invalid value for type: \"robot\" (expected user, system or all)"})
        )
    );
    // Read-only: nothing to create.
    let (status, _) = send(app.req(Method::POST, "/v2/tools").json(&json!({"name": "x"}))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn skills_are_the_built_in_ones() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/v2/skills").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["skill_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["internet_search", "presentation", "magic_canvas", "memory"]);
    assert_eq!(body["total_count"], 4);
    for skill in body["data"].as_array().unwrap() {
        for field in ["display_name", "description"] {
            assert!(skill[field].as_str().is_some_and(|s| !s.is_empty()), "{skill}");
        }
        assert!(skill["tool_names"].is_array(), "{skill}");
    }
    let (status, skill) = app.call(Method::GET, "/v2/skills/presentation").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(skill["display_name"], "Slide Presenter");
    assert_eq!(skill["config_schema"]["required"], json!(["document_ids"]));
    let (status, body) = app.call(Method::GET, "/v2/skills/my_skill").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": "Unknown skill 'my_skill'"})
        )
    );
    let (_, page) = app.call(Method::GET, "/v2/skills?limit=1&page=2").await;
    assert_eq!(page["data"][0]["skill_id"], "presentation");
    assert_eq!(page["total_count"], 4);
}

#[tokio::test]
async fn pronunciation_dictionaries_are_an_empty_list() {
    let app = TestApp::spawn().await;
    let (status, body) = app.call(Method::GET, "/v2/pronunciation-dictionaries").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"data": [], "total_count": 0}))
    );
    let (status, _) = app
        .call(Method::GET, "/v2/pronunciation-dictionaries?limit=500")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
