//! Configuration: one TOML file, unknown keys refused, every limit with a documented default.
//!
//! The shape is the operator's contract; `config/portcullis.toml` is a working example and is
//! parsed by a test. Relative paths are relative to the directory the gateway runs in.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::{Secret, Service};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Appended to a login typed without `@domain`.
    #[serde(default)]
    pub default_domain: Option<String>,
    /// The name the gateway gives in SMTP greetings and EHLO (default "localhost").
    #[serde(default)]
    pub hostname: Option<String>,
    pub store: StoreConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "backend")]
    pub backends: BTreeMap<String, BackendConfig>,
    /// The authentication server for other daemons (Dovecot's auth protocol).
    #[serde(default)]
    pub auth_server: Option<AuthServerConfig>,
    /// nginx's mail proxy asking who may log in (its `auth_http` protocol).
    #[serde(default)]
    pub auth_http: Option<AuthHttpConfig>,
    /// The account portal (`protocol = "portal"` listeners).
    #[serde(default)]
    pub portal: PortalConfig,
    /// The operator's own domains.
    #[serde(default)]
    pub platform: PlatformConfig,
    /// Hosted domains.
    #[serde(default)]
    pub domains: DomainsConfig,
    /// DNS lookups (confirming hosted domains).
    #[serde(default)]
    pub dns: DnsConfig,
    /// The names clients reach the gateway by, for the settings it hands out.
    #[serde(default)]
    pub public: PublicConfig,
}

/// `[public]`: how clients reach the gateway, where that differs from what it binds to
/// (behind a load balancer or NAT, or on a name of its own). Autoconfig, Autodiscover, the
/// DNS records of `portcullis dns-records` and the settings shown with a new app password
/// name these; a listener's own `public_host`/`public_port` win over them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicConfig {
    /// The host name of every listener (default: `hostname`, else "localhost").
    #[serde(default)]
    pub host: Option<String>,
    /// What mail programs show as the provider (default: the host name).
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `[platform]`: the operator's own domains. Accounts there are platform accounts, which may
/// connect and manage customers' domains; accounts of a connected domain are its mailboxes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Default: `[default_domain]`; with neither, every domain counts as the operator's and
    /// hosting domains is off.
    #[serde(default)]
    pub domains: Option<Vec<String>>,
}

/// `[domains]`: hosting customers' domains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// Run (no shell) with a deleted mailbox's login appended, to remove its data from the
    /// backends.
    pub on_mailbox_delete: Option<Vec<String>>,
    /// Days a connected domain waits for its DNS confirmation before the claim lapses
    /// (default 7).
    pub claim_days: u64,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        Self {
            on_mailbox_delete: None,
            claim_days: 7,
        }
    }
}

/// `[dns]`: where the gateway's own DNS lookups go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `IP` or `IP:PORT` entries; default: the system's resolvers (/etc/resolv.conf).
    #[serde(default)]
    pub resolvers: Vec<String>,
}

impl Config {
    /// The host name clients reach the gateway by (see [`PublicConfig`]).
    pub fn public_host(&self) -> &str {
        self.public
            .host
            .as_deref()
            .or(self.hostname.as_deref())
            .unwrap_or("localhost")
    }

    /// The operator's own domains, lower case (see [`PlatformConfig`]).
    pub fn platform_domains(&self) -> Vec<String> {
        match (&self.platform.domains, &self.default_domain) {
            (Some(domains), _) => domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            (None, Some(domain)) => vec![domain.to_ascii_lowercase()],
            (None, None) => Vec::new(),
        }
    }
}

/// `[portal]`: the account portal's web sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// A web session ends this many seconds after its last request (default 7200).
    pub idle_timeout_secs: u64,
    /// A remembered sign-in ends this many days after it began, however active (default 30).
    pub remember_days: u64,
    /// Seconds after which creating an app password asks for the main password again
    /// (default 300).
    pub reconfirm_after_secs: u64,
    /// Accounts signed in at once in one browser (default 5).
    pub max_accounts: usize,
    /// Sign-in attempts (passwords and codes) one client address may make per minute, and
    /// apart from them restore-access attempts (default 10). Raise it for many users behind
    /// one NAT address; failures of one account slow down on their own anyway.
    pub attempts_per_minute: u32,
    /// The name authenticator apps show for accounts of this deployment (default: `hostname`,
    /// else "portcullis").
    pub issuer: Option<String>,
    /// Where codes to a backup email go out (confirming the address, restoring access).
    pub mail: Option<PortalMailConfig>,
    /// Where codes to a phone go out.
    pub sms: Option<PortalSmsConfig>,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 7200,
            remember_days: 30,
            reconfirm_after_secs: 300,
            max_accounts: 5,
            attempts_per_minute: 10,
            issuer: None,
            mail: None,
            sms: None,
        }
    }
}

/// `[portal.mail]`: the SMTP relay codes are mailed through (the operator's MTA: it accepts
/// mail from the gateway without authentication, as from a trusted host).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalMailConfig {
    /// `host:port` of the relay.
    pub relay: String,
    /// `none`, `starttls` or `implicit` (default `none`; plain only to loopback makes sense).
    #[serde(default)]
    pub tls: BackendTls,
    /// PEM CA for the relay's certificate (default: the system's web roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The sender address of the codes.
    pub from: String,
    /// Seconds to deliver one message (default 10).
    #[serde(default = "default_backend_timeout")]
    pub timeout_secs: u64,
}

impl PortalMailConfig {
    /// The relay as a backend connection (address, TLS, timeout); it is never logged in to.
    pub fn relay_backend(&self) -> BackendConfig {
        BackendConfig {
            address: Some(self.relay.clone()),
            url: None,
            tls: self.tls,
            ca_file: self.ca_file.clone(),
            server_name: None,
            login: BackendLogin::MasterUser,
            master_user: None,
            master_password_file: None,
            master_separator: default_separator(),
            timeout_secs: self.timeout_secs,
            strip_domain: false,
            domain: None,
            header: default_user_header(),
            max_connections: 1,
            shared_between_services: false,
            allow_cleartext_to_backend: false,
            // The relay is only ever sent a message, never logged in to.
            warm_connections: 0,
        }
    }
}

/// `[portal.sms]`: how codes reach a phone. The operator's SMS gateway is reached by a program
/// (`command`) or an HTTP endpoint (`webhook`); either gets `{"to": "+E164", "text": "..."}` as
/// JSON, on stdin or as the POST body, never in argv or a URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSmsConfig {
    /// Program and arguments, run without a shell.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// `https://` URL (or `http://` to loopback) that takes a JSON POST.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Seconds to hand over one message (default 10).
    #[serde(default = "default_backend_timeout")]
    pub timeout_secs: u64,
}

/// `[auth_server]`: portcullis answering Dovecot's authentication protocol, so Postfix, Exim
/// and Prosody can check credentials against it directly.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthServerConfig {
    /// `unix:PATH` or `IP:PORT` entries. TCP only on loopback or a private network: the
    /// protocol carries passwords in the clear.
    pub listen: Vec<String>,
    /// Mode of the unix sockets, octal (default `0660`).
    #[serde(default = "default_socket_mode")]
    pub unix_mode: String,
    /// Owner of the unix sockets (a user name; default: the gateway's user).
    #[serde(default)]
    pub unix_user: Option<String>,
    /// Group of the unix sockets (a group name, e.g. `postfix`).
    #[serde(default)]
    pub unix_group: Option<String>,
    /// Accept a TCP `listen` address that is neither loopback nor private (a public address,
    /// or every interface). The protocol carries passwords in the clear: only for a network
    /// the operator protects some other way.
    #[serde(default)]
    pub allow_public_listen: bool,
    /// Connections from daemons at once (default 64), apart from the clients' connections:
    /// the daemons' own pool of logins is not the clients' to exhaust, nor the reverse.
    #[serde(default = "default_auth_connections")]
    pub max_connections: usize,
    /// Seconds a daemon's connection may stay silent before it is closed (default 600;
    /// daemons reconnect when they need to).
    #[serde(default = "default_auth_idle")]
    pub idle_timeout_secs: u64,
}

