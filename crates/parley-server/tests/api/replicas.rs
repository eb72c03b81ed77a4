//! Replicas and faces (one resource, two sets of names) and the stock voice catalogue.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{TestApp, TestDb, eventually, send};

/// The stock replicas every account lists.
const STOCK: usize = parley_domain::registry::REPLICAS.len();

async fn call_json(app: &TestApp, key: &str, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    send(app.req_as(key, method, path).json(&body)).await
}

/// Creates a replica of the app's account through `path` (`/v2/replicas` or `/v2/faces`); its id.
async fn create(app: &TestApp, path: &str, body: Value) -> String {
    let (status, out) = call_json(app, &app.key, Method::POST, path, body).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let id_field = if path.ends_with("faces") {
        "face_id"
    } else {
        "replica_id"
    };
    out[id_field].as_str().unwrap().to_owned()
}

fn video(name: &str) -> Value {
    json!({ "replica_name": name, "train_video_url": "https://videos.example.com/train.mp4" })
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[field].as_str().unwrap().to_owned())
        .collect()
}

async fn resource_rows(db: &TestDb) -> i64 {
    db.scalar("SELECT COUNT(*) FROM resource").await
}

#[tokio::test]
async fn the_stock_faces_are_listed_for_the_quickstart_and_face_list() {
    let app = TestApp::spawn().await;

    // `tavus quickstart` reads data[0].face_id; `tavus face list` reads these four columns.
    let (status, faces) = app.call(Method::GET, "/v2/faces?limit=25&face_type=system").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faces["total_count"], STOCK);
    let first = &faces["data"][0];
    assert!(parley_domain::registry::replica(first["face_id"].as_str().unwrap()).is_some());
    for row in faces["data"].as_array().unwrap() {
        for field in [
            "face_id",
            "face_name",
            "status",
            "model_name",
            "created_at",
            "training_progress",
        ] {
            assert!(row[field].is_string(), "{field} in {row}");
        }
        assert_eq!(
            (row["status"].as_str(), row["face_type"].as_str()),
            (Some("completed"), Some("system"))
        );
        assert_eq!(row["training_progress"], "100/100");
        assert!(row.get("replica_id").is_none(), "{row}");
    }

    // The same rows under the replica names.
    let (status, replicas) = app
        .call(Method::GET, "/v2/replicas?limit=25&replica_type=system")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&replicas, "replica_id"), ids(&faces, "face_id"));
    assert_eq!(replicas["data"][0]["replica_type"], "system");
    assert!(replicas["data"][0].get("face_id").is_none());

    // `tavus doctor` asks for one.
    let (status, one) = app.call(Method::GET, "/v2/faces?limit=1").await;
    assert_eq!(
        (status, one["data"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    assert_eq!(one["total_count"], STOCK);

    // A stock face reads alone, with its type only when verbose.
    let id = first["face_id"].as_str().unwrap();
    let (_, face) = app.call(Method::GET, &format!("/v2/faces/{id}")).await;
    assert_eq!(face["face_id"], id);
    assert!(face.get("face_type").is_none());
    let (_, face) = app
        .call(Method::GET, &format!("/v2/faces/{id}?verbose=true"))
        .await;
    assert_eq!(face["face_type"], "system");
}

#[tokio::test]
async fn lists_filter_and_page_with_exact_totals() {
    let app = TestApp::spawn().await;
    let a = create(&app, "/v2/replicas", video("a")).await;
    let b = create(
        &app,
        "/v2/faces",
        json!({"face_name": "b", "train_video_url": "https://x.example/b.mp4", "model_name": "phoenix-3"}),
    )
    .await;
    let c = create(&app, "/v2/replicas", video("c")).await;

    let list = |q: &'static str| {
        let app = &app;
        async move {
            let (status, body) = app.call(Method::GET, &format!("/v2/faces{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            body
        }
    };
    // The account's own first, newest first, then the stock ones.
    let all = list("?limit=100").await;
    assert_eq!(all["total_count"], 3 + STOCK);
    assert_eq!(ids(&all, "face_id")[..3], [c.clone(), b.clone(), a.clone()]);
    assert_eq!(all["data"][0]["face_type"], "user");
    assert_eq!(all["data"][0]["face_name"], "c");

    let user = list("?face_type=user").await;
    assert_eq!(
        (user["total_count"].as_u64(), ids(&user, "face_id")),
        (Some(3), vec![c.clone(), b.clone(), a.clone()])
    );
    assert_eq!(list("?face_type=system").await["total_count"], STOCK);
    // The replica names work on the face view too.
    assert_eq!(list("?replica_type=user").await["total_count"], 3);

    let picked = app
        .call(
            Method::GET,
            &format!("/v2/faces?face_ids={a},%20r90bbd427f71,nope"),
        )
        .await
        .1;
    assert_eq!(picked["total_count"], 2);
    assert_eq!(ids(&picked, "face_id"), [a.clone(), "r90bbd427f71".to_owned()]);
    let picked = app
        .call(Method::GET, &format!("/v2/replicas?replica_ids={b}"))
        .await
        .1;
    assert_eq!(ids(&picked, "replica_id"), [b.as_str()]);

    // phoenix-3: b and the stock replicas of that model.
    let p3 = list("?model_name=phoenix-3").await;
    let stock_p3 = parley_domain::registry::REPLICAS
        .iter()
        .filter(|r| r.model_name == "phoenix-3")
        .count();
    assert_eq!(p3["total_count"], 1 + stock_p3);
    assert!(
        p3["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["model_name"] == "phoenix-3")
    );
    assert_eq!(
        list("?model_name=phoenix-4&face_type=user").await["total_count"],
        2
    );

    // Page 0 is page 1; totals count every match, not the page.
    let first = list("?limit=4&page=0").await;
    assert_eq!(first, list("?limit=4&page=1").await);
    assert_eq!(first["data"].as_array().unwrap().len(), 4);
    let all = 3 + STOCK;
    let last_page = all.div_ceil(4);
    // `list` takes the static queries above; these two are made once per test run.
    let last = list(format!("?limit=4&page={last_page}").leak()).await;
    assert_eq!(
        (
            last["data"].as_array().unwrap().len(),
            last["total_count"].as_u64()
        ),
        (all - 4 * (last_page - 1), Some(all as u64))
    );
    let beyond = list(format!("?limit=4&page={}", last_page + 5).leak()).await;
    assert_eq!(
        (
            beyond["data"].as_array().unwrap().len(),
            beyond["total_count"].as_u64()
        ),
        (0, Some(all as u64))
    );
    // Without a limit, 20.
    assert_eq!(list("").await["data"].as_array().unwrap().len(), all.min(20));

    for (q, error) in [
        (
            "?face_type=robot",
            r#"Invalid value for face_type: "robot" (expected user or system)"#,
        ),
        (
            "?limit=0",
            r#"Invalid value for limit: "0" (expected an integer from 1 to 100)"#,
        ),
        (
            "?verbose=maybe",
            r#"Invalid value for verbose: "maybe" (expected true or false)"#,
        ),
    ] {
        let (status, body) = app.call(Method::GET, &format!("/v2/faces{q}")).await;
        assert_eq!(
            (status, body),
            (StatusCode::BAD_REQUEST, json!({ "error": error })),
            "{q}"
        );
    }
}

#[tokio::test]
async fn a_created_replica_trains_over_time_then_completes() {
    let app = TestApp::spawn_with(|c| c.replica_training_time = Duration::from_secs(6)).await;
    let (status, created) = call_json(&app, &app.key, Method::POST, "/v2/replicas", video("Trainee")).await;
    assert_eq!(status, StatusCode::OK);
    let id = created["replica_id"].as_str().unwrap().to_owned();
    assert_eq!(created, json!({ "replica_id": id, "status": "started" }));
    assert!(id.starts_with('r'), "{id}");

    let (_, started) = app.call(Method::GET, &format!("/v2/replicas/{id}")).await;
    assert_eq!(started["status"], "started", "{started}");
    assert_eq!(started["replica_name"], "Trainee");
    assert_eq!(started["model_name"], "phoenix-4");
    assert_eq!(started["error_message"], Value::Null);
    assert!(started.get("replica_type").is_none());
    assert!(
        started.get("train_video_url").is_none(),
        "training URLs are never shown"
    );
    let percent = |r: &Value| -> u32 {
        let p = r["training_progress"].as_str().unwrap();
        p.strip_suffix("/100").unwrap().parse().unwrap()
    };
    let first = percent(&started);
    assert!(first < 100);

    // The face view reads the same replica.
    let (_, face) = app
        .call(Method::GET, &format!("/v2/faces/{id}?verbose=true"))
        .await;
    assert_eq!(
        (face["face_id"].as_str(), face["face_type"].as_str()),
        (Some(id.as_str()), Some("user"))
    );

    // Progress never goes back, and training ends (well within the 15 s other waits allow).
    let mut last = first;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, r) = app.call(Method::GET, &format!("/v2/replicas/{id}")).await;
        let now = percent(&r);
        assert!(now >= last, "progress went back: {now} < {last}");
        last = now;
        if r["status"] == "completed" {
            break;
        }
        assert_eq!(r["status"], "started");
        assert!(
            std::time::Instant::now() < deadline,
            "training never completed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, done) = app.call(Method::GET, &format!("/v2/replicas/{id}")).await;
    assert_eq!(done["training_progress"], "100/100");

    // The stored row: status as created, fields sealed.
    let db = app.db().await;
    let row = db
        .row("SELECT status, body FROM resource WHERE resource_id = ?", &[&id])
        .await;
    assert_eq!(row.get::<String, _>(0), "started");
    assert!(!row.get::<String, _>(1).contains("Trainee"));
    db.close().await;
}

#[tokio::test]
async fn image_training_needs_a_stock_voice() {
    let app = TestApp::spawn().await;
    let id = create(
        &app,
        "/v2/faces",
        json!({"face_name": "Pic", "train_image_url": "https://x.example/pic.png", "voice_name": "Anna", "auto_fix_training_image": true, "properties": {"background_green_screen": true}, "callback_url": ""}),
    )
    .await;
    let (status, face) = app.call(Method::GET, &format!("/v2/faces/{id}")).await;
    assert_eq!(
        (status, face["face_name"].as_str()),
        (StatusCode::OK, Some("Pic"))
    );
}

#[tokio::test]
async fn renames_under_both_names_and_a_merge_patch() {
    let app = TestApp::spawn().await;
    let id = create(&app, "/v2/replicas", video("first")).await;

    let (status, renamed) = call_json(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/v2/replicas/{id}/name"),
        json!({"replica_name": "second"}),
    )
    .await;
    assert_eq!(
        (status, renamed["replica_name"].as_str()),
        (StatusCode::OK, Some("second"))
    );
    let (status, _) = call_json(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/v2/faces/{id}/name"),
        json!({"face_name": "third"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.call(Method::GET, &format!("/v2/replicas/{id}")).await.1["replica_name"],
        "third"
    );

    let (status, patched) = call_json(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/v2/faces/{id}"),
        json!({"face_name": "fourth", "default_voice_id": "v0a1b2c3d4e5f", "ignored": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        patched,
        json!({"face_id": id, "face_name": "fourth", "default_voice_id": "v0a1b2c3d4e5f", "original_voice_id": null})
    );
    let (_, face) = app.call(Method::GET, &format!("/v2/faces/{id}")).await;
    assert_eq!(
        (face["face_name"].as_str(), face["default_voice_id"].as_str()),
        (Some("fourth"), Some("v0a1b2c3d4e5f"))
    );

    // Bad bodies change nothing.
    for (path, body, error) in [
        (
            format!("/v2/replicas/{id}/name"),
            json!({}),
            "replica_name is required",
        ),
        (
            format!("/v2/replicas/{id}/name"),
            json!({"replica_name": "  "}),
            "replica_name is required",
        ),
        (
            format!("/v2/faces/{id}/name"),
            json!({"face_name": 3}),
            "face_name is required",
        ),
        (
            format!("/v2/faces/{id}"),
            json!({"face_name": null}),
            "Invalid face_name: cannot be null or blank",
        ),
        (
            format!("/v2/faces/{id}"),
            json!({"default_voice_id": ""}),
            "Invalid default_voice_id: cannot be null or blank",
        ),
        (
            format!("/v2/faces/{id}"),
            json!(["op"]),
            "Invalid request body: expected a JSON object",
        ),
    ] {
        let (status, out) = call_json(&app, &app.key, Method::PATCH, &path, body.clone()).await;
        assert_eq!(
            (status, out),
            (StatusCode::BAD_REQUEST, json!({ "error": error })),
            "{path} {body}"
        );
    }
    assert_eq!(
        app.call(Method::GET, &format!("/v2/faces/{id}")).await.1["face_name"],
        "fourth"
    );
}

#[tokio::test]
async fn a_soft_delete_hides_the_replica_and_keeps_its_row() {
    let app = TestApp::spawn().await;
    let id = create(&app, "/v2/replicas", video("soft")).await;

    let (status, body) = app
        .call(Method::DELETE, &format!("/v2/replicas/{id}?hard=false"))
        .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));

    let invalid = json!({ "error": "Invalid replica_id" });
    assert_eq!(
        app.call(Method::GET, &format!("/v2/replicas/{id}")).await,
        (StatusCode::BAD_REQUEST, invalid.clone())
    );
    assert_eq!(
        app.call(Method::GET, &format!("/v2/faces/{id}")).await,
        (StatusCode::BAD_REQUEST, json!({ "error": "Invalid face_id" }))
    );
    let (_, list) = app.call(Method::GET, "/v2/replicas?replica_type=user").await;
    assert_eq!(list, json!({ "data": [], "total_count": 0 }));
    // Deleting it again, or renaming it, is as for any unknown id.
    assert_eq!(
        app.call(Method::DELETE, &format!("/v2/replicas/{id}")).await,
        (StatusCode::BAD_REQUEST, invalid.clone())
    );
    let renamed = call_json(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/v2/replicas/{id}/name"),
        json!({"replica_name": "x"}),
    )
    .await;
    assert_eq!(renamed, (StatusCode::BAD_REQUEST, invalid));

    let db = app.db().await;
    let row = db
        .row("SELECT deleted_at FROM resource WHERE resource_id = ?", &[&id])
        .await;
    assert!(row.get::<Option<i64>, _>(0).is_some());
    let row_id = db
        .text("SELECT row_id FROM resource WHERE resource_id = ?", &id)
        .await;
    assert!(
        app.backing.data_keys().await.contains_key(&row_id),
        "a soft delete keeps the key"
    );

    // A hard delete still finds it.
    assert_eq!(
        app.call(Method::DELETE, &format!("/v2/faces/{id}?hard=true"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM resource WHERE resource_id = ?", &id)
            .await,
        0
    );
    db.close().await;
}

#[tokio::test]
async fn a_hard_delete_erases_the_replica_its_training_request_and_its_key() {
    let app = TestApp::spawn().await;
    let marker = format!("MARKER-{:016x}", rand::random::<u64>());
    let id = create(
        &app,
        "/v2/faces",
        json!({
            "face_name": format!("{marker}-name"),
            "train_video_url": format!("https://videos.example.com/{marker}/train.mp4"),
            "consent_video_url": format!("https://videos.example.com/{marker}/consent.mp4"),
            "callback_url": format!("https://hooks.example.com/{marker}"),
        }),
    )
    .await;
    let db = app.db().await;
    let row_id = db
        .text("SELECT row_id FROM resource WHERE resource_id = ?", &id)
        .await;
    let keys = app.backing.data_keys().await;
    assert!(keys.contains_key(&row_id), "the replica has a key of its own");
    // Sealed from the start: the marker is nowhere in plaintext.
    assert!(!app.backing.holds(&marker).await);

    let (status, body) = app
        .call(Method::DELETE, &format!("/v2/faces/{id}?hard=true"))
        .await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null));

    assert_eq!(
        db.count("SELECT COUNT(*) FROM resource WHERE row_id = ?", &row_id)
            .await,
        0
    );
    assert!(
        !app.backing.data_keys().await.contains_key(&row_id),
        "the key is gone before the answer"
    );
    eventually("the purge finishes", || async {
        db.count("SELECT COUNT(*) FROM resource_purge WHERE row_id = ?", &row_id)
            .await
            == 0
    })
    .await;
    assert!(!app.backing.holds(&marker).await);
    assert_eq!(
        app.call(Method::GET, &format!("/v2/replicas/{id}")).await,
        (StatusCode::BAD_REQUEST, json!({ "error": "Invalid replica_id" }))
    );
    assert_eq!(
        app.call(Method::DELETE, &format!("/v2/replicas/{id}?hard=true"))
            .await,
        (StatusCode::BAD_REQUEST, json!({ "error": "Invalid replica_id" }))
    );
    db.close().await;
}

#[tokio::test]
async fn stock_replicas_cannot_be_renamed_or_deleted() {
    let app = TestApp::spawn().await;
    let stock = "r90bbd427f71";
    let replica = json!({ "error": "System replicas cannot be changed or deleted" });
    let face = json!({ "error": "System faces cannot be changed or deleted" });
    for (method, path, body, expected) in [
        (
            Method::DELETE,
            format!("/v2/replicas/{stock}"),
            Value::Null,
            &replica,
        ),
        (
            Method::DELETE,
            format!("/v2/replicas/{stock}?hard=true"),
            Value::Null,
            &replica,
        ),
        (Method::DELETE, format!("/v2/faces/{stock}"), Value::Null, &face),
        (
            Method::PATCH,
            format!("/v2/replicas/{stock}/name"),
            json!({"replica_name": "x"}),
            &replica,
        ),
        (
            Method::PATCH,
            format!("/v2/faces/{stock}/name"),
            json!({"face_name": "x"}),
            &face,
        ),
        (
            Method::PATCH,
            format!("/v2/faces/{stock}"),
            json!({"face_name": "x"}),
            &face,
        ),
    ] {
        let (status, out) = call_json(&app, &app.key, method.clone(), &path, body).await;
        assert_eq!(
            (status, &out),
            (StatusCode::FORBIDDEN, expected),
            "{method} {path}"
        );
    }
    let (status, r) = app.call(Method::GET, &format!("/v2/replicas/{stock}")).await;
    assert_eq!(
        (status, r["replica_name"].as_str()),
        (StatusCode::OK, Some("Anna"))
    );
    let db = app.db().await;
    assert_eq!(resource_rows(&db).await, 0);
    db.close().await;
}

#[tokio::test]
async fn bad_creates_and_unknown_ids_are_400s_that_store_nothing() {
    let app = TestApp::spawn().await;
    let video_url = "https://x.example/v.mp4";
    for (path, body, error) in [
        (
            "/v2/replicas",
            json!({"replica_name": "x"}),
            "Either train_video_url or train_image_url must be provided.".to_owned(),
        ),
        (
            "/v2/faces",
            json!({"train_video_url": video_url, "train_image_url": "https://x.example/i.png"}),
            "Provide train_video_url or train_image_url, not both.".to_owned(),
        ),
        (
            "/v2/faces",
            json!({"train_image_url": "https://x.example/i.png"}),
            "voice_name is required when train_image_url is provided.".to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": "javascript:alert(1)"}),
            "Invalid train_video_url: expected an http or https URL".to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "callback_url": "ftp://x.example/"}),
            "Invalid callback_url: expected an http or https URL".to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "consent_video_url": "/relative.mp4"}),
            "Invalid consent_video_url: expected an http or https URL".to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "voice_name": "nobody"}),
            r#"Invalid voice_name: "nobody" is not a stock voice (see GET /v2/voices)"#.to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "model_name": "phoenix-9"}),
            r#"Invalid model_name: "phoenix-9" (expected one of phoenix-3, phoenix-4, phoenix-4.5)"#
                .to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "replica_name": ["x"]}),
            "Invalid replica_name: expected a string".to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "auto_fix_training_image": "yes"}),
            "Invalid auto_fix_training_image: expected true or false".to_owned(),
        ),
        (
            "/v2/replicas",
            json!({"train_video_url": video_url, "properties": {"background_green_screen": 1}}),
            "Invalid properties.background_green_screen: expected true or false".to_owned(),
        ),
        (
            "/v2/replicas",
            json!("a string"),
            "Invalid request body: expected a JSON object".to_owned(),
        ),
    ] {
        let (status, out) = call_json(&app, &app.key, Method::POST, path, body.clone()).await;
        assert_eq!(
            (status, out),
            (StatusCode::BAD_REQUEST, json!({ "error": error })),
            "{path} {body}"
        );
    }
    let (status, out) = send(app.req(Method::POST, "/v2/replicas").body("{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        out["error"].as_str().unwrap().starts_with("Invalid request body"),
        "{out}"
    );

    let long = format!("r{}", "0".repeat(10_000));
    for id in [
        "rdeadbeef0000",
        "nope",
        "%00",
        "r%00",
        "r%2Fx",
        "RDEADBEEF00",
        "r90bbd427f7",
        &long,
    ] {
        for (method, view) in [
            (Method::GET, "replicas"),
            (Method::DELETE, "replicas"),
            (Method::GET, "faces"),
            (Method::DELETE, "faces"),
        ] {
            let (status, out) = app
                .call(method.clone(), &format!("/v2/{view}/{id}?hard=true"))
                .await;
            let error = if view == "faces" {
                "Invalid face_id"
            } else {
                "Invalid replica_id"
            };
            assert_eq!(
                (status, out),
                (StatusCode::BAD_REQUEST, json!({ "error": error })),
                "{method} {view}/{id}"
            );
        }
    }
    let (status, out) = app
        .call(Method::DELETE, "/v2/replicas/rdeadbeef0000?hard=maybe")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");

    let db = app.db().await;
    assert_eq!(resource_rows(&db).await, 0);
    // Unknown fields are ignored.
    create(
        &app,
        "/v2/replicas",
        json!({"train_video_url": video_url, "unknown": {"deep": true}}),
    )
    .await;
    assert_eq!(resource_rows(&db).await, 1);
    db.close().await;
}

