//! WebDAV, CalDAV and CardDAV end to end: real clients (litmus, python caldav, vdirsyncer,
//! curl) through the real portcullis binary to real servers (wsgidav, Radicale).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct World {
    _sink: SmtpSink,
    _dovecot: Dovecot,
    wsgidav: Wsgidav,
    _calendar: Radicale,
    _contacts: Radicale,
    gateway: Gateway,
}

fn world(options: Options) -> World {
    let sink = SmtpSink::start();
    let dovecot = Dovecot::start(sink.port, &["alice@example.org"]);
    let wsgidav = Wsgidav::start();
    let calendar = Radicale::start();
    let contacts = Radicale::start();
    let tail = format!(
        "{}\n{}",
        http_listener(0, wsgidav.port, calendar.port, contacts.port),
        options.tail
    )
    .replace("127.0.0.1:0\"", "127.0.0.1:{http}\"");
    let gateway = Gateway::start(
        dovecot.imap_port,
        dovecot.submission_port,
        Options { tail, ..options },
    );
    gateway.create_account("alice", "alice main password");
    World {
        _sink: sink,
        _dovecot: dovecot,
        wsgidav,
        _calendar: calendar,
        _contacts: contacts,
        gateway,
    }
}

fn curl(args: &[&str]) -> (bool, String) {
    require("curl", "apt-get install curl");
    let out = Command::new("curl")
        .args(["-sS"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `curl -w '%{http_code}'` against the gateway with `user:password`, returning the status.
fn status(w: &World, method: &str, url: &str, user: &str, extra: &[&str]) -> String {
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let mut args = vec![
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
        "-u",
        user,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let (_, out) = curl(&args);
    out.trim().to_owned()
}

#[test]
fn dav_services_are_scoped_and_the_backend_sees_the_login() {
    // The default log level, as an operator runs it.
    let w = world(Options {
        log_filter: "info",
        ..Options::default()
    });
    let disk = w.gateway.app_password("alice", "disk", "Files");
    let calendar = w
        .gateway
        .app_password("alice", "calendar", "Phone calendar");
    let mail = w.gateway.app_password("alice", "mail", "Thunderbird");
    let port = w.gateway.ports.http;
    let disk_url = format!("https://127.0.0.1:{port}/");
    let cal_url = format!("https://localhost:{port}/cal/");

    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &disk_url,
            &format!("alice:{disk}"),
            &["-H", "Depth: 1"]
        ),
        "207"
    );
    // A mail password is refused on every route, a disk password on the calendar route.
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &disk_url,
            &format!("alice:{mail}"),
            &["-H", "Depth: 1"]
        ),
        "401"
    );
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &cal_url,
            &format!("alice:{mail}"),
            &["-H", "Depth: 1"]
        ),
        "401"
    );
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &cal_url,
            &format!("alice:{disk}"),
            &["-H", "Depth: 1"]
        ),
        "401"
    );
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &cal_url,
            &format!("alice:{calendar}"),
            &["-H", "Depth: 1"]
        ),
        "207"
    );
    // No credentials: a Basic challenge with the UTF-8 charset (RFC 7617).
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let (_, head) = curl(&["--cacert", &ca, "-I", &disk_url]);
    assert!(
        head.starts_with("HTTP/2 401") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"portcullis\", charset=\"utf-8\""),
        "{head}"
    );
    // Unknown hosts and paths get 404, not a default service.
    let (_, out) = curl(&[
        "--cacert",
        &ca,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-u",
        &format!("alice:{disk}"),
        &format!("https://localhost:{port}/elsewhere"),
    ]);
    assert_eq!(out, "404");
    // Host routing (the README's webdav.localhost).
    let resolve = format!("webdav.localhost:{port}:127.0.0.1");
    assert_eq!(
        status(
            &w,
            "PUT",
            &format!("https://webdav.localhost:{port}/hello.txt"),
            &format!("alice:{disk}"),
            &["--resolve", &resolve, "--data-binary", "hello"]
        ),
        "201"
    );
    // The file landed in wsgidav's root, owned by the request of alice.
    assert_eq!(
        std::fs::read_to_string(w.wsgidav.home("alice@example.org").join("hello.txt")).unwrap(),
        "hello"
    );
    // RFC 6764 well-known redirect for CalDAV.
    let (_, head) = curl(&[
        "--cacert",
        &ca,
        "-I",
        &format!("https://localhost:{port}/.well-known/caldav"),
    ]);
    // The redirect keeps the scheme, host and port the client used.
    assert!(
        head.contains(" 301")
            && head
                .to_ascii_lowercase()
                .contains(&format!("location: https://localhost:{port}/cal/\r\n")),
        "{head}"
    );
    let (_, head) = curl(&[
        "--cacert",
        &ca,
        "-I",
        "--resolve",
        &format!("carddav.localhost:{port}:127.0.0.1"),
        &format!("https://carddav.localhost:{port}/.well-known/carddav"),
    ]);
    assert!(
        head.contains(" 301")
            && head
                .to_ascii_lowercase()
                .contains(&format!("location: https://carddav.localhost:{port}/\r\n")),
        "{head}"
    );
    // Refused credentials leave a line in the log at the default level, with the client's
    // address; so do credentials that are not Basic at all.
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &disk_url,
            "mallory:guess",
            &["-H", "Depth: 1"]
        ),
        "401"
    );
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &disk_url,
            "x:y",
            &["-H", "Authorization: Basic !!!", "-H", "Depth: 1"]
        ),
        "401"
    );
    let log = w.gateway.log();
    assert!(
        log.lines().any(|l| l.contains(" WARN ")
            && l.contains("peer=127.0.0.1:")
            && l.contains("login failed: address=127.0.0.1 login=\"mallory\"")
            && l.contains("reason=wrong-credentials")),
        "{log}"
    );
    assert!(log.contains("reason=malformed"), "{log}");
}

