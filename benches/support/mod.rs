//! What the load harnesses share: their knobs, the closed-loop driver, and the latency
//! statistics of a run.

use std::future::Future;
use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let operation = operation.clone();
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
