//! A submission session: pre-auth through the shared driver, then backend login and the relay.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::ListenerContext;
use super::session::{PreAuthEnd, Session, write};
use crate::credentials::Protocol;
use crate::protocol::smtp::{PreAuth, Settings};
use crate::upstream::relay::{Boundary, Goodbyes, LineBoundary, relay};
use crate::upstream::{ClientInfo, smtp as backend_smtp};

const GOODBYES: Goodbyes = Goodbyes {
    revoked: b"421 4.7.0 Session ended: the credential was revoked\r\n",
    shutdown: b"421 4.3.2 Server shutting down\r\n",
};

pub async fn serve(tcp: TcpStream, client: ClientInfo, context: &Arc<ListenerContext>) {
    let session = Session::new(context, client, Protocol::Submission);
    let Some(mut stream) = session.open(tcp).await else {
        return;
    };
    let shared = &context.shared;
    let extensions = context
        .smtp_extensions
        .read()
        .map(|e| e.clone())
        .unwrap_or_default();
    let mut machine = PreAuth::new(Settings {
        hostname: shared.hostname.clone(),
        max_line: shared.limits.max_line,
        max_failures: shared.auth.max_failures,
        max_bad_commands: shared.limits.max_bad_commands,
        tls: stream.is_tls(),
        starttls: !stream.is_tls(),
        plaintext_auth: context.config.allow_plaintext_auth_on_loopback,
        backend_extensions: extensions,
    });
    let mut greet = true;
    loop {
        let (client_stream, tag, grant) = match session.pre_auth(stream, &mut machine, greet).await {
            PreAuthEnd::LoggedIn { stream, tag, grant } => (stream, tag, grant),
            PreAuthEnd::Closed => return,
        };
        stream = client_stream;
        greet = false;
        let helo = machine.helo_name().unwrap_or(&shared.hostname).to_owned();
        let mut backend = match backend_smtp::login(&context.backend, &grant.login, client, &helo).await {
            Ok(backend) => backend,
            Err(e) => {
                tracing::warn!(error = %e, backend = %context.backend.name, "backend login failed");
                if let crate::protocol::Action::Write(reply) = machine.login_unavailable(&tag) {
                    if !write(&mut stream, &reply).await {
                        return;
                    }
                }
                continue;
            }
        };
        if let Ok(mut cached) = context.smtp_extensions.write() {
            cached.clone_from(&backend.extensions);
        }
        let (reply, pipelined) = machine.login_accepted();
        let mut boundary = LineBoundary::default();
        let mut to_client = reply;
        to_client.extend_from_slice(&backend.leftover);
        boundary.observe(&to_client);
        if !write(&mut stream, &to_client).await {
            return;
        }
        if !pipelined.is_empty() && backend.stream.write_all(&pipelined).await.is_err() {
            return;
        }
        let idle = Duration::from_secs(shared.limits.smtp_idle_timeout_secs);
        let end = relay(
            &mut stream,
            &mut backend.stream,
            &grant,
            &mut boundary,
            &GOODBYES,
            idle,
            &shared.shutdown,
        )
        .await;
        tracing::info!(?end, login = %grant.login, "session ended");
        let _ = backend.stream.shutdown().await;
        return;
    }
}