/// curl with `user:password` against the gateway; (status, body).
fn request(w: &World, method: &str, url: &str, user: &str, extra: &[&str]) -> (String, String) {
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let mut args = vec![
        "--cacert",
        &ca,
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "-u",
        user,
    ];
    args.extend_from_slice(extra);
    args.push(url);
    let (_, out) = curl(&args);
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.to_owned(), body.to_owned())
}

const VCARD: &str =
    "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c1\r\nFN:Carol Secret\r\nN:Secret;Carol;;;\r\nEND:VCARD\r\n";
const EVENT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\nUID:e1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260101T100000Z\r\nSUMMARY:Secret meeting\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

#[test]
fn a_calendar_password_reads_no_contacts_and_a_contacts_password_no_calendars() {
    let w = world(Options::default());
    let calendar = format!(
        "alice:{}",
        w.gateway.app_password("alice", "calendar", "Calendar")
    );
    let contacts = format!(
        "alice:{}",
        w.gateway.app_password("alice", "contacts", "Contacts")
    );
    let port = w.gateway.ports.http;
    let card = format!("https://localhost:{port}/card/alice@example.org");
    let cal = format!("https://localhost:{port}/cal/alice@example.org");
    let xml = ["-H", "Content-Type: application/xml"];

    // An address book and a contact, through the contacts route.
    let mkcol = r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><C:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>"#;
    let (code, body) = request(
        &w,
        "MKCOL",
        &format!("{card}/book/"),
        &contacts,
        &[&xml[..], &["--data-binary", mkcol]].concat(),
    );
    assert_eq!(code, "201", "{body}");
    let (code, body) = request(
        &w,
        "PUT",
        &format!("{card}/book/c1.vcf"),
        &contacts,
        &["-H", "Content-Type: text/vcard", "--data-binary", VCARD],
    );
    assert_eq!(code, "201", "{body}");
    // A calendar and an event, through the calendar route.
    let (code, body) = request(&w, "MKCALENDAR", &format!("{cal}/work/"), &calendar, &[]);
    assert_eq!(code, "201", "{body}");
    let (code, body) = request(
        &w,
        "PUT",
        &format!("{cal}/work/e1.ics"),
        &calendar,
        &["-H", "Content-Type: text/calendar", "--data-binary", EVENT],
    );
    assert_eq!(code, "201", "{body}");
    // Each is readable with its own password only.
    let (code, body) = request(&w, "GET", &format!("{card}/book/c1.vcf"), &contacts, &[]);
    assert_eq!(
        (code.as_str(), body.contains("Carol Secret")),
        ("200", true),
        "{body}"
    );
    let (code, body) = request(&w, "GET", &format!("{cal}/work/e1.ics"), &calendar, &[]);
    assert_eq!(
        (code.as_str(), body.contains("Secret meeting")),
        ("200", true),
        "{body}"
    );
    // The other service's route with the other service's password: nothing there, whatever
    // the method or the path form.
    for (route_base, secret, path) in [
        (&cal, &calendar, "book/c1.vcf"),
        (&cal, &calendar, "book/"),
        (&card, &contacts, "work/e1.ics"),
        (&card, &contacts, "work/"),
    ] {
        for method in ["GET", "PROPFIND", "REPORT"] {
            let (code, body) = request(
                &w,
                method,
                &format!("{route_base}/{path}"),
                secret,
                &["-H", "Depth: 1"],
            );
            assert!(
                !body.contains("Carol Secret") && !body.contains("Secret meeting"),
                "{method} {route_base}/{path}: {code} {body}"
            );
            assert!(
                code.starts_with('4'),
                "{method} {route_base}/{path}: {code} {body}"
            );
        }
    }
    // The hosts of the example configuration, too.
    let (code, body) = request(
        &w,
        "GET",
        &format!("https://caldav.localhost:{port}/alice@example.org/book/c1.vcf"),
        &calendar,
        &["--resolve", &format!("caldav.localhost:{port}:127.0.0.1")],
    );
    assert_eq!(code, "404", "{body}");
}

