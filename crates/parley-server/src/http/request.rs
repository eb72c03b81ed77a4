//! Request plumbing: every request runs to completion in its own task.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;

/// Runs the rest of the request in its own task, so a client that hangs up cannot cancel it.
///
/// Dropping a handler mid-transaction can leave a pooled connection inside an open transaction
/// (sqlx 0.8's SQLite `begin` is not cancel-safe), and a delete that started should finish
/// whether or not anyone waits for the 204.
pub async fn run_to_completion(req: Request, next: Next) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) => ApiError::Internal(anyhow::anyhow!("request task failed: {e}")).into_response(),
    }
}
