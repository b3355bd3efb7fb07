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

/// What a login needs to know before it loads the account: the owner of an e-mail address,
/// the last sequence of the owner's stream (so a cached state that is current needs no read) and
/// the hashes of the owner's newest credentials (so the one the stream names needs no second
/// look-up), all in one query.
pub struct LoginCandidate {
    pub user_id: Uuid,
    pub last_sequence: i64,
    pub hashes: Vec<(Uuid, String)>,
}

/// `(user_id, last sequence, credential id, hash)`: one row per recent credential.
type CandidateRow = (Uuid, Option<i64>, Option<Uuid>, Option<String>);

pub async fn login_candidate(
    db: impl PgExecutor<'_>,
    email: &str,
) -> sqlx::Result<Option<LoginCandidate>> {
    let rows: Vec<CandidateRow> = sqlx::query_as(
        "select i.user_id,
                (select max(e.sequence) from events e
                  where e.aggregate_type = 'User' and e.aggregate_id = i.user_id::text),
                c.id, c.password_hash
           from user_identities i
           left join lateral (select id, password_hash from credential
                               where user_id = i.user_id
                               order by created_at desc limit 2) c on true
          where i.kind = 'email' and i.value = $1",
    )
    .bind(email.to_lowercase())
    .fetch_all(db)
    .await?;
    let Some(&(user_id, last_sequence, _, _)) = rows.first() else {
        return Ok(None);
    };
    let hashes = rows
        .into_iter()
        .filter_map(|(_, _, id, hash)| id.zip(hash))
        .collect();
    Ok(Some(LoginCandidate {
        user_id,
        last_sequence: last_sequence.unwrap_or(0),
        hashes,
    }))
}
