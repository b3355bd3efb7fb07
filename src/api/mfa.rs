//! Second factors: TOTP enrolment (set up, confirm with a first code, turn off), recovery codes,
//! and the second step of a login that needs one.
//!
//! Secrets stay beside the event store (`store::mfa`); events only say what happened. Every code
//! check counts against the guessing bound (`auth::throttle`) under the account's own key, and a
//! login challenge dies after `MAX_SECOND_FACTOR_FAILURES` wrong codes.

use super::account::{token_pair, LoginResponse};
use super::password::verify_current_password;
use super::registration::aggregate_error;
use super::{msg, Msg};
use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::mfa::{self, Code};
use crate::auth::throttle::source_of;
use crate::auth::AuthUser;
use crate::store;
use aggregates::session::{SecondFactor, SessionCommand, SessionError};
use aggregates::user::{UserCommand, UserError};
use aggregates::User;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::{Duration, Utc};
use cqrs_es::AggregateError;
use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/mfa/", get(factors)),
        ("/accounts/api/mfa/totp/setup/", post(totp_setup)),
        ("/accounts/api/mfa/totp/confirm/", post(totp_confirm)),
        ("/accounts/api/mfa/totp/disable/", post(totp_disable)),
        (
            "/accounts/api/mfa/recovery-codes/",
            post(regenerate_recovery_codes),
        ),
        ("/accounts/api/login/mfa/", post(login_second_factor)),
    ]
}

/// Longest code accepted (a recovery code is 11 characters; room for spaces).
const MAX_CODE_CHARS: usize = 64;

/// The second factors a login of `user` can be completed with (empty when none is needed).
pub(crate) fn methods_of(user: &User) -> Vec<SecondFactor> {
    let mut methods = Vec::new();
    if user.mfa.totp.is_some() {
        methods.push(SecondFactor::Totp);
    }
    if !user.mfa.passkeys.is_empty() {
        methods.push(SecondFactor::Passkey);
    }
    if user.mfa.required() && user.mfa.recovery_codes_left() > 0 {
        methods.push(SecondFactor::RecoveryCode);
    }
    methods
}

/// The key wrong second-factor codes of an account are counted under.
fn guess_key(user_id: Uuid) -> String {
    format!("second-factor:{user_id}")
}

fn wrong_code() -> ApiError {
    ApiError::field("code", "The code is wrong, expired or used already.")
}

fn invalid_challenge() -> ApiError {
    ApiError::detail(
        StatusCode::UNAUTHORIZED,
        "token_not_valid",
        "The login challenge is not valid: it expired, was used, or took too many wrong codes. \
         Log in again.",
    )
}

fn totp_enabled_already() -> ApiError {
    ApiError::detail(
        StatusCode::CONFLICT,
        "mfa_enabled",
        "Two-factor authentication is on already; turn it off first to set up a new authenticator.",
    )
}

fn totp_not_enabled() -> ApiError {
    ApiError::detail(
        StatusCode::CONFLICT,
        "mfa_not_enabled",
        "Two-factor authentication is not on.",
    )
}

/// Whether `code` is a TOTP code of `enrolment` for now (or one step either side) that was not
/// used before; accepting it uses it.
async fn totp_code_ok(
    state: &AppState,
    enrolment: Uuid,
    account: &str,
    code: &str,
) -> ApiResult<bool> {
    let Some((sealed, last_step)) = store::mfa::totp_secret(&state.pool, enrolment).await? else {
        return Ok(false);
    };
    let secret = state
        .second_factors
        .open(enrolment, &sealed)
        .map_err(ApiError::Internal)?;
    let totp =
        mfa::totp(secret, &state.settings.totp_issuer, account).map_err(ApiError::Internal)?;
    let now = u64::try_from(Utc::now().timestamp()).unwrap_or_default();
    match mfa::matching_step(&totp, code, now) {
        Some(step) if step > last_step => {
            Ok(store::mfa::use_totp_step(&state.pool, enrolment, step).await?)
        }
        _ => Ok(false),
    }
}

