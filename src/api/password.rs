//! Changing a password, and resetting a forgotten one by e-mailed link.

use super::msg;
use super::registration::{
    aggregate_error, check_new_password, hash_error, link_base_field, password_pair,
};
use crate::api::body::{JsonBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::links::{parse_uidb64, Purpose};
use crate::auth::throttle::source_of;
use crate::auth::AuthUser;
use crate::store;
use aggregates::user::{UserCommand, UserError};
use aggregates::values::email_key;
use aggregates::values::Email;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, MethodRouter};
use axum::Json;
use chrono::Utc;
use cqrs_es::AggregateError;
use secrecy::SecretString;
use serde_json::Value;
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

#[utoipa::path(post, path = "/accounts/api/change/password/", tag = "password", summary = "Change old password", security(("bearer" = [])), description = "Revokes every refresh token and access token issued before, and mails a notice.", request_body = crate::api::openapi::ChangePasswordRequest, responses((status = 200, body = crate::api::openapi::Msg), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 401, description = "No or bad access token", body = crate::api::openapi::ErrorDetail), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail), (status = 429, description = "Too many wrong old passwords from this source: wait `Retry-After` seconds", body = crate::api::openapi::ErrorDetail), (status = 503, description = "Password hashing saturated; see Retry-After", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn change_password(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    JsonBody(mut form): JsonBody,
) -> ApiResult<Json<Value>> {
    let old = form.string("old_password").map(SecretString::from);
    let new = password_pair(&mut form, "new_password");
    let (Some(old), Some(new)) = (old, new) else {
        return Err(form.into_error());
    };
    form.finish()?;

    // The old password is guessed against the same bound as a login: a stolen access token is
    // no guessing oracle. It is checked before the new one's policy, so that a flood of guesses
    // is refused before it costs any CPU.
    let key = email_key(&user.profile.email);
    let source = source_of(meta.ip.as_deref());
    state.throttle.admit(&key, &source).await??;
    let id = user.user_id.to_string();
    let checked = async {
        let account = state.users.load(&id).await.map_err(aggregate_error)?;
        let hash = match account.credential_id {
            Some(credential) => store::password_hash(&state.pool, credential).await?,
            None => None,
        };
        state.hasher.verify(&old, hash).await.map_err(hash_error)
    }
    .await;
    match checked {
        Ok(true) => state.throttle.succeeded(&key, &source).await?,
        Ok(false) => {
            return Err(ApiError::field(
                "old_password",
                "Old password is incorrect.",
            ))
        }
        Err(error) => {
            state.throttle.refund(&key, &source).await;
            return Err(error);
        }
    }
    let attributes = [
        ("username", user.profile.username.as_str()),
        ("email address", user.profile.email.as_str()),
    ];
    check_new_password(&state, &mut form, "new_password", &new, &attributes).await?;
    form.finish()?;
    let hash = state.hasher.hash(&new.0).await.map_err(hash_error)?;
    let credential_id = Uuid::new_v4();
    store::insert_credential(&state.pool, credential_id, user.user_id, &hash).await?;
    let command = UserCommand::ChangePassword {
        credential_id,
        now: Utc::now(),
    };
    state.execute_user(user.user_id, command, &meta).await?;
    state.throttle.password_replaced(&key, &source).await?;
    Ok(msg("Password changed successfully!"))
}

#[utoipa::path(post, path = "/accounts/api/forget/password/", tag = "password", summary = "Forget reset password link", description = "Mails a reset link `<verification_base_url><uidb64>/<token>/` (the configured default base when absent); the front end serving it POSTs the new password to `/accounts/api/set/new/forget/password/{uidb64}/{token}/`. The same answer whether or not the address is registered.", request_body = crate::api::openapi::ForgotPasswordRequest, responses((status = 200, body = crate::api::openapi::Msg), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn forgot_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    JsonBody(mut form): JsonBody,
) -> ApiResult<Json<Value>> {
    let email = form.parsed("email", Email::parse);
    let base = link_base_field(
        &state,
        &mut form,
        Some(state.settings.default_link_base_url.as_str()),
    );
    let (Some(email), Some(base)) = (email, base) else {
        return Err(form.into_error());
    };
    form.finish()?;
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

#[utoipa::path(post, path = "/accounts/api/set/new/forget/password/{uidb64}/{token}/", tag = "password", summary = "Set new forget password", description = "The mailed reset link is `<verification_base_url><uidb64>/<token>/`: POST its two last path segments here with the new password. Revokes every session, mails a notice, activates an inactive account; does not log in.", params(("uidb64" = String, Path, description = "Unpadded url-safe base64 of the user id"), ("token" = String, Path, description = "Single-use token from the mail")), request_body = crate::api::openapi::SetNewPasswordRequest, responses((status = 200, body = crate::api::openapi::Msg), (status = 400, description = "Field errors, or an invalid, expired, used or superseded link (code invalid_token)", body = crate::api::openapi::ErrorDetail), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn set_new_password(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path((uidb64, token)): Path<(String, String)>,
    JsonBody(mut form): JsonBody,
) -> ApiResult<Json<Value>> {
    let Some(pair) = password_pair(&mut form, "new_password") else {
        return Err(form.into_error());
    };
    form.finish()?;
    let user_id = parse_uidb64(&uidb64).ok_or_else(invalid_reset)?;
    let request_id = state
        .links
        .verify_link(Purpose::PasswordReset, user_id, &token)
        .ok_or_else(invalid_reset)?;
    let id = user_id.to_string();
    let account = state.users.load(&id).await.map_err(aggregate_error)?;
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
    check_new_password(&state, &mut form, "new_password", &pair, &attributes).await?;
    form.finish()?;

    let hash = state.hasher.hash(&pair.0).await.map_err(hash_error)?;
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
                .password_replaced(&email_key(&account.email), &source_of(meta.ip.as_deref()))
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
