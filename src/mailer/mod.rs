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
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a claimed mail may stay unsent before another delivery may try it again.
const CLAIM_TIMEOUT_SECS: i64 = 120;

/// The fields of a published integration event the mailer reads.
#[derive(Debug, Clone, Deserialize)]
pub struct IntegrationEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub aggregate_id: String,
    pub data: Value,
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
        })
    }

    /// Mails what one event calls for, once.
    #[tracing::instrument(skip_all, fields(event_id))]
    pub async fn handle(&self, payload: &[u8]) -> anyhow::Result<Outcome> {
        let event: IntegrationEvent =
            serde_json::from_slice(payload).context("not an integration event")?;
        tracing::Span::current().record("event_id", event.id.as_str());
        let Some(mail) = compose(&event, &self.links)? else {
            return Ok(Outcome::Skipped);
        };
        let claimed: Option<String> = sqlx::query_scalar(
            "insert into mail_sent (event_id, kind, recipient, status) values ($1, $2, $3, 'sending')
             on conflict (event_id) do update set claimed_at = now()
               where mail_sent.status = 'sending'
                 and mail_sent.claimed_at < now() - make_interval(secs => $4)
             returning status",
        )
        .bind(&event.id)
        .bind(mail.kind)
        .bind(&mail.to)
        .bind(CLAIM_TIMEOUT_SECS as f64)
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
        tracing::info!(kind = mail.kind, "mail sent");
        Ok(Outcome::Sent)
    }
}

/// The durable consumer all mailer workers share.
pub async fn consumer(
    js: &jetstream::Context,
    settings: &Settings,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = crate::relay::ensure_stream(js, settings).await?;
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
    mailer: &Mailer,
    js: &jetstream::Context,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let consumer = consumer(js, settings).await?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("cannot pull messages: {e}"))?;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message.map_err(|e| anyhow::anyhow!("{e}"))?,
                None => return Ok(()),
            },
        };
        let ack = match mailer.handle(&message.payload).await {
            Ok(Outcome::Sent | Outcome::Skipped) => message.double_ack().await,
            Ok(Outcome::Busy) => {
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
            }
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "mail not sent; will retry");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
            }
        };
        if let Err(error) = ack {
            tracing::warn!(%error, "could not acknowledge a message");
        }
    }
}
