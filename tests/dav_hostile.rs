//! The HTTP listener under bad input and bad backends: smuggling, oversized heads, slow heads,
//! idle connections, the connection limit, and backends that are down or silent.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

struct World {
    _wsgidav: Wsgidav,
    _calendar: Radicale,
    _contacts: Radicale,
    gateway: Gateway,
    disk: String,
}

fn world(limits: &str, wsgidav_port: Option<u16>) -> World {
    let wsgidav = Wsgidav::start();
    let calendar = Radicale::start();
    let contacts = Radicale::start();
    let tail = http_listener(
        0,
        wsgidav_port.unwrap_or(wsgidav.port),
        calendar.port,
        contacts.port,
    )
    .replace("127.0.0.1:0\"", "127.0.0.1:{http}\"");
    // The mail listeners need backends to exist only when used: point them anywhere.
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail,
            limits: limits.to_owned(),
            max_connections: 30,
            backend_timeout_secs: 2,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let disk = gateway.app_password("alice", "disk", "t");
    World {
        _wsgidav: wsgidav,
        _calendar: calendar,
        _contacts: contacts,
        gateway,
        disk,
    }
}

fn auth(secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"))
    )
}

/// Sends raw HTTP/1.1 over TLS; returns everything until the server closes (or 10 s).
fn exchange(w: &World, request: &[u8]) -> String {
    let mut t = TlsRaw::connect(w.gateway.ports.http, &w.gateway.ca);
    t.send(request);
    let mut out = String::new();
    loop {
        let line = t.line();
        if line.is_empty() {
            return out;
        }
        out.push_str(&line);
    }
}

