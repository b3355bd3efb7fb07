//! Login, the dashboard and the user's own history.

use super::registration::{aggregate_error, hash_error};
use crate::api::body::{query_value, JsonBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::throttle::source_of;
use crate::auth::AuthUser;
use crate::store;
use aggregates::session::SessionCommand;
use aggregates::values::Email;
use aggregates::User;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::{Duration, Utc};
use projections::history::{self, HistoryEntry};
use projections::profile::ProfileRow;
use secrecy::SecretString;
use serde_json::{json, Value};
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/login/", post(login)),
        ("/accounts/api/dashboard/", get(dashboard)),
        ("/accounts/api/history/", get(own_history)),
    ]
}

fn invalid_credentials() -> ApiError {
    ApiError::detail(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "Invalid email or password.",
    )
}

/// Access and refresh tokens of one session generation, in the contract's shape.
/// `login_at` is the session's start on a login's tokens (see `AccessClaims::login_us`).
pub(crate) fn token_pair(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    generation: u32,
    epoch: u32,
    login_at: Option<chrono::DateTime<Utc>>,
) -> ApiResult<serde_json::Map<String, Value>> {
    let access = state
        .keys
        .issue(
            user_id,
            session_id,
            epoch,
            login_at,
            Utc::now(),
            state.access_ttl(),
        )
        .map_err(ApiError::Internal)?;
    let mut body = serde_json::Map::new();
    body.insert("access_token".into(), access.into());
    body.insert(
        "refresh_token".into(),
        state.links.refresh_token(session_id, generation).into(),
    );
    body.insert("token_type".into(), "Bearer".into());
    body.insert("expires_in".into(), state.access_ttl().into());
    Ok(body)
}

#[utoipa::path(post, path = "/accounts/api/login/", tag = "session", summary = "Get JWT access and refresh_token to visit user dashboard.", request_body = crate::api::openapi::LoginRequest, responses((status = 200, body = crate::api::openapi::LoginResponse), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 401, description = "Unknown e-mail or wrong password (code invalid_credentials)", body = crate::api::openapi::ErrorDetail), (status = 403, description = "Right password, inactive account (code account_inactive)", body = crate::api::openapi::ErrorDetail), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail), (status = 429, description = "This source has guessed this account's password too often: wait `Retry-After` seconds", body = crate::api::openapi::ErrorDetail), (status = 503, description = "Password hashing saturated; see Retry-After", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    JsonBody(mut form): JsonBody,
) -> ApiResult<Json<Value>> {
    let email = form.parsed("email", Email::parse);
    let password = form.string("password").map(SecretString::from);
    let (Some(email), Some(password)) = (email, password) else {
        return Err(form.into_error());
    };
    form.finish()?;

    // Admission and the account look-up in one round trip. The attempt is counted now, before
    // the hash is checked, so an aborted request has nothing to release; a refused attempt
    // touches no account (cheap under a flood of guesses, and says nothing about the address).
    let account = email.key();
    let source = source_of(meta.ip.as_deref());
    let candidate = state.throttle.admit_login(&account, &source).await??;
    let (user, ok) = match verify_login(&state, candidate, &password).await {
        Ok(found) => found,
        Err(error) => {
            state.throttle.refund(&account, &source).await;
            return Err(error);
        }
    };
    let known = user.as_ref().and_then(|u| u.id);
    let Some(user) = user.filter(|_| ok) else {
        // Counted at admission: nothing more to record for the bound.
        if let Some(user_id) = known {
            record_failure(&state, user_id, meta.clone());
        }
        return Err(invalid_credentials());
    };
    let (Some(user_id), true) = (user.id, user.is_active) else {
        state.throttle.succeeded(&account, &source).await?;
        if user.id.is_none() {
            return Err(invalid_credentials());
        }
        return Err(ApiError::detail(
            StatusCode::FORBIDDEN,
            "account_inactive",
            "Your account is not active yet. Please activate it with the link we e-mailed you.",
        ));
    };
    let session_id = Uuid::new_v4();
    let id = session_id.to_string();
    let started_at = Utc::now();
    let command = SessionCommand::Start {
        session_id,
        user_id,
        token_epoch: user.token_epoch,
        ttl: Duration::seconds(state.settings.refresh_token_ttl as i64),
        now: started_at,
    };
    // Clearing the source's failures and starting the session are independent: both at once. A
    // failed clear only leaves this source's count as it was; the login stands.
    let (released, started) = tokio::join!(
        state.throttle.succeeded(&account, &source),
        state.sessions.execute(&id, command, &meta)
    );
    started.map_err(aggregate_error)?;
    if let Err(error) = released {
        tracing::warn!(%error, "cannot record a successful login's source");
    }
    // No wait for the read models here: the access token names the login, and the first read
    // that must show it waits for it, only if the read models are behind (`AuthUser`).
    let mut body = token_pair(
        &state,
        user_id,
        session_id,
        0,
        user.token_epoch,
        Some(started_at),
    )?;
    body.insert(
        "msg".into(),
        format!("Congrats {} your credentials verfied.", user.username).into(),
    );
    Ok(Json(Value::Object(body)))
}

