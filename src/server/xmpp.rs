//! XMPP as the post-login driver runs it: the pre-auth machine, a backend login with a one-time
//! ticket, `<success/>` and the client's stream restart (the first thing the backend hears
//! from it), and element boundaries.

use std::sync::Arc;
use std::time::Duration;

use super::ListenerContext;
use super::relayed::{HandOver, Relayed};
use super::session::Session;
use crate::config::Limits;
use crate::credentials::{Grant, Protocol, Service};
use crate::io::Stream;
use crate::protocol::Action;
use crate::protocol::xmpp::{PreAuth, Restart, Settings};
use crate::upstream::relay::{Boundary, Goodbyes, XmlBoundary};
use crate::upstream::{BackendError, ClientInfo, xmpp as backend_xmpp};

/// Largest top-level element before authentication.
const MAX_PRE_AUTH_ELEMENT: usize = 16 * 1024;

/// How long a relayed XMPP stream may be silent both ways (clients ping every few minutes).
const IDLE: Duration = Duration::from_secs(1800);

pub struct Xmpp;

impl Relayed for Xmpp {
    type Machine = PreAuth;
    type Backend = backend_xmpp::Session;
    const PROTOCOL: Protocol = Protocol::Xmpp;
    const GOODBYES: Goodbyes = Goodbyes {
        revoked: b"<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>Session ended: the credentials were revoked or have expired</text></stream:error></stream:stream>",
        shutdown: b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
    };

    fn machine(context: &ListenerContext, tls: bool) -> PreAuth {
        PreAuth::new(Settings {
            domain: context.backend.config.domain.clone().unwrap_or_default(),
            max_element: MAX_PRE_AUTH_ELEMENT,
            max_failures: context.shared.auth.max_failures,
            tls,
            starttls: !tls,
            plaintext_auth: context.config.allow_plaintext_auth_on_loopback,
            stream_id: crate::credentials::hashing::hex(&rand::random::<[u8; 8]>()),
        })
    }

    async fn login(
        context: &Arc<ListenerContext>,
        grant: &Grant,
        _client: ClientInfo,
        _machine: &PreAuth,
    ) -> Result<backend_xmpp::Session, BackendError> {
        let user = context.backend.user_for(&grant.login);
        let ticket = context
            .shared
            .tickets
            .mint(&grant.login, Service::Xmpp)
            .await
            .map_err(|e| BackendError::Ticket(e.to_string()))?;
        backend_xmpp::login(&context.backend, &user, &ticket).await
    }

    /// RFC 6120 4.9.3.15: the server could not reach the one it serves for.
    fn backend_failed(machine: &mut PreAuth, _tag: &str) -> Action {
        machine.stream_error("remote-connection-failed", None)
    }

    /// `<success/>`, then the client's stream restart, which the backend hears in a form it
    /// accepts (see `PreAuth::next_restart`).
    async fn hand_over(
        session: &Session<'_>,
        client: &mut Stream,
        mut machine: PreAuth,
        _tag: &str,
        backend: backend_xmpp::Session,
    ) -> Option<HandOver> {
        if !session.write(client, &machine.login_accepted()).await {
            return None;
        }
        let mut buffer = vec![0u8; 4096];
        let restart = loop {
            match machine.next_restart() {
                Restart::Restarted(bytes) => break bytes,
                Restart::Failed(action) => {
                    if let Action::Close(bytes) = action {
                        let _ = session.write(client, &bytes).await;
                    }
                    return None;
                }
                Restart::NeedInput => {
                    let n = session.read(client, &mut machine, &mut buffer).await?;
                    crate::protocol::PreAuth::enqueue(&mut machine, &buffer[..n]);
                }
            }
        };
        Some(HandOver {
            backend: backend.stream,
            to_client: Vec::new(),
            to_backend: restart,
        })
    }

    fn boundary() -> Box<dyn Boundary + Send> {
        Box::new(XmlBoundary::default())
    }

    fn idle(_limits: &Limits) -> Duration {
        IDLE
    }
}
