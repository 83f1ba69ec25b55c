//! The pre-authentication driver shared by every protocol.
//!
//! It runs a [`PreAuth`] machine against a client socket: greeting, reads bounded by the login
//! deadline, STARTTLS, the credential check with its failure delay, and goodbyes on timeout and
//! shutdown. It returns once a login passed the credential check; the post-login driver
//! ([`super::relayed`]) then logs in to the backend and relays.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ListenerContext;
use super::admission::Admitted;
use super::gate::Gate;
use super::relayed::HandOver;
use crate::config::ListenerTls;
use crate::credentials::{AuthError, Grant, Protocol};
use crate::io::Stream;
use crate::protocol::{Action, LoginRequest, PreAuth};
use crate::upstream::ClientInfo;
use crate::upstream::relay::{Boundary, Goodbyes, relay};

/// How a pre-auth phase ended.
pub enum PreAuthEnd {
    /// The credential check passed for the login in `tag`.
    LoggedIn {
        stream: Stream,
        tag: String,
        grant: Grant,
    },
    /// The connection is over.
    Closed,
}

/// A client connection before login.
pub struct Session<'a> {
    pub context: &'a Arc<ListenerContext>,
    pub client: ClientInfo,
    pub protocol: Protocol,
    /// Login must succeed before this instant.
    pub deadline: Instant,
    /// The connection's place in the limits; it stops counting as pre-login once logged in.
    admitted: &'a Admitted,
    /// Counts the session among the live ones while it exists.
    live: crate::telemetry::SessionGauge,
}

impl<'a> Session<'a> {
    pub fn new(
        context: &'a Arc<ListenerContext>,
        client: ClientInfo,
        protocol: Protocol,
        admitted: &'a Admitted,
    ) -> Self {
        Self {
            live: crate::telemetry::SessionGauge::new(protocol.as_str()),
            deadline: Instant::now() + context.shared.limits.login_timeout(),
            context,
            client,
            protocol,
            admitted,
        }
    }

    /// Accepts TLS at once on implicit-TLS listeners; plain otherwise.
    pub async fn open(&self, tcp: TcpStream) -> Option<Stream> {
        match self.context.config.tls {
            ListenerTls::Starttls => Some(Stream::Plain(tcp)),
            ListenerTls::Implicit => self.handshake(tcp).await,
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> Option<Stream> {
        let timeout = self.context.shared.limits.handshake_timeout();
        match tokio::time::timeout(timeout, self.context.shared.tls.accept(tcp)).await {
            Ok(Ok(tls)) => {
                crate::telemetry::tls_handshake(tls.get_ref().1);
                Some(Stream::Server(Box::new(tls)))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        }
    }

    /// Runs the machine until a login passes the credential check or the connection ends.
    /// `greet` is false when resuming after a backend failure.
    pub async fn pre_auth(
        &self,
        mut stream: Stream,
        machine: &mut dyn PreAuth,
        greet: bool,
    ) -> PreAuthEnd {
        if greet && !self.write(&mut stream, &machine.greeting()).await {
            return PreAuthEnd::Closed;
        }
        let mut buffer = vec![0u8; 4096];
        loop {
            match machine.next_action() {
                Action::Write(bytes) => {
                    if !self.write(&mut stream, &bytes).await {
                        return PreAuthEnd::Closed;
                    }
                }
                Action::Close(bytes) => {
                    let _ = self.write(&mut stream, &bytes).await;
                    close(&mut stream).await;
                    return PreAuthEnd::Closed;
                }
                Action::StartTls(bytes) => {
                    if !self.write(&mut stream, &bytes).await {
                        return PreAuthEnd::Closed;
                    }
                    let Some(tcp) = stream.into_plain() else {
                        return PreAuthEnd::Closed;
                    };
                    let Some(tls) = self.handshake(tcp).await else {
                        return PreAuthEnd::Closed;
                    };
                    stream = tls;
                    machine.tls_started();
                }
                Action::Login(request) => {
                    match self.check(request, machine).await {
                        Ok((tag, grant)) => return PreAuthEnd::LoggedIn { stream, tag, grant },
                        Err(reply) => {
                            // The reply is the machine's next action (a refusal or a close).
                            let (bytes, hang_up) = match reply {
                                Action::Close(bytes) => (bytes, true),
                                Action::Write(bytes) => (bytes, false),
                                _ => (Vec::new(), true),
                            };
                            if !self.write(&mut stream, &bytes).await || hang_up {
                                close(&mut stream).await;
                                return PreAuthEnd::Closed;
                            }
                        }
                    }
                }
                Action::NeedInput => {
                    let Some(n) = self.read(&mut stream, machine, &mut buffer).await else {
                        return PreAuthEnd::Closed;
                    };
                    machine.enqueue(&buffer[..n]);
                }
            }
        }
    }

    /// Reads before the session is handed to the relay, under the login deadline and racing
    /// shutdown, saying the machine's goodbye when either ends it. `None` once the connection
    /// is over.
    pub async fn read(
        &self,
        stream: &mut Stream,
        machine: &mut dyn PreAuth,
        buffer: &mut [u8],
    ) -> Option<usize> {
        let shutdown = &self.context.shared.shutdown;
        let read = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = self.write(stream, machine.shutdown_goodbye()).await;
                return None;
            }
            read = tokio::time::timeout_at(self.deadline, stream.read(buffer)) => read,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => None,
            Ok(Ok(n)) => Some(n),
            Err(_) => {
                tracing::debug!("login deadline passed");
                // The deadline has passed, so the goodbye gets a moment of its own.
                let goodbye = write(stream, machine.timeout_goodbye());
                let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
                close(stream).await;
                None
            }
        }
    }

    /// Writes before login, bounded by the login deadline: a client that does not read cannot
    /// hold a connection past it.
    pub async fn write(&self, stream: &mut Stream, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout_at(self.deadline, write(stream, bytes)).await,
            Ok(true)
        )
    }

