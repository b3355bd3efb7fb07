//! Passkeys and WebAuthn ceremonies in flight (`migrations/0017_passkeys.sql`).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

/// One stored passkey: webauthn-rs's credential record as JSON.
#[derive(Debug, Clone, FromRow)]
pub struct StoredPasskey {
    pub passkey_id: Uuid,
    pub passkey: Value,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    passkey_id: Uuid,
    user_id: Uuid,
    credential_id: &[u8],
    passkey: &Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "insert into passkey (passkey_id, user_id, credential_id, passkey)
         values ($1, $2, $3, $4)",
    )
    .bind(passkey_id)
    .bind(user_id)
    .bind(credential_id)
    .bind(passkey)
    .execute(db)
    .await?;
    Ok(())
}

/// The user's passkeys among `live` (the ones the account's events name), oldest first.
pub async fn of_user(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    live: &[Uuid],
) -> sqlx::Result<Vec<StoredPasskey>> {
    sqlx::query_as(
        "select passkey_id, passkey, created_at, last_used_at from passkey
          where user_id = $1 and passkey_id = any($2) order by created_at",
    )
    .bind(user_id)
    .bind(live)
    .fetch_all(db)
    .await
}

/// After a use: the record with its new signature counter, and when.
pub async fn used(db: impl PgExecutor<'_>, passkey_id: Uuid, passkey: &Value) -> sqlx::Result<()> {
    sqlx::query("update passkey set passkey = $2, last_used_at = now() where passkey_id = $1")
        .bind(passkey_id)
        .bind(passkey)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn delete(db: impl PgExecutor<'_>, passkey_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from passkey where passkey_id = $1")
        .bind(passkey_id)
        .execute(db)
        .await?;
    Ok(())
}

/// A ceremony's state, for its finish.
pub struct Ceremony {
    pub purpose: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub state: Value,
}

/// Stores a ceremony's state; ceremonies expired for an hour (started and never finished) go in
/// the same statement, so the table stays as large as the ceremonies in flight.
pub async fn start_ceremony(
    db: impl PgExecutor<'_>,
    ceremony_id: Uuid,
    ceremony: &Ceremony,
    ttl_secs: u64,
) -> sqlx::Result<()> {
    sqlx::query(
        "with stale as (delete from webauthn_ceremony
                         where expires_at < now() - interval '1 hour')
         insert into webauthn_ceremony (ceremony_id, purpose, user_id, session_id, state, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
    )
    .bind(ceremony_id)
    .bind(&ceremony.purpose)
    .bind(ceremony.user_id)
    .bind(ceremony.session_id)
    .bind(&ceremony.state)
    .bind(ttl_secs as f64)
    .execute(db)
    .await?;
    Ok(())
}

/// Takes the ceremony of `purpose` out of the table (a ceremony is finished once): `None`
/// when there is none, it has another purpose, or it expired.
pub async fn take_ceremony(
    db: impl PgExecutor<'_>,
    ceremony_id: Uuid,
    purpose: &str,
) -> sqlx::Result<Option<Ceremony>> {
    type Row = (String, Option<Uuid>, Option<Uuid>, Value, bool);
    let row: Option<Row> = sqlx::query_as(
        "delete from webauthn_ceremony where ceremony_id = $1
         returning purpose, user_id, session_id, state, expires_at > now()",
    )
    .bind(ceremony_id)
    .fetch_optional(db)
    .await?;
    Ok(row
        .filter(|(found, .., live)| found == purpose && *live)
        .map(|(purpose, user_id, session_id, state, _)| Ceremony {
            purpose,
            user_id,
            session_id,
            state,
        }))
}
