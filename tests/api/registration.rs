//! Registration, duplicate addresses and usernames, resend of the activation link.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn an_already_registered_email_gets_the_same_201_no_account_and_a_notice_mail() {
    let app = TestApp::spawn().await;
    let first = json_of(
        app.register("bob", "bob@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    app.smtp
        .wait_for("bob@example.com", "Activate your account")
        .await;

    let again = json_of(
        app.register("bob", "BOB@Example.com", "another fine passphrase")
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(first, again);
    assert_eq!(app.count_events("Registered").await, 1);
    let notice = app
        .smtp
        .wait_for("bob@example.com", "Someone tried to register")
        .await;
    assert!(notice.body().contains("No account was created"));
    // The notice went to the owner's stored address; the old activation link still works.
    let link = app
        .smtp
        .wait_for("bob@example.com", "Activate your account")
        .await
        .link();
    json_of(app.activate_link(&link).await, StatusCode::OK).await;
}

#[tokio::test]
async fn a_taken_username_is_refused_case_insensitively() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("Carol", "carol@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let body = json_of(
        app.register("carol", "other@example.com", PASSWORD).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        body,
        json!({"username": ["A user with that username already exists."]})
    );
    assert_eq!(app.count_events("Registered").await, 1);
    let leftover: i64 = sqlx::query_scalar("select count(*) from credential")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(leftover, 1, "the refused registration's hash is not kept");
}

#[tokio::test]
async fn field_errors_come_in_drf_shape_and_change_nothing() {
    let app = TestApp::spawn().await;
    let register = |body: serde_json::Value| {
        let app = &app;
        async move { app.post("/accounts/api/registration/", &body).await }
    };
    let body = json_of(register(json!({})).await, StatusCode::BAD_REQUEST).await;
    for field in [
        "username",
        "email",
        "password",
        "confirm_password",
        "verification_base_url",
    ] {
        assert_eq!(body[field], json!(["This field is required."]), "{field}");
    }

    let body = json_of(
        register(
            json!({"username": "dave", "email": "not-an-email", "password": PASSWORD,
                        "confirm_password": PASSWORD, "verification_base_url": LINK_BASE}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body, json!({"email": ["Enter a valid email address."]}));

    let body = json_of(
        register(
            json!({"username": "dave", "email": "dave@example.com", "password": PASSWORD,
                        "confirm_password": "something else entirely",
                        "verification_base_url": LINK_BASE}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        body,
        json!({"non_field_errors": ["Password and confirm password doesn't match"]})
    );

    let body = json_of(
        register(
            json!({"username": "dave", "email": "dave@example.com", "password": "1234",
                        "confirm_password": "1234", "verification_base_url": LINK_BASE}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let messages = body["password"].as_array().unwrap();
    assert!(messages.contains(&json!(
        "This password is too short. It must contain at least 8 characters."
    )));
    assert!(messages.contains(&json!("This password is entirely numeric.")));
    assert!(messages.contains(&json!("This password is too common.")));

    let body = json_of(
        register(
            json!({"username": "davidsonville", "email": "dave@example.com",
                        "password": "davidsonville1", "confirm_password": "davidsonville1",
                        "verification_base_url": LINK_BASE}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["password"]
        .as_array()
        .unwrap()
        .contains(&json!("The password is too similar to the username.")));

    for base in [
        "https://evil.example/activate/",
        "/relative/",
        "javascript:alert(1)",
        "ftp://app.test/x",
    ] {
        let body = json_of(
            register(
                json!({"username": "dave", "email": "dave@example.com", "password": PASSWORD,
                            "confirm_password": PASSWORD, "verification_base_url": base}),
            )
            .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(body["verification_base_url"].is_array(), "{base} accepted");
    }

    let body = json_of(
        register(
            json!({"username": "bad name!", "email": "dave@example.com", "password": PASSWORD,
                        "confirm_password": PASSWORD, "verification_base_url": LINK_BASE}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["username"][0]
        .as_str()
        .unwrap()
        .starts_with("Enter a valid username."));
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn resend_activation_mails_a_new_link_that_supersedes_the_old_one() {
    let app = TestApp::spawn().await;
    let email = "erin@example.com";
    json_of(
        app.register("erin", email, PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let first = app
        .smtp
        .wait_for(email, "Activate your account")
        .await
        .link();

    let expected = json!({"msg": "We have send you account activation link at your registered email address. If you don't receive email than please make sure you have enter registered email address. Thank you!"});
    for path in [
        "/accounts/api/get/acctivation/token/",
        "/accounts/api/get/accttivation/token/",
        "/accounts/api/get/activation/token",
    ] {
        let body = json_of(
            app.post(
                path,
                &json!({"email": email, "verification_base_url": LINK_BASE}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(body, expected);
        assert!(
            body.get("access_token").is_none(),
            "no tokens for unverified accounts"
        );
    }
    // Three new links; a mailer that is behind sends only those still the latest when it gets
    // to them (links::a_mailer_that_fell_behind_sends_only_links_that_still_work), so 1 to 3 mails.
    eventually(|| async { app.count_events("ActivationLinkIssued").await == 4 }).await;
    app.wait_for_relay().await;
    app.smtp
        .wait_for_nth(email, "Activate your account", 2)
        .await;
    app.wait_for_mailer_idle().await;
    let links: Vec<String> = app.smtp.to(email).iter().map(|m| m.link()).collect();
    assert!((2..=4).contains(&links.len()), "{} mails", links.len());
    assert!(links[1..].iter().all(|l| *l != first));
    let refused = json_of(app.activate_link(&first).await, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        refused,
        json!({"detail": "Activation link is invalid or expired!", "code": "invalid_token"})
    );
    // The three resends ran off the response path in some order: exactly the link of the last
    // one to be recorded works; the others were superseded.
    let mut worked = 0;
    for link in &links[1..] {
        if app.activate_link(link).await.status() == StatusCode::OK {
            worked += 1;
        }
    }
    assert_eq!(worked, 1);

    // Unknown and already active addresses: the same answer, and no mail.
    let unknown = json_of(
        app.resend_activation("nobody@example.com").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unknown, expected);
    let active = json_of(app.resend_activation(email).await, StatusCode::OK).await;
    assert_eq!(active, expected);
    app.wait_for_mailer_idle().await;
    assert!(app.smtp.to("nobody@example.com").is_empty());
    assert_eq!(
        app.smtp
            .to(email)
            .iter()
            .filter(|m| m.subject().contains("Activate"))
            .count(),
        links.len(),
        "an active account was mailed a link"
    );
    assert_eq!(app.count_events("ActivationLinkIssued").await, 4);
}
