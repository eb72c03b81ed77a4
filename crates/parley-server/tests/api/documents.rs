//! Documents: fetched by parley from a page this test serves, sealed at rest, served back as
//! content and chunks, and erased by a delete: row, blob and key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode as AxumStatus, Uri, header};
use axum::response::{IntoResponse, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{Backing, Proc, TestApp, eventually, send};

/// Pages a test serves for parley to fetch, and how often each was asked for.
pub struct DocServer {
    pub base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Clone)]
struct Pages {
    marker: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

/// A plain-text document of several paragraphs, `marker` in the second.
fn text_document(marker: &str) -> String {
    let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(12);
    format!(
        "Welcome to the handbook.\n\nThe code word is {marker}, keep it safe.\n\n{filler}\n\n{filler}\n\n{filler}\n"
    )
}

async fn page(State(pages): State<Pages>, uri: Uri) -> Response {
    let path = uri.path().to_owned();
    let hit = {
        let mut hits = pages.hits.lock().unwrap();
        let n = hits.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let text = || text_document(&pages.marker);
    match path.as_str() {
        "/doc.txt" => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text()).into_response(),
        "/page.html" => (
            [(header::CONTENT_TYPE, "text/html")],
            format!(
                "<!doctype html><html><head><script>var hidden = 1;</script></head>\
                 <body><h1>Handbook</h1><p>The code word is {}.</p></body></html>",
                pages.marker
            ),
        )
            .into_response(),
        "/report.pdf" => (
            [(header::CONTENT_TYPE, "application/pdf")],
            b"%PDF-1.7\x00\x01\x02 binary".to_vec(),
        )
            .into_response(),
        "/redirect" => (AxumStatus::FOUND, [(header::LOCATION, "/doc.txt")]).into_response(),
        "/empty" => (AxumStatus::OK, "").into_response(),
        "/big" => "x".repeat(4096).into_response(),
        // No Content-Length: the cap has to be counted as the body arrives.
        "/big-stream" => axum::body::Body::from_stream(futures::stream::iter(
            (0..8).map(|_| Ok::<_, std::io::Error>("y".repeat(512))),
        ))
        .into_response(),
        "/flaky" if hit == 1 => AxumStatus::SERVICE_UNAVAILABLE.into_response(),
        "/flaky" => text().into_response(),
        "/hang-once" if hit > 1 => text().into_response(),
        "/hang" | "/hang-once" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            text().into_response()
        }
        _ => AxumStatus::NOT_FOUND.into_response(),
    }
}

