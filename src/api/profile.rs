//! Reading and updating the caller's profile.

use super::account::profile_json;
use crate::api::body::{JsonBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::AuthUser;
use aggregates::user::{ProfileChanges, UserCommand};
use axum::extract::State;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::Utc;
use serde_json::Value;
use url::Url;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/get/profile/", get(get_profile)),
        ("/accounts/api/update/profile/", post(update_profile)),
    ]
}

#[utoipa::path(get, path = "/accounts/api/get/profile/", tag = "account", summary = "Get user profile", security(("bearer" = [])), responses((status = 200, body = crate::api::openapi::Profile), (status = 401, description = "No or bad access token", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn get_profile(user: AuthUser) -> Json<Value> {
    Json(profile_json(&user.profile))
}

/// Most characters each free-text field takes.
const LIMITS: [(&str, usize); 4] = [
    ("country", 100),
    ("profession", 100),
    ("bio", 500),
    ("thoughts", 1000),
];
const IMAGE_URL_MAX: usize = 2048;

fn valid_image_url(raw: &str) -> bool {
    raw.is_empty()
        || (raw.chars().count() <= IMAGE_URL_MAX
            && Url::parse(raw)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .unwrap_or(false))
}

#[utoipa::path(post, path = "/accounts/api/update/profile/", tag = "account", summary = "Update user profile", security(("bearer" = [])), request_body = crate::api::openapi::ProfileUpdateRequest, responses((status = 200, description = "The whole profile, already updated", body = crate::api::openapi::Profile), (status = 400, description = "Field errors", body = crate::api::openapi::ValidationErrors), (status = 401, description = "No or bad access token", body = crate::api::openapi::ErrorDetail), (status = 415, description = "Not JSON", body = crate::api::openapi::ErrorDetail), (status = 413, description = "Body over 64 KiB", body = crate::api::openapi::ErrorDetail)))]
pub(crate) async fn update_profile(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    JsonBody(mut form): JsonBody,
) -> ApiResult<Json<Value>> {
    let mut texts = Vec::new();
    for (field, max) in LIMITS {
        let value = form.optional_string(field);
        if let Some(value) = &value {
            if value.chars().count() > max {
                form.error(
                    field,
                    format!("Ensure this field has no more than {max} characters."),
                );
            }
        }
        texts.push(value);
    }
    let image = form.optional_string("profile_img");
    if let Some(image) = &image {
        if image.chars().count() > IMAGE_URL_MAX {
            form.error(
                "profile_img",
                "Ensure this field has no more than 2048 characters.",
            );
        } else if !valid_image_url(image) {
            form.error("profile_img", "Enter a valid URL.");
        }
    }
    form.finish()?;
    let [country, profession, bio, thoughts]: [Option<String>; 4] = texts
        .try_into()
        .map_err(|_| ApiError::internal(anyhow::anyhow!("profile field count")))?;
    let changes = ProfileChanges {
        country,
        profession,
        bio,
        thoughts,
        profile_img: image,
    };
    let command = UserCommand::UpdateProfile {
        changes,
        now: Utc::now(),
    };
    state.execute_user(user.user_id, command, &meta).await?;
    let row = projections::profile::find(&state.pool, user.user_id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    Ok(Json(profile_json(&row)))
}
