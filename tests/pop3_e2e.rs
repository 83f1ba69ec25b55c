//! End to end: POP3 through the real portcullis binary to a real Dovecot POP3 server (master
//! user), with real clients: Python's poplib, fetchmail and getmail6 fetching messages that were
//! delivered to Dovecot; a disk password refused; a revocation cutting a live session; and
//! hostile input over a real socket.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

struct World {
    _sink: SmtpSink,
    dovecot: Dovecot,
    gateway: Gateway,
    /// POP3 with TLS from the first byte (995's habit) and with STLS (110's).
    pop3s: u16,
    pop3: u16,
}

fn world(options: Options) -> World {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let (pop3s, pop3) = (free_port(), free_port());
    let tail = format!(
        r#"{tail}
[[listener]]
protocol = "pop3"
address = "127.0.0.1:{pop3s}"
tls = "implicit"
backend = "pop3"

[[listener]]
protocol = "pop3"
address = "127.0.0.1:{pop3}"
tls = "starttls"
backend = "pop3"

[backend.pop3]
address = "127.0.0.1:{backend}"
tls = "none"
login = "master-user"
master_user = "portcullis"
master_password_file = "{{dir}}/master.secret"
timeout_secs = 5
"#,
        tail = options.tail,
        backend = dovecot.pop3_port,
    );
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options { tail, ..options },
    );
    gateway.create_account("alice", "alice main password");
    World {
        _sink: sink,
        dovecot,
        gateway,
        pop3s,
        pop3,
    }
}

/// Puts messages in alice's Dovecot mailbox (IMAP APPEND straight to Dovecot, as a delivery).
fn deliver(dovecot: &Dovecot, subjects: &[&str]) {
    const APPEND: &str = r#"
import imaplib, sys, time
port, password = sys.argv[1:3]
imap = imaplib.IMAP4("127.0.0.1", int(port))
imap.login("alice@example.org", password)
for subject in sys.argv[3:]:
    msg = f"From: bob@example.net\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\nHello.\r\n.leading dot\r\n".encode()
    typ, _ = imap.append("INBOX", None, imaplib.Time2Internaldate(time.time()), msg)
    assert typ == "OK", typ
imap.logout()
print("DELIVERED")
"#;
    let port = dovecot.imap_port.to_string();
    let mut args = vec![port.as_str(), USER_PASSWORD];
    args.extend_from_slice(subjects);
    assert!(python_ok(APPEND, &args).contains("DELIVERED"));
}

/// poplib over implicit TLS or STLS: the mailbox as the client sees it.
const POPLIB: &str = r#"
import poplib, ssl, sys
port, ca, user, password, mode = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=ca)
if mode == "stls":
    pop = poplib.POP3("127.0.0.1", int(port), timeout=15)
    caps = pop.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps, caps
    pop.stls(context=ctx)
    caps = pop.capa()
    assert "USER" in caps and "STLS" not in caps, caps
else:
    pop = poplib.POP3_SSL("localhost", int(port), context=ctx, timeout=15)
try:
    pop.user(user)
    pop.pass_(password)
except poplib.error_proto as e:
    print("LOGIN-FAILED", e.args[0].decode())
    sys.exit(0)
count, size = pop.stat()
print("STAT", count)
resp, listing, _ = pop.list()
print("LIST", len(listing))
for n in range(1, count + 1):
    resp, lines, _ = pop.retr(n)
    subject = [l for l in lines if l.startswith(b"Subject:")][0].decode()
    print("RETR", n, subject, b".leading dot" in lines)
resp, uids, _ = pop.uidl()
print("UIDL", len(uids))
print("QUIT", pop.quit().decode())
"#;

fn poplib(w: &World, port: u16, password: &str, mode: &str) -> String {
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    python_ok(POPLIB, &[&port.to_string(), &ca, "alice", password, mode])
}

