//! One log line per request: method, path, status and duration.

use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

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
