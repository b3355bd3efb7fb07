//! The profile read model: one row per account, what the profile, dashboard and token checks read.

use crate::reader::StoredEvent;
use crate::runner::{Projector, Target};
use aggregates::session::SessionEvent;
use aggregates::user::UserEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

pub const NAME: &str = "profile";

/// A row of the `profile` table.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct ProfileRow {
    pub user_id: Uuid,
    pub username: String,
    pub email: String,
    pub is_active: bool,
    pub date_joined: DateTime<Utc>,
    pub last_login: Option<DateTime<Utc>>,
    pub country: String,
    pub profession: String,
    pub bio: String,
    pub thoughts: String,
    pub profile_img: String,
    pub token_epoch: i32,
    pub version: i64,
}

pub async fn find(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<Option<ProfileRow>> {
    sqlx::query_as(
        "select user_id, username, email, is_active, date_joined, last_login, country, profession,
                bio, thoughts, profile_img, token_epoch, version
           from profile where user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(db)
    .await
}

/// A profile row with whether the session `session_id` has ended (logged out, or revoked by reuse
/// detection or a password change), read from the event store itself so that an ended session's
/// access tokens die at once, in every process.
#[derive(Debug, Clone, FromRow)]
pub struct CallerRow {
    #[sqlx(flatten)]
    pub profile: ProfileRow,
    pub session_ended: bool,
}

pub async fn find_caller(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    session_id: Uuid,
) -> sqlx::Result<Option<CallerRow>> {
    sqlx::query_as(
        "select user_id, username, email, is_active, date_joined, last_login, country, profession,
                bio, thoughts, profile_img, token_epoch, version,
                exists (select 1 from events e
                         where e.aggregate_type = 'Session' and e.aggregate_id = $2
                           and e.event_type in ('LoggedOut', 'Revoked')) as session_ended
           from profile where user_id = $1",
    )
    .bind(user_id)
    .bind(session_id.to_string())
    .fetch_optional(db)
    .await
}

/// The profile read model's projector (the live table, or a rebuild's copy).
pub struct ProfileProjector {
    target: Target,
}

impl ProfileProjector {
    pub fn live() -> Self {
        Self {
            target: Target::new(NAME, "profile"),
        }
    }
}

#[async_trait]
impl Projector for ProfileProjector {
    fn target(&self) -> &Target {
        &self.target
    }

    fn retarget(&self, target: Target) -> std::sync::Arc<dyn Projector> {
        std::sync::Arc::new(Self { target })
    }

    async fn apply(&self, conn: &mut PgConnection, event: &StoredEvent) -> anyhow::Result<()> {
        match event.aggregate_type.as_str() {
            "User" => apply_user(conn, self.table(), event).await,
            "Session" => apply_session(conn, self.table(), event).await,
            _ => Ok(()),
        }
    }
}

/// One statement per event: the change it makes and the stream version it brings the row to.
async fn apply_user(
    conn: &mut PgConnection,
    table: &str,
    event: &StoredEvent,
) -> anyhow::Result<()> {
    let user_id: Uuid = event.aggregate_id.parse()?;
    let set_version = "version = $2, updated_at = now()";
    match event.decode::<UserEvent>()? {
        UserEvent::Registered {
            username,
            email,
            registered_at,
            ..
        } => {
            sqlx::query(&format!(
                "insert into {table} (user_id, version, username, email, date_joined)
                 values ($1, $2, $3, $4, $5) on conflict (user_id) do nothing"
            ))
            .bind(user_id)
            .bind(event.sequence)
            .bind(username)
            .bind(email)
            .bind(registered_at)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::ProfileUpdated { changes, .. } => {
            sqlx::query(&format!(
                "update {table} set country = coalesce($3, country),
                        profession = coalesce($4, profession), bio = coalesce($5, bio),
                        thoughts = coalesce($6, thoughts), profile_img = coalesce($7, profile_img),
                        {set_version}
                  where user_id = $1"
            ))
            .bind(user_id)
            .bind(event.sequence)
            .bind(changes.country)
            .bind(changes.profession)
            .bind(changes.bio)
            .bind(changes.thoughts)
            .bind(changes.profile_img)
            .execute(&mut *conn)
            .await?;
        }
        other => {
            let change = match other {
                UserEvent::Activated { .. } => "is_active = true,",
                UserEvent::PasswordChanged { .. } | UserEvent::PasswordReset { .. } => {
                    "token_epoch = token_epoch + 1,"
                }
                _ => "",
            };
            sqlx::query(&format!(
                "update {table} set {change} {set_version} where user_id = $1"
            ))
            .bind(user_id)
            .bind(event.sequence)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn apply_session(
    conn: &mut PgConnection,
    table: &str,
    event: &StoredEvent,
) -> anyhow::Result<()> {
    if let SessionEvent::Started {
        user_id,
        started_at,
        ..
    } = event.decode::<SessionEvent>()?
    {
        sqlx::query(&format!(
            "update {table} set last_login = greatest(last_login, $2), updated_at = now()
              where user_id = $1"
        ))
        .bind(user_id)
        .bind(started_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
