//! The one binary: `serve` runs every role in one process; `api`, `worker` and `migrate` run one.

use accounts::ops::cli;
use accounts::{startup, telemetry, Application, Roles, Settings};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "accounts",
    version,
    about = "Event-sourced account and authentication service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process: API, relay, projectors and mailer.
    Serve(Settings),
    /// Run the HTTP API only.
    Api(Settings),
    /// Run the relay, the projectors and the mailer, without the API.
    Worker(Settings),
    /// Create the database if missing, apply the migrations, and exit.
    Migrate(Settings),
    /// Rebuild or inspect the read models.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Print an account as it stood at a past moment, folded from its events.
    UserAt {
        /// The user id or e-mail address.
        #[arg(long)]
        user: String,
        /// The moment, RFC 3339 (e.g. 2026-03-01T00:00:00Z).
        #[arg(long)]
        at: chrono::DateTime<chrono::Utc>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Operator commands on one account.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Fill the event store with generated accounts and their history.
    Seed {
        /// How many accounts.
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Spread their history over this many past days.
        #[arg(long, default_value_t = 90)]
        days: i64,
        #[command(flatten)]
        settings: Settings,
    },
    /// Crypto-shredding: seal the personal data of events written in clear.
    Erasure {
        #[command(subcommand)]
        action: ErasureAction,
    },
    /// Inspect and retry mails that could not be delivered.
    Mail {
        #[command(subcommand)]
        action: MailAction,
    },
    /// Manage the access-token signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
enum ProjectionsAction {
    /// Replay the event store into a fresh copy of a read model (all when NAME is omitted) and
    /// swap it in; readers never see an empty table.
    Rebuild {
        /// `profile`, `history` or `activity`.
        name: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Show each reader's checkpoint and lag.
    Status(Settings),
}

#[derive(Subcommand)]
enum UserAction {
    /// Print everything held about an account as JSON (what `GET /accounts/api/export/` gives
    /// its owner), e.g. to answer a subject-access request.
    Export {
        /// The user id or e-mail address.
        #[arg(long)]
        user: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete an account for good (e.g. for a support request): what its owner's
    /// `POST /accounts/api/delete/account/` does, recorded with the reason.
    Delete {
        /// The user id or e-mail address.
        #[arg(long)]
        user: String,
        /// Why (kept readable in the event: never put personal data here).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(Subcommand)]
enum MailAction {
    /// List the mails given up on after their last attempt.
    Failed(Settings),
    /// Send the failed mails again (all, or one by its event id).
    Retry {
        #[arg(long)]
        event_id: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(Subcommand)]
enum ErasureAction {
    /// Seal the personal data of every event written before crypto-shredding under its
    /// person's data key (resumable: an interrupted run continues where it stopped), and hash
    /// the identities held in clear.
    Migrate(Settings),
}

#[derive(Subcommand)]
enum KeysAction {
    /// Add a new signing key: published at once, signing after KEY_ROTATION_DELAY; the old key
    /// stays published until the last token it signed has expired.
    Rotate(Settings),
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (settings, roles) = match cli.command {
        Command::Serve(s) => (s, Some(Roles::ALL)),
        Command::Api(s) => (s, Some(Roles::API)),
        Command::Worker(s) => (s, Some(Roles::WORKER)),
        Command::Migrate(s) => (s, None),
        Command::Keys {
            action: KeysAction::Rotate(s),
        } => {
            telemetry::init(s.log_format);
            return startup::rotate_keys(&s);
        }
        Command::Projections { action } => {
            return match action {
                ProjectionsAction::Rebuild { name, settings } => {
                    cli::rebuild(&settings, name.as_deref()).await
                }
                ProjectionsAction::Status(settings) => cli::status(&settings).await,
            };
        }
        Command::UserAt { user, at, settings } => return cli::user_at(&settings, &user, at).await,
        Command::User {
            action: UserAction::Export { user, settings },
        } => return cli::user_export(&settings, &user).await,
        Command::User {
            action:
                UserAction::Delete {
                    user,
                    reason,
                    settings,
                },
        } => return cli::user_delete(&settings, &user, &reason).await,
        Command::Erasure {
            action: ErasureAction::Migrate(settings),
        } => return cli::erasure_migrate(&settings).await,
        Command::Mail { action } => {
            return match action {
                MailAction::Failed(settings) => cli::failed_mails(&settings).await,
                MailAction::Retry { event_id, settings } => {
                    cli::retry_mails(&settings, event_id.as_deref()).await
                }
            };
        }
        Command::Seed {
            users,
            days,
            settings,
        } => return cli::seed(&settings, users, days).await,
    };
    telemetry::init(settings.log_format);
    let Some(roles) = roles else {
        startup::prepare_database(&settings).await?;
        tracing::info!("database is migrated");
        return Ok(());
    };
    let app = Application::build(settings, roles).await?;
    // What start-up allocated and freed (migrations, the OpenAPI document, key loading) goes
    // back to the system now: mimalloc returns a thread's freed pages only when that thread
    // allocates again, and this one mostly waits from here on (idle RSS: 47 MB without this,
    // 35 MB with it).
    // SAFETY: `mi_collect` takes no pointers; any thread may call it at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
