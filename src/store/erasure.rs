//! Deleting an account (crypto-shredding, see `projections::pii`), for its owner and for
//! operators, and sealing the personal data of events written before it existed.

use crate::api::body::RequestMeta;
use crate::store::commands::{CommandBus, Executed};
use aggregates::user::DeletionRequester;
use aggregates::{User, UserCommand, UserError};
use chrono::Utc;
use cqrs_es::AggregateError;
use projections::pii::{self, Vault};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// What the farewell mail needs, sealed under the key-encryption key until it is sent.
pub async fn keep_farewell_address(
    pool: &PgPool,
    vault: &Vault,
    user_id: Uuid,
    account: &User,
) -> sqlx::Result<()> {
    let notice = json!({"email": account.email, "username": account.username}).to_string();
    sqlx::query(
        "insert into erasure_notice (user_id, sealed) values ($1, $2)
         on conflict (user_id) do update set sealed = excluded.sealed, created_at = now()",
    )
    .bind(user_id)
    .bind(vault.seal_notice(user_id, &notice))
    .execute(pool)
    .await?;
    Ok(())
}

/// The farewell mail's address and name, if kept.
pub async fn farewell_address(
    pool: &PgPool,
    vault: &Vault,
    user_id: Uuid,
) -> sqlx::Result<Option<Value>> {
    let sealed: Option<Vec<u8>> =
        sqlx::query_scalar("select sealed from erasure_notice where user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    Ok(sealed
        .and_then(|s| vault.open_notice(user_id, &s))
        .and_then(|text| serde_json::from_str(&text).ok()))
}

/// The farewell mail went out (or will never): the address goes.
pub async fn forget_farewell_address(pool: &PgPool, user_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from erasure_notice where user_id = $1")
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes the account `user_id` (already loaded as `account`): keeps its address for the
/// farewell mail, then appends `AccountDeleted`, whose insert destroys the data key, frees the
/// identities and removes credentials and second factors (migration 0018's trigger).
pub async fn delete_account(
    pool: &PgPool,
    users: &CommandBus<User>,
    vault: &Vault,
    user_id: Uuid,
    account: &User,
    (by, reason): (DeletionRequester, Option<String>),
    meta: &RequestMeta,
) -> Result<Executed<User>, AggregateError<UserError>> {
    let id = user_id.to_string();
    // Events from before crypto-shredding are sealed under the key about to be destroyed.
    seal_person(pool, vault, user_id)
        .await
        .map_err(|e| AggregateError::UnexpectedError(e.into()))?;
    keep_farewell_address(pool, vault, user_id, account)
        .await
        .map_err(|e| AggregateError::UnexpectedError(e.into()))?;
    let command = UserCommand::DeleteAccount {
        by,
        reason,
        now: Utc::now(),
    };
    match users.execute(&id, command, meta).await {
        Ok(done) => {
            users.forget(&id, user_id);
            Ok(done)
        }
        // Deleted meanwhile by a concurrent request: its farewell stays.
        Err(error @ AggregateError::UserError(UserError::Deleted)) => Err(error),
        Err(error) => {
            // Not deleted: the address is not kept for a farewell that will not come.
            if let Err(e) = forget_farewell_address(pool, user_id).await {
                tracing::warn!(error = %e, "cannot drop an unused farewell address");
            }
            Err(error)
        }
    }
}

/// Opens a published event's `data` and `metadata` (as a worker receives them) in place with the
/// data key `subject` has now, read at this moment and never cached, so a deleted person's values
/// read as empty. Whether `subject` still has a key.
pub async fn open_published(
    pool: &PgPool,
    vault: &Vault,
    subject: Uuid,
    event_type: &str,
    data: &mut Value,
    metadata: &mut Value,
) -> sqlx::Result<bool> {
    // A deleted person's row is a tombstone without a key.
    let wrapped: Option<Vec<u8>> = sqlx::query_scalar::<_, Option<Vec<u8>>>(
        "select wrapped from user_data_key where user_id = $1",
    )
    .bind(subject)
    .fetch_optional(pool)
    .await?
    .flatten();
    let key = wrapped.and_then(|w| vault.unwrap_key(subject, &w));
    let mut payload = json!({ event_type: data.take() });
    pii::open_with(key.as_ref(), subject, &mut payload, metadata);
    *data = payload
        .get_mut(event_type)
        .map(Value::take)
        .unwrap_or_default();
    Ok(key.is_some())
}

/// How far `accounts erasure migrate` got.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Events read.
    pub scanned: u64,
    /// Events that held personal data in clear and were sealed.
    pub sealed: u64,
}

