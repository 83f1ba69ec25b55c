//! The login gate: every credential check of every protocol (the pre-auth driver for IMAP,
//! submission and XMPP, HTTP Basic, the auth server) goes through here.
//!
//! It asks the throttle first ([`super::throttle`]: a banned address, or one past its budget
//! with no slot free, is refused unchecked and costs no hash), decides with the credential
//! index, tells the throttle the outcome, logs every refusal in one fixed format (one line per
//! failed login, for fail2ban: [`LOGIN_LOG_TARGET`]), and answers every
//! refusal `failure_delay` after the login arrived, whatever failed: an unknown account, a
//! wrong secret, a wrong service, another account's authorization identity, or a check that
//! could not finish in that time (a slow hash waiting behind a flood is abandoned then, so
//! the time of a refusal tells nothing about which accounts exist, and no work outlives it).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::throttle::{Admission, Failure};
use crate::credentials::model::now_ms;
use crate::credentials::{AuthError, Credentials, Grant, Origin, Protocol, Secret, Service};

/// The target of the one line logged per failed login, in the documented format
/// `login failed: address=IP login="..." protocol=P service=S reason=R` (what
/// `contrib/fail2ban/filter.d/portcullis.conf` matches).
pub const LOGIN_LOG_TARGET: &str = "portcullis::login";

/// One login's pass through the gate, from the moment it arrived.
pub struct Gate<'a> {
    shared: &'a Shared,
    origin: Origin,
    /// Whether `origin.ip` is the client's own address (not a daemon's that asked for many).
    client_known: bool,
    /// Refusals are answered at this instant, and checks end by it.
    answer_at: Instant,
}

impl<'a> Gate<'a> {
    /// A login arrived now from `origin`.
    pub fn arrived(shared: &'a Shared, origin: Origin) -> Self {
        Self {
            shared,
            origin,
            client_known: true,
            answer_at: Instant::now() + Duration::from_millis(shared.auth.failure_delay_ms),
        }
    }

    /// The login's address is not the client's (a daemon asking the auth server without
    /// naming its user's address): no throttling or ban by it, and `address=-` in the log.
    pub fn client_unknown(mut self) -> Self {
        self.client_known = false;
        self
    }

    /// Decides `credentials` for `service` with the credential index.
    pub async fn check(
        self,
        service: Service,
        protocol: Protocol,
        credentials: &Credentials,
    ) -> Result<Grant, AuthError> {
        let index = self.shared.index.clone();
        let origin = self.origin.clone();
        let labels = Labels {
            protocol: protocol.as_str(),
            service: service.as_str(),
        };
        self.decide(
            labels,
            &credentials.login,
            &credentials.secret,
            async move {
                index
                    .authenticate(service, protocol, credentials, &origin)
                    .await
            },
        )
        .await
    }

    /// Decides a login with `check` (the index's, or the portal's main-password check):
    /// throttle, check, failure delay, log. `Err(Rejected)` comes back at the failure delay
    /// (counted from the attempt's slot when the address is slowed).
    pub async fn decide<T>(
        mut self,
        labels: Labels,
        login: &str,
        secret: &Secret,
        check: impl Future<Output = Result<T, AuthError>>,
    ) -> Result<T, AuthError> {
        let throttle = &self.shared.throttle;
        let ip = self.origin.ip;
        // One key per account however its login is typed (`alice`, `Alice@example.org`).
        let account_key = self
            .shared
            .accounts
            .login(login)
            .map_or_else(|_| login.to_owned(), |l| l.to_string());
        let admission = if self.client_known {
            throttle.admit(ip, &account_key, Instant::now(), now_ms())
        } else {
            Admission::Now
        };
        match admission {
            Admission::Now => {}
            Admission::At(slot) => {
                tokio::time::sleep_until(slot).await;
                self.answer_at = slot + Duration::from_millis(self.shared.auth.failure_delay_ms);
            }
            Admission::Throttled => {
                self.refuse_as(labels, login, "throttled").await;
                return Err(AuthError::Rejected);
            }
            Admission::Banned(_) => {
                self.refuse_as(labels, login, "banned").await;
                return Err(AuthError::Rejected);
            }
        }
        let outcome = match tokio::time::timeout_at(self.answer_at, check).await {
            Ok(outcome) => outcome,
            Err(_) => {
                tracing::warn!("credential check not finished within the failure delay; refused");
                Err(AuthError::Rejected)
            }
        };
        if outcome.is_ok() {
            crate::telemetry::login(labels, "ok");
        }
        match &outcome {
            Ok(_) if self.client_known => throttle.succeeded(ip, &account_key),
            Ok(_) => {}
            Err(AuthError::Rejected) if !self.client_known => {
                self.refuse_as(labels, login, "wrong-credentials").await;
            }
            Err(AuthError::Rejected) => {
                let failure = throttle.failed(ip, &account_key, secret, Instant::now(), now_ms());
                let reason = match failure {
                    Failure::Repeated => "repeated",
                    Failure::Counted(ban) => {
                        if let Some(ban) = ban {
                            self.shared.record_ban(ban);
                        }
                        "wrong-credentials"
                    }
                };
                self.refuse_as(labels, login, reason).await;
            }
            Err(AuthError::Unavailable(reason)) => {
                if self.client_known {
                    throttle.undecided(ip);
                }
                crate::telemetry::login(labels, "unavailable");
                tracing::warn!(%reason, "credential check unavailable");
            }
        }
        outcome
    }

    /// Logs a refusal in the fixed format and waits until it may be answered. For refusals
    /// decided outside the index too (malformed credentials, tickets), so they look like every
    /// other. `reason` is one word: `wrong-credentials` (a new guess), `repeated` (a secret this
    /// address already failed with: a stale device, not counted against it), `throttled`,
    /// `banned`, `malformed`, `ticket`.
    pub async fn refuse(
        &self,
        login: &str,
        service: Service,
        protocol: Protocol,
        reason: &'static str,
    ) {
        let labels = Labels {
            protocol: protocol.as_str(),
            service: service.as_str(),
        };
        self.refuse_as(labels, login, reason).await;
    }

    async fn refuse_as(&self, labels: Labels, login: &str, reason: &'static str) {
        crate::telemetry::login(labels, reason);
        let address = if self.client_known {
            self.origin.ip.to_string()
        } else {
            "-".to_owned()
        };
        tracing::warn!(
            target: LOGIN_LOG_TARGET,
            "login failed: address={address} login={:?} protocol={} service={} reason={reason}",
            crate::protocol::printable(login),
            labels.protocol,
            labels.service,
        );
        tokio::time::sleep_until(self.answer_at).await;
    }
}

/// What a login is for, as the log line names it.
#[derive(Debug, Clone, Copy)]
pub struct Labels {
    pub protocol: &'static str,
    pub service: &'static str,
}

impl Labels {
    /// A sign-in to the account portal (the main password).
    pub const PORTAL: Labels = Labels {
        protocol: "portal",
        service: "account",
    };
}
