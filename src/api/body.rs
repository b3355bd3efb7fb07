//! Request extractors: typed JSON bodies whose field errors are all reported at once, in DRF's
//! shape; request metadata; query values.
//!
//! A body type derives `ToSchema` (so it is what the OpenAPI document shows) and implements
//! [`FromBody`], reading its fields with a [`Form`] that collects every field error. serde's
//! `Deserialize` stops at the first bad field, and the validation crates (`validator`, `garde`)
//! check a value only once it has deserialized, so neither can list a missing field, a wrongly
//! typed one and an invalid one in one answer as DRF does; the reader is written per type, beside
//! the type, and Schemathesis (`scripts/schemathesis`) checks it against the document.

use crate::api::error::{ApiError, FieldErrors};
use crate::api::state::AppState;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A request body type, read from a JSON object with every field error collected in `form`.
pub trait FromBody: Sized {
    /// The value, or `None` when a field failed (its errors are then in `form`).
    fn read(form: &mut Form, state: &AppState) -> Option<Self>;
}

/// A typed JSON body: 415, 413 and parse errors as [`JsonBody`], then 400 listing every field
/// that is missing, null, of the wrong type or invalid.
pub struct Body<T>(pub T);

impl<T: FromBody> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBody(mut form) = JsonBody::from_request(req, state).await?;
        let value = T::read(&mut form, state);
        form.finish()?;
        value.map(Body).ok_or_else(|| form.into_error())
    }
}

/// A JSON object body: 415 for another content type, 413 past 64 KiB, 400 for malformed JSON or
/// a body that is not an object. Fields are then read with a [`Form`].
pub struct JsonBody(pub Form);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let media = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let essence = media
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType(media));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        if bytes.len() > MAX_BODY_BYTES {
            return Err(ApiError::PayloadTooLarge);
        }
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
        match value {
            Value::Object(fields) => Ok(JsonBody(Form::new(fields))),
            other => Err(ApiError::non_field(format!(
                "Invalid data. Expected a dictionary, but got {}.",
                drf_type_name(&other)
            ))),
        }
    }
}

fn drf_type_name(value: &Value) -> &'static str {
    match value {
        Value::Array(_) => "list",
        Value::String(_) => "str",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::Bool(_) => "bool",
        Value::Null => "NoneType",
        Value::Object(_) => "dict",
    }
}

/// Reads fields out of a JSON object, collecting every error in DRF's wording before failing.
/// `Form::default()` is an empty one, to collect the errors of checks made after reading.
#[derive(Default)]
pub struct Form {
    fields: Map<String, Value>,
    errors: FieldErrors,
}

impl Form {
    pub fn new(fields: Map<String, Value>) -> Self {
        Self {
            fields,
            errors: FieldErrors::new(),
        }
    }

    pub fn error(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    pub fn has_errors(&self, field: &str) -> bool {
        self.errors.contains_key(field)
    }

    /// A required, non-blank string.
    pub fn string(&mut self, name: &str) -> Option<String> {
        match self.fields.get(name) {
            None => self.fail(name, "This field is required."),
            Some(Value::Null) => self.fail(name, "This field may not be null."),
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.fail(name, "This field may not be blank.")
            }
            Some(Value::String(s)) => self.text(name, s.clone()),
            Some(_) => self.fail(name, "Not a valid string."),
        }
    }

    /// `text` unless it holds a NUL or another control character (tab and line breaks aside):
    /// Postgres cannot store NUL in text, and no field of ours means to hold the others.
    fn text(&mut self, name: &str, text: String) -> Option<String> {
        if text.contains('\0') {
            self.fail(name, "Null characters are not allowed.")
        } else if text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
        {
            self.fail(name, "Control characters are not allowed.")
        } else {
            Some(text)
        }
    }

    /// A required JSON object (e.g. a WebAuthn response, checked by its own parser later).
    pub fn object(&mut self, name: &str) -> Option<Value> {
        match self.fields.get(name) {
            None => self.fail(name, "This field is required."),
            Some(Value::Null) => self.fail(name, "This field may not be null."),
            Some(value @ Value::Object(_)) => Some(value.clone()),
            Some(_) => self.fail(name, "Expected a dictionary of items."),
        }
    }

    /// A string that may be absent (`None`) or blank; `null` and other types are errors.
    pub fn optional_string(&mut self, name: &str) -> Option<String> {
        match self.fields.get(name) {
            None => None,
            Some(Value::String(s)) => self.text(name, s.clone()),
            Some(Value::Null) => self.fail(name, "This field may not be null."),
            Some(_) => self.fail(name, "Not a valid string."),
        }
    }

    /// A required string turned into a domain value by `parse`, whose error message is reported.
    pub fn parsed<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let raw = self.string(name)?;
        match parse(&raw) {
            Ok(value) => Some(value),
            Err(message) => self.fail(name, message.to_string()),
        }
    }

    fn fail<T>(&mut self, name: &str, message: impl Into<String>) -> Option<T> {
        self.error(name, message);
        None
    }

    /// `Ok` when no field failed.
    pub fn finish(&mut self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(std::mem::take(&mut self.errors)))
        }
    }

    /// The collected errors, for when a required field came back `None`.
    pub fn into_error(self) -> ApiError {
        if self.errors.is_empty() {
            ApiError::internal(anyhow::anyhow!("a field was missing without an error"))
        } else {
            ApiError::Validation(self.errors)
        }
    }
}

/// Where a request came from, carried into the command metadata and so into events and history.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl RequestMeta {
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        for (key, value) in [
            ("ip", &self.ip),
            ("user_agent", &self.user_agent),
            ("request_id", &self.request_id),
        ] {
            if let Some(value) = value {
                metadata.insert(key.to_owned(), value.clone());
            }
        }
        metadata
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(512).collect::<String>())
        };
        Ok(Self {
            ip: parts
                .extensions
                .get::<crate::api::layers::ClientIp>()
                .map(|client| client.0.to_string())
                .or_else(|| {
                    parts
                        .extensions
                        .get::<ConnectInfo<SocketAddr>>()
                        .map(|ConnectInfo(addr)| addr.ip().to_string())
                }),
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
        })
    }
}

/// The last value of `key` in a raw query string, as Django's `QueryDict.get` reads it: a repeated
/// parameter is no error (axum's `Query` would answer a plain-text 400), and one that does not
/// decode is absent.
pub fn query_value(raw: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .filter(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
        .last()
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn repeated_and_odd_query_parameters_read_like_django() {
        assert_eq!(
            query_value(Some("limit=1&limit=2"), "limit").as_deref(),
            Some("2")
        );
        assert_eq!(
            query_value(Some("cursor=%41"), "cursor").as_deref(),
            Some("A")
        );
        assert_eq!(query_value(Some("limit"), "limit").as_deref(), Some(""));
        assert_eq!(query_value(None, "limit"), None);
        assert_eq!(query_value(Some("%zz=1&other=2"), "limit"), None);
    }
}
