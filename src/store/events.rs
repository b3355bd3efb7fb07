//! The event repository under the command bus: postgres-es's `PostgresEventRepository` for every
//! read, and a commit that is one `INSERT` statement (atomic on its own) instead of
//! `BEGIN`, one `INSERT` per event and `COMMIT`: one round trip to the database instead of three
//! for the usual one-event command. The rows are exactly the ones postgres-es writes; a duplicate
//! `(aggregate_type, aggregate_id, sequence)` is an optimistic-concurrency conflict as there.
//!
//! It is also where personal data is sealed and opened (`projections::pii`): a commit seals each
//! event's personal values under its subject's data key (and passes the identity claims of a
//! registration as keyed hashes, see migration 0018); a read fetches the subject's wrapped key
//! with the events and opens them, so an aggregate of a deleted person loads with nothing
//! personal in it.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use projections::pii::{self, DataKey, Vault};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Clone)]
pub struct EventRepository {
    reads: Arc<PostgresEventRepository>,
    pool: PgPool,
    vault: Vault,
}

/// The columns of a read, with the subject's wrapped data key.
const READ: &str = "select e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
            e.event_version, e.payload, e.metadata,
            (select k.wrapped from user_data_key k
              where k.user_id = (e.metadata ->> 'subject')::uuid) as data_key
       from events e
      where e.aggregate_type = $1 and e.aggregate_id = $2 and e.sequence > $3
      order by e.sequence";

/// What `user_data_key` holds for a subject.
enum Stored {
    None,
    Key(DataKey),
    /// The person was deleted: the key is gone for good.
    Tombstone,
}

#[derive(sqlx::FromRow)]
struct ReadRow {
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: Value,
    metadata: Value,
    data_key: Option<Vec<u8>>,
}

impl EventRepository {
    pub fn new(pool: PgPool, vault: Vault) -> Self {
        Self {
            reads: Arc::new(PostgresEventRepository::new(pool.clone())),
            pool,
            vault,
        }
    }

    async fn read<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows: Vec<ReadRow> = sqlx::query_as(READ)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(after as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        Ok(rows
            .into_iter()
            .map(|mut row| {
                self.vault
                    .open_event(row.data_key.as_deref(), &mut row.payload, &mut row.metadata);
                SerializedEvent {
                    aggregate_id: row.aggregate_id,
                    sequence: row.sequence as usize,
                    aggregate_type: row.aggregate_type,
                    event_type: row.event_type,
                    event_version: row.event_version,
                    payload: row.payload,
                    metadata: row.metadata,
                }
            })
            .collect())
    }

    /// The events as they are stored (personal values sealed, a registration's claims hashed),
    /// and the data keys to store with them: a subject's first key is inserted by the statement
    /// that appends its first sealed event, so a refused append leaves no key behind, and two
    /// writers creating one subject's key at once conflict (the loser retries and reads it).
    async fn sealed<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(Vec<(Value, Value)>, Vec<(Uuid, DataKey, Vec<u8>)>), PersistenceError> {
        let mut sealed = Vec::with_capacity(events.len());
        let mut new_keys: Vec<(Uuid, DataKey, Vec<u8>)> = Vec::new();
        for event in events {
            let (mut payload, mut metadata) = (event.payload.clone(), event.metadata.clone());
            let subject = pii::subject_in(&metadata)
                .or_else(|| pii::subject_of(A::TYPE, &event.aggregate_id, &payload));
            if let Some(subject) = subject {
                if A::TYPE == "User" && event.event_type == "Registered" {
                    self.claim_identities(&mut payload);
                }
                let known = match new_keys.iter().find(|(s, _, _)| *s == subject) {
                    Some((_, key, _)) => Some(key.clone()),
                    None => self.vault.cached_key(subject),
                };
                // A new account's stream has no key yet: no need to look.
                let first = A::TYPE == "User" && event.sequence == 1;
                let key = match known {
                    Some(key) => key,
                    None => match (first, self.stored_key(subject).await?) {
                        (false, Stored::Key(key)) => key,
                        // A deleted person (a late write of a stale process): sealed under a
                        // key that is stored nowhere, so it opens to nothing.
                        (false, Stored::Tombstone) => self.vault.new_data_key(subject).0,
                        _ => {
                            let (key, wrapped) = self.vault.new_data_key(subject);
                            new_keys.push((subject, key.clone(), wrapped));
                            key
                        }
                    },
                };
                self.vault
                    .seal_event(&key, subject, &mut payload, &mut metadata);
            }
            sealed.push((payload, metadata));
        }
        Ok((sealed, new_keys))
    }

