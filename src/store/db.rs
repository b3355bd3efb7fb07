//! Connecting to Postgres: create the database if missing, run the migrations.

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use std::str::FromStr;
use std::time::Duration;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[tracing::instrument(skip_all)]
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    if !Postgres::database_exists(url)
        .await
        .context("cannot reach Postgres")?
    {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!("created the database"),
            // Another process may have created it meanwhile.
            Err(_) if Postgres::database_exists(url).await.unwrap_or(false) => {}
            Err(error) => return Err(error).context("cannot create the database"),
        }
    }
    Ok(())
}

/// How long a pooled connection may sit idle before it is checked again when handed out.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);

/// A pool whose requests wait at most 3 s for a connection (then the API answers 503). The
/// first connection is retried for up to 30 s, so the service may start before Postgres.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let mut options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")?;
    if local_without_sslmode(url, options.get_host()) {
        // sqlx's default (`prefer`) negotiates TLS even with a Postgres on this machine, where it
        // protects nothing and costs CPU on every connection; a URL that names `sslmode` decides.
        options = options.ssl_mode(sqlx::postgres::PgSslMode::Disable);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            // sqlx's default checks every connection it hands out with a round trip (`Sync`,
            // then `ReadyForQuery`) besides the one it makes when the connection comes back:
            // two round trips more per query for a request that runs one. A connection that
            // came back lately was checked then; only one idle for longer (Postgres may have
            // restarted meanwhile) is checked before it is handed out, and replaced if dead.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < CHECK_AFTER_IDLE {
                        return Ok(true);
                    }
                    Ok(sqlx::Connection::ping(conn).await.is_ok())
                })
            })
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "Postgres is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context("cannot connect to Postgres"),
        }
    }
}

/// Whether `url` names no `sslmode` and `host` is a loopback address or a Unix socket directory.
fn local_without_sslmode(url: &str, host: &str) -> bool {
    let names_sslmode = url::Url::parse(url)
        .map(|u| u.query_pairs().any(|(key, _)| key == "sslmode"))
        .unwrap_or(true);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let local = host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    !names_sslmode && local
}

/// The longest database name whose analyst roles (`<database>_analyst`,
/// `<database>_analyst_pseudonymous`, migration 0012) keep their documented names: Postgres cuts
/// names at 63 bytes, and a cut name would be another role's, or collide.
pub const LONGEST_DATABASE_NAME: usize = 63 - "_analyst_pseudonymous".len();

/// Refuses a new database whose name is too long for its analyst roles, before migrating it.
/// A database migrated already keeps working as it is.
async fn check_database_name(pool: &PgPool) -> anyhow::Result<()> {
    let name: String = sqlx::query_scalar("select current_database()")
        .fetch_one(pool)
        .await?;
    if name.len() <= LONGEST_DATABASE_NAME {
        return Ok(());
    }
    let roles_made: bool = sqlx::query_scalar(
        "select to_regclass('_sqlx_migrations') is not null
            and exists (select 1 from _sqlx_migrations where version = 12)",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(false);
    anyhow::ensure!(
        roles_made,
        "the database name {name:?} is {} bytes long; at most {LONGEST_DATABASE_NAME} fit in the \
         names of its analyst roles (`<database>_analyst_pseudonymous`; Postgres cuts names at \
         63 bytes): choose a shorter database name in DATABASE_URL",
        name.len()
    );
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    check_database_name(pool).await?;
    MIGRATOR
        .run(pool)
        .await
        .context("cannot run the migrations")?;
    crate::store::rekey_identities(pool)
        .await
        .context("cannot re-key the identities")
}

#[cfg(test)]
mod tests {
    use super::local_without_sslmode;

    #[test]
    fn tls_is_skipped_only_for_a_local_postgres_and_an_unset_sslmode() {
        let local = "postgres://postgres@127.0.0.1:5432/accounts";
        assert!(local_without_sslmode(local, "127.0.0.1"));
        assert!(local_without_sslmode(local, "localhost"));
        assert!(local_without_sslmode(local, "::1"));
        assert!(local_without_sslmode(local, "/var/run/postgresql"));
        assert!(!local_without_sslmode(local, "db.example.com"));
        assert!(!local_without_sslmode(local, "10.0.0.5"));
        let explicit = "postgres://postgres@127.0.0.1:5432/accounts?sslmode=require";
        assert!(!local_without_sslmode(explicit, "127.0.0.1"));
    }
}
