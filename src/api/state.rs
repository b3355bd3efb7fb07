//! What every handler shares.

use crate::api::error::ApiError;
use crate::auth::{Keys, LinkSigner, PasswordHasher};
use crate::config::Settings;
use crate::store::commands::CommandBus;
use aggregates::{Session, User};
use projections::Projector;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// How long a write waits for the read models to show it before answering anyway.
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub users: Arc<CommandBus<User>>,
    pub sessions: Arc<CommandBus<Session>>,
    pub hasher: PasswordHasher,
    pub keys: Arc<Keys>,
    pub links: LinkSigner,
    pub second_factors: crate::auth::mfa::SecondFactorKeys,
    /// The WebAuthn relying party (passkeys), from WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS.
    pub webauthn: Arc<webauthn_rs::Webauthn>,
    pub projectors: Arc<Vec<Arc<dyn Projector>>>,
    /// One per projector, in the same order: see [`projections::CatchUpGate`].
    pub catch_up_gates: Arc<Vec<Arc<projections::CatchUpGate>>>,
    pub throttle: crate::auth::throttle::LoginThrottle,
    /// Seals and opens personal data (crypto-shredding); hashes identities.
    pub vault: projections::pii::Vault,
    /// Bearer tokens of the workers that may open published events (WORKER_TOKENS).
    pub worker_tokens: Arc<Vec<String>>,
    pub nats: async_nats::Client,
    /// Work started by a request that finishes after its response (see
    /// `execute_for_email_in_background`); shutdown waits for it.
    pub background: tokio_util::task::TaskTracker,
    /// Sessions whose login every read model of this process's database has shown: reads in
    /// the minute after a login skip the check for them (read models never go back).
    pub seen_logins: Arc<std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>>,
}

