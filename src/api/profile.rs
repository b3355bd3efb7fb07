//! Reading and updating the caller's profile.

use crate::api::body::{Body, Form, FromBody, RequestMeta};
use crate::api::error::{ApiError, ApiResult};
use crate::api::state::AppState;
use crate::auth::AuthUser;
use aggregates::user::{ProfileChanges, UserCommand};
use axum::extract::State;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use chrono::Utc;
use projections::profile::ProfileRow;
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/get/profile/", get(get_profile)),
        ("/accounts/api/update/profile/", post(update_profile)),
    ]
}

/// The profile of the contract; a field never set is `""`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Profile {
    pub username: String,
    pub email: String,
    pub country: String,
    pub profession: String,
    pub bio: String,
    pub thoughts: String,
    /// `""` or an absolute http(s) URL.
    pub profile_img: String,
}

impl From<&ProfileRow> for Profile {
    fn from(row: &ProfileRow) -> Self {
        Self {
            username: row.username.clone(),
            email: row.email.clone(),
            country: row.country.clone(),
            profession: row.profession.clone(),
            bio: row.bio.clone(),
            thoughts: row.thoughts.clone(),
            profile_img: row.profile_img.clone(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/accounts/api/get/profile/",
    tag = "account",
    summary = "Get user profile",
    security(("bearer" = [])),
    responses((status = 200, body = Profile))
)]
pub(crate) async fn get_profile(user: AuthUser) -> Json<Profile> {
    Json(Profile::from(&user.profile))
}

/// The body of `update/profile/`: every field is optional, and a field left out keeps its value;
/// `""` clears one. `null` is no value (400).
#[derive(Debug, Default, ToSchema)]
pub struct ProfileUpdateRequest {
    #[schema(
        nullable = false,
        max_length = 100,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
    )]
    pub country: Option<String>,
    #[schema(
        nullable = false,
        max_length = 100,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
    )]
    pub profession: Option<String>,
    #[schema(
        nullable = false,
        max_length = 500,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
    )]
    pub bio: Option<String>,
    #[schema(
        nullable = false,
        max_length = 1000,
        pattern = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"
    )]
    pub thoughts: Option<String>,
    /// `""` or an absolute http(s) URL: a host name, an optional port, then printable ASCII
    /// (percent-encode the rest). The pattern is the check the service makes.
    #[schema(
        nullable = false,
        max_length = 2048,
        pattern = "^(https?://([A-Za-z0-9-]+\\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,5})?(/[!-~]*)?)?$",
        example = "https://example.com/me.png"
    )]
    pub profile_img: Option<String>,
}

/// Most characters each free-text field takes.
const LIMITS: [(&str, usize); 4] = [
    ("country", 100),
    ("profession", 100),
    ("bio", 500),
    ("thoughts", 1000),
];
const IMAGE_URL_MAX: usize = 2048;

/// What `profile_img` takes: the `pattern` its schema shows (a test holds the two together).
const IMAGE_URL_PATTERN: &str =
    r"^(https?://([A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*(:[0-9]{1,5})?(/[!-~]*)?)?$";

fn valid_image_url(raw: &str) -> bool {
    static PATTERN: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(IMAGE_URL_PATTERN).ok());
    PATTERN
        .as_ref()
        .is_some_and(|pattern| pattern.is_match(raw))
}

impl FromBody for ProfileUpdateRequest {
    fn read(form: &mut Form, _: &AppState) -> Option<Self> {
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
        let [country, profession, bio, thoughts]: [Option<String>; 4] = texts.try_into().ok()?;
        Some(Self {
            country,
            profession,
            bio,
            thoughts,
            profile_img: image,
        })
    }
}

#[utoipa::path(
    post,
    path = "/accounts/api/update/profile/",
    tag = "account",
    summary = "Update user profile",
    security(("bearer" = [])),
    request_body = ProfileUpdateRequest,
    responses((status = 200, description = "The whole profile, already updated", body = Profile))
)]
pub(crate) async fn update_profile(
    State(state): State<AppState>,
    user: AuthUser,
    meta: RequestMeta,
    Body(body): Body<ProfileUpdateRequest>,
) -> ApiResult<Json<Profile>> {
    let changes = ProfileChanges {
        country: body.country,
        profession: body.profession,
        bio: body.bio,
        thoughts: body.thoughts,
        profile_img: body.profile_img,
    };
    let command = UserCommand::UpdateProfile {
        changes,
        now: Utc::now(),
    };
    state.execute_user(user.user_id, command, &meta).await?;
    let row = projections::profile::find(&state.pool, user.user_id)
        .await?
        .ok_or(ApiError::InvalidToken)?;
    Ok(Json(Profile::from(&row)))
}

#[cfg(test)]
mod tests {
    use super::{valid_image_url, IMAGE_URL_PATTERN};

    #[test]
    fn the_image_url_check_is_the_documented_pattern() {
        let document = serde_json::to_value(crate::api::openapi::document()).unwrap();
        let shown = &document["components"]["schemas"]["ProfileUpdateRequest"]["properties"]
            ["profile_img"]["pattern"];
        assert_eq!(shown, IMAGE_URL_PATTERN);
        for good in [
            "",
            "https://example.com/me.png",
            "http://localhost:3000/a?b=c#d",
        ] {
            assert!(valid_image_url(good), "{good}");
        }
        for bad in [
            "ftp://example.com/x",
            "https://",
            "https://exa mple.com/",
            "https://example.com/\u{89}",
            "https://1.2.3.999/",
            "javascript:alert(1)",
        ] {
            assert!(!valid_image_url(bad), "{bad}");
        }
    }
}
