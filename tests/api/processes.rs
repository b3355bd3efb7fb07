//! Real processes of the binary: several APIs and workers on one Postgres and one NATS, killed
//! workers, a restarted NATS.

use crate::helpers::*;
use accounts::Settings;
use futures::stream::{self, StreamExt};
use reqwest::StatusCode;
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The tests here start several processes each: one at a time is all a small machine takes.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A child process of the binary, killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub(crate) fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn env_of(settings: &Settings) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", settings.database_url.clone()),
        ("DATABASE_MAX_CONNECTIONS", "10".into()),
        ("NATS_URL", settings.nats_url.clone()),
        ("NATS_STREAM", settings.nats_stream.clone()),
        ("NATS_SUBJECT_PREFIX", settings.nats_subject_prefix.clone()),
        ("MAILER_CONSUMER", settings.mailer_consumer.clone()),
        ("SMTP_URL", settings.smtp_url.clone().unwrap_or_default()),
        ("DATA_DIR", settings.data_dir.display().to_string()),
        (
            "ALLOWED_LINK_ORIGINS",
            settings.allowed_link_origins.join(","),
        ),
        ("READER_POLL_MS", "100".into()),
        ("IP_RATE_PER_MINUTE", "6000000".into()),
        ("IP_RATE_BURST", "100000".into()),
        ("RUST_LOG", "warn".into()),
        ("MANAGEMENT_LISTEN_ADDR", "127.0.0.1:0".into()),
        // These tests load a 2-core machine with several processes: queue rather than shed.
        ("PASSWORD_HASH_QUEUE_TIMEOUT_MS", "60000".into()),
    ]
}

/// Starts `accounts <role>`; for `api` and `serve`, waits until it answers on its port.
async fn start(settings: &Settings, role: &str, extra: &[(&str, &str)]) -> (Proc, Option<String>) {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_accounts"));
    command
        .arg(role)
        .envs(env_of(settings))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in extra {
        command.env(key, value);
    }
    let proc = Proc(command.spawn().unwrap());
    if role == "worker" {
        return (proc, None);
    }
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually_within(90, || async {
        client
            .get(format!("{address}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    (proc, Some(address))
}

/// Settings for a set of processes sharing one database, stream and data directory, with the
/// database migrated and the keys made before any process starts.
async fn shared_settings(smtp: &SmtpSink) -> Settings {
    let settings = test_settings(smtp).await;
    accounts::startup::prepare_database(&settings)
        .await
        .unwrap();
    accounts::auth::LinkSigner::load_or_generate(&settings.link_key_file()).unwrap();
    settings.vault().unwrap();
    accounts::auth::Keys::load(None, &settings.keyring_file(), "accounts", "accounts-api").unwrap();
    settings
}

async fn register_many(
    client: &reqwest::Client,
    apis: &[String],
    range: std::ops::Range<usize>,
    tag: &str,
) -> Vec<StatusCode> {
    stream::iter(range)
        .map(|i| {
            let url = format!("{}/accounts/api/registration/", apis[i % apis.len()]);
            let body = serde_json::json!({"username": format!("{tag}{i}"), "email": format!("{tag}{i}@example.com"),
                "password": PASSWORD, "confirm_password": PASSWORD, "verification_base_url": LINK_BASE});
            let client = client.clone();
            async move { client.post(url).json(&body).send().await.map(|r| r.status()).unwrap_or(StatusCode::BAD_GATEWAY) }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Waits until the stream holds every event of the store, then checks each is there once.
async fn every_event_published_once(app: &TestApp) {
    app.wait_for_relay().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = app.stream_messages().await;
    let ids: HashSet<String> = messages
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), messages.len(), "a message was published twice");
    assert_eq!(
        messages.len() as i64,
        app.event_count().await,
        "an event was not published"
    );
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn two_apis_and_two_workers_handle_a_thousand_registrations_exactly_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let smtp = SmtpSink::start().await;
    let settings = shared_settings(&smtp).await;
    let (_api1, a1) = start(&settings, "api", &[]).await;
    let (_api2, a2) = start(&settings, "api", &[]).await;
    let (_w1, _) = start(&settings, "worker", &[]).await;
    let (_w2, _) = start(&settings, "worker", &[]).await;
    let observer = TestApp::start(
        settings.clone(),
        smtp.clone(),
        accounts::Roles {
            api: false,
            relay: false,
            projectors: false,
            mailer: false,
        },
    )
    .await;

    let apis = vec![a1.unwrap(), a2.unwrap()];
    let statuses = register_many(&reqwest::Client::new(), &apis, 0..1000, "many").await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::CREATED)
            .collect::<Vec<_>>()
    );

    assert_eq!(
        count(
            &observer,
            "select count(*) from events where event_type = 'Registered'"
        )
        .await,
        1000
    );
    eventually_within(90, || async {
        count(&observer, "select count(*) from profile").await == 1000
    })
    .await;
    eventually_within(90, || async {
        count(&observer, "select count(*) from user_history").await == 2000
    })
    .await;
    every_event_published_once(&observer).await;
    eventually_within(90, || async { smtp.all().len() >= 1000 }).await;
    observer.wait_for_mailer_idle().await;
    let mails = smtp.all();
    let recipients: HashSet<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    assert_eq!(
        (mails.len(), recipients.len()),
        (1000, 1000),
        "every activation mail once"
    );
    remove_resources(settings).await;
}

#[tokio::test]
async fn killing_a_worker_lets_the_other_take_over_without_loss_or_duplicates() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let smtp = SmtpSink::start().await;
    let settings = shared_settings(&smtp).await;
    let (_api, address) = start(&settings, "api", &[]).await;
    let apis = vec![address.unwrap()];
    let (first, _) = start(&settings, "worker", &[]).await;
    let (_second, _) = start(&settings, "worker", &[]).await;
    let observer = TestApp::start(
        settings.clone(),
        smtp.clone(),
        accounts::Roles {
            api: false,
            relay: false,
            projectors: false,
            mailer: false,
        },
    )
    .await;
    let client = reqwest::Client::new();
    register_many(&client, &apis, 0..60, "kill").await;
    first.kill();
    let statuses = register_many(&client, &apis, 60..120, "kill").await;
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED));
    eventually_within(90, || async {
        count(&observer, "select count(*) from profile").await == 120
    })
    .await;
    eventually_within(90, || async {
        count(&observer, "select count(*) from user_history").await == 240
    })
    .await;
    every_event_published_once(&observer).await;
    eventually_within(90, || async { smtp.all().len() >= 120 }).await;
    observer.wait_for_mailer_idle().await;
    // Mails in flight at the kill (at most MAILER_CONCURRENCY, 4) may go twice; no other.
    assert!(smtp.all().len() <= 124, "{} mails", smtp.all().len());
    remove_resources(settings).await;
}

