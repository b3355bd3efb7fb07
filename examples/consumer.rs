//! An example worker process: reads the account events from NATS JetStream the way the mailer
//! does. Copy it to start a worker of your own.
//!
//! - A durable pull consumer (`--durable`): several copies of the worker share the work, and a
//!   restarted worker continues where the group stopped.
//! - The first run of a new durable name replays the stream from its start (`DeliverPolicy::All`).
//! - Explicit acks, sent with `double_ack` so an ack is confirmed before the worker moves on.
//! - Delivery is at least once, and a redelivery (a worker died, an ack timed out) can arrive after
//!   later events of the same aggregate. The worker keeps the last `sequence` it handled per
//!   aggregate: the next one (`last + 1`) is handled, an older one is a duplicate (acked, skipped),
//!   a later one waits (nak with a delay) until the missing ones came. That gives per-aggregate
//!   order with any number of messages in flight. It needs every event of the aggregate: subscribe
//!   to `<prefix>.user.>` / `<prefix>.session.>` (or `<prefix>.>`), not to single event types
//!   (with those, run with `--max-ack-pending 1` instead: strict stream order). Here the state is
//!   in memory; a real worker records it in its own store, in the same transaction as its effects.
//!
//! ```sh
//! cargo run --example consumer -- --durable my-worker
//! cargo run --example consumer -- --durable audit --subject 'accounts.user.>' --idle-exit-secs 5
//! ```
#![allow(clippy::print_stdout)]

use async_nats::jetstream::{self, consumer, AckKind};
use clap::Parser;
use futures::StreamExt;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Parser)]
struct Args {
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The service's NATS_STREAM.
    #[arg(long, env = "NATS_STREAM", default_value = "ACCOUNTS")]
    stream: String,
    /// Which events: `<prefix>.>` for all, `<prefix>.user.>` for the User events, or one type.
    #[arg(long, default_value = "accounts.>")]
    subject: String,
    /// The durable consumer name shared by every copy of this worker.
    #[arg(long, default_value = "example-worker")]
    durable: String,
    /// Stop after this many messages (0: never).
    #[arg(long, default_value_t = 0)]
    max_messages: usize,
    /// Stop when no message came for this long (0: never).
    #[arg(long, default_value_t = 0)]
    idle_exit_secs: u64,
    /// Messages delivered and not yet acknowledged at most (1: strict stream order).
    #[arg(long, default_value_t = 256)]
    max_ack_pending: i64,
    /// How long a delivered message may stay unacknowledged before it is delivered again.
    #[arg(long, default_value_t = 30)]
    ack_wait_secs: u64,
}

/// The envelope every account event is published in (docs/EVENTS.md).
#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    version: String,
    aggregate_type: String,
    aggregate_id: String,
    sequence: u64,
    recorded_at: String,
    data: serde_json::Value,
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args = Args::parse();
    let client = async_nats::connect(&args.nats_url).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            &args.durable,
            consumer::pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(args.ack_wait_secs),
                max_ack_pending: args.max_ack_pending,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    // The last sequence handled per aggregate: the worker's whole dedupe and order state.
    let mut last: HashMap<(String, String), u64> = HashMap::new();
    let mut handled = 0;
    loop {
        let next = if args.idle_exit_secs > 0 {
            match tokio::time::timeout(Duration::from_secs(args.idle_exit_secs), messages.next())
                .await
            {
                Ok(next) => next,
                Err(_) => break,
            }
        } else {
            messages.next().await
        };
        let Some(message) = next else { break };
        let message = message?;
        let event = match serde_json::from_slice::<Event>(&message.payload) {
            Ok(event) => event,
            Err(error) => {
                eprintln!("not an account event: {error}");
                message.double_ack().await?;
                continue;
            }
        };
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let expected = last.get(&key).map_or(1, |seen| seen + 1);
        if event.sequence > expected {
            // An earlier event of this aggregate is still on its way (a redelivery): later.
            message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(200))))
                .await?;
            continue;
        }
        if event.sequence < expected {
            println!("{} again (redelivery), skipped", event.id);
        } else {
            // The worker's own effect goes here, then the state, in one transaction.
            println!(
                "{} {} v{} {} at {} {}",
                event.id,
                event.event_type,
                event.version,
                event.aggregate_id,
                event.recorded_at,
                event.data
            );
            last.insert(key, event.sequence);
        }
        message.double_ack().await?;
        handled += 1;
        if args.max_messages > 0 && handled >= args.max_messages {
            break;
        }
    }
    println!("handled {handled} messages");
    Ok(())
}
