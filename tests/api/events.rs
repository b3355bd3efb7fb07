//! The event store, the relay and the mailer: exactly-once publishing, mailing once, no secrets.

use crate::helpers::*;
use accounts::Roles;
use async_nats::jetstream::message::PublishMessage;
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashSet;

#[tokio::test]
async fn events_appended_while_no_relay_runs_are_published_once_it_starts() {
    let smtp = SmtpSink::start().await;
    let settings = test_settings(&smtp).await;
    let api_only = TestApp::start(settings.clone(), smtp.clone(), Roles::API).await;
    for name in ["amy", "ben", "cat"] {
        let email = format!("{name}@example.com");
        json_of(
            api_only.register(name, &email, PASSWORD).await,
            StatusCode::CREATED,
        )
        .await;
    }
    let stored = api_only.event_count().await;
    assert_eq!(stored, 6);
    assert!(
        api_only.js.get_stream(&settings.nats_stream).await.is_err(),
        "nothing published yet"
    );
    api_only.stop().await;

    let worker = TestApp::start(settings.clone(), smtp.clone(), Roles::WORKER).await;
    worker.wait_for_relay().await;
    let messages = worker.stream_messages().await;
    assert_eq!(messages.len() as i64, stored);
    let ids: HashSet<String> = messages
        .iter()
        .map(|m| m.headers.get("Nats-Msg-Id").unwrap().to_string())
        .collect();
    assert_eq!(ids.len() as i64, stored, "each event once");
    let expected: HashSet<String> = sqlx::query_scalar(
        "select aggregate_type || ':' || aggregate_id || ':' || sequence from events",
    )
    .fetch_all(&worker.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(ids, expected);
    // Per-stream order is kept: Registered comes before ActivationLinkIssued.
    let subjects: Vec<String> = messages.iter().map(|m| m.subject.to_string()).collect();
    assert!(subjects[0].ends_with(".user.Registered"), "{subjects:?}");
    assert!(
        subjects[1].ends_with(".user.ActivationLinkIssued"),
        "{subjects:?}"
    );

    // The worker's mailer sends the three activation mails, once each.
    worker.wait_for_mailer_idle().await;
    for name in ["amy", "ben", "cat"] {
        assert_eq!(smtp.to(&format!("{name}@example.com")).len(), 1);
    }
    // Restarting the relay publishes nothing again.
    worker.stop().await;
    let again = TestApp::start(settings.clone(), smtp, Roles::WORKER).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(again.stream_messages().await.len() as i64, stored);
    again.stop().await;
    remove_resources(settings).await;
}

#[tokio::test]
async fn a_message_delivered_twice_to_the_mailer_is_mailed_once() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("dan", "dan@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    app.smtp.wait_for("dan@example.com", "Activate").await;
    app.wait_for_mailer_idle().await;

    // Publish the activation event again under another message id, so JetStream keeps it and
    // the mailer receives the same event a second time.
    let original = app
        .stream_messages()
        .await
        .into_iter()
        .find(|m| m.subject.ends_with(".ActivationLinkIssued"))
        .unwrap();
    app.js
        .send_publish(
            original.subject.to_string(),
            PublishMessage::build()
                .payload(original.payload.clone())
                .message_id("a redelivery"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    app.wait_for_mailer_idle().await;
    assert_eq!(app.smtp.to("dan@example.com").len(), 1);
    let recorded: i64 = sqlx::query_scalar("select count(*) from mail_sent where status = 'sent'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn no_password_hash_or_token_reaches_the_stream_or_the_event_store() {
    let app = TestApp::spawn().await;
    let email = "eve@example.com";
    let (access, refresh) = app.active_user("eve", email).await;
    let activation = app.smtp.wait_for(email, "Activate").await.link();
    json_of(
        app.change_password(&access, PASSWORD, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let reset = app.smtp.wait_for(email, "Reset your password").await.link();
    app.wait_for_mailer_idle().await;

    let hashes: Vec<String> = sqlx::query_scalar("select password_hash from credential")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        NEW_PASSWORD.into(),
        access,
        refresh,
        link_parts(&activation).1,
        link_parts(&reset).1,
        "argon2".into(),
    ];
    secrets.extend(hashes);

    let events: Vec<Value> = sqlx::query_scalar(
        "select jsonb_build_object('payload', payload, 'metadata', metadata) from events",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let stored = serde_json::to_string(&events).unwrap();
    let published: String = app
        .stream_messages()
        .await
        .iter()
        .map(|m| format!("{:?} {}", m.headers, String::from_utf8_lossy(&m.payload)))
        .collect();
    assert!(published.contains("PasswordChanged"));
    for secret in &secrets {
        assert!(
            !stored.contains(secret.as_str()),
            "the event store holds a secret"
        );
        assert!(
            !published.contains(secret.as_str()),
            "a published message holds a secret"
        );
    }
}

#[tokio::test]
async fn a_login_stored_in_the_old_1_0_shape_still_loads_projects_and_publishes_as_2_0() {
    let app = TestApp::spawn().await;
    app.active_user("olden", "olden@example.com").await;
    let user_id = accounts::store::user_by_email(&app.pool, &app.vault(), "olden@example.com")
        .await
        .unwrap()
        .unwrap();
    // A session as the 1.0 code stored it: no `method`.
    let session_id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    let old = serde_json::json!({"Started": {
        "session_id": session_id, "user_id": user_id, "token_epoch": 0,
        "expires_at": now + chrono::Duration::days(7), "started_at": now,
    }});
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         values ('Session', $1, 1, 'Started', '1.0', $2, '{}')",
    )
    .bind(session_id.to_string())
    .bind(&old)
    .execute(&app.pool)
    .await
    .unwrap();

    // The command path loads it (through the upcaster) and rotates its refresh token.
    let key = std::fs::read_to_string(app.settings.link_key_file()).unwrap();
    let links =
        accounts::auth::LinkSigner::load_or_generate(&app.settings.link_key_file()).unwrap();
    assert!(!key.is_empty());
    let token = links.refresh_token(session_id, 0);
    json_of(app.refresh(&token).await, StatusCode::OK).await;

    // The relay publishes it in the current shape.
    app.wait_for_relay().await;
    let message = app
        .stream_messages()
        .await
        .into_iter()
        .find(|m| {
            m.headers.get("Nats-Msg-Id").map(|v| v.to_string())
                == Some(format!("Session:{session_id}:1"))
        })
        .unwrap();
    assert_eq!(
        message
            .headers
            .get("Accounts-Event-Version")
            .unwrap()
            .to_string(),
        "2.0"
    );
    let body: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(body["version"], "2.0");
    assert_eq!(body["data"]["method"], "password", "{body}");

    // And the projectors read it: the login is in the history and sets last_login.
    eventually(|| async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from user_history where user_id = $1 and event = 'logged_in'
               and details ->> 'session_id' = $2",
        )
        .bind(user_id)
        .bind(session_id.to_string())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        n == 1
    })
    .await;
}

#[tokio::test]
async fn the_example_consumer_replays_the_stream_from_the_start() {
    let app = TestApp::spawn().await;
    json_of(
        app.register("ex", "ex@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    app.wait_for_relay().await;
    let example = example_binary();
    let args = example_args(&app, "example-test", &["--idle-exit-secs", "2"]);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(example).args(args).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" Registered v1.0 "), "{stdout}");
    assert!(stdout.contains(" ActivationLinkIssued v1.0 "), "{stdout}");
    assert!(stdout.contains("handled 2 messages"), "{stdout}");
}

#[tokio::test]
async fn the_example_consumer_opens_what_it_may_and_forgets_a_deleted_person() {
    let app = TestApp::spawn_with(|s| s.worker_tokens = WORKER_TOKEN.into()).await;
    let (access, _) = app.active_user("leaving", "leaving@example.com").await;
    app.active_user("staying", "staying@example.com").await;
    let deleted = app
        .post_authed(
            "/accounts/api/delete/account/",
            &access,
            &serde_json::json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);
    app.wait_for_relay().await;
    let total = app.event_count().await;
    let example = example_binary();
    let args = example_args(
        &app,
        "example-opening",
        &[
            "--idle-exit-secs",
            "2",
            "--open-url",
            &app.address,
            "--worker-token",
            WORKER_TOKEN,
        ],
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(example).args(args).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("handled {total} messages")),
        "{stdout}"
    );
    assert!(stdout.contains("staying@example.com"), "{stdout}");
    assert!(!stdout.contains("leaving@example.com"), "{stdout}");
    assert!(stdout.contains(" AccountDeleted v1.0 "), "{stdout}");
    assert!(stdout.lines().any(|l| l.ends_with(" erased")), "{stdout}");
    assert!(stderr.contains("account deleted"), "{stderr}");
}

/// The arguments both example consumers take: `app`'s NATS, stream and every subject, the durable
/// consumer `durable`, then `extra`.
fn example_args(app: &TestApp, durable: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--nats-url".to_owned(),
        app.settings.nats_url.clone(),
        "--stream".to_owned(),
        app.settings.nats_stream.clone(),
        "--subject".to_owned(),
        format!("{}.>", app.settings.nats_subject_prefix),
        "--durable".to_owned(),
        durable.to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// The example consumer's binary, built if `cargo test` was run with a target filter.
fn example_binary() -> std::path::PathBuf {
    // `cargo test` builds the examples next to the test binaries' folder.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/consumer");
    if !example.exists() {
        // Only `cargo test` without a target filter builds the examples.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "--example", "consumer"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(built.success());
    }
    assert!(example.exists(), "{} was not built", example.display());
    example
}

/// A worker died with messages in flight: their redelivery comes after later events of the same
/// aggregates. The example consumer still handles each aggregate's events in sequence order,
/// each once.
#[tokio::test]
async fn after_a_worker_died_mid_batch_the_example_keeps_per_aggregate_order() {
    let app = TestApp::spawn().await;
    for n in 0..4 {
        app.active_user(&format!("order{n}"), &format!("order{n}@example.com"))
            .await;
    }
    app.wait_for_relay().await;
    let total = app.event_count().await as usize;
    let stream = app.js.get_stream(&app.settings.nats_stream).await.unwrap();
    let config = async_nats::jetstream::consumer::pull::Config {
        durable_name: Some("order-test".into()),
        filter_subject: format!("{}.>", app.settings.nats_subject_prefix),
        deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        ack_wait: std::time::Duration::from_secs(2),
        max_ack_pending: 256,
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer("order-test", config)
        .await
        .unwrap();
    // The worker that dies: takes the first messages and never acknowledges them.
    let mut batch = consumer.fetch().max_messages(6).messages().await.unwrap();
    let mut taken = 0;
    while let Some(message) = futures::StreamExt::next(&mut batch).await {
        message.unwrap();
        taken += 1;
    }
    assert_eq!(taken, 6);

    let args = example_args(
        &app,
        "order-test",
        &["--ack-wait-secs", "2", "--idle-exit-secs", "5"],
    );
    let example = example_binary();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(example).args(args).output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let mut per_aggregate: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for line in stdout.lines().filter(|l| l.contains(" v")) {
        let id = line.split(' ').next().unwrap();
        let (aggregate, sequence) = id.rsplit_once(':').unwrap();
        per_aggregate
            .entry(aggregate.to_owned())
            .or_default()
            .push(sequence.parse().unwrap());
    }
    let handled: usize = per_aggregate.values().map(Vec::len).sum();
    assert_eq!(handled, total, "{stdout}");
    for (aggregate, sequences) in per_aggregate {
        let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
        assert_eq!(sequences, expected, "{aggregate} out of order:\n{stdout}");
    }
}

/// A Python with nats-py and jsonschema for the Python example (pinned, made once per machine).
fn python_for_examples() -> std::path::PathBuf {
    crate::helpers::python_venv(
        "accounts-examples-venv-1",
        &["nats-py==2.16.0", "jsonschema==4.26.0"],
    )
    .join("bin/python")
}

/// Every event type a worker can receive, through the Python example: replayed from the start,
/// each once, and each `data` valid against its published JSON Schema (docs/schemas).
#[tokio::test]
async fn the_python_example_replays_every_event_type_and_each_matches_its_schema() {
    let app = TestApp::spawn_with(|s| {
        s.refresh_reuse_grace = 0;
        s.worker_tokens = WORKER_TOKEN.into();
    })
    .await;
    let email = "py@example.com";
    let (access, refresh) = app.active_user("py", email).await;
    // Someone who stays: their data opens for a worker with a token.
    app.active_user("keptalive", "kept.alive@example.com").await;
    let activation = app
        .smtp
        .wait_for(email, "Activate your account")
        .await
        .link();
    app.activate_link(&activation).await; // used again: ActivationRefused
    app.register("py2", email, PASSWORD).await; // DuplicateRegistrationAttempted
    app.register("pending", "pending@example.com", PASSWORD)
        .await;
    app.login("pending@example.com", PASSWORD).await; // not activated: LoginRefused
    app.login(email, "not the password").await; // LoginFailed
    app.post_authed(
        "/accounts/api/update/profile/",
        &access,
        &serde_json::json!({"bio": "from python", "country": "Peru"}),
    )
    .await;
    let rotated = json_of(app.refresh(&refresh).await, StatusCode::OK).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.refresh(&refresh).await; // a spent token again: Revoked
    let second = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    app.post(
        "/accounts/api/logout/",
        &serde_json::json!({"refresh_token": second["refresh_token"]}),
    )
    .await; // LoggedOut
    let third = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    json_of(
        app.change_password(
            third["access_token"].as_str().unwrap(),
            PASSWORD,
            NEW_PASSWORD,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    json_of(app.forgot_password(email).await, StatusCode::OK).await;
    let link = app.smtp.wait_for(email, "Reset your password").await.link();
    json_of(
        app.set_new_password(&link, "a third passphrase for py")
            .await,
        StatusCode::OK,
    )
    .await;
    drop(rotated);
    // Second factors: set up and confirmed (TotpSetupStarted, TotpEnabled,
    // RecoveryCodesGenerated), a login's challenge (SecondFactorRequired) with a wrong code
    // (SecondFactorFailed) and a recovery code (RecoveryCodeUsed), then turned off (TotpDisabled).
    let third_password = "a third passphrase for py";
    let fourth = json_of(app.login(email, third_password).await, StatusCode::OK).await;
    let access = fourth["access_token"].as_str().unwrap().to_owned();
    let (authenticator, codes) = crate::mfa::enable_with(&app, &access, third_password).await;
    let token = crate::mfa::challenge(&app, email, third_password).await;
    let wrong = crate::mfa::second_step(&app, &token, &authenticator.wrong_code()).await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let done = json_of(
        crate::mfa::second_step(&app, &token, &codes[0]).await,
        StatusCode::OK,
    )
    .await;
    let off = app
        .post_authed(
            "/accounts/api/mfa/totp/disable/",
            done["access_token"].as_str().unwrap(),
            &serde_json::json!({"password": third_password, "code": codes[1]}),
        )
        .await;
    assert_eq!(off.status(), StatusCode::OK);
    // A passkey registered and removed (PasskeyRegistered, PasskeyRemoved); its first-factor
    // recovery codes come in RecoveryCodesGenerated again.
    let fifth = json_of(app.login(email, third_password).await, StatusCode::OK).await;
    let access = fifth["access_token"].as_str().unwrap().to_owned();
    let start = json_of(
        app.post_authed(
            "/accounts/api/passkeys/register/start/",
            &access,
            &serde_json::json!({"password": third_password}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mut passkey = crate::helpers::passkey::SoftPasskey::new();
    let credential = passkey.register(&start["options"], "http://localhost:3000");
    let registered = json_of(
        app.post_authed(
            "/accounts/api/passkeys/register/finish/",
            &access,
            &serde_json::json!({"ceremony_id": start["ceremony_id"], "credential": credential}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let removed = app
        .post_authed(
            &format!(
                "/accounts/api/passkeys/{}/remove/",
                registered["passkey_id"].as_str().unwrap()
            ),
            &access,
            &serde_json::json!({"password": third_password,
                                "code": registered["recovery_codes"][0]}),
        )
        .await;
    assert_eq!(removed.status(), StatusCode::OK);
    // The account deleted (AccountDeleted): its data key is gone.
    let deleted = app
        .post_authed(
            "/accounts/api/delete/account/",
            &access,
            &serde_json::json!({"password": third_password}),
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);
    app.wait_for_relay().await;
    let total = app.event_count().await as usize;
    let python = tokio::task::spawn_blocking(python_for_examples)
        .await
        .unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new(python);
    command
        .arg(root.join("examples/consumer.py"))
        .args(example_args(
            &app,
            "python-example",
            &["--idle-exit-secs", "3"],
        ))
        .arg("--schemas")
        .arg(root.join("docs/schemas"));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("handled {total} messages")),
        "{stdout}"
    );
    let types: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|t| *t != "again" && *t != "messages")
        .collect();
    // Every event type with a published schema came through (and was validated against it).
    let mut published = Vec::new();
    for aggregate in std::fs::read_dir(root.join("docs/schemas")).unwrap() {
        for schema in std::fs::read_dir(aggregate.unwrap().path()).unwrap() {
            let path = schema.unwrap().path();
            published.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(published.len() >= 25, "{published:?}");
    for expected in &published {
        assert!(types.contains(expected.as_str()), "no {expected}: {stdout}");
    }
    // Without a worker token the example sees personal data only sealed.
    assert!(!stdout.contains("kept.alive@example.com"), "{stdout}");
    assert!(stdout.contains("pii:v2:"), "{stdout}");

    // With one, it opens what belongs to people who exist, and is told who was deleted.
    let mut command = std::process::Command::new(python_for_examples());
    command
        .arg(root.join("examples/consumer.py"))
        .args(example_args(
            &app,
            "python-example-opening",
            &["--idle-exit-secs", "3", "--open-url", &app.address],
        ))
        .arg("--schemas")
        .arg(root.join("docs/schemas"))
        .env("WORKER_TOKEN", WORKER_TOKEN);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let opened = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{opened}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        opened.contains(&format!("handled {total} messages")),
        "{opened}"
    );
    assert!(opened.contains("kept.alive@example.com"), "{opened}");
    assert!(
        !opened.contains(email),
        "the deleted person's address: {opened}"
    );
    let erased = opened.lines().filter(|l| l.ends_with(" erased")).count();
    assert!(erased >= 10, "{erased} erased lines: {opened}");
}

const WORKER_TOKEN: &str = "a-worker-token-for-the-example-consumers-test";

/// The readers' batches commit without waiting for the disk (`reader::batch_settings`): a crash
/// of Postgres can lose the relay's last checkpoint moves after their messages went out. What
/// that leaves is played here (the checkpoint back at the start, the stream as it was), and the
/// relay publishes everything again: the stream still holds each event once, and nobody is
/// mailed twice.
#[tokio::test]
async fn a_relay_checkpoint_lost_after_publishing_publishes_nothing_twice() {
    let app = TestApp::spawn().await;
    for name in ["ida", "jon"] {
        app.active_user(name, &format!("{name}@example.com")).await;
    }
    app.wait_for_mailer_idle().await;
    let published = app.stream_messages().await.len();
    let mails = app.smtp.all().len();
    assert_eq!(published as i64, app.event_count().await);
    assert_eq!(mails, 2, "one activation mail each");

    sqlx::query(
        "update reader_checkpoint set transaction_id = '0', position = 0 where name = 'relay'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("select pg_notify('events_appended', '')")
        .execute(&app.pool)
        .await
        .unwrap();
    eventually(|| async {
        projections::rebuild::status(&app.pool)
            .await
            .unwrap()
            .iter()
            .any(|r| r.name == "relay" && r.behind == 0)
    })
    .await;
    app.wait_for_mailer_idle().await;
    assert_eq!(app.stream_messages().await.len(), published);
    assert_eq!(app.smtp.all().len(), mails);
    app.stop().await;
}

/// A reader's batch, spied on from inside: what its transaction's commit waits for.
struct CommitSpy {
    target: projections::runner::Target,
    vault: projections::pii::Vault,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl projections::Projector for CommitSpy {
    fn target(&self) -> &projections::runner::Target {
        &self.target
    }

    fn vault(&self) -> &projections::pii::Vault {
        &self.vault
    }

    fn opens(&self) -> projections::reader::Opens {
        projections::reader::Opens::Nothing
    }

    fn retarget(
        &self,
        target: projections::runner::Target,
    ) -> std::sync::Arc<dyn projections::Projector> {
        std::sync::Arc::new(CommitSpy {
            target,
            vault: self.vault.clone(),
            seen: self.seen.clone(),
        })
    }

    async fn apply_batch(
        &self,
        conn: &mut sqlx::PgConnection,
        _events: &[projections::StoredEvent],
    ) -> anyhow::Result<()> {
        let setting = sqlx::query_scalar("select current_setting('synchronous_commit')")
            .fetch_one(conn)
            .await?;
        self.seen.lock().unwrap().push(setting);
        Ok(())
    }
}

/// A reader's batch does not wait for the disk, through each way a batch begins (a request's
/// catch-up looks first; a woken reader does not; the projectors' group), and that stays inside
/// the batch: the next statement on the same pooled connection, an append's say, waits again.
#[tokio::test]
async fn a_batch_commits_without_waiting_for_the_disk_and_the_next_statement_waits_again() {
    use projections::runner::{run_batch, run_batch_of, run_group_batch, Look, Target};
    let app = TestApp::spawn().await;
    app.register("kim", "kim@example.com", PASSWORD).await;
    // One connection: every statement below runs on the one the batches used.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&app.settings.database_url)
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let spy = |name: &str| -> std::sync::Arc<dyn projections::Projector> {
        std::sync::Arc::new(CommitSpy {
            target: Target::new(name, "unused"),
            vault: app.vault(),
            seen: seen.clone(),
        })
    };
    let synchronous_commit = || async {
        sqlx::query_scalar::<_, String>("show synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(synchronous_commit().await, "on");
    assert!(run_batch(&pool, spy("spy_looks").as_ref()).await.unwrap() > 0);
    assert_eq!(synchronous_commit().await, "on");
    let woken = spy("spy_woken");
    assert!(
        run_batch_of(&pool, woken.as_ref(), Look::Skip, 500)
            .await
            .unwrap()
            > 0
    );
    assert_eq!(synchronous_commit().await, "on");
    assert!(
        run_group_batch(&pool, &[spy("spy_a"), spy("spy_b")], Look::Skip, 500)
            .await
            .unwrap()
            > 0
    );
    assert_eq!(synchronous_commit().await, "on");
    assert_eq!(*seen.lock().unwrap(), ["off", "off", "off", "off"]);
    app.stop().await;
}
