//! Protections that are on by default: rotation races, back-off, per-IP limits, shedding,
//! enumeration resistance, hardening headers.

use crate::helpers::*;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;

#[tokio::test]
async fn fifty_concurrent_refreshes_of_one_token_never_make_two_live_chains() {
    let app = TestApp::spawn().await;
    let (_, refresh) = app.active_user("rita", "rita@example.com").await;
    let answers = join_all((0..50).map(|_| {
        let app = &app;
        let refresh = refresh.clone();
        async move {
            let response = app.refresh(&refresh).await;
            (response.status(), response.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let issued: HashSet<String> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .map(|(_, body)| body["refresh_token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        issued.len(),
        1,
        "one successor token, however many raced: {answers:?}"
    );
    assert_eq!(app.count_events("Refreshed").await, 1);
    let successor = issued.into_iter().next().unwrap();
    json_of(app.refresh(&successor).await, StatusCode::OK).await;
}

#[tokio::test]
async fn a_refresh_racing_a_logout_never_leaves_a_usable_token() {
    let app = TestApp::spawn().await;
    for round in 0..10 {
        let email = format!("race{round}@example.com");
        let (_, refresh) = app.active_user(&format!("race{round}"), &email).await;
        let body = json!({"refresh_token": refresh});
        let logout = app.post("/accounts/api/logout/", &body);
        let (refreshed, _) = tokio::join!(app.refresh(&refresh), logout);
        if refreshed.status() == StatusCode::OK {
            let body: Value = refreshed.json().await.unwrap();
            let token = body["refresh_token"].as_str().unwrap();
            json_of(app.refresh(token).await, StatusCode::UNAUTHORIZED).await;
        }
        json_of(app.refresh(&refresh).await, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test]
async fn fifty_parallel_wrong_passwords_get_at_most_five_checks_then_back_off() {
    let app = TestApp::spawn_with(|s| {
        s.login_failure_limit = 5;
        s.login_backoff_base_secs = 2;
    })
    .await;
    let email = "brute@example.com";
    app.active_user("brute", email).await;
    let statuses = join_all((0..50).map(|i| {
        let app = &app;
        async move {
            app.login(email, &format!("wrong guess number {i}"))
                .await
                .status()
        }
    }))
    .await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(checked <= 5, "{checked} passwords were checked");
    assert_eq!(checked + throttled, 50);

    // Even the right password waits for the back-off, with the contract's 429.
    let response = app.login(email, PASSWORD).await;
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry after {retry}");
    let body = json_of(response, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("Request was throttled. Expected available in "));

    // It expires by itself.
    tokio::time::sleep(std::time::Duration::from_secs(retry)).await;
    json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;

    // The failures are in the owner's history.
    let (access, _) = {
        let body = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
        (body["access_token"].as_str().unwrap().to_owned(), ())
    };
    eventually(|| async {
        let history = json_of(
            app.get_authed("/accounts/api/history/?limit=200", &access)
                .await,
            StatusCode::OK,
        )
        .await;
        history["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "login_failed")
            .count()
            == checked
    })
    .await;
}

#[tokio::test]
async fn a_reset_by_email_lifts_the_back_off() {
    let app = TestApp::spawn_with(|s| s.login_failure_limit = 2).await;
    let email = "locked@example.com";
    app.active_user("locked", email).await;
    for _ in 0..3 {
        app.login(email, "not the right one").await;
    }
    json_of(
        app.login(email, PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let link = app.smtp.wait_for(email, "Reset your password").await.link();
    json_of(
        app.set_new_password(&link, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    json_of(app.login(email, NEW_PASSWORD).await, StatusCode::OK).await;
}

#[tokio::test]
async fn existing_and_unknown_addresses_get_identical_answers_on_all_four_endpoints() {
    let app = TestApp::spawn().await;
    app.active_user("known", "known@example.com").await;
    json_of(
        app.register("pending", "pending@example.com", PASSWORD)
            .await,
        StatusCode::CREATED,
    )
    .await;
    type BodyFor = Box<dyn Fn(&str) -> Value>;
    let cases: Vec<(&str, BodyFor)> = vec![
        (
            "/accounts/api/registration/",
            Box::new(|email: &str| {
                json!({
            "username": "newcomer", "email": email, "password": PASSWORD,
            "confirm_password": PASSWORD, "verification_base_url": LINK_BASE})
            }),
        ),
        (
            "/accounts/api/login/",
            Box::new(|email: &str| json!({"email": email, "password": "wrong password 123"})),
        ),
        (
            "/accounts/api/get/acctivation/token/",
            Box::new(|email: &str| json!({"email": email, "verification_base_url": LINK_BASE})),
        ),
        (
            "/accounts/api/forget/password/",
            Box::new(|email: &str| json!({"email": email})),
        ),
    ];
    for (path, body) in cases {
        for known in ["known@example.com", "pending@example.com"] {
            let a = app.post(path, &body(known)).await;
            let b = app.post(path, &body("unknown@example.com")).await;
            assert_eq!(a.status(), b.status(), "{path}");
            let ha: Vec<String> = a
                .headers()
                .keys()
                .map(|k| k.to_string())
                .filter(|k| k != "x-request-id" && k != "date")
                .collect();
            let hb: Vec<String> = b
                .headers()
                .keys()
                .map(|k| k.to_string())
                .filter(|k| k != "x-request-id" && k != "date")
                .collect();
            assert_eq!(ha, hb, "{path}");
            assert_eq!(a.text().await.unwrap(), b.text().await.unwrap(), "{path}");
        }
    }
}

#[tokio::test]
async fn one_address_past_its_quota_on_the_public_endpoints_gets_429() {
    let app = TestApp::spawn_with(|s| {
        s.ip_rate_per_minute = 1;
        s.ip_rate_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            app.post(
                "/accounts/api/forget/password/",
                &json!({"email": "a@example.com"}),
            )
            .await,
        );
    }
    let last = statuses.pop().unwrap();
    assert!(statuses.iter().all(|r| r.status() == StatusCode::OK));
    assert!(last.headers().contains_key("retry-after"));
    let body = json_of(last, StatusCode::TOO_MANY_REQUESTS).await;
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .starts_with("Request was throttled."));
    // Authenticated and documentation routes are not counted against it.
    assert_eq!(
        app.client
            .get(app.url("/accounts/api/spectacular/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_burst_beyond_the_hashing_bound_is_shed_fast_with_retry_after() {
    let app = TestApp::spawn_with(|s| {
        s.password_hash_concurrency = Some(1);
        s.password_hash_max_queue = 0;
    })
    .await;
    let responses = join_all((0..12).map(|i| {
        let app = &app;
        async move {
            app.register(
                &format!("burst{i}"),
                &format!("burst{i}@example.com"),
                PASSWORD,
            )
            .await
        }
    }))
    .await;
    let created = responses
        .iter()
        .filter(|r| r.status() == StatusCode::CREATED)
        .count();
    let shed: Vec<_> = responses
        .iter()
        .filter(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert!(!shed.is_empty(), "nothing was shed");
    assert!(shed.iter().all(|r| r.headers().contains_key("retry-after")));
    assert_eq!(created + shed.len(), 12);
    assert_eq!(
        app.count_events("Registered").await as usize,
        created,
        "a shed request stores nothing"
    );
}

#[tokio::test]
async fn responses_carry_hardening_headers_and_cors_only_for_allowed_origins() {
    let app =
        TestApp::spawn_with(|s| s.cors_allowed_origins = vec!["https://app.example".into()]).await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.contains_key("content-security-policy"));
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let other = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}
