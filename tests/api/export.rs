//! The right of access and portability: everything held about a person, as one document, for
//! the person (`GET /accounts/api/export/`) and for operators (`accounts user export`).

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PROFILE: [(&str, &str); 5] = [
    ("country", "Nepal"),
    ("profession", "Cartographer"),
    ("bio", "Maps mountains."),
    ("thoughts", "Contour lines are poetry."),
    ("profile_img", "https://img.example/dana.png"),
];

async fn dana(app: &TestApp) -> (String, String) {
    let email = "dana@example.com";
    let (access, refresh) = app.active_user("dana", email).await;
    let fields: serde_json::Map<String, Value> = PROFILE
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json_of(
        app.post_authed(
            "/accounts/api/update/profile/",
            &access,
            &Value::Object(fields),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    app.login(email, "not dana's password").await;
    // The failed login is stored just after its 401 (off the response path, so a known address
    // answers as fast as an unknown one); the exports below are of what is stored.
    eventually(|| async { app.count_events("LoginFailed").await == 1 }).await;
    (access, refresh)
}

/// Every field the person entered, and nothing secret.
fn assert_complete(export: &Value, raw: &str, secrets: &[&str]) {
    assert_eq!(export["account"]["username"], "dana");
    assert_eq!(export["account"]["email"], "dana@example.com");
    for (field, value) in PROFILE {
        assert_eq!(export["profile"][field], value, "{field}");
    }
    let events: Vec<&str> = export["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for expected in [
        "registered",
        "activated",
        "logged_in",
        "profile_updated",
        "login_failed",
    ] {
        assert!(
            events.contains(&expected),
            "{expected} missing from {events:?}"
        );
    }
    assert_eq!(events[0], "registered", "oldest first");
    assert!(export["history"][0]["ip"].is_string());
    assert!(export["not_exported"].is_string());
    for secret in secrets {
        assert!(!raw.contains(secret), "the export holds a secret");
    }
    assert!(!raw.contains("argon2"), "the export holds a hash");
}

#[tokio::test]
async fn a_person_exports_everything_held_about_them_and_nothing_of_anyone_else() {
    let app = TestApp::spawn().await;
    let (access, refresh) = dana(&app).await;
    app.active_user("eve", "eve@example.com").await;
    let response = app.get_authed("/accounts/api/export/", &access).await;
    assert_eq!(response.status(), 200);
    let raw = response.text().await.unwrap();
    let export: Value = serde_json::from_str(&raw).unwrap();
    assert_complete(&export, &raw, &[PASSWORD, &access, &refresh]);
    assert!(!raw.contains("eve@example.com"), "another person's data");
    let sessions = export["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["current"], true);
    // Without a token, nothing.
    let anonymous = app
        .client
        .get(app.url("/accounts/api/export/"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn an_operator_exports_an_account_from_the_command_line() {
    let app = TestApp::spawn().await;
    let (access, refresh) = dana(&app).await;
    app.wait_for_relay().await;
    let settings = app.settings.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_accounts"))
            .args(["user", "export", "--user", "dana@example.com"])
            .env("DATABASE_URL", &settings.database_url)
            .env("DATA_DIR", &settings.data_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let raw = String::from_utf8(output.stdout).unwrap();
    let export: Value = serde_json::from_str(&raw).unwrap();
    assert_complete(&export, &raw, &[PASSWORD, &access, &refresh]);
    assert!(export["sessions"][0]["current"] == false);
}