/// Events read per transaction by [`migrate`].
const MIGRATE_BATCH: i64 = 2_000;

/// The events still to look at: those after the last migrated position.
pub async fn migrate_remaining(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "select count(*) from events
          where not (metadata ? 'subject')
            and global_position > (select position from erasure_migration)",
    )
    .fetch_one(pool)
    .await
}

/// One event as `migrate` reads it.
type Row = (i64, String, String, Value, Value);

/// Seals the personal data of `rows` (events written in clear) in place, in `tx`: each under its
/// person's data key, made if they have none; a deleted person's (a tombstone) under a key
/// stored nowhere. Returns how many were sealed.
async fn seal_rows(
    tx: &mut sqlx::PgConnection,
    vault: &Vault,
    rows: Vec<Row>,
) -> anyhow::Result<u64> {
    let (mut positions, mut payloads, mut metadatas) = (Vec::new(), Vec::new(), Vec::new());
    for (position, aggregate_type, aggregate_id, mut payload, mut metadata) in rows {
        if !pii::holds_clear_personal_data(&payload, &metadata) {
            continue;
        }
        let Some(subject) = pii::subject_in(&metadata)
            .or_else(|| pii::subject_of(&aggregate_type, &aggregate_id, &payload))
        else {
            continue;
        };
        let key = vault
            .key_for_writing(&mut *tx, subject)
            .await?
            .unwrap_or_else(|| vault.new_data_key(subject).0);
        vault.seal_event(&key, subject, &mut payload, &mut metadata);
        positions.push(position);
        payloads.push(payload);
        metadatas.push(metadata);
    }
    if !positions.is_empty() {
        sqlx::query(
            "update events e set payload = m.payload, metadata = m.metadata
               from unnest($1::bigint[], $2::jsonb[], $3::jsonb[]) as m(position, payload, metadata)
              where e.global_position = m.position",
        )
        .bind(&positions)
        .bind(&payloads)
        .bind(&metadatas)
        .execute(&mut *tx)
        .await?;
    }
    Ok(positions.len() as u64)
}

/// Seals the personal data of every event written in clear (before crypto-shredding): those
/// whose metadata names no subject (the index `events_unsealed`), in `global_position` order, a
/// batch per transaction with its checkpoint (`erasure_migration`), so an interrupted run resumes
/// where it stopped and a second run finds nothing to do; then once more from the start, for an
/// old writer's event that committed late below the checkpoint. `progress` is told how many
/// events each batch read.
pub async fn migrate(
    pool: &PgPool,
    vault: &Vault,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<MigrationReport> {
    let mut report = MigrationReport::default();
    let mut sweep_from: Option<i64> = None;
    loop {
        let mut tx = pool.begin().await?;
        let checkpoint: i64 =
            sqlx::query_scalar("select position from erasure_migration for update")
                .fetch_one(&mut *tx)
                .await?;
        let after = sweep_from.unwrap_or(checkpoint);
        let rows: Vec<Row> = sqlx::query_as(
            "select global_position, aggregate_type, aggregate_id, payload, metadata
               from events
              where not (metadata ? 'subject') and global_position > $1
              order by global_position limit $2",
        )
        .bind(after)
        .bind(MIGRATE_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            tx.commit().await?;
            if sweep_from.is_some() {
                return Ok(report);
            }
            sweep_from = Some(0);
            continue;
        };
        let read = rows.len() as u64;
        report.scanned += read;
        report.sealed += seal_rows(&mut tx, vault, rows).await?;
        match &mut sweep_from {
            Some(from) => *from = last,
            None => {
                sqlx::query("update erasure_migration set position = $1, updated_at = now()")
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        if sweep_from.is_none() {
            progress(read);
        }
    }
}

/// Seals what one person's events from before crypto-shredding still hold in clear (their
/// `User` stream and the `Session` events naming them), so that deleting them erases those too
/// even if `accounts erasure migrate` has not run yet. Looks only through the unsealed events.
pub async fn seal_person(pool: &PgPool, vault: &Vault, user_id: Uuid) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let rows: Vec<Row> = sqlx::query_as(
        "select global_position, aggregate_type, aggregate_id, payload, metadata
           from events
          where not (metadata ? 'subject')
            and ((aggregate_type = 'User' and aggregate_id = $1)
                 or (aggregate_type = 'Session' and payload -> event_type ->> 'user_id' = $1))
          for update",
    )
    .bind(user_id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    let sealed = seal_rows(&mut tx, vault, rows).await?;
    tx.commit().await?;
    Ok(sealed)
}
