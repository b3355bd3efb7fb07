//! Building and running the service: the same path for `main` and for tests (which bind port 0).

use crate::api as routes;
use crate::api::body::MAX_BODY_BYTES;
use crate::api::state::AppState;
use crate::auth::throttle::LoginThrottle;
use crate::auth::{Keys, LinkSigner, PasswordHasher};
use crate::config::Settings;
use crate::store::commands::CommandBus;
use crate::store::{db, wake};
use crate::workers::mailer::{self, Mailer};
use crate::workers::relay;
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Which parts of the service this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub relay: bool,
    pub projectors: bool,
    pub mailer: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        api: true,
        relay: true,
        projectors: true,
        mailer: true,
    };
    pub const API: Roles = Roles {
        api: true,
        relay: false,
        projectors: false,
        mailer: false,
    };
    pub const WORKER: Roles = Roles {
        api: false,
        relay: true,
        projectors: true,
        mailer: true,
    };
}

pub struct Application {
    listener: Option<TcpListener>,
    /// Metrics and probes, for every role (`MANAGEMENT_LISTEN_ADDR`).
    management: TcpListener,
    state: AppState,
    roles: Roles,
    nats: async_nats::Client,
    /// Bumped on every `NOTIFY events_appended`; relay and projectors wait on it.
    wake: (watch::Sender<u64>, watch::Receiver<u64>),
}

/// Connects to Postgres, creating the database and running migrations first.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    db::ensure_database(&settings.database_url).await?;
    let pool = db::connect(&settings.database_url, settings.db_connections()).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

