//! Mail backend connections opened ahead of the logins that will use them.
//!
//! A mail server makes a new connection wait for its greeting (Dovecot starts a login process
//! for it: about 10 ms here, more than its whole login), and a TLS backend adds a handshake. A
//! client whose credential check has just passed should not wait for that, so each IMAP, POP3
//! and submission backend keeps up to `warm_connections` connections opened and greeted ahead,
//! never logged in:
//!
//! - **Only logins make them.** A login that takes one, or finds none, has one opened for the
//!   next login. A login reaches the backend only after its credential check passed, so a
//!   wrong guess never costs the backend a connection; an idle gateway opens none, and at most
//!   one goes unused per login.
//! - **Each is watched while it waits**, by a task of its own: what the server sends unprompted
//!   (its greeting) is kept for the login to read; a close, an error, or more than
//!   [`MAX_UNPROMPTED`] bytes ends it, so a backend restart empties the pool instead of handing
//!   dead connections to logins.
//! - **Each waits at most [`MAX_WAIT`]**, far below the time servers give a connection to log in
//!   (Dovecot and Postfix give minutes), so a login never gets one the server has given up on.
//! - **A login that fails on one runs again on a new connection**
//!   ([`Backend::login_opened`]): a server restart can leave a connection open in a process
//!   that can no longer log anyone in.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

use super::Backend;
use crate::io::Stream;

/// How long a warm connection waits for a login before it is closed unused.
pub const MAX_WAIT: Duration = Duration::from_secs(15);

/// What a server may say before it is asked anything (a greeting, a multi-line SMTP banner).
pub const MAX_UNPROMPTED: usize = 4096;

/// A backend connection that nobody has logged in on yet.
pub struct Opened {
    pub stream: Stream,
    /// Bytes the server already sent (its greeting, or part of it), to be read first.
    pub unprompted: Vec<u8>,
}

impl Opened {
    /// A connection just made, nothing read yet.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            unprompted: Vec::new(),
        }
    }
}

/// Asks a waiting connection's task to hand the connection over.
type Handle = oneshot::Sender<oneshot::Sender<Opened>>;

/// One backend's warm connections.
pub struct Warm {
    /// How many to keep ready (`warm_connections`); 0 turns this off.
    want: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Waiting connections, newest last.
    ready: Vec<Handle>,
    /// Connections being opened.
    opening: usize,
}

impl Warm {
    pub fn new(want: usize) -> Self {
        Self {
            want,
            state: Mutex::new(State::default()),
        }
    }

    /// A waiting connection, the newest first, or `None` when none is ready.
    pub async fn take(&self) -> Option<Opened> {
        loop {
            let handle = self.state.lock().ok()?.ready.pop()?;
            let (reply, opened) = oneshot::channel();
            // A handle whose task has ended (its connection closed or waited too long) refuses.
            if handle.send(reply).is_ok()
                && let Ok(opened) = opened.await
            {
                return Some(opened);
            }
        }
    }

    /// Opens connections in the background until `want` are ready or being opened.
    pub fn refill(&self, backend: &Arc<Backend>) {
        let missing = match self.state.lock() {
            Ok(mut state) => {
                state.ready.retain(|handle| !handle.is_closed());
                let missing = self.want.saturating_sub(state.ready.len() + state.opening);
                state.opening += missing;
                missing
            }
            Err(_) => 0,
        };
        for _ in 0..missing {
            tokio::spawn(hold(backend.clone()));
        }
    }

    fn opened(&self, handle: Option<Handle>) {
        if let Ok(mut state) = self.state.lock() {
            state.opening = state.opening.saturating_sub(1);
            state.ready.extend(handle);
        }
    }

    /// Connections waiting (some may have just ended).
    #[cfg(test)]
    fn ready(&self) -> usize {
        self.state.lock().map_or(0, |state| state.ready.len())
    }
}

