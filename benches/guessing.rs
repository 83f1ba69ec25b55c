//! Password guessing against the login gate, and what an innocent user sees meanwhile.
//!
//! One gateway in front of Dovecot, the default `[auth.throttle]` limits. The attacker, from
//! 127.0.0.3, runs LOAD_ATTACKERS (default 100) connections that each log in over and over to
//! a legacy-mode account (its main password opens IMAP, so every guess that is checked costs
//! an argon2 verify), half the guesses shaped like app passwords, all distinct. The victim,
//! from 127.0.0.2, logs in (TLS handshake, LOGIN, LOGOUT), first with no attack (the baseline,
//! same run), then during it, with two credentials. Like real clients, the victim and each
//! attacking connection keep their own TLS session cache (so they resume when they can).
//!
//! - **main password, uncached**: 50 legacy-mode accounts in turn with `cache_idle_secs = 1`,
//!   so every login is an argon2 verify queued with the attacker's;
//! - **app password**: one account's app password (cached after its first use).
//!
//! The victim is a program of its own (its own thread and runtime, not queued behind the
//! attacker's tasks) and logs in two ways: back to back, where each login starts as the last
//! one ends (so the victim's own argon2 and Dovecot work load the machine too), and paced, one
//! login every VICTIM_PACE_MS (default 200 ms), as people's clients log in. The machine's two
//! cores also run the attacker's client, Dovecot and the bench, so every row shares them.
//!
//! Where the time goes: the gateway's own metrics, scraped around each row, give the mean wait
//! for an argon2 slot and the mean backend login (TCP, greeting, ID and AUTHENTICATE to OK).
//!
//! For the attacker: the guesses the gateway actually checked (its log's
//! `reason=wrong-credentials` lines for 127.0.0.3) against the answers it got.
//!
//! `cargo bench --bench guessing` (LOAD_SECS, default 20 s per phase).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use support::{LoadResult, knob};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

