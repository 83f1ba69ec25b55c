//! The post-login driver shared by every relayed protocol (IMAP, submission, POP3, XMPP).
//!
//! A protocol brings what is its own ([`Relayed`]): its pre-auth machine, its backend login,
//! its hand-over (the login reply, and what either side sent past its login) and its stream
//! boundaries. The driver does the rest, once: the pre-auth phase through
//! [`Session::pre_auth`], the backend login after a passed credential check, a temporary
//! error and another try on the same connection when the backend fails, then the relay with
//! the protocol's goodbyes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::ListenerContext;
use super::admission::Admitted;
use super::session::{PreAuthEnd, Session};
use crate::config::Limits;
use crate::credentials::{Grant, Protocol};
use crate::io::Stream;
use crate::protocol::{Action, PreAuth};
use crate::upstream::relay::{Boundary, Goodbyes};
use crate::upstream::{BackendError, ClientInfo};

/// The session once logged in to the backend, ready to relay.
pub struct HandOver {
    pub backend: Stream,
    /// The login reply, and whatever the backend sent past its own login.
    pub to_client: Vec<u8>,
    /// What the client sent past its login (pipelined commands, a stream restart).
    pub to_backend: Vec<u8>,
}

impl HandOver {
    /// The usual hand-over: the protocol's login reply followed by what the backend sent past
    /// its own login, and what the client pipelined after its login.
    pub fn after_login(
        (reply, pipelined): (Vec<u8>, Vec<u8>),
        backend: Stream,
        leftover: &[u8],
    ) -> Self {
        let mut to_client = reply;
        to_client.extend_from_slice(leftover);
        Self {
            backend,
            to_client,
            to_backend: pipelined,
        }
    }
}

/// What a protocol brings to the driver.
pub trait Relayed {
    type Machine: PreAuth;
    /// A backend session right after its login.
    type Backend: Send;
    const PROTOCOL: Protocol;
    /// What the relay says when it ends the session (a revocation, a shutdown).
    const GOODBYES: Goodbyes;

    /// The pre-auth machine for a new connection (`tls`: already TLS).
    fn machine(context: &ListenerContext, tls: bool) -> Self::Machine;

    /// Logs in to the backend for `grant`.
    fn login(
        context: &Arc<ListenerContext>,
        grant: &Grant,
        client: ClientInfo,
        machine: &Self::Machine,
    ) -> impl Future<Output = Result<Self::Backend, BackendError>> + Send;

    /// The answer to a login whose backend failed: by default the protocol's temporary error,
    /// after which the client may try again on the same connection.
    fn backend_failed(machine: &mut Self::Machine, tag: &str) -> Action {
        machine.login_unavailable(tag)
    }

    /// After the backend login: the client's login reply and what goes to each side before
    /// the relay. `None` when the connection is over.
    fn hand_over(
        session: &Session<'_>,
        client: &mut Stream,
        machine: Self::Machine,
        tag: &str,
        backend: Self::Backend,
    ) -> impl Future<Output = Option<HandOver>> + Send;

    /// The tracker of the backend's stream boundaries, where a goodbye may go.
    fn boundary() -> Box<dyn Boundary + Send>;

    /// How long a relayed session may be silent both ways.
    fn idle(limits: &Limits) -> Duration;
}

/// Serves one connection of protocol `P` to its end.
pub async fn serve<P: Relayed>(
    tcp: TcpStream,
    client: ClientInfo,
    context: &Arc<ListenerContext>,
    admitted: &Admitted,
) {
    let session = Session::new(context, client, P::PROTOCOL, admitted);
    let Some(mut stream) = session.open(tcp).await else {
        return;
    };
    let mut machine = P::machine(context, stream.is_tls());
    let mut greet = true;
    // Each turn is one login that passed the credential check; a backend failure answers it
    // with the protocol's temporary error and lets the client try again on this connection.
    let (mut client_stream, backend, tag, grant) = loop {
        let PreAuthEnd::LoggedIn {
            stream: mut client_stream,
            tag,
            grant,
        } = session.pre_auth(stream, &mut machine, greet).await
        else {
            return;
        };
        greet = false;
        match P::login(context, &grant, client, &machine).await {
            Ok(backend) => break (client_stream, backend, tag, grant),
            Err(e) => {
                tracing::warn!(error = %e, "backend login failed");
                match P::backend_failed(&mut machine, &tag) {
                    Action::Write(reply) if session.write(&mut client_stream, &reply).await => {}
                    Action::Close(reply) => {
                        let _ = session.write(&mut client_stream, &reply).await;
                        return;
                    }
                    _ => return,
                }
                stream = client_stream;
            }
        }
    };
    let Some(hand_over) = P::hand_over(&session, &mut client_stream, machine, &tag, backend).await
    else {
        return;
    };
    session
        .relay(
            client_stream,
            hand_over,
            &grant,
            &mut *P::boundary(),
            &P::GOODBYES,
            P::idle(&context.shared.limits),
        )
        .await;
}
