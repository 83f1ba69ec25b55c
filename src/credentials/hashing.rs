//! Password hashing: argon2id for main passwords, a fast digest for app passwords.
//!
//! Main passwords are chosen by people, so they get argon2id, run off the async executor behind
//! a semaphore: a flood of wrong guesses queues there and never stalls the executor (the relays
//! and every app-password login keep running). A hash has two lanes, computed at once on the
//! hasher's own threads, so a lone check takes half the time a one-lane hash of the same memory
//! and passes would (see [`new_hash_params`]).
//!
//! App passwords are 16 letters drawn by a CSPRNG (about 75 bits), too strong to brute-force, so
//! a SHA-256 digest is a safe way to store them and doubles as the lookup key: a login finds its
//! app password with one indexed query, and a wrong guess costs no slow hash at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher as _, Version};
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::model::Network;
use super::secret::Secret;

/// Length of a generated app password, in letters.
pub const APP_PASSWORD_LEN: usize = 16;

/// Draws a new app password: 16 lowercase letters, easy to type on a phone.
pub fn generate_app_password() -> Secret {
    let letters: Vec<u8> = (0..APP_PASSWORD_LEN)
        .map(|_| b'a' + rand::random_range(0u8..26))
        .collect();
    Secret::new(letters)
}

/// The canonical form of a typed app password: spaces removed (people copy it in groups),
/// ASCII letters lower-cased. `None` when what is left cannot be an app password, which lets a
/// login skip the app-password lookup entirely.
pub fn normalize_app_password(typed: &Secret) -> Option<Secret> {
    let mut out = Vec::with_capacity(APP_PASSWORD_LEN);
    for &b in typed.expose() {
        match b {
            b' ' => continue,
            b'a'..=b'z' => out.push(b),
            b'A'..=b'Z' => out.push(b.to_ascii_lowercase()),
            _ => return None,
        }
        if out.len() > APP_PASSWORD_LEN {
            return None;
        }
    }
    (out.len() == APP_PASSWORD_LEN).then(|| Secret::new(out))
}

/// The stored form and lookup key of a normalised app password (hex SHA-256 with a domain tag,
/// so the digest of an app password never equals the digest of the same bytes used elsewhere).
pub fn app_password_digest(normalized: &Secret) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"portcullis app-password v1\0");
    hasher.update(normalized.expose());
    hex(&hasher.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Why hashing failed. Never carries the password.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Argon2(String),
    #[error("the hashing task was lost")]
    TaskLost,
    /// More checks are waiting than the queue holds: this one is not run at all.
    #[error("too many password checks waiting")]
    Busy,
}

/// Lanes of a new hash (argon2's parallelism).
const LANES: u32 = 2;

/// The parameters of a new hash: OWASP's memory and passes (m = 19 MiB, t = 2), in two lanes.
///
/// Why two lanes: a guess costs an attacker the same memory and the same total work whatever
/// the lane count (the lanes only split the 19 MiB), but the gateway can compute the lanes on
/// two cores at once, so the person who typed the right password waits about half as long.
/// RFC 9106 recommends as many lanes as the verifier has threads to spare; two is what the
/// smallest machine we run on has, and stored hashes carry their own parameters, so a hash made
/// here verifies on any node whatever its core count.
fn new_hash_params() -> Params {
    Params::new(Params::DEFAULT_M_COST, Params::DEFAULT_T_COST, LANES, None)
        .unwrap_or(Params::DEFAULT)
}

/// Checks that may wait for a hashing slot, per slot: past that, a check is refused at once
/// instead of queueing (memory and time spent on a flood stay bounded).
const WAITING_PER_SLOT: usize = 16;

/// Runs argon2id off the async executor with bounded concurrency, a bounded queue, and working
/// memory allocated once per slot and reused (19 MiB a check: freed and allocated again per
/// check, it left the process's heap fragmented and large after a flood).
#[derive(Clone)]
pub struct PasswordHasher {
    pub(crate) permits: Arc<Semaphore>,
    /// Checks waiting for a permit or running.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// Checks that run at once (the permits).
    slots: usize,
    /// argon2 working memory, one buffer per running check.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    /// One check at a time per client network (see [`Self::verify_from`]).
    turns: Arc<DashMap<Network, Arc<Semaphore>>>,
    /// The threads that compute hash lanes, as many as the checks that run at once, so hashing
    /// never uses more cores than `concurrency` whatever the lane count. `None` only if the
    /// threads could not be started (logged), when rayon's global pool (one thread per CPU)
    /// computes them instead.
    lanes: Option<Arc<rayon::ThreadPool>>,
}

