//! argon2id hashing on threads of its own, one per slot, with a bound on how many run at once
//! (each takes 19 MiB): a burst queues briefly, then is shed, instead of exhausting memory.
//!
//! Each slot's thread takes the next job from the queue itself when it finishes one, so a core
//! never waits between two hashes for an async task to be woken and hand the next one over (the
//! cores were ~4 % idle under login saturation with a full queue that way: issue #12).

use anyhow::Context;
use argon2::password_hash::{rand_core::OsRng, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

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
///
/// It is aligned to 2 MiB and asks the kernel for transparent huge pages (`MADV_HUGEPAGE`, which
/// the usual `madvise` setting of `/sys/kernel/mm/transparent_hugepage/enabled` honours): argon2
/// reads its blocks in an order derived from the data, so with 4 KiB pages most reads miss the
/// TLB, which 10 huge pages cover. One verification then takes about 4 % less CPU in the service
/// (issue #12, docs/BENCHMARKS.md). Where the kernel gives none, the memory works as before.
struct Memory {
    blocks: NonNull<Block>,
    len: usize,
}

/// The alignment (and size granule) of the work memory: one huge page.
const HUGE_PAGE: usize = 2 << 20;

impl Memory {
    fn new() -> Self {
        Self {
            blocks: NonNull::dangling(),
            len: 0,
        }
    }

    /// The first `n` blocks, the memory grown first if it holds fewer.
    ///
    /// Mapped from the kernel directly, not taken from the allocator: pages already touched
    /// (by the allocator's zeroing, or by an earlier owner) would stay 4 KiB pages; a fresh
    /// mapping gets its huge pages as argon2 first writes it, and is zero until then.
    fn blocks(&mut self, n: usize) -> anyhow::Result<&mut [Block]> {
        if self.len < n {
            *self = Self::new();
            let bytes = n
                .checked_mul(size_of::<Block>())
                .and_then(|b| b.checked_next_multiple_of(HUGE_PAGE))
                .context("argon2 memory too large")?;
            let span = bytes + HUGE_PAGE;
            // SAFETY: a new private anonymous mapping; no existing memory is touched.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            anyhow::ensure!(raw != libc::MAP_FAILED, "out of memory for argon2");
            let head = (raw as usize).next_multiple_of(HUGE_PAGE) - raw as usize;
            let start = raw.cast::<u8>().wrapping_add(head);
            // SAFETY: the two ends of the mapping just made, outside `start..start + bytes`
            // (both page-aligned, as `raw`, `HUGE_PAGE` and `bytes` are); nothing refers to them.
            unsafe {
                if head > 0 {
                    libc::munmap(raw, head);
                }
                if head < HUGE_PAGE {
                    libc::munmap(start.wrapping_add(bytes).cast(), HUGE_PAGE - head);
                }
            }
            // SAFETY: advice on the mapping this struct now owns; it changes how the kernel backs
            // the pages, never their contents. A kernel without huge pages refuses it: no matter.
            #[cfg(target_os = "linux")]
            unsafe {
                libc::madvise(start.cast(), bytes, libc::MADV_HUGEPAGE)
            };
            *self = Self {
                blocks: NonNull::new(start.cast::<Block>()).context("no argon2 memory")?,
                len: bytes / size_of::<Block>(),
            };
        }
        // SAFETY: `blocks` points to `len >= n` blocks of a mapping only `&mut self` reaches;
        // a fresh mapping reads as zero, and zero bytes are a valid `Block` (integers only).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.blocks.as_ptr(), n) })
    }

    /// Blocks held (the parameters' count rounded up to whole huge pages).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `blocks`, of this length; the slices it lent borrowed
            // `self` and so are gone.
            unsafe { libc::munmap(self.blocks.as_ptr().cast(), self.len * size_of::<Block>()) };
        }
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    queue: Arc<Queue>,
    /// Closes the queue (and so ends the slots' threads) when the last clone is dropped.
    _closer: Arc<Closer>,
    /// Jobs queued or running; past `slots + max_queue` new ones are shed at once.
    in_flight: Arc<AtomicUsize>,
    slots: usize,
    max_queue: usize,
    queue_timeout: Duration,
    /// Verified against for unknown accounts, so they cost the same time as known ones.
    dummy_hash: Arc<String>,
}

/// One piece of work for a slot: run with the slot's work memory, or told it started too late.
type Job = Box<dyn FnOnce(Option<&mut Memory>) + Send>;

/// The jobs waiting for a slot, in arrival order, with when each must have started.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// Each with the time it must have started by and whether its request went away.
    jobs: VecDeque<(Instant, Arc<AtomicBool>, Job)>,
    closed: bool,
}

