//! The relay: bytes both ways until one side closes, the session idles out, the gateway shuts
//! down, or the credential dies.
//!
//! To say goodbye in the protocol (IMAP `* BYE`, SMTP `421`) without corrupting the stream,
//! the relay tracks where the backend's byte stream is: a goodbye is only written at the start
//! of a line that is not inside a literal. Otherwise the connection is simply closed.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::credentials::Grant;
use crate::io::Stream;

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    ClientClosed,
    BackendClosed,
    IdleTimeout,
    /// The credential died; the client was told if the stream allowed it.
    Revoked {
        said_goodbye: bool,
    },
    Shutdown {
        said_goodbye: bool,
    },
    ClientError,
    BackendError,
}

/// Where the backend→client stream is, so a goodbye lands between responses.
pub trait Boundary: Send + Sync {
    /// Bytes the backend sent to the client.
    fn observe(&mut self, bytes: &[u8]);
    /// Bytes the client sent to the backend, for protocols whose response shape depends on
    /// the command.
    fn client_sent(&mut self, _bytes: &[u8]) {}
    fn at_boundary(&self) -> bool;
}

/// POP3 responses are a status line, and after `+OK` to RETR, TOP, CAPA, and LIST or UIDL
/// without an argument, a body of lines ending with one that holds only `.` (RFC 1939
/// section 3). Which one comes depends on the command, so this tracker reads the client's
/// commands too (pipelined ones included, RFC 2449), and a boundary is the start of a status
/// line.
#[derive(Debug, Default)]
pub struct Pop3Boundary {
    /// For each command sent and not yet answered: whether `+OK` starts a body.
    pending: std::collections::VecDeque<bool>,
    /// The start of the client's current command line.
    command: Vec<u8>,
    /// The start of the backend's current line.
    line: Vec<u8>,
    mid_line: bool,
    in_body: bool,
}

/// Enough of a line to tell a status or an end-of-body line from others.
const POP3_PREFIX: usize = 16;

impl Pop3Boundary {
    fn command_done(&mut self) {
        let line = String::from_utf8_lossy(&self.command).to_ascii_uppercase();
        let mut words = line.split_ascii_whitespace();
        let verb = words.next().unwrap_or("");
        let has_argument = words.next().is_some();
        let multi_line = match verb {
            "RETR" | "TOP" | "CAPA" => true,
            "LIST" | "UIDL" => !has_argument,
            _ => false,
        };
        self.pending.push_back(multi_line);
        self.command.clear();
    }

    fn line_done(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if self.in_body {
            self.in_body = line != b".";
        } else {
            let multi_line = self.pending.pop_front().unwrap_or(false);
            self.in_body = multi_line && line.starts_with(b"+OK");
        }
        self.line.clear();
    }
}

impl Boundary for Pop3Boundary {
    fn observe(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.line_done();
                self.mid_line = false;
            } else {
                if self.line.len() < POP3_PREFIX {
                    self.line.push(b);
                }
                self.mid_line = true;
            }
        }
    }

    fn client_sent(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.command_done();
            } else if self.command.len() < POP3_PREFIX {
                self.command.push(b);
            }
        }
    }

    fn at_boundary(&self) -> bool {
        !self.mid_line && !self.in_body
    }
}

/// SMTP replies are lines: a boundary is the start of a line.
#[derive(Debug, Default)]
pub struct LineBoundary {
    mid_line: bool,
}

impl Boundary for LineBoundary {
    fn observe(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.mid_line = last != b'\n';
        }
    }
    fn at_boundary(&self) -> bool {
        !self.mid_line
    }
}

/// IMAP responses are lines that may announce literals (`{123}\r\n` then 123 bytes of data):
/// a boundary is the start of a line outside any literal.
#[derive(Debug, Default)]
pub struct ImapBoundary {
    /// Literal bytes still to come.
    literal_left: u64,
    /// Line state: where in a possible `{digits}` CRLF ending we are.
    tail: Tail,
    mid_line: bool,
}

#[derive(Debug, Default, Clone, Copy)]
enum Tail {
    #[default]
    Other,
    Open,
    Digits(u64),
    Close(u64),
    CloseCr(u64),
    Cr,
}

