//! Login, protected routes, password change and refresh tokens.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let app = TestApp::spawn().await;
    app.active_user("paul", "paul@example.com").await;
    let wrong = json_of(
        app.login("paul@example.com", "not the password at all")
            .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let unknown = json_of(
        app.login("ghost@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(wrong, unknown);
    assert_eq!(
        wrong,
        json!({"detail": "Invalid email or password.", "code": "invalid_credentials"})
    );
    // The e-mail is matched case-insensitively.
    json_of(
        app.login("PAUL@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn the_right_password_on_an_inactive_account_is_403_and_a_wrong_one_401() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("quinn", "quinn@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let body = json_of(
        app.login("quinn@example.com", PASSWORD).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(body["code"], "account_inactive");
    json_of(
        app.login("quinn@example.com", "wrong password here").await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn protected_routes_want_a_valid_bearer_token() {
    let app = TestApp::spawn().await;
    let (access, refresh) = app.active_user("rosa", "rosa@example.com").await;
    for path in [
        "/accounts/api/dashboard/",
        "/accounts/api/get/profile/",
        "/accounts/api/history/",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"api\""
        );
        let body = json_of(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(
            body,
            json!({"detail": "Authentication credentials were not provided."})
        );

        for token in ["garbage", refresh.as_str(), &format!("{access}x")] {
            let body = json_of(app.get_authed(path, token).await, StatusCode::UNAUTHORIZED).await;
            assert_eq!(body["code"], "token_not_valid");
        }
        json_of(app.get_authed(path, &access).await, StatusCode::OK).await;
    }
}

#[tokio::test]
async fn change_password_checks_the_old_one_and_revokes_every_earlier_token() {
    let app = TestApp::spawn().await;
    let email = "sam@example.com";
    let (access, refresh) = app.active_user("sam", email).await;
    let other = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let other_access = other["access_token"].as_str().unwrap();
    let other_refresh = other["refresh_token"].as_str().unwrap();

    let body = json_of(
        app.change_password(&access, "not my old password", NEW_PASSWORD)
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        body,
        json!({"old_password": ["Old password is incorrect."]})
    );
    let body = json_of(
        app.post_authed(
            "/accounts/api/change/password/",
            &access,
            &json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": "different"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        body,
        json!({"non_field_errors": ["Password and confirm password doesn't match"]})
    );
    assert_eq!(app.count_events("PasswordChanged").await, 0);

    json_of(
        app.change_password(&access, PASSWORD, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    for token in [access.as_str(), other_access] {
        json_of(
            app.get_authed("/accounts/api/get/profile/", token).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    for token in [refresh.as_str(), other_refresh] {
        json_of(app.refresh(token).await, StatusCode::UNAUTHORIZED).await;
    }
    let notice = app.smtp.wait_for(email, "Your password was changed").await;
    assert!(!notice.body().contains(NEW_PASSWORD));
}

#[tokio::test]
async fn refresh_rotates_and_a_spent_token_revokes_the_chain_after_the_grace() {
    let app = TestApp::spawn_with(|s| s.refresh_reuse_grace = 0).await;
    let (_, first) = app.active_user("tina", "tina@example.com").await;
    let body = json_of(app.refresh(&first).await, StatusCode::OK).await;
    let second = body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    let access = body["access_token"].as_str().unwrap();
    json_of(
        app.get_authed("/accounts/api/get/profile/", access).await,
        StatusCode::OK,
    )
    .await;

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    json_of(app.refresh(&first).await, StatusCode::UNAUTHORIZED).await;
    // The whole chain is dead, including the newest token.
    json_of(app.refresh(&second).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(app.count_events("Revoked").await, 1);
}

#[tokio::test]
async fn an_immediate_retry_of_the_last_refresh_gets_the_same_token_again() {
    let app = TestApp::spawn().await;
    let (_, first) = app.active_user("uma", "uma@example.com").await;
    let a = json_of(app.refresh(&first).await, StatusCode::OK).await;
    let b = json_of(app.refresh(&first).await, StatusCode::OK).await;
    assert_eq!(a["refresh_token"], b["refresh_token"]);
    json_of(
        app.refresh(a["refresh_token"].as_str().unwrap()).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn logout_ends_the_refresh_chain() {
    let app = TestApp::spawn().await;
    let (_, refresh) = app.active_user("vera", "vera@example.com").await;
    json_of(
        app.post("/accounts/api/logout/", &json!({"refresh_token": refresh}))
            .await,
        StatusCode::OK,
    )
    .await;
    json_of(app.refresh(&refresh).await, StatusCode::UNAUTHORIZED).await;
    json_of(
        app.post(
            "/accounts/api/logout/",
            &json!({"refresh_token": "nonsense"}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn the_jwks_verifies_our_access_tokens() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("walt", "walt@example.com").await;
    let jwks: serde_json::Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["crv"], "Ed25519");
    let header = jsonwebtoken::decode_header(&access).unwrap();
    assert_eq!(header.kid.as_deref(), key["kid"].as_str());
    let decoding =
        jsonwebtoken::DecodingKey::from_ed_components(key["x"].as_str().unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["accounts-api"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&access, &decoding, &validation).unwrap();
    assert_eq!(data.claims["token_type"], "access");
    assert_eq!(data.claims["iss"], "accounts");
}

// Issue #12: the right password's record for the guessing bound rides in the session's append.
#[tokio::test]
async fn a_login_clears_its_sources_failures_in_the_append_and_stores_none_of_it() {
    let app = TestApp::spawn().await;
    let email = "guarded@example.com";
    app.active_user("guarded", email).await;
    for _ in 0..3 {
        assert_eq!(app.login(email, "a wrong password").await.status(), 401);
    }
    let failures = || async {
        sqlx::query_scalar::<_, i64>(
            "select coalesce(sum(failures), 0)::bigint from login_guard where source <> '*'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(failures().await, 3);
    json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    // The right password cleared this source's count and made it familiar ...
    assert_eq!(failures().await, 0);
    let familiar: i64 = sqlx::query_scalar("select count(*) from login_familiar_source")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(familiar >= 1);
    // ... and what carried the record into the statement is in no stored event.
    let carried: i64 =
        sqlx::query_scalar("select count(*) from events where metadata::text like '%guard_%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(carried, 0);
    assert!(app.count_events("Started").await >= 2);
}
