//! The data generator: fills the event store with `users` accounts and their history, written
//! straight into `events` (the same rows the command path appends: real event types, serialised
//! as postgres-es does, with metadata), for tests and benchmarks. Read models and the stream
//! follow through the projectors and the relay like for any other event.

use aggregates::session::SessionEvent;
use aggregates::user::{ActivationMethod, ProfileChanges};
use aggregates::UserEvent;
use chrono::{DateTime, Duration, Utc};
use cqrs_es::DomainEvent;
use projections::pii::{DataKey, Vault};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The password every seeded account has (benchmarks log in with it).
pub const SEED_PASSWORD: &str = "seeded accounts share this passphrase";
const BATCH_ROWS: usize = 5_000;

/// One generated event, ordered by its time (then by generation order) so that the rows are
/// written in time order: `recorded_at` then follows `global_position`.
struct Row {
    at: DateTime<Utc>,
    order: u64,
    aggregate_type: &'static str,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    version: String,
    payload: Value,
    metadata: Value,
}

impl PartialEq for Row {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Row {}
impl PartialOrd for Row {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Row {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

/// How a generated event's personal data is sealed (see `projections::pii`): `None` writes it
/// in clear, as events were before crypto-shredding (what `accounts erasure migrate` seals).
type Seal<'a> = Option<(&'a Vault, &'a DataKey, Uuid)>;

/// Generated rows not written yet, earliest first.
#[derive(Default)]
struct Pending {
    rows: std::collections::BinaryHeap<std::cmp::Reverse<Row>>,
    order: u64,
}

impl Pending {
    #[allow(clippy::too_many_arguments)]
    fn push<E: DomainEvent + Serialize>(
        &mut self,
        aggregate_type: &'static str,
        id: &str,
        sequence: i64,
        event: &E,
        metadata: &Value,
        at: DateTime<Utc>,
        seal: Seal<'_>,
    ) -> anyhow::Result<()> {
        self.order += 1;
        let mut payload = serde_json::to_value(event)?;
        let mut metadata = metadata.clone();
        if let Some((vault, key, subject)) = seal {
            if let Some(body) = payload.get_mut("Registered").and_then(Value::as_object_mut) {
                for (kind, field) in [("email", "email_key"), ("username", "username_key")] {
                    let canonical = body.get(field).and_then(Value::as_str).unwrap_or_default();
                    let claim = vault.identity_hash(kind, canonical);
                    body.insert(format!("{kind}_claim"), Value::String(claim));
                }
            }
            vault.seal_event(key, subject, &mut payload, &mut metadata);
        }
        self.rows.push(std::cmp::Reverse(Row {
            at,
            order: self.order,
            aggregate_type,
            aggregate_id: id.to_owned(),
            sequence,
            event_type: event.event_type(),
            version: event.event_version(),
            payload,
            metadata,
        }));
        Ok(())
    }