fn default_auth_connections() -> usize {
    64
}

fn default_auth_idle() -> u64 {
    600
}

fn default_socket_mode() -> String {
    "0660".to_owned()
}

/// `[auth_http]`: portcullis as the auth server of nginx's mail proxy (`auth_http`). nginx
/// sends each login (user, password, protocol, client address) in the headers of a plain HTTP
/// request; portcullis checks it through the login gate as if the client had logged in to one
/// of its own listeners, and answers with the backend to proxy to and the master credentials
/// to log in there with, so the client's password never reaches the backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthHttpConfig {
    /// `IP:PORT` entries. Plain HTTP (nginx speaks nothing else to its auth server), so only
    /// loopback or a private network.
    pub listen: Vec<SocketAddr>,
    /// Accept a `listen` address that is neither loopback nor private.
    #[serde(default)]
    pub allow_public_listen: bool,
    /// The `[backend.NAME]` nginx proxies IMAP logins to (`login = "master-user"`, an IP
    /// address, no TLS: nginx's mail proxy speaks plain IMAP and POP3 to its backends).
    #[serde(default)]
    pub imap_backend: Option<String>,
    /// The same for POP3.
    #[serde(default)]
    pub pop3_backend: Option<String>,
    /// The `[backend.NAME]` nginx proxies SMTP to: `login = "xclient"`, since nginx names the
    /// user with `XCLIENT LOGIN=` (`xclient on`, its default) rather than logging in.
    #[serde(default)]
    pub smtp_backend: Option<String>,
    /// Failed logins one client connection may make before nginx closes it (default 3).
    #[serde(default = "default_auth_http_attempts")]
    pub max_attempts: u32,
    /// Requests in progress at once (default 256); more wait for their TCP accept.
    #[serde(default = "default_auth_http_connections")]
    pub max_connections: usize,
}

fn default_auth_http_attempts() -> u32 {
    3
}

fn default_auth_http_connections() -> usize {
    256
}

impl AuthHttpConfig {
    /// The backend named for nginx's `Auth-Protocol` (`imap`, `pop3`, `smtp`).
    pub fn backend_for(&self, protocol: &str) -> Option<&str> {
        match protocol {
            "imap" => self.imap_backend.as_deref(),
            "pop3" => self.pop3_backend.as_deref(),
            "smtp" => self.smtp_backend.as_deref(),
            _ => None,
        }
    }
}

