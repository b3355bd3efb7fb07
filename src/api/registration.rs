//! Registration, resend of the activation link, activation.

use super::{msg, Msg};
use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::links::{parse_uidb64, Purpose};
use crate::auth::policy;
use crate::store;
use crate::store::commands::sqlstate;
use aggregates::user::{LinkIssue, UserCommand};
use aggregates::values::{Email, Username};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, MethodRouter};
use axum::Json;
use chrono::{Duration, Utc};
use cqrs_es::AggregateError;
use secrecy::{ExposeSecret, SecretString};
use utoipa::ToSchema;
use uuid::Uuid;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/registration/", post(register)),
        (
            "/accounts/api/get/acctivation/token/",
            post(resend_activation),
        ),
        (
            "/accounts/api/get/accttivation/token/",
            post(resend_activation),
        ),
        (
            "/accounts/api/get/activation/token/",
            post(resend_activation),
        ),
        (
            "/accounts/api/verify/token/{uidb64}/{token}/",
            post(activate),
        ),
    ]
}

/// The body of `registration/`.
#[derive(ToSchema)]
pub struct RegistrationRequest {
    /// Letters, digits and `@.+-_` (after NFKC normalisation), of one script; unique in its
    /// case-folded, confusable-free form.
    #[schema(value_type = String, min_length = 1, max_length = 150, pattern = "^[\\w.@+-]+$", example = "krishna")]
    pub username: Username,
    /// A deliverable address (dot-atom local part, a DNS host name); unique case-insensitively.
    #[schema(value_type = String, format = Email, max_length = 254, example = "krishna@example.com")]
    pub email: Email,
    /// 8–1024 characters; not entirely numeric, not common, not similar to the username or the
    /// e-mail address (else field errors).
    #[schema(value_type = String, format = Password, min_length = 8, max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$", example = "correct horse battery staple")]
    pub password: SecretString,
    /// The same password again (else a `non_field_errors` error).
    #[schema(value_type = String, format = Password, min_length = 1, pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$", example = "correct horse battery staple")]
    pub confirm_password: SecretString,
    /// An absolute http(s) URL whose origin is in `ALLOWED_LINK_ORIGINS`; the mailed link is this
    /// followed by `<uidb64>/<token>/`.
    #[schema(pattern = "^https?://", example = "http://localhost:3000/activate/")]
    pub verification_base_url: String,
}

impl FromBody for RegistrationRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let username = form.parsed("username", Username::parse);
        let email = form.parsed("email", Email::parse);
        let (password, confirm_password) = password_fields(form, "password");
        let base = link_base_field(state, form, None);
        Some(Self {
            username: username?,
            email: email?,
            password: password?,
            confirm_password: confirm_password?,
            verification_base_url: base?,
        })
    }
}

/// The body of `get/acctivation/token/` and its two other spellings.
#[derive(ToSchema)]
pub struct ResendActivationRequest {
    /// The address the account registered with.
    #[schema(value_type = String, format = Email, max_length = 254, example = "krishna@example.com")]
    pub email: Email,
    /// As in registration.
    #[schema(pattern = "^https?://", example = "http://localhost:3000/activate/")]
    pub verification_base_url: String,
}

impl FromBody for ResendActivationRequest {
    fn read(form: &mut Form, state: &AppState) -> Option<Self> {
        let email = form.parsed("email", Email::parse);
        let base = link_base_field(state, form, None);
        Some(Self {
            email: email?,
            verification_base_url: base?,
        })
    }
}

const LINK_BASE_ERROR: &str =
    "Enter a valid URL whose origin is allowed for links (an absolute http or https URL).";

/// `verification_base_url`, checked against the allow-list of link origins: required when
/// `default` is `None`, else `default` when the body has none.
pub fn link_base_field(state: &AppState, form: &mut Form, default: Option<&str>) -> Option<String> {
    let raw = match default {
        None => form.string("verification_base_url")?,
        Some(default) => match form.optional_string("verification_base_url") {
            None => return Some(default.to_owned()),
            Some(raw) => raw,
        },
    };
    let base = state.link_base(&raw);
    if base.is_none() {
        form.error("verification_base_url", LINK_BASE_ERROR);
    }
    base
}

