//! Handlers for `/v2/guardrails…`: single guardrails (the shape the official client uses, ids
//! are UUIDs) and legacy guardrail sets (`name` + `data[]`, ids `g…`) on the same paths.
//!
//! A create is routed on its body (a top-level `data` list makes a set); every other route on
//! the id's shape. See docs/API.md for each decision.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use parley_domain::ResourceKind;
use parley_store::Account;
use rand::RngCore;
use serde_json::{Map, Value, json};

use crate::http::error::ApiError;
use crate::http::listing;
use crate::http::query::Query;
use crate::http::resource::{Page, apply_patch, body_bytes, object_body};
use crate::resources::{self, NewResource, Opened};
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

const KIND: ResourceKind = ResourceKind::Guardrail;
/// Longest `guardrail_name`, as the official client checks it.
const MAX_NAME: usize = 100;
/// Most tags on one guardrail.
const MAX_TAGS: usize = 32;
/// A guardrail's status; parley has no other.
const ACTIVE: &str = "active";

/// The guardrail routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/guardrails", get(list_guardrails).post(create_guardrails))
        .route("/v2/guardrails/tags", get(list_guardrail_tags))
        .route(
            "/v2/guardrails/{guardrail_id}",
            get(get_guardrails)
                .patch(patch_guardrails)
                .delete(delete_guardrails),
        )
}

fn not_found() -> ApiError {
    ApiError::error(StatusCode::NOT_FOUND, "Guardrails not found")
}

fn guardrail_id(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(id)| id).map_err(|_| not_found())
}

/// A fresh id for a single guardrail: a random (version 4) UUID, lower case.
fn new_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Whether `id` is a single guardrail's (a UUID) rather than a set's (`g…`).
fn is_single(id: &str) -> bool {
    id.len() == 36
        && id.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

// --- field checks, shared by create and patch ---

fn required_text(fields: &Map<String, Value>, name: &str, at: &str) -> Result<String, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(format!("{at}{name} is required")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("{at}{name} is required")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{at}{name} must be a string")),
    }
}

fn modality(fields: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<String, String> {
    match fields.get("modality") {
        None | Some(Value::Null) => Ok("verbal".into()),
        Some(Value::String(m)) if allowed.contains(&m.as_str()) => Ok(m.clone()),
        Some(_) => Err(format!("{at}modality must be one of {}", allowed.join(", "))),
    }
}

/// `callback_url`: empty, or an `http`/`https` URL; stored as given (`""` when absent).
fn callback_url(fields: &Map<String, Value>, at: &str) -> Result<String, String> {
    match fields.get("callback_url") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(String::new()),
        Some(Value::String(s)) => match url::Url::parse(s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(s.clone()),
            _ => Err(format!("{at}callback_url must be an http or https URL")),
        },
        Some(_) => Err(format!("{at}callback_url must be a string")),
    }
}

/// A single guardrail's stored fields from a create body or a patched view; unknown keys dropped.
fn single_fields(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let name = required_text(body, "guardrail_name", "")?;
    if name.chars().count() > MAX_NAME {
        return Err(format!("guardrail_name must be at most {MAX_NAME} characters"));
    }
    let prompt = required_text(body, "guardrail_prompt", "")?;
    let modality = modality(body, &["verbal", "visual", "audio"], "")?;
    let callback_url = callback_url(body, "")?;
    let app_message = match body.get("app_message") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("app_message must be a boolean".into()),
    };
    let tags: Vec<String> = match body.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| t.as_str().filter(|t| !t.trim().is_empty()).map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("tags must be a list of non-empty strings")?,
        Some(_) => return Err("tags must be a list of non-empty strings".into()),
    };
    if tags.len() > MAX_TAGS {
        return Err(format!("tags must have at most {MAX_TAGS} entries"));
    }
    let mut fields = Map::new();
    fields.insert("guardrail_name".into(), json!(name));
    fields.insert("guardrail_prompt".into(), json!(prompt));
    fields.insert("modality".into(), json!(modality));
    fields.insert("callback_url".into(), json!(callback_url));
    fields.insert("app_message".into(), json!(app_message));
    fields.insert("tags".into(), json!(tags));
    match body.get("tool_call") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            fields.insert("tool_call".into(), v.clone());
        }
        Some(_) => return Err("tool_call must be an object".into()),
    }
    Ok(fields)
}

