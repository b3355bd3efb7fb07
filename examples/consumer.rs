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
//! - Personal values arrive sealed (`pii:v2:...`, or `pii:v1:...` in older events; docs/EVENTS.md).
//!   With `--open-url` and a worker token (`--worker-token` or `WORKER_TOKEN`), each event
//!   holding any is opened through the service before it is handled. A 410 answer means the
//!   person was deleted: the event is handled as `erased` (its line ends in `erased` instead of
//!   the data) and the worker forgets the person, as for `AccountDeleted`. Without `--open-url` the values stay sealed. This build of reqwest
//!   has no TLS: use an `http://` URL inside your network, or enable a TLS feature of reqwest.
//! - `AccountDeleted`: the worker deletes what it copied of the person (see `forget_person`).
//!   The ordering state stays: it holds nothing personal, and it keeps late duplicates out.
//!
//! ```sh
//! cargo run --example consumer -- --durable my-worker
//! cargo run --example consumer -- --durable audit --subject 'accounts.user.>' --idle-exit-secs 5
//! WORKER_TOKEN=... cargo run --example consumer -- --durable mail-copy \
//!     --open-url http://accounts.internal:8000
//! ```
#![allow(clippy::print_stdout)]

use async_nats::jetstream::{self, consumer, AckKind};
use clap::Parser;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
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
    /// The service's base URL, e.g. `http://127.0.0.1:8000`: open sealed values through its
    /// `POST /accounts/internal/events/open/` before handling an event.
    #[arg(long)]
    open_url: Option<String>,
    /// One of the service's WORKER_TOKENS, for `--open-url`.
    #[arg(long, env = "WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
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
    data: Value,
    #[serde(default)]
    metadata: Value,
}

impl Event {
    /// The person whose data key sealed the event: `metadata.subject`; in messages published
    /// before sealing, the user id (the aggregate of a `User` event, `data.user_id` of others).
    fn person(&self) -> Option<String> {
        let subject = self.metadata.get("subject").and_then(Value::as_str);
        let own = if self.aggregate_type == "User" {
            Some(self.aggregate_id.as_str())
        } else {
            self.data.get("user_id").and_then(Value::as_str)
        };
        subject.or(own).map(str::to_owned)
    }

    /// Whether the event holds a sealed value (`pii:v2:...`, `pii:v1:...`) in its data or
    /// metadata.
    fn holds_sealed(&self) -> bool {
        fn sealed(value: &Value) -> bool {
            match value {
                Value::String(text) => text.starts_with("pii:v"),
                Value::Array(items) => items.iter().any(sealed),
                Value::Object(fields) => fields.values().any(sealed),
                _ => false,
            }
        }
        sealed(&self.data) || sealed(&self.metadata)
    }
}

/// What the service answered for an event's sealed values.
enum Opened {
    /// The event with its values in clear.
    Clear { data: Value },
    /// 410: the person was deleted, nothing of theirs opens any more.
    Erased,
}

/// Why an event could not be opened.
enum OpenError {
    /// 401: the token is wrong or missing. That does not mend itself: the worker stops.
    Refused,
    /// The service is away or failed (e.g. a 5xx): try again later.
    Later(String),
}

/// Opens sealed values through the service (`POST /accounts/internal/events/open/`).
struct Opener {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Opener {
    fn new(base_url: &str, token: String) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: format!(
                "{}/accounts/internal/events/open/",
                base_url.trim_end_matches('/')
            ),
            token,
        })
    }

    /// Sends the message as it came (the service reads `type`, `data` and `metadata`).
    async fn open(&self, payload: &[u8]) -> Result<Opened, OpenError> {
        let later = |e: reqwest::Error| OpenError::Later(e.to_string());
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload.to_vec())
            .send()
            .await
            .map_err(later)?;
        match response.status().as_u16() {
            200 => {
                #[derive(Deserialize)]
                struct Body {
                    data: Value,
                }
                let body: Body = response.json().await.map_err(later)?;
                Ok(Opened::Clear { data: body.data })
            }
            410 => Ok(Opened::Erased),
            401 => Err(OpenError::Refused),
            status => Err(OpenError::Later(format!("the service answered {status}"))),
        }
    }
}

/// The person was deleted (`AccountDeleted`, or a 410 from the service): delete here what this
/// worker copied of them, keyed by their user id (e.g. `delete from my_copy where user_id = $1`,
/// in the transaction that records the event as handled). This example keeps no personal copy,
/// so it only says so. Ids are not personal data on their own: keeping the ordering state and
/// the ids of handled events is fine.
fn forget_person(person: &str, why: &str) {
    eprintln!("{person}: {why}; a real worker deletes what it holds of them here");
}

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let args = Args::parse();
    let opener = match (&args.open_url, &args.worker_token) {
        (Some(url), Some(token)) => Some(Opener::new(url, token.clone())?),
        (Some(_), None) => return Err("--open-url needs --worker-token or WORKER_TOKEN".into()),
        (None, _) => None,
    };
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
            let deleted = event.aggregate_type == "User" && event.event_type == "AccountDeleted";
            // `AccountDeleted` seals nothing anyone can open (its key went with it): not opened.
            let opened = match &opener {
                Some(opener) if !deleted && event.holds_sealed() => {
                    match opener.open(&message.payload).await {
                        Ok(opened) => Some(opened),
                        Err(OpenError::Refused) => {
                            // Unacknowledged, the message comes again to a worker with a token.
                            return Err("the service refused the worker token (401)".into());
                        }
                        Err(OpenError::Later(error)) => {
                            eprintln!("cannot open {}: {error}; trying again later", event.id);
                            message
                                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                                .await?;
                            continue;
                        }
                    }
                }
                _ => None,
            };
            // The worker's own effect goes here, then the state, in one transaction. (A real
            // worker does not log personal values; the example prints what it received.)
            let data = match &opened {
                Some(Opened::Clear { data }) => data.to_string(),
                Some(Opened::Erased) => "erased".to_owned(),
                None => event.data.to_string(),
            };
            println!(
                "{} {} v{} {} at {} {}",
                event.id,
                event.event_type,
                event.version,
                event.aggregate_id,
                event.recorded_at,
                data
            );
            if let Some(person) = event.person() {
                if deleted {
                    forget_person(&person, "account deleted");
                } else if matches!(opened, Some(Opened::Erased)) {
                    forget_person(&person, "erased (410): the account was deleted");
                }
            }
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
