//! The deployment's secret key: it seals what the database must hold but the gateway must read
//! back (TOTP seeds), and signs the short-lived tokens the portal puts in its forms.
//!
//! The key lives in a file outside the database (`[store] secret_key_file`), so a copy of the
//! database alone (a backup, a dump) gives neither the seeds nor the power to forge a token.
//! Every node of one deployment reads the same file. Two keys are derived from it, one per
//! use, so a sealed value can never pass for a signature or the reverse.
//!
//! Sealing is XChaCha20-Poly1305 with a random 192-bit nonce; the *context* (which account,
//! what for) is authenticated data, so a sealed seed copied to another account's row does not
//! open. Tokens are `base64url(json) "." base64url(HMAC-SHA256)`, carry their purpose and an
//! expiry, and are checked in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::secret::Secret;

/// Shortest key file accepted, in bytes of its first line.
pub const MIN_KEY_BYTES: usize = 32;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the secret key is shorter than {MIN_KEY_BYTES} characters: make one with `head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE`"
    )]
    TooShort,
    #[error("{0}")]
    File(String),
}

/// The two keys derived from the deployment's secret.
pub struct Keys {
    seal: [u8; 32],
    sign: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seal);
        zeroize::Zeroize::zeroize(&mut self.sign);
    }
}

fn derive(label: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update(secret);
    hasher.finalize().into()
}

impl Keys {
    /// Keys from the secret (the key file's first line).
    pub fn from_secret(secret: &Secret) -> Result<Self, KeyError> {
        if secret.expose().len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort);
        }
        Ok(Self {
            seal: derive(b"portcullis seal v1\0", secret.expose()),
            sign: derive(b"portcullis sign v1\0", secret.expose()),
        })
    }

    /// Keys from a key file (refused when every local user can read it).
    pub fn load(path: &std::path::Path) -> Result<Self, KeyError> {
        let secret = crate::config::read_secret_file(path).map_err(KeyError::File)?;
        Self::from_secret(&secret)
    }

    /// Fresh random keys (tests, and processes that need no shared key).
    pub fn random() -> Self {
        Self {
            seal: rand::random(),
            sign: rand::random(),
        }
    }

    /// Seals `plain` for storage under `context` (e.g. `totp:42`).
    pub fn seal(&self, plain: &[u8], context: &str) -> String {
        let cipher = XChaCha20Poly1305::new(&self.seal.into());
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from(nonce_bytes);
        // Encryption cannot fail for inputs this small; an empty result would only fail to open.
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain,
                    aad: context.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        format!("v1.{}", B64.encode(out))
    }

    /// Opens what [`Keys::seal`] made under the same context; `None` if anything differs.
    pub fn open(&self, sealed: &str, context: &str) -> Option<Secret> {
        let bytes = B64.decode(sealed.strip_prefix("v1.")?).ok()?;
        if bytes.len() < 24 {
            return None;
        }
        let (nonce, body) = bytes.split_at(24);
        let nonce = XNonce::try_from(nonce).ok()?;
        let cipher = XChaCha20Poly1305::new(&self.seal.into());
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .ok()
            .map(Secret::new)
    }

    fn mac(&self, purpose: &str, body: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&self.sign) else {
            return Vec::new();
        };
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }

    /// A token carrying `claims` for `purpose`, valid until `expires_ms` (Unix milliseconds).
    pub fn sign<T: Serialize>(&self, purpose: &str, claims: &T, expires_ms: i64) -> String {
        let body = serde_json::to_vec(&(expires_ms, claims)).unwrap_or_default();
        let mac = self.mac(purpose, &body);
        format!("{}.{}", B64.encode(&body), B64.encode(mac))
    }

    /// The claims of a token made for `purpose` that has not expired at `now_ms`.
    pub fn verify<T: DeserializeOwned>(
        &self,
        purpose: &str,
        token: &str,
        now_ms: i64,
    ) -> Option<T> {
        if token.len() > 8192 {
            return None;
        }
        let (body, mac) = token.split_once('.')?;
        let body = B64.decode(body).ok()?;
        let mac = B64.decode(mac).ok()?;
        let expected = self.mac(purpose, &body);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            mac.as_slice(),
        )) {
            return None;
        }
        let (expires, claims): (i64, T) = serde_json::from_slice(&body).ok()?;
        (now_ms <= expires).then_some(claims)
    }

    /// A keyed digest of `value` for `purpose`: stable for one deployment, meaningless
    /// without the key (used to pick a decoy deterministically).
    pub fn digest(&self, purpose: &str, value: &[u8]) -> [u8; 32] {
        let mac = self.mac(purpose, value);
        let mut out = [0u8; 32];
        let n = mac.len().min(32);
        out[..n].copy_from_slice(&mac[..n]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_context_and_key() {
        let keys = Keys::random();
        let sealed = keys.seal(b"seed bytes", "totp:1");
        assert!(!sealed.contains("seed"));
        assert_eq!(
            keys.open(&sealed, "totp:1").unwrap().expose(),
            b"seed bytes"
        );
        assert!(keys.open(&sealed, "totp:2").is_none());
        assert!(Keys::random().open(&sealed, "totp:1").is_none());
        // Two seals of one value differ (random nonce).
        assert_ne!(sealed, keys.seal(b"seed bytes", "totp:1"));
        assert!(keys.open("v1.AAAA", "totp:1").is_none());
        assert!(keys.open("garbage", "totp:1").is_none());
    }

    #[test]
    fn tokens_check_purpose_key_expiry_and_integrity() {
        let keys = Keys::random();
        let token = keys.sign("signin", &(7_i64, "x"), 1_000);
        assert_eq!(
            keys.verify::<(i64, String)>("signin", &token, 999),
            Some((7, "x".to_owned()))
        );
        assert_eq!(keys.verify::<(i64, String)>("signin", &token, 1_001), None);
        assert_eq!(keys.verify::<(i64, String)>("restore", &token, 999), None);
        assert_eq!(
            Keys::random().verify::<(i64, String)>("signin", &token, 999),
            None
        );
        let (body, mac) = token.split_once('.').unwrap();
        let forged = B64.encode(serde_json::to_vec(&(1_000_i64, (8_i64, "x"))).unwrap());
        assert_eq!(
            keys.verify::<(i64, String)>("signin", &format!("{forged}.{mac}"), 999),
            None
        );
        assert!(!body.is_empty());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            Keys::from_secret(&Secret::from("short")),
            Err(KeyError::TooShort)
        ));
        let a = Keys::from_secret(&Secret::from("a".repeat(40).as_str())).unwrap();
        let b = Keys::from_secret(&Secret::from("a".repeat(40).as_str())).unwrap();
        // One secret, one key: every node reading the same file agrees.
        assert_eq!(a.open(&b.seal(b"v", "c"), "c").unwrap().expose(), b"v");
    }
}
