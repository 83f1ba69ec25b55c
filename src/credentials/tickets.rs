//! One-time tickets: how the gateway logs in to a backend that asks portcullis (through the
//! authentication server) without ever handing it the client's secret.
//!
//! The XMPP gateway mints a ticket for the account, service and session it has just
//! authenticated, sends it to the backend as the SASL password, and the backend asks the auth
//! server, which redeems it: once, for that account and service only, within its lifetime.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use super::model::{Login, Service};
use super::secret::Secret;

/// How long a ticket may wait to be redeemed.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// Prefix that tells a ticket from a password at a glance (and keeps tickets out of the
/// app-password shape, so they can never match one).
const PREFIX: &str = "pct1-";

struct Entry {
    login: Login,
    service: Service,
    session: u64,
    expires: Instant,
}

/// Outstanding tickets, by digest: the table never holds a ticket itself.
#[derive(Default)]
pub struct Tickets {
    outstanding: DashMap<[u8; 32], Entry>,
}

impl Tickets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Mints a ticket for `login` on `service`, for the gateway session `session`.
    pub fn mint(&self, login: &Login, service: Service, session: u64) -> Secret {
        self.sweep();
        let ticket = format!(
            "{PREFIX}{}",
            super::hashing::hex(&rand::random::<[u8; 24]>())
        );
        self.outstanding.insert(
            digest(ticket.as_bytes()),
            Entry {
                login: login.clone(),
                service,
                session,
                expires: Instant::now() + TICKET_LIFETIME,
            },
        );
        Secret::from(ticket)
    }

    /// Whether `secret` looks like a ticket (and so must not be tried as a password).
    pub fn is_ticket(secret: &Secret) -> bool {
        secret.expose().starts_with(PREFIX.as_bytes())
    }

    /// Redeems a ticket: true once, for its account and service, before it expires. Returns
    /// the session it was minted for.
    pub fn redeem(&self, login: &Login, service: Service, secret: &Secret) -> Option<u64> {
        let (_, entry) = self.outstanding.remove(&digest(secret.expose()))?;
        (entry.login == *login && entry.service == service && entry.expires > Instant::now())
            .then_some(entry.session)
    }

    fn sweep(&self) {
        let now = Instant::now();
        self.outstanding.retain(|_, entry| entry.expires > now);
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Login {
        Login::parse("alice@example.org", None).unwrap()
    }

    #[test]
    fn a_ticket_is_good_once_for_its_account_and_service() {
        let tickets = Tickets::new();
        let t = tickets.mint(&alice(), Service::Xmpp, 7);
        assert!(Tickets::is_ticket(&t));
        assert_eq!(tickets.redeem(&alice(), Service::Xmpp, &t), Some(7));
        assert_eq!(
            tickets.redeem(&alice(), Service::Xmpp, &t),
            None,
            "used twice"
        );
        let t = tickets.mint(&alice(), Service::Xmpp, 8);
        let bob = Login::parse("bob@example.org", None).unwrap();
        assert_eq!(
            tickets.redeem(&bob, Service::Xmpp, &t),
            None,
            "another account"
        );
        assert_eq!(
            tickets.redeem(&alice(), Service::Xmpp, &t),
            None,
            "a failed try spends it"
        );
        let t = tickets.mint(&alice(), Service::Xmpp, 9);
        assert_eq!(
            tickets.redeem(&alice(), Service::Mail, &t),
            None,
            "another service"
        );
        assert!(!Tickets::is_ticket(&Secret::from("abcdefghijklmnop")));
    }

    #[test]
    fn tickets_expire() {
        let tickets = Tickets::new();
        let t = tickets.mint(&alice(), Service::Xmpp, 1);
        if let Some(mut entry) = tickets.outstanding.iter_mut().next() {
            entry.expires = Instant::now() - Duration::from_secs(1);
        }
        assert_eq!(tickets.redeem(&alice(), Service::Xmpp, &t), None);
        // Expired tickets are swept when the next is minted.
        let _ = tickets.mint(&alice(), Service::Xmpp, 2);
        let _ = tickets.mint(&alice(), Service::Xmpp, 3);
        assert_eq!(tickets.outstanding.len(), 2);
    }
}
