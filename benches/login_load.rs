//! End-to-end load harness: full IMAP login cycles over TLS (connect, handshake, greeting,
//! LOGIN, LOGOUT), as many as a fixed set of concurrent clients can do in a fixed time, with
//! latency percentiles, in one run:
//!
//! 1. Dovecot, logged in to directly (its own TLS and passwords);
//! 2. portcullis in front of the same Dovecot (app password, master-user login behind it);
//! 3. nginx's mail proxy in front of a trivially fast IMAP backend, with an `auth_http`
//!    callback that approves everything without checking;
//! 4. portcullis in front of the same trivial backend, doing its real credential check.
//!
//! The trivial backend answers OK to every command, so rows 3 and 4 measure the front door
//! rather than Dovecot (which forks a process per login). Every TLS handshake is a full one:
//! the clients never resume sessions. Figures are reported as ratios of rows measured in the
//! same run, because these machines are shared and noisy.
//!
//! `cargo bench --bench login_load` (LOAD_SECS and LOAD_CLIENTS override the defaults, 5 s and
//! 64 clients). Needs Dovecot, nginx with its mail module and aiosmtpd: scripts/setup-peers.sh.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use support::{LoadResult, closed_loop, knob};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--trivial-backend") {
        let port: u16 = args
            .get(pos + 1)
            .and_then(|p| p.parse().ok())
            .expect("--trivial-backend PORT");
        trivial_backend(port);
        return;
    }
    // `cargo test --benches` runs bench binaries with no `--bench`: nothing to measure then.
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 5);
    let clients = knob("LOAD_CLIENTS", 64) as usize;
    require("nginx", "apt-get install nginx libnginx-mod-mail");

    let dir = open_tempdir();
    let cert = dir.path().join("localhost.crt");
    let key = dir.path().join("localhost.key");
    portcullis::tls::write_dev_certificate(&cert, &key).expect("certificate");

    let sink = SmtpSink::start();
    let dovecot = Dovecot::start_with_tls(sink.port, &["alice@example.org"], Some((&cert, &key)));
    // Every simulated client comes from 127.0.0.1: lift the per-address share of pre-login
    // connections, which would otherwise cap the load at 32 clients logging in at once.
    let quiet = || Options {
        log_filter: "warn",
        max_connections: 10_000,
        limits: "max_pre_login_per_address = 10000".to_owned(),
        ..Options::default()
    };
    let through_dovecot = Gateway::start(dovecot.imap_port, dovecot.submission_port, quiet());
    through_dovecot.create_account("alice", "main password");
    let secret_dovecot = through_dovecot.app_password("alice", "mail", "load");

    let trivial_port = free_port();
    let mut trivial = Command::new(std::env::current_exe().expect("exe"))
        .args(["--trivial-backend", &trivial_port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("trivial backend");
    let log = dir.path().join("trivial.log");
    wait_for_port(trivial_port, "trivial backend", &mut trivial, &log);
    let through_trivial = Gateway::start(trivial_port, trivial_port, quiet());
    through_trivial.create_account("alice", "main password");
    let secret_trivial = through_trivial.app_password("alice", "mail", "load");
    let nginx_port = free_port();
    let mut nginx = start_nginx(dir.path(), &cert, &key, nginx_port, trivial_port);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let duration = Duration::from_secs(secs);
    // Each front door has its own certificate (the same kind: ECDSA P-256 from rcgen).
    let client_config = |ca: &Path| {
        let mut config = (*tls_client_config(ca)).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    let scenarios = [
        (
            "Dovecot direct",
            dovecot.imaps_port.expect("imaps"),
            "alice@example.org",
            USER_PASSWORD.to_owned(),
            client_config(&cert),
        ),
        (
            "portcullis -> Dovecot",
            through_dovecot.ports.imaps,
            "alice",
            secret_dovecot,
            client_config(&through_dovecot.ca),
        ),
        (
            "nginx mail proxy -> trivial backend",
            nginx_port,
            "alice",
            "anything".to_owned(),
            client_config(&cert),
        ),
        (
            "portcullis -> trivial backend",
            through_trivial.ports.imaps,
            "alice",
            secret_trivial,
            client_config(&through_trivial.ca),
        ),
    ];
    println!(
        "{clients} concurrent clients, {secs} s per row, full TLS handshakes, {} cores",
        num_cpus()
    );
    println!();
    println!("| front door | logins/s | p50 ms | p90 ms | p99 ms | failed |");
    println!("|---|---|---|---|---|---|");
    let mut rates = Vec::new();
    for (name, port, user, password, config) in &scenarios {
        let result = runtime.block_on(load(
            *port,
            user,
            password,
            clients,
            duration,
            config.clone(),
        ));
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            result.rate,
            result.percentile(50.0),
            result.percentile(90.0),
            result.percentile(99.0),
            result.failed
        );
        rates.push(result.rate);
    }
    println!();
    println!(
        "portcullis -> Dovecot vs Dovecot direct: {:.2}x (target >= 0.95x)",
        rates[1] / rates[0]
    );
    println!(
        "portcullis vs nginx mail proxy (trivial backend): {:.2}x (target >= 1.5x)",
        rates[3] / rates[2]
    );

    let _ = nginx.kill();
    let _ = nginx.wait();
    let _ = trivial.kill();
    let _ = trivial.wait();
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `clients` loops of full login cycles until `duration` has passed.
async fn load(
    port: u16,
    user: &str,
    password: &str,
    clients: usize,
    duration: Duration,
    config: Arc<rustls::ClientConfig>,
) -> LoadResult {
    let login = Arc::new(format!("a1 LOGIN {user} {password}\r\n"));
    closed_loop(clients, duration, move || {
        let (login, config) = (login.clone(), config.clone());
        async move { cycle(port, &login, config).await.map_err(|e| e.to_string()) }
    })
    .await
}

/// One full login cycle.
async fn cycle(port: u16, login: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut stream = BufReader::new(tls);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.starts_with("* OK") {
        return Err(std::io::Error::other(format!("greeting {line:?}")));
    }
    stream.get_mut().write_all(login.as_bytes()).await?;
    stream.get_mut().flush().await?;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("closed during login"));
        }
        if line.starts_with("a1 ") {
            break;
        }
    }
    if !line.starts_with("a1 OK") {
        return Err(std::io::Error::other(format!("login refused: {line:?}")));
    }
    stream.get_mut().write_all(b"a2 LOGOUT\r\n").await?;
    stream.get_mut().flush().await?;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 || line.starts_with("a2 ") {
            return Ok(());
        }
    }
}

