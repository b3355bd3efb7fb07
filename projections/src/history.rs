//! The user-history read model: what happened to an account, with where it came from.

use crate::reader::StoredEvent;
use crate::runner::{Projector, Target};
use aggregates::session::SessionEvent;
use aggregates::user::UserEvent;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

pub const NAME: &str = "history";

/// One entry of a user's history. `details` never holds a password, hash or token.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct HistoryEntry {
    #[serde(skip)]
    pub position: i64,
    pub event: String,
    pub occurred_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Value,
}

/// The newest entries of a user's history older than `before` (a position), newest first.
pub async fn page(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<HistoryEntry>> {
    sqlx::query_as(
        "select position, event, occurred_at, ip, user_agent, details
           from user_history
          where user_id = $1 and position < coalesce($2, 9223372036854775807)
          order by position desc
          limit $3",
    )
    .bind(user_id)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Every entry of a user's history, oldest first.
pub async fn all(db: impl PgExecutor<'_>, user_id: Uuid) -> sqlx::Result<Vec<HistoryEntry>> {
    sqlx::query_as(
        "select position, event, occurred_at, ip, user_agent, details
           from user_history where user_id = $1 order by position",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// The user-history projector (the live table, or a rebuild's copy).
pub struct HistoryProjector {
    target: Target,
    vault: crate::pii::Vault,
}

impl HistoryProjector {
    pub fn live(vault: crate::pii::Vault) -> Self {
        Self {
            vault,
            target: Target::new(NAME, "user_history"),
        }
    }
}

/// What one event adds to a user's history.
struct Entry {
    user_id: Uuid,
    name: &'static str,
    occurred_at: DateTime<Utc>,
    details: Value,
}

/// A registration's details: the username and address it was made with (left out once erased,
/// as deletion leaves the row: see [`erase`]).
fn registration_details(username: String, email: String) -> Value {
    let mut details = json!({});
    for (name, value) in [("username", username), ("email", email)] {
        if !value.is_empty() {
            details[name] = json!(value);
        }
    }
    details
}

/// What an account's deletion leaves of its history in `table`: every row, without IP address,
/// user agent, username or e-mail (the rows a rebuild makes from the erased events).
async fn erase(conn: &mut PgConnection, table: &str, users: &[Uuid]) -> sqlx::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "update {table} set ip = null, user_agent = null, details = details - 'username' - 'email'
          where user_id = any($1)
            and (ip is not null or user_agent is not null or details ?| array['username', 'email'])"
    ))
    .bind(users)
    .execute(conn)
    .await?;
    Ok(())
}

/// The accounts deleted in a batch.
fn deleted_in(events: &[StoredEvent]) -> Vec<Uuid> {
    events
        .iter()
        .filter(|e| e.aggregate_type == "User" && e.event_type == "AccountDeleted")
        .filter_map(|e| e.aggregate_id.parse().ok())
        .collect()
}

/// The history entry an event makes, if any.
fn entry(event: &StoredEvent) -> anyhow::Result<Option<Entry>> {
    Ok(match event.aggregate_type.as_str() {
        "User" => {
            let user_id: Uuid = event.aggregate_id.parse()?;
            let (name, at, details) = match event.decode::<UserEvent>()? {
                UserEvent::Registered {
                    registered_at,
                    username,
                    email,
                    ..
                } => (
                    "registered",
                    registered_at,
                    registration_details(username, email),
                ),
                UserEvent::ActivationLinkIssued {
                    issued_at,
                    expires_at,
                    ..
                } => (
                    "activation_link_sent",
                    issued_at,
                    json!({"expires_at": expires_at}),
                ),
                UserEvent::Activated {
                    activated_at,
                    method,
                } => ("activated", activated_at, json!({"method": method})),
                UserEvent::ProfileUpdated {
                    updated_at,
                    changes,
                } => {
                    let fields: Vec<String> = serde_json::to_value(&changes)?
                        .as_object()
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default();
                    ("profile_updated", updated_at, json!({"fields": fields}))
                }
                UserEvent::PasswordChanged { changed_at, .. } => {
                    ("password_changed", changed_at, json!({}))
                }
                UserEvent::PasswordResetRequested {
                    requested_at,
                    expires_at,
                    ..
                } => (
                    "password_reset_requested",
                    requested_at,
                    json!({"expires_at": expires_at}),
                ),
                UserEvent::PasswordReset { reset_at, .. } => {
                    ("password_reset", reset_at, json!({}))
                }
                UserEvent::ActivationRefused {
                    refused_at, reason, ..
                } => ("activation_refused", refused_at, json!({"reason": reason})),
                UserEvent::DuplicateRegistrationAttempted { attempted_at, .. } => {
                    ("duplicate_registration_attempted", attempted_at, json!({}))
                }
                UserEvent::TotpSetupStarted { started_at, .. } => {
                    ("totp_setup_started", started_at, json!({}))
                }
                UserEvent::TotpEnabled { enabled_at, .. } => {
                    ("totp_enabled", enabled_at, json!({}))
                }
                UserEvent::TotpDisabled {
                    reason,
                    disabled_at,
                } => ("totp_disabled", disabled_at, json!({"reason": reason})),
                UserEvent::RecoveryCodesGenerated {
                    count,
                    generated_at,
                    ..
                } => (
                    "recovery_codes_generated",
                    generated_at,
                    json!({"count": count}),
                ),
                UserEvent::RecoveryCodeUsed {
                    remaining, used_at, ..
                } => (
                    "recovery_code_used",
                    used_at,
                    json!({"remaining": remaining}),
                ),
                UserEvent::PasskeyRegistered {
                    passkey_id,
                    registered_at,
                } => (
                    "passkey_registered",
                    registered_at,
                    json!({"passkey_id": passkey_id}),
                ),
                UserEvent::PasskeyRemoved {
                    passkey_id,
                    removed_at,
                } => (
                    "passkey_removed",
                    removed_at,
                    json!({"passkey_id": passkey_id}),
                ),
                UserEvent::AccountDeleted {
                    by,
                    reason,
                    deleted_at,
                } => {
                    let mut details = json!({"by": by});
                    if let Some(reason) = reason {
                        details["reason"] = json!(reason);
                    }
                    ("account_deleted", deleted_at, details)
                }
            };
            Some(Entry {
                user_id,
                name,
                occurred_at: at,
                details,
            })
        }
        "Session" => {
            let session_id = event.aggregate_id.clone();
            let (user_id, name, at, details) = match event.decode::<SessionEvent>()? {
                SessionEvent::Started {
                    user_id,
                    started_at,
                    method,
                    second_factor,
                    ..
                } => {
                    let mut details = json!({"session_id": session_id});
                    if method != aggregates::session::LoginMethod::Password {
                        details["method"] = json!(method);
                    }
                    if let Some(factor) = second_factor {
                        details["second_factor"] = json!(factor);
                    }
                    (user_id, "logged_in", started_at, details)
                }
                SessionEvent::SecondFactorRequired {
                    user_id,
                    methods,
                    challenged_at,
                    ..
                } => (
                    user_id,
                    "second_factor_required",
                    challenged_at,
                    json!({"session_id": session_id, "methods": methods}),
                ),
                SessionEvent::SecondFactorFailed {
                    user_id,
                    method,
                    failed_at,
                } => (
                    user_id,
                    "second_factor_failed",
                    failed_at,
                    json!({"session_id": session_id, "method": method}),
                ),
                SessionEvent::Refreshed {
                    user_id,
                    refreshed_at,
                    ..
                } => (
                    user_id,
                    "token_refreshed",
                    refreshed_at,
                    json!({"session_id": session_id}),
                ),
                SessionEvent::LoggedOut {
                    user_id,
                    logged_out_at,
                } => (
                    user_id,
                    "logged_out",
                    logged_out_at,
                    json!({"session_id": session_id}),
                ),
                SessionEvent::LoginFailed { user_id, failed_at } => {
                    (user_id, "login_failed", failed_at, json!({}))
                }
                SessionEvent::LoginRefused {
                    user_id,
                    reason,
                    refused_at,
                } => (
                    user_id,
                    "login_refused",
                    refused_at,
                    json!({"reason": reason}),
                ),
                SessionEvent::Revoked {
                    user_id,
                    revoked_at,
                    reason,
                } => (
                    user_id,
                    "sessions_revoked",
                    revoked_at,
                    json!({"session_id": session_id, "reason": reason}),
                ),
            };
            Some(Entry {
                user_id,
                name,
                occurred_at: at,
                details,
            })
        }
        _ => None,
    })
}

#[async_trait]
impl Projector for HistoryProjector {
    fn target(&self) -> &Target {
        &self.target
    }

    fn retarget(&self, target: Target) -> std::sync::Arc<dyn Projector> {
        std::sync::Arc::new(Self {
            target,
            vault: self.vault.clone(),
        })
    }

    fn opens(&self) -> crate::reader::Opens {
        // The personal values it reads: the registration's name and address, and every event's
        // IP address and user agent (not the profile texts: only which fields changed).
        crate::reader::Opens::Read {
            types: Some(&["Registered"]),
            metadata: true,
        }
    }

    fn vault(&self) -> &crate::pii::Vault {
        &self.vault
    }

    /// One multi-row insert per batch.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let rows = Rows::of(events)?;
        if rows.position.is_empty() {
            return Ok(());
        }
        let deleted = deleted_in(events);
        sqlx::query(&format!(
            "insert into {} (user_id, position, event, occurred_at, ip, user_agent, details)
             select * from unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[],
                                  $5::text[], $6::text[], $7::jsonb[])
             on conflict (position) do nothing",
            self.table()
        ))
        .bind(&rows.user_id)
        .bind(&rows.position)
        .bind(&rows.event)
        .bind(&rows.occurred_at)
        .bind(&rows.ip)
        .bind(&rows.user_agent)
        .bind(&rows.details)
        .execute(&mut *conn)
        .await?;
        erase(conn, self.table(), &deleted).await?;
        Ok(())
    }

    /// One `COPY` per batch: a rebuild's copy has no index to check or conflict with yet.
    async fn load_batch(
        &self,
        conn: &mut PgConnection,
        events: &[StoredEvent],
    ) -> anyhow::Result<()> {
        let rows = Rows::of(events)?;
        if rows.position.is_empty() {
            return Ok(());
        }
        let mut copy = conn
            .copy_in_raw(&format!(
                "copy {} (user_id, position, event, occurred_at, ip, user_agent, details) \
                 from stdin",
                self.table()
            ))
            .await?;
        copy.send(rows.copy_text()?).await?;
        copy.finish().await?;
        // A deletion while the rebuild ran: rows it read before could hold what is erased now
        // (a scan of the copy, which has no index yet; only batches with a deletion pay it).
        erase(conn, self.table(), &deleted_in(events)).await?;
        Ok(())
    }
}

