//! Submission as the post-login driver runs it: the pre-auth machine (offering the backend's
//! extensions), an XCLIENT/master login to the backend, `235`, and line boundaries.

use std::sync::Arc;
use std::time::Duration;

use super::ListenerContext;
use super::relayed::{HandOver, Relayed};
use super::session::Session;
use crate::config::Limits;
use crate::credentials::{Grant, Protocol};
use crate::io::Stream;
use crate::protocol::smtp::{PreAuth, Settings};
use crate::upstream::relay::{Boundary, Goodbyes, LineBoundary};
use crate::upstream::{BackendError, ClientInfo, smtp as backend_smtp};

pub struct Submission;

impl Relayed for Submission {
    type Machine = PreAuth;
    type Backend = backend_smtp::Session;
    const PROTOCOL: Protocol = Protocol::Submission;
    const GOODBYES: Goodbyes = Goodbyes {
        revoked: b"421 4.7.0 Session ended: the credential was revoked or has expired\r\n",
        shutdown: b"421 4.3.2 Server shutting down\r\n",
    };

    fn machine(context: &ListenerContext, tls: bool) -> PreAuth {
        let shared = &context.shared;
        let extensions = context
            .smtp_extensions
            .read()
            .map(|e| e.clone())
            .unwrap_or_default();
        PreAuth::new(Settings {
            hostname: shared.hostname.clone(),
            max_line: shared.limits.max_line,
            max_failures: shared.auth.max_failures,
            max_bad_commands: shared.limits.max_bad_commands,
            tls,
            starttls: !tls,
            plaintext_auth: context.config.allow_plaintext_auth_on_loopback,
            backend_extensions: extensions,
        })
    }

    async fn login(
        context: &Arc<ListenerContext>,
        grant: &Grant,
        client: ClientInfo,
        machine: &PreAuth,
    ) -> Result<backend_smtp::Session, BackendError> {
        let helo = machine
            .helo_name()
            .unwrap_or(&context.shared.hostname)
            .to_owned();
        let backend = context.backend_for(&grant.login);
        let session = backend_smtp::login(backend, &grant.login, client, &helo).await?;
        // The next client is offered what this backend offers now (the listener's own
        // backend: before login nobody knows which domain's backend a client will reach).
        if Arc::ptr_eq(backend, &context.backend)
            && let Ok(mut cached) = context.smtp_extensions.write()
        {
            cached.clone_from(&session.extensions);
        }
        Ok(session)
    }

    async fn hand_over(
        _session: &Session<'_>,
        _client: &mut Stream,
        machine: PreAuth,
        _tag: &str,
        backend: backend_smtp::Session,
    ) -> Option<HandOver> {
        Some(HandOver::after_login(
            machine.login_accepted(),
            backend.stream,
            &backend.leftover,
        ))
    }

    fn boundary() -> Box<dyn Boundary + Send> {
        Box::new(LineBoundary::default())
    }

    fn idle(limits: &Limits) -> Duration {
        Duration::from_secs(limits.smtp_idle_timeout_secs)
    }
}
