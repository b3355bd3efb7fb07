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
        Err(error) => {
            // Not deleted: the address is not kept for a farewell that will not come.
            if let Err(e) = forget_farewell_address(pool, user_id).await {
                tracing::warn!(error = %e, "cannot drop an unused farewell address");
            }
            Err(error)
        }
    }
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
          where global_position > (select position from erasure_migration)",
    )
    .fetch_one(pool)
    .await
}

/// Seals the personal data of every event written in clear (before crypto-shredding), in
/// `global_position` order, a batch per transaction with its checkpoint (`erasure_migration`),
/// so an interrupted run resumes where it stopped; a second run finds nothing to do. Events of
/// accounts deleted before any data key existed cannot be sealed under a key: their personal
/// values are blanked instead. `progress` is told how many events each batch read.
pub async fn migrate(
    pool: &PgPool,
    vault: &Vault,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<MigrationReport> {
    let mut report = MigrationReport::default();
    loop {
        let mut tx = pool.begin().await?;
        let after: i64 = sqlx::query_scalar("select position from erasure_migration for update")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(i64, String, String, String, Value, Value)> = sqlx::query_as(
            "select global_position, aggregate_type, aggregate_id, event_type, payload, metadata
               from events where global_position > $1 order by global_position limit $2",
        )
        .bind(after)
        .bind(MIGRATE_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last().map(|r| r.0) else {
            tx.commit().await?;
            return Ok(report);
        };
        let deleted: Vec<String> = sqlx::query_scalar(
            "select aggregate_id from events
              where aggregate_type = 'User' and event_type = 'AccountDeleted'
                and aggregate_id = any($1)",
        )
        .bind(
            rows.iter()
                .filter_map(|r| {
                    let subject = pii::subject_of(&r.1, &r.2, &r.4)?;
                    Some(subject.to_string())
                })
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        let (mut positions, mut payloads, mut metadatas) = (Vec::new(), Vec::new(), Vec::new());
        for (position, aggregate_type, aggregate_id, _, mut payload, mut metadata) in
            rows.iter().cloned()
        {
            report.scanned += 1;
            if !pii::holds_clear_personal_data(&payload, &metadata) {
                continue;
            }
            let subject = pii::subject_in(&metadata)
                .or_else(|| pii::subject_of(&aggregate_type, &aggregate_id, &payload));
            let Some(subject) = subject else {
                continue;
            };
            if deleted.contains(&subject.to_string()) {
                // No key may be made for a person who is gone: blank what was in clear.
                vault.seal_event(
                    &vault.new_data_key(subject).0,
                    subject,
                    &mut payload,
                    &mut metadata,
                );
            } else {
                let key = vault.key_for_writing(&mut *tx, subject).await?;
                vault.seal_event(&key, subject, &mut payload, &mut metadata);
            }
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
            report.sealed += positions.len() as u64;
        }
        sqlx::query("update erasure_migration set position = $1, updated_at = now()")
            .bind(last)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        progress(rows.len() as u64);
    }
}