#[derive(Default)]
struct Rows {
    user_id: Vec<Uuid>,
    position: Vec<i64>,
    event: Vec<&'static str>,
    occurred_at: Vec<DateTime<Utc>>,
    ip: Vec<Option<String>>,
    user_agent: Vec<Option<String>>,
    details: Vec<Value>,
}

impl Rows {
    /// The history rows of `events`, column by column.
    fn of(events: &[StoredEvent]) -> anyhow::Result<Self> {
        let mut rows = Rows::default();
        for event in events {
            let Some(entry) = entry(event)? else {
                continue;
            };
            rows.user_id.push(entry.user_id);
            rows.position.push(event.global_position);
            rows.event.push(entry.name);
            rows.occurred_at.push(entry.occurred_at);
            rows.ip.push(event.meta("ip").map(str::to_owned));
            rows.user_agent
                .push(event.meta("user_agent").map(str::to_owned));
            let mut details = entry.details;
            // The request that caused it, for matching with the service's logs.
            if let (Some(request_id), Some(fields)) =
                (event.meta("request_id"), details.as_object_mut())
            {
                fields.insert("request_id".into(), request_id.into());
            }
            rows.details.push(details);
        }
        Ok(rows)
    }

    /// The rows in `COPY`'s text format: tab-separated, `\N` for null, with backslash, tab,
    /// newline and carriage return escaped; times to the microsecond, truncated as sqlx's
    /// binding truncates them (Postgres would round more digits).
    fn copy_text(&self) -> anyhow::Result<Vec<u8>> {
        use std::fmt::Write;
        fn field(out: &mut String, value: Option<&str>) {
            let Some(value) = value else {
                out.push_str("\\N");
                return;
            };
            for c in value.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
        let mut out = String::with_capacity(self.position.len() * 256);
        for i in 0..self.position.len() {
            write!(
                out,
                "{}\t{}\t{}\t{}\t",
                self.user_id[i],
                self.position[i],
                self.event[i],
                self.occurred_at[i].to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            )?;
            field(&mut out, self.ip[i].as_deref());
            out.push('\t');
            field(&mut out, self.user_agent[i].as_deref());
            out.push('\t');
            field(&mut out, Some(&serde_json::to_string(&self.details[i])?));
            out.push('\n');
        }
        Ok(out.into_bytes())
    }
}

/// A session of a user that has not ended, as its history tells it.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct OpenSession {
    pub session_id: Uuid,
    pub started_at: DateTime<Utc>,
    /// The session's last login or token refresh.
    pub last_used_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// The user's sessions that were neither logged out nor revoked, nor started before the last
/// change or reset of the password (which ends every earlier session); most recently used first.
/// Expiry is the caller's to judge (it depends on the refresh-token lifetime).
pub async fn open_sessions(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> sqlx::Result<Vec<OpenSession>> {
    sqlx::query_as(
        "with h as (
             select event, occurred_at, ip, user_agent, details->>'session_id' as session_id
               from user_history where user_id = $1
         ), cut as (
             select coalesce(max(occurred_at), '-infinity') as at
               from h where event in ('password_changed', 'password_reset')
         ), per_session as (
             select session_id,
                    max(occurred_at) filter (where event in ('logged_in', 'token_refreshed'))
                        as last_used_at,
                    bool_or(event in ('logged_out', 'sessions_revoked')) as ended
               from h where session_id is not null
              group by session_id
         )
         select s.session_id::uuid as session_id, s.occurred_at as started_at,
                p.last_used_at, s.ip, s.user_agent
           from h s
           join per_session p using (session_id)
           cross join cut
          where s.event = 'logged_in' and not p.ended and s.occurred_at > cut.at
          order by p.last_used_at desc",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
}
