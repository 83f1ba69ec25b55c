//! Password guessing against the login gate, and what an innocent user sees meanwhile.
//!
//! One gateway in front of Dovecot, the default `[auth.throttle]` limits. The attacker is a
//! process of its own: LOAD_ATTACKERS (default 100) connections from one address that each log
//! in over and over to a legacy-mode account (its main password opens IMAP, so every guess that
//! is checked costs an argon2 verify), half the guesses shaped like app passwords, all
//! distinct. The victim, from 127.0.0.2, logs in (TLS handshake, LOGIN, LOGOUT), first with no
//! attack (the baseline, same run), then during two floods: the attacker at the gateway's
//! priority (from 127.0.0.3), then at nice 19 (from 127.0.0.4). On a real edge the attacker's
//! client runs on other machines; here it shares the two cores, and nice 19 is the nearest this
//! machine comes to the real case: the attacker still gets every core the gateway and the
//! victim leave idle, but no longer takes them from them. Like real clients, the victim and
//! each attacking connection keep their own TLS session cache (so they resume when they can).
//!
//! - **main password, uncached**: 50 legacy-mode accounts in turn with `cache_idle_secs = 1`,
//!   so every login is an argon2 verify queued with the attacker's;
//! - **app password**: one account's app password (cached after its first use).
//!
//! The victim is this bench's process (its own thread and runtime) and logs in two ways: back to back, where each login starts as the last
//! one ends (so the victim's own argon2 and Dovecot work load the machine too), and paced, one
//! login every VICTIM_PACE_MS (default 200 ms), as people's clients log in. The machine's two
//! cores also run Dovecot, so every row shares them with it.
//!
//! Where the time goes: the gateway's own metrics, scraped around each row, give the mean wait
//! for an argon2 slot and the mean backend login (TCP, greeting, ID and AUTHENTICATE to OK);
//! the kernel's CPU counters (`/proc`), read around each row, give the cores the machine was
//! busy, split into the gateway, the attacker's process, this process (the victim's client),
//! and the rest (Dovecot above all).
//!
//! For each flood: the guesses the gateway actually checked (its log's
//! `reason=wrong-credentials` lines for the attacker's address) against the answers it got, and
//! the connections it refused on arrival (its metrics).
//!
//! `cargo bench --bench guessing` (LOAD_SECS, default 20 s per row).

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
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--attacker") {
        return attacker(&args[at + 1..]);
    }
    if !args.iter().any(|a| a == "--bench") {
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
    let victim = Victim {
        // Its own session cache, as a real client has.
        tls: TlsConnector::from(tls_client_config(&gateway.ca)),
        port: gateway.ports.imaps,
        app,
        window: Duration::from_secs(secs),
        pace,
        metrics_port,
        gateway_pid: gateway.pid(),
    };
    let alone = victim.rows(None);
    // Each flood from an address of its own, so the second does not start already throttled.
    let floods: Vec<Flood> = [("127.0.0.3", 0), ("127.0.0.4", 19)]
        .into_iter()
        .map(|(source, nice)| Flood::run(&gateway, &victim, source, nice, attackers))
        .collect();

    println!(
        "Victim from 127.0.0.2, {secs} s per row; default [auth.throttle]. Flood: {attackers} guessing connections from one address, from a process of their own at the gateway's priority (nice 0), then at nice 19 (as if on another machine: it runs on the cores the gateway and the victim leave idle)."
    );
    println!();
    println!(
        "| victim login | logins | attack | logins/s | p50 ms | p99 ms | max ms | failed | argon2 slot wait ms (mean) | backend login ms (mean) | cores busy: all / gateway / attacker client / victim client / rest | cores stolen |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (n, (what, how)) in [
        ("main password, uncached (argon2)", "back to back"),
        ("main password, uncached (argon2)", "paced"),
        ("app password", "back to back"),
        ("app password", "paced"),
    ]
    .into_iter()
    .enumerate()
    {
        let attacks = std::iter::once(("none".to_owned(), &alone[n])).chain(
            floods
                .iter()
                .map(|f| (format!("flood, nice {}", f.nice), &f.rows[n])),
        );
        for (attack, row) in attacks {
            let r = &row.result;
            let c = &row.cpu;
            println!(
                "| {what} | {how} | {attack} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.2} / {:.2} / {:.2} / {:.2} / {:.2} | {:.2} |",
                r.rate,
                r.percentile(50.0),
                r.percentile(99.0),
                r.percentile(100.0),
                r.failed,
                row.hash_wait_ms,
                row.backend_login_ms,
                c.all,
                c.gateway,
                c.attacker,
                c.bench,
                c.all - c.gateway - c.attacker - c.bench,
                c.steal,
            );
        }
    }
    println!();
    println!(
        "Paced: one login every {} ms. The means are the gateway's own (its /metrics), over every login in the row's time, the attacker's included. Cores busy: CPU time over the row's wall time ({} cores here); stolen: time the hypervisor gave this machine's cores to others while they had work.",
        pace.as_millis(),
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    for flood in &floods {
        println!();
        flood.report();
    }
}

/// One flood: the attacker's process, the victim's rows meanwhile, and what the gateway did
/// with the guesses.
struct Flood {
    nice: u8,
    source: &'static str,
    rows: Vec<Row>,
    secs: f64,
    answered: u64,
    checked: usize,
    /// Checked after the first [`BURST_MS`].
    steady: usize,
    refused_unchecked: usize,
    refused_connections: f64,
    banned: bool,
}

/// The throttle learns from failures, so the first guesses in flight are checked before it
/// knows the address; what matters is the rate once it does.
const BURST_MS: i64 = 5_000;

impl Flood {
    fn run(
        gateway: &Gateway,
        victim: &Victim,
        source: &'static str,
        nice: u8,
        attackers: usize,
    ) -> Self {
        let from = format!("address={source} ");
        let checked_lines = || -> Vec<i64> {
            gateway
                .log()
                .lines()
                .filter(|l| l.contains(&from) && l.contains("reason=wrong-credentials"))
                .filter_map(logged_at_ms)
                .collect()
        };
        let checked_before = checked_lines().len();
        let refused_before = refused_connections(victim.metrics_port);
        let started = Instant::now();
        let started_ms = now_ms();
        let exe = std::env::current_exe().expect("this bench's path");
        let mut process = std::process::Command::new("nice")
            .arg("-n")
            .arg(nice.to_string())
            .arg(exe)
            .arg("--attacker")
            .arg(victim.port.to_string())
            .arg(&gateway.ca)
            .arg(attackers.to_string())
            .arg(source)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the attacker");
        let answered = Arc::new(AtomicUsize::new(0));
        let reader = {
            let stdout = process.stdout.take().expect("attacker stdout");
            let answered = answered.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines() {
                    if let Some(n) = line.ok().and_then(|l| l.parse().ok()) {
                        answered.store(n, Ordering::Relaxed);
                    }
                }
            })
        };
        // Let the flood build up before the victim measures.
        std::thread::sleep(Duration::from_secs(2));
        // `nice` execs the attacker, so this is its process.
        let rows = victim.rows(Some(process.id()));
        let _ = process.kill();
        let _ = process.wait();
        let _ = reader.join();
        let secs = started.elapsed().as_secs_f64();
        let checked = checked_lines();
        let log = gateway.log();
        Self {
            nice,
            source,
            rows,
            secs,
            answered: answered.load(Ordering::Relaxed) as u64,
            checked: checked.len() - checked_before,
            steady: checked
                .iter()
                .filter(|&&at| at >= started_ms + BURST_MS)
                .count(),
            refused_unchecked: log
                .lines()
                .filter(|l| {
                    l.contains(&from)
                        && (l.contains("reason=throttled") || l.contains("reason=banned"))
                })
                .count(),
            refused_connections: refused_connections(victim.metrics_port) - refused_before,
            banned: log.contains(&format!("address banned: address={source}")),
        }
    }

    fn report(&self) {
        let steady_minutes = (self.secs - BURST_MS as f64 / 1e3) / 60.0;
        println!(
            "Attacker at nice {} ({}): {} answers in {:.0} s; {} guesses checked ({:.1}/min), {} refused unchecked (throttled or banned); banned: {}",
            self.nice,
            self.source,
            self.answered,
            self.secs,
            self.checked,
            self.checked as f64 * 60.0 / self.secs,
            self.refused_unchecked,
            self.banned,
        );
        println!(
            "  after the first {} s: {} checked in {:.0} s ({:.1}/min); connections refused on arrival (over the address's pre-login share): {:.0} ({:.0}/s)",
            BURST_MS / 1000,
            self.steady,
            steady_minutes * 60.0,
            self.steady as f64 / steady_minutes,
            self.refused_connections,
            self.refused_connections / self.secs,
        );
    }
}

