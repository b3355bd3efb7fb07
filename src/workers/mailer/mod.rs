//! The mailer worker: a durable JetStream pull consumer of the user events that need a mail.
//!
//! Every handled event is recorded in `mail_sent` under its event id, so a redelivered message
//! (a lost ack, a restart, two workers) is mailed once. Link tokens are recomputed here from the
//! event's ids with the link key: no token ever travels through NATS.

mod compose;
mod transport;

pub use compose::{compose, Mail};
pub use transport::Transport;

use crate::auth::LinkSigner;
use crate::config::Settings;
use anyhow::Context;
use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a claimed mail may stay unsent before another delivery may try it again: longer
/// than one SMTP attempt may take (its timeout is 10 s), so two mailers never send it at once.
const CLAIM_TIMEOUT_SECS: i64 = 20;

/// The fields of a published integration event the mailer reads.
#[derive(Debug, Clone, Deserialize)]
pub struct IntegrationEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_id: String,
    #[serde(default)]
    pub sequence: i64,
    pub data: Value,
    #[serde(default)]
    pub metadata: Value,
}

/// Why an event's mail was not sent (`mails_skipped_total{reason}`).
fn skip_reason(event: &IntegrationEvent) -> Option<&'static str> {
    if event.metadata.get("synthetic").and_then(Value::as_bool) == Some(true) {
        return Some("synthetic");
    }
    if event.data.get("email").and_then(Value::as_str) == Some("") {
        // The person was deleted since: there is nobody to write to.
        return Some("erased");
    }
    let expires_at = event
        .data
        .get("expires_at")
        .and_then(Value::as_str)
        .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok());
    match expires_at {
        Some(at) if at <= chrono::Utc::now() => Some("expired"),
        _ => None,
    }
}

/// The events after which a link mail is no longer worth sending: a newer link of its kind, or
/// its use (activation; a reset or change of the password).
fn superseded_by(event_type: &str) -> Option<&'static [&'static str]> {
    match event_type {
        "ActivationLinkIssued" => Some(&["ActivationLinkIssued", "Activated"]),
        "PasswordResetRequested" => {
            Some(&["PasswordResetRequested", "PasswordReset", "PasswordChanged"])
        }
        _ => None,
    }
}

/// An error's text without the e-mail addresses in it (an SMTP server's reply names the
/// recipient): what is logged and stored about a failed mail.
pub fn redacted(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .split_inclusive(|c: char| c.is_whitespace() || c == '<' || c == '>')
        .map(|word| {
            let bare = word.trim_end_matches(|c: char| c.is_whitespace() || c == '<' || c == '>');
            if bare.contains('@') {
                word.replacen(bare, "<address>", 1)
            } else {
                word.to_owned()
            }
        })
        .collect()
}

