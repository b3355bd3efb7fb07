//! The OpenAPI document and the service endpoints.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn the_openapi_document_covers_every_endpoint_with_its_bodies_and_errors() {
    let app = TestApp::spawn().await;
    let doc = app.openapi().await;
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

/// What a client compiles against: the seed's summaries word for word, the 429s documented, and
/// the mailed links explained.
#[tokio::test]
async fn the_document_carries_the_seeds_summaries_the_429s_and_the_link_flow() {
    let app = TestApp::spawn().await;
    let doc: serde_json::Value = app
        .client
        .get(app.url("/accounts/api/spectacular/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = |path: &str, method: &str| doc["paths"][path][method].clone();
    for (path, method, summary) in [
        (
            "/accounts/api/registration/",
            "post",
            "New user registration",
        ),
        (
            "/accounts/api/login/",
            "post",
            "Get JWT access and refresh_token to visit user dashboard.",
        ),
        (
            "/accounts/api/change/password/",
            "post",
            "Change old password",
        ),
        (
            "/accounts/api/forget/password/",
            "post",
            "Forget reset password link",
        ),
        (
            "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
            "post",
            "Set new forget password",
        ),
        (
            "/accounts/api/verify/token/{uidb64}/{token}/",
            "post",
            "Activate user account by email verification",
        ),
        (
            "/accounts/api/get/acctivation/token/",
            "post",
            "Get new account activation token",
        ),
        ("/accounts/api/dashboard/", "get", "Get user dashboard"),
        ("/accounts/api/get/profile/", "get", "Get user profile"),
        (
            "/accounts/api/update/profile/",
            "post",
            "Update user profile",
        ),
    ] {
        assert_eq!(op(path, method)["summary"], summary, "{path}");
    }
    for (path, method) in [
        ("/accounts/api/login/", "post"),
        ("/accounts/api/change/password/", "post"),
        ("/accounts/api/registration/", "post"),
        ("/accounts/api/forget/password/", "post"),
    ] {
        assert!(
            op(path, method)["responses"]["429"].is_object(),
            "{path}: no 429"
        );
    }
    let activation = op("/accounts/api/verify/token/{uidb64}/{token}/", "post");
    assert!(activation["description"]
        .as_str()
        .unwrap()
        .contains("<verification_base_url><uidb64>/<token>/"));
    assert!(
        doc["paths"]["/metrics"].is_null(),
        "/metrics is not a public operation"
    );
}

/// Every answer is JSON in the contract's shape, whatever the path or the query string.
#[tokio::test]
async fn odd_queries_unknown_files_and_timeouts_answer_json_with_the_security_headers() {
    let app = TestApp::spawn_with(|s| s.request_timeout_secs = 1).await;
    let (access, _) = app.active_user("odd", "odd@example.com").await;
    // A repeated parameter reads like Django's QueryDict (the last one wins).
    let page = app
        .get_authed("/accounts/api/history/?limit=1&limit=2", &access)
        .await;
    let page = json_of(page, reqwest::StatusCode::OK).await;
    assert_eq!(page["results"].as_array().unwrap().len(), 2);
    let bad = app
        .get_authed("/accounts/api/history/?limit=2&limit=x", &access)
        .await;
    assert_eq!(
        json_of(bad, reqwest::StatusCode::BAD_REQUEST).await["limit"][0],
        "Ensure this value is a whole number from 1 to 200."
    );
    let yaml = app
        .client
        .get(app.url("/accounts/api/spectacular/?format=json&format=yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(yaml.status(), 200);
    // An unknown file under the Swagger UI is the JSON 404.
    let missing = app
        .client
        .get(app.url("/accounts/api/spectacular/swagger-ui/no-such-file.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        json_of(missing, reqwest::StatusCode::NOT_FOUND).await["detail"],
        "Not found."
    );
    // A request that outlives REQUEST_TIMEOUT_SECS (its profile read waits on a lock held here)
    // gets the JSON 503 with every security header.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("lock table profile in access exclusive mode")
        .execute(&mut *tx)
        .await
        .unwrap();
    let slow = app.get_authed("/accounts/api/get/profile/", &access).await;
    tx.rollback().await.unwrap();
    assert_eq!(slow.status(), 503);
    for header in [
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "cache-control",
        "content-security-policy",
        "strict-transport-security",
    ] {
        assert!(
            slow.headers().contains_key(header),
            "the timeout lacks {header}"
        );
    }
    assert_eq!(
        json_of(slow, reqwest::StatusCode::SERVICE_UNAVAILABLE).await["code"],
        "request_timeout"
    );
}