const VICTIMS: usize = 50;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 20);
    let attackers = knob("LOAD_ATTACKERS", 100) as usize;
    let sink = SmtpSink::start();
    let mut users: Vec<String> = (0..VICTIMS)
        .map(|n| format!("victim{n}@example.org"))
        .collect();
    users.push("target@example.org".into());
    users.push("owner@example.org".into());
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let dovecot = Dovecot::start(sink.port, &user_refs);
    let metrics_port = free_port();
    let pace = Duration::from_millis(knob("VICTIM_PACE_MS", 200));
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            log_filter: "warn",
            auth: "cache_idle_secs = 1".into(),
            extra: format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
            ..Options::default()
        },
    );
    for n in 0..VICTIMS {
        let login = format!("victim{n}");
        gateway.create_account(&login, "victim main password");
        gateway.cli_ok(&["account", "app-passwords", &login, "off"], None);
    }
    gateway.create_account("target", "target main password");
    gateway.cli_ok(&["account", "app-passwords", "target", "off"], None);
    gateway.create_account("owner", "owner main password");
    let app = gateway.app_password("owner", "mail", "phone");
    // Each simulated client its own session cache, as a real client has.
    let client = || TlsConnector::from(tls_client_config(&gateway.ca));
    let port = gateway.ports.imaps;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let window = Duration::from_secs(secs);

    let victim_client = Victim {
        tls: client(),
        port,
        app,
        window,
        pace,
        metrics_port,
    };
    let alone = victim_client.rows();
    let stop = Arc::new(tokio::sync::Notify::new());
    let answered = Arc::new(AtomicUsize::new(0));
    let checked_before = checked(&gateway);
    let started = Instant::now();
    let started_ms = now_ms();
    let flood = runtime.block_on(async {
        let mut tasks = Vec::new();
        for a in 0..attackers {
            let (tls, stop, answered) = (client(), stop.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                loop {
                    n += 1;
                    let guess = if n.is_multiple_of(2) {
                        format!("guess {a} {n} of many")
                    } else {
                        // Shaped like an app password: 16 letters.
                        let letters: String = format!("{a:04}{n:012}")
                            .bytes()
                            .map(|b| (b'a' + (b - b'0')) as char)
                            .collect();
                        letters
                    };
                    let attempt = login_from("127.0.0.3", port, &tls, "target", &guess);
                    tokio::select! {
                        _ = stop.notified() => return,
                        result = attempt => {
                            if result.is_ok() {
                                answered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                // Refused a connection (the address's pre-login share): retry soon.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                }
            }));
        }
        // Let the flood build up before the victim measures.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rows = {
            let victim_client = victim_client.clone();
            tokio::task::spawn_blocking(move || victim_client.rows())
                .await
                .expect("victim thread")
        };
        stop.notify_waiters();
        for task in tasks {
            task.abort();
        }
        rows
    });
    let flood_secs = started.elapsed().as_secs_f64();
    let checked_guesses = checked(&gateway) - checked_before;
    // The throttle learns from failures, so the first guesses in flight are checked before it
    // knows the address; what matters is the rate once it does.
    let burst_ms = 5_000;
    let steady = checked_lines(&gateway)
        .iter()
        .filter_map(|line| logged_at_ms(line))
        .filter(|&at| at >= started_ms + burst_ms)
        .count();
    let steady_minutes = (flood_secs - burst_ms as f64 / 1e3) / 60.0;
    let log = gateway.log();
    let refused_unchecked = log
        .lines()
        .filter(|l| {
            l.contains("address=127.0.0.3")
                && (l.contains("reason=throttled") || l.contains("reason=banned"))
        })
        .count();
    let banned = log.contains("address banned: address=127.0.0.3");

    println!(
        "Victim from 127.0.0.2 during {attackers} guessing connections from 127.0.0.3, {secs} s per row; default [auth.throttle]"
    );
    println!();
    println!(
        "| victim login | logins | attack | logins/s | p50 ms | p99 ms | max ms | failed | argon2 slot wait ms (mean) | backend login ms (mean) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (n, (what, how)) in [
        ("main password, uncached (argon2)", "back to back"),
        ("main password, uncached (argon2)", "paced"),
        ("app password", "back to back"),
        ("app password", "paced"),
    ]
    .into_iter()
    .enumerate()
    {
        for (attack, row) in [("none", &alone[n]), ("flood", &flood[n])] {
            let r = &row.result;
            println!(
                "| {what} | {how} | {attack} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} |",
                r.rate,
                r.percentile(50.0),
                r.percentile(99.0),
                r.percentile(100.0),
                r.failed,
                row.hash_wait_ms,
                row.backend_login_ms,
            );
        }
    }
    println!();
    println!(
        "Paced: one login every {} ms. The means are the gateway's own (its /metrics), over every login in the row's time, the attacker's included.",
        pace.as_millis()
    );
    println!();
    println!(
        "Attacker: {} answers in {flood_secs:.0} s; {checked_guesses} guesses checked ({:.1}/min), {refused_unchecked} refused unchecked (throttled or banned); banned: {banned}",
        answered.load(Ordering::Relaxed),
        checked_guesses as f64 * 60.0 / flood_secs,
    );
    println!(
        "Of them, after the first {} s of the flood: {steady} checked in {:.0} s ({:.1}/min)",
        burst_ms / 1000,
        steady_minutes * 60.0,
        steady as f64 / steady_minutes,
    );
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(since.as_millis()).expect("ms")
}

/// When a log line was written (its leading UTC timestamp, to the second), in Unix ms.
fn logged_at_ms(line: &str) -> Option<i64> {
    let stamp = line.get(..19)?;
    portcullis::clock::parse_expiry(&format!("{stamp}Z"))
}

/// Guesses the gateway checked, as its log says (`reason=wrong-credentials` from 127.0.0.3).
fn checked(gateway: &Gateway) -> usize {
    checked_lines(gateway).len()
}

fn checked_lines(gateway: &Gateway) -> Vec<String> {
    gateway
        .log()
        .lines()
        .filter(|l| l.contains("address=127.0.0.3") && l.contains("reason=wrong-credentials"))
        .map(str::to_owned)
        .collect()
}

/// The victim: a client program of its own, on its own thread and runtime.
#[derive(Clone)]
struct Victim {
    tls: TlsConnector,
    port: u16,
    app: String,
    window: Duration,
    pace: Duration,
    metrics_port: u16,
}

