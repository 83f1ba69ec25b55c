//! IMAP as the post-login driver runs it: the pre-auth machine, a master-user login to the
//! backend, the tagged OK with the backend's capabilities, and the response boundaries.

use std::sync::Arc;
use std::time::Duration;

use super::ListenerContext;
use super::relayed::{HandOver, Relayed};
use super::session::Session;
use crate::config::Limits;
use crate::credentials::{Grant, Protocol};
use crate::io::Stream;
use crate::protocol::imap::{PreAuth, Settings};
use crate::upstream::relay::{Boundary, Goodbyes, ImapBoundary};
use crate::upstream::{BackendError, ClientInfo, imap as backend_imap};

pub struct Imap;

impl Relayed for Imap {
    type Machine = PreAuth;
    type Backend = backend_imap::Session;
    const PROTOCOL: Protocol = Protocol::Imap;
    const GOODBYES: Goodbyes = Goodbyes {
        revoked: b"* BYE Session ended: the credential was revoked or has expired\r\n",
        shutdown: b"* BYE Server shutting down\r\n",
    };

    fn machine(context: &ListenerContext, tls: bool) -> PreAuth {
        let shared = &context.shared;
        PreAuth::new(Settings {
            max_line: shared.limits.max_line,
            max_literal: shared.limits.max_literal,
            max_failures: shared.auth.max_failures,
            max_bad_commands: shared.limits.max_bad_commands,
            tls,
            starttls: !tls,
            plaintext_auth: context.config.allow_plaintext_auth_on_loopback,
        })
    }

    async fn login(
        context: &Arc<ListenerContext>,
        grant: &Grant,
        client: ClientInfo,
        _machine: &PreAuth,
    ) -> Result<backend_imap::Session, BackendError> {
        backend_imap::login(context.backend_for(&grant.login), &grant.login, client).await
    }

    async fn hand_over(
        _session: &Session<'_>,
        _client: &mut Stream,
        machine: PreAuth,
        tag: &str,
        backend: backend_imap::Session,
    ) -> Option<HandOver> {
        Some(HandOver::after_login(
            machine.login_accepted(tag, &backend.capabilities),
            backend.stream,
            &backend.leftover,
        ))
    }

    fn boundary() -> Box<dyn Boundary + Send> {
        Box::new(ImapBoundary::default())
    }

    fn idle(limits: &Limits) -> Duration {
        Duration::from_secs(limits.imap_idle_timeout_secs)
    }
}
