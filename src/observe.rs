//! Prometheus metrics (the `metrics` facade and its Prometheus exporter): HTTP requests by route
//! and status with latency histograms, password hashing, reader lag, mails. Served at `/metrics`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide recorder, installed on first use.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

/// The `# HELP` text of every metric this service records.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    describe_counter!(
        "http_accept_errors_total",
        "connections that could not be accepted (e.g. out of file descriptors)"
    );
    describe_counter!(
        "http_connections_refused_total",
        "connections closed at once because MAX_CONNECTIONS were open"
    );
    describe_histogram!(
        "password_hash_seconds",
        Unit::Seconds,
        "wall time of one argon2id hash or verification (or strength estimate), by op"
    );
    describe_histogram!(
        "password_hash_cpu_seconds",
        Unit::Seconds,
        "CPU time of one argon2id hash or verification (or strength estimate), by op"
    );
    describe_gauge!(
        "password_hash_queue",
        "password checks waiting for a hashing slot"
    );
    describe_counter!(
        "password_hash_shed_total",
        "password checks answered 503 because hashing was saturated"
    );
    describe_gauge!(
        "reader_lag_events",
        "events the reader (relay, projector) has not handled yet; 0 once it has ended"
    );
    describe_gauge!(
        "reader_lag_seconds",
        Unit::Seconds,
        "age of the oldest event the reader has not handled; 0 once it has ended"
    );
    describe_counter!(
        "mails_sent_total",
        "mails accepted by the SMTP server or written, by kind"
    );
    describe_counter!(
        "mails_failed_total",
        "mail delivery attempts that failed, by kind"
    );
    describe_counter!(
        "mails_retried_total",
        "mails sent again by `accounts mail retry`"
    );
    describe_counter!(
        "mails_skipped_total",
        "mails not sent, by kind and reason: synthetic (generated data), expired or superseded link"
    );
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

/// Counts and times every routed request by method, route template and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    // The request span names the route's template, never the path (links carry tokens in it).
    tracing::Span::current().record("route", route.as_str());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Publishes each reader's lag (events behind, age of the oldest pending event) every few seconds.
/// A reader that has ended (a finished rebuild) has its gauges reset to 0, so that no lag alert
/// fires for good on a reader that no longer exists.
pub async fn watch_lag(pool: PgPool, shutdown: CancellationToken) {
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        if let Ok(readers) = projections::rebuild::status(&pool).await {
            let now: std::collections::HashSet<String> =
                readers.iter().map(|r| r.name.clone()).collect();
            for gone in seen.difference(&now) {
                metrics::gauge!("reader_lag_events", "reader" => gone.clone()).set(0.0);
                metrics::gauge!("reader_lag_seconds", "reader" => gone.clone()).set(0.0);
            }
            seen = now;
            for reader in readers {
                let seconds = reader
                    .oldest_pending
                    .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!("reader_lag_events", "reader" => reader.name.clone())
                    .set(reader.behind as f64);
                metrics::gauge!("reader_lag_seconds", "reader" => reader.name).set(seconds);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
