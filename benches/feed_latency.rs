//! Revocation propagation on one node with SQLite: how long from a revocation's commit in
//! another process's connection to the database until a live IMAP session relayed with that
//! app password is cut (the `* BYE` arrives). That is the change feed (`[store]
//! feed_interval_ms`) plus the index reload plus the relay noticing.
//!
//! The bench process plays the other process: it opens the gateway's database itself and
//! revokes through the account service, one live session at a time, timing each from the
//! moment the revocation returned (committed, durable) to the `BYE` on that session.
//!
//! `cargo bench --bench feed_latency` (LOAD_REVOCATIONS overrides 200).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::*;
use portcullis::credentials::accounts::AccountService;
use portcullis::credentials::hashing::PasswordHasher;
use portcullis::credentials::{Secret, Service};
use rustls::pki_types::ServerName;
use support::{LoadResult, knob};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let revocations = knob("LOAD_REVOCATIONS", 200) as usize;
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            log_filter: "warn",
            limits: "imap_idle_timeout_secs = 600".into(),
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let latencies = runtime.block_on(async {
        let url = format!(
            "sqlite://{}/data/portcullis.db",
            gateway.dir.path().display()
        );
        let store = portcullis::store::open(&url).await.expect("store");
        let accounts =
            AccountService::new(store, PasswordHasher::new(1), Some("example.org".into()));
        let login = accounts.login("alice").expect("login");
        let tls = TlsConnector::from(tls_client_config(&gateway.ca));
        let mut latencies = Vec::with_capacity(revocations);
        for _ in 0..revocations {
            let made = accounts
                .create_app_password(&login, Service::Mail, "bench")
                .await
                .expect("app password");
            let mut session = imap_session(&tls, gateway.ports.imaps, &made.secret).await;
            accounts
                .revoke_app_password(&login, made.id)
                .await
                .expect("revoke");
            let committed = Instant::now();
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
            latencies.push(committed.elapsed().as_secs_f64() * 1e3);
        }
        latencies
    });
    let result = LoadResult::gather(vec![(latencies, 0)], started.elapsed().as_secs_f64());
    assert_eq!(result.failed, 0);
    println!(
        "{revocations} revocations ({:.1}/s with their set-up), one live IMAP session each, feed_interval_ms = 50 (the default)",
        result.rate
    );
    println!();
    println!("| p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| {:.1} | {:.1} | {:.1} | {:.1} |",
        result.percentile(50.0),
        result.percentile(90.0),
        result.percentile(99.0),
        result.percentile(100.0)
    );
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
