//! The OpenAPI document is the contract clients compile against: its operations are the router's,
//! the statuses it documents are the ones the service answers, and Schemathesis (all checks)
//! finds no disagreement between the two.

use crate::helpers::{json_of, python_venv, TestApp, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The statuses each operation can answer, as API.md and the service's design say: a JSON body
/// brings 400, 413 and 415; a Bearer token 401; the per-IP quota or the guessing bound 429; the
/// database or the hashing pool behind it 503. Written out here, not derived from the document,
/// so that a change to either the document or the service that breaks the contract fails.
fn contract() -> BTreeMap<(&'static str, &'static str), Vec<u16>> {
    let public_body = [200, 400, 413, 415, 429, 503];
    let resend = public_body.to_vec();
    BTreeMap::from([
        (
            ("post", "/accounts/api/registration/"),
            vec![201, 400, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/get/acctivation/token/"),
            resend.clone(),
        ),
        (
            ("post", "/accounts/api/get/accttivation/token/"),
            resend.clone(),
        ),
        (("post", "/accounts/api/get/activation/token/"), resend),
        (
            ("post", "/accounts/api/verify/token/{uidb64}/{token}/"),
            vec![200, 400, 429, 503],
        ),
        (
            ("post", "/accounts/api/login/"),
            vec![200, 400, 401, 403, 413, 415, 429, 503],
        ),
        (("get", "/accounts/api/dashboard/"), vec![200, 401, 503]),
        (("get", "/accounts/api/history/"), vec![200, 400, 401, 503]),
        (("get", "/accounts/api/get/profile/"), vec![200, 401, 503]),
        (
            ("post", "/accounts/api/update/profile/"),
            vec![200, 400, 401, 413, 415, 503],
        ),
        (
            ("post", "/accounts/api/change/password/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/forget/password/"),
            public_body.to_vec(),
        ),
        (
            (
                "post",
                "/accounts/api/set/new/forget/password/{uidb64}/{token}/",
            ),
            public_body.to_vec(),
        ),
        (
            ("post", "/accounts/api/token/refresh/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/logout/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (("get", "/.well-known/jwks.json"), vec![200]),
        (("get", "/accounts/api/sessions/"), vec![200, 401, 503]),
        (("get", "/accounts/api/export/"), vec![200, 401, 503]),
        (
            ("post", "/accounts/api/delete/account/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/internal/events/open/"),
            vec![200, 400, 401, 410, 413, 415, 503],
        ),
        (
            ("post", "/accounts/api/sessions/{session_id}/revoke/"),
            vec![200, 401, 404, 503],
        ),
        (
            ("post", "/accounts/api/sessions/others/revoke/"),
            vec![200, 401, 503],
        ),
        (
            ("post", "/accounts/api/login/mfa/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (("get", "/accounts/api/mfa/"), vec![200, 401, 503]),
        (
            ("post", "/accounts/api/mfa/totp/setup/"),
            vec![200, 400, 401, 409, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/mfa/totp/confirm/"),
            vec![200, 400, 401, 409, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/mfa/totp/disable/"),
            vec![200, 400, 401, 409, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/mfa/recovery-codes/"),
            vec![200, 400, 401, 409, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/passkeys/register/start/"),
            vec![200, 400, 401, 409, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/passkeys/register/finish/"),
            vec![200, 400, 401, 413, 415, 503],
        ),
        (
            ("post", "/accounts/api/passkeys/{passkey_id}/remove/"),
            vec![200, 400, 401, 404, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/login/passkey/start/"),
            vec![200, 429, 503],
        ),
        (
            ("post", "/accounts/api/login/passkey/finish/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/login/mfa/passkey/start/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (
            ("post", "/accounts/api/login/mfa/passkey/finish/"),
            vec![200, 400, 401, 413, 415, 429, 503],
        ),
        (("get", "/accounts/api/spectacular/"), vec![200]),
        (("get", "/healthz"), vec![200]),
        (("get", "/readyz"), vec![200, 503]),
    ])
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(method, path)` → documented statuses.
fn documented(document: &Value) -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut operations = BTreeMap::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                let statuses = operation["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|status| status.parse::<u16>().unwrap())
                    .collect();
                operations.insert((method.to_owned(), path.clone()), statuses);
            }
        }
    }
    operations
}

/// A concrete path for a templated one.
fn concrete(path: &str) -> String {
    path.replace("{uidb64}", "AAAAAAAAAAAAAAAAAAAAAA")
        .replace("{token}", "not-a-token")
        .replace("{session_id}", "0191d3c4-0000-7000-8000-000000000000")
        .replace("{passkey_id}", "0191d3c4-0000-7000-8000-000000000000")
}

#[tokio::test]
async fn the_document_lists_the_router_operations_with_the_statuses_they_answer() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("contract", "contract@example.com").await;
    let document = app.openapi().await;
    let operations = documented(&document);

    // The document says what the contract says.
    let expected: BTreeMap<(String, String), BTreeSet<u16>> = contract()
        .into_iter()
        .map(|((method, path), statuses)| {
            (
                (method.to_owned(), path.to_owned()),
                statuses.into_iter().collect(),
            )
        })
        .collect();
    assert_eq!(operations, expected);

    // The router serves exactly the documented methods on each documented path: any other is
    // a JSON 405 whose `Allow` names the documented ones.
    let mut answered: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
    let paths: BTreeSet<&String> = operations.keys().map(|(_, path)| path).collect();
    for path in paths {
        let url = app.url(&concrete(path));
        let allowed: BTreeSet<&str> = METHODS
            .into_iter()
            .filter(|m| operations.contains_key(&(m.to_string(), path.clone())))
            .collect();
        for method in METHODS {
            let response = app
                .client
                .request(method.to_uppercase().parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            if allowed.contains(method) {
                assert_ne!(response.status(), 405, "{method} {path}");
                let status = response.status().as_u16();
                answered
                    .entry((method.to_owned(), path.clone()))
                    .or_default()
                    .insert(status);
            } else {
                assert_eq!(response.status(), 405, "{method} {path}");
                let allow = response.headers()["allow"].to_str().unwrap().to_lowercase();
                let allow: BTreeSet<&str> = allow
                    .split(',')
                    .map(str::trim)
                    .filter(|m| *m != "head")
                    .collect();
                assert_eq!(allow, allowed, "Allow of {path}");
                let body: Value = response.json().await.unwrap();
                assert!(body["detail"].is_string(), "{body}");
            }
        }
    }

    // Each operation, probed with what a client can get wrong, answers only documented
    // statuses, each with a JSON body.
    for ((method, path), statuses) in &operations {
        let url = app.url(&concrete(path));
        let request = |token: Option<&str>| {
            let builder = app
                .client
                .request(method.to_uppercase().parse().unwrap(), &url);
            match token {
                Some(token) => builder.bearer_auth(token),
                None => builder,
            }
        };
        let secured = document["paths"][path][method]["security"]
            .as_array()
            .is_some_and(|s| !s.is_empty());
        let token = secured.then_some(access.as_str());
        let mut probes = vec![
            request(token),
            request(Some("not.a.token")),
            request(token).query(&[("limit", "0"), ("cursor", "x")]),
        ];
        if method == "post" {
            probes.extend([
                request(token)
                    .header("content-type", "application/json")
                    .body("{not json"),
                request(token)
                    .header("content-type", "application/json")
                    .body("[]"),
                request(token).json(&json!({})),
                request(token)
                    .json(&json!({"email": 1, "refresh_token": null, "new_password": "x"})),
                request(token).json(&json!({"email": "contract@example.com",
                    "password": "wrong password", "refresh_token": "bogus",
                    "mfa_token": "bogus", "code": "123456",
                    "ceremony_id": "0191d3c4-0000-7000-8000-000000000000",
                    "credential": {"id": "x"},
                    "type": "Registered", "data": {}, "metadata": {}})),
                request(token)
                    .header("content-type", "text/plain")
                    .body("{}"),
                request(token)
                    .header("content-type", "application/json")
                    .body(vec![b' '; 70 * 1024]),
            ]);
        }
        for probe in probes {
            let response = probe.send().await.unwrap();
            let status = response.status().as_u16();
            assert!(
                statuses.contains(&status),
                "{method} {path} answered {status}, documented {statuses:?}"
            );
            assert_eq!(
                response.headers()["x-content-type-options"],
                "nosniff",
                "{method} {path} {status} without the security headers"
            );
            if path != "/accounts/api/spectacular/" {
                let body: Value = response.json().await.unwrap();
                assert!(body.is_object(), "{method} {path} {status}: {body}");
            }
            answered
                .entry((method.clone(), path.clone()))
                .or_default()
                .insert(status);
        }
    }
    // The probes reached the body and token checks of every operation that has them.
    for ((method, path), statuses) in &operations {
        let seen = &answered[&(method.clone(), path.clone())];
        for status in [400, 401, 413, 415] {
            if statuses.contains(&status) {
                assert!(
                    seen.contains(&status),
                    "{method} {path} never answered {status}"
                );
            }
        }
    }
}

/// Every operation the document says is under the per-IP quota answers 429 past it.
#[tokio::test]
async fn every_operation_documented_with_429_answers_it_past_the_quota() {
    let app = TestApp::spawn_with(|s| {
        s.ip_rate_per_minute = 1;
        s.ip_rate_burst = 1;
    })
    .await;
    let document = app.openapi().await;
    for ((method, path), statuses) in documented(&document) {
        if !statuses.contains(&429)
            || path.contains("change/password")
            || path.contains("delete/account")
            || path.starts_with("/accounts/api/mfa/")
            || path.starts_with("/accounts/api/passkeys/")
        {
            // Bearer operations under the guessing bound only (tests in attacks.rs, mfa.rs).
            continue;
        }
        let url = app.url(&concrete(&path));
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let response = app
                .client
                .request(method.to_uppercase().parse().unwrap(), &url)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            seen.insert(response.status().as_u16());
        }
        assert!(seen.contains(&429), "{method} {path}: {seen:?}");
    }
}

/// Schemathesis, as a client's QA would run it: every operation, all checks, a real Bearer token,
/// the account the document's examples name. The run must find nothing. Pinned, installed from
/// the package index into a venv on first use. Its configuration is tests/api/schemathesis.toml.
///
/// Ending one of the caller's sessions is an operation like the others, and Schemathesis finds
/// the current session's id in `GET sessions/`: run with the rest, it ended the token's own
/// session within seconds and every later request (the whole fuzzing phase of each
/// authenticated operation) was answered 401 before its handler ran. So it runs on its own,
/// after the others, with a token of its own; the token of the main run must still work at its
/// end, which is what makes its authenticated operations tested at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_disagreement_between_the_document_and_the_service() {
    let app = TestApp::spawn_with(|s| {
        s.allowed_link_origins = vec!["http://app.test".into(), "http://localhost:3000".into()];
        // Generated cases must reach the handlers; the bounds have tests of their own.
        s.login_failure_limit = 1_000_000;
        s.login_shared_failure_limit = 1_000_000;
    })
    .await;
    // The account of the document's examples.
    let (access, _) = app.active_user("krishna", "krishna@example.com").await;
    let email = "krishna@example.com";
    json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;

    let venv = tokio::task::spawn_blocking(|| {
        python_venv("accounts-schemathesis-4.32.5", &["schemathesis==4.32.5"])
    })
    .await
    .unwrap();
    let schema = app.url("/accounts/api/spectacular/openapi.json");
    let ending = "/accounts/api/sessions/{session_id}/revoke/";

    let report = schemathesis(&venv, &schema, &access, &["--exclude-path", ending]).await;
    assert!(report.contains("Tested: 37"), "{report}");
    // Nothing in the run ended the session it was testing with.
    let dashboard = app.get_authed("/accounts/api/dashboard/", &access).await;
    assert_eq!(dashboard.status(), StatusCode::OK, "{report}");

    // A session of its own (the main run ended every other one, `sessions/others/revoke/`).
    let second = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let second = second["access_token"].as_str().unwrap();
    // With the listing its ids come from, for the stateful phase to end real sessions.
    let listing = "/accounts/api/sessions/";
    let only = ["--include-path", ending, "--include-path", listing];
    let report = schemathesis(&venv, &schema, second, &only).await;
    assert!(report.contains("Tested: 2"), "{report}");
    assert!(!report.contains("Authentication failed"), "{report}");
    // It found the session's id and ended it: the operation's success was checked too.
    let ended = app.get_authed("/accounts/api/dashboard/", second).await;
    assert_eq!(ended.status(), StatusCode::UNAUTHORIZED, "{report}");
}

/// One Schemathesis run with the contract test's configuration and `--seed 1`, as `token`,
/// narrowed by `filter`; fails the test on any failure and returns the report.
async fn schemathesis(
    venv: &std::path::Path,
    schema: &str,
    token: &str,
    filter: &[&str],
) -> String {
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/schemathesis.toml");
    let examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "100".into());
    // Schemathesis replays failures cached in its working directory: a scratch one keeps each
    // run independent of the last.
    let work = scratch_dir();
    let mut command = std::process::Command::new(venv.join("bin/st"));
    command
        .arg("--config-file")
        .arg(config)
        .args([
            "run",
            schema,
            "--checks",
            "all",
            "--seed",
            "1",
            "--no-color",
        ])
        .args(["--max-examples", &examples])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(filter)
        .current_dir(&work);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(work);
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    // Shown with `--nocapture`: the operations tested, and Schemathesis' warnings.
    println!("{report}");
    assert!(
        output.status.success(),
        "Schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("accounts-st-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
