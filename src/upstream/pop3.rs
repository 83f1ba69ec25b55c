//! Logging in to a POP3 backend on the user's behalf.
//!
//! Greeting, optional STLS, then `XCLIENT` with the client's address (Dovecot honours it from
//! `login_trusted_networks`; a server without it answers `-ERR` and nothing else changes)
//! pipelined with `AUTH PLAIN` carrying the master credentials as an initial response
//! (RFC 5034).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::warm::Opened;
use super::{Backend, BackendError, ClientInfo};
use crate::config::BackendTls;
use crate::credentials::Login;
use crate::io::{LineReader, Stream};

/// Longest response line accepted from a backend before login (RFC 2449: 512 octets).
const MAX_BACKEND_LINE: usize = 4 * 1024;

/// A logged-in backend session, in the TRANSACTION state.
pub struct Session {
    pub stream: Stream,
    /// Bytes the backend sent past its login reply; they go to the client first.
    pub leftover: Vec<u8>,
}

/// Connects and logs in as `login`, within the backend's timeout.
pub async fn login(
    backend: &Arc<Backend>,
    login: &Login,
    client: ClientInfo,
) -> Result<Session, BackendError> {
    backend
        .login_opened(|opened| login_inner(backend, opened, login, client))
        .await
}

async fn login_inner(
    backend: &Backend,
    opened: Opened,
    login: &Login,
    client: ClientInfo,
) -> Result<Session, BackendError> {
    let mut stream = opened.stream;
    let mut reader = LineReader::after(MAX_BACKEND_LINE, opened.unprompted);
    let read = async |stream: &mut Stream, reader: &mut LineReader| {
        reader
            .read_line(stream)
            .await
            .map_err(|e| backend.io_error(e))
    };
    let greeting = read(&mut stream, &mut reader).await?;
    if !greeting.starts_with("+OK") {
        return Err(backend.refused(&greeting));
    }
    if backend.config.tls == BackendTls::Starttls {
        stream
            .write_all(b"STLS\r\n")
            .await
            .map_err(|e| backend.io_error(e))?;
        let reply = read(&mut stream, &mut reader).await?;
        if !reply.starts_with("+OK") {
            return Err(backend.refused(&reply));
        }
        reader.clear();
        let tcp = stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("STLS on a TLS stream"))?;
        stream = backend.start_tls(tcp).await?;
    }

    let user = backend.user_for(login);
    let plain = backend
        .plain_login(&user)
        .ok_or_else(|| backend.protocol_error("no master credentials configured"))?;
    let mut request = format!(
        "XCLIENT ADDR={} PORT={}\r\nAUTH PLAIN ",
        client.peer.ip(),
        client.peer.port()
    )
    .into_bytes();
    request.extend_from_slice(plain.expose());
    request.extend_from_slice(b"\r\n");
    stream
        .write_all(&request)
        .await
        .map_err(|e| backend.io_error(e))?;
    drop(request);
    let xclient = read(&mut stream, &mut reader).await?;
    tracing::trace!(reply = %xclient, "backend XCLIENT");
    let reply = read(&mut stream, &mut reader).await?;
    if !reply.starts_with("+OK") {
        return Err(backend.refused(&reply));
    }
    Ok(Session {
        stream,
        leftover: reader.into_leftover(),
    })
}
