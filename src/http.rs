//! HTTP hardening: security headers on every response, CORS for configured origins only, a
//! request timeout, and per-IP rate limits on the unauthenticated endpoints.

use crate::config::Settings;
use crate::error::{throttled, ApiError};
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::middleware::NoOpMiddleware;
use std::sync::Arc;
use std::time::Duration;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub type IpLimitConfig = GovernorConfig<PeerIpKeyExtractor, NoOpMiddleware>;
pub type IpLimitLayer = GovernorLayer<PeerIpKeyExtractor, NoOpMiddleware, axum::body::Body>;

/// The per-IP quota of the unauthenticated endpoints, shared by all of them.
pub fn ip_limit_config(settings: &Settings) -> Option<Arc<IpLimitConfig>> {
    let per_minute = settings.ip_rate_per_minute.max(1);
    GovernorConfigBuilder::default()
        .per_millisecond((60_000 / per_minute).max(1))
        .burst_size(settings.ip_rate_burst.max(1))
        .finish()
        .map(Arc::new)
}

pub fn ip_limit_layer(config: Arc<IpLimitConfig>) -> IpLimitLayer {
    GovernorLayer::new(config).error_handler(|error| match error {
        GovernorError::TooManyRequests { wait_time, .. } => throttled(wait_time.max(1)),
        GovernorError::UnableToExtractKey | GovernorError::Other { .. } => {
            ApiError::internal(anyhow::anyhow!("rate limiter: {error}")).into_response()
        }
    })
}

/// Forgets idle clients now and then, so the limiter's memory stays bounded.
pub async fn prune_ip_limits(
    config: Arc<IpLimitConfig>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => config.limiter().retain_recent(),
        }
    }
}

const SECURITY_HEADERS: [(&str, &str); 6] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
];

/// Adds the hardening layers around `router`.
pub fn harden(router: Router, settings: &Settings) -> Router {
    let mut router = router;
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    let timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
    router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| time_limit(timeout, req, next),
    ));
    let origins: Vec<HeaderValue> = settings
        .cors_allowed_origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .filter_map(|o| HeaderValue::from_str(o.trim().trim_end_matches('/')).ok())
        .collect();
    if !origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                .max_age(Duration::from_secs(600)),
        );
    }
    router
}

async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            "The request took too long. Please try again.",
        )
        .into_response(),
    }
}
