//! Reading the event store in commit order, from a checkpoint.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgConnection};
use std::collections::HashMap;

/// One row of the `events` table, as readers see it.
#[derive(Debug, Clone, FromRow)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub global_position: i64,
    /// `xid8` as text: sqlx 0.8 has no type for it.
    pub transaction_id: String,
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The id a consumer dedupes on: `<aggregate_type>:<aggregate_id>:<sequence>`.
    pub fn event_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// The event's own fields in the current shape (cqrs-es stores an enum as
    /// `{"<EventType>": {...}}`).
    pub fn data(&self) -> Value {
        self.current().1
    }

    /// The current version and the event's own fields in that version's shape.
    pub fn current(&self) -> (String, Value) {
        let (version, mut payload) = self.upcast();
        let data = match payload.get_mut(&self.event_type) {
            Some(data) => data.take(),
            None => payload,
        };
        (version, data)
    }

    /// A string from the command metadata (`ip`, `user_agent`, `request_id`).
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(Value::as_str)
    }

    /// Decodes the payload, upcast to the current shape, into the aggregate's event type.
    pub fn decode<E: serde::de::DeserializeOwned>(&self) -> Result<E, serde_json::Error> {
        serde_json::from_value(self.upcast().1)
    }

    /// The current version and shape of this event's payload (see `aggregates::upcast`).
    pub fn upcast(&self) -> (String, Value) {
        aggregates::upcast::upcast(
            &self.aggregate_type,
            &self.event_type,
            &self.event_version,
            self.payload.clone(),
        )
    }
}

/// Which sealed values a reader opens (see [`crate::pii`]): opening costs, so only what is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opens {
    /// None: it reads no personal data (e.g. activity counts ids only).
    Nothing,
    /// What a read model reads: the payload's values (names, addresses, profile texts) of the
    /// events of `types` (`None`: of every type) but never the canonical forms
    /// ([`crate::pii::CANONICAL_FIELDS`]), and the metadata's (IP address, user agent) if
    /// `metadata`.
    Read {
        types: Option<&'static [&'static str]>,
        metadata: bool,
    },
    /// Every one, in the payload and the metadata (the aggregate, time travel).
    All,
}

impl Opens {
    /// What opens enough for both `self` and `other` (the readers of one batch).
    pub fn and(self, other: Opens) -> Opens {
        match (self, other) {
            (Opens::Nothing, other) | (other, Opens::Nothing) => other,
            (Opens::All, _) | (_, Opens::All) => Opens::All,
            (
                Opens::Read {
                    types: a,
                    metadata: m,
                },
                Opens::Read {
                    types: b,
                    metadata: n,
                },
            ) => {
                let covers = |wide: Option<&[&str]>, narrow: Option<&[&str]>| match (wide, narrow) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(wide), Some(narrow)) => narrow.iter().all(|t| wide.contains(t)),
                };
                let types = if covers(a, b) {
                    a
                } else if covers(b, a) {
                    b
                } else {
                    None
                };
                Opens::Read {
                    types,
                    metadata: m || n,
                }
            }
        }
    }

    /// Whether the metadata's personal entries are read.
    pub fn metadata(self) -> bool {
        matches!(self, Opens::All | Opens::Read { metadata: true, .. })
    }
}

/// Opens the sealed personal values of `events` in place, as far as `opens` says: the keys of
/// their subjects read in one statement and unwrapped once each, not one look-up per event. A
/// person deleted (no key) reads as erased.
pub async fn open_all(
    conn: &mut PgConnection,
    vault: &crate::pii::Vault,
    opens: Opens,
    events: &mut [StoredEvent],
) -> sqlx::Result<()> {
    open_all_with(conn, vault, opens, events, &mut HashMap::new()).await
}

