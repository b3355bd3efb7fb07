//! `AuthUser`: the caller of a protected route, from a valid `Authorization: Bearer` access token.

use crate::error::ApiError;
use crate::state::AppState;
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
        let caller = profile::find_caller(&state.pool, claims.sub, claims.sid)
            .await?
            .ok_or(ApiError::InvalidToken)?;
        let profile = caller.profile;
        if caller.session_ended || !profile.is_active || profile.token_epoch != claims.epoch as i32
        {
            return Err(ApiError::InvalidToken);
        }
        Ok(Self {
            user_id: claims.sub,
            session_id: claims.sid,
            profile,
        })
    }
}
