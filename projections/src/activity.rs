//! Active users per UTC day, ISO week and calendar month, kept incrementally so that the
//! analysts' `*_active_users` views read one row per period instead of counting the history.
//!
//! One row per (period, user) the first time the user is active in it, and a counter row per
//! period (`user_id` nil) that the same statement increments by the rows it inserted. Activity:
//! a login, a token refresh, a profile update, a password change.

use crate::reader::StoredEvent;
use crate::runner::{Projector, Target};
use aggregates::session::SessionEvent;
use aggregates::user::UserEvent;
use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

pub const NAME: &str = "activity";

pub struct ActivityProjector {
    target: Target,
    vault: crate::pii::Vault,
}

impl ActivityProjector {
    pub fn live(vault: crate::pii::Vault) -> Self {
        Self {
            vault,
            target: Target::new(NAME, "user_activity"),
        }
    }
}

/// Who was active when, if the event is activity.
fn activity(event: &StoredEvent) -> anyhow::Result<Option<(Uuid, DateTime<Utc>)>> {
    Ok(match event.aggregate_type.as_str() {
        "User" => match event.decode::<UserEvent>()? {
            UserEvent::ProfileUpdated { updated_at, .. } => {
                Some((event.aggregate_id.parse()?, updated_at))
            }
            UserEvent::PasswordChanged { changed_at, .. } => {
                Some((event.aggregate_id.parse()?, changed_at))
            }
            _ => None,
        },
        "Session" => match event.decode::<SessionEvent>()? {
            SessionEvent::Started {
                user_id,
                started_at,
                ..
            } => Some((user_id, started_at)),
            SessionEvent::Refreshed {
                user_id,
                refreshed_at,
                ..
            } => Some((user_id, refreshed_at)),
            _ => None,
        },
        _ => None,
    })
}

/// The day, the ISO week's Monday and the month's first day of `at` (UTC).
fn periods(at: DateTime<Utc>) -> [(&'static str, NaiveDate); 3] {
    let day = at.date_naive();
    let monday = day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()));
    let month = day.with_day(1).unwrap_or(day);
    [("day", day), ("week", monday), ("month", month)]
}

#[async_trait]
impl Projector for ActivityProjector {
    fn target(&self) -> &Target {
        &self.target
    }

    fn retarget(&self, target: Target) -> std::sync::Arc<dyn Projector> {
        std::sync::Arc::new(Self {
            target,
            vault: self.vault.clone(),
        })
    }

    fn vault(&self) -> &crate::pii::Vault {
        &self.vault
    }

    fn opens(&self) -> crate::reader::Opens {
        crate::reader::Opens::Nothing
    }

    /// One statement per batch: insert the (period, user) rows not there yet, and add how many
    /// were new to each period's counter.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let (mut kinds, mut dates, mut users) = (Vec::new(), Vec::new(), Vec::new());
        for event in events {
            if let Some((user_id, at)) = activity(event)? {
                for (kind, period) in periods(at) {
                    kinds.push(kind);
                    dates.push(period);
                    users.push(user_id);
                }
            }
        }
        if kinds.is_empty() {
            return Ok(());
        }
        let table = self.table();
        sqlx::query(&format!(
            "with new as (
                 insert into {table} (kind, period, user_id)
                 select distinct * from unnest($1::text[], $2::date[], $3::uuid[])
                 on conflict do nothing
                 returning kind, period
             )
             insert into {table} (kind, period, user_id, users)
             select kind, period, '00000000-0000-0000-0000-000000000000', count(*) from new
              group by kind, period
             on conflict (kind, period, user_id)
             do update set users = {table}.users + excluded.users"
        ))
        .bind(&kinds)
        .bind(&dates)
        .bind(&users)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::periods;
    use chrono::{NaiveDate, TimeZone, Utc};

    #[test]
    fn periods_are_the_utc_day_the_iso_week_and_the_month() {
        let at = Utc.with_ymd_and_hms(2026, 12, 3, 23, 59, 0).unwrap();
        let date = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(
            periods(at),
            [
                ("day", date(2026, 12, 3)),
                ("week", date(2026, 11, 30)),
                ("month", date(2026, 12, 1)),
            ]
        );
    }
}