struct Closer(Arc<Queue>);

impl Drop for Closer {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.lock() {
            state.closed = true;
        }
        self.0.ready.notify_all();
    }
}

/// A slot's thread: takes jobs until the queue is closed and empty. Its work memory is made by
/// its first job and kept (see [`Memory`]).
fn slot_thread(queue: Arc<Queue>) {
    let mut memory = Memory::new();
    loop {
        let job = {
            let Ok(mut state) = queue.state.lock() else {
                return;
            };
            loop {
                if let Some(job) = state.jobs.pop_front() {
                    metrics::gauge!("password_hash_queue").set(state.jobs.len() as f64);
                    break job;
                }
                if state.closed {
                    return;
                }
                state = match queue.ready.wait(state) {
                    Ok(state) => state,
                    Err(_) => return,
                };
            }
        };
        let (deadline, _, job) = job;
        if Instant::now() > deadline {
            job(None);
        } else {
            job(Some(&mut memory));
        }
    }
}

/// Marks a job's request as gone when the request's future is dropped (answered or aborted).
struct Waiting(Arc<AtomicBool>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One job counted in `in_flight` until dropped (done, skipped, refused, or never queued).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
    let blocks = memory.blocks(params.block_count())?;
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt, out, blocks)
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

/// Lowers the calling thread's priority to `nice` (Linux: a thread's own nice value; raising it
/// needs no privilege). A hash is the one long computation of the service: at a lower priority
/// every short step of any request (parsing, a query's answer, the response) preempts it on a
/// busy core instead of waiting for a hash's time slice to end, so a flood of logins delays
/// reads, refreshes and the logins' own round trips less. The hashes still get every cycle the
/// rest leaves, so no throughput is lost while the machine does nothing else; on a machine shared
/// with other busy processes they yield to those too (set 0 there). A failure is logged.
fn lower_priority(nice: i32) {
    // Only ever lowered: a process started at a higher nice value keeps it.
    let target = nice.min(19);
    if target <= thread_nice() {
        return;
    }
    // SAFETY: setpriority reads its three integer arguments only; `who` 0 is the calling thread.
    let status = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if status != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            nice,
            "cannot lower the hashing thread's priority"
        );
    }
}

