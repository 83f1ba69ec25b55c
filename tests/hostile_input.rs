//! Bad input gets a clear protocol error and nothing else: no crash, no hang, no unbounded
//! memory. Raw bytes over real sockets to the real binary.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const MAIN_PASSWORD: &str = "hunter2-main-secret";

fn gateway(options: Options) -> (SmtpSink, Dovecot, Gateway) {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(dovecot.imap_port, dovecot.submission_port, options);
    gateway.create_account("alice", MAIN_PASSWORD);
    (sink, dovecot, gateway)
}

/// The gateway still serves a normal login afterwards.
fn still_serving(gateway: &Gateway, secret: &str) {
    let mut c = TlsRaw::connect(gateway.ports.imaps, &gateway.ca);
    assert!(c.line().starts_with("* OK"));
    c.send(format!("z1 LOGIN alice {secret}\r\n").as_bytes());
    let reply = c.until("z1 ");
    assert!(reply.contains("z1 OK"), "{reply}\n{}", gateway.log());
}

#[test]
fn imap_hostile_input() {
    let (_sink, _dovecot, gw) = gateway(Options::default());
    let secret = gw.app_password("alice", "mail", "t");

    // Over-long line: closed with BYE, nothing buffered without bound.
    let mut c = Raw::connect(gw.ports.imap);
    c.line();
    let junk = vec![b'a'; 64 * 1024];
    let _ = c.writer.write_all_ignoring_reset(&junk);
    let rest = c.rest();
    assert!(rest.contains("* BYE Command line too long"), "{rest:?}");

    // A literal announced at 4 GiB: refused before any data is sent; the connection goes on.
    let mut c = Raw::connect(gw.ports.imap);
    c.line();
    c.send(b"a1 LOGIN {4294967295}\r\n");
    assert_eq!(c.line(), "a1 BAD [TOOBIG] Literal too long\r\n");
    c.send(b"a2 NOOP\r\n");
    assert_eq!(c.line(), "a2 OK NOOP completed\r\n");
    c.send(b"a3 LOGIN {99999999+}\r\n");
    assert!(c.rest().contains("* BYE [TOOBIG] Literal too long"));

    // Commands before the greeting are answered after it, in order, like any input.
    let mut c = Raw::connect(gw.ports.imap);
    c.send(b"a1 LOGIN alice secret\r\na2 CAPABILITY\r\n");
    assert!(c.line().starts_with("* OK [CAPABILITY"));
    assert_eq!(c.line(), "a1 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n");
    assert!(c.line().starts_with("* CAPABILITY"));

    // STARTTLS injection: the command behind STARTTLS in the same packet is discarded.
    let mut c = Raw::connect(gw.ports.imap);
    c.line();
    c.send(format!("a1 STARTTLS\r\na2 LOGIN alice {secret}\r\n").as_bytes());
    assert_eq!(c.line(), "a1 OK Begin TLS negotiation now\r\n");
    let mut t = c.into_tls(&gw.ca);
    t.send(b"a3 NOOP\r\n");
    assert_eq!(
        t.line(),
        "a3 OK NOOP completed\r\n",
        "the injected LOGIN was executed"
    );

    // Over TLS: invalid base64, NUL inside SASL fields, non-UTF-8 login.
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    t.send(b"b1 AUTHENTICATE PLAIN\r\n");
    assert_eq!(t.line(), "+ \r\n");
    t.send(b"%%%not base64%%%\r\n");
    assert!(t.line().starts_with("b1 BAD"));
    for (tag, ir) in [("b2", "AGEAYgBj"), ("b3", "AP/+AHB3")] {
        t.send(format!("{tag} AUTHENTICATE PLAIN {ir}\r\n").as_bytes());
        let line = t.line();
        assert!(
            line.starts_with(&format!("{tag} BAD Invalid SASL response")),
            "{line}"
        );
    }
    // Another account as the authorization identity: the wrong-password refusal.
    t.send(b"b4 AUTHENTICATE PLAIN Ym9iAGFsaWNlAHB3\r\n");
    let line = t.line();
    assert!(line.starts_with("b4 NO [AUTHENTICATIONFAILED]"), "{line}");
    t.send(b"b5 LOGIN {2+}\r\n\xff\xfe pw\r\n");
    assert!(t.line().starts_with("b5 BAD"));
    t.send(b"b6 LOGIN \"al\\\"ice\" x\r\n");
    let line = t.line();
    assert!(line.starts_with("b6 NO [AUTHENTICATIONFAILED]"), "{line}");
    // The same connection still logs in.
    t.send(format!("b7 AUTHENTICATE PLAIN {}\r\n", plain("", "alice", &secret)).as_bytes());
    assert!(t.until("b7 ").contains("b7 OK [CAPABILITY"));

    // Failures: one reply for all, closed after three.
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    for (i, (user, pass)) in [
        ("nobody", secret.as_str()),
        ("alice", "wrongwrongwrongw"),
        ("alice", MAIN_PASSWORD),
    ]
    .iter()
    .enumerate()
    {
        let sent = Instant::now();
        t.send(format!("f{i} LOGIN {user} {pass}\r\n").as_bytes());
        assert_eq!(
            t.line(),
            format!("f{i} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        );
        // Whatever failed, the reply waits out the failure delay (50 ms here).
        assert!(
            sent.elapsed() >= Duration::from_millis(50),
            "{user}: {:?}",
            sent.elapsed()
        );
    }
    assert_eq!(t.line(), "* BYE Too many authentication failures\r\n");
    assert!(t.closed());
    // A password for another service gets the very same answer.
    let disk = gw.app_password("alice", "disk", "files");
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    t.send(format!("g1 LOGIN alice {disk}\r\n").as_bytes());
    assert_eq!(
        t.line(),
        "g1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    );

    still_serving(&gw, &secret);
    assert!(!gw.log().contains(&secret), "a secret reached the log");
    assert!(
        !gw.log().contains(MAIN_PASSWORD),
        "a secret reached the log"
    );
}

#[test]
fn smtp_hostile_input() {
    let (_sink, _dovecot, gw) = gateway(Options::default());
    let secret = gw.app_password("alice", "mail", "t");

    let mut c = Raw::connect(gw.ports.submission);
    assert!(c.line().starts_with("220 gateway.test"));
    c.send(b"EHLO x\r\n");
    let mut ehlo = String::new();
    loop {
        let line = c.line();
        ehlo.push_str(&line);
        if line.starts_with("250 ") || line.is_empty() {
            break;
        }
    }
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    c.send(format!("AUTH PLAIN {}\r\n", plain("", "alice", &secret)).as_bytes());
    assert!(c.line().starts_with("530 5.7.0"));
    c.send(b"MAIL FROM:<alice@example.org>\r\n");
    assert!(c.line().starts_with("530 5.7.0"));
    c.send(b"NO\0OP\r\n");
    assert!(c.line().starts_with("500 5.5.2"));
    let _ = c.writer.write_all_ignoring_reset(&vec![b'x'; 64 * 1024]);
    assert!(c.rest().contains("500 5.5.6 Line too long"));

    // STARTTLS injection.
    let mut c = Raw::connect(gw.ports.submission);
    c.line();
    c.send(b"EHLO x\r\n");
    while !c.line().starts_with("250 ") {}
    c.send(format!("STARTTLS\r\nAUTH PLAIN {}\r\n", plain("", "alice", &secret)).as_bytes());
    assert!(c.line().starts_with("220 2.0.0"));
    let mut t = c.into_tls(&gw.ca);
    t.send(b"NOOP\r\n");
    assert_eq!(
        t.line(),
        "250 2.0.0 OK\r\n",
        "the injected AUTH was executed"
    );

    let mut t = TlsRaw::connect(gw.ports.submissions, &gw.ca);
    t.line();
    t.send(b"EHLO x\r\n");
    let ehlo = t.until("250 ");
    // Dovecot's own extensions, minus what only the gateway may use on it.
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN")
            && ehlo.contains("PIPELINING")
            && ehlo.contains("CHUNKING"),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("XCLIENT") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    t.send(b"AUTH PLAIN !!!!\r\n");
    assert!(t.line().starts_with("501 5.5.2 Invalid base64"));
    for ir in ["AGEAYgBj", "AP/+AHB3"] {
        t.send(format!("AUTH PLAIN {ir}\r\n").as_bytes());
        assert!(
            t.line()
                .starts_with("501 5.5.2 Invalid authentication data")
        );
    }
    t.send(b"AUTH LOGIN\r\n");
    assert_eq!(t.line(), "334 VXNlcm5hbWU6\r\n");
    t.send(b"YWxpY2U=\r\n");
    assert_eq!(t.line(), "334 UGFzc3dvcmQ6\r\n");
    t.send(b"d3Jvbmc=\r\n");
    assert!(t.line().starts_with("535 5.7.8"));
    t.send(b"AUTH LOGIN YWxpY2U=\r\n");
    assert_eq!(t.line(), "334 UGFzc3dvcmQ6\r\n");
    use base64::Engine as _;
    t.send(
        format!(
            "{}\r\n",
            base64::engine::general_purpose::STANDARD.encode(&secret)
        )
        .as_bytes(),
    );
    assert!(t.line().starts_with("235 2.7.0"));
    t.send(b"QUIT\r\n");
    assert!(
        t.line().starts_with("221"),
        "relayed QUIT answered by the backend"
    );
}

#[test]
fn idle_connections_before_login_are_closed_at_the_deadline() {
    let (_sink, _dovecot, gw) = gateway(Options {
        login_timeout_secs: 1,
        ..Options::default()
    });
    let start = Instant::now();
    let mut imap = Raw::connect(gw.ports.imap);
    let mut smtp = Raw::connect(gw.ports.submission);
    imap.line();
    smtp.line();
    assert!(imap.rest().contains("* BYE Autologout"));
    assert!(smtp.rest().contains("421 4.4.2"));
    // A TLS listener where the client never starts the handshake.
    let mut silent = Raw::connect(gw.ports.imaps);
    assert!(silent.closed());
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn thousands_of_half_open_connections_hit_the_limit_without_growing_memory() {
    let (_sink, _dovecot, gw) = gateway(Options {
        max_connections: 500,
        login_timeout_secs: 30,
        ..Options::default()
    });
    let secret = gw.app_password("alice", "mail", "t");
    let before = rss_kib(gw.pid());
    let mut held = Vec::new();
    // Plaintext listeners: each connection holds its permit until the login deadline (30 s),
    // however slowly this loop runs on a busy machine. (Silent TLS connections are covered by
    // the handshake deadline test.)
    for i in 0..2000 {
        let port = if i % 2 == 0 {
            gw.ports.imap
        } else {
            gw.ports.submission
        };
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => held.push(s),
            Err(e) => panic!("connect {i}: {e}"),
        }
    }
    // Past the limit, new connections are refused with a protocol goodbye.
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = Raw::connect(gw.ports.imap);
    let rest = extra.rest();
    assert!(rest.contains("* BYE Too many connections"), "{rest:?}");
    let during = rss_kib(gw.pid());
    eprintln!("gateway RSS: {before} KiB idle, {during} KiB with 2000 half-open connections");
    assert!(
        during < before + 100 * 1024,
        "memory grew from {before} to {during} KiB"
    );
    drop(held);
    // Permits come back as connections close.
    let start = Instant::now();
    loop {
        let mut c = TlsRaw::connect(gw.ports.imaps, &gw.ca);
        if c.line().starts_with("* OK") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "limit never released"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    still_serving(&gw, &secret);
}

#[test]
fn a_backend_that_is_down_gives_a_temporary_failure() {
    let (_sink, mut dovecot, gw) = gateway(Options::default());
    let secret = gw.app_password("alice", "mail", "t");
    dovecot.stop();
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    t.send(format!("a1 LOGIN alice {secret}\r\n").as_bytes());
    assert!(t.line().starts_with("a1 NO [UNAVAILABLE]"));
    let mut s = TlsRaw::connect(gw.ports.submissions, &gw.ca);
    s.line();
    s.send(b"EHLO x\r\n");
    s.until("250 ");
    s.send(format!("AUTH PLAIN {}\r\n", plain("", "alice", &secret)).as_bytes());
    assert!(s.line().starts_with("454 4.7.0"));
    // The same connection may try again once the backend is back; here it is still down.
    s.send(format!("AUTH PLAIN {}\r\n", plain("", "alice", &secret)).as_bytes());
    assert!(s.line().starts_with("454 4.7.0"));
}

#[test]
fn a_silent_or_rude_backend_gives_a_temporary_failure_not_a_hang() {
    use std::io::Write;
    // Silent: accepts and never speaks. Rude: answers garbage and hangs up.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rude = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let rude_port = rude.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().take(4).flatten() {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    std::thread::spawn(move || {
        for mut conn in rude.incoming().take(4).flatten() {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let gw = Gateway::start(
        silent_port,
        rude_port,
        Options {
            backend_timeout_secs: 1,
            ..Options::default()
        },
    );
    gw.create_account("alice", MAIN_PASSWORD);
    let secret = gw.app_password("alice", "mail", "t");
    let start = Instant::now();
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    t.send(format!("a1 LOGIN alice {secret}\r\n").as_bytes());
    assert!(t.line().starts_with("a1 NO [UNAVAILABLE]"));
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "waited {:?}",
        start.elapsed()
    );
    let mut s = TlsRaw::connect(gw.ports.submissions, &gw.ca);
    s.line();
    s.send(b"EHLO x\r\n");
    s.until("250 ");
    s.send(format!("AUTH PLAIN {}\r\n", plain("", "alice", &secret)).as_bytes());
    assert!(s.line().starts_with("454 4.7.0"));
    assert!(gw.log().contains("backend login failed"), "{}", gw.log());
}

#[test]
fn sigterm_says_goodbye_to_live_sessions_and_exits() {
    let (_sink, _dovecot, mut gw) = gateway(Options::default());
    let secret = gw.app_password("alice", "mail", "t");
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    t.send(format!("a1 LOGIN alice {secret}\r\n").as_bytes());
    assert!(t.until("a1 ").contains("a1 OK"));
    t.send(b"a2 SELECT INBOX\r\n");
    assert!(t.until("a2 ").contains("a2 OK"));
    let mut waiting = Raw::connect(gw.ports.submission);
    waiting.line();
    assert!(gw.terminate(Duration::from_secs(8)), "did not exit cleanly");
    assert_eq!(t.line(), "* BYE Server shutting down\r\n");
    assert!(waiting.rest().contains("421 4.3.2"));
}

trait WriteIgnoringReset {
    fn write_all_ignoring_reset(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl WriteIgnoringReset for TcpStream {
    /// Writes what the server takes; it may hang up midway, which is the point.
    fn write_all_ignoring_reset(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        for chunk in bytes.chunks(4096) {
            if self.write_all(chunk).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// The log's lines about refused connections, and the refusals they say were left out.
fn refusal_lines(log: &str) -> (usize, usize) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("pre-login connection limit for this address reached"))
        .collect();
    let left_out = lines
        .iter()
        .filter_map(|l| {
            let count = l.split("refused_unlogged=").nth(1)?;
            let digits = count.split(|c: char| !c.is_ascii_digit()).next()?;
            digits.parse::<usize>().ok()
        })
        .sum();
    (lines.len(), left_out)
}

/// Connects `count` times from `source` and reads the first bytes: keeps the connections that
/// got an IMAP greeting open for `hold` seconds, and says how many were greeted, refused, and
/// of those refused, reset.
const HOLD_CONNECTIONS: &str = r#"
import socket, sys, time
source, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
held, greeted, refused, reset = [], 0, 0, 0
for _ in range(count):
    s = socket.socket()
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.settimeout(5)
    try:
        first = s.recv(200)
    except ConnectionResetError:
        first = b""
        reset += 1
    except OSError:
        first = b""
    if first.startswith(b"* OK"):
        greeted += 1
        held.append(s)
    else:
        refused += 1
        s.close()
print(f"greeted={greeted} refused={refused} reset={reset}", flush=True)
time.sleep(hold)
"#;

#[test]
fn one_address_cannot_take_every_connection() {
    // 300 idle connections from one address, as in a lock-out attack: it gets its share (32)
    // of the pre-login connections and no more; a user elsewhere still logs in. Every refusal
    // is counted, and the flood of refusals is not a flood of log lines.
    require("curl", "apt-get install curl");
    let metrics_port = free_port();
    let (_sink, _dovecot, gw) = gateway(Options {
        max_connections: 300,
        extra: format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
        ..Options::default()
    });
    let secret = gw.app_password("alice", "mail", "t");
    let mut attacker = std::process::Command::new("python3")
        .args([
            "-c",
            HOLD_CONNECTIONS,
            "127.0.0.3",
            &gw.ports.imap.to_string(),
            "300",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    {
        use std::io::BufRead;
        let stdout = attacker.stdout.take().unwrap();
        std::io::BufReader::new(stdout).read_line(&mut out).unwrap();
    }
    assert_eq!(out.trim(), "greeted=32 refused=268 reset=0", "{}", gw.log());
    let log = gw.log();
    // At most a line a second, each counting the refusals left out since the one before.
    let (lines, _) = refusal_lines(&log);
    assert!((1..=30).contains(&lines), "{lines} lines:\n{log}");
    let metrics = scrape(metrics_port);
    assert_eq!(
        value(
            &metrics,
            "portcullis_connections_refused_total",
            &["limit=\"address-limit\""]
        ),
        Some(268.0),
        "{metrics}"
    );
    // Where the protocol starts with the client's TLS hello there is no line to give: the
    // refusal is a reset, which leaves the gateway no TIME_WAIT socket per refused connection.
    require("ss", "apt-get install iproute2");
    let knock = |count: &str| {
        let imaps = gw.ports.imaps.to_string();
        let out = std::process::Command::new("python3")
            .args(["-c", HOLD_CONNECTIONS, "127.0.0.3", &imaps, count, "0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr,
        )
    };
    let (out, stderr) = knock("40");
    assert_eq!(out, "greeted=0 refused=40 reset=40", "{stderr}");
    let waiting = std::process::Command::new("ss")
        .args(["-Htan", "state", "time-wait"])
        .arg(format!("( sport = :{} )", gw.ports.imaps))
        .output()
        .unwrap();
    assert!(waiting.status.success());
    let waiting = String::from_utf8_lossy(&waiting.stdout);
    assert_eq!(waiting.lines().count(), 0, "{waiting}");
    // One more refusal a second later gets a line, which counts the ones left out: the lines
    // and their counts add up to every refusal (268 + 40 + 1).
    std::thread::sleep(Duration::from_millis(1100));
    let (out, stderr) = knock("1");
    assert_eq!(out, "greeted=0 refused=1 reset=1", "{stderr}");
    let log = gw.log();
    let (lines, left_out) = refusal_lines(&log);
    assert_eq!(lines + left_out, 309, "{log}");
    // From another address: still served, over both listener kinds.
    still_serving(&gw, &secret);
    let mut c = Raw::connect(gw.ports.imap);
    assert!(c.line().starts_with("* OK"));
    let _ = attacker.kill();
    let _ = attacker.wait();
}

const APPEND_BIG: &str = r#"
import imaplib, ssl, sys
port, ca, password = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
imap = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=ctx)
imap.login("alice", password)
body = ("x" * 998 + "\r\n") * 4096
message = f"From: a@example.org\r\nTo: alice@example.org\r\nSubject: big\r\n\r\n{body}"
typ, _ = imap.append("INBOX", None, None, message.encode())
print("APPEND", typ)
imap.logout()
"#;

#[test]
fn a_client_that_stops_reading_is_idle_even_while_the_backend_writes() {
    let (_sink, _dovecot, gw) = gateway(Options {
        limits: "imap_idle_timeout_secs = 2".to_owned(),
        ..Options::default()
    });
    let secret = gw.app_password("alice", "mail", "t");
    let ca = gw.ca.to_string_lossy().into_owned();
    let out = python_ok(APPEND_BIG, &[&gw.ports.imaps.to_string(), &ca, &secret]);
    assert!(out.contains("APPEND OK"), "{out}");
    let mut t = TlsRaw::connect(gw.ports.imaps, &gw.ca);
    t.line();
    t.send(format!("a LOGIN alice {secret}\r\n").as_bytes());
    assert!(t.until("a ").contains("a OK"));
    t.send(b"b SELECT INBOX\r\n");
    t.until("b ");
    // Ask for the 4 MiB message twenty times over and read none of it.
    let fetches: String = (0..20)
        .map(|i| format!("f{i} FETCH 1 BODY[]\r\n"))
        .collect();
    t.send(fetches.as_bytes());
    let started = Instant::now();
    let ended = loop {
        if gw.log().contains("session ended end=IdleTimeout") {
            break true;
        }
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ended,
        "a session blocked on a client that does not read lived on\n{}",
        gw.log()
    );
    eprintln!(
        "stuck session closed {:?} after the last read",
        started.elapsed()
    );
}

/// The soft open-file limit of a process, from /proc.
fn open_file_limit(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_open_file_limit_is_raised_and_connections_never_outgrow_it() {
    // A soft limit below the hard one is raised to it at start.
    let (_sink, _dovecot, gw) = gateway(Options {
        open_files: Some("256:4096"),
        ..Options::default()
    });
    assert_eq!(open_file_limit(gw.pid()), 4096);
    drop(gw);

    // A hard limit too low for max_connections: the gateway says so and serves what fits, so
    // every connection past it gets a busy reply instead of a failing accept and a hang.
    let (_sink, _dovecot, gw) = gateway(Options {
        open_files: Some("256:256"),
        max_connections: 1000,
        limits: "max_pre_login_per_address = 1000\nmax_pre_login_connections = 1000".to_owned(),
        ..Options::default()
    });
    let secret = gw.app_password("alice", "mail", "t");
    assert!(
        gw.log().contains("the open-file limit holds"),
        "{}",
        gw.log()
    );
    let mut held = Vec::new();
    let (mut greeted, mut busy) = (0, 0);
    for _ in 0..200 {
        let mut c = Raw::connect(gw.ports.imap);
        let line = c.line();
        if line.starts_with("* OK") {
            greeted += 1;
            held.push(c);
        } else if line.contains("Too many connections") {
            busy += 1;
        } else {
            panic!(
                "neither a greeting nor a busy reply: {line:?}\n{}",
                gw.log()
            );
        }
    }
    eprintln!("under a 256-descriptor limit: {greeted} greeted, {busy} told busy");
    assert!(greeted > 50 && busy > 0, "{greeted} greeted, {busy} busy");
    assert!(!gw.log().contains("accept failed"), "{}", gw.log());
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    still_serving(&gw, &secret);
}
