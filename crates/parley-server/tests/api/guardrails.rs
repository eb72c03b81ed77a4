//! Guardrails: single ones as the official client sends them, and legacy sets, on the same
//! paths; sealed at rest, erased by a delete, and untouched by a bad request.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{Backing, TestApp, send};

fn not_found() -> Value {
    json!({ "error": "Guardrails not found" })
}

/// The body `tavus guardrail create` sends: the full model dump, defaults included.
fn client_body(name: &str, prompt: &str) -> Value {
    json!({
        "guardrail_name": name,
        "guardrail_prompt": prompt,
        "modality": "verbal",
        "callback_url": "",
        "app_message": true,
        "tags": ["safety"],
    })
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (StatusCode, Value) {
    send(app.req(Method::POST, path).json(body)).await
}

async fn patch(app: &TestApp, id: &str, ops: &Value) -> (StatusCode, Value) {
    send(app.req(Method::PATCH, &format!("/v2/guardrails/{id}")).json(ops)).await
}

/// (row id, version) of a stored guardrail.
async fn stored(backing: &Backing, id: &str) -> Option<(String, i64)> {
    let db = backing.db().await;
    let rows = db
        .rows(
            "SELECT row_id, version FROM resource WHERE resource_id = ?",
            &[id],
        )
        .await;
    db.close().await;
    rows.first().map(|r| (r.get(0), r.get(1)))
}

async fn resource_rows(backing: &Backing) -> i64 {
    let db = backing.db().await;
    let n = db.scalar("SELECT COUNT(*) FROM resource").await;
    db.close().await;
    n
}

#[tokio::test]
async fn a_single_guardrail_is_created_listed_patched_and_erased() {
    let app = TestApp::spawn().await;
    let secret = format!("guardmark{:08x}", rand::random::<u32>());
    let (status, created) = post(
        &app,
        "/v2/guardrails/",
        &client_body(
            "no_medical_advice",
            &format!("Never give medical advice ({secret})"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["uuid"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(created["guardrail_name"], "no_medical_advice");
    assert_eq!(created["modality"], "verbal");
    assert_eq!(created["app_message"], true);
    assert_eq!(created["tags"], json!(["safety"]));
    assert_eq!(created["owner_id"], "default");
    assert!(created.get("tool_call").is_none());

    let (status, got) = app.call(Method::GET, &format!("/v2/guardrails/{id}")).await;
    assert_eq!((status, got.clone()), (StatusCode::OK, created.clone()));

    // What `tavus guardrail list` and `tavus pal options` send.
    for query in ["limit=25&page=1&type=user&legacy=false&verbose=true", "limit=100"] {
        let (status, list) = app.call(Method::GET, &format!("/v2/guardrails?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(list["total_count"], 1, "{query}");
        assert_eq!(list["data"][0]["uuid"], json!(id), "{query}");
    }
    let (_, verbose) = app.call(Method::GET, "/v2/guardrails?verbose=true").await;
    assert_eq!(verbose["data"][0]["guardrail_type"], "user");

    // The client's patch: `add` ops on top-level fields, persisted fields sent back as no-ops.
    let (status, updated) = patch(
        &app,
        &id,
        &json!([
            {"op": "add", "path": "/guardrail_name", "value": "no_advice"},
            {"op": "add", "path": "/tags", "value": ["safety", "medical"]},
            {"op": "add", "path": "/tool_call", "value": {"name": "escalate"}},
            {"op": "add", "path": "/uuid", "value": "00000000-0000-4000-8000-000000000000"},
            {"op": "add", "path": "/created_at", "value": "2020-01-01T00:00:00Z"},
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["uuid"], json!(id));
    assert_eq!(updated["guardrail_name"], "no_advice");
    assert_eq!(updated["tags"], json!(["safety", "medical"]));
    assert_eq!(updated["tool_call"], json!({"name": "escalate"}));
    assert_eq!(updated["created_at"], created["created_at"]);
    let (_, got) = app.call(Method::GET, &format!("/v2/guardrails/{id}")).await;
    assert_eq!(got, updated);

    assert!(!app.backing.holds(&secret).await, "the prompt is stored sealed");
    let (row_id, _) = stored(&app.backing, &id).await.unwrap();
    assert!(app.backing.data_keys().await.contains_key(&row_id));

    let (status, body) = app.call(Method::DELETE, &format!("/v2/guardrails/{id}")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(stored(&app.backing, &id).await, None);
    assert!(!app.backing.data_keys().await.contains_key(&row_id));
    assert!(!app.backing.holds(&secret).await);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = app.call(method.clone(), &format!("/v2/guardrails/{id}")).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()), "{method}");
    }
    let (status, body) = patch(&app, &id, &json!([])).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()));
    assert_eq!(app.call(Method::GET, "/v2/guardrails").await.1["total_count"], 0);
}

#[tokio::test]
async fn legacy_sets_live_beside_single_guardrails() {
    let app = TestApp::spawn().await;
    let set = json!({
        "name": "Healthcare Compliance",
        "data": [
            {"guardrail_name": "no_diagnosis", "guardrail_prompt": "Never diagnose.", "modality": "verbal"},
            {"guardrail_name": "camera_check", "guardrail_prompt": "Watch the room.", "modality": "visual",
             "callback_url": "https://example.com/guardrail"},
        ]
    });
    let (status, created) = post(&app, "/v2/guardrails", &set).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let set_id = created["guardrails_id"].as_str().unwrap().to_owned();
    assert!(set_id.starts_with('g') && set_id.len() == 17, "{set_id}");
    assert_eq!(created["guardrails_name"], "Healthcare Compliance");
    assert_eq!(created["status"], "active");
    assert_eq!(
        created["data"][1]["callback_url"],
        "https://example.com/guardrail"
    );
    assert_eq!(created["data"][0]["callback_url"], "");
    let (_, single) = post(&app, "/v2/guardrails/", &client_body("single_one", "p")).await;
    let single_id = single["uuid"].as_str().unwrap();

    let (_, legacy) = app.call(Method::GET, "/v2/guardrails?legacy=true").await;
    assert_eq!(legacy["total_count"], 1);
    assert_eq!(legacy["data"][0]["guardrails_id"], json!(set_id));
    let (_, flat) = app.call(Method::GET, "/v2/guardrails").await;
    assert_eq!(flat["total_count"], 1);
    assert_eq!(flat["data"][0]["uuid"], json!(single_id));

    let (status, got) = app.call(Method::GET, &format!("/v2/guardrails/{set_id}")).await;
    assert_eq!((status, got.clone()), (StatusCode::OK, created.clone()));

    let (status, body) = patch(
        &app,
        &set_id,
        &json!([
            {"op": "replace", "path": "/data/0/guardrail_prompt", "value": "Never diagnose anyone."},
            {"op": "replace", "path": "/guardrails_name", "value": "Compliance"},
            {"op": "remove", "path": "/data/1"},
        ]),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"message": "Guardrails updated successfully"})
        )
    );
    let (_, got) = app.call(Method::GET, &format!("/v2/guardrails/{set_id}")).await;
    assert_eq!(got["name"], "Compliance");
    assert_eq!(got["guardrails_name"], "Compliance");
    assert_eq!(got["data"].as_array().unwrap().len(), 1);
    assert_eq!(got["data"][0]["guardrail_prompt"], "Never diagnose anyone.");

    // A set's create errors are documented under `message`; its patch errors under `error`.
    for (body, message) in [
        (
            json!({"name": "s", "data": [{"guardrail_prompt": "p"}]}),
            "data[0].guardrail_name is required",
        ),
        (
            json!({"name": "s", "data": []}),
            "data must be a non-empty list of guardrails",
        ),
        (
            json!({"name": "s", "data": [{"guardrail_name": "has space", "guardrail_prompt": "p"}]}),
            "data[0].guardrail_name must contain only letters, digits and underscores",
        ),
        (
            json!({"name": "s", "data": [{"guardrail_name": "a", "guardrail_prompt": "p", "modality": "audio"}]}),
            "data[0].modality must be one of verbal, visual",
        ),
    ] {
        let (status, answer) = post(&app, "/v2/guardrails", &body).await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, json!({"message": message})),
            "{body}"
        );
    }
    let (status, body) = patch(&app, &set_id, &json!([{"op": "remove", "path": "/data/0"}])).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "data must be a non-empty list of guardrails"})
        )
    );

    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/guardrails/{set_id}"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(stored(&app.backing, &set_id).await, None);
    assert_eq!(
        app.call(Method::GET, "/v2/guardrails?legacy=true").await.1["total_count"],
        0
    );
}