/// Opens one connection and keeps it until a login takes it, the server says too much or
/// closes it, or [`MAX_WAIT`] passes.
async fn hold(backend: Arc<Backend>) {
    let warm = &backend.warm;
    let mut stream = match backend.within_timeout(backend.connect()).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, "warm backend connection not opened");
            warm.opened(None);
            return;
        }
    };
    let (handle, mut requests) = oneshot::channel();
    warm.opened(Some(handle));
    let mut unprompted = Vec::new();
    let mut chunk = [0u8; 1024];
    let expiry = tokio::time::sleep(MAX_WAIT);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            request = &mut requests => {
                if let Ok(reply) = request {
                    let _ = reply.send(Opened { stream, unprompted });
                }
                return;
            }
            () = &mut expiry => return,
            // Reading is cancel-safe: bytes not returned stay in the socket or in rustls.
            read = stream.read(&mut chunk) => match read {
                Ok(n) if n > 0 && unprompted.len() + n <= MAX_UNPROMPTED => {
                    unprompted.extend_from_slice(&chunk[..n]);
                }
                _ => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A backend on a local listener; its accepted sockets arrive on the channel, greeted.
    async fn server() -> (
        Arc<Backend>,
        tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (accepted, sockets) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                socket.write_all(b"* OK hello\r\n").await.unwrap();
                if accepted.send(socket).is_err() {
                    return;
                }
            }
        });
        let config: crate::config::BackendConfig = toml::from_str(&format!(
            "address = \"{address}\"\nlogin = \"master-user\"\n"
        ))
        .unwrap();
        (Arc::new(Backend::new("test", &config).unwrap()), sockets)
    }

    /// What a login would start from.
    async fn take(backend: &Arc<Backend>) -> Opened {
        backend
            .login_opened(|opened| async move { Ok(opened) })
            .await
            .unwrap()
    }

    async fn until_ready(backend: &Backend, n: usize) {
        for _ in 0..200 {
            if backend.warm.ready() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} warm connections, not {n}", backend.warm.ready());
    }

    #[tokio::test]
    async fn a_login_opens_the_next_ones_and_takes_one_with_its_greeting_read() {
        let (backend, mut sockets) = server().await;
        assert_eq!(backend.config.warm_connections, 2);
        // None ready: a new connection, nothing read yet; two more are opened behind it.
        let first = take(&backend).await;
        assert!(first.unprompted.is_empty());
        until_ready(&backend, 2).await;
        // The server keeps its side open.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(sockets.recv().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let warm = take(&backend).await;
        assert_eq!(warm.unprompted, b"* OK hello\r\n");
        // The one taken is replaced.
        until_ready(&backend, 2).await;
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_never_handed_to_a_login() {
        let (backend, mut sockets) = server().await;
        drop(take(&backend).await);
        until_ready(&backend, 2).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(sockets.recv().await.unwrap());
        }
        // The server goes away (a restart): every waiting connection sees it close.
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut opened = take(&backend).await;
        let mut reader = crate::io::LineReader::after(1024, opened.unprompted);
        assert_eq!(
            reader.read_line(&mut opened.stream).await.unwrap(),
            "* OK hello"
        );
        // Open: the server has not closed this one.
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), opened.stream.read(&mut byte))
                .await
                .is_err(),
            "a dead warm connection was handed out"
        );
    }

    #[tokio::test]
    async fn none_are_kept_when_turned_off() {
        let (backend, _sockets) = server().await;
        let mut config = backend.config.clone();
        config.warm_connections = 0;
        let backend = Arc::new(Backend::new("off", &config).unwrap());
        drop(take(&backend).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(backend.warm.ready(), 0);
    }

    /// A warm connection that breaks as the login starts on it: the login runs again on a new
    /// connection, and succeeds.
    #[tokio::test]
    async fn a_login_on_a_warm_connection_that_breaks_runs_again_on_a_new_one() {
        let (backend, mut sockets) = server().await;
        drop(take(&backend).await);
        until_ready(&backend, 2).await;
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(sockets.recv().await.unwrap());
        }
        // The server answers NOOP on connections made from now on; the two waiting ones it
        // closes the moment they speak (as an orphaned login process of a killed server would).
        for mut socket in first.split_off(1) {
            tokio::spawn(async move {
                let mut line = [0u8; 64];
                let _ = socket.read(&mut line).await;
            });
        }
        tokio::spawn(async move {
            while let Some(mut socket) = sockets.recv().await {
                tokio::spawn(async move {
                    let mut line = [0u8; 64];
                    if socket.read(&mut line).await.unwrap_or(0) > 0 {
                        let _ = socket.write_all(b"a OK\r\n").await;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let reply = backend
            .login_opened(|opened| {
                attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let backend = backend.clone();
                async move {
                    let Opened {
                        mut stream,
                        unprompted,
                    } = opened;
                    let mut reader = crate::io::LineReader::after(1024, unprompted);
                    let io = |e| backend.io_error(e);
                    assert_eq!(
                        reader.read_line(&mut stream).await.map_err(io)?,
                        "* OK hello"
                    );
                    stream.write_all(b"a NOOP\r\n").await.map_err(io)?;
                    reader.read_line(&mut stream).await.map_err(io)
                }
            })
            .await;
        assert_eq!(reply.unwrap(), "a OK");
        assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