#[tokio::test]
async fn another_accounts_replicas_are_invisible_to_it() {
    let app = TestApp::spawn().await;
    let id = create(&app, "/v2/replicas", video("mine")).await;
    let other = app.new_key("other");
    let invalid = (StatusCode::BAD_REQUEST, json!({ "error": "Invalid replica_id" }));

    let (_, list) = app.call_as(&other, Method::GET, "/v2/replicas").await;
    assert_eq!(list["total_count"], STOCK);
    assert!(!ids(&list, "replica_id").contains(&id));
    let (_, list) = app
        .call_as(&other, Method::GET, &format!("/v2/replicas?replica_ids={id}"))
        .await;
    assert_eq!(list["total_count"], 0);
    assert_eq!(
        app.call_as(&other, Method::GET, &format!("/v2/replicas/{id}"))
            .await,
        invalid
    );
    assert_eq!(
        app.call_as(&other, Method::DELETE, &format!("/v2/replicas/{id}?hard=true"))
            .await,
        invalid
    );
    let renamed = call_json(
        &app,
        &other,
        Method::PATCH,
        &format!("/v2/replicas/{id}/name"),
        json!({"replica_name": "theirs"}),
    )
    .await;
    assert_eq!(renamed, invalid);

    let (status, mine) = app.call(Method::GET, &format!("/v2/replicas/{id}")).await;
    assert_eq!(
        (status, mine["replica_name"].as_str()),
        (StatusCode::OK, Some("mine"))
    );
}