#[test]
fn every_user_sees_only_their_own_files() {
    let w = world(Options::default());
    w.gateway.create_account("bob", "bob main password");
    let alice = format!("alice:{}", w.gateway.app_password("alice", "disk", "Files"));
    let bob = format!("bob:{}", w.gateway.app_password("bob", "disk", "Files"));
    let base = format!("https://127.0.0.1:{}", w.gateway.ports.http);
    let (code, _) = request(
        &w,
        "PUT",
        &format!("{base}/diary.txt"),
        &alice,
        &["--data-binary", "alice's diary"],
    );
    assert_eq!(code, "201");
    let (code, _) = request(
        &w,
        "PUT",
        &format!("{base}/notes.txt"),
        &bob,
        &["--data-binary", "bob's notes"],
    );
    assert_eq!(code, "201");

    // bob lists, reads and deletes nothing of alice's. (Paths with dot segments are the
    // gateway's to refuse before they reach a backend: tests/dav_hostile.rs.)
    let (code, listing) = request(
        &w,
        "PROPFIND",
        &format!("{base}/"),
        &bob,
        &["-H", "Depth: 1"],
    );
    assert_eq!(code, "207");
    assert!(
        listing.contains("notes.txt") && !listing.contains("diary"),
        "{listing}"
    );
    for (method, path, extra) in [
        ("GET", "/diary.txt", vec![]),
        ("GET", "/alice@example.org/diary.txt", vec![]),
        ("DELETE", "/diary.txt", vec![]),
    ] {
        let (code, body) = request(&w, method, &format!("{base}{path}"), &bob, &extra);
        assert!(
            code.starts_with('4') && !body.contains("alice's diary"),
            "{method} {path}: {code} {body}"
        );
    }
    let (code, body) = request(&w, "GET", &format!("{base}/diary.txt"), &alice, &[]);
    assert_eq!((code.as_str(), body.as_str()), ("200", "alice's diary"));
    assert!(
        w.wsgidav
            .home("alice@example.org")
            .join("diary.txt")
            .exists()
    );
    assert!(w.wsgidav.home("bob@example.org").join("notes.txt").exists());
}