    /// Moves every row up to `until` into `batch`, in time order.
    fn release(&mut self, until: DateTime<Utc>, batch: &mut Batch) {
        while self.rows.peek().is_some_and(|r| r.0.at <= until) {
            if let Some(std::cmp::Reverse(row)) = self.rows.pop() {
                batch.push(row);
            }
        }
    }
}

#[derive(Default)]
struct Batch {
    aggregate_type: Vec<&'static str>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    versions: Vec<String>,
    payload: Vec<Value>,
    metadata: Vec<Value>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl Batch {
    fn push(&mut self, row: Row) {
        self.aggregate_type.push(row.aggregate_type);
        self.aggregate_id.push(row.aggregate_id);
        self.sequence.push(row.sequence);
        self.event_type.push(row.event_type);
        self.versions.push(row.version);
        self.payload.push(row.payload);
        self.metadata.push(row.metadata);
        self.recorded_at.push(row.at);
    }

    fn len(&self) -> usize {
        self.sequence.len()
    }

    async fn flush(&mut self, pool: &PgPool) -> anyhow::Result<usize> {
        let n = self.len();
        if n == 0 {
            return Ok(0);
        }
        let versions: Vec<String> = self.versions.clone();
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                 payload, metadata, recorded_at)
             select * from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::jsonb[], $8::timestamptz[])",
        )
        .bind(&self.aggregate_type)
        .bind(&self.aggregate_id)
        .bind(&self.sequence)
        .bind(&self.event_type)
        .bind(&versions)
        .bind(&self.payload)
        .bind(&self.metadata)
        .bind(&self.recorded_at)
        .execute(pool)
        .await?;
        *self = Batch::default();
        Ok(n)
    }
}

/// Generates `users` accounts with on average about ten events each, spread over the last `days`
/// days; `progress` is told how many events each flush wrote. Returns the number of events.
///
/// Only the past is written, in time order (`recorded_at` follows `global_position`), and every
/// event's metadata says `synthetic` (published as `synthetic: true`): the relay publishes it, and workers (the mailer) do not
/// act on it.
pub async fn seed(
    pool: &PgPool,
    vault: Option<&Vault>,
    password_hash: &str,
    users: usize,
    days: i64,
    rng_seed: u64,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(rng_seed);
    let now = Utc::now();
    let mut batch = Batch::default();
    let mut pending = Pending::default();
    // Registrations in time order, so that rows up to each one's time are final.
    let span = days.max(1) * 86_400;
    let mut offsets: Vec<i64> = (0..users).map(|_| rng.gen_range(0..span)).collect();
    offsets.sort_unstable();
    let mut credentials: (Vec<Uuid>, Vec<Uuid>) = (Vec::new(), Vec::new());
    let mut keys: (Vec<Uuid>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
    let mut total = 0;
    let run = Uuid::new_v4().simple().to_string()[..8].to_owned();
    for n in 0..users {
        let user_id = Uuid::now_v7();
        let id = user_id.to_string();
        let credential_id = Uuid::new_v4();
        let username = format!("seed{run}{n}");
        let email = format!("{username}@seed.example");
        let meta = json!({
            "ip": format!("10.{}.{}.{}", rng.gen_range(0..255), rng.gen_range(0..255), rng.gen_range(1..255)),
            "user_agent": "seed/1.0",
            // A string, as all stored metadata (the relay publishes it as `true`).
            "synthetic": "true",
        });
        let registered_at = now - Duration::seconds(span) + Duration::seconds(offsets[n]);
        let mut at = registered_at;
        let mut seq = 0i64;
        let data_key = vault.map(|vault| {
            let (key, wrapped) = vault.new_data_key(user_id);
            keys.0.push(user_id);
            keys.1.push(wrapped);
            (vault, key)
        });
        let seal: Seal<'_> = data_key.as_ref().map(|(v, k)| (*v, k, user_id));
        let mut user_event = |pending: &mut Pending, event: UserEvent, at: DateTime<Utc>| {
            seq += 1;
            pending.push("User", &id, seq, &event, &meta, at, seal)
        };
        user_event(
            &mut pending,
            UserEvent::Registered {
                user_id,
                username: username.clone(),
                email: email.clone(),
                credential_id,
                registered_at: at,
                email_key: aggregates::values::email_key(&email),
                username_key: aggregates::values::username_key(&username),
            },
            at,
        )?;
        user_event(
            &mut pending,
            UserEvent::ActivationLinkIssued {
                request_id: Uuid::new_v4(),
                email: email.clone(),
                username: username.clone(),
                base_url: "http://localhost:3000/activate/".into(),
                expires_at: at + Duration::days(1),
                issued_at: at,
            },
            at,
        )?;
        credentials.0.push(credential_id);
        credentials.1.push(user_id);
        'history: {
            if !rng.gen_bool(0.9) {
                break 'history;
            }
            at += Duration::seconds(rng.gen_range(30..7_200));
            if at > now {
                break 'history;
            }
            user_event(
                &mut pending,
                UserEvent::Activated {
                    method: ActivationMethod::Link,
                    activated_at: at,
                },
                at,
            )?;
            if rng.gen_bool(0.5) {
                at += Duration::minutes(rng.gen_range(1..600));
                if at > now {
                    break 'history;
                }
                user_event(
                    &mut pending,
                    UserEvent::ProfileUpdated {
                        changes: ProfileChanges {
                            country: Some(
                                ["Nepal", "India", "Kenya", "Peru", "Norway"][n % 5].into(),
                            ),
                            bio: Some(format!("seeded bio {n}")),
                            ..Default::default()
                        },
                        updated_at: at,
                    },
                    at,
                )?;
            }
            // Logins: each its own session stream, with a few refreshes and a logout.
            for _ in 0..rng.gen_range(0..5) {
                at += Duration::minutes(rng.gen_range(1..2_000));
                if at > now {
                    break 'history;
                }
                let session_id = Uuid::new_v4();
                let sid = session_id.to_string();
                let mut sseq = 1;
                pending.push(
                    "Session",
                    &sid,
                    sseq,
                    &SessionEvent::Started {
                        session_id,
                        user_id,
                        method: aggregates::session::LoginMethod::Password,
                        second_factor: None,
                        token_epoch: 0,
                        expires_at: at + Duration::days(7),
                        started_at: at,
                    },
                    &meta,
                    at,
                    seal,
                )?;
                for generation in 1..=rng.gen_range(0..4u32) {
                    at += Duration::minutes(15);
                    if at > now {
                        break 'history;
                    }
                    sseq += 1;
                    pending.push(
                        "Session",
                        &sid,
                        sseq,
                        &SessionEvent::Refreshed {
                            user_id,
                            generation,
                            expires_at: at + Duration::days(7),
                            refreshed_at: at,
                        },
                        &meta,
                        at,
                        seal,
                    )?;
                }
                sseq += 1;
                pending.push(
                    "Session",
                    &sid,
                    sseq,
                    &SessionEvent::LoggedOut {
                        user_id,
                        logged_out_at: at,
                    },
                    &meta,
                    at,
                    seal,
                )?;
            }
        }
        // No later account has events before its registration: what lies before it is final.
        pending.release(registered_at, &mut batch);
        if batch.len() >= BATCH_ROWS {
            insert_credentials(pool, &mut credentials, password_hash).await?;
            insert_keys(pool, &mut keys).await?;
            let written = batch.flush(pool).await?;
            total += written;
            progress(written);
        }
    }
    pending.release(now, &mut batch);
    insert_credentials(pool, &mut credentials, password_hash).await?;
    insert_keys(pool, &mut keys).await?;
    let written = batch.flush(pool).await?;
    progress(written);
    Ok(total + written)
}

async fn insert_keys(
    pool: &PgPool,
    (users, wrapped): &mut (Vec<Uuid>, Vec<Vec<u8>>),
) -> anyhow::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into user_data_key (user_id, wrapped) select * from unnest($1::uuid[], $2::bytea[])",
    )
    .bind(&*users)
    .bind(&*wrapped)
    .execute(pool)
    .await?;
    users.clear();
    wrapped.clear();
    Ok(())
}

async fn insert_credentials(
    pool: &PgPool,
    (ids, users): &mut (Vec<Uuid>, Vec<Uuid>),
    hash: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into credential (id, user_id, password_hash)
         select id, user_id, $3 from unnest($1::uuid[], $2::uuid[]) as t(id, user_id)",
    )
    .bind(&*ids)
    .bind(&*users)
    .bind(hash)
    .execute(pool)
    .await?;
    ids.clear();
    users.clear();
    Ok(())
}