    /// The stored data key of `subject`, remembered for the next writes.
    async fn stored_key(&self, subject: Uuid) -> Result<Stored, PersistenceError> {
        let wrapped: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("select wrapped from user_data_key where user_id = $1")
                .bind(subject)
                .fetch_optional(&self.pool)
                .await
                .map_err(persistence_error)?;
        let wrapped = match wrapped {
            None => return Ok(Stored::None),
            Some(None) => return Ok(Stored::Tombstone),
            Some(Some(wrapped)) => wrapped,
        };
        let key = self.vault.unwrap_key(subject, &wrapped).ok_or_else(|| {
            PersistenceError::UnknownError("a data key does not open with DATA_KEY_FILE".into())
        })?;
        self.vault.remember_key(subject, &key);
        Ok(Stored::Key(key))
    }

    /// Adds the keyed hashes a registration claims (`email_claim`, `username_claim`), which the
    /// identity trigger takes out of the row before it is stored.
    fn claim_identities(&self, payload: &mut Value) {
        let Some(body) = payload.get_mut("Registered").and_then(Value::as_object_mut) else {
            return;
        };
        for (kind, key, claim) in [
            ("email", "email_key", "email_claim"),
            ("username", "username_key", "username_claim"),
        ] {
            if let Some(canonical) = body.get(key).and_then(Value::as_str) {
                let hash = self.vault.identity_hash(kind, canonical);
                body.insert(claim.to_owned(), Value::String(hash));
            }
        }
    }

    /// Forgets a deleted subject's data key in this process.
    pub fn forget(&self, subject: Uuid) {
        self.vault.forget(subject);
    }
}

/// Replays are the projectors' (`projections::reader`), which open what they read; a stream of
/// sealed rows here would hand out ciphertext as if it were the events.
fn not_streamed() -> PersistenceError {
    PersistenceError::UnknownError("replay streams are not served by this event store".into())
}

/// postgres-es's classification of database errors: a unique violation is a conflict.
fn persistence_error(error: sqlx::Error) -> PersistenceError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => PersistenceError::ConnectionError(error.into()),
        _ => PersistenceError::UnknownError(error.into()),
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.read::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.read::<A>(aggregate_id, last_sequence).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            // The bus is event-sourced only; a snapshot would need postgres-es's transaction.
            return Err(PersistenceError::UnknownError(
                "snapshots are not used by this event store".into(),
            ));
        }
        if events.is_empty() {
            return Ok(());
        }
        let (sealed, new_keys) = self.sealed::<A>(events).await?;
        let mut insert: QueryBuilder<Postgres> = QueryBuilder::new("");
        if !new_keys.is_empty() {
            // No `on conflict`: a concurrent first key is a conflict, and the retry reads the
            // stored one; a deleted person's tombstone conflicts too, and the retry seals under
            // a key stored nowhere.
            let users: Vec<Uuid> = new_keys.iter().map(|(s, _, _)| *s).collect();
            let wrapped: Vec<&[u8]> = new_keys.iter().map(|(_, _, w)| w.as_slice()).collect();
            insert.push(
                "with new_key as (insert into user_data_key (user_id, wrapped) \
                 select n.user_id, n.wrapped from unnest(",
            );
            insert.push_bind(users);
            insert.push("::uuid[], ");
            insert.push_bind(wrapped);
            insert.push("::bytea[]) as n(user_id, wrapped)) ");
        }
        insert.push(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) ",
        );
        insert.push_values(events.iter().zip(&sealed), |mut row, (event, sealed)| {
            row.push_bind(A::TYPE)
                .push_bind(event.aggregate_id.as_str())
                .push_bind(event.sequence as i64)
                .push_bind(event.event_type.as_str())
                .push_bind(event.event_version.as_str())
                .push_bind(&sealed.0)
                .push_bind(&sealed.1);
        });
        insert
            .build()
            .execute(&self.pool)
            .await
            .map_err(persistence_error)?;
        for (subject, key, _) in &new_keys {
            self.vault.remember_key(*subject, key);
        }
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let _ = aggregate_id;
        Err(not_streamed())
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(not_streamed())
    }
}
