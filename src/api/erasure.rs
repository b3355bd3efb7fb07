//! The right to be forgotten: an owner deletes their account; trusted workers open the personal
//! data of published events while the person's data key exists (see `projections::pii`).

use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::mfa::{verify_factor_change, FactorChangeRequest};
use crate::api::state::AppState;
use crate::api::{msg, Msg};
use crate::auth::AuthUser;
use crate::store::erasure;
use aggregates::user::DeletionRequester;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, MethodRouter};
use axum::Json;
use projections::pii;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/delete/account/", post(delete_account)),
        ("/accounts/internal/events/open/", post(open_event)),
    ]
}

#[utoipa::path(
    post,
    path = "/accounts/api/delete/account/",
    tag = "account",
    summary = "Delete my account",
    description = "Deletes the caller's account for good: every session ends, the address and \
        username are free for a new registration, and the key that sealed the account's personal \
        data in the event store (e-mail, username, IP addresses, user agents, profile texts) is \
        destroyed, so no copy of it (events, the published stream, backups made from now on) can \
        be read again. The history and analytics keep anonymous rows. A confirmation is mailed to \
        the address. Needs the current password (a wrong one counts against the guessing bound) \
        and, while a second factor guards the account, a TOTP or recovery code.",
    security(("bearer" = [])),
    request_body = FactorChangeRequest,
    responses(
        (status = 200, description = "Deleted", body = Msg),
        (status = 400, description = "Wrong password (field `password`) or missing or wrong code (field `code`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 429, description = "Too many wrong passwords or codes from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn delete_account(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<FactorChangeRequest>,
) -> ApiResult<Json<Msg>> {
    let account = state.load_user(user.user_id).await?;
    if account.is_deleted() || !account.is_registered() {
        return Err(ApiError::InvalidToken);
    }
    verify_factor_change(&state, &user, &meta, &account, &body).await?;
    let done = erasure::delete_account(
        &state.pool,
        &state.users,
        &state.vault,
        user.user_id,
        &account,
        (DeletionRequester::Owner, None),
        &meta,
    )
    .await
    .map_err(crate::api::aggregate_error)?;
    // Read-your-writes: the token that asked is dead everywhere once this answers.
    state
        .sync_read_models("User", &user.user_id.to_string(), done.last_sequence())
        .await?;
    Ok(msg("Your account was deleted."))
}

/// A published event, as a worker received it (other fields of the message are ignored).
#[derive(Debug, ToSchema)]
pub struct PublishedEvent {
    /// The event type (`type` of the message), e.g. `Registered`.
    #[schema(
        rename = "type",
        min_length = 1,
        example = "Registered",
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
    )]
    pub event_type: String,
    /// The event's fields as published: personal ones sealed (`pii:v2:...`).
    #[schema(value_type = Object)]
    pub data: Map<String, Value>,
    /// The message's metadata: `subject` names whose data key sealed the event.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

impl FromBody for PublishedEvent {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let event_type = form.string("type");
        let data = form.object("data");
        let metadata = form.object("metadata");
        let (Value::Object(data), Value::Object(metadata)) = (data?, metadata?) else {
            return None;
        };
        Some(Self {
            event_type: event_type?,
            data,
            metadata,
        })
    }
}

/// The event with its personal data in clear.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenedEvent {
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Object)]
    pub data: Value,
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// Whether the request carries one of the configured worker tokens (compared in constant time).
fn is_worker(state: &AppState, headers: &HeaderMap) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    state.worker_tokens.iter().fold(false, |found, known| {
        found | bool::from(known.as_bytes().ct_eq(token.trim().as_bytes()))
    })
}

#[utoipa::path(
    post,
    path = "/accounts/internal/events/open/",
    tag = "workers",
    summary = "Open a published event's personal data",
    description = "For trusted workers (a token of `WORKER_TOKENS`, not a user's access token): \
        the event's personal values (sealed as `pii:v2:...` in the published stream) in clear, \
        read with the data key of the person `metadata.subject` names. Once that person's \
        account is deleted the key is gone and this answers 410 (code `erased`): the worker \
        deletes what it holds of them. An event that seals nothing comes back as it was.",
    security(("bearer" = [])),
    request_body = PublishedEvent,
    responses(
        (status = 200, body = OpenedEvent),
        (status = 400, description = "A field is missing or of the wrong type; or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 410, description = "The person was deleted: nothing of theirs opens any more (code `erased`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn open_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(event): Body<PublishedEvent>,
) -> ApiResult<Json<OpenedEvent>> {
    if !is_worker(&state, &headers) {
        return Err(if headers.contains_key(axum::http::header::AUTHORIZATION) {
            ApiError::InvalidToken
        } else {
            ApiError::NotAuthenticated
        });
    }
    let mut data = Value::Object(event.data);
    let mut metadata = Value::Object(event.metadata);
    if let Some(subject) = pii::subject_in(&metadata) {
        let sealed = pii::holds_sealed_data(
            &Value::Object(Map::from_iter([(event.event_type.clone(), data.clone())])),
            &metadata,
        );
        let kept = erasure::open_published(
            &state.pool,
            &state.vault,
            subject,
            &event.event_type,
            &mut data,
            &mut metadata,
        )
        .await?;
        if sealed && !kept {
            return Err(ApiError::detail(
                StatusCode::GONE,
                "erased",
                "This person's account was deleted: their data no longer opens.",
            ));
        }
    }
    Ok(Json(OpenedEvent {
        event_type: event.event_type,
        data,
        metadata,
    }))
}
