//! Login, the dashboard and the user's own history.

use super::profile::Profile;
use super::registration::{aggregate_error, hash_error};
use crate::api::body::{query_value, Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::throttle::source_of;
use crate::auth::AuthUser;
use crate::store;
use aggregates::session::{LoginRefusal, SessionCommand};
use aggregates::values::Email;
use aggregates::User;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::{Duration, Utc};
use projections::history::{self, HistoryEntry};
use secrecy::SecretString;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/login/", post(login)),
        ("/accounts/api/dashboard/", get(dashboard)),
        ("/accounts/api/history/", get(own_history)),
    ]
}

/// The body of `login/`.
#[derive(ToSchema)]
pub struct LoginRequest {
    #[schema(value_type = String, format = Email, max_length = 254, example = "krishna@example.com")]
    pub email: Email,
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$", example = "correct horse battery staple")]
    pub password: SecretString,
}

impl FromBody for LoginRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let email = form.parsed("email", Email::parse);
        let password = form.string("password").map(SecretString::from);
        Some(Self {
            email: email?,
            password: password?,
        })
    }
}

/// The tokens of one session generation.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    /// EdDSA JWT; verify it with `/.well-known/jwks.json`. Send it as `Authorization: Bearer`.
    pub access_token: String,
    /// Opaque; rotate it with `/accounts/api/token/refresh/`, end it with `/accounts/api/logout/`.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

/// The answer to a login: a greeting and the session's first tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub msg: String,
    #[serde(flatten)]
    pub tokens: TokenPair,
}

/// The answer to a right password for an account with a second factor: no tokens yet.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecondFactorChallenge {
    pub msg: String,
    /// Always `true`.
    pub mfa_required: bool,
    /// Send it with a code to `/accounts/api/login/mfa/`; it works once.
    pub mfa_token: String,
    /// What the login can be completed with: `totp`, and `recovery_code` while any is left.
    #[schema(value_type = Vec<String>, example = json!(["totp", "recovery_code"]))]
    pub methods: Vec<aggregates::SecondFactor>,
    /// Seconds the challenge stays valid.
    pub expires_in: u64,
}

/// A login's answer: the tokens, or, for an account with a second factor, a challenge.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum LoginOutcome {
    Tokens(LoginResponse),
    SecondFactor(SecondFactorChallenge),
}

fn invalid_credentials() -> ApiError {
    ApiError::detail(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "Invalid email or password.",
    )
}

/// Access and refresh tokens of one session generation, in the contract's shape.
/// `login` is the session's start and the sequence of its `Started` event on a login's tokens
/// (see `AccessClaims::login_us`).
pub(crate) fn token_pair(
    state: &AppState,
    user_id: Uuid,
    session_id: Uuid,
    generation: u32,
    epoch: u32,
    login: Option<(chrono::DateTime<Utc>, i64)>,
) -> ApiResult<TokenPair> {
    let access = state
        .keys
        .issue(
            user_id,
            session_id,
            epoch,
            login,
            Utc::now(),
            state.access_ttl(),
        )
        .map_err(ApiError::Internal)?;
    Ok(TokenPair {
        access_token: access,
        refresh_token: state.links.refresh_token(session_id, generation),
        token_type: "Bearer",
        expires_in: state.access_ttl(),
    })
}

