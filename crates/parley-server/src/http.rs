//! The HTTP surface: routes, authentication, request logging and wire-shaped errors.

pub mod auth;
pub mod catalogue;
pub mod conversation;
pub mod cors;
pub mod document;
pub mod error;
pub mod guardrail;
pub mod listing;
pub mod objective;
pub mod persona;
pub mod query;
pub mod replica;
pub mod request;
pub mod resource;
pub mod room;
pub mod voice;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use parley_store::ConversationStore;
use tower_http::LatencyUnit;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::state::AppState;
use error::ApiError;

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/v2/conversations",
            post(conversation::create_conversation).get(conversation::list_conversations),
        )
        .route(
            "/v2/conversations/{conversation_id}",
            get(conversation::get_conversation).delete(conversation::delete_conversation),
        )
        .route(
            "/v2/conversations/{conversation_id}/end",
            post(conversation::end_conversation),
        )
        .route(
            "/v2/conversations/{conversation_id}/recording",
            get(conversation::get_recording),
        )
        .merge(replica::routes())
        .route("/v2/voices", get(voice::list_voices))
        .merge(document::routes())
        .merge(guardrail::routes())
        .merge(objective::routes())
        .merge(catalogue::routes())
        .merge(persona::routes())
        .route_layer(from_fn_with_state(state.clone(), auth::require_api_key))
        // For load balancers and orchestrators: no key, no content.
        .route("/health", get(health))
        // Routing comes before the key, and a path deeper than the routes above
        // (`persona-builder/headless`, `c123…/nope`) is an unknown path, not a bad id.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    // The room is opened by people, not API clients: its link is the invitation. Its page
    // calls only its own origin, so it needs no CORS (see docs/API.md).
    let rooms = Router::new()
        .route("/rooms/{conversation_id}", get(room::room_page))
        .route("/rooms/{conversation_id}/state", get(room::room_state))
        .route("/rooms/{conversation_id}/join", post(room::join_room))
        .route("/rooms/{conversation_id}/leave", post(room::leave_room))
        .method_not_allowed_fallback(method_not_allowed);
    // Outside the plumbing, so even a failed request task's 500 is readable by the page.
    let api = plumbing(api, &state)
        .layer(cors::layer(&state.settings.cors))
        .layer(from_fn(cors::preflight_no_content));
    let app = api
        .merge(plumbing(rooms, &state))
        // One line per request, when its response is ready: method, path, status, latency.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::extract::Request| {
                    tracing::info_span!("request", http.method = %req.method(), http.path = %req.uri().path())
                })
                .on_request(())
                .on_body_chunk(())
                .on_eos(())
                .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(LatencyUnit::Micros))
                // A 5xx is already logged with its cause by `ApiError`.
                .on_failure(()),
        )
        .with_state(state);
    // Outside the routes, so the path is trimmed before it is routed.
    Router::new()
        .fallback_service(app)
        .layer(axum::middleware::map_request(trim_trailing_slash))
}

/// `/v2/guardrails/` is `/v2/guardrails`: the official client sends some paths with a trailing
/// slash and others without, and the hosted API answers both.
async fn trim_trailing_slash(mut req: axum::extract::Request) -> axum::extract::Request {
    let path = req.uri().path();
    if path.len() > "/v2/".len() && path.starts_with("/v2/") && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let rebuilt = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = rebuilt.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// The layers every request passes through; `Router::layer` wraps each route on its own, so the
/// API and the rooms get the same plumbing before they are merged.
fn plumbing(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(from_fn_with_state(state.clone(), remember_full_disk))
        .layer(from_fn(request::run_to_completion))
}

/// `GET /health`: 200 while the database and the key store answer and writes work, 503 (with
/// `Retry-After`) otherwise.
///
/// Writes are known to work unless one failed for lack of space; only then does this write (a
/// tiny probe, at most once a second) to learn whether they work again. See `disk`.
async fn health(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    state
        .disk
        .check_writable(state.store.as_ref(), &state.blobs)
        .await?;
    state.store.has_accounts().await?;
    state.store.key_store_answers().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok" })))
}

/// Remembers a full disk that any request ran into, so creates and `/health` know of it at once.
async fn remember_full_disk(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(req).await;
    if response.extensions().get::<error::DiskFull>().is_some() {
        state.disk.mark_full();
    }
    response
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("No such endpoint: {}", shown(uri.path())))
}

/// A path as echoed in an error: bounded, so a 10,000-character path does not come back whole.
fn shown(path: &str) -> String {
    const LIMIT: usize = 200;
    match path.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &path[..cut]),
        None => path.to_owned(),
    }
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("Method {method} is not allowed on {}", shown(uri.path())))
}
