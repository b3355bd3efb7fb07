//! Executing commands on aggregates stored by postgres-es, with optimistic concurrency.
//!
//! This is cqrs-es's `CqrsFramework::execute_with_metadata` (load, handle, commit) without the
//! in-process query dispatch (lossy, see ARCHITECTURE.md §5), returning what was committed and the
//! resulting state, with two changes for the hot path:
//!
//! - **Aggregate cache.** The state of recently used aggregates is kept in memory with the
//!   sequence it reflects. A command is decided on the cached state and committed at the next
//!   sequence: the primary key `(aggregate_type, aggregate_id, sequence)` refuses the commit if
//!   another writer (or another instance) appended in between, and the bus then reads only the
//!   events after the cached sequence and decides again. A refusal or a no-op decided on a cached
//!   state is checked the same way before it is answered. So the cache never decides anything
//!   the stored stream would not; it only saves the load. [`CommandBus::load`] always reads the
//!   events after the cached sequence (one indexed query, usually returning nothing).
//! - **One statement per commit** (see [`crate::store::events::EventRepository`]).

use crate::api::body::RequestMeta;
use crate::store::events::EventRepository;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    EventStoreAggregateContext, EventUpcaster, PersistedEventRepository, PersistedEventStore,
    SemanticVersionEventUpcaster,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use hashlink::LruCache;
use projections::pii::{self, Vault};
use rand::Rng;
use sqlx::PgPool;
use std::sync::Mutex;
use std::time::Duration;

/// Attempts before a conflict is reported (each one reads the events appended meanwhile).
const MAX_ATTEMPTS: usize = 25;

/// Aggregates kept in memory per aggregate type unless configured otherwise.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

pub struct CommandBus<A: Aggregate> {
    store: PersistedEventStore<EventRepository, A>,
    repo: EventRepository,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    /// `None` when configured off.
    cache: Option<Mutex<LruCache<String, (A, usize)>>>,
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

fn upcasters_of(aggregate_type: &str) -> Vec<Box<dyn EventUpcaster>> {
    aggregates::upcast::STEPS
        .iter()
        .filter(|step| step.aggregate_type == aggregate_type)
        .map(|step| {
            Box::new(SemanticVersionEventUpcaster::new(
                step.event_type,
                step.to_version,
                Box::new(step.apply),
            )) as Box<dyn EventUpcaster>
        })
        .collect()
}

impl<A> CommandBus<A>
where
    A: Aggregate + Clone + aggregates::DataSubject,
    A::Command: Clone,
{
    pub fn new(pool: PgPool, vault: Vault, services: A::Services) -> Self {
        Self::with_cache_capacity(pool, vault, services, DEFAULT_CACHE_CAPACITY)
    }

    /// A bus that keeps at most `capacity` aggregates in memory (0: none).
    pub fn with_cache_capacity(
        pool: PgPool,
        vault: Vault,
        services: A::Services,
        capacity: usize,
    ) -> Self {
        let repo = EventRepository::new(pool, vault);
        Self {
            store: PersistedEventStore::new_event_store(repo.clone())
                .with_upcasters(upcasters_of(A::TYPE)),
            repo,
            upcasters: upcasters_of(A::TYPE),
            cache: (capacity > 0).then(|| Mutex::new(LruCache::new(capacity))),
            services,
        }
    }

    fn cached(&self, id: &str) -> Option<(A, usize)> {
        self.cache.as_ref()?.lock().ok()?.get(id).cloned()
    }

    fn remember(&self, id: &str, state: &A, sequence: usize) {
        let Some(cache) = &self.cache else { return };
        if let Ok(mut cache) = cache.lock() {
            // Never replace a newer state by an older one (two requests on one stream).
            if cache.peek(id).is_some_and(|(_, known)| *known > sequence) {
                return;
            }
            cache.insert(id.to_owned(), (state.clone(), sequence));
        }
    }

    /// Applies the events stored after `sequence` to `state`: the current state and sequence.
    async fn catch_up(
        &self,
        id: &str,
        mut state: A,
        mut sequence: usize,
    ) -> Result<(A, usize), AggregateError<A::Error>> {
        let newer = self.repo.get_last_events::<A>(id, sequence).await?;
        if newer.is_empty() {
            return Ok((state, sequence));
        }
        for mut serialized in newer {
            for upcaster in &self.upcasters {
                if upcaster.can_upcast(&serialized.event_type, &serialized.event_version) {
                    serialized = upcaster.upcast(serialized);
                }
            }
            let envelope = EventEnvelope::<A>::try_from(serialized)?;
            sequence = envelope.sequence;
            state.apply(envelope.payload);
        }
        self.remember(id, &state, sequence);
        Ok((state, sequence))
    }

    /// Reads the events after `*sequence` into `state` and `sequence`; whether there were any.
    async fn advance(
        &self,
        id: &str,
        state: &mut A,
        sequence: &mut usize,
    ) -> Result<bool, AggregateError<A::Error>> {
        let known = *sequence;
        (*state, *sequence) = self.catch_up(id, std::mem::take(state), known).await?;
        Ok(*sequence != known)
    }

    /// The current state of one aggregate (a default, unregistered one if its stream is empty).
    pub async fn load(&self, id: &str) -> Result<A, AggregateError<A::Error>> {
        let (state, sequence) = self.cached(id).unwrap_or_default();
        Ok(self.catch_up(id, state, sequence).await?.0)
    }

    /// The state of one aggregate whose stream is known to end at `last_sequence` (read by the
    /// caller just before): the cached state if it is that one, without a query.
    pub async fn load_at(
        &self,
        id: &str,
        last_sequence: usize,
    ) -> Result<A, AggregateError<A::Error>> {
        let (state, sequence) = self.cached(id).unwrap_or_default();
        if sequence == last_sequence && sequence > 0 {
            return Ok(state);
        }
        Ok(self.catch_up(id, state, sequence).await?.0)
    }

    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        meta: &RequestMeta,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        self.execute_with(id, command, meta, Vec::new()).await
    }