/// Where the authentication server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthListen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl AuthServerConfig {
    /// The parsed `listen` entries.
    pub fn addresses(&self) -> Result<Vec<AuthListen>, String> {
        self.listen
            .iter()
            .map(|entry| match entry.strip_prefix("unix:") {
                Some(path) if !path.is_empty() => Ok(AuthListen::Unix(PathBuf::from(path))),
                Some(_) => Err("[auth_server] listen: unix: needs a path".to_owned()),
                None => entry.parse().map(AuthListen::Tcp).map_err(|_| {
                    format!("[auth_server] listen: {entry:?} is neither unix:PATH nor IP:PORT")
                }),
            })
            .collect()
    }

    /// The unix socket mode.
    pub fn mode(&self) -> Result<u32, String> {
        u32::from_str_radix(self.unix_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "[auth_server] unix_mode {:?} is not an octal mode",
                    self.unix_mode
                )
            })
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH`; the file and its folder are created on first start.
    pub url: String,
    /// How often a running gateway reads the change feed, in milliseconds (default 50): the
    /// longest a change made by another process waits before it takes effect here.
    #[serde(default = "default_feed_interval_ms")]
    pub feed_interval_ms: u64,
    /// File holding the deployment's secret key (first line, 32 characters or more; every node
    /// reads the same file). It seals TOTP seeds stored in the database and signs the portal's
    /// form tokens; two-factor authentication and restore access need it, so a portal listener
    /// does too. Kept out of the database so a copy of the database alone gives neither.
    #[serde(default)]
    pub secret_key_file: Option<PathBuf>,
    /// Seconds the change feed may go without catching up before cached logins stop being
    /// trusted (each login is checked against the store again, and the log says so) until it
    /// catches up (default 10).
    #[serde(default = "default_feed_staleness")]
    pub max_feed_staleness_secs: u64,
}

fn default_feed_staleness() -> u64 {
    10
}

fn default_feed_interval_ms() -> u64 {
    50
}

/// `[tls]`: the certificates the gateway shows its clients, and resumption.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// One PEM certificate chain (with `private_key`), or `[[tls.certificate]]` entries chosen
    /// by SNI (see `tls::certificates`).
    pub certificate: CertificateSetting,
    /// PEM private key of the single `certificate`.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// Issue resumption tickets (default true). Shared by the nodes through the store when
    /// `[store] secret_key_file` is set, else under keys local to the process.
    #[serde(default = "yes")]
    pub session_tickets: bool,
    /// Ticket keys rotate this often, and a ticket lives as long (default 21600, six hours).
    #[serde(default = "default_ticket_key_rotation_secs")]
    pub ticket_key_rotation_secs: u64,
    /// Seconds between checks of the certificate files for a renewal (default 10; 0: only on
    /// SIGHUP).
    #[serde(default = "default_reload_check_secs")]
    pub reload_check_secs: u64,
}

/// `[metrics]`: Prometheus metrics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is answered, in plain HTTP (none by default). Bind it where only
    /// the monitoring system reaches it.
    pub listen: Option<SocketAddr>,
}

/// `[tls] certificate`: a file, or a list of `[[tls.certificate]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CertificateSetting {
    File(PathBuf),
    List(Vec<crate::tls::certificates::CertificateEntry>),
}

impl TlsConfig {
    /// Every certificate configured, in order.
    pub fn certificates(&self) -> Vec<crate::tls::certificates::CertificateEntry> {
        match (&self.certificate, &self.private_key) {
            (CertificateSetting::File(chain), Some(key)) => {
                vec![crate::tls::certificates::CertificateEntry {
                    chain: chain.clone(),
                    private_key: key.clone(),
                    names: Vec::new(),
                    default: true,
                }]
            }
            (CertificateSetting::File(_), None) => Vec::new(),
            (CertificateSetting::List(list), _) => list.clone(),
        }
    }

    /// The single certificate and key (what `dev-cert` writes), if the section names one.
    pub fn single(&self) -> Option<(&Path, &Path)> {
        match (&self.certificate, &self.private_key) {
            (CertificateSetting::File(chain), Some(key)) => Some((chain, key)),
            _ => None,
        }
    }

    fn check(&self) -> Result<(), String> {
        match (&self.certificate, &self.private_key) {
            (CertificateSetting::File(_), None) => {
                Err("[tls] certificate needs private_key".into())
            }
            (CertificateSetting::List(_), Some(_)) => Err(
                "[tls] private_key goes inside each [[tls.certificate]] when there are several"
                    .into(),
            ),
            (CertificateSetting::List(list), None) if list.is_empty() => {
                Err("[tls] names no certificate".into())
            }
            _ => Ok(()),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_ticket_key_rotation_secs() -> u64 {
    6 * 3600
}

fn default_reload_check_secs() -> u64 {
    10
}

/// `[auth]`: how logins are decided.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A failed login is answered this many milliseconds after it arrived, whatever failed, so
    /// failures cannot be told apart by timing and guessing is slowed (default 500).
    pub failure_delay_ms: u64,
    /// Failed logins on one connection before it is closed (default 3).
    pub max_failures: u32,
    /// Verified logins kept in memory (default 100000).
    pub cache_capacity: u64,
    /// Seconds a verified login stays cached without use (default 600).
    pub cache_idle_secs: u64,
    /// argon2 verifications running at once (default: the number of CPUs).
    pub hash_concurrency: Option<usize>,
    /// Brute-force defence: delays and bans by client address (see `server::throttle`).
    pub throttle: crate::server::throttle::ThrottleConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            failure_delay_ms: 500,
            max_failures: 3,
            cache_capacity: 100_000,
            cache_idle_secs: 600,
            hash_concurrency: None,
            throttle: Default::default(),
        }
    }
}

/// `[limits]`: bounds on what a client may cost before and after login.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections across all listeners (default 10000); past it a new connection
    /// gets a "busy" reply and is closed.
    pub max_connections: usize,
    /// Of those, connections that have not logged in yet (default: half of `max_connections`),
    /// so logins and logged-in sessions keep the rest whatever a flood of idle connections
    /// holds.
    pub max_pre_login_connections: Option<usize>,
    /// Connections not logged in yet from one client network: an IPv4 address or an IPv6 /64
    /// (default 32), so one address cannot take every connection.
    pub max_pre_login_per_address: usize,
    /// Seconds from accept to a successful login (default 60); then the connection is closed.
    pub login_timeout_secs: u64,
    /// Seconds for a TLS handshake (default 10).
    pub handshake_timeout_secs: u64,
    /// Longest command line before login, in bytes (default 8192; RFC 4954 asks SMTP servers to
    /// take AUTH lines of 12288, which the submission listener always allows).
    pub max_line: usize,
    /// Longest IMAP literal before login, in bytes (default 8192: a login and password fit).
    pub max_literal: u32,
    /// Unknown or malformed commands before login, before the connection is closed (default 10).
    pub max_bad_commands: u32,
    /// Seconds an IMAP session may stay silent both ways once relayed (default 1860: IDLE
    /// clients re-issue IDLE every 29 minutes, RFC 2177).
    pub imap_idle_timeout_secs: u64,
    /// Seconds an SMTP session may stay silent once relayed (default 600, RFC 5321 4.5.3.2).
    pub smtp_idle_timeout_secs: u64,
    /// Seconds a POP3 session may stay silent once relayed (default 600: RFC 1939 section 3
    /// asks for at least 10 minutes).
    pub pop3_idle_timeout_secs: u64,
    /// Seconds given to live sessions to end on shutdown (default 10).
    pub shutdown_grace_secs: u64,
    /// HTTP: largest request head (request line and headers), in bytes (default 65536).
    pub http_max_header_bytes: usize,
    /// HTTP: longest request target (path and query), in bytes (default 8192); longer is 414.
    pub http_max_uri_bytes: usize,
    /// HTTP/1.1: seconds a request head may take, counted from when the connection starts
    /// waiting for it (default 20): bounds slow heads (slowloris) and idle keep-alive alike.
    pub http_header_timeout_secs: u64,
    /// HTTP: seconds a connection may sit with no request in flight (default 60).
    pub http_idle_timeout_secs: u64,
    /// HTTP/2: concurrent streams per connection (default 100).
    pub http_max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_pre_login_connections: None,
            max_pre_login_per_address: 32,
            login_timeout_secs: 60,
            handshake_timeout_secs: 10,
            max_line: 8192,
            max_literal: 8192,
            max_bad_commands: 10,
            imap_idle_timeout_secs: 1860,
            smtp_idle_timeout_secs: 600,
            pop3_idle_timeout_secs: 600,
            shutdown_grace_secs: 10,
            http_max_header_bytes: 65536,
            http_max_uri_bytes: 8192,
            http_header_timeout_secs: 20,
            http_idle_timeout_secs: 60,
            http_max_streams: 100,
        }
    }
}

impl Limits {
    /// `max_pre_login_connections`, or half of `max_connections` (at least one).
    pub fn pre_login_connections(&self) -> usize {
        self.max_pre_login_connections
            .unwrap_or(self.max_connections / 2)
            .clamp(1, self.max_connections.max(1))
    }

    pub fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.login_timeout_secs)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    Imap,
    Submission,
    /// POP3 (RFC 1939) for mail importers and old clients.
    Pop3,
    /// HTTPS (HTTP/1.1 and HTTP/2) for WebDAV, CalDAV and CardDAV, routed by host and path.
    Http,
    /// XMPP client-to-server streams (RFC 6120).
    Xmpp,
    /// HTTPS: the account portal (sign-in, access management), for people in a browser.
    Portal,
}

/// How TLS starts on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plaintext greeting, then the client upgrades with STARTTLS.
    Starttls,
    /// TLS from the first byte (IMAPS 993, submissions 465).
    Implicit,
}

/// `[[listener]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub protocol: ListenerProtocol,
    pub address: SocketAddr,
    pub tls: ListenerTls,
    /// Name of a `[backend.NAME]` section (IMAP and submission listeners).
    #[serde(default)]
    pub backend: Option<String>,
    /// Routes of an HTTP listener, matched by host and path prefix.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Accept logins before STARTTLS. Refused unless the address is loopback: it exists for a
    /// gateway behind a local TLS terminator, never for a network-facing port.
    #[serde(default)]
    pub allow_plaintext_auth_on_loopback: bool,
    /// Connections come from a load balancer and start with a PROXY protocol header (v1 or
    /// v2); the client address in it is the one used. Only from `proxy_from`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The load balancers' addresses or CIDR blocks, believed to send PROXY headers; a
    /// connection from anywhere else is closed.
    #[serde(default)]
    pub proxy_from: Vec<String>,
    /// IMAP, submission: mailboxes of these hosted domains go to another backend
    /// (`{ "shop.example" = "shop-imap" }`); everyone else to `backend`.
    #[serde(default)]
    pub domain_backends: BTreeMap<String, String>,
    /// The host name clients reach this listener by (default: `[public] host`).
    #[serde(default)]
    pub public_host: Option<String>,
    /// The port clients reach this listener on, when a load balancer or NAT maps another
    /// one to `address` (default: the port of `address`).
    #[serde(default)]
    pub public_port: Option<u16>,
}

/// `[[listener.route]]`: which service and backend a request is for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Matches the Host header (HTTP/1.1) or `:authority` (HTTP/2), port ignored. Without it
    /// the route matches any host that no route names.
    #[serde(default)]
    pub host: Option<String>,
    /// Matches the start of the request path (default `/`).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// `disk`, `calendar` or `contacts`.
    pub service: Service,
    pub backend: String,
}

fn default_path_prefix() -> String {
    "/".to_owned()
}

/// How the gateway reaches a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendTls {
    #[default]
    None,
    Starttls,
    Implicit,
}

