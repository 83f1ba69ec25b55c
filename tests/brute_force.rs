//! The login gate against password guessing, through the real binary with real clients
//! (imaplib from chosen loopback addresses, curl for the portal): a stale password repeated
//! is never escalated; distinct guesses from one address get it banned (the right password
//! from there is refused too, on IMAP and in the portal, while the owner elsewhere logs in);
//! `portcullis bans` lists the ban and lifts it; and fail2ban's own `fail2ban-regex` matches
//! the shipped filter against the gateway's real log: every counted failure, no repeat.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn guessing_gets_an_address_banned_but_a_stale_password_never_does() {
    require("fail2ban-regex", "apt-get install fail2ban");
    require("curl", "apt-get install curl");
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            // The product default: a sign-in's argon2 check must finish within it.
            failure_delay_ms: 500,
            extra: String::new(),
            tail: "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{http}\"\ntls = \"implicit\"\n[auth.throttle]\nfree_failures_per_address = 3\nfree_failures_per_login = 2\nmax_delay_secs = 5\nban_after = 6\nban_secs = 300\n".into(),
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    let secret = gateway.app_password("alice", "mail", "phone");

    // A phone with an old password, from 127.0.0.5, twenty times: refused every time, never
    // slowed, never banned; the owner's right password from there still works.
    for _ in 0..20 {
        let out = gateway.imap_from("127.0.0.5", "alice", "an old app password");
        assert!(out.contains("FAILED"), "{out}");
    }
    assert!(
        gateway
            .imap_from("127.0.0.5", "alice", &secret)
            .contains("LOGIN OK")
    );
    assert_eq!(gateway.log().matches("reason=repeated").count(), 19);

    // Distinct guesses from 127.0.0.3: the sixth bans it.
    for n in 0..6 {
        let out = gateway.imap_from("127.0.0.3", "alice", &format!("guess number {n}"));
        assert!(out.contains("FAILED"), "{out}");
    }
    assert!(
        gateway.log().contains("address banned: address=127.0.0.3"),
        "{}",
        gateway.log()
    );
    // Banned: even the right password is refused from there (unchecked), on IMAP and in the
    // portal; the owner elsewhere is not locked out.
    assert!(
        gateway
            .imap_from("127.0.0.3", "alice", &secret)
            .contains("FAILED")
    );
    let portal = |source: &str| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--interface",
                source,
            ])
            .arg("--cacert")
            .arg(&gateway.ca)
            .args(["-H", "Content-Type: application/json"])
            .args([
                "-H",
                &format!("Origin: https://localhost:{}", gateway.ports.http),
            ])
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.1", gateway.ports.http),
            ])
            .args([
                "-d",
                r#"{"login":"alice","password":"alice long main password"}"#,
            ])
            .arg(format!(
                "https://localhost:{}/api/v1/session",
                gateway.ports.http
            ))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(portal("127.0.0.3"), "401");
    assert_eq!(portal("127.0.0.4"), "200");
    assert!(
        gateway
            .imap_from("127.0.0.4", "alice", &secret)
            .contains("LOGIN OK")
    );
    let log = gateway.log();
    assert!(
        log.contains("login failed: address=127.0.0.3 login=\"alice\" protocol=portal service=account reason=banned"),
        "{log}"
    );

    // The ban is in the store: the operator sees it and lifts it; every node follows within
    // seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut listed = String::new();
    while !listed.contains("127.0.0.3") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        listed = gateway.cli_ok(&["bans"], None);
    }
    assert!(listed.contains("127.0.0.3"), "{listed}");
    gateway.cli_ok(&["bans", "lift", "127.0.0.3"], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = gateway.imap_from("127.0.0.3", "alice", &secret);
        if out.contains("LOGIN OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still banned after the lift: {out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // fail2ban's own tool with the shipped filter, on the real log: it matches every counted
    // failure and no repeat.
    let log = gateway.log();
    let counted = log
        .lines()
        .filter(|l| {
            l.contains("portcullis::login: login failed:") && !l.contains("reason=repeated")
        })
        .count();
    assert!(counted >= 8, "{counted}\n{log}");
    let log_file = gateway.dir.path().join("gateway.log");
    let out = Command::new("fail2ban-regex")
        .arg("--print-all-matched")
        .arg(&log_file)
        .arg(repo_path("contrib/fail2ban/filter.d/portcullis.conf"))
        .output()
        .expect("fail2ban-regex");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains(&format!("Failregex: {counted} total")),
        "expected {counted} matches\n{report}"
    );
    assert!(report.contains("127.0.0.3"), "{report}");
}
