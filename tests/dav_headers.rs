//! What the backend receives: a small HTTP server written in the test echoes each request it
//! gets (a fake backend is fine for this unit of logic; the real servers are in dav_e2e.rs).

mod common;

use std::process::{Child, Command, Stdio};

use common::*;

const ECHO: &str = r#"
import http.server, json, sys
port = int(sys.argv[1])
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def answer(self):
        if "slow" in self.path:
            import time
            time.sleep(1)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = json.dumps({"method": self.command, "path": self.path,
                          "headers": [[k.lower(), v] for k, v in self.headers.items()],
                          "body": body.decode("latin-1")}).encode()
        self.send_response(201 if self.command in ("MKCOL", "MKCALENDAR") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Location", f"http://127.0.0.1:{port}/dav/created/here")
        self.send_header("Connection", "keep-alive, X-Backend-Private")
        self.send_header("X-Backend-Private", "secret")
        self.end_headers()
        self.wfile.write(out)
for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PROPFIND", "PROPPATCH", "MKCOL", "COPY",
          "MOVE", "LOCK", "UNLOCK", "REPORT", "MKCALENDAR", "ACL", "POST"]:
    setattr(Echo, "do_" + m, Echo.answer)
http.server.ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
"#;

/// The echo server's process, and the folder of its log (removed with it).
struct Echo(Child, #[allow(dead_code)] tempfile::TempDir);

fn start_echo() -> (u16, Echo) {
    let port = free_port();
    let dir = open_tempdir();
    let log = dir.path().join("echo.log");
    let mut child = Command::new("python3")
        .args(["-c", ECHO, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(port, "echo backend", &mut child, &log);
    (port, Echo(child, dir))
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_backend_sees_the_login_not_the_credentials_and_forwarding_headers_are_ours() {
    let (port, _echo) = start_echo();
    let tail = format!(
        r#"
[[listener]]
protocol = "http"
address = "127.0.0.1:{{http}}"
tls = "implicit"
  [[listener.route]]
  path_prefix = "/files"
  service = "disk"
  backend = "echo"
  [[listener.route]]
  path_prefix = "/cal"
  service = "calendar"
  backend = "echo"
  [[listener.route]]
  host = "root.localhost"
  service = "disk"
  backend = "echo"
[backend.echo]
url = "http://127.0.0.1:{port}/dav/"
login = "trusted-header"
header = "X-Remote-User"
strip_domain = true
# One echo server behind both routes, knowingly: it serves no data, it reports what it got.
shared_between_services = true
"#
    );
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let disk = gateway.app_password("alice", "disk", "t");
    let calendar = gateway.app_password("alice", "calendar", "t");
    let ca = gateway.ca.to_string_lossy().into_owned();
    let base = format!("https://localhost:{}", gateway.ports.http);

    let request =
        |method: &str, path: &str, secret: &str, extra: &[&str]| -> (serde_json::Value, String) {
            let mut args = vec![
                "-sS".to_owned(),
                "--http1.1".to_owned(),
                "--cacert".to_owned(),
                ca.clone(),
                "-D".to_owned(),
                "-".to_owned(),
                "-X".to_owned(),
                method.to_owned(),
                "-u".to_owned(),
                format!("alice:{secret}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args.push(format!("{base}{path}"));
            let out = Command::new("curl").args(&args).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let json =
                serde_json::from_str(body).unwrap_or_else(|_| panic!("{method} {path}: {text}"));
            (json, head.to_owned())
        };
    let header = |json: &serde_json::Value, name: &str| -> Vec<String> {
        json["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap_or("").to_owned())
            .collect()
    };

    let (seen, head) = request(
        "MOVE",
        "/files/a/b.txt?x=1",
        &disk,
        &[
            "-H",
            "X-Remote-User: bob",
            "-H",
            "x-remote-user: mallory",
            "-H",
            "X-Forwarded-For: 10.9.9.9",
            "-H",
            "Forwarded: for=10.9.9.9",
            "-H",
            "Connection: keep-alive, X-Client-Private",
            "-H",
            "X-Client-Private: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            &format!("Destination: {base}/files/c/d.txt"),
            "-H",
            "Depth: infinity",
            "-H",
            "X-Script-Name: /elsewhere",
        ],
    );
    assert_eq!(seen["method"], "MOVE");
    // The route prefix /files is replaced by the backend URL's /dav; the query stays.
    assert_eq!(seen["path"], "/dav/a/b.txt?x=1");
    assert_eq!(
        header(&seen, "x-remote-user"),
        vec!["alice"],
        "strip_domain gives the local part"
    );
    assert!(
        header(&seen, "authorization").is_empty(),
        "the client's credentials reached the backend"
    );
    assert_eq!(header(&seen, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(header(&seen, "forwarded").len(), 1);
    // RFC 7239: a host with a port is not a token, so it is quoted.
    assert_eq!(
        header(&seen, "forwarded"),
        vec![format!(
            "for=127.0.0.1;proto=https;host=\"localhost:{}\"",
            gateway.ports.http
        )]
    );
    assert!(header(&seen, "x-client-private").is_empty() && header(&seen, "keep-alive").is_empty());
    assert_eq!(header(&seen, "depth"), vec!["infinity"]);
    assert_eq!(
        header(&seen, "destination"),
        vec![format!("http://127.0.0.1:{port}/dav/c/d.txt")]
    );
    assert_eq!(header(&seen, "host"), vec![format!("127.0.0.1:{port}")]);
    assert_eq!(header(&seen, "x-script-name"), vec!["/files"]);
    // On the way back: Location under the public origin, the backend's private header gone.
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(&format!("location: {base}/files/created/here")),
        "{head}"
    );
    assert!(!head.contains("x-backend-private"), "{head}");
    // On a route at the root the backend gets no script name, least of all the client's.
    let (seen, _) = request(
        "GET",
        "/x.txt",
        &disk,
        &[
            "--resolve",
            &format!("root.localhost:{}:127.0.0.1", gateway.ports.http),
            "-H",
            &format!("Host: root.localhost:{}", gateway.ports.http),
            "-H",
            "X-Script-Name: /elsewhere",
        ],
    );
    assert_eq!(seen["path"], "/dav/x.txt");
    assert!(header(&seen, "x-script-name").is_empty(), "{seen}");

    // Every DAV method passes through, with its body.
    for method in [
        "OPTIONS",
        "GET",
        "PUT",
        "DELETE",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "COPY",
        "LOCK",
        "UNLOCK",
        "REPORT",
        "ACL",
    ] {
        let (seen, _) = request(
            method,
            "/files/x",
            &disk,
            &[
                "--data-binary",
                "<body/>",
                "-H",
                "Content-Type: application/xml",
            ],
        );
        assert_eq!(seen["method"], method);
        assert_eq!(seen["body"], "<body/>", "{method}");
    }
    for method in ["MKCALENDAR", "MKCOL", "REPORT"] {
        let (seen, _) = request(
            method,
            "/cal/alice/work/",
            &calendar,
            &["--data-binary", "<c/>"],
        );
        assert_eq!(seen["method"], method);
        assert_eq!(seen["path"], "/dav/alice/work/");
    }
}

#[test]
fn a_path_or_destination_cannot_leave_its_route() {
    // Two routes on one host leading to one server under different base paths, the layout of
    // Nextcloud-style servers.
    let (port, _echo) = start_echo();
    let tail = format!(
        r#"
[[listener]]
protocol = "http"
address = "127.0.0.1:{{http}}"
tls = "implicit"
  [[listener.route]]
  path_prefix = "/dav"
  service = "disk"
  backend = "files"
  [[listener.route]]
  path_prefix = "/cal"
  service = "calendar"
  backend = "calendars"
[backend.files]
url = "http://127.0.0.1:{port}/disk/"
login = "trusted-header"
shared_between_services = true
[backend.calendars]
url = "http://127.0.0.1:{port}/cal/"
login = "trusted-header"
shared_between_services = true
"#
    );
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let disk = gateway.app_password("alice", "disk", "t");
    let ca = gateway.ca.to_string_lossy().into_owned();
    let base = format!("https://localhost:{}", gateway.ports.http);
    // (status, what the echo backend saw).
    let send = |method: &str, path: &str, extra: &[&str]| -> (String, String) {
        let mut args = vec![
            "-sS".to_owned(),
            "--http1.1".to_owned(),
            "--path-as-is".to_owned(),
            "--cacert".to_owned(),
            ca.clone(),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
            "-X".to_owned(),
            method.to_owned(),
            "-u".to_owned(),
            format!("alice:{disk}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("{base}{path}"));
        let out = Command::new("curl").args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_owned(), body.to_owned())
    };

    // Dot segments are resolved before routing: out of /dav they land in /cal, where a disk
    // password is refused, whatever the method.
    for method in [
        "GET", "PUT", "DELETE", "PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK",
    ] {
        for path in [
            "/dav/../cal/secret.ics",
            "/dav/./x/../../cal/secret.ics",
            "//dav/..//cal/secret.ics",
        ] {
            let (code, body) = send(method, path, &[]);
            assert_eq!(code, "401", "{method} {path}: {body}");
        }
    }
    // What does not normalise cleanly is refused before anything else.
    for path in [
        "/dav/%2e%2e/cal/secret.ics",
        "/dav/.%2E/cal/secret.ics",
        "/dav/..%2fcal/secret.ics",
        "/dav%2F..%2Fcal/secret.ics",
        "/dav/..\\cal/secret.ics",
        "/dav/%5c../cal/secret.ics",
        "/dav/%00/x",
    ] {
        let (code, body) = send("GET", path, &[]);
        assert_eq!(code, "400", "{path}: {body}");
    }
    // Inside the route the backend gets exactly the path that was routed.
    let (code, body) = send("GET", "/dav/a/./b/../c//d%7e.txt", &[]);
    assert_eq!(code, "200", "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["path"], "/disk/a/c/d~.txt");

    // Destination: rewritten for the backend when it stays in the route, refused otherwise.
    let destination = |value: &str| {
        send(
            "MOVE",
            "/dav/a.txt",
            &["-H", &format!("Destination: {value}")],
        )
    };
    for (value, want) in [
        (format!("{base}/dav/b.txt"), "/disk/b.txt"),
        (format!("{base}/dav/x/../b.txt"), "/disk/b.txt"),
        ("/dav/c%20d.txt".to_owned(), "/disk/c%20d.txt"),
    ] {
        let (code, body) = destination(&value);
        assert_eq!(code, "200", "{value}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        let headers = seen["headers"].as_array().unwrap();
        let got: Vec<&str> = headers
            .iter()
            .filter(|h| h[0] == "destination")
            .filter_map(|h| h[1].as_str())
            .collect();
        assert_eq!(
            got,
            vec![format!("http://127.0.0.1:{port}{want}")],
            "{value}"
        );
    }
    for value in [
        format!("{base}/cal/secret.ics"),
        format!("{base}/dav/../cal/secret.ics"),
        "/cal/secret.ics".to_owned(),
        "https://elsewhere.example/dav/b.txt".to_owned(),
        format!("http://localhost:{}/dav/b.txt", gateway.ports.http),
    ] {
        let (code, body) = destination(&value);
        assert_eq!(code, "502", "{value}: {body}");
    }
    for value in [
        format!("{base}/dav/%2e%2e/cal/x"),
        "not a uri at all".to_owned(),
    ] {
        let (code, body) = destination(&value);
        assert_eq!(code, "400", "{value}: {body}");
    }
}

#[test]
fn max_connections_bounds_requests_in_flight_to_a_backend() {
    let (port, _echo) = start_echo();
    let tail = format!(
        r#"
[[listener]]
protocol = "http"
address = "127.0.0.1:{{http}}"
tls = "implicit"
  [[listener.route]]
  service = "disk"
  backend = "echo"
[backend.echo]
url = "http://127.0.0.1:{port}/"
login = "trusted-header"
max_connections = 1
"#
    );
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail,
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let disk = gateway.app_password("alice", "disk", "t");
    let ca = gateway.ca.to_string_lossy().into_owned();
    let url = format!("https://localhost:{}/slow", gateway.ports.http);
    let start = std::time::Instant::now();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "--cacert",
                    &ca,
                    "-u",
                    &format!("alice:{disk}"),
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &url,
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    // Each takes a second at the backend; one at a time, two take at least two.
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}
