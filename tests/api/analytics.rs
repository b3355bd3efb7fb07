//! The analysts' interface: documented queries, the read-only role, rebuilds, time travel, seed.

use crate::helpers::*;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{PgPool, Row};

/// The ```sql blocks of docs/ANALYTICS.md.
fn documented_queries() -> Vec<String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ANALYTICS.md")).unwrap();
    doc.split("```sql")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().trim().to_owned())
        .collect()
}

/// A transaction in the role `<database><suffix>` (`_analyst` or `_analyst_pseudonymous`).
async fn begin_as<'p>(pool: &'p PgPool, suffix: &str) -> sqlx::Transaction<'p, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("select set_config('role', current_database() || $1, true)")
        .bind(suffix)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// Runs `sql` as the analyst role; `Err` with the database's message if refused.
async fn as_analyst(pool: &PgPool, sql: &str) -> Result<usize, String> {
    let mut tx = begin_as(pool, "_analyst").await;
    let result = sqlx::query(sql).fetch_all(&mut *tx).await;
    tx.rollback().await.unwrap();
    result.map(|rows| rows.len()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_documented_query_runs_as_the_analyst() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("alice", "alice@example.com").await;
    app.post_authed(
        "/accounts/api/update/profile/",
        &access,
        &json!({"country": "Nepal", "bio": "hi"}),
    )
    .await;
    app.login("alice@example.com", "a wrong password").await;
    json_of(
        app.register("pending", "pending@example.com", PASSWORD)
            .await,
        StatusCode::CREATED,
    )
    .await;
    let queries = documented_queries();
    assert!(queries.len() >= 8, "{} queries", queries.len());
    for sql in &queries {
        as_analyst(&app.pool, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}\n{e}"));
    }
    // And they say what happened (registration and failed logins reach the models shortly).
    eventually(|| async {
        let funnel =
            "select coalesce(sum(registered), 0)::int as r, coalesce(sum(activated), 0)::int as a
                        from analytics.activation_funnel";
        let failed = "select coalesce(sum(failed_logins), 0)::int as f from analytics.daily_logins";
        let mut tx = begin_as(&app.pool, "_analyst").await;
        let row = sqlx::query(funnel).fetch_one(&mut *tx).await.unwrap();
        let f: i32 = sqlx::query_scalar(failed)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        (row.get::<i32, _>("r"), row.get::<i32, _>("a"), f) == (2, 1, 1)
    })
    .await;
}

#[tokio::test]
async fn the_analyst_is_refused_everything_outside_the_analytics_schema() {
    let app = TestApp::spawn().await;
    app.active_user("carol", "carol@example.com").await;
    for sql in [
        "select * from events",
        "select * from public.user_identities",
        "select password_hash from credential",
        "select * from profile",
        "select * from user_history",
        "select * from login_guard",
        "select * from login_familiar_source",
        "select * from mail_sent",
        "select * from reader_checkpoint",
        "insert into analytics.users (user_id) values (gen_random_uuid())",
    ] {
        let refused = as_analyst(&app.pool, sql).await.expect_err(sql);
        assert!(
            refused.contains("permission denied") || refused.contains("cannot insert"),
            "{sql}: {refused}"
        );
    }
}

#[tokio::test]
async fn a_rebuilt_read_model_equals_the_live_one() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("dora", "dora@example.com").await;
    app.post_authed(
        "/accounts/api/update/profile/",
        &access,
        &json!({"bio": "x"}),
    )
    .await;
    app.change_password(&access, PASSWORD, NEW_PASSWORD).await;
    json_of(
        app.register("eli", "eli@example.com", PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    // What a bulk load must carry through unchanged: a tab, backslashes and `\N` in a
    // client's user agent (the history's copy is loaded with COPY's text format).
    let odd_agent = "odd\tagent \\N \\\\ end";
    let odd = reqwest::Client::builder()
        .user_agent(odd_agent)
        .build()
        .unwrap();
    let login = odd
        .post(app.url("/accounts/api/login/"))
        .json(&json!({"email": "dora@example.com", "password": NEW_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    caught_up(&app).await;
    let live = read_models(&app.pool).await;
    assert!(!live.0.is_empty() && !live.1.is_empty());
    let agents: Vec<String> =
        sqlx::query_scalar("select user_agent from user_history where user_agent like 'odd%'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(agents, [odd_agent]);
    rebuild_all(&app).await;
    assert_eq!(read_models(&app.pool).await, live);
    let leftovers: i64 =
        sqlx::query_scalar("select count(*) from pg_tables where tablename like '%_rebuild'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(leftovers, 0);
}

#[tokio::test]
async fn a_rebuild_under_write_load_loses_nothing_and_readers_never_see_an_empty_table() {
    // Thirty registrations hash at once beside the rebuild on two cores: they queue for a
    // hashing slot rather than being shed (shedding has tests of its own).
    let app = TestApp::spawn_with(|s| s.password_hash_queue_timeout_ms = 60_000).await;
    let seeded = seed(&app, 300).await;
    caught_up(&app).await;
    let writers = join_all((0..30).map(|i| {
        let app = &app;
        async move {
            let response = app
                .register(
                    &format!("load{i}"),
                    &format!("load{i}@example.com"),
                    PASSWORD,
                )
                .await;
            let status = response.status();
            if status != 201 {
                eprintln!("{status}: {}", response.text().await.unwrap_or_default());
            }
            status
        }
    }));
    let history_before: i64 = sqlx::query_scalar("select count(*) from user_history")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let reader = async {
        let (mut smallest, mut smallest_history) = (i64::MAX, i64::MAX);
        for _ in 0..100 {
            let (n, h): (i64, i64) = sqlx::query_as(
                "select (select count(*) from profile), (select count(*) from user_history)",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            smallest = smallest.min(n);
            smallest_history = smallest_history.min(h);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        (smallest, smallest_history)
    };
    let (statuses, (smallest, smallest_history), ()) =
        tokio::join!(writers, reader, rebuild_all(&app));
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert!(
        smallest >= seeded as i64,
        "a reader saw {smallest} profiles"
    );
    assert!(
        smallest_history >= history_before,
        "a reader saw {smallest_history} history rows of {history_before}"
    );
    caught_up(&app).await;
    let live = read_models(&app.pool).await;
    assert_eq!(
        live.0.len(),
        seeded + 30,
        "every account is in the rebuilt model"
    );
    rebuild_all(&app).await;
    assert_eq!(read_models(&app.pool).await, live);
}

async fn seed(app: &TestApp, users: usize) -> usize {
    let events = accounts::ops::seed::seed(
        &app.pool,
        Some(&app.vault()),
        "$argon2id$v=19$m=19456,t=2,p=1$c2VlZHNhbHQ$aGFzaA",
        users,
        30,
        7,
        |_| {},
    )
    .await
    .unwrap();
    assert!(events >= users * 3, "{events} events for {users} users");
    users
}

#[tokio::test]
async fn the_generator_fills_the_store_through_which_read_models_and_stream_follow() {
    let app = TestApp::spawn().await;
    seed(&app, 200).await;
    caught_up(&app).await;
    let profiles: i64 = sqlx::query_scalar("select count(*) from profile")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(profiles, 200);
    // The profile projector folds whole batches; each row must still be what the aggregate's
    // own fold of the account's events says, and a rebuild (larger batches) the same again.
    let rows: Vec<projections::profile::ProfileRow> = sqlx::query_as(
        "select user_id, username, email, is_active, date_joined, last_login, country, profession,
                bio, thoughts, profile_img, token_epoch, version from profile",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for row in &rows {
        let user = accounts::store::timetravel::user_as_of(
            &app.pool,
            &app.vault(),
            row.user_id,
            chrono::Utc::now(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                user.username.as_str(),
                user.email.as_str(),
                user.is_active,
                user.token_epoch as i32,
                [
                    &user.profile.country,
                    &user.profile.profession,
                    &user.profile.bio,
                    &user.profile.thoughts,
                    &user.profile.profile_img
                ],
            ),
            (
                row.username.as_str(),
                row.email.as_str(),
                row.is_active,
                row.token_epoch,
                [
                    &row.country,
                    &row.profession,
                    &row.bio,
                    &row.thoughts,
                    &row.profile_img
                ],
            ),
            "{}",
            row.user_id
        );
    }
    let live = read_models(&app.pool).await;
    rebuild_all(&app).await;
    assert_eq!(read_models(&app.pool).await, live);
    let identities: i64 =
        sqlx::query_scalar("select count(*) from user_identities where kind = 'email'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(identities, 200);
    app.wait_for_relay().await;
    assert_eq!(
        app.stream_messages().await.len() as i64,
        app.event_count().await
    );

    // Only the past, in position order, marked synthetic; and nothing it wrote is mailed.
    let future: i64 = sqlx::query_scalar("select count(*) from events where recorded_at > now()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(future, 0);
    let out_of_order: i64 = sqlx::query_scalar(
        "select count(*) from (select recorded_at < lag(recorded_at) over (order by global_position)
                                   as earlier from events) t where earlier",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(out_of_order, 0);
    let unmarked: i64 = sqlx::query_scalar(
        "select count(*) from events where (metadata ->> 'synthetic') is distinct from 'true'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(unmarked, 0);
    let future_logins: i64 =
        sqlx::query_scalar("select count(*) from profile where last_login > now()")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(future_logins, 0);
    app.wait_for_mailer_idle().await;
    assert!(app.smtp.all().is_empty(), "seeded accounts were mailed");
    let published = app.stream_messages().await;
    let body: serde_json::Value = serde_json::from_slice(&published[0].payload).unwrap();
    assert_eq!(body["metadata"]["synthetic"], true);
}

#[tokio::test]
async fn time_travel_shows_a_profile_as_it_stood_then() {
    let app = TestApp::spawn().await;
    let (access, _) = app.active_user("tim", "tim@example.com").await;
    app.post_authed(
        "/accounts/api/update/profile/",
        &access,
        &json!({"country": "Peru", "bio": "first"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    app.post_authed(
        "/accounts/api/update/profile/",
        &access,
        &json!({"bio": "second"}),
    )
    .await;

    let user_id = accounts::store::user_by_email(&app.pool, &app.vault(), "tim@example.com")
        .await
        .unwrap()
        .unwrap();
    let then = accounts::store::timetravel::user_as_of(&app.pool, &app.vault(), user_id, between)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (then.profile.country.as_str(), then.profile.bio.as_str()),
        ("Peru", "first")
    );
    let now = accounts::store::timetravel::user_as_of(
        &app.pool,
        &app.vault(),
        user_id,
        chrono::Utc::now(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(now.profile.bio, "second");
    let before = accounts::store::timetravel::user_as_of(
        &app.pool,
        &app.vault(),
        user_id,
        between - chrono::Duration::days(1),
    )
    .await
    .unwrap();
    assert!(before.is_none());

    let mut tx = begin_as(&app.pool, "_analyst").await;
    let row = sqlx::query("select country, bio, is_active from analytics.profile_as_of($1, $2)")
        .bind(user_id)
        .bind(between)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Personal fields are sealed in the events and SQL cannot open them: the analysts' time
    // travel shows them as null (operators use `accounts user-at`, above).
    assert_eq!(row.get::<Option<String>, _>("country"), None);
    assert_eq!(row.get::<Option<String>, _>("bio"), None);
    assert!(row.get::<bool, _>("is_active"));
}

#[tokio::test]
async fn the_reader_walks_the_event_index_in_commit_order_without_sorting() {
    let app = TestApp::spawn().await;
    seed(&app, 300).await;
    sqlx::query("analyze events")
        .execute(&app.pool)
        .await
        .unwrap();
    // The locked read, and the look without a lock that precedes it.
    let read_after = projections::reader::READ_AFTER
        .replace("$1", "'0'")
        .replace("$2", "0")
        .replace("$3", "500");
    let peek = projections::reader::PEEK_AFTER
        .replace("$1", "'profile'")
        .replace("$2", "500");
    for query in [read_after, peek] {
        let plan: Vec<String> = sqlx::query_scalar(&format!("explain {query}"))
            .fetch_all(&app.pool)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Scan using events_reader_order"),
            "{plan}"
        );
        assert!(
            !plan.contains("Sort"),
            "the reader sorts instead of walking the index:\n{plan}"
        );
    }
}

/// Two deployments on one Postgres server: a login made for one cannot even connect to the
/// other, and the pseudonymous role sees no name, e-mail, IP, user agent or id.
#[tokio::test]
async fn each_deployment_has_its_own_analysts_and_a_pseudonymous_role() {
    let (first, second) = tokio::join!(TestApp::spawn(), TestApp::spawn());
    first.active_user("pseudo", "pseudo@example.com").await;
    let database = |app: &TestApp| {
        url::Url::parse(&app.settings.database_url)
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned()
    };
    let (db1, db2) = (database(&first), database(&second));
    let login = format!("analyst_{}", &db1[db1.len() - 12..]);
    sqlx::query(&format!(
        "create user \"{login}\" in role \"{db1}_analyst\""
    ))
    .execute(&first.pool)
    .await
    .unwrap();
    let connect_as = |db: &str| {
        let mut url = url::Url::parse(&first.settings.database_url).unwrap();
        url.set_username(&login).unwrap();
        url.set_path(db);
        url.to_string()
    };
    // Their own deployment: the views. The other: no connection at all.
    let own = PgPool::connect(&connect_as(&db1)).await.unwrap();
    let users: i64 = sqlx::query_scalar("select count(*) from analytics.users")
        .fetch_one(&own)
        .await
        .unwrap();
    assert_eq!(users, 1);
    own.close().await;
    let other = PgPool::connect(&connect_as(&db2)).await;
    assert!(
        other
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "a login of one deployment connected to another"
    );

    // The pseudonymous role: aggregates and pseudonymous rows only.
    eventually(|| async {
        let mut tx = begin_as(&first.pool, "_analyst_pseudonymous").await;
        let rows = sqlx::query("select * from analytics.user_history_pseudonymous")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        let dump: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r.get::<String, _>("person"),
                    r.get::<serde_json::Value, _>("details")
                )
            })
            .collect();
        let users = sqlx::query("select * from analytics.users_pseudonymous")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        for sql in [
            "select * from analytics.users",
            "select * from analytics.user_history",
        ] {
            let mut inner = begin_as(&first.pool, "_analyst_pseudonymous").await;
            assert!(
                sqlx::query(sql).fetch_all(&mut *inner).await.is_err(),
                "{sql}"
            );
        }
        tx.rollback().await.unwrap();
        let text = dump.join("\n");
        rows.len() >= 4
            && users.len() == 1
            && !text.contains("pseudo")
            && !text.contains("127.0.0.1")
    })
    .await;
    sqlx::query(&format!("drop user \"{login}\""))
        .execute(&first.pool)
        .await
        .unwrap();
}

/// The first row of `sql`, run as the analyst, as a JSON object (`null` when there is none).
async fn analyst_row(pool: &PgPool, sql: &str) -> serde_json::Value {
    let mut tx = begin_as(pool, "_analyst").await;
    let row: Option<serde_json::Value> =
        sqlx::query_scalar(&format!("select to_jsonb(q) from ({sql}) q limit 1"))
            .fetch_optional(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}\n{e}"));
    tx.rollback().await.unwrap();
    row.unwrap_or(serde_json::Value::Null)
}

/// The questions of a sign-up funnel: a duplicate registration, refused activation links by
/// reason, a login refused as inactive, and active users per day, week and month; each in the
/// owner's history and in the analysts' views.
#[tokio::test]
async fn the_funnel_shows_duplicates_refused_links_inactive_logins_and_active_users() {
    let app = TestApp::spawn().await;
    // Refusals are recorded off the response path: wait for each before the next step, so that
    // the history's order is the order of the steps.
    let recorded = |event: &'static str, n: i64| {
        let app = &app;
        async move {
            let sql =
                format!("select count(*) as n from analytics.user_history where event = '{event}'");
            eventually(|| async { analyst_row(&app.pool, &sql).await["n"] == json!(n) }).await;
        }
    };
    let email = "bob@example.com";
    json_of(
        app.register("bob", email, PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    let first = app
        .smtp
        .wait_for(email, "Activate your account")
        .await
        .link();
    // The right password before activation: 403, recorded as refused.
    assert_eq!(app.login(email, PASSWORD).await.status(), 403);
    recorded("login_refused", 1).await;
    // The address registered again: the same answer, a notice to the owner.
    json_of(
        app.register("bobby", email, PASSWORD).await,
        StatusCode::CREATED,
    )
    .await;
    recorded("duplicate_registration_attempted", 1).await;
    // A new link makes the first one superseded.
    assert_eq!(app.resend_activation(email).await.status(), 200);
    let second = app
        .smtp
        .wait_for_nth(email, "Activate your account", 2)
        .await
        .link();
    assert_ne!(second, first);
    assert_eq!(app.activate_link(&first).await.status(), 400);
    recorded("activation_refused", 1).await;
    assert_eq!(app.activate_link(&second).await.status(), 200);
    // Used again on the active account.
    assert_eq!(app.activate_link(&second).await.status(), 400);
    recorded("activation_refused", 2).await;
    let body = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    let access = body["access_token"].as_str().unwrap().to_owned();

    // The owner's history tells each step.
    eventually(|| async {
        let history = json_of(
            app.get_authed("/accounts/api/history/", &access).await,
            StatusCode::OK,
        )
        .await;
        let steps: Vec<(String, serde_json::Value)> = history["results"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_owned(),
                    e["details"]["reason"].clone(),
                )
            })
            .collect();
        let names: Vec<&str> = steps.iter().map(|(name, _)| name.as_str()).collect();
        names
            == [
                "registered",
                "activation_link_sent",
                "login_refused",
                "duplicate_registration_attempted",
                "activation_link_sent",
                "activation_refused",
                "activated",
                "activation_refused",
                "logged_in",
            ]
            && steps[2].1 == json!("inactive")
            && steps[5].1 == json!("superseded")
            && steps[7].1 == json!("already_active")
    })
    .await;

    // The analysts' views count them, and active users are one today, this week and month.
    let funnel = analyst_row(
        &app.pool,
        "select * from analytics.signup_funnel where day = (now() at time zone 'UTC')::date",
    )
    .await;
    assert_eq!(
        funnel,
        json!({
            "day": funnel["day"],
            "registrations": 1,
            "duplicate_registrations": 1,
            "activation_links_sent": 2,
            "activations": 1,
            "activations_expired": 0,
            "activations_superseded": 1,
            "activations_repeated": 1,
            "logins_refused_inactive": 1,
        })
    );
    let logins = analyst_row(&app.pool, "select * from analytics.daily_logins").await;
    assert_eq!(
        (logins["logins"].clone(), logins["refused_inactive"].clone()),
        (json!(1), json!(1))
    );
    eventually(|| async {
        let mut counts = Vec::new();
        for view in [
            "daily_active_users",
            "weekly_active_users",
            "monthly_active_users",
        ] {
            let row = analyst_row(&app.pool, &format!("select * from analytics.{view}")).await;
            counts.push(row["active_users"].clone());
        }
        counts == [json!(1), json!(1), json!(1)]
    })
    .await;
    // A second login and a refresh the same day: still one active user, not three.
    let again = json_of(app.login(email, PASSWORD).await, StatusCode::OK).await;
    json_of(
        app.refresh(again["refresh_token"].as_str().unwrap()).await,
        StatusCode::OK,
    )
    .await;
    app.wait_for_relay().await;
    eventually(|| async {
        let history = analyst_row(
            &app.pool,
            "select count(*) as n from analytics.user_history where event = 'token_refreshed'",
        )
        .await;
        history["n"] == json!(1)
    })
    .await;
    eventually(|| async {
        let row = analyst_row(
            &app.pool,
            "select (select active_users from analytics.daily_active_users) as dau,
                    (select count(distinct user_id) from analytics.user_history
                      where event in ('logged_in', 'token_refreshed', 'profile_updated', 'password_changed')
                        and (occurred_at at time zone 'UTC')::date = (now() at time zone 'UTC')::date) as counted",
        )
        .await;
        row == json!({"dau": 1, "counted": 1})
    })
    .await;
}

/// A generated account is a real account: it logs in with the generator's password.
#[tokio::test]
async fn a_generated_account_logs_in_with_the_generators_password() {
    let app = TestApp::spawn().await;
    let hasher =
        accounts::auth::PasswordHasher::new(1, 1, std::time::Duration::from_secs(60), 0).unwrap();
    let hash = hasher
        .hash(&accounts::auth::SecretPassword::from(
            accounts::ops::seed::SEED_PASSWORD,
        ))
        .await
        .unwrap_or_else(|_| panic!("hashing failed"));
    accounts::ops::seed::seed(&app.pool, Some(&app.vault()), &hash, 50, 30, 3, |_| {})
        .await
        .unwrap();
    caught_up(&app).await;
    let email: String =
        sqlx::query_scalar("select email from profile where is_active order by user_id limit 1")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let body = json_of(
        app.login(&email, accounts::ops::seed::SEED_PASSWORD).await,
        StatusCode::OK,
    )
    .await;
    let access = body["access_token"].as_str().unwrap();
    let dashboard = json_of(
        app.get_authed("/accounts/api/dashboard/", access).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dashboard["user"]["email"], email.as_str());
}
