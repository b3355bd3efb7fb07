//! Passkeys (WebAuthn, webauthn-rs): registered while logged in (with the password), then used
//! to log in without a password (discoverable credentials) or as the second factor of a
//! password login.
//!
//! Each ceremony is two requests: `start` answers the options for the browser's
//! `navigator.credentials.create()` / `get()` and a `ceremony_id`; `finish` takes the
//! browser's response with that id. The ceremony's state stays in the database (any process
//! finishes it), is used once and expires after [`CEREMONY_SECS`]. The relying-party id and the
//! accepted origins are settings (`WEBAUTHN_RP_ID`, `WEBAUTHN_ORIGINS`).

use super::account::LoginResponse;
use super::mfa::{
    live_challenge, record_failure, start_session, store_recovery_codes, verify_factor_change,
    FactorChangeRequest,
};
use super::registration::aggregate_error;
use super::{msg, Msg};
use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::AuthUser;
use crate::store;
use crate::store::passkeys::Ceremony;
use aggregates::session::{LoginMethod, SecondFactor};
use aggregates::user::{UserCommand, UserError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, MethodRouter};
use axum::Json;
use chrono::Utc;
use cqrs_es::AggregateError;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, DiscoverableKey, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
};

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        (
            "/accounts/api/passkeys/register/start/",
            post(register_start),
        ),
        (
            "/accounts/api/passkeys/register/finish/",
            post(register_finish),
        ),
        ("/accounts/api/passkeys/{passkey_id}/remove/", post(remove)),
        ("/accounts/api/login/passkey/start/", post(login_start)),
        ("/accounts/api/login/passkey/finish/", post(login_finish)),
        (
            "/accounts/api/login/mfa/passkey/start/",
            post(second_factor_start),
        ),
        (
            "/accounts/api/login/mfa/passkey/finish/",
            post(second_factor_finish),
        ),
    ]
}

/// Seconds between a ceremony's start and its finish, at most.
pub const CEREMONY_SECS: u64 = 300;

/// Most passkeys one account may hold (each login's ceremony carries all of them).
pub const MAX_PASSKEYS: usize = 10;

const REGISTER: &str = "register";
const LOGIN: &str = "login";
const SECOND_FACTOR: &str = "second_factor";

/// The options of one WebAuthn ceremony.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyCeremony {
    /// Send it back with the browser's response to the matching `finish`.
    pub ceremony_id: Uuid,
    /// For the browser: `{"publicKey": {...}}` (with `mediation` for a login), binary fields in
    /// base64url, to decode before `navigator.credentials.create()` / `get()`.
    #[schema(value_type = Object)]
    pub options: Value,
}

fn not_verified() -> ApiError {
    ApiError::detail(
        StatusCode::UNAUTHORIZED,
        "passkey_not_valid",
        "The passkey could not be verified, or the ceremony expired or was used. Start again.",
    )
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(anyhow::anyhow!("{error}"))
}

async fn start_ceremony(
    state: &AppState,
    ceremony: Ceremony,
    options: impl Serialize,
) -> ApiResult<Json<PasskeyCeremony>> {
    let ceremony_id = Uuid::new_v4();
    store::passkeys::start_ceremony(&state.pool, ceremony_id, &ceremony, CEREMONY_SECS).await?;
    Ok(Json(PasskeyCeremony {
        ceremony_id,
        options: serde_json::to_value(options).map_err(internal)?,
    }))
}

/// The passkeys the account's events name, as webauthn-rs reads them.
async fn passkeys_of(
    state: &AppState,
    user_id: Uuid,
    live: &[Uuid],
) -> ApiResult<Vec<(Uuid, Passkey)>> {
    store::passkeys::of_user(&state.pool, user_id, live)
        .await?
        .into_iter()
        .map(|stored| {
            serde_json::from_value(stored.passkey)
                .map(|passkey| (stored.passkey_id, passkey))
                .map_err(internal)
        })
        .collect()
}

