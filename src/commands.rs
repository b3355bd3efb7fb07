//! Executing commands on aggregates stored by postgres-es, with optimistic-concurrency retries.
//!
//! This is cqrs-es's `CqrsFramework::execute_with_metadata` (load, handle, commit) without the
//! in-process query dispatch (lossy, see ARCHITECTURE.md §5), returning what was committed and the
//! resulting state, and retrying when another writer appended to the same stream first.

use crate::extract::RequestMeta;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventUpcaster, PersistedEventStore, SemanticVersionEventUpcaster};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use rand::Rng;
use sqlx::PgPool;
use std::time::Duration;

/// Attempts before a conflict is reported (each one reloads the stream).
const MAX_ATTEMPTS: usize = 25;

pub struct CommandBus<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    services: A::Services,
}

/// What a command did: the events it appended (with their sequence) and the state after them.
pub struct Executed<A: Aggregate> {
    pub state: A,
    pub events: Vec<EventEnvelope<A>>,
}

impl<A: Aggregate> Executed<A> {
    /// The sequence of the last event of the stream after this command, if it appended any.
    pub fn last_sequence(&self) -> Option<i64> {
        self.events.last().map(|e| e.sequence as i64)
    }
}

impl<A> CommandBus<A>
where
    A: Aggregate + Clone,
    A::Command: Clone,
{
    pub fn new(pool: PgPool, services: A::Services) -> Self {
        let upcasters: Vec<Box<dyn EventUpcaster>> = aggregates::upcast::STEPS
            .iter()
            .filter(|step| step.aggregate_type == A::TYPE)
            .map(|step| {
                Box::new(SemanticVersionEventUpcaster::new(
                    step.event_type,
                    step.to_version,
                    Box::new(step.apply),
                )) as Box<dyn EventUpcaster>
            })
            .collect();
        Self {
            store: PersistedEventStore::new_event_store(PostgresEventRepository::new(pool))
                .with_upcasters(upcasters),
            services,
        }
    }

    /// The current state of one aggregate (a default, unregistered one if its stream is empty).
    pub async fn load(&self, id: &str) -> Result<A, AggregateError<A::Error>> {
        let mut context = self.store.load_aggregate(id).await?;
        Ok(context.aggregate().clone())
    }

    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        meta: &RequestMeta,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        let metadata = meta.to_metadata();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut context = self.store.load_aggregate(id).await?;
            let sink = EventSink::default();
            context
                .aggregate()
                .handle(command.clone(), &self.services, &sink)
                .await
                .map_err(AggregateError::UserError)?;
            let events = sink.collect().await;
            let state = context.aggregate().clone();
            if events.is_empty() {
                return Ok(Executed {
                    state,
                    events: vec![],
                });
            }
            match self.store.commit(events, context, metadata.clone()).await {
                Ok(events) => return Ok(Executed { state, events }),
                Err(AggregateError::AggregateConflict) if attempt < MAX_ATTEMPTS => {
                    let jitter = rand::thread_rng().gen_range(0..=(2 * attempt as u64));
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// The SQLSTATE of a database error inside an aggregate error, e.g. the identity trigger's.
pub fn sqlstate<E: std::error::Error>(error: &AggregateError<E>) -> Option<String> {
    match error {
        AggregateError::UnexpectedError(inner) | AggregateError::DatabaseConnectionError(inner) => {
            inner
                .downcast_ref::<sqlx::Error>()
                .and_then(|e| e.as_database_error())
                .and_then(|e| e.code())
                .map(|code| code.into_owned())
        }
        _ => None,
    }
}
