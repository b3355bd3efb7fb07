//! Second factors over HTTP: TOTP enrolment, the login challenge, recovery codes, turning TOTP
//! off, what a password reset does, and the refusals an attacker meets (wrong, replayed, expired
//! codes, used recovery codes, challenges forged, reused, expired or spent by wrong codes).

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use totp_rs::{Algorithm, Secret, TOTP};

/// The authenticator app of the tests: the set-up's secret, read the way an app reads it.
pub(crate) struct Authenticator {
    totp: TOTP,
}

impl Authenticator {
    pub(crate) fn from_setup(setup: &Value) -> Self {
        let secret = Secret::Encoded(setup["secret"].as_str().unwrap().to_owned())
            .to_bytes()
            .unwrap();
        let totp = TOTP::new(Algorithm::SHA1, 6, 1, 30, secret, None, "test".to_owned()).unwrap();
        Self { totp }
    }

    /// The code `steps` 30-second steps from now.
    pub(crate) fn code(&self, steps: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        self.totp.generate((now + steps * 30) as u64)
    }

    /// A six-digit code that is none of the codes the service would take now.
    pub(crate) fn wrong_code(&self) -> String {
        let taken = [self.code(-1), self.code(0), self.code(1)];
        (0..)
            .map(|n: u32| format!("{:06}", (n * 7919) % 1_000_000))
            .find(|code| !taken.contains(code))
            .unwrap()
    }
}

async fn setup(app: &TestApp, access: &str) -> Value {
    setup_with(app, access, PASSWORD).await
}