fn start_nginx(dir: &Path, cert: &Path, key: &Path, port: u16, backend: u16) -> Child {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).expect("mkdir");
    let auth_port = free_port();
    let p = prefix.display();
    let conf = format!(
        r#"load_module /usr/lib/nginx/modules/ngx_mail_module.so;
worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/logs/error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {p}/client_body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  server {{
    listen 127.0.0.1:{auth_port};
    location = /auth {{
      add_header Auth-Status OK always;
      add_header Auth-Server 127.0.0.1 always;
      add_header Auth-Port {backend} always;
      return 204;
    }}
  }}
}}
mail {{
  server_name localhost;
  auth_http 127.0.0.1:{auth_port}/auth;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  ssl_session_cache off;
  ssl_session_tickets off;
  server {{
    listen 127.0.0.1:{port} ssl;
    protocol imap;
    imap_auth plain login;
  }}
}}
"#,
        cert = cert.display(),
        key = key.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let log = prefix.join("logs/error.log");
    let mut child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    wait_for_port(port, "nginx", &mut child, &log);
    child
}

/// An IMAP server that says OK to everything: it parses just enough (lines, literals) to
/// answer each command once. Runs until killed.
fn trivial_backend(port: u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = trivial_session(socket).await;
            });
        }
    });
}

async fn trivial_session(socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut stream = BufReader::new(socket);
    stream
        .get_mut()
        .write_all(b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] trivial ready\r\n")
        .await?;
    let mut line = Vec::new();
    loop {
        // One command: a line, plus literals it announces (answered with "+").
        let mut command = Vec::new();
        loop {
            line.clear();
            if stream.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            command.extend_from_slice(&line);
            let trimmed = line.strip_suffix(b"\r\n").unwrap_or(&line);
            let literal = trimmed
                .strip_suffix(b"}")
                .and_then(|t| t.iter().rposition(|&b| b == b'{').map(|i| &t[i + 1..]))
                .and_then(|n| {
                    std::str::from_utf8(n.strip_suffix(b"+").unwrap_or(n))
                        .ok()?
                        .parse::<usize>()
                        .ok()
                });
            match literal {
                Some(n) => {
                    stream.get_mut().write_all(b"+ go ahead\r\n").await?;
                    let mut data = vec![0u8; n];
                    stream.read_exact(&mut data).await?;
                }
                None => break,
            }
        }
        let text = String::from_utf8_lossy(&command);
        let mut words = text.split_whitespace();
        let tag = words.next().unwrap_or("*").to_owned();
        let verb = words.next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "LOGOUT" => {
                stream
                    .get_mut()
                    .write_all(format!("* BYE bye\r\n{tag} OK LOGOUT done\r\n").as_bytes())
                    .await?;
                return Ok(());
            }
            "CAPABILITY" => format!("* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK done\r\n"),
            "LOGIN" | "AUTHENTICATE" => {
                format!("{tag} OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
            }
            _ => format!("{tag} OK done\r\n"),
        };
        stream.get_mut().write_all(reply.as_bytes()).await?;
    }
}
