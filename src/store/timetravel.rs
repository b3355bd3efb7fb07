//! Time travel: an account as it stood at a past moment, folded from its events up to then
//! (opened with the person's data key: after a deletion, nothing personal).

use aggregates::{User, UserEvent};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use projections::StoredEvent;
use sqlx::PgPool;
use uuid::Uuid;

/// The `User` state from the events recorded at or before `at`; `None` if it had not registered.
pub async fn user_as_of(
    pool: &PgPool,
    vault: &projections::pii::Vault,
    user_id: Uuid,
    at: DateTime<Utc>,
) -> anyhow::Result<Option<User>> {
    let mut events: Vec<StoredEvent> = sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                metadata, global_position, transaction_id::text as transaction_id, recorded_at
           from events
          where aggregate_type = 'User' and aggregate_id = $1 and recorded_at <= $2
          order by sequence",
    )
    .bind(user_id.to_string())
    .bind(at)
    .fetch_all(pool)
    .await?;
    // A deleted person's events open with nothing personal in them.
    let mut conn = pool.acquire().await?;
    projections::reader::open_all(
        &mut conn,
        vault,
        projections::reader::Opens::All,
        &mut events,
    )
    .await?;
    let mut user = User::default();
    for event in &events {
        user.apply(event.decode::<UserEvent>()?);
    }
    Ok(user.is_registered().then_some(user))
}
