//! Objective sets: created as the official client sends them, checked (fields, references,
//! cycles), validated without a write, patched, sealed at rest and erased by a delete.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{Backing, TestApp, send};

fn not_found() -> Value {
    json!({ "error": "Objective not found" })
}

/// An objective as `ObjectivesCreate` dumps it: every field the client always sends.
fn item(name: &str, prompt: &str, next: Value) -> Value {
    let mut item = json!({
        "objective_name": name,
        "objective_prompt": prompt,
        "confirmation_mode": "auto",
        "output_variables": [],
        "modality": "verbal",
        "callback_url": "",
    });
    if let Value::Object(next) = next {
        item.as_object_mut().unwrap().extend(next);
    }
    item
}

/// A support intake: greet, collect, then escalate or wrap up.
fn intake(prompt: &str) -> Value {
    json!({
        "name": "support_intake",
        "data": [
            item("greet", prompt, json!({"next_required_objective": "collect"})),
            item("collect", "Ask for the order number.", json!({
                "output_variables": ["order_number"],
                "next_conditional_objectives": {"escalate": "the customer is upset", "wrap_up": "otherwise"},
            })),
            item("escalate", "Offer a human.", json!({"confirmation_mode": "manual"})),
            item("wrap_up", "Say goodbye.", json!({})),
        ],
        "allow_loops": false,
    })
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (StatusCode, Value) {
    send(app.req(Method::POST, path).json(body)).await
}

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
async fn an_objective_set_is_created_listed_patched_and_erased() {
    let app = TestApp::spawn().await;
    let secret = format!("objmark{:08x}", rand::random::<u32>());
    let (status, created) = post(
        &app,
        "/v2/objectives/",
        &intake(&format!("Greet them ({secret}).")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["objectives_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with('o') && id.len() == 17, "{id}");
    assert_eq!(created["objectives_name"], "support_intake");
    assert_eq!(created["name"], "support_intake");
    assert_eq!(created["allow_loops"], false);
    assert_eq!(created["status"], "active");
    let data = created["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    assert_eq!(data[0]["next_required_objective"], "collect");
    assert_eq!(data[0]["next_conditional_objectives"], Value::Null);
    assert_eq!(data[1]["output_variables"], json!(["order_number"]));
    assert_eq!(data[2]["confirmation_mode"], "manual");

    let (status, got) = app.call(Method::GET, &format!("/v2/objectives/{id}")).await;
    assert_eq!((status, got), (StatusCode::OK, created.clone()));
    for query in ["limit=25&page=1&type=user&sort=ascending", "limit=100", ""] {
        let (status, list) = app.call(Method::GET, &format!("/v2/objectives?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(
            list,
            json!({"data": [created.clone()], "total_count": 1}),
            "{query}"
        );
    }

    let (status, body) = send(
        app.req(Method::PATCH, &format!("/v2/objectives/{id}"))
            .json(&json!([
                {"op": "replace", "path": "/data/3/objective_prompt", "value": "Thank them and say goodbye."},
                {"op": "add", "path": "/data/3/output_variables/-", "value": "rating"},
                {"op": "replace", "path": "/objectives_name", "value": "intake_v2"},
                {"op": "replace", "path": "/allow_loops", "value": true},
                {"op": "replace", "path": "/objectives_id", "value": "o000000"},
            ])),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"message": "Objective updated successfully"})
        )
    );
    let (_, got) = app.call(Method::GET, &format!("/v2/objectives/{id}")).await;
    assert_eq!(got["objectives_id"], json!(id));
    assert_eq!(
        (got["name"].clone(), got["objectives_name"].clone()),
        (json!("intake_v2"), json!("intake_v2"))
    );
    assert_eq!(got["allow_loops"], true);
    assert_eq!(got["data"][3]["objective_prompt"], "Thank them and say goodbye.");
    assert_eq!(got["data"][3]["output_variables"], json!(["rating"]));

    assert!(!app.backing.holds(&secret).await, "the prompt is stored sealed");
    let (row_id, _) = stored(&app.backing, &id).await.unwrap();
    assert!(app.backing.data_keys().await.contains_key(&row_id));
    let (status, body) = app.call(Method::DELETE, &format!("/v2/objectives/{id}")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(stored(&app.backing, &id).await, None);
    assert!(!app.backing.data_keys().await.contains_key(&row_id));
    assert!(!app.backing.holds(&secret).await);
    for method in [Method::GET, Method::DELETE, Method::PATCH] {
        let (status, body) = send(
            app.req(method.clone(), &format!("/v2/objectives/{id}"))
                .json(&json!([])),
        )
        .await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()), "{method}");
    }
    assert_eq!(app.call(Method::GET, "/v2/objectives").await.1["total_count"], 0);
}

#[tokio::test]
async fn validate_checks_without_storing_anything() {
    let app = TestApp::spawn().await;
    let keys_before = app.backing.key_count().await;
    let (status, body) = post(&app, "/v2/objectives/validate", &intake("Greet them.")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"valid": true})));

    let looped = json!({"data": [
        item("ask", "Ask.", json!({"next_required_objective": "check"})),
        item("check", "Check.", json!({"next_conditional_objectives": {"ask": "unclear", "done": "clear"}})),
        item("done", "Done.", json!({})),
    ]});
    let mut allowed = looped.clone();
    allowed["allow_loops"] = json!(true);
    for (body, error) in [
        (
            looped,
            Some("Objectives form a cycle: ask -> check -> ask (set allow_loops to allow it)"),
        ),
        (allowed, None),
        (
            json!({"data": [item("a", "p", json!({})), item("b", "p", json!({}))]}),
            Some("Objectives must have one starting objective, one that no other leads to; found 2: a, b"),
        ),
        (
            json!({"data": [item("a", "p", json!({})), item("a", "p", json!({}))]}),
            Some("Duplicate objective_name: a"),
        ),
        (
            json!({"data": [item("a", "p", json!({"next_required_objective": "ghost"}))]}),
            Some("Objective a refers to unknown objective ghost"),
        ),
        (
            json!({"data": [item("a", "p", json!({"next_conditional_objectives": {"a": "again"}}))]}),
            Some("Objective a refers to itself"),
        ),
        (
            json!({"data": [item("a", "p", json!({"next_required_objective": "b", "next_conditional_objectives": {"b": "x"}})), item("b", "p", json!({}))]}),
            Some("Objective a has both next_required_objective and next_conditional_objectives"),
        ),
        (
            json!({"data": [item("bad name", "p", json!({}))]}),
            Some("data[0].objective_name must be 1 to 100 letters, digits or underscores"),
        ),
    ] {
        let (status, answer) = post(&app, "/v2/objectives/validate", &body).await;
        match error {
            None => assert_eq!(
                (status, answer),
                (StatusCode::OK, json!({"valid": true})),
                "{body}"
            ),
            Some(error) => assert_eq!(
                (status, answer),
                (StatusCode::BAD_REQUEST, json!({"error": error})),
                "{body}"
            ),
        }
    }
    // Several starting objectives are a validate finding, not a create error.
    let (status, _) = post(
        &app,
        "/v2/objectives",
        &json!({"data": [item("a", "p", json!({})), item("b", "p", json!({}))]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        resource_rows(&app.backing).await,
        1,
        "only the create stored anything"
    );
    assert_eq!(app.backing.key_count().await, keys_before + 1);
}

#[tokio::test]
async fn bad_creates_and_patches_are_400s_and_change_nothing() {
    let app = TestApp::spawn().await;
    let keys_before = app.backing.key_count().await;
    let long = "x".repeat(10_001);
    for (body, message) in [
        (json!({}), "data is required"),
        (json!({"data": []}), "data must be a list of 1 to 50 objectives"),
        (
            json!({"data": vec![item("a", "p", json!({})); 51]}),
            "data must be a list of 1 to 50 objectives",
        ),
        (
            json!({"data": [{"objective_prompt": "p"}]}),
            "data[0].objective_name is required",
        ),
        (
            json!({"data": [item("a", "p", json!({})), {"objective_name": "b"}]}),
            "data[1].objective_prompt is required",
        ),
        (
            json!({"data": [item("a", &long, json!({}))]}),
            "data[0].objective_prompt must be at most 10000 characters",
        ),
        (
            json!({"data": [item("a", "p", json!({"confirmation_mode": "later"}))]}),
            "data[0].confirmation_mode must be one of auto, manual",
        ),
        (
            json!({"data": [item("a", "p", json!({"modality": "smell"}))]}),
            "data[0].modality must be one of verbal, visual, audio",
        ),
        (
            json!({"data": [item("a", "p", json!({"output_variables": [1]}))]}),
            "data[0].output_variables must be a list of strings",
        ),
        (
            json!({"data": [item("a", "p", json!({"next_conditional_objectives": ["b"]}))]}),
            "data[0].next_conditional_objectives must map objective names to conditions",
        ),
        (
            json!({"data": [item("a", "p", json!({"callback_url": "nope"}))]}),
            "data[0].callback_url must be an http or https URL",
        ),
        (
            json!({"data": [item("a", "p", json!({"tool_call": 1}))]}),
            "data[0].tool_call must be an object",
        ),
        (json!({"data": ["a"]}), "data[0] must be an object"),
        (
            json!({"name": 5, "data": [item("a", "p", json!({}))]}),
            "name must be a string",
        ),
        (
            json!({"allow_loops": "yes", "data": [item("a", "p", json!({}))]}),
            "allow_loops must be a boolean",
        ),
    ] {
        let (status, answer) = post(&app, "/v2/objectives/", &body).await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, json!({"message": message})),
            "{body}"
        );
    }
    assert_eq!(resource_rows(&app.backing).await, 0);
    assert_eq!(app.backing.key_count().await, keys_before);

    let (_, created) = post(&app, "/v2/objectives/", &intake("Greet them.")).await;
    let id = created["objectives_id"].as_str().unwrap().to_owned();
    let (_, version) = stored(&app.backing, &id).await.unwrap();
    for (ops, error) in [
        (
            json!([{"op": "replace", "path": "/objective_name", "value": "x"}]),
            None,
        ),
        (json!({"op": "replace"}), None),
        (
            json!([{"op": "add", "path": "/objective_name", "value": "x"}]),
            Some("Invalid patch operation: objective_name is not a field that can be patched"),
        ),
        (
            json!([{"op": "add", "path": "/data/1/next_conditional_objectives/greet", "value": "loop"}]),
            Some("Objectives form a cycle: greet -> collect -> greet (set allow_loops to allow it)"),
        ),
        (
            json!([{"op": "remove", "path": "/data/1"}]),
            Some("Objective greet refers to unknown objective collect"),
        ),
        (
            json!([{"op": "replace", "path": "/data/0/modality", "value": "smell"}]),
            Some("data[0].modality must be one of verbal, visual, audio"),
        ),
    ] {
        let (status, answer) = send(app.req(Method::PATCH, &format!("/v2/objectives/{id}")).json(&ops)).await;
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
        app.call(Method::GET, &format!("/v2/objectives/{id}")).await.1,
        created
    );

    for bad in ["nope", "o12", "O0123456789abcdef", "p0123456789abcdef"] {
        let (status, body) = app.call(Method::GET, &format!("/v2/objectives/{bad}")).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, json!({"error": "Invalid objectives_id"})),
            "{bad}"
        );
    }
    let other = app.new_key("other");
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = app
            .call_as(&other, method.clone(), &format!("/v2/objectives/{id}"))
            .await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()), "{method}");
    }
    assert_eq!(
        app.call_as(&other, Method::GET, "/v2/objectives").await.1["total_count"],
        0
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/objectives/{id}")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn lists_page_sort_and_find_by_name() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for name in ["onboarding", "support_intake", "sales_discovery"] {
        let (status, created) = post(
            &app,
            "/v2/objectives/",
            &json!({"name": name, "data": [item("only", "p", json!({}))]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        ids.push(created["objectives_id"].as_str().unwrap().to_owned());
    }
    let ids_of = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["objectives_id"].as_str().unwrap().to_owned())
            .collect()
    };
    for (query, want, total) in [
        ("sort=desc", ids.iter().rev().cloned().collect(), 3),
        ("name_or_uuid=INTAKE", ids[1..2].to_vec(), 1),
        (&format!("name_or_uuid={}", ids[2]), ids[2..].to_vec(), 1),
        ("type=system", vec![], 0),
        ("limit=2&page=0", ids[..2].to_vec(), 3),
        ("limit=2&page=2", ids[2..].to_vec(), 3),
    ] {
        let (status, list) = app.call(Method::GET, &format!("/v2/objectives?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(ids_of(&list), want, "{query}");
        assert_eq!(list["total_count"], total, "{query}");
    }
}
