//! POP3 as the post-login driver runs it: the pre-auth machine, a master-user login to the
//! backend, `+OK`, and response boundaries that know which commands have a body.

use std::sync::Arc;
use std::time::Duration;

use super::ListenerContext;
use super::relayed::{HandOver, Relayed};
use super::session::Session;
use crate::config::Limits;
use crate::credentials::{Grant, Protocol};
use crate::io::Stream;
use crate::protocol::pop3::{PreAuth, Settings};
use crate::upstream::relay::{Boundary, Goodbyes, Pop3Boundary};
use crate::upstream::{BackendError, ClientInfo, pop3 as backend_pop3};

pub struct Pop3;

impl Relayed for Pop3 {
    type Machine = PreAuth;
    type Backend = backend_pop3::Session;
    const PROTOCOL: Protocol = Protocol::Pop3;
    // RFC 3206: SYS/PERM, the session will not come back by retrying with this credential.
    const GOODBYES: Goodbyes = Goodbyes {
        revoked: b"-ERR [SYS/PERM] Session ended: the credential was revoked or has expired\r\n",
        shutdown: b"-ERR [SYS/TEMP] Server shutting down\r\n",
    };

    fn machine(context: &ListenerContext, tls: bool) -> PreAuth {
        let shared = &context.shared;
        PreAuth::new(Settings {
            max_line: shared.limits.max_line,
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
    ) -> Result<backend_pop3::Session, BackendError> {
        backend_pop3::login(context.backend_for(&grant.login), &grant.login, client).await
    }

    async fn hand_over(
        _session: &Session<'_>,
        _client: &mut Stream,
        machine: PreAuth,
        _tag: &str,
        backend: backend_pop3::Session,
    ) -> Option<HandOver> {
        Some(HandOver::after_login(
            machine.login_accepted(),
            backend.stream,
            &backend.leftover,
        ))
    }

    fn boundary() -> Box<dyn Boundary + Send> {
        Box::new(Pop3Boundary::default())
    }

    fn idle(limits: &Limits) -> Duration {
        Duration::from_secs(limits.pop3_idle_timeout_secs)
    }
}
