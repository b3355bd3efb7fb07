//! The relay: publishes every event, in commit order, to JetStream as an integration event, with
//! `Nats-Msg-Id = <aggregate_type>:<aggregate_id>:<sequence>` so the stream drops repeats. The
//! checkpoint moves only after the acks, inside the transaction that holds the checkpoint row
//! lock, so exactly one relay publishes at a time and a crash of the relay republishes at most one
//! batch (a crash of Postgres: the batches whose checkpoint moves had not reached its disk, see
//! `reader::batch_settings`); the stream drops what it already holds.

use crate::config::Settings;
use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use projections::reader::{self, Checkpoint, StoredEvent};
use projections::runner::Look;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "relay";
const BATCH_SIZE: i64 = 500;
/// How long the stream remembers message ids for deduplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);

/// Creates the stream if it does not exist yet.
pub async fn ensure_stream(
    js: &jetstream::Context,
    settings: &Settings,
) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: settings.nats_stream.clone(),
        subjects: vec![format!("{}.>", settings.nats_subject_prefix)],
        duplicate_window: DUPLICATE_WINDOW,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create the JetStream stream: {e}"))
}

/// `<prefix>.<aggregate type, lower case>.<EventType>`, e.g. `accounts.user.Registered`.
pub fn subject(prefix: &str, event: &StoredEvent) -> String {
    format!(
        "{prefix}.{}.{}",
        event.aggregate_type.to_lowercase(),
        event.event_type
    )
}

/// The public message: the event's facts (no secret is ever in an event) and where it came from,
/// as stored: personal values sealed under their person's data key (`pii:v2:...`), `subject`
/// naming that person in the metadata. Workers open them through the service while the person
/// exists (`POST /accounts/internal/events/open/`; the mailer reads the keys directly).
pub fn integration_event(event: &StoredEvent) -> Value {
    let (version, data) = event.current();
    json!({
        "id": event.event_id(),
        "type": event.event_type,
        "version": version,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "position": event.global_position,
        "recorded_at": event.recorded_at,
        "data": data,
        "metadata": metadata(event),
    })
}

/// The published metadata: where the command came from, and `synthetic: true` on events the data
/// generator wrote (no person is behind them: workers must not act on them, e.g. mail).
fn metadata(event: &StoredEvent) -> Value {
    let mut metadata = json!({
        "ip": event.meta("ip"),
        "user_agent": event.meta("user_agent"),
        "request_id": event.meta("request_id"),
    });
    if let Some(subject) = event.meta(projections::pii::SUBJECT) {
        metadata[projections::pii::SUBJECT] = Value::String(subject.to_owned());
    }
    if event.meta("synthetic") == Some("true") {
        metadata["synthetic"] = Value::Bool(true);
    }
    metadata
}

/// Publishes one batch and moves the checkpoint; returns how many events it published.
pub async fn publish_batch(
    pool: &PgPool,
    js: &jetstream::Context,
    prefix: &str,
    look: Look,
) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    let Some((mut tx, events)) = reader::begin_batch(&mut conn, NAME, look, BATCH_SIZE).await?
    else {
        return Ok(0);
    };
    let mut acks = Vec::with_capacity(events.len());
    for event in &events {
        let body = integration_event(event);
        let version = body["version"].as_str().unwrap_or("1.0").to_owned();
        let payload = serde_json::to_vec(&body)?;
        let message = PublishMessage::build()
            .payload(payload.into())
            .message_id(event.event_id())
            .header("Accounts-Event-Type", event.event_type.as_str())
            .header("Accounts-Event-Version", version.as_str());
        let ack = js
            .send_publish(subject(prefix, event), message)
            .await
            .context("cannot publish to JetStream")?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.context("JetStream did not acknowledge")?;
    }
    if let Some(last) = events.last() {
        reader::save_checkpoint(&mut tx, NAME, &Checkpoint::after(last)).await?;
    }
    tx.commit().await?;
    Ok(events.len())
}

pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    settings: Settings,
    mut wake: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let mut stream_ready = false;
    let mut look = Look::First;
    loop {
        if !stream_ready {
            match ensure_stream(&js, &settings).await {
                Ok(_) => stream_ready = true,
                Err(error) => tracing::warn!(%error, "relay waiting for JetStream"),
            }
        }
        if stream_ready {
            loop {
                let batch = publish_batch(&pool, &js, &settings.nats_subject_prefix, look).await;
                look = Look::First;
                match batch {
                    Ok(n) if n as i64 == BATCH_SIZE => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(error = format!("{error:#}"), "relay batch failed");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = wake.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(settings.reader_poll()).await;
                } else {
                    // Concurrent commits are published as one batch (see `COALESCE`), read
                    // without a look first: the wake-up says there is something.
                    look = Look::Skip;
                    tokio::time::sleep(projections::runner::COALESCE).await;
                }
            }
            _ = tokio::time::sleep(settings.reader_poll()) => {}
        }
    }
}
