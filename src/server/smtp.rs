//! A submission session: pre-auth through the shared driver, then backend login and the relay.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ListenerContext;
use super::admission::Admitted;
use super::session::{PreAuthEnd, Session};
use crate::credentials::Protocol;
use crate::protocol::smtp::{PreAuth, Settings};
use crate::upstream::relay::{Goodbyes, LineBoundary};
use crate::upstream::{ClientInfo, smtp as backend_smtp};

const GOODBYES: Goodbyes = Goodbyes {
    revoked: b"421 4.7.0 Session ended: the credential was revoked or has expired\r\n",
    shutdown: b"421 4.3.2 Server shutting down\r\n",
};

pub async fn serve(
    tcp: TcpStream,
    client: ClientInfo,
    context: &Arc<ListenerContext>,
    admitted: &Admitted,
) {
    let session = Session::new(context, client, Protocol::Submission, admitted);
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
    // As in IMAP: a backend failure is a temporary error, and the client may try again.
    let (stream, backend, grant) = loop {
        let PreAuthEnd::LoggedIn {
            stream: mut client_stream,
            tag,
            grant,
        } = session.pre_auth(stream, &mut machine, greet).await
        else {
            return;
        };
        greet = false;
        let helo = machine.helo_name().unwrap_or(&shared.hostname).to_owned();
        match backend_smtp::login(
            context.backend_for(&grant.login),
            &grant.login,
            client,
            &helo,
        )
        .await
        {
            Ok(backend) => break (client_stream, backend, grant),
            Err(e) => {
                if !session
                    .backend_failed(&mut client_stream, &mut machine, &tag, e)
                    .await
                {
                    return;
                }
                stream = client_stream;
            }
        }
    };
    // The next client is offered what this backend offers now (the listener's own backend:
    // before login nobody knows which domain's backend a client will reach).
    if Arc::ptr_eq(context.backend_for(&grant.login), &context.backend)
        && let Ok(mut cached) = context.smtp_extensions.write()
    {
        cached.clone_from(&backend.extensions);
    }
    let (reply, pipelined) = machine.login_accepted();
    let mut to_client = reply;
    to_client.extend_from_slice(&backend.leftover);
    let idle = Duration::from_secs(shared.limits.smtp_idle_timeout_secs);
    session
        .relay(
            stream,
            backend.stream,
            &grant,
            to_client,
            pipelined,
            &mut LineBoundary::default(),
            &GOODBYES,
            idle,
        )
        .await;
}
