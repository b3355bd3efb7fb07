//! Operations in one process: documentation, metrics, readiness, request ids, mail faults,
//! graceful shutdown.

use crate::helpers::*;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn swagger_ui_and_the_yaml_spec_are_served_without_outside_network() {
    let app = TestApp::spawn().await;
    let page = app
        .client
        .get(app.url("/accounts/api/spectacular/swagger-ui/"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("unpkg.com") && !html.contains("cdn."),
        "assets come from us"
    );
    let init = app
        .client
        .get(app.url("/accounts/api/spectacular/swagger-ui/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert!(init
        .text()
        .await
        .unwrap()
        .contains("/accounts/api/spectacular/openapi.json"));
    let spec = json_of(
        app.client
            .get(app.url("/accounts/api/spectacular/openapi.json"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(spec["paths"]["/accounts/api/login/"].is_object());
    let yaml = app
        .client
        .get(app.url("/accounts/api/spectacular/?format=yaml"))
        .send()
        .await
        .unwrap();
    assert!(yaml.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/yaml"));
    let text = yaml.text().await.unwrap();
    assert!(
        text.starts_with("openapi: 3"),
        "{}",
        &text[..40.min(text.len())]
    );
    assert!(text.contains("/accounts/api/registration/:"));
}

#[tokio::test]
async fn metrics_show_requests_hashing_lag_and_mails() {
    let app = TestApp::spawn().await;
    app.active_user("metric", "metric@example.com").await;
    app.wait_for_mailer_idle().await;
    eventually(|| async {
        app.metrics()
            .await
            .contains("reader_lag_events{reader=\"profile\"}")
    })
    .await;
    let text = app.metrics().await;
    for help in [
        "# HELP http_requests_total ",
        "# HELP password_hash_seconds ",
        "# HELP reader_lag_events ",
        "# HELP mails_sent_total ",
    ] {
        assert!(text.contains(help), "no {help:?}");
    }
    for needle in [
        "http_requests_total{method=\"POST\",route=\"/accounts/api/login/\",status=\"200\"}",
        "http_request_duration_seconds_bucket{method=\"POST\",route=\"/accounts/api/login/\"",
        "password_hash_seconds_bucket{op=\"verify\"",
        "password_hash_seconds_bucket{op=\"hash\"",
        "reader_lag_seconds{reader=\"relay\"}",
        "mails_sent_total{kind=\"activation\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

#[tokio::test]
async fn readiness_names_the_failing_part() {
    let app = TestApp::spawn().await;
    // NATS connects in the background: ready once it has (a probe polls, and so do we).
    eventually(|| async {
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        response.status() == StatusCode::OK
    })
    .await;
    let ready = json_of(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ready["checks"]["nats"], true);
    assert!(ready["checks"]["lag"]["profile"].is_object());

    let unreachable = TestApp::spawn_with(|s| s.nats_url = "nats://127.0.0.1:1".into()).await;
    let body = json_of(
        unreachable
            .client
            .get(unreachable.url("/readyz"))
            .send()
            .await
            .unwrap(),
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(body["failing"], serde_json::json!(["nats"]));
    // Writes are still accepted while NATS is away.
    json_of(
        unreachable
            .register("nonats", "nonats@example.com", PASSWORD)
            .await,
        StatusCode::CREATED,
    )
    .await;
}

#[tokio::test]
async fn the_request_id_comes_back_and_lands_in_the_events_and_history() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .post(app.url("/accounts/api/registration/"))
        .header("x-request-id", "req-1234-abcd")
        .json(
            &serde_json::json!({"username": "rid", "email": "rid@example.com", "password": PASSWORD,
            "confirm_password": PASSWORD, "verification_base_url": LINK_BASE}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-1234-abcd");
    let ids: Vec<Option<String>> =
        sqlx::query_scalar("select metadata ->> 'request_id' from events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(ids, vec![Some("req-1234-abcd".to_owned()); 2]);
    eventually(|| async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from user_history where details ->> 'request_id' = 'req-1234-abcd'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        n == 2
    })
    .await;
    // Without one, the service makes one and returns it.
    let response = app.login("rid@example.com", "wrong password x").await;
    let made = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&made).is_ok());
}

#[tokio::test]
async fn a_refused_mail_is_retried_with_back_off_and_sent_once() {
    let app = TestApp::spawn_with(|s| {
        s.mail_retry_base_secs = 1;
        s.mail_max_attempts = 5;
    })
    .await;
    app.smtp.refuse_next(2);
    json_of(
        app.register("retry", "retry@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    app.smtp.wait_for("retry@example.com", "Activate").await;
    app.wait_for_mailer_idle().await;
    assert_eq!(app.smtp.to("retry@example.com").len(), 1);
    let text = app.metrics().await;
    assert!(text.contains("mails_retried_total"), "{text}");
}

#[tokio::test]
async fn a_mail_failing_every_attempt_is_recorded_listed_and_retried_by_command() {
    let app = TestApp::spawn_with(|s| {
        s.mail_retry_base_secs = 1;
        s.mail_max_attempts = 2;
    })
    .await;
    app.smtp.refuse_next(usize::MAX);
    json_of(
        app.register("fail", "fail@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    eventually(|| async {
        !accounts::workers::mailer::failed(&app.pool)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let failed = accounts::workers::mailer::failed(&app.pool).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (
            failed[0].kind.as_str(),
            failed[0].recipient.as_str(),
            failed[0].attempts
        ),
        ("activation", "fail@example.com", 2)
    );
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("451"),
        "{:?}",
        failed[0].last_error
    );
    let text = app.metrics().await;
    assert!(
        text.contains("mails_failed_total{kind=\"activation\"}"),
        "{text}"
    );
    assert!(app.smtp.to("fail@example.com").is_empty());

    app.smtp.refuse_next(0);
    let links =
        accounts::auth::LinkSigner::load_or_generate(&app.settings.link_key_file()).unwrap();
    let mailer =
        accounts::workers::mailer::Mailer::new(app.pool.clone(), &app.settings, links).unwrap();
    assert_eq!(mailer.retry_failed(None).await.unwrap(), 1);
    assert_eq!(app.smtp.to("fail@example.com").len(), 1);
    assert!(accounts::workers::mailer::failed(&app.pool)
        .await
        .unwrap()
        .is_empty());
    let link = app
        .smtp
        .wait_for("fail@example.com", "Activate")
        .await
        .link();
    json_of(app.activate_link(&link).await, StatusCode::OK).await;
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let app = TestApp::spawn_with(|s| s.password_hash_concurrency = Some(1)).await;
    let requests = join_all((0..3).map(|i| {
        let app = &app;
        async move {
            app.register(
                &format!("late{i}"),
                &format!("late{i}@example.com"),
                PASSWORD,
            )
            .await
            .status()
        }
    }));
    let stop = async {
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        app.shutdown_now();
    };
    let (statuses, ()) = tokio::join!(requests, stop);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    let value: Value = serde_json::json!(statuses.len());
    assert_eq!(value, 3);
}

/// Debian's Chromium, installed on first use on a machine that lacks it (these machines are
/// ours to set up, as root, from Debian's packages).
fn chromium() -> std::path::PathBuf {
    let path = std::path::PathBuf::from("/usr/bin/chromium");
    if !path.exists() {
        let installed = std::process::Command::new("sh")
            .args(["-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(installed, "Chromium is needed: apt-get install chromium");
    }
    path
}

#[tokio::test]
async fn the_swagger_ui_page_shows_every_endpoint_in_headless_chromium() {
    let app = TestApp::spawn().await;
    let url = app.url("/accounts/api/spectacular/swagger-ui/");
    let profile = std::env::temp_dir().join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
    let browser = chromium();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=20000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    for path in [
        "/accounts/api/registration/",
        "/accounts/api/get/acctivation/token/",
        "/accounts/api/verify/token/{uidb64}/{token}/",
        "/accounts/api/login/",
        "/accounts/api/dashboard/",
        "/accounts/api/get/profile/",
        "/accounts/api/update/profile/",
        "/accounts/api/change/password/",
        "/accounts/api/forget/password/",
        "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
        "/accounts/api/token/refresh/",
        "/accounts/api/logout/",
        "/accounts/api/history/",
        "/.well-known/jwks.json",
    ] {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "{path} not shown; page:\n{}",
            &dom[..dom.len().min(2000)]
        );
    }
}

/// A reader that ended (a finished rebuild deletes its checkpoint) must not keep its last lag in
/// `/metrics` for good: any lag alert would fire forever.
#[tokio::test]
async fn the_gauges_of_a_reader_that_ended_go_back_to_zero() {
    let app = TestApp::spawn().await;
    app.active_user("gauge", "gauge@example.com").await;
    // A reader that is far behind, as a rebuild is while it runs.
    sqlx::query(
        "insert into reader_checkpoint (name, transaction_id, position, updated_at)
         values ('profile_rebuild', '0'::xid8, 0, now() - interval '1 day')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let lag = || async {
        let text = app.metrics().await;
        text.lines()
            .find(|l| l.starts_with("reader_lag_events{reader=\"profile_rebuild\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    eventually_within(20, || async { lag().await.is_some_and(|v| v > 0.0) }).await;
    sqlx::query("delete from reader_checkpoint where name = 'profile_rebuild'")
        .execute(&app.pool)
        .await
        .unwrap();
    eventually_within(20, || async { lag().await == Some(0.0) }).await;
}

/// A database name too long for its analyst roles' names (Postgres cuts names at 63 bytes, and
/// `<database>_analyst_pseudonymous` would become another role's name) is refused with a clear
/// message before anything is migrated.
#[tokio::test]
async fn a_database_name_too_long_for_its_analyst_roles_is_refused_before_migrating() {
    let smtp = SmtpSink::start().await;
    let mut settings = test_settings(&smtp).await;
    settings.database_url = database_url(&format!("accounts_test_{}", "x".repeat(40)));
    let error = match accounts::Application::build(settings.clone(), accounts::Roles::API).await {
        Ok(_) => panic!("a 54-byte database name was migrated"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("at most 42"), "{error}");
    let migrated: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_roles where rolname like 'accounts_test_xxxx%')",
    )
    .fetch_one(
        &accounts::store::db::connect(&settings.database_url, 1)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(!migrated, "no analyst role was made");
    remove_resources(settings).await;
}

/// The pool does not check a connection with a round trip each time it hands it out (it is
/// checked when given back), but one that sat idle for a while is checked first: a connection
/// that Postgres ended meanwhile (a restart, `idle_session_timeout`, a proxy) is replaced, and
/// the query that asked for it runs on a new one instead of failing.
#[tokio::test]
async fn a_pooled_connection_postgres_ended_while_it_sat_idle_is_replaced_before_use() {
    let pool = accounts::store::db::connect(&database_url("postgres"), 1)
        .await
        .unwrap();
    let first: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let admin = accounts::store::db::connect(&database_url("postgres"), 1)
        .await
        .unwrap();
    let ended: bool = sqlx::query_scalar("select pg_terminate_backend($1, 5000)")
        .bind(first)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(ended);
    let second: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .expect("the dead connection was replaced");
    assert_ne!(second, first);
}
