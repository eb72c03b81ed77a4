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
    /// A write failed, or would be refused, for lack of disk space.
    #[error("storage unavailable: {}", parley_store::DISK_FULL)]
    DiskFull,
    /// Any other status with its documented body: `{"error": text}`, or `{"message": text}`
    /// where the hosted API answers that way (a document's 404, a persona patch's 422, …).
    #[error("{text}")]
    Wire {
        status: StatusCode,
        body_key: BodyKey,
        text: String,
    },
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

/// Which key a [`ApiError::Wire`] body puts its text under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKey {
    Error,
    Message,
}

impl ApiError {
    /// `status` with `{"error": text}`.
    pub fn error(status: StatusCode, text: impl Into<String>) -> Self {
        Self::Wire {
            status,
            body_key: BodyKey::Error,
            text: text.into(),
        }
    }

    /// `status` with `{"message": text}`.
    pub fn message(status: StatusCode, text: impl Into<String>) -> Self {
        Self::Wire {
            status,
            body_key: BodyKey::Message,
            text: text.into(),
        }
    }
}

/// Marks a response that ran into a full disk, so the server remembers it (see `http::router`).
#[derive(Debug, Clone, Copy)]
pub struct DiskFull;

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
            Self::Unavailable(_) | Self::DiskFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Wire { status, .. } => *status,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::ConcurrencyLimit => Self::ConcurrencyLimit,
            e if e.is_disk_full() => Self::DiskFull,
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
            ServiceError::Blob(BlobError::DiskFull) => Self::DiskFull,
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
            Self::Wire {
                body_key: BodyKey::Message,
                text,
                ..
            } => json!({ "message": text }),
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                json!({ "error": "Internal server error" })
            }
            Self::Unavailable(why) => {
                tracing::warn!(reason = %why, "storage unavailable");
                json!({ "error": "Service temporarily unavailable, please retry" })
            }
            // `Disk` logs when the disk fills and when room is back, not every refused request.
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::DiskFull) {
            response.extensions_mut().insert(DiskFull);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_full_disk_is_a_503_that_says_so_and_is_marked_for_the_server() {
        for error in [
            ApiError::from(StoreError::disk_full()),
            ApiError::from(ServiceError::Store(StoreError::disk_full())),
            ApiError::from(ServiceError::Blob(BlobError::DiskFull)),
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
            assert!(response.extensions().get::<DiskFull>().is_some());
            assert_eq!(
                body_of(response).await,
                json!({ "error": "storage unavailable: the disk is full" })
            );
        }
    }

    #[tokio::test]
    async fn other_storage_trouble_keeps_its_generic_503() {
        let response = ApiError::from(StoreError::Unavailable("pool timed out".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.extensions().get::<DiskFull>().is_none());
        assert_eq!(
            body_of(response).await,
            json!({ "error": "Service temporarily unavailable, please retry" })
        );
    }
}