/// The calling thread's nice value.
fn thread_nice() -> i32 {
    // SAFETY: getpriority reads its two integer arguments only; `who` 0 is the calling thread.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
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
    /// `nice`: the hashing threads' nice value (see [`lower_priority`]); 0 leaves them as any
    /// other thread.
    pub fn new(
        concurrency: usize,
        max_queue: usize,
        queue_timeout: Duration,
        nice: i32,
    ) -> anyhow::Result<Self> {
        // Its work memory is freed: an idle process holds none (a slot's first hash makes one).
        let dummy = hash_with(
            "not a password anyone has: the dummy for unknown accounts",
            &mut Memory::new(),
        )?;
        let slots = concurrency.max(1);
        let queue = Arc::new(Queue::default());
        for slot in 0..slots {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{slot}"))
                .spawn(move || {
                    lower_priority(nice);
                    slot_thread(queue)
                })
                .context("cannot start a hashing thread")?;
        }
        Ok(Self {
            _closer: Arc::new(Closer(queue.clone())),
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
            slots,
            max_queue,
            queue_timeout,
            dummy_hash: Arc::new(dummy),
        })
    }

    /// Runs `work` on a slot's thread with its work memory, and records its duration: queued
    /// behind at most `max_queue` others (else shed at once with `Busy`), and `Busy` too if no
    /// slot took it within the queue timeout. A job whose request went away (the caller's
    /// future dropped) is skipped when its turn comes.
    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce(&mut Memory) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashError> {
        let capacity = self.slots + self.max_queue;
        let mut before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        // Decremented when the job is done, skipped or refused, whoever holds it then.
        let in_flight = InFlight(self.in_flight.clone());
        if before >= capacity {
            // Jobs whose requests went away give their places back first (dropping them
            // releases their counts), as a waiter on a semaphore would have on leaving.
            if let Ok(mut state) = self.queue.state.lock() {
                state
                    .jobs
                    .retain(|(_, gone, _)| !gone.load(Ordering::SeqCst));
            }
            before = self.in_flight.load(Ordering::SeqCst).saturating_sub(1);
        }
        if before >= capacity {
            metrics::counter!("password_hash_shed_total").increment(1);
            return Err(HashError::Busy);
        }
        let (done, result) = oneshot::channel::<Result<T, HashError>>();
        let gone = Arc::new(AtomicBool::new(false));
        let span = tracing::Span::current();
        let job: Job = Box::new(move |memory| {
            if done.is_closed() {
                return;
            }
            let outcome = match memory {
                None => {
                    metrics::counter!("password_hash_shed_total").increment(1);
                    Err(HashError::Busy)
                }
                Some(memory) => {
                    let started = Instant::now();
                    let cpu_started = thread_cpu_seconds();
                    let outcome = span.in_scope(|| work(memory));
                    metrics::histogram!("password_hash_seconds", "op" => op)
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("password_hash_cpu_seconds", "op" => op)
                        .record(thread_cpu_seconds() - cpu_started);
                    outcome.map_err(HashError::Failed)
                }
            };
            // The place is given back before the answer is sent, never after: the caller may
            // run its next job at once (a registration's strength estimate, then its hash), and
            // woken, it can preempt this thread between the two.
            drop(in_flight);
            let _ = done.send(outcome);
        });
        {
            let mut state = self
                .queue
                .state
                .lock()
                .map_err(|_| HashError::Failed(anyhow::anyhow!("hashing queue poisoned")))?;
            state
                .jobs
                .push_back((Instant::now() + self.queue_timeout, gone.clone(), job));
            metrics::gauge!("password_hash_queue").set(state.jobs.len() as f64);
        }
        self.queue.ready.notify_one();
        let _waiting = Waiting(gone);
        result
            .await
            .map_err(|_| HashError::Failed(anyhow::anyhow!("hashing thread ended")))?
    }

    /// Runs another CPU-heavy check (the password-strength estimate) on a hashing slot: off the
    /// async runtime, and within the same bound on concurrent CPU work (shed like a hash).
    pub async fn run_bounded<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.run(op, move |_| Ok(work())).await
    }

    #[tracing::instrument(skip_all)]
    pub async fn hash(&self, password: &SecretPassword) -> Result<String, HashError> {
        let password = password.clone();
        self.run("hash", move |memory| {
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
        let password = password.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.as_ref().clone());
        let matches = self
            .run("verify", move |memory| {
                verify_with(password.expose_secret(), &hash, memory)
            })
            .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot gives its place back before it answers: a caller that runs its next job at once
    /// (a registration's strength estimate, then its hash) is never shed by its own previous
    /// job, even with no queue at all and the slot's thread at the lowest priority (woken, the
    /// caller preempts it right after the answer).
    #[tokio::test(flavor = "current_thread")]
    async fn back_to_back_jobs_of_one_caller_are_never_shed_by_each_other() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(1, 0, Duration::from_secs(5), 19)?;
        for round in 0..3000 {
            let outcome = hasher.run_bounded("test", || ()).await;
            assert!(
                outcome.is_ok(),
                "round {round}: shed by its own previous job"
            );
        }
        Ok(())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_work_leaves_the_async_runtime_free() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(1, 8, Duration::from_secs(5), 0)?;
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
        let hasher = PasswordHasher::new(2, 8, Duration::from_secs(5), 0)?;
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

        // A hash made elsewhere with other parameters (memory in KiB, passes, output length).
        let theirs = |m: u32, t: u32, len: Option<usize>, password: &[u8]| {
            let params = Params::new(m, t, 1, len).map_err(|e| anyhow::anyhow!("{e}"))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password, &SaltString::generate(&mut OsRng))
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))
        };
        let older = theirs(8_192, 3, Some(24), b"an older password")?;
        assert!(verify_with("an older password", &older, &mut memory)?);
        assert!(!verify_with("an older passworD", &older, &mut memory)?);
        // The same memory served both parameter sets; it holds the larger one, in whole huge
        // pages.
        assert_eq!(memory.len(), 20 * 1024);
        // A hash made with more memory than ours grows it, and still verifies.
        let newer = theirs(25_600, 2, None, b"a newer password")?;
        assert!(verify_with("a newer password", &newer, &mut memory)?);
        assert!(!verify_with("a newer passwort", &newer, &mut memory)?);
        assert_eq!(memory.len(), 26 * 1024);
        assert!(verify_with("a long enough password", &ours, &mut memory)?);
        assert!(verify_with("x", "not a hash", &mut memory).is_err());
        Ok(())
    }

    /// The work memory is aligned to a huge page and, where the kernel offers transparent huge
    /// pages for memory that asks (`madvise` or `always`), it is backed by them once used.
    #[test]
    fn the_work_memory_is_backed_by_huge_pages_where_the_kernel_offers_them() -> anyhow::Result<()>
    {
        let mut memory = Memory::new();
        hash_with("a long enough password", &mut memory)?;
        let start = memory.blocks.as_ptr() as usize;
        assert_eq!(start % HUGE_PAGE, 0);
        let offered = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| !mode.contains("[never]"));
        if !offered {
            return Ok(());
        }
        // The mapping that holds the memory, and how much of it is in huge pages.
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut inside = false;
        let mut huge_kib = None;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((from, to)) = range.filter(|(f, _)| !f.ends_with(':')) {
                if let (Ok(from), Ok(to)) = (
                    usize::from_str_radix(from, 16),
                    usize::from_str_radix(to, 16),
                ) {
                    inside = (from..to).contains(&start);
                    continue;
                }
            }
            if let Some(kib) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                huge_kib = kib
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok();
            }
        }
        let huge_kib = huge_kib.context("no mapping holds the work memory")?;
        assert!(huge_kib >= 2048, "{huge_kib} kB of huge pages");
        Ok(())
    }

    /// However many verifications run, they run on the slots' threads only, each with its one
    /// work memory: never more memories than slots.
    #[tokio::test]
    async fn work_memory_is_bounded_by_the_slots() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(2, 64, Duration::from_secs(30), 0)?;
        let password = SecretPassword::from("a long enough password");
        let hash = hasher.hash(&password).await.map_err(anyhow::Error::from)?;
        let checks = (0..12).map(|_| hasher.verify(&password, Some(hash.clone())));
        for ok in futures::future::join_all(checks).await {
            assert!(ok.map_err(anyhow::Error::from)?);
        }
        let names = (0..12).map(|_| {
            hasher.run_bounded("test", || {
                std::thread::sleep(Duration::from_millis(5));
                std::thread::current().name().map(str::to_owned)
            })
        });
        let mut threads = std::collections::HashSet::new();
        for name in futures::future::join_all(names).await {
            threads.insert(name.map_err(anyhow::Error::from)?);
        }
        assert_eq!(threads.len(), 2, "{threads:?}");
        assert!(threads
            .iter()
            .all(|t| t.as_deref().is_some_and(|t| t.starts_with("argon2-"))));
        Ok(())
    }

    /// The hashes run at the lower priority asked for (every other thread preempts them on a
    /// busy core); 0 leaves the hashing threads as the caller's.
    #[tokio::test]
    async fn hashing_threads_run_at_the_priority_asked_for() -> anyhow::Result<()> {
        let before = thread_nice();
        let lowered = PasswordHasher::new(2, 4, Duration::from_secs(5), 7)?;
        let plain = PasswordHasher::new(1, 4, Duration::from_secs(5), 0)?;
        for _ in 0..4 {
            assert_eq!(
                lowered.run_bounded("test", thread_nice).await?,
                7.max(before)
            );
        }
        assert_eq!(plain.run_bounded("test", thread_nice).await?, before);
        assert_eq!(
            thread_nice(),
            before,
            "the caller's thread is left as it was"
        );
        Ok(())
    }

    /// Past the queue's bound a job is shed at once; one that waited longer than the queue
    /// timeout is shed when its turn comes; one whose caller went away never runs. None of
    /// them keeps a place: the next job runs.
    #[tokio::test]
    async fn a_full_queue_sheds_and_late_or_abandoned_jobs_never_run() -> anyhow::Result<()> {
        let hasher = PasswordHasher::new(1, 1, Duration::from_millis(100), 0)?;
        let ran = Arc::new(AtomicUsize::new(0));
        let busy = |ms| {
            let ran = ran.clone();
            hasher.run_bounded("test", move || {
                std::thread::sleep(Duration::from_millis(ms));
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        // One running, one queued, the third shed at once.
        let (first, second, third) = tokio::join!(busy(300), busy(1), async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            busy(1).await
        });
        assert!(first.is_ok());
        // The second waited 300 ms for the slot, past its 100 ms: shed without running.
        assert!(matches!(second, Err(HashError::Busy)));
        assert!(matches!(third, Err(HashError::Busy)));
        assert_eq!(ran.load(Ordering::SeqCst), 1);

        // An abandoned job (its caller's future dropped while it waited) is skipped.
        let long = tokio::spawn({
            let hasher = hasher.clone();
            async move {
                hasher
                    .run_bounded("test", || std::thread::sleep(Duration::from_millis(80)))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let abandoned = {
            let ran = ran.clone();
            tokio::spawn({
                let hasher = hasher.clone();
                async move {
                    hasher
                        .run_bounded("test", move || {
                            ran.fetch_add(100, Ordering::SeqCst);
                        })
                        .await
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        abandoned.abort();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The queue's one place was the abandoned job's: it is given back, not shed against.
        let (late, long) = tokio::join!(busy(1), long);
        assert!(late.is_ok());
        assert!(long?.is_ok());
        assert_eq!(ran.load(Ordering::SeqCst), 2, "the abandoned job ran");
        Ok(())
    }
}
