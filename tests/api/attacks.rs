//! The attacks of the second security review (issue #10), each played through HTTP against the
//! real service, next to the owner it must not hurt. Sources are told apart by real client
//! addresses on the loopback network (127.0.0.N), as the service sees them.

use crate::helpers::*;
use futures::future::join_all;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A client whose connections come from 127.0.0.`n`.
fn from(n: u8) -> Client {
    Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .build()
        .unwrap()
}

async fn login_from(app: &TestApp, client: &Client, email: &str, password: &str) -> StatusCode {
    client
        .post(app.url("/accounts/api/login/"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn register_body(app: &TestApp, body: Value) -> reqwest::Response {
    app.post("/accounts/api/registration/", &body).await
}

fn registration(username: &str, email: &str) -> Value {
    json!({
        "username": username, "email": email, "password": PASSWORD,
        "confirm_password": PASSWORD, "verification_base_url": LINK_BASE,
    })
}

// Finding 2: `alİce@` claimed `alice@` (Postgres lower() folds U+0130 to `i`, Rust did not), and
// an address with `ΟΔΟΣ` could register but never log in or reset.
#[tokio::test]
async fn a_dotted_capital_i_squats_nothing_and_every_script_logs_in() {
    let app = TestApp::spawn().await;
    // The squatter registers first.
    assert_eq!(
        register_body(&app, registration("squatter", "alİce@example.com"))
            .await
            .status(),
        201
    );
    // The real owner gets a real account: a mail, an activation, a login.
    let (access, _) = app.active_user("alice", "alice@example.com").await;
    let me = json_of(
        app.get_authed("/accounts/api/get/profile/", &access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["email"], "alice@example.com");

    // Greek capitals register, activate, and log in under any casing; a reset reaches them.
    app.active_user("odos", "ΟΔΟΣ@example.com").await;
    for typed in ["ΟΔΟΣ@example.com", "οδος@example.com", "ΟΔΟΣ@EXAMPLE.COM"] {
        json_of(app.login(typed, PASSWORD).await, StatusCode::OK).await;
    }
    json_of(
        app.forgot_password("οδος@example.com").await,
        StatusCode::OK,
    )
    .await;
    let reset = app
        .smtp
        .wait_for("ΟΔΟΣ@example.com", "Reset your password")
        .await;
    json_of(
        app.set_new_password(&reset.link(), NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    json_of(
        app.login("οδος@example.com", NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;

    // The same address in another case or width is the same account: no second one.
    let before = app.count_events("Registered").await;
    for alias in ["ALICE@example.com", "ａｌｉｃｅ@example.com"] {
        assert_eq!(
            register_body(&app, registration("another", alias))
                .await
                .status(),
            201
        );
    }
    app.wait_for_mailer_idle().await;
    assert_eq!(app.count_events("Registered").await, before);
}

// Finding 13: look-alike usernames registered beside `admin`.
#[tokio::test]
async fn look_alike_usernames_cannot_register_beside_the_original() {
    let app = TestApp::spawn().await;
    app.active_user("admin", "admin@example.com").await;
    let before = app.count_events("Registered").await;
    for (n, alike) in ["ａｄｍｉｎ", "adⅿin", "ADMIN", "adrnin", "аdmin", "аdmіn"]
        .into_iter()
        .enumerate()
    {
        let body = json_of(
            register_body(&app, registration(alike, &format!("alike{n}@example.com"))).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        let message = body["username"][0].as_str().unwrap_or_default();
        assert!(
            message == "A user with that username already exists."
                || message.starts_with("Enter a valid username."),
            "{alike}: {body}"
        );
    }
    assert_eq!(app.count_events("Registered").await, before);
    // The original is untouched.
    json_of(
        app.login("admin@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    // A name in one other script that looks like nothing taken is fine.
    assert_eq!(
        register_body(&app, registration("Дмитрий", "dmitri@example.com"))
            .await
            .status(),
        201
    );
}

// Finding 11: addresses the mailer can never deliver to were accepted and stayed claimed.
#[tokio::test]
async fn undeliverable_addresses_are_refused_and_claim_nothing() {
    let app = TestApp::spawn().await;
    for (n, address) in [
        "\"a b\"@example.com",
        "a@[127.0.0.1]",
        "a@localhost",
        "a..b@example.com",
    ]
    .into_iter()
    .enumerate()
    {
        let body = json_of(
            register_body(&app, registration(&format!("u{n}"), address)).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(
            body["email"][0], "Enter a valid email address.",
            "{address}"
        );
    }
    assert_eq!(app.event_count().await, 0);
}

// Finding 10: a NUL in a profile field was a 500.
#[tokio::test]
async fn control_characters_are_field_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("ctrl", "ctrl@example.com").await;
    let events = app.event_count().await;
    let response = app
        .post_authed(
            "/accounts/api/update/profile/",
            &access,
            &json!({"bio": "x\u{0}y", "thoughts": "bell\u{7}", "country": "ok"}),
        )
        .await;
    let body = json_of(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["bio"][0], "Null characters are not allowed.");
    assert_eq!(body["thoughts"][0], "Control characters are not allowed.");
    assert_eq!(app.event_count().await, events);
    let body = json_of(
        register_body(&app, registration("nul\u{0}name", "nul@example.com")).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["username"][0], "Null characters are not allowed.");
    let body = json_of(
        app.login("ctrl@example.com", "pass\u{0}word").await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(body["password"][0], "Null characters are not allowed.");
    // Line breaks and tabs are text, and the owner's update goes through.
    let profile = json_of(
        app.post_authed(
            "/accounts/api/update/profile/",
            &access,
            &json!({"bio": "two\nlines\tand a tab"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(profile["bio"], "two\nlines\tand a tab");
}

// Finding 3: a 503 (hash shedding) on a login cleared the account's failure count.
#[tokio::test]
async fn shedding_neither_clears_nor_spends_the_guess_count() {
    let limit = 10;
    let app = TestApp::spawn_with(|s| {
        s.login_failure_limit = limit;
        s.password_hash_concurrency = Some(1);
        s.password_hash_max_queue = 0;
    })
    .await;
    let email = "shed@example.com";
    app.active_user("shed", email).await;
    let (owner, attacker) = (from(1), from(2));

    // The attacker guesses while registrations keep the single hashing slot busy, until one of
    // its guesses is shed.
    let (mut checked, mut shed) = (0, 0);
    for round in 0..60 {
        if shed > 0 || checked >= limit - 2 {
            break;
        }
        let busy = join_all((0..3).map(|i| {
            let app = &app;
            async move {
                app.register(
                    &format!("filler{round}x{i}"),
                    &format!("filler{round}x{i}@example.com"),
                    PASSWORD,
                )
                .await
                .status()
            }
        }));
        let guess = async {
            tokio::time::sleep(Duration::from_millis(3)).await;
            login_from(&app, &attacker, email, "a wrong guess").await
        };
        let (_, status) = tokio::join!(busy, guess);
        match status {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::SERVICE_UNAVAILABLE => shed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0, "no guess was shed");
    // Exactly `limit` guesses are checked in all, whatever was shed in between.
    loop {
        match login_from(&app, &attacker, email, "a wrong guess").await {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::SERVICE_UNAVAILABLE => {}
            StatusCode::TOO_MANY_REQUESTS => break,
            other => panic!("unexpected {other}"),
        }
        assert!(checked <= limit, "more than {limit} guesses were checked");
    }
    assert_eq!(checked, limit);
    // The owner, from where they logged in before, is not held back.
    assert_eq!(login_from(&app, &owner, email, PASSWORD).await, 200);
}

/// Sends a login and resets the connection a few milliseconds later, before any answer.
async fn aborted_login(app: &TestApp, source: u8, email: &str) {
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((Ipv4Addr::new(127, 0, 0, source), 0).into())
        .unwrap();
    let mut stream = socket
        .connect((Ipv4Addr::LOCALHOST, port).into())
        .await
        .unwrap();
    let body = json!({"email": email, "password": "an aborted guess"}).to_string();
    let request = format!(
        "POST /accounts/api/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    // A zero linger resets the connection at once (it never blocks, unlike a non-zero one).
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

// Finding 4: five aborted logins leaked the in-flight count and kept the owner out for 60 s.
#[tokio::test]
async fn aborted_logins_never_keep_the_owner_out() {
    let app = TestApp::spawn().await;
    let email = "aborted@example.com";
    app.active_user("aborted", email).await;
    for _ in 0..3 {
        join_all((0..5).map(|_| aborted_login(&app, 2, email))).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // From the usual place and from a new one alike.
    assert_eq!(login_from(&app, &from(1), email, PASSWORD).await, 200);
    assert_eq!(login_from(&app, &from(3), email, PASSWORD).await, 200);
}

// Finding 5: one wrong guess each time the back-off expired kept the owner out indefinitely.
#[tokio::test]
async fn a_guess_whenever_the_back_off_ends_never_keeps_the_owner_out() {
    let app = TestApp::spawn_with(|s| {
        s.login_failure_limit = 3;
        s.login_shared_failure_limit = 10;
        s.login_backoff_base_secs = 1;
        s.login_backoff_max_secs = 2;
    })
    .await;
    let email = "victim@example.com";
    app.active_user("victim", email).await; // logs in from 127.0.0.1: a familiar place
    let (owner, attacker) = (from(1), from(2));
    for round in 0..3 {
        // The attacker is held to its bound ...
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(login_from(&app, &attacker, email, "guess").await);
        }
        assert!(
            statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
            "round {round}: {statuses:?}"
        );
        // ... and the owner is never kept out.
        assert_eq!(login_from(&app, &owner, email, PASSWORD).await, 200);
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }

    // Many sources share one budget per account: past it, new places wait too ...
    for n in 10..25 {
        login_from(&app, &from(n), email, "distributed guess").await;
    }
    let newcomer = from(200);
    let response = newcomer
        .post(app.url("/accounts/api/login/"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(retry_after(&response) >= 1);
    // ... but the owner's familiar place does not, and a reset by e-mail reopens every place.
    assert_eq!(login_from(&app, &owner, email, PASSWORD).await, 200);
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let link = app.smtp.wait_for(email, "Reset your password").await.link();
    json_of(
        app.set_new_password(&link, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(login_from(&app, &newcomer, email, NEW_PASSWORD).await, 200);
}

// Finding 6: a stolen access token was a password-guessing oracle on change/password, and its
// flood starved logins of hashing slots.
#[tokio::test]
async fn change_password_guesses_count_against_the_login_bound() {
    let app = TestApp::spawn().await;
    let email = "stolen@example.com";
    let (access, _) = app.active_user("stolen", email).await;
    let (owner, thief) = (from(1), from(2));
    let guess = |old: String| {
        let (thief, app, access) = (&thief, &app, &access);
        async move {
            let response = thief
                .post(app.url("/accounts/api/change/password/"))
                .bearer_auth(access)
                .json(&json!({"old_password": old, "new_password": NEW_PASSWORD,
                              "confirm_password": NEW_PASSWORD}))
                .send()
                .await
                .unwrap();
            response.status()
        }
    };
    let flood = join_all((0..100).map(|i| guess(format!("guess number {i}"))));
    let owners_login = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        login_from(&app, &owner, email, PASSWORD).await
    };
    let (statuses, owner_status) = tokio::join!(flood, owners_login);
    let checked = statuses.iter().filter(|s| **s == 400).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    assert!(checked <= 5, "{checked} old passwords were checked");
    assert_eq!(checked + throttled, 100, "{statuses:?}");
    assert_eq!(owner_status, 200);
    // The right old password from the thief's place is held back too ...
    assert_eq!(guess(PASSWORD.to_owned()).await, 429);
    // ... while the owner changes it from theirs.
    let response = owner
        .post(app.url("/accounts/api/change/password/"))
        .bearer_auth(&access)
        .json(
            &json!({"old_password": PASSWORD, "new_password": NEW_PASSWORD,
                      "confirm_password": NEW_PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// Finding 7: the strength estimate of a long password ran on the async runtime (~0.8 s each).
#[tokio::test]
async fn long_passwords_are_answered_and_the_service_stays_responsive() {
    let app = TestApp::spawn().await;
    let long: String = "4@$5!1|0+7".repeat(103).chars().take(1024).collect();
    let registrations = join_all((0..4).map(|i| {
        let (app, long) = (&app, &long);
        async move {
            app.register(&format!("long{i}"), &format!("long{i}@example.com"), long)
                .await
                .status()
        }
    }));
    let probes = async {
        let mut answered = 0;
        for _ in 0..10 {
            if app.client.get(app.url("/healthz")).send().await.is_ok() {
                answered += 1;
            }
        }
        answered
    };
    let (statuses, answered) = tokio::join!(registrations, probes);
    assert_eq!(answered, 10);
    for status in statuses {
        assert!(status == 201 || status == 400, "{status}");
    }
    // The estimate judges the head of the password: a common one stays common however long.
    let common = format!("password{}", "1".repeat(1000));
    let body = json_of(
        app.register("commonlong", "commonlong@example.com", &common)
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(body["password"]
        .as_array()
        .unwrap()
        .contains(&json!("This password is too common.")));
}

// Finding 9: 40 forgot-password requests sent 40 mails; 40 resends 41.
#[tokio::test]
async fn mails_to_one_address_are_capped_per_hour_with_the_same_answer() {
    let app = TestApp::spawn().await;
    let email = "bombed@example.com";
    assert_eq!(app.register("bombed", email, PASSWORD).await.status(), 201);
    app.smtp.wait_for(email, "Activate your account").await;
    let answers = join_all((0..40).map(|_| async {
        let response = app.resend_activation(email).await;
        (response.status(), response.text().await.unwrap())
    }))
    .await;
    let unknown = app.resend_activation("nobody@example.com").await;
    let unknown = (unknown.status(), unknown.text().await.unwrap());
    assert!(answers.iter().all(|a| *a == unknown), "answers differ");
    for _ in 0..40 {
        json_of(app.forgot_password(email).await, StatusCode::OK).await;
    }
    app.wait_for_relay().await;
    app.wait_for_mailer_idle().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.wait_for_mailer_idle().await;
    // Five links in the hour (the registration's included), whatever the 80 requests; the
    // mailer sends at most those (fewer when one was superseded before its mail went out).
    let links = app.count_events("ActivationLinkIssued").await
        + app.count_events("PasswordResetRequested").await;
    assert_eq!(links, 5);
    let mails = app.smtp.to(email);
    assert!((1..=5).contains(&mails.len()), "{} mails", mails.len());
    // The link issued last was mailed and is the one that works. (Which mail the sink captured
    // last says nothing: the mailer sends a batch's mails concurrently.)
    let latest: uuid::Uuid = sqlx::query_scalar(
        "select (payload->'ActivationLinkIssued'->>'request_id')::uuid from events
          where event_type = 'ActivationLinkIssued' order by sequence desc limit 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let latest = mails
        .iter()
        .find(|m| {
            m.subject().contains("Activate") && m.link().contains(&latest.simple().to_string())
        })
        .expect("the last activation link issued was mailed");
    json_of(app.activate_link(&latest.link()).await, StatusCode::OK).await;
}

// Logout and reuse detection end that session's access tokens at once, not after 15 minutes.
#[tokio::test]
async fn logout_and_reuse_detection_end_the_sessions_access_tokens_at_once() {
    let app = TestApp::spawn_with(|s| s.refresh_reuse_grace = 0).await;
    let email = "sessions@example.com";
    let (first_access, first_refresh) = app.active_user("sessions", email).await;
    let second = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    let dashboard = |token: String| {
        let app = &app;
        async move {
            app.get_authed("/accounts/api/dashboard/", &token)
                .await
                .status()
        }
    };
    assert_eq!(dashboard(first_access.clone()).await, 200);
    json_of(
        app.post(
            "/accounts/api/logout/",
            &json!({"refresh_token": first_refresh}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dashboard(first_access).await, 401);
    assert_eq!(dashboard(second_access.clone()).await, 200);

    // A thief replays the second session's spent refresh token: the chain and its access
    // tokens die.
    let rotated = json_of(app.refresh(&second_refresh).await, StatusCode::OK).await;
    let rotated_access = rotated["access_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.refresh(&second_refresh).await.status(), 401);
    assert_eq!(dashboard(rotated_access).await, 401);
    assert_eq!(dashboard(second_access).await, 401);
}

// The guard's tables keep only what still counts, however many addresses and sources are tried.
#[tokio::test]
async fn the_guard_forgets_stale_failures_and_sources() {
    let app = TestApp::spawn().await;
    app.active_user("pruned", "pruned@example.com").await;
    for n in 0..3 {
        login_from(&app, &from(2), &format!("nobody{n}@example.com"), "guess").await;
    }
    let count = |table: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("select count(*) from {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(count("login_guard").await >= 3);
    assert_eq!(count("login_familiar_source").await, 1);
    let guard = accounts::auth::throttle::LoginThrottle::new(
        app.pool.clone(),
        5,
        20,
        Duration::from_secs(30),
        Duration::from_secs(900),
        90,
    );
    // Nothing is stale yet.
    assert_eq!(guard.prune().await.unwrap(), 0);
    sqlx::query("update login_guard set updated_at = now() - interval '2 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("update login_familiar_source set last_success = now() - interval '91 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(guard.prune().await.unwrap() >= 4);
    assert_eq!(count("login_guard").await, 0);
    assert_eq!(count("login_familiar_source").await, 0);
    // The owner logs in as before, and the place becomes familiar again.
    assert_eq!(
        login_from(&app, &from(1), "pruned@example.com", PASSWORD).await,
        200
    );
    assert_eq!(count("login_familiar_source").await, 1);
}

// Review finding: places where a thief logged in with a stolen password stayed familiar after the
// owner replaced it, and kept bypassing the account's shared budget.
#[tokio::test]
async fn a_replaced_password_makes_the_thiefs_places_unfamiliar_again() {
    let app = TestApp::spawn_with(|s| {
        s.login_failure_limit = 10;
        s.login_shared_failure_limit = 3;
    })
    .await;
    let email = "robbed@example.com";
    app.active_user("robbed", email).await;
    for place in [5, 6] {
        assert_eq!(login_from(&app, &from(place), email, PASSWORD).await, 200);
    }
    // The owner takes the account back by e-mail.
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let link = app.smtp.wait_for(email, "Reset your password").await.link();
    json_of(
        app.set_new_password(&link, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    // The thief's guesses from those places now draw on the shared budget, which runs out.
    let mut statuses = Vec::new();
    for place in [5, 6, 5, 6, 5] {
        statuses.push(login_from(&app, &from(place), email, "a guess").await);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The place the owner set the new password from is familiar: the thief does not keep them out.
    assert_eq!(login_from(&app, &from(1), email, NEW_PASSWORD).await, 200);
}