impl Application {
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        let pool = prepare_database(&settings).await?;
        let keys = Keys::load(
            settings.signing_key_file.as_deref(),
            &settings.keyring_file(),
            &settings.jwt_issuer,
            &settings.jwt_audience,
        )?;
        let links = LinkSigner::load_or_generate(&settings.link_key_file())?;
        let vault = settings.vault()?;
        vault.verify(&pool).await?;
        crate::store::hash_identities(&pool, &vault).await?;
        let worker_tokens = Arc::new(settings.worker_tokens()?);
        let second_factors =
            crate::auth::mfa::SecondFactorKeys::load_or_generate(&settings.mfa_key_file())?;
        let webauthn = Arc::new(crate::auth::mfa::relying_party(&settings)?);
        let hasher = PasswordHasher::new(
            settings.hash_concurrency(),
            settings.password_hash_max_queue,
            Duration::from_millis(settings.password_hash_queue_timeout_ms),
            settings.password_hash_nice,
        )?;
        // Connects in the background and keeps retrying: the API works while NATS is away.
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(settings.nats_url.as_str())
            .await
            .context("NATS_URL is not valid")?;
        crate::api::layers::TrustedProxies::parse(
            &settings.trusted_proxies,
            settings.forwarded_header,
        )?;
        let open_files = crate::api::serve::raise_fd_limit();
        tracing::debug!(open_files, "open-file limit");
        let management = TcpListener::bind(settings.management_listen_addr)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (MANAGEMENT_LISTEN_ADDR)",
                    settings.management_listen_addr
                )
            })?;
        let listener = if roles.api {
            Some(
                TcpListener::bind(settings.listen_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", settings.listen_addr))?,
            )
        } else {
            None
        };
        let throttle = LoginThrottle::new(
            pool.clone(),
            settings.login_failure_limit,
            settings.login_shared_failure_limit,
            Duration::from_secs(settings.login_backoff_base_secs),
            Duration::from_secs(settings.login_backoff_max_secs),
            settings.login_familiar_days,
        );
        let state = AppState {
            users: Arc::new(CommandBus::with_cache_capacity(
                pool.clone(),
                vault.clone(),
                (),
                settings.aggregate_cache_size,
            )),
            sessions: Arc::new(CommandBus::with_cache_capacity(
                pool.clone(),
                vault.clone(),
                (),
                settings.aggregate_cache_size,
            )),
            pool,
            settings: Arc::new(settings),
            hasher,
            keys: Arc::new(keys),
            links,
            second_factors,
            webauthn,
            projectors: Arc::new(projections::all(&vault)),
            seen_logins: Default::default(),
            catch_up_gates: Arc::new(
                projections::all(&vault)
                    .iter()
                    .map(|_| Arc::new(projections::CatchUpGate::default()))
                    .collect(),
            ),
            throttle,
            vault,
            worker_tokens,
            nats: nats.clone(),
            background: tokio_util::task::TaskTracker::new(),
        };
        Ok(Self {
            listener,
            management,
            state,
            roles,
            nats,
            wake: watch::channel(0u64),
        })
    }

    /// The port the API listens on (useful when it was configured as 0).
    pub fn port(&self) -> Option<u16> {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    /// The port of the management listener (metrics and probes).
    pub fn management_port(&self) -> Option<u16> {
        self.management.local_addr().ok().map(|a| a.port())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs every configured role until `shutdown`, then stops them and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            management,
            state,
            roles,
            nats,
            wake: (wake_tx, wake_rx),
        } = self;
        let settings = (*state.settings).clone();
        let limits = crate::api::serve::Limits {
            header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs.max(1)),
            max_connections: settings.max_connections,
        };
        let js = async_nats::jetstream::new(nats);
        let mut tasks = JoinSet::new();
        tasks.spawn(wake::listen(state.pool.clone(), wake_tx, shutdown.clone()));
        tasks.spawn(reload_keys(state.keys.clone(), shutdown.clone()));
        if roles.api {
            tasks.spawn(state.throttle.clone().prune_now_and_then(shutdown.clone()));
        }
        crate::observe::handle();
        tasks.spawn(crate::observe::watch_lag(
            state.pool.clone(),
            shutdown.clone(),
        ));
        if roles.projectors && settings.run_projectors {
            // Every read model in one transaction per batch (requests that must read their own
            // write catch a lagging one up themselves, through its gate).
            tasks.spawn(projections::run_group(
                state.pool.clone(),
                state.projectors.as_ref().clone(),
                wake_rx.clone(),
                settings.reader_poll(),
                shutdown.clone(),
            ));
        }
        if roles.relay && settings.run_relay {
            tasks.spawn(relay::run(
                state.pool.clone(),
                js.clone(),
                settings.clone(),
                wake_rx.clone(),
                shutdown.clone(),
            ));
        }
        if roles.mailer && settings.run_mailer {
            let mailer = Mailer::new(state.pool.clone(), &settings, state.links.clone())?;
            tasks.spawn(mailer::run(
                mailer,
                js.clone(),
                settings.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(listener) = listener {
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "listening");
            let ip_limits = crate::api::layers::ip_limit_config(&settings);
            if let Some(config) = &ip_limits {
                tasks.spawn(crate::api::layers::prune_ip_limits(
                    config.clone(),
                    shutdown.clone(),
                ));
            }
            let app = http_app(
                state.clone(),
                ip_limits.map(crate::api::layers::ip_limit_layer),
            );
            tasks.spawn(serve_management(
                management,
                state.clone(),
                limits,
                shutdown.clone(),
            ));
            crate::api::serve::serve(listener, app, limits, shutdown.clone())
                .await
                .context("HTTP server failed")?;
        } else {
            tasks.spawn(serve_management(
                management,
                state.clone(),
                limits,
                shutdown.clone(),
            ));
            shutdown.cancelled().await;
        }
        while tasks.join_next().await.is_some() {}
        // Commands still running off the response path (mail look-ups) finish before exit.
        state.background.close();
        state.background.wait().await;
        Ok(())
    }
}

