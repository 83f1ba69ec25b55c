//! The authentication server: Dovecot's auth protocol on unix and TCP sockets.
//!
//! Each connection runs a [`protocol::dovecot_auth::AuthServer`](crate::protocol::dovecot_auth)
//! machine. Verifications run as tasks of their own, so a slow one (a failure waits out the
//! failure delay, a main password waits for argon2) never holds up the other requests in flight
//! on the same connection; their answers come back through a channel to the one writer.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::gate::Gate;
use super::{Shared, StartError};
use crate::config::{AuthListen, AuthServerConfig};
use crate::credentials::tickets::Tickets;
use crate::credentials::{AuthError, Login, Origin, Protocol};
use crate::protocol::dovecot_auth::Request;
use crate::protocol::dovecot_auth::{AuthServer, Event, Verdict};

/// Time a client has to finish its half of the handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// Binds every `listen` entry and spawns its accept loop.
pub async fn start(
    config: &AuthServerConfig,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
) -> Result<(), StartError> {
    let mode = config.mode().map_err(StartError::Backend)?;
    // The daemons' own pool: clients cannot take it, and it takes nothing from them.
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let idle = Duration::from_secs(config.idle_timeout_secs.max(1));
    for address in config.addresses().map_err(StartError::Backend)? {
        match address {
            AuthListen::Tcp(address) => {
                let socket = TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Bind { address, source })?;
                tracing::info!(%address, "auth server listening");
                let (shared, connections, inner) =
                    (shared.clone(), connections.clone(), tracker.clone());
                tracker.spawn(async move {
                    loop {
                        let accepted = tokio::select! {
                            () = shared.shutdown.cancelled() => return,
                            accepted = socket.accept() => accepted,
                        };
                        let (stream, peer) = match accepted {
                            Ok(pair) => pair,
                            Err(e) => {
                                super::accept_failed(&e).await;
                                continue;
                            }
                        };
                        spawn(stream, Some(peer.ip()), &shared, &connections, &inner, idle);
                    }
                });
            }
            AuthListen::Unix(path) => {
                // A socket left by an earlier run would make bind fail.
                if path.exists() {
                    let _ = std::fs::remove_file(&path);
                }
                let socket = UnixListener::bind(&path).map_err(|e| {
                    StartError::Backend(format!(
                        "[auth_server] cannot listen on {}: {e}",
                        path.display()
                    ))
                })?;
                set_owner_and_mode(&path, config, mode)?;
                tracing::info!(path = %path.display(), "auth server listening");
                let (shared, connections, inner) =
                    (shared.clone(), connections.clone(), tracker.clone());
                tracker.spawn(async move {
                    loop {
                        let accepted = tokio::select! {
                            () = shared.shutdown.cancelled() => return,
                            accepted = socket.accept() => accepted,
                        };
                        let stream = match accepted {
                            Ok((stream, _)) => stream,
                            Err(e) => {
                                super::accept_failed(&e).await;
                                continue;
                            }
                        };
                        spawn(stream, None, &shared, &connections, &inner, idle);
                    }
                });
            }
        }
    }
    Ok(())
}

fn set_owner_and_mode(path: &Path, config: &AuthServerConfig, mode: u32) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err =
        |what: String| StartError::Backend(format!("[auth_server] {}: {what}", path.display()));
    let uid = match &config.unix_user {
        Some(name) => {
            Some(lookup_id("/etc/passwd", name).ok_or_else(|| err(format!("no user {name:?}")))?)
        }
        None => None,
    };
    let gid = match &config.unix_group {
        Some(name) => {
            Some(lookup_id("/etc/group", name).ok_or_else(|| err(format!("no group {name:?}")))?)
        }
        None => None,
    };
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::chown(path, uid, gid).map_err(|e| err(e.to_string()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| err(e.to_string()))
}

/// A ticket minted by one of our gateways: good once, for its account and service.
async fn redeem(shared: &Shared, request: &Request) -> Result<Login, AuthError> {
    let login = shared.index.claimed_account(&request.credentials)?;
    if shared
        .tickets
        .redeem(&login, request.service, &request.credentials.secret)
        .await
    {
        Ok(login)
    } else {
        Err(AuthError::Rejected)
    }
}

