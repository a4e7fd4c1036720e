//! Argon2id password hashing, off the async runtime and bounded: every hash needs ~19 MiB and
//! tens of milliseconds of a core, so at most a few run at once and a login flood queues
//! instead of exhausting memory.
//!
//! Hashes run on a fixed set of threads of their own, not on tokio's blocking pool. glibc
//! keeps a freed 19 MiB block in the arena of the thread that freed it; the blocking pool's
//! ever-changing threads spread such blocks over up to 16 arenas, and a server that had
//! signed up 1,000 accounts held 1.4 GiB (measured by `nextsync-bench realtime`). So each
//! hashing thread allocates its block once and reuses it (Argon2's `…_with_memory` API, PHC
//! strings built and checked here exactly as the crate's own hasher does).
//!
//! A thread that has waited [`IDLE_RELEASE`] without work frees its block. Kept for good,
//! the blocks held ~76 MiB of a server that otherwise idles at ~14 MiB (issue 14); the next
//! sign-in after a quiet spell allocates again (a few ms).

use crate::error::ApiError;
use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use nextsync_core::secret::Secret;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, oneshot};

/// Work for a hashing thread, given that thread's Argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Allocations above this are always their own mapping in glibc (its dynamic mmap threshold
/// never rises past 32 MiB on 64-bit systems).
const MMAP_ALWAYS_BYTES: usize = 33 * 1024 * 1024;

/// How long a hashing thread keeps its Argon2 memory without work.
pub const IDLE_RELEASE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Work for the hashing threads; they stop when the last handle is dropped.
    jobs: flume::Sender<Job>,
    /// A real hash of a random password, verified against when the account does not exist,
    /// so "no such user" costs the same time as "wrong password".
    dummy_hash: Arc<str>,
    /// Bytes of Argon2 memory the hashing threads hold right now.
    held: Arc<AtomicUsize>,
}

impl Passwords {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_idle_release(IDLE_RELEASE)
    }

    /// As [`Passwords::new`], with threads that free their memory after `idle` without work.
    pub fn with_idle_release(idle: Duration) -> anyhow::Result<Self> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // Made once with the crate's own hasher, so this thread keeps no Argon2 memory.
        let dummy = {
            use argon2::password_hash::PasswordHasher as _;
            Argon2::default()
                .hash_password(&random)
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
                .to_string()
        };
        // A channel every thread receives from (multi-consumer), so each idle thread's own
        // wait times out and it lets go of its memory.
        let (jobs, queue) = flume::unbounded::<Job>();
        let held = Arc::new(AtomicUsize::new(0));
        for n in 0..parallel {
            let queue = queue.clone();
            let held = held.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    let mut memory = Vec::new();
                    let release = |memory: &mut Vec<Block>| {
                        held.fetch_sub(bytes_of(memory), Ordering::Relaxed);
                        *memory = Vec::new();
                    };
                    loop {
                        match queue.recv_timeout(idle) {
                            Ok(job) => {
                                let before = bytes_of(&memory);
                                job(&mut memory);
                                held.fetch_add(bytes_of(&memory) - before, Ordering::Relaxed);
                            }
                            Err(flume::RecvTimeoutError::Timeout) => release(&mut memory),
                            Err(flume::RecvTimeoutError::Disconnected) => {
                                release(&mut memory);
                                return;
                            }
                        }
                    }
                })?;
        }
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallel)),
            jobs,
            dummy_hash: dummy.into(),
            held,
        })
    }

    /// Bytes of Argon2 memory the hashing threads hold right now.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Runs `work` on a hashing thread, with that thread's memory.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |memory: &mut Vec<Block>| {
                let _ = done.send(work(memory));
            }))
            .map_err(|_| ApiError::internal(anyhow::anyhow!("the hashing threads are gone")))?;
        result.await.map_err(ApiError::internal)
    }

    /// Argon2id PHC string of `password`, with a fresh salt.
    pub async fn hash(&self, password: &Secret) -> Result<Secret, ApiError> {
        let password = password.clone();
        self.run(move |memory| {
            hash_phc(memory, password.expose().as_bytes())
                .map(Secret::new)
                .map_err(ApiError::internal)
        })
        .await?
    }

    /// Whether `password` matches `stored`; `None` verifies against the dummy hash and returns
    /// false, taking the same time.
    pub async fn verify(&self, password: &Secret, stored: Option<&Secret>) -> Result<bool, ApiError> {
        let password = password.clone();
        let known = stored.is_some();
        let stored: Arc<str> = match stored {
            Some(hash) => hash.expose().into(),
            None => self.dummy_hash.clone(),
        };
        let matches = self
            .run(move |memory| verify_phc(memory, password.expose().as_bytes(), &stored))
            .await?;
        Ok(known && matches)
    }
}

