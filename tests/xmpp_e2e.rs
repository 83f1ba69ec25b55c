//! XMPP through the gateway: slixmpp clients connect to portcullis with app passwords made for
//! xmpp; portcullis logs in to a real Prosody with a one-time ticket that Prosody checks by
//! asking portcullis's auth server (mod_auth_dovecot); messages flow between two accounts.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

struct World {
    gateway: Gateway,
    _prosody: Prosody,
    /// The direct-TLS (XEP-0368) listener.
    direct_port: u16,
}

fn world() -> World {
    require_python_module("slixmpp", "pip install slixmpp");
    let auth_port = free_port();
    let prosody_port = free_port();
    let direct_port = free_port();
    let tail = format!(
        r#"
[[listener]]
protocol = "xmpp"
address = "127.0.0.1:{{http}}"
tls = "starttls"
backend = "prosody"

[[listener]]
protocol = "xmpp"
address = "127.0.0.1:{direct_port}"
tls = "implicit"
backend = "prosody"

[backend.prosody]
address = "127.0.0.1:{prosody_port}"
tls = "none"
domain = "example.org"
login = "ticket"
strip_domain = true
timeout_secs = 5
"#
    );
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            extra: format!("[auth_server]\nlisten = [\"127.0.0.1:{auth_port}\"]\n"),
            tail,
            ..Options::default()
        },
    );
    let prosody = Prosody::start(auth_port, "example.org", prosody_port);
    gateway.create_account("alice", "alice main password");
    gateway.create_account("bob", "bob main password");
    World {
        gateway,
        _prosody: prosody,
        direct_port,
    }
}

const CLIENT: &str = r#"
import asyncio, sys, slixmpp
jid, password, port, ca, mode, peer = sys.argv[1:7]
class Client(slixmpp.ClientXMPP):
    def __init__(self):
        super().__init__(jid, password)
        self.add_event_handler("session_start", self.started)
        self.add_event_handler("failed_auth", self.failed)
        self.add_event_handler("message", self.message)
        self.add_event_handler("stream_error", self.stream_error)
        self.add_event_handler("disconnected", self.gone)
    async def started(self, event):
        self.send_presence()
        print("LOGGED-IN", self.boundjid.bare, flush=True)
        if mode == "send":
            await asyncio.sleep(1)
            self.send_message(mto=peer, mbody="hello through the gateway", mtype="chat")
            print("SENT", flush=True)
    def failed(self, event):
        print("FAILED-AUTH", flush=True)
        self.disconnect()
    def message(self, msg):
        if msg["type"] in ("chat", "normal"):
            print("GOT", msg["from"].bare, msg["body"], flush=True)
    def stream_error(self, error):
        print("STREAM-ERROR", error["condition"], error["text"], flush=True)
    def gone(self, event):
        print("DISCONNECTED", flush=True)
client = Client()
client.ca_certs = ca
if mode == "direct":
    client.enable_direct_tls = True
    client.enable_starttls = False
client.connect(host="127.0.0.1", port=int(port))
loop = asyncio.get_event_loop()
try:
    loop.run_until_complete(asyncio.wait_for(client.disconnected, 30))
except asyncio.TimeoutError:
    pass
"#;