/// Accepts a verified assertion only for a passkey the account has *now* (`passkeys`, read
/// after the ceremony's start: one removed meanwhile is refused) whose signature counter moved
/// on, when it keeps one (a counter that did not is a cloned authenticator's); records the use.
async fn accept_use(
    state: &AppState,
    passkeys: Vec<(Uuid, Passkey)>,
    result: &webauthn_rs::prelude::AuthenticationResult,
) -> ApiResult<bool> {
    for (passkey_id, mut passkey) in passkeys {
        let Some(changed) = passkey.update_credential(result) else {
            continue;
        };
        if result.counter() > 0 && !changed {
            tracing::warn!(%passkey_id, "a passkey's counter did not move on: refused");
            return Ok(false);
        }
        let record = serde_json::to_value(&passkey).map_err(internal)?;
        store::passkeys::used(&state.pool, passkey_id, &record).await?;
        return Ok(true);
    }
    Ok(false)
}

#[utoipa::path(
    post,
    path = "/accounts/api/passkeys/register/start/",
    tag = "mfa",
    summary = "Start registering a passkey",
    description = "Needs the current password (a stolen access token registers nothing) and, \
        while a second factor guards the account, a TOTP or recovery code; wrong ones count \
        against the guessing bound. Answers the options for `navigator.credentials.create()`.",
    security(("bearer" = [])),
    request_body = FactorChangeRequest,
    responses(
        (status = 200, body = PasskeyCeremony),
        (status = 409, description = "The account holds the most passkeys it may (10; code `too_many_passkeys`): remove one first", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong passwords or codes from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn register_start(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<FactorChangeRequest>,
) -> ApiResult<Json<PasskeyCeremony>> {
    let account = state.load_user(user.user_id).await?;
    if account.mfa.passkeys.len() >= MAX_PASSKEYS {
        return Err(ApiError::detail(
            StatusCode::CONFLICT,
            "too_many_passkeys",
            format!("An account may hold {MAX_PASSKEYS} passkeys: remove one first."),
        ));
    }
    verify_factor_change(&state, &user, &meta, &account, &body).await?;
    let existing = passkeys_of(&state, user.user_id, &account.mfa.passkeys).await?;
    let exclude = existing
        .iter()
        .map(|(_, passkey)| passkey.cred_id().clone())
        .collect();
    let (options, registration) = state
        .webauthn
        .start_passkey_registration(
            user.user_id,
            &account.email,
            &account.username,
            Some(exclude),
        )
        .map_err(internal)?;
    let ceremony = Ceremony {
        purpose: REGISTER.to_owned(),
        user_id: Some(user.user_id),
        session_id: None,
        state: serde_json::to_value(&registration).map_err(internal)?,
    };
    start_ceremony(&state, ceremony, options).await
}

/// A ceremony's id and the browser's response.
#[derive(ToSchema)]
pub struct PasskeyFinishRequest {
    /// `ceremony_id` of the start.
    #[schema(value_type = String, format = Uuid)]
    pub ceremony_id: Uuid,
    /// What `navigator.credentials.create()` / `get()` answered, binary fields in base64url.
    #[schema(value_type = Object)]
    pub credential: Value,
}

impl FromBody for PasskeyFinishRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let ceremony_id = form.parsed("ceremony_id", |raw| {
            Uuid::try_parse(raw).map_err(|_| "Must be a valid UUID.")
        });
        let credential = form.object("credential");
        Some(Self {
            ceremony_id: ceremony_id?,
            credential: credential?,
        })
    }
}