impl PasswordHasher {
    /// `concurrency` hashes run at once at most; the rest wait their turn in order, up to
    /// [`WAITING_PER_SLOT`] per slot.
    pub fn new(concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: concurrency * (WAITING_PER_SLOT + 1),
            slots: concurrency,
            memory: Arc::new(Mutex::new(Vec::new())),
            turns: Arc::new(DashMap::new()),
            lanes: rayon::ThreadPoolBuilder::new()
                .num_threads(concurrency)
                .thread_name(|n| format!("argon2-{n}"))
                .build()
                .inspect_err(|e| tracing::warn!(error = %e, "argon2 lane threads not started"))
                .ok()
                .map(Arc::new),
        }
    }

    /// argon2id with [`new_hash_params`]; the PHC string it returns records them, so they can
    /// be raised later without breaking stored hashes.
    pub async fn hash(&self, password: &Secret) -> Result<String, HashError> {
        let password = password.clone();
        self.run(move || {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, new_hash_params())
                .hash_password(password.expose())
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Argon2(e.to_string()))
        })
        .await?
    }

    /// Checks a password against a stored PHC string. A malformed stored hash is a mismatch.
    /// Dropping the future before it runs gives its place in the queue back.
    /// [`Self::verify`] for a login from `network`, which waits for that network's turn: one
    /// check at a time per client network. The queue itself is first come, first served; with
    /// one place in it per network, a flood of connections from one address holds one place,
    /// and a login from anywhere else waits behind at most one check per busy network, not
    /// behind the whole flood.
    pub async fn verify_from(
        &self,
        network: Option<Network>,
        password: &Secret,
        phc: &str,
    ) -> Result<bool, HashError> {
        let _turn = match network {
            Some(network) => Some(self.turn(network).await),
            None => None,
        };
        self.verify(password, phc).await
    }

    async fn turn(&self, network: Network) -> Turn {
        let semaphore = self
            .turns
            .entry(network)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        Turn {
            permit: semaphore.acquire_owned().await.ok(),
            network,
            turns: self.turns.clone(),
        }
    }

    /// Checks `password` against a PHC string.
    pub async fn verify(&self, password: &Secret, phc: &str) -> Result<bool, HashError> {
        let password = password.clone();
        let phc = phc.to_owned();
        let memory = self.memory.clone();
        let slots = self.slots;
        self.run(move || {
            let mut blocks = memory
                .lock()
                .ok()
                .and_then(|mut pool| pool.pop())
                .unwrap_or_default();
            let matches = verify_with_memory(&password, &phc, &mut blocks);
            if let Ok(mut pool) = memory.lock()
                && pool.len() < slots
            {
                pool.push(blocks);
            }
            matches
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _queued = Queued::enter(&self.queued, self.max_queued).ok_or(HashError::Busy)?;
        let waiting = crate::telemetry::HashWaiting::enter();
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| HashError::TaskLost)?;
        waiting.turn();
        // The permit goes with the work: if this future is dropped (its login was abandoned),
        // the hash already running keeps its slot until it ends, so no more than `concurrency`
        // ever run at once. The blocking thread only waits while the lane threads compute.
        let lanes = self.lanes.clone();
        tokio::task::spawn_blocking(move || {
            let result = match lanes {
                Some(lanes) => lanes.install(work),
                None => work(),
            };
            drop(permit);
            result
        })
        .await
        .map_err(|_| HashError::TaskLost)
    }
}

/// A place in the hasher's queue, given back on drop.
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(count))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The synchronous verify, for benchmarks and for callers already off the executor.
pub fn verify_blocking(password: &Secret, phc: &str) -> bool {
    verify_with_memory(password, phc, &mut Vec::new())
}

/// Verifies against a PHC string with `blocks` as argon2's working memory (grown to the
/// stored parameters' size if needed, and kept for the next check).
fn verify_with_memory(password: &Secret, phc: &str, blocks: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(params), Ok(algorithm), Some(salt), Some(expected)) = (
        Params::try_from(&hash),
        Algorithm::try_from(hash.algorithm.as_str()),
        hash.salt.as_ref(),
        hash.hash.as_ref(),
    ) else {
        return false;
    };
    let Ok(version) = hash
        .version
        .map_or(Ok(Version::default()), Version::try_from)
    else {
        return false;
    };
    if blocks.len() != params.block_count() {
        blocks.resize(params.block_count(), Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.expose(),
        salt,
        &mut out,
        &mut blocks[..],
    );
    let matches = computed.is_ok()
        && bool::from(subtle::ConstantTimeEq::ct_eq(&out[..], expected.as_bytes()));
    zeroize::Zeroize::zeroize(&mut out);
    matches
}

