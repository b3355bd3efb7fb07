//! argon2id hashing on the blocking pool, with a bound on how many run at once (each takes
//! 19 MiB): a burst queues briefly, then is shed, instead of exhausting memory.

use anyhow::Context;
use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
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

/// The work memory of one argon2 computation (19 MiB with our parameters). Each slot keeps its
/// own and reuses it: allocating it per hash costs a fresh mapping that the kernel zeroes page by
/// page, and freeing it lets the allocator keep it per thread (RSS grew to 577 MB that way).
type Memory = Vec<Block>;

#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    /// The work memories not in use; there are never more than `slots` of them.
    memories: Arc<Mutex<Vec<Memory>>>,
    /// Requests waiting for a slot; past `max_queue` new ones are shed at once.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_queue: usize,
    queue_timeout: Duration,
    /// Verified against for unknown accounts, so they cost the same time as known ones.
    dummy_hash: Arc<String>,
}

/// OWASP's argon2id parameters: m = 19456 KiB, t = 2, p = 1.
fn owasp_params() -> anyhow::Result<Params> {
    Params::new(19_456, 2, 1, None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// argon2 of `password` and `salt` into `out`, in `memory` (grown if the parameters need more).
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Memory,
) -> anyhow::Result<()> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A new PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) for `password`.
fn hash_with(password: &str, memory: &mut Memory) -> anyhow::Result<String> {
    let params = owasp_params()?;
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    compute(
        Algorithm::Argon2id,
        Version::V0x13,
        params.clone(),
        password.as_bytes(),
        salt_bytes,
        &mut out,
        memory,
    )?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("{e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("{e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `hash`, with the parameters the hash names.
fn verify_with(password: &str, hash: &str, memory: &mut Memory) -> anyhow::Result<bool> {
    let parsed = PasswordHash::new(hash).map_err(|e| anyhow::anyhow!("{e}"))?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| anyhow::anyhow!("{e}"))?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        anyhow::bail!("the stored hash has no salt or no output");
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = vec![0u8; expected.len()];
    compute(
        algorithm,
        version,
        params,
        password.as_bytes(),
        salt_bytes,
        &mut out,
        memory,
    )?;
    Ok(out.as_slice().ct_eq(expected.as_bytes()).into())
}

/// CPU time of the calling thread, in seconds: how much of a hash's wall time was computing
/// (the rest was waiting for a core).
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `now`, a valid timespec.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

impl PasswordHasher {
    pub fn new(
        concurrency: usize,
        max_queue: usize,
        queue_timeout: Duration,
    ) -> anyhow::Result<Self> {
        // Its work memory is freed: an idle process holds none (the first hash allocates one).
        let dummy = hash_with(
            "not a password anyone has: the dummy for unknown accounts",
            &mut Memory::new(),
        )?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            memories: Arc::new(Mutex::new(Vec::new())),
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

    /// Runs `work` on the blocking pool with a slot's work memory, and records its duration.
    async fn run<T: Send + 'static>(
        &self,
        permit: OwnedSemaphorePermit,
        op: &'static str,
        work: impl FnOnce(&mut Memory) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashError> {
        let memories = self.memories.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = memories.lock().ok().and_then(|mut free| free.pop());
            let mut memory = taken.unwrap_or_default();
            let started = std::time::Instant::now();
            let cpu_started = thread_cpu_seconds();
            let result = span.in_scope(|| work(&mut memory));
            metrics::histogram!("password_hash_seconds", "op" => op)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("password_hash_cpu_seconds", "op" => op)
                .record(thread_cpu_seconds() - cpu_started);
            if let Ok(mut free) = memories.lock() {
                free.push(memory);
            }
            result
        })
        .await
        .context("hashing task failed")?
        .map_err(HashError::Failed)
    }

    /// Runs another CPU-heavy check (the password-strength estimate) on a hashing slot: off the
    /// async runtime, and within the same bound on concurrent CPU work (shed like a hash).
    pub async fn run_bounded<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = self.slot().await?;
        self.run(permit, op, move |_| Ok(work())).await
    }

    #[tracing::instrument(skip_all)]
    pub async fn hash(&self, password: &SecretPassword) -> Result<String, HashError> {
        let permit = self.slot().await?;
        let password = password.clone();
        self.run(permit, "hash", move |memory| {
            hash_with(password.expose_secret(), memory)
        })
        .await
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
        let matches = self
            .run(permit, "verify", move |memory| {
                verify_with(password.expose_secret(), &hash, memory)
            })
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_work_leaves_the_async_runtime_free() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(1, 8, Duration::from_secs(5))?;
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        // On a single-threaded runtime, work run inline would starve the ticker completely.
        let before = ticks.load(std::sync::atomic::Ordering::SeqCst);
        hasher
            .run_bounded("test", || std::thread::sleep(Duration::from_millis(200)))
            .await
            .map_err(anyhow::Error::from)?;
        let during = ticks.load(std::sync::atomic::Ordering::SeqCst) - before;
        ticker.abort();
        assert!(during > 10, "the runtime was blocked ({during} ticks)");
        Ok(())
    }

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

    /// Our hashes are standard PHC strings that argon2's own verifier accepts, and we verify
    /// hashes made elsewhere, with other parameters, by the parameters they name.
    #[test]
    fn pooled_memory_hashes_interoperate_with_argon2() -> anyhow::Result<()> {
        use argon2::PasswordHasher as _;
        use argon2::PasswordVerifier as _;
        let mut memory = Memory::new();
        let ours = hash_with("a long enough password", &mut memory)?;
        let parsed = PasswordHash::new(&ours).map_err(|e| anyhow::anyhow!("{e}"))?;
        assert!(Argon2::default()
            .verify_password(b"a long enough password", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"another password", &parsed)
            .is_err());

        let weaker = Params::new(8_192, 3, 1, Some(24)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let salt = SaltString::generate(&mut OsRng);
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, weaker)
            .hash_password(b"an older password", &salt)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .to_string();
        assert!(verify_with("an older password", &theirs, &mut memory)?);
        assert!(!verify_with("an older passworD", &theirs, &mut memory)?);
        // The same memory served both parameter sets; it holds the larger one.
        assert_eq!(memory.len(), owasp_params()?.block_count());
        assert!(verify_with("x", "not a hash", &mut memory).is_err());
        Ok(())
    }

    /// However many verifications run, there are never more work memories than slots.
    #[tokio::test]
    async fn work_memory_is_bounded_by_the_slots() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(2, 64, Duration::from_secs(30))?;
        let password = SecretPassword::from("a long enough password");
        let hash = hasher.hash(&password).await.map_err(anyhow::Error::from)?;
        let checks = (0..12).map(|_| hasher.verify(&password, Some(hash.clone())));
        for ok in futures::future::join_all(checks).await {
            assert!(ok.map_err(anyhow::Error::from)?);
        }
        let kept = hasher
            .memories
            .lock()
            .map(|m| m.len())
            .unwrap_or(usize::MAX);
        assert!((1..=2).contains(&kept), "{kept} work memories kept");
        Ok(())
    }
}