/// litmus's per-suite summary lines ("<- summary for `basic': of 16 tests run: 16 passed, 0 failed.").
fn litmus(url: &str, user: &str, password: &str) -> Vec<String> {
    require("litmus", "apt-get install litmus");
    // litmus writes debug.log and child.log into its working directory: a temporary one.
    let dir = open_tempdir();
    let out = Command::new("litmus")
        .args(["-k", url, user, password])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("litmus");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summaries: Vec<String> = text
        .lines()
        .filter(|l| l.contains("summary for"))
        .map(|l| l.trim_start_matches("<- ").trim().to_owned())
        .collect();
    assert!(!summaries.is_empty(), "litmus printed no summary:\n{text}");
    summaries
}

#[test]
fn litmus_scores_the_same_through_the_gateway_as_directly() {
    let w = world(Options::default());
    let disk = w.gateway.app_password("alice", "disk", "litmus");
    std::fs::create_dir_all(w.wsgidav.home("alice@example.org").join("litmus")).unwrap();
    // Directly against a wsgidav serving HTTPS too: litmus skips its expect100 test over TLS,
    // so only HTTPS against HTTPS compares like with like.
    let key = w.gateway.dir.path().join("certs/localhost.key");
    let direct_dav = Wsgidav::start_with(Some((&w.gateway.ca, &key)), false);
    std::fs::create_dir_all(direct_dav.root.join("litmus")).unwrap();
    let direct = litmus(
        &format!("https://127.0.0.1:{}/litmus/", direct_dav.port),
        "alice",
        "unused",
    );
    let through = litmus(
        &format!("https://127.0.0.1:{}/litmus/", w.gateway.ports.http),
        "alice",
        &disk,
    );
    eprintln!("litmus direct:  {direct:#?}\nlitmus through: {through:#?}");
    assert_eq!(direct, through, "litmus scores differ\n{}", w.gateway.log());
    // Tests write only to temporary folders.
    for file in ["debug.log", "child.log"] {
        assert!(
            !repo_path(file).exists(),
            "litmus wrote {file} into the repository"
        );
    }
    // Every suite passes in full directly, and so through the gateway.
    for suite in ["basic", "copymove", "props", "locks", "http"] {
        let line = through
            .iter()
            .find(|l| l.contains(&format!("`{suite}'")))
            .unwrap_or_else(|| panic!("suite {suite} did not run"));
        assert!(
            line.contains(" 0 failed") && line.contains("100.0%"),
            "{line}"
        );
    }
}

#[test]
fn python_caldav_creates_a_calendar_and_an_event_through_radicale() {
    require_python_module("caldav", "pip install caldav");
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "calendar", "Calendar app");
    let script = r#"
import caldav, sys, datetime
url, ca, user, password = sys.argv[1:5]
client = caldav.DAVClient(url=url, username=user, password=password, ssl_verify_cert=ca)
principal = client.principal()
calendar = principal.make_calendar(name="Work")
calendar.save_event(dtstart=datetime.datetime(2026, 12, 1, 10, 0), dtend=datetime.datetime(2026, 12, 1, 11, 0), summary="Gateway review", uid="gateway-review-1")
found = [c for c in principal.calendars() if c.name == "Work"][0]
events = found.events()
print("EVENTS", len(events))
event = found.event_by_uid("gateway-review-1")
print("SUMMARY", event.vobject_instance.vevent.summary.value)
"#;
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let url = format!("https://localhost:{}/cal/", w.gateway.ports.http);
    let out = python(script, &[&url, &ca, "alice", &secret]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", w.gateway.log());
    assert!(
        text.contains("EVENTS 1") && text.contains("SUMMARY Gateway review"),
        "{text}"
    );
    // The same through the host route, the path the RFC 6764 redirect gives.
    let resolve_script = format!(
        "import socket\n_orig = socket.getaddrinfo\nsocket.getaddrinfo = lambda h, *a, **k: _orig('127.0.0.1' if h.endswith('.localhost') else h, *a, **k)\n{script}"
    );
    let url = format!("https://caldav.localhost:{}/", w.gateway.ports.http);
    let out = python(
        &resolve_script
            .replace(
                "make_calendar(name=\"Work\")",
                "make_calendar(name=\"Home\")",
            )
            .replace("c.name == \"Work\"", "c.name == \"Home\""),
        &[&url, &ca, "alice", &secret],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("EVENTS 1"), "{text}");
}