    /// [`CommandBus::execute`] with `transient` metadata entries for the store's triggers, which
    /// take them out of the row before it is stored (e.g. the guessing bound's success record:
    /// migration 0019).
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        meta: &RequestMeta,
        transient: Vec<(&'static str, String)>,
    ) -> Result<Executed<A>, AggregateError<A::Error>> {
        let mut metadata = meta.to_metadata();
        metadata.extend(transient.into_iter().map(|(k, v)| (k.to_owned(), v)));
        // Not cached: decide on an empty stream, which is right for a new aggregate; for an
        // existing one the commit conflicts (or the refusal is checked) and it is read. Without
        // a cache, read first as cqrs-es does.
        let (mut state, mut sequence, mut verified) = match (&self.cache, self.cached(id)) {
            (_, Some((state, sequence))) => (state, sequence, false),
            (Some(_), None) => (A::default(), 0, false),
            (None, None) => {
                let (state, sequence) = self.catch_up(id, A::default(), 0).await?;
                (state, sequence, true)
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut next = state.clone();
            let sink = EventSink::default();
            let handled = next.handle(command.clone(), &self.services, &sink).await;
            let events = sink.collect().await;
            if handled.is_err() || events.is_empty() {
                if !verified {
                    // Decided on a remembered state: answer only if it is still the stored one.
                    verified = true;
                    if self.advance(id, &mut state, &mut sequence).await? {
                        continue;
                    }
                }
                handled.map_err(AggregateError::UserError)?;
                return Ok(Executed {
                    state: next,
                    events: vec![],
                });
            }
            let mut metadata = metadata.clone();
            if let Some(subject) = next.data_subject() {
                metadata.insert(pii::SUBJECT.to_owned(), subject.to_string());
            }
            let context = EventStoreAggregateContext {
                aggregate_id: id.to_owned(),
                aggregate: next.clone(),
                current_sequence: sequence,
                current_snapshot: None,
            };
            match self.store.commit(events, context, metadata).await {
                Ok(events) => {
                    self.remember(id, &next, sequence + events.len());
                    return Ok(Executed {
                        state: next,
                        events,
                    });
                }
                Err(AggregateError::AggregateConflict) if attempt < MAX_ATTEMPTS => {
                    if verified {
                        // Another writer appended to this stream first: back off a little.
                        let jitter = rand::thread_rng().gen_range(0..=(2 * attempt as u64));
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    verified = true;
                    self.advance(id, &mut state, &mut sequence).await?;
                }
                Err(error) if !verified => {
                    // Refused by the store (e.g. the identity trigger) on a remembered state:
                    // decide again if the stream has moved, else the refusal stands.
                    verified = true;
                    if !self.advance(id, &mut state, &mut sequence).await? {
                        return Err(error);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Forgets an aggregate's cached state and its subject's data key in this process (the
    /// account was deleted).
    pub fn forget(&self, id: &str, subject: uuid::Uuid) {
        if let Some(cache) = &self.cache {
            if let Ok(mut cache) = cache.lock() {
                cache.remove(id);
            }
        }
        self.repo.forget(subject);
    }

    /// The state and sequence of one aggregate read from the store alone, bypassing the cache
    /// (what a fresh process would load).
    pub async fn load_uncached(&self, id: &str) -> Result<(A, usize), AggregateError<A::Error>> {
        let mut context = self.store.load_aggregate(id).await?;
        use cqrs_es::AggregateContext;
        Ok((context.aggregate().clone(), context.current_sequence))
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
