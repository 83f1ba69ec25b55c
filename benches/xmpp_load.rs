//! Load harness for XMPP logins, in one run: full logins (TCP, direct TLS, stream header,
//! features, SASL PLAIN, stream restart, the new features) through portcullis to Prosody vs
//! directly against the same Prosody. Both use direct TLS (XEP-0368) with the same certificate,
//! and both check the same app password: Prosody asks portcullis's auth server for the direct
//! logins, and accepts a one-time ticket for the relayed ones.
//!
//! `cargo bench --bench xmpp_load` (LOAD_SECS and LOAD_CLIENTS override 5 s and 16 clients).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use support::{LoadResult, closed_loop, knob};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 5);
    let clients = knob("LOAD_CLIENTS", 16) as usize;
    let auth_port = free_port();
    let prosody_port = free_port();
    let prosody_tls_port = free_port();
    let tail = format!(
        r#"
[[listener]]
protocol = "xmpp"
address = "127.0.0.1:{{http}}"
tls = "implicit"
backend = "prosody"
[backend.prosody]
address = "127.0.0.1:{prosody_port}"
domain = "example.org"
login = "ticket"
strip_domain = true
"#
    );
    let gateway = Gateway::start(
        free_port(),
        free_port(),
        Options {
            extra: format!("[auth_server]\nlisten = [\"127.0.0.1:{auth_port}\"]\n"),
            tail,
            log_filter: "warn",
            // Every simulated client comes from 127.0.0.1.
            limits: "max_pre_login_per_address = 10000".to_owned(),
            ..Options::default()
        },
    );
    let key = gateway.dir.path().join("certs/localhost.key");
    let prosody = Prosody::start_with_tls(
        auth_port,
        "example.org",
        prosody_port,
        Some((&gateway.ca, &key, prosody_tls_port)),
    );
    gateway.create_account("alice", "main password");
    let secret = gateway.app_password("alice", "xmpp", "bench");
    let _ = &prosody;

    let config = {
        let mut config = (*tls_client_config(&gateway.ca)).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("{clients} concurrent clients, {secs} s per row, direct TLS, full handshakes");
    println!();
    println!("| XMPP login | logins/s | p50 ms | p90 ms | p99 ms | failed |");
    println!("|---|---|---|---|---|---|");
    let mut rates = Vec::new();
    for (name, port) in [
        ("Prosody direct", prosody_tls_port),
        ("portcullis -> Prosody", gateway.ports.http),
    ] {
        let result = runtime.block_on(load(
            port,
            &secret,
            clients,
            Duration::from_secs(secs),
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
        "portcullis -> Prosody vs Prosody direct: {:.2}x",
        rates[1] / rates[0]
    );
}

async fn load(
    port: u16,
    secret: &str,
    clients: usize,
    duration: Duration,
    config: Arc<rustls::ClientConfig>,
) -> LoadResult {
    let auth = Arc::new(common::plain("", "alice", secret));
    closed_loop(clients, duration, move || {
        let (auth, config) = (auth.clone(), config.clone());
        async move { login(port, &auth, config).await.map_err(|e| e.to_string()) }
    })
    .await
}

const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream to='example.org' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";

/// One login: header, features, auth, success, restart, features, close.
async fn login(port: u16, auth: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name =
        rustls::pki_types::ServerName::try_from("example.org").map_err(std::io::Error::other)?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let mut seen = String::new();
    tls.write_all(HEADER).await?;
    until(&mut tls, &mut seen, "</stream:features>").await?;
    tls.write_all(
        format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{auth}</auth>")
            .as_bytes(),
    )
    .await?;
    until(&mut tls, &mut seen, "<success").await?;
    tls.write_all(HEADER).await?;
    until(&mut tls, &mut seen, "</stream:features>").await?;
    tls.write_all(b"</stream:stream>").await?;
    Ok(())
}

async fn until<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    seen: &mut String,
    marker: &str,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = seen.find(marker) {
            seen.drain(..i + marker.len());
            return Ok(());
        }
        if seen.contains("<failure") || seen.contains("<stream:error") {
            return Err(std::io::Error::other(format!("refused: {seen}")));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(format!(
                "closed waiting for {marker}"
            )));
        }
        seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}