#[utoipa::path(
    post,
    path = "/accounts/api/login/",
    tag = "session",
    summary = "Get JWT access and refresh_token to visit user dashboard.",
    description = "Starts a session. Wrong guesses are bounded per account and client address \
        (429 with `Retry-After`); a client address that logged in to the account before never \
        waits for strangers' guesses. For an account with a second factor, the right password \
        answers a challenge instead of tokens (`mfa_required`, `mfa_token`, `methods`), which \
        `login/mfa/` completes; other accounts see no difference.",
    request_body = LoginRequest,
    responses(
        (status = 200, body = LoginOutcome),
        (status = 401, description = "Unknown e-mail or wrong password (code `invalid_credentials`)", body = crate::api::error::ErrorDetail),
        (status = 403, description = "Right password, account not activated yet (code `account_inactive`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(LoginRequest { email, password }): Body<LoginRequest>,
) -> ApiResult<Json<LoginOutcome>> {
    // Admission and the account look-up in one round trip. The attempt is counted now, before
    // the hash is checked, so an aborted request has nothing to release; a refused attempt
    // touches no account (cheap under a flood of guesses, and says nothing about the address).
    let account = state.vault.identity_hash("email", &email.key());
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
            record_session_event(
                &state,
                SessionCommand::RecordFailedLogin {
                    user_id,
                    now: Utc::now(),
                },
                meta.clone(),
            );
        }
        return Err(invalid_credentials());
    };
    let (Some(user_id), true) = (user.id, user.is_active) else {
        state.throttle.succeeded(&account, &source).await?;
        let Some(user_id) = user.id else {
            return Err(invalid_credentials());
        };
        // Recorded before the answer (the 403 says as much as the event): the owner's history
        // then shows it before anything the client does next.
        let command = SessionCommand::RecordRefusedLogin {
            user_id,
            reason: LoginRefusal::Inactive,
            now: Utc::now(),
        };
        let id = Uuid::new_v4().to_string();
        if let Err(error) = state.sessions.execute(&id, command, &meta).await {
            tracing::warn!(%error, "cannot record a refused login");
        }
        return Err(ApiError::detail(
            StatusCode::FORBIDDEN,
            "account_inactive",
            "Your account is not active yet. Please activate it with the link we e-mailed you.",
        ));
    };
    let session_id = Uuid::new_v4();
    let id = session_id.to_string();
    if user.mfa.required() {
        // The password was right: its source's failures are cleared as for any login, and the
        // session's stream starts with the challenge that `login/mfa/` completes.
        let methods = super::mfa::methods_of(&user);
        let command = SessionCommand::Challenge {
            user_id,
            token_epoch: user.token_epoch,
            methods: methods.clone(),
            ttl: Duration::seconds(state.settings.mfa_challenge_ttl as i64),
            now: Utc::now(),
        };
        // The right password's record for the guessing bound rides in the challenge's append.
        let guard = state.throttle.success_in_append(&account, &source);
        state
            .sessions
            .execute_with(&id, command, &meta, guard)
            .await
            .map_err(aggregate_error)?;
        return Ok(Json(LoginOutcome::SecondFactor(SecondFactorChallenge {
            msg: "Your password is right; enter a code of your authenticator app or a recovery \
                  code to finish logging in."
                .to_owned(),
            mfa_required: true,
            mfa_token: state.links.challenge_token(session_id),
            methods,
            expires_in: state.settings.mfa_challenge_ttl,
        })));
    }
    let started_at = Utc::now();
    let command = SessionCommand::Start {
        session_id,
        user_id,
        token_epoch: user.token_epoch,
        method: aggregates::session::LoginMethod::Password,
        second_factor: None,
        ttl: Duration::seconds(state.settings.refresh_token_ttl as i64),
        now: started_at,
    };
    // The session's start and the guessing bound's record of the right password (its source's
    // failures cleared, the source familiar) are one statement: the record rides in the append.
    let guard = state.throttle.success_in_append(&account, &source);
    state
        .sessions
        .execute_with(&id, command, &meta, guard)
        .await
        .map_err(aggregate_error)?;
    // No wait for the read models here: the access token names the login, and the first read
    // that must show it waits for it, only if the read models are behind (`AuthUser`).
    let tokens = token_pair(
        &state,
        user_id,
        session_id,
        0,
        user.token_epoch,
        Some((started_at, 1)),
    )?;
    Ok(Json(LoginOutcome::Tokens(LoginResponse {
        msg: format!("Congrats {} your credentials verfied.", user.username),
        tokens,
    })))
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

/// Records a failed login for the owner's history, in a stream of its own and off the response
/// path, so that a known address answers as fast as an unknown one. A graceful shutdown waits
/// for it (`background`), so a failed login answered is a failed login recorded.
fn record_session_event(state: &AppState, command: SessionCommand, meta: RequestMeta) {
    let sessions = state.sessions.clone();
    state.background.spawn(async move {
        let id = Uuid::new_v4().to_string();
        if let Err(error) = sessions.execute(&id, command, &meta).await {
            tracing::warn!(%error, "cannot record a failed login");
        }
    });
}

/// The account part of the dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct DashboardUser {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub is_active: bool,
    pub date_joined: chrono::DateTime<Utc>,
    /// The last login (with the password, or a passkey); `null` before the first.
    pub last_login: Option<chrono::DateTime<Utc>>,
}

/// The dashboard: the account, its profile and its newest history.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    #[schema(example = "Welcome to dashboard")]
    pub msg: &'static str,
    pub user: DashboardUser,
    pub profile: Profile,
    /// The newest 10 history entries, newest first.
    pub recent_history: Vec<HistoryItem>,
}

