//! What the load harnesses share: their knobs, the closed-loop driver, and the latency
//! statistics of a run.

// Each harness is compiled on its own and uses a part of this.
#![allow(dead_code)]

use std::future::Future;

use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTPS client (HTTP/1.1, keep-alive), as the HTTP harnesses drive the gateway.
#[allow(dead_code)]
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTPS client trusting `tls`'s roots that keeps up to `clients` x 4 idle connections,
/// so each simulated client reuses its connection and TLS session.
#[allow(dead_code)]
pub fn https_client(tls: rustls::ClientConfig, clients: usize) -> HttpsClient {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(clients * 4)
        .build(connector)
}

/// A numeric knob from the environment (`LOAD_SECS=10 cargo bench ...`), or its default.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The outcome of one load run.
pub struct LoadResult {
    /// Successful operations per second.
    pub rate: f64,
    /// Latency of each success, sorted.
    pub latencies_ms: Vec<f64>,
    pub failed: usize,
}

impl LoadResult {
    /// Gathers the workers' (latencies, failures) after a run of `elapsed` seconds.
    pub fn gather(parts: Vec<(Vec<f64>, usize)>, elapsed: f64) -> Self {
        let mut latencies_ms = Vec::new();
        let mut failed = 0;
        for (latencies, failures) in parts {
            latencies_ms.extend(latencies);
            failed += failures;
        }
        latencies_ms.sort_by(f64::total_cmp);
        Self {
            rate: latencies_ms.len() as f64 / elapsed,
            latencies_ms,
            failed,
        }
    }

    /// The latency at percentile `p` (nearest rank), in milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.latencies_ms.len() - 1) as f64).round() as usize;
        self.latencies_ms[rank.min(self.latencies_ms.len() - 1)]
    }
}

/// Runs `clients` workers that each repeat `operation` back to back until `duration` has
/// passed. Bounded: no operation starts after the deadline and each has 10 s to finish. The
/// first failure of each worker is printed, so a broken set-up shows why.
// auth_load pipelines its requests instead, and each harness is compiled on its own.
#[allow(dead_code)]
pub async fn closed_loop<F, Fut>(clients: usize, duration: Duration, operation: F) -> LoadResult
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    closed_loop_each(clients, duration, || operation.clone()).await
}

/// [`closed_loop`] with an operation of each worker's own, made by `make` (a simulated client
/// with state of its own, such as its TLS session cache).
#[allow(dead_code)]
pub async fn closed_loop_each<M, F, Fut>(clients: usize, duration: Duration, make: M) -> LoadResult
where
    M: Fn() -> F,
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let operation = make();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            while Instant::now() < deadline {
                let start = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), operation()).await {
                    Ok(Ok(())) => latencies.push(start.elapsed().as_secs_f64() * 1e3),
                    Ok(Err(e)) => {
                        if failed == 0 {
                            eprintln!("operation failed: {e}");
                        }
                        failed += 1;
                    }
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let mut parts = Vec::new();
    for task in tasks {
        if let Ok(part) = task.await {
            parts.push(part);
        }
    }
    LoadResult::gather(parts, started.elapsed().as_secs_f64())
}

/// An IMAP server that says OK to everything: it parses just enough (lines, literals) to
/// answer each command once. Runs until killed.
#[allow(dead_code)]
pub fn trivial_backend(port: u16) {
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

#[allow(dead_code)]
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

/// A client's TLS session to an IMAP server.
pub type ImapSession = BufReader<tokio_rustls::client::TlsStream<TcpStream>>;

/// Connects to `port` with implicit TLS (server name `localhost`), reads the greeting and sends
/// `login` (an `a1 LOGIN ...` line); the logged-in session, and whether the handshake was a
/// resumption.
pub async fn imap_tls_login(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    login: &str,
) -> std::io::Result<(ImapSession, bool)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name =
        rustls::pki_types::ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
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
    Ok((stream, resumed))
}
