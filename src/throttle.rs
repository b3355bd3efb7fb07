//! Per-account login back-off that expires by itself: after `limit` failures in a row, each further
//! attempt waits `base × 2^(failures − limit)` (at most `max`), and only one probe at a time is
//! let through. There is no permanent lock: the back-off ends on its own, a success clears it, and
//! a password reset by e-mail clears it too.

use sqlx::PgPool;
use std::time::Duration;

/// How old an admitted attempt may be before it no longer counts as in flight (a crashed request).
const IN_FLIGHT_STALE_SECS: i64 = 60;
/// Failures older than this are forgotten.
const FAILURE_MEMORY_SECS: i64 = 86_400;

#[derive(Clone)]
pub struct LoginThrottle {
    pool: PgPool,
    limit: i32,
    base: Duration,
    max: Duration,
}

/// The attempt must wait: answer 429 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_secs: u64,
}

impl LoginThrottle {
    pub fn new(pool: PgPool, limit: u32, base: Duration, max: Duration) -> Self {
        Self {
            pool,
            limit: limit.max(1) as i32,
            base,
            max,
        }
    }

    /// Admits one verification for `key`, or says how long to wait.
    pub async fn admit(&self, key: &str) -> sqlx::Result<Result<(), Throttled>> {
        let admitted: Option<i32> = sqlx::query_scalar(
            "insert into login_throttle as t (key, in_flight) values ($1, 1)
             on conflict (key) do update set
                 failures = case when t.updated_at < now() - make_interval(secs => $4)
                                 then 0 else t.failures end,
                 in_flight = case when t.updated_at < now() - make_interval(secs => $3)
                                  then 1 else t.in_flight + 1 end,
                 updated_at = now()
             where (t.blocked_until is null or t.blocked_until <= now())
               and (case when t.updated_at < now() - make_interval(secs => $3)
                         then 0 else t.in_flight end)
                   + least(case when t.updated_at < now() - make_interval(secs => $4)
                                then 0 else t.failures end, $2 - 1) < $2
             returning 1",
        )
        .bind(key)
        .bind(self.limit)
        .bind(IN_FLIGHT_STALE_SECS as f64)
        .bind(FAILURE_MEMORY_SECS as f64)
        .fetch_optional(&self.pool)
        .await?;
        if admitted.is_some() {
            return Ok(Ok(()));
        }
        let wait: Option<f64> = sqlx::query_scalar(
            "select extract(epoch from blocked_until - now())::float8
               from login_throttle where key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?
        .flatten();
        let secs = wait.map_or(1.0, |w| w.ceil().max(1.0));
        Ok(Err(Throttled {
            retry_after_secs: secs as u64,
        }))
    }

    /// The admitted attempt succeeded: the account's failures are forgotten.
    pub async fn succeeded(&self, key: &str) -> sqlx::Result<()> {
        sqlx::query(
            "update login_throttle set failures = 0, blocked_until = null,
                    in_flight = greatest(in_flight - 1, 0), updated_at = now()
              where key = $1",
        )
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The admitted attempt failed: count it, and start or lengthen the back-off.
    pub async fn failed(&self, key: &str) -> sqlx::Result<()> {
        sqlx::query(
            "update login_throttle set
                    failures = failures + 1,
                    in_flight = greatest(in_flight - 1, 0),
                    blocked_until = case when failures + 1 >= $2
                        then now() + least($3 * power(2, failures + 1 - $2), $4) * interval '1 second'
                        else null end,
                    updated_at = now()
              where key = $1",
        )
        .bind(key)
        .bind(self.limit)
        .bind(self.base.as_secs_f64())
        .bind(self.max.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Clears an account's back-off (its password was reset by e-mail).
    pub async fn clear(&self, key: &str) -> sqlx::Result<()> {
        sqlx::query("delete from login_throttle where key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
