//! The read side at scale: a generated store of 100k users and about 1M events, then
//! - rebuild rate of each read model (events/s), next to [reading the same events in the same
//!   order without projecting them];
//! - `GET /accounts/api/history/` latency, next to [the same page read by a bare SQL query];
//! - the analysts' documented queries, run as the analyst role.
//!
//! Writes docs/BENCHMARKS.md (block `dataset`).
//!
//! `cargo bench --bench dataset` (BENCH_USERS=N, default 100000).

mod support;

use accounts::Roles;
use sqlx::PgPool;
use std::time::Instant;
use support::{bench_settings, machine, percentile, write_block, BenchApp};

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

async fn read_baseline(pool: &PgPool) -> anyhow::Result<(u64, f64)> {
    // The projector's read loop without the projecting: same query, same batches.
    let started = Instant::now();
    let mut checkpoint = projections::Checkpoint {
        transaction_id: "0".into(),
        position: 0,
    };
    let mut total = 0u64;
    loop {
        let mut tx = pool.begin().await?;
        let events = projections::reader::read_after(&mut tx, &checkpoint, 500).await?;
        tx.commit().await?;
        for event in &events {
            let _decoded: Option<aggregates::UserEvent> = event.decode().ok();
        }
        total += events.len() as u64;
        match events.last() {
            Some(last) => checkpoint = projections::Checkpoint::after(last),
            None => break,
        }
    }
    Ok((total, started.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let users: usize = std::env::var("BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let settings = bench_settings("dataset")?;
    let pool = accounts::startup::prepare_database(&settings).await?;
    let hasher = accounts::auth::PasswordHasher::new(1, 1, std::time::Duration::from_secs(60), 0)?;
    let hash = hasher
        .hash(&accounts::auth::SecretPassword::from(
            accounts::ops::seed::SEED_PASSWORD,
        ))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let vault = settings.vault()?;
    let started = Instant::now();
    let events =
        accounts::ops::seed::seed(&pool, Some(&vault), &hash, users, 365, 1, |_| {}).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    eprintln!("seeded {users} users, {events} events in {seed_secs:.1} s");
    sqlx::query("analyze").execute(&pool).await?;

    let (read, read_secs) = read_baseline(&pool).await?;
    let read_rate = read as f64 / read_secs;
    let mut rebuild_rows = Vec::new();
    for projector in projections::all(&vault) {
        let report = projections::rebuild::rebuild(&pool, projector.as_ref(), |_| {}).await?;
        eprintln!(
            "rebuilt {} at {:.0} events/s",
            report.projector,
            report.events_per_second()
        );
        rebuild_rows.push(format!(
            "| rebuild `{}` | {:.0} events/s ({} events in {:.1} s, of which the swap {:.1} s) | {read_rate:.0} events/s | {:.2} |",
            report.projector,
            report.events_per_second(),
            report.events,
            report.seconds,
            report.swap_seconds,
            report.events_per_second() / read_rate
        ));
    }
    sqlx::query("analyze").execute(&pool).await?;

    // What sealing costs a rebuild (issue #14): the generator's same events in clear, as a
    // deployment held them before crypto-shredding, in a database of their own; the profile
    // rebuilt from each five times, alternately, and the medians compared (a shared host's
    // noise moves single runs by 10 % either way).
    let clear_settings = bench_settings("clear")?;
    let clear_pool = accounts::startup::prepare_database(&clear_settings).await?;
    accounts::ops::seed::seed(&clear_pool, None, &hash, users, 365, 1, |_| {}).await?;
    sqlx::query("analyze").execute(&clear_pool).await?;
    let (mut sealed_rates, mut clear_rates) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (which, db) in [("clear", &clear_pool), ("sealed", &pool)] {
            let projector = projections::by_name("profile", &vault)
                .ok_or_else(|| anyhow::anyhow!("no profile projector"))?;
            let report = projections::rebuild::rebuild(db, projector.as_ref(), |_| {}).await?;
            let rate = report.events_per_second();
            eprintln!("rebuilt profile from {which} events at {rate:.0} events/s");
            if which == "clear" {
                clear_rates.push(rate);
            } else {
                sealed_rates.push(rate);
            }
        }
    }
    let sizes: (i64, i64) = (
        sqlx::query_scalar("select pg_total_relation_size('events')")
            .fetch_one(&pool)
            .await?,
        sqlx::query_scalar("select pg_total_relation_size('events')")
            .fetch_one(&clear_pool)
            .await?,
    );
    clear_pool.close().await;
    support::remove(&clear_settings).await;
    for rates in [&mut sealed_rates, &mut clear_rates] {
        rates.sort_by(f64::total_cmp);
    }
    let (sealed_rate, clear_rate) = (
        percentile(&sealed_rates, 50.0),
        percentile(&clear_rates, 50.0),
    );
    rebuild_rows.push(format!(
        "| rebuild `profile` from sealed events (crypto-shredding: each event's personal values opened with the person's key; events table {} MB) | {sealed_rate:.0} events/s (median of 5; {:.0}–{:.0}) | the same events in clear, as before crypto-shredding (events table {} MB): {clear_rate:.0} events/s (median of 5; {:.0}–{:.0}) | {:.2} |",
        sizes.0 / 1_000_000,
        sealed_rates[0],
        sealed_rates[sealed_rates.len() - 1],
        sizes.1 / 1_000_000,
        clear_rates[0],
        clear_rates[clear_rates.len() - 1],
        sealed_rate / clear_rate
    ));

    // History latency through the API, for a sample of users with tokens.
    let app = BenchApp::start(settings.clone(), Roles::API).await?;
    let client = reqwest::Client::new();
    let sample: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "select user_id, email from profile where is_active order by user_id limit 40",
    )
    .fetch_all(&pool)
    .await?;
    let mut tokens = Vec::new();
    for (user_id, email) in &sample {
        let body: serde_json::Value = client
            .post(format!("{}/accounts/api/login/", app.address))
            .json(&serde_json::json!({"email": email, "password": accounts::ops::seed::SEED_PASSWORD}))
            .send()
            .await?
            .json()
            .await?;
        let token = body["access_token"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!token.is_empty(), "login failed: {body}");
        tokens.push((*user_id, token));
    }
    let rounds = 2_000;
    let (mut api, mut bare) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for i in 0..rounds {
        let (user_id, token) = &tokens[i % tokens.len()];
        let started = Instant::now();
        let response = client
            .get(format!("{}/accounts/api/history/", app.address))
            .bearer_auth(token)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "history: {}", response.status());
        let _ = response.bytes().await?;
        api.push(ms(started));
        let started = Instant::now();
        let _rows = projections::history::page(&pool, *user_id, None, 50).await?;
        bare.push(ms(started));
    }
    api.sort_by(f64::total_cmp);
    bare.sort_by(f64::total_cmp);
    app.shutdown.cancel();
    let history_rows = format!(
        "| `GET /accounts/api/history/` (50 newest, token checked) | p50 {:.2} ms, p99 {:.2} ms | bare SQL page: p50 {:.2} ms, p99 {:.2} ms | {:.2} (p50) |",
        percentile(&api, 50.0),
        percentile(&api, 99.0),
        percentile(&bare, 50.0),
        percentile(&bare, 99.0),
        percentile(&api, 50.0) / percentile(&bare, 50.0)
    );

    // The analysts' documented queries, as the analyst role.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ANALYTICS.md"))?;
    let mut query_rows = Vec::new();
    for sql in doc
        .split("```sql")
        .skip(1)
        .filter_map(|b| b.split("```").next())
    {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut tx = pool.begin().await?;
            sqlx::query("select set_config('role', current_database() || '_analyst', true)")
                .execute(&mut *tx)
                .await?;
            let started = Instant::now();
            sqlx::query(sql.trim()).fetch_all(&mut *tx).await?;
            times.push(ms(started));
            tx.rollback().await?;
        }
        times.sort_by(f64::total_cmp);
        let first = sql.trim().lines().next().unwrap_or("").trim();
        query_rows.push(format!(
            "| `{}` … | {:.1} ms |",
            first.replace('|', "\\|"),
            times[1]
        ));
    }
    pool.close().await;
    app.finish().await;

    let text = format!(
        "Measured {date} on {machine}, optimised build, `cargo bench --bench dataset` with \
         {users} generated users and {events} events (seeded in {seed_secs:.0} s by `accounts seed`'s \
         generator). Baselines are measured in the same run on the same data.\n\n\
         | figure | result | baseline | ratio |\n|---|---|---|---|\n{}\n{history_rows}\n\n\
         The analysts' documented queries (docs/ANALYTICS.md), as the deployment's `<database>_analyst` role, median of 3:\n\n\
         | query | time |\n|---|---|\n{}",
        rebuild_rows.join("\n"),
        query_rows.join("\n"),
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine = machine(),
    );
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
    write_block(&doc, "dataset", &text)?;
    println!("{text}");
    Ok(())
}
