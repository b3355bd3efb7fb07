//! What the benchmark binaries share: a running service on a fresh database and stream, and
//! writing results into a marked block of a document.
#![allow(dead_code)]

use accounts::{Application, Roles, Settings};
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The service binary's allocator (src/main.rs), for the benches that run the service or its
/// projectors in their own process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub struct BenchApp {
    pub address: String,
    pub settings: Settings,
    pub pool: sqlx::PgPool,
    pub shutdown: CancellationToken,
}

/// Settings on a fresh database, stream and data directory, with the abuse limits lifted (a
/// benchmark sends far more from one address than any client should).
pub fn bench_settings(tag: &str) -> anyhow::Result<Settings> {
    // Short: the analyst roles are named `<database>_analyst_pseudonymous`, and Postgres cuts
    // names at 63 bytes (a cut name would collide with `<database>_analyst`).
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut settings = Settings::from_env()?;
    let mut url = url::Url::parse(&settings.database_url)?;
    url.set_path(&format!("accounts_bench_{tag}_{id}"));
    settings.database_url = url.to_string();
    settings.nats_stream = format!("BENCH_{id}");
    settings.nats_subject_prefix = format!("b{id}");
    settings.smtp_url = None;
    settings.listen_addr = "127.0.0.1:0".parse()?;
    settings.management_listen_addr = "127.0.0.1:0".parse()?;
    settings.data_dir = std::env::temp_dir().join(format!("accounts-bench-{id}"));
    settings.allowed_link_origins = vec!["http://app.test".into()];
    settings.ip_rate_per_minute = 600_000_000;
    settings.ip_rate_burst = 1_000_000;
    settings.login_failure_limit = 1_000_000;
    settings.login_shared_failure_limit = 1_000_000;
    settings.database_max_connections = Some(40);
    Ok(settings)
}

impl BenchApp {
    pub async fn start(settings: Settings, roles: Roles) -> anyhow::Result<Self> {
        let app = Application::build(settings.clone(), roles).await?;
        let port = app.port().unwrap_or(0);
        let pool = app.state().pool.clone();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = app.run(token).await {
                eprintln!("service stopped: {error:#}");
            }
        });
        Ok(Self {
            address: format!("http://127.0.0.1:{port}"),
            settings,
            pool,
            shutdown,
        })
    }

    /// Stops the service and removes its database, stream and data directory.
    pub async fn finish(self) {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.pool.close().await;
        remove(&self.settings).await;
    }
}

/// Removes the database, stream and data directory of `settings`.
pub async fn remove(settings: &Settings) {
    if let Ok(nats) = async_nats::connect(settings.nats_url.as_str()).await {
        let _ = async_nats::jetstream::new(nats)
            .delete_stream(&settings.nats_stream)
            .await;
    }
    if let Ok(mut url) = url::Url::parse(&settings.database_url) {
        let name = url.path().trim_start_matches('/').to_owned();
        url.set_path("postgres");
        if let Ok(pool) = sqlx::PgPool::connect(url.as_str()).await {
            let _ = sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
                .execute(&pool)
                .await;
            for role in [
                format!("{name}_analyst"),
                format!("{name}_analyst_pseudonymous"),
            ] {
                let _ = sqlx::query(&format!("drop role if exists \"{role}\""))
                    .execute(&pool)
                    .await;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&settings.data_dir);
}

/// Percentile (0–100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Replaces the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in `file`.
pub fn write_block(file: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let block = format!("{start}\n{}\n{end}", body.trim_end());
    let new = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{}{}", &text[..s], block, &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(file, new)?;
    Ok(())
}

/// A one-line description of this machine for result tables.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores, {model}")
}

/// The machine's busy and total CPU time so far (/proc/stat, every core, in clock ticks): the
/// share of busy time between two readings says whether a phase kept the cores busy.
pub fn machine_ticks() -> (u64, u64) {
    let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds (user + system) used so far by the processes a benchmark phase involves: the
/// service, every Postgres process, nats-server and the load generator itself.
#[derive(Clone, Copy, Default, Debug)]
pub struct CpuTimes {
    pub service: f64,
    pub postgres: f64,
    pub nats: f64,
    pub generator: f64,
}

fn process_cpu(stat: &str) -> Option<(String, f64)> {
    // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((comm, ticks / hz))
}

impl CpuTimes {
    pub fn now(service_pid: u32) -> Self {
        let mut times = CpuTimes::default();
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return times;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((comm, secs)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| process_cpu(&s))
            else {
                continue;
            };
            if pid == service_pid {
                times.service += secs;
            } else if pid == me {
                times.generator += secs;
            } else if comm == "postgres" {
                times.postgres += secs;
            } else if comm == "nats-server" {
                times.nats += secs;
            }
        }
        times
    }

    /// A table row `| label | service | Postgres | nats | generator | all |`: CPU milliseconds per
    /// operation of each part from `self` until now, over `ops` operations.
    pub fn row_since(&self, label: &str, service_pid: u32, ops: usize) -> String {
        let later = CpuTimes::now(service_pid);
        let per = |a: f64, b: f64| (b - a) * 1000.0 / (ops as f64).max(1.0);
        format!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            per(self.service, later.service),
            per(self.postgres, later.postgres),
            per(self.nats, later.nats),
            per(self.generator, later.generator),
            per(
                self.service + self.postgres + self.nats + self.generator,
                later.service + later.postgres + later.nats + later.generator
            ),
        )
    }
}