/// How the gateway logs in to a backend on the user's behalf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendLogin {
    /// Dovecot's master user: log in as `user*master` with the master password.
    MasterUser,
    /// SASL PLAIN with authzid = user, authcid = master user.
    SaslAuthzid,
    /// Postfix's XCLIENT LOGIN= (SMTP only).
    Xclient,
    /// HTTP: the backend trusts a header naming the user (loopback or a private network only).
    TrustedHeader,
    /// HTTP: fixed backend credentials (`master_user`, `master_password_file`) in Basic, and
    /// the user named in `header`.
    Basic,
    /// XMPP: a one-time ticket as the SASL password, which the backend checks by asking
    /// portcullis's `[auth_server]`.
    Ticket,
}

/// `[backend.NAME]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// `host:port` (IMAP and submission backends).
    #[serde(default)]
    pub address: Option<String>,
    /// `http://` or `https://` base URL (HTTP backends).
    #[serde(default)]
    pub url: Option<String>,
    /// How TLS starts on the backend connection (IMAP and submission; HTTP takes it from the
    /// URL scheme). Default `none`.
    #[serde(default)]
    pub tls: BackendTls,
    /// PEM file of the CA that signed the backend's certificate; without it, the system's web
    /// roots are used. Only with `tls = "starttls"` or `"implicit"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Name checked against the backend certificate (default: the host of `address`).
    #[serde(default)]
    pub server_name: Option<String>,
    pub login: BackendLogin,
    /// The master user (`master-user`, `sasl-authzid`).
    #[serde(default)]
    pub master_user: Option<String>,
    /// File holding the master password on its first line; read at start, never logged.
    #[serde(default)]
    pub master_password_file: Option<PathBuf>,
    /// `*` between user and master user for `master-user` (Dovecot's
    /// `auth_master_user_separator`, default `*`).
    #[serde(default = "default_separator")]
    pub master_separator: String,
    /// Seconds to connect and log in to the backend (default 10).
    #[serde(default = "default_backend_timeout")]
    pub timeout_secs: u64,
    /// Use only the local part of the login (`alice`) as the backend user name, for backends
    /// that do not know domains (default false: `alice@example.org`).
    #[serde(default)]
    pub strip_domain: bool,
    /// XMPP: the domain the backend serves (the listener serves the same one).
    #[serde(default)]
    pub domain: Option<String>,
    /// HTTP: the header that carries the user's login to the backend (default `X-Remote-User`).
    #[serde(default = "default_user_header")]
    pub header: String,
    /// HTTP: requests in flight to this backend at once, and connections kept open to it
    /// (default 32). Thread-per-connection servers (wsgidav on cheroot: 10 threads) want it at
    /// or below their thread count, or pooled connections wait in their accept queue.
    #[serde(default = "default_backend_connections")]
    pub max_connections: usize,
    /// HTTP: this server is reached for more than one service (say calendar and contacts) and
    /// keeps them apart itself. Without it, routes of two services that lead to one server are
    /// a configuration error: the gateway scopes a password to its route, and a server that
    /// serves both lets a calendar password read contacts through the calendar route.
    #[serde(default)]
    pub shared_between_services: bool,
    /// The gateway's credentials for this backend (a master password, Basic credentials) or
    /// the trusted user header cross a network without TLS to an address that is not loopback.
    /// Refused unless this is set: only for a network the operator protects some other way.
    #[serde(default)]
    pub allow_cleartext_to_backend: bool,
    /// IMAP, POP3, submission: connections opened and greeted ahead of the logins that will use
    /// them (default 2; 0 turns it off). Only logins that passed their check open them, one per
    /// login, and each is closed unused after 15 s (see `upstream::warm`).
    #[serde(default = "default_warm_connections")]
    pub warm_connections: usize,
}

fn default_warm_connections() -> usize {
    2
}

fn default_backend_connections() -> usize {
    32
}

fn default_user_header() -> String {
    "X-Remote-User".to_owned()
}

fn default_separator() -> String {
    "*".to_owned()
}

fn default_backend_timeout() -> u64 {
    10
}

impl BackendConfig {
    /// Whether the gateway's backend credentials or the trusted user header would cross a
    /// network in clear: no TLS, and the backend's host is not loopback.
    pub fn sends_secrets_in_clear(&self) -> bool {
        let (plain, host) = match &self.url {
            Some(url) => {
                let uri: Option<http::Uri> = url.parse().ok();
                (
                    url.starts_with("http://"),
                    uri.and_then(|u| u.host().map(str::to_owned))
                        .unwrap_or_default(),
                )
            }
            None => (self.tls == BackendTls::None, self.host().to_owned()),
        };
        let carries_secret = matches!(
            self.login,
            BackendLogin::MasterUser
                | BackendLogin::SaslAuthzid
                | BackendLogin::Basic
                | BackendLogin::TrustedHeader
        );
        carries_secret && plain && !is_loopback_host(&host)
    }

    fn what_is_sent(&self) -> &'static str {
        match self.login {
            BackendLogin::TrustedHeader => "the trusted user header",
            BackendLogin::Basic => "its Basic credentials",
            _ => "the master password",
        }
    }

    /// `scheme://host:port` of an HTTP backend, with the scheme's default port spelled out:
    /// two backend entries with the same origin are one server.
    pub fn origin(&self) -> Option<String> {
        let uri: http::Uri = self.url.as_deref()?.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Some(format!("{scheme}://{host}:{port}"))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// `address` of an IMAP or submission backend (validated to be present).
    pub fn address(&self) -> &str {
        self.address.as_deref().unwrap_or_default()
    }

    /// Whether this backend speaks HTTP.
    pub fn is_http(&self) -> bool {
        self.url.is_some()
    }

    /// The host part of `address`, for SNI and certificate checks.
    pub fn host(&self) -> &str {
        let addr = self.address();
        if let Some(rest) = addr.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        addr.rsplit_once(':').map_or(addr, |(host, _)| host)
    }
}