impl DocServer {
    /// Serves the pages on a port of its own.
    pub async fn start(marker: &str) -> Self {
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let pages = Pages {
            marker: marker.to_owned(),
            hits: hits.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(page).with_state(pages);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, hits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// A marker no other test uses.
fn marker(what: &str) -> String {
    format!("{what}{:012x}", rand::random::<u64>() >> 16)
}

/// Creates a document; its id and the create's answer.
async fn create(app: &TestApp, body: Value) -> (String, Value) {
    let (status, doc) = send(app.req(Method::POST, "/v2/documents").json(&body)).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    (doc["document_id"].as_str().unwrap().to_owned(), doc)
}

/// Waits until the document's status is `want`; its verbose view then.
async fn wait_status(app: &TestApp, id: &str, want: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, doc) = app
            .call(Method::GET, &format!("/v2/documents/{id}?verbose=true"))
            .await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        if doc["status"] == want {
            return doc;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "document {id} never became {want}: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The document's row as stored: row id, status, blob key, version.
async fn row(backing: &Backing, id: &str) -> Option<(String, String, Option<String>, i64)> {
    let db = backing.db().await;
    let rows = db
        .rows(
            "SELECT row_id, status, blob_key, version FROM resource WHERE resource_id = ?",
            &[id],
        )
        .await;
    db.close().await;
    rows.first().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

async fn resource_rows(backing: &Backing) -> i64 {
    let db = backing.db().await;
    let n = db.scalar("SELECT COUNT(*) FROM resource").await;
    db.close().await;
    n
}

fn not_found() -> Value {
    json!({ "message": "Document not found" })
}

#[tokio::test]
async fn a_document_is_fetched_sealed_served_back_and_erased_by_delete() {
    let app = TestApp::spawn().await;
    let secret = marker("docmark");
    let pages = DocServer::start(&secret).await;
    let name = marker("docname");

    let (id, created) = create(
        &app,
        json!({
            "document_url": pages.url("/doc.txt"),
            "document_name": name,
            "tags": ["handbook", "hr"],
            "callback_url": "https://example.com/hook",
            "properties": {"team": "people"},
            // What the official client always sends, beside the documented fields.
            "participant_tags": [],
            "is_customer_support_document": false,
            "font_size_aware_extraction": false,
        }),
    )
    .await;
    assert!(id.starts_with('d') && id.len() == 17, "{id}");
    assert_eq!(created["status"], "started");
    assert_eq!(created["progress"], Value::Null);
    assert_eq!(created["document_name"], json!(name));
    assert_eq!(created["tags"], json!(["handbook", "hr"]));
    assert_eq!(created["crawl_config"], Value::Null);

    let ready = wait_status(&app, &id, "ready").await;
    assert_eq!(ready["progress"], 100);
    assert_eq!(ready["error_message"], Value::Null);
    assert_eq!(ready["display_status"], "ready");
    assert_eq!(ready["content_type"], "text/plain; charset=utf-8");
    let served = text_document(&secret);
    assert_eq!(ready["file_size"], served.len());
    assert_eq!(pages.hits("/doc.txt"), 1);

    // The content and its chunks come back.
    let res = app
        .req(Method::GET, &format!("/v2/documents/{id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), served);
    let (status, chunks) = app.call(Method::GET, &format!("/v2/documents/{id}/chunks")).await;
    assert_eq!(status, StatusCode::OK, "{chunks}");
    let texts: Vec<&str> = chunks["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(chunks["total_count"], texts.len());
    assert_eq!(ready["chunk_count"], texts.len());
    assert!(texts.len() >= 2, "{chunks}");
    assert!(texts.iter().any(|t| t.contains(&secret)), "{chunks}");
    assert_eq!(chunks["data"][0]["document_id"], json!(id));
    assert_eq!(chunks["data"][0]["collection"], "regular");

    // At rest: the row and the blob hold ciphertext only.
    let (row_id, status, blob_key, _) = row(&app.backing, &id).await.expect("the row");
    assert_eq!(status, "ready");
    let blob_key = blob_key.expect("a content blob");
    assert_eq!(blob_key, format!("resources/{row_id}/content"));
    let sealed = app.backing.blobs().get(&blob_key).await.unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
    for needle in [&secret, &name, &pages.url("/doc.txt")] {
        assert!(
            !app.backing.holds(needle).await,
            "{needle} is stored in plaintext"
        );
    }
    let keys = app.backing.data_keys().await;
    let key = keys.get(&row_id).expect("the document's key is in the key store");
    let opened = key
        .key
        .open(
            &parley_keys::content_aad(
                &parley_domain::KeyOwner::parse(&row_id).unwrap(),
                &format!("blob:{blob_key}"),
            ),
            &sealed,
        )
        .expect("the blob opens under the document's key");
    assert_eq!(opened, served.as_bytes());

    // Delete: 204, then nothing of it is left.
    let (status, body) = app.call(Method::DELETE, &format!("/v2/documents/{id}")).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(row(&app.backing, &id).await, None);
    let db = app.db().await;
    assert_eq!(db.scalar("SELECT COUNT(*) FROM resource_purge").await, 0);
    db.close().await;
    assert!(matches!(
        app.backing.blobs().get(&blob_key).await,
        Err(parley_blobs::BlobError::NotFound(_))
    ));
    assert!(!app.backing.data_keys().await.contains_key(&row_id));
    assert!(!app.backing.key_store_mentions(&key.key_id).await);
    assert!(!app.backing.holds(&secret).await);
    for path in ["", "/content", "/chunks"] {
        let (status, body) = app.call(Method::GET, &format!("/v2/documents/{id}{path}")).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()), "{path}");
    }
    let (status, body) = app.call(Method::DELETE, &format!("/v2/documents/{id}")).await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()));
}

#[tokio::test]
async fn html_is_read_as_text_and_binary_files_are_kept_without_chunks() {
    let app = TestApp::spawn().await;
    let secret = marker("htmlmark");
    let pages = DocServer::start(&secret).await;
    let (html, _) = create(&app, json!({"document_url": pages.url("/page.html")})).await;
    let (pdf, created) = create(&app, json!({"document_url": pages.url("/report.pdf")})).await;
    assert_eq!(created["document_name"], "report.pdf");
    let (redirected, _) = create(&app, json!({"document_url": pages.url("/redirect")})).await;

    wait_status(&app, &html, "ready").await;
    let (_, chunks) = app
        .call(Method::GET, &format!("/v2/documents/{html}/chunks"))
        .await;
    let text = chunks["data"][0]["text"].as_str().unwrap();
    assert!(text.contains(&format!("The code word is {secret}.")), "{text}");
    assert!(!text.contains('<') && !text.contains("hidden"), "{text}");

    let pdf_doc = wait_status(&app, &pdf, "ready").await;
    assert_eq!(
        (pdf_doc["content_type"].clone(), pdf_doc["chunk_count"].clone()),
        (json!("application/pdf"), json!(0))
    );
    let (_, chunks) = app
        .call(Method::GET, &format!("/v2/documents/{pdf}/chunks"))
        .await;
    assert_eq!(chunks, json!({"data": [], "total_count": 0, "next_offset": null}));
    let res = app
        .req(Method::GET, &format!("/v2/documents/{pdf}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/pdf");
    assert_eq!(&res.bytes().await.unwrap()[..], b"%PDF-1.7\x00\x01\x02 binary");

    wait_status(&app, &redirected, "ready").await;
    assert_eq!(pages.hits("/redirect"), 1);
    assert_eq!(pages.hits("/doc.txt"), 1);
}

#[tokio::test]
async fn chunks_page_with_an_opaque_offset_and_a_collection() {
    let app = TestApp::spawn().await;
    let pages = DocServer::start(&marker("chunkmark")).await;
    let (id, _) = create(&app, json!({"document_url": pages.url("/doc.txt")})).await;
    let (support, _) = create(
        &app,
        json!({"document_url": pages.url("/doc.txt"), "is_customer_support_document": true}),
    )
    .await;
    wait_status(&app, &id, "ready").await;
    wait_status(&app, &support, "ready").await;

    let (_, all) = app.call(Method::GET, &format!("/v2/documents/{id}/chunks")).await;
    let total = all["total_count"].as_u64().unwrap();
    assert!(total >= 3, "{all}");
    let (_, first) = app
        .call(Method::GET, &format!("/v2/documents/{id}/chunks?limit=2"))
        .await;
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["next_offset"], "2");
    let (_, rest) = app
        .call(
            Method::GET,
            &format!("/v2/documents/{id}/chunks?limit=100&offset=2"),
        )
        .await;
    assert_eq!(rest["data"][0], all["data"][2]);
    assert_eq!(rest["next_offset"], Value::Null);

    let (_, none) = app
        .call(
            Method::GET,
            &format!("/v2/documents/{id}/chunks?collection=customer_support"),
        )
        .await;
    assert_eq!(none["data"], json!([]));
    let (_, theirs) = app
        .call(
            Method::GET,
            &format!("/v2/documents/{support}/chunks?collection=customer_support"),
        )
        .await;
    assert_eq!(theirs["total_count"], total);
    assert_eq!(theirs["data"][0]["collection"], "customer_support");
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/v2/documents/{id}/chunks?collection=other"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "Invalid value for collection: \"other\" (expected regular or customer_support)"})
    );
}

#[tokio::test]
async fn failed_fetches_end_in_error_with_the_hosted_codes() {
    let app = TestApp::spawn_with(|c| c.document_max_bytes = 3000).await;
    let pages = DocServer::start(&marker("failmark")).await;
    for (path, code) in [
        ("/missing", "file_download_failed"),
        ("/empty", "file_empty"),
        ("/big", "file_size_too_large"),
        ("/big-stream", "file_size_too_large"),
    ] {
        let (id, _) = create(&app, json!({"document_url": pages.url(path)})).await;
        let doc = wait_status(&app, &id, "error").await;
        assert_eq!(doc["error_message"], code, "{path}");
        assert_eq!(doc["progress"], Value::Null, "{path}");
        assert_eq!(pages.hits(path), 1, "{path}: a permanent failure is not retried");
        let (_, _, blob_key, _) = row(&app.backing, &id).await.unwrap();
        assert_eq!(blob_key, None, "{path}");
        let res = app
            .req(Method::GET, &format!("/v2/documents/{id}/content"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // A 503 is worth another try, after a backoff.
    let (id, _) = create(&app, json!({"document_url": pages.url("/flaky")})).await;
    wait_status(&app, &id, "ready").await;
    assert_eq!(pages.hits("/flaky"), 2);
}

#[tokio::test]
async fn with_private_addresses_denied_a_local_url_is_refused() {
    // By default (private documents not allowed), and with private callbacks denied whatever
    // the document setting.
    for deny in [
        |c: &mut parley_server::ServeConfig| c.document_allow_private = false,
        |c: &mut parley_server::ServeConfig| c.webhook_deny_private = true,
    ] {
        let app = TestApp::spawn_with(deny).await;
        let pages = DocServer::start(&marker("privmark")).await;
        let (id, _) = create(&app, json!({"document_url": pages.url("/doc.txt")})).await;
        let doc = wait_status(&app, &id, "error").await;
        assert_eq!(doc["error_message"], "invalid_file_url");
        assert_eq!(
            pages.hits("/doc.txt"),
            0,
            "nothing was sent to the private address"
        );
    }
}

#[tokio::test]
async fn bad_creates_are_400s_naming_the_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let keys_before = app.backing.key_count().await;
    for (body, error) in [
        (json!({}), "Invalid request: document_url is required"),
        (
            json!({"document_url": ""}),
            "Invalid request: document_url is required",
        ),
        (
            json!({"document_url": ["x"]}),
            "Invalid request: document_url must be a string",
        ),
        (
            json!({"document_url": "file:///etc/passwd"}),
            "Invalid request: document_url must be an http or https URL",
        ),
        (
            json!({"document_url": "https://example.com/a", "document_name": 3}),
            "Invalid request: document_name must be a string",
        ),
        (
            json!({"document_url": "https://example.com/a", "tags": ["a", 1]}),
            "Invalid request: tags must be a list of strings",
        ),
        (
            json!({"document_url": "https://example.com/a", "callback_url": "nope"}),
            "Invalid request: callback_url must be an http or https URL",
        ),
        (
            json!({"document_url": "https://example.com/a", "crawl": {"max_pages": 101}}),
            "Invalid request: crawl.max_pages must be an integer from 1 to 100",
        ),
        (
            json!({"document_url": "https://example.com/a", "properties": []}),
            "Invalid request: properties must be an object",
        ),
        (json!([1]), "Invalid request body: expected a JSON object"),
    ] {
        let (status, answer) = send(app.req(Method::POST, "/v2/documents").json(&body)).await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, json!({"error": error})),
            "{body}"
        );
    }
    let (status, answer) = send(
        app.req(Method::POST, "/v2/documents")
            .header("content-type", "application/json")
            .body("{nope"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request body"),
        "{answer}"
    );
    assert_eq!(resource_rows(&app.backing).await, 0);
    assert_eq!(app.backing.key_count().await, keys_before);
}

#[tokio::test]
async fn list_filters_sorts_and_pages_and_tags_are_the_accounts_own() {
    let app = TestApp::spawn().await;
    let pages = DocServer::start(&marker("listmark")).await;
    let mut ids = Vec::new();
    for (name, tags) in [
        ("Alpha guide", json!(["a", "shared"])),
        ("Beta notes", json!(["b"])),
        ("Gamma guide", json!(["shared", "c"])),
    ] {
        let url = pages.url("/doc.txt");
        ids.push(
            create(
                &app,
                json!({"document_url": url, "document_name": name, "tags": tags}),
            )
            .await
            .0,
        );
    }
    // Another account's document is never seen.
    let other = app.new_key("other");
    let (status, theirs) = send(app.req_as(&other, Method::POST, "/v2/documents").json(
        &json!({"document_url": pages.url("/missing"), "document_name": "Alpha theirs", "tags": ["theirs"]}),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let theirs = theirs["document_id"].as_str().unwrap();
    for id in &ids {
        wait_status(&app, id, "ready").await;
    }

    let list = |query: &str| {
        let req = app.req(Method::GET, &format!("/v2/documents?{query}"));
        let query = query.to_owned();
        async move {
            let (status, body) = send(req).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body
        }
    };
    let ids_of = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["document_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = list("").await;
    assert_eq!(ids_of(&all), ids, "oldest first by default");
    assert_eq!(
        (
            all["total_count"].clone(),
            all["page"].clone(),
            all["limit"].clone()
        ),
        (json!(3), json!(0), json!(10))
    );
    let rev: Vec<String> = ids.iter().rev().cloned().collect();
    for sort in ["desc", "descending"] {
        assert_eq!(ids_of(&list(&format!("sort={sort}")).await), rev);
    }
    assert_eq!(ids_of(&list("sort=asc").await), ids);
    // What the official CLI sends.
    let cli = list("limit=2&page=0&sort=desc&verbose=true").await;
    assert_eq!(ids_of(&cli), rev[..2]);
    assert_eq!(cli["total_count"], 3);
    assert!(cli["data"][0].get("chunk_count").is_some());
    assert_eq!(ids_of(&list("limit=2&page=1&sort=desc").await), rev[..2]);
    assert_eq!(ids_of(&list("limit=2&page=2&sort=desc").await), rev[2..]);
    assert_eq!(ids_of(&list("limit=2&page=3").await), Vec::<String>::new());

    assert_eq!(
        ids_of(&list("tags=shared").await),
        [ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(ids_of(&list("tags=b,c").await), [ids[1].clone(), ids[2].clone()]);
    assert_eq!(
        ids_of(&list("name_or_uuid=GUIDE").await),
        [ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(
        ids_of(&list(&format!("name_or_uuid={}", ids[1])).await),
        [ids[1].clone()]
    );
    assert_eq!(ids_of(&list("name_or_uuid=theirs").await), Vec::<String>::new());
    assert_eq!(ids_of(&list("status=ready").await), ids);
    assert_eq!(list("status=error").await["total_count"], 0);

    let (status, body) = app.call(Method::GET, "/v2/documents?sort=sideways").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"error": "Invalid value for sort: \"sideways\" (expected ascending, descending, asc or desc)"})
    );
    let (status, _) = app.call(Method::GET, "/v2/documents?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, tags) = app.call(Method::GET, "/v2/documents/tags").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tags, json!({"tags": ["a", "b", "c", "shared"], "total_count": 4}));
    let (_, tags) = app.call(Method::GET, "/v2/documents/tags?search=SHA").await;
    assert_eq!(tags, json!({"tags": ["shared"], "total_count": 1}));
    let (_, tags) = app.call(Method::GET, "/v2/documents/tags?limit=2&page=2").await;
    assert_eq!(tags, json!({"tags": ["c", "shared"], "total_count": 4}));

    for (method, path) in [
        (Method::GET, format!("/v2/documents/{theirs}")),
        (Method::PATCH, format!("/v2/documents/{theirs}")),
        (Method::DELETE, format!("/v2/documents/{theirs}")),
        (Method::POST, format!("/v2/documents/{theirs}/recrawl")),
        (Method::GET, format!("/v2/documents/{theirs}/chunks")),
        (Method::GET, "/v2/documents/d0000000000000000".to_owned()),
        (Method::GET, "/v2/documents/..%2F..".to_owned()),
        (Method::GET, "/v2/documents/d%00".to_owned()),
    ] {
        let (status, body) = send(app.req(method.clone(), &path).json(&json!({}))).await;
        assert_eq!(
            (status, body),
            (StatusCode::NOT_FOUND, not_found()),
            "{method} {path}"
        );
    }
    // Still there for its owner.
    let (status, _) = app
        .call_as(&other, Method::GET, &format!("/v2/documents/{theirs}"))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn patch_renames_and_retags_and_bad_patches_change_nothing() {
    let app = TestApp::spawn().await;
    let (id, _) = create(
        &app,
        json!({"document_url": "http://127.0.0.1:9/unreachable", "document_name": "Before", "tags": ["x"]}),
    )
    .await;
    let path = format!("/v2/documents/{id}");
    let (status, doc) = send(
        app.req(Method::PATCH, &path)
            .json(&json!({"document_name": "After"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        (doc["document_name"].clone(), doc["tags"].clone()),
        (json!("After"), json!(["x"]))
    );
    let (_, doc) = send(app.req(Method::PATCH, &path).json(&json!({"tags": ["y", "z"]}))).await;
    assert_eq!(
        (doc["document_name"].clone(), doc["tags"].clone()),
        (json!("After"), json!(["y", "z"]))
    );
    let (_, got) = app.call(Method::GET, &path).await;
    assert_eq!(
        (got["document_name"].clone(), got["tags"].clone()),
        (json!("After"), json!(["y", "z"]))
    );

    let before = app.call(Method::GET, &path).await.1;
    let (_, _, _, version) = row(&app.backing, &id).await.unwrap();
    for (body, error) in [
        (
            json!({"document_name": 5}),
            "Invalid request: document_name must be a string",
        ),
        (
            json!({"document_name": ""}),
            "Invalid request: document_name must not be empty",
        ),
        (
            json!({"tags": "y"}),
            "Invalid request: tags must be a list of strings",
        ),
        (
            json!([{"op": "replace", "path": "/document_name", "value": "p"}]),
            "Invalid request body: expected a JSON object",
        ),
    ] {
        let (status, answer) = send(app.req(Method::PATCH, &path).json(&body)).await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, json!({"error": error})),
            "{body}"
        );
    }
    let after = app.call(Method::GET, &path).await.1;
    assert_eq!(before["document_name"], after["document_name"]);
    assert_eq!(before["tags"], after["tags"]);
    let (_, _, _, now) = row(&app.backing, &id).await.unwrap();
    // Only the fetch's own writes may have moved it on; a rejected patch writes nothing.
    assert!(now >= version);
    let (status, body) = send(
        app.req(Method::PATCH, "/v2/documents/dnope")
            .json(&json!({"document_name": "n"})),
    )
    .await;
    assert_eq!((status, body), (StatusCode::NOT_FOUND, not_found()));
}

#[tokio::test]
async fn recrawl_fetches_again_and_says_when_it_cannot() {
    let app = TestApp::spawn().await;
    let secret = marker("crawlmark");
    let pages = DocServer::start(&secret).await;

    let (plain, _) = create(&app, json!({"document_url": pages.url("/doc.txt")})).await;
    wait_status(&app, &plain, "ready").await;
    let (status, body) = send(
        app.req(Method::POST, &format!("/v2/documents/{plain}/recrawl"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Document was not created with crawl configuration"})
        )
    );

    let (crawled, created) = create(
        &app,
        json!({"document_url": pages.url("/doc.txt"), "crawl": {"depth": 2, "max_pages": 5}}),
    )
    .await;
    assert_eq!(created["crawl_config"], json!({"depth": 2, "max_pages": 5}));
    let first = wait_status(&app, &crawled, "ready").await;
    assert_eq!(first["crawl_count"], 1);
    assert_eq!(first["crawled_urls"], json!([pages.url("/doc.txt")]));
    let fetched = pages.hits("/doc.txt");

    let (status, doc) = send(app.req(Method::POST, &format!("/v2/documents/{crawled}/recrawl"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{doc}");
    assert_eq!(doc["status"], "recrawling");
    assert_eq!(doc["crawl_count"], 1, "unchanged until the recrawl is done");
    let second = wait_status(&app, &crawled, "ready").await;
    assert_eq!(second["crawl_count"], 2);
    assert_eq!(pages.hits("/doc.txt"), fetched + 1);

    // A recrawl with a crawl of its own works on a document made without one.
    let (status, doc) = send(
        app.req(Method::POST, &format!("/v2/documents/{plain}/recrawl"))
            .json(&json!({"crawl": {"depth": 1, "max_pages": 1}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{doc}");
    assert_eq!(doc["crawl_config"], json!({"depth": 1, "max_pages": 1}));
    wait_status(&app, &plain, "ready").await;

    // While a fetch runs, a recrawl is a conflict.
    let (busy, _) = create(
        &app,
        json!({"document_url": pages.url("/hang"), "crawl": {"depth": 1}}),
    )
    .await;
    wait_status(&app, &busy, "processing").await;
    let (status, body) = send(
        app.req(Method::POST, &format!("/v2/documents/{busy}/recrawl"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CONFLICT,
            json!({"error": "Document must be in 'ready' or 'error' state to recrawl, current status: processing"})
        )
    );
    let (status, body) = send(
        app.req(Method::POST, &format!("/v2/documents/{busy}/recrawl"))
            .json(&json!({"crawl": {"depth": 0}})),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error": "Invalid request: crawl.depth must be an integer from 1 to 10"})
        )
    );
    // Deleting it mid-fetch erases it; the fetch writes nothing after.
    let (row_id, _, _, _) = row(&app.backing, &busy).await.unwrap();
    let (status, _) = app.call(Method::DELETE, &format!("/v2/documents/{busy}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(row(&app.backing, &busy).await, None);
    assert!(!app.backing.data_keys().await.contains_key(&row_id));
}

#[tokio::test]
async fn a_fetch_cut_off_by_a_kill_is_taken_over_after_its_lease() {
    let backing = Backing::fresh().await;
    let secret = marker("killmark");
    let pages = DocServer::start(&secret).await;
    let first = Proc::start(&backing, &[]);
    let key = first.key.clone().expect("the first start makes a key");
    let client = reqwest::Client::new();
    let (status, doc) = send(
        client
            .post(format!("{}/v2/documents", first.base))
            .header("x-api-key", &key)
            .json(&json!({"document_url": pages.url("/hang-once")})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let id = doc["document_id"].as_str().unwrap().to_owned();
    eventually("the first fetch reaches the page", || async {
        pages.hits("/hang-once") == 1
    })
    .await;
    first.kill();

    let second = Proc::start(&backing, &[]);
    let get = || {
        client
            .get(format!("{}/v2/documents/{id}?verbose=true", second.base))
            .header("x-api-key", &key)
    };
    eventually("the document is ready", || async {
        let (status, doc) = send(get()).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        doc["status"] == "ready"
    })
    .await;
    assert_eq!(pages.hits("/hang-once"), 2);
    let (_, doc) = send(get()).await;
    assert_eq!(doc["file_size"], text_document(&secret).len());
    assert!(!backing.holds(&secret).await);
}
