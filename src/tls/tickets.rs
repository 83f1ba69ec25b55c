//! TLS session tickets that every node can open, so a client resumes on whichever node the
//! load balancer sends it to.
//!
//! A resumed handshake skips the certificate signature, the most expensive step of a full one,
//! and mail clients reconnect all day. Tickets are stateless: the server's session state,
//! encrypted under a ticket key (XChaCha20-Poly1305), travels with the client.
//!
//! The keys live in the store, each sealed with the deployment's secret key, and rotate: one
//! encrypts from its `not_before` until the next takes over, and still opens its tickets for
//! the lifetime of a ticket after that, then is pruned. A node announces the next key a few
//! minutes before it takes effect, so every node knows it by the time the first ticket under
//! it arrives. Old keys disappear from the store, so tickets recorded today cannot be opened
//! with a later copy of the database and key file (forward secrecy of TLS 1.2 resumption, whose
//! tickets carry the session's master secret).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rustls::server::ProducesTickets;

use crate::credentials::keys::Keys;
use crate::credentials::model::now_ms;
use crate::store::{Store, StoreError};

/// How long before it takes effect a new key is announced: longer than nodes take to read it.
const LEAD_MS: i64 = 5 * 60 * 1000;
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;

struct TicketKey {
    id: i64,
    not_before: i64,
    cipher: XChaCha20Poly1305,
}

/// The ticket keys one node knows, as rustls asks for them at every handshake.
pub struct SharedTickets {
    keys: RwLock<Arc<Vec<TicketKey>>>,
    lifetime_secs: u32,
}

impl std::fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTickets")
            .field("keys", &self.keys().len())
            .finish()
    }
}

impl SharedTickets {
    /// No keys yet: tickets are issued once [`Rotation::refresh`] has given some.
    pub fn new(lifetime: Duration) -> Self {
        SharedTickets {
            keys: RwLock::new(Arc::new(Vec::new())),
            lifetime_secs: u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX),
        }
    }

    fn keys(&self) -> Arc<Vec<TicketKey>> {
        match self.keys.read() {
            Ok(keys) => keys.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, keys: Vec<TicketKey>) {
        match self.keys.write() {
            Ok(mut guard) => *guard = Arc::new(keys),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(keys),
        }
    }

    /// The ids of the keys known, oldest first.
    pub fn key_ids(&self) -> Vec<i64> {
        self.keys().iter().map(|k| k.id).collect()
    }
}

impl ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_secs
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let now = now_ms();
        let keys = self.keys();
        let key = keys.iter().rev().find(|k| k.not_before <= now)?;
        let id = key.id.to_be_bytes();
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = key
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &id,
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(&id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let wanted = i64::from_be_bytes(id.try_into().ok()?);
        let keys = self.keys();
        let key = keys.iter().find(|k| k.id == wanted)?;
        key.cipher
            .decrypt(
                &XNonce::try_from(nonce).ok()?,
                Payload { msg: body, aad: id },
            )
            .ok()
    }
}

/// Keeps one node's [`SharedTickets`] in step with the keys in the store, adding the next key
/// when it is due.
pub struct Rotation {
    store: Store,
    secret: Arc<Keys>,
    every_ms: i64,
    tickets: Arc<SharedTickets>,
}

fn context(not_before: i64) -> String {
    format!("tls-ticket-key:{not_before}")
}

impl Rotation {
    /// Keys rotate `every` (also the lifetime of a ticket).
    pub fn new(store: Store, secret: Arc<Keys>, every: Duration) -> Self {
        let every_ms = i64::try_from(every.as_millis())
            .unwrap_or(i64::MAX / 4)
            .max(2 * LEAD_MS);
        Rotation {
            store,
            secret,
            every_ms,
            tickets: Arc::new(SharedTickets::new(Duration::from_millis(
                u64::try_from(every_ms).unwrap_or(u64::MAX),
            ))),
        }
    }

    /// What rustls is given.
    pub fn tickets(&self) -> Arc<SharedTickets> {
        self.tickets.clone()
    }

