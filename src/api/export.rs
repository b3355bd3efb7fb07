//! Everything the service holds about a person, as one JSON document (GDPR articles 15 and 20):
//! for the caller at `GET /accounts/api/export/`, and for operators with `accounts user export`.

use super::account::{DashboardUser, HistoryItem};
use super::profile::Profile;
use super::sessions::{sessions_of, SessionInfo};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::AuthUser;
use axum::extract::State;
use axum::routing::{get, MethodRouter};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![("/accounts/api/export/", get(export))]
}

/// What is not in an export, and why.
const NOT_EXPORTED: &str = "The password hash (a secret derived from your password, useless to \
    you), link and refresh tokens (secrets), your authenticator's secret (encrypted; it was \
    shown once at set-up), your recovery codes (held only as hashes) and your passkeys' public \
    keys (your second factors, how many codes are left and each passkey's dates are at \
    GET /accounts/api/mfa/), and the e-mails sent to you (their \
    content is in your mailbox; when each was sent is in your history as the events that \
    caused them).";

/// Everything held about one account.
#[derive(Debug, Serialize, ToSchema)]
pub struct DataExport {
    pub exported_at: DateTime<Utc>,
    pub account: DashboardUser,
    pub profile: Profile,
    /// The sessions that can still be refreshed.
    pub sessions: Vec<SessionInfo>,
    /// The whole history, oldest first, with the address and user agent of each request.
    pub history: Vec<HistoryItem>,
    /// What is held but not exported, and why.
    pub not_exported: &'static str,
}

/// The export of `user_id`; `current` marks the caller's session. `None` when there is no such
/// account.
/// `refresh_token_ttl` (seconds) tells which sessions can still be refreshed.
pub async fn build(
    pool: &sqlx::PgPool,
    refresh_token_ttl: u64,
    user_id: Uuid,
    current: Option<Uuid>,
) -> anyhow::Result<Option<DataExport>> {
    let Some(row) = projections::profile::find(pool, user_id).await? else {
        return Ok(None);
    };
    let history = projections::history::all(pool, user_id).await?;
    Ok(Some(DataExport {
        exported_at: Utc::now(),
        account: DashboardUser::from(&row),
        profile: Profile::from(&row),
        sessions: sessions_of(pool, refresh_token_ttl, user_id, current).await?,
        history: history.into_iter().map(HistoryItem::from).collect(),
        not_exported: NOT_EXPORTED,
    }))
}

#[utoipa::path(
    get,
    path = "/accounts/api/export/",
    tag = "account",
    summary = "Export my data",
    description = "Everything the service holds about the caller, as one JSON document: the \
        account, the profile, the open sessions and the whole history (with the address and user \
        agent of each request). `not_exported` says what is held but left out, and why.",
    security(("bearer" = [])),
    responses((status = 200, body = DataExport))
)]
pub(crate) async fn export(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<DataExport>> {
    // Everything stored up to this request: every read model caught up first, so that what the
    // person did just before is in it. (A failed login is stored just after its 401, off the
    // response path; an export sent within those milliseconds may not show it yet.)
    state.catch_up_all().await?;
    let ttl = state.settings.refresh_token_ttl;
    build(&state.pool, ttl, user.user_id, Some(user.session_id))
        .await?
        .map(Json)
        .ok_or(ApiError::InvalidToken)
}
