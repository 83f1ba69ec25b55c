//! End to end: real clients (python imaplib/smtplib, curl) through the real portcullis binary
//! to a real Dovecot (master user) whose submission relays to a real SMTP sink.

mod common;

use std::time::{Duration, Instant};

use common::*;

struct World {
    sink: SmtpSink,
    dovecot: Dovecot,
    gateway: Gateway,
}

fn world(options: Options) -> World {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org", "bob@example.org"]);
    let gateway = Gateway::start(dovecot.imap_port, dovecot.submission_port, options);
    gateway.create_account("alice", "alice main password");
    World {
        sink,
        dovecot,
        gateway,
    }
}

const IMAP_SESSION: &str = r#"
import imaplib, ssl, sys
port, ca, user, password, mode = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
if mode == "starttls":
    imap = imaplib.IMAP4("127.0.0.1", int(port))
    assert "LOGINDISABLED" in imap.capabilities, imap.capabilities
    imap.starttls(ssl_context=ctx)
else:
    imap = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=ctx)
try:
    typ, data = imap.login(user, password)
except imaplib.IMAP4.error as e:
    print("LOGIN-FAILED", e)
    sys.exit(0)
print("LOGIN", typ)
typ, data = imap.select("INBOX")
print("SELECT", typ, data[0].decode())
typ, data = imap.capability()
print("CAPS", data[0].decode())
imap.logout()
"#;

const SMTP_SEND: &str = r#"
import smtplib, ssl, sys
port, ca, user, password, mode, subject = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
if mode == "starttls":
    smtp = smtplib.SMTP("127.0.0.1", int(port), local_hostname="client.test")
    smtp.ehlo()
    assert not smtp.has_extn("auth"), "AUTH offered before TLS"
    smtp.starttls(context=ctx)
    smtp.ehlo()
else:
    smtp = smtplib.SMTP_SSL("localhost", int(port), context=ctx, local_hostname="client.test")
    smtp.ehlo()
assert smtp.has_extn("auth"), smtp.esmtp_features
try:
    smtp.login(user, password)
except smtplib.SMTPAuthenticationError as e:
    print("LOGIN-FAILED", e.smtp_code)
    sys.exit(0)
print("LOGIN OK")
msg = f"From: alice@example.org\r\nTo: carol@example.net\r\nSubject: {subject}\r\n\r\nHello through the gateway.\r\n"
smtp.sendmail("alice@example.org", ["carol@example.net"], msg)
print("SENT")
smtp.quit()
"#;

fn imap(world: &World, port: u16, user: &str, password: &str, mode: &str) -> String {
    let ca = world.gateway.ca.to_string_lossy().into_owned();
    python_ok(
        IMAP_SESSION,
        &[&port.to_string(), &ca, user, password, mode],
    )
}

fn smtp(world: &World, port: u16, user: &str, password: &str, mode: &str, subject: &str) -> String {
    let ca = world.gateway.ca.to_string_lossy().into_owned();
    python_ok(
        SMTP_SEND,
        &[&port.to_string(), &ca, user, password, mode, subject],
    )
}

#[test]
fn imap_login_and_select_inbox_over_starttls_and_implicit_tls() {
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "Thunderbird");
    let p = w.gateway.ports;
    for (port, mode) in [(p.imap, "starttls"), (p.imaps, "implicit")] {
        let out = imap(&w, port, "alice", &secret, mode);
        assert!(
            out.contains("LOGIN OK"),
            "{mode}: {out}\n{}",
            w.gateway.log()
        );
        assert!(out.contains("SELECT OK"), "{mode}: {out}");
        // The capabilities after login are Dovecot's, not the gateway's pre-auth list.
        assert!(out.contains("IDLE"), "{mode}: {out}");
    }
    // The full address form and typed spaces work too.
    let spaced = format!(
        "{} {} {} {}",
        &secret[..4],
        &secret[4..8],
        &secret[8..12],
        &secret[12..]
    );
    let out = imap(&w, p.imaps, "Alice@Example.org", &spaced, "implicit");
    assert!(out.contains("SELECT OK"), "{out}");
    // Dovecot saw the real client address through ID.
    assert!(
        w.dovecot.log().contains("alice@example.org"),
        "{}",
        w.dovecot.log()
    );
}

#[test]
fn smtp_submission_sends_a_message_that_arrives() {
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "Thunderbird");
    let p = w.gateway.ports;
    for (port, mode) in [(p.submission, "starttls"), (p.submissions, "implicit")] {
        let subject = format!("gateway test {mode}");
        let out = smtp(&w, port, "alice@example.org", &secret, mode, &subject);
        assert!(out.contains("SENT"), "{mode}: {out}\n{}", w.gateway.log());
        let message = w.sink.wait_for_message(&subject);
        assert!(message.contains("Hello through the gateway."), "{message}");
    }
}

