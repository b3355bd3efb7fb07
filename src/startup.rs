//! Building and running the service: the same path for `main` and for tests (which bind port 0).

use crate::auth::{Keys, LinkSigner, PasswordHasher};
use crate::commands::CommandBus;
use crate::config::Settings;
use crate::extract::MAX_BODY_BYTES;
use crate::mailer::{self, Mailer};
use crate::state::AppState;
use crate::{db, relay, routes, wake};
use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderName;
use std::net::SocketAddr;
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
    state: AppState,
    roles: Roles,
    nats: async_nats::Client,
    wake_rx: watch::Receiver<u64>,
}

/// Connects to Postgres, creating the database and running migrations first.
pub async fn prepare_database(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    db::ensure_database(&settings.database_url).await?;
    let pool = db::connect(&settings.database_url, settings.database_max_connections).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}

impl Application {
    pub async fn build(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        let pool = prepare_database(&settings).await?;
        let keys = Keys::load_or_generate(
            &settings.signing_key_file(),
            &settings.jwt_issuer,
            &settings.jwt_audience,
        )?;
        let links = LinkSigner::load_or_generate(&settings.link_key_file())?;
        let hasher = PasswordHasher::new(
            settings.hash_concurrency(),
            Duration::from_millis(settings.password_hash_queue_timeout_ms),
        )?;
        // Connects in the background and keeps retrying: the API works while NATS is away.
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(settings.nats_url.as_str())
            .await
            .context("NATS_URL is not valid")?;
        let listener = if roles.api {
            Some(
                TcpListener::bind(settings.listen_addr)
                    .await
                    .with_context(|| format!("cannot listen on {}", settings.listen_addr))?,
            )
        } else {
            None
        };
        let (wake_tx, wake_rx) = watch::channel(0u64);
        let state = AppState {
            users: Arc::new(CommandBus::new(pool.clone(), ())),
            sessions: Arc::new(CommandBus::new(pool.clone(), ())),
            pool,
            settings: Arc::new(settings),
            hasher,
            keys: Arc::new(keys),
            links,
            projectors: Arc::new(projections::all()),
            wake: Arc::new(wake_tx),
        };
        Ok(Self {
            listener,
            state,
            roles,
            nats,
            wake_rx,
        })
    }

    /// The port the API listens on (useful when it was configured as 0).
    pub fn port(&self) -> Option<u16> {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Runs every configured role until `shutdown`, then stops them and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            roles,
            nats,
            wake_rx,
        } = self;
        let settings = (*state.settings).clone();
        let js = async_nats::jetstream::new(nats);
        let mut tasks = JoinSet::new();
        tasks.spawn(wake::listen(
            state.pool.clone(),
            (*state.wake).clone(),
            shutdown.clone(),
        ));
        if roles.projectors {
            for projector in state.projectors.iter() {
                tasks.spawn(projections::run(
                    state.pool.clone(),
                    projector.clone(),
                    wake_rx.clone(),
                    settings.reader_poll(),
                    shutdown.clone(),
                ));
            }
        }
        if roles.relay {
            tasks.spawn(relay::run(
                state.pool.clone(),
                js.clone(),
                settings.clone(),
                wake_rx.clone(),
                shutdown.clone(),
            ));
        }
        if roles.mailer {
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
            let app = http_app(state.clone());
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .await
            .context("HTTP server failed")?;
        } else {
            shutdown.cancelled().await;
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// The router with the HTTP layers every request goes through.
pub fn http_app(state: AppState) -> axum::Router {
    let request_id = HeaderName::from_static("x-request-id");
    routes::router(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}
