//! A credential that dies is refused on the next login and cuts its live sessions within one
//! second, whichever process killed it: here the CLI, a separate process, while `serve` runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SMTP_HOLD: &str = r#"
import smtplib, ssl, sys
port, ca, user, password = sys.argv[1:5]
smtp = smtplib.SMTP_SSL("localhost", int(port), context=ssl.create_default_context(cafile=ca))
smtp.ehlo("client.test")
smtp.login(user, password)
print("READY", flush=True)
code, text = smtp.getreply()
print("GOT", code, text.decode(), flush=True)
"#;

#[test]
fn revoking_from_the_cli_refuses_the_next_login_and_cuts_open_sessions_within_a_second() {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options::default(),
    );
    gateway.create_account("alice", "main password");
    let doomed = gateway.app_password("alice", "mail", "Old phone");
    let doomed_id = gateway.newest_app_password_id("alice");
    let kept = gateway.app_password("alice", "mail", "Laptop");
    let ca = gateway.ca.to_string_lossy().into_owned();

    // Warm the cache: the revocation must beat a cached entry.
    assert!(imap_login(&gateway, "alice", &doomed).contains("LOGIN OK"));
    let imap = Held::start(IMAP_HOLD, gateway.ports.imaps, &ca, "alice", &doomed);
    let smtp = Held::start(SMTP_HOLD, gateway.ports.submissions, &ca, "alice", &doomed);
    let bystander = Held::start(IMAP_HOLD, gateway.ports.imaps, &ca, "alice", &kept);

    gateway.cli_ok(
        &["app-password", "revoke", "alice", &doomed_id.to_string()],
        None,
    );
    let revoked_at = Instant::now();
    let imap_goodbye = imap.next(Duration::from_secs(3));
    let imap_window = revoked_at.elapsed();
    let smtp_goodbye = smtp.next(Duration::from_secs(3));
    let smtp_window = revoked_at.elapsed();
    eprintln!(
        "revocation window (CLI exit to client goodbye): imap {imap_window:?}, smtp {smtp_window:?}"
    );

    let imap_goodbye = imap_goodbye.expect("the IMAP session was not cut");
    assert!(imap_goodbye.starts_with("GOT * BYE"), "{imap_goodbye}");
    assert_eq!(imap.next(Duration::from_secs(3)).as_deref(), Some("EOF"));
    let smtp_goodbye = smtp_goodbye.expect("the SMTP session was not cut");
    assert!(smtp_goodbye.starts_with("GOT 421"), "{smtp_goodbye}");
    assert!(
        imap_window < Duration::from_secs(1),
        "IMAP cut after {imap_window:?}"
    );
    assert!(
        smtp_window < Duration::from_secs(1),
        "SMTP cut after {smtp_window:?}"
    );

    // The next login with it is refused; the other app password and its session live on.
    assert!(imap_login(&gateway, "alice", &doomed).contains("LOGIN-FAILED"));
    assert_eq!(
        bystander.next(Duration::from_millis(300)),
        None,
        "the other session was cut"
    );
    assert!(imap_login(&gateway, "alice", &kept).contains("LOGIN OK"));
    let listed = gateway.cli_ok(&["app-password", "list", "alice"], None);
    assert!(
        listed.contains("revoked") && listed.contains("Old phone"),
        "{listed}"
    );
}

#[test]
fn every_generation_bump_from_the_cli_kills_sessions_and_passwords() {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options::default(),
    );
    gateway.create_account("alice", "main password");
    let ca = gateway.ca.to_string_lossy().into_owned();
    let bumps: [(&[&str], Option<&str>); 4] = [
        (&["account", "logout-everywhere", "alice"], None),
        (&["account", "restore", "alice"], None),
        (
            &["account", "password", "alice"],
            Some("a new main password\n"),
        ),
        (&["account", "two-factor", "alice", "on"], None),
    ];
    for (args, stdin) in bumps {
        let secret = gateway.app_password("alice", "mail", "Phone");
        let held = Held::start(IMAP_HOLD, gateway.ports.imaps, &ca, "alice", &secret);
        gateway.cli_ok(args, stdin);
        let bye = held.next(Duration::from_secs(2));
        assert!(
            bye.as_deref().is_some_and(|l| l.starts_with("GOT * BYE")),
            "{args:?}: {bye:?}"
        );
        assert!(
            imap_login(&gateway, "alice", &secret).contains("LOGIN-FAILED"),
            "{args:?}"
        );
    }
    // With 2FA on now, a password change leaves app passwords (and their sessions) alone.
    let secret = gateway.app_password("alice", "mail", "Phone");
    let held = Held::start(IMAP_HOLD, gateway.ports.imaps, &ca, "alice", &secret);
    gateway.cli_ok(&["account", "password", "alice"], Some("yet another\n"));
    assert_eq!(held.next(Duration::from_millis(800)), None);
    assert!(imap_login(&gateway, "alice", &secret).contains("LOGIN OK"));
    let shown = gateway.cli_ok(&["account", "show", "alice", "--json"], None);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["two_factor"], true);
    assert_eq!(shown["generation"], 5);
}
