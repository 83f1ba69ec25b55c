//! Memory per idle relayed IMAP session: the gateway's resident memory grows by how much when
//! 10 000 clients are logged in over TLS and relayed to a backend, and then sit idle (as mail
//! clients in IDLE do all day)?
//!
//! The gateway is the real binary in front of a trivial IMAP backend (in this process); the
//! clients are rustls connections from this process, each logged in with the same app password
//! (a cached check, so the figure is the sessions', not the hashes'). Resident memory (VmRSS)
//! of the gateway is read after a warm-up of 200 sessions that are then closed, and again with
//! all sessions open and idle; the difference over the number of sessions is the figure. The
//! per-session figure includes the client's TLS state, the backend connection, the relay's
//! buffers and the tasks.
//!
//! `cargo bench --bench idle_sessions` (SESSIONS overrides 10 000; fewer where the hard
//! open-file limit does not fit two sockets per session in the gateway). Needs Dovecot and aiosmtpd
//! only for the harness's set-up: scripts/setup-peers.sh.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use support::knob;

async fn open(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    login: &str,
) -> std::io::Result<support::ImapSession> {
    Ok(support::imap_tls_login(port, config, login).await?.0)
}

async fn open_many(
    count: usize,
    port: u16,
    config: Arc<rustls::ClientConfig>,
    login: Arc<String>,
) -> Vec<support::ImapSession> {
    let mut sessions = Vec::with_capacity(count);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    // At most 64 logins in flight, as a crowd of clients arriving would be.
    while sessions.len() < count {
        while started < count && pending.len() < 64 {
            let (config, login) = (config.clone(), login.clone());
            pending.spawn(async move { open(port, config, &login).await });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok(session))) => sessions.push(session),
            Some(Ok(Err(e))) => panic!("session {} failed: {e}", sessions.len()),
            Some(Err(e)) => panic!("task: {e}"),
            None => break,
        }
    }
    sessions
}

/// The hard open-file limit of this process: nothing here may go past it.
fn hard_open_files() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(1024)
}

fn raise_open_files(limit: u64) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .expect("prlimit");
    assert!(
        status.success(),
        "cannot raise the open-file limit to {limit}"
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--trivial-backend") {
        let port = args
            .get(pos + 1)
            .and_then(|p| p.parse().ok())
            .expect("PORT");
        support::trivial_backend(port);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let hard = hard_open_files();
    // The gateway holds two sockets per session (client, backend): a machine whose hard limit
    // is 20 000 open files fits 9 900, with room for the listeners and the store.
    let count = knob("SESSIONS", 10_000).min(hard.saturating_sub(200) / 2) as usize;
    require("prlimit", "apt-get install util-linux");
    raise_open_files(hard);

    // The backend in a process of its own, so this one holds only the clients' sockets.
    let backend_port = free_port();
    let mut backend = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args(["--trivial-backend", &backend_port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("trivial backend");
    let dir = open_tempdir();
    wait_for_port(
        backend_port,
        "trivial backend",
        &mut backend,
        &dir.path().join("none.log"),
    );
    let limit = format!("{hard}:{hard}");
    let gateway = Gateway::start(
        backend_port,
        backend_port,
        Options {
            log_filter: "warn",
            max_connections: 2 * count + 100,
            limits: "max_pre_login_per_address = 100000".to_owned(),
            open_files: Some(Box::leak(limit.into_boxed_str())),
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let secret = gateway.app_password("alice", "mail", "idle");
    let login = Arc::new(format!("a1 LOGIN alice {secret}\r\n"));
    let mut config = (*tls_client_config(&gateway.ca)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = gateway.ports.imaps;
    // Warm-up: the allocator's arenas, the credential cache, the runtime's workers.
    let warm = runtime.block_on(open_many(200, port, config.clone(), login.clone()));
    drop(warm);
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(gateway.pid());

    let started = Instant::now();
    let sessions = runtime.block_on(open_many(count, port, config, login));
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let during = rss_kib(gateway.pid());
    let per_session = (during.saturating_sub(before)) as f64 / count as f64;
    println!(
        "{count} idle relayed IMAP sessions over TLS (opened in {:.1} s): gateway RSS {before} KiB before, {during} KiB with them open: {per_session:.1} KiB per session (goal <= 32 KiB)",
        took.as_secs_f64()
    );
    drop(sessions);
    let _ = backend.kill();
    let _ = backend.wait();
}
