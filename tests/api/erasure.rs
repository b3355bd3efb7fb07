//! The right to be forgotten (issue #14): personal data sealed at rest and in the published
//! stream under a per-person key, account deletion by the owner and by an operator, and the
//! sealing of events written in clear before.

use crate::helpers::*;
use crate::processes::{env_of, free_port, Proc, ONE_AT_A_TIME};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::process::{Command, Stdio};
use uuid::Uuid;

const WORKER_TOKEN: &str = "worker-token-for-the-erasure-tests-0123456789";

/// One person, with something unique in every field they gave us.
struct Person {
    username: &'static str,
    email: &'static str,
    ip: &'static str,
    user_agent: &'static str,
    profile: [(&'static str, &'static str); 5],
}

const QUILL: Person = Person {
    username: "quillfeather",
    email: "quill.feather@example.com",
    ip: "198.51.100.77",
    user_agent: "QuillBrowser/7.3 (unique-agent-of-quill)",
    profile: [
        ("country", "Quillandia"),
        ("profession", "Feather-scribe"),
        ("bio", "Writes with quills at midnight"),
        ("thoughts", "Ink remembers everything"),
        ("profile_img", "https://img.example/quill-portrait.png"),
    ],
};

impl Person {
    /// Every string of theirs a scan must not find.
    fn traces(&self) -> Vec<&'static str> {
        let mut traces = vec![self.username, self.email, self.ip, self.user_agent];
        traces.extend(self.profile.iter().map(|(_, v)| *v));
        traces
    }
}

/// Sends `request` as the person would: from their address, with their browser.
fn as_person(request: reqwest::RequestBuilder, person: &Person) -> reqwest::RequestBuilder {
    request
        .header("x-forwarded-for", person.ip)
        .header("user-agent", person.user_agent)
}

/// Everything the database holds, as text: every row of every table and view of the service's
/// schemas (the event store, read models, identity and credential tables, mail records, the
/// guessing bound, the analysts' views).
async fn database_text(pool: &PgPool) -> String {
    let relations: Vec<(String, String)> = sqlx::query_as(
        "select table_schema, table_name from information_schema.tables
          where table_schema in ('public', 'analytics') and table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(relations.len() > 20, "{relations:?}");
    let mut text = String::new();
    for (schema, name) in relations {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "select string_agg(t::text, E'\\n') from \"{schema}\".\"{name}\" t"
        ))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{schema}.{name}: {e}"));
        text.push_str(&rows.unwrap_or_default());
        text.push('\n');
    }
    text
}

