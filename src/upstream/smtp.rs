//! Logging in to an SMTP submission backend on the user's behalf.
//!
//! Greeting, EHLO, optional STARTTLS (and EHLO again), the client's address through XCLIENT
//! where the backend offers it, then the login: `AUTH PLAIN` with the master credentials, or
//! Postfix's `XCLIENT LOGIN=`. The backend's EHLO keywords are returned so the listener can
//! offer the same extensions to the next client.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::warm::Opened;
use super::{Backend, BackendError, ClientInfo};
use crate::config::{BackendLogin, BackendTls};
use crate::credentials::Login;
use crate::io::{LineReader, Stream};
use crate::protocol::smtp::parse_ehlo_keywords;

const MAX_BACKEND_LINE: usize = 4096;
/// A reply longer than this many lines is not a reply.
const MAX_REPLY_LINES: usize = 100;

/// A logged-in backend session.
pub struct Session {
    pub stream: Stream,
    /// The backend's EHLO keywords (after TLS, before login).
    pub extensions: Vec<String>,
    pub leftover: Vec<u8>,
}

/// Connects and logs in as `login`, within the backend's timeout. `helo` is the name the
/// client gave; `hostname` ours, used when the client gave none.
pub async fn login(
    backend: &Arc<Backend>,
    login: &Login,
    client: ClientInfo,
    helo: &str,
) -> Result<Session, BackendError> {
    backend
        .login_opened(|opened| login_inner(backend, opened, login, client, helo))
        .await
}

/// Learns the backend's EHLO keywords without logging in (greeting, EHLO, QUIT).
pub async fn probe_extensions(backend: &Backend, helo: &str) -> Result<Vec<String>, BackendError> {
    let work = async {
        let (mut conn, extensions) = Conn::open(backend).await?.hello(helo).await?;
        let _ = conn.stream.write_all(b"QUIT\r\n").await;
        Ok(extensions)
    };
    backend.within_timeout(work).await
}

/// Hands one message to a relay (the portal's codes): greeting, EHLO (STARTTLS when
/// configured), MAIL, RCPT, DATA, QUIT. `message` is the whole message, CRLF line ends, no
/// line starting with a dot.
pub async fn send(
    relay: &Backend,
    helo: &str,
    from: &str,
    to: &str,
    message: &str,
) -> Result<(), BackendError> {
    let work = async {
        let (mut conn, _) = Conn::open(relay).await?.hello(helo).await?;
        conn.command(format!("MAIL FROM:<{from}>\r\n").as_bytes(), 250)
            .await?;
        conn.command(format!("RCPT TO:<{to}>\r\n").as_bytes(), 250)
            .await?;
        conn.command(b"DATA\r\n", 354).await?;
        let mut data = message.to_owned();
        data.push_str(".\r\n");
        conn.command(data.as_bytes(), 250).await?;
        let _ = conn.stream.write_all(b"QUIT\r\n").await;
        Ok(())
    };
    relay.within_timeout(work).await
}

async fn login_inner(
    backend: &Backend,
    opened: Opened,
    login: &Login,
    client: ClientInfo,
    helo: &str,
) -> Result<Session, BackendError> {
    let (mut conn, mut extensions) = Conn::greeted(backend, opened).await?.hello(helo).await?;
    let offers_xclient = extensions.iter().find(|e| keyword(e) == "XCLIENT").cloned();
    let user = backend.user_for(login);

    match backend.config.login {
        BackendLogin::Xclient => {
            let Some(_) = offers_xclient else {
                return Err(backend
                    .protocol_error("login = \"xclient\" but the backend does not offer XCLIENT"));
            };
            let command = format!(
                "XCLIENT LOGIN={} ADDR={}\r\n",
                xtext(&user),
                client.peer.ip()
            );
            conn.command(command.as_bytes(), 220).await?;
            (conn, extensions) = conn.hello(helo).await?;
        }
        BackendLogin::TrustedHeader | BackendLogin::Basic | BackendLogin::Ticket => {
            return Err(backend.protocol_error("an HTTP login method on an SMTP backend"));
        }
        BackendLogin::MasterUser | BackendLogin::SaslAuthzid => {
            if let Some(xclient) = offers_xclient
                && xclient
                    .split(' ')
                    .any(|attr| attr.eq_ignore_ascii_case("ADDR"))
            {
                let command = format!("XCLIENT ADDR={}\r\n", client.peer.ip());
                conn.command(command.as_bytes(), 220).await?;
                (conn, extensions) = conn.hello(helo).await?;
            }
            let plain = backend
                .plain_login(&user)
                .ok_or_else(|| backend.protocol_error("no master credentials configured"))?;
            let mut command = b"AUTH PLAIN ".to_vec();
            command.extend_from_slice(plain.expose());
            command.extend_from_slice(b"\r\n");
            let result = conn.command(&command, 235).await;
            // The command held the master password; do not keep it around.
            zeroize::Zeroize::zeroize(&mut command);
            result?;
        }
    }
    Ok(Session {
        stream: conn.stream,
        extensions,
        leftover: conn.reader.into_leftover(),
    })
}

