//! The room at `conversation_url`: a page a person opens to join and leave a simulated call.
//!
//! No API key: like a hosted room link, the URL is the invitation; private rooms (`require_auth`)
//! also need `?t=<meeting_token>`. The participant events drive the call's timers.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use parley_domain::replica::{greeting, persona_of, replica_of};
use parley_domain::{Conversation, ConversationId, ShutdownReason, Status, Timestamp, Transport};
use parley_store::ConversationStore;
use parley_store::ParticipantOutcome;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::state::AppState;

const PAGE: &str = include_str!("../../assets/room.html");

/// `GET /rooms/{conversation_id}`: the page; it reads everything else from `state`.
///
/// The page answers with the room's own status (403 for a private room opened without its token,
/// 404 once deleted), so a script or a link checker sees what a person would; its text then comes
/// from `state`, which answers the same.
pub async fn room_page(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let status = match open_room(&state, path, raw.as_deref()).await {
        Ok(_) => StatusCode::OK,
        Err(RoomError::Gone) => StatusCode::NOT_FOUND,
        Err(RoomError::Forbidden) => StatusCode::FORBIDDEN,
        Err(RoomError::Store(e)) => return e.into_response(),
    };
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// Why a room does not open.
enum RoomError {
    /// Unknown, malformed or deleted: all the same to a visitor.
    Gone,
    /// A private room without its meeting token, or with a wrong one.
    Forbidden,
    Store(ApiError),
}

impl IntoResponse for RoomError {
    fn into_response(self) -> Response {
        match self {
            Self::Gone => (
                StatusCode::NOT_FOUND,
                Json(json!({ "status": "not_found", "error": "This conversation does not exist or has been deleted." })),
            )
                .into_response(),
            Self::Forbidden => {
                let body = json!({ "status": "forbidden", "error": "This is a private room: open it with its meeting token (?t=…)." });
                (StatusCode::FORBIDDEN, Json(body)).into_response()
            }
            Self::Store(e) => e.into_response(),
        }
    }
}

/// The room's conversation, if the link (and token, for a private room) is good.
async fn open_room(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    raw: Option<&str>,
) -> Result<Conversation, RoomError> {
    let Ok(Path(raw_id)) = path else {
        return Err(RoomError::Gone);
    };
    let Ok(id) = ConversationId::parse(&raw_id) else {
        return Err(RoomError::Gone);
    };
    let conversation = match state.store.load_conversation(&id).await {
        Ok(Some(c)) if c.deleted_at.is_none() => c,
        Ok(_) => return Err(RoomError::Gone),
        Err(e) => return Err(RoomError::Store(e.into())),
    };
    if let Some(token) = &conversation.meeting_token {
        let given = Query::parse(raw).get("t").unwrap_or_default().to_owned();
        // Constant time: how long a wrong guess takes must not say how much of it was right.
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Err(RoomError::Forbidden);
        }
    }
    Ok(conversation)
}

fn room_json(c: &Conversation) -> serde_json::Value {
    let persona = persona_of(c);
    let replica = replica_of(c);
    // The store keeps the last head count of a call that ended with people in it; the room
    // itself is empty once the call is over, replica included.
    let live = c.status == Status::Active;
    let replica_here = live && c.joined_at.is_some();
    json!({
        "conversation_id": c.id,
        "conversation_name": c.conversation_name,
        "status": c.status,
        "shutdown_reason": c.shutdown_reason,
        "shutdown_message": c.shutdown_reason.as_deref().map(ShutdownReason::describe),
        "transport": Transport::of_request_json(&c.request_json).as_str(),
        "persona": { "id": persona.id, "name": persona.name },
        "replica": {
            "id": c.replica_id,
            "name": replica.name,
            "joined": replica_here,
        },
        // The replica speaks first once it is in the room and someone is there to hear it.
        "greeting": (replica_here && c.participant_joined_at.is_some()).then(|| greeting(c)),
        "participants": if live { c.participants_present } else { 0 },
    })
}

/// `GET /rooms/{conversation_id}/state`
pub async fn room_state(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    match open_room(&state, path, raw.as_deref()).await {
        Ok(c) => ([(header::CACHE_CONTROL, "no-store")], Json(room_json(&c))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /rooms/{conversation_id}/join`: a person enters; answers their `participant_id`.
pub async fn join_room(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let c = match open_room(&state, path, raw.as_deref()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let participant_id = parley_domain::random_id('u', rand::random());
    participant_answer(&state, &c, &participant_id, true).await
}

/// `POST /rooms/{conversation_id}/leave?participant_id=…`
pub async fn leave_room(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let c = match open_room(&state, path, raw.as_deref()).await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let Some(participant_id) = Query::parse(raw.as_deref())
        .get("participant_id")
        .map(str::to_owned)
    else {
        return ApiError::BadRequest("Invalid value for participant_id: missing".into()).into_response();
    };
    participant_answer(&state, &c, &participant_id, false).await
}

async fn participant_answer(
    state: &AppState,
    c: &Conversation,
    participant_id: &str,
    join: bool,
) -> Response {
    let now = Timestamp::now();
    let outcome = if join {
        state.store.participant_join(&c.id, participant_id, now).await
    } else {
        state.store.participant_leave(&c.id, participant_id, now).await
    };
    match outcome {
        Ok(ParticipantOutcome::Done { present }) => {
            if !join && present == 0 {
                // The left timer may be due at once (a timeout of 0).
                state.wake_jobs.notify_one();
            }
            Json(json!({ "participant_id": participant_id, "participants": present })).into_response()
        }
        Ok(ParticipantOutcome::Ended) => {
            let body = json!({ "status": Status::Ended, "error": "This conversation has ended." });
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
        Ok(ParticipantOutcome::NotFound) => {
            let body = json!({ "status": "not_found", "error": "This conversation does not exist or has been deleted." });
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
