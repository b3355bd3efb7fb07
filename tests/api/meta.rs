//! The OpenAPI document and the service endpoints.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn the_openapi_document_covers_every_endpoint_with_its_bodies_and_errors() {
    let app = TestApp::spawn().await;
    let response = app
        .client
        .get(app.url("/accounts/api/spectacular/"))
        .send()
        .await
        .unwrap();
    let doc = json_of(response, StatusCode::OK).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/accounts/api/registration/", "post"),
        ("/accounts/api/get/acctivation/token/", "post"),
        ("/accounts/api/verify/token/{uidb64}/{token}/", "post"),
        ("/accounts/api/login/", "post"),
        ("/accounts/api/dashboard/", "get"),
        ("/accounts/api/get/profile/", "get"),
        ("/accounts/api/update/profile/", "post"),
        ("/accounts/api/change/password/", "post"),
        ("/accounts/api/forget/password/", "post"),
        (
            "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
            "post",
        ),
        ("/accounts/api/token/refresh/", "post"),
        ("/accounts/api/logout/", "post"),
        ("/accounts/api/history/", "get"),
        ("/.well-known/jwks.json", "get"),
        ("/accounts/api/spectacular/", "get"),
    ];
    for (path, method) in expected {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert!(!operation["responses"].as_object().unwrap().is_empty());
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for schema in [
        "RegistrationRequest",
        "LoginResponse",
        "Profile",
        "ValidationErrors",
        "ErrorDetail",
    ] {
        assert!(schemas.contains_key(schema), "{schema}");
    }
    assert!(doc["paths"]["/accounts/api/login/"]["post"]["responses"]["401"].is_object());
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = json_of(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ready["checks"]["database"], true);
}
