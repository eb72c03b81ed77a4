//! `/v2/personas` and `/v2/pals`: one resource through two views, and a PAL's tools and skills.
//!
//! Every decision the hosted docs leave open is in `docs/API.md`, "Personas and PALs".

mod skills;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parley_domain::{ResourceKind, Timestamp, registry};
use parley_store::{Account, Resource};
use serde_json::{Map, Value, json};

use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::http::resource::{Page, apply_patch, object_body};
use crate::persona::fields::{self, FieldError, Shown, View};
use crate::persona::{self, Found, Persona};
use crate::resources::{self, NewResource, Opened};
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The routes of both views; each handler learns its view from the route's extension.
pub fn routes() -> Router<AppState> {
    let personas = Router::new()
        .route("/v2/personas", post(create_persona).get(list_personas))
        .route(
            "/v2/personas/{persona_id}",
            get(get_persona).patch(patch_persona).delete(delete_persona),
        )
        .layer(Extension(View::Persona));
    let pals = Router::new()
        .route("/v2/pals", post(create_persona).get(list_personas))
        .route(
            "/v2/pals/{persona_id}",
            get(get_persona).patch(patch_persona).delete(delete_persona),
        )
        .route(
            "/v2/pals/{persona_id}/tools",
            get(list_pal_tools).post(attach_pal_tools),
        )
        .route("/v2/pals/{persona_id}/tools/{tool_id}", delete(detach_pal_tool))
        .route(
            "/v2/pals/{persona_id}/skills",
            get(list_pal_skills).put(skills::replace_pal_skills),
        )
        .route(
            "/v2/pals/{persona_id}/skills/{skill_id}",
            get(skills::get_pal_skill)
                .put(skills::put_pal_skill)
                .patch(skills::patch_pal_skill)
                .delete(skills::delete_pal_skill),
        )
        .layer(Extension(View::Pal));
    personas.merge(pals)
}

/// When stock personas say they were made: they predate every account.
const STOCK_TIME: Timestamp = Timestamp::from_micros(1_735_689_600_000_000);

/// The answer for an id that names no persona of the account's: unknown, another account's,
/// deleted, malformed. The official client rewrites `persona_id` to `pal_id` in errors on
/// `/pals` paths; parley says `pal_id` there itself.
fn invalid_id(view: View) -> ApiError {
    ApiError::BadRequest(format!("Invalid {}", view.id_key()))
}

/// The answer for a default replica (face) that the account cannot use.
fn invalid_replica(view: View) -> ApiError {
    ApiError::BadRequest(
        match view {
            View::Persona => "Invalid replica_id",
            View::Pal => "Invalid face_id",
        }
        .into(),
    )
}

/// Stock personas belong to parley, not to the account.
fn stock_is_read_only(view: View, id: &str) -> ApiError {
    ApiError::error(
        StatusCode::FORBIDDEN,
        format!(
            "{id} is a system {}: it cannot be changed or deleted",
            view.noun()
        ),
    )
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        Self::BadRequest(e.0)
    }
}

/// The body, with the size limit reported as 413 and other read failures as 400.
fn read_body(body: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("Could not read the request body: {e}"))
        }
    })
}

/// The path's id; an undecodable one names nothing.
fn path_id(view: View, path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(id)| id).map_err(|_| invalid_id(view))
}

/// A stock persona's fields, stored-style.
fn stock_fields(p: &registry::Persona) -> Map<String, Value> {
    let mut layers = Map::new();
    if let Some(model) = p.perception_model {
        layers.insert("perception".into(), json!({ "perception_model": model }));
    }
    let fields = json!({
        "persona_name": p.name,
        "system_prompt": p.system_prompt,
        "greeting": p.greeting,
        "default_replica_id": p.default_replica_id,
        "pipeline_mode": p.pipeline_mode,
        "layers": layers,
    });
    match fields {
        Value::Object(fields) => fields,
        _ => unreachable!("a JSON object literal"),
    }
}

fn render_stock(view: View, p: &registry::Persona) -> Map<String, Value> {
    let shown = Shown {
        id: p.id,
        kind: "system",
        created_at: STOCK_TIME,
        updated_at: STOCK_TIME,
    };
    fields::render(view, &stock_fields(p), shown)
}

