//! Request plumbing around every handler: run to completion, then one log line.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;

/// Logs the request once its response is ready.
pub async fn log_request(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    tracing::info!(
        http.method = %method,
        http.path = %path,
        http.status = response.status().as_u16(),
        duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        "request"
    );
    response
}

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
