//! The running gateway: listeners, the connection limit, sessions, and shutdown.
//!
//! [`Gateway::start`] opens the store, builds the credential index, follows the change feed,
//! binds every listener and spawns one accept loop each. Each accepted connection takes a
//! permit from one semaphore (the connection limit is a type, released when the session
//! drops), then runs [`session`]'s pre-auth driver with its protocol's machine, and the
//! protocol's post-login half ([`imap`], [`smtp`]): backend login, then the relay.

pub mod admission;
pub mod auth;
pub mod auth_http;
pub mod gate;
pub mod http;
pub mod imap;
pub mod pop3;
pub mod proxy;
pub mod relayed;
pub mod session;
pub mod smtp;
pub mod throttle;
pub mod xmpp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{AuthConfig, Config, Limits, ListenerConfig, ListenerProtocol};
use crate::credentials::CredentialIndex;
use crate::credentials::accounts::AccountService;
use crate::credentials::index::{IndexSettings, spawn_use_writer};
use crate::protocol::http::Router;
use crate::upstream::Backend;
use crate::upstream::http::HttpBackend;
use ::http::HeaderValue;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Backend(String),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// What every session of the gateway shares.
pub struct Shared {
    pub index: Arc<CredentialIndex>,
    /// Every account change this process makes goes through it (the portal's, next).
    pub accounts: AccountService,
    /// One-time tickets minted by gateways for backends that ask the auth server.
    pub tickets: Arc<crate::credentials::tickets::Tickets>,
    pub tls: TlsAcceptor,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub hostname: String,
    pub shutdown: CancellationToken,
    /// Failures and bans by client address: the login gate's brute-force defence.
    pub throttle: throttle::Throttle,
    session_ids: AtomicU64,
}

/// One listener's settings and its backend.
pub struct ListenerContext {
    pub config: ListenerConfig,
    pub backend: Arc<Backend>,
    /// Backends of hosted domains' mailboxes (`domain_backends`), by domain.
    pub domain_backends: HashMap<String, Arc<Backend>>,
    pub shared: Arc<Shared>,
    /// The backend's EHLO keywords (submission listeners), learned at start and refreshed by
    /// every backend login, offered to clients before they log in.
    pub smtp_extensions: Arc<RwLock<Vec<String>>>,
}

impl ListenerContext {
    /// The backend `login` logs in to: its domain's, if the listener routes that domain
    /// elsewhere, else the listener's.
    pub fn backend_for(&self, login: &crate::credentials::Login) -> &Arc<Backend> {
        self.domain_backends
            .get(login.domain())
            .unwrap_or(&self.backend)
    }
}

/// A started gateway.
pub struct Gateway {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    background: Vec<tokio::task::JoinHandle<()>>,
    /// Where each listener is bound (useful when the configuration asked for port 0).
    pub local_addrs: Vec<SocketAddr>,
}

