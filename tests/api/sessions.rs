//! The caller's own sessions: listing them, ending one, ending all the others; never another
//! user's.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn login_as(app: &TestApp, email: &str, agent: &str) -> (String, String) {
    let response = app
        .client
        .post(app.url("/accounts/api/login/"))
        .header("user-agent", agent)
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let body = json_of(response, StatusCode::OK).await;
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn sessions(app: &TestApp, access: &str) -> Vec<Value> {
    let body = json_of(
        app.get_authed("/accounts/api/sessions/", access).await,
        StatusCode::OK,
    )
    .await;
    body["results"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_user_sees_their_sessions_and_ends_one_or_all_others_but_never_anothers() {
    let app = TestApp::spawn().await;
    let email = "sessions@example.com";
    let (first, first_refresh) = app.active_user("sessions", email).await;
    let (phone, phone_refresh) = login_as(&app, email, "PhoneApp/2.0").await;
    let (laptop, _) = login_as(&app, email, "Laptop/1.0").await;

    // Three open sessions, the current one marked, each with where its login came from.
    let listed = sessions(&app, &laptop).await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let current: Vec<&Value> = listed.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["user_agent"], "Laptop/1.0");
    assert!(listed.iter().all(|s| s["ip"] == "127.0.0.1"));
    let phone_session = listed
        .iter()
        .find(|s| s["user_agent"] == "PhoneApp/2.0")
        .unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Another user cannot end it, nor learn that it exists: the same 404 as an unknown id.
    let (mallory, _) = app.active_user("mallory", "mallory@example.com").await;
    for id in [
        phone_session.as_str(),
        "0191d3c4-0000-7000-8000-000000000000",
        "x",
    ] {
        let response = app
            .post_authed(
                &format!("/accounts/api/sessions/{id}/revoke/"),
                &mallory,
                &json!({}),
            )
            .await;
        assert_eq!(
            json_of(response, StatusCode::NOT_FOUND).await["code"],
            "not_found"
        );
    }
    assert_eq!(
        app.get_authed("/accounts/api/get/profile/", &phone)
            .await
            .status(),
        200
    );

    // The owner ends the phone's session: its access and refresh tokens stop at once.
    json_of(
        app.post_authed(
            &format!("/accounts/api/sessions/{phone_session}/revoke/"),
            &laptop,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        app.get_authed("/accounts/api/get/profile/", &phone)
            .await
            .status(),
        401
    );
    assert_eq!(app.refresh(&phone_refresh).await.status(), 401);
    assert_eq!(sessions(&app, &laptop).await.len(), 2);

    // "Log out everywhere else": the first session ends, the laptop's stays.
    let body = json_of(
        app.post_authed("/accounts/api/sessions/others/revoke/", &laptop, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["revoked"], 1);
    assert_eq!(
        app.get_authed("/accounts/api/get/profile/", &first)
            .await
            .status(),
        401
    );
    assert_eq!(app.refresh(&first_refresh).await.status(), 401);
    let left = sessions(&app, &laptop).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["current"], true);
    // The owner's history says so.
    let history = json_of(
        app.get_authed("/accounts/api/history/", &laptop).await,
        StatusCode::OK,
    )
    .await;
    let logged_out = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "logged_out")
        .count();
    assert_eq!(logged_out, 2);
}

#[tokio::test]
async fn a_password_change_leaves_only_the_sessions_started_after_it() {
    let app = TestApp::spawn().await;
    let email = "changer@example.com";
    let (access, _) = app.active_user("changer", email).await;
    login_as(&app, email, "Other/1.0").await;
    json_of(
        app.change_password(&access, PASSWORD, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let body = json_of(app.login(email, NEW_PASSWORD).await, StatusCode::OK).await;
    let fresh = body["access_token"].as_str().unwrap();
    let listed = sessions(&app, fresh).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["current"], true);
}
