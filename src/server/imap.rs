//! An IMAP session: pre-auth through the shared driver, then backend login and the relay.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ListenerContext;
use super::admission::Admitted;
use super::session::{PreAuthEnd, Session};
use crate::credentials::Protocol;
use crate::protocol::imap::{PreAuth, Settings};
use crate::upstream::relay::{Goodbyes, ImapBoundary};
use crate::upstream::{ClientInfo, imap as backend_imap};

const GOODBYES: Goodbyes = Goodbyes {
    revoked: b"* BYE Session ended: the credential was revoked or has expired\r\n",
    shutdown: b"* BYE Server shutting down\r\n",
};

pub async fn serve(
    tcp: TcpStream,
    client: ClientInfo,
    context: &Arc<ListenerContext>,
    admitted: &Admitted,
) {
    let session = Session::new(context, client, Protocol::Imap, admitted);
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
    // Each turn is one login that passed the credential check; a backend failure answers it
    // with a temporary error and lets the client try again on the same connection.
    let (stream, backend, tag, grant) = loop {
        let PreAuthEnd::LoggedIn {
            stream: mut client_stream,
            tag,
            grant,
        } = session.pre_auth(stream, &mut machine, greet).await
        else {
            return;
        };
        greet = false;
        match backend_imap::login(context.backend_for(&grant.login), &grant.login, client).await {
            Ok(backend) => break (client_stream, backend, tag, grant),
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
    let (reply, pipelined) = machine.login_accepted(&tag, &backend.capabilities);
    let mut to_client = reply;
    to_client.extend_from_slice(&backend.leftover);
    let idle = Duration::from_secs(shared.limits.imap_idle_timeout_secs);
    session
        .relay(
            stream,
            backend.stream,
            &grant,
            to_client,
            pipelined,
            &mut ImapBoundary::default(),
            &GOODBYES,
            idle,
        )
        .await;
}
