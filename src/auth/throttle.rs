//! The guessing bound on every password check (login, change of password): failures are counted
//! per account and source, unfamiliar sources share one more budget per account, and a source
//! that logged in to the account before is never held back by what other sources do. The SQL
//! lives in `migrations/0011_login_guard.sql`; docs/SECURITY.md says why this design.
//!
//! An attempt is counted when it is admitted, before the hash is checked, so nothing has to be
//! released afterwards: an aborted request stays counted (against its own source only), a shed
//! one is given back ([`LoginThrottle::refund`]), a success clears its source.

use crate::api::error::ApiError;
use crate::store::LoginCandidate;
use sqlx::PgPool;
use std::net::IpAddr;
use std::time::Duration;
use uuid::Uuid;

/// Failures older than this are forgotten.
const FAILURE_MEMORY_SECS: f64 = 86_400.0;

#[derive(Clone)]
pub struct LoginThrottle {
    pool: PgPool,
    limit: i32,
    shared_limit: i32,
    base: Duration,
    max: Duration,
    familiar_days: f64,
}

/// The attempt must wait: answer 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_secs: u64,
}

/// The source an attempt is counted under: the client's network (`http::client_network`: the
/// address, or an IPv6 address's /64), and `unknown` when there is none.
pub fn source_of(ip: Option<&str>) -> String {
    ip.and_then(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| crate::api::layers::client_network(ip).to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `(wait, user_id, last sequence, credential id, hash)`: one row per recent credential.
type AdmittedRow = (
    Option<f64>,
    Option<Uuid>,
    Option<i64>,
    Option<Uuid>,
    Option<String>,
);

/// Binds `login_admit($1 … $8)`'s arguments: the account, the source and the bound's settings.
macro_rules! bind_admission {
    ($query:expr, $throttle:expr, $account:expr, $source:expr) => {
        $query
            .bind($account)
            .bind($source)
            .bind($throttle.limit)
            .bind($throttle.shared_limit)
            .bind($throttle.base.as_secs_f64())
            .bind($throttle.max.as_secs_f64())
            .bind(FAILURE_MEMORY_SECS)
            .bind($throttle.familiar_days)
    };
}

impl LoginThrottle {
    pub fn new(
        pool: PgPool,
        limit: u32,
        shared_limit: u32,
        base: Duration,
        max: Duration,
        familiar_days: u32,
    ) -> Self {
        Self {
            pool,
            limit: limit.max(1) as i32,
            shared_limit: shared_limit.max(1) as i32,
            base,
            max,
            familiar_days: familiar_days.max(1) as f64,
        }
    }

    fn wait(secs: f64) -> Throttled {
        Throttled {
            retry_after_secs: secs.ceil().max(1.0) as u64,
        }
    }

    /// Admits one password check of `account` (an e-mail key) from `source`, or says how long to
    /// wait.
    pub async fn admit(&self, account: &str, source: &str) -> sqlx::Result<Result<(), Throttled>> {
        let wait: Option<f64> = bind_admission!(
            sqlx::query_scalar("select login_admit($1, $2, $3, $4, $5, $6, $7, $8)"),
            self,
            account,
            source
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(wait.map_or(Ok(()), |w| Err(Self::wait(w))))
    }

    /// The login's admission and its look-up of the account in one round trip: the owner of the
    /// address `account` (an e-mail key) with its stream's last sequence and newest hashes (see
    /// [`crate::store::login_candidate`]), looked up only when the attempt is admitted.
    pub async fn admit_login(
        &self,
        account: &str,
        source: &str,
    ) -> sqlx::Result<Result<Option<LoginCandidate>, Throttled>> {
        let rows: Vec<AdmittedRow> = bind_admission!(
            sqlx::query_as(
                "select a.wait, i.user_id,
                    (select max(e.sequence) from events e
                      where e.aggregate_type = 'User' and e.aggregate_id = i.user_id::text),
                    c.id, c.password_hash
               from (select login_admit($1, $2, $3, $4, $5, $6, $7, $8) as wait) a
               left join user_identities i
                      on a.wait is null and i.kind = 'email' and i.value = $1
               left join lateral (select id, password_hash from credential
                                   where user_id = i.user_id
                                   order by created_at desc limit 2) c on true",
            ),
            self,
            account,
            source
        )
        .fetch_all(&self.pool)
        .await?;
        if let Some(wait) = rows.first().and_then(|row| row.0) {
            return Ok(Err(Self::wait(wait)));
        }
        let Some(&(_, Some(user_id), last_sequence, _, _)) = rows.first() else {
            return Ok(Ok(None));
        };
        let hashes = rows
            .into_iter()
            .filter_map(|(_, _, _, id, hash)| id.zip(hash))
            .collect();
        Ok(Ok(Some(LoginCandidate {
            user_id,
            last_sequence: last_sequence.unwrap_or(0),
            hashes,
        })))
    }

    /// Runs `check` as one admitted guess of `account` from `source` (a password or a
    /// second-factor code): 429 when the source must wait; a right guess (`Some`) clears the
    /// source's failures (a failed clear is logged: it only leaves the count as it was, the
    /// check stands), a wrong one (`None`) stays counted, a check that broke is given back.
    pub async fn guess<T>(
        &self,
        account: &str,
        source: &str,
        check: impl std::future::Future<Output = Result<Option<T>, ApiError>>,
    ) -> Result<Option<T>, ApiError> {
        self.admit(account, source).await??;
        match check.await {
            Ok(Some(right)) => {
                if let Err(error) = self.succeeded(account, source).await {
                    tracing::warn!(%error, "cannot clear a right guess's source");
                }
                Ok(Some(right))
            }
            Ok(None) => Ok(None),
            Err(error) => {
                self.refund(account, source).await;
                Err(error)
            }
        }
    }

    /// What records a right password in the statement that appends the login's first session
    /// event, instead of [`LoginThrottle::succeeded`]'s own round trip: transient metadata the
    /// store's trigger passes to `login_succeeded` and takes out of the row (migration 0019).
    pub fn success_in_append(&self, account: &str, source: &str) -> Vec<(&'static str, String)> {
        vec![
            ("guard_account", account.to_owned()),
            ("guard_source", source.to_owned()),
            ("guard_familiar_days", self.familiar_days.to_string()),
        ]
    }

    /// The admitted check succeeded: the source's failures are forgotten and it becomes familiar.
    pub async fn succeeded(&self, account: &str, source: &str) -> sqlx::Result<()> {
        sqlx::query("select login_succeeded($1, $2, $3)")
            .bind(account)
            .bind(source)
            .bind(self.familiar_days)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The admitted check never ran (hashing was shed) or broke: its count is given back. A
    /// back-off in force stays in force. A failure to give it back only leaves the attempt
    /// counted (logged); the caller answers its own error either way.
    pub async fn refund(&self, account: &str, source: &str) {
        let refunded = sqlx::query("select login_refund($1, $2, $3)")
            .bind(account)
            .bind(source)
            .bind(self.familiar_days)
            .execute(&self.pool)
            .await;
        if let Err(error) = refunded {
            tracing::warn!(%error, "cannot give back a password-check admission");
        }
    }

    /// Forgets what no longer counts: failures older than their memory (and no back-off in
    /// force) and sources not familiar any more, so the tables stay as large as recent activity.
    pub async fn prune(&self) -> sqlx::Result<u64> {
        let guards = sqlx::query(
            "delete from login_guard
              where updated_at < now() - make_interval(secs => $1)
                and (blocked_until is null or blocked_until < now())",
        )
        .bind(FAILURE_MEMORY_SECS)
        .execute(&self.pool)
        .await?;
        let sources = sqlx::query(
            "delete from login_familiar_source
              where last_success < now() - make_interval(days => $1::integer)",
        )
        .bind(self.familiar_days)
        .execute(&self.pool)
        .await?;
        Ok(guards.rows_affected() + sources.rows_affected())
    }

    /// Prunes every 10 minutes until `shutdown` (see [`LoginThrottle::prune`]).
    pub async fn prune_now_and_then(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
            if let Err(error) = self.prune().await {
                tracing::warn!(%error, "cannot prune the login guard");
            }
        }
    }

    /// The password was changed or reset by e-mail from `source`: every back-off of the account
    /// ends, every other place that knew the old password stops being familiar (whoever stole it
    /// gets no bypass of the shared budget from where they used it), and `source`, which set the
    /// new one, is familiar.
    pub async fn password_replaced(&self, account: &str, source: &str) -> sqlx::Result<()> {
        sqlx::query(
            "with guards as (delete from login_guard where account = $1),
                  others as (delete from login_familiar_source
                              where account = $1 and source <> $2)
             insert into login_familiar_source (account, source) values ($1, $2)
             on conflict (account, source) do update set last_success = now()",
        )
        .bind(account)
        .bind(source)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::source_of;

    #[test]
    fn sources_are_addresses_and_ipv6_networks() {
        assert_eq!(source_of(Some("203.0.113.7")), "203.0.113.7");
        assert_eq!(source_of(Some("::ffff:203.0.113.7")), "203.0.113.7");
        assert_eq!(
            source_of(Some("2001:db8:1:2:aaaa::1")),
            source_of(Some("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            source_of(Some("2001:db8:1:2::1")),
            source_of(Some("2001:db8:1:3::1"))
        );
        assert_eq!(source_of(None), "unknown");
        assert_eq!(source_of(Some("garbage")), "unknown");
    }
}
