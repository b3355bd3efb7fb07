//! `TestApp`: a running service on a fresh database, stream and SMTP sink, with one typed helper
//! per endpoint.

pub mod passkey;
mod smtp;

pub use smtp::SmtpSink;

use accounts::{Application, Roles, Settings};
use async_nats::jetstream;
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const LINK_BASE: &str = "http://app.test/activate/";
pub const RESET_BASE: &str = "http://app.test/reset/";
pub const PASSWORD: &str = "correct horse battery staple";
pub const NEW_PASSWORD: &str = "purple monkey dishwasher 42";

pub struct TestApp {
    pub address: String,
    /// The management listener: `/metrics`, `/healthz`, `/readyz`.
    pub management: String,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub settings: Settings,
    pub smtp: SmtpSink,
    pub js: jetstream::Context,
    keys: std::sync::Arc<accounts::auth::Keys>,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
    /// Whether this app made its database, stream and data directory, and removes them on drop.
    owns_resources: bool,
}

impl TestApp {
    /// The vault of this app's personal data (its DATA_KEY_FILE).
    pub fn vault(&self) -> projections::pii::Vault {
        self.settings.vault().unwrap()
    }

    /// The stored events that match `condition` (SQL on `events`), in commit order, opened
    /// with the keys the database holds now (as the service reads them).
    pub async fn opened_events(&self, condition: &str) -> Vec<projections::StoredEvent> {
        let mut events: Vec<projections::StoredEvent> = sqlx::query_as(&format!(
            "select aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                    metadata, global_position, transaction_id::text as transaction_id,
                    recorded_at
               from events where {condition} order by global_position"
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap();
        let mut conn = self.pool.acquire().await.unwrap();
        projections::reader::open_all(
            &mut conn,
            &self.vault(),
            projections::reader::Opens::All,
            &mut events,
        )
        .await
        .unwrap();
        events
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self.owns_resources {
            let settings = self.settings.clone();
            // Drop runs inside the test's runtime: clean up on a thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(remove_resources(settings));
            })
            .join();
        }
    }
}

/// Deletes a test's stream, database and data directory.
pub async fn remove_resources(settings: Settings) {
    if let Ok(nats) = async_nats::connect(settings.nats_url.as_str()).await {
        let _ = jetstream::new(nats)
            .delete_stream(&settings.nats_stream)
            .await;
    }
    let mut url = url::Url::parse(&settings.database_url).unwrap();
    let name = url.path().trim_start_matches('/').to_owned();
    url.set_path("postgres");
    if let Ok(pool) = PgPool::connect(url.as_str()).await {
        let _ = sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
            .execute(&pool)
            .await;
        // The deployment's analyst roles are cluster-wide: they go with their database.
        for role in [
            format!("{name}_analyst"),
            format!("{name}_analyst_pseudonymous"),
        ] {
            let _ = sqlx::query(&format!("drop role if exists \"{role}\""))
                .execute(&pool)
                .await;
        }
    }
    let _ = std::fs::remove_dir_all(&settings.data_dir);
}

pub fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/accounts".into());
    let mut url = url::Url::parse(&base).expect("DATABASE_URL");
    url.set_path(name);
    url.to_string()
}

