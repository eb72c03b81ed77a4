//! Handlers for `/v2/documents…`: knowledge-base documents that parley fetches from their URL
//! (see `document` for the fetch, docs/API.md for every decision).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_domain::{ResourceKind, Timestamp};
use parley_store::Account;
use serde_json::{Map, Value, json};

use crate::document::{self, ERROR, PROCESSING, READY, RECRAWLING, STARTED};
use crate::http::error::ApiError;
use crate::http::listing;
use crate::http::query::Query;
use crate::http::resource::{Page, body_bytes, object_body};
use crate::resources::{self, NewResource, Opened};
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

const KIND: ResourceKind = ResourceKind::Document;

/// The document routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/documents", post(create_document).get(list_documents))
        .route("/v2/documents/tags", get(list_document_tags))
        .route(
            "/v2/documents/{document_id}",
            get(get_document).patch(patch_document).delete(delete_document),
        )
        .route("/v2/documents/{document_id}/recrawl", post(recrawl_document))
        .route("/v2/documents/{document_id}/chunks", get(list_document_chunks))
        .route("/v2/documents/{document_id}/content", get(get_document_content))
}

fn not_found() -> ApiError {
    ApiError::message(StatusCode::NOT_FOUND, "Document not found")
}

fn invalid(why: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("Invalid request: {why}"))
}

/// The path's id; a path that cannot be one is an unknown document.
fn document_id(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(id)| id).map_err(|_| not_found())
}

/// The document as every route shows it; `verbose` adds what parley learnt fetching it.
fn document_json(o: &Opened, verbose: bool) -> Value {
    let list = |name: &str| match o.field(name) {
        Value::Array(items) => Value::Array(items.clone()),
        _ => json!([]),
    };
    let flag = |name: &str| Value::Bool(o.field(name).as_bool().unwrap_or(false));
    let status = o.row.status.as_str();
    // The hosted API: null before the work starts and once it failed.
    let progress = match status {
        READY => json!(100),
        PROCESSING | RECRAWLING => json!(0),
        _ => Value::Null,
    };
    let mut out = json!({
        "document_id": o.row.id,
        "document_name": o.field("document_name"),
        "document_url": o.field("document_url"),
        "status": status,
        "display_status": status,
        "progress": progress,
        "error_message": o.field("error_message"),
        "callback_url": o.field("callback_url"),
        "tags": list("tags"),
        "participant_tags": list("participant_tags"),
        "crawl_config": o.field("crawl_config"),
        "crawled_urls": o.field("crawled_urls"),
        "last_crawled_at": o.field("last_crawled_at"),
        "crawl_count": o.field("crawl_count"),
        "properties": o.field("properties"),
        "custom_description": o.field("custom_description"),
        "is_customer_support_document": flag("is_customer_support_document"),
        "font_size_aware_extraction": flag("font_size_aware_extraction"),
        "created_at": o.row.created_at,
        "updated_at": o.row.updated_at,
    });
    if verbose {
        out["content_type"] = o.field("content_type").clone();
        out["file_size"] = o.field("file_size").clone();
        out["chunk_count"] = o.field("chunk_count").clone();
    }
    out
}

/// An `http`/`https` URL with a host, or why not.
fn web_url(raw: &str) -> Result<url::Url, &'static str> {
    let url = url::Url::parse(raw.trim()).map_err(|_| "must be an http or https URL")?;
    if matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(|h| !h.is_empty()) {
        Ok(url)
    } else {
        Err("must be an http or https URL")
    }
}

fn string_or_null(fields: &Map<String, Value>, name: &str) -> ApiResult<Option<String>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

fn strings(fields: &Map<String, Value>, name: &str) -> ApiResult<Vec<String>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| invalid(format!("{name} must be a list of strings"))),
        Some(_) => Err(invalid(format!("{name} must be a list of strings"))),
    }
}