/// The attacker's process: `--attacker PORT CA CONNECTIONS SOURCE`. Each connection logs in
/// over and over from SOURCE to the legacy-mode account `target`, every guess distinct, half
/// of them shaped like app passwords; it keeps its own TLS session cache. Prints the answers
/// so far twice a second, until killed.
fn attacker(args: &[String]) {
    let [port, ca, connections, source] = args else {
        panic!("usage: --attacker PORT CA CONNECTIONS SOURCE");
    };
    let port: u16 = port.parse().expect("port");
    let connections: usize = connections.parse().expect("connections");
    let source: &'static str = source.clone().leak();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answered = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        for a in 0..connections {
            let tls = TlsConnector::from(tls_client_config(std::path::Path::new(ca)));
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut n = 0usize;
                loop {
                    n += 1;
                    let guess = if n.is_multiple_of(2) {
                        format!("guess {a} {n} of many")
                    } else {
                        // Shaped like an app password: 16 letters.
                        format!("{a:04}{n:012}")
                            .bytes()
                            .map(|b| (b'a' + (b - b'0')) as char)
                            .collect()
                    };
                    if login_from(source, port, &tls, "target", &guess)
                        .await
                        .is_ok()
                    {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Refused a connection (the address's pre-login share): retry soon.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
        }
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            println!("{}", answered.load(Ordering::Relaxed));
        }
    })
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

