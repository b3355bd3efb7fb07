//! The operator commands beside the service roles: rebuilding and inspecting read models, time
//! travel, and the data generator.

use crate::auth::{PasswordHasher, SecretPassword};
use crate::config::Settings;
use crate::ops::seed;
use crate::startup::prepare_database;
use crate::store::{self, timetravel};
use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;
use uuid::Uuid;

fn bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} events, {{per_sec}}, eta {{eta}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// `accounts projections rebuild [NAME]`.
pub async fn rebuild(settings: &Settings, name: Option<&str>) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let vault = settings.checked_vault(&pool).await?;
    let projectors = match name {
        Some(name) => vec![projections::by_name(name, &vault)
            .with_context(|| format!("no projector called {name} (try profile or history)"))?],
        None => projections::all(&vault),
    };
    for projector in projectors {
        let total = projections::rebuild::event_count(&pool).await? as u64;
        let progress = bar(total, projector.name());
        let report =
            projections::rebuild::rebuild(&pool, projector.as_ref(), |n| progress.inc(n)).await?;
        progress.finish_and_clear();
        println!(
            "{}: rebuilt from {} events in {:.1} s ({:.0} events/s; the swap took {:.1} s)",
            report.projector,
            report.events,
            report.seconds,
            report.events_per_second(),
            report.swap_seconds
        );
    }
    Ok(())
}

/// `accounts projections status`.
pub async fn status(settings: &Settings) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    println!(
        "{:<12} {:>12} {:>10} {:>12}  updated",
        "reader", "position", "behind", "lag"
    );
    for reader in projections::rebuild::status(&pool).await? {
        let lag = reader
            .oldest_pending
            .map(|t| {
                format!(
                    "{:.1} s",
                    (Utc::now() - t).num_milliseconds() as f64 / 1000.0
                )
            })
            .unwrap_or_else(|| "0 s".into());
        println!(
            "{:<12} {:>12} {:>10} {:>12}  {}",
            reader.name, reader.position, reader.behind, lag, reader.updated_at
        );
    }
    Ok(())
}

/// `accounts user-at --user <id or e-mail> --at <RFC 3339>`.
pub async fn user_at(settings: &Settings, user: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let vault = settings.checked_vault(&pool).await?;
    let user_id = user_id_of(&pool, &vault, user).await?;
    match timetravel::user_as_of(&pool, &vault, user_id, at).await? {
        Some(state) => println!("{}", serde_json::to_string_pretty(&state)?),
        None => println!("{user_id} had not registered by {at}"),
    }
    Ok(())
}

/// The account a `--user` argument names: its id, or its e-mail address.
async fn user_id_of(
    pool: &sqlx::PgPool,
    vault: &projections::pii::Vault,
    user: &str,
) -> anyhow::Result<Uuid> {
    match Uuid::parse_str(user) {
        Ok(id) => Ok(id),
        Err(_) => store::user_by_email(pool, vault, user)
            .await?
            .with_context(|| format!("no account has the address {user}")),
    }
}

/// `accounts user export --user ID`: everything held about one account, as JSON on stdout (the
/// document `GET /accounts/api/export/` gives its owner).
pub async fn user_export(settings: &Settings, user: &str) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let vault = settings.checked_vault(&pool).await?;
    let user_id = user_id_of(&pool, &vault, user).await?;
    // Everything committed before the command ran is in the export: the read models are caught
    // up first (this process applies what the running projectors have not yet).
    for projector in projections::all(&vault) {
        projections::catch_up(&pool, projector.as_ref()).await?;
    }
    let export = crate::api::export::build(&pool, settings.refresh_token_ttl, user_id, None)
        .await?
        .with_context(|| format!("no account has the id {user_id}"))?;
    println!("{}", serde_json::to_string_pretty(&export)?);
    Ok(())
}

/// `accounts user delete --user ID --reason TEXT`.
pub async fn user_delete(settings: &Settings, user: &str, reason: &str) -> anyhow::Result<()> {
    let reason = reason.trim();
    anyhow::ensure!(!reason.is_empty(), "--reason must say why");
    let pool = prepare_database(settings).await?;
    let vault = settings.checked_vault(&pool).await?;
    let user_id = user_id_of(&pool, &vault, user).await?;
    let users: store::commands::CommandBus<aggregates::User> =
        store::commands::CommandBus::with_cache_capacity(pool.clone(), vault.clone(), (), 0);
    let account = users
        .load(&user_id.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("cannot load {user_id}: {e}"))?;
    anyhow::ensure!(account.is_registered(), "no account has the id {user_id}");
    anyhow::ensure!(!account.is_deleted(), "{user_id} was deleted already");
    store::erasure::delete_account(
        &pool,
        &users,
        &vault,
        user_id,
        &account,
        (
            aggregates::user::DeletionRequester::Operator,
            Some(reason.to_owned()),
        ),
        &crate::api::body::RequestMeta::default(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot delete {user_id}: {e}"))?;
    // The account's tokens die once the profile read model shows the deletion: now, not when
    // the service's projector next runs.
    if let Some(profile) = projections::by_name("profile", &vault) {
        projections::catch_up(&pool, profile.as_ref()).await?;
    }
    println!("{user_id} deleted; its data key is destroyed and a confirmation will be mailed");
    Ok(())
}

/// `accounts erasure migrate`.
pub async fn erasure_migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let vault = settings.checked_vault(&pool).await?;
    store::hash_identities(&pool, &vault).await?;
    let remaining = store::erasure::migrate_remaining(&pool).await?;
    let progress = bar(remaining.max(0) as u64, "sealing");
    let report = store::erasure::migrate(&pool, &vault, |n| progress.inc(n)).await?;
    progress.finish_and_clear();
    println!(
        "read {} events, sealed the personal data of {}; identities are hashed",
        report.scanned, report.sealed
    );
    Ok(())
}

/// `accounts seed --users N --days D`.
pub async fn seed(settings: &Settings, users: usize, days: i64) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let hasher = PasswordHasher::new(1, 1, Duration::from_secs(60), 0)?;
    let hash = hasher
        .hash(&SecretPassword::from(seed::SEED_PASSWORD))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let progress = bar((users * 10) as u64, "seed");
    let started = std::time::Instant::now();
    let vault = settings.checked_vault(&pool).await?;
    let events = seed::seed(&pool, Some(&vault), &hash, users, days, 42, |n| {
        progress.inc(n as u64)
    })
    .await?;
    progress.finish_and_clear();
    println!(
        "seeded {users} users and {events} events in {:.1} s; their password is {:?}",
        started.elapsed().as_secs_f64(),
        seed::SEED_PASSWORD
    );
    Ok(())
}

/// `accounts mail failed`.
pub async fn failed_mails(settings: &Settings) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let failed = crate::workers::mailer::failed(&pool).await?;
    if failed.is_empty() {
        println!("no failed mails");
    }
    for mail in failed {
        println!(
            "{}  {}  to {}  after {} attempts, last {}: {}",
            mail.event_id,
            mail.kind,
            mail.recipient,
            mail.attempts,
            mail.claimed_at,
            mail.last_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// `accounts mail retry [--event-id ID]`.
pub async fn retry_mails(settings: &Settings, event_id: Option<&str>) -> anyhow::Result<()> {
    let pool = prepare_database(settings).await?;
    let links = crate::auth::LinkSigner::load_or_generate(&settings.link_key_file())?;
    let mailer = crate::workers::mailer::Mailer::new(pool, settings, links)?;
    let sent = mailer.retry_failed(event_id).await?;
    println!("sent {sent} mail(s)");
    Ok(())
}
