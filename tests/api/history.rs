//! The user's own history, over HTTP.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn history(app: &TestApp, token: &str, query: &str) -> Value {
    json_of(
        app.get_authed(&format!("/accounts/api/history/{query}"), token)
            .await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test]
async fn a_user_who_went_through_every_flow_sees_every_step_in_order_and_no_secret() {
    let app = TestApp::spawn().await;
    let email = "hist@example.com";
    let agent = "history-test/1.0";
    let client = reqwest::Client::builder()
        .user_agent(agent)
        .build()
        .unwrap();
    let post = |path: &str, body: Value| client.post(app.url(path)).json(&body).send();
    post(
        "/accounts/api/registration/",
        json!({"username": "hist", "email": email, "password": PASSWORD,
        "confirm_password": PASSWORD, "verification_base_url": LINK_BASE}),
    )
    .await
    .unwrap();
    let link = app.smtp.wait_for(email, "Activate").await.link();
    let (uid, token) = link_parts(&link);
    client
        .post(app.url(&format!("/accounts/api/verify/token/{uid}/{token}/")))
        .send()
        .await
        .unwrap();
    post(
        "/accounts/api/login/",
        json!({"email": email, "password": "wrong wrong wrong"}),
    )
    .await
    .unwrap();
    // A failed login is stored just after its 401, off the response path (so that a known
    // address answers as fast as an unknown one): the next login is sent once it is, for the
    // order below to be the order the person acted in.
    eventually(|| async { app.count_events("LoginFailed").await == 1 }).await;
    let login: Value = post(
        "/accounts/api/login/",
        json!({"email": email, "password": PASSWORD}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    client
        .post(app.url("/accounts/api/update/profile/"))
        .bearer_auth(&access)
        .json(&json!({"bio": "hello"}))
        .send()
        .await
        .unwrap();
    let refreshed: Value = post(
        "/accounts/api/token/refresh/",
        json!({"refresh_token": refresh}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    client.post(app.url("/accounts/api/change/password/")).bearer_auth(&access)
        .json(&json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}))
        .send().await.unwrap();
    post("/accounts/api/forget/password/", json!({"email": email}))
        .await
        .unwrap();
    let reset = app.smtp.wait_for(email, "Reset your password").await.link();
    let (uid, token) = link_parts(&reset);
    let third = "the third passphrase of hist";
    post(
        &format!("/accounts/api/set/new/forget/password/{uid}/{token}/"),
        json!({"new_password": third, "confirm_password": third}),
    )
    .await
    .unwrap();
    let login: Value = post(
        "/accounts/api/login/",
        json!({"email": email, "password": third}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    post("/accounts/api/logout/", json!({"refresh_token": refresh}))
        .await
        .unwrap();
    // Logging out ends that session's access tokens at once: the history is read in a new one.
    assert_eq!(
        app.get_authed("/accounts/api/history/", &access)
            .await
            .status(),
        401
    );
    let login: Value = post(
        "/accounts/api/login/",
        json!({"email": email, "password": third}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();

    let expected = [
        "registered",
        "activation_link_sent",
        "activated",
        "login_failed",
        "logged_in",
        "profile_updated",
        "token_refreshed",
        "password_changed",
        "password_reset_requested",
        "password_reset",
        "logged_in",
        "logged_out",
        "logged_in",
    ];
    eventually(|| async {
        let page = history(&app, &access, "").await;
        page["results"].as_array().unwrap().len() == expected.len()
    })
    .await;
    let page = history(&app, &access, "").await;
    let events = page["results"].as_array().unwrap().clone();
    let names: Vec<&str> = events
        .iter()
        .rev()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected);
    for event in &events {
        assert_eq!(event["ip"], "127.0.0.1", "{event}");
        assert_eq!(event["user_agent"], agent, "{event}");
        assert!(event["occurred_at"].is_string());
    }
    let updated = events
        .iter()
        .find(|e| e["event"] == "profile_updated")
        .unwrap();
    assert_eq!(updated["details"]["fields"], json!(["bio"]));
    let text = serde_json::to_string(&events).unwrap();
    for secret in [
        PASSWORD,
        NEW_PASSWORD,
        third,
        &access,
        &refresh,
        &token,
        "argon2",
    ] {
        assert!(!text.contains(secret), "the history shows a secret");
    }
}

#[tokio::test]
async fn history_pages_by_cursor_and_never_shows_another_users_events() {
    let app = TestApp::spawn().await;
    let (alice, _) = app.active_user("pagea", "pagea@example.com").await;
    let (bob, _) = app.active_user("pageb", "pageb@example.com").await;
    for i in 0..5 {
        app.post_authed(
            "/accounts/api/update/profile/",
            &alice,
            &json!({"bio": format!("v{i}")}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let page = history(&app, &alice, &query).await;
        let results = page["results"].as_array().unwrap();
        assert!(results.len() <= 3);
        seen.extend(
            results
                .iter()
                .map(|e| e["occurred_at"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(cursor) => query = format!("?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    // registered, activation_link_sent, activated, logged_in and five profile updates.
    assert_eq!(seen.len(), 9);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");

    let bobs = history(&app, &bob, "?limit=200").await;
    let bobs = bobs["results"].as_array().unwrap();
    assert_eq!(bobs.len(), 4);
    assert!(bobs.iter().all(|e| e["event"] != "profile_updated"));

    for bad in ["?limit=0", "?limit=201", "?limit=x", "?cursor=abc"] {
        json_of(
            app.get_authed(&format!("/accounts/api/history/{bad}"), &alice)
                .await,
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}
