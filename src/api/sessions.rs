//! The caller's own sessions: where they are logged in, and ending one or all the others.

use super::registration::aggregate_error;
use crate::api::body::RequestMeta;
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::AuthUser;
use aggregates::session::SessionCommand;
use axum::extract::{Path, State};
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/sessions/", get(list_sessions)),
        (
            "/accounts/api/sessions/{session_id}/revoke/",
            post(revoke_session),
        ),
        ("/accounts/api/sessions/others/revoke/", post(revoke_others)),
    ]
}

/// One session of the caller: a login and the refresh tokens it rotated through.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionInfo {
    pub session_id: Uuid,
    /// Whether the access token of this request belongs to it.
    pub current: bool,
    pub started_at: DateTime<Utc>,
    /// The session's last login or token refresh.
    pub last_used_at: DateTime<Utc>,
    /// When its refresh token expires unless it is used.
    pub expires_at: DateTime<Utc>,
    /// The client address of its login.
    pub ip: Option<String>,
    /// The user agent of its login.
    pub user_agent: Option<String>,
}

/// The caller's sessions that can still be refreshed, most recently used first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub results: Vec<SessionInfo>,
}

/// The answer to ending the other sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedSessions {
    pub msg: String,
    /// How many sessions were ended.
    pub revoked: usize,
}

async fn open_sessions(state: &AppState, user: &AuthUser) -> ApiResult<Vec<SessionInfo>> {
    let ttl = state.settings.refresh_token_ttl;
    Ok(sessions_of(&state.pool, ttl, user.user_id, Some(user.session_id)).await?)
}

/// The open sessions of `user_id` that can still be refreshed; `current` marks one.
pub(crate) async fn sessions_of(
    pool: &sqlx::PgPool,
    refresh_token_ttl: u64,
    user_id: Uuid,
    current: Option<Uuid>,
) -> sqlx::Result<Vec<SessionInfo>> {
    let ttl = Duration::seconds(refresh_token_ttl as i64);
    let now = Utc::now();
    let sessions = projections::history::open_sessions(pool, user_id).await?;
    Ok(sessions
        .into_iter()
        .map(|s| SessionInfo {
            current: Some(s.session_id) == current,
            expires_at: s.last_used_at + ttl,
            session_id: s.session_id,
            started_at: s.started_at,
            last_used_at: s.last_used_at,
            ip: s.ip,
            user_agent: s.user_agent,
        })
        .filter(|s| s.expires_at > now)
        .collect())
}

#[utoipa::path(
    get,
    path = "/accounts/api/sessions/",
    tag = "session",
    summary = "Get my sessions",
    description = "Where the caller is logged in: every session that can still be refreshed, \
        with the address and user agent of its login, most recently used first.",
    security(("bearer" = [])),
    responses((status = 200, body = SessionList))
)]
pub(crate) async fn list_sessions(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<SessionList>> {
    user.see_own_login(&state).await?;
    Ok(Json(SessionList {
        results: open_sessions(&state, &user).await?,
    }))
}

/// Ends each of `sessions` as a logout does, one after the other, then waits until the read
/// models show it: once, for the last (each ended before the next began, so a reader that has
/// passed the last has passed them all).
async fn end_sessions(state: &AppState, sessions: &[Uuid], meta: &RequestMeta) -> ApiResult<()> {
    let mut last = None;
    for session_id in sessions {
        let id = session_id.to_string();
        let command = SessionCommand::Logout { now: Utc::now() };
        let done = state
            .sessions
            .execute(&id, command, meta)
            .await
            .map_err(aggregate_error)?;
        if let Some(sequence) = done.last_sequence() {
            last = Some((id, sequence));
        }
    }
    if let Some((id, sequence)) = last {
        state
            .sync_read_models("Session", &id, Some(sequence))
            .await?;
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/accounts/api/sessions/{session_id}/revoke/",
    tag = "session",
    summary = "End one of my sessions",
    description = "Ends the session as a logout would: its refresh token and its access tokens \
        stop working at once. Ending the current session logs this client out.",
    security(("bearer" = [])),
    params(("session_id" = String, Path, description = "A `session_id` from `GET /accounts/api/sessions/`")),
    responses(
        (status = 200, body = super::Msg),
        (status = 404, description = "No open session of the caller has this id (code `not_found`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn revoke_session(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Path(session_id): Path<String>,
) -> ApiResult<Json<super::Msg>> {
    let session_id: Uuid = session_id.parse().map_err(|_| ApiError::not_found())?;
    user.see_own_login(&state).await?;
    // Only the caller's own, open sessions: another user's id answers as an unknown one.
    let open = open_sessions(&state, &user).await?;
    if !open.iter().any(|s| s.session_id == session_id) {
        return Err(ApiError::not_found());
    }
    end_sessions(&state, &[session_id], &meta).await?;
    Ok(super::msg("The session has been ended."))
}

#[utoipa::path(
    post,
    path = "/accounts/api/sessions/others/revoke/",
    tag = "session",
    summary = "End all my other sessions",
    description = "Ends every session of the caller but the current one (\"log out everywhere \
        else\").",
    security(("bearer" = [])),
    responses((status = 200, body = RevokedSessions))
)]
pub(crate) async fn revoke_others(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
) -> ApiResult<Json<RevokedSessions>> {
    user.see_own_login(&state).await?;
    let others: Vec<Uuid> = open_sessions(&state, &user)
        .await?
        .into_iter()
        .filter(|s| !s.current)
        .map(|s| s.session_id)
        .collect();
    end_sessions(&state, &others, &meta).await?;
    Ok(Json(RevokedSessions {
        msg: "Every other session has been ended.".into(),
        revoked: others.len(),
    }))
}