impl Gateway {
    /// Starts everything the configuration names. Fails before accepting anything if a
    /// listener cannot bind or a file cannot be read.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Self, StartError> {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let max_connections = connections_that_fit(&config);
        let store = crate::store::open(&config.store.url).await?;
        let (uses, use_writer) = spawn_use_writer(store.clone());
        let settings = IndexSettings {
            default_domain: config.default_domain.clone(),
            cache_capacity: config.auth.cache_capacity,
            cache_idle: Duration::from_secs(config.auth.cache_idle_secs),
            hash_concurrency: config.auth.hash_concurrency.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
            }),
        };
        let index = Arc::new(
            CredentialIndex::new(store.clone(), &settings)
                .with_use_recorder(uses)
                .with_feed_staleness(Duration::from_secs(
                    config.store.max_feed_staleness_secs.max(1),
                )),
        );
        // Account changes made in this process reach its index at once.
        let accounts = AccountService::configured(store.clone(), index.hasher(), &config)
            .map_err(StartError::Backend)?
            .with_index(index.clone());
        let certificates = crate::tls::certificates::Certificates::load(config.tls.certificates())?;
        let tickets: Option<Arc<dyn rustls::server::ProducesTickets>> =
            match (config.tls.session_tickets, accounts.secret_keys()) {
                (false, _) => None,
                (true, Some(secret)) => {
                    let rotation = crate::tls::tickets::Rotation::new(
                        store.clone(),
                        secret,
                        Duration::from_secs(config.tls.ticket_key_rotation_secs),
                    );
                    rotation
                        .refresh(crate::credentials::model::now_ms())
                        .await?;
                    let tickets = rotation.tickets();
                    tokio::spawn(rotation.run(shutdown.clone()));
                    Some(tickets)
                }
                (true, None) => Some(crate::tls::local_tickets()?),
            };
        let tls = crate::tls::server_config(certificates.clone(), tickets)?;
        tokio::spawn(crate::tls::certificates::watch(
            certificates,
            Duration::from_secs(config.tls.reload_check_secs),
            shutdown.clone(),
        ));
        let shared = Arc::new(Shared {
            index: index.clone(),
            accounts,
            tickets: Arc::new(crate::credentials::tickets::Tickets::new(store.clone())),
            tls: TlsAcceptor::from(tls.clone()),
            auth: config.auth.clone(),
            limits: config.limits.clone(),
            hostname: config
                .hostname
                .clone()
                .unwrap_or_else(|| "localhost".to_owned()),
            shutdown: shutdown.clone(),
            throttle: throttle::Throttle::new(
                config.auth.throttle.clone(),
                Duration::from_millis(config.auth.failure_delay_ms),
            ),
            session_ids: AtomicU64::new(1),
        });

        // The backends the listeners use, each built once.
        let mut mail_backends: HashMap<String, Arc<Backend>> = HashMap::new();
        let mut http_backends: HashMap<String, Arc<HttpBackend>> = HashMap::new();
        // ... and those nginx is sent to (`[auth_http]`), which no listener needs to use.
        let auth_http_names = config
            .auth_http
            .iter()
            .flat_map(|a| [&a.imap_backend, &a.pop3_backend, &a.smtp_backend])
            .flatten();
        let listener_names = config
            .listeners
            .iter()
            .flat_map(|listener| -> Vec<&String> {
                match listener.protocol {
                    ListenerProtocol::Http => listener.routes.iter().map(|r| &r.backend).collect(),
                    _ => listener
                        .backend
                        .iter()
                        .chain(listener.domain_backends.values())
                        .collect(),
                }
            });
        for name in listener_names.chain(auth_http_names) {
            let backend = config
                .backends
                .get(name)
                .ok_or_else(|| StartError::Backend(format!("no backend {name:?}")))?;
            if backend.is_http() {
                if !http_backends.contains_key(name) {
                    let built = HttpBackend::new(name, backend).map_err(StartError::Backend)?;
                    http_backends.insert(name.clone(), Arc::new(built));
                }
            } else if !mail_backends.contains_key(name) {
                let built = Backend::new(name, backend).map_err(StartError::Backend)?;
                mail_backends.insert(name.clone(), Arc::new(built));
            }
        }

        if let Some(address) = config.metrics.listen {
            let handle = crate::telemetry::install().map_err(StartError::Backend)?;
            let socket = TcpListener::bind(address)
                .await
                .map_err(|source| StartError::Bind { address, source })?;
            tracing::info!(%address, "metrics at http://{address}/metrics");
            tokio::spawn(crate::telemetry::serve(socket, handle, shutdown.clone()));
        }

        let mut bound = Vec::new();
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.address)
                .await
                .map_err(|source| StartError::Bind {
                    address: listener.address,
                    source,
                })?;
            bound.push((socket, listener.clone()));
        }

        tokio::spawn(follow_bans(shared.clone()));
        let feed = tokio::spawn(crate::store::feed::follow(
            index.clone(),
            Duration::from_millis(config.store.feed_interval_ms),
            shutdown.clone(),
        ));

        // Learn each submission backend's extensions before the first client asks; a backend
        // that is down now is learned from the first login that reaches it.
        let mut smtp_extensions: HashMap<String, Arc<RwLock<Vec<String>>>> = HashMap::new();
        let mut probes = tokio::task::JoinSet::new();
        for (_, listener) in &bound {
            if listener.protocol == ListenerProtocol::Submission
                && let Some(name) = &listener.backend
                && let Some(backend) = mail_backends.get(name)
                && !smtp_extensions.contains_key(name)
            {
                let cache = Arc::new(RwLock::new(Vec::new()));
                smtp_extensions.insert(name.clone(), cache.clone());
                probes.spawn(probe(backend.clone(), shared.hostname.clone(), cache));
            }
        }
        let _ = tokio::time::timeout(PROBE_WAIT, probes.join_all()).await;

        // HTTP listeners offer HTTP/2 and HTTP/1.1 through ALPN.
        let http_tls = {
            let mut config = (*tls).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        };

        let admission = Arc::new(admission::Admission::new(
            max_connections,
            config.limits.pre_login_connections().min(max_connections),
            config.limits.max_pre_login_per_address,
        ));
        let tracker = TaskTracker::new();
        let mut local_addrs = Vec::new();
        for (socket, listener) in bound {
            let local = socket.local_addr().map_err(|source| StartError::Bind {
                address: listener.address,
                source,
            })?;
            local_addrs.push(local);
            let served = match listener.protocol {
                ListenerProtocol::Http => {
                    let names: Vec<String> =
                        listener.routes.iter().map(|r| r.backend.clone()).collect();
                    let mut backends: Vec<Arc<HttpBackend>> = Vec::new();
                    let mut index_of = HashMap::new();
                    for name in names {
                        if !index_of.contains_key(&name)
                            && let Some(backend) = http_backends.get(&name)
                        {
                            index_of.insert(name.clone(), backends.len());
                            backends.push(backend.clone());
                        }
                    }
                    let router = Router::new(&listener.routes, |name| {
                        index_of.get(name).copied().unwrap_or(usize::MAX)
                    });
                    tracing::info!(address = %local, routes = listener.routes.len(), "listening (http)");
                    Served::Http(Arc::new(http::HttpListener {
                        router,
                        backends,
                        shared: shared.clone(),
                        tls: http_tls.clone(),
                        realm: HeaderValue::from_static(
                            "Basic realm=\"portcullis\", charset=\"UTF-8\"",
                        ),
                        config: listener.clone(),
                    }))
                }
                ListenerProtocol::Portal => {
                    tracing::info!(address = %local, "listening (portal)");
                    let portal =
                        crate::portal::Portal::new(shared.clone(), http_tls.clone(), &config)
                            .map_err(StartError::Backend)?;
                    Served::Portal(Arc::new(portal))
                }
                ListenerProtocol::Imap
                | ListenerProtocol::Submission
                | ListenerProtocol::Pop3
                | ListenerProtocol::Xmpp => {
                    let name = listener.backend.clone().unwrap_or_default();
                    let backend = mail_backends
                        .get(&name)
                        .cloned()
                        .ok_or_else(|| StartError::Backend(format!("no backend {name:?}")))?;
                    tracing::info!(address = %local, protocol = ?listener.protocol, tls = ?listener.tls, backend = %name, "listening");
                    let domain_backends = listener
                        .domain_backends
                        .iter()
                        .filter_map(|(domain, name)| {
                            Some((
                                domain.to_ascii_lowercase(),
                                mail_backends.get(name)?.clone(),
                            ))
                        })
                        .collect();
                    Served::Mail(Arc::new(ListenerContext {
                        smtp_extensions: smtp_extensions.get(&name).cloned().unwrap_or_default(),
                        config: listener.clone(),
                        backend,
                        domain_backends,
                        shared: shared.clone(),
                    }))
                }
            };
            let proxy = if listener.proxy_protocol {
                Some(Arc::new(
                    proxy::Trusted::parse(&listener.proxy_from).map_err(StartError::Backend)?,
                ))
            } else {
                None
            };
            tracker.spawn(accept_loop(
                socket,
                served,
                proxy,
                shared.clone(),
                admission.clone(),
                tracker.clone(),
            ));
        }
        if let Some(auth_server) = &config.auth_server {
            auth::start(auth_server, &shared, &tracker).await?;
        }
        if let Some(auth_http) = &config.auth_http {
            auth_http::start(auth_http, &shared, &mail_backends, &tracker).await?;
        }
        Ok(Self {
            shared,
            tracker,
            background: vec![feed, use_writer],
            local_addrs,
        })
    }

    /// The ticket table shared with the authentication server.
    pub fn tickets(&self) -> Arc<crate::credentials::tickets::Tickets> {
        self.shared.tickets.clone()
    }

    /// Waits for the shutdown signal, then for sessions to end (at most the grace period).
    pub async fn run_until_shutdown(self) {
        self.shared.shutdown.cancelled().await;
        tracing::info!("shutting down");
        self.tracker.close();
        let grace = Duration::from_secs(self.shared.limits.shutdown_grace_secs);
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tracker.len(),
                "sessions still open after the grace period"
            );
        }
        for task in self.background {
            task.abort();
        }
    }
}

