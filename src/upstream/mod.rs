//! The backend side: connecting (TLS if configured), logging in on the user's behalf, and the
//! relay that carries the session afterwards.

pub mod http;
pub mod imap;
pub mod pop3;
pub mod relay;
pub mod smtp;
pub mod warm;
pub mod xmpp;

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{BackendConfig, BackendLogin, BackendTls, read_secret_file};
use crate::credentials::{Login, Secret};
use crate::io::Stream;

/// Why the backend could not give us a session. Every variant becomes a temporary failure for
/// the client; the text is for the operator's log and never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to backend {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The connection broke or closed mid-exchange.
    #[error("backend {address} dropped the connection: {reason}")]
    Lost { address: String, reason: String },
    #[error("backend {address} timed out")]
    Timeout { address: String },
    #[error("backend {address} broke the protocol: {reason}")]
    Protocol { address: String, reason: String },
    #[error("backend {address} refused the gateway's login: {reply}")]
    Refused { address: String, reply: String },
    #[error("cannot mint a login ticket for the backend: {0}")]
    Ticket(String),
}

/// A configured backend, ready to connect.
pub struct Backend {
    pub name: String,
    pub config: BackendConfig,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    master_password: Option<Secret>,
    /// Connections opened ahead for logins (IMAP, POP3, submission).
    pub warm: warm::Warm,
}

impl Backend {
    /// Loads the backend's CA and master password.
    pub fn new(name: &str, config: &BackendConfig) -> Result<Self, String> {
        let tls = match config.tls {
            BackendTls::None => None,
            BackendTls::Starttls | BackendTls::Implicit => {
                let client = crate::tls::backend_client_config(config.ca_file.as_deref())
                    .map_err(|e| format!("[backend.{name}]: {e}"))?;
                let host = config
                    .server_name
                    .clone()
                    .unwrap_or_else(|| config.host().to_owned());
                let server_name = ServerName::try_from(host.clone()).map_err(|_| {
                    format!("[backend.{name}]: {host:?} is not a valid server name")
                })?;
                Some((client, server_name))
            }
        };
        let master_password = match (&config.login, &config.master_password_file) {
            (BackendLogin::Xclient, _) | (_, None) => None,
            (_, Some(path)) => {
                Some(read_secret_file(path).map_err(|e| format!("[backend.{name}]: {e}"))?)
            }
        };
        Ok(Self {
            name: name.to_owned(),
            config: config.clone(),
            tls,
            master_password,
            warm: warm::Warm::new(config.warm_connections),
        })
    }

    /// Runs a client's backend login (`attempt`, from the greeting on) under the timeout, on a
    /// warm connection if one is ready (see [`warm`]), else on a new one; either way another is
    /// opened for the next login. A login that fails on a warm connection runs once more on a
    /// new one: the warm one may belong to a server process that is going away (after a
    /// Dovecot restart, an old login process keeps its connections but its auth service is
    /// gone, and answers `NO [UNAVAILABLE]`), and a login is safe to repeat.
    pub async fn login_opened<T, F, Fut>(self: &Arc<Self>, attempt: F) -> Result<T, BackendError>
    where
        F: Fn(warm::Opened) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        self.login_within_timeout(async {
            let ready = self.warm.take().await;
            self.warm.refill(self);
            crate::telemetry::backend_login_connection(&self.name, ready.is_some());
            if let Some(opened) = ready {
                match attempt(opened).await {
                    Err(e) => tracing::debug!(error = %e, "login on a warm backend connection failed; once more on a new one"),
                    result => return result,
                }
            }
            attempt(warm::Opened::new(self.connect().await?)).await
        })
        .await
    }

    /// Runs a backend exchange under the backend's timeout: a silent backend is an error, not a
    /// hang.
    pub async fn within_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        tokio::time::timeout(self.config.timeout(), work)
            .await
            .map_err(|_| BackendError::Timeout {
                address: self.address(),
            })?
    }

    /// A login to the backend for a client (connect, greeting, login), under the timeout and
    /// timed for the metrics.
    pub async fn login_within_timeout<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let started = std::time::Instant::now();
        let result = self.within_timeout(work).await;
        crate::telemetry::backend_login(&self.name, result.is_ok(), started.elapsed());
        result
    }

    fn address(&self) -> String {
        self.config.address().to_owned()
    }

    /// Opens TCP, and TLS at once when `tls = "implicit"`.
    pub async fn connect(&self) -> Result<Stream, BackendError> {
        let started = std::time::Instant::now();
        let stream = self.connect_untimed().await?;
        crate::telemetry::backend_connect(&self.name, started.elapsed());
        Ok(stream)
    }

    async fn connect_untimed(&self) -> Result<Stream, BackendError> {
        let tcp = TcpStream::connect(self.config.address())
            .await
            .map_err(|e| BackendError::Connect {
                address: self.address(),
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        match self.config.tls {
            BackendTls::Implicit => self.start_tls(tcp).await,
            _ => Ok(Stream::Plain(tcp)),
        }
    }

    /// Runs the TLS handshake on a connected socket, checking the backend's certificate.
    pub async fn start_tls(&self, tcp: TcpStream) -> Result<Stream, BackendError> {
        let Some((config, name)) = &self.tls else {
            return Err(BackendError::Protocol {
                address: self.address(),
                reason: "TLS requested without a TLS configuration".into(),
            });
        };
        let stream = TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| BackendError::Connect {
                address: self.address(),
                reason: format!("TLS handshake: {e}"),
            })?;
        Ok(Stream::Client(Box::new(stream)))
    }

    /// The user name the backend knows the account by.
    pub fn user_for(&self, login: &Login) -> String {
        if self.config.strip_domain {
            login.local_part().to_owned()
        } else {
            login.as_str().to_owned()
        }
    }

    /// The user name and password that log in as `user` through Dovecot's master user
    /// (`user*master` with the master password), for `login = "master-user"` backends.
    pub fn master_login(&self, user: &str) -> Option<(String, &Secret)> {
        if self.config.login != BackendLogin::MasterUser {
            return None;
        }
        let master = self.config.master_user.as_deref()?;
        let password = self.master_password.as_ref()?;
        Some((
            format!("{user}{}{master}", self.config.master_separator),
            password,
        ))
    }

    /// The SASL PLAIN message (base64) that logs in as `user` with the master credentials.
    fn plain_login(&self, user: &str) -> Option<Secret> {
        Some(match self.config.login {
            BackendLogin::MasterUser => {
                let (authcid, password) = self.master_login(user)?;
                crate::protocol::sasl::plain_message("", &authcid, password)
            }
            BackendLogin::SaslAuthzid => {
                let master = self.config.master_user.as_deref()?;
                let password = self.master_password.as_ref()?;
                crate::protocol::sasl::plain_message(user, master, password)
            }
            BackendLogin::Xclient
            | BackendLogin::TrustedHeader
            | BackendLogin::Basic
            | BackendLogin::Ticket => {
                return None;
            }
        })
    }

    fn protocol_error(&self, reason: impl Into<String>) -> BackendError {
        BackendError::Protocol {
            address: self.address(),
            reason: reason.into(),
        }
    }

    fn io_error(&self, e: std::io::Error) -> BackendError {
        BackendError::Lost {
            address: self.address(),
            reason: match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "connection closed".to_owned(),
                _ => e.to_string(),
            },
        }
    }

    fn refused(&self, reply: &str) -> BackendError {
        BackendError::Refused {
            address: self.address(),
            reply: reply.chars().take(200).collect(),
        }
    }
}

/// The client's address as backends want it for logging and rate limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}