/// A registered passkey, and the first recovery codes when it is the account's first factor.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyRegistered {
    pub msg: String,
    pub passkey_id: Uuid,
    /// Ten codes, shown only this once, when the account had no second factor before (else
    /// empty): each logs in once if every passkey is lost.
    pub recovery_codes: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/accounts/api/passkeys/register/finish/",
    tag = "mfa",
    summary = "Finish registering a passkey",
    description = "Verifies the browser's response (origin, relying party, challenge, user \
        verification) and keeps the passkey. From then on it logs in without a password, and a \
        password login needs a second factor.",
    security(("bearer" = [])),
    request_body = PasskeyFinishRequest,
    responses(
        (status = 200, body = PasskeyRegistered),
        (status = 400, description = "Unknown or expired ceremony (field `ceremony_id`), or a response that does not verify (field `credential`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
    )
)]
pub(crate) async fn register_finish(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<PasskeyFinishRequest>,
) -> ApiResult<Json<PasskeyRegistered>> {
    let ceremony = store::passkeys::take_ceremony(&state.pool, body.ceremony_id, REGISTER)
        .await?
        .filter(|c| c.user_id == Some(user.user_id))
        .ok_or_else(|| ApiError::field("ceremony_id", "Unknown or expired ceremony."))?;
    let registration: PasskeyRegistration =
        serde_json::from_value(ceremony.state).map_err(internal)?;
    let not_verified = || ApiError::field("credential", "The passkey could not be verified.");
    let credential: RegisterPublicKeyCredential =
        serde_json::from_value(body.credential).map_err(|_| not_verified())?;
    let passkey = state
        .webauthn
        .finish_passkey_registration(&credential, &registration)
        .map_err(|error| {
            tracing::info!(%error, "passkey registration refused");
            not_verified()
        })?;
    let passkey_id = Uuid::new_v4();
    let record = serde_json::to_value(&passkey).map_err(internal)?;
    store::passkeys::insert(
        &state.pool,
        passkey_id,
        user.user_id,
        passkey.cred_id().as_ref(),
        &record,
    )
    .await
    .map_err(|error| match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ApiError::field("credential", "This passkey is registered already.")
        }
        _ => ApiError::from(error),
    })?;
    let id = user.user_id.to_string();
    let account = state.load_user(user.user_id).await?;
    let recovery = match account.mfa.recovery_codes {
        Some(_) => None,
        None => Some(store_recovery_codes(&state, user.user_id).await?),
    };
    let command = UserCommand::RegisterPasskey {
        passkey_id,
        recovery_codes: recovery
            .as_ref()
            .map(|(batch, codes)| (*batch, codes.len() as u32)),
        now: Utc::now(),
    };
    let done = state
        .users
        .execute(&id, command, &meta)
        .await
        .map_err(aggregate_error)?;
    // Codes are shown only if the account adopted them (a concurrent first factor may have
    // brought its own).
    let adopted = done.state.mfa.recovery_codes.map(|(batch, _)| batch);
    let recovery_codes = match recovery {
        Some((batch, codes)) if adopted == Some(batch) => codes,
        _ => Vec::new(),
    };
    Ok(Json(PasskeyRegistered {
        msg: "Your passkey is registered.".to_owned(),
        passkey_id,
        recovery_codes,
    }))
}