/// How long start-up waits for the submission backends to tell their extensions.
const PROBE_WAIT: Duration = Duration::from_secs(3);

impl Shared {
    /// A ban the gate just made: logged, and written to the store so every node holds it.
    pub fn record_ban(&self, ban: throttle::NewBan) {
        crate::telemetry::banned();
        tracing::warn!(
            target: gate::LOGIN_LOG_TARGET,
            "address banned: address={} failures={} until_ms={}",
            ban.address,
            ban.failures,
            ban.until_ms
        );
        let store = self.index.store().clone();
        tokio::spawn(async move {
            let address = ban.address.to_string();
            if let Err(e) = store
                .add_ban(&address, ban.until_ms, i64::from(ban.failures))
                .await
            {
                tracing::warn!(error = %e, "could not record a ban in the store");
            }
        });
    }
}

/// How often every node reads the bans (its own, other nodes', operators' lifts).
const BANS_REFRESH: Duration = Duration::from_secs(2);

/// Keeps the throttle's bans equal to the store's list until shutdown.
async fn follow_bans(shared: Arc<Shared>) {
    loop {
        match shared
            .index
            .store()
            .bans(crate::credentials::model::now_ms())
            .await
        {
            Ok(bans) => {
                crate::telemetry::bans_active(bans.len());
                shared.throttle.replace_bans(
                    bans.iter()
                        .filter_map(|b| Some((b.address.parse().ok()?, b.until))),
                );
            }
            Err(e) => tracing::debug!(error = %e, "could not read bans; keeping the last list"),
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(BANS_REFRESH) => {}
        }
    }
}

