//! Driving a projector: catch up in batches, then wait for a wake-up or the poll interval.

pub use crate::reader::Look;
use crate::reader::{self, Checkpoint, StoredEvent};
use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Events handled per transaction.
pub const BATCH_SIZE: i64 = 500;

/// How long a woken reader waits before it reads, so that the events of concurrent commits are
/// read and applied as one batch (one look, one transaction) rather than one by one. Requests that
/// need their own write catch up themselves and do not wait for it.
pub const COALESCE: Duration = Duration::from_millis(25);

/// A projector's checkpoint name and table: the live ones, or a rebuild's copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub table: String,
}

impl Target {
    pub fn new(name: &str, table: &str) -> Self {
        Self {
            name: name.to_owned(),
            table: table.to_owned(),
        }
    }
}

/// A read model built from events. `apply_batch` runs inside the transaction that also moves the
/// projector's checkpoint, so it must only write through `conn`.
#[async_trait]
pub trait Projector: Send + Sync {
    /// Where it writes and under which checkpoint.
    fn target(&self) -> &Target;

    /// What opens the personal data of the events it reads.
    fn vault(&self) -> &crate::pii::Vault;

    /// Which sealed values it needs opened (opening costs: only what is read is opened).
    fn opens(&self) -> reader::Opens {
        reader::Opens::All
    }

    /// The same projector writing to `target`.
    fn retarget(&self, target: Target) -> Arc<dyn Projector>;

    /// The checkpoint name, stable across releases.
    fn name(&self) -> &str {
        &self.target().name
    }

    /// The table it writes.
    fn table(&self) -> &str {
        &self.target().table
    }

    /// The same projector writing into `<table>_rebuild` under the checkpoint `<name>_rebuild`.
    fn shadow(&self) -> Arc<dyn Projector> {
        let live = self.target();
        self.retarget(Target {
            name: format!("{}_rebuild", live.name),
            table: format!("{}_rebuild", live.table),
        })
    }

    /// Applies a batch of events, in order (every projector writes a batch in one go).
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()>;

    /// Loads a batch into a rebuild's copy that has no index yet (a projector whose live table
    /// is partitioned, see `rebuild`): rows are only added, each event at most once. The
    /// default is [`Projector::apply_batch`].
    async fn load_batch(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        self.apply_batch(conn, events).await
    }
}

/// Handles one batch; returns how many events it applied.
pub async fn run_batch(pool: &PgPool, projector: &dyn Projector) -> anyhow::Result<usize> {
    run_batch_of(pool, projector, Look::First, BATCH_SIZE).await
}

/// Handles one batch of at most `size` events (a rebuild reads larger ones than the live loop).
pub async fn run_batch_of(
    pool: &PgPool,
    projector: &dyn Projector,
    look: Look,
    size: i64,
) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    let Some((mut tx, mut events)) =
        reader::begin_batch(&mut conn, projector.name(), look, size).await?
    else {
        return Ok(0);
    };
    reader::open_all(&mut tx, projector.vault(), projector.opens(), &mut events).await?;
    projector.apply_batch(&mut tx, &events).await?;
    if let Some(last) = events.last() {
        reader::save_checkpoint(&mut tx, projector.name(), &Checkpoint::after(last)).await?;
    }
    tx.commit().await?;
    Ok(events.len())
}

/// Applies every event the projector has not applied yet, batch by batch.
pub async fn catch_up(pool: &PgPool, projector: &dyn Projector) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let applied = run_batch(pool, projector).await?;
        total += applied;
        if applied < BATCH_SIZE as usize {
            return Ok(total);
        }
    }
}

/// Catch-ups on behalf of many requests at once (read-your-writes): a request that has committed
/// its events asks for a catch-up; if one that *started* after the request asked has finished
/// meanwhile, it already covered the request's events and nothing more is done. Under load, one
/// catch-up serves every request that arrived while the previous one ran, instead of each
/// request queueing on the checkpoint lock for its own.
#[derive(Default)]
pub struct CatchUpGate {
    /// Tickets handed out so far (one per request).
    tickets: std::sync::atomic::AtomicU64,
    /// Held while catching up: the last ticket a finished catch-up covered.
    covered: tokio::sync::Mutex<u64>,
}

impl CatchUpGate {
    /// Returns once a catch-up that started after this call has run (this one or another).
    pub async fn catch_up(&self, pool: &PgPool, projector: &dyn Projector) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut covered = self.covered.lock().await;
        if *covered >= ticket {
            return Ok(());
        }
        // Every ticket up to here was taken before this catch-up starts reading.
        let upto = self.tickets.load(Ordering::SeqCst);
        catch_up(pool, projector).await?;
        *covered = upto;
        Ok(())
    }
}

