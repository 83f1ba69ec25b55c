//! Load harness for the authentication server: verifications per second on the cached path
//! (the same app password checked again and again, as Postfix does for a busy account), with
//! latency percentiles, over TCP with several requests in flight per connection.
//!
//! `cargo bench --bench auth_load` (LOAD_SECS, LOAD_CLIENTS, LOAD_DEPTH override 5 s,
//! 8 connections and 16 requests in flight per connection).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::*;
use support::{LoadResult, knob};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 5);
    let clients = knob("LOAD_CLIENTS", 8) as usize;
    let depth = knob("LOAD_DEPTH", 16) as usize;
    let port = free_port();
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            extra: format!("[auth_server]\nlisten = [\"127.0.0.1:{port}\"]\n"),
            log_filter: "warn",
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let secret = gateway.app_password("alice", "mail", "bench");
    let response = plain("", "alice", &secret);
    let request =
        move |id: u64| format!("AUTH\t{id}\tPLAIN\tservice=smtp\trip=192.0.2.1\tresp={response}\n");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0usize;
                let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return (latencies, 1);
                };
                let (reader, mut writer) = stream.into_split();
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "DONE" {
                        break;
                    }
                }
                let _ = writer.write_all(b"VERSION\t1\t0\nCPID\t1\n").await;
                let mut sent: std::collections::HashMap<u64, Instant> = Default::default();
                let mut next = 1u64;
                loop {
                    while sent.len() < depth && Instant::now() < deadline {
                        sent.insert(next, Instant::now());
                        if writer.write_all(request(next).as_bytes()).await.is_err() {
                            return (latencies, failed + 1);
                        }
                        next += 1;
                    }
                    if sent.is_empty() {
                        return (latencies, failed);
                    }
                    let Ok(Ok(Some(line))) =
                        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
                    else {
                        return (latencies, failed + sent.len());
                    };
                    let mut fields = line.split('\t');
                    let verdict = fields.next().unwrap_or("");
                    let id: u64 = fields.next().and_then(|i| i.parse().ok()).unwrap_or(0);
                    if let Some(at) = sent.remove(&id) {
                        if verdict == "OK" {
                            latencies.push(at.elapsed().as_secs_f64() * 1e3);
                        } else {
                            failed += 1;
                        }
                    }
                }
            }));
        }
        let mut parts = Vec::new();
        for task in tasks {
            if let Ok(part) = task.await {
                parts.push(part);
            }
        }
        LoadResult::gather(parts, started.elapsed().as_secs_f64())
    });
    println!("{clients} connections x {depth} requests in flight, {secs} s, cached app password");
    println!();
    println!("| verifications/s | p50 ms | p90 ms | p99 ms | failed |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.2} | {:.2} | {:.2} | {} |",
        result.rate,
        result.percentile(50.0),
        result.percentile(90.0),
        result.percentile(99.0),
        result.failed
    );
}
