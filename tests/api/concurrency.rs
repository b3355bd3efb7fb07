//! Uniqueness under concurrent registrations: decided in the append transaction.

use crate::helpers::*;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_email_make_one_account_and_twenty_identical_201s() {
    let app = TestApp::spawn().await;
    let responses = join_all((0..20).map(|i| {
        let app = &app;
        async move {
            let response = app
                .register("frank", "frank@example.com", &format!("{PASSWORD} {i}"))
                .await;
            (response.status(), response.json::<Value>().await.unwrap())
        }
    }))
    .await;
    let (first_status, first_body) = &responses[0];
    assert_eq!(*first_status, 201);
    for (status, body) in &responses {
        assert_eq!((status, body), (first_status, first_body));
    }
    assert_eq!(app.count_events("Registered").await, 1);
    let accounts: i64 = sqlx::query_scalar(
        "select count(distinct user_id) from user_identities where kind = 'email'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(accounts, 1);
}

#[tokio::test]
async fn twenty_concurrent_registrations_of_one_username_make_one_account_and_nineteen_400s() {
    let app = TestApp::spawn().await;
    let statuses = join_all((0..20).map(|i| {
        let app = &app;
        async move {
            app.register("grace", &format!("grace{i}@example.com"), PASSWORD)
                .await
                .status()
        }
    }))
    .await;
    assert_eq!(statuses.iter().filter(|s| s.as_u16() == 201).count(), 1);
    assert_eq!(statuses.iter().filter(|s| s.as_u16() == 400).count(), 19);
    assert_eq!(app.count_events("Registered").await, 1);
}

/// Two command buses on one database behave as two processes, each with its own aggregate cache
/// of `capacity` entries (0: none).
fn session_buses(
    app: &TestApp,
    capacity: usize,
) -> [accounts::store::commands::CommandBus<aggregates::Session>; 2] {
    [
        accounts::store::commands::CommandBus::with_cache_capacity(
            app.pool.clone(),
            app.vault(),
            (),
            capacity,
        ),
        accounts::store::commands::CommandBus::with_cache_capacity(
            app.pool.clone(),
            app.vault(),
            (),
            capacity,
        ),
    ]
}

fn refresh(generation: u32) -> aggregates::session::SessionCommand {
    aggregates::session::SessionCommand::Refresh {
        generation,
        current_epoch: 0,
        ttl: chrono::Duration::hours(1),
        grace: chrono::Duration::seconds(30),
        now: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_process_with_a_stale_cached_session_decides_on_what_is_stored() {
    let app = TestApp::spawn().await;
    stale_session_case(&app, accounts::store::commands::DEFAULT_CACHE_CAPACITY).await;
    // The same story with the cache off (AGGREGATE_CACHE_SIZE=0): every command reads first.
    stale_session_case(&app, 0).await;
}

async fn stale_session_case(app: &TestApp, capacity: usize) {
    use aggregates::session::{SessionCommand, SessionError};
    use cqrs_es::AggregateError;
    let meta = accounts::api::body::RequestMeta::default();
    let [here, there] = session_buses(app, capacity);
    let session_id = uuid::Uuid::new_v4();
    let id = session_id.to_string();
    let start = SessionCommand::Start {
        session_id,
        user_id: uuid::Uuid::new_v4(),
        token_epoch: 0,
        method: aggregates::session::LoginMethod::Password,
        second_factor: None,
        ttl: chrono::Duration::hours(1),
        now: chrono::Utc::now(),
    };
    // `here` caches the session at generation 0; `there` rotates it to generation 1.
    here.execute(&id, start, &meta).await.unwrap();
    there.execute(&id, refresh(0), &meta).await.unwrap();

    // Generation 1 is not valid on the cached state: the refusal is checked against the store,
    // and the command is decided again on the stored state.
    let done = here.execute(&id, refresh(1), &meta).await.unwrap();
    assert_eq!(done.state.generation, 2);
    assert_eq!(done.last_sequence(), Some(3));

    // `there` logs out; `here` still caches a live session at generation 2. Its commit of a
    // rotation conflicts with the logout, and decided again the rotation is refused: a
    // logged-out chain never comes back through a stale cache.
    there
        .execute(
            &id,
            SessionCommand::Logout {
                now: chrono::Utc::now(),
            },
            &meta,
        )
        .await
        .unwrap();
    let refused = here.execute(&id, refresh(2), &meta).await;
    assert!(
        matches!(
            refused,
            Err(AggregateError::UserError(SessionError::InvalidToken))
        ),
        "a logged-out session was refreshed"
    );
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "select sequence, event_type from events where aggregate_id = $1 order by sequence",
    )
    .bind(&id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let types: Vec<&str> = stored.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(types, ["Started", "Refreshed", "Refreshed", "LoggedOut"]);
    assert_eq!(
        stored.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Both caches now hold exactly what a fresh process would load.
    let (fresh, sequence) = here.load_uncached(&id).await.unwrap();
    assert_eq!(sequence, 4);
    assert!(fresh.ended);
    assert_eq!(here.load(&id).await.unwrap(), fresh);
    assert_eq!(there.load(&id).await.unwrap(), fresh);
}

#[tokio::test]
async fn a_login_through_another_process_sees_a_password_changed_through_this_one() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("mover", "mover@example.com").await;
    // A second API process on the same database, whose cache now holds the user.
    let other = TestApp::start(
        app.settings.clone(),
        SmtpSink::start().await,
        accounts::Roles::API,
    )
    .await;
    json_of(
        other.login("mover@example.com", PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let new_password = "a different passphrase for mover 42";
    json_of(
        app.change_password(&access, PASSWORD, new_password).await,
        StatusCode::OK,
    )
    .await;
    json_of(
        other.login("mover@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    json_of(
        other.login("mover@example.com", new_password).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn concurrent_logins_each_see_their_own_login_on_the_dashboard_at_once() {
    let app = TestApp::spawn().await;
    for i in 0..8 {
        app.active_user(&format!("crowd{i}"), &format!("crowd{i}@example.com"))
            .await;
    }
    let dashboards = join_all((0..8).map(|i| {
        let app = &app;
        async move {
            let login = json_of(
                app.login(&format!("crowd{i}@example.com"), PASSWORD).await,
                StatusCode::OK,
            )
            .await;
            let token = login["access_token"].as_str().unwrap().to_owned();
            json_of(
                app.get_authed("/accounts/api/dashboard/", &token).await,
                StatusCode::OK,
            )
            .await
        }
    }))
    .await;
    for dash in dashboards {
        let logins = dash["recent_history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["event"] == "logged_in")
            .count();
        // One from `active_user`, one from this round: both shown the moment the login answered.
        assert_eq!(logins, 2, "{dash}");
    }
}

/// A login no longer waits for the read models; the caller's first read does, only if they are
/// behind. With no background projector anywhere, every read below can show the caller's own
/// writes only through that read path, in this process and in a second API process alike.
#[tokio::test]
async fn a_caller_reads_its_own_login_profile_update_and_password_change_at_once_everywhere() {
    let app = TestApp::spawn_with(|s| s.run_projectors = false).await;
    let email = "reader@example.com";
    assert_eq!(app.register("reader", email, PASSWORD).await.status(), 201);
    let mail = app.smtp.wait_for(email, "Activate your account").await;
    assert_eq!(app.activate_link(&mail.link()).await.status(), 200);
    let other = TestApp::start(
        app.settings.clone(),
        SmtpSink::start().await,
        accounts::Roles::API,
    )
    .await;
    for (round, api) in [&app, &other, &app, &other].into_iter().enumerate() {
        let before = chrono::Utc::now();
        let login = json_of(api.login(email, PASSWORD).await, StatusCode::OK).await;
        let access = login["access_token"].as_str().unwrap().to_owned();
        // Read through the *other* process than the one that logged in, every second round.
        let reader = if round % 2 == 0 { &other } else { &app };
        let dashboard = json_of(
            reader.get_authed("/accounts/api/dashboard/", &access).await,
            StatusCode::OK,
        )
        .await;
        let last_login: chrono::DateTime<chrono::Utc> = dashboard["user"]["last_login"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            last_login >= before - chrono::Duration::milliseconds(1),
            "round {round}"
        );
        assert_eq!(
            dashboard["recent_history"][0]["event"], "logged_in",
            "round {round}"
        );
        let history = json_of(
            reader.get_authed("/accounts/api/history/", &access).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(history["results"][0]["event"], "logged_in", "round {round}");

        let bio = format!("bio of round {round}");
        let updated = json_of(
            api.post_authed(
                "/accounts/api/update/profile/",
                &access,
                &serde_json::json!({ "bio": bio }),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(updated["bio"], bio.as_str());
        let profile = json_of(
            reader
                .get_authed("/accounts/api/get/profile/", &access)
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(profile["bio"], bio.as_str());
    }
    // A password change through one process is in force at once through the other.
    let login = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let access = login["access_token"].as_str().unwrap().to_owned();
    json_of(
        app.change_password(&access, PASSWORD, NEW_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        other
            .get_authed("/accounts/api/dashboard/", &access)
            .await
            .status(),
        401
    );
    let login = json_of(other.login(email, NEW_PASSWORD).await, StatusCode::OK).await;
    let access = login["access_token"].as_str().unwrap().to_owned();
    let history = json_of(
        app.get_authed("/accounts/api/history/", &access).await,
        StatusCode::OK,
    )
    .await;
    let events: Vec<&str> = history["results"]
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["logged_in", "password_changed"]);
}

/// A rebuild's swap (`accounts projections rebuild`) holds the live read models' checkpoints in
/// an open transaction while it catches its copy up, which can take longer than a request
/// waits for its own write to show. Readers read only below the oldest open transaction, so
/// the requests' catch-ups find nothing to apply and never queue on the swap's lock: through
/// three rounds of profile updates, each outlasting the read-your-writes wait, on the default
/// pool, every update and every read is answered, no more than the background projectors' one
/// connection waits on the lock in Postgres, the service keeps within its pool's count of
/// backends, and once the swap ends every owner's last update shows.
#[tokio::test]
async fn writes_during_a_long_rebuild_swap_are_answered_and_shown_after_it() {
    use sqlx::Connection;
    let app = TestApp::spawn().await;
    let mut tokens = vec![];
    for i in 0..6 {
        let (access, _) = app
            .active_user(&format!("swap{i}"), &format!("swap{i}@example.com"))
            .await;
        tokens.push(access);
    }
    // Every token's login shown, so that the reads below need no catch-up of their own.
    for token in &tokens {
        json_of(
            app.get_authed("/accounts/api/dashboard/", token).await,
            StatusCode::OK,
        )
        .await;
    }
    caught_up(&app).await;
    // What the swap holds: every live checkpoint, on a connection of its own.
    let mut swap = sqlx::PgConnection::connect(&app.settings.database_url)
        .await
        .unwrap();
    let mut held = swap.begin().await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "select name from reader_checkpoint
          where name = any(array['profile', 'history', 'activity']) for update",
    )
    .fetch_all(&mut *held)
    .await
    .unwrap();
    assert_eq!(names.len(), 3);
    for round in 0..3 {
        let statuses = join_all(tokens.iter().map(|token| {
            let app = &app;
            async move {
                let update = app
                    .post_authed(
                        "/accounts/api/update/profile/",
                        token,
                        &serde_json::json!({ "bio": format!("round {round}") }),
                    )
                    .await
                    .status();
                let read = app
                    .get_authed("/accounts/api/get/profile/", token)
                    .await
                    .status();
                (update, read)
            }
        }))
        .await;
        for status in statuses {
            assert_eq!(status, (StatusCode::OK, StatusCode::OK), "round {round}");
        }
        let (backends, waiting): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where wait_event_type = 'Lock')
               from pg_stat_activity
              where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *held)
        .await
        .unwrap();
        assert!(
            waiting <= 1,
            "round {round}: {waiting} backends wait on the swap"
        );
        assert!(
            backends <= i64::from(app.settings.db_connections()),
            "round {round}: {backends} backends for a pool of {}",
            app.settings.db_connections()
        );
    }
    held.rollback().await.unwrap();
    eventually(|| async {
        let mut shown = 0;
        for token in &tokens {
            let profile = json_of(
                app.get_authed("/accounts/api/get/profile/", token).await,
                StatusCode::OK,
            )
            .await;
            shown += usize::from(profile["bio"] == "round 2");
        }
        shown == tokens.len()
    })
    .await;
}
