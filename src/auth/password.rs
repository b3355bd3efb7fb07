//! argon2id hashing on the blocking pool, with a bound on how many run at once (each takes
//! 19 MiB): a burst queues briefly, then is shed, instead of exhausting memory.

use anyhow::Context;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordVerifier, Version};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub type SecretPassword = SecretString;

/// Hashing could not start in time: the caller answers 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing is saturated")]
    Busy,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot; past `max_queue` new ones are shed at once.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_queue: usize,
    queue_timeout: Duration,
    /// Verified against for unknown accounts, so they cost the same time as known ones.
    dummy_hash: Arc<String>,
}

/// OWASP's argon2id parameters: m = 19456 KiB, t = 2, p = 1.
fn argon2() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

fn hash_now(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::PasswordHasher::hash_password(&argon2()?, password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(hash.to_string())
}

fn verify_now(password: &str, hash: &str) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(argon2()?
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

impl PasswordHasher {
    pub fn new(
        concurrency: usize,
        max_queue: usize,
        queue_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let dummy = hash_now("not a password anyone has: the dummy for unknown accounts")?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_queue,
            queue_timeout,
            dummy_hash: Arc::new(dummy),
        })
    }

    async fn slot(&self) -> Result<OwnedSemaphorePermit, HashError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        use std::sync::atomic::Ordering;
        let waiting = self.queued.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!("password_hash_queue").set((waiting + 1) as f64);
        let result = if waiting >= self.max_queue {
            Err(HashError::Busy)
        } else {
            tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| HashError::Busy)
                .and_then(|r| {
                    r.context("hashing semaphore closed")
                        .map_err(HashError::Failed)
                })
        };
        let left = self.queued.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("password_hash_queue").set(left.saturating_sub(1) as f64);
        if matches!(result, Err(HashError::Busy)) {
            metrics::counter!("password_hash_shed_total").increment(1);
        }
        result
    }

    #[tracing::instrument(skip_all)]
    pub async fn hash(&self, password: &SecretPassword) -> Result<String, HashError> {
        let permit = self.slot().await?;
        let password = password.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = std::time::Instant::now();
            let hash = span.in_scope(|| hash_now(password.expose_secret()));
            metrics::histogram!("password_hash_seconds", "op" => "hash")
                .record(started.elapsed().as_secs_f64());
            hash
        })
        .await
        .context("hashing task failed")?
        .map_err(HashError::Failed)
    }

    /// Verifies against `hash`, or against the dummy hash when there is none (unknown account),
    /// which takes the same time and always fails.
    #[tracing::instrument(skip_all)]
    pub async fn verify(
        &self,
        password: &SecretPassword,
        hash: Option<String>,
    ) -> Result<bool, HashError> {
        let permit = self.slot().await?;
        let password = password.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let span = tracing::Span::current();
        let matches = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = std::time::Instant::now();
            let matches = span.in_scope(|| verify_now(password.expose_secret(), &hash));
            metrics::histogram!("password_hash_seconds", "op" => "verify")
                .record(started.elapsed().as_secs_f64());
            matches
        })
        .await
        .context("hashing task failed")?
        .map_err(HashError::Failed)?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_accounts_never_match() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(2, 8, Duration::from_secs(5))?;
        let password = SecretPassword::from("a long enough password");
        let hash = hasher.hash(&password).await.map_err(anyhow::Error::from)?;
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(hasher
            .verify(&password, Some(hash.clone()))
            .await
            .map_err(anyhow::Error::from)?);
        let wrong = SecretPassword::from("another password");
        assert!(!hasher
            .verify(&wrong, Some(hash))
            .await
            .map_err(anyhow::Error::from)?);
        let dummy_phrase =
            SecretPassword::from("not a password anyone has: the dummy for unknown accounts");
        assert!(!hasher
            .verify(&dummy_phrase, None)
            .await
            .map_err(anyhow::Error::from)?);
        Ok(())
    }
}
