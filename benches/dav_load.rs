//! End-to-end load harness for the HTTP listener, in one run on one machine:
//!
//! - small GETs and PROPFINDs (Depth 0) with Basic auth: requests per second and latency
//!   percentiles, keep-alive connections, through portcullis vs directly against wsgidav
//!   (directly over HTTPS too, so that TLS is on both sides of the comparison);
//! - a large GET and a large PUT (1 GiB) with curl: throughput through portcullis against
//!   wsgidav direct and against nginx as an HTTPS reverse proxy in front of the same wsgidav
//!   (`proxy_pass`, `proxy_buffering off`, `proxy_request_buffering off`: streaming both
//!   ways, as the gateway does), with the growth of each proxy's resident memory during the
//!   transfer (sampled every 20 ms), which must stay flat.
//!
//! `cargo bench --bench dav_load` (LOAD_SECS, LOAD_CLIENTS and LOAD_MIB override 5 s,
//! 16 clients and 1024 MiB). Needs wsgidav, curl and nginx: scripts/setup-peers.sh.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use support::{HttpsClient, LoadResult, closed_loop, https_client, knob};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 5);
    let clients = knob("LOAD_CLIENTS", 16) as usize;
    let mib = knob("LOAD_MIB", 1024);

    // One folder for everyone: the direct runs name no user (the gateway's runs would get a
    // folder per user otherwise, at no measurable cost).
    let plain = Wsgidav::start_with(None, false);
    let calendar = Radicale::start();
    let contacts = Radicale::start();
    let tail = http_listener(0, plain.port, calendar.port, contacts.port)
        .replace("127.0.0.1:0\"", "127.0.0.1:{http}\"");
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail,
            log_filter: "warn",
            ..Options::default()
        },
    );
    gateway.create_account("alice", "main password");
    let secret = gateway.app_password("alice", "disk", "bench");
    let key = gateway.dir.path().join("certs/localhost.key");
    let tls_direct = Wsgidav::start_with(Some((&gateway.ca, &key)), false);
    for root in [&plain.root, &tls_direct.root] {
        std::fs::write(root.join("small.txt"), vec![b'x'; 1024]).expect("write");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = https_client((*tls_client_config(&gateway.ca)).clone(), clients);
    let auth = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{secret}"))
        )
    };
    let targets = [
        (
            "wsgidav direct (HTTP)",
            format!("http://127.0.0.1:{}", plain.port),
        ),
        (
            "wsgidav direct (HTTPS)",
            format!("https://127.0.0.1:{}", tls_direct.port),
        ),
        (
            "portcullis -> wsgidav",
            format!("https://127.0.0.1:{}", gateway.ports.http),
        ),
    ];
    println!(
        "{clients} keep-alive clients, {secs} s per row, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| request | target | req/s | p50 ms | p90 ms | p99 ms | failed |");
    println!("|---|---|---|---|---|---|---|");
    let mut rates = std::collections::HashMap::new();
    for (method, path) in [("GET", "/small.txt"), ("PROPFIND", "/")] {
        for (name, base) in &targets {
            let result = runtime.block_on(load(
                &client,
                method,
                &format!("{base}{path}"),
                &auth,
                clients,
                Duration::from_secs(secs),
            ));
            println!(
                "| {method} {path} | {name} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                result.rate,
                result.percentile(50.0),
                result.percentile(90.0),
                result.percentile(99.0),
                result.failed
            );
            rates.insert((method, *name), result.rate);
        }
    }
    println!();
    for method in ["GET", "PROPFIND"] {
        let through = rates[&(method, "portcullis -> wsgidav")];
        println!(
            "{method}: portcullis / direct HTTPS = {:.2}x, portcullis / direct HTTP = {:.2}x",
            through / rates[&(method, "wsgidav direct (HTTPS)")],
            through / rates[&(method, "wsgidav direct (HTTP)")]
        );
    }

    // Large transfers with curl: one stream each way.
    let dir = open_tempdir();
    let file = dir.path().join("large.bin");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/zero | tr '\\0' 'x' > {}",
            mib * 1024 * 1024,
            file.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success());
    let ca = gateway.ca.to_string_lossy().into_owned();
    let user = format!("alice:{secret}");
    let nginx_port = free_port();
    let nginx_prefix = dir.path().join("nginx");
    let nginx = start_reverse_proxy(&nginx_prefix, &gateway.ca, &key, nginx_port, plain.port);
    let nginx_pid = nginx.pid();
    let large_targets = targets.iter().cloned().chain([(
        "nginx -> wsgidav",
        format!("https://127.0.0.1:{nginx_port}"),
    )]);
    println!();
    println!("| {mib} MiB with curl | target | MiB/s | proxy memory growth during the transfer |");
    println!("|---|---|---|---|");
    let mut speeds = std::collections::HashMap::new();
    for (name, base) in large_targets {
        let proxy = match name {
            "portcullis -> wsgidav" => Some(gateway.pid()),
            "nginx -> wsgidav" => Some(nginx_pid),
            _ => None,
        };
        let url = format!("{base}/large.bin");
        let (put, put_growth) = while_sampling(proxy, || {
            curl_speed(&[
                "--cacert",
                &ca,
                "-u",
                &user,
                "-T",
                &file.to_string_lossy(),
                "-o",
                "/dev/null",
                "-w",
                "%{speed_upload}",
                &url,
            ])
        });
        let (get, get_growth) = while_sampling(proxy, || {
            curl_speed(&[
                "--cacert",
                &ca,
                "-u",
                &user,
                "-o",
                "/dev/null",
                "-w",
                "%{speed_download}",
                &url,
            ])
        });
        let growth = |g: Option<u64>| g.map_or("-".to_owned(), |kib| format!("{kib} KiB"));
        println!(
            "| PUT | {name} | {:.0} | {} |",
            put / 1048576.0,
            growth(put_growth)
        );
        println!(
            "| GET | {name} | {:.0} | {} |",
            get / 1048576.0,
            growth(get_growth)
        );
        speeds.insert(name, (put, get));
    }
    drop(nginx);
    let (gput, gget) = speeds["portcullis -> wsgidav"];
    let (dput, dget) = speeds["wsgidav direct (HTTPS)"];
    let (nput, nget) = speeds["nginx -> wsgidav"];
    println!();
    println!(
        "large PUT: portcullis / direct HTTPS = {:.2}x; large GET: {:.2}x",
        gput / dput,
        gget / dget
    );
    println!(
        "large PUT: portcullis / nginx = {:.2}x (goal >= 0.9x); large GET: {:.2}x (goal >= 0.9x)",
        gput / nput,
        gget / nget
    );
}

