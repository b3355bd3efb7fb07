//! The one HTTP error type: every case maps to a status and a DRF-shaped body (API.md).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub type ApiResult<T> = Result<T, ApiError>;

/// Field name → messages, as DRF reports validation errors.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// DRF's validation errors: `{"<field>": ["<message>", ...]}`, every bad field at once, with
/// `non_field_errors` for the errors of no single field (such as a confirmation that differs).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"email": ["Enter a valid email address."], "password": ["This field is required."]}))]
pub struct ValidationErrors(pub FieldErrors);

/// DRF's `{"detail": ...}` body; `code`, when present, is a stable snake_case identifier of the
/// case (`invalid_credentials`, `token_not_valid`, `invalid_token`, `throttled`, ...).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<String>,
}

impl ErrorDetail {
    pub fn new(detail: impl Into<String>, code: Option<&str>) -> Self {
        Self {
            detail: detail.into(),
            code: code.map(str::to_owned),
        }
    }
}

/// A 400 body: the field errors of a body or query string, or a `detail` for a body that is no
/// JSON object (`JSON parse error - ...`) and for a link that is invalid (`code` `invalid_token`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BadRequest {
    Fields(ValidationErrors),
    Detail(ErrorDetail),
}

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

    /// DRF's 404: `{"detail": "Not found.", "code": "not_found"}`.
    pub fn not_found() -> Self {
        Self::detail(StatusCode::NOT_FOUND, "not_found", "Not found.")
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

fn with_retry_after(mut response: Response, secs: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn detail(status: StatusCode, detail: impl Into<String>, code: Option<&str>) -> Response {
    (status, Json(ErrorDetail::new(detail, code))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Validation(errors) => (
                StatusCode::BAD_REQUEST,
                Json(BadRequest::Fields(ValidationErrors(errors))),
            )
                .into_response(),
            ApiError::MalformedJson(what) => (
                StatusCode::BAD_REQUEST,
                Json(BadRequest::Detail(ErrorDetail::new(
                    format!("JSON parse error - {what}"),
                    None,
                ))),
            )
                .into_response(),
            ApiError::NotAuthenticated => unauthorized(ErrorDetail::new(
                "Authentication credentials were not provided.",
                None,
            )),
            ApiError::InvalidToken => unauthorized(ErrorDetail::new(
                "Given token not valid for any token type",
                Some("token_not_valid"),
            )),
            ApiError::UnsupportedMediaType(media) => detail(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Unsupported media type \"{media}\" in request."),
                None,
            ),
            ApiError::PayloadTooLarge => detail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body is larger than 64 KiB.",
                Some("payload_too_large"),
            ),
            ApiError::Detail {
                status,
                detail: text,
                code,
            } if status == StatusCode::BAD_REQUEST => (
                status,
                Json(BadRequest::Detail(ErrorDetail::new(text, Some(code)))),
            )
                .into_response(),
            ApiError::Detail {
                status,
                detail: text,
                code,
            } => detail(status, text, Some(code)),
            ApiError::Throttled { retry_after_secs } => throttled(retry_after_secs),
            ApiError::Overloaded { retry_after_secs } => with_retry_after(
                detail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The service is busy. Please try again shortly.",
                    Some("overloaded"),
                ),
                retry_after_secs,
            ),
            ApiError::Unavailable => {
                tracing::warn!("database unavailable");
                with_retry_after(
                    detail(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "The service is temporarily unavailable. Please try again shortly.",
                        Some("service_unavailable"),
                    ),
                    1,
                )
            }
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                detail(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "A server error occurred.",
                    Some("internal_error"),
                )
            }
        }
    }
}

fn unauthorized(body: ErrorDetail) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"api\""),
    );
    response
}

/// DRF's 429: `{"detail": "Request was throttled. Expected available in N seconds."}`.
pub fn throttled(retry_after_secs: u64) -> Response {
    with_retry_after(
        detail(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Request was throttled. Expected available in {retry_after_secs} seconds."),
            None,
        ),
        retry_after_secs,
    )
}

/// DRF's 405: `{"detail": "Method \"PUT\" not allowed."}`.
pub fn method_not_allowed(method: &str) -> Response {
    detail(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method \"{method}\" not allowed."),
        None,
    )
}
