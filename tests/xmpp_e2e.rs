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
    /// A second node on the same database, whose auth server Prosody asks.
    other: Option<Gateway>,
}

fn world() -> World {
    world_of(false, None)
}

/// With `two_nodes`, Prosody asks the auth server of another gateway node sharing this one's
/// database (the other node's SQLite file, or `store` for both): a ticket minted here is
/// redeemed there.
fn world_of(two_nodes: bool, store: Option<String>) -> World {
    require_python_module("slixmpp", "pip install slixmpp");
    let auth_port = free_port();
    let other = two_nodes.then(|| {
        Gateway::start(
            free_port(),
            free_port(),
            Options {
                extra: format!("[auth_server]\nlisten = [\"127.0.0.1:{auth_port}\"]\n"),
                store: store.clone(),
                ..Options::default()
            },
        )
    });
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
            // With two nodes this one's own auth server goes unasked.
            extra: format!(
                "[auth_server]\nlisten = [\"127.0.0.1:{}\"]\n",
                if two_nodes { free_port() } else { auth_port }
            ),
            tail,
            store: store.or_else(|| {
                other.as_ref().map(|node| {
                    format!("sqlite://{}/data/portcullis.db", node.dir.path().display())
                })
            }),
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
        other,
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
    gateway.create_account("alice", "main password");
    let xmpp = gateway.app_password("alice", "xmpp", "Jabber");
    let w = World {
        gateway,
        _prosody: Prosody::start(free_port(), "elsewhere.org", free_port()),
        direct_port: 0,
        other: None,
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

/// Reads chunks until `end` appears (or the connection ends); everything read.
fn read_until(t: &mut TlsRaw, end: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(end) {
        let more = t.chunk();
        if more.is_empty() {
            break;
        }
        seen.push_str(&more);
    }
    seen
}

/// Logs in over direct TLS with `plain` (base64 PLAIN) followed by `after_auth`; the answer.
fn direct_login(w: &World, plain: &str, after_auth: &str) -> (TlsRaw, String) {
    let mut t = TlsRaw::connect(w.direct_port, &w.gateway.ca);
    t.send(HEADER);
    read_until(&mut t, "</stream:features>");
    t.send(
        format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>{after_auth}"
        )
        .as_bytes(),
    );
    let mut reply = String::new();
    while !reply.contains("/>") && !reply.contains("</failure>") {
        let more = t.chunk();
        if more.is_empty() {
            break;
        }
        reply.push_str(&more);
    }
    (t, reply)
}

#[test]
fn a_restart_after_whitespace_and_with_a_declaration_reaches_the_backend() {
    // RFC 6120 11.7: whitespace between elements is legal, and a restarted stream may open with
    // an XML declaration. A newline after </auth> held back by the gateway used to reach
    // Prosody in front of the declaration: not-well-formed.
    let w = world();
    let secret = w.gateway.app_password("alice", "xmpp", "Jabber");
    for (after_auth, restart) in [
        ("\n", "<?xml version='1.0'?>\n"),
        ("\r\n  ", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
        ("", " \n<?xml version='1.0'?> "),
    ] {
        let (mut t, reply) = direct_login(&w, &plain("", "alice", &secret), after_auth);
        assert!(reply.contains("<success"), "{reply}\n{}", w.gateway.log());
        let header = String::from_utf8_lossy(HEADER).replace("<?xml version='1.0'?>", "");
        t.send(format!("{restart}{header}\n").as_bytes());
        let features = read_until(&mut t, "</stream:features>");
        assert!(
            features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
            "{after_auth:?} {restart:?}: {features}"
        );
        t.send(b"<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>raw</resource></bind></iq>\n");
        let bound = read_until(&mut t, "</iq>");
        assert!(
            bound.contains("<jid>alice@example.org/raw</jid>"),
            "{bound}"
        );
    }
}

#[test]
fn sasl_plain_with_an_authorization_identity_of_the_same_account_logs_in() {
    let w = world();
    let secret = w.gateway.app_password("alice", "xmpp", "Jabber");
    for (authzid, authcid) in [
        ("alice@example.org", "alice"),
        ("alice", "alice@example.org"),
        ("Alice@Example.org", "ALICE"),
    ] {
        let (_, reply) = direct_login(&w, &plain(authzid, authcid, &secret), "");
        assert!(
            reply.contains("<success"),
            "{authzid} / {authcid}: {reply}\n{}",
            w.gateway.log()
        );
    }
    // Another account as the authorization identity: the wrong-password refusal, and a log line.
    let (_, reply) = direct_login(&w, &plain("bob@example.org", "alice", &secret), "");
    assert!(reply.contains("<not-authorized/>"), "{reply}");
    assert!(
        w.gateway
            .log()
            .contains("the authorization identity names another account"),
        "{}",
        w.gateway.log()
    );
}

/// A Jabber client's configuration file (sendxmpp and go-sendxmpp read the same format), so
/// the password stays out of argv.
fn sendxmpprc(dir: &std::path::Path, user: &str, password: &str, port: u16) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("sendxmpprc-{port}-{user}"));
    // sendxmpp takes the node as `username` and the domain as `component` (the stream's `to`);
    // go-sendxmpp takes the whole JID as `username`.
    let component = if user.contains('@') {
        ""
    } else {
        "component: example.org\n"
    };
    std::fs::write(
        &path,
        format!(
            "username: {user}\njserver: 127.0.0.1\nport: {port}\npassword: {password}\n{component}"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Runs a command-line Jabber client that sends `body` to bob and checks that bob's slixmpp
/// client receives it through the gateway.
fn send_with(w: &World, program: &str, args: &[&str], body: &str) {
    let bob = w.gateway.app_password("bob", "xmpp", "Jabber phone");
    let receiver = Client::start(w, "bob@example.org", &bob, "receive", "");
    assert_eq!(
        receiver
            .expect(&["LOGGED-IN", "FAILED-AUTH"], Duration::from_secs(20))
            .as_deref(),
        Some("LOGGED-IN bob@example.org")
    );
    let mut child = Command::new(program)
        .args(args)
        .env("HOME", w.gateway.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(format!("{body}\n").as_bytes());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let got = receiver.expect(&["GOT"], Duration::from_secs(10));
    assert_eq!(
        got.as_deref(),
        Some(format!("GOT alice@example.org {body}").as_str()),
        "{program}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        w.gateway.log()
    );
}

#[test]
fn go_sendxmpp_newline_after_auth_and_declaration_on_restart() {
    // go-sendxmpp (go-xmpp) writes a newline after every element, </auth> included, and opens
    // its restarted stream with an XML declaration.
    require("go-sendxmpp", "apt-get install go-sendxmpp");
    let w = world();
    let alice = w.gateway.app_password("alice", "xmpp", "go-sendxmpp");
    let rc = sendxmpprc(
        w.gateway.dir.path(),
        "alice@example.org",
        &alice,
        w.gateway.ports.http,
    );
    let rc = rc.to_string_lossy().into_owned();
    // -n: the development certificate is not in the system store.
    send_with(
        &w,
        "go-sendxmpp",
        &["-f", &rc, "-n", "bob@example.org"],
        "hello from go-sendxmpp",
    );
}

#[test]
fn sendxmpp_authorization_identity_and_declaration_on_restart() {
    // sendxmpp (Net::XMPP) sends PLAIN with the full address as the authorization identity and
    // the bare name as the login, and opens its restarted stream with an XML declaration.
    require("sendxmpp", "apt-get install sendxmpp");
    let w = world();
    let alice = w.gateway.app_password("alice", "xmpp", "sendxmpp");
    let rc = sendxmpprc(w.gateway.dir.path(), "alice", &alice, w.gateway.ports.http);
    let rc = rc.to_string_lossy().into_owned();
    // -n: the development certificate is not in the system store (-a wants a hashed folder).
    send_with(
        &w,
        "sendxmpp",
        &[
            "-f",
            &rc,
            "-t",
            "-n",
            "--message-type",
            "chat",
            "bob@example.org",
        ],
        "hello from sendxmpp",
    );
}

#[test]
fn a_ticket_minted_on_one_node_is_redeemed_by_another_nodes_auth_server() {
    ticket_across_nodes(world_of(true, None));
}

#[test]
fn a_ticket_minted_on_one_node_is_redeemed_by_another_node_on_postgresql() {
    let pg = portcullis::store::testing::PgCluster::shared();
    ticket_across_nodes(world_of(true, Some(pg.database())));
}

fn ticket_across_nodes(w: World) {
    let alice = w.gateway.app_password("alice", "xmpp", "Jabber laptop");
    let client = Client::start(&w, "alice@example.org", &alice, "receive", "");
    let logged_in = client.expect(&["LOGGED-IN", "FAILED-AUTH"], Duration::from_secs(20));
    let other = w.other.as_ref().expect("two nodes");
    assert_eq!(
        logged_in.as_deref(),
        Some("LOGGED-IN alice@example.org"),
        "{}\n---\n{}",
        w.gateway.log(),
        other.log()
    );
    // The node Prosody asked is the other one: this node's own auth server saw no request.
    assert!(
        !w.gateway.log().contains("reason=ticket"),
        "{}",
        w.gateway.log()
    );
}
