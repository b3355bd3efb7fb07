//! `AuthUser`: the caller of a protected route, from a valid `Authorization: Bearer` access token.

use crate::api::error::ApiError;
use crate::api::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use projections::profile::{self, ProfileRow};
use uuid::Uuid;

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 4096;

/// An authenticated, active user whose token is not outdated by a password change and whose
/// session has not ended (logout, reuse detection).
pub struct AuthUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    /// The login the token names (see `AccessClaims::login_us`).
    pub login_us: Option<i64>,
    /// The sequence of the session's `Started` event (see `AccessClaims::login_seq`).
    pub login_seq: i64,
    /// The profile read model row, read while checking the token.
    pub profile: ProfileRow,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::NotAuthenticated)?
            .to_str()
            .map_err(|_| ApiError::InvalidToken)?;
        let (scheme, token) = value.split_once(' ').ok_or(ApiError::NotAuthenticated)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::NotAuthenticated);
        }
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::InvalidToken);
        }
        let claims = state.keys.verify(token).ok_or(ApiError::InvalidToken)?;
        let mut caller = profile::find_caller(&state.pool, claims.sub, claims.sid)
            .await?
            .ok_or(ApiError::InvalidToken)?;
        if login_pending(&caller.profile, claims.login_us) {
            // The read models do not show this token's login yet: they are caught up now, so
            // that the caller reads its own login (read-your-writes, paid here, not at login).
            state
                .sync_read_models("Session", &claims.sid.to_string(), Some(1))
                .await?;
            caller = profile::find_caller(&state.pool, claims.sub, claims.sid)
                .await?
                .ok_or(ApiError::InvalidToken)?;
        }
        let profile = caller.profile;
        if caller.session_ended || !profile.is_active || profile.token_epoch != claims.epoch as i32
        {
            return Err(ApiError::InvalidToken);
        }
        Ok(Self {
            user_id: claims.sub,
            session_id: claims.sid,
            login_us: claims.login_us,
            login_seq: claims.login_seq.unwrap_or(1),
            profile,
        })
    }
}

/// Whether the profile read model has not yet applied the login (`login_us`) a token names.
fn login_pending(profile: &ProfileRow, login_us: Option<i64>) -> bool {
    login_us.is_some_and(|login| {
        profile
            .last_login
            .is_none_or(|seen| seen.timestamp_micros() < login)
    })
}

/// How long after a login its reads check that every read model (not only the profile) shows it.
const FRESH_LOGIN_US: i64 = 60_000_000;

impl AuthUser {
    /// For reads of other read models than the profile (history, the dashboard's recent
    /// history): right after the login, waits until they show it too (one query when they do).
    pub async fn see_own_login(&self, state: &AppState) -> Result<(), ApiError> {
        let fresh = self
            .login_us
            .is_some_and(|login| chrono::Utc::now().timestamp_micros() - login < FRESH_LOGIN_US);
        if !fresh || state.login_seen(self.session_id) {
            return Ok(());
        }
        let shown = state
            .sync_read_models(
                "Session",
                &self.session_id.to_string(),
                Some(self.login_seq),
            )
            .await?;
        if shown {
            state.note_login_seen(self.session_id);
        }
        Ok(())
    }
}
