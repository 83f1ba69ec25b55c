//! App passwords limited by their owner, through the real binary: one that works only from a
//! network (imaplib from chosen loopback addresses; the auth server with and without `rip=`),
//! one with an expiry (a live IMAP session is cut at that moment and the next login refused),
//! both shown in the list, and what the CLI refuses.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `app-password create` with more arguments; the secret it prints.
fn create(gateway: &Gateway, name: &str, more: &[&str]) -> String {
    let mut args = vec![
        "app-password",
        "create",
        "alice",
        "--service",
        "mail",
        "--name",
        name,
    ];
    args.extend_from_slice(more);
    gateway.cli_ok(&args, None).trim().to_owned()
}

/// An RFC 3339 UTC time `secs` from now.
fn in_secs(secs: u64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("+{secs} seconds"),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn an_app_password_works_only_from_its_networks_and_until_its_expiry() {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options::default(),
    );
    gateway.create_account("alice", "alice long main password");

    // Networks: only 127.0.0.2 and 192.0.2.0/24.
    let office = create(
        &gateway,
        "office",
        &["--network", "127.0.0.2", "--network", "192.0.2.0/24"],
    );
    assert!(
        gateway
            .imap_from("127.0.0.2", "alice", &office)
            .contains("LOGIN OK")
    );
    let outside = gateway.imap_from("127.0.0.3", "alice", &office);
    assert!(outside.contains("FAILED"), "{outside}");
    // Cached after the first login, and still refused from elsewhere.
    assert!(
        gateway
            .imap_from("127.0.0.2", "alice", &office)
            .contains("LOGIN OK")
    );
    assert!(
        gateway
            .imap_from("127.0.0.3", "alice", &office)
            .contains("FAILED")
    );

    // Expiry: a session open at that moment is cut, and the password is refused after it.
    let until = in_secs(4);
    let brief = create(&gateway, "brief", &["--expires", &until]);
    let mut live = TlsRaw::connect(gateway.ports.imaps, &gateway.ca);
    assert!(live.line().starts_with("* OK"));
    live.send(format!("a LOGIN alice {brief}\r\n").as_bytes());
    assert!(live.until("a ").contains("a OK"), "login before the expiry");
    live.send(b"b SELECT INBOX\r\n");
    assert!(live.until("b ").contains("b OK"));
    let started = Instant::now();
    let bye = live.until("* BYE");
    assert!(bye.contains("* BYE") && bye.contains("expired"), "{bye:?}");
    assert!(live.closed());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut {:?} after the login, for an expiry 4 s away",
        started.elapsed()
    );
    assert!(
        gateway
            .imap_from("127.0.0.1", "alice", &brief)
            .contains("FAILED")
    );

    // The list says what each is limited to; the expired one is no longer alive.
    let list = gateway.cli_ok(&["app-password", "list", "alice"], None);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not in\n{list}"))
            .to_owned()
    };
    assert!(
        line("office").contains("only from 127.0.0.2/32, 192.0.2.0/24"),
        "{list}"
    );
    assert!(line("office").contains("alive"), "{list}");
    let shown_until = until.replace('T', " ").replace('Z', " UTC");
    assert!(
        line("brief").contains(&format!("until {shown_until}")),
        "{list}"
    );
    assert!(line("brief").contains("expired"), "{list}");
    let json = gateway.cli_ok(&["app-password", "list", "alice", "--json"], None);
    assert!(
        json.contains(r#""networks":["127.0.0.2/32","192.0.2.0/24"]"#),
        "{json}"
    );

    // What the CLI refuses, saying why.
    for (args, complaint) in [
        (&["--network", "192.0.2.0/33"][..], "network"),
        (&["--network", "mail.example.org"][..], "network"),
        (&["--expires", "2001-01-01"][..], "not in the future"),
        (&["--expires", "next week"][..], "expiry"),
    ] {
        let mut all = vec![
            "app-password",
            "create",
            "alice",
            "--service",
            "mail",
            "--name",
            "x",
        ];
        all.extend_from_slice(args);
        let out = gateway.cli(&all, None);
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(complaint), "{args:?}: {stderr}");
    }
}