/// A configuration that could not be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| match message {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ParseFailure::Invalid(message) => ConfigError::Invalid {
                path: path.to_owned(),
                message,
            },
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ParseFailure> {
        // toml's error text names the line, the column and the offending key.
        let config: Config = toml::from_str(text)
            .map_err(|e| ParseFailure::Syntax(e.to_string().trim().to_owned()))?;
        config.validate().map_err(ParseFailure::Invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.tls.check()?;
        if self.listeners.is_empty() && self.auth_server.is_none() && self.auth_http.is_none() {
            return Err(
                "no [[listener]], no [auth_server] and no [auth_http] is configured".into(),
            );
        }
        if let Some(sms) = &self.portal.sms {
            match (&sms.command, &sms.webhook) {
                (Some(command), None) if !command.is_empty() => {}
                (None, Some(url)) => {
                    let uri: http::Uri = url
                        .parse()
                        .map_err(|_| format!("[portal.sms] webhook {url:?} is not a URL"))?;
                    let loopback = uri.host().is_some_and(|h| {
                        h == "localhost"
                            || h.trim_matches(['[', ']'])
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_loopback())
                    });
                    match uri.scheme_str() {
                        Some("https") => {}
                        Some("http") if loopback => {}
                        _ => {
                            return Err(format!(
                                "[portal.sms] webhook {url:?}: https://, or http:// to loopback only (the body holds codes)"
                            ));
                        }
                    }
                }
                _ => {
                    return Err(
                        "[portal.sms] needs exactly one of command = [...] and webhook = \"URL\""
                            .into(),
                    );
                }
            }
        }
        if let Some(mail) = &self.portal.mail
            && !mail.from.contains('@')
        {
            return Err(format!(
                "[portal.mail] from = {:?} is not an address",
                mail.from
            ));
        }
        for (what, host) in std::iter::once(("[public] host", self.public.host.as_ref())).chain(
            self.listeners
                .iter()
                .map(|l| ("a listener's public_host", l.public_host.as_ref())),
        ) {
            if let Some(host) = host
                && !crate::credentials::accounts::is_host_name(host)
            {
                return Err(format!("{what} {host:?} is not a host name"));
            }
        }
        let mut addresses = std::collections::HashSet::new();
        for listener in &self.listeners {
            if !addresses.insert(listener.address) {
                return Err(format!("two listeners use {}", listener.address));
            }
            if listener.proxy_protocol {
                if listener.proxy_from.is_empty() {
                    return Err(format!(
                        "listener {}: proxy_protocol needs proxy_from, the load balancers' addresses",
                        listener.address
                    ));
                }
                crate::server::proxy::Trusted::parse(&listener.proxy_from)
                    .map_err(|e| format!("listener {}: {e}", listener.address))?;
            } else if !listener.proxy_from.is_empty() {
                return Err(format!(
                    "listener {}: proxy_from without proxy_protocol = true",
                    listener.address
                ));
            }
            if listener.allow_plaintext_auth_on_loopback && !listener.address.ip().is_loopback() {
                return Err(format!(
                    "listener {}: allow_plaintext_auth_on_loopback needs a loopback address",
                    listener.address
                ));
            }
            match listener.protocol {
                ListenerProtocol::Imap
                | ListenerProtocol::Submission
                | ListenerProtocol::Pop3
                | ListenerProtocol::Xmpp => self.validate_mail_listener(listener)?,
                ListenerProtocol::Http => self.validate_http_listener(listener)?,
                ListenerProtocol::Portal => {
                    if listener.backend.is_some() || !listener.routes.is_empty() {
                        return Err(format!(
                            "listener {}: a portal listener has no backend and no routes",
                            listener.address
                        ));
                    }
                    if listener.tls != ListenerTls::Implicit {
                        return Err(format!(
                            "listener {}: portal listeners use tls = \"implicit\" (HTTPS)",
                            listener.address
                        ));
                    }
                    if self.store.secret_key_file.is_none() {
                        return Err(format!(
                            "listener {}: the portal needs [store] secret_key_file (two-factor authentication and restore access use it); make one with `head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE`",
                            listener.address
                        ));
                    }
                }
            }
        }
        for (name, backend) in &self.backends {
            match (&backend.address, &backend.url) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "[backend.{name}] needs exactly one of address (IMAP, submission) or url (HTTP)"
                    ));
                }
            }
            if let Some(url) = &backend.url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!(
                    "[backend.{name}] url must start with http:// or https://"
                ));
            }
            let http_login = matches!(
                backend.login,
                BackendLogin::TrustedHeader | BackendLogin::Basic
            );
            if http_login != backend.is_http() {
                return Err(format!(
                    "[backend.{name}]: login = \"trusted-header\" and \"basic\" are for url backends, the others for address backends"
                ));
            }
            match backend.login {
                BackendLogin::MasterUser | BackendLogin::SaslAuthzid | BackendLogin::Basic => {
                    if backend.master_user.as_deref().unwrap_or("").is_empty() {
                        return Err(format!("[backend.{name}] needs master_user"));
                    }
                    if backend.master_password_file.is_none() {
                        return Err(format!("[backend.{name}] needs master_password_file"));
                    }
                }
                BackendLogin::Xclient | BackendLogin::TrustedHeader | BackendLogin::Ticket => {}
            }
            if backend.ca_file.is_some()
                && backend.tls == BackendTls::None
                && !backend
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
            {
                return Err(format!("[backend.{name}] has ca_file but no TLS"));
            }
            if backend.max_connections == 0 {
                return Err(format!(
                    "[backend.{name}] max_connections must be at least 1"
                ));
            }
            if backend.master_separator.is_empty() {
                return Err(format!("[backend.{name}] master_separator is empty"));
            }
            if http::HeaderName::from_bytes(backend.header.as_bytes()).is_err() {
                return Err(format!(
                    "[backend.{name}] header {:?} is not a header name",
                    backend.header
                ));
            }
        }
        self.validate_service_split()?;
        for (name, backend) in &self.backends {
            if backend.sends_secrets_in_clear() && !backend.allow_cleartext_to_backend {
                return Err(format!(
                    "[backend.{name}] would send {} without TLS to {}, which is not loopback: use TLS (tls = \"starttls\"/\"implicit\", an https:// url), or set allow_cleartext_to_backend = true if that network is protected otherwise",
                    backend.what_is_sent(),
                    backend.url.as_deref().unwrap_or_else(|| backend.address())
                ));
            }
        }
        for (key, value) in [
            ("login_timeout_secs", self.limits.login_timeout_secs),
            ("handshake_timeout_secs", self.limits.handshake_timeout_secs),
            ("imap_idle_timeout_secs", self.limits.imap_idle_timeout_secs),
            ("smtp_idle_timeout_secs", self.limits.smtp_idle_timeout_secs),
            ("pop3_idle_timeout_secs", self.limits.pop3_idle_timeout_secs),
            (
                "http_header_timeout_secs",
                self.limits.http_header_timeout_secs,
            ),
            ("http_idle_timeout_secs", self.limits.http_idle_timeout_secs),
        ] {
            if value == 0 {
                return Err(format!(
                    "[limits] {key} = 0 would close every connection at once (or, read as no limit, never): give it seconds"
                ));
            }
        }
        if let Some(auth_server) = &self.auth_server {
            if auth_server.listen.is_empty() {
                return Err("[auth_server] listen is empty".into());
            }
            let mode = auth_server.mode()?;
            if mode & 0o002 != 0 && !auth_server.allow_public_listen {
                return Err(format!(
                    "[auth_server] unix_mode {:04o} lets every local user connect and try passwords: use 0660 with unix_group, or set allow_public_listen = true",
                    mode
                ));
            }
            for address in auth_server.addresses()? {
                if let AuthListen::Tcp(address) = address
                    && !is_private(address.ip())
                    && !auth_server.allow_public_listen
                {
                    return Err(format!(
                        "[auth_server] listen {address}: the auth protocol carries passwords in the clear, so it listens on loopback or a private network only (or set allow_public_listen = true)"
                    ));
                }
            }
        }
        if let Some(auth_http) = &self.auth_http {
            self.validate_auth_http(auth_http)?;
        }
        if self.auth.max_failures == 0 {
            return Err("[auth] max_failures must be at least 1".into());
        }
        if self.limits.max_connections == 0 {
            return Err("[limits] max_connections must be at least 1".into());
        }
        if self.limits.max_pre_login_connections == Some(0)
            || self.limits.max_pre_login_per_address == 0
        {
            return Err("[limits] max_pre_login_connections and max_pre_login_per_address must be at least 1".into());
        }
        if self.limits.max_line < 512 {
            return Err("[limits] max_line must be at least 512 (RFC 5321)".into());
        }
        if self.store.feed_interval_ms == 0 {
            return Err("[store] feed_interval_ms must be at least 1".into());
        }
        Ok(())
    }
}

