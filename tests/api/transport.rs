//! The transport findings of the second security review (issue #10): what the public listener
//! reveals, slow and idle connections, the client address behind proxies.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Finding 1: `GET /metrics` was public and moved with registered addresses only.
#[tokio::test]
async fn metrics_are_served_on_the_management_listener_only() {
    let app = TestApp::spawn().await;
    app.active_user("known", "known@example.com").await;
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    let body = json_of(public, StatusCode::NOT_FOUND).await;
    assert_eq!(body["detail"], "Not found.");
    // The probes stay on the public listener too (load balancers use them).
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // What the public listener answers for a registered and an unknown address is the same,
    // while the operator's metrics do see the mail that only the registered one caused.
    let mut answers = Vec::new();
    for email in ["known@example.com", "unknown@example.com"] {
        let response = app.forgot_password(email).await;
        let status = response.status();
        answers.push((status, response.text().await.unwrap()));
    }
    assert_eq!(answers[0], answers[1]);
    app.smtp
        .wait_for("known@example.com", "Reset your password")
        .await;
    eventually(|| async { app.metrics().await.contains("kind=\"password_reset\"") }).await;
    let ready = app
        .client
        .get(format!("{}/readyz", app.management))
        .send()
        .await
        .unwrap();
    assert!(ready.status() == 200 || ready.status() == 503);
}

/// Opens a connection that sends part of a request head and nothing more.
async fn partial_head(port: u16) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    stream
        .write_all(b"POST /accounts/api/login/ HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .ok()?;
    Some(stream)
}

/// Whether the server closes `stream` within `within` (EOF or a reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // A response (e.g. 408) may come first; the close follows.
            Ok(Ok(_)) => continue,
        }
    }
}

// Finding 8: connections that sent partial headers stayed open until descriptors ran out.
#[tokio::test]
async fn slow_and_idle_connections_are_closed_and_the_service_keeps_serving() {
    let app = TestApp::spawn_with(|s| s.header_read_timeout_secs = 1).await;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let (access, _) = app.active_user("patient", "patient@example.com").await;

    // A few thousand slow clients (bounded), opened in waves.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let wave = futures::future::join_all((0..100).map(|_| partial_head(port))).await;
        slow.extend(wave.into_iter().flatten());
    }
    // And some that send nothing at all, or half an HTTP/2 preface.
    for n in 0..200 {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
            if n % 2 == 0 {
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n").await;
            }
            slow.push(stream);
        }
    }
    assert!(slow.len() >= 2100, "only {} connections opened", slow.len());
    // While they hang, the legitimate user is served.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    json_of(
        app.login("patient@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    json_of(
        app.get_authed("/accounts/api/get/profile/", &access).await,
        StatusCode::OK,
    )
    .await;
    // Every slow one is closed by the server.
    let closed = futures::future::join_all(
        slow.iter_mut()
            .map(|stream| closed_within(stream, Duration::from_secs(15))),
    )
    .await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} slow connections are still open");

    // An idle kept-alive connection is closed too, after a complete request.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 4096];
    let n = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(15)).await);

    // And the service still serves.
    json_of(
        app.login("patient@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
}

async fn forgot_from(app: &TestApp, forwarded_for: &str) -> StatusCode {
    app.client
        .post(app.url("/accounts/api/forget/password/"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": "someone@example.com"}))
        .send()
        .await
        .unwrap()
        .status()
}

async fn started_ips(app: &TestApp) -> Vec<String> {
    app.opened_events("event_type = 'Started'")
        .await
        .iter()
        .filter_map(|e| e.meta("ip").map(str::to_owned))
        .collect()
}

/// The addresses as stored: sealed under the person's data key.
async fn stored_ips(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "select metadata ->> 'ip' from events where event_type = 'Started' order by global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

// Behind a proxy every client shared the proxy's bucket; with TRUSTED_PROXIES each has its own.
#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_quota_and_address() {
    let app = TestApp::spawn_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".into()];
        s.ip_rate_per_minute = 1;
        s.ip_rate_burst = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(forgot_from(&app, "198.51.100.1").await);
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
    // Another client behind the same proxy is not affected ...
    assert_eq!(forgot_from(&app, "198.51.100.2").await, 200);
    // ... and cannot borrow someone else's address by prepending it.
    assert_eq!(
        forgot_from(&app, "198.51.100.2, 198.51.100.9").await,
        200,
        "the nearest untrusted hop names the client"
    );

    // The address lands in the events (and so the history).
    let (email, name) = ("proxied@example.com", "proxied");
    assert_eq!(app.register(name, email, PASSWORD).await.status(), 201);
    let link = app.smtp.wait_for(email, "Activate").await.link();
    assert_eq!(app.activate_link(&link).await.status(), 200);
    let login = app
        .client
        .post(app.url("/accounts/api/login/"))
        .header("x-forwarded-for", "203.0.113.77")
        // A header the proxy does not set is the client's own writing: ignored.
        .header("forwarded", "for=192.0.2.200")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(started_ips(&app).await, ["203.0.113.77"]);
    assert!(stored_ips(&app)
        .await
        .iter()
        .all(|ip| ip.starts_with("pii:v2:")));
}

#[tokio::test]
async fn without_trusted_proxies_forwarding_headers_change_nothing() {
    let app = TestApp::spawn_with(|s| {
        s.ip_rate_per_minute = 1;
        s.ip_rate_burst = 5;
    })
    .await;
    // Three of the five: registration, activation, login.
    app.active_user("direct", "direct@example.com").await;
    assert_eq!(started_ips(&app).await, ["127.0.0.1"]);
    let mut statuses = Vec::new();
    for n in 0..4 {
        statuses.push(forgot_from(&app, &format!("198.51.100.{n}")).await);
    }
    assert_eq!(statuses[..2], [StatusCode::OK, StatusCode::OK]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
}

// MAX_CONNECTIONS: past the cap a new connection is closed at once (old ones stay), and service
// resumes as soon as slots free.
#[tokio::test]
async fn past_max_connections_a_new_one_is_closed_at_once_and_service_resumes() {
    // A long header timeout, so that only the cap can close a connection within the test.
    let app = TestApp::spawn_with(|s| {
        s.max_connections = 20;
        s.header_read_timeout_secs = 600;
    })
    .await;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(partial_head(port).await.unwrap());
    }
    let mut extra = partial_head(port).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(30)).await,
        "a connection past the cap stayed open"
    );
    for stream in &mut held[..3] {
        assert!(!closed_within(stream, Duration::from_secs(1)).await);
    }
    drop(held);
    // A client with no pooled connection, so each try is a new one.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    eventually(|| async {
        fresh
            .get(app.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}
