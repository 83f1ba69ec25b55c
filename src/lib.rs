//! portcullis: a protocol gateway in front of mail, file, calendar and chat servers.
//!
//! Clients connect to portcullis; it terminates TLS, reads the protocol's login command, checks
//! the secret against its own credential index, logs in to the real backend with credentials the
//! client never sees, and relays the session, cutting it the moment the credential dies.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, its defaults and validation.
//! - [`credentials`]: accounts, app passwords, generations; the redacting [`credentials::Secret`];
//!   argon2 off the executor; the cached [`credentials::CredentialIndex`] that decides logins;
//!   one-time tickets for backend logins.
//! - [`store`]: SQL storage (SQLite by default) and the change feed that carries other
//!   processes' changes to a running gateway.
//! - [`tls`]: server and backend TLS configuration, the development certificate.
//! - [`protocol`]: sans-I/O protocol code: the pre-authentication machines of IMAP and SMTP
//!   submission, SASL, HTTP routing/credentials/smuggling detection, and the server side of
//!   Dovecot's authentication protocol.
//! - [`upstream`]: backend connections, backend login methods, the relay, and the pooled HTTP
//!   client for DAV backends.
//! - [`server`]: listeners, connection limits, deadlines, shutdown, and the drivers that connect
//!   a protocol to sockets, the index and the backend (IMAP, submission, HTTPS, auth server).
//! - [`portal`]: the account portal, where people sign in and manage their own app passwords
//!   and sessions in a browser.
//! - [`cli`]: the operator's command line.

#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod discovery;
pub mod dns;
pub mod io;
pub mod portal;
pub mod protocol;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
