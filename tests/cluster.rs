//! Several gateway nodes on one PostgreSQL, behind HAProxy: a private PostgreSQL cluster
//! (initdb and postgres as an unprivileged user, a free port), three real portcullis nodes
//! sharing its database, HAProxy in TCP mode with PROXY v2 in front of their IMAP listeners,
//! one Dovecot behind them all.
//!
//! Scenarios: a revocation made on node A through the CLI is refused on B and C and cuts a live
//! session on C, and the client's address from HAProxy's header reaches Dovecot's log;
//! PostgreSQL stopped for over 10 s and restarted (nodes stop trusting their caches, reconnect,
//! catch up); the nodes cut off from a database that a writer still reaches (the change made
//! meanwhile is enforced once they are back); `kill -9` of a node while its portal acknowledges
//! writes (no acknowledged change lost).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use portcullis::store::testing::PgCluster;

struct World {
    pg: PgCluster,
    /// The database's URL as the nodes reach it (through `relay` when there is one).
    db: String,
    _sink: SmtpSink,
    dovecot: Dovecot,
    nodes: Vec<Gateway>,
    _haproxy: Haproxy,
    /// HAProxy's IMAP frontend on 127.0.0.2.
    front: u16,
    /// A TCP relay between the nodes and PostgreSQL, to cut them off.
    relay: Option<(Haproxy, u16)>,
}

/// Each node's IMAP listener for HAProxy (PROXY v2 from 127.0.0.1), and, with `portal`, a portal.
fn node_tail(proxied: u16, portal: bool) -> String {
    let mut tail = format!(
        "[[listener]]\nprotocol = \"imap\"\naddress = \"127.0.0.1:{proxied}\"\ntls = \"implicit\"\nbackend = \"imap\"\nproxy_protocol = true\nproxy_from = [\"127.0.0.1\"]\n"
    );
    if portal {
        tail.push_str(
            "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{http}\"\ntls = \"implicit\"\n",
        );
    }
    tail
}

fn world(with_relay: bool, portal: bool) -> World {
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let direct = pg.database();
    let relay = with_relay.then(|| {
        let port = free_port();
        (relay_to(pg.port(), port), port)
    });
    let db = match &relay {
        Some((_, port)) => direct.replace(&format!(":{}/", pg.port()), &format!(":{port}/")),
        None => direct,
    };
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let mut nodes: Vec<Gateway> = Vec::new();
    let mut proxied = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        proxied.push(port);
        let node = Gateway::start(
            dovecot.imap_port,
            dovecot.submission_port,
            Options {
                store: Some(db.clone()),
                certs_from: nodes.first().map(|n| n.dir.path().join("certs")),
                tail: node_tail(port, portal),
                ..Options::default()
            },
        );
        nodes.push(node);
    }
    let front = free_port();
    let haproxy = Haproxy::start(&[HaRoute {
        bind_host: "127.0.0.2",
        port: front,
        servers: proxied,
        send_proxy: true,
    }]);
    World {
        pg,
        db,
        _sink: sink,
        dovecot,
        nodes,
        _haproxy: haproxy,
        front,
        relay,
    }
}

/// A plain TCP relay on 127.0.0.1:`port` to PostgreSQL.
fn relay_to(pg: u16, port: u16) -> Haproxy {
    Haproxy::start(&[HaRoute {
        bind_host: "127.0.0.1",
        port,
        servers: vec![pg],
        send_proxy: false,
    }])
}

fn login(node: &Gateway, password: &str) -> String {
    imap_login(node, "alice", password)
}