/// nginx as an HTTPS reverse proxy in front of `backend`, streaming both ways.
fn start_reverse_proxy(
    prefix: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    port: u16,
    backend: u16,
) -> common::Nginx {
    let p = prefix.display();
    let conf = format!(
        r#"worker_processes 2;
pid {p}/nginx.pid;
error_log {p}/logs/error.log error;
events {{ worker_connections 1024; }}
http {{
  {paths}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{backend};
      proxy_http_version 1.1;
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"#,
        paths = common::nginx_http_paths(prefix),
        cert = cert.display(),
        key = key.display()
    );
    common::start_nginx(prefix, &conf, port)
}

/// Runs `work`, sampling the resident memory of `pid` (and its children, for nginx's workers)
/// every 20 ms meanwhile; `work`'s result and the largest growth over the start, in KiB.
fn while_sampling<T>(pid: Option<u32>, work: impl FnOnce() -> T) -> (T, Option<u64>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(pid) = pid else {
        return (work(), None);
    };
    let done = Arc::new(AtomicBool::new(false));
    let start = tree_rss_kib(pid);
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = start;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(tree_rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let result = work();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    (result, Some(peak.saturating_sub(start)))
}

/// The resident memory of `pid` and its direct children, in KiB.
fn tree_rss_kib(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    rss_kib(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .map(rss_kib)
            .sum::<u64>()
}

fn curl_speed(args: &[&str]) -> f64 {
    let out = Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0)
}

/// `clients` workers send requests back to back until `duration` has passed (each request has
/// a 10 s timeout; none starts after the deadline).
async fn load(
    client: &HttpsClient,
    method: &str,
    url: &str,
    auth: &str,
    clients: usize,
    duration: Duration,
) -> LoadResult {
    let method: http::Method = method.parse().expect("method");
    let (client, url, auth) = (
        client.clone(),
        Arc::new(url.to_owned()),
        Arc::new(auth.to_owned()),
    );
    closed_loop(clients, duration, move || {
        let (client, method, url, auth) =
            (client.clone(), method.clone(), url.clone(), auth.clone());
        async move {
            let request = http::Request::builder()
                .method(method)
                .uri(url.as_str())
                .header("authorization", auth.as_str())
                .header("depth", "0")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let response = client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            if status.is_success() || status.as_u16() == 207 {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
    })
    .await
}
