//! Rebuilding a read model from the event store, and the readers' status.
//!
//! A rebuild replays every event into a fresh copy of the table (`<table>_rebuild`, under its own
//! checkpoint) while the live table keeps serving. To swap, it takes the live projector's
//! checkpoint lock (the live projector pauses), lets the copy catch up, then replaces the live
//! rows by the copy's and moves the live checkpoint in one transaction: readers see the old rows
//! until the commit and the new ones after it, never an empty table, and no event is lost.

use crate::reader::Look;
use crate::reader::{self, Checkpoint};
use crate::runner::{run_batch_of, Projector};

/// Events per transaction while rebuilding: nobody waits on a rebuild's batches, so they are
/// larger than the live loop's, which keeps the per-batch costs (a round trip, a statement per
/// batch, a commit) small beside the per-event ones.
const REBUILD_BATCH: i64 = 5_000;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool};
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    pub projector: String,
    pub events: u64,
    pub seconds: f64,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// Rebuilds `projector`'s table; `progress` is told how many events each batch applied.
pub async fn rebuild(
    pool: &PgPool,
    projector: &dyn Projector,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<RebuildReport> {
    let started = Instant::now();
    let shadow = projector.shadow();
    let (live_table, copy) = (projector.table(), shadow.table());
    sqlx::query(&format!("drop table if exists {copy}"))
        .execute(pool)
        .await?;
    // The copy gets the live table's primary key (upserts and the projector's look-ups need it)
    // and none of its other indexes: the rows reach the live table, with its indexes, in one
    // statement at the swap, so keeping secondary indexes of the copy up to date row by row
    // would be work thrown away.
    sqlx::query(&format!(
        "create table {copy} (like {live_table} including defaults including constraints)"
    ))
    .execute(pool)
    .await?;
    let primary_key: Option<String> = sqlx::query_scalar(
        "select pg_get_constraintdef(oid) from pg_constraint
          where conrelid = $1::regclass and contype = 'p'",
    )
    .bind(live_table)
    .fetch_optional(pool)
    .await?;
    if let Some(primary_key) = primary_key {
        sqlx::query(&format!("alter table {copy} add {primary_key}"))
            .execute(pool)
            .await?;
    }
    sqlx::query("delete from reader_checkpoint where name = $1")
        .bind(shadow.name())
        .execute(pool)
        .await?;

    let mut events = 0u64;
    loop {
        let applied = run_batch_of(pool, shadow.as_ref(), Look::First, REBUILD_BATCH).await? as u64;
        events += applied;
        progress(applied);
        if applied < REBUILD_BATCH as u64 {
            break;
        }
    }

    let mut swap = pool.begin().await?;
    reader::lock_checkpoint(&mut swap, projector.name()).await?;
    loop {
        let applied = run_batch_of(pool, shadow.as_ref(), Look::First, REBUILD_BATCH).await? as u64;
        events += applied;
        progress(applied);
        if applied == 0 {
            break;
        }
    }
    let checkpoint: Checkpoint = sqlx::query_as(
        "select transaction_id::text as transaction_id, position
           from reader_checkpoint where name = $1",
    )
    .bind(shadow.name())
    .fetch_one(&mut *swap)
    .await?;
    sqlx::query(&format!("delete from {live_table}"))
        .execute(&mut *swap)
        .await?;
    sqlx::query(&format!("insert into {live_table} select * from {copy}"))
        .execute(&mut *swap)
        .await?;
    reader::save_checkpoint(&mut swap, projector.name(), &checkpoint).await?;
    swap.commit().await?;

    sqlx::query(&format!("drop table if exists {copy}"))
        .execute(pool)
        .await?;
    sqlx::query("delete from reader_checkpoint where name = $1")
        .bind(shadow.name())
        .execute(pool)
        .await?;
    Ok(RebuildReport {
        projector: projector.name().to_owned(),
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where one reader (projector or relay) stands.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ReaderStatus {
    pub name: String,
    pub position: i64,
    /// Events committed but not yet handled by this reader.
    pub behind: i64,
    /// When the oldest of those was recorded: the reader's lag in time.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub async fn status(pool: &PgPool) -> sqlx::Result<Vec<ReaderStatus>> {
    sqlx::query_as(
        "select c.name, c.position, c.updated_at,
                (select count(*) from events e
                  where (e.transaction_id, e.global_position) > (c.transaction_id, c.position)) as behind,
                (select min(e.recorded_at) from events e
                  where (e.transaction_id, e.global_position) > (c.transaction_id, c.position)) as oldest_pending
           from reader_checkpoint c
          order by c.name",
    )
    .persistent(false)
    .fetch_all(pool)
    .await
}

/// How many events the store holds (the size of a full rebuild).
pub async fn event_count(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await
}