impl Boundary for ImapBoundary {
    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.literal_left > 0 {
                let take = usize::try_from(self.literal_left)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.literal_left -= take as u64;
                bytes = &bytes[take..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            self.mid_line = true;
            self.tail = match (self.tail, b) {
                (Tail::Close(n) | Tail::CloseCr(n), b'\n') => {
                    // A literal follows; the line goes on after it.
                    self.literal_left = n;
                    Tail::Other
                }
                (Tail::Close(n), b'\r') => Tail::CloseCr(n),
                (_, b'\n') => {
                    self.mid_line = false;
                    Tail::Other
                }
                (_, b'\r') => Tail::Cr,
                (_, b'{') => Tail::Open,
                (Tail::Open, d @ b'0'..=b'9') => Tail::Digits(u64::from(d - b'0')),
                (Tail::Digits(n), d @ b'0'..=b'9') => {
                    Tail::Digits(n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
                }
                (Tail::Digits(n), b'}') => Tail::Close(n),
                _ => Tail::Other,
            };
        }
    }

    fn at_boundary(&self) -> bool {
        self.literal_left == 0 && !self.mid_line
    }
}

/// XMPP: a boundary is between top-level stanzas, directly inside `<stream:stream>`. Depth is
/// followed by the tags' brackets (`<x>` opens, `</x>` closes, `<x/>`, `<?` and `<!` neither);
/// text cannot hold a raw `<`, and a `>` inside an attribute value, legal but unusual, only
/// makes the goodbye fall back to a plain close.
#[derive(Debug, Default)]
pub struct XmlBoundary {
    depth: i64,
    in_tag: bool,
    closing: bool,
    declaration: bool,
    previous: u8,
}

impl Boundary for XmlBoundary {
    fn observe(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_tag {
                match b {
                    b'>' => {
                        self.in_tag = false;
                        // A declaration and a self-closing tag leave the depth as it was.
                        if self.closing {
                            self.depth -= 1;
                        } else if !self.declaration && self.previous != b'/' {
                            self.depth += 1;
                        }
                    }
                    b'/' if self.previous == b'<' => self.closing = true,
                    b'?' | b'!' if self.previous == b'<' => self.declaration = true,
                    _ => {}
                }
            } else if b == b'<' {
                self.in_tag = true;
                self.closing = false;
                self.declaration = false;
            }
            self.previous = b;
        }
    }

    fn at_boundary(&self) -> bool {
        !self.in_tag && self.depth == 1
    }
}

/// What to say when the relay ends on our side.
pub struct Goodbyes {
    pub revoked: &'static [u8],
    pub shutdown: &'static [u8],
}

