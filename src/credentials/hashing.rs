//! Password hashing: argon2id for main passwords, a fast digest for app passwords.
//!
//! Main passwords are chosen by people, so they get argon2id, run on the blocking pool behind a
//! semaphore: a flood of wrong guesses queues there and never stalls the async executor (the
//! relays and every app-password login keep running).
//!
//! App passwords are 16 letters drawn by a CSPRNG (about 75 bits), too strong to brute-force, so
//! a SHA-256 digest is a safe way to store them and doubles as the lookup key: a login finds its
//! app password with one indexed query, and a wrong guess costs no slow hash at all.

use std::sync::Arc;

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

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
}

/// Runs argon2id off the async executor with bounded concurrency.
#[derive(Clone)]
pub struct PasswordHasher {
    pub(crate) permits: Arc<Semaphore>,
}

impl PasswordHasher {
    /// `concurrency` hashes run at once at most; the rest wait their turn in order.
    pub fn new(concurrency: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    /// argon2id with the OWASP parameters (m = 19 MiB, t = 2, p = 1); the PHC string it returns
    /// records them, so they can be raised later without breaking stored hashes.
    pub async fn hash(&self, password: &Secret) -> Result<String, HashError> {
        let password = password.clone();
        self.run(move || {
            Argon2::default()
                .hash_password(password.expose())
                .map(|hash| hash.to_string())
                .map_err(|e| HashError::Argon2(e.to_string()))
        })
        .await?
    }

    /// Checks a password against a stored PHC string. A malformed stored hash is a mismatch.
    pub async fn verify(&self, password: &Secret, phc: &str) -> Result<bool, HashError> {
        let password = password.clone();
        let phc = phc.to_owned();
        self.run(move || verify_blocking(&password, &phc)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| HashError::TaskLost)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| HashError::TaskLost)
    }
}

/// The synchronous verify, for benchmarks and for callers already off the executor.
pub fn verify_blocking(password: &Secret, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.expose(), phc)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(hash.starts_with("$argon2id$"));
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
