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

/// A pool whose requests wait at most 3 s for a connection (then the API answers 503). The
/// first connection is retried for up to 30 s, so the service may start before Postgres.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url).context("DATABASE_URL is not a valid URL")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
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

#[tracing::instrument(skip_all)]
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("cannot run the migrations")?;
    crate::store::rekey_identities(pool)
        .await
        .context("cannot re-key the identities")
}