/// [`open_all`] with the keys already fetched in `keys` (a rebuild reads a person's events over
/// many batches): only the subjects not in it are read, and added. A person deleted while the
/// keys are held reads as before until their `AccountDeleted`, which every read model applies.
pub async fn open_all_with(
    conn: &mut PgConnection,
    vault: &crate::pii::Vault,
    opens: Opens,
    events: &mut [StoredEvent],
    keys: &mut HashMap<uuid::Uuid, Option<crate::pii::DataKey>>,
) -> sqlx::Result<()> {
    let null = serde_json::Value::Null;
    // What is opened of each event: whose values, and whether its payload and its metadata.
    let mut owners: Vec<Option<(uuid::Uuid, bool, bool)>> = Vec::with_capacity(events.len());
    let mut wanted: Vec<uuid::Uuid> = Vec::new();
    for e in events.iter() {
        let (payload, metadata) = match opens {
            Opens::Nothing => (false, false),
            Opens::All => (true, true),
            Opens::Read { types, metadata } => (
                types.is_none_or(|types| types.contains(&e.event_type.as_str())),
                metadata,
            ),
        };
        let sealed = (payload || metadata)
            && crate::pii::holds_sealed_data(
                if payload { &e.payload } else { &null },
                if metadata { &e.metadata } else { &null },
            );
        let owner = sealed
            .then(|| {
                crate::pii::subject_in(&e.metadata).or_else(|| {
                    crate::pii::subject_of(&e.aggregate_type, &e.aggregate_id, &e.payload)
                })
            })
            .flatten();
        if let Some(owner) = owner {
            if !keys.contains_key(&owner) {
                wanted.push(owner);
            }
        }
        owners.push(owner.map(|owner| (owner, payload, metadata)));
    }
    if !wanted.is_empty() {
        wanted.sort_unstable();
        wanted.dedup();
        let rows: Vec<(uuid::Uuid, Option<Vec<u8>>)> =
            sqlx::query_as("select user_id, wrapped from user_data_key where user_id = any($1)")
                .bind(&wanted)
                .fetch_all(conn)
                .await?;
        let found = vault.unwrap_all(rows);
        for subject in wanted {
            keys.insert(subject, found.get(&subject).cloned());
        }
    }
    for (event, owner) in events.iter_mut().zip(owners) {
        let Some((owner, payload, metadata)) = owner else {
            continue;
        };
        let key = keys.get(&owner).and_then(Option::as_ref);
        let mut none = (serde_json::Value::Null, serde_json::Value::Null);
        let payload = if payload {
            &mut event.payload
        } else {
            &mut none.0
        };
        let metadata = if metadata {
            &mut event.metadata
        } else {
            &mut none.1
        };
        if opens == Opens::All {
            crate::pii::open_with(key, owner, payload, metadata);
        } else {
            crate::pii::open_for_reading(key, owner, payload, metadata);
        }
    }
    Ok(())
}

/// Where a reader has got to: the last event it handled, in `(transaction_id, position)` order.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Checkpoint {
    pub transaction_id: String,
    pub position: i64,
}

impl Checkpoint {
    pub fn after(event: &StoredEvent) -> Self {
        Self {
            transaction_id: event.transaction_id.clone(),
            position: event.global_position,
        }
    }
}

/// Locks and returns a reader's checkpoint for the rest of the transaction, creating it if new.
pub async fn lock_checkpoint(conn: &mut PgConnection, name: &str) -> sqlx::Result<Checkpoint> {
    const LOCK: &str = "select transaction_id::text as transaction_id, position
                          from reader_checkpoint where name = $1 for update";
    lock_checkpoint_with(conn, name, LOCK).await
}

/// What a reader's batch transaction sets, as a `WITH` item of the statement that locks its
/// checkpoint (no round trip of its own; joined in, so that it is evaluated): its commit does not
/// wait for the WAL to reach the disk (`synchronous_commit = off`, local to the transaction).
/// What a batch writes is derived from events already on disk; a crash of Postgres loses only a
/// suffix of such commits, each whole, its checkpoint with it, and the batch is done again (the
/// relay's messages again: JetStream drops them by their id). Measured here (pgbench, one
/// client): a flush costs ~0.12 ms of CPU and ~0.14 ms of waiting. The appends, a rebuild's bulk
/// load of its copy and its swap (`lock_checkpoint`), and everything else keep waiting for the
/// disk.
macro_rules! batch_settings {
    () => {
        "batch_settings as (select set_config('synchronous_commit', 'off', true))"
    };
}
pub(crate) use batch_settings;

/// [`lock_checkpoint`] for a batch: with [`batch_settings`].
pub async fn lock_batch_checkpoint(
    conn: &mut PgConnection,
    name: &str,
) -> sqlx::Result<Checkpoint> {
    const LOCK: &str = concat!(
        "with ",
        batch_settings!(),
        " select transaction_id::text as transaction_id, position
            from reader_checkpoint, batch_settings where name = $1
             for update of reader_checkpoint"
    );
    lock_checkpoint_with(conn, name, LOCK).await
}

