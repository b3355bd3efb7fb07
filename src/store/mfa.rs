//! The second-factor tables (`migrations/0016_second_factors.sql`): sealed TOTP secrets and
//! hashed recovery codes. Each check-and-use is one statement, so a code is good once even when
//! two requests race with it.

use sqlx::PgExecutor;
use uuid::Uuid;

pub async fn insert_totp(
    db: impl PgExecutor<'_>,
    enrolment_id: Uuid,
    user_id: Uuid,
    sealed_secret: &[u8],
) -> sqlx::Result<()> {
    sqlx::query("insert into mfa_totp (enrolment_id, user_id, secret) values ($1, $2, $3)")
        .bind(enrolment_id)
        .bind(user_id)
        .bind(sealed_secret)
        .execute(db)
        .await?;
    Ok(())
}

/// The sealed secret of an enrolment and the newest step a code was accepted for.
pub async fn totp_secret(
    db: impl PgExecutor<'_>,
    enrolment_id: Uuid,
) -> sqlx::Result<Option<(Vec<u8>, i64)>> {
    sqlx::query_as("select secret, last_step from mfa_totp where enrolment_id = $1")
        .bind(enrolment_id)
        .fetch_optional(db)
        .await
}

/// Accepts a code of `step` once: false when a code of this step or a later one was accepted
/// already (a replay, or an older code after a newer one).
pub async fn use_totp_step(
    db: impl PgExecutor<'_>,
    enrolment_id: Uuid,
    step: i64,
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "update mfa_totp set last_step = $2 where enrolment_id = $1 and last_step < $2",
    )
    .bind(enrolment_id)
    .bind(step)
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Forgets every TOTP secret of the user but `keep` (set-ups never confirmed, or replaced).
pub async fn delete_totp_except(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query("delete from mfa_totp where user_id = $1 and enrolment_id is distinct from $2")
        .bind(user_id)
        .bind(keep)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn insert_recovery_codes(
    db: impl PgExecutor<'_>,
    batch_id: Uuid,
    user_id: Uuid,
    hashes: &[Vec<u8>],
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into mfa_recovery_code (batch_id, user_id, code_hash)
         select $1, $2, h from unnest($3::bytea[]) h",
    )
    .bind(batch_id)
    .bind(user_id)
    .bind(hashes)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks the code of `batch_id` with `hash` used: false when there is none or it was used.
pub async fn use_recovery_code(
    db: impl PgExecutor<'_>,
    batch_id: Uuid,
    hash: &[u8],
) -> sqlx::Result<bool> {
    let updated = sqlx::query(
        "update mfa_recovery_code set used_at = now()
          where batch_id = $1 and code_hash = $2 and used_at is null",
    )
    .bind(batch_id)
    .bind(hash)
    .execute(db)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Forgets every recovery code of the user outside `keep` (replaced or voided batches).
pub async fn delete_recovery_codes_except(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    keep: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query(
        "delete from mfa_recovery_code where user_id = $1 and batch_id is distinct from $2",
    )
    .bind(user_id)
    .bind(keep)
    .execute(db)
    .await?;
    Ok(())
}