#[test]
fn vdirsyncer_creates_an_address_book_and_uploads_a_contact() {
    require("vdirsyncer", "pip install vdirsyncer");
    let w = world(Options::default());
    let secret = w.gateway.app_password("alice", "contacts", "Address book");
    let dir = open_tempdir();
    let local = dir.path().join("contacts");
    std::fs::create_dir_all(local.join("friends")).unwrap();
    std::fs::write(
        local.join("friends/carol.vcf"),
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:carol-1\r\nFN:Carol Example\r\nEMAIL:carol@example.net\r\nEND:VCARD\r\n",
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            r#"[general]
status_path = "{status}"

[pair contacts]
a = "local"
b = "gateway"
collections = ["from a"]

[storage local]
type = "filesystem"
path = "{local}"
fileext = ".vcf"

[storage gateway]
type = "carddav"
url = "https://localhost:{port}/card/"
username = "alice"
password = "{secret}"
verify = "{ca}"
"#,
            status = dir.path().join("status").display(),
            local = local.display(),
            port = w.gateway.ports.http,
            ca = w.gateway.ca.display(),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("vdirsyncer")
            .arg("-c")
            .arg(&config)
            .args(args)
            .stdin(Stdio::piped())
            .output()
            .expect("vdirsyncer");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "vdirsyncer {args:?}: {text}\n{}",
            w.gateway.log()
        );
        text
    };
    // `discover` creates the address book on the server (the answer to its question is "y").
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("yes | vdirsyncer -c {} discover", config.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    run(&["sync"]);
    // The contact is on the server: fetch it back through the gateway.
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let (ok, listing) = curl(&[
        "--cacert",
        &ca,
        "-u",
        &format!("alice:{secret}"),
        "-X",
        "PROPFIND",
        "-H",
        "Depth: 1",
        &format!(
            "https://localhost:{}/card/alice@example.org/friends/",
            w.gateway.ports.http
        ),
    ]);
    assert!(ok && listing.contains(".vcf"), "{listing}");
    let href = listing
        .split("<D:href>")
        .chain(listing.split("<href>"))
        .filter_map(|s| s.split('<').next())
        .find(|h| h.ends_with(".vcf"))
        .expect("a vcard href")
        .to_owned();
    let (ok, card) = curl(&[
        "--cacert",
        &ca,
        "-u",
        &format!("alice:{secret}"),
        &format!("https://localhost:{}{href}", w.gateway.ports.http),
    ]);
    assert!(ok && card.contains("FN:Carol Example"), "{card}");
}

