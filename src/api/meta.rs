//! Service endpoints: the OpenAPI document, liveness and readiness.

use crate::api::error::ApiError;
use crate::api::state::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;

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

/// The OpenAPI 3 document of the whole API.
pub fn openapi_document() -> Value {
    serde_json::to_value(crate::api::openapi::document()).unwrap_or_else(|_| json!({}))
}

#[utoipa::path(get, path = "/accounts/api/spectacular/", tag = "meta", params(("format" = Option<String>, Query, description = "`json` (default) or `yaml`")), responses((status = 200, description = "This OpenAPI 3 document")))]
pub(crate) async fn spectacular(RawQuery(query): RawQuery) -> Response {
    match crate::api::body::query_value(query.as_deref(), "format").as_deref() {
        Some("yaml") => match crate::api::openapi::document().to_yaml() {
            Ok(yaml) => (
                [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
                yaml,
            )
                .into_response(),
            Err(error) => ApiError::internal(anyhow::anyhow!("{error}")).into_response(),
        },
        _ => Json(openapi_document()).into_response(),
    }
}

#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "The process is alive")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "meta", responses((status = 200, description = "Postgres reachable, NATS connected, relay and projectors within READY_MAX_LAG_SECS"), (status = 503, description = "Not ready; `failing` names the parts")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("select 1").fetch_one(&state.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let max_lag = state.settings.ready_max_lag_secs as f64;
    let mut lag = serde_json::Map::new();
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
                    json!({ "behind": reader.behind, "seconds": seconds }),
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
        Json(json!({
            "status": if ready { "ready" } else { "unavailable" },
            "checks": { "database": database, "nats": nats, "lag": lag },
            "failing": failing,
        })),
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