/// A network's turn at the slow hash; the network's entry goes when nobody holds or waits for
/// it.
struct Turn {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    network: Network,
    turns: Arc<DashMap<Network, Arc<Semaphore>>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Only the map's own reference left: nobody holds or waits.
        self.turns
            .remove_if(&self.network, |_, s| Arc::strong_count(s) == 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten checks queued from one network and then one from another: the other network's
    /// check waits behind at most the one check already running, not behind the ten.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_from_one_network_does_not_queue_ahead_of_another() {
        let hasher = PasswordHasher::new(1);
        let phc = hasher.hash(&Secret::from("right")).await.unwrap();
        let flood = Network::of("192.0.2.1".parse().unwrap());
        let other = Network::of("198.51.100.1".parse().unwrap());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for n in 0..10 {
            let (hasher, phc, order) = (hasher.clone(), phc.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _ = hasher
                    .verify_from(Some(flood), &Secret::from("wrong"), &phc)
                    .await;
                order.lock().unwrap().push(format!("flood{n}"));
            }));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (h, p, o) = (hasher.clone(), phc.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            assert!(
                h.verify_from(Some(other), &Secret::from("right"), &p)
                    .await
                    .unwrap()
            );
            o.lock().unwrap().push("other".to_owned());
        }));
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let position = order.iter().position(|n| n == "other").unwrap();
        assert!(position <= 2, "{order:?}");
    }

    #[test]
    fn verification_with_reused_memory_agrees_with_argon2() {
        use argon2::PasswordVerifier as _;
        let password = Secret::from("correct horse");
        let phc = Argon2::default()
            .hash_password(password.expose())
            .unwrap()
            .to_string();
        let mut blocks = Vec::new();
        for _ in 0..2 {
            assert!(verify_with_memory(&password, &phc, &mut blocks));
            assert!(!verify_with_memory(
                &Secret::from("correct horsE"),
                &phc,
                &mut blocks
            ));
        }
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", phc.as_str())
                .is_ok()
        );
        // Other stored parameters (a cheaper hash from an older setting) still verify.
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password(b"old")
        .unwrap()
        .to_string();
        assert!(verify_with_memory(
            &Secret::from("old"),
            &cheap,
            &mut blocks
        ));
        assert!(!verify_with_memory(
            &password,
            "not a phc string",
            &mut blocks
        ));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let hasher = PasswordHasher::new(1);
        let phc = hasher.hash(&Secret::from("pw")).await.unwrap();
        let _held = hasher.permits.clone().acquire_owned().await.unwrap();
        let mut waiting = Vec::new();
        for _ in 0..hasher.max_queued {
            let (hasher, phc) = (hasher.clone(), phc.clone());
            waiting.push(tokio::spawn(async move {
                hasher.verify(&Secret::from("pw"), &phc).await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(matches!(
            hasher.verify(&Secret::from("pw"), &phc).await,
            Err(HashError::Busy)
        ));
        // Checks that give up leave the queue.
        for task in &waiting {
            task.abort();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(hasher.queued.load(Ordering::Acquire), 0);
    }

    #[test]
    fn generated_app_passwords_are_sixteen_lowercase_letters_and_differ() {
        let a = generate_app_password();
        let b = generate_app_password();
        assert_eq!(a.expose().len(), APP_PASSWORD_LEN);
        assert!(a.expose().iter().all(u8::is_ascii_lowercase));
        assert_ne!(a, b);
    }

    #[test]
    fn typed_spaces_and_capitals_are_forgiven_other_bytes_are_not() {
        let canonical = Secret::from("abcdefghijklmnop");
        for typed in [
            "abcd efgh ijkl mnop",
            "Abcdefghijklmnop",
            " abcdefghijklmnop ",
        ] {
            assert_eq!(
                normalize_app_password(&Secret::from(typed)).as_ref(),
                Some(&canonical),
                "{typed}"
            );
        }
        for typed in [
            "abcdefghijklmno",
            "abcdefghijklmnopq",
            "abcdefghijklmno1",
            "correct horse",
        ] {
            assert!(
                normalize_app_password(&Secret::from(typed)).is_none(),
                "{typed}"
            );
        }
    }

    #[test]
    fn digest_is_stable_and_depends_on_the_secret() {
        let a = app_password_digest(&Secret::from("abcdefghijklmnop"));
        assert_eq!(a.len(), 64);
        assert_eq!(a, app_password_digest(&Secret::from("abcdefghijklmnop")));
        assert_ne!(a, app_password_digest(&Secret::from("abcdefghijklmnoq")));
    }

    #[tokio::test]
    async fn argon2_hash_then_verify() {
        let hasher = PasswordHasher::new(2);
        let hash = hasher.hash(&Secret::from("correct horse")).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=2$"),
            "{hash}"
        );
        assert!(!hash.contains("correct"));
        assert!(
            hasher
                .verify(&Secret::from("correct horse"), &hash)
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(&Secret::from("wrong horse"), &hash)
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(&Secret::from("x"), "not a phc string")
                .await
                .unwrap()
        );
    }
}