#[test]
fn a_disk_password_is_refused_on_imap_and_smtp() {
    let w = world(Options::default());
    let disk = w.gateway.app_password("alice", "disk", "Files");
    let p = w.gateway.ports;
    let out = imap(&w, p.imaps, "alice", &disk, "implicit");
    assert!(
        out.contains("LOGIN-FAILED") && out.contains("AUTHENTICATIONFAILED"),
        "{out}"
    );
    let out = smtp(&w, p.submissions, "alice", &disk, "implicit", "never");
    assert!(out.contains("LOGIN-FAILED 535"), "{out}");
}

#[test]
fn main_password_refused_with_the_option_on_and_accepted_with_it_off() {
    let w = world(Options::default());
    let p = w.gateway.ports;
    let out = imap(&w, p.imaps, "alice", "alice main password", "implicit");
    assert!(out.contains("LOGIN-FAILED"), "{out}");
    w.gateway
        .cli_ok(&["account", "app-passwords", "alice", "off"], None);
    // The gateway learns of the CLI's change through the feed.
    let start = Instant::now();
    loop {
        let out = imap(&w, p.imaps, "alice", "alice main password", "implicit");
        if out.contains("SELECT OK") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "main password still refused: {out}"
        );
    }
    let out = smtp(
        &w,
        p.submissions,
        "alice",
        "alice main password",
        "implicit",
        "legacy mode",
    );
    assert!(out.contains("SENT"), "{out}");
    // 2FA forces app passwords again, and the option cannot be turned off under 2FA.
    w.gateway
        .cli_ok(&["account", "two-factor", "alice", "on"], None);
    let refused = w
        .gateway
        .cli(&["account", "app-passwords", "alice", "off"], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("two-factor"),
        "{refused:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = imap(&w, p.imaps, "alice", "alice main password", "implicit");
    assert!(out.contains("LOGIN-FAILED"), "{out}");
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.unwrap_or("").as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn curl_and_openssl_s_client_work_through_the_gateway() {
    require("curl", "apt-get install curl");
    require("openssl", "apt-get install openssl");
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "curl");
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let user = format!("alice:{secret}");
    let p = w.gateway.ports;

    // IMAP over STARTTLS (--ssl-reqd) and implicit TLS.
    let (ok, out) = run(
        "curl",
        &[
            "-sS",
            "--ssl-reqd",
            "--cacert",
            &ca,
            &format!("imap://localhost:{}/", p.imap),
            "-u",
            &user,
            "-X",
            "EXAMINE INBOX",
        ],
        None,
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("UIDVALIDITY") || out.contains("FLAGS"),
        "{out}"
    );
    let (ok, out) = run(
        "curl",
        &[
            "-sS",
            "--cacert",
            &ca,
            &format!("imaps://localhost:{}/", p.imaps),
            "-u",
            &user,
        ],
        None,
    );
    assert!(ok && out.contains("INBOX"), "{out}");
    // Wrong password: curl fails with a login error.
    let (ok, out) = run(
        "curl",
        &[
            "-sS",
            "--cacert",
            &ca,
            &format!("imaps://localhost:{}/", p.imaps),
            "-u",
            "alice:wrongwrongwrongw",
        ],
        None,
    );
    assert!(!ok && out.contains("Login denied"), "{out}");

    // SMTP submission over STARTTLS.
    let message =
        "From: alice@example.org\r\nTo: dave@example.net\r\nSubject: sent by curl\r\n\r\nhi\r\n";
    let (ok, out) = run(
        "curl",
        &[
            "-sS",
            "--ssl-reqd",
            "--cacert",
            &ca,
            &format!("smtp://localhost:{}", p.submission),
            "-u",
            &user,
            "--mail-from",
            "alice@example.org",
            "--mail-rcpt",
            "dave@example.net",
            "--upload-file",
            "-",
        ],
        Some(message),
    );
    assert!(ok, "{out}");
    w.sink.wait_for_message("sent by curl");

    // openssl s_client with STARTTLS, commands on stdin.
    let script = format!("a1 LOGIN alice {secret}\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n");
    let (_, out) = run(
        "openssl",
        &[
            "s_client",
            "-quiet",
            "-starttls",
            "imap",
            "-connect",
            &format!("127.0.0.1:{}", p.imap),
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
        Some(&script),
    );
    assert!(
        out.contains("a1 OK") && out.contains("a2 OK") && out.contains("a3 OK"),
        "{out}"
    );
    let (_, out) = run(
        "openssl",
        &[
            "s_client",
            "-quiet",
            "-starttls",
            "smtp",
            "-connect",
            &format!("127.0.0.1:{}", p.submission),
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
        Some(&format!(
            "EHLO x\r\nAUTH PLAIN {}\r\nQUIT\r\n",
            plain("", "alice", &secret)
        )),
    );
    assert!(out.contains("235 2.7.0") && out.contains("221"), "{out}");
}

#[test]
fn last_use_is_recorded_per_app_password() {
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "Tablet");
    let out = imap(&w, w.gateway.ports.imaps, "alice", &secret, "implicit");
    assert!(out.contains("LOGIN OK"), "{out}");
    let start = Instant::now();
    loop {
        let listed = w
            .gateway
            .cli_ok(&["app-password", "list", "alice", "--json"], None);
        let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
        if list[0]["last_used_protocol"] == "imap" {
            assert_eq!(list[0]["last_used_ip"], "127.0.0.1");
            assert!(list[0]["last_used_at"].as_i64().is_some());
            // The secret is never listed.
            assert!(!listed.contains(&secret));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "last use not recorded: {listed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_client_address_reaches_dovecot_and_the_last_use_record() {
    // Clients connect from 127.0.0.2; the gateway talks to Dovecot from 127.0.0.1, so only the
    // forwarded address (IMAP ID x-originating-ip, SMTP XCLIENT ADDR) can say 127.0.0.2.
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "Desktop");
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let script = r#"
import imaplib, smtplib, socket, ssl, sys
imap_port, smtp_port, ca, user, password = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
class FromOtherAddress(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout, source_address=("127.0.0.2", 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)
imap = FromOtherAddress("localhost", int(imap_port), ssl_context=ctx)
imap.login(user, password)
imap.select("INBOX")
imap.logout()
smtp = smtplib.SMTP_SSL("localhost", int(smtp_port), context=ctx, source_address=("127.0.0.2", 0))
smtp.ehlo("client.test")
smtp.login(user, password)
smtp.quit()
print("DONE")
"#;
    let p = w.gateway.ports;
    let out = python_ok(
        script,
        &[
            &p.imaps.to_string(),
            &p.submissions.to_string(),
            &ca,
            "alice",
            &secret,
        ],
    );
    assert!(out.contains("DONE"), "{out}");
    let start = Instant::now();
    loop {
        let log = w.dovecot.log();
        let imap_seen = log.lines().any(|l| {
            l.contains("imap-login: Info: Login: user=<alice@example.org>")
                && l.contains("rip=127.0.0.2")
        });
        let smtp_seen = log.lines().any(|l| {
            l.contains("submission-login: Info: Login: user=<alice@example.org>")
                && l.contains("rip=127.0.0.2")
        });
        if imap_seen && smtp_seen {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "Dovecot did not see the client address:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = Instant::now();
    loop {
        let listed = w
            .gateway
            .cli_ok(&["app-password", "list", "alice", "--json"], None);
        let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
        if list[0]["last_used_ip"] == "127.0.0.2" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{listed}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const AUTHZID_SESSION: &str = r#"
import imaplib, smtplib, ssl, sys, base64
imaps, submissions, ca, authzid, authcid, password = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
plain = f"{authzid}\0{authcid}\0{password}".encode()
imap = imaplib.IMAP4_SSL("localhost", int(imaps), ssl_context=ctx)
try:
    typ, _ = imap.authenticate("PLAIN", lambda _: plain)
    typ, data = imap.select("INBOX")
    print("IMAP", typ)
    imap.logout()
except imaplib.IMAP4.error as e:
    print("IMAP-FAILED", e)
smtp = smtplib.SMTP_SSL("localhost", int(submissions), context=ctx, local_hostname="client.test")
smtp.ehlo()
code, text = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(plain).decode())
print("SMTP", code)
smtp.quit()
"#;

#[test]
fn sasl_plain_with_an_authorization_identity_of_the_same_account_is_accepted() {
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "Outlook");
    let p = w.gateway.ports;
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let run = |authzid: &str, authcid: &str| {
        python_ok(
            AUTHZID_SESSION,
            &[
                &p.imaps.to_string(),
                &p.submissions.to_string(),
                &ca,
                authzid,
                authcid,
                &secret,
            ],
        )
    };
    for (authzid, authcid) in [
        ("alice@example.org", "alice"),
        ("alice", "alice@example.org"),
        ("ALICE@example.org", "Alice"),
    ] {
        let out = run(authzid, authcid);
        assert!(
            out.contains("IMAP OK") && out.contains("SMTP 235"),
            "{authzid} / {authcid}: {out}\n{}",
            w.gateway.log()
        );
    }
    // Naming another account is refused exactly like a wrong password, and logged.
    let out = run("bob@example.org", "alice");
    assert!(
        out.contains("IMAP-FAILED") && out.contains("AUTHENTICATIONFAILED"),
        "{out}"
    );
    assert!(out.contains("SMTP 535"), "{out}");
    let log = w.gateway.log();
    assert_eq!(
        log.matches("the authorization identity names another account")
            .count(),
        2,
        "{log}"
    );
}

const LOGOUT_AND_HANG_UP: &str = r#"
import socket, ssl, sys, time
port, ca, password, command = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(port))), server_hostname="localhost")
s.recv(1000)
if command == "LOGOUT":
    s.sendall(b"a LOGIN alice " + password.encode() + b"\r\n")
    reply = s.recv(1000)
    assert b"a OK" in reply, reply
    s.sendall(b"b LOGOUT\r\n")
else:
    s.sendall(b"EHLO client.test\r\n")
    time.sleep(0.3)
    s.recv(4000)
    import base64
    s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + password.encode()) + b"\r\n")
    reply = s.recv(1000)
    assert reply.startswith(b"235"), reply
    s.sendall(b"QUIT\r\n")