async fn lock_checkpoint_with(
    conn: &mut PgConnection,
    name: &str,
    lock: &'static str,
) -> sqlx::Result<Checkpoint> {
    if let Some(checkpoint) = sqlx::query_as(lock)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
    {
        return Ok(checkpoint);
    }
    sqlx::query("insert into reader_checkpoint (name) values ($1) on conflict do nothing")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    sqlx::query_as(lock).bind(name).fetch_one(conn).await
}

pub async fn save_checkpoint(
    conn: &mut PgConnection,
    name: &str,
    checkpoint: &Checkpoint,
) -> sqlx::Result<()> {
    sqlx::query(
        "update reader_checkpoint
            set transaction_id = $2::text::xid8, position = $3, updated_at = now()
          where name = $1",
    )
    .bind(name)
    .bind(&checkpoint.transaction_id)
    .bind(checkpoint.position)
    .execute(conn)
    .await?;
    Ok(())
}

/// The reader's query. `events.` in the ORDER BY matters: unqualified, `transaction_id` would
/// name the text column of the SELECT list, which sorts xids as strings ("10" before "9") and
/// defeats the index.
pub const READ_AFTER: &str =
    "select aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, global_position, transaction_id::text as transaction_id, recorded_at
           from events
          where (transaction_id, global_position) > ($1::text::xid8, $2)
            and transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          order by events.transaction_id, events.global_position
          limit $3";

/// [`READ_AFTER`] without the metadata, for readers that never read it: less to send and parse
/// (an event's subject is then its account, or the `user_id` its payload names:
/// [`crate::pii::subject_of`]).
pub const READ_AFTER_WITHOUT_PERSONAL_METADATA: &str =
    "select aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                '{}'::jsonb as metadata, global_position,
                transaction_id::text as transaction_id, recorded_at
           from events
          where (transaction_id, global_position) > ($1::text::xid8, $2)
            and transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          order by events.transaction_id, events.global_position
          limit $3";

/// [`read_after`] for a reader that opens `opens`: without the metadata's personal entries when
/// it does not read them.
pub async fn read_after_for(
    conn: &mut PgConnection,
    checkpoint: &Checkpoint,
    limit: i64,
    opens: Opens,
) -> sqlx::Result<Vec<StoredEvent>> {
    let query = if opens.metadata() {
        READ_AFTER
    } else {
        READ_AFTER_WITHOUT_PERSONAL_METADATA
    };
    sqlx::query_as(query)
        .bind(&checkpoint.transaction_id)
        .bind(checkpoint.position)
        .bind(limit)
        .fetch_all(conn)
        .await
}

/// `READ_AFTER` from the checkpoint of the reader `$1` as it is now (the start for a reader
/// without one), without locking it, with that checkpoint on every row.
pub const PEEK_AFTER: &str =
    "select e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version,
            e.payload, e.metadata, e.global_position, e.transaction_id::text as transaction_id,
            e.recorded_at, c.transaction_id::text as checkpoint_transaction_id,
            c.position as checkpoint_position
       from (select transaction_id, position from reader_checkpoint where name = $1
             union all
             select '0'::xid8, 0
              where not exists (select from reader_checkpoint where name = $1)) c
       cross join lateral (
             select * from events
              where (events.transaction_id, events.global_position)
                    > (c.transaction_id, c.position)
                and events.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              order by events.transaction_id, events.global_position
              limit $2) e";

#[derive(FromRow)]
struct PeekedRow {
    #[sqlx(flatten)]
    event: StoredEvent,
    checkpoint_transaction_id: String,
    checkpoint_position: i64,
}

/// What the reader `name` would read next, seen without taking its lock (one statement, outside
/// any transaction): `None` when there is nothing new, which is what most wake-ups find. Else
/// the checkpoint the events follow, for [`read_locked`] to compare with the locked one.
pub async fn peek(
    conn: &mut PgConnection,
    name: &str,
    limit: i64,
) -> sqlx::Result<Option<(Checkpoint, Vec<StoredEvent>)>> {
    let rows: Vec<PeekedRow> = sqlx::query_as(PEEK_AFTER)
        .bind(name)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let checkpoint = Checkpoint {
        transaction_id: first.checkpoint_transaction_id.clone(),
        position: first.checkpoint_position,
    };
    Ok(Some((
        checkpoint,
        rows.into_iter().map(|r| r.event).collect(),
    )))
}