#[test]
fn smuggling_attempts_are_refused_and_the_connection_closed() {
    let w = world("", None);
    let a = auth(&w.disk);
    for (what, request) in [
        (
            "length and chunked",
            format!(
                "PUT /s1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "chunked then length",
            format!(
                "PUT /s2 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "duplicate length",
            format!(
                "PUT /s3 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
            ),
        ),
        (
            "smuggler behind a clean request",
            format!(
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\n\r\nPUT /s4 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"
            ),
        ),
        (
            "chunked twice",
            format!(
                "PUT /s5 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
            ),
        ),
        (
            "a coding before chunked",
            format!(
                "PUT /s6 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
            ),
        ),
        (
            "bare line feeds",
            format!("PUT /s7 HTTP/1.1\nHost: 127.0.0.1\n{a}\nContent-Length: 1\n\nx"),
        ),
    ] {
        let reply = exchange(&w, request.as_bytes());
        // The last response on the connection (a body need not end with a newline).
        let last_status = reply.rfind("HTTP/1.1 ").map_or("", |i| &reply[i..]);
        assert!(last_status.starts_with("HTTP/1.1 400"), "{what}: {reply}");
        assert!(
            !w._wsgidav
                .home("alice@example.org")
                .join(&request[5..7])
                .exists(),
            "{what}: the request reached the backend"
        );
    }
    // The probe's framing: a chunk extension longer than the sniffer follows, sent in pieces,
    // then a request with both lengths. The second request must not pass unjudged.
    let mut t = TlsRaw::connect(w.gateway.ports.http, &w.gateway.ca);
    t.send(
        format!(
            "PUT /s8a HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nTransfer-Encoding: chunked\r\n\r\n1;"
        )
        .as_bytes(),
    );
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(20));
        t.send(&[b'e'; 1000]);
    }
    t.send(
        format!("\r\nx\r\n0\r\n\r\nPUT /s8 HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            .as_bytes(),
    );
    let mut reply = String::new();
    loop {
        let line = t.line();
        if line.is_empty() {
            break;
        }
        reply.push_str(&line);
    }
    assert!(
        !w._wsgidav.home("alice@example.org").join("s8").exists(),
        "the smuggled request reached the backend: {reply}"
    );
    let last_status = reply.rfind("HTTP/1.1 ").map_or("", |i| &reply[i..]);
    assert!(last_status.starts_with("HTTP/1.1 400"), "{reply}");
    // A clean chunked upload still works.
    let reply = exchange(
        &w,
        format!("PUT /ok.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
}

#[test]
fn oversized_heads_and_targets_get_their_status_codes() {
    let w = world(
        "http_max_header_bytes = 16384\nhttp_max_uri_bytes = 2048",
        None,
    );
    let a = auth(&w.disk);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let reply = exchange(&w, big_header.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nConnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    let reply = exchange(&w, long_uri.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 414"), "{reply:.200}");
    // Bad Basic credentials of every kind: 401, never a crash.
    for header in [
        "Authorization: Basic !!!",
        "Authorization: Basic AGEAYgBj",
        "Authorization: Bearer x",
        "Authorization: Basic YWxpY2U6\u{0}",
    ] {
        let reply = exchange(
            &w,
            format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 401") || reply.starts_with("HTTP/1.1 400"),
            "{header}: {reply:.200}"
        );
    }
}

#[test]
fn slow_heads_and_idle_connections_are_closed() {
    let w = world(
        "http_header_timeout_secs = 1\nhttp_idle_timeout_secs = 2",
        None,
    );
    // Slowloris: a head that never ends.
    let start = Instant::now();
    let mut t = TlsRaw::connect(w.gateway.ports.http, &w.gateway.ca);
    t.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
    for _ in 0..40 {
        if !t.try_send(b"a") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply = t.line();
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 408"),
        "{reply}"
    );
    assert!(t.closed());
    assert!(start.elapsed() < Duration::from_secs(6));
    // Idle keep-alive: one request, then silence.
    let mut t = TlsRaw::connect(w.gateway.ports.http, &w.gateway.ca);
    t.send(
        format!(
            "PROPFIND / HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nDepth: 0\r\nContent-Length: 0\r\n\r\n",
            auth(&w.disk)
        )
        .as_bytes(),
    );
    assert!(t.line().starts_with("HTTP/1.1 207"));
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let _ = t.read_rest(&mut rest);
    assert!(
        idle_from.elapsed() < Duration::from_secs(6),
        "idle connection kept {:?}",
        idle_from.elapsed()
    );
}

#[test]
fn the_connection_limit_applies_to_http() {
    let w = world("", None);
    let held: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", w.gateway.ports.http)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Past the limit of 30 the gateway closes new connections at once.
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", w.gateway.ports.http)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)));
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let reply = exchange(
        &w,
        format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nConnection: close\r\n\r\n",
            auth(&w.disk)
        )
        .as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply:.200}");
    let _ = extra.write_all(b"x");
}

#[test]
fn a_backend_that_is_down_or_silent_gives_502_or_504() {
    // Down: nothing listens on the wsgidav port.
    let w = world("", Some(free_port()));
    let a = auth(&w.disk);
    let reply = exchange(
        &w,
        format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply:.200}");
    // Silent: accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(4).collect();
        std::thread::sleep(Duration::from_secs(20));
        drop(held);
    });
    let w = world("", Some(port));
    let start = Instant::now();
    let reply = exchange(
        &w,
        format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nConnection: close\r\n\r\n",
            auth(&w.disk)
        )
        .as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply:.200}");
    assert!(start.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_client_cannot_name_the_user_a_wsgi_backend_trusts() {
    // WSGI servers turn `X-Remote-User` and `X_Remote_User` into the same HTTP_X_REMOTE_USER;
    // a copy from the client that survived would be joined to the gateway's ("bob,alice").
    let w = world("", None);
    let a = auth(&w.disk);
    for (i, spoof) in [
        "X_Remote_User: bob",
        "x_remote-user: bob",
        "X-REMOTE_USER: bob",
        "X-Remote-User: bob",
    ]
    .iter()
    .enumerate()
    {
        let reply = exchange(
            &w,
            format!("PUT /spoof{i}.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\n{spoof}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").as_bytes(),
        );
        assert!(reply.starts_with("HTTP/1.1 201"), "{spoof}: {reply}");
        assert!(
            w._wsgidav
                .home("alice@example.org")
                .join(format!("spoof{i}.txt"))
                .exists(),
            "{spoof}: the file is not alice's"
        );
    }
    // Only alice's folder exists: the backend never saw another user.
    let users: Vec<String> = std::fs::read_dir(&w._wsgidav.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(users, vec!["alice@example.org".to_owned()]);
}

#[test]
fn a_client_cannot_name_the_user_radicale_trusts() {
    // Radicale runs on wsgiref, which folds `-` and `_` and joins repeated headers with a
    // comma: a surviving `X_Remote_User: bob` made the user "bob,alice@example.org", who owns
    // nothing of alice's.
    let w = world("", None);
    let calendar = w.gateway.app_password("alice", "calendar", "t");
    let a = auth(&calendar);
    for (i, spoof) in [
        "X_Remote_User: bob",
        "x_remote-user: bob",
        "X-REMOTE_USER: bob",
        "X-Remote-User: bob",
    ]
    .iter()
    .enumerate()
    {
        let reply = exchange(
            &w,
            format!("MKCALENDAR /cal/alice@example.org/spoof{i}/ HTTP/1.1\r\nHost: localhost\r\n{a}\r\n{spoof}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            reply.starts_with("HTTP/1.1 201"),
            "{spoof}: the backend did not see alice alone: {reply}"
        );
    }
}