/// Relays until the end; returns why it ended. Both streams are shut down by the caller's drop.
pub async fn relay(
    client: &mut Stream,
    backend: &mut Stream,
    grant: &Grant,
    boundary: &mut dyn Boundary,
    goodbyes: &Goodbyes,
    idle: Duration,
    shutdown: &CancellationToken,
) -> RelayEnd {
    // No buffer is held while a direction waits (see `Stream::next_chunk`): most relayed
    // sessions sit idle in IDLE or between a client's polls all day.
    let (mut client_scratch, mut backend_scratch) = (Vec::new(), Vec::new());
    let dead = grant.dead();
    tokio::pin!(dead);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut deadline = Instant::now() + idle;

    loop {
        tokio::select! {
            read = client.next_chunk(&mut client_scratch) => match read {
                Ok([]) => return RelayEnd::ClientClosed,
                Ok(chunk) => {
                    // A peer that stops reading must not hold off revocation or shutdown, and a
                    // write blocked for the idle time counts as idle.
                    let n = chunk.len();
                    boundary.client_sent(chunk);
                    tokio::select! {
                        written = backend.write_all(chunk) => if written.is_err() {
                            return RelayEnd::BackendError;
                        },
                        () = &mut dead => return RelayEnd::Revoked { said_goodbye: false },
                        () = &mut cancelled => return RelayEnd::Shutdown { said_goodbye: false },
                        () = tokio::time::sleep_until(deadline) => return RelayEnd::IdleTimeout,
                    }
                    client.consume(&mut client_scratch, n);
                    deadline = Instant::now() + idle;
                }
                Err(e) if gone(&e) => return RelayEnd::ClientClosed,
                Err(_) => return RelayEnd::ClientError,
            },
            read = backend.next_chunk(&mut backend_scratch) => match read {
                Ok([]) => return RelayEnd::BackendClosed,
                Ok(chunk) => {
                    let n = chunk.len();
                    boundary.observe(chunk);
                    tokio::select! {
                        written = client.write_all(chunk) => match written {
                            Ok(()) => {}
                            Err(e) if gone(&e) => return RelayEnd::ClientClosed,
                            Err(_) => return RelayEnd::ClientError,
                        },
                        () = &mut dead => return RelayEnd::Revoked { said_goodbye: false },
                        () = &mut cancelled => return RelayEnd::Shutdown { said_goodbye: false },
                        () = tokio::time::sleep_until(deadline) => return RelayEnd::IdleTimeout,
                    }
                    backend.consume(&mut backend_scratch, n);
                    deadline = Instant::now() + idle;
                }
                Err(_) => return RelayEnd::BackendError,
            },
            () = &mut dead => {
                let said_goodbye = goodbye(client, boundary, goodbyes.revoked).await;
                return RelayEnd::Revoked { said_goodbye };
            }
            () = &mut cancelled => {
                let said_goodbye = goodbye(client, boundary, goodbyes.shutdown).await;
                return RelayEnd::Shutdown { said_goodbye };
            }
            () = tokio::time::sleep_until(deadline) => return RelayEnd::IdleTimeout,
        }
    }
}

/// A peer that hung up rather than failed: most clients end a session (after `LOGOUT` or
/// `QUIT`, or none) by closing the socket without TLS's close_notify, and one that has closed
/// makes the next write fail.
fn gone(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        error.kind(),
        UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted
    )
}

