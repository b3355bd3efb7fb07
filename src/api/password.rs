//! Changing a password, and resetting a forgotten one by e-mailed link.

use super::registration::{
    aggregate_error, check_new_password, hash_error, link_base_field, password_fields,
};
use super::{msg, Msg};
use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::links::{parse_uidb64, Purpose};
use crate::auth::throttle::source_of;
use crate::auth::AuthUser;
use crate::store;
use aggregates::user::{UserCommand, UserError};
use aggregates::values::Email;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, MethodRouter};
use axum::Json;
use chrono::Utc;
use cqrs_es::AggregateError;
use secrecy::SecretString;
use utoipa::ToSchema;
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/change/password/", post(change_password)),
        ("/accounts/api/forget/password/", post(forgot_password)),
        (
            "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
            post(set_new_password),
        ),
    ]
}

/// The body of `change/password/`.
#[derive(ToSchema)]
pub struct ChangePasswordRequest {
    /// The current password (a wrong one is a field error, and counts as a guess).
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub old_password: SecretString,
    /// As the password of a registration.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub new_password: SecretString,
    /// `new_password` again.
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub confirm_password: SecretString,
}

impl FromBody for ChangePasswordRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let old = form.string("old_password").map(SecretString::from);
        let (new, confirm) = password_fields(form, "new_password");
        Some(Self {
            old_password: old?,
            new_password: new?,
            confirm_password: confirm?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/change/password/",
    tag = "password",
    summary = "Change old password",
    description = "Ends every session of the account (refresh and access tokens issued before, \
        this one's included) and mails a notice. Wrong old passwords count against the same \
        bound as logins (429).",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, body = Msg),
        (status = 429, description = "Too many wrong old passwords from this client address: wait `Retry-After` seconds", body = crate::api::error::ErrorDetail),
    )
)]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<ChangePasswordRequest>,
) -> ApiResult<Json<Msg>> {
    let ChangePasswordRequest {
        old_password: old,
        new_password,
        confirm_password,
    } = body;

    verify_current_password(&state, &user, &meta, &old, "old_password").await?;
    let attributes = [
        ("username", user.profile.username.as_str()),
        ("email address", user.profile.email.as_str()),
    ];
    let mut errors = Form::default();
    check_new_password(
        &state,
        &mut errors,
        "new_password",
        (&new_password, &confirm_password),
        &attributes,
    )
    .await?;
    errors.finish()?;
    let hash = state.hasher.hash(&new_password).await.map_err(hash_error)?;
    let credential_id = Uuid::new_v4();
    store::insert_credential(&state.pool, credential_id, user.user_id, &hash).await?;
    let command = UserCommand::ChangePassword {
        credential_id,
        now: Utc::now(),
    };
    state.execute_user(user.user_id, command, &meta).await?;
    state
        .throttle
        .password_replaced(
            &store::email_identity(&state.vault, &user.profile.email),
            &source_of(meta.ip.as_deref()),
        )
        .await?;
    Ok(msg("Password changed successfully!"))
}

/// Checks the caller's current password, given in the body's `field`: a field error when wrong.
/// It is guessed against the same bound as a login (429), so a stolen access token is no
/// guessing oracle; checked before anything else of the request costs CPU.
pub(crate) async fn verify_current_password(
    state: &AppState,
    user: &AuthUser,
    meta: &RequestMeta,
    password: &SecretString,
    field: &str,
) -> ApiResult<()> {
    let key = store::email_identity(&state.vault, &user.profile.email);
    let source = source_of(meta.ip.as_deref());
    let check = async {
        let account = state.load_user(user.user_id).await?;
        let hash = match account.credential_id {
            Some(credential) => store::password_hash(&state.pool, credential).await?,
            None => None,
        };
        let right = state
            .hasher
            .verify(password, hash)
            .await
            .map_err(hash_error)?;
        Ok(right.then_some(()))
    };
    match state.throttle.guess(&key, &source, check).await? {
        Some(()) => Ok(()),
        None => {
            let message = if field == "old_password" {
                "Old password is incorrect."
            } else {
                "Password is incorrect."
            };
            Err(ApiError::field(field, message))
        }
    }
}

/// The body of `forget/password/`.
#[derive(ToSchema)]
pub struct ForgotPasswordRequest {
    #[schema(value_type = String, format = Email, max_length = 254, example = "krishna@example.com")]
    pub email: Email,
    /// As in registration; `DEFAULT_LINK_BASE_URL` when absent.
    #[schema(
        nullable = false,
        pattern = "^https?://",
        example = "http://localhost:3000/reset-password/"
    )]
    pub verification_base_url: Option<String>,
}