async fn setup_with(app: &TestApp, access: &str, password: &str) -> Value {
    json_of(
        app.post_authed(
            "/accounts/api/mfa/totp/setup/",
            access,
            &json!({"password": password}),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

/// Sets up and confirms TOTP: the app and the recovery codes.
pub(crate) async fn enable(app: &TestApp, access: &str) -> (Authenticator, Vec<String>) {
    enable_with(app, access, PASSWORD).await
}

/// [`enable`] for an account whose password is `password`.
pub(crate) async fn enable_with(
    app: &TestApp,
    access: &str,
    password: &str,
) -> (Authenticator, Vec<String>) {
    let setup = setup_with(app, access, password).await;
    let app_ = Authenticator::from_setup(&setup);
    let body = json_of(
        app.post_authed(
            "/accounts/api/mfa/totp/confirm/",
            access,
            &json!({"code": app_.code(0)}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let codes = body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (app_, codes)
}

/// Logs in with the password and expects a challenge: its token.
pub(crate) async fn challenge(app: &TestApp, email: &str, password: &str) -> String {
    let body = json_of(app.login(email, password).await, StatusCode::OK).await;
    assert_eq!(body["mfa_required"], true, "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    body["mfa_token"].as_str().unwrap().to_owned()
}

pub(crate) async fn second_step(app: &TestApp, token: &str, code: &str) -> reqwest::Response {
    app.post(
        "/accounts/api/login/mfa/",
        &json!({"mfa_token": token, "code": code}),
    )
    .await
}

async fn factors(app: &TestApp, access: &str) -> Value {
    json_of(
        app.get_authed("/accounts/api/mfa/", access).await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test]
async fn totp_guards_the_login_and_refuses_wrong_replayed_and_expired_codes() {
    let app = TestApp::spawn().await;
    let email = "totp@example.com";
    let (access, _) = app.active_user("totp", email).await;
    assert_eq!(
        factors(&app, &access).await,
        json!({"totp_enabled": false, "totp_pending": false, "recovery_codes_left": 0, "methods": [], "passkeys": []})
    );

    // An access token alone sets nothing up: the password is asked for.
    let no_password = app
        .post_authed(
            "/accounts/api/mfa/totp/setup/",
            &access,
            &json!({"password": "not the password"}),
        )
        .await;
    assert!(json_of(no_password, StatusCode::BAD_REQUEST).await["password"].is_array());
    assert_eq!(app.count_events("TotpSetupStarted").await, 0);
    // Set-up: the secret three ways; nothing changes for logins until a first code confirms it.
    let started = setup(&app, &access).await;
    let uri = started["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={}", started["secret"].as_str().unwrap())));
    assert!(uri.contains("issuer=accounts"), "{uri}");
    assert!(started["qr_code_svg"].as_str().unwrap().contains("<svg"));
    assert_eq!(factors(&app, &access).await["totp_pending"], true);
    let tokens = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    assert!(tokens["access_token"].is_string(), "{tokens}");
    let authenticator = Authenticator::from_setup(&started);

    // A wrong first code changes nothing; the right one turns TOTP on and answers ten codes.
    let wrong = app
        .post_authed(
            "/accounts/api/mfa/totp/confirm/",
            &access,
            &json!({"code": authenticator.wrong_code()}),
        )
        .await;
    assert!(json_of(wrong, StatusCode::BAD_REQUEST).await["code"].is_array());
    assert_eq!(factors(&app, &access).await["totp_enabled"], false);
    let confirm_code = authenticator.code(0);
    let confirmed = json_of(
        app.post_authed(
            "/accounts/api/mfa/totp/confirm/",
            &access,
            &json!({"code": confirm_code}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let recovery = confirmed["recovery_codes"].as_array().unwrap();
    assert_eq!(recovery.len(), 10);
    assert_eq!(
        json_of(
            app.post_authed(
                "/accounts/api/mfa/totp/setup/",
                &access,
                &json!({"password": PASSWORD})
            )
            .await,
            StatusCode::CONFLICT
        )
        .await["code"],
        "mfa_enabled"
    );
    assert_eq!(
        factors(&app, &access).await,
        json!({"totp_enabled": true, "totp_pending": false, "recovery_codes_left": 10,
               "methods": ["totp", "recovery_code"], "passkeys": []})
    );

    // The password alone now answers a challenge, not tokens.
    let token = challenge(&app, email, PASSWORD).await;
    // The code that confirmed the set-up was used: replaying it is refused.
    let replayed = second_step(&app, &token, &confirm_code).await;
    assert!(json_of(replayed, StatusCode::BAD_REQUEST).await["code"].is_array());
    // A code two steps old (a minute) has expired.
    let expired = second_step(&app, &token, &authenticator.code(-2)).await;
    assert_eq!(expired.status(), StatusCode::BAD_REQUEST);
    let wrong = second_step(&app, &token, &authenticator.wrong_code()).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    // The next step's code (clock drift) is taken once and completes the login.
    let next = authenticator.code(1);
    let done = json_of(second_step(&app, &token, &next).await, StatusCode::OK).await;
    let mfa_access = done["access_token"].as_str().unwrap().to_owned();
    assert!(done["refresh_token"].is_string());
    let dashboard = json_of(
        app.get_authed("/accounts/api/dashboard/", &mfa_access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dashboard["user"]["email"], email);
    assert_eq!(
        dashboard["recent_history"][0]["details"]["second_factor"], "totp",
        "{dashboard}"
    );

    // The challenge worked once: used again, even with a good recovery code, it is refused
    // (and the recovery code is not spent by the refusal).
    let recovery_code = recovery[0].as_str().unwrap();
    let reused = second_step(&app, &token, recovery_code).await;
    assert_eq!(
        json_of(reused, StatusCode::UNAUTHORIZED).await["code"],
        "token_not_valid"
    );
    // The code just used does not work for another login either.
    let other = challenge(&app, email, PASSWORD).await;
    let again = second_step(&app, &other, &next).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    // Forged and refresh tokens are no challenges.
    for forged in [
        "0191d3c4000070008000000000000000~AAAA",
        tokens["refresh_token"].as_str().unwrap(),
        "garbage",
    ] {
        let response = second_step(&app, forged, recovery_code).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{forged}");
    }
    assert_eq!(factors(&app, &mfa_access).await["recovery_codes_left"], 10);

    // The history tells the owner every step, and never a code or the secret.
    let history = json_of(
        app.get_authed("/accounts/api/history/", &mfa_access).await,
        StatusCode::OK,
    )
    .await;
    let events: Vec<&str> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for expected in [
        "totp_setup_started",
        "totp_enabled",
        "recovery_codes_generated",
        "second_factor_required",
        "second_factor_failed",
    ] {
        assert!(events.contains(&expected), "{expected} in {events:?}");
    }
}

#[tokio::test]
async fn a_recovery_code_logs_in_once_and_new_codes_void_the_old_ones() {
    let app = TestApp::spawn().await;
    let email = "recovery@example.com";
    let (access, _) = app.active_user("recovery", email).await;
    let (_, codes) = enable(&app, &access).await;

    // Typed as people type it: upper case, with spaces.
    let typed = codes[0].to_uppercase().replace('-', " - ");
    let token = challenge(&app, email, PASSWORD).await;
    let done = json_of(second_step(&app, &token, &typed).await, StatusCode::OK).await;
    let access = done["access_token"].as_str().unwrap().to_owned();
    assert_eq!(factors(&app, &access).await["recovery_codes_left"], 9);
    let token = challenge(&app, email, PASSWORD).await;
    let used = second_step(&app, &token, &codes[0]).await;
    assert_eq!(
        used.status(),
        StatusCode::BAD_REQUEST,
        "a used code is refused"
    );

    // New codes need the password; afterwards the old ones are void and the new ones work.
    let refused = app
        .post_authed(
            "/accounts/api/mfa/recovery-codes/",
            &access,
            &json!({"password": "not the password"}),
        )
        .await;
    assert!(json_of(refused, StatusCode::BAD_REQUEST).await["password"].is_array());
    // With a second factor on, the password alone changes no factor: a code is asked for.
    let no_code = app
        .post_authed(
            "/accounts/api/mfa/recovery-codes/",
            &access,
            &json!({"password": PASSWORD}),
        )
        .await;
    assert!(json_of(no_code, StatusCode::BAD_REQUEST).await["code"].is_array());
    let fresh = json_of(
        app.post_authed(
            "/accounts/api/mfa/recovery-codes/",
            &access,
            &json!({"password": PASSWORD, "code": codes[2]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let fresh: Vec<String> = fresh["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fresh.len(), 10);
    app.smtp
        .wait_for_nth(email, "New recovery codes for your account", 2)
        .await;
    let old = second_step(&app, &token, &codes[1]).await;
    assert_eq!(old.status(), StatusCode::BAD_REQUEST, "an old code is void");
    let new = second_step(&app, &token, &fresh[0]).await;
    assert_eq!(new.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_challenge_dies_after_five_wrong_codes_and_the_bound_holds_an_attacker_back() {
    let app = TestApp::spawn().await;
    let email = "guess@example.com";
    let (access, _) = app.active_user("guess", email).await;
    let (authenticator, codes) = enable(&app, &access).await;

    let token = challenge(&app, email, PASSWORD).await;
    for _ in 0..5 {
        let wrong = second_step(&app, &token, &authenticator.wrong_code()).await;
        assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    }
    // Spent: even a right recovery code is refused now, and it is not used up.
    let spent = second_step(&app, &token, &codes[0]).await;
    assert_eq!(spent.status(), StatusCode::UNAUTHORIZED);
    // A new challenge from the same address: five wrong codes in a row put it under the bound.
    let token = challenge(&app, email, PASSWORD).await;
    let held = second_step(&app, &token, &codes[0]).await;
    assert_eq!(held.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(held.headers().contains_key("retry-after"));

    // The owner, from another address (a trusted proxy names it), is not held back.
    let owner = TestApp::spawn_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let (owner_access, _) = owner.active_user("owner", "owner@example.com").await;
    let (_, owner_codes) = enable(&owner, &owner_access).await;
    let from = |ip: &'static str| {
        let client = reqwest::Client::new();
        let owner = &owner;
        move |path: &str, body: Value| {
            client
                .post(owner.url(path))
                .header("x-forwarded-for", ip)
                .json(&body)
                .send()
        }
    };
    let attacker = from("203.0.113.9");
    let login = json!({"email": "owner@example.com", "password": PASSWORD});
    let body: Value = attacker("/accounts/api/login/", login.clone())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["mfa_token"].as_str().unwrap().to_owned();
    let mut last = StatusCode::OK;
    for n in 0..6 {
        last = attacker(
            "/accounts/api/login/mfa/",
            json!({"mfa_token": token, "code": format!("{:06}", 100 + n)}),
        )
        .await
        .unwrap()
        .status();
    }
    assert_ne!(last, StatusCode::OK);
    let legit = from("198.51.100.7");
    let body: Value = legit("/accounts/api/login/", login)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = body["mfa_token"].as_str().unwrap().to_owned();
    let done = legit(
        "/accounts/api/login/mfa/",
        json!({"mfa_token": token, "code": owner_codes[0]}),
    )
    .await
    .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_expired_challenge_is_refused() {
    let app = TestApp::spawn_with(|s| s.mfa_challenge_ttl = 1).await;
    let email = "slow@example.com";
    let (access, _) = app.active_user("slow", email).await;
    let (_, codes) = enable(&app, &access).await;
    let token = challenge(&app, email, PASSWORD).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let late = second_step(&app, &token, &codes[0]).await;
    assert_eq!(
        json_of(late, StatusCode::UNAUTHORIZED).await["code"],
        "token_not_valid"
    );
}

#[tokio::test]
async fn a_password_reset_keeps_the_second_factor_and_turning_it_off_needs_password_and_code() {
    let app = TestApp::spawn().await;
    let email = "reset2fa@example.com";
    let (access, _) = app.active_user("resettwofa", email).await;
    let (authenticator, codes) = enable(&app, &access).await;

    // Whoever controls the mailbox can set a new password, but the login still needs the
    // second factor.
    assert_eq!(app.forgot_password(email).await.status(), StatusCode::OK);
    let mail = app.smtp.wait_for(email, "Reset").await;
    assert_eq!(
        app.set_new_password(&mail.link(), NEW_PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    let token = challenge(&app, email, NEW_PASSWORD).await;
    let done = json_of(second_step(&app, &token, &codes[0]).await, StatusCode::OK).await;
    let access = done["access_token"].as_str().unwrap().to_owned();

    // Off needs the password and a code; each wrong one is refused and changes nothing.
    let disable = |password: &str, code: &str| {
        let body = json!({"password": password, "code": code});
        let (app, access) = (&app, &access);
        async move {
            app.post_authed("/accounts/api/mfa/totp/disable/", access, &body)
                .await
        }
    };
    let body = json_of(
        disable(PASSWORD, &authenticator.code(0)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["password"].is_array(), "the old password: {body}");
    let body = json_of(
        disable(NEW_PASSWORD, &authenticator.wrong_code()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["code"].is_array(), "{body}");
    assert_eq!(factors(&app, &access).await["totp_enabled"], true);
    let off = disable(NEW_PASSWORD, &codes[1]).await;
    assert_eq!(off.status(), StatusCode::OK);
    // The owner is told of each change to the second factor, by mail to the current address,
    // and no mail carries a code.
    let on = app
        .smtp
        .wait_for(email, "Two-factor authentication is on")
        .await;
    // Two codes were used (the login's, then turning off's); the mailer may send them in
    // either order.
    app.smtp
        .wait_for_nth(email, "A recovery code was used", 2)
        .await;
    let used: Vec<_> = app
        .smtp
        .to(email)
        .into_iter()
        .filter(|m| m.subject().contains("A recovery code was used"))
        .collect();
    for left in ["9 are left", "8 are left"] {
        assert!(used.iter().any(|m| m.body().contains(left)), "{left}");
    }
    let turned_off = app
        .smtp
        .wait_for(email, "Two-factor authentication was turned off")
        .await;
    for mail in used.into_iter().chain([on, turned_off]) {
        for code in &codes {
            assert!(!mail.body().contains(code.as_str()));
        }
    }
    assert_eq!(
        factors(&app, &access).await,
        json!({"totp_enabled": false, "totp_pending": false, "recovery_codes_left": 0, "methods": [], "passkeys": []})
    );
    let tokens = json_of(app.login(email, NEW_PASSWORD).await, StatusCode::OK).await;
    assert!(tokens["access_token"].is_string());
    let again = app
        .post_authed(
            "/accounts/api/mfa/recovery-codes/",
            &access,
            &json!({"password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(
        json_of(again, StatusCode::CONFLICT).await["code"],
        "mfa_not_enabled"
    );
    // The secrets of the turned-off factor are gone from the database.
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from mfa_totp) + (select count(*) from mfa_recovery_code)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn no_second_factor_secret_reaches_events_messages_history_or_the_database_in_clear() {
    let app = TestApp::spawn().await;
    let email = "secrets2fa@example.com";
    let (access, _) = app.active_user("secretstwofa", email).await;
    let started = setup(&app, &access).await;
    let authenticator = Authenticator::from_setup(&started);
    let confirm = json_of(
        app.post_authed(
            "/accounts/api/mfa/totp/confirm/",
            &access,
            &json!({"code": authenticator.code(0)}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let codes: Vec<String> = confirm["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let token = challenge(&app, email, PASSWORD).await;
    assert_eq!(
        second_step(&app, &token, &codes[0]).await.status(),
        StatusCode::OK
    );
    app.wait_for_relay().await;

    let secret = started["secret"].as_str().unwrap().to_owned();
    let mut needles = vec![secret.clone(), secret.to_lowercase()];
    for code in &codes {
        needles.push(code.clone());
        needles.push(code.replace('-', ""));
    }
    let events: Vec<String> =
        sqlx::query_scalar("select payload::text || metadata::text from events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let history: Vec<String> = sqlx::query_scalar("select row(h.*)::text from user_history h")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let messages: Vec<String> = app
        .stream_messages()
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    let tables: Vec<String> = sqlx::query_scalar(
        "select encode(secret, 'escape') from mfa_totp
         union all select encode(code_hash, 'escape') from mfa_recovery_code",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(events.iter().any(|e| e.contains("TotpEnabled")));
    assert!(messages.iter().any(|m| m.contains("SecondFactorRequired")));
    for haystack in events
        .iter()
        .chain(&history)
        .chain(&messages)
        .chain(&tables)
    {
        for needle in &needles {
            assert!(
                !haystack.contains(needle.as_str()),
                "{needle} in {haystack}"
            );
        }
    }
    // Nor the raw secret bytes in the sealed row.
    let raw = totp_rs::Secret::Encoded(secret).to_bytes().unwrap();
    let sealed: Vec<u8> = sqlx::query_scalar("select secret from mfa_totp")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!sealed.windows(raw.len()).any(|w| w == raw.as_slice()));
}

#[tokio::test]
async fn one_totp_code_sent_twice_at_once_completes_one_login() {
    let app = TestApp::spawn().await;
    let email = "race2fa@example.com";
    let (access, _) = app.active_user("racetwofa", email).await;
    let (authenticator, _) = enable(&app, &access).await;
    let (first, second) = (
        challenge(&app, email, PASSWORD).await,
        challenge(&app, email, PASSWORD).await,
    );
    let code = authenticator.code(1);
    let (a, b) = tokio::join!(
        second_step(&app, &first, &code),
        second_step(&app, &second, &code)
    );
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_REQUEST]);
}

#[tokio::test]
async fn a_challenge_dies_with_a_password_change_before_its_code() {
    let app = TestApp::spawn().await;
    let email = "epoch2fa@example.com";
    let (access, _) = app.active_user("epochtwofa", email).await;
    let (_, codes) = enable(&app, &access).await;
    // Someone with the old password holds a challenge; the owner changes the password.
    let token = challenge(&app, email, PASSWORD).await;
    let owner = challenge(&app, email, PASSWORD).await;
    let done = json_of(second_step(&app, &owner, &codes[0]).await, StatusCode::OK).await;
    json_of(
        app.change_password(
            done["access_token"].as_str().unwrap(),
            PASSWORD,
            NEW_PASSWORD,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let late = second_step(&app, &token, &codes[1]).await;
    assert_eq!(late.status(), StatusCode::UNAUTHORIZED);
}