/// Waits until every node answers `password` with `expected` (`LOGIN OK`, `LOGIN-FAILED`).
/// Waits until `node`'s log contains `needle`.
fn until_logged(node: &Gateway, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !node.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} within {within:?}\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn until_every_node(w: &World, password: &str, expected: &str, within: Duration) {
    let deadline = Instant::now() + within;
    for (i, node) in w.nodes.iter().enumerate() {
        loop {
            let out = login(node, password);
            if out.contains(expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} answered {out:?}, not {expected:?}\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn revoke_newest(node: &Gateway) {
    let id = node.newest_app_password_id("alice").to_string();
    node.cli_ok(&["app-password", "revoke", "alice", &id], None);
}

#[test]
fn a_revocation_on_one_node_is_enforced_on_every_node_and_cuts_live_sessions() {
    let w = world(false, false);
    let (a, b, c) = (&w.nodes[0], &w.nodes[1], &w.nodes[2]);
    a.create_account("alice", "alice long main password");
    let secret = a.app_password("alice", "mail", "phone");
    // Every node knows the new password (and caches it).
    for node in &w.nodes {
        assert!(login(node, &secret).contains("LOGIN OK"), "{}", node.log());
    }
    // Through HAProxy from 127.0.0.3: Dovecot learns the client's address from the header.
    let ca = a.ca.to_string_lossy().into_owned();
    let out = python_ok(
        IMAP_FROM,
        &[
            "127.0.0.3",
            "127.0.0.2",
            &w.front.to_string(),
            &ca,
            "alice",
            &secret,
            "",
        ],
    );
    assert!(out.contains("LOGIN OK"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.dovecot.log().contains("rip=127.0.0.3") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.dovecot.log().contains("rip=127.0.0.3"),
        "{}",
        w.dovecot.log()
    );
    // The last use, written by whichever node HAProxy chose, is in the shared store.
    let mut listed = String::new();
    while !listed.contains("127.0.0.3 imap") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        listed = a.cli_ok(&["app-password", "list", "alice"], None);
    }
    assert!(listed.contains("127.0.0.3 imap"), "{listed}");

    let held = Held::start(
        IMAP_HOLD,
        c.ports.imaps,
        &c.ca.to_string_lossy(),
        "alice",
        &secret,
    );
    revoke_newest(a);
    let line = held
        .next(Duration::from_secs(2))
        .expect("the session on node C is cut within 2 s");
    assert!(line.starts_with("GOT * BYE"), "{line}");
    for node in [b, c] {
        let out = login(node, &secret);
        assert!(out.contains("LOGIN-FAILED"), "{out}\n{}", node.log());
    }
    // Node C learned it from a notification, not by polling SQLite.
    assert!(c.log().contains("change feed listening"), "{}", c.log());
}

#[test]
fn nodes_ride_out_a_database_outage_and_lose_no_change_made_meanwhile() {
    let mut w = world(true, false);
    let a = &w.nodes[0];
    a.create_account("alice", "alice long main password");
    let first = a.app_password("alice", "mail", "first");
    let second = a.app_password("alice", "mail", "second");
    until_every_node(&w, &first, "LOGIN OK", Duration::from_secs(5));
    until_every_node(&w, &second, "LOGIN OK", Duration::from_secs(5));

    // PostgreSQL down for more than max_feed_staleness_secs (10): a node stops trusting its
    // cache, says so, and refuses what it cannot check.
    w.pg.stop();
    std::thread::sleep(Duration::from_millis(10_500));
    let out = login(&w.nodes[1], &second);
    assert!(out.contains("LOGIN-FAILED"), "{out}");
    assert!(
        w.nodes[1].log().contains("has not caught up for longer"),
        "{}",
        w.nodes[1].log()
    );
    w.pg.resume().expect("postgres restarts");
    // Back: they reconnect and catch up; a revocation made now is enforced everywhere.
    // A login may succeed before the feed is back (a stale node checks the store itself), so
    // the feed's return is awaited on its own.
    until_every_node(&w, &second, "LOGIN OK", Duration::from_secs(15));
    until_logged(
        &w.nodes[1],
        "cache is trusted again",
        Duration::from_secs(15),
    );
    revoke_app_password(&w, "first", false);
    until_every_node(&w, &first, "LOGIN-FAILED", Duration::from_secs(2));

    // Cut the nodes off the database while a writer still reaches it. A session is live on
    // node C; the revocation made meanwhile reaches it once the nodes are back.
    let c = &w.nodes[2];
    let held = Held::start(
        IMAP_HOLD,
        c.ports.imaps,
        &c.ca.to_string_lossy(),
        "alice",
        &second,
    );
    let (mut relay, relay_port) = w.relay.take().expect("relay");
    relay.stop();
    revoke_app_password(&w, "second", true);
    std::thread::sleep(Duration::from_secs(2));
    let relay = relay_to(w.pg.port(), relay_port);
    let line = held
        .next(Duration::from_secs(10))
        .expect("the session on node C is cut once the nodes are back");
    assert!(line.starts_with("GOT * BYE"), "{line}");
    until_every_node(&w, &second, "LOGIN-FAILED", Duration::from_secs(5));
    drop(relay);
}

/// Revokes alice's app password called `name`; `direct`: as a writer that reaches PostgreSQL
/// itself, not through the relay the nodes use.
fn revoke_app_password(w: &World, name: &str, direct: bool) {
    let a = &w.nodes[0];
    let config = if direct {
        let direct_url = w.pg.url(w.db.rsplit('/').next().expect("database name"));
        let text = std::fs::read_to_string(&a.config).expect("config");
        let path = a.dir.path().join("writer.toml");
        std::fs::write(&path, text.replace(&w.db, &direct_url)).expect("writer config");
        path
    } else {
        a.config.clone()
    };
    let run = |args: &[&str]| {
        let out = Command::new(binary())
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("cli");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list: serde_json::Value =
        serde_json::from_str(&run(&["app-password", "list", "alice", "--json"])).expect("json");
    let id = list
        .as_array()
        .and_then(|l| l.iter().find(|p| p["name"] == name))
        .and_then(|p| p["id"].as_i64())
        .expect("app password id")
        .to_string();
    run(&["app-password", "revoke", "alice", &id]);
}

/// Signs in to the portal and creates mail app passwords one after another, printing
/// `ACK <name> <secret>` for each one the portal acknowledged, until the portal goes away.
const WRITER: &str = r#"
import http.client, json, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
cookie = None
def call(method, path, body):
    global cookie
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    headers = {"Accept": "application/json", "Origin": f"https://localhost:{port}", "Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, "/api/v1" + path, body=json.dumps(body).encode(), headers=headers)
    r = conn.getresponse()
    raw = r.read()
    for name, value in r.getheaders():
        if name.lower() == "set-cookie":
            cookie = value.split(";", 1)[0]
    conn.close()
    return r.status, json.loads(raw) if raw else None
status, _ = call("POST", "/session", {"login": "alice", "password": "alice long main password"})
assert status == 200, status
print("COOKIE", cookie, flush=True)
for i in range(100000):
    try:
        status, body = call("POST", "/app-passwords", {"service": "mail", "name": f"w{i}"})
    except OSError as e:
        print("DOWN", e, flush=True)
        break
    assert status == 201, (status, body)
    print("ACK", f"w{i}", body["secret"], flush=True)
"#;

#[test]
fn a_node_killed_during_writes_loses_no_acknowledged_change() {
    let w = world(false, true);
    let (a, b) = (&w.nodes[0], &w.nodes[1]);
    a.create_account("alice", "alice long main password");
    let mut writer = Command::new("python3")
        .args([
            "-c",
            WRITER,
            &a.ports.http.to_string(),
            &a.ca.to_string_lossy(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(writer.stdout.take().expect("stdout")).lines();
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut killed = false;
    let mut cookie = String::new();
    for line in lines.by_ref().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (name, secret) = rest.split_once(' ').expect("name and secret");
            acked.push((name.to_owned(), secret.to_owned()));
            if acked.len() == 40 && !killed {
                // Mid-stream: the next request is in flight or about to be.
                Command::new("kill")
                    .args(["-KILL", &a.pid().to_string()])
                    .status()
                    .expect("kill");
                killed = true;
            }
        } else if let Some(value) = line.strip_prefix("COOKIE ") {
            cookie = value.to_owned();
        } else if line.starts_with("DOWN") {
            break;
        }
    }
    let _ = writer.wait();
    assert!(killed && acked.len() >= 40, "{acked:?}\n{}", a.log());
    // Every acknowledged app password is in the store, as another node sees it, and works.
    let out = b.cli_ok(&["app-password", "list", "alice", "--json"], None);
    let list: serde_json::Value = serde_json::from_str(&out).expect("json");
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for (name, _) in &acked {
        assert!(
            names.contains(&name.as_str()),
            "{name} acknowledged but lost"
        );
    }
    let (_, last) = acked.last().expect("acked");
    assert!(login(b, last).contains("LOGIN OK"), "{}", b.log());
    // The web session made on node A is in the store: node B's portal knows it.
    require("curl", "apt-get install curl");
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&b.ca)
        .args(["-H", &format!("Cookie: {cookie}")])
        .arg(format!("https://localhost:{}/api/v1/account", b.ports.http))
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("\"alice@example.org\""), "{body}");
}

#[test]
fn an_sqlite_installation_moves_to_postgresql_with_store_copy() {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let mut single = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options::default(),
    );
    single.create_account("alice", "alice long main password");
    let secret = single.app_password("alice", "mail", "phone");
    assert!(single.terminate(Duration::from_secs(10)));
    let sqlite = format!(
        "sqlite://{}/data/portcullis.db",
        single.dir.path().display()
    );
    let pg = PgCluster::shared();
    let target = pg.database();

    // A password on the command line is refused (every user can read argv).
    let with_password = target.replace("portcullis@", "portcullis:hunter2@");
    let out = single.cli(
        &["store", "copy", "--from", &sqlite, "--to", &with_password],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGPASSWORD"));

    let out = single.cli(&["store", "copy", "--from", &sqlite, "--to", &target], None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("app_passwords: 1 rows"), "{said}");
    let out = single.cli(&["store", "migrate", "--url", &target], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("schema at version"));

    // A node on PostgreSQL serves the copied account; a second copy is refused.
    let node = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options {
            store: Some(target.clone()),
            ..Options::default()
        },
    );
    assert!(login(&node, &secret).contains("LOGIN OK"), "{}", node.log());
    let out = single.cli(&["store", "copy", "--from", &sqlite, "--to", &target], None);
    assert!(!out.status.success());
}