#[utoipa::path(
    post,
    path = "/accounts/api/passkeys/{passkey_id}/remove/",
    tag = "mfa",
    summary = "Remove a passkey",
    description = "Needs the current password and a TOTP or recovery code. When it was the last \
        second factor, the recovery codes stop working too.",
    security(("bearer" = [])),
    params(("passkey_id" = String, Path, description = "A `passkey_id` from `GET /accounts/api/mfa/`")),
    request_body = FactorChangeRequest,
    responses(
        (status = 200, body = Msg),
        (status = 404, description = "No passkey of the caller has this id (code `not_found`)", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong passwords from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Path(passkey_id): Path<String>,
    Body(body): Body<FactorChangeRequest>,
) -> ApiResult<Json<Msg>> {
    let passkey_id = Uuid::try_parse(&passkey_id).map_err(|_| ApiError::not_found())?;
    let account = state.load_user(user.user_id).await?;
    if !account.mfa.passkeys.contains(&passkey_id) {
        return Err(ApiError::not_found());
    }
    verify_factor_change(&state, &user, &meta, &account, &body).await?;
    let command = UserCommand::RemovePasskey {
        passkey_id,
        now: Utc::now(),
    };
    let done = match state
        .users
        .execute(&user.user_id.to_string(), command, &meta)
        .await
    {
        Ok(done) => done,
        Err(AggregateError::UserError(UserError::UnknownPasskey)) => {
            return Err(ApiError::not_found())
        }
        Err(error) => return Err(aggregate_error(error)),
    };
    store::passkeys::delete(&state.pool, passkey_id).await?;
    let keep = done.state.mfa.recovery_codes.map(|(batch, _)| batch);
    store::mfa::delete_recovery_codes_except(&state.pool, user.user_id, keep).await?;
    Ok(msg("The passkey is removed."))
}

#[utoipa::path(
    post,
    path = "/accounts/api/login/passkey/start/",
    tag = "session",
    summary = "Start a login with a passkey",
    description = "No e-mail, no password: answers the options for \
        `navigator.credentials.get()` (a discoverable credential, with user verification).",
    responses((status = 200, body = PasskeyCeremony))
)]
pub(crate) async fn login_start(State(state): State<AppState>) -> ApiResult<Json<PasskeyCeremony>> {
    let (options, authentication) = state
        .webauthn
        .start_discoverable_authentication()
        .map_err(internal)?;
    let ceremony = Ceremony {
        purpose: LOGIN.to_owned(),
        user_id: None,
        session_id: None,
        state: serde_json::to_value(&authentication).map_err(internal)?,
    };
    start_ceremony(&state, ceremony, options).await
}

#[utoipa::path(
    post,
    path = "/accounts/api/login/passkey/finish/",
    tag = "session",
    summary = "Finish a login with a passkey",
    description = "Verifies the browser's response (origin, relying party, challenge, user \
        verification, signature and counter) and answers the usual token pair.",
    request_body = PasskeyFinishRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "Unknown, expired or used ceremony, or a response that does not verify (code `passkey_not_valid`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn login_finish(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<PasskeyFinishRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let ceremony = store::passkeys::take_ceremony(&state.pool, body.ceremony_id, LOGIN)
        .await?
        .ok_or_else(not_verified)?;
    let authentication: DiscoverableAuthentication =
        serde_json::from_value(ceremony.state).map_err(internal)?;
    let credential: PublicKeyCredential =
        serde_json::from_value(body.credential).map_err(|_| not_verified())?;
    let (user_id, _) = state
        .webauthn
        .identify_discoverable_authentication(&credential)
        .map_err(|_| not_verified())?;
    let user = state.load_user(user_id).await?;
    if !user.is_active {
        return Err(not_verified());
    }
    let passkeys = passkeys_of(&state, user_id, &user.mfa.passkeys).await?;
    let keys: Vec<DiscoverableKey> = passkeys.iter().map(|(_, p)| p.into()).collect();
    let result = state
        .webauthn
        .finish_discoverable_authentication(&credential, authentication, &keys)
        .map_err(|error| {
            tracing::info!(%error, "passkey login refused");
            not_verified()
        })?;
    if !accept_use(&state, passkeys, &result).await? {
        return Err(not_verified());
    }
    start_session(
        &state,
        &meta,
        Uuid::new_v4(),
        &user,
        LoginMethod::Passkey,
        None,
    )
    .await
}

/// The login challenge a passkey completes.
#[derive(ToSchema)]
pub struct ChallengeRequest {
    /// `mfa_token` of the login's answer.
    #[schema(value_type = String, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub mfa_token: Option<Uuid>,
}

