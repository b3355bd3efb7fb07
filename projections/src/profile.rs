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
           from profile where user_id = $1 and deleted_at is null",
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
           from profile where user_id = $1 and deleted_at is null",
    )
    .bind(user_id)
    .bind(session_id.to_string())
    .fetch_optional(db)
    .await
}

/// The profile read model's projector (the live table, or a rebuild's copy).
pub struct ProfileProjector {
    target: Target,
    vault: crate::pii::Vault,
}

impl ProfileProjector {
    pub fn live(vault: crate::pii::Vault) -> Self {
        Self {
            vault,
            target: Target::new(NAME, "profile"),
        }
    }
}

/// What a batch of events does to one account's row, folded in order: a batch of any size is
/// written with two statements (the new rows, then one update per touched row), not one per
/// event.
#[derive(Default)]
struct Change {
    /// From `Registered`: username, e-mail, date joined.
    registered: Option<(String, String, DateTime<Utc>)>,
    /// The User stream's sequence the row reaches (`None`: no User event in the batch).
    version: Option<i64>,
    activated: bool,
    country: Option<String>,
    profession: Option<String>,
    bio: Option<String>,
    thoughts: Option<String>,
    profile_img: Option<String>,
    /// Password changes and resets: each bumps the token epoch.
    epochs: i32,
    last_login: Option<DateTime<Utc>>,
    /// From `AccountDeleted`: the row keeps nothing personal from here on.
    deleted_at: Option<DateTime<Utc>>,
}

impl Change {
    fn user_event(&mut self, event: UserEvent, sequence: i64) {
        // Registration's row is inserted at the registration's sequence; later events move it.
        match event {
            // The first registration wins, as `on conflict do nothing` does.
            UserEvent::Registered {
                username,
                email,
                registered_at,
                ..
            } if self.registered.is_none() => {
                self.registered = Some((username, email, registered_at));
            }
            UserEvent::Activated { .. } => self.activated = true,
            UserEvent::ProfileUpdated { changes, .. } => {
                let later = |field: &mut Option<String>, value: Option<String>| {
                    if value.is_some() {
                        *field = value;
                    }
                };
                later(&mut self.country, changes.country);
                later(&mut self.profession, changes.profession);
                later(&mut self.bio, changes.bio);
                later(&mut self.thoughts, changes.thoughts);
                later(&mut self.profile_img, changes.profile_img);
            }
            UserEvent::PasswordChanged { .. } | UserEvent::PasswordReset { .. } => self.epochs += 1,
            UserEvent::AccountDeleted { deleted_at, .. } => {
                // Every token dies; what a later event of the batch could set is gone too.
                self.epochs += 1;
                self.deleted_at = Some(deleted_at);
                self.activated = false;
                let empty = Some(String::new());
                self.country.clone_from(&empty);
                self.profession.clone_from(&empty);
                self.bio.clone_from(&empty);
                self.thoughts.clone_from(&empty);
                self.profile_img = empty;
            }
            _ => {}
        }
        self.version = Some(sequence);
    }
}