#[test]
fn a_large_file_streams_both_ways_in_constant_memory() {
    let w = world(Options::default());
    let disk = w.gateway.app_password("alice", "disk", "Backup");
    let dir = open_tempdir();
    let file = dir.path().join("big.bin");
    // 300 MiB of pseudo-random bytes.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 314572800 /dev/urandom > {}",
            file.display()
        ))
        .status()
        .unwrap();
    assert!(out.success());
    let sha = |path: &std::path::Path| {
        let out = Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    let original = sha(&file);
    let pid = w.gateway.pid();
    let before = peak_rss_kib(pid);
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let url = format!("https://127.0.0.1:{}/big.bin", w.gateway.ports.http);
    let user = format!("alice:{disk}");
    let (ok, out) = curl(&[
        "--cacert",
        &ca,
        "-u",
        &user,
        "-T",
        &file.to_string_lossy(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert!(ok && out.trim() == "201", "{out}");
    assert_eq!(
        sha(&w.wsgidav.home("alice@example.org").join("big.bin")),
        original
    );
    let back = dir.path().join("back.bin");
    let (ok, out) = curl(&[
        "--cacert",
        &ca,
        "-u",
        &user,
        "-o",
        &back.to_string_lossy(),
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert!(ok && out.trim() == "200", "{out}");
    assert_eq!(sha(&back), original);
    let after = peak_rss_kib(pid);
    eprintln!("gateway peak RSS: {before} KiB before, {after} KiB after 300 MiB up and down");
    assert!(
        after < before + 64 * 1024,
        "peak memory grew from {before} to {after} KiB"
    );
}

#[test]
fn revocation_from_the_cli_refuses_the_next_request_and_closes_kept_alive_connections() {
    let w = world(Options::default());
    let disk = w.gateway.app_password("alice", "disk", "Old laptop");
    let id = w.gateway.newest_app_password_id("alice");
    let script = r#"
import http.client, ssl, sys, base64, time
port, ca, user, password = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
conn = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx)
auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
conn.request("PROPFIND", "/", headers={"Authorization": auth, "Depth": "0"})
r = conn.getresponse(); r.read()
print("FIRST", r.status, flush=True)
line = sys.stdin.readline()
start = time.monotonic()
# Wait for the gateway to close the kept-alive connection.
conn.sock.settimeout(3)
try:
    data = conn.sock.recv(1)
    print("CLOSED" if data == b"" else "DATA", round(time.monotonic() - start, 3), flush=True)
except Exception as e:
    print("OPEN", type(e).__name__, flush=True)
"#;
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            &w.gateway.ports.http.to_string(),
            &ca,
            "alice",
            &disk,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, Write};
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "FIRST 207");
    w.gateway
        .cli_ok(&["app-password", "revoke", "alice", &id.to_string()], None);
    let revoked = Instant::now();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let verdict = lines.next().unwrap().unwrap();
    eprintln!(
        "kept-alive connection after revocation: {verdict} ({:?} after the CLI returned)",
        revoked.elapsed()
    );
    assert!(verdict.starts_with("CLOSED"), "{verdict}");
    assert!(revoked.elapsed() < Duration::from_secs(2));
    let _ = child.wait();
    let url = format!("https://127.0.0.1:{}/", w.gateway.ports.http);
    assert_eq!(
        status(
            &w,
            "PROPFIND",
            &url,
            &format!("alice:{disk}"),
            &["-H", "Depth: 0"]
        ),
        "401"
    );
}

/// The backend timeout (5 s here) bounds the backend's silence, not the upload: a PUT that
/// takes 8 s at the client's pace is stored, where a deadline from the request's start would
/// have answered 504 halfway.
#[test]
fn an_upload_slower_than_the_backend_timeout_is_stored() {
    let w = world(Options::default());
    let disk = w.gateway.app_password("alice", "disk", "Backup");
    let dir = open_tempdir();
    let file = dir.path().join("slow.bin");
    std::fs::write(&file, vec![7u8; 4 * 1024 * 1024]).expect("write");
    let ca = w.gateway.ca.to_string_lossy().into_owned();
    let started = Instant::now();
    let (ok, out) = curl(&[
        "--cacert",
        &ca,
        "-u",
        &format!("alice:{disk}"),
        "--limit-rate",
        "512K",
        "-T",
        &file.to_string_lossy(),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://127.0.0.1:{}/slow.bin", w.gateway.ports.http),
    ]);
    let took = started.elapsed();
    assert!(
        ok && out.trim() == "201",
        "{out} after {took:?}\n{}",
        w.gateway.log()
    );
    assert!(
        took > Duration::from_secs(6),
        "the upload was not slow: {took:?}"
    );
    let stored = std::fs::metadata(w.wsgidav.home("alice@example.org").join("slow.bin"))
        .expect("stored")
        .len();
    assert_eq!(stored, 4 * 1024 * 1024);
}
