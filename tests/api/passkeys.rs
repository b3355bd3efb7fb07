//! Passkeys over HTTP with a software authenticator: registration (needs the password), a
//! login without a password, a passkey completing a password login, and the refusals: another
//! origin, a ceremony used twice, a passkey claiming another user, a removed passkey.

use crate::helpers::passkey::SoftPasskey;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The front end's origin in the test settings (WEBAUTHN_ORIGINS' default).
const ORIGIN: &str = "http://localhost:3000";

/// Registers a new software passkey for the caller: the passkey and the finish's answer.
pub(crate) async fn register(app: &TestApp, access: &str) -> (SoftPasskey, Value) {
    let start = json_of(
        app.post_authed(
            "/accounts/api/passkeys/register/start/",
            access,
            &json!({"password": PASSWORD}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mut passkey = SoftPasskey::new();
    let credential = passkey.register(&start["options"], ORIGIN);
    let done = json_of(
        app.post_authed(
            "/accounts/api/passkeys/register/finish/",
            access,
            &json!({"ceremony_id": start["ceremony_id"], "credential": credential}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    (passkey, done)
}

/// A passwordless login's finish body, signed on a page of `origin`.
async fn passwordless(app: &TestApp, passkey: &mut SoftPasskey, origin: &str) -> Value {
    let start = json_of(
        app.post("/accounts/api/login/passkey/start/", &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(start["options"]["publicKey"]["rpId"], "localhost");
    json!({"ceremony_id": start["ceremony_id"],
           "credential": passkey.authenticate(&start["options"], origin)})
}

#[tokio::test]
async fn a_passkey_registers_with_the_password_and_then_logs_in_without_one() {
    let app = TestApp::spawn().await;
    let email = "passkey@example.com";
    let (access, _) = app.active_user("passkey", email).await;

    // A stolen access token alone registers nothing: the password is asked for.
    let refused = app
        .post_authed(
            "/accounts/api/passkeys/register/start/",
            &access,
            &json!({"password": "not the password"}),
        )
        .await;
    assert!(json_of(refused, StatusCode::BAD_REQUEST).await["password"].is_array());
    let (mut passkey, done) = register(&app, &access).await;
    // The first second factor comes with recovery codes.
    assert_eq!(done["recovery_codes"].as_array().unwrap().len(), 10);
    let factors = json_of(
        app.get_authed("/accounts/api/mfa/", &access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(factors["methods"], json!(["passkey", "recovery_code"]));
    assert_eq!(factors["passkeys"][0]["passkey_id"], done["passkey_id"]);
    assert!(factors["passkeys"][0]["last_used_at"].is_null());
    app.smtp
        .wait_for(email, "A passkey was added to your account")
        .await;

    // No e-mail, no password: the passkey names its user and proves it.
    let body = passwordless(&app, &mut passkey, ORIGIN).await;
    let tokens = json_of(
        app.post("/accounts/api/login/passkey/finish/", &body).await,
        StatusCode::OK,
    )
    .await;
    let passkey_access = tokens["access_token"].as_str().unwrap().to_owned();
    let dashboard = json_of(
        app.get_authed("/accounts/api/dashboard/", &passkey_access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dashboard["user"]["email"], email);
    let newest = &dashboard["recent_history"][0];
    assert_eq!(newest["event"], "logged_in");
    assert_eq!(newest["details"]["method"], "passkey");
    // The same ceremony and response again: refused (a ceremony finishes once).
    let replayed = app.post("/accounts/api/login/passkey/finish/", &body).await;
    assert_eq!(
        json_of(replayed, StatusCode::UNAUTHORIZED).await["code"],
        "passkey_not_valid"
    );
    // A page of another origin cannot use it.
    let phished = passwordless(&app, &mut passkey, "http://evil.test").await;
    let phished = app
        .post("/accounts/api/login/passkey/finish/", &phished)
        .await;
    assert_eq!(phished.status(), StatusCode::UNAUTHORIZED);
    // (The same passkey still works from the right page: the refusal was the origin's.)
    let body = passwordless(&app, &mut passkey, ORIGIN).await;
    let again = app.post("/accounts/api/login/passkey/finish/", &body).await;
    assert_eq!(again.status(), StatusCode::OK);
    let used = json_of(
        app.get_authed("/accounts/api/mfa/", &passkey_access).await,
        StatusCode::OK,
    )
    .await;
    assert!(used["passkeys"][0]["last_used_at"].is_string());

    // A ceremony finished after its time is refused (its clock moved back by hand).
    let late = passwordless(&app, &mut passkey, ORIGIN).await;
    sqlx::query("update webauthn_ceremony set expires_at = now() - interval '1 second' where ceremony_id = $1::text::uuid")
        .bind(late["ceremony_id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = app.post("/accounts/api/login/passkey/finish/", &late).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);

    // A password login now needs the second factor.
    let body = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    assert_eq!(body["mfa_required"], true);
    assert_eq!(body["methods"], json!(["passkey", "recovery_code"]));
}

#[tokio::test]
async fn a_passkey_completes_a_password_login_but_not_from_another_origin() {
    let app = TestApp::spawn().await;
    let email = "pkmfa@example.com";
    let (access, _) = app.active_user("pkmfa", email).await;
    let (mut passkey, registered) = register(&app, &access).await;

    let login = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let token = login["mfa_token"].as_str().unwrap().to_owned();
    let start = |token: String| {
        let app = &app;
        async move {
            json_of(
                app.post(
                    "/accounts/api/login/mfa/passkey/start/",
                    &json!({"mfa_token": token}),
                )
                .await,
                StatusCode::OK,
            )
            .await
        }
    };
    // Signed on another origin's page (a phishing site relaying the challenge): refused, and
    // counted against the challenge.
    let options = start(token.clone()).await;
    let phished = app
        .post(
            "/accounts/api/login/mfa/passkey/finish/",
            &json!({"mfa_token": token, "ceremony_id": options["ceremony_id"],
                    "credential": passkey.authenticate(&options["options"], "http://evil.test")}),
        )
        .await;
    assert_eq!(phished.status(), StatusCode::UNAUTHORIZED);
    let options = start(token.clone()).await;
    assert_eq!(
        options["options"]["publicKey"]["allowCredentials"][0]["id"],
        base64_url(&passkey.credential_id)
    );
    let done = json_of(
        app.post(
            "/accounts/api/login/mfa/passkey/finish/",
            &json!({"mfa_token": token, "ceremony_id": options["ceremony_id"],
                    "credential": passkey.authenticate(&options["options"], ORIGIN)}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let access = done["access_token"].as_str().unwrap().to_owned();
    let history = json_of(
        app.get_authed("/accounts/api/history/", &access).await,
        StatusCode::OK,
    )
    .await;
    let entries = history["results"].as_array().unwrap();
    assert_eq!(entries[0]["details"]["second_factor"], "passkey");
    assert!(entries
        .iter()
        .any(|e| e["event"] == "second_factor_failed" && e["details"]["method"] == "passkey"));
    // The challenge is spent: no second start.
    let again = app
        .post(
            "/accounts/api/login/mfa/passkey/start/",
            &json!({"mfa_token": token}),
        )
        .await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);

    // A passkey removed between a ceremony's start and its finish completes nothing.
    let login = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let token = login["mfa_token"].as_str().unwrap().to_owned();
    let options = start(token.clone()).await;
    let removed = app
        .post_authed(
            &format!(
                "/accounts/api/passkeys/{}/remove/",
                registered["passkey_id"].as_str().unwrap()
            ),
            &access,
            &json!({"password": PASSWORD, "code": registered["recovery_codes"][0]}),
        )
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    let late = app
        .post(
            "/accounts/api/login/mfa/passkey/finish/",
            &json!({"mfa_token": token, "ceremony_id": options["ceremony_id"],
                    "credential": passkey.authenticate(&options["options"], ORIGIN)}),
        )
        .await;
    assert_eq!(late.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_passkey_cannot_claim_another_user_and_a_removed_one_logs_in_no_more() {
    let app = TestApp::spawn().await;
    let (victim_access, _) = app.active_user("victim", "victim@example.com").await;
    let (_victim_key, victim) = register(&app, &victim_access).await;
    let email = "pkowner@example.com";
    let (access, _) = app.active_user("pkowner", email).await;
    let (mut passkey, done) = register(&app, &access).await;

    // The attacker's own passkey, claiming to be the victim's user handle.
    let victim_id: uuid::Uuid =
        sqlx::query_scalar("select user_id from passkey where passkey_id = $1")
            .bind(
                victim["passkey_id"]
                    .as_str()
                    .unwrap()
                    .parse::<uuid::Uuid>()
                    .unwrap(),
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let own_handle = std::mem::replace(&mut passkey.user_handle, victim_id.as_bytes().to_vec());
    let claimed = passwordless(&app, &mut passkey, ORIGIN).await;
    let claimed = app
        .post("/accounts/api/login/passkey/finish/", &claimed)
        .await;
    assert_eq!(claimed.status(), StatusCode::UNAUTHORIZED);
    passkey.user_handle = own_handle;
    let body = passwordless(&app, &mut passkey, ORIGIN).await;
    let own = app.post("/accounts/api/login/passkey/finish/", &body).await;
    assert_eq!(own.status(), StatusCode::OK, "the passkey works as itself");

    // Removing needs the password; an unknown or another user's passkey is a 404.
    let id = done["passkey_id"].as_str().unwrap();
    let owner_id: uuid::Uuid =
        sqlx::query_scalar("select user_id from passkey where passkey_id = $1")
            .bind(id.parse::<uuid::Uuid>().unwrap())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let codes_before: i64 =
        sqlx::query_scalar("select count(*) from mfa_recovery_code where user_id = $1")
            .bind(owner_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(codes_before, 10);
    let code = done["recovery_codes"][0].as_str().unwrap().to_owned();
    let wrong = app
        .post_authed(
            &format!("/accounts/api/passkeys/{id}/remove/"),
            &access,
            &json!({"password": "not the password", "code": code}),
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    // The password alone removes no factor: a code is asked for.
    let no_code = app
        .post_authed(
            &format!("/accounts/api/passkeys/{id}/remove/"),
            &access,
            &json!({"password": PASSWORD}),
        )
        .await;
    assert!(json_of(no_code, StatusCode::BAD_REQUEST).await["code"].is_array());
    let foreign = app
        .post_authed(
            &format!(
                "/accounts/api/passkeys/{}/remove/",
                victim["passkey_id"].as_str().unwrap()
            ),
            &access,
            &json!({"password": PASSWORD, "code": code}),
        )
        .await;
    assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
    let removed = app
        .post_authed(
            &format!("/accounts/api/passkeys/{id}/remove/"),
            &access,
            &json!({"password": PASSWORD, "code": code}),
        )
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    app.smtp
        .wait_for(email, "A passkey was removed from your account")
        .await;
    let body = passwordless(&app, &mut passkey, ORIGIN).await;
    let gone = app.post("/accounts/api/login/passkey/finish/", &body).await;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
    // No second factor is left: the password logs in alone, and the recovery codes are void.
    let tokens = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    assert!(tokens["access_token"].is_string());
    let left: i64 = sqlx::query_scalar("select count(*) from mfa_recovery_code where user_id = $1")
        .bind(owner_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let victim_left: i64 =
        sqlx::query_scalar("select count(*) from mfa_recovery_code where user_id = $1")
            .bind(victim_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(victim_left, 10, "the victim's factors are untouched");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn an_account_holds_at_most_ten_passkeys() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("tenkeys", "tenkeys@example.com").await;
    let (_, first) = register(&app, &access).await;
    let codes: Vec<String> = first["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    // Every later one needs a code too (a second factor is on now).
    for code in &codes[..9] {
        let start = json_of(
            app.post_authed(
                "/accounts/api/passkeys/register/start/",
                &access,
                &json!({"password": PASSWORD, "code": code}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let mut passkey = SoftPasskey::new();
        let credential = passkey.register(&start["options"], ORIGIN);
        let done = app
            .post_authed(
                "/accounts/api/passkeys/register/finish/",
                &access,
                &json!({"ceremony_id": start["ceremony_id"], "credential": credential}),
            )
            .await;
        assert_eq!(done.status(), StatusCode::OK);
    }
    let eleventh = app
        .post_authed(
            "/accounts/api/passkeys/register/start/",
            &access,
            &json!({"password": PASSWORD, "code": codes[9]}),
        )
        .await;
    assert_eq!(
        json_of(eleventh, StatusCode::CONFLICT).await["code"],
        "too_many_passkeys"
    );
    let factors = json_of(
        app.get_authed("/accounts/api/mfa/", &access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(factors["passkeys"].as_array().unwrap().len(), 10);
    assert_eq!(
        factors["recovery_codes_left"], 1,
        "the refusal spent no code"
    );
}