fn shown_of(row: &Resource) -> Shown<'_> {
    Shown {
        id: &row.id,
        kind: "user",
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// The account's persona as `view` shows it; one whose content is unavailable shows its id,
/// times and defaults only.
fn render_own(view: View, opened: &Opened) -> Map<String, Value> {
    let empty = Map::new();
    fields::render(
        view,
        opened.fields.as_ref().unwrap_or(&empty),
        shown_of(&opened.row),
    )
}

fn render(view: View, persona: &Persona) -> Map<String, Value> {
    match persona {
        Persona::Stock(p) => render_stock(view, p),
        Persona::Own(opened) => render_own(view, opened),
    }
}

/// Checks a stored set's default replica, if it names one, and returns the first use it needs.
async fn check_default_replica(
    state: &AppState,
    account: &str,
    view: View,
    stored: &Map<String, Value>,
) -> ApiResult<Option<NewResource>> {
    let Some(id) = fields::text(stored, "default_replica_id") else {
        return Ok(None);
    };
    match persona::find_replica(state, account, id).await? {
        None => Err(invalid_replica(view)),
        Some(Found::Here(_)) => Ok(None),
        Some(Found::FirstUse(new)) => Ok(Some(new)),
    }
}

/// Stores a default replica's first use; one that turns out unusable is the usual 400.
async fn store_replica_first_use(
    state: &AppState,
    account: &str,
    view: View,
    first_use: Option<NewResource>,
) -> ApiResult<()> {
    if let Some(new) = first_use
        && persona::first_use(state, account, new).await?.is_none()
    {
        return Err(invalid_replica(view));
    }
    Ok(())
}

/// `POST /v2/personas`, `POST /v2/pals`
pub async fn create_persona(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Extension(view): Extension<View>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Map<String, Value>>> {
    let raw = read_body(raw, state.settings.max_body_bytes)?;
    let sent = object_body(&raw)?;
    let face_missing = match sent.get("default_face_id") {
        None | Some(Value::Null) => true,
        Some(Value::String(face)) => face.is_empty(),
        Some(_) => false,
    };
    if view == View::Pal && face_missing {
        // The hosted API's own words (a marshmallow error), byte for byte.
        return Err(ApiError::BadRequest(
            "Bad Request. {'default_face_id': ['default_face_id is required when creating a pal.']}".into(),
        ));
    }
    let stored = fields::to_stored(view, sent)?;
    let replica_first_use = check_default_replica(&state, &account.name, view, &stored).await?;
    store_replica_first_use(&state, &account.name, view, replica_first_use).await?;
    let opened = resources::create(
        &state,
        &account.name,
        NewResource {
            kind: ResourceKind::Persona,
            id: None,
            status: persona::PERSONA_STATUS.into(),
            fields: stored,
            work_at: None,
        },
    )
    .await?;
    Ok(Json(render_own(view, &opened)))
}

/// `GET /v2/personas/{persona_id}`, `GET /v2/pals/{pal_id}`; `include_settings`, `verbose` and
/// `source` are accepted and change nothing.
pub async fn get_persona(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Extension(view): Extension<View>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Map<String, Value>>> {
    let id = path_id(view, path)?;
    let persona = persona::persona(&state, &account.name, &id)
        .await?
        .ok_or_else(|| invalid_id(view))?;
    Ok(Json(render(view, &persona)))
}

/// Which personas a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    User,
    System,
}

/// `GET /v2/personas`, `GET /v2/pals`: `limit`, `page` (0 and 1 are the first), `persona_type` /
/// `pal_type` (`user`, the default, or `system`), `sort` (`desc`, the default, or `asc`).
pub async fn list_personas(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Extension(view): Extension<View>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, 10)?;
    let listed = q
        .choice(view.type_key(), "expected user or system", |v| match v {
            "user" => Some(Listed::User),
            "system" => Some(Listed::System),
            _ => None,
        })?
        .unwrap_or(Listed::User);
    let ascending = q
        .choice("sort", "expected asc or desc", |v| match v {
            "asc" => Some(true),
            "desc" => Some(false),
            _ => None,
        })?
        .unwrap_or(false);
    let (data, total): (Vec<Value>, u64) = match listed {
        Listed::System => {
            let shown = page
                .of(registry::PERSONAS.iter().collect())
                .into_iter()
                .map(|p| Value::Object(render_stock(view, p)))
                .collect();
            (shown, registry::PERSONAS.len() as u64)
        }
        Listed::User => {
            let (rows, total) = own_page(&state, &account.name, page, ascending).await?;
            let shown = rows
                .iter()
                .map(|opened| Value::Object(render_own(view, opened)))
                .collect();
            (shown, total)
        }
    };
    Ok(Json(json!({ "data": data, "total_count": total })))
}

/// A page of the account's personas, newest first or (`ascending`) oldest first.
async fn own_page(
    state: &AppState,
    account: &str,
    page: Page,
    ascending: bool,
) -> ApiResult<(Vec<Opened>, u64)> {
    let kind = ResourceKind::Persona;
    if !ascending {
        return Ok(resources::list(state, account, kind, page.limit, page.offset).await?);
    }
    // The store lists newest first: the oldest-first page is the mirror window, read backwards.
    let (_, total) = resources::list(state, account, kind, 1, 0).await?;
    let end = total.saturating_sub(page.offset);
    let start = end.saturating_sub(u64::from(page.limit));
    if end == 0 {
        return Ok((Vec::new(), total));
    }
    let limit = u32::try_from(end - start).unwrap_or(page.limit);
    let (mut rows, total) = resources::list(state, account, kind, limit, start).await?;
    rows.reverse();
    Ok((rows, total))
}

/// `PATCH /v2/personas/{persona_id}`, `PATCH /v2/pals/{pal_id}`: an RFC 6902 JSON Patch of the
/// object a GET of the same view shows; the answer is the patched object.
pub async fn patch_persona(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Extension(view): Extension<View>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Map<String, Value>>> {
    let id = path_id(view, path)?;
    let raw = read_body(raw, state.settings.max_body_bytes)?;
    let opened = match persona::persona(&state, &account.name, &id).await? {
        None => return Err(invalid_id(view)),
        Some(Persona::Stock(p)) => return Err(stock_is_read_only(view, p.id)),
        Some(Persona::Own(opened)) => opened,
    };
    let patched = |current: &Map<String, Value>, row: &Resource| -> ApiResult<Map<String, Value>> {
        let mut shown = fields::render(view, current, shown_of(row));
        apply_patch(&mut shown, &raw)?;
        Ok(fields::to_stored(view, shown)?)
    };
    // Checked once outside the write, which cannot wait on the store; the write below refuses a
    // default replica other than this one or the one it already had.
    let current = opened.fields.clone().unwrap_or_default();
    let first = patched(&current, &opened.row)?;
    let new_replica = fields::text(&first, "default_replica_id").map(str::to_owned);
    if new_replica.as_deref() != fields::text(&current, "default_replica_id") {
        let first_use = check_default_replica(&state, &account.name, view, &first).await?;
        store_replica_first_use(&state, &account.name, view, first_use).await?;
    }
    if first == current {
        return Ok(Json(render_own(view, &opened)));
    }
    let updated = resources::update(
        &state,
        &account.name,
        ResourceKind::Persona,
        &id,
        |stored, row| {
            let next = patched(stored, row)?;
            let replica = fields::text(&next, "default_replica_id");
            if replica != new_replica.as_deref() && replica != fields::text(stored, "default_replica_id") {
                return Err(invalid_replica(view));
            }
            *stored = next;
            Ok(())
        },
    )
    .await?;
    match updated {
        None => Err(invalid_id(view)),
        Some(Err(e)) => Err(e),
        Some(Ok(opened)) => Ok(Json(render_own(view, &opened))),
    }
}

/// `DELETE /v2/personas/{persona_id}`, `DELETE /v2/pals/{pal_id}`: 204, the persona's content
/// erased (its key destroyed before the answer).
pub async fn delete_persona(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    Extension(view): Extension<View>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = path_id(view, path)?;
    match persona::find_persona(&state, &account.name, &id).await? {
        Some(Found::Here(Persona::Stock(p))) => Err(stock_is_read_only(view, p.id)),
        // A seeded or pinned id never used has nothing stored to erase.
        Some(Found::FirstUse(_)) => Ok(StatusCode::NO_CONTENT),
        // The account's own, also one whose content is already unavailable (its key gone):
        // such a row cannot be read or patched, but it can still be erased.
        _ if persona::plausible(&id)
            && resources::delete(&state, &account.name, ResourceKind::Persona, &id, true).await? =>
        {
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(invalid_id(view)),
    }
}

/// A tool parley knows by id: one of the stock catalogue's system tools (`end_call`).
fn known_tool(id: &str) -> Option<Value> {
    crate::catalogue::tool(id)
}

/// A PAL's stored `tool_ids`.
fn tool_ids(fields: Option<&Map<String, Value>>) -> Vec<String> {
    fields
        .and_then(|f| f.get("tool_ids"))
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The PAL an id names, for its tools and skills.
async fn pal(
    state: &AppState,
    account: &str,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Persona> {
    let id = path_id(View::Pal, path)?;
    persona::persona(state, account, &id)
        .await?
        .ok_or_else(|| invalid_id(View::Pal))
}

/// `GET /v2/pals/{pal_id}/tools/`: the attached tools parley knows (ids it does not know, say
/// a tool of the hosted account's, stay attached but are not listed).
pub async fn list_pal_tools(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let attached = match pal(&state, &account.name, path).await? {
        Persona::Stock(_) => Vec::new(),
        Persona::Own(opened) => tool_ids(opened.fields.as_ref()),
    };
    let tools: Vec<Value> = attached.iter().filter_map(|id| known_tool(id)).collect();
    Ok(Json(json!({ "total_count": tools.len(), "data": tools })))
}

/// `POST /v2/pals/{pal_id}/tools/` `{"tool_ids": [...]}` (1 to 50 known tools): attaches them.
pub async fn attach_pal_tools(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let raw = read_body(raw, state.settings.max_body_bytes)?;
    let sent = object_body(&raw)?;
    let wanted = match sent.get("tool_ids") {
        Some(Value::Array(ids)) if (1..=50).contains(&ids.len()) => ids
            .iter()
            .map(|id| id.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    }
    .ok_or_else(|| ApiError::BadRequest("Invalid tool_ids: expected a list of 1 to 50 tool ids".into()))?;
    let mut tools = Vec::new();
    for id in &wanted {
        tools.push(known_tool(id).ok_or_else(|| ApiError::BadRequest(format!("Invalid tool_id: {id}")))?);
    }
    let opened = match pal(&state, &account.name, path).await? {
        Persona::Stock(p) => return Err(stock_is_read_only(View::Pal, p.id)),
        Persona::Own(opened) => opened,
    };
    let updated = resources::update(
        &state,
        &account.name,
        ResourceKind::Persona,
        &opened.row.id,
        |stored, _| {
            let mut ids = tool_ids(Some(stored));
            for id in &wanted {
                if !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            stored.insert("tool_ids".into(), json!(ids));
            fields::check(View::Pal, stored).map_err(ApiError::from)
        },
    )
    .await?;
    match updated {
        None => Err(invalid_id(View::Pal)),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Ok(Json(json!({ "data": tools }))),
    }
}

/// `DELETE /v2/pals/{pal_id}/tools/{tool_id}`: detaches an attached tool; 204.
pub async fn detach_pal_tool(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Ok(Path((id, tool_id))) = path else {
        return Err(invalid_id(View::Pal));
    };
    match persona::persona(&state, &account.name, &id).await? {
        None => return Err(invalid_id(View::Pal)),
        Some(Persona::Stock(p)) => return Err(stock_is_read_only(View::Pal, p.id)),
        Some(Persona::Own(_)) => {}
    }
    let not_attached = || ApiError::BadRequest(format!("Invalid tool_id: {tool_id} is not attached"));
    let updated = resources::update(&state, &account.name, ResourceKind::Persona, &id, |stored, _| {
        let mut ids = tool_ids(Some(stored));
        let before = ids.len();
        ids.retain(|t| *t != tool_id);
        if ids.len() == before {
            return Err(not_attached());
        }
        stored.insert("tool_ids".into(), json!(ids));
        Ok(())
    })
    .await?;
    match updated {
        None => Err(invalid_id(View::Pal)),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Ok(StatusCode::NO_CONTENT),
    }
}

/// `GET /v2/pals/{pal_id}/skills/`: the PAL's `skills`, an object keyed by skill id (`{}` when none).
pub async fn list_pal_skills(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let skills = match pal(&state, &account.name, path).await? {
        Persona::Stock(_) => None,
        Persona::Own(opened) => opened
            .fields
            .as_ref()
            .and_then(|f| f.get("skills"))
            .filter(|s| s.is_object())
            .cloned(),
    };
    Ok(Json(json!({ "data": skills.unwrap_or_else(|| json!({})) })))
}
