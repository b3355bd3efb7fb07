//! The HTTP surface: the router, one module per endpoint group (each with its own `routes()`,
//! request and response types beside the handlers), the JSON body extractor and the error type
//! (both DRF-shaped), the OpenAPI document made from the handlers' types, the hardening layers
//! and the listeners' accept loop.

pub(crate) mod account;
pub mod body;
pub mod erasure;
pub mod error;
pub mod export;
pub mod layers;
pub(crate) mod meta;
pub(crate) mod mfa;
pub mod openapi;
pub(crate) mod passkeys;
pub(crate) mod password;
pub(crate) mod profile;
pub(crate) mod registration;
pub mod serve;
pub(crate) mod sessions;
pub mod state;
pub(crate) mod tokens;

use crate::api::error::ApiError;
use crate::api::state::AppState;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};

pub(crate) use registration::aggregate_error;

/// Every route, under its path with the trailing slash and without it.
pub fn router(state: AppState, ip_limit: Option<crate::api::layers::IpLimitLayer>) -> Router {
    let routes: Vec<(&str, MethodRouter<AppState>)> = [
        registration::routes(),
        account::routes(),
        profile::routes(),
        password::routes(),
        tokens::routes(),
        sessions::routes(),
        mfa::routes(),
        passkeys::routes(),
        export::routes(),
        erasure::routes(),
        meta::routes(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut router = Router::new();
    for (path, mut method_router) in routes {
        if let (Some(layer), true) = (&ip_limit, layers::QUOTA_PATHS.contains(&path)) {
            method_router = method_router.layer(layer.clone());
        }
        router = router.route(path, method_router.clone());
        let bare = path.trim_end_matches('/');
        if bare != path && !bare.is_empty() {
            router = router.route(bare, method_router);
        }
    }
    // The document is made once; the handler that serves it gets it as an extension, so no
    // handler depends on the module that describes the handlers.
    let document = std::sync::Arc::new(openapi::document());
    router
        .merge(swagger_ui(&document))
        .layer(axum::Extension(document))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(method_not_allowed))
        .with_state(state)
}

/// The management listener's router: metrics and probes, JSON 404 elsewhere.
pub fn management_router(state: AppState) -> Router {
    let mut router = Router::new();
    for (path, method_router) in meta::management_routes() {
        router = router.route(path, method_router);
    }
    router
        .fallback(not_found)
        .layer(axum::middleware::from_fn(method_not_allowed))
        .with_state(state)
}

/// The interactive documentation, with its assets embedded in the binary (no outside network).
/// Its page runs our own scripts and styles, so it gets a CSP that allows exactly those.
fn swagger_ui(document: &utoipa::openapi::OpenApi) -> Router<AppState> {
    Router::from(
        utoipa_swagger_ui::SwaggerUi::new("/accounts/api/spectacular/swagger-ui")
            .url("/accounts/api/spectacular/openapi.json", document.clone()),
    )
    .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
        header::CONTENT_SECURITY_POLICY,
        axum::http::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
             frame-ancestors 'none'",
        ),
    ))
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// axum answers a known path with the wrong method by an empty 405, and the embedded Swagger UI
/// an unknown file under its path by an empty 404; DRF clients expect a JSON body everywhere.
async fn method_not_allowed(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    if response.status() == StatusCode::NOT_FOUND && !is_json(&response) {
        return not_found().await.into_response();
    }
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let shown = if method == Method::HEAD {
        "HEAD"
    } else {
        method.as_str()
    };
    let mut rewritten = error::method_not_allowed(shown);
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    rewritten
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The `{"msg": ...}` body of the original service.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Msg {
    /// A sentence for the user.
    pub msg: String,
}

pub(crate) fn msg(text: impl Into<String>) -> Json<Msg> {
    Json(Msg { msg: text.into() })
}
