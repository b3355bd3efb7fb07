//! The two tables beside the event store that the write path reads directly: the credential store
//! (password hashes, never in events) and `user_identities` (unique e-mail and username).

use sqlx::PgExecutor;
use uuid::Uuid;

/// SQLSTATE raised by the identity trigger when the e-mail is taken.
pub const EMAIL_TAKEN: &str = "AC001";
/// SQLSTATE raised by the identity trigger when the username is taken.
pub const USERNAME_TAKEN: &str = "AC002";

pub async fn insert_credential(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
    user_id: Uuid,
    password_hash: &str,
) -> sqlx::Result<()> {
    sqlx::query("insert into credential (id, user_id, password_hash) values ($1, $2, $3)")
        .bind(credential_id)
        .bind(user_id)
        .bind(password_hash)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn password_hash(
    db: impl PgExecutor<'_>,
    credential_id: Uuid,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("select password_hash from credential where id = $1")
        .bind(credential_id)
        .fetch_optional(db)
        .await
}

/// Removes a credential whose command was refused (e.g. the registration lost a race).
pub async fn delete_credential(db: impl PgExecutor<'_>, credential_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from credential where id = $1")
        .bind(credential_id)
        .execute(db)
        .await?;
    Ok(())
}

/// The account that owns an e-mail address (compared case-insensitively).
pub async fn user_by_email(db: impl PgExecutor<'_>, email: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("select user_id from user_identities where kind = 'email' and value = $1")
        .bind(email.to_lowercase())
        .fetch_optional(db)
        .await
}
