//! End to end: nginx's mail proxy with portcullis as its `auth_http` server, in front of a real
//! Dovecot (IMAP, POP3, master user) and a real Postfix (SMTP, XCLIENT). Real clients (imaplib,
//! poplib, swaks) log in to nginx; nginx asks portcullis; portcullis answers with the backend
//! and the master credentials. A mail app password gets in, a disk one does not, a revoked one
//! is refused at its next login, and the request itself is checked with curl.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

struct World {
    _sink: SmtpSink,
    _dovecot: Dovecot,
    postfix: Postfix,
    gateway: Gateway,
    _nginx: Nginx,
    auth_http: u16,
    imap: u16,
    pop3: u16,
    smtp: u16,
}

fn world() -> World {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    // Postfix takes nginx's XCLIENT LOGIN= as the client's authentication.
    let postfix = Postfix::start(
        "smtpd_authorized_xclient_hosts = 127.0.0.0/8
smtpd_sasl_auth_enable = yes
",
    );
    let auth_http = free_port();
    let tail = format!(
        r#"
[auth_http]
listen = ["127.0.0.1:{auth_http}"]
imap_backend = "imap"
pop3_backend = "pop3"
smtp_backend = "postfix"

[backend.pop3]
address = "127.0.0.1:{pop3}"
tls = "none"
login = "master-user"
master_user = "portcullis"
master_password_file = "{{dir}}/master.secret"

[backend.postfix]
address = "127.0.0.1:{postfix}"
tls = "none"
login = "xclient"
"#,
        pop3 = dovecot.pop3_port,
        postfix = postfix.port,
    );
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            tail,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "alice main password");
    wait_until_listening(auth_http);

    let (imap, pop3, smtp) = (free_port(), free_port(), free_port());
    let prefix = gateway.dir.path().join("nginx");
    let conf = format!(
        r#"load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 64; }}
mail {{
  server_name nginx.test;
  auth_http 127.0.0.1:{auth_http}/auth;
  proxy_pass_error_message on;
  server {{
    listen 127.0.0.1:{imap};
    protocol imap;
    imap_auth plain login;
  }}
  server {{
    listen 127.0.0.1:{pop3};
    protocol pop3;
    pop3_auth plain;
  }}
  server {{
    listen 127.0.0.1:{smtp};
    protocol smtp;
    smtp_auth plain login;
    xclient on;
  }}
}}
"#,
        p = prefix.display(),
    );
    let nginx = start_nginx(&prefix, &conf, imap);
    for port in [pop3, smtp] {
        wait_until_listening(port);
    }
    World {
        _sink: sink,
        _dovecot: dovecot,
        postfix,
        gateway,
        _nginx: nginx,
        auth_http,
        imap,
        pop3,
        smtp,
    }
}

