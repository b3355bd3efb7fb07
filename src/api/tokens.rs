//! Refresh-token rotation, logout, and the public keys of our access tokens.

use super::account::{token_pair, TokenPair};
use super::registration::aggregate_error;
use super::{msg, Msg};
use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use aggregates::session::{SessionCommand, SessionError};
use axum::extract::State;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::{Duration, Utc};
use cqrs_es::AggregateError;
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/token/refresh/", post(refresh)),
        ("/accounts/api/logout/", post(logout)),
        ("/.well-known/jwks.json", get(jwks)),
    ]
}

/// The body of `token/refresh/` and `logout/`. A value that is not a refresh token of ours is
/// 401 (`token_not_valid`), as a spent or revoked one is.
#[derive(ToSchema)]
pub struct RefreshRequest {
    #[schema(value_type = String, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub refresh_token: RefreshToken,
}

/// A refresh token read from a body: genuine (its session and generation) or not.
pub struct RefreshToken(Option<(uuid::Uuid, u32)>);

impl RefreshToken {
    /// The session and generation it names: 401 when it is not a refresh token of ours.
    fn genuine(&self) -> ApiResult<(uuid::Uuid, u32)> {
        self.0.ok_or(ApiError::InvalidToken)
    }
}

impl FromBody for RefreshRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let token = form.string("refresh_token")?;
        Some(Self {
            refresh_token: RefreshToken(state.links.verify_refresh(&token)),
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/token/refresh/",
    tag = "session",
    summary = "Get a new token pair",
    description = "Rotation: the presented refresh token is spent and a new pair is answered. \
        Presenting a spent token again revokes the whole session (401), except an immediate \
        retry of the last rotation (`REFRESH_REUSE_GRACE`), which gets the same answer again.",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenPair),
        (status = 401, description = "Not a refresh token of ours, or expired, spent or revoked (code `token_not_valid`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<RefreshRequest>,
) -> ApiResult<Json<TokenPair>> {
    let (session_id, generation) = body.refresh_token.genuine()?;
    let id = session_id.to_string();
    let session = state.sessions.load(&id).await.map_err(aggregate_error)?;
    let user_id = session.user_id.ok_or(ApiError::InvalidToken)?;
    let profile = projections::profile::find(&state.pool, user_id)
        .await?
        .filter(|p| p.is_active)
        .ok_or(ApiError::InvalidToken)?;
    let epoch = u32::try_from(profile.token_epoch).map_err(ApiError::internal)?;
    let command = SessionCommand::Refresh {
        generation,
        current_epoch: epoch,
        ttl: Duration::seconds(state.settings.refresh_token_ttl as i64),
        grace: Duration::seconds(state.settings.refresh_reuse_grace as i64),
        now: Utc::now(),
    };
    let done = match state.sessions.execute(&id, command, &meta).await {
        Ok(done) => done,
        Err(AggregateError::UserError(SessionError::InvalidToken)) => {
            return Err(ApiError::InvalidToken)
        }
        Err(error) => return Err(aggregate_error(error)),
    };
    if done.state.ended {
        // A spent token came back: the chain is revoked.
        return Err(ApiError::InvalidToken);
    }
    let tokens = token_pair(
        &state,
        user_id,
        session_id,
        done.state.generation,
        epoch,
        done.state
            .started_at
            .map(|at| (at, done.state.start_sequence.unwrap_or(1))),
    )?;
    Ok(Json(tokens))
}

#[utoipa::path(
    post,
    path = "/accounts/api/logout/",
    tag = "session",
    summary = "Log out",
    description = "Ends the session of the refresh token: it and the session's access tokens \
        stop working at once. Ending a session that has ended already is no error.",
    request_body = RefreshRequest,
    responses(
        (status = 200, body = Msg),
        (status = 401, description = "Not a refresh token of ours (code `token_not_valid`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn logout(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<RefreshRequest>,
) -> ApiResult<Json<Msg>> {
    let (session_id, _) = body.refresh_token.genuine()?;
    let command = SessionCommand::Logout { now: Utc::now() };
    match state
        .sessions
        .execute(&session_id.to_string(), command, &meta)
        .await
    {
        Ok(_) => Ok(msg("You have been logged out.")),
        Err(AggregateError::UserError(SessionError::InvalidToken)) => Err(ApiError::InvalidToken),
        Err(error) => Err(aggregate_error(error)),
    }
}

/// A JSON Web Key Set.
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    /// The published keys: `{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
    /// "kid": ..., "x": ...}`.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<serde_json::Value>,
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "session",
    summary = "Get the keys that verify access tokens",
    description = "Match an access token's `kid` header; keys rotate (a new key is published \
        `KEY_ROTATION_DELAY` seconds before it signs).",
    responses((status = 200, body = Jwks))
)]
pub(crate) async fn jwks(State(state): State<AppState>) -> Json<Jwks> {
    Json(Jwks {
        keys: state.keys.jwks(),
    })
}