    /// The credential check, through the login gate (which times and logs refusals).
    async fn check(
        &self,
        request: LoginRequest,
        machine: &mut dyn PreAuth,
    ) -> Result<(String, Grant), Action> {
        let LoginRequest { tag, credentials } = request;
        let outcome = Gate::arrived(&self.context.shared, self.client.peer.ip().into())
            .check(self.protocol.service(), self.protocol, &credentials)
            .await;
        drop(credentials);
        match outcome {
            Ok(grant) => {
                self.admitted.logged_in();
                tracing::info!(login = %grant.login, credential = ?grant.credential, "login accepted");
                Ok((tag, grant))
            }
            Err(AuthError::Rejected) => Err(machine.login_rejected(&tag)),
            Err(AuthError::Unavailable(_)) => Err(machine.login_unavailable(&tag)),
        }
    }
}

impl Session<'_> {
    /// Hands the session over: the login reply (and anything the backend sent past its own
    /// login) to the client, anything the client sent past its login to the backend, then
    /// the relay.
    pub async fn relay(
        &self,
        mut client: Stream,
        hand_over: HandOver,
        grant: &Grant,
        boundary: &mut dyn Boundary,
        goodbyes: &Goodbyes,
        idle: Duration,
    ) {
        let HandOver {
            mut backend,
            to_client,
            to_backend,
        } = hand_over;
        boundary.observe(&to_client);
        boundary.client_sent(&to_backend);
        if !write(&mut client, &to_client).await {
            return;
        }
        if !to_backend.is_empty() && !write(&mut backend, &to_backend).await {
            return;
        }
        let end = relay(
            &mut client,
            &mut backend,
            grant,
            boundary,
            goodbyes,
            idle,
            &self.context.shared.shutdown,
        )
        .await;
        if matches!(end, crate::upstream::relay::RelayEnd::Revoked { .. }) {
            self.live.cut();
        }
        tracing::info!(?end, login = %grant.login, "session ended");
        let _ = backend.shutdown().await;
    }
}

/// Ends a connection politely (TLS close_notify, FIN) without waiting on a peer that does not
/// read.
async fn close(stream: &mut Stream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// Writes and flushes; false when the client is gone.
pub async fn write(stream: &mut Stream, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    stream.write_all(bytes).await.is_ok() && stream.flush().await.is_ok()
}