fn flag(fields: &Map<String, Value>, name: &str) -> ApiResult<bool> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(invalid(format!("{name} must be a boolean"))),
    }
}

/// `crawl`: `{depth: 1–10, max_pages: 1–100}`, each defaulting (1 and 10) when left out.
fn crawl_config(fields: &Map<String, Value>) -> ApiResult<Option<Value>> {
    let crawl = match fields.get("crawl") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(crawl)) => crawl,
        Some(_) => return Err(invalid("crawl must be an object")),
    };
    let bounded = |name: &str, default: u64, max: u64| match crawl.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| invalid(format!("crawl.{name} must be an integer from 1 to {max}"))),
    };
    Ok(Some(json!({
        "depth": bounded("depth", 1, 10)?,
        "max_pages": bounded("max_pages", 10, 100)?,
    })))
}

/// The stored fields of a create body, checked; unknown keys are ignored, as the hosted API does.
fn new_document(body: &Map<String, Value>) -> ApiResult<Map<String, Value>> {
    let url = match body.get("document_url") {
        None | Some(Value::Null) => return Err(invalid("document_url is required")),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(invalid("document_url is required")),
        Some(Value::String(s)) => web_url(s).map_err(|why| invalid(format!("document_url {why}")))?,
        Some(_) => return Err(invalid("document_url must be a string")),
    };
    let name = match string_or_null(body, "document_name")? {
        Some(name) if !name.trim().is_empty() => name,
        // The hosted API makes up a name; parley's is the URL's last path segment, or its host.
        _ => url
            .path_segments()
            .and_then(|mut s| s.rfind(|seg| !seg.is_empty()))
            .unwrap_or_else(|| url.host_str().unwrap_or_default())
            .to_owned(),
    };
    let callback_url = match string_or_null(body, "callback_url")? {
        Some(cb) if !cb.trim().is_empty() => Some(
            web_url(&cb)
                .map_err(|why| invalid(format!("callback_url {why}")))?
                .to_string(),
        ),
        _ => None,
    };
    let properties = match body.get("properties") {
        None | Some(Value::Null) => Value::Null,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err(invalid("properties must be an object")),
    };
    let mut fields = Map::new();
    fields.insert("document_url".into(), json!(url.as_str()));
    fields.insert("document_name".into(), json!(name));
    fields.insert("callback_url".into(), json!(callback_url));
    fields.insert("tags".into(), json!(strings(body, "tags")?));
    fields.insert(
        "participant_tags".into(),
        json!(strings(body, "participant_tags")?),
    );
    fields.insert("crawl_config".into(), json!(crawl_config(body)?));
    fields.insert("properties".into(), properties);
    fields.insert(
        "custom_description".into(),
        json!(string_or_null(body, "custom_description")?),
    );
    for name in ["is_customer_support_document", "font_size_aware_extraction"] {
        fields.insert(name.into(), json!(flag(body, name)?));
    }
    Ok(fields)
}

/// `POST /v2/documents`
pub async fn create_document(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    let fields = new_document(&object_body(&raw)?)?;
    let created = resources::create(
        &state,
        &account.name,
        NewResource {
            kind: KIND,
            id: None,
            status: STARTED.into(),
            fields,
            work_at: Some(Timestamp::now()),
        },
    )
    .await?;
    state.wake_jobs.notify_one();
    Ok(Json(document_json(&created, false)))
}

/// `GET /v2/documents/{document_id}`
pub async fn get_document(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = document_id(path)?;
    let verbose = Query::parse(raw.as_deref()).bool("verbose")?.unwrap_or(false);
    let doc = resources::get(&state, &account.name, KIND, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(document_json(&doc, verbose)))
}