struct Client {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(w: &World, jid: &str, password: &str, mode: &str, peer: &str) -> Self {
        let ca = w.gateway.ca.to_string_lossy().into_owned();
        let mut child = Command::new("python3")
            .args([
                "-c",
                CLIENT,
                jid,
                password,
                &w.gateway.ports.http.to_string(),
                &ca,
                mode,
                peer,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The next line that starts with one of `prefixes`, within `within`.
    fn expect(&self, prefixes: &[&str], within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if prefixes.iter().any(|p| line.starts_with(p)) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_accounts_exchange_a_message_through_the_gateway() {
    let w = world();
    let alice = w.gateway.app_password("alice", "xmpp", "Jabber laptop");
    let bob = w.gateway.app_password("bob", "xmpp", "Jabber phone");
    let receiver = Client::start(&w, "bob@example.org", &bob, "receive", "");
    let logged_in = receiver.expect(&["LOGGED-IN", "FAILED-AUTH"], Duration::from_secs(20));
    assert_eq!(
        logged_in.as_deref(),
        Some("LOGGED-IN bob@example.org"),
        "{}",
        w.gateway.log()
    );
    let sender = Client::start(&w, "alice@example.org", &alice, "send", "bob@example.org");
    assert_eq!(
        sender
            .expect(&["LOGGED-IN", "FAILED-AUTH"], Duration::from_secs(20))
            .as_deref(),
        Some("LOGGED-IN alice@example.org")
    );
    let got = receiver.expect(&["GOT"], Duration::from_secs(20));
    assert_eq!(
        got.as_deref(),
        Some("GOT alice@example.org hello through the gateway")
    );
}

#[test]
fn wrong_scope_and_main_passwords_are_refused_and_revocation_ends_the_stream() {
    let w = world();
    let mail = w.gateway.app_password("alice", "mail", "Thunderbird");
    let client = Client::start(&w, "alice@example.org", &mail, "receive", "");
    assert_eq!(
        client
            .expect(&["LOGGED-IN", "FAILED-AUTH"], Duration::from_secs(20))
            .as_deref(),
        Some("FAILED-AUTH")
    );
    let client = Client::start(
        &w,
        "alice@example.org",
        "alice main password",
        "receive",
        "",
    );
    assert_eq!(
        client
            .expect(&["LOGGED-IN", "FAILED-AUTH"], Duration::from_secs(20))
            .as_deref(),
        Some("FAILED-AUTH")
    );

    let xmpp = w.gateway.app_password("alice", "xmpp", "Jabber");
    let id = w.gateway.newest_app_password_id("alice");
    let client = Client::start(&w, "alice@example.org", &xmpp, "receive", "");
    assert!(
        client
            .expect(&["LOGGED-IN"], Duration::from_secs(20))
            .is_some(),
        "{}",
        w.gateway.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    w.gateway
        .cli_ok(&["app-password", "revoke", "alice", &id.to_string()], None);
    let revoked = Instant::now();
    let end = client.expect(&["STREAM-ERROR", "DISCONNECTED"], Duration::from_secs(5));
    eprintln!(
        "XMPP stream after revocation: {end:?} ({:?})",
        revoked.elapsed()
    );
    assert!(end.is_some(), "the stream outlived its credential");
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "{:?}",
        revoked.elapsed()
    );
}

/// Raw bytes to the STARTTLS listener (XML is parsed before TLS too); returns what the gateway
/// answered until it closed.
fn raw(w: &World, chunks: &[&[u8]], repeat_last: usize) -> String {
    let mut c = Raw::connect(w.gateway.ports.http);
    use std::io::Write;
    for chunk in chunks {
        if c.writer.write_all(chunk).is_err() {
            break;
        }
    }
    if let Some(last) = chunks.last() {
        for _ in 0..repeat_last {
            if c.writer.write_all(last).is_err() {
                break;
            }
        }
    }
    c.rest()
}

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

#[test]
fn hostile_xml_gets_a_stream_error_and_a_closed_connection_with_flat_memory() {
    let w = world();
    let before = peak_rss_kib(w.gateway.pid());
    // Billion laughs.
    let laughs = b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol1 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'><!ENTITY lol2 '&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;'>]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;";
    let reply = raw(&w, &[laughs], 0);
    assert!(
        reply.contains("<stream:error>") && reply.ends_with("</stream:stream>"),
        "{reply}"
    );
    // An element that never closes, fed 64 MiB.
    let reply = raw(
        &w,
        &[
            HEADER,
            b"<message to='bob@example.org'><body>",
            &[b'a'; 65536],
        ],
        1024,
    );
    assert!(reply.contains("policy-violation"), "{reply}");
    // A 100 MiB attribute.
    let reply = raw(&w, &[HEADER, b"<message to='", &[b'x'; 65536]], 1600);
    assert!(
        reply.contains("policy-violation") || reply.contains("restricted-xml"),
        "{reply}"
    );
    let after = peak_rss_kib(w.gateway.pid());
    eprintln!("gateway peak RSS: {before} KiB before, {after} KiB after the hostile XML");
    assert!(
        after < before + 32 * 1024,
        "memory grew from {before} to {after} KiB"
    );
    // Authentication before TLS is refused.
    let reply = raw(&w, &[HEADER, b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHB3</auth></stream:stream>"], 0);
    assert!(
        reply.contains("<starttls") && reply.contains("<encryption-required/>"),
        "{reply}"
    );
}

#[test]
fn a_backend_that_is_down_gives_a_stream_error() {
    require_python_module("slixmpp", "pip install slixmpp");
    let auth_port = free_port();
    let tail = format!(
        r#"
[[listener]]
protocol = "xmpp"
address = "127.0.0.1:{{http}}"
tls = "starttls"
backend = "prosody"
[backend.prosody]
address = "127.0.0.1:{}"
domain = "example.org"
login = "ticket"
strip_domain = true
timeout_secs = 2
"#,
        free_port()
    );
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            extra: format!("[auth_server]\nlisten = [\"127.0.0.1:{auth_port}\"]\n"),
            tail,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main");
    let xmpp = gateway.app_password("alice", "xmpp", "Jabber");
    let w = World {
        gateway,
        _prosody: Prosody::start(free_port(), "elsewhere.org", free_port()),
        direct_port: 0,
    };
    let client = Client::start(&w, "alice@example.org", &xmpp, "receive", "");
    let end = client.expect(&["STREAM-ERROR", "LOGGED-IN"], Duration::from_secs(15));
    assert!(
        end.as_deref()
            .is_some_and(|l| l.starts_with("STREAM-ERROR remote-connection-failed")),
        "{end:?}"
    );
}

#[test]
fn direct_tls_logs_in_too() {
    // XEP-0368: TLS from the first byte, then the same stream and SASL exchange.
    let w = world();
    let secret = w.gateway.app_password("alice", "xmpp", "Conversations");
    let mut t = TlsRaw::connect(w.direct_port, &w.gateway.ca);
    t.send(HEADER);
    let mut seen = String::new();
    while !seen.contains("</stream:features>") {
        let line = t.chunk();
        assert!(!line.is_empty(), "no features: {seen}");
        seen.push_str(&line);
    }
    assert!(
        seen.contains("<mechanism>PLAIN</mechanism>") && !seen.contains("starttls"),
        "{seen}"
    );
    t.send(
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{}</auth>",
            plain("", "alice", &secret)
        )
        .as_bytes(),
    );
    let mut reply = String::new();
    while !reply.contains("/>") && !reply.contains("</failure>") {
        let more = t.chunk();
        assert!(!more.is_empty(), "no answer: {reply}");
        reply.push_str(&more);
    }
    assert!(reply.contains("<success"), "{reply}\n{}", w.gateway.log());
    // The restarted stream reaches Prosody, whose features (resource binding) come back.
    t.send(HEADER);
    let mut seen = String::new();
    while !seen.contains("</stream:features>") {
        let line = t.chunk();
        assert!(!line.is_empty(), "no features from the backend: {seen}");
        seen.push_str(&line);
    }
    assert!(seen.contains("urn:ietf:params:xml:ns:xmpp-bind"), "{seen}");
}