impl Config {
    fn validate_auth_http(&self, auth_http: &AuthHttpConfig) -> Result<(), String> {
        if auth_http.listen.is_empty() {
            return Err("[auth_http] listen is empty".into());
        }
        for address in &auth_http.listen {
            if !is_private(address.ip()) && !auth_http.allow_public_listen {
                return Err(format!(
                    "[auth_http] listen {address}: nginx sends passwords to it in plain HTTP, so it listens on loopback or a private network only (or set allow_public_listen = true)"
                ));
            }
        }
        if auth_http.max_attempts == 0 || auth_http.max_connections == 0 {
            return Err("[auth_http] max_attempts and max_connections must be at least 1".into());
        }
        let named = [
            (
                "imap_backend",
                &auth_http.imap_backend,
                BackendLogin::MasterUser,
            ),
            (
                "pop3_backend",
                &auth_http.pop3_backend,
                BackendLogin::MasterUser,
            ),
            (
                "smtp_backend",
                &auth_http.smtp_backend,
                BackendLogin::Xclient,
            ),
        ];
        if named.iter().all(|(_, name, _)| name.is_none()) {
            return Err(
                "[auth_http] names no backend: set imap_backend, pop3_backend or smtp_backend"
                    .into(),
            );
        }
        for (key, name, login) in named {
            let Some(name) = name else { continue };
            let backend = self
                .backends
                .get(name)
                .ok_or_else(|| format!("[auth_http] {key}: no [backend.{name}]"))?;
            let wanted = match login {
                BackendLogin::MasterUser => "master-user",
                _ => "xclient",
            };
            if backend.login != login {
                return Err(format!(
                    "[auth_http] {key}: [backend.{name}] needs login = \"{wanted}\" (what nginx's mail proxy can do)"
                ));
            }
            if backend.tls != BackendTls::None {
                return Err(format!(
                    "[auth_http] {key}: [backend.{name}] needs tls = \"none\": nginx's mail proxy speaks plain to its backends"
                ));
            }
            if backend
                .address
                .as_deref()
                .is_none_or(|a| a.parse::<SocketAddr>().is_err())
            {
                return Err(format!(
                    "[auth_http] {key}: [backend.{name}] needs address = \"IP:PORT\" (nginx takes the backend as an IP address)"
                ));
            }
        }
        Ok(())
    }

    fn validate_mail_listener(&self, listener: &ListenerConfig) -> Result<(), String> {
        let at = listener.address;
        if !listener.domain_backends.is_empty() && listener.protocol == ListenerProtocol::Xmpp {
            return Err(format!(
                "listener {at}: domain_backends is for IMAP and submission listeners"
            ));
        }
        for (domain, name) in &listener.domain_backends {
            match self.backends.get(name) {
                Some(b) if !b.is_http() && b.login != BackendLogin::Ticket => {}
                Some(_) => {
                    return Err(format!(
                        "listener {at}: domain_backends {domain:?} names {name:?}, which is not a mail backend"
                    ));
                }
                None => {
                    return Err(format!(
                        "listener {at}: domain_backends {domain:?} names backend {name:?}, but there is no [backend.{name}]"
                    ));
                }
            }
        }
        let Some(name) = &listener.backend else {
            return Err(format!("listener {at} needs a backend"));
        };
        if !listener.routes.is_empty() {
            return Err(format!("listener {at}: routes are for protocol = \"http\""));
        }
        let Some(backend) = self.backends.get(name) else {
            return Err(format!(
                "listener {at} names backend {name:?}, but there is no [backend.{name}]"
            ));
        };
        if backend.is_http() {
            return Err(format!(
                "listener {at}: backend {name:?} is an HTTP backend"
            ));
        }
        let xmpp = listener.protocol == ListenerProtocol::Xmpp;
        if xmpp != (backend.login == BackendLogin::Ticket) {
            return Err(format!(
                "listener {at}: XMPP listeners, and only they, use a backend with login = \"ticket\""
            ));
        }
        if xmpp && backend.domain.as_deref().unwrap_or("").is_empty() {
            return Err(format!(
                "[backend.{name}] needs domain (the XMPP domain it serves)"
            ));
        }
        if xmpp && self.auth_server.is_none() {
            return Err(format!(
                "listener {at}: login = \"ticket\" needs [auth_server], which the backend asks"
            ));
        }
        if backend.login == BackendLogin::Xclient
            && listener.protocol != ListenerProtocol::Submission
        {
            return Err(format!(
                "listener {at}: backend {name:?} uses login = \"xclient\", which only SMTP backends speak"
            ));
        }
        Ok(())
    }

