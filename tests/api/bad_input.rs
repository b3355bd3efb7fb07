//! Bad input on every endpoint: the contract's error, and nothing stored.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every endpoint that takes a body, with a valid body for it.
fn endpoints() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/accounts/api/registration/",
            json!({"username": "x", "email": "x@example.com", "password": PASSWORD,
                   "confirm_password": PASSWORD, "verification_base_url": LINK_BASE}),
        ),
        (
            "/accounts/api/get/acctivation/token/",
            json!({"email": "x@example.com", "verification_base_url": LINK_BASE}),
        ),
        (
            "/accounts/api/login/",
            json!({"email": "x@example.com", "password": PASSWORD}),
        ),
        ("/accounts/api/update/profile/", json!({"country": "x"})),
        (
            "/accounts/api/change/password/",
            json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}),
        ),
        (
            "/accounts/api/forget/password/",
            json!({"email": "x@example.com"}),
        ),
        (
            "/accounts/api/set/new/forget/password/dXNlcg/token/",
            json!({"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}),
        ),
        (
            "/accounts/api/token/refresh/",
            json!({"refresh_token": "x"}),
        ),
        ("/accounts/api/logout/", json!({"refresh_token": "x"})),
    ]
}

#[tokio::test]
async fn malformed_wrong_type_oversized_and_non_object_bodies_get_the_contracts_errors() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("xena", "xena@example.com").await;
    let before = app.event_count().await;
    for (path, _) in endpoints() {
        let send = |content_type: &'static str, body: Vec<u8>| {
            app.client
                .post(app.url(path))
                .bearer_auth(&access)
                .header("content-type", content_type)
                .body(body)
                .send()
        };
        let body = json_of(
            send("application/json", b"{\"email\": ".to_vec())
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .starts_with("JSON parse error - "),
            "{path}: {body}"
        );

        let body = json_of(
            send("text/plain", b"{}".to_vec()).await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
        assert_eq!(
            body,
            json!({"detail": "Unsupported media type \"text/plain\" in request."}),
            "{path}"
        );

        let big = format!("{{\"email\": \"{}\"}}", "a".repeat(70 * 1024)).into_bytes();
        let body = json_of(
            send("application/json", big).await.unwrap(),
            StatusCode::PAYLOAD_TOO_LARGE,
        )
        .await;
        assert_eq!(body["code"], "payload_too_large", "{path}");

        let body = json_of(
            send("application/json", b"[1, 2]".to_vec()).await.unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(
            body,
            json!({"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]}),
            "{path}"
        );
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn missing_null_and_wrongly_typed_fields_are_reported_per_field() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("yuri", "yuri@example.com").await;
    let before = app.event_count().await;
    for (path, valid) in endpoints() {
        let fields: Vec<String> = valid.as_object().unwrap().keys().cloned().collect();
        for field in &fields {
            let optional = path.ends_with("update/profile/");
            let mut body = valid.clone();
            body[field.as_str()] = json!(12);
            let errors = json_of(
                app.post_authed(path, &access, &body).await,
                StatusCode::BAD_REQUEST,
            )
            .await;
            assert_eq!(
                errors[field.as_str()],
                json!(["Not a valid string."]),
                "{path} {field}"
            );

            body[field.as_str()] = Value::Null;
            let errors = json_of(
                app.post_authed(path, &access, &body).await,
                StatusCode::BAD_REQUEST,
            )
            .await;
            assert_eq!(
                errors[field.as_str()],
                json!(["This field may not be null."]),
                "{path} {field}"
            );

            if !optional {
                body.as_object_mut().unwrap().remove(field.as_str());
                let errors = json_of(
                    app.post_authed(path, &access, &body).await,
                    StatusCode::BAD_REQUEST,
                )
                .await;
                assert_eq!(
                    errors[field.as_str()],
                    json!(["This field is required."]),
                    "{path} {field}"
                );
            }
        }
    }
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn profile_updates_are_validated_and_change_nothing_when_refused() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("zoe", "zoe@example.com").await;
    let before = app.event_count().await;
    let cases = [
        (
            json!({"country": "x".repeat(101)}),
            "country",
            "Ensure this field has no more than 100 characters.",
        ),
        (
            json!({"profession": "x".repeat(101)}),
            "profession",
            "Ensure this field has no more than 100 characters.",
        ),
        (
            json!({"bio": "x".repeat(501)}),
            "bio",
            "Ensure this field has no more than 500 characters.",
        ),
        (
            json!({"thoughts": "x".repeat(1001)}),
            "thoughts",
            "Ensure this field has no more than 1000 characters.",
        ),
        (
            json!({"profile_img": "not a url"}),
            "profile_img",
            "Enter a valid URL.",
        ),
        (
            json!({"profile_img": "javascript:alert(1)"}),
            "profile_img",
            "Enter a valid URL.",
        ),
        (
            json!({"profile_img": format!("https://img.example/{}", "a".repeat(2048))}),
            "profile_img",
            "Ensure this field has no more than 2048 characters.",
        ),
    ];
    for (body, field, message) in cases {
        let errors = json_of(
            app.post_authed("/accounts/api/update/profile/", &access, &body)
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(errors, json!({ field: [message] }));
    }
    assert_eq!(app.event_count().await, before);
    // Limits are inclusive, and an empty body or an unknown field changes nothing.
    let ok = json!({"country": "x".repeat(100), "profile_img": "", "unknown": 1});
    let profile = json_of(
        app.post_authed("/accounts/api/update/profile/", &access, &ok)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(profile["country"], "x".repeat(100));
    json_of(
        app.post_authed("/accounts/api/update/profile/", &access, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_json() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/accounts/api/nope/"))
        .send()
        .await
        .unwrap();
    let body = json_of(response, StatusCode::NOT_FOUND).await;
    assert_eq!(body["detail"], "Not found.");

    let response = app
        .client
        .get(app.url("/accounts/api/login/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "POST");
    let body = json_of(response, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(body, json!({"detail": "Method \"GET\" not allowed."}));

    // Paths are served without their trailing slash too.
    let response = app
        .post(
            "/accounts/api/login",
            &json!({"email": "a@example.com", "password": "x"}),
        )
        .await;
    assert_eq!(response.status(), 401);
}