/// Which second factor `code` is for the account, if it is a right one (a recovery code is used
/// up by this check).
async fn second_factor_ok(
    state: &AppState,
    user_id: Uuid,
    user: &User,
    code: &str,
) -> ApiResult<Option<SecondFactor>> {
    match Code::parse(code) {
        Code::Totp(code) => {
            let Some(enrolment) = user.mfa.totp else {
                return Ok(None);
            };
            let ok = totp_code_ok(state, enrolment, &user.email, &code).await?;
            Ok(ok.then_some(SecondFactor::Totp))
        }
        Code::Recovery(code) => {
            let Some((batch, _)) = user.mfa.recovery_codes else {
                return Ok(None);
            };
            let hash = state.second_factors.recovery_hash(user_id, &code);
            let used = store::mfa::use_recovery_code(&state.pool, batch, &hash).await?;
            Ok(used.then_some(SecondFactor::RecoveryCode))
        }
    }
}

/// [`second_factor_ok`] under the guessing bound: 429 when the account's wrong codes from this
/// client's address are too many; a right code clears them.
async fn checked_second_factor(
    state: &AppState,
    meta: &RequestMeta,
    user_id: Uuid,
    user: &User,
    code: &str,
) -> ApiResult<Option<SecondFactor>> {
    let source = source_of(meta.ip.as_deref());
    let checked = state
        .throttle
        .guess(
            &guess_key(user_id),
            &source,
            second_factor_ok(state, user_id, user, code),
        )
        .await?;
    if let (Some(SecondFactor::RecoveryCode), Some((batch_id, _))) =
        (checked, user.mfa.recovery_codes)
    {
        let command = UserCommand::UseRecoveryCode {
            batch_id,
            now: Utc::now(),
        };
        match state
            .users
            .execute(&user_id.to_string(), command, meta)
            .await
        {
            Ok(_) => {}
            // New codes replaced this batch meanwhile: the code is void.
            Err(AggregateError::UserError(UserError::StaleRecoveryCodes)) => return Ok(None),
            Err(error) => return Err(aggregate_error(error)),
        }
    }
    Ok(checked)
}

/// New recovery codes for the account: stored as keyed hashes under a new batch id.
pub(crate) async fn store_recovery_codes(
    state: &AppState,
    user_id: Uuid,
) -> ApiResult<(Uuid, Vec<String>)> {
    let codes = mfa::new_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|code| match Code::parse(code) {
            Code::Recovery(normal) | Code::Totp(normal) => {
                state.second_factors.recovery_hash(user_id, &normal)
            }
        })
        .collect();
    let batch_id = Uuid::new_v4();
    store::mfa::insert_recovery_codes(&state.pool, batch_id, user_id, &hashes).await?;
    Ok((batch_id, codes))
}

fn user_error(error: AggregateError<UserError>) -> ApiError {
    match error {
        AggregateError::UserError(UserError::SecondFactorEnabled) => totp_enabled_already(),
        AggregateError::UserError(UserError::SecondFactorNotEnabled) => totp_not_enabled(),
        AggregateError::UserError(UserError::NoPendingSetup) => wrong_code(),
        other => aggregate_error(other),
    }
}

/// The caller's second factors.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecondFactors {
    /// Whether logins need a second factor (TOTP is on).
    pub totp_enabled: bool,
    /// Whether a TOTP set-up waits for its first code.
    pub totp_pending: bool,
    /// Recovery codes not used yet.
    pub recovery_codes_left: u32,
    /// What a password login is completed with: `totp`, `passkey`, `recovery_code`; empty when
    /// the password alone logs in.
    #[schema(value_type = Vec<String>, example = json!(["totp", "recovery_code"]))]
    pub methods: Vec<SecondFactor>,
    /// The registered passkeys.
    pub passkeys: Vec<PasskeyInfo>,
}

/// One registered passkey.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyInfo {
    pub passkey_id: Uuid,
    pub created_at: chrono::DateTime<Utc>,
    pub last_used_at: Option<chrono::DateTime<Utc>>,
}