/// The numeric id of a name in /etc/passwd or /etc/group (`name:x:id:...`).
fn lookup_id(file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
    })
}

fn spawn<S>(
    stream: S,
    peer: Option<IpAddr>,
    shared: &Arc<Shared>,
    connections: &Arc<Semaphore>,
    tracker: &TaskTracker,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let Ok(permit) = connections.clone().try_acquire_owned() else {
        tracing::warn!("[auth_server] max_connections reached; refusing an auth client");
        return;
    };
    let id = shared.session_ids.fetch_add(1, Ordering::Relaxed);
    let shared = shared.clone();
    let span = tracing::info_span!("auth-client", id);
    let tracker = tracker.clone();
    tracker.clone().spawn(
        async move {
            let _permit = permit;
            serve(stream, peer, id, shared, tracker, idle).await;
        }
        .instrument(span),
    );
}

async fn serve<S: AsyncRead + AsyncWrite>(
    stream: S,
    peer: Option<IpAddr>,
    id: u64,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    idle: Duration,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let cookie = crate::credentials::hashing::hex(&rand::random::<[u8; 16]>());
    let handshake = AuthServer::handshake(std::process::id(), id, &cookie);
    if writer.write_all(handshake.as_bytes()).await.is_err() {
        return;
    }
    let (answers, mut answered) = mpsc::channel::<(u32, Verdict, String)>(256);
    // Cancelled when this function returns, whichever way: the connection is over.
    let gone = tokio_util::sync::CancellationToken::new();
    let _gone = gone.clone().drop_guard();
    let mut machine = AuthServer::new();
    let mut buffer = vec![0u8; 8192];
    let handshake_deadline = Instant::now() + HANDSHAKE_DEADLINE;
    loop {
        loop {
            match machine.next_event() {
                Event::NeedInput => break,
                Event::Write(line) => {
                    if writer.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Event::Close(line) => {
                    tracing::info!("auth client broke the protocol; closing");
                    let _ = writer.write_all(line.as_bytes()).await;
                    return;
                }
                Event::Verify(request) => {
                    let shared = shared.clone();
                    let answers = answers.clone();
                    // On the gateway's tracker, so shutdown waits for (or cuts) them rather
                    // than leaving them running behind it; and cut when the daemon that asked
                    // has gone, so nobody's work outlives its asker.
                    let shutdown = shared.shutdown.clone();
                    let gone = gone.clone();
                    tracker.spawn(async move {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = gone.cancelled() => {}
                            () = verify(request, peer, &shared, &answers) => {}
                        }
                    });
                }
            }
        }
        // Daemons keep their connection open between logins, but not forever in silence: a
        // connection that sends nothing for `idle` gives its place back.
        let until = if machine.handshaken() {
            Instant::now() + idle
        } else {
            handshake_deadline
        };
        let read = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            Some((id, verdict, login)) = answered.recv() => {
                let line = machine.verdict(id, verdict, &login);
                if writer.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            read = tokio::time::timeout_at(until, reader.read(&mut buffer)) => read,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => machine.enqueue(&buffer[..n]),
            Err(_) => {
                tracing::debug!("auth client silent past its deadline; closing");
                return;
            }
        }
    }
}