/// `GET /v2/documents`
pub async fn list_documents(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, 10)?;
    let descending = listing::descending(&q)?;
    let verbose = q.bool("verbose")?.unwrap_or(false);
    let status = q.get("status").map(str::trim).filter(|s| !s.is_empty());
    let (tags, participant_tags) = (listing::csv(&q, "tags"), listing::csv(&q, "participant_tags"));
    let mut docs: Vec<Opened> = listing::all(&state, &account.name, KIND)
        .await?
        .into_iter()
        .filter(|d| status.is_none_or(|s| d.row.status == s))
        .filter(|d| listing::has_any_tag(d, "tags", &tags))
        .filter(|d| listing::has_any_tag(d, "participant_tags", &participant_tags))
        .filter(|d| listing::matches_name_or_id(q.get("name_or_uuid"), &d.row.id, d.text("document_name")))
        .collect();
    if descending {
        docs.reverse();
    }
    let total = docs.len();
    let data: Vec<Value> = page.of(docs).iter().map(|d| document_json(d, verbose)).collect();
    // Echoed as sent: the documented default is page 0.
    let shown_page = q.int("page", 0..=u32::MAX)?.unwrap_or(0);
    Ok(Json(json!({
        "data": data,
        "total_count": total,
        "page": shown_page,
        "limit": page.limit,
    })))
}

/// `PATCH /v2/documents/{document_id}`: plain JSON, `{document_name?, tags?}`.
pub async fn patch_document(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = document_id(path)?;
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    let body = object_body(&raw)?;
    let name = match body.get("document_name") {
        None => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) => return Err(invalid("document_name must not be empty")),
        Some(_) => return Err(invalid("document_name must be a string")),
    };
    let tags = match body.get("tags") {
        None => None,
        Some(_) => Some(strings(&body, "tags")?),
    };
    let updated = resources::update(&state, &account.name, KIND, &id, |fields, _| {
        if let Some(name) = &name {
            fields.insert("document_name".into(), json!(name));
        }
        if let Some(tags) = &tags {
            fields.insert("tags".into(), json!(tags));
        }
        Ok::<(), ApiError>(())
    })
    .await?
    .ok_or_else(not_found)??;
    Ok(Json(document_json(&updated, false)))
}

/// `DELETE /v2/documents/{document_id}`: the document and its content erased (its key first).
pub async fn delete_document(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = document_id(path)?;
    if resources::delete(&state, &account.name, KIND, &id, true).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

/// `POST /v2/documents/{document_id}/recrawl`: fetch the URL again, `202` with status `recrawling`.
pub async fn recrawl_document(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = document_id(path)?;
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    // The client sends `{}` when it has no crawl to give; no body at all is the same.
    let crawl = if raw.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        crawl_config(&object_body(&raw)?)?
    };
    let updated = resources::update(&state, &account.name, KIND, &id, |fields, row| {
        if crawl.is_none() && fields.get("crawl_config").is_none_or(Value::is_null) {
            return Err(ApiError::BadRequest(
                "Document was not created with crawl configuration".into(),
            ));
        }
        if row.status != READY && row.status != ERROR {
            return Err(ApiError::error(
                StatusCode::CONFLICT,
                format!(
                    "Document must be in 'ready' or 'error' state to recrawl, current status: {}",
                    row.status
                ),
            ));
        }
        if let Some(crawl) = &crawl {
            fields.insert("crawl_config".into(), crawl.clone());
        }
        row.status = RECRAWLING.into();
        row.work_at = Some(Timestamp::now());
        row.locked_until = None;
        row.attempts = 0;
        Ok(())
    })
    .await?
    .ok_or_else(not_found)??;
    state.wake_jobs.notify_one();
    Ok((StatusCode::ACCEPTED, Json(document_json(&updated, false))))
}

/// `GET /v2/documents/tags`: `{tags, total_count}`, the distinct tags of the account's documents.
pub async fn list_document_tags(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let docs = listing::all(&state, &account.name, KIND).await?;
    Ok(Json(listing::tags_page(&docs, "tags", &q)?))
}