/// Whether a batch first looks for new events without a lock (what most wake-ups of a request's
/// catch-up find: nothing), or goes straight to the locked read (a background reader woken by an
/// append: one transaction per batch instead of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    First,
    Skip,
}

/// Begins one batch of the reader `name`: after a look when `look` says so (`None` when it finds
/// nothing), a transaction holding the reader's checkpoint lock, with the events after it. The
/// caller handles the events, saves the checkpoint and commits.
pub async fn begin_batch<'c>(
    conn: &'c mut PgConnection,
    name: &str,
    look: Look,
    limit: i64,
) -> sqlx::Result<Option<(sqlx::Transaction<'c, sqlx::Postgres>, Vec<StoredEvent>)>> {
    let peeked = match look {
        Look::First => match peek(&mut *conn, name, limit).await? {
            Some(peeked) => Some(peeked),
            None => return Ok(None),
        },
        Look::Skip => None,
    };
    let mut tx = sqlx::Acquire::begin(conn).await?;
    let events = match peeked {
        Some(peeked) => read_locked(&mut tx, name, peeked, limit).await?.1,
        None => {
            let checkpoint = lock_batch_checkpoint(&mut tx, name).await?;
            read_after(&mut tx, &checkpoint, limit).await?
        }
    };
    Ok(Some((tx, events)))
}

/// In a transaction: locks the reader's checkpoint and returns it with the events after it,
/// reusing what `peeked` saw when the checkpoint has not moved since (else reading again).
pub async fn read_locked(
    conn: &mut PgConnection,
    name: &str,
    peeked: (Checkpoint, Vec<StoredEvent>),
    limit: i64,
) -> sqlx::Result<(Checkpoint, Vec<StoredEvent>)> {
    let checkpoint = lock_batch_checkpoint(&mut *conn, name).await?;
    if checkpoint == peeked.0 {
        return Ok((checkpoint, peeked.1));
    }
    let events = read_after(conn, &checkpoint, limit).await?;
    Ok((checkpoint, events))
}

/// The next events after `checkpoint` whose transactions are certainly finished: an event of a
/// transaction still running below the snapshot's xmin could commit later with a lower position.
pub async fn read_after(
    conn: &mut PgConnection,
    checkpoint: &Checkpoint,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    read_after_for(conn, checkpoint, limit, Opens::All).await
}

/// Whether the reader `name` has handled the event at `(aggregate_type, aggregate_id, sequence)`.
/// Which of the projectors `names` have applied the event `sequence` of the stream (one query).
pub async fn passed_by(
    conn: &mut PgConnection,
    names: &[&str],
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "select c.name from events e, reader_checkpoint c
          where e.aggregate_type = $2 and e.aggregate_id = $3 and e.sequence = $4
            and c.name = any($1)
            and (e.transaction_id, e.global_position) <= (c.transaction_id, c.position)",
    )
    .bind(names)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_all(conn)
    .await
}

#[cfg(test)]
mod tests {
    use super::Opens;

    #[test]
    fn a_group_opens_what_each_of_its_readers_reads() {
        let profile = Opens::Read {
            types: Some(&["Registered", "ProfileUpdated"]),
            metadata: false,
        };
        let history = Opens::Read {
            types: Some(&["Registered"]),
            metadata: true,
        };
        assert_eq!(
            profile.and(history),
            Opens::Read {
                types: Some(&["Registered", "ProfileUpdated"]),
                metadata: true,
            }
        );
        assert_eq!(history.and(profile), profile.and(history));
        let other = Opens::Read {
            types: Some(&["Started"]),
            metadata: false,
        };
        assert_eq!(
            history.and(other),
            Opens::Read {
                types: None,
                metadata: true
            }
        );
        assert_eq!(Opens::Nothing.and(profile), profile);
        assert_eq!(profile.and(Opens::All), Opens::All);
        assert!(!profile.metadata() && history.metadata() && Opens::All.metadata());
    }
}