/// One entry of the user's own history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryItem {
    /// One of `registered`, `duplicate_registration_attempted`, `activation_link_sent`,
    /// `activated`, `activation_refused`, `logged_in`, `login_failed`, `login_refused`,
    /// `token_refreshed`, `logged_out`, `profile_updated`, `password_changed`,
    /// `password_reset_requested`, `password_reset`, `sessions_revoked`, `totp_setup_started`,
    /// `totp_enabled`, `totp_disabled`, `recovery_codes_generated`, `recovery_code_used`,
    /// `passkey_registered`, `passkey_removed`, `second_factor_required`, `second_factor_failed`
    /// (docs/ANALYTICS.md lists each one's
    /// `details`).
    pub event: String,
    pub occurred_at: chrono::DateTime<Utc>,
    /// The client address the request came from, if known.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// Non-secret details of the event (see docs/EVENTS.md); never a password, hash or token.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<&projections::profile::ProfileRow> for DashboardUser {
    fn from(row: &projections::profile::ProfileRow) -> Self {
        Self {
            id: row.user_id,
            username: row.username.clone(),
            email: row.email.clone(),
            is_active: row.is_active,
            date_joined: row.date_joined,
            last_login: row.last_login,
        }
    }
}

impl From<HistoryEntry> for HistoryItem {
    fn from(entry: HistoryEntry) -> Self {
        Self {
            event: entry.event,
            occurred_at: entry.occurred_at,
            ip: entry.ip,
            user_agent: entry.user_agent,
            details: entry.details,
        }
    }
}

/// One page of the user's own history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    pub results: Vec<HistoryItem>,
    /// Pass as `?cursor=` for the next (older) page; `null` on the last page.
    pub next: Option<String>,
}

/// The query of `history/`. As in Django, a repeated parameter counts with its last value.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Entries per page, 1 to 200; 50 when absent.
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next` of the previous page; empty or absent for the newest page.
    #[param(value_type = Option<String>, pattern = "^([1-9][0-9]{0,17})?$")]
    pub cursor: Option<i64>,
}

impl HistoryQuery {
    /// Reads the raw query string; field errors in DRF's shape.
    fn parse(query: Option<&str>) -> ApiResult<Self> {
        let mut errors = Form::default();
        let limit = match query_value(query, "limit").as_deref() {
            None => None,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=200).contains(&n) => Some(n),
                _ => {
                    errors.error(
                        "limit",
                        "Ensure this value is a whole number from 1 to 200.",
                    );
                    None
                }
            },
        };
        let cursor = match query_value(query, "cursor").as_deref() {
            None | Some("") => None,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    errors.error("cursor", "Invalid cursor.");
                    None
                }
            },
        };
        errors.finish()?;
        Ok(Self { limit, cursor })
    }
}

#[utoipa::path(
    get,
    path = "/accounts/api/dashboard/",
    tag = "account",
    summary = "Get user dashboard",
    description = "Shows the caller's own latest login and changes at once, even when another \
        process served them.",
    security(("bearer" = [])),
    responses((status = 200, body = Dashboard))
)]
pub(crate) async fn dashboard(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Dashboard>> {
    user.see_own_login(&state).await?;
    let row = &user.profile;
    let recent = history::page(&state.pool, user.user_id, None, 10).await?;
    Ok(Json(Dashboard {
        msg: "Welcome to dashboard",
        user: DashboardUser::from(row),
        profile: Profile::from(row),
        recent_history: recent.into_iter().map(HistoryItem::from).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/accounts/api/history/",
    tag = "account",
    summary = "Get user history",
    description = "The caller's own history (registration, logins, failed logins, changes), \
        newest first, page by page.",
    security(("bearer" = [])),
    params(HistoryQuery),
    responses(
        (status = 200, body = HistoryPage),
        (status = 400, description = "Field errors in the query string", body = crate::api::error::ValidationErrors),
    )
)]
pub(crate) async fn own_history(
    State(state): State<AppState>,
    user: AuthUser,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<HistoryPage>> {
    let HistoryQuery { limit, cursor } = HistoryQuery::parse(query.as_deref())?;
    let limit = limit.unwrap_or(50);
    user.see_own_login(&state).await?;
    let mut rows: Vec<HistoryEntry> =
        history::page(&state.pool, user.user_id, cursor, limit + 1).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.position.to_string())
    } else {
        None
    };
    Ok(Json(HistoryPage {
        results: rows.into_iter().map(HistoryItem::from).collect(),
        next,
    }))
}
