//! Logging in to an XMPP backend (Prosody) with a one-time ticket.
//!
//! Stream header, features, optional STARTTLS, then SASL PLAIN with the account's local part
//! and a ticket the backend checks by asking portcullis's auth server. The client's secret
//! never reaches the backend. After `<success/>` the backend waits for a stream restart, which
//! the client sends through the relay.
//!
//! The backend is the operator's own server, so its replies are read with a plain substring
//! scan under a size cap and the login deadline, not with the strict parser the clients get.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Backend, BackendError};
use crate::config::BackendTls;
use crate::credentials::Secret;
use crate::io::Stream;

/// Largest reply read from the backend before login.
const MAX_REPLY: usize = 64 * 1024;

/// A logged-in backend stream, waiting for the client's restart.
pub struct Session {
    pub stream: Stream,
}

/// Logs in as `user` (the local part) with `ticket`, within the backend's timeout.
pub async fn login(
    backend: &Backend,
    user: &str,
    ticket: &Secret,
) -> Result<Session, BackendError> {
    backend
        .login_within_timeout(login_inner(backend, user, ticket))
        .await
}

async fn login_inner(
    backend: &Backend,
    user: &str,
    ticket: &Secret,
) -> Result<Session, BackendError> {
    let domain = backend.config.domain.clone().unwrap_or_default();
    let mut stream = backend.connect().await?;
    open(backend, &mut stream, &domain).await?;
    if backend.config.tls == BackendTls::Starttls {
        send(
            backend,
            &mut stream,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
        )
        .await?;
        let reply = read_until(backend, &mut stream, &["<proceed", "<failure"]).await?;
        if !reply.contains("<proceed") {
            return Err(backend.refused("STARTTLS refused"));
        }
        let tcp = stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("STARTTLS on a TLS stream"))?;
        stream = backend.start_tls(tcp).await?;
        open(backend, &mut stream, &domain).await?;
    }
    let plain = crate::protocol::sasl::plain_message("", user, ticket);
    let mut auth = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>".to_vec();
    auth.extend_from_slice(plain.expose());
    auth.extend_from_slice(b"</auth>");
    let sent = send(backend, &mut stream, &auth).await;
    zeroize::Zeroize::zeroize(&mut auth);
    sent?;
    let reply = read_until(
        backend,
        &mut stream,
        &["<success", "<failure", "</stream:stream>"],
    )
    .await?;
    if !reply.contains("<success") {
        return Err(backend.refused(&reply));
    }
    Ok(Session { stream })
}

async fn open(backend: &Backend, stream: &mut Stream, domain: &str) -> Result<(), BackendError> {
    let header = format!(
        "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        crate::protocol::xml_escape(domain)
    );
    send(backend, stream, header.as_bytes()).await?;
    let features = read_until(
        backend,
        stream,
        &[
            "</stream:features>",
            "<stream:features/>",
            "</stream:stream>",
        ],
    )
    .await?;
    if features.contains("<stream:error") {
        return Err(backend.refused(&features));
    }
    Ok(())
}

async fn send(backend: &Backend, stream: &mut Stream, bytes: &[u8]) -> Result<(), BackendError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| backend.io_error(e))?;
    stream.flush().await.map_err(|e| backend.io_error(e))
}

/// Reads until one of `ends` appears; returns everything read. Reads byte-chunks without
/// reading past what the backend sent for this step (it sends nothing more until we speak).
async fn read_until(
    backend: &Backend,
    stream: &mut Stream,
    ends: &[&str],
) -> Result<String, BackendError> {
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = ends.iter().find_map(|e| text.find(e).map(|i| i + e.len()))
            && text[end..].contains('>') | text[..end].ends_with('>')
        {
            return Ok(text);
        }
        if text.len() > MAX_REPLY {
            return Err(backend.protocol_error("reply too long"));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| backend.io_error(e))?;
        if n == 0 {
            return Err(backend.protocol_error("connection closed"));
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}
