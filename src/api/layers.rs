//! HTTP hardening: the client's address (trusted proxies), security headers on every response,
//! CORS for configured origins only, a request timeout, and per-IP rate limits on the
//! unauthenticated endpoints.

use crate::api::error::{throttled, ApiError};
use crate::config::Settings;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::middleware::NoOpMiddleware;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

/// The unauthenticated endpoints that write or check a secret: these share a per-IP quota.
pub(crate) const QUOTA_PATHS: [&str; 15] = [
    "/accounts/api/registration/",
    "/accounts/api/get/acctivation/token/",
    "/accounts/api/get/accttivation/token/",
    "/accounts/api/get/activation/token/",
    "/accounts/api/verify/token/{uidb64}/{token}/",
    "/accounts/api/login/",
    "/accounts/api/login/mfa/",
    "/accounts/api/login/passkey/start/",
    "/accounts/api/login/passkey/finish/",
    "/accounts/api/login/mfa/passkey/start/",
    "/accounts/api/login/mfa/passkey/finish/",
    "/accounts/api/forget/password/",
    "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
    "/accounts/api/token/refresh/",
    "/accounts/api/logout/",
];

/// The address of the client a request is from: the TCP peer, or, when the peer is a trusted
/// proxy, the address its forwarding headers name. Set on every request by [`client_ip`]; the
/// per-IP limits, the guessing bound, events, history and logs all use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The reverse proxies whose forwarding headers are believed (`TRUSTED_PROXIES`).
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: crate::config::ForwardedHeader,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        Self {
            nets: Vec::new(),
            header: crate::config::ForwardedHeader::XForwardedFor,
        }
    }
}

impl TrustedProxies {
    /// Parses IPs and CIDRs; a bad entry is an error (a typo must not trust nobody silently).
    pub fn parse(
        entries: &[String],
        header: crate::config::ForwardedHeader,
    ) -> anyhow::Result<Self> {
        let mut nets = Vec::new();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let net =
                match entry.parse::<IpNet>() {
                    Ok(net) => net,
                    Err(_) => IpNet::from(entry.parse::<IpAddr>().map_err(|_| {
                        anyhow::anyhow!("TRUSTED_PROXIES: {entry:?} is no IP or CIDR")
                    })?),
                };
            nets.push(net);
        }
        Ok(Self { nets, header })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// The client of a request from `peer` with `headers`: walking the configured forwarding
    /// header from the nearest hop, the first address that is not a trusted proxy. A hop that is
    /// no address (`unknown`, garbage) ends the walk at the last trusted hop: what lies beyond it
    /// was written by someone we do not trust.
    pub fn client_of(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        let peer = canonical_ip(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in forwarded_chain(headers, self.header).iter().rev() {
            match hop {
                Some(ip) if self.trusts(*ip) => client = *ip,
                Some(ip) => return *ip,
                None => return client,
            }
        }
        client
    }
}

/// What one client is, for counting: an IPv4 address, or an IPv6 address's /64 (one subscriber
/// holds a whole /64). The per-IP quota and the guessing bound's sources both count by it.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `for=` value or `X-Forwarded-For` entry: an address, possibly quoted, bracketed, with a
/// port; obfuscated identifiers (`unknown`, `_hidden`) are not addresses.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let raw = raw.trim().trim_matches('"');
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Some(canonical_ip(addr.ip()));
    }
    raw.trim_start_matches('[')
        .split(']')
        .next()
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map(canonical_ip)
}

/// The forwarding chain of the configured header, client first (every header line, in order);
/// `None` for a hop that is not an address.
fn forwarded_chain(
    headers: &axum::http::HeaderMap,
    header: crate::config::ForwardedHeader,
) -> Vec<Option<IpAddr>> {
    let lines = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    match header {
        crate::config::ForwardedHeader::Forwarded => lines("forwarded")
            .iter()
            .flat_map(|line| line.split(',').map(str::to_owned).collect::<Vec<_>>())
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_hop(value))?
                })
            })
            .collect(),
        crate::config::ForwardedHeader::XForwardedFor => lines("x-forwarded-for")
            .iter()
            .flat_map(|line| line.split(',').map(str::to_owned).collect::<Vec<_>>())
            .map(|hop| parse_hop(&hop))
            .collect(),
    }
}

