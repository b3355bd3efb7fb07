//! Rebuilding a read model from the event store, and the readers' status.
//!
//! A rebuild replays every event into a fresh copy of the table (`<table>_rebuild`, under its own
//! checkpoint) while the live table keeps serving. To swap, it takes the live projector's
//! checkpoint lock (the live projector pauses), lets the copy catch up, then replaces the live
//! rows by the copy's and moves the live checkpoint in one transaction: readers see the old rows
//! until the commit and the new ones after it, never an empty table, and no event is lost.
//!
//! The copy is filled as a pipeline: one task reads the next batch of events while another opens
//! the sealed values of the one before and the previous one is applied on a third connection, so
//! Postgres reads and writes, and the service decrypts and folds, at the same time instead of
//! taking turns.

use crate::reader::Look;
use crate::reader::{self, Checkpoint, StoredEvent};
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
    /// Of `seconds`, the part spent replacing the live rows by the copy's (under the lock).
    pub swap_seconds: f64,
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
    let partition = live_partition(pool, live_table).await?;
    sqlx::query(&format!("drop table if exists {copy}"))
        .execute(pool)
        .await?;
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
    let add_primary_key = primary_key.map(|key| format!("alter table {copy} add {key}"));
    if partition.is_none() {
        // The copy gets the live table's primary key (upserts and the projector's look-ups need
        // it) and none of its other indexes: the rows reach the live table, with its indexes, in
        // one statement at the swap, so keeping secondary indexes of the copy up to date row by
        // row would be work thrown away.
        if let Some(statement) = &add_primary_key {
            sqlx::query(statement).execute(pool).await?;
        }
    }
    sqlx::query("delete from reader_checkpoint where name = $1")
        .bind(shadow.name())
        .execute(pool)
        .await?;

    let bulk = partition.is_some();
    let mut events = fill(pool, shadow.as_ref(), bulk, &mut progress).await?;
    if bulk {
        // The copy becomes the live partition with every index the parent has: built now, each
        // in one sorted pass (all at once, on connections of their own), rather than row by row
        // while filling.
        let mut statements: Vec<String> = add_primary_key.into_iter().collect();
        statements.extend(secondary_indexes(pool, live_table, copy).await?);
        let mut builds = tokio::task::JoinSet::new();
        for statement in statements {
            let pool = pool.clone();
            builds.spawn(async move { sqlx::query(&statement).execute(&pool).await });
        }
        while let Some(built) = builds.join_next().await {
            built??;
        }
    }

    let swap_started = Instant::now();
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
    match &partition {
        // Readers of the parent see the old partition until the commit and the copy after it;
        // the old rows go with their partition, leaving nothing to vacuum.
        Some(old) => {
            for statement in [
                format!("alter table {live_table} detach partition {old}"),
                format!("drop table {old}"),
                format!(
                    "alter table {live_table} attach partition {copy} \
                     for values from (minvalue) to (maxvalue)"
                ),
                format!("alter table {copy} rename to {old}"),
            ] {
                sqlx::query(&statement).execute(&mut *swap).await?;
            }
            // The copy's indexes take the names the old partition's had (`<partition>_pkey`
            // for the parent's `<table>_pkey`, and so on), so that names do not drift.
            let indexes: Vec<(String, String)> = sqlx::query_as(
                "select child.oid::regclass::text, parent.relname::text
                   from pg_index i
                   join pg_inherits inh on inh.inhrelid = i.indexrelid
                   join pg_class child on child.oid = i.indexrelid
                   join pg_class parent on parent.oid = inh.inhparent
                  where i.indrelid = $1::regclass",
            )
            .bind(old)
            .fetch_all(&mut *swap)
            .await?;
            for (index, parent) in indexes {
                let suffix = parent.strip_prefix(live_table).unwrap_or(&parent);
                let name = format!("{old}_{}", suffix.trim_start_matches('_'));
                sqlx::query(&format!("alter index {index} rename to {name}"))
                    .execute(&mut *swap)
                    .await?;
            }
        }
        None => {
            sqlx::query(&format!("delete from {live_table}"))
                .execute(&mut *swap)
                .await?;
            sqlx::query(&format!("insert into {live_table} select * from {copy}"))
                .execute(&mut *swap)
                .await?;
        }
    }
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
        swap_seconds: swap_started.elapsed().as_secs_f64(),
    })
}

