//! An XMPP client stream: pre-auth through the shared driver, then a backend login with a
//! one-time ticket, `<success/>` for the client, and the relay (the client's stream restart is
//! the first thing the backend hears from it).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ListenerContext;
use super::session::{PreAuthEnd, Session};
use crate::credentials::{Protocol, Service};
use crate::protocol::xmpp::{PreAuth, Settings};
use crate::upstream::relay::{Goodbyes, XmlBoundary};
use crate::upstream::{ClientInfo, xmpp as backend_xmpp};

const GOODBYES: Goodbyes = Goodbyes {
    revoked: b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Session ended: the credentials were revoked</text></stream:error></stream:stream>",
    shutdown: b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
};

/// Largest top-level element before authentication.
const MAX_PRE_AUTH_ELEMENT: usize = 16 * 1024;

/// How long a relayed XMPP stream may be silent both ways (clients ping every few minutes).
const IDLE: Duration = Duration::from_secs(1800);

pub async fn serve(tcp: TcpStream, client: ClientInfo, context: &Arc<ListenerContext>) {
    let session = Session::new(context, client, Protocol::Xmpp);
    let Some(mut stream) = session.open(tcp).await else {
        return;
    };
    let shared = &context.shared;
    let id = crate::credentials::hashing::hex(&rand::random::<[u8; 8]>());
    let mut machine = PreAuth::new(Settings {
        domain: context.backend.config.domain.clone().unwrap_or_default(),
        max_element: MAX_PRE_AUTH_ELEMENT,
        max_failures: shared.auth.max_failures,
        tls: stream.is_tls(),
        starttls: !stream.is_tls(),
        plaintext_auth: context.config.allow_plaintext_auth_on_loopback,
        stream_id: id,
    });
    let mut greet = true;
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
        let ticket = shared.tickets.mint(&grant.login, Service::Xmpp, 0);
        let user = context.backend.user_for(&grant.login);
        match backend_xmpp::login(&context.backend, &user, &ticket).await {
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
    let (success, pipelined) = machine.login_accepted();
    session
        .relay(
            stream,
            backend.stream,
            &grant,
            success,
            pipelined,
            &mut XmlBoundary::default(),
            &GOODBYES,
            IDLE,
        )
        .await;
}
