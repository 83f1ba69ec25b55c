//! Test harness: real peers (Dovecot, an aiosmtpd sink), the real portcullis binary, and real
//! clients (python's imaplib/smtplib, curl, openssl), each on loopback ports of its own and
//! stopped by PID when the test ends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const MASTER_PASSWORD: &str = "master-secret-for-tests";

/// A free loopback port (bound and released; peers bind it right after). The kernel may hand
/// a released port out again at once, so ports this test process has already given out are
/// skipped: two listeners of one test never get the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Fails the test with an install hint when a peer is missing.
pub fn require(program: &str, install: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed; install it with: {install} (bash .ci/run does)"
    );
}

pub fn require_python_module(module: &str, install: &str) {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "python module {module} is missing; install it with: {install} (bash .ci/run does)"
    );
}

/// Waits until something accepts on `port`.
pub fn wait_for_port(port: u16, what: &str, child: &mut Child, log: &Path) {
    wait_for_port_on("127.0.0.1", port, what, child, log);
}

/// Waits until `what` listens on `host:port` (failing with its log if it exits first).
pub fn wait_for_port_on(host: &str, port: u16, what: &str, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect((host, port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening:\n{}",
                read_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on {port}:\n{}", read_log(log));
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A private folder the dovecot user can traverse.
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    set_mode(dir.path(), 0o755);
    dir
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// An SMTP sink (aiosmtpd) that stores every message in a maildir.
pub struct SmtpSink {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn start() -> Self {
        require("python3", "apt-get install python3");
        require_python_module("aiosmtpd", "pip install aiosmtpd");
        let dir = open_tempdir();
        let port = free_port();
        let maildir = dir.path().join("maildir");
        let log = dir.path().join("sink.log");
        let mut child = Command::new("python3")
            .args([
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start aiosmtpd");
        wait_for_port(port, "aiosmtpd", &mut child, &log);
        Self {
            child,
            port,
            maildir,
            _dir: dir,
        }
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for entry in entries.flatten() {
                    out.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn wait_for_message(&self, needle: &str) -> String {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(m) = self.messages().into_iter().find(|m| m.contains(needle)) {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no message containing {needle:?} reached the sink");
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A real Dovecot with IMAP and submission, a master user for the gateway, and the given users.
/// An SMS gateway's webhook: a Python HTTP server on loopback that appends every POSTed body
/// as one line to `log` and answers 204.
pub struct SmsWebhook {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmsWebhook {
    pub fn start() -> Self {
        require("python3", "apt-get install python3");
        let dir = open_tempdir();
        let port = free_port();
        let log = dir.path().join("sms.jsonl");
        let stderr = dir.path().join("webhook.log");
        let script = r#"
import http.server, sys
port, log = int(sys.argv[1]), sys.argv[2]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.headers["Content-Type"] == "application/json"
        with open(log, "ab") as f:
            f.write(body + b"\n")
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), Hook).serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("log"))
            .spawn()
            .expect("start the webhook");
        wait_for_port(port, "SMS webhook", &mut child, &stderr);
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }
}

impl Drop for SmsWebhook {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A real authoritative DNS server (dnslib's, UDP and TCP) on loopback, answering TXT queries
/// from a JSON file the test rewrites between steps.
pub struct DnsServer {
    child: Child,
    pub port: u16,
    records: PathBuf,
    _dir: tempfile::TempDir,
}

impl DnsServer {
    pub fn start() -> Self {
        require("python3", "apt-get install python3");
        require_python_module("dnslib", "pip install dnslib");
        let dir = open_tempdir();
        let port = free_port();
        let records = dir.path().join("records.json");
        std::fs::write(&records, "{}").expect("write");
        let log = dir.path().join("dns.log");
        let script = r#"
import json, sys, time
from dnslib import RR, QTYPE, RCODE, TXT
from dnslib.server import BaseResolver, DNSServer
port, path = int(sys.argv[1]), sys.argv[2]
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        with open(path) as f:
            records = json.load(f)
        if name not in records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for value in records[name]:
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(value), ttl=0))
        return reply
for tcp in (False, True):
    DNSServer(Zone(), port=port, address="127.0.0.1", tcp=tcp).start_thread()
while True:
    time.sleep(3600)
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .arg(&records)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the DNS server");
        // TCP is served too: wait for it.
        wait_for_port(port, "DNS server", &mut child, &log);
        Self {
            child,
            port,
            records,
            _dir: dir,
        }
    }

    /// The JSON file the server answers from (a test script may write it too).
    pub fn records(&self) -> &Path {
        &self.records
    }

    /// Serves exactly these TXT records from now on (name -> values).
    pub fn set_txt(&self, records: &[(&str, &[&str])]) {
        let map: std::collections::BTreeMap<String, Vec<String>> = records
            .iter()
            .map(|(name, values)| {
                (
                    name.to_lowercase(),
                    values.iter().map(|v| (*v).to_owned()).collect(),
                )
            })
            .collect();
        let tmp = self.records.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_string(&map).expect("json")).expect("write");
        std::fs::rename(&tmp, &self.records).expect("rename");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

pub struct Dovecot {
    child: Child,
    pub imap_port: u16,
    /// Implicit-TLS IMAP, when started with a certificate (for direct-login baselines).
    pub imaps_port: Option<u16>,
    pub submission_port: u16,
    pub pop3_port: u16,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

/// The password every Dovecot test user has for direct logins (behind the gateway the master
/// user is used instead).
pub const USER_PASSWORD: &str = "not-used-behind-the-gateway";

impl Dovecot {
    pub fn start(relay_port: u16, users: &[&str]) -> Self {
        Self::start_with_tls(relay_port, users, None)
    }

    /// Also serves implicit-TLS IMAP with `cert` and `key` (PEM).
    pub fn start_with_tls(relay_port: u16, users: &[&str], tls: Option<(&Path, &Path)>) -> Self {
        require(
            "dovecot",
            "apt-get install dovecot-imapd dovecot-submissiond dovecot-pop3d",
        );
        assert!(
            Path::new("/usr/lib/dovecot/pop3").exists(),
            "Dovecot's POP3 server is missing: apt-get install dovecot-pop3d (or scripts/setup-peers.sh)"
        );
        let dir = open_tempdir();
        let root = dir.path();
        let imap_port = free_port();
        let submission_port = free_port();
        let pop3_port = free_port();
        for sub in ["run", "mail"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        set_mode(&root.join("mail"), 0o777);
        std::fs::write(
            root.join("master-users"),
            format!("portcullis:{{PLAIN}}{MASTER_PASSWORD}\n"),
        )
        .expect("write");
        let users_file: String = users
            .iter()
            .map(|u| format!("{u}:{{PLAIN}}{USER_PASSWORD}\n"))
            .collect();
        std::fs::write(root.join("users"), users_file).expect("write");
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("t")
            .replace('.', "");
        let imaps_port = tls.map(|_| free_port());
        let (ssl, imaps) = match (tls, imaps_port) {
            (Some((cert, key)), Some(port)) => (
                format!(
                    "ssl = yes\nssl_cert = <{}\nssl_key = <{}",
                    cert.display(),
                    key.display()
                ),
                format!("address = 127.0.0.1\n    port = {port}"),
            ),
            _ => ("ssl = no".to_owned(), "port = 0".to_owned()),
        };
        let conf = format!(
            r#"protocols = imap submission pop3
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/run/state
instance_name = portcullis-test-{name}
log_path = /dev/stderr
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_master_user_separator = *
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
mail_max_userip_connections = 1000
mail_location = maildir:{root}/mail/%u
default_login_user = dovenull
default_internal_user = dovecot
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/master-users
  master = yes
  pass = yes
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}/mail/%u allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
service submission-login {{
  inet_listener submission {{
    address = 127.0.0.1
    port = {submission_port}
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
submission_relay_trusted = yes
hostname = dovecot.test
"#,
            root = root.display()
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).expect("write conf");
        let log = root.join("dovecot.log");
        let mut child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start dovecot");
        wait_for_port(imap_port, "dovecot", &mut child, &log);
        wait_for_port(submission_port, "dovecot submission", &mut child, &log);
        wait_for_port(pop3_port, "dovecot pop3", &mut child, &log);
        if let Some(port) = imaps_port {
            wait_for_port(port, "dovecot imaps", &mut child, &log);
        }
        Self {
            child,
            imap_port,
            imaps_port,
            submission_port,
            pop3_port,
            dir,
            log,
        }
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Stops Dovecot (to test a backend that is down).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Stops Dovecot as `systemctl restart` does (SIGTERM: the master ends its login and mail
    /// processes too) and starts it again on the same ports.
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let conf_path = self.dir.path().join("dovecot.conf");
        self.child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).expect("log"))
            .spawn()
            .expect("start dovecot");
        wait_for_port(self.imap_port, "dovecot", &mut self.child, &self.log);
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Ports of a running gateway.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The HTTP listener's port, when `Options::tail` declares one.
    pub http: u16,
    pub imap: u16,
    pub imaps: u16,
    pub submission: u16,
    pub submissions: u16,
}

/// Knobs for the gateway config in tests.
pub struct Options {
    pub failure_delay_ms: u64,
    pub max_connections: usize,
    pub login_timeout_secs: u64,
    pub backend_timeout_secs: u64,
    pub extra: String,
    /// RUST_LOG for the gateway.
    pub log_filter: &'static str,
    /// More `[limits]` keys.
    pub limits: String,
    /// More `[auth]` keys.
    pub auth: String,
    /// Appended to the configuration (more listeners and backends); `{http}` is replaced by
    /// the HTTP listener's port.
    pub tail: String,
    /// Run the gateway under this open-file limit (`SOFT:HARD`, as prlimit takes it).
    pub open_files: Option<&'static str>,
    /// Another node's store URL, to share its database (default: a database of its own).
    pub store: Option<String>,
    /// Use this node's certificate and key (nodes behind one load balancer share them).
    pub certs_from: Option<PathBuf>,
    /// More `[tls]` keys, and `[[tls.certificate]]` tables after them; `{dir}` is replaced by
    /// the gateway's folder. The development certificate stays the single one unless this
    /// names `certificate`.
    pub tls: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            failure_delay_ms: 250,
            max_connections: 1000,
            login_timeout_secs: 30,
            backend_timeout_secs: 5,
            extra: String::new(),
            log_filter: "info,portcullis=debug",
            tail: String::new(),
            limits: String::new(),
            auth: String::new(),
            open_files: None,
            store: None,
            certs_from: None,
            tls: String::new(),
        }
    }
}

/// The real portcullis binary, serving the four mail listeners in front of `backend`.
pub struct Gateway {
    child: Option<Child>,
    has_http: bool,
    pub ports: Ports,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ca: PathBuf,
    log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

impl Gateway {
    pub fn start(imap_backend: u16, submission_backend: u16, options: Options) -> Self {
        let dir = open_tempdir();
        let root = dir.path();
        let ports = Ports {
            http: free_port(),
            imap: free_port(),
            imaps: free_port(),
            submission: free_port(),
            submissions: free_port(),
        };
        std::fs::write(root.join("master.secret"), format!("{MASTER_PASSWORD}\n")).expect("write");
        set_mode(&root.join("master.secret"), 0o600);
        std::fs::write(
            root.join("portal.secret"),
            "a test key of more than thirty-two characters\n",
        )
        .expect("write");
        set_mode(&root.join("portal.secret"), 0o600);
        let config = root.join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                r#"default_domain = "example.org"
hostname = "gateway.test"
{extra}
[store]
url = "{store}"
feed_interval_ms = 50
secret_key_file = "{root}/portal.secret"

[tls]
{tls}

[auth]
failure_delay_ms = {delay}
max_failures = 3
{auth}

[limits]
max_connections = {maxconn}
login_timeout_secs = {login_timeout}
handshake_timeout_secs = 5
shutdown_grace_secs = 5
{limits}

[[listener]]
protocol = "imap"
address = "127.0.0.1:{imap}"
tls = "starttls"
backend = "imap"

[[listener]]
protocol = "imap"
address = "127.0.0.1:{imaps}"
tls = "implicit"
backend = "imap"

[[listener]]
protocol = "submission"
address = "127.0.0.1:{submission}"
tls = "starttls"
backend = "submission"

[[listener]]
protocol = "submission"
address = "127.0.0.1:{submissions}"
tls = "implicit"
backend = "submission"

[backend.imap]
address = "127.0.0.1:{imap_backend}"
tls = "none"
login = "master-user"
master_user = "portcullis"
master_password_file = "{root}/master.secret"
timeout_secs = {backend_timeout}

[backend.submission]
address = "127.0.0.1:{submission_backend}"
tls = "none"
login = "master-user"
master_user = "portcullis"
master_password_file = "{root}/master.secret"
timeout_secs = {backend_timeout}
{tail}
"#,
                store = options
                    .store
                    .clone()
                    .unwrap_or_else(|| format!("sqlite://{}/data/portcullis.db", root.display())),
                tail = options
                    .tail
                    .replace("{http}", &ports.http.to_string())
                    .replace("{dir}", &root.display().to_string()),
                tls = if options.tls.contains("certificate") {
                    options.tls.replace("{dir}", &root.display().to_string())
                } else {
                    format!(
                        "certificate = \"{root}/certs/localhost.crt\"\nprivate_key = \"{root}/certs/localhost.key\"\n{}",
                        options.tls,
                        root = root.display()
                    )
                },
                limits = options.limits,
                auth = options.auth,
                root = root.display(),
                extra = options.extra.replace("{dir}", &root.display().to_string()),
                delay = options.failure_delay_ms,
                maxconn = options.max_connections,
                login_timeout = options.login_timeout_secs,
                backend_timeout = options.backend_timeout_secs,
                imap = ports.imap,
                imaps = ports.imaps,
                submission = ports.submission,
                submissions = ports.submissions,
            ),
        )
        .expect("write config");
        let mut gateway = Self {
            child: None,
            has_http: options.tail.contains("{http}"),
            ports,
            ca: root.join("certs/localhost.crt"),
            config,
            log: root.join("gateway.log"),
            dir,
        };
        if let Some(from) = &options.certs_from {
            let certs = gateway.dir.path().join("certs");
            std::fs::create_dir_all(&certs).expect("certs dir");
            for file in ["localhost.crt", "localhost.key"] {
                std::fs::copy(from.join(file), certs.join(file)).expect("copy cert");
            }
        } else if !options.tls.contains("certificate") {
            let out = gateway.cli(&["dev-cert"], None);
            assert!(
                out.status.success(),
                "dev-cert failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        gateway.spawn(options.log_filter, options.open_files);
        gateway
    }

    fn spawn(&mut self, log_filter: &str, open_files: Option<&str>) {
        let mut command = match open_files {
            Some(limit) => {
                require("prlimit", "apt-get install util-linux");
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={limit}")).arg("--").arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let mut child = command
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.log)
                    .expect("log"),
            )
            .spawn()
            .expect("start portcullis");
        let http = self.has_http.then_some(self.ports.http);
        for port in [
            self.ports.imap,
            self.ports.imaps,
            self.ports.submission,
            self.ports.submissions,
        ]
        .into_iter()
        .chain(http)
        {
            wait_for_port(port, "portcullis", &mut child, &self.log);
        }
        self.child = Some(child);
    }

    /// An imaplib login (and SELECT, LOGOUT) on the implicit-TLS listener from the loopback
    /// address `source`: `LOGIN OK`, or `FAILED` and why.
    pub fn imap_from(&self, source: &str, user: &str, password: &str) -> String {
        python_ok(
            IMAP_FROM,
            &[
                source,
                "127.0.0.1",
                &self.ports.imaps.to_string(),
                &self.ca.to_string_lossy(),
                user,
                password,
                "",
            ],
        )
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for the exit; returns the exit status's success.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut child);
        false
    }

    /// Runs the CLI against this gateway's configuration, as a separate process.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run portcullis cli");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.unwrap_or("").as_bytes());
        }
        child.wait_with_output().expect("cli output")
    }

    pub fn cli_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "portcullis {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn create_account(&self, login: &str, password: &str) {
        self.cli_ok(
            &["account", "create", login],
            Some(&format!("{password}\n")),
        );
    }

    /// Makes an app password and returns it.
    pub fn app_password(&self, login: &str, service: &str, name: &str) -> String {
        let out = self.cli_ok(
            &[
                "app-password",
                "create",
                login,
                "--service",
                service,
                "--name",
                name,
            ],
            None,
        );
        let secret = out.trim().to_owned();
        assert_eq!(secret.len(), 16, "unexpected app password output {out:?}");
        secret
    }

    /// The id of the newest app password of `login`.
    pub fn newest_app_password_id(&self, login: &str) -> i64 {
        let out = self.cli_ok(&["app-password", "list", login, "--json"], None);
        let list: serde_json::Value = serde_json::from_str(&out).expect("json");
        list[0]["id"].as_i64().expect("id")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child);
        }
    }
}

/// Runs a python script with `args` as sys.argv[1:]; returns its output.
pub fn python(script: &str, args: &[&str]) -> Output {
    require("python3", "apt-get install python3");
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3")
}

pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = python(script, args);
    assert!(
        out.status.success(),
        "python failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw TCP client speaking lines, for protocol-level tests.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Raw {
    pub fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Self {
            writer: stream.try_clone().expect("clone"),
            reader: BufReader::new(stream),
        }
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read line");
        line
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Reads until EOF (or the timeout); returns everything.
    pub fn rest(&mut self) -> String {
        let mut out = Vec::new();
        let _ = self.reader.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// True when the server closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// A TLS client speaking raw lines (rustls, trusting the gateway's development certificate).
pub struct TlsRaw {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
}

/// The certificates of the PEM file `ca`, as trust roots.
pub fn tls_roots(ca: &Path) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("cert")).expect("add");
    }
    roots
}

pub fn tls_client_config(ca: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    let roots = tls_roots(ca);
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

impl TlsRaw {
    /// Implicit TLS to `port`.
    pub fn connect(port: u16, ca: &Path) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Self::over(tcp, ca)
    }

    /// TLS over an already connected socket (after STARTTLS).
    pub fn over(tcp: TcpStream, ca: &Path) -> Self {
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(tls_client_config(ca), name).expect("tls");
        Self {
            stream: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        }
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let _ = self.stream.read_line(&mut line);
        line
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).expect("write");
        self.stream.get_mut().flush().expect("flush");
    }

    /// Reads lines until one starts with `prefix`; returns all of them.
    pub fn until(&mut self, prefix: &str) -> String {
        let mut all = String::new();
        for _ in 0..200 {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            all.push_str(&line);
            if line.starts_with(prefix) {
                break;
            }
        }
        all
    }

    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.stream.read(&mut buf), Ok(0) | Err(_))
    }
}

impl Raw {
    /// Turns this plaintext connection into TLS (after the server accepted STARTTLS).
    pub fn into_tls(self, ca: &Path) -> TlsRaw {
        assert!(
            self.reader.buffer().is_empty(),
            "plaintext left unread before TLS"
        );
        TlsRaw::over(self.writer, ca)
    }
}

/// The base64 of a SASL PLAIN message.
pub fn plain(authzid: &str, login: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{authzid}\0{login}\0{password}"))
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// wsgidav (WebDAV) trusting `X-Remote-User`, per the peers' notes.
pub struct Wsgidav {
    child: Child,
    pub port: u16,
    pub root: PathBuf,
    /// Every user has a folder of their own under `root` (config/wsgidav_home_folders.py, as
    /// in the shipped set-up); otherwise all share `root`.
    per_user: bool,
    _dir: tempfile::TempDir,
}

impl Wsgidav {
    /// As `scripts/run` runs it: over HTTP, a folder per user.
    pub fn start() -> Self {
        Self::start_with(None, true)
    }

    /// With `Some((cert, key))`, serves HTTPS (for comparisons with the gateway on equal terms);
    /// `per_user: false` serves one folder to everyone, for clients that talk to wsgidav
    /// directly and name no user.
    pub fn start_with(tls: Option<(&Path, &Path)>, per_user: bool) -> Self {
        require("wsgidav", "pip install wsgidav cheroot");
        let dir = open_tempdir();
        let port = free_port();
        let root = dir.path().join("davroot");
        std::fs::create_dir_all(&root).expect("mkdir");
        let provider = if per_user {
            format!(
                "{{\"/\": {{class: wsgidav_home_folders.HomeFolders, args: [\"{}\"]}}}}",
                root.display()
            )
        } else {
            format!("{{\"/\": \"{}\"}}", root.display())
        };
        // Per user: only requests naming a user in the trusted header get in. Shared: anyone
        // reaching the port (the direct runs of comparisons).
        let (basic, users) = if per_user {
            ("false", r#"{"no-basic-login": {password: null}}"#)
        } else {
            ("true", "true")
        };
        let config = dir.path().join("wsgidav.yaml");
        std::fs::write(
            &config,
            format!(
                r#"host: 127.0.0.1
port: {port}
server: cheroot
verbose: 1
logging:
  enable_loggers: []
provider_mapping: {provider}
http_authenticator:
  domain_controller: null
  accept_basic: {basic}
  accept_digest: false
  default_to_digest: false
  trusted_auth_header: HTTP_X_REMOTE_USER
simple_dc: {{user_mapping: {{"*": {users}}}}}
property_manager: true
lock_storage: true
{ssl}
"#,
                ssl = tls.map_or(String::new(), |(cert, key)| format!(
                    "ssl_certificate: {}\nssl_private_key: {}",
                    cert.display(),
                    key.display()
                )),
            ),
        )
        .expect("write");
        let log = dir.path().join("wsgidav.log");
        let mut child = Command::new("wsgidav")
            .arg("--config")
            .arg(&config)
            .env("PYTHONPATH", repo_path("config"))
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start wsgidav");
        wait_for_port(port, "wsgidav", &mut child, &log);
        Self {
            child,
            port,
            root,
            per_user,
            _dir: dir,
        }
    }

    /// Where `user`'s files are on disk.
    pub fn home(&self, user: &str) -> PathBuf {
        if self.per_user {
            self.root.join(user)
        } else {
            self.root.clone()
        }
    }
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

impl Drop for Wsgidav {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Radicale (CalDAV, CardDAV) trusting `X-Remote-User`, per the peers' notes.
pub struct Radicale {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Radicale {
    pub fn start() -> Self {
        require_python_module("radicale", "pip install radicale");
        let dir = open_tempdir();
        let port = free_port();
        let config = dir.path().join("radicale.conf");
        std::fs::write(
            &config,
            format!(
                "[server]\nhosts = 127.0.0.1:{port}\n[auth]\ntype = http_x_remote_user\n[rights]\ntype = owner_only\n[storage]\nfilesystem_folder = {}/collections\n[logging]\nlevel = warning\n",
                dir.path().display()
            ),
        )
        .expect("write");
        let log = dir.path().join("radicale.log");
        let mut child = Command::new("python3")
            .args(["-m", "radicale", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start radicale");
        wait_for_port(port, "radicale", &mut child, &log);
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Radicale {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// The `[[listener]]` for HTTP that the DAV tests use: disk on host 127.0.0.1 and
/// webdav.localhost, calendar under /cal and contacts under /card on host localhost, each
/// service on a server of its own as in the shipped set-up (calendar and contacts on two
/// Radicale instances).
pub fn http_listener(port: u16, wsgidav: u16, calendar: u16, contacts: u16) -> String {
    format!(
        r#"
[[listener]]
protocol = "http"
address = "127.0.0.1:{port}"
tls = "implicit"

  [[listener.route]]
  host = "127.0.0.1"
  service = "disk"
  backend = "wsgidav"

  [[listener.route]]
  host = "webdav.localhost"
  service = "disk"
  backend = "wsgidav"

  [[listener.route]]
  host = "localhost"
  path_prefix = "/cal"
  service = "calendar"
  backend = "radicale-calendar"

  [[listener.route]]
  host = "localhost"
  path_prefix = "/card"
  service = "contacts"
  backend = "radicale-contacts"

  [[listener.route]]
  host = "caldav.localhost"
  service = "calendar"
  backend = "radicale-calendar"

  [[listener.route]]
  host = "carddav.localhost"
  service = "contacts"
  backend = "radicale-contacts"

[backend.wsgidav]
url = "http://127.0.0.1:{wsgidav}/"
login = "trusted-header"
header = "X-Remote-User"
timeout_secs = 5
# cheroot serves 10 connections at once.
max_connections = 8

[backend.radicale-calendar]
url = "http://127.0.0.1:{calendar}/"
login = "trusted-header"
header = "X-Remote-User"
timeout_secs = 5

[backend.radicale-contacts]
url = "http://127.0.0.1:{contacts}/"
login = "trusted-header"
header = "X-Remote-User"
timeout_secs = 5
"#
    )
}

/// Peak resident memory of a process (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl TlsRaw {
    /// Whatever the server sends next (one read); empty when it closed or went quiet.
    pub fn chunk(&mut self) -> String {
        let mut buf = [0u8; 8192];
        match self.stream.read(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Writes; false when the server has closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.get_mut().write_all(bytes).is_ok() && self.stream.get_mut().flush().is_ok()
    }

    /// Reads until the server closes (or the read timeout).
    pub fn read_rest(&mut self, out: &mut Vec<u8>) -> std::io::Result<usize> {
        self.stream.read_to_end(out)
    }
}

/// Prosody asking portcullis's auth server (mod_auth_dovecot over TCP).
pub struct Prosody {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prosody {
    /// Serves `domain` on `port`, asking the auth server on `auth_port`.
    pub fn start(auth_port: u16, domain: &str, port: u16) -> Self {
        Self::start_with_tls(auth_port, domain, port, None)
    }

    /// With `Some((cert, key, tls_port))`, also direct TLS (XEP-0368) on `tls_port`.
    pub fn start_with_tls(
        auth_port: u16,
        domain: &str,
        port: u16,
        tls: Option<(&Path, &Path, u16)>,
    ) -> Self {
        require("prosody", "apt-get install prosody prosody-modules");
        let dir = open_tempdir();
        let config = dir.path().join("prosody.cfg.lua");
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(
            &config,
            format!(
                r#"run_as_root = true
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
s2s_ports = {{ }}; http_ports = {{ }}; https_ports = {{ }}
plugin_paths = {{ "/usr/lib/prosody/modules" }}
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "posix" }}
modules_disabled = {{ "s2s"{no_tls} }}
authentication = "dovecot"
dovecot_auth_host = "127.0.0.1"
dovecot_auth_port = "{auth_port}"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
{tls}
VirtualHost "{domain}"
"#,
                no_tls = if tls.is_some() { "" } else { ", \"tls\"" },
                tls = tls.map_or(String::new(), |(cert, key, tls_port)| format!(
                    "c2s_direct_tls_ports = {{ {tls_port} }}\nssl = {{ certificate = \"{}\", key = \"{}\" }}",
                    cert.display(),
                    key.display()
                )),
                root = dir.path().display()
            ),
        )
        .unwrap();
        let log = dir.path().join("prosody.log");
        let mut child = Command::new("prosody")
            .args(["-F", "--config"])
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "prosody", &mut child, &log);
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

/// An IMAP client (imaplib over implicit TLS) that logs in, selects INBOX, prints READY and
/// waits for what the server says next.
pub const IMAP_HOLD: &str = r#"
import imaplib, ssl, sys
port, ca, user, password = sys.argv[1:5]
imap = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=ssl.create_default_context(cafile=ca))
imap.login(user, password)
imap.select("INBOX")
print("READY", flush=True)
line = imap.readline()
print("GOT", line.decode().strip(), flush=True)
print("EOF" if imap.readline() == b"" else "MORE", flush=True)
"#;

/// One IMAP login: prints `LOGIN OK` or `LOGIN-FAILED ...`.
pub const IMAP_LOGIN: &str = r#"
import imaplib, ssl, sys
port, ca, user, password = sys.argv[1:5]
imap = imaplib.IMAP4_SSL("localhost", int(port), ssl_context=ssl.create_default_context(cafile=ca))
try:
    imap.login(user, password)
    print("LOGIN OK")
    imap.logout()
except imaplib.IMAP4.error as e:
    print("LOGIN-FAILED", e)
"#;

/// A python client holding a session open; its output lines arrive on a channel.
pub struct Held {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Held {
    pub fn start(script: &str, port: u16, ca: &str, user: &str, password: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", script, &port.to_string(), ca, user, password])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let held = Self { child, lines };
        let ready = held.next(Duration::from_secs(15));
        assert_eq!(ready.as_deref(), Some("READY"), "the client did not log in");
        held
    }

    pub fn next(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One IMAP login through the gateway's implicit-TLS port: `LOGIN OK` or `LOGIN-FAILED`.
pub fn imap_login(gateway: &Gateway, user: &str, password: &str) -> String {
    let ca = gateway.ca.to_string_lossy().into_owned();
    python_ok(
        IMAP_LOGIN,
        &[&gateway.ports.imaps.to_string(), &ca, user, password],
    )
}

/// HAProxy (Debian `haproxy`) in TCP mode: each route a frontend on `bind` balancing over
/// `servers` (ports on 127.0.0.1) round robin, with a PROXY v2 header and health checks that
/// send one when `send_proxy`.
pub struct Haproxy {
    child: Child,
    pub dir: tempfile::TempDir,
}

pub struct HaRoute {
    pub bind_host: &'static str,
    pub port: u16,
    pub servers: Vec<u16>,
    pub send_proxy: bool,
}

impl Haproxy {
    pub fn start(routes: &[HaRoute]) -> Self {
        require("haproxy", "apt-get install haproxy");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = String::from(
            "global\n  log stderr format short local0\ndefaults\n  mode tcp\n  log global\n  timeout connect 5s\n  timeout client 5m\n  timeout server 5m\n",
        );
        for (i, route) in routes.iter().enumerate() {
            config.push_str(&format!(
                "frontend front{i}\n  bind {}:{}\n  default_backend back{i}\nbackend back{i}\n  balance roundrobin\n",
                route.bind_host, route.port
            ));
            for (n, server) in route.servers.iter().enumerate() {
                let proxy = if route.send_proxy {
                    " send-proxy-v2 check check-send-proxy inter 500ms"
                } else {
                    ""
                };
                config.push_str(&format!("  server node{n} 127.0.0.1:{server}{proxy}\n"));
            }
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let mut child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("haproxy");
        for route in routes {
            wait_for_port_on(route.bind_host, route.port, "haproxy", &mut child, &log);
        }
        Self { child, dir }
    }

    /// Stops it (every connection through it is cut).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// An IMAP login from a chosen local address, to `host:port`, optionally sending a v1 PROXY
/// header first (as a load balancer would): prints `LOGIN OK` or what failed.
pub const IMAP_FROM: &str = r#"
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

/// A private Postfix (its own config, queue and port) that relays only for authenticated
/// clients; `sasl` is the rest of its main.cf (how clients authenticate).
pub struct Postfix {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // master stops its children on SIGTERM.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Postfix {
    pub fn start(sasl: &str) -> Self {
        require("postfix", "apt-get install postfix");
        let dir = open_tempdir();
        let root = dir.path();
        let port = free_port();
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir_all(root.join(sub)).expect("postfix set-up");
        }
        std::fs::write(
            root.join("conf/main.cf"),
            format!(
                "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydestination =
alias_maps =
alias_database =
maillog_file = /dev/stdout
smtpd_tls_security_level = none
smtpd_relay_restrictions = permit_sasl_authenticated, reject
{sasl}",
                root = root.display()
            ),
        )
        .expect("postfix set-up");
        std::fs::write(
            root.join("conf/master.cf"),
            format!(
                "127.0.0.1:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
            ),
        )
        .expect("postfix set-up");
        let conf = root.join("conf");
        let status = Command::new("chown")
            .arg("postfix")
            .arg(root.join("data"))
            .status()
            .expect("postfix set-up");
        assert!(status.success());
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .args(["set-permissions", "create-missing"])
            .output()
            .expect("postfix set-up");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = root.join("master.log");
        let mut child = Command::new("/usr/lib/postfix/sbin/master")
            .arg("-c")
            .arg(&conf)
            .arg("-d")
            .stdout(std::fs::File::create(&log).expect("postfix set-up"))
            .stderr(Stdio::null())
            .spawn()
            .expect("postfix set-up");
        wait_for_port(port, "postfix", &mut child, &log);
        Self {
            child,
            port,
            log,
            _dir: dir,
        }
    }
}

impl Postfix {
    /// Its log (`maillog_file`), so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

/// nginx started by [`start_nginx`]; dropping it stops nginx and its workers.
pub struct Nginx(std::process::Child);

impl Nginx {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master stops its workers only when it is asked to; killed,
        // it leaves them running with the listening socket.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts Debian's nginx in the foreground with `conf` (a whole configuration, written to
/// `prefix/nginx.conf`; its pid and error log belong under `prefix`) and waits until it listens
/// on `port`.
pub fn start_nginx(prefix: &std::path::Path, conf: &str, port: u16) -> Nginx {
    require("nginx", "apt-get install nginx libnginx-mod-mail");
    std::fs::create_dir_all(prefix.join("logs")).expect("mkdir");
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten().is_some();
        if exited || started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let log = std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default();
            panic!("nginx did not listen on {port}:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Nginx(child)
}

/// The lines an nginx `http` block needs so that nginx writes nothing outside `prefix`.
pub fn nginx_http_paths(prefix: &std::path::Path) -> String {
    let p = prefix.display();
    format!(
        "access_log off;\n  client_body_temp_path {p}/client_body;\n  proxy_temp_path {p}/proxy;\n  \
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;"
    )
}

/// The gateway's Prometheus page from its `[metrics]` listener.
pub fn scrape(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the series named `name` whose labels include all of `labels`.
pub fn value(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        (metric == name && labels.iter().all(|l| rest.contains(l))).then(|| value.parse().ok())?
    })
}
