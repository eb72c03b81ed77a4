//! `x-api-key` authentication: the key's hash is looked up on every request, so revocation is immediate.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use parley_store::ConversationStore;

use crate::http::error::ApiError;
use crate::keys;
use crate::state::AppState;

/// Rejects requests without a valid key; otherwise puts the caller's `Account` in the extensions.
pub async fn require_api_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or(ApiError::Unauthorized)?;
    let account = state
        .store
        .account_for_key(&keys::hash(key))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    req.extensions_mut().insert(account);
    Ok(next.run(req).await)
}
