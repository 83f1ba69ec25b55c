//! What an operator runs the gateway with: Prometheus metrics (scraped with curl, checked with
//! `promtool check metrics`, and every series the README promises moving with real logins,
//! handshakes and a revocation), and the systemd unit (`systemd-analyze verify`, and its
//! sandbox scored by `systemd-analyze security`).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RESUME: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
session = None
for _ in range(2):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost", session=session) as tls:
            tls.recv(1024)
            print("reused" if tls.session_reused else "full")
            session = tls.session
"#;

fn promtool(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_count_logins_sessions_handshakes_and_revocations_and_pass_promtool() {
    require("promtool", "apt-get install prometheus");
    require("curl", "apt-get install curl");
    let metrics_port = free_port();
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org", "bob@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            extra: format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    gateway.create_account("bob", "bob long main password");
    // Bob is in legacy mode: his main password opens IMAP, so his login is an argon2 check.
    gateway.cli_ok(&["account", "app-passwords", "bob", "off"], None);
    let secret = gateway.app_password("alice", "mail", "phone");
    let imap = |user: &str, password: &str| gateway.imap_from("127.0.0.1", user, password);
    assert!(imap("alice", &secret).contains("LOGIN OK"));
    assert!(imap("alice", "not the password").contains("FAILED"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !imap("bob", "bob long main password").contains("LOGIN OK") {
        // The CLI's change reaches the gateway through the feed.
        assert!(Instant::now() < deadline, "legacy login refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    let resumed = python_ok(
        RESUME,
        &[
            &gateway.ports.imaps.to_string(),
            &gateway.ca.to_string_lossy(),
        ],
    );
    assert_eq!(
        resumed.split_whitespace().collect::<Vec<_>>(),
        ["full", "reused"],
        "{resumed}"
    );

    // A live session, cut by a revocation.
    let mut live = TlsRaw::connect(gateway.ports.imaps, &gateway.ca);
    assert!(live.line().starts_with("* OK"));
    live.send(format!("a LOGIN alice {secret}\r\n").as_bytes());
    assert!(live.until("a ").contains("a OK"), "login");
    let during = scrape(metrics_port);
    assert!(
        value(&during, "portcullis_sessions", &["protocol=\"imap\""]) >= Some(1.0),
        "{during}"
    );
    let id = gateway.newest_app_password_id("alice");
    gateway.cli_ok(&["app-password", "revoke", "alice", &id.to_string()], None);
    assert!(live.until("* BYE").contains("revoked"));

    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = scrape(metrics_port);
        if value(
            &metrics,
            "portcullis_sessions_cut_total",
            &["protocol=\"imap\""],
        ) == Some(1.0)
        {
            break metrics;
        }
        assert!(Instant::now() < deadline, "no cut counted:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    };
    promtool(&metrics);

    let at_least = |name: &str, labels: &[&str], minimum: f64| {
        let got = value(&metrics, name, labels);
        assert!(
            got >= Some(minimum),
            "{name}{labels:?} = {got:?}, wanted >= {minimum}\n{metrics}"
        );
    };
    let ok = ["protocol=\"imap\"", "service=\"mail\"", "result=\"ok\""];
    at_least("portcullis_logins_total", &ok, 3.0);
    let wrong = ["protocol=\"imap\"", "result=\"wrong-credentials\""];
    at_least("portcullis_logins_total", &wrong, 1.0);
    at_least("portcullis_tls_handshakes_total", &["kind=\"full\""], 4.0);
    at_least(
        "portcullis_tls_handshakes_total",
        &["kind=\"resumed\""],
        1.0,
    );
    at_least(
        "portcullis_backend_connect_seconds_count",
        &["backend=\"imap\""],
        3.0,
    );
    let backend_ok = ["backend=\"imap\"", "result=\"ok\""];
    at_least("portcullis_backend_login_seconds_count", &backend_ok, 3.0);
    at_least("portcullis_hash_wait_seconds_count", &[], 1.0);
    at_least("portcullis_feed_lag_seconds", &[], 0.0);
    assert_eq!(
        value(&metrics, "portcullis_hash_queue_depth", &[]),
        Some(0.0)
    );
    assert_eq!(value(&metrics, "portcullis_bans_active", &[]), Some(0.0));
    assert_eq!(
        value(&metrics, "portcullis_sessions", &["protocol=\"imap\""]),
        Some(0.0)
    );
    // Histograms have buckets, so nodes' figures can be added up.
    assert!(
        metrics.contains("portcullis_backend_login_seconds_bucket{"),
        "{metrics}"
    );

    // Only /metrics is served, and nothing here is secret.
    assert!(!metrics.contains(&secret));
    let other = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{metrics_port}/"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&other.stdout), "404");
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    require("systemd-analyze", "apt-get install systemd");
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/portcullis.service"
    ))
    .expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/portcullis "));
    let dir = open_tempdir();
    let path = dir.path().join("portcullis.service");
    // The unit names the installed binary; here the one just built stands in for it.
    std::fs::write(&path, unit.replace("/usr/local/bin/portcullis", binary())).expect("write");

    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for portcullis.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    // systemd's scale: 0 (sandboxed) to 10 (unprotected); "OK" ends at 2.0.
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
}
