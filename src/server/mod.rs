//! The running gateway: listeners, the connection limit, sessions, and shutdown.
//!
//! [`Gateway::start`] opens the store, builds the credential index, follows the change feed,
//! binds every listener and spawns one accept loop each. Each accepted connection takes a
//! permit from one semaphore (the connection limit is a type, released when the session
//! drops), then runs [`session`]'s pre-auth driver with its protocol's machine, and the
//! protocol's post-login half ([`imap`], [`smtp`]): backend login, then the relay.

pub mod imap;
pub mod session;
pub mod smtp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{AuthConfig, Config, Limits, ListenerConfig, ListenerProtocol};
use crate::credentials::CredentialIndex;
use crate::credentials::index::{IndexSettings, spawn_use_writer};
use crate::store::Store;
use crate::upstream::Backend;

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
    pub tls: TlsAcceptor,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub hostname: String,
    pub shutdown: CancellationToken,
    session_ids: AtomicU64,
}

/// One listener's settings and its backend.
pub struct ListenerContext {
    pub config: ListenerConfig,
    pub backend: Arc<Backend>,
    pub shared: Arc<Shared>,
    /// The backend's EHLO keywords (submission listeners), learned at start and refreshed by
    /// every backend login, offered to clients before they log in.
    pub smtp_extensions: Arc<RwLock<Vec<String>>>,
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
        let store = Store::open(&config.store.url).await?;
        let (uses, use_writer) = spawn_use_writer(store.clone());
        let settings = IndexSettings {
            default_domain: config.default_domain.clone(),
            cache_capacity: config.auth.cache_capacity,
            cache_idle: Duration::from_secs(config.auth.cache_idle_secs),
            hash_concurrency: config.auth.hash_concurrency.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
            }),
        };
        let index = Arc::new(CredentialIndex::new(store, &settings).with_use_recorder(uses));
        let tls = crate::tls::server_config(
            &config.tls.certificate,
            &config.tls.private_key,
            config.tls.session_tickets,
        )?;
        let shared = Arc::new(Shared {
            index: index.clone(),
            tls: TlsAcceptor::from(tls),
            auth: config.auth.clone(),
            limits: config.limits.clone(),
            hostname: config
                .hostname
                .clone()
                .unwrap_or_else(|| "localhost".to_owned()),
            shutdown: shutdown.clone(),
            session_ids: AtomicU64::new(1),
        });

        let mut backends = HashMap::new();
        for (name, backend) in &config.backends {
            backends.insert(
                name.clone(),
                Arc::new(Backend::new(name, backend).map_err(StartError::Backend)?),
            );
        }

        let mut bound = Vec::new();
        for listener in &config.listeners {
            let socket = TcpListener::bind(listener.address)
                .await
                .map_err(|source| StartError::Bind {
                    address: listener.address,
                    source,
                })?;
            let backend = backends
                .get(&listener.backend)
                .cloned()
                .ok_or_else(|| StartError::Backend(format!("no backend {:?}", listener.backend)))?;
            bound.push((socket, listener.clone(), backend));
        }

        let feed = tokio::spawn(crate::store::feed::follow(
            index.clone(),
            Duration::from_millis(config.store.feed_interval_ms),
            shutdown.clone(),
        ));

        // Learn each submission backend's extensions before the first client asks; a backend
        // that is down now is learned from the first login that reaches it.
        let mut smtp_extensions: HashMap<String, Arc<RwLock<Vec<String>>>> = HashMap::new();
        let mut probes = tokio::task::JoinSet::new();
        for (_, listener, backend) in &bound {
            if listener.protocol == ListenerProtocol::Submission
                && !smtp_extensions.contains_key(&backend.name)
            {
                let cache = Arc::new(RwLock::new(Vec::new()));
                smtp_extensions.insert(backend.name.clone(), cache.clone());
                probes.spawn(probe(backend.clone(), shared.hostname.clone(), cache));
            }
        }
        let _ = tokio::time::timeout(PROBE_WAIT, probes.join_all()).await;

        let connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let tracker = TaskTracker::new();
        let mut local_addrs = Vec::new();
        for (socket, listener, backend) in bound {
            let local = socket.local_addr().map_err(|source| StartError::Bind {
                address: listener.address,
                source,
            })?;
            local_addrs.push(local);
            let smtp_extensions = smtp_extensions
                .get(&backend.name)
                .cloned()
                .unwrap_or_default();
            let context = Arc::new(ListenerContext {
                config: listener.clone(),
                backend,
                shared: shared.clone(),
                smtp_extensions,
            });
            tracing::info!(address = %local, protocol = ?listener.protocol, tls = ?listener.tls, backend = %listener.backend, "listening");
            tracker.spawn(accept_loop(
                socket,
                context,
                connections.clone(),
                tracker.clone(),
            ));
        }
        Ok(Self {
            shared,
            tracker,
            background: vec![feed, use_writer],
            local_addrs,
        })
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

async fn accept_loop(
    socket: TcpListener,
    context: Arc<ListenerContext>,
    connections: Arc<Semaphore>,
    tracker: TaskTracker,
) {
    let shutdown = context.shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refuse_busy(&tcp, &context);
            continue;
        };
        let context = context.clone();
        let id = context.shared.session_ids.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("session", id, peer = %peer, proto = ?context.config.protocol);
        tracker.spawn(
            async move {
                let _permit = permit;
                handle(tcp, peer, context).await;
            }
            .instrument(span),
        );
    }
}

/// Over the connection limit: one best-effort line (no waiting on the client), then close.
fn refuse_busy(tcp: &TcpStream, context: &ListenerContext) {
    tracing::warn!("connection limit reached; refusing a connection");
    if context.config.tls == crate::config::ListenerTls::Starttls {
        let line: &[u8] = match context.config.protocol {
            ListenerProtocol::Imap => b"* BYE Too many connections, try again later\r\n",
            ListenerProtocol::Submission => b"421 4.7.0 Too many connections, try again later\r\n",
        };
        let _ = tcp.try_write(line);
    }
}

async fn handle(tcp: TcpStream, peer: SocketAddr, context: Arc<ListenerContext>) {
    let _ = tcp.set_nodelay(true);
    let local = match tcp.local_addr() {
        Ok(local) => local,
        Err(_) => return,
    };
    let client = crate::upstream::ClientInfo { peer, local };
    match context.config.protocol {
        ListenerProtocol::Imap => imap::serve(tcp, client, &context).await,
        ListenerProtocol::Submission => smtp::serve(tcp, client, &context).await,
    }
}
