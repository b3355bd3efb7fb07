//! Wake-ups for the readers: Postgres `NOTIFY events_appended` (sent by a statement trigger on
//! `events`, so every process hears every append) bumps a watch counter. Readers also poll, so a
//! lost notification only costs latency.

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const CHANNEL: &str = "events_appended";

pub fn bump(wake: &watch::Sender<u64>) {
    wake.send_modify(|n| *n = n.wrapping_add(1));
}

/// Bumps `wake` on every notification until the connection fails.
async fn relay_notifications(
    pool: &PgPool,
    wake: &watch::Sender<u64>,
) -> sqlx::Result<std::convert::Infallible> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    // Anything appended while we were not listening.
    bump(wake);
    loop {
        listener.recv().await?;
        bump(wake);
    }
}

pub async fn listen(pool: PgPool, wake: watch::Sender<u64>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Err(error) = relay_notifications(&pool, &wake) => {
                tracing::warn!(%error, "event listener lost its connection; reconnecting");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