#[tokio::test]
async fn a_mailer_killed_mid_batch_sends_every_mail_and_at_most_one_twice() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let smtp = SmtpSink::start().await;
    let settings = shared_settings(&smtp).await;
    let (_api, address) = start(&settings, "api", &[]).await;
    let apis = vec![address.unwrap()];
    let observer = TestApp::start(
        settings.clone(),
        smtp.clone(),
        accounts::Roles {
            api: false,
            relay: true,
            projectors: true,
            mailer: false,
        },
    )
    .await;
    register_many(&reqwest::Client::new(), &apis, 0..150, "mail").await;
    observer.wait_for_relay().await;
    // One mail in flight at a time, so at most one can go twice at the kill.
    let mailer_only = [
        ("RUN_RELAY", "false"),
        ("RUN_PROJECTORS", "false"),
        ("MAILER_CONCURRENCY", "1"),
    ];
    let (mailer, _) = start(&settings, "worker", &mailer_only).await;
    eventually_within(90, || async { smtp.all().len() >= 20 }).await;
    mailer.kill();
    let at_kill = smtp.all().len();
    assert!(at_kill < 150, "the mailer finished before the kill");
    let (_again, _) = start(&settings, "worker", &mailer_only).await;
    eventually_within(90, || async {
        let recipients: HashSet<String> = smtp.all().iter().flat_map(|m| m.to.clone()).collect();
        recipients.len() == 150
    })
    .await;
    observer.wait_for_mailer_idle().await;
    assert!(
        smtp.all().len() <= 151,
        "{} mails for 150 accounts",
        smtp.all().len()
    );
    remove_resources(settings).await;
}

/// A NATS server of this test's own, on its own port and store, so it can be stopped.
struct PrivateNats {
    port: u16,
    dir: std::path::PathBuf,
    proc: Option<Proc>,
}

impl PrivateNats {
    fn start(port: u16, dir: &std::path::Path) -> Proc {
        Proc(
            Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server is installed"),
        )
    }