async fn goodbye(client: &mut Stream, boundary: &dyn Boundary, text: &[u8]) -> bool {
    if !boundary.at_boundary() {
        return false;
    }
    // A client that does not read must not hold the goodbye up.
    let write = async {
        client.write_all(text).await?;
        client.shutdown().await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), write).await,
        Ok(Ok(()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pop3_boundary_knows_which_responses_have_a_body() {
        let mut b = Pop3Boundary::default();
        b.observe(b"+OK Logged in\r\n");
        assert!(b.at_boundary());
        // Pipelined: STAT (one line), LIST (a body), LIST 1 (one line), RETR 1 (a body).
        b.client_sent(b"STAT\r\nLIST\r\nLIST 1\r\nRE");
        b.client_sent(b"TR 1\r\n");
        b.observe(b"+OK 1 120\r\n");
        assert!(b.at_boundary());
        b.observe(b"+OK 1 messages\r\n1 120\r\n");
        assert!(!b.at_boundary(), "inside LIST's body");
        b.observe(b".\r\n+OK 1 120\r\n+OK 120 octets\r\nSubject: x\r\n\r\n..");
        assert!(!b.at_boundary(), "mid-line in RETR's body");
        b.observe(b"dot-stuffed\r\n.\r");
        assert!(!b.at_boundary());
        b.observe(b"\n");
        assert!(b.at_boundary());
        // A refused RETR has no body; a line is not a boundary until it ends.
        b.client_sent(b"RETR 9\r\nUIDL 1\r\n");
        b.observe(b"-ERR no such message\r\n+OK 1 uid");
        assert!(!b.at_boundary());
        b.observe(b"\r\n");
        assert!(b.at_boundary());
    }

    #[test]
    fn imap_boundary_follows_lines_and_literals() {
        let mut b = ImapBoundary::default();
        assert!(b.at_boundary());
        b.observe(b"* 1 FETCH (BODY[] {11}\r\n");
        assert!(!b.at_boundary(), "inside the literal");
        b.observe(b"hello\r\nworl");
        assert!(!b.at_boundary());
        b.observe(b"d");
        assert!(!b.at_boundary(), "the line goes on after the literal");
        b.observe(b")\r\n");
        assert!(b.at_boundary());
        // Split across reads, and a literal whose data looks like line ends.
        b.observe(b"* 2 FETCH (BODY[] {");
        b.observe(b"4");
        b.observe(b"}\r");
        b.observe(b"\n\r\n\r\n)");
        assert!(!b.at_boundary());
        b.observe(b"\r\n");
        assert!(b.at_boundary());
        b.observe(b"a1 OK {not a literal}\r\n");
        assert!(b.at_boundary());
        b.observe(b"* OK partial");
        assert!(!b.at_boundary());
    }

    /// A client that stops reading while the backend keeps sending must not keep a revoked
    /// session alive: the relay is blocked in a write when the revocation comes.
    #[tokio::test]
    async fn revocation_cuts_a_session_blocked_on_a_client_that_does_not_read() {
        use std::net::{IpAddr, Ipv4Addr};

        use tokio::net::{TcpListener, TcpStream};

        use crate::credentials::accounts::AccountService;
        use crate::credentials::hashing::PasswordHasher;
        use crate::credentials::index::{CredentialIndex, IndexSettings};
        use crate::credentials::{Login, Protocol, Secret, Service};

        let store = crate::store::open("sqlite::memory:").await.unwrap();
        let accounts = AccountService::new(store.clone(), PasswordHasher::new(1), None);
        let login = Login::parse("alice@example.org", None).unwrap();
        accounts
            .create_account(&login, &Secret::from("a long main password"))
            .await
            .unwrap();
        let account = accounts.account(&login).await.unwrap().id;
        let made = accounts
            .create_app_password(&login, Service::Mail, "t")
            .await
            .unwrap();
        let (secret, id) = (made.secret, made.id);
        let settings = IndexSettings {
            default_domain: None,
            cache_capacity: 10,
            cache_idle: Duration::from_secs(60),
            hash_concurrency: 1,
        };
        let index = CredentialIndex::new(store.clone(), &settings);
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let grant = index
            .authenticate(
                Service::Mail,
                Protocol::Imap,
                &crate::credentials::Credentials::new(login.as_str().to_owned(), secret),
                &peer.into(),
            )
            .await
            .unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _stalled_client = TcpStream::connect(addr).await.unwrap();
        let (gateway_client, _) = listener.accept().await.unwrap();
        let mut backend_side = TcpStream::connect(addr).await.unwrap();
        let (gateway_backend, _) = listener.accept().await.unwrap();

        let relay_task = tokio::spawn(async move {
            let mut client = Stream::Plain(gateway_client);
            let mut backend = Stream::Plain(gateway_backend);
            let goodbyes = Goodbyes {
                revoked: b"* BYE\r\n",
                shutdown: b"* BYE\r\n",
            };
            let shutdown = CancellationToken::new();
            relay(
                &mut client,
                &mut backend,
                &grant,
                &mut ImapBoundary::default(),
                &goodbyes,
                Duration::from_secs(60),
                &shutdown,
            )
            .await
        });
        // Far more than the socket buffers hold: the relay ends up blocked writing to the client.
        let flood = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..1000 {
                if backend_side.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!relay_task.is_finished());
        accounts.revoke_app_password(&login, id).await.unwrap();
        index.refresh_account(account).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(1), relay_task)
            .await
            .expect("the relay was not cut")
            .unwrap();
        assert_eq!(
            end,
            RelayEnd::Revoked {
                said_goodbye: false
            }
        );
        flood.abort();
    }

    #[test]
    fn xml_boundary_is_between_stanzas() {
        let mut b = XmlBoundary::default();
        b.observe(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client'>");
        assert!(b.at_boundary());
        b.observe(b"<message to='a@b'><body>hi</bo");
        assert!(!b.at_boundary());
        b.observe(b"dy><x xmlns='y'/></message>");
        assert!(b.at_boundary());
        b.observe(b"<presence/>");
        assert!(b.at_boundary());
        b.observe(b"<iq type='get'");
        assert!(!b.at_boundary());
    }

    #[test]
    fn line_boundary() {
        let mut b = LineBoundary::default();
        assert!(b.at_boundary());
        b.observe(b"250-PIPE");
        assert!(!b.at_boundary());
        b.observe(b"LINING\r\n250 OK\r\n");
        assert!(b.at_boundary());
    }
}
