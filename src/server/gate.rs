//! The login gate: every credential check of every protocol (the pre-auth driver for IMAP,
//! submission and XMPP, HTTP Basic, the auth server) goes through here.
//!
//! It decides with the credential index, logs every refusal the same way, and answers every
//! refusal `failure_delay` after the login arrived, whatever failed: an unknown account, a
//! wrong secret, a wrong service, another account's authorization identity, or a check that
//! could not finish in that time (a slow hash waiting behind a flood is abandoned then, so
//! the time of a refusal tells nothing about which accounts exist, and no work outlives it).

use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use crate::credentials::{AuthError, Credentials, Grant, Origin, Protocol, Service};

/// One login's pass through the gate, from the moment it arrived.
pub struct Gate<'a> {
    shared: &'a Shared,
    /// Refusals are answered at this instant, and checks end by it.
    answer_at: Instant,
}

impl<'a> Gate<'a> {
    /// A login arrived now.
    pub fn arrived(shared: &'a Shared) -> Self {
        Self {
            shared,
            answer_at: Instant::now() + Duration::from_millis(shared.auth.failure_delay_ms),
        }
    }

    /// Decides `credentials` for `service`. `Err(Rejected)` comes back at the failure delay.
    pub async fn check(
        &self,
        service: Service,
        protocol: Protocol,
        credentials: &Credentials,
        origin: &Origin,
    ) -> Result<Grant, AuthError> {
        let check = self
            .shared
            .index
            .authenticate(service, protocol, credentials, origin);
        let outcome = match tokio::time::timeout_at(self.answer_at, check).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!("credential check not finished within the failure delay; refused");
                Err(AuthError::Rejected)
            }
        };
        match &outcome {
            Ok(_) => {}
            Err(AuthError::Rejected) => {
                self.refuse(&credentials.login, service, protocol, "login refused")
                    .await;
            }
            Err(AuthError::Unavailable(reason)) => {
                tracing::warn!(%reason, "credential check unavailable");
            }
        }
        outcome
    }

    /// Logs a refusal and waits until it may be answered. For refusals decided outside the
    /// index too (malformed credentials, tickets), so they look like every other.
    pub async fn refuse(&self, login: &str, service: Service, protocol: Protocol, why: &str) {
        tracing::info!(
            login = %crate::protocol::printable(login),
            %service,
            protocol = protocol.as_str(),
            "{why}"
        );
        tokio::time::sleep_until(self.answer_at).await;
    }
}