    /// Adds a key if one is due at `now`, prunes the expired, and loads them all.
    pub async fn refresh(&self, now: i64) -> Result<(), StoreError> {
        let rows = self.store.ticket_keys().await?;
        let current = rows
            .iter()
            .filter(|k| k.not_before <= now)
            .map(|k| k.not_before)
            .max();
        let next_announced = rows.iter().any(|k| k.not_before > now);
        let due = match current {
            None => (!next_announced).then_some(now),
            // Overdue (every node was down when it fell due): at once.
            Some(c) if c + self.every_ms <= now => Some(now),
            Some(c) if !next_announced && c + self.every_ms - LEAD_MS <= now => {
                Some(c + self.every_ms)
            }
            Some(_) => None,
        };
        let rows = match due {
            Some(at) => {
                let fresh: [u8; 32] = rand::random();
                let sealed = self.secret.seal(&fresh, &context(at));
                // A key that encrypted until `c` opens tickets for a lifetime after it; the
                // margin of two lifetimes covers a key that was current for one.
                let prune_before = now - 3 * self.every_ms;
                self.store
                    .add_ticket_key(at, &sealed, current.unwrap_or(i64::MIN), prune_before)
                    .await?;
                self.store.ticket_keys().await?
            }
            None => rows,
        };
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(key) = self.secret.open(&row.sealed, &context(row.not_before)) else {
                tracing::warn!(
                    key = row.id,
                    "a TLS ticket key in the store does not open with this node's secret key: do all nodes read the same [store] secret_key_file?"
                );
                continue;
            };
            let Ok(cipher) = XChaCha20Poly1305::new_from_slice(key.expose()) else {
                continue;
            };
            keys.push(TicketKey {
                id: row.id,
                not_before: row.not_before,
                cipher,
            });
        }
        self.tickets.set(keys);
        Ok(())
    }

    /// Refreshes every minute (sooner for short rotations) until `shutdown`.
    pub async fn run(self, shutdown: tokio_util::sync::CancellationToken) {
        let period = Duration::from_millis(
            u64::try_from((self.every_ms / 8).clamp(1_000, 60_000)).unwrap_or(60_000),
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.refresh(now_ms()).await {
                tracing::warn!(
                    "cannot refresh TLS ticket keys (tickets under known keys still work): {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    crate::store::testing::store_test! {
    async fn keys_rotate_ahead_of_time_and_every_node_opens_every_ticket() {
        let store = crate::store::open(&crate::store::testing::store_url()).await.unwrap();
        let secret = Arc::new(Keys::random());
        let a = Rotation::new(store.clone(), secret.clone(), Duration::from_secs(6 * 3600));
        let b = Rotation::new(store.clone(), secret.clone(), Duration::from_secs(6 * 3600));
        let t0 = now_ms() - 10 * HOUR;
        a.refresh(t0).await.unwrap();
        b.refresh(t0).await.unwrap();
        assert_eq!(a.tickets().key_ids().len(), 1, "the second node found the first's key");
        assert_eq!(a.tickets().key_ids(), b.tickets().key_ids());

        // Five minutes before the rotation, the next key is announced but not yet used.
        a.refresh(t0 + 6 * HOUR - LEAD_MS).await.unwrap();
        b.refresh(t0 + 6 * HOUR - LEAD_MS + 1).await.unwrap();
        let ids = b.tickets().key_ids();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(ids, a.tickets().key_ids());
        let rows = store.ticket_keys().await.unwrap();
        assert_eq!(rows[1].not_before, t0 + 6 * HOUR);

        // Real time is now past both not_before values: the newer key encrypts, and a ticket
        // from one node opens on the other.
        let ticket = a.tickets().encrypt(b"session state").unwrap();
        assert_eq!(i64::from_be_bytes(ticket[..8].try_into().unwrap()), ids[1]);
        assert_eq!(b.tickets().decrypt(&ticket).unwrap(), b"session state");
        let mut forged = ticket.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(b.tickets().decrypt(&forged).is_none());
        assert!(b.tickets().decrypt(&ticket[..20]).is_none());

        // A node with another secret key opens none of them, and says so.
        let stranger = Rotation::new(store.clone(), Arc::new(Keys::random()), Duration::from_secs(6 * 3600));
        stranger.refresh(t0 + 6 * HOUR).await.unwrap();
        assert!(stranger.tickets().key_ids().is_empty());

        // Three rotations later the first key is gone from the store and the nodes.
        a.refresh(t0 + 19 * HOUR).await.unwrap();
        let rows = store.ticket_keys().await.unwrap();
        assert!(rows.iter().all(|k| k.not_before >= t0 + 6 * HOUR), "{rows:?}");
        assert!(!a.tickets().key_ids().contains(&ids[0]));
    }
    }

    #[test]
    fn no_key_no_ticket() {
        let tickets = SharedTickets::new(Duration::from_secs(60));
        assert!(tickets.encrypt(b"x").is_none());
        assert!(tickets.decrypt(&[0; 64]).is_none());
    }
}