#[tokio::test]
async fn bad_creates_and_patches_are_400s_and_change_nothing() {
    let app = TestApp::spawn().await;
    let keys_before = app.backing.key_count().await;
    for (body, error) in [
        (json!({}), "guardrail_name is required"),
        (
            json!({"guardrail_name": "  ", "guardrail_prompt": "p"}),
            "guardrail_name is required",
        ),
        (
            json!({"guardrail_name": 1, "guardrail_prompt": "p"}),
            "guardrail_name must be a string",
        ),
        (
            json!({"guardrail_name": "x".repeat(101), "guardrail_prompt": "p"}),
            "guardrail_name must be at most 100 characters",
        ),
        (json!({"guardrail_name": "n"}), "guardrail_prompt is required"),
        (
            json!({"guardrail_name": "n", "guardrail_prompt": "p", "modality": "smell"}),
            "modality must be one of verbal, visual, audio",
        ),
        (
            json!({"guardrail_name": "n", "guardrail_prompt": "p", "callback_url": "ftp://x"}),
            "callback_url must be an http or https URL",
        ),
        (
            json!({"guardrail_name": "n", "guardrail_prompt": "p", "app_message": "yes"}),
            "app_message must be a boolean",
        ),
        (
            json!({"guardrail_name": "n", "guardrail_prompt": "p", "tags": ["ok", ""]}),
            "tags must be a list of non-empty strings",
        ),
        (
            json!({"guardrail_name": "n", "guardrail_prompt": "p", "tags": vec!["t"; 33]}),
            "tags must have at most 32 entries",
        ),
        (
            json!({"guardrail_name": "n", "guardrail_prompt": "p", "tool_call": "x"}),
            "tool_call must be an object",
        ),
        (json!("text"), "Invalid request body: expected a JSON object"),
    ] {
        let (status, answer) = post(&app, "/v2/guardrails/", &body).await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, json!({"error": error})),
            "{body}"
        );
    }
    assert_eq!(resource_rows(&app.backing).await, 0);
    assert_eq!(app.backing.key_count().await, keys_before);

    let (_, created) = post(&app, "/v2/guardrails/", &client_body("keep_me", "original")).await;
    let id = created["uuid"].as_str().unwrap().to_owned();
    let (_, version) = stored(&app.backing, &id).await.unwrap();
    for (ops, error) in [
        (json!([{"op": "replace", "path": "/missing", "value": 1}]), None),
        (json!({"op": "add"}), None),
        (json!([{"op": "explode", "path": "/guardrail_name"}]), None),
        (
            json!([{"op": "add", "path": "/guardrail_name", "value": "renamed"}, {"op": "test", "path": "/modality", "value": "visual"}]),
            None,
        ),
        (
            json!([{"op": "add", "path": "/surprise", "value": 1}]),
            Some("Invalid patch operation: surprise is not a field that can be patched"),
        ),
        (
            json!([{"op": "add", "path": "/modality", "value": "smell"}]),
            Some("modality must be one of verbal, visual, audio"),
        ),
        (
            json!([{"op": "remove", "path": "/guardrail_prompt"}]),
            Some("guardrail_prompt is required"),
        ),
    ] {
        let (status, answer) = patch(&app, &id, &ops).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{ops}: {answer}");
        match error {
            Some(error) => assert_eq!(answer, json!({"error": error}), "{ops}"),
            None => assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("Invalid patch operation: "),
                "{ops}: {answer}"
            ),
        }
    }
    assert_eq!(
        stored(&app.backing, &id).await.unwrap().1,
        version,
        "no write happened"
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/guardrails/{id}")).await.1,
        created
    );

    // Another account sees none of it.
    let other = app.new_key("other");
    let (status, body) = app
        .call_as(&other, Method::GET, &format!("/v2/guardrails/{id}"))
        .await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()));
    let (status, body) = app
        .call_as(&other, Method::DELETE, &format!("/v2/guardrails/{id}"))
        .await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()));
    assert_eq!(
        app.call_as(&other, Method::GET, "/v2/guardrails").await.1["total_count"],
        0
    );
    assert_eq!(
        app.call_as(&other, Method::GET, "/v2/guardrails/tags").await.1,
        json!({"tags": [], "total_count": 0})
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/guardrails/{id}")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn lists_filter_by_name_tags_and_type_and_tags_are_listed() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for (name, tags) in [
        ("no_medical_advice", json!(["safety", "medical"])),
        ("no_legal_advice", json!(["safety"])),
        ("stay_on_topic", json!([])),
    ] {
        let mut body = client_body(name, "p");
        body["tags"] = tags;
        let (status, created) = post(&app, "/v2/guardrails/", &body).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(created["uuid"].as_str().unwrap().to_owned());
    }
    let ids_of = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["uuid"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, want) in [
        ("", ids.clone()),
        ("sort=descending", ids.iter().rev().cloned().collect()),
        ("name_or_uuid=ADVICE", ids[..2].to_vec()),
        (&format!("name_or_uuid={}", ids[2]), ids[2..].to_vec()),
        ("tags=medical", ids[..1].to_vec()),
        ("tags=medical,safety", ids[..2].to_vec()),
        ("type=all", ids.clone()),
        ("type=system", vec![]),
        ("limit=2&page=2", ids[2..].to_vec()),
    ] {
        let (status, list) = app.call(Method::GET, &format!("/v2/guardrails?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(ids_of(&list), want, "{query}");
    }
    for (query, error) in [
        (
            "type=robot",
            "Invalid value for type: \"robot\" (expected user, system or all)",
        ),
        (
            "legacy=maybe",
            "Invalid value for legacy: \"maybe\" (expected true or false)",
        ),
    ] {
        let (status, body) = app.call(Method::GET, &format!("/v2/guardrails?{query}")).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, json!({"error": error})),
            "{query}"
        );
    }
    let (status, tags) = app.call(Method::GET, "/v2/guardrails/tags").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tags, json!({"tags": ["medical", "safety"], "total_count": 2}));
    let (_, tags) = app.call(Method::GET, "/v2/guardrails/tags?search=saf").await;
    assert_eq!(tags, json!({"tags": ["safety"], "total_count": 1}));
}
