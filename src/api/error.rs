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
    /// The database is unreachable for now: 503 with `Retry-After`.
    #[error("database unavailable")]
    Unavailable,
    /// A bug or a failed dependency. Logged with its cause chain; the body shows nothing of it.
    #[error(transparent)]
    Internal(anyhow::Error),
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

    /// An unexpected error; a database outage inside it still becomes a 503.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::from(error.into())
    }
}

/// Whether a database error means "Postgres is away" (restarting, unreachable, pool empty)
/// rather than a bug: those are answered 503 with `Retry-After`.
pub fn database_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 57P01-03: shutting down / cannot connect now; class 08: connection exceptions.
            code.starts_with("57P") || code.starts_with("08")
        }),
        _ => false,
    }
}

impl From<crate::auth::throttle::Throttled> for ApiError {
    fn from(wait: crate::auth::throttle::Throttled) -> Self {
        ApiError::Throttled {
            retry_after_secs: wait.retry_after_secs,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if database_unavailable(&error) {
            return Self::Unavailable;
        }
        Self::Internal(error.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        let unavailable = error.chain().any(|cause| {
            cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(database_unavailable)
        });
        if unavailable {
            Self::Unavailable
        } else {
            Self::Internal(error)
        }
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
            ApiError::Unavailable => {
                tracing::warn!("database unavailable");
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "detail": "The service is temporarily unavailable. Please try again shortly.",
                        "code": "service_unavailable",
                    })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
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