#[utoipa::path(
    get,
    path = "/accounts/api/mfa/",
    tag = "mfa",
    summary = "List my second factors",
    security(("bearer" = [])),
    responses((status = 200, body = SecondFactors))
)]
pub(crate) async fn factors(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<SecondFactors>> {
    let account = state.load_user(user.user_id).await?;
    let passkeys =
        store::passkeys::of_user(&state.pool, user.user_id, &account.mfa.passkeys).await?;
    Ok(Json(SecondFactors {
        totp_enabled: account.mfa.totp.is_some(),
        totp_pending: account.mfa.pending_totp.is_some(),
        recovery_codes_left: account.mfa.recovery_codes_left(),
        methods: methods_of(&account),
        passkeys: passkeys
            .into_iter()
            .map(|p| PasskeyInfo {
                passkey_id: p.passkey_id,
                created_at: p.created_at,
                last_used_at: p.last_used_at,
            })
            .collect(),
    }))
}

/// A new TOTP secret, for the authenticator app. Shown once; logins need it only after
/// `mfa/totp/confirm/`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TotpSetup {
    /// The secret in base32, for typing into an app.
    pub secret: String,
    /// The `otpauth://totp/...` URI the QR code holds.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_code_svg: String,
    /// Always `SHA1`.
    pub algorithm: &'static str,
    /// Always 6.
    pub digits: usize,
    /// Seconds per code: always 30.
    pub period: u64,
}

#[utoipa::path(
    post,
    path = "/accounts/api/mfa/totp/setup/",
    tag = "mfa",
    summary = "Start setting up an authenticator app (TOTP)",
    description = "Needs the current password (an access token alone sets up nothing) and, \
        when a passkey already guards the account, a recovery code. Makes a new secret \
        (replacing a set-up not confirmed yet) and answers it as text, `otpauth://` URI and QR \
        code. Nothing changes for logins until `mfa/totp/confirm/` gets a first code.",
    security(("bearer" = [])),
    request_body = FactorChangeRequest,
    responses(
        (status = 200, body = TotpSetup),
        (status = 400, description = "Wrong password (field `password`) or missing or wrong code (field `code`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 409, description = "TOTP is on already (code `mfa_enabled`)", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong passwords or codes from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn totp_setup(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<FactorChangeRequest>,
) -> ApiResult<Json<TotpSetup>> {
    let account = state.load_user(user.user_id).await?;
    if account.mfa.totp.is_some() {
        return Err(totp_enabled_already());
    }
    verify_factor_change(&state, &user, &meta, &account, &body).await?;
    let secret = mfa::SecondFactorKeys::new_secret();
    let enrolment_id = Uuid::new_v4();
    let sealed = state
        .second_factors
        .seal(enrolment_id, &secret)
        .map_err(ApiError::Internal)?;
    store::mfa::insert_totp(&state.pool, enrolment_id, user.user_id, &sealed).await?;
    let command = UserCommand::StartTotpSetup {
        enrolment_id,
        now: Utc::now(),
    };
    state
        .users
        .execute(&user.user_id.to_string(), command, &meta)
        .await
        .map_err(user_error)?;
    // Earlier set-ups never confirmed are void now (TOTP is off, and only this one can be
    // confirmed): their secrets go.
    store::mfa::delete_totp_except(&state.pool, user.user_id, Some(enrolment_id)).await?;
    let totp = mfa::totp(secret, &state.settings.totp_issuer, &account.email)
        .map_err(ApiError::Internal)?;
    let otpauth_uri = totp.get_url();
    let qr_code_svg = mfa::qr_svg(&otpauth_uri).map_err(ApiError::Internal)?;
    Ok(Json(TotpSetup {
        secret: totp.get_secret_base32(),
        otpauth_uri,
        qr_code_svg,
        algorithm: "SHA1",
        digits: mfa::DIGITS,
        period: mfa::STEP_SECS,
    }))
}

/// A body with one code: six digits of the authenticator app.
#[derive(ToSchema)]
pub struct TotpConfirmRequest {
    /// The code the app shows now.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$",
        example = "123456"
    )]
    pub code: String,
}

/// Reads `code`: required, non-blank, at most [`MAX_CODE_CHARS`] characters.
fn code_field(form: &mut Form) -> Option<String> {
    let code = form.string("code")?;
    if code.chars().count() > MAX_CODE_CHARS {
        form.error(
            "code",
            format!("Ensure this field has no more than {MAX_CODE_CHARS} characters."),
        );
        return None;
    }
    Some(code)
}

impl FromBody for TotpConfirmRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        Some(Self {
            code: code_field(form)?,
        })
    }
}