    async fn new() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("nats-{}", uuid::Uuid::new_v4().simple()));
        let proc = Some(Self::start(port, &dir));
        eventually_within(90, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Self { port, dir, proc }
    }

    fn stop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.kill();
        }
    }

    async fn restart(&mut self) {
        self.proc = Some(Self::start(self.port, &self.dir));
        let port = self.port;
        eventually_within(90, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn with_nats_restarted_writes_go_on_and_every_event_is_published_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut nats = PrivateNats::new().await;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let app = TestApp::spawn_with(|s| s.nats_url = url).await;
    for i in 0..5 {
        json_of(
            app.register(&format!("n{i}"), &format!("n{i}@example.com"), PASSWORD)
                .await,
            StatusCode::CREATED,
        )
        .await;
    }
    app.wait_for_relay().await;
    nats.stop();
    for i in 5..10 {
        json_of(
            app.register(&format!("n{i}"), &format!("n{i}@example.com"), PASSWORD)
                .await,
            StatusCode::CREATED,
        )
        .await;
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    nats.restart().await;
    every_event_published_once(&app).await;
    eventually_within(90, || async {
        let recipients: HashSet<String> =
            app.smtp.all().iter().flat_map(|m| m.to.clone()).collect();
        recipients.len() == 10
    })
    .await;
    app.wait_for_mailer_idle().await;
    assert_eq!(app.smtp.all().len(), 10);
}

/// A Postgres cluster of this test's own (initdb'd as the `postgres` user), so it can be stopped.
struct PrivatePostgres {
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivatePostgres {
    const BIN: &'static str = "/usr/lib/postgresql/15/bin";

    fn as_postgres(args: &[&str]) -> bool {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn new() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        let data = dir.join("data");
        assert!(Self::as_postgres(&[
            &format!("{}/initdb", Self::BIN),
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres"
        ]));
        let pg = Self { port, dir };
        pg.start();
        pg
    }

    fn ctl(&self, action: &str) -> bool {
        let data = self.dir.join("data");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        Self::as_postgres(&[
            &format!("{}/pg_ctl", Self::BIN),
            "-D",
            data.to_str().unwrap(),
            "-o",
            &options,
            "-l",
            self.dir.join("log").to_str().unwrap(),
            "-w",
            "-m",
            "fast",
            action,
        ])
    }

    fn start(&self) {
        assert!(self.ctl("start"), "private Postgres did not start");
    }

    fn stop(&self) {
        assert!(self.ctl("stop"), "private Postgres did not stop");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/accounts", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn with_postgres_restarted_the_api_answers_503_then_recovers_and_loses_no_acknowledged_write()
{
    let _serial = ONE_AT_A_TIME.lock().await;
    let pg = PrivatePostgres::new();
    let url = pg.url();
    let app = TestApp::spawn_with(|s| {
        s.database_url = url;
        s.database_max_connections = Some(10);
    })
    .await;
    let (access, _) = app.active_user("pgr", "pgr@example.com").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        if app
            .register(&format!("pre{i}"), &format!("pre{i}@example.com"), PASSWORD)
            .await
            .status()
            == StatusCode::CREATED
        {
            acknowledged.push(format!("pre{i}@example.com"));
        }
    }

    pg.stop();
    for path in ["/accounts/api/get/profile/", "/readyz"] {
        let started = std::time::Instant::now();
        let response = client
            .get(app.url(path))
            .bearer_auth(&access)
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    let response = client
        .post(app.url("/accounts/api/registration/"))
        .json(&serde_json::json!({"username": "during", "email": "during@example.com", "password": PASSWORD,
            "confirm_password": PASSWORD, "verification_base_url": LINK_BASE}))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));

    pg.start();
    eventually_within(60, || async {
        client
            .get(app.url("/accounts/api/get/profile/"))
            .bearer_auth(&access)
            .send()
            .await
            .map(|r| r.status() == StatusCode::OK)
            .unwrap_or(false)
    })
    .await;
    for i in 0..5 {
        let status = app
            .register(
                &format!("post{i}"),
                &format!("post{i}@example.com"),
                PASSWORD,
            )
            .await
            .status();
        assert_eq!(status, StatusCode::CREATED);
        acknowledged.push(format!("post{i}@example.com"));
    }
    for email in &acknowledged {
        assert!(
            accounts::store::user_by_email(&app.pool, &app.vault(), email)
                .await
                .unwrap()
                .is_some(),
            "{email} was lost"
        );
    }
    // The readers recover too: every account reaches the read model and the stream.
    eventually_within(60, || async {
        count(&app, "select count(*) from profile").await == 1 + acknowledged.len() as i64
    })
    .await;
    every_event_published_once(&app).await;
}

// Finding 12: with RUST_LOG=debug the request span showed link tokens (`uri=/…/verify/token/…`).
#[tokio::test]
async fn at_trace_level_the_log_holds_no_password_token_or_hash() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let smtp = SmtpSink::start().await;
    let settings = shared_settings(&smtp).await;
    let port = free_port();
    let log_path = settings.data_dir.join("trace.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_accounts"));
    command
        .arg("serve")
        .envs(env_of(&settings))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let proc = Proc(command.spawn().unwrap());
    let api = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually_within(90, || async {
        client.get(format!("{api}/healthz")).send().await.is_ok()
    })
    .await;
    let post = |path: String, body: serde_json::Value| {
        let (client, api) = (&client, &api);
        async move {
            client
                .post(format!("{api}{path}"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let email = "traced@example.com";
    let secret = "a traced passphrase of 2026";
    let new_secret = "another traced passphrase";
    let registered = post(
        "/accounts/api/registration/".into(),
        serde_json::json!({"username": "traced", "email": email, "password": secret,
            "confirm_password": secret, "verification_base_url": LINK_BASE}),
    )
    .await;
    assert_eq!(registered.status(), 201);
    let activation = smtp.wait_for(email, "Activate").await.link();
    let (uid, activation_token) = link_parts(&activation);
    let activated = post(
        format!("/accounts/api/verify/token/{uid}/{activation_token}/"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(activated.status(), 200);
    let login = post(
        "/accounts/api/login/".into(),
        serde_json::json!({"email": email, "password": secret}),
    )
    .await;
    let login: serde_json::Value = login.json().await.unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let refreshed: serde_json::Value = post(
        "/accounts/api/token/refresh/".into(),
        serde_json::json!({"refresh_token": refresh}),
    )
    .await
    .json()
    .await
    .unwrap();
    let second_refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    let profile = client
        .get(format!("{api}/accounts/api/get/profile/"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 200);
    post(
        "/accounts/api/forget/password/".into(),
        serde_json::json!({"email": email}),
    )
    .await;
    let reset = smtp.wait_for(email, "Reset your password").await.link();
    let (uid, reset_token) = link_parts(&reset);
    let done = post(
        format!("/accounts/api/set/new/forget/password/{uid}/{reset_token}/"),
        serde_json::json!({"new_password": new_secret, "confirm_password": new_secret}),
    )
    .await;
    assert_eq!(done.status(), 200);
    // A second factor: set up, confirmed, and a login completed with a recovery code. (Its
    // six-digit code is not searched for: any microsecond of a timestamp could match it.)
    let authed = |path: &'static str, token: String, body: serde_json::Value| {
        let (client, api) = (&client, &api);
        async move {
            let response = client
                .post(format!("{api}{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.json::<serde_json::Value>().await.unwrap()
        }
    };
    let login: serde_json::Value = post(
        "/accounts/api/login/".into(),
        serde_json::json!({"email": email, "password": new_secret}),
    )
    .await
    .json()
    .await
    .unwrap();
    let access2 = login["access_token"].as_str().unwrap().to_owned();
    let setup = authed(
        "/accounts/api/mfa/totp/setup/",
        access2.clone(),
        serde_json::json!({"password": new_secret}),
    )
    .await;
    let totp_secret = setup["secret"].as_str().unwrap().to_owned();
    let totp_code = crate::mfa::Authenticator::from_setup(&setup).code(0);
    let confirmed = authed(
        "/accounts/api/mfa/totp/confirm/",
        access2,
        serde_json::json!({"code": totp_code}),
    )
    .await;
    let recovery_code = confirmed["recovery_codes"][0].as_str().unwrap().to_owned();
    let challenge: serde_json::Value = post(
        "/accounts/api/login/".into(),
        serde_json::json!({"email": email, "password": new_secret}),
    )
    .await
    .json()
    .await
    .unwrap();
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_owned();
    let completed = post(
        "/accounts/api/login/mfa/".into(),
        serde_json::json!({"mfa_token": mfa_token, "code": recovery_code}),
    )
    .await;
    assert_eq!(completed.status(), 200);
    let hash: String =
        sqlx::query_scalar("select password_hash from credential order by created_at desc limit 1")
            .fetch_one(&sqlx::PgPool::connect(&settings.database_url).await.unwrap())
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    proc.kill();

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("/accounts/api/verify/token/{uidb64}/{token}/"),
        "the log names routes by their template"
    );
    for (what, secret) in [
        ("password", secret),
        ("new password", new_secret),
        ("activation token", activation_token.as_str()),
        ("reset token", reset_token.as_str()),
        ("access token", access.as_str()),
        ("refresh token", refresh.as_str()),
        ("rotated refresh token", second_refresh.as_str()),
        ("password hash", hash.as_str()),
        ("TOTP secret", totp_secret.as_str()),
        ("recovery code", recovery_code.as_str()),
        ("login challenge token", mfa_token.as_str()),
    ] {
        assert!(!log.contains(secret), "the log holds the {what}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log written to a file"
    );
    // The signature part of a token is enough to replay it: none of it either.
    let signature = access.rsplit('.').next().unwrap();
    assert!(
        !log.contains(signature),
        "the log holds an access token's signature"
    );
}