/// Every message of the app's stream, as text.
async fn stream_text(app: &TestApp) -> String {
    app.stream_messages()
        .await
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_none_of(person: &Person, text: &str, where_: &str) {
    for trace in person.traces() {
        assert!(!text.contains(trace), "{trace:?} found in {where_}");
    }
}

/// An API process on the app's database and stream, logging at debug level to `log`.
async fn logging_api(app: &TestApp, log: &std::path::Path) -> (Proc, String) {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_accounts"));
    command
        .arg("api")
        .envs(env_of(&app.settings))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "debug")
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .env("WORKER_TOKENS", WORKER_TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    let proc = Proc(command.spawn().unwrap());
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually_within(90, || async {
        client
            .get(format!("{address}/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    (proc, address)
}

/// The person registers (in-process API), activates, logs in, fills in their profile, gets a
/// password wrong once and refreshes (through `api`): their id and tokens.
async fn live_a_little(app: &TestApp, api: &str, person: &Person) -> (Uuid, String, String) {
    let client = &app.client;
    let registered = as_person(client.post(app.url("/accounts/api/registration/")), person)
        .json(&json!({"username": person.username, "email": person.email,
            "password": PASSWORD, "confirm_password": PASSWORD,
            "verification_base_url": LINK_BASE}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let link = app.smtp.wait_for(person.email, "Activate").await.link();
    let (uid, token) = link_parts(&link);
    let activated = as_person(
        client.post(format!("{api}/accounts/api/verify/token/{uid}/{token}/")),
        person,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(activated.status(), 200);
    let wrong = as_person(client.post(format!("{api}/accounts/api/login/")), person)
        .json(&json!({"email": person.email, "password": "not the password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let login: Value = as_person(client.post(format!("{api}/accounts/api/login/")), person)
        .json(&json!({"email": person.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = login["access_token"].as_str().unwrap().to_owned();
    let profile: serde_json::Map<String, Value> = person
        .profile
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let updated = as_person(
        client.post(format!("{api}/accounts/api/update/profile/")),
        person,
    )
    .bearer_auth(&access)
    .json(&profile)
    .send()
    .await
    .unwrap();
    assert_eq!(updated.status(), 200);
    let refreshed: Value = as_person(
        client.post(format!("{api}/accounts/api/token/refresh/")),
        person,
    )
    .json(&json!({"refresh_token": login["refresh_token"]}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let refresh = refreshed["refresh_token"].as_str().unwrap().to_owned();
    let user_id = accounts::store::user_by_email(&app.pool, &app.vault(), person.email)
        .await
        .unwrap()
        .unwrap();
    (user_id, access, refresh)
}

async fn open_published(
    app: &TestApp,
    api: &str,
    token: Option<&str>,
    message: &Value,
) -> StatusCode {
    let mut request = app
        .client
        .post(format!("{api}/accounts/internal/events/open/"))
        .json(message);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status()
}

/// The published messages of one account's stream.
async fn published_of(app: &TestApp, user_id: Uuid) -> Vec<Value> {
    app.stream_messages()
        .await
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .filter(|m| m["aggregate_id"] == user_id.to_string())
        .collect()
}

#[tokio::test]
async fn a_deleted_person_leaves_nothing_readable_anywhere_and_their_address_registers_again() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let app = TestApp::spawn_with(|s| {
        s.trusted_proxies = vec!["127.0.0.1/32".into()];
        s.worker_tokens = WORKER_TOKEN.into();
    })
    .await;
    let log = app.settings.data_dir.join("erasure-api.log");
    let (api_process, api) = logging_api(&app, &log).await;
    let (quill_id, access, refresh) = live_a_little(&app, &api, &QUILL).await;
    let eve = "eve.control@example.com";
    app.active_user("evecontrol", eve).await;
    app.wait_for_mailer_idle().await;
    caught_up(&app).await;

    // At rest and on the wire, before any deletion: the events and the stream hold nothing of
    // the person in clear; the read models (what the service answers from) do.
    let events: String = sqlx::query_scalar(
        "select string_agg(payload::text || metadata::text, E'\\n') from events",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_none_of(&QUILL, &events, "the events");
    assert_none_of(&QUILL, &stream_text(&app).await, "the stream");
    assert!(database_text(&app.pool).await.contains(QUILL.email));

    // A trusted worker opens a published event while the person exists; nobody else does.
    let registered = published_of(&app, quill_id)
        .await
        .into_iter()
        .find(|m| m["type"] == "Registered")
        .unwrap();
    assert!(registered["data"]["email"]
        .as_str()
        .unwrap()
        .starts_with("pii:v2:"));
    assert_eq!(registered["metadata"]["subject"], quill_id.to_string());
    assert_eq!(open_published(&app, &api, None, &registered).await, 401);
    assert_eq!(
        open_published(&app, &api, Some(&access), &registered).await,
        401
    );
    let opened: Value = app
        .client
        .post(format!("{api}/accounts/internal/events/open/"))
        .bearer_auth(WORKER_TOKEN)
        .json(&registered)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(opened["data"]["email"], QUILL.email);
    assert_eq!(opened["data"]["username"], QUILL.username);
    assert_eq!(opened["metadata"]["ip"], QUILL.ip);

    let signups_before: i64 =
        sqlx::query_scalar("select coalesce(sum(signups), 0)::bigint from analytics.daily_signups")
            .fetch_one(&app.pool)
            .await
            .unwrap();

    // A wrong password deletes nothing (and counts as a guess); the right one deletes.
    let delete = |password: &'static str| {
        let (client, api, access) = (&app.client, &api, &access);
        async move {
            as_person(
                client.post(format!("{api}/accounts/api/delete/account/")),
                &QUILL,
            )
            .bearer_auth(access)
            .json(&json!({"password": password}))
            .send()
            .await
            .unwrap()
        }
    };
    let refused = json_of(delete("not the password").await, StatusCode::BAD_REQUEST).await;
    assert!(refused["password"].is_array(), "{refused}");
    assert_eq!(
        app.get_authed("/accounts/api/get/profile/", &access)
            .await
            .status(),
        200
    );
    json_of(delete(PASSWORD).await, StatusCode::OK).await;

    // Every session is over, in both processes, and the password opens nothing.
    for base in [app.address.as_str(), api.as_str()] {
        let profile = app
            .client
            .get(format!("{base}/accounts/api/get/profile/"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        assert_eq!(profile.status(), 401, "{base}");
    }
    assert_eq!(app.refresh(&refresh).await.status(), 401);
    assert_eq!(app.login(QUILL.email, PASSWORD).await.status(), 401);
    assert_eq!(delete(PASSWORD).await.status(), 401, "a second deletion");

    // The confirmation went to the address.
    let farewell = app
        .smtp
        .wait_for(QUILL.email, "Your account was deleted")
        .await;
    assert!(farewell.body().contains(QUILL.username));
    app.wait_for_mailer_idle().await;
    caught_up(&app).await;

    // Nothing of the person is left in clear: events, read models, identities, analytics views,
    // mail records, the stream, the log of the process that served them.
    let everything = database_text(&app.pool).await;
    assert_none_of(&QUILL, &everything, "the database");
    assert!(everything.contains(eve), "the scan sees the other person");
    assert_none_of(&QUILL, &stream_text(&app).await, "the stream");
    api_process.kill();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("DEBUG"), "the log is at debug level");
    assert_none_of(&QUILL, &logged, "the log");

    // Nothing opens it any more: the worker is told the person is gone, and the stored events
    // open with the keys the database holds to nothing personal.
    let (_restarted, api) = logging_api(&app, &app.settings.data_dir.join("after.log")).await;
    assert_eq!(
        open_published(&app, &api, Some(WORKER_TOKEN), &registered).await,
        StatusCode::GONE
    );
    let stored = app
        .opened_events(&format!("metadata ->> 'subject' = '{quill_id}'"))
        .await;
    assert!(stored.len() >= 8, "{}", stored.len());
    for event in &stored {
        assert_none_of(
            &QUILL,
            &format!("{}{}", event.payload, event.metadata),
            "an opened event",
        );
    }
    let then = accounts::store::timetravel::user_as_of(
        &app.pool,
        &app.vault(),
        quill_id,
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_none_of(&QUILL, &serde_json::to_string(&then).unwrap(), "user-at");

    // The history and analytics keep anonymous rows: counts stay right.
    let signups_after: i64 =
        sqlx::query_scalar("select coalesce(sum(signups), 0)::bigint from analytics.daily_signups")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(signups_after, signups_before);
    let history: Vec<String> =
        sqlx::query_scalar("select event from user_history where user_id = $1 order by position")
            .bind(quill_id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(history.first().map(String::as_str), Some("registered"));
    assert_eq!(history.last().map(String::as_str), Some("account_deleted"));

    // A rebuild from the events reproduces exactly what deletion left.
    let live = read_models(&app.pool).await;
    rebuild_all(&app).await;
    assert_eq!(read_models(&app.pool).await, live);

    // The address and username are free: a new account, with nothing of the old one.
    assert_eq!(
        app.register(QUILL.username, QUILL.email, PASSWORD)
            .await
            .status(),
        201
    );
    let link = app
        .smtp
        .wait_for_nth(QUILL.email, "Activate", 2)
        .await
        .link();
    assert_eq!(app.activate_link(&link).await.status(), 200);
    let login = json_of(app.login(QUILL.email, PASSWORD).await, StatusCode::OK).await;
    let new_access = login["access_token"].as_str().unwrap().to_owned();
    let dashboard = json_of(
        app.get_authed("/accounts/api/dashboard/", &new_access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dashboard["user"]["email"], QUILL.email, "{dashboard}");
    let profile = json_of(
        app.get_authed("/accounts/api/get/profile/", &new_access)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(profile["bio"], "", "{profile}");
    let new_id = accounts::store::user_by_email(&app.pool, &app.vault(), QUILL.email)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new_id, quill_id);
}

#[tokio::test]
async fn an_operator_deletes_an_account_with_a_reason_on_record() {
    let app = TestApp::spawn().await;
    let email = "support.case@example.com";
    let (access, _) = app.active_user("supportcase", email).await;
    let user_id = accounts::store::user_by_email(&app.pool, &app.vault(), email)
        .await
        .unwrap()
        .unwrap();
    accounts::ops::cli::user_delete(&app.settings, email, "ticket 4711: asked by letter")
        .await
        .unwrap();
    // A second run finds nothing to delete (the address is free now).
    assert!(
        accounts::ops::cli::user_delete(&app.settings, &user_id.to_string(), "again")
            .await
            .is_err()
    );
    app.smtp.wait_for(email, "Your account was deleted").await;
    eventually(|| async {
        app.get_authed("/accounts/api/get/profile/", &access)
            .await
            .status()
            == 401
    })
    .await;
    let (by, reason): (String, String) = sqlx::query_as(
        "select payload -> 'AccountDeleted' ->> 'by', payload -> 'AccountDeleted' ->> 'reason'
           from events where aggregate_id = $1 and event_type = 'AccountDeleted'",
    )
    .bind(user_id.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (by.as_str(), reason.as_str()),
        ("operator", "ticket 4711: asked by letter")
    );
    caught_up(&app).await;
    let details: Value = sqlx::query_scalar(
        "select details from user_history where user_id = $1 and event = 'account_deleted'",
    )
    .bind(user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        details,
        json!({"by": "operator", "reason": "ticket 4711: asked by letter"})
    );
    // The key is a tombstone: no writer, however late, can make the person a new one, and
    // what a stale process still writes for them opens to nothing.
    let (wrapped, deleted_at): (Option<Vec<u8>>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("select wrapped, deleted_at from user_data_key where user_id = $1")
            .bind(user_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(wrapped.is_none() && deleted_at.is_some());
    let vault = app.vault();
    assert!(vault
        .key_for_writing(&app.pool, user_id)
        .await
        .unwrap()
        .is_none());
    let stale = accounts::store::commands::CommandBus::<aggregates::Session>::with_cache_capacity(
        app.pool.clone(),
        app.vault(),
        (),
        0,
    );
    let meta = accounts::api::body::RequestMeta {
        ip: Some("192.0.2.55".into()),
        user_agent: Some("StaleAgent/1.0".into()),
        ..Default::default()
    };
    let late = Uuid::new_v4().to_string();
    stale
        .execute(
            &late,
            aggregates::SessionCommand::RecordFailedLogin {
                user_id,
                now: chrono::Utc::now(),
            },
            &meta,
        )
        .await
        .unwrap();
    let written = app.opened_events(&format!("aggregate_id = '{late}'")).await;
    assert_eq!(written.len(), 1);
    let text = format!("{}", written[0].metadata);
    assert!(
        !text.contains("192.0.2.55") && !text.contains("StaleAgent"),
        "{text}"
    );
    // Another key-encryption key is refused before it reads anything as erased.
    assert!(projections::pii::Vault::new([9; 32])
        .verify(&app.pool)
        .await
        .is_err());
    vault.verify(&app.pool).await.unwrap();
    // The owner's own deletion path refuses a deleted account's token.
    let again = app
        .post_authed(
            "/accounts/api/delete/account/",
            &access,
            &json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(again.status(), 401);
}

#[tokio::test]
async fn a_second_factor_guards_deletion_too() {
    let app = TestApp::spawn().await;
    let email = "guarded.delete@example.com";
    let (access, _) = app.active_user("guardeddelete", email).await;
    let (authenticator, _) = crate::mfa::enable(&app, &access).await;
    // A stolen password with a stolen access token deletes nothing.
    let refused = json_of(
        app.post_authed(
            "/accounts/api/delete/account/",
            &access,
            &json!({"password": PASSWORD}),
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(refused["code"].is_array(), "{refused}");
    assert_eq!(
        app.get_authed("/accounts/api/get/profile/", &access)
            .await
            .status(),
        200
    );
    let deleted = app
        .post_authed(
            "/accounts/api/delete/account/",
            &access,
            &json!({"password": PASSWORD, "code": authenticator.code(1)}),
        )
        .await;
    assert_eq!(deleted.status(), 200);
    // The second factor's secret went with the account.
    let secrets: i64 = sqlx::query_scalar("select count(*) from mfa_totp")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(secrets, 0);
}

#[tokio::test]
async fn events_written_in_clear_are_sealed_by_the_migration_and_still_serve_their_owners() {
    let app = TestApp::spawn().await;
    let hash = accounts::auth::PasswordHasher::new(1, 1, std::time::Duration::from_secs(60), 0)
        .unwrap()
        .hash(&accounts::auth::SecretPassword::from(
            accounts::ops::seed::SEED_PASSWORD,
        ))
        .await
        .unwrap();
    // As a deployment from before crypto-shredding holds them: personal data in clear, the
    // identities unhashed.
    accounts::ops::seed::seed(&app.pool, None, &hash, 40, 30, 7, |_| {})
        .await
        .unwrap();
    let clear = || async {
        let rows: Vec<(Value, Value)> = sqlx::query_as("select payload, metadata from events")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        rows.iter()
            .filter(|(p, m)| projections::pii::holds_clear_personal_data(p, m))
            .count()
    };
    assert!(clear().await > 40);
    caught_up(&app).await;
    let email: String =
        sqlx::query_scalar("select email from profile where is_active order by user_id limit 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let unhashed: i64 = sqlx::query_scalar("select count(*) from user_identities where not hashed")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(unhashed, 80);

    // A person deleted before the migration ran: their events are sealed at the deletion, under
    // the key it destroys.
    let gone: (Uuid, String) = sqlx::query_as(
        "select user_id, email from profile where is_active and email <> $1
          order by user_id desc limit 1",
    )
    .bind(&email)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    accounts::ops::cli::user_delete(&app.settings, &gone.0.to_string(), "asked by phone")
        .await
        .unwrap();
    let theirs: String = sqlx::query_scalar(
        "select string_agg(payload::text || metadata::text, '') from events
          where aggregate_id = $1 or payload -> event_type ->> 'user_id' = $1",
    )
    .bind(gone.0.to_string())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        !theirs.contains(&gone.1),
        "the deleted person's address in clear"
    );
    assert!(
        !theirs.contains("seed/1.0"),
        "the deleted person's user agent in clear"
    );

    accounts::ops::cli::erasure_migrate(&app.settings)
        .await
        .unwrap();
    assert_eq!(clear().await, 0, "every event is sealed");
    let unhashed: i64 = sqlx::query_scalar("select count(*) from user_identities where not hashed")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(unhashed, 0, "every identity is hashed");
    let stored: String = sqlx::query_scalar("select string_agg(payload::text, '') from events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!stored.contains(&email));
    // Resumable and idempotent: a second run seals nothing more.
    let again = accounts::store::erasure::migrate(&app.pool, &app.vault(), |_| {})
        .await
        .unwrap();
    assert_eq!(again.sealed, 0);

    // The sealed events rebuild the same read models, and the owners log in as before.
    caught_up(&app).await;
    let live = read_models(&app.pool).await;
    rebuild_all(&app).await;
    assert_eq!(read_models(&app.pool).await, live);
    json_of(
        app.login(&email, accounts::ops::seed::SEED_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn a_profile_text_typed_to_look_sealed_is_sealed_too_and_reads_back_as_typed() {
    // Before the v2 format, a value that already looked sealed was stored as it came: in clear
    // in the event, and read back as erased ("").
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("mimic", "mimic@example.com").await;
    let bio = "pii:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA my street is Elm 12";
    let thoughts = "pii:v2:this is what I really think";
    json_of(
        app.post_authed(
            "/accounts/api/update/profile/",
            &access,
            &json!({"bio": bio, "thoughts": thoughts}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let profile = json_of(
        app.get_authed("/accounts/api/get/profile/", &access).await,
        StatusCode::OK,
    )
    .await;
    let shown = profile.to_string();
    assert!(shown.contains("my street is Elm 12"), "{shown}");
    assert!(shown.contains("this is what I really think"), "{shown}");
    let stored: String = sqlx::query_scalar(
        "select string_agg(payload::text, '') from events where event_type = 'ProfileUpdated'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(stored.contains("pii:v2:"), "{stored}");
    assert!(!stored.contains("Elm 12"), "{stored}");
    assert!(!stored.contains("really think"), "{stored}");
    // A rebuild from the events shows the same texts.
    caught_up(&app).await;
    let live = read_models(&app.pool).await;
    rebuild_all(&app).await;
    assert_eq!(read_models(&app.pool).await, live);
}
