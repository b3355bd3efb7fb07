//! Service endpoints: the OpenAPI document, liveness and readiness.

use crate::api::error::ApiError;
use crate::api::state::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Extension;
use axum::Json;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use utoipa::openapi::OpenApi;
use utoipa::ToSchema;

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/spectacular/", get(spectacular)),
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
    ]
}

/// The management listener's routes (`MANAGEMENT_LISTEN_ADDR`): metrics move with account
/// activity (mails sent by kind, logins), so they are not served on the public listener.
pub fn management_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/metrics", get(metrics)),
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
    ]
}

#[utoipa::path(
    get,
    path = "/accounts/api/spectacular/",
    tag = "meta",
    summary = "Get this OpenAPI document",
    description = "Also at `/accounts/api/spectacular/openapi.json`; the Swagger UI is at \
        `/accounts/api/spectacular/swagger-ui/`.",
    params(("format" = Option<String>, Query, description = "`yaml` for YAML; JSON otherwise")),
    responses((status = 200, description = "This OpenAPI 3.1 document", content(
        (Object = "application/json"),
        (String = "application/yaml"),
    )))
)]
pub(crate) async fn spectacular(
    Extension(document): Extension<Arc<OpenApi>>,
    RawQuery(query): RawQuery,
) -> Response {
    match crate::api::body::query_value(query.as_deref(), "format").as_deref() {
        Some("yaml") => match document.to_yaml() {
            Ok(yaml) => (
                [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
                yaml,
            )
                .into_response(),
            Err(error) => ApiError::internal(anyhow::anyhow!("{error}")).into_response(),
        },
        _ => Json(document.as_ref()).into_response(),
    }
}

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    summary = "Is the process alive",
    responses((status = 200, description = "The process is alive", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness, and what it was judged on.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub checks: ReadinessChecks,
    /// The parts that are not ready: `database`, `nats`, or a reader's name.
    pub failing: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    pub database: bool,
    pub nats: bool,
    /// Per reader (relay, projectors): events behind and the age of the oldest, in seconds.
    pub lag: BTreeMap<String, ReaderLag>,
}

#[derive(Serialize, ToSchema)]
pub struct ReaderLag {
    pub behind: i64,
    pub seconds: f64,
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    summary = "Is the process ready for traffic",
    responses(
        (status = 200, description = "Postgres reachable, NATS connected, relay and projectors within READY_MAX_LAG_SECS", body = Readiness),
        (status = 503, description = "Not ready; `failing` names the parts", body = Readiness),
    )
)]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let max_lag = state.settings.ready_max_lag_secs as f64;
    let mut lag = BTreeMap::new();
    let mut failing = Vec::new();
    if !database {
        failing.push("database".to_owned());
    }
    if !nats {
        failing.push("nats".to_owned());
    }
    if database {
        if let Ok(Ok(readers)) = tokio::time::timeout(
            Duration::from_secs(2),
            projections::rebuild::status(&state.pool),
        )
        .await
        {
            for reader in readers.iter().filter(|r| !r.name.ends_with("_rebuild")) {
                let seconds = reader
                    .oldest_pending
                    .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                if seconds > max_lag {
                    failing.push(reader.name.clone());
                }
                lag.insert(
                    reader.name.clone(),
                    ReaderLag {
                        behind: reader.behind,
                        seconds,
                    },
                );
            }
        }
    }
    let ready = failing.is_empty();
    (
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(Readiness {
            status: if ready { "ready" } else { "unavailable" },
            checks: ReadinessChecks {
                database,
                nats,
                lag,
            },
            failing,
        }),
    )
}

/// Prometheus text format; on the management listener only.
pub(crate) async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::observe::render(),
    )
        .into_response()
}
