//! Revocation propagation: how long from a revocation's commit (in a connection of another
//! process) until a live IMAP session relayed with that app password is cut (the `* BYE`
//! arrives). That is the change feed plus the index reload plus the relay noticing.
//!
//! Two rows, measured in one run:
//! - **SQLite, one node**: the bench process opens the gateway's database file itself, as the
//!   CLI does; the gateway polls its feed (`feed_interval_ms = 50`, the default).
//! - **PostgreSQL, three nodes**: three gateway nodes on one private PostgreSQL cluster; the
//!   bench process writes as a fourth node would, and a live session is held on two nodes;
//!   a revocation counts as enforced when both are cut (the later of the two `BYE`s). The
//!   nodes learn of it by LISTEN/NOTIFY.
//!
//! Each revocation: a new app password, live sessions logged in with it, then the revocation,
//! timed from the moment it returned (committed, durable).
//!
//! `cargo bench --bench feed_latency` (LOAD_REVOCATIONS overrides 1000 per row).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use portcullis::credentials::accounts::AccountService;
use portcullis::credentials::hashing::PasswordHasher;
use portcullis::credentials::{Secret, Service};
use portcullis::store::testing::PgCluster;
use rustls::pki_types::ServerName;
use support::{LoadResult, knob};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let revocations = knob("LOAD_REVOCATIONS", 1000) as usize;
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let options = |store: Option<String>, certs: Option<&Path>| Options {
        log_filter: "warn",
        limits: "imap_idle_timeout_secs = 600".into(),
        store,
        certs_from: certs.map(Path::to_path_buf),
        ..Options::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let single = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        options(None, None),
    );
    single.create_account("alice", "alice long main password");
    let url = format!(
        "sqlite://{}/data/portcullis.db",
        single.dir.path().display()
    );
    let sqlite = runtime.block_on(measure(
        &url,
        &[single.ports.imaps],
        &single.ca,
        revocations,
    ));
    drop(single);

    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let url = pg.database();
    let mut nodes: Vec<Gateway> = Vec::new();
    for _ in 0..3 {
        let certs = nodes.first().map(|n| n.dir.path().join("certs"));
        nodes.push(Gateway::start(
            dovecot.imap_port,
            dovecot.submission_port,
            options(Some(url.clone()), certs.as_deref()),
        ));
    }
    nodes[0].create_account("alice", "alice long main password");
    let ports = [nodes[1].ports.imaps, nodes[2].ports.imaps];
    let postgres = runtime.block_on(measure(&url, &ports, &nodes[0].ca, revocations));

    println!(
        "{revocations} revocations per row, one new app password and live IMAP session(s) each"
    );
    println!();
    println!(
        "| store | where the sessions are | rate with set-up /s | p50 ms | p90 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, sessions, result) in [
        ("SQLite, feed polled every 50 ms", "the one node", sqlite),
        (
            "PostgreSQL, LISTEN/NOTIFY",
            "nodes B and C (both cut)",
            postgres,
        ),
    ] {
        assert_eq!(result.failed, 0);
        println!(
            "| {name} | {sessions} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            result.rate,
            result.percentile(50.0),
            result.percentile(90.0),
            result.percentile(99.0),
            result.percentile(100.0)
        );
    }
}

/// Revokes `revocations` app passwords through the store at `url`, each with a live session on
/// every port in `ports`; the time from each revocation's commit to the last session's `BYE`.
async fn measure(url: &str, ports: &[u16], ca: &Path, revocations: usize) -> LoadResult {
    let started = Instant::now();
    let store = portcullis::store::open(url).await.expect("store");
    let accounts = AccountService::new(store, PasswordHasher::new(1), Some("example.org".into()));
    let login = accounts.login("alice").expect("login");
    let tls = TlsConnector::from(tls_client_config(ca));
    let mut latencies = Vec::with_capacity(revocations);
    for _ in 0..revocations {
        let made = accounts
            .create_app_password(&login, Service::Mail, "bench")
            .await
            .expect("app password");
        let mut sessions = Vec::new();
        for &port in ports {
            sessions.push(imap_session(&tls, port, &made.secret).await);
        }
        accounts
            .revoke_app_password(&login, made.id)
            .await
            .expect("revoke");
        let committed = Instant::now();
        // One after the other: a BYE that came while waiting for another is already buffered,
        // so the time after the last one is the later of the cuts.
        for mut session in sessions {
            let mut line = String::new();
            let cut = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    line.clear();
                    if session.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return false;
                    }
                    if line.starts_with("* BYE") {
                        return true;
                    }
                }
            })
            .await;
            assert!(matches!(cut, Ok(true)), "session not cut: {line:?}");
        }
        latencies.push(committed.elapsed().as_secs_f64() * 1e3);
    }
    LoadResult::gather(vec![(latencies, 0)], started.elapsed().as_secs_f64())
}

/// An IMAP session through the gateway's implicit-TLS port, logged in, idle.
async fn imap_session(
    tls: &TlsConnector,
    port: u16,
    secret: &Secret,
) -> BufReader<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let stream = tls
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    let mut session = BufReader::new(stream);
    let mut line = String::new();
    session.read_line(&mut line).await.expect("greeting");
    let password = String::from_utf8_lossy(secret.expose()).into_owned();
    session
        .get_mut()
        .write_all(format!("a LOGIN alice {password}\r\n").as_bytes())
        .await
        .expect("login");
    loop {
        line.clear();
        session.read_line(&mut line).await.expect("reply");
        if line.starts_with("a ") {
            assert!(line.starts_with("a OK"), "{line}");
            return session;
        }
    }
}
