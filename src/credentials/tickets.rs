//! One-time tickets: how the gateway logs in to a backend that asks portcullis (through the
//! authentication server) without ever handing it the client's secret.
//!
//! The XMPP gateway mints a ticket for each session, for the account and service it has just
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

    /// Mints a ticket for `login` on `service` (one per gateway session).
    pub fn mint(&self, login: &Login, service: Service) -> Secret {
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
                expires: Instant::now() + TICKET_LIFETIME,
            },
        );
        Secret::from(ticket)
    }

    /// Whether `secret` looks like a ticket (and so must not be tried as a password).
    pub fn is_ticket(secret: &Secret) -> bool {
        secret.expose().starts_with(PREFIX.as_bytes())
    }

    /// Redeems a ticket: true once, for its account and service, before it expires. Any try
    /// spends it.
    pub fn redeem(&self, login: &Login, service: Service, secret: &Secret) -> bool {
        self.outstanding
            .remove(&digest(secret.expose()))
            .is_some_and(|(_, entry)| {
                entry.login == *login && entry.service == service && entry.expires > Instant::now()
            })
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
        let t = tickets.mint(&alice(), Service::Xmpp);
        assert!(Tickets::is_ticket(&t));
        assert!(tickets.redeem(&alice(), Service::Xmpp, &t));
        assert!(!tickets.redeem(&alice(), Service::Xmpp, &t), "used twice");
        let t = tickets.mint(&alice(), Service::Xmpp);
        let bob = Login::parse("bob@example.org", None).unwrap();
        assert!(!tickets.redeem(&bob, Service::Xmpp, &t), "another account");
        assert!(
            !tickets.redeem(&alice(), Service::Xmpp, &t),
            "a failed try spends it"
        );
        let t = tickets.mint(&alice(), Service::Xmpp);
        assert!(
            !tickets.redeem(&alice(), Service::Mail, &t),
            "another service"
        );
        assert!(!Tickets::is_ticket(&Secret::from("abcdefghijklmnop")));
    }

    #[test]
    fn tickets_expire() {
        let tickets = Tickets::new();
        let t = tickets.mint(&alice(), Service::Xmpp);
        if let Some(mut entry) = tickets.outstanding.iter_mut().next() {
            entry.expires = Instant::now() - Duration::from_secs(1);
        }
        assert!(!tickets.redeem(&alice(), Service::Xmpp, &t));
        // Expired tickets are swept when the next is minted.
        let _ = tickets.mint(&alice(), Service::Xmpp);
        let _ = tickets.mint(&alice(), Service::Xmpp);
        assert_eq!(tickets.outstanding.len(), 2);
    }
}
