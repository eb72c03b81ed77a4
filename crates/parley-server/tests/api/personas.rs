//! Personas and PALs: two views of one stored resource, stock ones read-only, conversations that
//! use the account's own, pinned ids made on first use, a seed file, and erasure on delete.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{TestApp, TestDb, send};

/// A persona create body that any view accepts besides the PAL's required face.
fn persona_body(marker: &str) -> Value {
    json!({
        "persona_name": format!("Coach {marker}"),
        "system_prompt": format!("You coach people. {marker}"),
        "context": format!("Context {marker}"),
        "greeting": format!("Welcome {marker}"),
        "default_replica_id": "r90bbd427f71",
        "layers": { "llm": { "model": "tavus-gemma-4", "speculative_inference": true } },
        "x_client_extra": { "kept": [1, 2] },
    })
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (StatusCode, Value) {
    send(app.req(Method::POST, path).json(body)).await
}

async fn patch(app: &TestApp, path: &str, ops: &Value) -> (StatusCode, Value) {
    send(app.req(Method::PATCH, path).json(ops)).await
}

/// Creates a persona through `/v2/personas` and returns its id.
async fn create_persona(app: &TestApp, body: &Value) -> String {
    let (status, created) = post(app, "/v2/personas", body).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    created["persona_id"].as_str().unwrap().to_owned()
}

/// Stored persona rows of the app's state, by wire id.
async fn persona_rows(db: &TestDb, id: &str) -> i64 {
    db.count(
        "SELECT COUNT(*) FROM resource WHERE kind = 'persona' AND resource_id = ?",
        id,
    )
    .await
}

/// A resource row's version, to show that a refused write wrote nothing.
async fn version(db: &TestDb, id: &str) -> i64 {
    db.count("SELECT version FROM resource WHERE resource_id = ?", id)
        .await
}

/// The transcript of an ended conversation, from its verbose events.
async fn transcript(app: &TestApp, id: &str) -> Value {
    app.wait_for_jobs().await;
    let (_, verbose) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    verbose["events"]
        .as_array()
        .expect("verbose events")
        .iter()
        .find(|e| e["event_type"] == "application.transcription_ready")
        .expect("a transcript event")["properties"]["transcript"]
        .clone()
}

#[tokio::test]
async fn a_persona_is_one_resource_seen_through_two_views() {
    let app = TestApp::spawn().await;
    let (status, created) = post(&app, "/v2/personas", &persona_body("V1")).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["persona_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with('p') && id.len() == 17, "{id}");
    assert_eq!(created["persona_name"], "Coach V1");
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let (status, persona) = app.call(Method::GET, &format!("/v2/personas/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(persona["persona_id"], json!(id));
    assert_eq!(persona["persona_type"], "user");
    assert_eq!(persona["default_replica_id"], "r90bbd427f71");
    assert_eq!(persona["system_prompt"], "You coach people. V1");
    assert_eq!(persona["document_ids"], json!([]));
    assert_eq!(persona["layers"]["llm"]["model"], "tavus-gemma-4");
    assert_eq!(persona["x_client_extra"], json!({ "kept": [1, 2] }));
    assert!(persona.get("pal_id").is_none(), "{persona}");

    // Query flags the CLI sends change nothing.
    let (status, pal) = app
        .call(
            Method::GET,
            &format!("/v2/pals/{id}?include_settings=true&verbose=true"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pal["pal_id"], json!(id));
    assert_eq!(pal["pal_name"], "Coach V1");
    assert_eq!(pal["default_face_id"], "r90bbd427f71");
    assert_eq!(pal["pal_type"], "user");
    assert_eq!(pal["greeting"], "Welcome V1");
    assert_eq!(pal["tool_ids"], json!([]));
    assert_eq!(pal["x_client_extra"], json!({ "kept": [1, 2] }));
    assert!(pal.get("persona_name").is_none(), "{pal}");
    assert!(pal.get("default_replica_id").is_none(), "{pal}");

    // A PAL made through /pals reads back through /personas.
    let (status, made) = post(
        &app,
        "/v2/pals",
        &json!({ "pal_name": "Agentic", "system_prompt": "Be kind.", "default_face_id": "rf4e9d9790f0",
                 "tool_ids": ["end_call"], "memories": ["likes tea"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let pal_id = made["pal_id"].as_str().unwrap().to_owned();
    assert_eq!(made["pal_name"], "Agentic");
    let (_, as_persona) = app.call(Method::GET, &format!("/v2/personas/{pal_id}")).await;
    assert_eq!(as_persona["persona_name"], "Agentic");
    assert_eq!(as_persona["default_replica_id"], "rf4e9d9790f0");
    assert_eq!(as_persona["memories"], json!(["likes tea"]));

    // Both lists show both, newest first, in their own names.
    let (_, personas) = app.call(Method::GET, "/v2/personas").await;
    assert_eq!(personas["total_count"], 2);
    assert_eq!(personas["data"][0]["persona_id"], json!(pal_id));
    assert_eq!(personas["data"][1]["persona_id"], json!(id));
    let (_, pals) = app.call(Method::GET, "/v2/pals?limit=25&page=0").await;
    assert_eq!(pals["total_count"], 2);
    assert_eq!(pals["data"][0]["pal_id"], json!(pal_id));
    assert_eq!(pals["data"][1]["default_face_id"], "r90bbd427f71");

    let db = app.db().await;
    assert_eq!(persona_rows(&db, &id).await, 1);
    assert_eq!(persona_rows(&db, &pal_id).await, 1);
}

#[tokio::test]
async fn bad_creates_are_400s_that_name_the_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let required = json!({ "error": "Bad Request. {'default_face_id': ['default_face_id is required when creating a pal.']}" });
    let cases = [
        (
            "/v2/pals",
            json!({ "pal_name": "x", "system_prompt": "P" }),
            required.clone(),
        ),
        // The persona name of the field does not satisfy the PAL's requirement.
        (
            "/v2/pals",
            json!({ "system_prompt": "P", "default_replica_id": "rf4e9d9790f0" }),
            required.clone(),
        ),
        (
            "/v2/pals",
            json!({ "system_prompt": "P", "default_face_id": null }),
            required,
        ),
        (
            "/v2/pals",
            json!({ "pal_name": 5, "system_prompt": "P", "default_face_id": "rf4e9d9790f0" }),
            json!({ "error": "Invalid pal_name: expected a string" }),
        ),
        (
            "/v2/pals",
            json!({ "system_prompt": "P", "default_face_id": 7 }),
            json!({ "error": "Invalid default_face_id: expected a string" }),
        ),
        (
            "/v2/pals",
            json!({ "system_prompt": "P", "default_face_id": "r000000bad" }),
            json!({ "error": "Invalid face_id" }),
        ),
        (
            "/v2/personas",
            json!({ "system_prompt": "P", "default_replica_id": "r000000bad" }),
            json!({ "error": "Invalid replica_id" }),
        ),
        (
            "/v2/personas",
            json!({ "persona_name": "no prompt" }),
            json!({ "error": "Invalid system_prompt: a persona in full pipeline mode must have a system_prompt (echo mode need not)" }),
        ),
        (
            "/v2/personas",
            json!({ "system_prompt": "P", "document_ids": "d1" }),
            json!({ "error": "Invalid document_ids: expected a list of strings" }),
        ),
        (
            "/v2/personas",
            json!({ "system_prompt": "P", "layers": [] }),
            json!({ "error": "Invalid layers: expected an object" }),
        ),
        (
            "/v2/personas",
            json!({ "system_prompt": "P", "pipeline_mode": "turbo" }),
            json!({ "error": "Invalid pipeline_mode: expected one of full, echo, speech-to-speech" }),
        ),
        (
            "/v2/personas",
            json!(["not", "an", "object"]),
            json!({ "error": "Invalid request body: expected a JSON object" }),
        ),
    ];
    for (path, body, error) in cases {
        assert_eq!(
            post(&app, path, &body).await,
            (StatusCode::BAD_REQUEST, error),
            "{path} {body}"
        );
    }
    let db = app.db().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resource").await, 0);

    // Echo mode needs no prompt: the bodies livekit-plugins-tavus and Pipecat's script send.
    let (status, lk) = post(
        &app,
        "/v2/pals",
        &json!({ "pal_name": "lk_pal_x", "default_face_id": "r4067604db72", "pipeline_mode": "echo",
                 "layers": { "transport": { "transport_type": "livekit" } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{lk}");
    let (status, pc) = post(
        &app,
        "/v2/personas",
        &json!({ "persona_name": "Pipecat", "system_prompt": "", "pipeline_mode": "echo", "context": "",
                 "layers": { "transport": { "transport_type": "daily",
                     "room_settings": { "enable_recording": "cloud", "exp": 1 } } } }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pc}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resource").await, 2);
}

#[tokio::test]
async fn lists_page_filter_by_type_and_sort() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(create_persona(&app, &persona_body(&format!("L{n}"))).await);
    }
    let page = |q: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app.call(Method::GET, &format!("/v2/personas?{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            let shown: Vec<String> = body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["persona_id"].as_str().unwrap().to_owned())
                .collect();
            (shown, body["total_count"].as_u64().unwrap())
        }
    };
    let newest: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(page("limit=2&page=0").await, (newest[..2].to_vec(), 3));
    assert_eq!(page("limit=2&page=1").await, (newest[..2].to_vec(), 3));
    assert_eq!(page("limit=2&page=2").await, (newest[2..].to_vec(), 3));
    assert_eq!(page("persona_type=user").await, (newest.clone(), 3));
    assert_eq!(page("sort=asc&limit=2").await, (ids[..2].to_vec(), 3));
    assert_eq!(page("sort=asc&limit=2&page=2").await, (ids[2..].to_vec(), 3));
    assert_eq!(page("page=9").await, (Vec::new(), 3));

    let (system, total) = page("persona_type=system&limit=100").await;
    assert_eq!(total, system.len() as u64);
    for stock in [
        "pdced222244b",
        "pipecat0",
        "pipecat-stream",
        "pb87e71797da",
        "p1af207b8189",
    ] {
        assert!(system.contains(&stock.to_owned()), "{stock}");
    }
    assert!(ids.iter().all(|id| !system.contains(id)));
    let (_, pals) = app.call(Method::GET, "/v2/pals?pal_type=system&limit=1").await;
    assert_eq!(pals["data"][0]["pal_type"], "system");
    assert_eq!(pals["data"].as_array().unwrap().len(), 1);

    for bad in ["persona_type=both", "limit=0", "page=-1", "sort=up"] {
        let (status, body) = app.call(Method::GET, &format!("/v2/personas?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            body["error"].as_str().unwrap().starts_with("Invalid value for"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn stock_personas_resolve_and_cannot_be_changed_or_deleted() {
    let app = TestApp::spawn().await;
    // Pipecat reads the top-level persona_name of its default persona.
    let (status, pipecat) = app.call(Method::GET, "/v2/personas/pipecat0").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pipecat["persona_name"], "Pipecat");
    assert_eq!(pipecat["persona_type"], "system");
    assert_eq!(pipecat["pipeline_mode"], "echo");
    let (status, lk) = app.call(Method::GET, "/v2/pals/pb87e71797da").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lk["default_face_id"], "r4067604db72");
    assert_eq!(lk["pal_type"], "system");

    let forbidden = |text: &str| (StatusCode::FORBIDDEN, json!({ "error": text }));
    let ops = json!([{ "op": "replace", "path": "/persona_name", "value": "mine" }]);
    assert_eq!(
        patch(&app, "/v2/personas/pdced222244b", &ops).await,
        forbidden("pdced222244b is a system persona: it cannot be changed or deleted")
    );
    assert_eq!(
        app.call(Method::DELETE, "/v2/pals/pipecat-stream").await,
        forbidden("pipecat-stream is a system PAL: it cannot be changed or deleted")
    );
    // A method the route does not take is the usual 405.
    let (status, body) = app.call(Method::PUT, "/v2/personas/pdced222244b").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    let (_, again) = app.call(Method::GET, "/v2/personas/pdced222244b").await;
    assert_eq!(again["persona_name"], "Sales Coach");
    let db = app.db().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resource").await, 0);
}

#[tokio::test]
async fn a_patch_changes_the_persona_and_a_failed_one_changes_nothing() {
    let app = TestApp::spawn().await;
    let id = create_persona(&app, &persona_body("P1")).await;
    let path = format!("/v2/pals/{id}");
    // What the official client sends: replace lists, add layers without a parent, then a
    // conferencing change on its own.
    let ops = json!([
        { "op": "replace", "path": "/pal_name", "value": "Renamed" },
        { "op": "replace", "path": "/document_ids", "value": ["d1"] },
        { "op": "add", "path": "/layers/knowledge_base", "value": { "rag_n_chunks": 3 } },
        { "op": "add", "path": "/layers/perception/perception_model", "value": "raven-1" },
        { "op": "remove", "path": "/x_client_extra" },
    ]);
    let (status, patched) = patch(&app, &path, &ops).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["pal_name"], "Renamed");
    assert_eq!(patched["document_ids"], json!(["d1"]));
    assert_eq!(patched["layers"]["knowledge_base"]["rag_n_chunks"], 3);
    assert!(patched.get("x_client_extra").is_none());
    let (status, _) = patch(
        &app,
        &path,
        &json!([{ "op": "add", "path": "/layers/conferencing/username", "value": "coach" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, persona) = app.call(Method::GET, &format!("/v2/personas/{id}")).await;
    assert_eq!(persona["persona_name"], "Renamed");
    assert_eq!(persona["layers"]["conferencing"]["username"], "coach");
    assert_eq!(persona["layers"]["perception"]["perception_model"], "raven-1");
    assert_eq!(persona["layers"]["llm"]["model"], "tavus-gemma-4");

    let db = app.db().await;
    let before = app.call(Method::GET, &path).await.1;
    let kept_version = version(&db, &id).await;
    let cases = [
        (
            json!([{ "op": "replace", "path": "/pal_name", "value": "x" }, { "op": "replace", "path": "/missing", "value": 1 }]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({ "op": "replace" }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!([{ "op": "test", "path": "/pal_name", "value": "other" }]),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!([{ "op": "replace", "path": "/system_prompt", "value": 5 }]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{ "op": "remove", "path": "/system_prompt" }]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{ "op": "replace", "path": "/default_face_id", "value": "r000000bad" }]),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (ops, wanted) in cases {
        let (status, body) = patch(&app, &path, &ops).await;
        assert_eq!(status, wanted, "{ops}: {body}");
        match wanted {
            StatusCode::UNPROCESSABLE_ENTITY => assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Invalid JSON patch format"),
                "{body}"
            ),
            _ => assert!(body["error"].as_str().unwrap().starts_with("Invalid "), "{body}"),
        }
        assert_eq!(app.call(Method::GET, &path).await.1, before, "{ops}");
        assert_eq!(version(&db, &id).await, kept_version, "{ops}");
    }
    let (_, body) = patch(
        &app,
        &format!("/v2/personas/{id}"),
        &json!([{ "op": "replace", "path": "/default_replica_id", "value": "r000000bad" }]),
    )
    .await;
    assert_eq!(body, json!({ "error": "Invalid replica_id" }));
    // Read-only fields are the server's: a patch of them is ignored, not stored.
    let (status, same) = patch(
        &app,
        &path,
        &json!([{ "op": "replace", "path": "/pal_id", "value": "pother000001" },
                { "op": "replace", "path": "/created_at", "value": "yesterday" }]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(same["pal_id"], json!(id));
    assert_eq!(same["created_at"], before["created_at"]);
}

#[tokio::test]
async fn unknown_foreign_deleted_and_malformed_ids_all_answer_alike() {
    let app = TestApp::spawn().await;
    let other = app.new_key("other");
    let theirs = {
        let (status, made) = send(
            app.req_as(&other, Method::POST, "/v2/personas")
                .json(&persona_body("THEIRS")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        made["persona_id"].as_str().unwrap().to_owned()
    };
    let deleted = create_persona(&app, &persona_body("GONE")).await;
    assert_eq!(
        app.call(Method::DELETE, &format!("/v2/personas/{deleted}"))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let long = "p".repeat(10_000);
    for id in [
        theirs.as_str(),
        deleted.as_str(),
        "p000000000000",
        "not-an-id",
        "%00",
        long.as_str(),
    ] {
        for (view, error) in [("personas", "Invalid persona_id"), ("pals", "Invalid pal_id")] {
            let path = format!("/v2/{view}/{id}");
            let wanted = (StatusCode::BAD_REQUEST, json!({ "error": error }));
            assert_eq!(app.call(Method::GET, &path).await, wanted, "{path}");
            assert_eq!(app.call(Method::DELETE, &path).await, wanted, "{path}");
            let ops = json!([{ "op": "replace", "path": "/context", "value": "x" }]);
            assert_eq!(patch(&app, &path, &ops).await, wanted, "{path}");
        }
    }
    for path in [
        format!("/v2/pals/{theirs}/tools/"),
        format!("/v2/pals/{deleted}/skills/"),
    ] {
        assert_eq!(
            app.call(Method::GET, &path).await,
            (StatusCode::BAD_REQUEST, json!({ "error": "Invalid pal_id" })),
            "{path}"
        );
    }
    // The other account's persona is untouched.
    let (status, still) = app
        .call_as(&other, Method::GET, &format!("/v2/personas/{theirs}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["context"], "Context THEIRS");
}

#[tokio::test]
async fn deleting_a_persona_erases_its_content() {
    let app = TestApp::spawn().await;
    let marker = "PERSONA-ERASE-1f3a";
    let id = create_persona(&app, &persona_body(marker)).await;
    let kept = create_persona(&app, &persona_body("KEPT-2b4c")).await;
    let db = app.db().await;
    let row_id = db
        .text("SELECT row_id FROM resource WHERE resource_id = ?", &id)
        .await;
    let kept_row = db
        .text("SELECT row_id FROM resource WHERE resource_id = ?", &kept)
        .await;
    // Stored sealed: the marker was never in plaintext, and the key that opens it exists.
    assert!(!app.backing.holds(marker).await);
    let keys = app.backing.data_keys().await;
    assert!(keys.contains_key(&row_id), "the persona has a data key");

    let (status, body) = app.call(Method::DELETE, &format!("/v2/pals/{id}")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));

    assert_eq!(persona_rows(&db, &id).await, 0);
    let keys = app.backing.data_keys().await;
    assert!(!keys.contains_key(&row_id), "the persona's data key is destroyed");
    assert!(keys.contains_key(&kept_row), "another persona's key stays");
    assert!(!app.backing.holds(marker).await);
    app.wait_for_jobs().await;
    assert_eq!(
        db.count("SELECT COUNT(*) FROM resource_purge WHERE row_id = ?", &row_id)
            .await,
        0,
        "the purge finished"
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/personas/{id}")).await,
        (StatusCode::BAD_REQUEST, json!({ "error": "Invalid persona_id" }))
    );
    let (status, other) = app.call(Method::GET, &format!("/v2/personas/{kept}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(other["context"], "Context KEPT-2b4c");
}

#[tokio::test]
async fn a_conversation_speaks_with_the_accounts_own_persona() {
    let app = TestApp::spawn().await;
    let id = create_persona(&app, &persona_body("OWN-77")).await;
    // No replica named: the persona's default replica.
    let conversation = app
        .ended(json!({ "persona_id": id, "conversation_name": "pricing" }))
        .await;
    let (_, got) = app
        .call(Method::GET, &format!("/v2/conversations/{conversation}"))
        .await;
    assert_eq!(got["persona_id"], json!(id));
    assert_eq!(got["replica_id"], "r90bbd427f71");
    let t = transcript(&app, &conversation).await;
    assert_eq!(t[0]["content"], "You coach people. OWN-77\n\nContext OWN-77");
    assert_eq!(t[1]["content"], "Welcome OWN-77");

    // The conversation's own context and greeting still win where they did.
    let second = app
        .ended(json!({ "pal_id": id, "face_id": "rf4e9d9790f0",
                       "conversational_context": "Mine", "custom_greeting": "Hey" }))
        .await;
    let t = transcript(&app, &second).await;
    assert_eq!(
        t[0]["content"],
        "You coach people. OWN-77\n\nContext OWN-77\n\nMine"
    );
    assert_eq!(t[1]["content"], "Hey");
    let (_, got) = app
        .call(Method::GET, &format!("/v2/conversations/{second}"))
        .await;
    assert_eq!(got["replica_id"], "rf4e9d9790f0");

    // An active conversation keeps what it used: a later change of the persona does not reach it.
    let third = app.create(json!({ "persona_id": id })).await;
    app.wait_joined(&third).await;
    let ops = json!([{ "op": "replace", "path": "/system_prompt", "value": "Changed." }]);
    assert_eq!(
        patch(&app, &format!("/v2/personas/{id}"), &ops).await.0,
        StatusCode::OK
    );
    let (status, _) = app
        .call(Method::POST, &format!("/v2/conversations/{third}/end"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let t = transcript(&app, &third).await;
    assert_eq!(t[0]["content"], "You coach people. OWN-77\n\nContext OWN-77");
}

#[tokio::test]
async fn a_deleted_or_foreign_persona_is_refused_like_an_unknown_one() {
    let app = TestApp::spawn().await;
    let other = app.new_key("other");
    let (_, theirs) = send(
        app.req_as(&other, Method::POST, "/v2/personas")
            .json(&persona_body("T")),
    )
    .await;
    let theirs = theirs["persona_id"].as_str().unwrap().to_owned();
    let gone = create_persona(&app, &persona_body("G")).await;
    app.call(Method::DELETE, &format!("/v2/personas/{gone}")).await;
    // A persona whose default replica names nothing usable.
    let no_replica = create_persona(&app, &json!({ "persona_name": "echo", "pipeline_mode": "echo" })).await;

    let unknown = send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "persona_id": "p0000000000000000" })),
    )
    .await;
    assert_eq!(
        unknown,
        (StatusCode::BAD_REQUEST, json!({ "error": "Invalid persona_id" }))
    );
    for body in [
        json!({ "persona_id": theirs }),
        json!({ "pal_id": gone }),
        json!({ "persona_id": gone, "replica_id": "rfe12d8b9597" }),
    ] {
        let got = send(app.req(Method::POST, "/v2/conversations").json(&body)).await;
        assert_eq!(got, unknown, "{body}");
    }
    let got = send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "persona_id": no_replica })),
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST);
    assert!(
        got.1["error"].as_str().unwrap().starts_with("Invalid replica_id"),
        "{got:?}"
    );
    let db = app.db().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM conversation").await, 0);
}

#[tokio::test]
async fn pinned_ids_are_made_on_first_use_only_when_accepted() {
    let app = TestApp::spawn_with(|c| {
        c.accept_unknown_ids = true;
        c.max_concurrent_conversations = 50;
    })
    .await;
    // Before any load: the key command opens the same embedded database.
    let other = app.new_key("other");
    // An app that pins ids from the hosted service.
    let conversation = app
        .create(json!({ "persona_id": "p1fec29e7f23", "replica_id": "r9d30b0e55ac" }))
        .await;
    let (_, got) = app
        .call(Method::GET, &format!("/v2/conversations/{conversation}"))
        .await;
    assert_eq!(
        (got["persona_id"].clone(), got["replica_id"].clone()),
        (json!("p1fec29e7f23"), json!("r9d30b0e55ac"))
    );
    let db = app.db().await;
    assert_eq!(persona_rows(&db, "p1fec29e7f23").await, 1);
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM resource WHERE kind = 'replica' AND resource_id = ?",
            "r9d30b0e55ac"
        )
        .await,
        1
    );
    let (status, persona) = app.call(Method::GET, "/v2/pals/p1fec29e7f23").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(persona["pal_type"], "user");
    // The replica routes read the pinned replica as the account's own.
    let (status, face) = app.call(Method::GET, "/v2/faces/r9d30b0e55ac").await;
    assert_eq!(status, StatusCode::OK, "{face}");
    assert_eq!(face["face_name"], "r9d30b0e55ac");
    assert_eq!(face["model_name"], "phoenix-4");
    let ops = json!([{ "op": "replace", "path": "/system_prompt", "value": "PINNED-PROMPT" }]);
    assert_eq!(
        patch(&app, "/v2/personas/p1fec29e7f23", &ops).await.0,
        StatusCode::OK
    );
    // A GET alone is a first use too.
    let (status, _) = app.call(Method::GET, "/v2/personas/pabc123def456").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(persona_rows(&db, "pabc123def456").await, 1);

    // Concurrent first uses all succeed and make one row.
    let creates = (0..8).map(|_| {
        send(
            app.req(Method::POST, "/v2/conversations")
                .json(&json!({ "persona_id": "p5a5a5a5a5a5a", "replica_id": "r5a5a5a5a5a5a" })),
        )
    });
    for (status, body) in futures::future::join_all(creates).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(persona_rows(&db, "p5a5a5a5a5a5a").await, 1);

    // Ill-formed ids stay unknown, and a bad request uses no id for the first time.
    for (body, error) in [
        (json!({ "persona_id": "P1FEC29E7F23" }), "Invalid persona_id"),
        (json!({ "persona_id": "p12345" }), "Invalid persona_id"),
        (json!({ "replica_id": "r-9d30b0e55" }), "Invalid replica_id"),
    ] {
        let got = send(app.req(Method::POST, "/v2/conversations").json(&body)).await;
        assert_eq!(
            got,
            (StatusCode::BAD_REQUEST, json!({ "error": error })),
            "{body}"
        );
    }
    let got = send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "persona_id": "pfresh000001", "callback_url": "ftp://nope" })),
    )
    .await;
    assert_eq!(got.0, StatusCode::BAD_REQUEST);
    assert_eq!(persona_rows(&db, "pfresh000001").await, 0);
    db.close().await;

    // Strict again: unknown ids are 400s, the stored ones stay the account's own.
    let key = app.key.clone();
    let backing = app.stop().await;
    let mut app = TestApp::spawn_on(backing, |_| {}).await;
    app.key = key;
    let got = send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "persona_id": "p2222222222aa" })),
    )
    .await;
    assert_eq!(
        got,
        (StatusCode::BAD_REQUEST, json!({ "error": "Invalid persona_id" }))
    );
    let id = app
        .ended(json!({ "persona_id": "p1fec29e7f23", "replica_id": "r9d30b0e55ac" }))
        .await;
    assert_eq!(transcript(&app, &id).await[0]["content"], "PINNED-PROMPT");
    for body in [
        json!({ "persona_id": "p1fec29e7f23" }),
        json!({ "replica_id": "r9d30b0e55ac" }),
    ] {
        let got = send(app.req_as(&other, Method::POST, "/v2/conversations").json(&body)).await;
        assert_eq!(
            got.0,
            StatusCode::BAD_REQUEST,
            "another account's pinned id: {body}"
        );
    }
}

#[tokio::test]
async fn seeded_entries_exist_for_every_account_from_their_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        json!({
            "personas": [{ "persona_id": "pseed00000001", "persona_name": "Seeded",
                           "system_prompt": "SEED-PROMPT", "greeting": "SEED-HELLO",
                           "default_replica_id": "rseed00000001" }],
            "pals": [{ "pal_id": "pseed00000002", "pal_name": "Seeded PAL", "pipeline_mode": "echo",
                       "default_face_id": "rfe12d8b9597" }],
            "replicas": [{ "replica_id": "rseed00000001", "replica_name": "Seeded face" }],
        })
        .to_string(),
    )
    .unwrap();
    let path = seed.clone();
    let app = TestApp::spawn_with(move |c| c.seed_file = Some(path)).await;
    let other = app.new_key("other");
    let db = app.db().await;
    // Not stored, so not listed, until used.
    assert_eq!(app.call(Method::GET, "/v2/personas").await.1["total_count"], 0);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resource").await, 0);

    let (status, mine) = app.call(Method::GET, "/v2/pals/pseed00000001").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine["pal_name"], "Seeded");
    assert_eq!(mine["default_face_id"], "rseed00000001");
    let ops = json!([{ "op": "replace", "path": "/persona_name", "value": "Mine now" }]);
    assert_eq!(
        patch(&app, "/v2/personas/pseed00000001", &ops).await.0,
        StatusCode::OK
    );

    // The other account gets its own copy, as seeded, and a conversation with it uses the
    // seeded replica too.
    let conversation = {
        let res = send(
            app.req_as(&other, Method::POST, "/v2/conversations")
                .json(&json!({ "persona_id": "pseed00000001" })),
        )
        .await;
        assert_eq!(res.0, StatusCode::OK, "{}", res.1);
        assert_eq!(res.1["replica_id"], "rseed00000001");
        res.1["conversation_id"].as_str().unwrap().to_owned()
    };
    let (_, theirs) = app
        .call_as(&other, Method::GET, "/v2/personas/pseed00000001")
        .await;
    assert_eq!(theirs["persona_name"], "Seeded");
    let (status, _) = app
        .call_as(
            &other,
            Method::POST,
            &format!("/v2/conversations/{conversation}/end"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.wait_for_jobs().await;
    let (_, verbose) = app
        .call_as(
            &other,
            Method::GET,
            &format!("/v2/conversations/{conversation}?verbose=true"),
        )
        .await;
    let t = verbose["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "application.transcription_ready")
        .unwrap()["properties"]["transcript"]
        .clone();
    assert_eq!(t[0]["content"], "SEED-PROMPT");
    assert_eq!(t[1]["content"], "SEED-HELLO");
    let rows = db
        .rows(
            "SELECT account_id, kind FROM resource WHERE resource_id IN ('pseed00000001', 'rseed00000001') ORDER BY account_id, kind",
            &[],
        )
        .await;
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        rows,
        [
            ("default".to_owned(), "persona".to_owned()),
            ("other".to_owned(), "persona".to_owned()),
            ("other".to_owned(), "replica".to_owned()),
        ]
    );
    // Deleting a seeded entry never used stores and erases nothing.
    assert_eq!(
        app.call(Method::DELETE, "/v2/personas/pseed00000002").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(persona_rows(&db, "pseed00000002").await, 0);
    db.close().await;

    // A seed file that does not hold up stops the start, saying why.
    std::fs::write(
        &seed,
        r#"{"personas": [{"persona_id": "pdced222244b", "system_prompt": "x"}]}"#,
    )
    .unwrap();
    let mut config = app.backing.config();
    config.seed_file = Some(seed);
    let e = parley_server::start(config)
        .await
        .err()
        .expect("a bad seed stops the start");
    assert!(format!("{e:#}").contains("stock id"), "{e:#}");
}

#[tokio::test]
async fn a_pals_tools_and_skills_are_listed_attached_and_detached() {
    let app = TestApp::spawn().await;
    let (status, made) = post(
        &app,
        "/v2/pals",
        &json!({ "pal_name": "Tools", "system_prompt": "P", "default_face_id": "rfe12d8b9597",
                 "tool_ids": ["t0123456789ab"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = made["pal_id"].as_str().unwrap().to_owned();
    // With the trailing slash the client sends.
    let tools = format!("/v2/pals/{id}/tools/");
    assert_eq!(
        app.call(Method::GET, &tools).await,
        (StatusCode::OK, json!({ "data": [], "total_count": 0 }))
    );
    let (status, attached) = post(&app, &tools, &json!({ "tool_ids": ["end_call"] })).await;
    assert_eq!(status, StatusCode::OK, "{attached}");
    assert_eq!(attached["data"][0]["tool_id"], "end_call");
    let (_, listed) = app.call(Method::GET, &tools).await;
    assert_eq!(listed["total_count"], 1);
    assert_eq!(listed["data"][0]["origin"], "llm");
    let (_, pal) = app.call(Method::GET, &format!("/v2/pals/{id}")).await;
    assert_eq!(pal["tool_ids"], json!(["t0123456789ab", "end_call"]));

    for (body, error) in [
        (json!({ "tool_ids": ["tnope"] }), "Invalid tool_id: tnope"),
        (
            json!({ "tool_ids": [] }),
            "Invalid tool_ids: expected a list of 1 to 50 tool ids",
        ),
        (
            json!({ "tools": ["end_call"] }),
            "Invalid tool_ids: expected a list of 1 to 50 tool ids",
        ),
    ] {
        assert_eq!(
            post(&app, &tools, &body).await,
            (StatusCode::BAD_REQUEST, json!({ "error": error })),
            "{body}"
        );
    }
    let detach = format!("/v2/pals/{id}/tools/end_call");
    assert_eq!(app.call(Method::DELETE, &detach).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        app.call(Method::DELETE, &detach).await,
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "Invalid tool_id: end_call is not attached" })
        )
    );
    let (_, pal) = app.call(Method::GET, &format!("/v2/pals/{id}")).await;
    assert_eq!(pal["tool_ids"], json!(["t0123456789ab"]));

    assert_eq!(
        app.call(Method::GET, &format!("/v2/pals/{id}/skills/")).await,
        (StatusCode::OK, json!({ "data": {} }))
    );
    let skills = json!({ "internet_search": { "skill_id": "internet_search", "config": {} } });
    let ops = json!([{ "op": "add", "path": "/skills", "value": skills }]);
    assert_eq!(
        patch(&app, &format!("/v2/pals/{id}"), &ops).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/pals/{id}/skills")).await,
        (StatusCode::OK, json!({ "data": skills }))
    );
    // A stock PAL has no tools or skills, and takes none.
    assert_eq!(
        app.call(Method::GET, "/v2/pals/pcb7a34da5fe/tools/").await,
        (StatusCode::OK, json!({ "data": [], "total_count": 0 }))
    );
    assert_eq!(
        post(
            &app,
            "/v2/pals/pcb7a34da5fe/tools/",
            &json!({ "tool_ids": ["end_call"] })
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn the_accounts_own_replica_serves_until_it_is_deleted() {
    let app = TestApp::spawn().await;
    let other = app.new_key("other");
    let (status, made) = post(
        &app,
        "/v2/replicas",
        &json!({ "replica_name": "Mine", "train_video_url": "https://videos.example.com/t.mp4" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let replica = made["replica_id"].as_str().unwrap().to_owned();
    // As a persona's default face, and named by a conversation.
    let (status, pal) = post(
        &app,
        "/v2/pals",
        &json!({ "system_prompt": "P", "default_face_id": replica }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pal}");
    let pal = pal["pal_id"].as_str().unwrap().to_owned();
    let id = app.create(json!({ "pal_id": pal })).await;
    let (_, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(got["replica_id"], json!(replica));
    // The room names the replica as the account named it.
    let (_, room) = send(app.client.get(format!("{}/rooms/{id}/state", app.base))).await;
    assert_eq!(room["replica"]["name"], "Mine");

    // Another account cannot use it, and once deleted (softly) nobody can: the same 400 as an
    // unknown id, whether named or reached through the persona's default.
    let unknown = (StatusCode::BAD_REQUEST, json!({ "error": "Invalid replica_id" }));
    let theirs = send(
        app.req_as(&other, Method::POST, "/v2/conversations")
            .json(&json!({ "replica_id": replica })),
    )
    .await;
    assert_eq!(theirs, unknown);
    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/replicas/{replica}?hard=false"))
        .await;
    assert!(status.is_success(), "{status}");
    for body in [json!({ "replica_id": replica }), json!({ "pal_id": pal })] {
        let got = send(app.req(Method::POST, "/v2/conversations").json(&body)).await;
        assert_eq!(got, unknown, "{body}");
    }
    assert_eq!(
        post(
            &app,
            "/v2/personas",
            &json!({ "system_prompt": "P", "default_replica_id": replica })
        )
        .await,
        unknown
    );
    let db = app.db().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM conversation").await, 1);
}

#[tokio::test]
async fn a_pals_skills_are_attached_patched_replaced_and_detached_one_by_one() {
    let app = TestApp::spawn().await;
    let (_, made) = post(
        &app,
        "/v2/pals",
        &json!({ "pal_name": "Skills", "system_prompt": "P", "default_face_id": "rfe12d8b9597" }),
    )
    .await;
    let id = made["pal_id"].as_str().unwrap().to_owned();
    let one = format!("/v2/pals/{id}/skills/internet_search");
    let put = |path: String, body: Value| send(app.req(Method::PUT, &path).json(&body));

    let (status, attached) = put(one.clone(), json!({ "config": { "max_results": 3 } })).await;
    assert_eq!(status, StatusCode::OK, "{attached}");
    assert_eq!(attached["config"], json!({ "max_results": 3 }));
    let attached_at = attached["attached_at"].clone();
    assert!(attached_at.is_string());
    let (status, patched) = send(
        app.req(Method::PATCH, &one)
            .json(&json!({ "config": { "safe": true } })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["config"], json!({ "max_results": 3, "safe": true }));
    assert_eq!(
        patched["attached_at"], attached_at,
        "a patch keeps when it was attached"
    );
    assert_eq!(
        app.call(Method::GET, &one).await,
        (StatusCode::OK, patched.clone())
    );
    let (_, pal) = app.call(Method::GET, &format!("/v2/pals/{id}")).await;
    assert_eq!(
        pal["skills"]["internet_search"], patched,
        "kept in the PAL's skills"
    );

    // Refused without a change: an unknown skill, presentation without its documents, a stock PAL.
    let db = app.db().await;
    let before = version(&db, &id).await;
    assert_eq!(
        put(format!("/v2/pals/{id}/skills/my_skill"), json!({ "config": {} })).await,
        (
            StatusCode::NOT_FOUND,
            json!({ "error": "Unknown skill 'my_skill'" })
        )
    );
    assert_eq!(
        put(
            format!("/v2/pals/{id}/skills/presentation"),
            json!({ "config": {} })
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "Bad Request: {'document_ids': ['Missing data for required field.']}" })
        )
    );
    assert_eq!(
        put(one.clone(), json!({ "config": "loud" })).await,
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": "Invalid config: expected an object" })
        )
    );
    assert_eq!(
        put("/v2/pals/pcb7a34da5fe/skills/memory".into(), json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(version(&db, &id).await, before);

    // Replacing all at once drops the ones not named.
    let all = format!("/v2/pals/{id}/skills/");
    let (status, replaced) = put(all.clone(), json!({ "skills": { "memory": { "config": {} } } })).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(
        replaced["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["memory"]
    );
    assert_eq!(
        app.call(Method::GET, &one).await,
        (
            StatusCode::NOT_FOUND,
            json!({ "error": "Skill 'internet_search' is not attached to this PAL" })
        )
    );
    let memory = format!("/v2/pals/{id}/skills/memory");
    assert_eq!(app.call(Method::DELETE, &memory).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.call(Method::DELETE, &memory).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        app.call(Method::GET, &all).await,
        (StatusCode::OK, json!({ "data": {} }))
    );
    db.close().await;
}

/// The hosted quickstarts' "Stock Demo Persona" works without any option, alone or with the
/// replica the React quickstart names.
#[tokio::test]
async fn the_quickstarts_stock_demo_persona_needs_no_option() {
    let app = TestApp::spawn().await;
    for body in [
        json!({ "persona_id": "p9a95912" }),
        json!({ "persona_id": "p9a95912", "replica_id": "rf4703150052" }),
    ] {
        let (status, created) = post(&app, "/v2/conversations", &body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {created}");
        let id = created["conversation_id"].as_str().unwrap();
        let (_, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
        assert_eq!(got["persona_id"], "p9a95912");
        let replica = body["replica_id"].as_str().unwrap_or("r79e1c033f");
        assert_eq!(
            got["replica_id"], replica,
            "the persona's default replica when none is named"
        );
        app.call(Method::POST, &format!("/v2/conversations/{id}/end"))
            .await;
    }
    let (status, persona) = app.call(Method::GET, "/v2/personas/p9a95912").await;
    assert_eq!(
        (status, &persona["persona_type"]),
        (StatusCode::OK, &json!("system"))
    );
}

/// Concurrent patches of one persona all land, none lost and none refused: the process's writes
/// of one resource queue rather than race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_one_persona_all_land() {
    let app = TestApp::spawn().await;
    let mut body = persona_body("flood");
    body["memories"] = json!([]);
    let id = create_persona(&app, &body).await;
    let path = format!("/v2/personas/{id}");
    let patches = (0..40).map(|i| {
        let ops = json!([{ "op": "add", "path": "/memories/-", "value": format!("m{i}") }]);
        send(app.req(Method::PATCH, &path).json(&ops))
    });
    for (status, answer) in futures::future::join_all(patches).await {
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let (_, got) = app.call(Method::GET, &path).await;
    let mut kept: Vec<String> = serde_json::from_value(got["memories"].clone()).unwrap();
    kept.sort();
    let mut sent: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    sent.sort();
    assert_eq!(kept, sent);
    let db = app.db().await;
    assert_eq!(version(&db, &id).await, 41, "one write per patch");
    db.close().await;
}