async fn probe(backend: Arc<Backend>, hostname: String, cache: Arc<RwLock<Vec<String>>>) {
    match crate::upstream::smtp::probe_extensions(&backend, &hostname).await {
        Ok(extensions) => {
            if let Ok(mut slot) = cache.write() {
                *slot = extensions;
            }
        }
        Err(e) => {
            tracing::warn!(backend = %backend.name, error = %e, "could not learn the backend's SMTP extensions yet")
        }
    }
}

/// Descriptors the gateway needs besides two per client connection (the client's and its
/// backend's): the store, logs, the runtime, and slack.
const SPARE_DESCRIPTORS: u64 = 64;

/// Raises the open-file limit to what the system allows and returns how many client
/// connections fit in it (at most `max_connections`). Each relayed session holds two
/// descriptors; past the limit `accept` would fail in a loop while clients hang, so the
/// connection limit is lowered instead, loudly.
fn connections_that_fit(config: &Config) -> usize {
    let wanted = config.limits.max_connections;
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit");
            return wanted;
        }
    };
    let fixed = SPARE_DESCRIPTORS
        + config.listeners.len() as u64
        + config
            .auth_server
            .as_ref()
            .map_or(0, |a| (a.max_connections + a.listen.len()) as u64)
        + config
            .auth_http
            .as_ref()
            .map_or(0, |a| (a.max_connections + a.listen.len()) as u64)
        + config
            .backends
            .values()
            .filter(|b| b.is_http())
            .map(|b| b.max_connections as u64)
            .sum::<u64>();
    let fits = usize::try_from(limit.saturating_sub(fixed) / 2).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = wanted,
            "the open-file limit holds {fits} client connections (two descriptors each): serving at most {fits}; raise the hard limit (LimitNOFILE=, ulimit -Hn) to serve {wanted}",
        );
        return fits.max(1);
    }
    tracing::debug!(open_file_limit = limit, "open-file limit");
    wanted
}

/// What a listener serves.
#[derive(Clone)]
enum Served {
    Mail(Arc<ListenerContext>),
    Http(Arc<http::HttpListener>),
    Portal(Arc<crate::portal::Portal>),
}

async fn accept_loop(
    socket: TcpListener,
    served: Served,
    proxy: Option<Arc<proxy::Trusted>>,
    shared: Arc<Shared>,
    admission: Arc<admission::Admission>,
    tracker: TaskTracker,
) {
    let shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        let Some(trusted) = &proxy else {
            admit_and_serve(tcp, peer, &served, &shared, &admission, &tracker);
            continue;
        };
        if !trusted.contains(peer.ip()) {
            tracing::warn!(%peer, "connection to a PROXY-protocol listener from an address not in proxy_from; closed");
            continue;
        }
        // The client's address is in the header: read it (bounded, under the handshake
        // deadline) before admission, which counts clients, not the balancer.
        let (served, shared, admission, inner) = (
            served.clone(),
            shared.clone(),
            admission.clone(),
            tracker.clone(),
        );
        tracker.spawn(async move {
            let mut tcp = tcp;
            let deadline = shared.limits.handshake_timeout();
            match proxy::read_header(&mut tcp, deadline).await {
                Ok(client) => {
                    let client = client.unwrap_or(peer);
                    admit_and_serve(tcp, client, &served, &shared, &admission, &inner);
                }
                Err(e) => tracing::warn!(%peer, error = %e, "PROXY header refused; closed"),
            }
        });
    }
}