#[async_trait]
impl Projector for ProfileProjector {
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
        // The only personal values it reads: the registration's name and address, the profile
        // texts.
        crate::reader::Opens::Read {
            types: Some(&["Registered", "ProfileUpdated"]),
            metadata: false,
        }
    }

    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        // Each touched account's change, in the order first touched.
        let mut index: std::collections::HashMap<Uuid, usize> = Default::default();
        let mut changes: Vec<(Uuid, Change)> = Vec::new();
        for event in events {
            match event.aggregate_type.as_str() {
                "User" => {
                    let user_id: Uuid = event.aggregate_id.parse()?;
                    change_of(&mut index, &mut changes, user_id)
                        .user_event(event.decode()?, event.sequence);
                }
                "Session" => {
                    if let SessionEvent::Started {
                        user_id,
                        started_at,
                        ..
                    } = event.decode::<SessionEvent>()?
                    {
                        let change = change_of(&mut index, &mut changes, user_id);
                        change.last_login = change.last_login.max(Some(started_at));
                    }
                }
                _ => {}
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let table = self.table();
        let mut new = Rows::default();
        let mut all = Rows::default();
        for (user_id, change) in changes {
            if let Some((username, email, joined)) = change.registered {
                new.user_id.push(user_id);
                new.username.push(username);
                new.email.push(email);
                new.joined.push(joined);
                new.version.push(change.version);
            }
            all.user_id.push(user_id);
            all.version.push(change.version);
            all.activated.push(change.activated);
            all.country.push(change.country);
            all.profession.push(change.profession);
            all.bio.push(change.bio);
            all.thoughts.push(change.thoughts);
            all.profile_img.push(change.profile_img);
            all.epochs.push(change.epochs);
            all.last_login.push(change.last_login);
            all.deleted_at.push(change.deleted_at);
        }
        if !new.user_id.is_empty() {
            sqlx::query(&format!(
                "insert into {table} (user_id, username, email, date_joined, version)
                 select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[],
                                      $5::bigint[])
                 on conflict (user_id) do nothing"
            ))
            .bind(&new.user_id)
            .bind(&new.username)
            .bind(&new.email)
            .bind(&new.joined)
            .bind(&new.version)
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query(&format!(
            "update {table} p
                set is_active = (p.is_active or c.activated) and c.deleted_at is null,
                    username = case when c.deleted_at is null then p.username else '' end,
                    email = case when c.deleted_at is null then p.email else '' end,
                    deleted_at = coalesce(c.deleted_at, p.deleted_at),
                    country = coalesce(c.country, p.country),
                    profession = coalesce(c.profession, p.profession),
                    bio = coalesce(c.bio, p.bio),
                    thoughts = coalesce(c.thoughts, p.thoughts),
                    profile_img = coalesce(c.profile_img, p.profile_img),
                    token_epoch = p.token_epoch + c.epochs,
                    last_login = greatest(p.last_login, c.last_login),
                    version = coalesce(c.version, p.version),
                    updated_at = now()
               from unnest($1::uuid[], $2::bigint[], $3::boolean[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::text[], $9::integer[], $10::timestamptz[],
                           $11::timestamptz[])
                    as c(user_id, version, activated, country, profession, bio, thoughts,
                         profile_img, epochs, last_login, deleted_at)
              where p.user_id = c.user_id"
        ))
        .bind(&all.user_id)
        .bind(&all.version)
        .bind(&all.activated)
        .bind(&all.country)
        .bind(&all.profession)
        .bind(&all.bio)
        .bind(&all.thoughts)
        .bind(&all.profile_img)
        .bind(&all.epochs)
        .bind(&all.last_login)
        .bind(&all.deleted_at)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The change of `user_id`'s row, a new one at the end of `changes` if it has none yet.
fn change_of<'a>(
    index: &mut std::collections::HashMap<Uuid, usize>,
    changes: &'a mut Vec<(Uuid, Change)>,
    user_id: Uuid,
) -> &'a mut Change {
    let at = *index.entry(user_id).or_insert_with(|| {
        changes.push((user_id, Change::default()));
        changes.len() - 1
    });
    &mut changes[at].1
}

/// Column arrays for `unnest`.
#[derive(Default)]
struct Rows {
    user_id: Vec<Uuid>,
    username: Vec<String>,
    email: Vec<String>,
    joined: Vec<DateTime<Utc>>,
    version: Vec<Option<i64>>,
    activated: Vec<bool>,
    country: Vec<Option<String>>,
    profession: Vec<Option<String>>,
    bio: Vec<Option<String>>,
    thoughts: Vec<Option<String>>,
    profile_img: Vec<Option<String>>,
    epochs: Vec<i32>,
    last_login: Vec<Option<DateTime<Utc>>>,
    deleted_at: Vec<Option<DateTime<Utc>>>,
}