impl FromBody for ChallengeRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let token = form.string("mfa_token")?;
        Some(Self {
            mfa_token: state.links.verify_challenge(&token),
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/login/mfa/passkey/start/",
    tag = "session",
    summary = "Start completing a login with a passkey",
    description = "For a login that answered `mfa_required` with `passkey` among its methods: \
        the options for `navigator.credentials.get()`, limited to the account's passkeys.",
    request_body = ChallengeRequest,
    responses(
        (status = 200, body = PasskeyCeremony),
        (status = 400, description = "The account has no passkey (code `no_passkey`); or field errors", body = crate::api::error::BadRequest),
        (status = 401, description = "The challenge is not ours, expired, used, or spent by wrong codes (code `token_not_valid`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn second_factor_start(
    State(state): State<AppState>,
    Body(body): Body<ChallengeRequest>,
) -> ApiResult<Json<PasskeyCeremony>> {
    let (session_id, user_id, user) = live_challenge(&state, body.mfa_token).await?;
    let passkeys: Vec<Passkey> = passkeys_of(&state, user_id, &user.mfa.passkeys)
        .await?
        .into_iter()
        .map(|(_, passkey)| passkey)
        .collect();
    if passkeys.is_empty() {
        return Err(ApiError::detail(
            StatusCode::BAD_REQUEST,
            "no_passkey",
            "This account has no passkey: complete the login with a code.",
        ));
    }
    let (options, authentication) = state
        .webauthn
        .start_passkey_authentication(&passkeys)
        .map_err(internal)?;
    let ceremony = Ceremony {
        purpose: SECOND_FACTOR.to_owned(),
        user_id: Some(user_id),
        session_id: Some(session_id),
        state: serde_json::to_value(&authentication).map_err(internal)?,
    };
    start_ceremony(&state, ceremony, options).await
}

/// The login challenge, the ceremony and the browser's response.
#[derive(ToSchema)]
pub struct SecondFactorPasskeyRequest {
    /// `mfa_token` of the login's answer.
    #[schema(value_type = String, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub mfa_token: Option<Uuid>,
    /// `ceremony_id` of `login/mfa/passkey/start/`.
    #[schema(value_type = String, format = Uuid)]
    pub ceremony_id: Uuid,
    /// What `navigator.credentials.get()` answered.
    #[schema(value_type = Object)]
    pub credential: Value,
}

impl FromBody for SecondFactorPasskeyRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let token = form.string("mfa_token");
        let finish = PasskeyFinishRequest::read(form, state);
        let finish = finish?;
        Some(Self {
            mfa_token: state.links.verify_challenge(&token?),
            ceremony_id: finish.ceremony_id,
            credential: finish.credential,
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/login/mfa/passkey/finish/",
    tag = "session",
    summary = "Complete a login with a passkey",
    description = "Verifies the browser's response against the account's passkeys and answers \
        the usual token pair. A response that does not verify counts as a wrong code for the \
        challenge (five spend it).",
    request_body = SecondFactorPasskeyRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 401, description = "The challenge or the ceremony is not valid, or the passkey does not verify (code `token_not_valid` or `passkey_not_valid`)", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn second_factor_finish(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<SecondFactorPasskeyRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let (session_id, user_id, user) = live_challenge(&state, body.mfa_token).await?;
    let ceremony = store::passkeys::take_ceremony(&state.pool, body.ceremony_id, SECOND_FACTOR)
        .await?
        .filter(|c| c.session_id == Some(session_id) && c.user_id == Some(user_id))
        .ok_or_else(not_verified)?;
    let authentication: PasskeyAuthentication =
        serde_json::from_value(ceremony.state).map_err(internal)?;
    let passkeys = passkeys_of(&state, user_id, &user.mfa.passkeys).await?;
    let verified = serde_json::from_value::<PublicKeyCredential>(body.credential)
        .ok()
        .and_then(|credential| {
            state
                .webauthn
                .finish_passkey_authentication(&credential, &authentication)
                .map_err(|error| tracing::info!(%error, "passkey second factor refused"))
                .ok()
        });
    let accepted = match &verified {
        Some(result) => accept_use(&state, passkeys, result).await?,
        None => false,
    };
    if !accepted {
        record_failure(&state, &meta, session_id, SecondFactor::Passkey).await;
        return Err(not_verified());
    }
    start_session(
        &state,
        &meta,
        session_id,
        &user,
        LoginMethod::Password,
        Some(SecondFactor::Passkey),
    )
    .await
}