#[tokio::test]
async fn the_voice_catalogue_searches_filters_sorts_and_pages() {
    let app = TestApp::spawn().await;
    let names = |body: &Value| ids(body, "voice_name");

    // What `tavus resource list voices` sends.
    let (status, all) = app.call(Method::GET, "/v2/voices?limit=25").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            all["total_count"].as_u64(),
            all["page"].as_u64(),
            all["limit"].as_u64()
        ),
        (Some(6), Some(1), Some(25))
    );
    assert_eq!(names(&all), ["anna", "benjamin", "ivy", "james", "julia", "liam"]);
    let anna = &all["data"][0];
    assert_eq!(anna["replica_id"], "r90bbd427f71");
    assert_eq!(anna["audio_url"], Value::Null);
    assert!(
        anna["tags"]
            .as_array()
            .unwrap()
            .contains(&json!({"tag_name": "female"}))
    );

    // What the MCP server sends: page 0, `tags` plural, empty search.
    let (status, mcp) = app
        .call(
            Method::GET,
            "/v2/voices?limit=25&page=0&search=&sort=desc&tags=female,calm",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (names(&mcp), mcp["page"].as_u64()),
        (vec!["ivy".to_owned()], Some(1))
    );

    for (q, expected) in [
        ("search=AN", vec!["anna"]),
        ("tag=female", vec!["anna", "ivy", "julia"]),
        ("tag=male&sort=desc", vec!["liam", "james", "benjamin"]),
        ("limit=4&page=2", vec!["julia", "liam"]),
        ("limit=2", vec!["anna", "benjamin"]),
    ] {
        let (status, body) = app.call(Method::GET, &format!("/v2/voices?{q}")).await;
        assert_eq!(
            (status, names(&body)),
            (
                StatusCode::OK,
                expected.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            ),
            "{q}"
        );
    }
    let (_, paged) = app.call(Method::GET, "/v2/voices?limit=4&page=2").await;
    assert_eq!(
        (paged["total_count"].as_u64(), paged["page"].as_u64()),
        (Some(6), Some(2))
    );
    let (_, default) = app.call(Method::GET, "/v2/voices").await;
    assert_eq!(default["limit"], 10);

    let (status, body) = app.call(Method::GET, "/v2/voices?sort=sideways").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({ "error": r#"Invalid value for sort: "sideways" (expected asc or desc)"# })
        )
    );
}
