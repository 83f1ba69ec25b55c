//! Prometheus metrics: every series the gateway exports is named here, once, with its help
//! text, and recorded through the small functions below, so a name cannot drift between the
//! place that records it and the documentation.
//!
//! Recording goes through the `metrics` facade. Without `[metrics] listen` no recorder is
//! installed and every call is a no-op; with it, [`install`] sets up the Prometheus recorder
//! (histograms with fixed buckets, so Prometheus can aggregate them across nodes) and
//! [`serve`] answers `GET /metrics` on its own listener, apart from anything clients reach.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::server::gate::Labels;

const LOGINS: &str = "portcullis_logins_total";
const BANS: &str = "portcullis_bans_total";
const BANS_ACTIVE: &str = "portcullis_bans_active";
const CONNECTIONS_REFUSED: &str = "portcullis_connections_refused_total";
const SESSIONS: &str = "portcullis_sessions";
const SESSIONS_CUT: &str = "portcullis_sessions_cut_total";
const FEED_LAG: &str = "portcullis_feed_lag_seconds";
const HASH_QUEUE: &str = "portcullis_hash_queue_depth";
const HASH_WAIT: &str = "portcullis_hash_wait_seconds";
const BACKEND_CONNECT: &str = "portcullis_backend_connect_seconds";
const BACKEND_LOGIN: &str = "portcullis_backend_login_seconds";
const BACKEND_LOGIN_CONNECTIONS: &str = "portcullis_backend_login_connections_total";
const TLS_HANDSHAKES: &str = "portcullis_tls_handshakes_total";

/// Seconds, from a fast loopback connect to a hash that waited behind a flood.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle).
pub fn install() -> Result<PrometheusHandle, String> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(
        LOGINS,
        "Logins decided by the login gate, by protocol, service and result (ok, or the reason of a refusal as the login log line gives it)"
    );
    describe_counter!(BANS, "Client addresses banned by the login gate");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused on arrival, by the limit that was full: connection-limit, pre-login-limit, or address-limit (the client network's pre-login share)"
    );
    describe_gauge!(BANS_ACTIVE, "Bans in force, from every node");
    describe_gauge!(SESSIONS, "Live client sessions by protocol");
    describe_counter!(
        SESSIONS_CUT,
        "Live sessions cut because their credential was revoked or expired, by protocol"
    );
    describe_gauge!(
        FEED_LAG,
        "Seconds between the commit of the newest account change this node applied and the moment it applied it"
    );
    describe_gauge!(HASH_QUEUE, "Password hash checks waiting for their turn");
    describe_histogram!(
        HASH_WAIT,
        "Seconds a password hash check waited for its turn"
    );
    describe_histogram!(
        BACKEND_CONNECT,
        "Seconds to connect to a backend (TCP, and TLS where configured), by backend"
    );
    describe_histogram!(
        BACKEND_LOGIN,
        "Seconds a backend login for a client took (connect, greeting, login), by backend and result"
    );
    describe_counter!(
        BACKEND_LOGIN_CONNECTIONS,
        "Backend logins by the connection they used: warm (opened ahead) or new, by backend"
    );
    describe_counter!(
        TLS_HANDSHAKES,
        "TLS handshakes with clients completed, by kind (full or resumed)"
    );
}

/// One login decided.
pub fn login(labels: Labels, result: &'static str) {
    counter!(LOGINS, "protocol" => labels.protocol, "service" => labels.service, "result" => result)
        .increment(1);
}

/// A connection refused before it was served (a connection limit), by which limit.
pub fn connection_refused(limit: &'static str) {
    counter!(CONNECTIONS_REFUSED, "limit" => limit).increment(1);
}

/// An address banned by the gate.
pub fn banned() {
    counter!(BANS).increment(1);
}

/// The bans in force now.
pub fn bans_active(count: usize) {
    gauge!(BANS_ACTIVE).set(count as f64);
}

/// Counts one live session of `protocol` while it exists.
pub struct SessionGauge(&'static str);

impl SessionGauge {
    pub fn new(protocol: &'static str) -> Self {
        gauge!(SESSIONS, "protocol" => protocol).increment(1.0);
        SessionGauge(protocol)
    }

    /// The session's credential died and the gateway cut it.
    pub fn cut(&self) {
        counter!(SESSIONS_CUT, "protocol" => self.0).increment(1);
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        gauge!(SESSIONS, "protocol" => self.0).decrement(1.0);
    }
}

/// The feed applied a change committed `lag` ago.
pub fn feed_lag(lag: Duration) {
    gauge!(FEED_LAG).set(lag.as_secs_f64());
}

/// A hash check waiting for its turn: in the queue-depth gauge while it exists, and its wait
/// recorded when it gets the turn ([`HashWaiting::turn`]). Dropped without a turn (the login
/// was abandoned), it only leaves the queue.
pub struct HashWaiting(std::time::Instant);

impl HashWaiting {
    pub fn enter() -> Self {
        gauge!(HASH_QUEUE).increment(1.0);
        HashWaiting(std::time::Instant::now())
    }

    pub fn turn(self) {
        histogram!(HASH_WAIT).record(self.0.elapsed().as_secs_f64());
    }
}

impl Drop for HashWaiting {
    fn drop(&mut self) {
        gauge!(HASH_QUEUE).decrement(1.0);
    }
}

/// Connecting to `backend` took `took`.
pub fn backend_connect(backend: &str, took: Duration) {
    histogram!(BACKEND_CONNECT, "backend" => backend.to_owned()).record(took.as_secs_f64());
}

/// The backend answered the gateway's login after `took`.
pub fn backend_login(backend: &str, ok: bool, took: Duration) {
    let result = if ok { "ok" } else { "failed" };
    histogram!(BACKEND_LOGIN, "backend" => backend.to_owned(), "result" => result)
        .record(took.as_secs_f64());
}

/// A backend login started on a warm connection (`true`) or a new one.
pub fn backend_login_connection(backend: &str, warm: bool) {
    let connection = if warm { "warm" } else { "new" };
    counter!(BACKEND_LOGIN_CONNECTIONS, "backend" => backend.to_owned(), "connection" => connection)
        .increment(1);
}

/// A client's TLS handshake completed.
pub fn tls_handshake(connection: &rustls::ServerConnection) {
    let kind = match connection.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    counter!(TLS_HANDSHAKES, "kind" => kind).increment(1);
}

/// Answers `GET /metrics` on `address` until `shutdown`. Plain HTTP: bind it where only the
/// monitoring system reaches it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Response, StatusCode};
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = upkeep.tick() => { handle.run_upkeep(); continue; }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                let response = if request.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                        .body(Full::new(Bytes::from(handle.render())))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                };
                async move { response }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
        });
    }
}
