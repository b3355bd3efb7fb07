//! E-mailed links: single use, superseded by newer ones, expiring, bound to one purpose.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

fn invalid_reset() -> serde_json::Value {
    json!({"detail": "Reset link is invalid or expired!", "code": "invalid_token"})
}

#[tokio::test]
async fn a_used_activation_link_is_refused_and_get_activates_nothing() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("hank", "hank@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let link = app
        .smtp
        .wait_for("hank@example.com", "Activate")
        .await
        .link();
    let (uid, token) = link_parts(&link);
    let get = app
        .client
        .get(app.url(&format!("/accounts/api/verify/token/{uid}/{token}/")))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    assert_eq!(app.count_events("Activated").await, 0);

    json_of(app.activate_link(&link).await, StatusCode::OK).await;
    let again = json_of(app.activate_link(&link).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(again["code"], "invalid_token");
    assert_eq!(app.count_events("Activated").await, 1);
}

#[tokio::test]
async fn forged_or_mangled_activation_links_are_refused() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("ivy", "ivy@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let link = app
        .smtp
        .wait_for("ivy@example.com", "Activate")
        .await
        .link();
    let (uid, token) = link_parts(&link);
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    for (u, t) in [
        (uid.as_str(), forged.as_str()),
        ("bm90LWEtdXVpZA", token.as_str()),
        ("!!!", token.as_str()),
        (uid.as_str(), "short"),
    ] {
        let response = app
            .client
            .post(app.url(&format!("/accounts/api/verify/token/{u}/{t}/")))
            .send()
            .await
            .unwrap();
        let body = json_of(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["detail"], "Activation link is invalid or expired!");
    }
    assert_eq!(app.count_events("Activated").await, 0);
}

#[tokio::test]
async fn an_expired_activation_link_is_refused() {
    let app = TestApp::spawn_with(|s| s.activation_link_ttl = 1).await;
    json_of(
        app.register("jack", "jack@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let link = app
        .smtp
        .wait_for("jack@example.com", "Activate")
        .await
        .link();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    json_of(app.activate_link(&link).await, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn an_activation_token_does_not_reset_a_password() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("kate", "kate@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let activation = app
        .smtp
        .wait_for("kate@example.com", "Activate")
        .await
        .link();
    // Even with a reset pending, the activation token is not a reset token.
    json_of(
        app.forgot_password("kate@example.com").await,
        StatusCode::OK,
    )
    .await;
    app.smtp
        .wait_for("kate@example.com", "Reset your password")
        .await;
    let body = json_of(
        app.set_new_password(&activation, NEW_PASSWORD).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body, invalid_reset());
    assert_eq!(app.count_events("PasswordReset").await, 0);
}

#[tokio::test]
async fn reset_links_are_single_use_superseded_and_killed_by_a_password_change() {
    let app = TestApp::spawn().await;
    let email = "liam@example.com";
    let (access, _) = app.active_user("liam", email).await;

    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let first = app
        .smtp
        .wait_for_nth(email, "Reset your password", 1)
        .await
        .link();
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let second = app
        .smtp
        .wait_for_nth(email, "Reset your password", 2)
        .await
        .link();
    assert_eq!(
        app.set_new_password(&first, NEW_PASSWORD).await.status(),
        400
    );

    json_of(
        app.set_new_password(&second, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let used = json_of(
        app.set_new_password(&second, "yet another passphrase here")
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(used, invalid_reset());
    // The reset revoked the session: the old access token is refused.
    assert_eq!(
        app.get_authed("/accounts/api/get/profile/", &access)
            .await
            .status(),
        401
    );

    let login = json_of(app.login(email, NEW_PASSWORD).await, StatusCode::OK).await;
    let access = login["access_token"].as_str().unwrap();
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let third = app
        .smtp
        .wait_for_nth(email, "Reset your password", 3)
        .await
        .link();
    json_of(
        app.change_password(access, NEW_PASSWORD, "changed before the link was used")
            .await,
        StatusCode::OK,
    )
    .await;
    let dead = json_of(
        app.set_new_password(&third, "a different passphrase again")
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(dead, invalid_reset());
}

#[tokio::test]
async fn an_expired_reset_link_is_refused_and_nothing_changes_until_a_link_is_used() {
    let app = TestApp::spawn_with(|s| s.reset_link_ttl = 1).await;
    let email = "mia@example.com";
    app.active_user("mia", email).await;
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let link = app.smtp.wait_for(email, "Reset your password").await.link();
    // Requesting a reset changed nothing: the old password still works.
    json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    json_of(
        app.set_new_password(&link, NEW_PASSWORD).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
}

#[tokio::test]
async fn a_reset_activates_an_inactive_account_and_does_not_log_in() {
    let app = TestApp::spawn().await;
    let email = "noah@example.com";
    json_of(
        app.register("noah", email, PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let link = app.smtp.wait_for(email, "Reset your password").await.link();
    let body = json_of(
        app.set_new_password(&link, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    assert!(body.get("access_token").is_none());
    json_of(app.login(email, NEW_PASSWORD).await, StatusCode::OK).await;
}

#[tokio::test]
async fn forgot_password_answers_the_same_for_unknown_addresses_and_uses_allowed_bases_only() {
    let app = TestApp::spawn().await;
    app.active_user("olga", "olga@example.com").await;
    let known = json_of(
        app.forgot_password("olga@example.com").await,
        StatusCode::OK,
    )
    .await;
    // Mailed before the next request: a link superseded before its mail went out is not mailed.
    app.smtp
        .wait_for("olga@example.com", "Reset your password")
        .await;
    let unknown = json_of(
        app.forgot_password("nobody@example.com").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(known, unknown);
    let body = json_of(
        app.post(
            "/accounts/api/forget/password/",
            &json!({"email": "olga@example.com", "verification_base_url": "https://evil.example/"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["verification_base_url"].is_array());
    json_of(
        app.post(
            "/accounts/api/forget/password/",
            &json!({"email": "olga@example.com", "verification_base_url": "http://app.test/other/"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    app.smtp
        .wait_for_nth("olga@example.com", "Reset your password", 2)
        .await;
    let links: Vec<String> = app
        .smtp
        .to("olga@example.com")
        .iter()
        .map(|m| m.link())
        .collect();
    assert!(
        links
            .iter()
            .any(|l| l.starts_with("http://app.test/other/")),
        "{links:?}"
    );
    assert!(links.iter().any(|l| l.starts_with(RESET_BASE)), "{links:?}");
    app.wait_for_mailer_idle().await;
    assert!(app.smtp.to("nobody@example.com").is_empty());
}

/// A mailer that falls behind sends no link that is dead by then: superseded by a newer one,
/// expired, or already used. The event store decides, at sending time.
#[tokio::test]
async fn a_mailer_that_fell_behind_sends_only_links_that_still_work() {
    let app = TestApp::spawn_with(|s| {
        s.run_mailer = false;
        s.reset_link_ttl = 2;
    })
    .await;
    // Superseded: three links, only the last of which works.
    assert_eq!(
        app.register("late", "late@example.com", PASSWORD)
            .await
            .status(),
        201
    );
    for _ in 0..2 {
        json_of(
            app.resend_activation("late@example.com").await,
            StatusCode::OK,
        )
        .await;
    }
    // Expired: a reset link that dies before any mailer runs.
    assert_eq!(
        app.register("stale", "stale@example.com", PASSWORD)
            .await
            .status(),
        201
    );
    json_of(
        app.forgot_password("stale@example.com").await,
        StatusCode::OK,
    )
    .await;
    eventually(|| async {
        app.count_events("ActivationLinkIssued").await == 4
            && app.count_events("PasswordResetRequested").await == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    // Used: a reset link whose password was changed meanwhile.
    let (access, _) = {
        let mailer = start_mailer(&app).await;
        let mail = app.smtp.wait_for("late@example.com", "Activate").await;
        app.smtp.wait_for("stale@example.com", "Activate").await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        mailer.stop().await;
        assert_eq!(app.activate_link(&mail.link()).await.status(), 200);
        let body = json_of(
            app.login("late@example.com", PASSWORD).await,
            StatusCode::OK,
        )
        .await;
        (body["access_token"].as_str().unwrap().to_owned(), ())
    };
    assert_eq!(
        app.smtp.to("late@example.com").len(),
        1,
        "superseded links were mailed"
    );
    assert_eq!(
        app.smtp.to("stale@example.com").len(),
        1,
        "an expired link was mailed"
    );
    json_of(
        app.forgot_password("late@example.com").await,
        StatusCode::OK,
    )
    .await;
    eventually(|| async { app.count_events("PasswordResetRequested").await == 2 }).await;
    json_of(
        app.change_password(&access, PASSWORD, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let mailer = start_mailer(&app).await;
    // The password-changed notice goes out; the dead reset link does not.
    app.smtp.wait_for("late@example.com", "password").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    mailer.stop().await;
    assert!(
        app.smtp
            .to("late@example.com")
            .iter()
            .all(|m| !m.subject().contains("Reset your password")),
        "a used reset link was mailed"
    );
    assert!(
        app.metrics().await.contains("mails_skipped_total"),
        "no skip metric"
    );
}

/// A mailer process of its own on `app`'s database, stream and SMTP sink (`app` runs none).
async fn start_mailer(app: &TestApp) -> TestApp {
    let mut settings = app.settings.clone();
    settings.run_mailer = true;
    TestApp::start(
        settings,
        app.smtp.clone(),
        accounts::Roles {
            api: false,
            relay: false,
            projectors: false,
            mailer: true,
        },
    )
    .await
}