/// Bytes a thread's Argon2 memory keeps resident (its touched length, not its capacity).
fn bytes_of(memory: &[Block]) -> usize {
    std::mem::size_of_val(memory)
}

/// Argon2 of `password` and `salt` into `out`, in `memory` (grown to the size it needs and
/// kept for the next hash).
fn argon2_into(
    memory: &mut Vec<Block>,
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    let blocks = params.block_count();
    if memory.len() < blocks {
        if memory.capacity() < blocks {
            // Reserved beyond glibc's largest dynamic mmap threshold (32 MiB), the block is
            // a mapping of its own, which `free` unmaps at once. At 19 MiB it would come from
            // the thread's arena once any earlier free of that size had raised the threshold,
            // and freeing it would give nothing back (measured: RSS stayed at +80 MiB). The
            // capacity past `blocks` is never touched: address space, not memory.
            let reserve = blocks.max(MMAP_ALWAYS_BYTES / size_of::<Block>());
            *memory = Vec::with_capacity(reserve);
        }
        memory.resize(blocks, Block::default());
    }
    argon2.hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
}

/// An Argon2id PHC string (the crate's defaults: 19 MiB, t=2, p=1) with a fresh salt.
fn hash_phc(memory: &mut Vec<Block>, password: &[u8]) -> anyhow::Result<String> {
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(memory, &argon2, &params, password, &salt, &mut out)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| anyhow::anyhow!("argon2: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("argon2: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (with the parameters it names).
fn verify_phc(memory: &mut Vec<Block>, password: &[u8], stored: &str) -> bool {
    let Ok(phc) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = phc.version.map_or(Ok(Version::V0x13), Version::try_from) else {
        return false;
    };
    let Ok(params) = Params::try_from(&phc) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    if argon2_into(memory, &argon2, &params, password, salt, &mut out).is_err() {
        return false;
    }
    // `Output` compares in constant time.
    Output::new(&out).is_ok_and(|computed| computed == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_interoperate_with_the_argon2_crates_own() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let theirs = Argon2::default()
            .hash_password(b"correct horse")
            .expect("hash")
            .to_string();
        let memory = &mut Vec::new();
        assert!(verify_phc(memory, b"correct horse", &theirs));
        assert!(!verify_phc(memory, b"correct horsy", &theirs));
        let ours = hash_phc(memory, b"correct horse").expect("hash");
        let parsed = PasswordHash::new(&ours).expect("PHC");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(!verify_phc(memory, b"correct horse", "$argon2id$garbage"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_hashing_threads_let_go_of_their_memory() {
        let passwords = Passwords::with_idle_release(Duration::from_millis(100)).expect("init");
        let secrets: Vec<Secret> = (0..8)
            .map(|n| Secret::new(format!("password number {n}")))
            .collect();
        let hashes = secrets.iter().map(|secret| passwords.hash(secret));
        for hash in futures::future::join_all(hashes).await {
            hash.expect("hash");
        }
        assert!(
            passwords.held_bytes() >= 19 * 1024 * 1024,
            "a thread keeps its 19 MiB between hashes"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while passwords.held_bytes() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "still holding {} bytes",
                passwords.held_bytes()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // And a sign-in after that works.
        let hash = passwords.hash(&Secret::new("after idle")).await.expect("hash");
        assert!(
            passwords
                .verify(&Secret::new("after idle"), Some(&hash))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new().expect("init");
        let hash = passwords
            .hash(&Secret::new("correct horse battery"))
            .await
            .expect("hash");
        assert!(hash.expose().starts_with("$argon2id$"));
        assert!(
            passwords
                .verify(&Secret::new("correct horse battery"), Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify(&Secret::new("wrong horse battery"), Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify(&Secret::new("correct horse battery"), None)
                .await
                .expect("verify")
        );
    }
}
