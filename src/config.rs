//! One typed configuration, parsed once from flags and environment variables (`--help` lists all).

use clap::{Args, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForwardedHeader {
    XForwardedFor,
    Forwarded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting of the service. Each field is both a flag and an environment variable.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres connection URL; the database is created if missing and migrated at start.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/accounts"
    )]
    pub database_url: String,

    /// Most connections the process keeps to Postgres. Default: twice the number of cores and
    /// four more, between 8 and 20.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS")]
    pub database_max_connections: Option<u32>,

    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// JetStream stream that carries the account events.
    #[arg(long, env = "NATS_STREAM", default_value = "ACCOUNTS")]
    pub nats_stream: String,

    /// Subject prefix: events are published as `<prefix>.<aggregate>.<EventType>`.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "accounts")]
    pub nats_subject_prefix: String,

    /// Durable consumer name shared by every mailer worker.
    #[arg(long, env = "MAILER_CONSUMER", default_value = "mailer")]
    pub mailer_consumer: String,

    /// SMTP server, e.g. `smtp://127.0.0.1:1025` (plain) or `smtps://user:pass@host:465`.
    /// When unset, mails are written as `.eml` files into MAIL_DIR.
    #[arg(long, env = "SMTP_URL")]
    pub smtp_url: Option<String>,

    /// Sender of every mail.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Accounts <no-reply@localhost>"
    )]
    pub mail_from: String,

    /// Where mails go as `.eml` files when SMTP_URL is unset (default: `<DATA_DIR>/mail`).
    #[arg(long, env = "MAIL_DIR")]
    pub mail_dir: Option<PathBuf>,

    /// Address the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8000")]
    pub listen_addr: SocketAddr,

    /// Address of the management listener: `/metrics`, `/healthz`, `/readyz`. Every role serves
    /// it (workers too); keep it off the public network: metrics move with account activity.
    #[arg(long, env = "MANAGEMENT_LISTEN_ADDR", default_value = "127.0.0.1:9000")]
    pub management_listen_addr: SocketAddr,

    /// Seconds a connection may take to send a complete request head (also between requests on
    /// a kept-alive connection) before it is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Most connections served at once per listener; past it a new connection is closed at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Reverse proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` / `Forwarded`
    /// headers name the client; from any other peer those headers are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// The one forwarding header the trusted proxies set: `x-forwarded-for` (nginx, HAProxy,
    /// cloud load balancers append to it) or `forwarded` (RFC 7239). The other is ignored: a
    /// proxy passes a header it does not set through untouched, so a client could write it.
    #[arg(long, env = "FORWARDED_HEADER", default_value = "x-forwarded-for")]
    pub forwarded_header: ForwardedHeader,

    /// Origins (scheme://host[:port]) that e-mailed links may point to, comma-separated.
    #[arg(
        long,
        env = "ALLOWED_LINK_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:3000,http://127.0.0.1:3000,http://localhost:8000,http://127.0.0.1:8000"
    )]
    pub allowed_link_origins: Vec<String>,

    /// Link base used for password-reset mails when the request names none.
    #[arg(
        long,
        env = "DEFAULT_LINK_BASE_URL",
        default_value = "http://localhost:3000/reset-password/"
    )]
    pub default_link_base_url: String,

    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value_t = 900)]
    pub access_token_ttl: u64,

    /// Lifetime of a refresh token, in seconds (each rotation starts a new one).
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value_t = 604_800)]
    pub refresh_token_ttl: u64,

    /// How long the refresh token just spent may be presented again (a lost response), in seconds.
    #[arg(long, env = "REFRESH_REUSE_GRACE", default_value_t = 30)]
    pub refresh_reuse_grace: u64,

    /// Lifetime of activation links, in seconds.
    #[arg(long, env = "ACTIVATION_LINK_TTL", default_value_t = 86_400)]
    pub activation_link_ttl: u64,

    /// Lifetime of password-reset links, in seconds.
    #[arg(long, env = "RESET_LINK_TTL", default_value_t = 1_800)]
    pub reset_link_ttl: u64,

    /// `iss` of access tokens.
    #[arg(long, env = "JWT_ISSUER", default_value = "accounts")]
    pub jwt_issuer: String,

    /// `aud` of access tokens.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "accounts-api")]
    pub jwt_audience: String,

    /// Ed25519 signing key (PKCS#8 PEM) managed by the operator; it disables `keys rotate`.
    /// When unset, keys live in `<DATA_DIR>/keyring.json`, generated on first start.
    #[arg(long, env = "SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// After `keys rotate`, how long the new key is only published before it signs, in seconds
    /// (so that JWKS caches have it before the first token it signs).
    #[arg(long, env = "KEY_ROTATION_DELAY", default_value_t = 600)]
    pub key_rotation_delay: u64,

    /// Secret for link and refresh-token HMACs (32 random bytes, hex). Default:
    /// `<DATA_DIR>/link.key`, generated if missing. Every process of a deployment needs the same.
    #[arg(long, env = "LINK_KEY_FILE")]
    pub link_key_file: Option<PathBuf>,

    /// Key that encrypts TOTP secrets and keys the hashes of recovery codes (32 random bytes,
    /// hex). Default: `<DATA_DIR>/mfa.key`, generated if missing. Every process of a deployment
    /// needs the same; losing it turns every account's second factor off for good (the owners
    /// then need an operator).
    #[arg(long, env = "MFA_KEY_FILE")]
    pub mfa_key_file: Option<PathBuf>,

    /// Key-encryption key of the per-person data keys that seal personal data in events (32
    /// random bytes, hex). Default: `<DATA_DIR>/data.key`, generated if missing. Every process of
    /// a deployment needs the same; keep it out of database backups (with it, a backup taken
    /// before a deletion opens that person's data again until the backup ages out). Losing it
    /// makes every event's personal data unreadable.
    #[arg(long, env = "DATA_KEY_FILE")]
    pub data_key_file: Option<PathBuf>,

    /// Bearer tokens of trusted workers that may open the personal data of published events
    /// (`POST /accounts/internal/events/open/`), comma-separated. Empty: that endpoint refuses
    /// everyone.
    #[arg(
        long,
        env = "WORKER_TOKENS",
        default_value = "",
        hide_default_value = true
    )]
    pub worker_tokens: String,

    /// How long a login that needs a second factor waits for it after the password, in seconds.
    #[arg(long, env = "MFA_CHALLENGE_TTL", default_value_t = 300)]
    pub mfa_challenge_ttl: u64,

    /// The issuer authenticator apps show beside the account (the `otpauth://` URI's issuer).
    #[arg(long, env = "TOTP_ISSUER", default_value = "accounts")]
    pub totp_issuer: String,

    /// WebAuthn relying-party id: the domain passkeys are bound to (the front end's host or a
    /// parent domain of it).
    #[arg(long, env = "WEBAUTHN_RP_ID", default_value = "localhost")]
    pub webauthn_rp_id: String,

    /// Origins (scheme://host[:port], comma-separated) whose pages may register and use
    /// passkeys; each must be on WEBAUTHN_RP_ID or a subdomain of it.
    #[arg(
        long,
        env = "WEBAUTHN_ORIGINS",
        value_delimiter = ',',
        default_value = "http://localhost:3000"
    )]
    pub webauthn_origins: Vec<String>,

    /// The name passkey prompts show for this service.
    #[arg(long, env = "WEBAUTHN_RP_NAME", default_value = "accounts")]
    pub webauthn_rp_name: String,

    /// Directory for generated keys and the default mail directory.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Aggregates (users, sessions) whose state each process keeps in memory per type, so that a
    /// command needs no load: a stale entry is caught by the commit's sequence check. 0 turns
    /// the cache off (every command reads its stream).
    #[arg(long, env = "AGGREGATE_CACHE_SIZE", default_value_t = 4096)]
    pub aggregate_cache_size: usize,

    /// Password hashes computed at once (each takes 19 MiB). Default: the number of cores.
    #[arg(long, env = "PASSWORD_HASH_CONCURRENCY")]
    pub password_hash_concurrency: Option<usize>,

    /// How long a request may wait for a hashing slot before it is shed with 503, in milliseconds.
    #[arg(long, env = "PASSWORD_HASH_QUEUE_TIMEOUT_MS", default_value_t = 2_000)]
    pub password_hash_queue_timeout_ms: u64,

    /// Most queued password hashes; past it a request is shed at once with 503 + `Retry-After`.
    #[arg(long, env = "PASSWORD_HASH_MAX_QUEUE", default_value_t = 64)]
    pub password_hash_max_queue: usize,

    /// Nice value of the hashing threads (0-19; 0: as any other thread). Above 0, every short
    /// step of a request preempts a hash on a busy core.
    #[arg(long, env = "PASSWORD_HASH_NICE", default_value_t = 10,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub password_hash_nice: i32,

    /// Failed password checks in a row from one source (client address) on one account before
    /// that source backs off.
    #[arg(long, env = "LOGIN_FAILURE_LIMIT", default_value_t = 5)]
    pub login_failure_limit: u32,

    /// Failures in a row that one account shares among all the sources that never logged in
    /// to it (many addresses guessing one account) before those sources back off.
    #[arg(long, env = "LOGIN_SHARED_FAILURE_LIMIT", default_value_t = 20)]
    pub login_shared_failure_limit: u32,

    /// Days a source (client address) stays familiar to an account after it logged in with the
    /// password: familiar sources never draw on the shared budget.
    #[arg(long, env = "LOGIN_FAMILIAR_DAYS", default_value_t = 90)]
    pub login_familiar_days: u32,

    /// First back-off after LOGIN_FAILURE_LIMIT failures, in seconds; it doubles with each failure.
    #[arg(long, env = "LOGIN_BACKOFF_BASE_SECS", default_value_t = 30)]
    pub login_backoff_base_secs: u64,

    /// Longest back-off, in seconds. It always expires by itself; a reset by e-mail clears it.
    #[arg(long, env = "LOGIN_BACKOFF_MAX_SECS", default_value_t = 900)]
    pub login_backoff_max_secs: u64,

    /// Requests per minute one client IP may make to the unauthenticated endpoints.
    #[arg(long, env = "IP_RATE_PER_MINUTE", default_value_t = 120)]
    pub ip_rate_per_minute: u64,

    /// Burst of requests one client IP may make to the unauthenticated endpoints.
    #[arg(long, env = "IP_RATE_BURST", default_value_t = 30)]
    pub ip_rate_burst: u32,

    /// Origins allowed to call the API from a browser (CORS), comma-separated; empty: none.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    /// Longest a request may take before it is answered 503, in seconds.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Mails one worker sends at once. An SMTP conversation mostly waits on round trips
    /// (~45 ms a mail measured here), so one at a time caps a worker near 20 mails/s. A worker
    /// killed mid-send may send the mails it had in flight a second time: at most this many.
    #[arg(long, env = "MAILER_CONCURRENCY", default_value_t = 4)]
    pub mailer_concurrency: usize,

    /// Attempts at delivering one mail before it is recorded as failed.
    #[arg(long, env = "MAIL_MAX_ATTEMPTS", default_value_t = 5)]
    pub mail_max_attempts: u32,

    /// Wait before the first retry of a mail, in seconds; it doubles with each attempt.
    #[arg(long, env = "MAIL_RETRY_BASE_SECS", default_value_t = 5)]
    pub mail_retry_base_secs: u64,

    /// Run the relay (in `serve` and `worker`).
    #[arg(long, env = "RUN_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_relay: bool,

    /// Run the projectors (in `serve` and `worker`).
    #[arg(long, env = "RUN_PROJECTORS", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_projectors: bool,

    /// Run the mailer (in `serve` and `worker`).
    #[arg(long, env = "RUN_MAILER", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_mailer: bool,

    /// `/readyz` fails when the relay or a projector lags more than this, in seconds.
    #[arg(long, env = "READY_MAX_LAG_SECS", default_value_t = 60)]
    pub ready_max_lag_secs: u64,

    /// How often readers (relay, projectors) poll when no wake-up arrives, in milliseconds.
    #[arg(long, env = "READER_POLL_MS", default_value_t = 1_000)]
    pub reader_poll_ms: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn mail_dir(&self) -> PathBuf {
        self.mail_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mail"))
    }

    pub fn keyring_file(&self) -> PathBuf {
        self.data_dir.join("keyring.json")
    }

    pub fn link_key_file(&self) -> PathBuf {
        self.link_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("link.key"))
    }

    pub fn mfa_key_file(&self) -> PathBuf {
        self.mfa_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mfa.key"))
    }

    pub fn data_key_file(&self) -> PathBuf {
        self.data_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("data.key"))
    }

    /// The vault of personal data: the key-encryption key, generated if missing.
    pub fn vault(&self) -> anyhow::Result<projections::pii::Vault> {
        let key = crate::auth::secrets::load_or_generate_key(
            &self.data_key_file(),
            "data key-encryption key",
        )?;
        Ok(projections::pii::Vault::new(key))
    }

    /// [`Settings::vault`], checked against the database's record of its key-encryption key.
    pub async fn checked_vault(
        &self,
        pool: &sqlx::PgPool,
    ) -> anyhow::Result<projections::pii::Vault> {
        let vault = self.vault()?;
        vault.verify(pool).await?;
        Ok(vault)
    }

    /// The worker tokens, each at least 32 characters (shorter ones are refused at start).
    pub fn worker_tokens(&self) -> anyhow::Result<Vec<String>> {
        let tokens: Vec<String> = self
            .worker_tokens
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        anyhow::ensure!(
            tokens.iter().all(|t| t.len() >= 32),
            "every WORKER_TOKENS entry must be at least 32 characters"
        );
        Ok(tokens)
    }

    pub fn reader_poll(&self) -> Duration {
        Duration::from_millis(self.reader_poll_ms)
    }

    /// The pool's size: `DATABASE_MAX_CONNECTIONS`, else twice the cores and four more (at least
    /// 8, at most 20: the listener keeps one, the relay and the projectors one each while they
    /// work, and catch-ups up to three). Few connections kept busy cost Postgres less than many
    /// used in turn (the pool hands its idle connections out in order, so with many every backend
    /// runs cold): on two cores, 6 instead of 20 took a login's Postgres CPU from 2.7-3.5 to
    /// 2.1-2.5 ms and profile reads from ~5,000 to ~6,000/s in three alternating pairs of load
    /// runs; 8 (the default there) measured between the two on a noisier hour.
    pub fn db_connections(&self) -> u32 {
        self.database_max_connections
            .unwrap_or_else(|| (2 * cores() as u32 + 4).clamp(8, 20))
    }

    pub fn hash_concurrency(&self) -> usize {
        self.password_hash_concurrency.unwrap_or_else(cores)
    }

    /// The settings a fresh process would get from its environment (tests start from these).
    pub fn from_env() -> Result<Self, clap::Error> {
        use clap::Parser;
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            settings: Settings,
        }
        Only::try_parse_from(["accounts"]).map(|only| only.settings)
    }
}

/// The cores this process may use (2 when the system does not say).
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}
