//! The event repository under the command bus: postgres-es's `PostgresEventRepository` for every
//! read, and a commit that is one `INSERT` statement (atomic on its own) instead of
//! `BEGIN`, one `INSERT` per event and `COMMIT`: one round trip to the database instead of three
//! for the usual one-event command. The rows are exactly the ones postgres-es writes; a duplicate
//! `(aggregate_type, aggregate_id, sequence)` is an optimistic-concurrency conflict as there.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::sync::Arc;

#[derive(Clone)]
pub struct EventRepository {
    reads: Arc<PostgresEventRepository>,
    pool: PgPool,
}

impl EventRepository {
    pub fn new(pool: PgPool) -> Self {
        Self {
            reads: Arc::new(PostgresEventRepository::new(pool.clone())),
            pool,
        }
    }
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
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
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
        let mut insert: QueryBuilder<Postgres> = QueryBuilder::new(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) ",
        );
        insert.push_values(events, |mut row, event| {
            row.push_bind(A::TYPE)
                .push_bind(event.aggregate_id.as_str())
                .push_bind(event.sequence as i64)
                .push_bind(event.event_type.as_str())
                .push_bind(event.event_version.as_str())
                .push_bind(&event.payload)
                .push_bind(&event.metadata);
        });
        insert
            .build()
            .execute(&self.pool)
            .await
            .map_err(persistence_error)?;
        Ok(())
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}
