//! `ApiError`: every failure as a status and a body in the wire contract's shape.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_blobs::BlobError;
use parley_store::StoreError;
use serde_json::json;

use crate::service::ServiceError;

/// An HTTP error; 400s carry `{"error": …}`, 401 and the concurrency cap carry `{"message": …}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Invalid conversation_id")]
    InvalidConversationId,
    #[error("{0}")]
    BadRequest(String),
    #[error("User has reached maximum concurrent conversations")]
    ConcurrencyLimit,
    #[error("Invalid access token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("Request body is too large (limit {0} bytes)")]
    PayloadTooLarge(usize),
    #[error("Service temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ApiError {
    /// The status code for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidConversationId | Self::BadRequest(_) | Self::ConcurrencyLimit => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConcurrencyLimit => Self::ConcurrencyLimit,
            StoreError::Unavailable(why) => Self::Unavailable(why),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidConversationId => Self::InvalidConversationId,
            ServiceError::Validation(v) => Self::BadRequest(v.0),
            ServiceError::ConcurrencyLimit => Self::ConcurrencyLimit,
            ServiceError::NotFound(what) => Self::NotFound(what.to_owned()),
            ServiceError::Store(s) => s.into(),
            // The object store failing (down, throttling, unreachable) is worth a retry, not a 500.
            ServiceError::Blob(BlobError::Store(e)) => Self::Unavailable(format!("blob store: {e}")),
            ServiceError::Blob(b) => Self::Internal(b.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            // The hosted API uses `message` for these two and `error` for everything else.
            Self::Unauthorized | Self::ConcurrencyLimit => json!({ "message": self.to_string() }),
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                json!({ "error": "Internal server error" })
            }
            Self::Unavailable(why) => {
                tracing::warn!(reason = %why, "storage unavailable");
                json!({ "error": "Service temporarily unavailable, please retry" })
            }
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
