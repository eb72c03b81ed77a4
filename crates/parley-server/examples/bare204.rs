//! The benchmark baseline: an axum server that answers every request with 204 and no body.
//!
//! `cargo run --release -p parley-server --example bare204 -- 127.0.0.1:0`
//!
//! It shares parley's HTTP stack (tokio multi-thread runtime, hyper through axum 0.8, HTTP/1)
//! but does no authentication, logging, routing or storage, so `bench/run.sh` can show what
//! each parley endpoint costs on top of the bare framework.

use axum::Router;
use axum::http::StatusCode;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    let app = Router::new().fallback(|| async { StatusCode::NO_CONTENT });
    axum::serve(listener, app).await
}