/// Settings for a test: a fresh database, stream, subject prefix, data directory and port.
pub async fn test_settings(smtp: &SmtpSink) -> Settings {
    let id = Uuid::new_v4().simple().to_string();
    let mut settings = Settings::from_env().expect("settings");
    // At most 42 bytes: the analyst roles are named after the database (see `db::migrate`).
    settings.database_url = database_url(&format!("accounts_test_{}", &id[..24]));
    settings.nats_stream = format!("TEST_{id}");
    settings.nats_subject_prefix = format!("t{id}");
    settings.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port));
    settings.listen_addr = "127.0.0.1:0".parse().unwrap();
    settings.management_listen_addr = "127.0.0.1:0".parse().unwrap();
    settings.data_dir = std::env::temp_dir().join(format!("accounts-test-{id}"));
    settings.allowed_link_origins = vec!["http://app.test".into()];
    settings.default_link_base_url = RESET_BASE.into();
    settings.reader_poll_ms = 100;
    // The pool keeps its default size (8 on two cores): a request that holds one connection and
    // waits for a second would show here as a 503 under the tests' bursts.
    // Tests send bursts from one address; the per-IP limit has a test of its own.
    settings.ip_rate_per_minute = 6_000_000;
    settings.ip_rate_burst = 100_000;
    settings
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let smtp = SmtpSink::start().await;
        let mut settings = test_settings(&smtp).await;
        adjust(&mut settings);
        let mut app = Self::start(settings, smtp, Roles::ALL).await;
        app.owns_resources = true;
        app
    }

    /// Starts a service on existing settings (e.g. a second process on the same database).
    pub async fn start(settings: Settings, smtp: SmtpSink, roles: Roles) -> TestApp {
        let app = Application::build(settings.clone(), roles)
            .await
            .expect("the service builds");
        let port = app.port();
        let management_port = app.management_port();
        let pool = app.state().pool.clone();
        let keys = app.state().keys.clone();
        let service_nats = app.state().nats.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            app.run(token).await.expect("the service runs");
        });
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(settings.nats_url.as_str())
            .await
            .expect("a NATS URL");
        // The service connects to NATS in the background; like a deployment that waits for
        // readiness, a test starts once it has (or after 5 s, for tests where NATS is away).
        for _ in 0..500 {
            if service_nats.connection_state() == async_nats::connection::State::Connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TestApp {
            address: format!("http://127.0.0.1:{}", port.unwrap_or(0)),
            management: format!("http://127.0.0.1:{}", management_port.unwrap_or(0)),
            client: reqwest::Client::new(),
            pool,
            settings,
            smtp,
            js: jetstream::new(nats),
            keys,
            shutdown,
            handle: Some(handle),
            owns_resources: false,
        }
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn shutdown_now(&self) {
        self.shutdown.cancel();
    }

    /// Stops the service and waits until every role has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// Makes the running service re-read its keyring now (it also does every 30 s).
    pub fn keys_reload(&self) {
        self.keys.reload().unwrap();
    }

    /// The Prometheus text of the management listener.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.management))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    /// The OpenAPI document the service serves.
    pub async fn openapi(&self) -> Value {
        let response = self
            .client
            .get(self.url("/accounts/api/spectacular/"))
            .send()
            .await
            .expect("request");
        json_of(response, StatusCode::OK).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_authed(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get_authed(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, username: &str, email: &str, password: &str) -> Response {
        self.post(
            "/accounts/api/registration/",
            &json!({
                "username": username,
                "email": email,
                "password": password,
                "confirm_password": password,
                "verification_base_url": LINK_BASE,
            }),
        )
        .await
    }

    pub async fn resend_activation(&self, email: &str) -> Response {
        self.post(
            "/accounts/api/get/acctivation/token/",
            &json!({ "email": email, "verification_base_url": LINK_BASE }),
        )
        .await
    }

    /// POSTs to the API path that a mailed link (`<base><uidb64>/<token>/`) stands for.
    pub async fn activate_link(&self, link: &str) -> Response {
        let (uid, token) = link_parts(link);
        self.client
            .post(self.url(&format!("/accounts/api/verify/token/{uid}/{token}/")))
            .send()
            .await
            .expect("request")
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/accounts/api/login/",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn forgot_password(&self, email: &str) -> Response {
        self.post("/accounts/api/forget/password/", &json!({ "email": email }))
            .await
    }

    pub async fn set_new_password(&self, link: &str, password: &str) -> Response {
        let (uid, token) = link_parts(link);
        self.post(
            &format!("/accounts/api/set/new/forget/password/{uid}/{token}/"),
            &json!({ "new_password": password, "confirm_password": password }),
        )
        .await
    }

    pub async fn change_password(&self, token: &str, old: &str, new: &str) -> Response {
        self.post_authed(
            "/accounts/api/change/password/",
            token,
            &json!({ "old_password": old, "new_password": new, "confirm_password": new }),
        )
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post(
            "/accounts/api/token/refresh/",
            &json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// Registers, activates through the mailed link, and logs in: `(access, refresh)`.
    pub async fn active_user(&self, username: &str, email: &str) -> (String, String) {
        let registered = self.register(username, email, PASSWORD).await;
        let status = registered.status();
        assert_eq!(
            status,
            201,
            "{}",
            registered.text().await.unwrap_or_default()
        );
        let mail = self.smtp.wait_for(email, "Activate your account").await;
        assert_eq!(self.activate_link(&mail.link()).await.status(), 200);
        let body = json_of(self.login(email, PASSWORD).await, StatusCode::OK).await;
        (
            body["access_token"].as_str().unwrap().to_owned(),
            body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn count_events(&self, event_type: &str) -> i64 {
        sqlx::query_scalar("select count(*) from events where event_type = $1")
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every message in this test's stream, in order.
    pub async fn stream_messages(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut stream = self
            .js
            .get_stream(&self.settings.nats_stream)
            .await
            .expect("stream exists");
        let last = stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence;
        let mut messages = Vec::new();
        for seq in 1..=last {
            if let Ok(message) = stream.get_raw_message(seq).await {
                messages.push(message);
            }
        }
        messages
    }

    /// Waits until the relay has published every event in the store.
    pub async fn wait_for_relay(&self) {
        let expected = self.event_count().await as u64;
        eventually(|| async {
            let stream = self.js.get_stream(&self.settings.nats_stream).await;
            match stream {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map(|i| i.state.messages >= expected)
                    .unwrap_or(false),
                Err(_) => false,
            }
        })
        .await;
    }

    /// Waits until the mailer has acknowledged everything it was given (a message whose ack was
    /// lost comes back after the consumer's 30 s ack wait, hence the longer limit).
    pub async fn wait_for_mailer_idle(&self) {
        self.wait_for_relay().await;
        eventually_within(60, || async {
            let Ok(stream) = self.js.get_stream(&self.settings.nats_stream).await else {
                return false;
            };
            let Ok(mut consumer) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    &self.settings.mailer_consumer,
                )
                .await
            else {
                return false;
            };
            match consumer.info().await {
                Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
                Err(_) => false,
            }
        })
        .await;
    }
}

/// Polls `check` until it holds, for at most 20 seconds.
pub async fn eventually<F, Fut>(check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(20, check).await
}

/// Polls `check` until it holds, for at most `secs` seconds.
pub async fn eventually_within<F, Fut>(secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..secs * 20 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not reached in {secs} s");
}

/// `(uidb64, token)` of a link `<base><uidb64>/<token>/`.
pub fn link_parts(link: &str) -> (String, String) {
    let parts: Vec<&str> = link.trim_end_matches('/').rsplitn(3, '/').collect();
    (parts[1].to_owned(), parts[0].to_owned())
}

/// Asserts the status and returns the JSON body.
pub async fn json_of(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(actual, status, "unexpected status; body: {body}");
    body
}

/// A Python venv under `/var/tmp/<name>` with `packages` (pinned, from the package index), made
/// on first use like Chromium for the Swagger UI test; returns the venv's directory.
pub fn python_venv(name: &str, packages: &[&str]) -> std::path::PathBuf {
    static READY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = READY.lock().unwrap_or_else(|e| e.into_inner());
    let venv = std::path::Path::new("/var/tmp").join(name);
    let marker = venv.join("installed");
    let wanted = packages.join(" ") + "\n";
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let made = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(made.success(), "python3 -m venv failed");
        let installed = std::process::Command::new(venv.join("bin/python"))
            .args(["-m", "pip", "install", "-q"])
            .args(packages)
            .status()
            .unwrap();
        assert!(installed.success(), "pip install {packages:?} failed");
        std::fs::write(&marker, wanted).unwrap();
    }
    venv
}

/// Every row of the read models (profile, history, activity), in a stable order, without
/// bookkeeping columns.
pub async fn read_models(pool: &PgPool) -> (Vec<String>, Vec<String>, Vec<String>) {
    let profiles = sqlx::query_scalar(
        "select row(user_id, username, email, is_active, date_joined, last_login, country, profession,
                    bio, thoughts, profile_img, token_epoch, version, deleted_at)::text from profile order by user_id",
    )
    .fetch_all(pool).await.unwrap();
    let history = sqlx::query_scalar(
        "select row(user_id, position, event, occurred_at, ip, user_agent, details)::text
           from user_history order by position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let activity = sqlx::query_scalar(
        "select row(kind, period, user_id, users)::text from user_activity order by 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (profiles, history, activity)
}

/// Rebuilds every read model from the events (what `accounts projections rebuild` does).
pub async fn rebuild_all(app: &TestApp) {
    for projector in projections::all(&app.vault()) {
        projections::rebuild::rebuild(&app.pool, projector.as_ref(), |_| {})
            .await
            .unwrap();
    }
}

/// Waits until every projector (not the relay) has applied every event.
pub async fn caught_up(app: &TestApp) {
    eventually(|| async {
        projections::rebuild::status(&app.pool)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.name != "relay")
            .all(|r| r.behind == 0)
    })
    .await;
}
