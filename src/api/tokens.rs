//! Refresh-token rotation, logout, and the public keys of our access tokens.

use super::account::token_pair;
use super::msg;
use super::registration::aggregate_error;
use crate::api::body::{Form, JsonBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use aggregates::session::{SessionCommand, SessionError};
use axum::extract::State;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::{Duration, Utc};
use cqrs_es::AggregateError;
use serde_json::Value;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/token/refresh/", post(refresh)),
        ("/accounts/api/logout/", post(logout)),
        ("/.well-known/jwks.json", get(jwks)),
    ]
}

#[utoipa::path(post, path = "/accounts/api/token/refresh/", tag = "session", description = "Rotation: the presented token is spent. Presenting a spent token again revokes the whole chain (401), except an immediate retry of the last rotation, which gets the same answer again.", request_body = crate::api::openapi::RefreshRequest, responses((status = 200, body = crate::api::openapi::TokenResponse), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 401, description = "Invalid, expired, spent or revoked (code token_not_valid)", body = crate::api::openapi::ErrorDetail), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    JsonBody(form): JsonBody,
) -> ApiResult<Json<Value>> {
    let (session_id, generation) = refresh_token_field(&state, form)?;
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
    let body = token_pair(
        &state,
        user_id,
        session_id,
        done.state.generation,
        epoch,
        done.state.started_at,
    )?;
    Ok(Json(Value::Object(body)))
}

#[utoipa::path(post, path = "/accounts/api/logout/", tag = "session", request_body = crate::api::openapi::RefreshRequest, responses((status = 200, body = crate::api::openapi::Msg), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 401, description = "Not a refresh token of ours", body = crate::api::openapi::ErrorDetail), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn logout(
    State(state): State<AppState>,
    meta: RequestMeta,
    JsonBody(form): JsonBody,
) -> ApiResult<Json<Value>> {
    let (session_id, _) = refresh_token_field(&state, form)?;
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

/// The `(session, generation)` of the body's `refresh_token`: 400 when missing, 401 when it is
/// not a genuine refresh token of ours.
fn refresh_token_field(state: &AppState, mut form: Form) -> ApiResult<(uuid::Uuid, u32)> {
    let Some(token) = form.string("refresh_token") else {
        return Err(form.into_error());
    };
    form.finish()?;
    state
        .links
        .verify_refresh(&token)
        .ok_or(ApiError::InvalidToken)
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "session", responses((status = 200, description = "JSON Web Key Set (OKP / Ed25519) that verifies access tokens")))]
pub(crate) async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(state.keys.jwks())
}