/// `GET /v2/documents/{document_id}/chunks`: the document's text in chunks (plain splits of
/// the fetched text; parley embeds nothing), `offset` an opaque cursor.
pub async fn list_document_chunks(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = document_id(path)?;
    let q = Query::parse(raw.as_deref());
    let wanted = q.choice("collection", "expected regular or customer_support", |v| {
        ["regular", "customer_support"].into_iter().find(|c| *c == v)
    })?;
    let limit = q.int("limit", 1..=100)?.unwrap_or(100) as usize;
    let offset = q.int("offset", 0..=u32::MAX)?.unwrap_or(0) as usize;
    let doc = resources::get(&state, &account.name, KIND, &id)
        .await?
        .ok_or_else(not_found)?;
    let collection = if doc.field("is_customer_support_document").as_bool() == Some(true) {
        "customer_support"
    } else {
        "regular"
    };
    let mut texts = Vec::new();
    if wanted.is_none_or(|w| w == collection)
        && let Some(bytes) = document::content(&state, &doc.row)
            .await
            .map_err(ApiError::Internal)?
        && let Some(text) = document::text_of(&bytes, doc.text("content_type"))
    {
        texts = document::chunks(&text);
    }
    let total = texts.len();
    let data: Vec<Value> = texts
        .into_iter()
        .enumerate()
        .skip(offset)
        .take(limit)
        .map(|(index, text)| {
            json!({
                "chunk_id": format!("{}_{index}", doc.row.id),
                "document_id": doc.row.id,
                "index": index,
                "collection": collection,
                "text": text,
            })
        })
        .collect();
    let next = offset + limit;
    Ok(Json(json!({
        "data": data,
        "total_count": total,
        "next_offset": (next < total).then(|| next.to_string()),
    })))
}

/// `GET /v2/documents/{document_id}/content` (a parley extension): the bytes fetched, as served.
pub async fn get_document_content(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = document_id(path)?;
    let doc = resources::get(&state, &account.name, KIND, &id)
        .await?
        .ok_or_else(not_found)?;
    let bytes = document::content(&state, &doc.row)
        .await
        .map_err(ApiError::Internal)?
        .ok_or_else(|| ApiError::message(StatusCode::NOT_FOUND, "Document content is not available"))?;
    let content_type = doc
        .text("content_type")
        .unwrap_or("application/octet-stream")
        .to_owned();
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_create_needs_an_http_url_and_names_the_bad_field() {
        for (input, why) in [
            (json!({}), "Invalid request: document_url is required"),
            (
                json!({"document_url": " "}),
                "Invalid request: document_url is required",
            ),
            (
                json!({"document_url": 5}),
                "Invalid request: document_url must be a string",
            ),
            (
                json!({"document_url": "ftp://x/y"}),
                "Invalid request: document_url must be an http or https URL",
            ),
            (
                json!({"document_url": "https://x/a", "tags": "a"}),
                "Invalid request: tags must be a list of strings",
            ),
            (
                json!({"document_url": "https://x/a", "crawl": {"depth": 11}}),
                "Invalid request: crawl.depth must be an integer from 1 to 10",
            ),
            (
                json!({"document_url": "https://x/a", "is_customer_support_document": "no"}),
                "Invalid request: is_customer_support_document must be a boolean",
            ),
        ] {
            let e = new_document(&body(input.clone())).unwrap_err();
            assert_eq!(e.to_string(), why, "{input}");
        }
    }

    #[test]
    fn a_missing_name_comes_from_the_url() {
        let f = new_document(&body(
            json!({"document_url": "https://docs.example.com/guide/intro.pdf"}),
        ))
        .unwrap();
        assert_eq!(f["document_name"], "intro.pdf");
        let f = new_document(&body(
            json!({"document_url": "https://docs.example.com/", "crawl": {}}),
        ))
        .unwrap();
        assert_eq!(f["document_name"], "docs.example.com");
        assert_eq!(f["crawl_config"], json!({"depth": 1, "max_pages": 10}));
    }
}