/// Recovery codes, shown this once: each logs in once in place of a TOTP code.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    pub msg: String,
    /// Ten codes like `abcde-fghjk`; dashes, spaces and case do not matter when one is given.
    pub recovery_codes: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/accounts/api/mfa/totp/confirm/",
    tag = "mfa",
    summary = "Turn on TOTP with a first code",
    description = "Checks a code of the secret from `mfa/totp/setup/`; from then on a login \
        with the password answers a challenge (`mfa_required`) that `login/mfa/` completes. \
        Answers ten recovery codes, shown only this once. Wrong codes count against the \
        guessing bound (429).",
    security(("bearer" = [])),
    request_body = TotpConfirmRequest,
    responses(
        (status = 200, body = RecoveryCodes),
        (status = 400, description = "Wrong or used code, or no set-up waiting (field `code`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 409, description = "TOTP is on already (code `mfa_enabled`)", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong codes from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn totp_confirm(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<TotpConfirmRequest>,
) -> ApiResult<Json<RecoveryCodes>> {
    let account = state.load_user(user.user_id).await?;
    if account.mfa.totp.is_some() {
        return Err(totp_enabled_already());
    }
    let Some(enrolment_id) = account.mfa.pending_totp else {
        return Err(ApiError::field(
            "code",
            "No set-up is waiting for a code: start one with mfa/totp/setup/.",
        ));
    };
    let Code::Totp(code) = Code::parse(&body.code) else {
        return Err(wrong_code());
    };
    let check = async {
        let right = totp_code_ok(&state, enrolment_id, &account.email, &code).await?;
        Ok(right.then_some(()))
    };
    let source = source_of(meta.ip.as_deref());
    if state
        .throttle
        .guess(&guess_key(user.user_id), &source, check)
        .await?
        .is_none()
    {
        return Err(wrong_code());
    }
    let (batch_id, codes) = store_recovery_codes(&state, user.user_id).await?;
    let command = UserCommand::EnableTotp {
        enrolment_id,
        recovery_batch_id: batch_id,
        recovery_codes: codes.len() as u32,
        now: Utc::now(),
    };
    state
        .users
        .execute(&user.user_id.to_string(), command, &meta)
        .await
        .map_err(user_error)?;
    store::mfa::delete_totp_except(&state.pool, user.user_id, Some(enrolment_id)).await?;
    Ok(Json(RecoveryCodes {
        msg: "Two-factor authentication is on. Keep these recovery codes somewhere safe: each \
              logs you in once if you lose your authenticator."
            .to_owned(),
        recovery_codes: codes,
    }))
}

/// The current password and a second factor.
#[derive(ToSchema)]
pub struct TotpDisableRequest {
    /// The current password (a wrong one counts as a guess).
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub password: SecretString,
    /// A code of the authenticator app, or an unused recovery code.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$",
        example = "123456"
    )]
    pub code: String,
}