/// The recipient a mail is recorded under: none for the farewell of a deleted account.
fn recorded_recipient(mail: &Mail) -> &str {
    if mail.kind == compose::FAREWELL {
        ""
    } else {
        &mail.to
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// Mailed before (or needs no mail).
    Skipped,
    /// Another delivery is sending it right now: try again later.
    Busy,
}

pub struct Mailer {
    pub pool: PgPool,
    pub transport: Transport,
    pub links: LinkSigner,
    pub from: lettre::message::Mailbox,
    /// Opens the sealed addresses and names of the events.
    pub vault: projections::pii::Vault,
}

impl Mailer {
    pub fn new(pool: PgPool, settings: &Settings, links: LinkSigner) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            transport: Transport::from_settings(settings)?,
            links,
            from: settings
                .mail_from
                .parse()
                .context("MAIL_FROM is not a mailbox")?,
            vault: settings.vault()?,
        })
    }

    /// The event of `payload`; a security notice about an event that names no address (see
    /// [`compose::NOTICES_WITHOUT_ADDRESS`]) gets the owner's current address and name from the
    /// profile read model, so that no second-factor event has to carry them.
    async fn read_event(&self, payload: &[u8]) -> anyhow::Result<IntegrationEvent> {
        let mut event: IntegrationEvent =
            serde_json::from_slice(payload).context("not an integration event")?;
        self.open(&mut event).await?;
        if event.event_type == "AccountDeleted" {
            // The data key went with the event: the farewell's address was kept apart for it.
            let user_id: uuid::Uuid = event.aggregate_id.parse().context("aggregate id")?;
            let kept =
                crate::store::erasure::farewell_address(&self.pool, &self.vault, user_id).await?;
            if let (Some(Value::Object(kept)), Some(data)) = (kept, event.data.as_object_mut()) {
                data.extend(kept);
            }
        }
        if compose::NOTICES_WITHOUT_ADDRESS.contains(&event.event_type.as_str()) {
            let owner: Option<(String, String)> =
                sqlx::query_as("select email, username from profile where user_id::text = $1")
                    .bind(&event.aggregate_id)
                    .fetch_optional(&self.pool)
                    .await?;
            if let (Some((email, username)), Some(data)) = (owner, event.data.as_object_mut()) {
                data.insert("email".into(), email.into());
                data.insert("username".into(), username.into());
            }
        }
        Ok(event)
    }

    /// Opens the event's sealed values with its person's data key (read now: a deleted person's
    /// values open as empty, and their mail is not sent).
    async fn open(&self, event: &mut IntegrationEvent) -> anyhow::Result<()> {
        let Some(subject) = projections::pii::subject_in(&event.metadata) else {
            return Ok(());
        };
        // A User event's values are its own account's: a message naming another subject opens
        // nothing (its mail is not sent).
        let subject = if event.aggregate_id.parse() == Ok(subject) {
            subject
        } else {
            uuid::Uuid::nil()
        };
        crate::store::erasure::open_published(
            &self.pool,
            &self.vault,
            subject,
            &event.event_type,
            &mut event.data,
            &mut event.metadata,
        )
        .await?;
        Ok(())
    }

    /// Mails what one event calls for, once.
    #[tracing::instrument(skip_all, fields(event_id))]
    pub async fn handle(&self, payload: &[u8]) -> anyhow::Result<Outcome> {
        let event = self.read_event(payload).await?;
        tracing::Span::current().record("event_id", event.id.as_str());
        let Some(mail) = compose(&event, &self.links)? else {
            return Ok(Outcome::Skipped);
        };
        // A mailer that fell behind sends no link that is dead at sending time: the event store
        // decides (expired, superseded by a newer link, or already used).
        let mut reason = skip_reason(&event);
        if let (None, Some(later)) = (reason, superseded_by(&event.event_type)) {
            let dead: bool = sqlx::query_scalar(
                "select exists (select 1 from events
                                 where aggregate_type = 'User' and aggregate_id = $1
                                   and sequence > $2 and event_type = any($3))",
            )
            .bind(&event.aggregate_id)
            .bind(event.sequence)
            .bind(later)
            .fetch_one(&self.pool)
            .await?;
            if dead {
                reason = Some("superseded");
            }
        }
        if let Some(reason) = reason {
            metrics::counter!("mails_skipped_total", "kind" => mail.kind, "reason" => reason)
                .increment(1);
            tracing::info!(kind = mail.kind, reason, "mail not sent");
            return Ok(Outcome::Skipped);
        }
        // The recipient is recorded only while the person exists (a deletion that committed
        // since this event was opened leaves none behind).
        let claimed: Option<String> = sqlx::query_scalar(
            "insert into mail_sent (event_id, kind, recipient, status)
             values ($1, $2, case when exists (select 1 from user_data_key
                                                where user_id::text = $5 and wrapped is not null)
                                  then $3 else '' end, 'sending')
             on conflict (event_id) do update set claimed_at = now()
               where mail_sent.status = 'sending'
                 and mail_sent.claimed_at < now() - make_interval(secs => $4)
             returning status",
        )
        .bind(&event.id)
        .bind(mail.kind)
        .bind(recorded_recipient(&mail))
        .bind(CLAIM_TIMEOUT_SECS as f64)
        .bind(&event.aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        if claimed.is_none() {
            let status: Option<String> =
                sqlx::query_scalar("select status from mail_sent where event_id = $1")
                    .bind(&event.id)
                    .fetch_optional(&self.pool)
                    .await?;
            return Ok(match status.as_deref() {
                Some("sent") => Outcome::Skipped,
                _ => Outcome::Busy,
            });
        }
        let message = mail.to_message(&self.from)?;
        if let Err(error) = self.transport.send(message).await {
            // Release the claim so the redelivery can try at once.
            sqlx::query("delete from mail_sent where event_id = $1 and status = 'sending'")
                .bind(&event.id)
                .execute(&self.pool)
                .await?;
            return Err(error);
        }
        sqlx::query("update mail_sent set status = 'sent', sent_at = now() where event_id = $1")
            .bind(&event.id)
            .execute(&self.pool)
            .await?;
        if event.event_type == "AccountDeleted" {
            if let Ok(user_id) = event.aggregate_id.parse() {
                crate::store::erasure::forget_farewell_address(&self.pool, user_id).await?;
            }
        }
        metrics::counter!("mails_sent_total", "kind" => mail.kind).increment(1);
        tracing::info!(kind = mail.kind, "mail sent");
        Ok(Outcome::Sent)
    }

    /// Gives up on the mail of `payload` after its last attempt: recorded as failed, with the
    /// event kept so that `accounts mail retry` can send it later.
    pub async fn record_failure(
        &self,
        payload: &[u8],
        attempts: i64,
        error: &anyhow::Error,
    ) -> anyhow::Result<()> {
        let event = self.read_event(payload).await?;
        let Some(mail) = compose(&event, &self.links)? else {
            return Ok(());
        };
        let body: Value = serde_json::from_slice(payload)?;
        sqlx::query(
            "insert into mail_sent (event_id, kind, recipient, status, attempts, last_error, event)
             values ($1, $2, $3, 'failed', $4, $5, $6)
             on conflict (event_id) do update set status = 'failed', attempts = $4,
                 last_error = $5, event = $6",
        )
        .bind(&event.id)
        .bind(mail.kind)
        .bind(recorded_recipient(&mail))
        .bind(attempts as i32)
        .bind(redacted(error))
        .bind(body)
        .execute(&self.pool)
        .await?;
        if event.event_type == "AccountDeleted" {
            // A farewell given up on: its address goes now.
            if let Ok(user_id) = event.aggregate_id.parse() {
                crate::store::erasure::forget_farewell_address(&self.pool, user_id).await?;
            }
        }
        metrics::counter!("mails_failed_total", "kind" => mail.kind).increment(1);
        tracing::error!(event_id = %event.id, kind = mail.kind, "mail failed after its last attempt");
        Ok(())
    }

    /// Sends again the mails recorded as failed (all, or the one of `event_id`); returns how
    /// many were sent.
    pub async fn retry_failed(&self, event_id: Option<&str>) -> anyhow::Result<usize> {
        let failed: Vec<(String, Value)> = sqlx::query_as(
            "delete from mail_sent where status = 'failed' and ($1::text is null or event_id = $1)
             returning event_id, event",
        )
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        let mut sent = 0;
        for (id, event) in failed {
            let payload = serde_json::to_vec(&event)?;
            match self.handle(&payload).await {
                Ok(Outcome::Sent) => sent += 1,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(event_id = %id, error = redacted(&error), "retry failed");
                    self.record_failure(&payload, 1, &error).await?;
                }
            }
        }
        Ok(sent)
    }
}