/// Loads the account `candidate` found (if any) and verifies `password` against its current
/// hash, or against the dummy hash when there is none, so both cases cost the same.
async fn verify_login(
    state: &AppState,
    candidate: Option<store::LoginCandidate>,
    password: &SecretString,
) -> ApiResult<(Option<User>, bool)> {
    let (user, hash) = match candidate {
        Some(candidate) => {
            let user = state
                .users
                .load_at(
                    &candidate.user_id.to_string(),
                    candidate.last_sequence as usize,
                )
                .await
                .map_err(aggregate_error)?;
            let hash = match user.credential_id {
                Some(current) => {
                    match candidate.hashes.into_iter().find(|(id, _)| *id == current) {
                        Some((_, hash)) => Some(hash),
                        None => store::password_hash(&state.pool, current).await?,
                    }
                }
                None => None,
            };
            (Some(user), hash)
        }
        None => (None, None),
    };
    let ok = state
        .hasher
        .verify(password, hash)
        .await
        .map_err(hash_error)?;
    Ok((user, ok))
}

/// Records a failed login for the owner's history, off the response path so that a known
/// address answers as fast as an unknown one.
fn record_failure(state: &AppState, user_id: Uuid, meta: RequestMeta) {
    let sessions = state.sessions.clone();
    tokio::spawn(async move {
        let command = SessionCommand::RecordFailedLogin {
            user_id,
            now: Utc::now(),
        };
        let id = Uuid::new_v4().to_string();
        if let Err(error) = sessions.execute(&id, command, &meta).await {
            tracing::warn!(%error, "cannot record a failed login");
        }
    });
}

/// The profile fields of the contract, `""` when unset.
pub(crate) fn profile_json(row: &ProfileRow) -> Value {
    json!({
        "username": row.username,
        "email": row.email,
        "country": row.country,
        "profession": row.profession,
        "bio": row.bio,
        "thoughts": row.thoughts,
        "profile_img": row.profile_img,
    })
}

#[utoipa::path(get, path = "/accounts/api/dashboard/", tag = "account", summary = "Get user dashboard", security(("bearer" = [])), responses((status = 200, body = crate::api::openapi::Dashboard), (status = 401, description = "No or bad access token", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn dashboard(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Value>> {
    user.see_own_login(&state).await?;
    let row = &user.profile;
    let recent = history::page(&state.pool, user.user_id, None, 10).await?;
    Ok(Json(json!({
        "msg": "Welcome to dashboard",
        "user": {
            "id": row.user_id,
            "username": row.username,
            "email": row.email,
            "is_active": row.is_active,
            "date_joined": row.date_joined,
            "last_login": row.last_login,
        },
        "profile": profile_json(row),
        "recent_history": recent,
    })))
}

#[utoipa::path(get, path = "/accounts/api/history/", tag = "account", security(("bearer" = [])), params(("limit" = Option<u32>, Query, description = "1 to 200, default 50"), ("cursor" = Option<String>, Query, description = "`next` of the previous page")), responses((status = 200, body = crate::api::openapi::HistoryPage), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 401, description = "No or bad access token", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn own_history(
    State(state): State<AppState>,
    user: AuthUser,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let limit = match query_value(query.as_deref(), "limit").as_deref() {
        None => 50,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    "Ensure this value is a whole number from 1 to 200.",
                ))
            }
        },
    };
    let before = match query_value(query.as_deref(), "cursor").as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| ApiError::field("cursor", "Invalid cursor."))?,
        ),
    };
    user.see_own_login(&state).await?;
    let mut rows: Vec<HistoryEntry> =
        history::page(&state.pool, user.user_id, before, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.position.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "results": rows, "next": next })))
}
