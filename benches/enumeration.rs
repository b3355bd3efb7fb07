//! Enumeration timing: for each of register, login, resend activation and forgot password, many
//! requests with a registered address and with unknown addresses, interleaved in one run, and the
//! two latency distributions side by side. Writes the table into docs/SECURITY.md.
//!
//! `cargo bench --bench enumeration` (BENCH_REQUESTS=N per kind, default 150).

mod support;

use accounts::Roles;
use serde_json::{json, Value};
use std::time::Instant;
use support::{bench_settings, machine, percentile, write_block, BenchApp};

const PASSWORD: &str = "correct horse battery staple";
const KNOWN: &str = "known@example.com";

fn body(endpoint: &str, email: &str, i: usize, known: bool) -> Value {
    let tag = if known { "k" } else { "u" };
    match endpoint {
        "register" => json!({"username": format!("{tag}{i}"), "email": email, "password": PASSWORD,
                             "confirm_password": PASSWORD, "verification_base_url": "http://app.test/a/"}),
        "login" => json!({"email": email, "password": "a wrong password, every time"}),
        "resend activation" => {
            json!({"email": email, "verification_base_url": "http://app.test/a/"})
        }
        _ => json!({"email": email}),
    }
}

fn path(endpoint: &str) -> &'static str {
    match endpoint {
        "register" => "/accounts/api/registration/",
        "login" => "/accounts/api/login/",
        "resend activation" => "/accounts/api/get/acctivation/token/",
        _ => "/accounts/api/forget/password/",
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let app = BenchApp::start(bench_settings("enum")?, Roles::ALL).await?;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{}", app.address, p);
    let registered = client
        .post(url("/accounts/api/registration/"))
        .json(&body("register", KNOWN, 0, true))
        .send()
        .await?;
    anyhow::ensure!(
        registered.status() == 201,
        "cannot register the known account"
    );

    let mut rows = Vec::new();
    for endpoint in ["register", "login", "resend activation", "forgot password"] {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for i in 1..=n {
            // Alternate which kind goes first, so drift in the machine's load hits both alike.
            let order = if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_known in order {
                let email = if is_known {
                    KNOWN.to_owned()
                } else {
                    format!("nobody{i}@example.com")
                };
                let started = Instant::now();
                let response = client
                    .post(url(path(endpoint)))
                    .json(&body(endpoint, &email, i, is_known))
                    .send()
                    .await?;
                let status = response.status();
                let _ = response.bytes().await?;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                anyhow::ensure!(status.is_success() || status == 401, "{endpoint}: {status}");
                if is_known {
                    known.push(ms)
                } else {
                    unknown.push(ms)
                }
            }
        }
        known.sort_by(f64::total_cmp);
        unknown.sort_by(f64::total_cmp);
        let (km, um) = (percentile(&known, 50.0), percentile(&unknown, 50.0));
        rows.push(format!(
            "| {endpoint} | {n} + {n} | {km:.1} / {:.1} / {:.1} | {um:.1} / {:.1} / {:.1} | {:.2} |",
            percentile(&known, 90.0),
            percentile(&known, 99.0),
            percentile(&unknown, 90.0),
            percentile(&unknown, 99.0),
            km / um
        ));
        eprintln!("{}", rows.last().map(String::as_str).unwrap_or(""));
    }
    app.finish().await;

    let table = format!(
        "Measured {date} on {machine}, optimised build (`cargo bench`), \
         requests sent one at a time over loopback.\n\n\
         | endpoint | requests (registered + unknown) | registered: p50 / p90 / p99 ms | unknown: p50 / p90 / p99 ms | ratio of medians |\n\
         |---|---|---|---|---|\n{rows}\n\n\
         A ratio near 1.00 means the two cannot be told apart by their median; every request \
         of both kinds costs one argon2id hash (register, login); resend and forgot do no \
         database work before answering (the look-up and the mail happen afterwards), so their \
         sub-millisecond medians differ by scheduling noise only.",
        date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        machine = machine(),
        rows = rows.join("\n")
    );
    let doc = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SECURITY.md");
    write_block(&doc, "enumeration-timing", &table)?;
    println!("{table}");
    Ok(())
}
