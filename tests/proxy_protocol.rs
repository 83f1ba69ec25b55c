//! Behind a load balancer: real HAProxy in TCP mode sending PROXY protocol v2 to an IMAP
//! listener with `proxy_protocol = true`. The client's address from the header is what the
//! gateway logs, records as the app password's last use, and tells Dovecot (its log shows it);
//! a v1 header works too; a connection from an address not in `proxy_from` is closed unread;
//! HAProxy's health checks are no failed logins. The portal behind HAProxy records the
//! browser's address for its web sessions.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// HAProxy on 127.0.0.2 forwarding to 127.0.0.1:`to` with a v2 header, checking it.
fn haproxy(to: u16) -> (Haproxy, u16) {
    let port = free_port();
    let haproxy = Haproxy::start(&[HaRoute {
        bind_host: "127.0.0.2",
        port,
        servers: vec![to],
        send_proxy: true,
    }]);
    (haproxy, port)
}

#[test]
fn the_client_address_from_haproxy_is_the_one_used_everywhere() {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let port = free_port();
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            tail: format!(
                "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:{port}\"\ntls = \"implicit\"\nbackend = \"imap\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n"
            ),
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    let secret = gateway.app_password("alice", "mail", "phone");
    let (_haproxy, front) = haproxy(port);
    let ca = gateway.ca.to_string_lossy().into_owned();
    let login = |source: &str, host: &str, to: u16, header: &str| {
        python_ok(
            IMAP_FROM,
            &[source, host, &to.to_string(), &ca, "alice", &secret, header],
        )
    };

    // Through HAProxy from 127.0.0.3: the gateway sees 127.0.0.3, not HAProxy's 127.0.0.1.
    let out = login("127.0.0.3", "127.0.0.2", front, "");
    assert!(out.contains("LOGIN OK"), "{out}\n{}", gateway.log());
    let log = gateway.log();
    assert!(log.contains("peer=127.0.0.3:"), "{log}");
    // The last use on record (written in batches), and Dovecot's own log, name the client.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut listed = String::new();
    while !listed.contains("127.0.0.3 imap") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        listed = gateway.cli_ok(&["app-password", "list", "alice"], None);
    }
    assert!(listed.contains("127.0.0.3 imap"), "{listed}");
    while !dovecot.log().contains("rip=127.0.0.3") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dovecot.log().contains("rip=127.0.0.3"), "{}", dovecot.log());

    // A v1 header from the trusted balancer's address counts too.
    let out = login(
        "127.0.0.1",
        "127.0.0.1",
        port,
        "PROXY TCP4 198.51.100.7 127.0.0.1 5555 993",
    );
    assert!(out.contains("LOGIN OK"), "{out}");
    assert!(
        gateway.log().contains("peer=198.51.100.7:5555"),
        "{}",
        gateway.log()
    );

    // From anywhere else, even with a header: closed unread.
    let out = login(
        "127.0.0.4",
        "127.0.0.1",
        port,
        "PROXY TCP4 198.51.100.8 127.0.0.1 5555 993",
    );
    assert!(out.contains("FAILED"), "{out}");
    assert!(
        gateway.log().contains("not in proxy_from"),
        "{}",
        gateway.log()
    );
    assert!(!gateway.log().contains("198.51.100.8"), "{}", gateway.log());
    // From the balancer but without a header: refused.
    let out = login("127.0.0.1", "127.0.0.1", port, "");
    assert!(out.contains("FAILED"), "{out}");
    assert!(
        gateway.log().contains("PROXY header refused"),
        "{}",
        gateway.log()
    );

    // HAProxy's health checks (PROXY v2 LOCAL, then nothing) are no login at all.
    std::thread::sleep(Duration::from_millis(1500));
    let log = gateway.log();
    assert!(!log.contains("login failed"), "{log}");
}

#[test]
fn the_portal_behind_haproxy_sees_the_browsers_address() {
    require("curl", "apt-get install curl");
    let port = free_port();
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail: format!(
                "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{port}\"\ntls = \"implicit\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n"
            ),
            // A sign-in's argon2 check must finish within the failure delay.
            failure_delay_ms: 1000,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    let (_haproxy, front) = haproxy(port);
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar");
    let base = format!("https://localhost:{}/api/v1", front);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--interface", "127.0.0.3", "--cacert"])
            .arg(&gateway.ca)
            .args(["--resolve", &format!("localhost:{}:127.0.0.2", front)])
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The browser's origin is the balancer's address as the browser sees it.
    let origin = format!("Origin: https://localhost:{}", front);
    let signed_in = curl(&[
        "-H",
        &origin,
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"login":"alice","password":"alice long main password"}"#,
        &format!("{base}/session"),
    ]);
    assert!(signed_in.contains("alice@example.org"), "{signed_in}");
    let sessions = curl(&[&format!("{base}/sessions")]);
    assert!(sessions.contains(r#""ip":"127.0.0.3""#), "{sessions}");
    assert!(!sessions.contains(r#""ip":"127.0.0.1""#), "{sessions}");
}