/// Connections the gateway refused on arrival, from its metrics.
fn refused_connections(metrics_port: u16) -> f64 {
    let page = common::scrape(metrics_port);
    ["connection-limit", "pre-login-limit", "address-limit"]
        .iter()
        .filter_map(|limit| {
            value(
                &page,
                "portcullis_connections_refused_total",
                &[&format!("limit=\"{limit}\"")],
            )
        })
        .sum()
}

/// CPU time so far, in seconds: the whole machine's busy and stolen time, the gateway's, the
/// attacker's process's, and this process's (the victim's client).
#[derive(Clone, Copy)]
struct CpuTimes {
    all: f64,
    /// Time the hypervisor ran something else while this machine had work.
    steal: f64,
    gateway: f64,
    attacker: f64,
    bench: f64,
}

impl CpuTimes {
    fn now(gateway_pid: u32, attacker_pid: Option<u32>) -> Self {
        // USER_HZ is 100 on every Linux this runs on.
        let ticks = 100.0;
        // /proc/stat's first line: cpu user nice system idle iowait irq softirq steal ...
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        let fields: Vec<f64> = stat
            .lines()
            .next()
            .expect("cpu line")
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().expect("counter"))
            .collect();
        let field = |n: usize| fields.get(n).copied().unwrap_or(0.0);
        // user, nice, system, irq, softirq (guest time is inside user and nice already).
        let busy = field(0) + field(1) + field(2) + field(5) + field(6);
        Self {
            all: busy / ticks,
            steal: field(7) / ticks,
            gateway: process_cpu(&format!("/proc/{gateway_pid}/stat")) / ticks,
            attacker: attacker_pid.map_or(0.0, |pid| process_cpu(&format!("/proc/{pid}/stat")))
                / ticks,
            bench: process_cpu("/proc/self/stat") / ticks,
        }
    }

    /// Cores busy on average from `self` to `later`, over `secs` of wall time.
    fn cores(self, later: Self, secs: f64) -> Self {
        Self {
            all: (later.all - self.all) / secs,
            steal: (later.steal - self.steal) / secs,
            gateway: (later.gateway - self.gateway) / secs,
            attacker: (later.attacker - self.attacker) / secs,
            bench: (later.bench - self.bench) / secs,
        }
    }
}

/// utime + stime of a process, in ticks (fields 14 and 15 of its stat, counted after the
/// command name, which may hold spaces).
fn process_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).expect("process stat");
    let after_name = stat.rsplit_once(')').expect("stat line").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime")
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
    gateway_pid: u32,
}

/// One victim row and the gateway's view of the same time.
struct Row {
    result: LoadResult,
    hash_wait_ms: f64,
    backend_login_ms: f64,
    /// Cores busy during the row.
    cpu: CpuTimes,
}

impl Victim {
    /// The four rows: main password back to back and paced, then the app password the same.
    fn rows(&self, attacker_pid: Option<u32>) -> Vec<Row> {
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
                self.row(Duration::ZERO, main, attacker_pid).await,
                self.row(self.pace, main, attacker_pid).await,
                self.row(Duration::ZERO, app, attacker_pid).await,
                self.row(self.pace, app, attacker_pid).await,
            ]
        })
    }

    /// Logs in for `window`, a login starting every `pace` (or as the last one ends, for zero).
    async fn row(
        &self,
        pace: Duration,
        credentials: impl Fn(usize) -> (String, String),
        attacker_pid: Option<u32>,
    ) -> Row {
        let before = scrape(self.metrics_port).await;
        let cpu_before = CpuTimes::now(self.gateway_pid, attacker_pid);
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
        let cpu = cpu_before.cores(
            CpuTimes::now(self.gateway_pid, attacker_pid),
            started.elapsed().as_secs_f64(),
        );
        let after = scrape(self.metrics_port).await;
        Row {
            cpu,
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