/// One mail given up on.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct FailedMail {
    pub event_id: String,
    pub kind: String,
    pub recipient: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub claimed_at: chrono::DateTime<chrono::Utc>,
}

/// The mails given up on, oldest first.
pub async fn failed(pool: &PgPool) -> sqlx::Result<Vec<FailedMail>> {
    sqlx::query_as(
        "select event_id, kind, recipient, attempts, last_error, claimed_at
           from mail_sent where status = 'failed' order by claimed_at",
    )
    .fetch_all(pool)
    .await
}

/// The durable consumer all mailer workers share.
pub async fn consumer(
    js: &jetstream::Context,
    settings: &Settings,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = crate::workers::relay::ensure_stream(js, settings).await?;
    stream
        .get_or_create_consumer(
            &settings.mailer_consumer,
            consumer::pull::Config {
                durable_name: Some(settings.mailer_consumer.clone()),
                filter_subject: format!("{}.user.>", settings.nats_subject_prefix),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the mailer consumer: {e}"))
}

pub async fn run(
    mailer: Mailer,
    js: jetstream::Context,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mailer = Arc::new(mailer);
    let settings = Arc::new(settings);
    loop {
        if let Err(error) = consume(&mailer, &js, &settings, &shutdown).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "mailer consumer failed; restarting"
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn consume(
    mailer: &Arc<Mailer>,
    js: &jetstream::Context,
    settings: &Arc<Settings>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // A farewell not sent within a week (no mailer ran, or every attempt failed) is dropped:
    // its address is not kept beyond that.
    sqlx::query("delete from erasure_notice where created_at < now() - interval '7 days'")
        .execute(&mailer.pool)
        .await?;
    let consumer = consumer(js, settings).await?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot pull messages: {e}"))?;
    let slots = Arc::new(Semaphore::new(settings.mailer_concurrency.max(1)));
    let in_flight = TaskTracker::new();
    let result = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Ok(()),
            },
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = messages.next() => match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => break Err(anyhow::anyhow!("{error}")),
                None => break Ok(()),
            },
        };
        let (mailer, settings) = (mailer.clone(), settings.clone());
        in_flight.spawn(async move {
            let _permit = permit;
            deliver(&mailer, &settings, message).await;
        });
    };
    // Stop at a message boundary: what this worker holds is sent and acked (or nak'ed) first.
    in_flight.close();
    in_flight.wait().await;
    result
}