#[test]
fn poplib_fetchmail_and_getmail_fetch_what_dovecot_holds() {
    let w = world(Options::default());
    deliver(&w.dovecot, &["first", "second"]);
    let mail = w.gateway.app_password("alice", "mail", "importer");

    for (port, mode) in [(w.pop3s, "tls"), (w.pop3, "stls")] {
        let out = poplib(&w, port, &mail, mode);
        for expected in [
            "STAT 2",
            "LIST 2",
            "RETR 1 Subject: first True",
            "RETR 2 Subject: second True",
            "UIDL 2",
            "QUIT +OK",
        ] {
            assert!(out.contains(expected), "{mode}: no {expected:?} in\n{out}");
        }
    }

    // A disk password is not a mail password, and a wrong one is wrong: the same answer.
    let disk = w.gateway.app_password("alice", "disk", "files");
    for password in [disk.as_str(), "not the password"] {
        let out = poplib(&w, w.pop3s, password, "tls");
        assert!(
            out.contains("LOGIN-FAILED -ERR [AUTH] Invalid login or password"),
            "{out}"
        );
    }

    // fetchmail (its password in its rc file, never in argv), keeping the messages.
    require("fetchmail", "apt-get install fetchmail");
    let dir = open_tempdir();
    let mbox = dir.path().join("fetched.mbox");
    let rc = dir.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\npoll 127.0.0.1 service {port} protocol pop3 auth password\n  user \"alice\" password \"{mail}\"\n  ssl sslcertck sslcertfile \"{ca}\" sslcommonname \"localhost\"\n  keep fetchall\n  mda \"/bin/sh -c 'cat >> {mbox}'\"\n",
            port = w.pop3s,
            ca = w.gateway.ca.display(),
            mbox = mbox.display(),
        ),
    )
    .expect("rc");
    set_mode(&rc, 0o600);
    let out = Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .arg("--pidfile")
        .arg(dir.path().join("fetchmail.pid"))
        .env("FETCHMAILHOME", dir.path())
        .env("HOME", dir.path())
        .output()
        .expect("run fetchmail");
    let fetched = std::fs::read_to_string(&mbox).unwrap_or_default();
    assert!(
        out.status.success()
            && fetched.contains("Subject: first")
            && fetched.contains("Subject: second"),
        "fetchmail: {}\n{}\n{fetched}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // getmail6, with TLS from the first byte.
    require("getmail", "apt-get install getmail6");
    let fetched = dir.path().join("getmail.mbox");
    let getmail_dir = dir.path().join("getmail");
    std::fs::create_dir_all(&getmail_dir).expect("mkdir");
    std::fs::write(
        getmail_dir.join("getmailrc"),
        format!(
            "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\nport = {port}\nusername = alice\npassword = {mail}\nca_certs = {ca}\n\n[destination]\ntype = MDA_external\npath = /bin/sh\narguments = (\"-c\", \"cat >> {fetched}\")\nallow_root_commands = true\n\n[options]\nread_all = true\ndelete = false\n",
            port = w.pop3s,
            ca = w.gateway.ca.display(),
            fetched = fetched.display(),
        ),
    )
    .expect("getmailrc");
    let out = Command::new("getmail")
        .arg("--getmaildir")
        .arg(&getmail_dir)
        .arg("--rcfile")
        .arg("getmailrc")
        .env("HOME", dir.path())
        .output()
        .expect("run getmail");
    let delivered = std::fs::read_to_string(&fetched).unwrap_or_default();
    assert!(
        out.status.success()
            && delivered.contains("Subject: first")
            && delivered.contains("Subject: second"),
        "getmail: {}\n{}\n{delivered}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Holds a POP3 session after STAT; prints what the gateway says next.
const POP3_HOLD: &str = r#"
import poplib, ssl, sys
port, ca, user, password = sys.argv[1:5]
pop = poplib.POP3_SSL("localhost", int(port), context=ssl.create_default_context(cafile=ca), timeout=20)
pop.user(user)
pop.pass_(password)
pop.stat()
print("READY", flush=True)
line = pop.file.readline()
print("GOT", line.decode().strip(), flush=True)
print("EOF" if pop.file.readline() == b"" else "MORE", flush=True)
"#;

#[test]
fn a_revocation_cuts_a_live_session_with_sys_perm() {
    let w = world(Options::default());
    deliver(&w.dovecot, &["one"]);
    let mail = w.gateway.app_password("alice", "mail", "phone");
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let held = Held::start(POP3_HOLD, w.pop3s, &ca, "alice", &mail);
    let id = w.gateway.newest_app_password_id("alice").to_string();
    w.gateway
        .cli_ok(&["app-password", "revoke", "alice", &id], None);
    let got = held.next(Duration::from_secs(10));
    assert_eq!(
        got.as_deref(),
        Some("GOT -ERR [SYS/PERM] Session ended: the credential was revoked or has expired"),
        "{}",
        w.gateway.log()
    );
    assert_eq!(held.next(Duration::from_secs(5)).as_deref(), Some("EOF"));
    let out = poplib(&w, w.pop3s, &mail, "tls");
    assert!(out.contains("LOGIN-FAILED -ERR [AUTH]"), "{out}");
}

/// A plaintext POP3 connection to the STLS listener: writes `input`, returns everything the
/// gateway said until it closed or went quiet for `quiet`.
fn exchange(port: u16, input: &[u8], quiet: Duration) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(quiet)).expect("timeout");
    tcp.write_all(input).expect("write");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = tcp.read(&mut chunk) {
        if n == 0 {
            out.extend_from_slice(b"<closed>");
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_input_is_refused_over_a_real_socket() {
    let w = world(Options {
        login_timeout_secs: 3,
        ..Options::default()
    });
    let quiet = Duration::from_millis(1500);
    // A line without end: refused and closed, not buffered.
    let out = exchange(w.pop3, &vec![b'A'; 20_000], quiet);
    assert!(
        out.contains("-ERR Line too long") && out.ends_with("<closed>"),
        "{out}"
    );
    // NUL bytes inside a command.
    let out = exchange(w.pop3, b"CA\0PA\r\n", quiet);
    assert!(out.contains("-ERR NUL in command"), "{out}");
    // Nothing authenticates before TLS, and AUTH is not even parsed.
    let out = exchange(w.pop3, b"USER alice\r\nAUTH PLAIN !!!\r\n", quiet);
    assert_eq!(out.matches("-ERR Use STLS first").count(), 2, "{out}");
    // Bad base64 after TLS (the loopback listener would otherwise refuse before parsing).
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    const RAW_TLS: &str = r#"
import socket, ssl, sys, time
port, ca, mode = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
f = raw.makefile("rb")
print("GREETING", f.readline().decode().strip())
if mode == "inject":
    # STLS with a command pipelined behind it in plaintext: it must not run after TLS.
    raw.sendall(b"STLS\r\nUSER mallory\r\n")
    print("STLS", f.readline().decode().strip())
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    g = tls.makefile("rb")
    tls.sendall(b"PASS pw\r\n")
    print("PASS", g.readline().decode().strip())
else:
    raw.sendall(b"STLS\r\n")
    f.readline()
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    g = tls.makefile("rb")
    tls.sendall(b"AUTH PLAIN %%%notbase64%%%\r\n")
    print("AUTH", g.readline().decode().strip())
    tls.sendall(b"AUTH LOGIN\r\n")
    print("CHALLENGE", g.readline().decode().strip())
    tls.sendall(b"*\r\n")
    print("CANCEL", g.readline().decode().strip())
"#;
    let out = python_ok(RAW_TLS, &[&w.pop3.to_string(), &ca, "inject"]);
    assert!(out.contains("STLS +OK Begin TLS negotiation"), "{out}");
    assert!(out.contains("PASS -ERR Send USER first"), "{out}");
    let out = python_ok(RAW_TLS, &[&w.pop3.to_string(), &ca, "base64"]);
    assert!(
        out.contains("AUTH -ERR Invalid SASL response: invalid base64"),
        "{out}"
    );
    assert!(out.contains("CHALLENGE + VXNlcm5hbWU6"), "{out}");
    assert!(
        out.contains("CANCEL -ERR Authentication cancelled"),
        "{out}"
    );
    // A client that never logs in is told and dropped at the login deadline.
    let out = exchange(w.pop3, b"CAPA\r\n", Duration::from_secs(8));
    assert!(
        out.contains("-ERR Timeout waiting for authentication") && out.ends_with("<closed>"),
        "{out}"
    );
}