/// The one partition of a partitioned read model (see `migrations/0015_history_partitioned.sql`);
/// `None` for a plain table.
async fn live_partition(pool: &PgPool, table: &str) -> anyhow::Result<Option<String>> {
    let partitioned: bool =
        sqlx::query_scalar("select relkind = 'p' from pg_class where oid = $1::regclass")
            .bind(table)
            .fetch_one(pool)
            .await?;
    if !partitioned {
        return Ok(None);
    }
    let partitions: Vec<String> = sqlx::query_scalar(
        "select inhrelid::regclass::text from pg_inherits where inhparent = $1::regclass",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    match <[String; 1]>::try_from(partitions) {
        Ok([partition]) => Ok(Some(partition)),
        Err(found) => anyhow::bail!(
            "{table} must have exactly one partition to be rebuilt, it has {}",
            found.len()
        ),
    }
}

/// `create index` statements giving `copy` each index of the partitioned `table` that backs no
/// constraint (the primary key is added as a constraint), so that attaching `copy` reuses them.
async fn secondary_indexes(pool: &PgPool, table: &str, copy: &str) -> anyhow::Result<Vec<String>> {
    let definitions: Vec<(bool, String)> = sqlx::query_as(
        "select i.indisunique, pg_get_indexdef(i.indexrelid)
           from pg_index i
          where i.indrelid = $1::regclass
            and not exists (select from pg_constraint c where c.conindid = i.indexrelid)",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    definitions
        .into_iter()
        .map(|(unique, definition)| {
            // `CREATE [UNIQUE] INDEX name ON ONLY table USING method (columns) ...`
            let at = definition
                .find(" USING ")
                .ok_or_else(|| anyhow::anyhow!("unexpected index definition: {definition}"))?;
            let unique = if unique { "unique " } else { "" };
            Ok(format!(
                "create {unique}index on {copy}{}",
                &definition[at..]
            ))
        })
        .collect()
}

/// Replays the events committed so far into the copy: a reader task reads batch after batch
/// (two ahead at most), an opener task opens their sealed values, and this one applies each
/// under the copy's checkpoint lock, moving the checkpoint in the same transaction. With `bulk`,
/// the copy has no index yet and is filled with [`Projector::load_batch`]. Returns how many
/// events it applied.
async fn fill(
    pool: &PgPool,
    copy: &dyn Projector,
    bulk: bool,
    progress: &mut impl FnMut(u64),
) -> anyhow::Result<u64> {
    // Three stages, each on a task of its own, so that reading a batch, opening the one before
    // and applying the one before that overlap: the reader's and the applier's statements keep
    // Postgres busy while the opener decrypts.
    let (read_batches, mut to_open) = tokio::sync::mpsc::channel::<Vec<StoredEvent>>(2);
    let (batches, mut next) = tokio::sync::mpsc::channel::<Vec<StoredEvent>>(2);
    let reader_pool = pool.clone();
    let opens = copy.opens();
    let read = tokio::spawn(async move {
        let mut after = Checkpoint {
            transaction_id: "0".into(),
            position: 0,
        };
        loop {
            let mut conn = reader_pool.acquire().await?;
            let events = reader::read_after_for(&mut conn, &after, REBUILD_BATCH, opens).await?;
            drop(conn);
            let Some(last) = events.last() else {
                return anyhow::Ok(());
            };
            after = Checkpoint::after(last);
            let full = events.len() as i64 == REBUILD_BATCH;
            if read_batches.send(events).await.is_err() || !full {
                return Ok(());
            }
        }
    });
    let opener_pool = pool.clone();
    let vault = copy.vault().clone();
    let open = tokio::spawn(async move {
        let mut keys = std::collections::HashMap::new();
        while let Some(mut events) = to_open.recv().await {
            let mut conn = opener_pool.acquire().await?;
            reader::open_all_with(&mut conn, &vault, opens, &mut events, &mut keys).await?;
            drop(conn);
            if batches.send(events).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    let mut applied = 0u64;
    let mut expected = Checkpoint {
        transaction_id: "0".into(),
        position: 0,
    };
    let result = async {
        while let Some(events) = next.recv().await {
            let mut tx = pool.begin().await?;
            let checkpoint = reader::lock_checkpoint(&mut tx, copy.name()).await?;
            anyhow::ensure!(
                checkpoint == expected,
                "the rebuild copy's checkpoint moved under it: is another rebuild of {} running?",
                copy.name()
            );
            if bulk {
                copy.load_batch(&mut tx, &events).await?;
            } else {
                copy.apply_batch(&mut tx, &events).await?;
            }
            let last = events.last().map(Checkpoint::after).unwrap_or(checkpoint);
            reader::save_checkpoint(&mut tx, copy.name(), &last).await?;
            tx.commit().await?;
            expected = last;
            applied += events.len() as u64;
            progress(events.len() as u64);
        }
        anyhow::Ok(())
    }
    .await;
    drop(next);
    open.await??;
    read.await??;
    result?;
    Ok(applied)
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
