//! Handlers for the stock catalogue: `/v2/tools`, `/v2/skills` and
//! `/v2/pronunciation-dictionaries`, which `tavus pal options` reads all at once.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::catalogue;
use crate::http::error::ApiError;
use crate::http::listing;
use crate::http::query::Query;
use crate::http::resource::Page;
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The catalogue routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/tools", get(list_tools))
        .route("/v2/tools/{tool_id}", get(get_tool))
        .route("/v2/skills", get(list_skills))
        .route("/v2/skills/{skill_id}", get(get_skill))
        .route(
            "/v2/pronunciation-dictionaries",
            get(list_pronunciation_dictionaries),
        )
}

/// `{data, total_count}` of `entries` whose `name_field` or `id_field` matches `name_or_uuid`,
/// sorted and paged as asked.
fn page_of(entries: Vec<Value>, q: &Query, id_field: &str, name_field: &str) -> ApiResult<Value> {
    let page = Page::from_query(q, 10)?;
    let descending = listing::descending(q)?;
    let mut entries: Vec<Value> = entries
        .into_iter()
        .filter(|e| {
            listing::matches_name_or_id(
                q.get("name_or_uuid"),
                e[id_field].as_str().unwrap_or_default(),
                e[name_field].as_str(),
            )
        })
        .collect();
    if descending {
        entries.reverse();
    }
    let total = entries.len();
    Ok(json!({ "data": page.of(entries), "total_count": total }))
}

/// `GET /v2/tools`: `type=user` (the default: the account's own tools, of which parley keeps
/// none), `system` or `all` (system tools first).
pub async fn list_tools(RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let system = q
        .choice("type", "expected user, system or all", |v| match v {
            "user" => Some(false),
            "system" | "all" => Some(true),
            _ => None,
        })?
        .unwrap_or(false);
    let tools = if system {
        catalogue::system_tools()
    } else {
        Vec::new()
    };
    Ok(Json(page_of(tools, &q, "tool_id", "name")?))
}

/// `GET /v2/tools/{tool_id}`
pub async fn get_tool(path: Result<Path<String>, PathRejection>) -> ApiResult<Json<Value>> {
    path.ok()
        .and_then(|Path(id)| catalogue::tool(&id))
        .map(Json)
        .ok_or_else(|| ApiError::error(StatusCode::NOT_FOUND, "Tool not found"))
}

/// `GET /v2/skills`: the built-in skills.
pub async fn list_skills(RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    Ok(Json(page_of(
        catalogue::skills(),
        &q,
        "skill_id",
        "display_name",
    )?))
}

/// `GET /v2/skills/{skill_id}`
pub async fn get_skill(path: Result<Path<String>, PathRejection>) -> ApiResult<Json<Value>> {
    let id = path.map(|Path(id)| id).unwrap_or_default();
    catalogue::skill(&id).map(Json).ok_or_else(|| {
        let shown: String = id.chars().take(64).collect();
        ApiError::error(StatusCode::NOT_FOUND, format!("Unknown skill '{shown}'"))
    })
}

/// `GET /v2/pronunciation-dictionaries`: parley keeps none, so every account's list is empty.
pub async fn list_pronunciation_dictionaries(RawQuery(raw): RawQuery) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    Ok(Json(page_of(Vec::new(), &q, "uuid", "name")?))
}