fn wait_until_listening(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// imaplib through nginx: `LOGIN OK <mailbox count>` or `FAILED <reply>`.
const IMAP: &str = r#"
import imaplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
imap = imaplib.IMAP4("127.0.0.1", port, timeout=20)
try:
    imap.login(user, password)
except imaplib.IMAP4.error as e:
    print("FAILED", e)
    sys.exit(0)
typ, data = imap.select("INBOX")
print("LOGIN OK", typ, data[0].decode())
imap.logout()
"#;

/// poplib through nginx (USER/PASS): `LOGIN OK <stat>` or `FAILED <reply>`.
const POP3: &str = r#"
import poplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
pop = poplib.POP3("127.0.0.1", port, timeout=20)
try:
    pop.user(user)
    pop.pass_(password)
except poplib.error_proto as e:
    print("FAILED", e)
    sys.exit(0)
print("LOGIN OK", pop.stat())
pop.quit()
"#;

fn imap(w: &World, user: &str, password: &str) -> String {
    python_ok(IMAP, &[&w.imap.to_string(), user, password])
}

fn pop3(w: &World, user: &str, password: &str) -> String {
    python_ok(POP3, &[&w.pop3.to_string(), user, password])
}

fn swaks(w: &World, password: &str) -> String {
    require("swaks", "apt-get install swaks");
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", w.smtp)])
        .args(["--from", "alice@example.org", "--to", "bob@elsewhere.test"])
        .args(["--auth", "PLAIN", "--auth-user", "alice@example.org"])
        .args(["--auth-password", password])
        .args(["--timeout", "20"])
        .output()
        .expect("swaks");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nginx_logs_in_with_mail_app_passwords_only_and_never_with_a_revoked_one() {
    require_python_module("imaplib", "apt-get install python3");
    let w = world();
    let mail = w.gateway.app_password("alice", "mail", "Thunderbird");
    let disk = w.gateway.app_password("alice", "disk", "Files");

    // IMAP: nginx logs in to Dovecot as alice through the master user; the client never
    // learns those credentials and Dovecot never sees the app password.
    let ok = imap(&w, "alice@example.org", &mail);
    assert!(ok.starts_with("LOGIN OK OK"), "{ok}\n{}", w.gateway.log());
    let refused = imap(&w, "alice@example.org", &disk);
    assert!(
        refused.starts_with("FAILED") && refused.contains("AUTHENTICATIONFAILED"),
        "{refused}"
    );
    let main = imap(&w, "alice@example.org", "alice main password");
    assert!(main.starts_with("FAILED"), "app passwords only: {main}");

    // POP3, USER/PASS.
    let ok = pop3(&w, "alice@example.org", &mail);
    assert!(
        ok.starts_with("LOGIN OK (0, 0)"),
        "{ok}\n{}",
        w.gateway.log()
    );
    let refused = pop3(&w, "alice@example.org", &disk);
    assert!(refused.contains("[AUTH]"), "{refused}");

    // SMTP: Postfix relays for alice because nginx named her with XCLIENT LOGIN=.
    let sent = swaks(&w, &mail);
    assert!(
        sent.contains("<-  235 ") && sent.contains("<-  250 2.0.0 Ok: queued"),
        "{sent}\n{}",
        w.postfix.log()
    );
    let postfix_log = w.postfix.log();
    assert!(
        postfix_log.contains("sasl_username=alice@example.org"),
        "{postfix_log}"
    );
    let refused = swaks(&w, &disk);
    assert!(refused.contains("<** 535 5.7.8"), "{refused}");
    assert!(!refused.contains("queued"), "{refused}");

    // Last use: recorded with the client's address as nginx reported it, and whose word it is.
    let mut listed = String::new();
    for _ in 0..100 {
        listed = w.gateway.cli_ok(&["app-password", "list", "alice"], None);
        if listed.contains("(reported by nginx auth_http 127.0.0.1)") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let thunderbird = listed
        .lines()
        .find(|l| l.ends_with("Thunderbird"))
        .unwrap_or_default();
    assert!(
        thunderbird.contains("127.0.0.1")
            && thunderbird.contains("(reported by nginx auth_http 127.0.0.1)"),
        "{listed}"
    );

    // Revoked: the next login through nginx is refused. The CLI writes the store; this gateway
    // learns it from the change feed, within its 50 ms interval.
    let id = w.gateway.newest_app_password_id("alice");
    let revoked = w.gateway.app_password("alice", "mail", "Phone");
    assert!(imap(&w, "alice@example.org", &revoked).starts_with("LOGIN OK"));
    let revoked_id = w.gateway.newest_app_password_id("alice");
    assert_ne!(id, revoked_id);
    w.gateway.cli_ok(
        &["app-password", "revoke", "alice", &revoked_id.to_string()],
        None,
    );
    std::thread::sleep(Duration::from_millis(200));
    let refused = imap(&w, "alice@example.org", &revoked);
    assert!(refused.starts_with("FAILED"), "{refused}");
    assert!(imap(&w, "alice@example.org", &mail).starts_with("LOGIN OK"));

    // Every refusal went through the gate: one line each, with the client's address as nginx
    // reported it and the protocol nginx spoke.
    let log = w.gateway.log();
    for protocol in ["imap", "pop3", "submission"] {
        assert!(
            log.lines()
                .any(|l| l.contains("login failed: address=127.0.0.1")
                    && l.contains(&format!("protocol={protocol} "))),
            "no failed {protocol} login in:\n{log}"
        );
    }
    assert!(
        !log.contains(&mail) && !log.contains(&disk),
        "a secret in the log"
    );
}

/// What nginx would send, sent with curl: the answers' headers.
fn ask(w: &World, headers: &[(&str, &str)], method: &str) -> String {
    require("curl", "apt-get install curl");
    let mut command = Command::new("curl");
    command.args(["-s", "-i", "-X", method, "--max-time", "10"]);
    for (name, value) in headers {
        command.arg("-H").arg(format!("{name}: {value}"));
    }
    let out = command
        .arg(format!("http://127.0.0.1:{}/auth", w.auth_http))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n")
}

#[test]
fn the_auth_http_answers_follow_nginx_protocol() {
    let w = world();
    let mail = w.gateway.app_password("alice", "mail", "Thunderbird");
    let escaped = mail.replace('%', "%25").replace(' ', "%20");
    let request = |password: &str, protocol: &str, attempt: &str| {
        vec![
            ("Auth-Method", "plain".to_owned()),
            ("Auth-User", "alice".to_owned()),
            ("Auth-Pass", password.to_owned()),
            ("Auth-Protocol", protocol.to_owned()),
            ("Auth-Login-Attempt", attempt.to_owned()),
            ("Client-IP", "127.0.0.9".to_owned()),
        ]
    };
    let send = |headers: Vec<(&str, String)>, method: &str| {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ask(&w, &pairs, method)
    };

    let ok = send(request(&escaped, "imap", "1"), "GET");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    for expected in [
        "auth-status: OK\n",
        "auth-server: 127.0.0.1\n",
        "auth-user: alice@example.org*portcullis\n",
        &format!("auth-pass: {MASTER_PASSWORD}\n"),
    ] {
        assert!(
            ok.to_ascii_lowercase()
                .contains(&expected.to_ascii_lowercase()),
            "{expected} in {ok}"
        );
    }
    let smtp = send(request(&escaped, "smtp", "1"), "GET").to_ascii_lowercase();
    assert!(smtp.contains("auth-user: alice@example.org\n"), "{smtp}");
    assert!(!smtp.contains("auth-pass"), "{smtp}");

    // A wrong password: refused with a wait (retry) until the last attempt, then without one
    // (nginx closes the connection).
    let wrong = send(request("wrong", "imap", "1"), "GET").to_ascii_lowercase();
    assert!(
        wrong.contains("auth-status: [authenticationfailed]"),
        "{wrong}"
    );
    assert!(wrong.contains("auth-wait: 1"), "{wrong}");
    let last = send(request("wrong", "imap", "3"), "GET").to_ascii_lowercase();
    assert!(!last.contains("auth-wait"), "{last}");
    let smtp = send(request("wrong", "smtp", "1"), "GET").to_ascii_lowercase();
    assert!(smtp.contains("auth-error-code: 535 5.7.8"), "{smtp}");

    // What cannot be checked is refused, never accepted.
    let mut apop = request(&escaped, "pop3", "1");
    apop[0].1 = "apop".into();
    let apop = send(apop, "GET").to_ascii_lowercase();
    assert!(
        apop.contains("auth-status: authentication method not supported"),
        "{apop}"
    );
    let mut xmpp = request(&escaped, "xmpp", "1");
    xmpp.truncate(4);
    let xmpp = send(xmpp, "GET").to_ascii_lowercase();
    assert!(!xmpp.contains("auth-status: ok"), "{xmpp}");
    let bad = send(request("half%2", "imap", "1"), "GET").to_ascii_lowercase();
    assert!(!bad.contains("auth-status: ok"), "{bad}");
    let post = send(request(&escaped, "imap", "1"), "POST");
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");

    // The throttle keys on the client's address as nginx reported it.
    let log = w.gateway.log();
    assert!(log.contains("login failed: address=127.0.0.9"), "{log}");
}