    fn validate_http_listener(&self, listener: &ListenerConfig) -> Result<(), String> {
        let at = listener.address;
        if listener.backend.is_some() {
            return Err(format!(
                "listener {at}: an http listener names backends in its routes"
            ));
        }
        if listener.tls != ListenerTls::Implicit {
            return Err(format!(
                "listener {at}: http listeners use tls = \"implicit\" (HTTPS)"
            ));
        }
        if listener.routes.is_empty() {
            return Err(format!("listener {at}: no [[listener.route]]"));
        }
        for (i, route) in listener.routes.iter().enumerate() {
            let Some(backend) = self.backends.get(&route.backend) else {
                return Err(format!(
                    "listener {at} route {}: no [backend.{}]",
                    i + 1,
                    route.backend
                ));
            };
            if !backend.is_http() {
                return Err(format!(
                    "listener {at} route {}: backend {:?} is not an HTTP backend (it needs url)",
                    i + 1,
                    route.backend
                ));
            }
            if !matches!(
                route.service,
                Service::Disk | Service::Calendar | Service::Contacts
            ) {
                return Err(format!(
                    "listener {at} route {}: service {} is not served over HTTP",
                    i + 1,
                    route.service
                ));
            }
            if !route.path_prefix.starts_with('/') {
                return Err(format!(
                    "listener {at} route {}: path_prefix must start with /",
                    i + 1
                ));
            }
            for (j, other) in listener.routes.iter().enumerate().take(i) {
                let same_host = route.host.as_deref().map(str::to_ascii_lowercase)
                    == other.host.as_deref().map(str::to_ascii_lowercase);
                if same_host && prefixes_overlap(&route.path_prefix, &other.path_prefix) {
                    return Err(format!(
                        "listener {at}: routes {} and {} overlap (host {:?}, paths {:?} and {:?})",
                        j + 1,
                        i + 1,
                        route.host.as_deref().unwrap_or("any"),
                        other.path_prefix,
                        route.path_prefix
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// The services each HTTP backend server is reached for, by origin, with the backend
    /// names that lead there.
    fn services_by_server(&self) -> BTreeMap<String, (BTreeSet<Service>, BTreeSet<&str>)> {
        let mut servers: BTreeMap<String, (BTreeSet<Service>, BTreeSet<&str>)> = BTreeMap::new();
        for route in self.listeners.iter().flat_map(|l| &l.routes) {
            let Some((name, backend)) = self.backends.get_key_value(&route.backend) else {
                continue;
            };
            let Some(origin) = backend.origin() else {
                continue;
            };
            let entry = servers.entry(origin).or_default();
            entry.0.insert(route.service);
            entry.1.insert(name.as_str());
        }
        servers
    }

    /// Routes scope a password to one service, which holds only if the server behind a route
    /// serves that service alone: one server behind two services is refused unless every
    /// backend entry leading to it says the server keeps them apart.
    fn validate_service_split(&self) -> Result<(), String> {
        for (origin, (services, names)) in self.services_by_server() {
            if services.len() < 2 {
                continue;
            }
            let unmarked: Vec<&str> = names
                .iter()
                .copied()
                .filter(|name| !self.backends[*name].shared_between_services)
                .collect();
            if !unmarked.is_empty() {
                return Err(format!(
                    "{origin} is behind routes of {} (through [backend.{}]): a password made for one of them would reach the others' data on that server. Give each service its own server, or set shared_between_services = true on [backend.{}] if the server keeps the services apart itself",
                    join_services(&services),
                    names
                        .iter()
                        .copied()
                        .collect::<Vec<_>>()
                        .join("], [backend."),
                    unmarked.join("] and [backend."),
                ));
            }
        }
        Ok(())
    }

    /// Settings that are allowed but that an operator should hear about, one line each.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.auth.failure_delay_ms < 100 {
            warnings.push(format!(
                "[auth] failure_delay_ms = {}: refusals come almost at once, which speeds up guessing; and a main-password check must finish within it",
                self.auth.failure_delay_ms
            ));
        }
        if self.auth.max_failures > 10 {
            warnings.push(format!(
                "[auth] max_failures = {}: a connection may guess that many times before it is closed",
                self.auth.max_failures
            ));
        }
        for (name, backend) in &self.backends {
            if backend.sends_secrets_in_clear() {
                warnings.push(format!(
                    "[backend.{name}] sends {} without TLS (allow_cleartext_to_backend)",
                    backend.what_is_sent()
                ));
            }
        }
        for (origin, (services, names)) in self.services_by_server() {
            if services.len() > 1 {
                warnings.push(format!(
                    "{origin} serves {} (shared_between_services on [backend.{}]): the service boundary there is the server's, not the gateway's",
                    join_services(&services),
                    names.iter().copied().collect::<Vec<_>>().join("], [backend."),
                ));
            }
        }
        warnings
    }
}

fn join_services(services: &BTreeSet<Service>) -> String {
    services
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A host that is this machine: `localhost` or a loopback address (brackets allowed).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Loopback or a private network (RFC 1918, IPv6 unique local): not reachable from the
/// internet. Unspecified addresses (every interface) are not private.
fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private())
        }
    }
}

/// Whether one path prefix contains the other at a segment boundary (`/` and `/dav/` do,
/// `/dav` and `/davx` do not).
fn prefixes_overlap(a: &str, b: &str) -> bool {
    let a = a.trim_end_matches('/');
    let b = b.trim_end_matches('/');
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short || long.starts_with(&format!("{short}/"))
}

/// Why configuration text was refused.
#[derive(Debug)]
pub enum ParseFailure {
    Syntax(String),
    Invalid(String),
}

impl std::fmt::Display for ParseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseFailure::Syntax(m) | ParseFailure::Invalid(m) => f.write_str(m),
        }
    }
}