/// Admits a connection from `peer` (the client, as far as the gateway knows it) and serves it.
fn admit_and_serve(
    tcp: TcpStream,
    peer: SocketAddr,
    served: &Served,
    shared: &Arc<Shared>,
    admission: &Arc<admission::Admission>,
    tracker: &TaskTracker,
) {
    let admitted = match admission.admit(peer.ip()) {
        Ok(admitted) => Arc::new(admitted),
        Err(refusal) => {
            refuse_busy(&tcp, served, admission, refusal, peer);
            return;
        }
    };
    let id = shared.session_ids.fetch_add(1, Ordering::Relaxed);
    let served = served.clone();
    let span = match &served {
        Served::Mail(context) => {
            tracing::info_span!("session", id, peer = %peer, proto = ?context.config.protocol)
        }
        Served::Http(_) => tracing::info_span!("session", id, peer = %peer, proto = "http"),
        Served::Portal(_) => {
            tracing::info_span!("session", id, peer = %peer, proto = "portal")
        }
    };
    tracker.spawn(
        async move {
            let _ = tcp.set_nodelay(true);
            match served {
                Served::Mail(context) => handle_mail(tcp, peer, context, &admitted).await,
                Served::Http(listener) => http::serve(tcp, peer, listener, admitted).await,
                Served::Portal(portal) => crate::portal::serve(tcp, peer, portal, admitted).await,
            }
        }
        .instrument(span),
    );
}

/// An accept that failed (out of file descriptors and the like): say so and back off, instead
/// of spinning on an error that the next call returns at once.
async fn accept_failed(error: &std::io::Error) {
    tracing::warn!(%error, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Over the connection limit: one best-effort line where the protocol starts in plaintext
/// (no waiting on the client), then close; with no line to deliver, an abortive close (a
/// reset), so that a flood of refused connections leaves no TIME_WAIT socket behind on the
/// gateway and costs no FIN exchange. Counted in the metrics; logged at most once a second
/// (see [`admission::RefusalLog`]).
fn refuse_busy(
    tcp: &TcpStream,
    served: &Served,
    admission: &admission::Admission,
    refusal: admission::Refusal,
    peer: SocketAddr,
) {
    crate::telemetry::connection_refused(refusal.label());
    if let Some(unlogged) = admission.refusals.refused() {
        tracing::warn!(%peer, refused_unlogged = unlogged, "{}; refusing a connection", refusal.as_str());
    }
    if let Served::Mail(context) = served
        && context.config.tls == crate::config::ListenerTls::Starttls
    {
        let line: &[u8] = match context.config.protocol {
            ListenerProtocol::Submission => b"421 4.7.0 Too many connections, try again later\r\n",
            ListenerProtocol::Imap => b"* BYE Too many connections, try again later\r\n",
            ListenerProtocol::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            // An XMPP server speaks only after the client's stream header: just close.
            ListenerProtocol::Xmpp | ListenerProtocol::Http | ListenerProtocol::Portal => b"",
        };
        if !line.is_empty() {
            let _ = tcp.try_write(line);
            return;
        }
    }
    let _ = tcp.set_zero_linger();
}

async fn handle_mail(
    tcp: TcpStream,
    peer: SocketAddr,
    context: Arc<ListenerContext>,
    admitted: &admission::Admitted,
) {
    let local = match tcp.local_addr() {
        Ok(local) => local,
        Err(_) => return,
    };
    let client = crate::upstream::ClientInfo { peer, local };
    match context.config.protocol {
        ListenerProtocol::Submission => {
            relayed::serve::<smtp::Submission>(tcp, client, &context, admitted).await;
        }
        ListenerProtocol::Pop3 => {
            relayed::serve::<pop3::Pop3>(tcp, client, &context, admitted).await
        }
        ListenerProtocol::Xmpp => {
            relayed::serve::<xmpp::Xmpp>(tcp, client, &context, admitted).await
        }
        ListenerProtocol::Imap | ListenerProtocol::Http | ListenerProtocol::Portal => {
            relayed::serve::<imap::Imap>(tcp, client, &context, admitted).await
        }
    }
}