/// A legacy set's stored fields: `name` and its `data` items.
fn set_fields(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let name = match body.get("name") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("name must be a string".into()),
    };
    let items = match body.get("data") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        None | Some(Value::Null) => return Err("data is required".into()),
        Some(_) => return Err("data must be a non-empty list of guardrails".into()),
    };
    let mut data = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("data[{i}].");
        let Value::Object(item) = item else {
            return Err(format!("data[{i}] must be an object"));
        };
        let name = required_text(item, "guardrail_name", &at)?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "{at}guardrail_name must contain only letters, digits and underscores"
            ));
        }
        data.push(json!({
            "guardrail_name": name,
            "guardrail_prompt": required_text(item, "guardrail_prompt", &at)?,
            "modality": modality(item, &["verbal", "visual"], &at)?,
            "callback_url": callback_url(item, &at)?,
        }));
    }
    let mut fields = Map::new();
    fields.insert("name".into(), json!(name));
    fields.insert("data".into(), Value::Array(data));
    Ok(fields)
}

// --- what the client sees ---

fn single_json(o: &Opened, verbose: bool) -> Value {
    let mut out = json!({
        "uuid": o.row.id,
        "guardrail_name": o.field("guardrail_name"),
        "guardrail_prompt": o.field("guardrail_prompt"),
        "modality": o.field("modality"),
        "callback_url": o.field("callback_url"),
        "app_message": o.field("app_message"),
        "tags": o.field("tags"),
        "owner_id": o.row.account,
        "created_at": o.row.created_at,
        "updated_at": o.row.updated_at,
    });
    if let Some(tool_call) = o.fields.as_ref().and_then(|f| f.get("tool_call")) {
        out["tool_call"] = tool_call.clone();
    }
    if verbose {
        out["guardrail_type"] = json!("user");
    }
    out
}

fn set_json(o: &Opened) -> Value {
    json!({
        "guardrails_id": o.row.id,
        "guardrails_name": o.field("name"),
        "name": o.field("name"),
        "data": o.field("data"),
        "status": o.row.status,
        "created_at": o.row.created_at,
        "updated_at": o.row.updated_at,
    })
}

fn shown(o: &Opened, verbose: bool) -> Value {
    if is_single(&o.row.id) {
        single_json(o, verbose)
    } else {
        set_json(o)
    }
}

// --- routes ---

/// `POST /v2/guardrails` (the client adds a trailing slash): a single guardrail, or a legacy set
/// when the body has a top-level `data` and no `guardrail_name`.
pub async fn create_guardrails(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    let body = object_body(&raw)?;
    let single = body.contains_key("guardrail_name") || !body.contains_key("data");
    let (id, fields) = if single {
        let fields = single_fields(&body).map_err(ApiError::BadRequest)?;
        (Some(new_uuid()), fields)
    } else {
        // The hosted API documents this 400 under `message`.
        let fields = set_fields(&body).map_err(|why| ApiError::message(StatusCode::BAD_REQUEST, why))?;
        (None, fields)
    };
    let created = resources::create(
        &state,
        &account.name,
        NewResource {
            kind: KIND,
            id,
            status: ACTIVE.into(),
            fields,
            work_at: None,
        },
    )
    .await?;
    Ok(Json(shown(&created, false)))
}

/// `GET /v2/guardrails`: single guardrails, or legacy sets with `legacy=true`.
pub async fn list_guardrails(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, 10)?;
    let descending = listing::descending(&q)?;
    let verbose = q.bool("verbose")?.unwrap_or(false);
    let legacy = q.bool("legacy")?.unwrap_or(false);
    let system = q.choice("type", "expected user, system or all", |v| match v {
        "user" | "all" => Some(false),
        "system" => Some(true),
        _ => None,
    })?;
    let tags = listing::csv(&q, "tags");
    let name_field = if legacy { "name" } else { "guardrail_name" };
    let mut rows: Vec<Opened> = if system == Some(true) {
        // parley has no system guardrails.
        Vec::new()
    } else {
        listing::all(&state, &account.name, KIND).await?
    };
    rows.retain(|o| {
        is_single(&o.row.id) != legacy
            && listing::has_any_tag(o, "tags", &tags)
            && listing::matches_name_or_id(q.get("name_or_uuid"), &o.row.id, o.text(name_field))
    });
    if descending {
        rows.reverse();
    }
    let total = rows.len();
    let data: Vec<Value> = page.of(rows).iter().map(|o| shown(o, verbose)).collect();
    Ok(Json(json!({ "data": data, "total_count": total })))
}

