//! One-time tickets: how the gateway logs in to a backend that asks portcullis (through the
//! authentication server) without ever handing it the client's secret.
//!
//! The XMPP gateway mints a ticket for each session, for the account and service it has just
//! authenticated, sends it to the backend as the SASL password, and the backend asks the auth
//! server, which redeems it: once, for that account and service only, within its lifetime.
//! Tickets live in the store (digests only), so the node that mints one and the node whose auth
//! server the backend asks need not be the same.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::model::{Login, Service, now_ms};
use super::secret::Secret;
use crate::store::{Store, StoreError};

/// How long a ticket may wait to be redeemed.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(30);

/// Prefix that tells a ticket from a password at a glance (and keeps tickets out of the
/// app-password shape, so they can never match one).
const PREFIX: &str = "pct1-";

/// Outstanding tickets, in the store by digest: it never holds a ticket itself.
pub struct Tickets {
    store: Store,
}

impl Tickets {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Mints a ticket for `login` on `service` (one per gateway session).
    pub async fn mint(&self, login: &Login, service: Service) -> Result<Secret, StoreError> {
        let ticket = format!(
            "{PREFIX}{}",
            super::hashing::hex(&rand::random::<[u8; 24]>())
        );
        let lifetime = i64::try_from(TICKET_LIFETIME.as_millis()).unwrap_or(30_000);
        self.store
            .create_ticket(
                &digest(ticket.as_bytes()),
                login,
                service,
                now_ms() + lifetime,
            )
            .await?;
        Ok(Secret::from(ticket))
    }

    /// Whether `secret` looks like a ticket (and so must not be tried as a password).
    pub fn is_ticket(secret: &Secret) -> bool {
        secret.expose().starts_with(PREFIX.as_bytes())
    }

    /// Redeems a ticket: true once, for its account and service, before it expires. Any try
    /// spends it.
    pub async fn redeem(&self, login: &Login, service: Service, secret: &Secret) -> bool {
        match self
            .store
            .take_ticket(&digest(secret.expose()), now_ms())
            .await
        {
            Ok(Some((owner, for_service))) => owner == *login && for_service == service,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "a ticket could not be redeemed");
                false
            }
        }
    }
}

fn digest(bytes: &[u8]) -> String {
    super::hashing::hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Login {
        Login::parse("alice@example.org", None).unwrap()
    }

    async fn tickets() -> Tickets {
        Tickets::new(crate::store::open("sqlite::memory:").await.unwrap())
    }

    #[tokio::test]
    async fn a_ticket_is_good_once_for_its_account_and_service() {
        let tickets = tickets().await;
        let t = tickets.mint(&alice(), Service::Xmpp).await.unwrap();
        assert!(Tickets::is_ticket(&t));
        assert!(tickets.redeem(&alice(), Service::Xmpp, &t).await);
        assert!(
            !tickets.redeem(&alice(), Service::Xmpp, &t).await,
            "used twice"
        );
        let t = tickets.mint(&alice(), Service::Xmpp).await.unwrap();
        let bob = Login::parse("bob@example.org", None).unwrap();
        assert!(
            !tickets.redeem(&bob, Service::Xmpp, &t).await,
            "another account"
        );
        assert!(
            !tickets.redeem(&alice(), Service::Xmpp, &t).await,
            "a failed try spends it"
        );
        let t = tickets.mint(&alice(), Service::Xmpp).await.unwrap();
        assert!(
            !tickets.redeem(&alice(), Service::Mail, &t).await,
            "another service"
        );
        assert!(!Tickets::is_ticket(&Secret::from("abcdefghijklmnop")));
    }

    #[tokio::test]
    async fn tickets_expire() {
        let tickets = tickets().await;
        let t = tickets.mint(&alice(), Service::Xmpp).await.unwrap();
        // Redeemed as if a minute had passed.
        let taken = tickets
            .store
            .take_ticket(&digest(t.expose()), now_ms() + 60_000)
            .await
            .unwrap();
        assert_eq!(taken, None);
        assert!(!tickets.redeem(&alice(), Service::Xmpp, &t).await);
    }
}
