//! One stream type for every socket: plain TCP, TLS accepted from a client, or TLS to a backend.
//!
//! STARTTLS turns a plain stream into a TLS one mid-connection; keeping all three in one enum
//! lets the session and the relay stay non-generic.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How much a plain socket is read at once.
const CHUNK: usize = 16 * 1024;

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    /// TLS accepted from a client.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS opened to a backend.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Waits for data and returns what has arrived (empty at the end of the stream), without
    /// holding a buffer while it waits: an idle relayed session, the common case by far, then
    /// costs no buffer. A TLS stream hands out the plaintext rustls already holds; a plain
    /// socket is read into `scratch`, which is allocated only once data is there and freed by
    /// [`Stream::consume`].
    pub async fn next_chunk<'a>(&'a mut self, scratch: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        match self {
            Stream::Plain(tcp) => loop {
                tcp.readable().await?;
                scratch.reserve(CHUNK);
                match tcp.try_read_buf(scratch) {
                    Ok(_) => return Ok(scratch.as_slice()),
                    // A false alarm: wait again without the buffer.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => *scratch = Vec::new(),
                    Err(e) => return Err(e),
                }
            },
            Stream::Server(tls) => tls.fill_buf().await,
            Stream::Client(tls) => tls.fill_buf().await,
        }
    }

    /// Marks the `n` bytes [`Stream::next_chunk`] returned as used.
    pub fn consume(&mut self, scratch: &mut Vec<u8>, n: usize) {
        match self {
            Stream::Plain(_) => *scratch = Vec::new(),
            Stream::Server(tls) => Pin::new(tls.as_mut()).consume(n),
            Stream::Client(tls) => Pin::new(tls.as_mut()).consume(n),
        }
    }

    /// The TCP socket under the stream, for the plain→TLS upgrade.
    pub fn into_plain(self) -> Option<TcpStream> {
        match self {
            Stream::Plain(tcp) => Some(tcp),
            _ => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Reads CRLF-terminated lines from a backend with a length bound, keeping what follows.
pub struct LineReader {
    buffer: Vec<u8>,
    max_line: usize,
}

impl LineReader {
    pub fn new(max_line: usize) -> Self {
        Self::after(max_line, Vec::new())
    }

    /// A reader whose first bytes are `read` (already taken from the stream).
    pub fn after(max_line: usize, read: Vec<u8>) -> Self {
        Self {
            buffer: read,
            max_line,
        }
    }

    /// The next line without its line ending. `UnexpectedEof` when the peer closed first,
    /// `InvalidData` when a line exceeds the bound.
    pub async fn read_line<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffer.len() > self.max_line {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whatever was read past the last line returned.
    pub fn into_leftover(self) -> Vec<u8> {
        self.buffer
    }

    /// Forgets buffered bytes (after STARTTLS, nothing read in plaintext may count).
    pub fn clear(&mut self) {
        self.buffer.clear();
    }
}