struct Conn<'a> {
    backend: &'a Backend,
    stream: Stream,
    reader: LineReader,
}

impl<'a> Conn<'a> {
    async fn open(backend: &'a Backend) -> Result<Conn<'a>, BackendError> {
        Self::greeted(backend, Opened::new(backend.connect().await?)).await
    }

    /// Reads the greeting on a connection nobody has spoken on yet.
    async fn greeted(backend: &'a Backend, opened: Opened) -> Result<Conn<'a>, BackendError> {
        let mut conn = Conn {
            backend,
            stream: opened.stream,
            reader: LineReader::after(MAX_BACKEND_LINE, opened.unprompted),
        };
        let (code, lines) = conn.reply().await?;
        if code != 220 {
            return Err(backend.refused(lines.last().map_or("", String::as_str)));
        }
        Ok(conn)
    }

    /// EHLO, and when configured and not yet done, STARTTLS and a second EHLO. Consumes the
    /// connection because STARTTLS replaces its stream.
    async fn hello(mut self, helo: &str) -> Result<(Conn<'a>, Vec<String>), BackendError> {
        let lines = self
            .command(format!("EHLO {helo}\r\n").as_bytes(), 250)
            .await?;
        if self.backend.config.tls != BackendTls::Starttls || self.stream.is_tls() {
            return Ok((self, parse_ehlo_keywords(&lines)));
        }
        self.command(b"STARTTLS\r\n", 220).await?;
        let backend = self.backend;
        // Nothing read before the handshake may count after it.
        let tcp = self
            .stream
            .into_plain()
            .ok_or_else(|| backend.protocol_error("STARTTLS on a TLS stream"))?;
        let mut conn = Conn {
            backend,
            stream: backend.start_tls(tcp).await?,
            reader: LineReader::new(MAX_BACKEND_LINE),
        };
        let lines = conn
            .command(format!("EHLO {helo}\r\n").as_bytes(), 250)
            .await?;
        Ok((conn, parse_ehlo_keywords(&lines)))
    }

    /// Sends a command and expects the reply code `expect`.
    async fn command(&mut self, command: &[u8], expect: u16) -> Result<Vec<String>, BackendError> {
        self.stream
            .write_all(command)
            .await
            .map_err(|e| self.backend.io_error(e))?;
        let (code, lines) = self.reply().await?;
        if code != expect {
            return Err(self.backend.refused(&lines.join(" / ")));
        }
        Ok(lines)
    }

    /// One (possibly multi-line) reply: its code and its lines.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), BackendError> {
        let mut lines = Vec::new();
        loop {
            let line = self
                .reader
                .read_line(&mut self.stream)
                .await
                .map_err(|e| self.backend.io_error(e))?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    self.backend
                        .protocol_error(format!("bad reply line {line:?}"))
                })?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok((code, lines));
            }
            if lines.len() > MAX_REPLY_LINES {
                return Err(self.backend.protocol_error("reply too long"));
            }
        }
    }
}

fn keyword(extension: &str) -> String {
    extension
        .split(' ')
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// RFC 3461 xtext, as XCLIENT attribute values use it.
fn xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xtext_encodes_plus_equals_and_non_printables() {
        assert_eq!(xtext("alice@example.org"), "alice@example.org");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
