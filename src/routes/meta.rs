//! Service endpoints: the OpenAPI document, liveness and readiness.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde_json::{json, Value};

pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/accounts/api/spectacular/", get(spectacular)),
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
    ]
}

/// The OpenAPI 3 document of the whole API.
pub fn openapi_document() -> Value {
    serde_json::to_value(crate::openapi::document()).unwrap_or_else(|_| json!({}))
}

#[utoipa::path(get, path = "/accounts/api/spectacular/", tag = "meta", responses((status = 200, description = "This OpenAPI 3 document")))]
pub(crate) async fn spectacular() -> Json<Value> {
    Json(openapi_document())
}

#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "The process is alive")))]
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "meta", responses((status = 200, description = "Ready"), (status = 503, description = "A dependency is failing; the body names it")))]
pub(crate) async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(&state.pool)
        .await
        .is_ok();
    let status = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if database { "ready" } else { "unavailable" },
            "checks": { "database": database },
        })),
    )
}
