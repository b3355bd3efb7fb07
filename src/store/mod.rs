//! The two tables beside the event store that the write path reads directly: the credential store
//! (password hashes, never in events) and `user_identities` (unique e-mail and username).

pub mod commands;
pub mod db;
pub mod erasure;
pub mod events;
pub mod mfa;
pub mod passkeys;
pub mod timetravel;
pub mod wake;

use aggregates::values::{email_key, username_key};
use projections::pii::Vault;
use sqlx::{PgExecutor, PgPool};
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

/// The key an e-mail address is unique, looked up and guessed under: the keyed hash of its
/// canonical form ([`aggregates::values::email_key`], [`Vault::identity_hash`]).
pub fn email_identity(vault: &Vault, email: &str) -> String {
    vault.identity_hash("email", &email_key(email))
}

/// The account that owns an e-mail address.
pub async fn user_by_email(
    db: impl PgExecutor<'_>,
    vault: &Vault,
    email: &str,
) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("select user_id from user_identities where kind = 'email' and value = $1")
        .bind(email_identity(vault, email))
        .fetch_optional(db)
        .await
}

/// Replaces identities (and the guessing bound's account keys) held in clear by their keyed
/// hashes: what a deployment from before crypto-shredding holds until its first start with it.
/// Idempotent; several processes may run it at once.
pub async fn hash_identities(pool: &PgPool, vault: &Vault) -> anyhow::Result<()> {
    loop {
        let rows: Vec<(String, String)> =
            sqlx::query_as("select kind, value from user_identities where not hashed limit 5000")
                .fetch_all(pool)
                .await?;
        if rows.is_empty() {
            break;
        }
        let (kinds, values): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
        let hashes: Vec<String> = kinds
            .iter()
            .zip(&values)
            .map(|(kind, value)| vault.identity_hash(kind, value))
            .collect();
        let hashed = sqlx::query(
            "update user_identities i set value = h.hash, hashed = true
               from unnest($1::text[], $2::text[], $3::text[]) as h(kind, value, hash)
              where i.kind = h.kind and i.value = h.value and not i.hashed",
        )
        .bind(&kinds)
        .bind(&values)
        .bind(&hashes)
        .execute(pool)
        .await;
        match hashed {
            Ok(_) => {}
            // An address claimed twice, in clear and hashed (an old process registered it during
            // a rolling upgrade): one by one, the clash logged and kept for an operator.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                for ((kind, value), hash) in kinds.iter().zip(&values).zip(&hashes) {
                    let one = sqlx::query(
                        "update user_identities set value = $3, hashed = true
                          where kind = $1 and value = $2 and not hashed",
                    )
                    .bind(kind)
                    .bind(value)
                    .bind(hash)
                    .execute(pool)
                    .await;
                    if let Err(error) = one {
                        tracing::warn!(kind, %error, "an identity stays unhashed: its hash is claimed by another account");
                        sqlx::query(
                            "update user_identities set hashed = true
                              where kind = $1 and value = $2",
                        )
                        .bind(kind)
                        .bind(value)
                        .execute(pool)
                        .await?;
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    // The guessing bound's rows named accounts by their clear e-mail key: they are hashed too
    // (hashes are 64 hex digits; second-factor keys name the account id).
    let accounts: Vec<String> = sqlx::query_scalar(
        "select distinct account from login_guard
          where account !~ '^[0-9a-f]{64}$' and account not like 'second-factor:%'
         union
         select distinct account from login_familiar_source
          where account !~ '^[0-9a-f]{64}$' and account not like 'second-factor:%'",
    )
    .fetch_all(pool)
    .await?;
    if !accounts.is_empty() {
        let hashes: Vec<String> = accounts
            .iter()
            .map(|a| vault.identity_hash("email", a))
            .collect();
        for table in ["login_guard", "login_familiar_source"] {
            sqlx::query(&format!(
                "update {table} t set account = h.hash
                   from unnest($1::text[], $2::text[]) as h(account, hash)
                  where t.account = h.account
                    and not exists (select 1 from {table} o
                                     where o.account = h.hash and o.source = t.source)"
            ))
            .bind(&accounts)
            .bind(&hashes)
            .execute(pool)
            .await?;
            sqlx::query(&format!("delete from {table} where account = any($1)"))
                .bind(&accounts)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// What a login needs to know before it loads the account: the owner of an e-mail address,
/// the last sequence of the owner's stream (so a cached state that is current needs no read) and
/// the hashes of the owner's newest credentials (so the one the stream names needs no second
/// look-up), all in one query with the admission (`LoginThrottle::admit_login`).
pub struct LoginCandidate {
    pub user_id: Uuid,
    pub last_sequence: i64,
    pub hashes: Vec<(Uuid, String)>,
}

/// Re-keys identities claimed before the keys were computed in Rust (they hold Postgres'
/// `lower()`), from the `Registered` event that claimed them. Idempotent and safe to run from
/// several processes at once; a row whose new key is taken by another account keeps its old key
/// (logged: an operator decides).
pub async fn rekey_identities(pool: &PgPool) -> anyhow::Result<()> {
    let rows: Vec<(Uuid, String, String, Option<String>)> = sqlx::query_as(
        "select i.user_id, i.kind, i.value,
                e.payload -> 'Registered' ->> i.kind
           from user_identities i
           left join events e on e.aggregate_type = 'User' and e.aggregate_id = i.user_id::text
                              and e.sequence = 1
          where not i.canonical",
    )
    .fetch_all(pool)
    .await?;
    for (user_id, kind, old, original) in rows {
        // Sealed by `accounts erasure migrate` since: the row keeps the key it has.
        let original = original
            .filter(|o| !projections::pii::is_sealed(o))
            .unwrap_or_else(|| old.clone());
        let key = if kind == "email" {
            email_key(&original)
        } else {
            username_key(&original)
        };
        let updated = sqlx::query(
            "update user_identities set value = $3, canonical = true
              where kind = $1 and value = $2 and user_id = $4",
        )
        .bind(&kind)
        .bind(&old)
        .bind(&key)
        .bind(user_id)
        .execute(pool)
        .await;
        let taken = matches!(&updated, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505"));
        if !taken {
            updated?;
            continue;
        }
        if let Err(error) = updated {
            tracing::warn!(%user_id, kind, %error, "an identity keeps its old key: the new one is taken");
            sqlx::query(
                "update user_identities set canonical = true where kind = $1 and value = $2",
            )
            .bind(&kind)
            .bind(&old)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}
