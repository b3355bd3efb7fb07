//! The one HTTP error type: every case maps to a status and a DRF-shaped body (API.md).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub type ApiResult<T> = Result<T, ApiError>;

/// Field name → messages, as DRF reports validation errors.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with one key per bad field (or `non_field_errors`).
    #[error("validation failed")]
    Validation(FieldErrors),
    /// 400 `{"detail": "JSON parse error - ..."}`.
    #[error("malformed JSON")]
    MalformedJson(String),
    /// 401 without credentials.
    #[error("authentication credentials were not provided")]
    NotAuthenticated,
    /// 401 for a token that does not verify, has expired or was revoked.
    #[error("token not valid")]
    InvalidToken,
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// Any other client error: `{"detail", "code"}`.
    #[error("{detail}")]
    Detail {
        status: StatusCode,
        detail: String,
        code: &'static str,
    },
    /// Too many attempts: 429 with `Retry-After`.
    #[error("throttled")]
    Throttled { retry_after_secs: u64 },
    /// Shed load: 503 with `Retry-After`.
    #[error("overloaded")]
    Overloaded { retry_after_secs: u64 },
    /// A bug or a failed dependency. Logged with its cause chain; the body shows nothing of it.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn field(name: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(name.to_owned(), vec![message.into()]);
        Self::Validation(errors)
    }

    pub fn non_field(message: impl Into<String>) -> Self {
        Self::field("non_field_errors", message)
    }

    pub fn detail(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self::Detail {
            status,
            detail: detail.into(),
            code,
        }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.into())
    }
}

/// A DRF `{"detail": ...}` body.
pub fn detail_body(detail: &str) -> Json<Value> {
    Json(json!({ "detail": detail }))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Validation(errors) => (StatusCode::BAD_REQUEST, Json(errors)).into_response(),
            ApiError::MalformedJson(what) => (
                StatusCode::BAD_REQUEST,
                detail_body(&format!("JSON parse error - {what}")),
            )
                .into_response(),
            ApiError::NotAuthenticated => unauthorized(json!({
                "detail": "Authentication credentials were not provided."
            })),
            ApiError::InvalidToken => unauthorized(json!({
                "detail": "Given token not valid for any token type",
                "code": "token_not_valid",
            })),
            ApiError::UnsupportedMediaType(media) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                detail_body(&format!("Unsupported media type \"{media}\" in request.")),
            )
                .into_response(),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({
                    "detail": "Request body is larger than 64 KiB.",
                    "code": "payload_too_large",
                })),
            )
                .into_response(),
            ApiError::Detail {
                status,
                detail,
                code,
            } => (status, Json(json!({ "detail": detail, "code": code }))).into_response(),
            ApiError::Throttled { retry_after_secs } => throttled(retry_after_secs),
            ApiError::Overloaded { retry_after_secs } => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "detail": "The service is busy. Please try again shortly.",
                        "code": "overloaded",
                    })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({
                        "detail": "A server error occurred.",
                        "code": "internal_error",
                    })),
                )
                    .into_response()
            }
        }
    }
}

fn unauthorized(body: Value) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"api\""),
    );
    response
}

/// DRF's 429: `{"detail": "Request was throttled. Expected available in N seconds."}`.
pub fn throttled(retry_after_secs: u64) -> Response {
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        detail_body(&format!(
            "Request was throttled. Expected available in {retry_after_secs} seconds."
        )),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}