impl FromBody for TotpDisableRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let password = form.string("password").map(SecretString::from);
        let code = code_field(form);
        Some(Self {
            password: password?,
            code: code?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/mfa/totp/disable/",
    tag = "mfa",
    summary = "Turn off TOTP",
    description = "Needs the current password and a TOTP or recovery code; the recovery codes \
        stop working too. Wrong passwords and codes count against the guessing bound (429).",
    security(("bearer" = [])),
    request_body = TotpDisableRequest,
    responses(
        (status = 200, body = Msg),
        (status = 400, description = "Wrong password (field `password`) or wrong code (field `code`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 409, description = "TOTP is not on (code `mfa_not_enabled`)", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong passwords or codes from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn totp_disable(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<TotpDisableRequest>,
) -> ApiResult<Json<Msg>> {
    let id = user.user_id.to_string();
    let account = state.load_user(user.user_id).await?;
    if account.mfa.totp.is_none() {
        return Err(totp_not_enabled());
    }
    verify_current_password(&state, &user, &meta, &body.password, "password").await?;
    if checked_second_factor(&state, &meta, user.user_id, &account, &body.code)
        .await?
        .is_none()
    {
        return Err(wrong_code());
    }
    let command = UserCommand::DisableTotp { now: Utc::now() };
    let done = state
        .users
        .execute(&id, command, &meta)
        .await
        .map_err(user_error)?;
    store::mfa::delete_totp_except(&state.pool, user.user_id, None).await?;
    // Recovery codes stay while a passkey does.
    let keep = done.state.mfa.recovery_codes.map(|(batch, _)| batch);
    store::mfa::delete_recovery_codes_except(&state.pool, user.user_id, keep).await?;
    Ok(msg("Two-factor authentication is off."))
}

/// The current password and, while a second factor guards the account, a code.
#[derive(ToSchema)]
pub struct FactorChangeRequest {
    /// The current password (a wrong one counts as a guess).
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub password: SecretString,
    /// Required while the account has a second factor: a code of the authenticator app or an
    /// unused recovery code (so a stolen password with a stolen access token changes no factor).
    #[schema(min_length = 1, max_length = 64, example = "123456")]
    pub code: Option<String>,
}

impl FromBody for FactorChangeRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let password = form.string("password").map(SecretString::from);
        let code = match form.optional_string("code") {
            Some(code) if code.trim().is_empty() => None,
            Some(code) if code.chars().count() > MAX_CODE_CHARS => {
                form.error(
                    "code",
                    format!("Ensure this field has no more than {MAX_CODE_CHARS} characters."),
                );
                None
            }
            other => other,
        };
        if form.has_errors("code") {
            return None;
        }
        Some(Self {
            password: password?,
            code,
        })
    }
}

/// Checks what a change of the account's second factors needs: the current password (under
/// the guessing bound) and, while a second factor guards the account, a TOTP or recovery code.
pub(crate) async fn verify_factor_change(
    state: &AppState,
    user: &AuthUser,
    meta: &RequestMeta,
    account: &User,
    request: &FactorChangeRequest,
) -> ApiResult<()> {
    verify_current_password(state, user, meta, &request.password, "password").await?;
    if !account.mfa.required() {
        return Ok(());
    }
    let Some(code) = &request.code else {
        return Err(ApiError::field(
            "code",
            "A code of your authenticator app or a recovery code is required while two-factor \
             authentication is on.",
        ));
    };
    match checked_second_factor(state, meta, user.user_id, account, code).await? {
        Some(_) => Ok(()),
        None => Err(wrong_code()),
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/mfa/recovery-codes/",
    tag = "mfa",
    summary = "Replace my recovery codes",
    description = "Ten new recovery codes, shown only this once; the earlier ones stop working \
        and the owner is mailed a notice. Needs a second factor on, the current password and a \
        code (wrong ones count against the guessing bound).",
    security(("bearer" = [])),
    request_body = FactorChangeRequest,
    responses(
        (status = 200, body = RecoveryCodes),
        (status = 400, description = "Wrong password (field `password`) or missing or wrong code (field `code`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 409, description = "No second factor is on (code `mfa_not_enabled`)", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong passwords or codes from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<FactorChangeRequest>,
) -> ApiResult<Json<RecoveryCodes>> {
    let id = user.user_id.to_string();
    let account = state.load_user(user.user_id).await?;
    if !account.mfa.required() {
        return Err(totp_not_enabled());
    }
    verify_factor_change(&state, &user, &meta, &account, &body).await?;
    let (batch_id, codes) = store_recovery_codes(&state, user.user_id).await?;
    let command = UserCommand::RegenerateRecoveryCodes {
        batch_id,
        count: codes.len() as u32,
        now: Utc::now(),
    };
    state
        .users
        .execute(&id, command, &meta)
        .await
        .map_err(user_error)?;
    // The replaced batch's rows stay (a code is only taken from the batch the account's events
    // name): deleting "all but mine" here could delete a concurrent regeneration's live codes.
    Ok(Json(RecoveryCodes {
        msg: "New recovery codes: the earlier ones no longer work.".to_owned(),
        recovery_codes: codes,
    }))
}

/// The second step of a login that answered `mfa_required`.
#[derive(ToSchema)]
pub struct SecondFactorLoginRequest {
    /// `mfa_token` of the login's answer.
    #[schema(value_type = String, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub mfa_token: ChallengeToken,
    /// A code of the authenticator app, or an unused recovery code.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$",
        example = "123456"
    )]
    pub code: String,
}

/// A challenge token read from a body: the session it names when genuine.
pub struct ChallengeToken(Option<Uuid>);

impl FromBody for SecondFactorLoginRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let token = form.string("mfa_token");
        let code = code_field(form);
        Some(Self {
            mfa_token: ChallengeToken(state.links.verify_challenge(&token?)),
            code: code?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/login/mfa/",
    tag = "session",
    summary = "Complete a login with a second factor",
    description = "For a login that answered `mfa_required`: the challenge's `mfa_token` and a \
        TOTP code (each code works once) or an unused recovery code answer the usual token \
        pair. A challenge works once, for `MFA_CHALLENGE_TTL` seconds and up to five wrong \
        codes; wrong codes also count against the account's guessing bound (429).",
    request_body = SecondFactorLoginRequest,
    responses(
        (status = 200, body = LoginResponse),
        (status = 400, description = "Wrong, expired or used code (field `code`); or `detail` for a body that is no JSON object", body = crate::api::error::BadRequest),
        (status = 401, description = "The challenge is not ours, expired, used, or spent by wrong codes (code `token_not_valid`)", body = crate::api::error::ErrorDetail),
        (status = 429, description = "Too many wrong codes for this account from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn login_second_factor(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<SecondFactorLoginRequest>,
) -> ApiResult<Json<LoginResponse>> {
    let (session_id, user_id, user) = live_challenge(&state, body.mfa_token.0).await?;
    let Some(factor) = checked_second_factor(&state, &meta, user_id, &user, &body.code).await?
    else {
        let method = match Code::parse(&body.code) {
            Code::Totp(_) => SecondFactor::Totp,
            Code::Recovery(_) => SecondFactor::RecoveryCode,
        };
        record_failure(&state, &meta, session_id, method).await;
        return Err(wrong_code());
    };
    start_session(
        &state,
        &meta,
        session_id,
        &user,
        aggregates::session::LoginMethod::Password,
        Some(factor),
    )
    .await
}

/// The session of a genuine challenge token (`None`: not one of ours), while its challenge is
/// live, with the user it is for: 401 `token_not_valid` otherwise.
pub(crate) async fn live_challenge(
    state: &AppState,
    session_id: Option<Uuid>,
) -> ApiResult<(Uuid, Uuid, User)> {
    let session_id = session_id.ok_or_else(invalid_challenge)?;
    let session = state
        .sessions
        .load(&session_id.to_string())
        .await
        .map_err(aggregate_error)?;
    let user_id = session
        .live_challenge(Utc::now())
        .ok_or_else(invalid_challenge)?
        .user_id;
    let user = state.load_user(user_id).await?;
    Ok((session_id, user_id, user))
}

/// Records a wrong second factor against the challenge of `session_id` (five spend it). A
/// challenge that ended meanwhile records nothing; a failure to record is logged.
pub(crate) async fn record_failure(
    state: &AppState,
    meta: &RequestMeta,
    session_id: Uuid,
    method: SecondFactor,
) {
    let command = SessionCommand::RecordSecondFactorFailure {
        method,
        now: Utc::now(),
    };
    match state
        .sessions
        .execute(&session_id.to_string(), command, meta)
        .await
    {
        Ok(_) | Err(AggregateError::UserError(_)) => {}
        Err(error) => tracing::warn!(%error, "cannot record a wrong second factor"),
    }
}

/// Starts the session `session_id` of `user` (completing its challenge when `second_factor` is
/// given) and answers the login's tokens.
pub(crate) async fn start_session(
    state: &AppState,
    meta: &RequestMeta,
    session_id: Uuid,
    user: &User,
    method: aggregates::session::LoginMethod,
    second_factor: Option<SecondFactor>,
) -> ApiResult<Json<LoginResponse>> {
    let user_id = user.id.ok_or(ApiError::InvalidToken)?;
    let id = session_id.to_string();
    let started_at = Utc::now();
    let command = SessionCommand::Start {
        session_id,
        user_id,
        token_epoch: user.token_epoch,
        method,
        second_factor,
        ttl: Duration::seconds(state.settings.refresh_token_ttl as i64),
        now: started_at,
    };
    let started = match state.sessions.execute(&id, command, meta).await {
        Ok(done) => done.last_sequence().unwrap_or(1),
        Err(AggregateError::UserError(
            SessionError::InvalidChallenge | SessionError::AlreadyStarted,
        )) => return Err(invalid_challenge()),
        Err(error) => return Err(aggregate_error(error)),
    };
    let tokens = token_pair(
        state,
        user_id,
        session_id,
        0,
        user.token_epoch,
        Some((started_at, started)),
    )?;
    Ok(Json(LoginResponse {
        msg: format!("Congrats {} your credentials verfied.", user.username),
        tokens,
    }))
}