/// Reads a secret from the first line of a file (a trailing newline is not part of it). A file
/// every local user can read is refused: the secret would be everyone's.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "secret file {} is readable by every user (mode {:04o}): chmod 600 it (640 with a group that needs it)",
            path.display(),
            mode & 0o777
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret::from(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [store]
        url = "sqlite::memory:"
        [tls]
        certificate = "c"
        private_key = "k"
        [[listener]]
        protocol = "imap"
        address = "127.0.0.1:1143"
        tls = "starttls"
        backend = "b"
        [backend.b]
        address = "127.0.0.1:143"
        tls = "none"
        login = "master-user"
        master_user = "m"
        master_password_file = "f"
    "#;

    #[test]
    fn the_example_config_in_the_repo_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.default_domain.as_deref(), Some("example.org"));
        assert_eq!(config.listeners.len(), 9);
        assert_eq!(config.listeners[6].routes.len(), 3);
        assert!(config.backends.contains_key("dovecot-pop3"));
        assert_eq!(
            config.backends["prosody"].domain.as_deref(),
            Some("example.org")
        );
        assert!(config.auth_server.is_some());
        assert!(config.backends.contains_key("dovecot-imap"));
        assert!(config.backends["radicale-calendar"].is_http());
        assert!(config.backends["radicale-contacts"].is_http());
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
        assert!(config.backends.contains_key("dovecot-submission"));
    }

    #[test]
    fn defaults_apply() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.auth.max_failures, 3);
        assert_eq!(config.limits.max_connections, 10_000);
        assert_eq!(config.store.feed_interval_ms, 50);
        assert_eq!(config.backends["b"].master_separator, "*");
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key_and_line() {
        let text = MINIMAL.replace("tls = \"none\"", "tls = \"none\"\ncolour = \"blue\"");
        let err = Config::parse(&text).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn semantic_errors_are_explained() {
        let cases = [
            (
                MINIMAL.replace("backend = \"b\"", "backend = \"nope\""),
                "no [backend.nope]",
            ),
            (
                MINIMAL.replace("master_user = \"m\"", ""),
                "needs master_user",
            ),
            (
                MINIMAL
                    .replace(
                        "tls = \"starttls\"",
                        "tls = \"starttls\"\nallow_plaintext_auth_on_loopback = true",
                    )
                    .replace("127.0.0.1:1143", "0.0.0.0:1143"),
                "loopback",
            ),
            (
                MINIMAL.replace("login = \"master-user\"", "login = \"xclient\""),
                "only SMTP",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    const HTTP: &str = r#"
        [[listener]]
        protocol = "http"
        address = "127.0.0.1:8443"
        tls = "implicit"
          [[listener.route]]
          host = "webdav.localhost"
          service = "disk"
          backend = "dav"
          [[listener.route]]
          path_prefix = "/cal"
          service = "calendar"
          backend = "cal"
        [backend.dav]
        url = "http://127.0.0.1:18090/"
        login = "trusted-header"
        [backend.cal]
        url = "http://127.0.0.1:15232/"
        login = "trusted-header"
    "#;

    #[test]
    fn auth_http_needs_a_private_address_and_backends_nginx_can_use() {
        let with = |auth_http: &str, backends: &str| {
            Config::parse(&format!("{MINIMAL}\n{backends}\n[auth_http]\n{auth_http}"))
                .map_err(|e| e.to_string())
        };
        let postfix =
            "[backend.p]\naddress = \"127.0.0.1:25\"\ntls = \"none\"\nlogin = \"xclient\"";
        let ok = with(
            "listen = [\"127.0.0.1:9143\"]\nimap_backend = \"b\"\nsmtp_backend = \"p\"",
            postfix,
        )
        .unwrap();
        let auth_http = ok.auth_http.unwrap();
        assert_eq!(
            (auth_http.max_attempts, auth_http.max_connections),
            (3, 256)
        );
        assert_eq!(auth_http.backend_for("smtp"), Some("p"));
        for (config, backends, complaint) in [
            (
                "listen = [\"0.0.0.0:9143\"]\nimap_backend = \"b\"",
                "",
                "allow_public_listen",
            ),
            ("listen = []\nimap_backend = \"b\"", "", "listen is empty"),
            ("listen = [\"127.0.0.1:9143\"]", "", "names no backend"),
            (
                "listen = [\"127.0.0.1:9143\"]\nimap_backend = \"x\"",
                "",
                "no [backend.x]",
            ),
            (
                "listen = [\"127.0.0.1:9143\"]\nimap_backend = \"p\"",
                postfix,
                "login = \"master-user\"",
            ),
            (
                "listen = [\"127.0.0.1:9143\"]\nsmtp_backend = \"b\"",
                "",
                "login = \"xclient\"",
            ),
            (
                "listen = [\"127.0.0.1:9143\"]\nsmtp_backend = \"h\"",
                "[backend.h]\naddress = \"mail.example:25\"\ntls = \"none\"\nlogin = \"xclient\"",
                "IP:PORT",
            ),
            (
                "listen = [\"127.0.0.1:9143\"]\nsmtp_backend = \"t\"",
                "[backend.t]\naddress = \"127.0.0.1:25\"\ntls = \"starttls\"\nlogin = \"xclient\"",
                "tls = \"none\"",
            ),
        ] {
            let err = with(config, backends).unwrap_err();
            assert!(err.contains(complaint), "{config}: {err}");
        }
    }

    #[test]
    fn the_auth_server_listens_on_loopback_or_private_networks_unless_told_otherwise() {
        let with = |listen: &str, extra: &str| {
            Config::parse(&format!(
                "{MINIMAL}\n[auth_server]\nlisten = [\"{listen}\"]\n{extra}"
            ))
        };
        for ok in [
            "127.0.0.1:12345",
            "10.1.2.3:12345",
            "192.168.0.9:1",
            "[::1]:12345",
            "[fd00::5]:12345",
            "unix:/run/a.sock",
        ] {
            assert!(with(ok, "").is_ok(), "{ok}");
        }
        for public in [
            "0.0.0.0:12345",
            "[::]:12345",
            "192.0.2.7:12345",
            "[2001:db8::1]:1",
        ] {
            let err = with(public, "").unwrap_err().to_string();
            assert!(err.contains("allow_public_listen"), "{public}: {err}");
            assert!(
                with(public, "allow_public_listen = true").is_ok(),
                "{public}"
            );
        }
    }

    #[test]
    fn one_server_behind_two_services_is_refused_unless_marked_shared() {
        // The same backend entry, or two entries with one origin (the default port spelled out
        // or not, the host in any case).
        for (cal_url, cal_backend) in [
            ("http://127.0.0.1:15232/", "dav"),
            ("http://LOCALHOST:80/cal/", "cal"),
        ] {
            let text = HTTP
                .replace("backend = \"cal\"", &format!("backend = \"{cal_backend}\""))
                .replace("http://127.0.0.1:18090/", "http://localhost/dav/")
                .replace("http://127.0.0.1:15232/", cal_url);
            let err = Config::parse(&format!("{MINIMAL}{text}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("http://localhost:80 is behind routes of disk and calendar")
                    && err.contains("shared_between_services = true"),
                "{err}"
            );
            let marked = text.replace(
                "login = \"trusted-header\"",
                "login = \"trusted-header\"\nshared_between_services = true",
            );
            let config = Config::parse(&format!("{MINIMAL}{marked}")).unwrap();
            assert_eq!(config.warnings().len(), 1, "{:?}", config.warnings());
            assert!(config.warnings()[0].contains("disk and calendar"));
        }
        // Two services on two servers, or one service on one server twice, is fine.
        let config = Config::parse(&format!("{MINIMAL}{HTTP}")).unwrap();
        assert!(config.warnings().is_empty());
        let twice = HTTP.replace(
            "service = \"calendar\"\n          backend = \"cal\"",
            "service = \"disk\"\n          backend = \"dav\"",
        );
        assert!(Config::parse(&format!("{MINIMAL}{twice}")).is_ok());
    }

    #[test]
    fn http_listeners_and_their_routes() {
        let config = Config::parse(&format!("{MINIMAL}{HTTP}")).unwrap();
        let http = &config.listeners[1];
        assert_eq!(http.routes[0].path_prefix, "/");
        assert_eq!(http.routes[1].service, Service::Calendar);
        assert_eq!(config.backends["dav"].header, "X-Remote-User");
        let cases = [
            (
                HTTP.replace(
                    "backend = \"dav\"\n          [[listener.route]]",
                    "backend = \"nope\"\n          [[listener.route]]",
                ),
                "no [backend.nope]",
            ),
            (
                HTTP.replace("path_prefix = \"/cal\"", "host = \"WebDAV.localhost\""),
                "overlap",
            ),
            (
                HTTP.replace("service = \"calendar\"", "service = \"mail\""),
                "not served over HTTP",
            ),
            (
                HTTP.replace("path_prefix = \"/cal\"", "path_prefix = \"cal\""),
                "must start with /",
            ),
            (
                HTTP.replace("tls = \"implicit\"", "tls = \"starttls\""),
                "implicit",
            ),
            (
                HTTP.replace(
                    "url = \"http://127.0.0.1:18090/\"",
                    "address = \"127.0.0.1:1\"",
                ),
                "not an HTTP backend",
            ),
            (
                HTTP.replace("login = \"trusted-header\"", "login = \"master-user\""),
                "url backends",
            ),
            (
                HTTP.replace("url = \"http://", "url = \"ftp://"),
                "http:// or https://",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&format!("{MINIMAL}{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        // A route under another route's prefix on the same host overlaps; on another host not.
        let nested = HTTP.replace(
            "path_prefix = \"/cal\"",
            "host = \"webdav.localhost\"\n          path_prefix = \"/cal\"",
        );
        assert!(
            Config::parse(&format!("{MINIMAL}{nested}"))
                .unwrap_err()
                .to_string()
                .contains("overlap")
        );
        assert!(prefixes_overlap("/", "/dav"));
        assert!(prefixes_overlap("/dav/", "/dav"));
        assert!(!prefixes_overlap("/dav", "/davx"));
    }

    #[test]
    fn xmpp_listeners_need_a_ticket_backend_with_a_domain_and_the_auth_server() {
        let xmpp = r#"
        [auth_server]
        listen = ["127.0.0.1:12345"]
        [[listener]]
        protocol = "xmpp"
        address = "127.0.0.1:5222"
        tls = "starttls"
        backend = "prosody"
        [backend.prosody]
        address = "127.0.0.1:15222"
        domain = "example.org"
        login = "ticket"
    "#;
        let config = Config::parse(&format!("{MINIMAL}{xmpp}")).unwrap();
        assert_eq!(
            config.backends["prosody"].domain.as_deref(),
            Some("example.org")
        );
        let cases = [
            (xmpp.replace("domain = \"example.org\"", ""), "needs domain"),
            (
                xmpp.replace(
                    "login = \"ticket\"",
                    "login = \"master-user\"\nmaster_user = \"m\"\nmaster_password_file = \"f\"",
                ),
                "ticket",
            ),
            (
                xmpp.replace("[auth_server]\n        listen = [\"127.0.0.1:12345\"]", ""),
                "needs [auth_server]",
            ),
            (
                xmpp.replace("127.0.0.1:12345", "nowhere"),
                "neither unix:PATH nor IP:PORT",
            ),
        ];
        for (text, expected) in cases {
            let err = Config::parse(&format!("{MINIMAL}{text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn backend_host_for_sni() {
        let mut config = Config::parse(MINIMAL).unwrap();
        let backend = config.backends.get_mut("b").unwrap();
        assert_eq!(backend.host(), "127.0.0.1");
        backend.address = Some("[::1]:143".into());
        assert_eq!(backend.host(), "::1");
        backend.address = Some("mail.example.org:993".into());
        assert_eq!(backend.host(), "mail.example.org");
    }
}