/// Handles one message and acks it: sent or skipped → ack; failed → nak with back-off, or
/// recorded as failed after the last attempt.
async fn deliver(mailer: &Mailer, settings: &Settings, message: jetstream::Message) {
    let attempt = message.info().map(|i| i.delivered).unwrap_or(1).max(1);
    let ack = match mailer.handle(&message.payload).await {
        Ok(Outcome::Sent | Outcome::Skipped) => message.double_ack().await,
        Ok(Outcome::Busy) => {
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await
        }
        Err(error) if attempt >= i64::from(settings.mail_max_attempts) => {
            if let Err(record) = mailer
                .record_failure(&message.payload, attempt, &error)
                .await
            {
                tracing::warn!(error = redacted(&record), "cannot record a failed mail");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
            } else {
                message.double_ack().await
            }
        }
        Err(error) => {
            let delay = settings.mail_retry_base_secs.max(1) << (attempt - 1).min(10);
            tracing::warn!(
                error = redacted(&error),
                attempt,
                delay,
                "mail not sent; will retry"
            );
            metrics::counter!("mails_retried_total").increment(1);
            message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(delay))))
                .await
        }
    };
    if let Err(error) = ack {
        tracing::warn!(%error, "could not acknowledge a message");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_smtp_reply_naming_the_recipient_is_logged_without_the_address() {
        let error = anyhow::anyhow!(
            "permanent error (550): 5.1.1 <ann.other@example.com>: Recipient address rejected"
        )
        .context("cannot send to bob@example.org");
        let text = super::redacted(&error);
        assert!(!text.contains("ann.other@example.com"), "{text}");
        assert!(!text.contains("bob@example.org"), "{text}");
        assert!(text.contains("550") && text.contains("<address>"), "{text}");
    }
}
