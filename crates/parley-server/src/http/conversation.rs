//! Handlers for `/v2/conversations…`: extract, call the service, shape the response.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_domain::{Conversation, ConversationId, Event, Status};
use parley_store::{Account, StoredEvent};
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::service;
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

/// The path's id, or the contract's 400 for anything that is not one (including undecodable paths).
fn conversation_id(path: Result<Path<String>, PathRejection>) -> ApiResult<ConversationId> {
    let Path(raw) = path.map_err(|_| ApiError::InvalidConversationId)?;
    ConversationId::parse(&raw).map_err(|_| ApiError::InvalidConversationId)
}

/// The body, with the size limit reported as 413 and other read failures as 400.
fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("Could not read the request body: {e}"))
        }
    })
}

/// The conversation as Get and List show it.
fn conversation_json(state: &AppState, c: &Conversation) -> Value {
    json!({
        "conversation_id": c.id,
        "conversation_name": c.conversation_name,
        "conversation_url": format!("{}/rooms/{}", state.settings.public_url, c.id),
        "callback_url": c.callback_url,
        "status": c.status,
        "replica_id": c.replica_id,
        "persona_id": c.persona_id,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    })
}

fn event_json(c: &Conversation, e: StoredEvent) -> Value {
    Event::envelope(
        &e.event_type,
        &e.message_type,
        e.timestamp,
        e.properties,
        &c.id,
        c.callback_url.as_deref(),
    )
}

/// `POST /v2/conversations`
pub async fn create_conversation(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let raw = body(raw, state.settings.max_body_bytes)?;
    let c = service::create_conversation(&state, &account, &raw).await?;
    let mut out = conversation_json(&state, &c);
    if let Some(token) = &c.meeting_token {
        out["meeting_token"] = json!(token);
    }
    Ok(Json(out))
}

/// `GET /v2/conversations/{conversation_id}`
pub async fn get_conversation(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = conversation_id(path)?;
    let verbose = Query::parse(raw.as_deref()).bool("verbose")?.unwrap_or(false);
    let (c, events) = service::get_conversation(&state, &account, &id, verbose).await?;
    let mut out = conversation_json(&state, &c);
    if let Some(events) = events {
        out["events"] = Value::Array(events.into_iter().map(|e| event_json(&c, e)).collect());
    }
    Ok(Json(out))
}

/// `GET /v2/conversations`
pub async fn list_conversations(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let limit = q.int("limit", 1..=100)?.unwrap_or(10);
    // Pages count from 1; 0 is read as 1, as some clients send it.
    let page = q.int("page", 0..=u32::MAX)?.unwrap_or(1).max(1);
    let status = q.choice("status", "expected active or ended", Status::parse)?;
    let (list, total) = service::list_conversations(&state, &account, status, limit, page).await?;
    let data: Vec<Value> = list.iter().map(|c| conversation_json(&state, c)).collect();
    Ok(Json(json!({ "data": data, "total_count": total })))
}

/// `POST /v2/conversations/{conversation_id}/end`
pub async fn end_conversation(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = conversation_id(path)?;
    let c = service::end_conversation(&state, &account, &id).await?;
    Ok(Json(json!({ "conversation_id": c.id, "status": c.status })))
}

/// `DELETE /v2/conversations/{conversation_id}?hard=true|false`
pub async fn delete_conversation(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    let id = conversation_id(path)?;
    let hard = Query::parse(raw.as_deref()).bool("hard")?.unwrap_or(false);
    service::delete_conversation(&state, &account, &id, hard).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v2/conversations/{conversation_id}/recording` (a parley extension).
pub async fn get_recording(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = conversation_id(path)?;
    let (content_type, bytes) = service::get_recording(&state, &account, &id).await?;
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