/// Reads a new password (under `field`) and its confirmation (`confirm_password`).
pub fn password_fields(
    form: &mut Form,
    field: &str,
) -> (Option<SecretString>, Option<SecretString>) {
    let password = form.string(field).map(SecretString::from);
    let confirm = form.string("confirm_password").map(SecretString::from);
    (password, confirm)
}

/// Applies the password policy under `field`, then the confirmation check, as Django does. The
/// policy's strength estimate is CPU work: it runs on a hashing slot, never on the async runtime.
pub async fn check_new_password(
    state: &AppState,
    form: &mut Form,
    field: &str,
    (password, confirm): (&SecretString, &SecretString),
    attributes: &[(&str, &str)],
) -> ApiResult<()> {
    let candidate = password.clone();
    let attributes: Vec<(String, String)> = attributes
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let messages = state
        .hasher
        .run_bounded("policy", move || {
            let attributes: Vec<(&str, &str)> = attributes
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            policy::check(candidate.expose_secret(), &attributes)
        })
        .await
        .map_err(hash_error)?;
    for message in messages {
        form.error(field, message);
    }
    if confirm.expose_secret() != password.expose_secret() && !form.has_errors(field) {
        form.error(
            "non_field_errors",
            "Password and confirm password doesn't match",
        );
    }
    Ok(())
}

pub(crate) fn hash_error(error: crate::auth::password::HashError) -> ApiError {
    match error {
        crate::auth::password::HashError::Busy => ApiError::Overloaded {
            retry_after_secs: 1,
        },
        crate::auth::password::HashError::Failed(e) => ApiError::Internal(e),
    }
}

pub(crate) fn aggregate_error<E: std::error::Error + Send + Sync + 'static>(
    error: AggregateError<E>,
) -> ApiError {
    match error {
        // A token of an account deleted meanwhile (in another process, say).
        AggregateError::UserError(ref refused)
            if (refused as &dyn std::any::Any).downcast_ref::<aggregates::UserError>()
                == Some(&aggregates::UserError::Deleted) =>
        {
            ApiError::InvalidToken
        }
        AggregateError::DatabaseConnectionError(inner) | AggregateError::UnexpectedError(inner)
            if inner
                .downcast_ref::<sqlx::Error>()
                .is_some_and(crate::api::error::database_unavailable) =>
        {
            ApiError::Unavailable
        }
        AggregateError::DatabaseConnectionError(_) => ApiError::Unavailable,
        other => ApiError::internal(anyhow::anyhow!("command failed: {other}")),
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/registration/",
    tag = "registration",
    summary = "New user registration",
    description = "Creates an inactive account and mails an activation link: \
        `verification_base_url` + `<uidb64>/<token>/`. The front end serving that URL takes \
        `uidb64` and `token` from it and POSTs them to \
        `/accounts/api/verify/token/{uidb64}/{token}/` (see `links`). An address registered \
        already gets the same answer, and its owner a notice instead.",
    request_body = RegistrationRequest,
    responses(
        (status = 201, description = "Registered (or the address was registered already)", body = Msg),
    )
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<RegistrationRequest>,
) -> ApiResult<(StatusCode, Json<Msg>)> {
    let RegistrationRequest {
        username,
        email,
        password,
        confirm_password,
        verification_base_url: base,
    } = body;
    let attributes = [
        ("username", username.as_str()),
        ("email address", email.as_str()),
    ];
    let mut errors = Form::default();
    check_new_password(
        &state,
        &mut errors,
        "password",
        (&password, &confirm_password),
        &attributes,
    )
    .await?;
    errors.finish()?;

    let created = (
        StatusCode::CREATED,
        msg(format!(
            "Congrats! {username} your successfully registered to continue login we have sent an account activation email to activate your account. Please verify you email address thank you by admin(krishna)."
        )),
    );
    let hash = state.hasher.hash(&password).await.map_err(hash_error)?;
    let (user_id, credential_id) = (Uuid::now_v7(), Uuid::new_v4());
    store::insert_credential(&state.pool, credential_id, user_id, &hash).await?;
    let command = UserCommand::Register {
        user_id,
        username,
        email: email.clone(),
        credential_id,
        activation: LinkIssue {
            request_id: Uuid::new_v4(),
            base_url: base,
            ttl: Duration::seconds(state.settings.activation_link_ttl as i64),
        },
        now: Utc::now(),
    };
    let id = user_id.to_string();
    match state.users.execute(&id, command, &meta).await {
        // No read-your-writes wait here: nobody reads an inactive account, and the answer must
        // take as long as the one for a registered address.
        Ok(_) => Ok(created),
        Err(error) => {
            store::delete_credential(&state.pool, credential_id).await?;
            match sqlstate(&error).as_deref() {
                Some(store::EMAIL_TAKEN) => {
                    notify_owner(&state, &email, &meta);
                    Ok(created)
                }
                Some(store::USERNAME_TAKEN) => Err(ApiError::field(
                    "username",
                    "A user with that username already exists.",
                )),
                _ => Err(aggregate_error(error)),
            }
        }
    }
}

/// The address is registered already: the owner is told (at most once per interval).
fn notify_owner(state: &AppState, email: &Email, meta: &RequestMeta) {
    let now = Utc::now();
    state.execute_for_email_in_background(
        email.as_str().to_owned(),
        move |_| UserCommand::NoteDuplicateRegistration { now },
        meta.clone(),
    );
}

#[utoipa::path(
    post,
    path = "/accounts/api/get/acctivation/token/",
    tag = "registration",
    summary = "Get new account activation token",
    description = "Also served at `/accounts/api/get/accttivation/token/` and \
        `/accounts/api/get/activation/token/`. The same answer for every well-formed body; only \
        an existing inactive account is mailed a new link (as in registration), which makes \
        every older link invalid.",
    request_body = ResendActivationRequest,
    responses((status = 200, body = Msg))
)]
pub(crate) async fn resend_activation(
    State(state): State<AppState>,
    meta: RequestMeta,
    Body(body): Body<ResendActivationRequest>,
) -> ApiResult<Json<Msg>> {
    let ResendActivationRequest {
        email,
        verification_base_url: base,
    } = body;
    state.issue_link_in_background(
        &email,
        base,
        state.settings.activation_link_ttl,
        meta,
        |link, now| UserCommand::IssueActivationLink { link, now },
    );
    Ok(msg("We have send you account activation link at your registered email address. If you don't receive email than please make sure you have enter registered email address. Thank you!"))
}