impl AppState {
    /// Read-your-writes: returns once every read model has applied the event `sequence` of the
    /// stream. The request catches the projectors up itself (an `api`-only process has no
    /// background projectors to wait for), through a gate the requests of this process share:
    /// one catch-up serves every request that was waiting.
    ///
    /// Returns whether they all showed it in time (a lagging read model is logged, not an error).
    /// When they show it already, this costs one query and no catch-up.
    pub async fn sync_read_models(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: Option<i64>,
    ) -> Result<bool, ApiError> {
        let Some(sequence) = sequence else {
            return Ok(true);
        };
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        let mut lagging: Vec<usize> = (0..self.projectors.len()).collect();
        let mut looked = false;
        loop {
            if looked {
                let catch_ups = lagging.iter().map(|&i| {
                    self.catch_up_gates[i].catch_up(&self.pool, self.projectors[i].as_ref())
                });
                let Ok(results) =
                    tokio::time::timeout_at(deadline, futures::future::join_all(catch_ups)).await
                else {
                    tracing::warn!("read models are lagging");
                    return Ok(false);
                };
                for result in results {
                    result.map_err(ApiError::internal)?;
                }
            }
            let names: Vec<&str> = lagging.iter().map(|&i| self.projectors[i].name()).collect();
            let mut conn = self.pool.acquire().await?;
            let passed = projections::reader::passed_by(
                &mut conn,
                &names,
                aggregate_type,
                aggregate_id,
                sequence,
            )
            .await?;
            drop(conn);
            lagging.retain(|&i| !passed.iter().any(|p| p == self.projectors[i].name()));
            if lagging.is_empty() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    projector = self.projectors[lagging[0]].name(),
                    "read model is lagging"
                );
                return Ok(false);
            }
            if looked {
                // An older transaction is still open; its events must be applied first.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            looked = true;
        }
    }

    /// Every read model brought up to what is committed now (through the shared gates): for the
    /// rare reads that must show everything, not one known write (the export). A catch-up that
    /// takes longer than the read-your-writes timeout is logged and the read goes on.
    pub async fn catch_up_all(&self) -> Result<(), ApiError> {
        let catch_ups = self
            .projectors
            .iter()
            .zip(self.catch_up_gates.iter())
            .map(|(projector, gate)| gate.catch_up(&self.pool, projector.as_ref()));
        match tokio::time::timeout(SYNC_TIMEOUT, futures::future::join_all(catch_ups)).await {
            Ok(results) => results
                .into_iter()
                .try_for_each(|result| result.map_err(ApiError::internal)),
            Err(_) => {
                tracing::warn!("read models are lagging");
                Ok(())
            }
        }
    }

    /// Whether every read model is known to show the login of `session_id` (see `seen_logins`).
    pub fn login_seen(&self, session_id: uuid::Uuid) -> bool {
        self.seen_logins
            .lock()
            .is_ok_and(|seen| seen.contains(&session_id))
    }

    /// Remembers that every read model shows the login of `session_id`; the memory is bounded
    /// (forgetting only costs one query on a later read).
    pub fn note_login_seen(&self, session_id: uuid::Uuid) {
        if let Ok(mut seen) = self.seen_logins.lock() {
            if seen.len() >= 100_000 {
                seen.clear();
            }
            seen.insert(session_id);
        }
    }

    /// The account `user_id` as its events tell it.
    pub async fn load_user(&self, user_id: uuid::Uuid) -> Result<aggregates::User, ApiError> {
        self.users
            .load(&user_id.to_string())
            .await
            .map_err(crate::api::aggregate_error)
    }

    /// Runs a `User` command and waits until the read models show it (read-your-writes). For
    /// commands whose refusal is not expected: any error is an `ApiError`.
    pub async fn execute_user(
        &self,
        user_id: uuid::Uuid,
        command: aggregates::UserCommand,
        meta: &crate::api::body::RequestMeta,
    ) -> Result<(), ApiError> {
        let id = user_id.to_string();
        let done = self
            .users
            .execute(&id, command, meta)
            .await
            .map_err(crate::api::aggregate_error)?;
        self.sync_read_models("User", &id, done.last_sequence())
            .await?;
        Ok(())
    }

    /// Mails a new link (activation or reset) to the account of `email`, if there is one, off
    /// the response path: `command` builds the command from the link and the time.
    pub fn issue_link_in_background(
        &self,
        email: &aggregates::values::Email,
        base_url: String,
        ttl_secs: u64,
        meta: crate::api::body::RequestMeta,
        command: fn(
            aggregates::user::LinkIssue,
            chrono::DateTime<chrono::Utc>,
        ) -> aggregates::UserCommand,
    ) {
        let link = aggregates::user::LinkIssue {
            request_id: uuid::Uuid::new_v4(),
            base_url,
            ttl: chrono::Duration::seconds(ttl_secs as i64),
        };
        let now = chrono::Utc::now();
        self.execute_for_email_in_background(
            email.as_str().to_owned(),
            move |_| command(link, now),
            meta,
        );
    }

    /// Looks up the account of `email` and runs the command `make` builds for it, all off the
    /// response path: the answer takes the same time whether or not the address is registered.
    /// A refusal by the aggregate is expected (e.g. an already active account); anything else is
    /// logged.
    pub fn execute_for_email_in_background(
        &self,
        email: String,
        make: impl FnOnce(uuid::Uuid) -> aggregates::UserCommand + Send + 'static,
        meta: crate::api::body::RequestMeta,
    ) {
        let (pool, users, vault) = (self.pool.clone(), self.users.clone(), self.vault.clone());
        self.background.spawn(async move {
            let owner = match crate::store::user_by_email(&pool, &vault, &email).await {
                Ok(Some(owner)) => owner,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "background look-up failed");
                    return;
                }
            };
            match users.execute(&owner.to_string(), make(owner), &meta).await {
                Ok(_) | Err(cqrs_es::AggregateError::UserError(_)) => {}
                Err(error) => tracing::warn!(%error, "background command failed"),
            }
        });
    }

    /// The base of an e-mailed link, if its origin is allow-listed: an absolute http(s) URL.
    pub fn link_base(&self, raw: &str) -> Option<String> {
        let url = Url::parse(raw.trim()).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return None;
        }
        let origin = url.origin().ascii_serialization();
        let allowed = self.settings.allowed_link_origins.iter().any(|allowed| {
            Url::parse(allowed.trim())
                .map(|a| a.origin().ascii_serialization() == origin)
                .unwrap_or(false)
        });
        allowed.then(|| url.to_string())
    }

    pub fn access_ttl(&self) -> u64 {
        self.settings.access_token_ttl
    }
}
