//! An IMAP session: pre-auth through the shared driver, then backend login and the relay.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::ListenerContext;
use super::session::{PreAuthEnd, Session, write};
use crate::credentials::Protocol;
use crate::protocol::imap::{PreAuth, Settings};
use crate::upstream::relay::{Boundary, Goodbyes, ImapBoundary, relay};
use crate::upstream::{ClientInfo, imap as backend_imap};

const GOODBYES: Goodbyes = Goodbyes {
    revoked: b"* BYE Session ended: the credential was revoked\r\n",
    shutdown: b"* BYE Server shutting down\r\n",
};

pub async fn serve(tcp: TcpStream, client: ClientInfo, context: &Arc<ListenerContext>) {
    let session = Session::new(context, client, Protocol::Imap);
    let Some(mut stream) = session.open(tcp).await else {
        return;
    };
    let shared = &context.shared;
    let mut machine = PreAuth::new(Settings {
        max_line: shared.limits.max_line,
        max_literal: shared.limits.max_literal,
        max_failures: shared.auth.max_failures,
        max_bad_commands: shared.limits.max_bad_commands,
        tls: stream.is_tls(),
        starttls: !stream.is_tls(),
        plaintext_auth: context.config.allow_plaintext_auth_on_loopback,
    });
    let mut greet = true;
    loop {
        let (client_stream, tag, grant) = match session.pre_auth(stream, &mut machine, greet).await {
            PreAuthEnd::LoggedIn { stream, tag, grant } => (stream, tag, grant),
            PreAuthEnd::Closed => return,
        };
        stream = client_stream;
        greet = false;
        let mut backend = match backend_imap::login(&context.backend, &grant.login, client).await {
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
        let (reply, pipelined) = machine.login_accepted(&tag, &backend.capabilities);
        let mut boundary = ImapBoundary::default();
        let mut to_client = reply;
        to_client.extend_from_slice(&backend.leftover);
        boundary.observe(&to_client);
        if !write(&mut stream, &to_client).await {
            return;
        }
        if !pipelined.is_empty() && backend.stream.write_all(&pipelined).await.is_err() {
            return;
        }
        let idle = Duration::from_secs(shared.limits.imap_idle_timeout_secs);
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