/// `GET /v2/guardrails/{id}`
pub async fn get_guardrails(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = guardrail_id(path)?;
    let q = Query::parse(raw.as_deref());
    let verbose = q.bool("verbose")?.unwrap_or(false);
    q.bool("legacy")?;
    let found = resources::get(&state, &account.name, KIND, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(shown(&found, verbose)))
}

/// Applies a JSON Patch body to `view`; a patch that does not parse or apply is the hosted API's
/// 400 `Invalid patch operation`, with the reason.
fn patched(mut view: Map<String, Value>, body: &[u8]) -> ApiResult<Map<String, Value>> {
    apply_patch(&mut view, body).map_err(|e| {
        let why = e.to_string();
        let why = why.strip_prefix("Invalid JSON patch format: ").unwrap_or(&why);
        ApiError::BadRequest(format!("Invalid patch operation: {why}"))
    })?;
    Ok(view)
}

/// The patched view's fields, minus those the client may send back unchanged (ids, times):
/// those are no-ops, as on the hosted API. Any other unknown field is refused.
fn writable(
    mut view: Map<String, Value>,
    persisted: &[&str],
    fields: &[&str],
) -> ApiResult<Map<String, Value>> {
    for name in persisted {
        view.remove(*name);
    }
    if let Some(unknown) = view.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "Invalid patch operation: {unknown} is not a field that can be patched"
        )));
    }
    Ok(view)
}

/// `PATCH /v2/guardrails/{id}`: RFC 6902 JSON Patch over the guardrail as GET shows it.
///
/// A single guardrail answers with itself; a legacy set with the documented message.
pub async fn patch_guardrails(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = guardrail_id(path)?;
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    let single = is_single(&id);
    let updated = resources::update(&state, &account.name, KIND, &id, |fields, row| {
        let opened = Opened {
            row: row.clone(),
            fields: Some(fields.clone()),
        };
        let Value::Object(view) = shown(&opened, true) else {
            unreachable!("a guardrail is shown as an object")
        };
        let view = patched(view, &raw)?;
        *fields = if single {
            let view = writable(
                view,
                &[
                    "uuid",
                    "owner_id",
                    "created_at",
                    "updated_at",
                    "guardrail_type",
                    "persona_refs",
                ],
                &[
                    "guardrail_name",
                    "guardrail_prompt",
                    "modality",
                    "callback_url",
                    "app_message",
                    "tags",
                    "tool_call",
                ],
            )?;
            single_fields(&view).map_err(ApiError::BadRequest)?
        } else {
            let mut view = writable(
                view,
                &["guardrails_id", "status", "created_at", "updated_at"],
                &["name", "guardrails_name", "data"],
            )?;
            // `guardrails_name` is `name` under its listed name: a change to either counts.
            if let Some(alias) = view.remove("guardrails_name")
                && alias != *fields.get("name").unwrap_or(&Value::Null)
            {
                view.insert("name".into(), alias);
            }
            set_fields(&view).map_err(ApiError::BadRequest)?
        };
        Ok::<(), ApiError>(())
    })
    .await?
    .ok_or_else(not_found)??;
    if single {
        Ok(Json(single_json(&updated, false)))
    } else {
        Ok(Json(json!({ "message": "Guardrails updated successfully" })))
    }
}

/// `DELETE /v2/guardrails/{id}`: erased, its key first.
pub async fn delete_guardrails(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = guardrail_id(path)?;
    if resources::delete(&state, &account.name, KIND, &id, true).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

/// `GET /v2/guardrails/tags`: `{tags, total_count}` from the account's single guardrails.
pub async fn list_guardrail_tags(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let rows = listing::all(&state, &account.name, KIND).await?;
    Ok(Json(listing::tags_page(&rows, "tags", &q)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_version_4_uuids_and_sets_are_not() {
        let id = new_uuid();
        assert!(is_single(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(new_uuid(), id);
        assert!(!is_single(&resources::new_id(KIND)));
        assert!(!is_single("g7771e9a453db"));
    }

    #[test]
    fn a_single_guardrail_gets_the_clients_defaults() {
        let Value::Object(body) = json!({"guardrail_name": "no_medical_advice", "guardrail_prompt": "p"})
        else {
            unreachable!()
        };
        let f = single_fields(&body).unwrap();
        assert_eq!(
            Value::Object(f),
            json!({"guardrail_name": "no_medical_advice", "guardrail_prompt": "p", "modality": "verbal",
                   "callback_url": "", "app_message": true, "tags": []})
        );
    }
}