/// One victim row and the gateway's view of the same time.
struct Row {
    result: LoadResult,
    hash_wait_ms: f64,
    backend_login_ms: f64,
}

impl Victim {
    /// The four rows: main password back to back and paced, then the app password the same.
    fn rows(&self) -> Vec<Row> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("victim runtime");
        let main = |n: usize| {
            (
                format!("victim{}", n % VICTIMS),
                "victim main password".to_owned(),
            )
        };
        let app = |_| ("owner".to_owned(), self.app.clone());
        runtime.block_on(async {
            vec![
                self.row(Duration::ZERO, main).await,
                self.row(self.pace, main).await,
                self.row(Duration::ZERO, app).await,
                self.row(self.pace, app).await,
            ]
        })
    }

    /// Logs in for `window`, a login starting every `pace` (or as the last one ends, for zero).
    async fn row(&self, pace: Duration, credentials: impl Fn(usize) -> (String, String)) -> Row {
        let before = scrape(self.metrics_port).await;
        let started = Instant::now();
        let mut latencies = Vec::new();
        let mut failed = 0;
        let mut n = 0;
        let mut next = tokio::time::Instant::now();
        while started.elapsed() < self.window {
            tokio::time::sleep_until(next).await;
            next += pace;
            let (user, password) = credentials(n);
            n += 1;
            let at = Instant::now();
            match tokio::time::timeout(
                Duration::from_secs(10),
                login_from("127.0.0.2", self.port, &self.tls, &user, &password),
            )
            .await
            {
                Ok(Ok(true)) => latencies.push(at.elapsed().as_secs_f64() * 1e3),
                _ => failed += 1,
            }
            // A login that overran its slot starts the next at once, not in a burst.
            next = next.max(tokio::time::Instant::now());
        }
        let result = LoadResult::gather(vec![(latencies, failed)], started.elapsed().as_secs_f64());
        let after = scrape(self.metrics_port).await;
        Row {
            result,
            hash_wait_ms: mean_ms(&before, &after, "portcullis_hash_wait_seconds", ""),
            backend_login_ms: mean_ms(
                &before,
                &after,
                "portcullis_backend_login_seconds",
                "result=\"ok\"",
            ),
        }
    }
}

/// The gateway's metrics page.
async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics listener");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("metrics request");
    let mut page = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut page)
        .await
        .expect("metrics page");
    page
}

/// The mean of a histogram's observations between two scrapes, in ms (0 when none).
fn mean_ms(before: &str, after: &str, name: &str, label: &str) -> f64 {
    let total = |page: &str, suffix: &str| -> f64 {
        page.lines()
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (metric == format!("{name}{suffix}") && series.contains(label))
                    .then(|| value.parse::<f64>().ok())?
            })
            .sum()
    };
    let count = total(after, "_count") - total(before, "_count");
    if count > 0.0 {
        (total(after, "_sum") - total(before, "_sum")) * 1e3 / count
    } else {
        0.0
    }
}

/// One IMAP login over TLS from `source`: Ok(true) for OK, Ok(false) for NO or a goodbye.
async fn login_from(
    source: &str,
    port: u16,
    tls: &TlsConnector,
    user: &str,
    password: &str,
) -> Result<bool, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let from: SocketAddr = format!("{source}:0").parse().map_err(|e| format!("{e}"))?;
    socket.bind(from).map_err(|e| e.to_string())?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| e.to_string())?;
    let stream = tls
        .connect(
            ServerName::try_from("localhost").map_err(|e| e.to_string())?,
            tcp,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut session = BufReader::new(stream);
    let mut line = String::new();
    session
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    if !line.starts_with("* OK") {
        return Err(line);
    }
    session
        .get_mut()
        .write_all(format!("a LOGIN {user} \"{password}\"\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    loop {
        line.clear();
        if session
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Ok(false);
        }
        if line.starts_with("a OK") {
            let _ = session.get_mut().write_all(b"b LOGOUT\r\n").await;
            return Ok(true);
        }
        if line.starts_with("a ") || line.starts_with("* BYE") {
            return Ok(false);
        }
    }
}