# Like many clients: close the socket without TLS's close_notify, without waiting.
s.close()
print("DONE")
"#;

#[test]
fn a_client_that_says_goodbye_and_hangs_up_is_a_closed_session_not_an_error() {
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "mail", "Thunderbird");
    let p = w.gateway.ports;
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    for (port, command) in [(p.imaps, "LOGOUT"), (p.submissions, "QUIT")] {
        let out = python_ok(
            LOGOUT_AND_HANG_UP,
            &[&port.to_string(), &ca, &secret, command],
        );
        assert!(out.contains("DONE"), "{out}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while w.gateway.log().matches("session ended").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = w.gateway.log();
    let ends: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session ended"))
        .collect();
    assert_eq!(ends.len(), 2, "{log}");
    for line in ends {
        assert!(
            line.contains("end=ClientClosed") || line.contains("end=BackendClosed"),
            "{line}"
        );
    }
    // Log files carry no terminal colour codes.
    assert!(!log.contains('\u{1b}'), "{log}");
}

/// Logins that passed their check take a backend connection opened and greeted ahead, and
/// open the next one; wrong passwords open none; a Dovecot restart leaves no dead connection
/// to hand to a login. The gateway's own metrics count the IMAP backend connections it opened.
#[test]
fn logins_use_backend_connections_opened_ahead_and_survive_a_backend_restart() {
    let metrics_port = free_port();
    let mut w = world(Options {
        extra: format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
        ..Options::default()
    });
    let app = w.gateway.app_password("alice", "mail", "laptop");
    let imaps = w.gateway.ports.imaps;
    let connects = || {
        value(
            &scrape(metrics_port),
            "portcullis_backend_connect_seconds_count",
            &["backend=\"imap\""],
        )
        .unwrap_or(0.0)
    };
    let logins = |connection: &str| {
        value(
            &scrape(metrics_port),
            "portcullis_backend_login_connections_total",
            &["backend=\"imap\"", &format!("connection=\"{connection}\"")],
        )
        .unwrap_or(0.0)
    };
    let settles_at = |want: f64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while connects() != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(connects(), want, "backend connections opened");
    };

    for _ in 0..3 {
        let out = imap(&w, imaps, "alice", "wrong password guess", "implicit");
        assert!(out.contains("LOGIN-FAILED"), "{out}");
    }
    assert_eq!(connects(), 0.0, "a refused login reached the backend");

    // The first login finds none ready, connects, and has two opened behind it.
    let out = imap(&w, imaps, "alice", &app, "implicit");
    assert!(out.contains("SELECT OK"), "{out}");
    settles_at(3.0);
    assert_eq!((logins("new"), logins("warm")), (1.0, 0.0));
    // The next takes one of them (Dovecot's greeting already read) and one more is opened.
    let out = imap(&w, imaps, "alice", &app, "implicit");
    assert!(out.contains("SELECT OK"), "{out}");
    settles_at(4.0);
    assert_eq!((logins("new"), logins("warm")), (1.0, 1.0));

    // Dovecot restarts. The waiting connections either die with it (and are dropped) or stay
    // open in an old login process that can no longer log anyone in (and the login runs again
    // on a new connection): either way the client logs in.
    w.dovecot.restart();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let out = imap(&w, imaps, "alice", &app, "implicit");
        assert!(out.contains("SELECT OK"), "{out}\n{}", w.gateway.log());
    }
    assert!(
        !w.gateway.log().contains("backend login failed"),
        "{}",
        w.gateway.log()
    );
    assert_eq!(logins("new") + logins("warm"), 5.0);
}