impl FromBody for ForgotPasswordRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let email = form.parsed("email", Email::parse);
        let base = link_base_field(
            state,
            form,
            Some(state.settings.default_link_base_url.as_str()),
        );
        Some(Self {
            email: email?,
            verification_base_url: Some(base?),
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/forget/password/",
    tag = "password",
    summary = "Forget reset password link",
    description = "Mails a reset link `<verification_base_url><uidb64>/<token>/` to a registered \
        address. The front end serving that URL asks for the new password and POSTs it with \
        `uidb64` and `token` to `/accounts/api/set/new/forget/password/{uidb64}/{token}/`. The \
        same answer whether or not the address is registered; a new link makes older ones \
        invalid.",
    request_body = ForgotPasswordRequest,
    responses((status = 200, body = Msg))
)]
pub(crate) async fn forgot_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<ForgotPasswordRequest>,
) -> ApiResult<Json<Msg>> {
    let ForgotPasswordRequest {
        email,
        verification_base_url,
    } = body;
    let base =
        verification_base_url.unwrap_or_else(|| state.settings.default_link_base_url.clone());
    state.issue_link_in_background(
        &email,
        base,
        state.settings.reset_link_ttl,
        meta,
        |link, now| UserCommand::RequestPasswordReset { link, now },
    );
    Ok(msg("If this email address is registered, we have sent a password reset link to it. Please check your inbox."))
}

fn invalid_reset() -> ApiError {
    ApiError::detail(
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "Reset link is invalid or expired!",
    )
}

/// The body of `set/new/forget/password/{uidb64}/{token}/`.
#[derive(ToSchema)]
pub struct SetNewPasswordRequest {
    /// As the password of a registration.
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub new_password: SecretString,
    /// `new_password` again.
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$")]
    pub confirm_password: SecretString,
}

impl FromBody for SetNewPasswordRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
        let (new, confirm) = password_fields(form, "new_password");
        Some(Self {
            new_password: new?,
            confirm_password: confirm?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
    tag = "password",
    summary = "Set new forget password",
    description = "The mailed reset link is `<verification_base_url><uidb64>/<token>/`: the \
        front end POSTs its two last path segments here with the new password. Ends every \
        session, mails a notice, activates an account not yet activated; it does not log in.",
    params(
        ("uidb64" = String, Path, description = "Unpadded url-safe base64 of the user id, from the mailed link"),
        ("token" = String, Path, description = "The single-use token from the mailed link"),
    ),
    request_body = SetNewPasswordRequest,
    responses(
        (status = 200, body = Msg),
        (status = 400, description = "Field errors, or an invalid, expired, used or superseded link (code `invalid_token`)", body = crate::api::error::BadRequest),
    )
)]
pub(crate) async fn set_new_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path((uidb64, token)): Path<(String, String)>,
    Body(body): Body<SetNewPasswordRequest>,
) -> ApiResult<Json<Msg>> {
    let user_id = parse_uidb64(&uidb64).ok_or_else(invalid_reset)?;
    let request_id = state
        .links
        .verify_link(Purpose::PasswordReset, user_id, &token)
        .ok_or_else(invalid_reset)?;
    let id = user_id.to_string();
    let account = state.load_user(user_id).await?;
    let now = Utc::now();
    let live = account
        .reset
        .as_ref()
        .is_some_and(|link| link.request_id == request_id && now < link.expires_at);
    if !live {
        return Err(invalid_reset());
    }
    let attributes = [
        ("username", account.username.as_str()),
        ("email address", account.email.as_str()),
    ];
    let mut errors = Form::default();
    check_new_password(
        &state,
        &mut errors,
        "new_password",
        (&body.new_password, &body.confirm_password),
        &attributes,
    )
    .await?;
    errors.finish()?;

    let hash = state
        .hasher
        .hash(&body.new_password)
        .await
        .map_err(hash_error)?;
    let credential_id = Uuid::new_v4();
    store::insert_credential(&state.pool, credential_id, user_id, &hash).await?;
    let command = UserCommand::ResetPassword {
        request_id,
        credential_id,
        now,
    };
    match state.users.execute(&id, command, &meta).await {
        Ok(done) => {
            // The mail proved ownership: any login back-off of the account ends here.
            state
                .throttle
                .password_replaced(
                    &store::email_identity(&state.vault, &account.email),
                    &source_of(meta.ip.as_deref()),
                )
                .await?;
            state
                .sync_read_models("User", &id, done.last_sequence())
                .await?;
            Ok(msg(
                "Your password has been reset. Please log in with your new password.",
            ))
        }
        Err(AggregateError::UserError(UserError::InvalidResetLink | UserError::NotFound)) => {
            store::delete_credential(&state.pool, credential_id).await?;
            Err(invalid_reset())
        }
        Err(error) => Err(aggregate_error(error)),
    }
}
