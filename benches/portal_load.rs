//! Load harness for the account portal: page requests per second for a signed-in user, and
//! sign-ins per second, the latter as a ratio to raw argon2id verifications measured in the
//! same run on as many threads as the gateway hashes with (a sign-in is argon2-bound: the
//! ratio says what the portal adds around the hash).
//!
//! Each simulated browser keeps its own pooled HTTPS connections (keep-alive, as browsers do),
//! so the page figures are request handling, not TLS handshakes.
//!
//! `cargo bench --bench portal_load` (LOAD_SECS, LOAD_CLIENTS override 5 s and 8 browsers).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use portcullis::credentials::Secret;
use portcullis::credentials::hashing::{PasswordHasher, verify_blocking};
use support::{HttpsClient, LoadResult, closed_loop, https_client, knob};

const PASSWORD: &str = "alice long main password";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 5);
    let clients = knob("LOAD_CLIENTS", 8) as usize;
    let duration = Duration::from_secs(secs);
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            tail: "[[listener]]\nprotocol = \"portal\"\naddress = \"127.0.0.1:{http}\"\ntls = \"implicit\"\n[portal]\nattempts_per_minute = 1000000\n".into(),
            log_filter: "warn",
            ..Options::default()
        },
    );
    gateway.create_account("alice", PASSWORD);
    let base = format!("https://localhost:{}", gateway.ports.http);
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (access, api, signins) = runtime.block_on(async {
        let client = https_client((*tls_client_config(&gateway.ca)).clone(), clients);
        let cookie = sign_in(&client, &base).await.expect("sign in");
        let get = |path: &str| {
            let (client, url, cookie) = (
                client.clone(),
                Arc::new(format!("{base}{path}")),
                Arc::new(cookie.clone()),
            );
            closed_loop(clients, duration, move || {
                let (client, url, cookie) = (client.clone(), url.clone(), cookie.clone());
                async move {
                    let request = http::Request::get(url.as_str())
                        .header("cookie", cookie.as_str())
                        .body(Full::new(Bytes::new()))
                        .map_err(|e| e.to_string())?;
                    let response = client.request(request).await.map_err(|e| e.to_string())?;
                    let status = response.status();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("status {status}"))
                    }
                }
            })
        };
        let access = get("/access").await;
        let api = get("/api/v1/account").await;
        let signins = {
            let (client, base) = (client.clone(), Arc::new(base.clone()));
            closed_loop(clients, duration, move || {
                let (client, base) = (client.clone(), base.clone());
                async move { sign_in(&client, &base).await.map(|_| ()) }
            })
            .await
        };
        (access, api, signins)
    });
    let verifies = raw_verifies(threads, duration);
    println!("{clients} browsers, {secs} s each; argon2id on {threads} threads");
    println!();
    println!("| operation | per second | p50 ms | p90 ms | p99 ms | failed |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in [
        ("GET /access (signed in, HTML)", &access),
        ("GET /api/v1/account (signed in, JSON)", &api),
        ("sign-in (POST /api/v1/session)", &signins),
    ] {
        row(name, r);
    }
    println!("| raw argon2id verify ({threads} threads) | {verifies:.1} | | | | |");
    println!();
    println!(
        "sign-ins per second / raw argon2id verifies per second = {:.2}",
        signins.rate / verifies
    );
}

fn row(name: &str, r: &LoadResult) {
    println!(
        "| {name} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
        r.rate,
        r.percentile(50.0),
        r.percentile(90.0),
        r.percentile(99.0),
        r.failed
    );
}

/// Verifications per second of the main password against its stored hash, on `threads`
/// threads for `duration`: what sign-ins cost without the portal around them.
fn raw_verifies(threads: usize, duration: Duration) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let hash = runtime
        .block_on(PasswordHasher::new(1).hash(&Secret::from(PASSWORD)))
        .expect("hash");
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let hash = hash.clone();
            std::thread::spawn(move || {
                let password = Secret::from(PASSWORD);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    assert!(verify_blocking(&password, &hash));
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

/// Signs in through the API; the session cookie.
async fn sign_in(client: &HttpsClient, base: &str) -> Result<String, String> {
    let body = format!(r#"{{"login":"alice","password":"{PASSWORD}"}}"#);
    let request = http::Request::post(format!("{base}/api/v1/session"))
        .header("origin", base)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    match (status.as_u16(), cookie) {
        (200, Some(cookie)) => Ok(cookie),
        (status, _) => Err(format!("sign-in answered {status}")),
    }
}