/// Sets [`ClientIp`] on the request (outermost layer, so that every other layer sees it).
pub async fn client_ip(
    axum::extract::State(trusted): axum::extract::State<Arc<TrustedProxies>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(peer) = peer {
        let client = trusted.client_of(peer, request.headers());
        request.extensions_mut().insert(ClientIp(client));
    }
    next.run(request).await
}

/// The per-IP limiter's key: the [`ClientIp`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientIpKeyExtractor;

impl KeyExtractor for ClientIpKeyExtractor {
    type Key = IpAddr;

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        req.extensions()
            .get::<ClientIp>()
            .map(|c| client_network(c.0))
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

pub type IpLimitConfig = GovernorConfig<ClientIpKeyExtractor, NoOpMiddleware>;
pub type IpLimitLayer = GovernorLayer<ClientIpKeyExtractor, NoOpMiddleware, axum::body::Body>;

/// The per-IP quota of the unauthenticated endpoints, shared by all of them.
pub fn ip_limit_config(settings: &Settings) -> Option<Arc<IpLimitConfig>> {
    let per_minute = settings.ip_rate_per_minute.max(1);
    GovernorConfigBuilder::default()
        .key_extractor(ClientIpKeyExtractor)
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
    // The timeout sits inside the header layers, so that its 503 carries them too.
    let timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
    let mut router = router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| time_limit(timeout, req, next),
    ));
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() -> anyhow::Result<()> {
        use crate::config::ForwardedHeader;
        let nets = ["10.0.0.0/8".to_owned(), "192.0.2.1".to_owned()];
        let trusted = TrustedProxies::parse(&nets, ForwardedHeader::XForwardedFor)?;
        let peer: IpAddr = "10.1.2.3".parse()?;
        let stranger: IpAddr = "203.0.113.9".parse()?;
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, 10.9.9.9")]);
        assert_eq!(
            trusted.client_of(peer, &xff),
            "198.51.100.7".parse::<IpAddr>()?
        );
        // A client cannot pick its address by prepending to the chain.
        let forged = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.7")]);
        assert_eq!(
            trusted.client_of(peer, &forged),
            "198.51.100.7".parse::<IpAddr>()?
        );
        // From an untrusted peer the headers mean nothing.
        assert_eq!(trusted.client_of(stranger, &xff), stranger);
        // The header the proxy does not set is ignored (a client could have written it) ...
        let both = headers(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(
            trusted.client_of(peer, &both),
            "198.51.100.7".parse::<IpAddr>()?
        );
        // ... and with `Forwarded` configured, X-Forwarded-For is.
        let rfc = TrustedProxies::parse(&nets, ForwardedHeader::Forwarded)?;
        let forwarded = headers(&[
            (
                "forwarded",
                "for=\"[2001:db8::1]:4711\";proto=https, for=192.0.2.1",
            ),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(
            rfc.client_of(peer, &forwarded),
            "2001:db8::1".parse::<IpAddr>()?
        );
        // A hop that is no address ends the walk: what lies beyond it is not believed.
        let obfuscated = headers(&[("x-forwarded-for", "1.1.1.1, unknown, 10.9.9.9")]);
        assert_eq!(
            trusted.client_of(peer, &obfuscated),
            "10.9.9.9".parse::<IpAddr>()?
        );
        assert_eq!(trusted.client_of(peer, &HeaderMap::new()), peer);
        assert!(
            TrustedProxies::parse(&["not an address".into()], ForwardedHeader::Forwarded).is_err()
        );
        Ok(())
    }
}