fn invalid_activation() -> ApiError {
    ApiError::detail(
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "Activation link is invalid or expired!",
    )
}

#[utoipa::path(
    post,
    path = "/accounts/api/verify/token/{uidb64}/{token}/",
    tag = "registration",
    summary = "Activate user account by email verification",
    description = "The mailed activation link is `<verification_base_url><uidb64>/<token>/`: \
        the front end POSTs its two last path segments here, with no body. GET is 405, so mail \
        scanners that open links activate nothing. After it, the account logs in.",
    params(
        ("uidb64" = String, Path, description = "Unpadded url-safe base64 of the user id, from the mailed link"),
        ("token" = String, Path, description = "The single-use token from the mailed link"),
    ),
    responses(
        (status = 200, body = Msg),
        (status = 400, description = "Invalid, expired, used or superseded link (code `invalid_token`)", body = crate::api::error::BadRequest),
    )
)]
pub(crate) async fn activate(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path((uidb64, token)): Path<(String, String)>,
) -> ApiResult<Json<Msg>> {
    let user_id = parse_uidb64(&uidb64).ok_or_else(invalid_activation)?;
    let request_id = state
        .links
        .verify_link(Purpose::Activation, user_id, &token)
        .ok_or_else(invalid_activation)?;
    let id = user_id.to_string();
    let command = UserCommand::Activate {
        request_id,
        now: Utc::now(),
    };
    match state.users.execute(&id, command, &meta).await {
        Ok(done) => {
            state
                .sync_read_models("User", &id, done.last_sequence())
                .await?;
            Ok(msg(
                "Your account has been activated successfully. You can now log in.",
            ))
        }
        Err(AggregateError::UserError(_)) => {
            // A link we mailed, refused: the funnel records why, before the answer, so that the
            // history shows it before whatever the client does next.
            let command = UserCommand::RecordActivationRefusal {
                request_id,
                now: Utc::now(),
            };
            if let Err(error) = state.users.execute(&id, command, &meta).await {
                tracing::warn!(%error, "cannot record a refused activation link");
            }
            Err(invalid_activation())
        }
        Err(error) => Err(aggregate_error(error)),
    }
}
