//! Logging in to an IMAP backend on the user's behalf.
//!
//! Greeting, optional STARTTLS, then `ID` (passing the client's address, which Dovecot honours
//! from `login_trusted_networks`) pipelined with `AUTHENTICATE PLAIN` carrying the master
//! credentials. The tagged OK's CAPABILITY code (or an explicit CAPABILITY command) gives the
//! capabilities the client is told about.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::warm::Opened;
use super::{Backend, BackendError, ClientInfo};
use crate::config::BackendTls;
use crate::credentials::Login;
use crate::io::{LineReader, Stream};

/// Longest response line accepted from a backend before login.
const MAX_BACKEND_LINE: usize = 64 * 1024;

/// A logged-in backend session.
pub struct Session {
    pub stream: Stream,
    /// Capabilities after login, for the client's tagged OK.
    pub capabilities: String,
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
    let greeting = reader
        .read_line(&mut stream)
        .await
        .map_err(|e| backend.io_error(e))?;
    if !greeting.starts_with("* OK") {
        return Err(backend.refused(&greeting));
    }
    let mut capabilities = capability_code(&greeting);

    if backend.config.tls == BackendTls::Starttls {
        stream
            .write_all(b"P0 STARTTLS\r\n")
            .await
            .map_err(|e| backend.io_error(e))?;
        let (reply, _) = read_tagged(backend, &mut stream, &mut reader, "P0").await?;
        if !reply.starts_with("P0 OK") {
            return Err(backend.refused(&reply));
        }
        reader.clear();
        let tcp = stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("STARTTLS on a TLS stream"))?;
        stream = backend.start_tls(tcp).await?;
        capabilities = None;
    }

    let user = backend.user_for(login);
    let plain = backend
        .plain_login(&user)
        .ok_or_else(|| backend.protocol_error("no master credentials configured"))?;
    let sasl_ir = capabilities
        .as_deref()
        .is_none_or(|caps| has_capability(caps, "SASL-IR"));

    // ID and the login in one write: one round trip less per login.
    let mut request = format!(
        "P1 ID (\"x-originating-ip\" \"{}\" \"x-originating-port\" \"{}\" \"x-connected-ip\" \"{}\" \"x-connected-port\" \"{}\")\r\n",
        client.peer.ip(),
        client.peer.port(),
        client.local.ip(),
        client.local.port()
    )
    .into_bytes();
    request.extend_from_slice(b"P2 AUTHENTICATE PLAIN");
    if sasl_ir {
        request.push(b' ');
        request.extend_from_slice(plain.expose());
    }
    request.extend_from_slice(b"\r\n");
    stream
        .write_all(&request)
        .await
        .map_err(|e| backend.io_error(e))?;
    drop(request);

    let (id_reply, _) = read_tagged(backend, &mut stream, &mut reader, "P1").await?;
    tracing::trace!(reply = %id_reply, "backend ID");
    if !sasl_ir {
        let line = reader
            .read_line(&mut stream)
            .await
            .map_err(|e| backend.io_error(e))?;
        if !line.starts_with('+') {
            return Err(backend.refused(&line));
        }
        let mut response = plain.expose().to_vec();
        response.extend_from_slice(b"\r\n");
        stream
            .write_all(&response)
            .await
            .map_err(|e| backend.io_error(e))?;
    }
    let (reply, untagged_caps) = read_tagged(backend, &mut stream, &mut reader, "P2").await?;
    if !reply.starts_with("P2 OK") {
        return Err(backend.refused(&reply));
    }
    let capabilities = match capability_code(&reply).or(untagged_caps) {
        Some(caps) => caps,
        None => {
            stream
                .write_all(b"P3 CAPABILITY\r\n")
                .await
                .map_err(|e| backend.io_error(e))?;
            let (reply, caps) = read_tagged(backend, &mut stream, &mut reader, "P3").await?;
            match (reply.starts_with("P3 OK"), caps) {
                (true, Some(caps)) => caps,
                _ => return Err(backend.protocol_error("no CAPABILITY after login")),
            }
        }
    };
    Ok(Session {
        stream,
        capabilities,
        leftover: reader.into_leftover(),
    })
}

/// Reads until the tagged reply for `tag`; returns it and any untagged CAPABILITY seen.
async fn read_tagged(
    backend: &Backend,
    stream: &mut Stream,
    reader: &mut LineReader,
    tag: &str,
) -> Result<(String, Option<String>), BackendError> {
    let mut capabilities = None;
    // Bounded: a backend that talks forever without answering hits the login timeout.
    loop {
        let line = reader
            .read_line(stream)
            .await
            .map_err(|e| backend.io_error(e))?;
        if let Some(rest) = line.strip_prefix("* CAPABILITY ") {
            capabilities = Some(rest.trim().to_owned());
        } else if line.starts_with("* BYE") {
            return Err(backend.refused(&line));
        } else if line
            .strip_prefix(tag)
            .is_some_and(|rest| rest.starts_with(' '))
        {
            return Ok((line, capabilities));
        }
    }
}

/// The capability list in a `[CAPABILITY ...]` response code, if any.
pub fn capability_code(line: &str) -> Option<String> {
    let start = line.find("[CAPABILITY ")? + "[CAPABILITY ".len();
    let end = line[start..].find(']')? + start;
    Some(line[start..end].trim().to_owned())
}

fn has_capability(capabilities: &str, name: &str) -> bool {
    capabilities
        .split(' ')
        .any(|c| c.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_codes() {
        assert_eq!(
            capability_code("* OK [CAPABILITY IMAP4rev1 SASL-IR ID] Dovecot ready.").as_deref(),
            Some("IMAP4rev1 SASL-IR ID")
        );
        assert_eq!(capability_code("P2 OK Logged in"), None);
        assert!(has_capability("IMAP4rev1 sasl-ir", "SASL-IR"));
        assert!(!has_capability("IMAP4rev1 SASL-IRX", "SASL-IR"));
    }
}