/// The router with the HTTP layers every request goes through.
pub fn http_app(
    state: AppState,
    ip_limit: Option<crate::api::layers::IpLimitLayer>,
) -> axum::Router {
    let request_id = HeaderName::from_static("x-request-id");
    let settings = state.settings.clone();
    let router = routes::router(state, ip_limit)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(axum::middleware::from_fn(crate::observe::track_http));
    let trusted = Arc::new(
        crate::api::layers::TrustedProxies::parse(
            &settings.trusted_proxies,
            settings.forwarded_header,
        )
        .unwrap_or_default(),
    );
    crate::api::layers::harden(router, &settings)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(request_failed),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::from_fn_with_state(
            trusted,
            crate::api::layers::client_ip,
        ))
}

/// A 5xx answer: an error, except 503, which says the service is not ready or is shedding load
/// (a readiness probe during start-up must not fill the log with errors).
fn request_failed(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass;
    let latency_ms = latency.as_millis() as u64;
    match class {
        ServerErrorsFailureClass::StatusCode(status)
            if status == axum::http::StatusCode::SERVICE_UNAVAILABLE =>
        {
            tracing::debug!(%status, latency_ms, "service unavailable")
        }
        other => tracing::error!(class = %other, latency_ms, "request failed"),
    }
}

/// The span of one request: method, route template (recorded once routed), request id and
/// a pseudonym of the client address. Never the URI: e-mailed links carry their tokens in the
/// path. Never the address itself: logs hold no personal data in clear, and they cannot be
/// crypto-shredded (see [`client_pseudonym`]).
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let client = request
        .extensions()
        .get::<crate::api::layers::ClientIp>()
        .map(|c| client_pseudonym(c.0))
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        method = %request.method(),
        route = tracing::field::Empty,
        request_id,
        client = %client,
    )
}

/// What logs name a client address by: 16 hex digits of its HMAC under a key that lives only in
/// this process's memory and is replaced every day (so one client's requests group together
/// within a day, and no key that survives can reverse or link a pseudonym later).
pub fn client_pseudonym(ip: std::net::IpAddr) -> String {
    use hmac::{Hmac, Mac};
    static KEY: std::sync::Mutex<Option<(i64, [u8; 32])>> = std::sync::Mutex::new(None);
    let day = chrono::Utc::now().timestamp() / 86_400;
    let key = {
        let mut held = KEY.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match *held {
            Some((held_day, key)) if held_day == day => key,
            _ => {
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
                *held = Some((day, key));
                key
            }
        }
    };
    let Ok(mut mac) = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(ip.to_string().as_bytes());
    mac.finalize().into_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves metrics and probes on the management listener until `shutdown`.
async fn serve_management(
    listener: TcpListener,
    state: AppState,
    limits: crate::api::serve::Limits,
    shutdown: CancellationToken,
) {
    let settings = state.settings.clone();
    let app = crate::api::layers::harden(routes::management_router(state), &settings);
    if let Err(error) = crate::api::serve::serve(listener, app, limits, shutdown).await {
        tracing::error!(
            error = format!("{error:#}"),
            "the management listener failed"
        );
    }
}

/// Picks up key rotations made by `accounts keys rotate` (possibly in another process).
async fn reload_keys(keys: Arc<Keys>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        if let Err(error) = keys.reload() {
            tracing::warn!(error = format!("{error:#}"), "cannot reload the keyring");
        }
    }
}

/// `accounts keys rotate`: adds a new signing key to the keyring (see [`crate::auth::keyring`]).
pub fn rotate_keys(settings: &Settings) -> anyhow::Result<()> {
    use crate::auth::keyring::StoredRing;
    if settings.signing_key_file.is_some() {
        anyhow::bail!("SIGNING_KEY_FILE is set: that key is managed outside this service");
    }
    let path = settings.keyring_file();
    let mut ring = StoredRing::load_or_create(&path)?;
    let now = chrono::Utc::now();
    ring.rotate(
        now,
        chrono::Duration::seconds(settings.key_rotation_delay as i64),
        chrono::Duration::seconds(settings.access_token_ttl as i64),
    )?;
    ring.write(&path)?;
    tracing::info!(
        signs_from = %(now + chrono::Duration::seconds(settings.key_rotation_delay as i64)),
        "added a signing key; running processes pick it up within 30 s"
    );
    Ok(())
}
