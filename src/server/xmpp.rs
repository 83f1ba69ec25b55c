//! An XMPP client stream: pre-auth through the shared driver, then a backend login with a
//! one-time ticket, `<success/>` for the client, and the relay (the client's stream restart is
//! the first thing the backend hears from it).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ListenerContext;
use super::admission::Admitted;
use super::session::{PreAuthEnd, Session};
use crate::credentials::{Protocol, Service};
use crate::protocol::xmpp::{PreAuth, Restart, Settings};
use crate::upstream::relay::{Goodbyes, XmlBoundary};
use crate::upstream::{ClientInfo, xmpp as backend_xmpp};

const GOODBYES: Goodbyes = Goodbyes {
    revoked: b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Session ended: the credentials were revoked or have expired</text></stream:error></stream:stream>",
    shutdown: b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
};

/// Largest top-level element before authentication.
const MAX_PRE_AUTH_ELEMENT: usize = 16 * 1024;

/// How long a relayed XMPP stream may be silent both ways (clients ping every few minutes).
const IDLE: Duration = Duration::from_secs(1800);

pub async fn serve(
    tcp: TcpStream,
    client: ClientInfo,
    context: &Arc<ListenerContext>,
    admitted: &Admitted,
) {
    let session = Session::new(context, client, Protocol::Xmpp, admitted);
    let Some(stream) = session.open(tcp).await else {
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
    let PreAuthEnd::LoggedIn {
        stream: mut client,
        grant,
        ..
    } = session.pre_auth(stream, &mut machine, true).await
    else {
        return;
    };
    let user = context.backend.user_for(&grant.login);
    let login = async {
        let ticket = shared
            .tickets
            .mint(&grant.login, Service::Xmpp)
            .await
            .map_err(|e| e.to_string())?;
        backend_xmpp::login(&context.backend, &user, &ticket)
            .await
            .map_err(|e| e.to_string())
    };
    let backend = match login.await {
        Ok(backend) => backend,
        Err(e) => {
            // RFC 6120 4.9.3.15: the server could not reach the one it serves for.
            tracing::warn!(error = %e, backend = %context.backend.name, "backend login failed");
            if let crate::protocol::Action::Close(bytes) =
                machine.stream_error("remote-connection-failed", None)
            {
                let _ = crate::server::session::write(&mut client, &bytes).await;
            }
            return;
        }
    };
    // The client restarts its stream after `<success/>`; the backend hears that restart in a
    // form it accepts (see `PreAuth::next_restart`).
    if !session.write(&mut client, &machine.login_accepted()).await {
        return;
    }
    let mut buffer = vec![0u8; 4096];
    let restart = loop {
        match machine.next_restart() {
            Restart::Restarted(bytes) => break bytes,
            Restart::Failed(action) => {
                if let crate::protocol::Action::Close(bytes) = action {
                    let _ = session.write(&mut client, &bytes).await;
                }
                return;
            }
            Restart::NeedInput => {
                let Some(n) = session.read(&mut client, &mut machine, &mut buffer).await else {
                    return;
                };
                crate::protocol::PreAuth::enqueue(&mut machine, &buffer[..n]);
            }
        }
    };
    session
        .relay(
            client,
            backend.stream,
            &grant,
            Vec::new(),
            restart,
            &mut XmlBoundary::default(),
            &GOODBYES,
            IDLE,
        )
        .await;
}
