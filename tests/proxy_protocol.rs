//! Behind a load balancer: real HAProxy in TCP mode sending PROXY protocol v2 to an IMAP
//! listener with `proxy_protocol = true`. The client's address from the header is what the
//! gateway logs, records as the app password's last use, and tells Dovecot (its log shows it);
//! a v1 header works too; a connection from an address not in `proxy_from` is closed unread;
//! HAProxy's health checks are no failed logins. The portal behind HAProxy records the
//! browser's address for its web sessions.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Listens on 127.0.0.2 and forwards to 127.0.0.1:`to` with a v2 header, checking it.
    fn start(to: u16) -> Self {
        require("haproxy", "apt-get install haproxy");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  log stderr format short local0\ndefaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\nfrontend front\n  bind 127.0.0.2:{port}\n  default_backend gateways\nbackend gateways\n  server node1 127.0.0.1:{to} send-proxy-v2 check check-send-proxy inter 500ms\n"
            ),
        )
        .unwrap();
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("haproxy");
        wait_for_port_on("127.0.0.2", port, "haproxy", &mut child, &log);
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// An IMAP login from a chosen local address, to `host:port`, optionally sending a v1 PROXY
/// header first (as a load balancer would): prints `LOGIN OK` or what failed.
const IMAP_FROM: &str = r#"
import imaplib, socket, ssl, sys
source, host, port, ca, user, password, header = sys.argv[1:8]
class Client(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((host, int(port)), timeout or 10, source_address=(source, 0))
        if header:
            sock.sendall(header.encode() + b"\r\n")
        return self.ssl_context.wrap_socket(sock, server_hostname="localhost")
try:
    imap = Client(host, int(port), ssl_context=ssl.create_default_context(cafile=ca))
    imap.login(user, password)
    imap.select("INBOX")
    imap.logout()
    print("LOGIN OK")
except (OSError, imaplib.IMAP4.error) as e:
    print("FAILED", type(e).__name__, e)
"#;

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
    let haproxy = Haproxy::start(port);
    let ca = gateway.ca.to_string_lossy().into_owned();
    let login = |source: &str, host: &str, to: u16, header: &str| {
        python_ok(
            IMAP_FROM,
            &[source, host, &to.to_string(), &ca, "alice", &secret, header],
        )
    };

    // Through HAProxy from 127.0.0.3: the gateway sees 127.0.0.3, not HAProxy's 127.0.0.1.
    let out = login("127.0.0.3", "127.0.0.2", haproxy.port, "");
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
    assert!(!log.contains("login refused"), "{log}");
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
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice long main password");
    let haproxy = Haproxy::start(port);
    let dir = tempfile::tempdir().unwrap();
    let jar = dir.path().join("jar");
    let base = format!("https://localhost:{}/api/v1", haproxy.port);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--interface", "127.0.0.3", "--cacert"])
            .arg(&gateway.ca)
            .args([
                "--resolve",
                &format!("localhost:{}:127.0.0.2", haproxy.port),
            ])
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
    let origin = format!("Origin: https://localhost:{}", haproxy.port);
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