/// One batch of every projector of `group` in one transaction (issue #12: one transaction per
/// batch for all the read models, not one each): their checkpoints locked in one statement (in
/// name order, so two groups never deadlock; a request's catch-up locks one at a time), the
/// events after the furthest-behind one read once and opened once, each projector given those
/// after its own checkpoint, the checkpoints saved in one statement. With `Look::First` an
/// exists-query comes first, so a wake-up that finds nothing takes no lock. Returns how many
/// events were read.
pub async fn run_group_batch(
    pool: &PgPool,
    group: &[Arc<dyn Projector>],
    look: Look,
    size: i64,
) -> anyhow::Result<usize> {
    let Some(first) = group.first() else {
        return Ok(0);
    };
    let names: Vec<String> = group.iter().map(|p| p.name().to_owned()).collect();
    let mut conn = pool.acquire().await?;
    if look == Look::First {
        let pending: bool = sqlx::query_scalar(
            "select exists (select 1 from reader_checkpoint c, events e
                             where c.name = any($1)
                               and (e.transaction_id, e.global_position)
                                   > (c.transaction_id, c.position)
                               and e.transaction_id < pg_snapshot_xmin(pg_current_snapshot()))",
        )
        .bind(&names)
        .fetch_one(&mut *conn)
        .await?;
        if !pending {
            return Ok(0);
        }
    }
    let mut tx = sqlx::Acquire::begin(&mut *conn).await?;
    let locked: Vec<(String, String, i64)> = sqlx::query_as(concat!(
        "with ",
        reader::batch_settings!(),
        " select name, transaction_id::text, position from reader_checkpoint, batch_settings
           where name = any($1) order by name for update of reader_checkpoint"
    ))
    .bind(&names)
    .fetch_all(&mut *tx)
    .await?;
    if locked.len() != group.len() {
        // A projector without its checkpoint row yet: made, and the batch tried again.
        tx.rollback().await?;
        sqlx::query(
            "insert into reader_checkpoint (name) select unnest($1::text[]) on conflict do nothing",
        )
        .bind(&names)
        .execute(&mut *conn)
        .await?;
        // Given back before the retry takes one: a small pool is not held twice.
        drop(conn);
        return Box::pin(run_group_batch(pool, group, Look::Skip, size)).await;
    }
    let position = |txid: &str, pos: i64| (txid.parse::<u64>().unwrap_or(0), pos);
    let behind = locked
        .iter()
        .min_by_key(|(_, txid, pos)| position(txid, *pos))
        .map(|(_, txid, pos)| Checkpoint {
            transaction_id: txid.clone(),
            position: *pos,
        })
        .unwrap_or(Checkpoint {
            transaction_id: "0".into(),
            position: 0,
        });
    let mut events = reader::read_after(&mut tx, &behind, size).await?;
    let Some(last) = events.last().map(Checkpoint::after) else {
        tx.commit().await?;
        return Ok(0);
    };
    let opens = group
        .iter()
        .map(|p| p.opens())
        .fold(reader::Opens::Nothing, reader::Opens::and);
    reader::open_all(&mut tx, first.vault(), opens, &mut events).await?;
    let mut saved: (Vec<String>, Vec<String>, Vec<i64>) = Default::default();
    for (name, txid, pos) in &locked {
        let Some(projector) = group.iter().find(|p| p.name() == name) else {
            continue;
        };
        let after = position(txid, *pos);
        let start = events
            .iter()
            .position(|e| position(&e.transaction_id, e.global_position) > after)
            .unwrap_or(events.len());
        if start < events.len() {
            projector.apply_batch(&mut tx, &events[start..]).await?;
            saved.0.push(name.clone());
            saved.1.push(last.transaction_id.clone());
            saved.2.push(last.position);
        }
    }
    sqlx::query(
        "update reader_checkpoint c
            set transaction_id = s.transaction_id::xid8, position = s.position, updated_at = now()
           from unnest($1::text[], $2::text[], $3::bigint[]) as s(name, transaction_id, position)
          where c.name = s.name",
    )
    .bind(&saved.0)
    .bind(&saved.1)
    .bind(&saved.2)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(events.len())
}

/// Runs every projector of `group` until `shutdown`, a batch of all of them per transaction
/// ([`run_group_batch`]): woken by an append (after [`COALESCE`]) or every `poll`. Errors are
/// logged and retried after `poll`.
pub async fn run_group(
    pool: PgPool,
    group: Vec<Arc<dyn Projector>>,
    mut wake: watch::Receiver<u64>,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut look = Look::First;
    loop {
        loop {
            match run_group_batch(&pool, &group, look, BATCH_SIZE).await {
                Ok(read) if read as i64 >= BATCH_SIZE => look = Look::Skip,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(error = %error, "projector batch failed");
                    break;
                }
            }
        }
        look = Look::First;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = wake.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(poll).await;
                } else {
                    look = Look::Skip;
                    tokio::time::sleep(COALESCE).await;
                }
            }
            _ = tokio::time::sleep(poll) => {}
        }
    }
}