/// Decides one request and hands the verdict to the connection's writer. A refusal is answered
/// `failure_delay` after the request arrived, whatever failed.
async fn verify(
    request: Request,
    peer: Option<IpAddr>,
    shared: &Shared,
    answers: &mpsc::Sender<(u32, Verdict, String)>,
) {
    // The end user's address as the daemon reports it (rip=), marked as reported by it: a
    // daemon can name any address, so the record says whose word it is.
    let daemon = peer.map_or_else(|| "unix socket".to_owned(), |ip| ip.to_string());
    let origin = Origin {
        ip: request
            .remote_ip
            .or(peer)
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        reported_by: Some(format!("auth server {daemon}")),
        ip_known: request.remote_ip.is_some(),
    };
    let gate = Gate::arrived(shared, origin);
    // Without rip= the address is the daemon's, shared by all its users: throttling or banning
    // it would lock everyone out, so such logins are only delayed and logged.
    let gate = if request.remote_ip.is_some() {
        gate
    } else {
        gate.client_unknown()
    };
    let protocol = Protocol::from_auth_service(&request.service_name).unwrap_or(Protocol::Imap);
    let outcome = if Tickets::is_ticket(&request.credentials.secret) {
        let redeemed = redeem(shared, &request).await;
        if redeemed.is_err() {
            gate.refuse(
                &request.credentials.login,
                request.service,
                protocol,
                "ticket",
            )
            .await;
        }
        redeemed
    } else {
        gate.check(request.service, protocol, &request.credentials)
            .await
            .map(|grant| grant.login)
    };
    let (verdict, login) = match outcome {
        // The user name in the form the daemon asked with: the full login for
        // `alice@example.org`, the local part for `alice` (Prosody takes `user=` as the node
        // of the JID it binds).
        Ok(login) if request.credentials.login.contains('@') => {
            (Verdict::Accepted, login.to_string())
        }
        Ok(login) => (Verdict::Accepted, login.local_part().to_owned()),
        Err(AuthError::Rejected) => (Verdict::Rejected, String::new()),
        Err(AuthError::Unavailable(_)) => (Verdict::Temporary, String::new()),
    };
    let _ = answers.send((request.id, verdict, login)).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio_util::sync::CancellationToken;

    use crate::config::Config;
    use crate::credentials::{Login, Service};
    use crate::server::Gateway;

    /// Tickets minted in the gateway are redeemed through the auth protocol: once, for their
    /// account and service.
    #[tokio::test]
    async fn tickets_are_accepted_once_for_their_account_and_service() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.crt");
        let key = dir.path().join("c.key");
        crate::tls::write_dev_certificate(&cert, &key).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = Config::parse(&format!(
            "default_domain = \"example.org\"\n[store]\nurl = \"sqlite://{}/p.db\"\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n[auth]\nfailure_delay_ms = 10\n[auth_server]\nlisten = [\"127.0.0.1:{port}\"]\n",
            dir.path().display(),
            cert.display(),
            key.display()
        ))
        .unwrap();
        let shutdown = CancellationToken::new();
        let gateway = Gateway::start(config, shutdown.clone()).await.unwrap();
        let tickets = gateway.tickets();
        let alice = Login::parse("alice@example.org", None).unwrap();
        let ticket = tickets.mint(&alice, Service::Xmpp).await.unwrap();
        let smtp_ticket = tickets.mint(&alice, Service::Xmpp).await.unwrap();
        let text = |t: &crate::credentials::Secret| String::from_utf8(t.expose().to_vec()).unwrap();
        let plain = |password: &str| {
            crate::protocol::sasl::encode_base64(format!("\0alice\0{password}").as_bytes())
        };

        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let mut lines = BufReader::new(reader).lines();
        while lines.next_line().await.unwrap().as_deref() != Some("DONE") {}
        writer.write_all(b"VERSION\t1\t0\nCPID\t1\n").await.unwrap();
        let mut ask = async |id: u32, service: &str, password: &str| {
            writer
                .write_all(
                    format!(
                        "AUTH\t{id}\tPLAIN\tservice={service}\tresp={}\n",
                        plain(password)
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
            lines.next_line().await.unwrap().unwrap()
        };
        assert_eq!(ask(1, "xmpp", &text(&ticket)).await, "OK\t1\tuser=alice");
        assert_eq!(
            ask(2, "xmpp", &text(&ticket)).await,
            "FAIL\t2",
            "a ticket works once"
        );
        assert_eq!(
            ask(3, "smtp", &text(&smtp_ticket)).await,
            "FAIL\t3",
            "only for its service"
        );
        assert_eq!(
            ask(4, "xmpp", "pct1-0000").await,
            "FAIL\t4",
            "an unknown ticket"
        );
        shutdown.cancel();
        gateway.run_until_shutdown().await;
    }
}
