//! The seed's whole flow, end to end through HTTP, relay, NATS, mailer and SMTP.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_whole_account_flow_works_with_links_from_real_mails() {
    let app = TestApp::spawn().await;
    let email = "alice@example.com";

    let body = json_of(
        app.register("alice", email, PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        body["msg"],
        "Congrats! alice your successfully registered to continue login we have sent an account activation email to activate your account. Please verify you email address thank you by admin(krishna)."
    );
    let mail = app.smtp.wait_for(email, "Activate your account").await;
    assert_eq!(mail.from, "no-reply@localhost");
    let link = mail.link();
    assert!(link.starts_with(LINK_BASE), "{link}");
    assert!(
        !link[LINK_BASE.len()..].starts_with('/'),
        "one slash between base and uid: {link}"
    );

    // Not active yet: the right password is refused with 403.
    let body = json_of(app.login(email, PASSWORD).await, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "account_inactive");

    json_of(app.activate_link(&link).await, StatusCode::OK).await;

    let body = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    assert_eq!(body["msg"], "Congrats alice your credentials verfied.");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap().to_owned();
    assert!(body["refresh_token"].as_str().is_some());

    let dash = json_of(
        app.get_authed("/accounts/api/dashboard/", &access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dash["msg"], "Welcome to dashboard");
    assert_eq!(dash["user"]["username"], "alice");
    assert_eq!(dash["user"]["email"], email);
    assert_eq!(dash["user"]["is_active"], true);
    assert!(dash["user"]["last_login"].is_string());
    assert_eq!(dash["profile"]["country"], "");
    let recent: Vec<&str> = dash["recent_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        recent,
        [
            "logged_in",
            "activated",
            // The login tried before activation (403), recorded for the owner.
            "login_refused",
            "activation_link_sent",
            "registered"
        ]
    );

    let profile = json_of(
        app.get_authed("/accounts/api/get/profile/", &access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        profile,
        json!({"username": "alice", "email": email, "country": "", "profession": "",
               "bio": "", "thoughts": "", "profile_img": ""})
    );

    let update = json!({"country": "Nepal", "bio": "Builds things.",
                        "profile_img": "https://img.example/alice.png"});
    let updated = json_of(
        app.post_authed("/accounts/api/update/profile/", &access, &update)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["country"], "Nepal");
    let profile = json_of(
        app.get_authed("/accounts/api/get/profile/", &access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(profile["country"], "Nepal");
    assert_eq!(profile["bio"], "Builds things.");
    assert_eq!(profile["profile_img"], "https://img.example/alice.png");
    assert_eq!(profile["profession"], "");

    let body = json_of(
        app.change_password(&access, PASSWORD, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    assert!(body["msg"].is_string());
    app.smtp.wait_for(email, "Your password was changed").await;
    json_of(app.login(email, PASSWORD).await, StatusCode::UNAUTHORIZED).await;
    json_of(app.login(email, NEW_PASSWORD).await, StatusCode::OK).await;

    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let reset = app.smtp.wait_for(email, "Reset your password").await;
    assert!(reset.link().starts_with(RESET_BASE));
    let third = "a third passphrase, longer still";
    json_of(
        app.set_new_password(&reset.link(), third).await,
        StatusCode::OK,
    )
    .await;
    app.smtp.wait_for(email, "Your password was reset").await;
    json_of(
        app.login(email, NEW_PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    json_of(app.login(email, third).await, StatusCode::OK).await;
}
