//! The account portal: where people manage their own access in a browser.
//!
//! Server-rendered pages that work without JavaScript, on an HTTPS listener of their own
//! (`protocol = "portal"`). Sign-in takes the login and the **main password** (never an app
//! password); sessions are server-side (a random token in a `__Host-` cookie, only its digest
//! stored) and up to `[portal] max_accounts` accounts share one browser, the first in the
//! cookie being the current one. Every change goes through the account service, so the rules
//! are the CLI's and the gateway's, and this process's credential index learns of it at once.
//!
//! Every response carries a strict CSP (no script at all), `frame-ancestors 'none'`, HSTS,
//! `Referrer-Policy` and `Cache-Control: no-store`; every state-changing request must come from
//! this origin (`Sec-Fetch-Site`, else `Origin`), which is the CSRF protection.

mod actions;
pub mod api;
mod delivery;
mod discovery;
mod domain_pages;
mod domains_api;
mod pages;
mod security;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dashmap::DashMap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, PortalConfig};
use crate::credentials::Secret;
use crate::server::Shared;
use crate::server::admission::Admitted;

/// The session cookie. `__Host-`: only ever set over HTTPS, for this host, on `/`.
pub const COOKIE: &str = "__Host-portcullis";

/// Failed sign-ins for one login, from anywhere, before each further failure is answered
/// later and later (never refused: the real user must still get in).
const FREE_FAILURES: u32 = 5;

/// Wrong second-factor codes for one account in [`FAILURE_WINDOW`] before codes are refused
/// until the window ends.
const MAX_CODE_FAILURES: u32 = 20;

/// The longest a refused sign-in is held back.
const MAX_REFUSAL_DELAY: Duration = Duration::from_secs(8);

/// How long failed sign-ins of a login are remembered.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A server a mail, file, calendar or chat program is told to use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Setting {
    pub what: String,
    pub value: String,
}

/// An app password just made, held for the one page view that shows it (and then, for
/// services Apple devices can be set up for, for the profile download until [`SHOWN_FOR`]).
#[derive(Clone)]
struct Shown {
    id: crate::credentials::model::AppPasswordId,
    service: crate::credentials::Service,
    name: String,
    secret: Secret,
    settings: Vec<Setting>,
    /// When it was made: one nobody came to see is dropped after [`SHOWN_FOR`].
    made: Instant,
}

/// How long a new app password waits for the page that shows it.
const SHOWN_FOR: Duration = Duration::from_secs(600);

/// What the portal's handlers share.
pub struct Portal {
    pub shared: Arc<Shared>,
    /// The server TLS configuration with ALPN `h2` and `http/1.1`.
    pub tls: TlsAcceptor,
    pub config: PortalConfig,
    templates: minijinja::Environment<'static>,
    /// App passwords just made, by web session id, until the next page shows them.
    shown: DashMap<i64, Shown>,
    /// App passwords shown, by web session id, whose Apple profile may still be downloaded
    /// (memory only, until [`SHOWN_FOR`] after they were made).
    profiles: DashMap<i64, Shown>,
    /// Sign-in attempts per client address, by the minute.
    attempts: Counter<std::net::IpAddr>,
    /// Restore-access attempts per client address, by the minute (counted apart from sign-ins:
    /// someone locked out tries both).
    restore_attempts: Counter<std::net::IpAddr>,
    /// Failed sign-ins per account login (canonical; unknown logins alike), by the window.
    failures: Counter<String>,
    /// The public endpoints: the settings of a new app password, autoconfig, Autodiscover
    /// and Apple profiles name them.
    directory: crate::discovery::Directory,
    /// Where codes to an email or a phone go out.
    delivery: delivery::Delivery,
}

impl Portal {
    pub fn new(shared: Arc<Shared>, tls: TlsAcceptor, config: &Config) -> Result<Self, String> {
        let mut templates = minijinja::Environment::new();
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("signin.html", include_str!("templates/signin.html")),
            ("access.html", include_str!("templates/access.html")),
            ("sessions.html", include_str!("templates/sessions.html")),
            ("accounts.html", include_str!("templates/accounts.html")),
            ("password.html", include_str!("templates/password.html")),
            (
                "signin_code.html",
                include_str!("templates/signin_code.html"),
            ),
            ("two_factor.html", include_str!("templates/two_factor.html")),
            ("profile.html", include_str!("templates/profile.html")),
            ("restore.html", include_str!("templates/restore.html")),
            ("domains.html", include_str!("templates/domains.html")),
            ("domain.html", include_str!("templates/domain.html")),
            ("activity.html", include_str!("templates/activity.html")),
        ] {
            templates
                .add_template(name, text)
                .map_err(|e| format!("portal template {name}: {e}"))?;
        }
        Ok(Self {
            shared,
            tls,
            config: config.portal.clone(),
            templates,
            shown: DashMap::new(),
            profiles: DashMap::new(),
            attempts: Counter::new(Duration::from_secs(60)),
            restore_attempts: Counter::new(Duration::from_secs(60)),
            failures: Counter::new(FAILURE_WINDOW),
            delivery: delivery::Delivery::new(config)?,
            directory: crate::discovery::Directory::new(config),
        })
    }

    /// Renders a page; a template fault is a 500 with no detail for the browser.
    fn render(&self, name: &str, context: minijinja::Value) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(context))
        {
            Ok(html) => {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, template = name, "portal template failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal error\n").into_response()
            }
        }
    }

    /// Counts a failed sign-in for `login` and says how long after its arrival to answer it:
    /// the failure delay, doubled for every failure past the first few in the window, up to
    /// a cap. Guessing one account from many addresses slows down; its owner is never locked
    /// out. Unknown logins count the same way, so the delay says nothing about existence.
    pub(crate) fn refusal_delay(&self, login: &str) -> Duration {
        self.refusal_delay_for(self.failure_key(login))
    }

    fn refusal_delay_for(&self, key: String) -> Duration {
        let base = Duration::from_millis(self.shared.auth.failure_delay_ms);
        let failures = self.failures.count(key).unwrap_or(0);
        let extra = failures.saturating_sub(FREE_FAILURES).min(16);
        base.saturating_mul(1 << extra)
            .min(MAX_REFUSAL_DELAY.max(base))
    }

    /// Counts a wrong second-factor code for the account a sign-in token names and says how
    /// long after its arrival to answer: as for passwords, but past [`MAX_CODE_FAILURES`] in
    /// the window codes are refused outright (only someone who has the password gets here, so
    /// this never locks out the owner against a stranger).
    pub(crate) fn code_refusal_delay(&self, token: &str) -> Duration {
        let key = match self.shared.accounts.second_step_account(token) {
            Some(id) => format!("code:{id}"),
            None => return Duration::from_millis(self.shared.auth.failure_delay_ms),
        };
        self.refusal_delay_for(key)
    }

    /// Whether codes for the account this token names are refused for now.
    pub(crate) fn codes_blocked(&self, token: &str) -> bool {
        self.shared
            .accounts
            .second_step_account(token)
            .is_some_and(|id| self.failures.peek(&format!("code:{id}")) > MAX_CODE_FAILURES)
    }

    /// A sign-in of `login` succeeded: its failures are forgotten.
    pub(crate) fn signed_in(&self, login: &str) {
        self.failures.forget(&self.failure_key(login));
    }

    /// One key per account however its login is spelled (`alice`, `Alice@example.org`).
    fn failure_key(&self, login: &str) -> String {
        match self.shared.accounts.login(login) {
            Ok(login) => login.to_string(),
            Err(_) => login.trim().to_lowercase().chars().take(320).collect(),
        }
    }

    /// Whether `ip` may try a restore step now (a fixed window per minute).
    fn may_restore(&self, ip: std::net::IpAddr) -> bool {
        self.restore_attempts
            .count(ip)
            .is_some_and(|n| n <= self.config.attempts_per_minute)
    }

    /// Whether `ip` may try to sign in now (a fixed window per minute).
    fn may_attempt(&self, ip: std::net::IpAddr) -> bool {
        self.attempts
            .count(ip)
            .is_some_and(|n| n <= self.config.attempts_per_minute)
    }
}

/// Events per key in fixed windows: sign-in attempts per address, failures per account.
struct Counter<K> {
    window: Duration,
    counts: Mutex<std::collections::HashMap<K, (Instant, u32)>>,
}

impl<K: std::hash::Hash + Eq> Counter<K> {
    fn new(window: Duration) -> Self {
        Self {
            window,
            counts: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts one event for `key`: how many its current window holds, this one included.
    fn count(&self, key: K) -> Option<u32> {
        let mut counts = self.counts.lock().ok()?;
        let now = Instant::now();
        // Bounded: a flood of distinct keys is swept of expired windows.
        if counts.len() > 100_000 {
            counts.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        Some(entry.1)
    }

    /// Events in `key`'s current window, without counting one.
    fn peek(&self, key: &K) -> u32 {
        let Ok(counts) = self.counts.lock() else {
            return 0;
        };
        counts
            .get(key)
            .filter(|(start, _)| start.elapsed() < self.window)
            .map_or(0, |(_, n)| *n)
    }

    /// Forgets `key`'s events.
    fn forget(&self, key: &K) {
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(key);
        }
    }
}

/// Per connection: who is on the other end, and the connection's place in the limits.
#[derive(Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    pub admitted: Arc<Admitted>,
}

/// The routes, over the portal's state.
pub fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/signin", get(pages::signin_page).post(pages::signin))
        .route("/signin/code", post(pages::signin_code))
        .route(
            "/restore",
            get(security::restore_page).post(security::restore_begin),
        )
        .route("/restore/finish", post(security::restore_finish))
        .route("/two-factor", get(security::two_factor))
        .route("/two-factor/begin", post(security::two_factor_begin))
        .route("/two-factor/enable", post(security::two_factor_enable))
        .route("/two-factor/disable", post(security::two_factor_disable))
        .route("/profile", get(security::profile))
        .route("/profile/names", post(security::set_names))
        .route("/profile/contact", post(security::add_contact))
        .route("/profile/confirm", post(security::confirm_contact))
        .route("/profile/question", post(security::set_question))
        .route("/profile/remove", post(security::remove_contact))
        .route("/domains", get(domain_pages::domains))
        .route("/domains/connect", post(domain_pages::connect))
        .route("/domains/confirm", post(domain_pages::confirm))
        .route("/domains/{name}", get(domain_pages::domain))
        .route(
            "/domains/{name}/mailboxes",
            post(domain_pages::create_mailbox),
        )
        .route(
            "/domains/{name}/mailboxes/action",
            post(domain_pages::mailbox_action),
        )
        .route("/domains/{name}/admins", post(domain_pages::admin))
        .route("/domains/{name}/tokens", post(domain_pages::create_token))
        .route(
            "/domains/{name}/tokens/revoke",
            post(domain_pages::revoke_token),
        )
        .route("/domains/{name}/disconnect", post(domain_pages::disconnect))
        .route("/activity", get(domain_pages::activity))
        .route("/access", get(pages::access))
        .route("/access/option", post(pages::set_option))
        .route("/access/create", post(pages::create))
        .route("/access/{id}/delete", post(pages::delete))
        .route("/access/profile", post(discovery::profile))
        .route(
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            get(discovery::autoconfig),
        )
        .route("/mail/config-v1.1.xml", get(discovery::autoconfig))
        .route(
            "/autodiscover/autodiscover.xml",
            post(discovery::autodiscover).get(discovery::autodiscover_get),
        )
        .route(
            "/Autodiscover/Autodiscover.xml",
            post(discovery::autodiscover).get(discovery::autodiscover_get),
        )
        .route(
            "/password",
            get(pages::password_page).post(pages::change_password),
        )
        .route("/sessions", get(pages::sessions))
        .route("/sessions/{id}/end", post(pages::end_session))
        .route("/accounts", get(pages::accounts))
        .route("/accounts/remove", post(pages::remove_accounts))
        .route("/switch", post(pages::switch))
        .route("/logout", post(pages::logout))
        .route("/logout-all", post(pages::logout_all))
        .route("/logout-everywhere", post(pages::logout_everywhere))
        .nest("/api/v1", api::routes())
        .route("/static/portal.css", get(stylesheet))
        // No icon: said plainly, so browsers do not log a missing one.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .layer(axum::middleware::from_fn(same_origin_only))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(portal)
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("static/portal.css"),
    )
        .into_response()
}

/// CSRF: a request that changes state must come from a page of this origin. Browsers say so
/// in `Sec-Fetch-Site`; those that do not send `Origin` on every POST.
async fn same_origin_only(request: Request, next: Next) -> Response {
    // Changes this request makes are written to the audit log with its client's address.
    let ip = request
        .extensions()
        .get::<Connection>()
        .map(|c| c.peer.ip().to_string())
        .unwrap_or_default();
    crate::credentials::accounts::CLIENT_IP
        .scope(ip, same_origin_checked(request, next))
        .await
}

async fn same_origin_checked(mut request: Request, next: Next) -> Response {
    // HTTP/2 names the host in the URI (`:authority`), not in a Host header: give the pages one
    // place to read it.
    if !request.headers().contains_key(header::HOST)
        && let Some(authority) = request.uri().authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(header::HOST, value);
    }
    // Outlook's Autodiscover is a POST from a mail program, not a page: it carries no
    // cookie, reads no session and changes nothing, so there is nothing to forge.
    if matches!(*request.method(), Method::GET | Method::HEAD)
        || discovery::is_autodiscover(request.uri().path())
    {
        return next.run(request).await;
    }
    // A bearer token is never sent by a browser on its own: such a request cannot be forged
    // across sites (and is never read as a session; see `pages::signed`).
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    if !bearer && !same_origin(request.headers()) {
        tracing::info!("portal request from another origin refused");
        // Read (a bounded part of) the body first: answering a POST before its body is in
        // makes HTTP/2 reset the stream, which some clients report as an error instead of
        // the answer.
        let _ = axum::body::to_bytes(request.into_body(), 64 * 1024).await;
        return (StatusCode::FORBIDDEN, "Forbidden: cross-site request\n").into_response();
    }
    next.run(request).await
}

fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    matches!((origin, host), (Some(origin), Some(host)) if origin == format!("https://{host}"))
}

/// Headers every portal response carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("strict-transport-security", "max-age=31536000"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Pages show account data and, once, secrets: nothing is kept by caches or history.
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// Serves one accepted connection.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, portal: Arc<Portal>, admitted: Arc<Admitted>) {
    let limits = &portal.shared.limits;
    let tls = match tokio::time::timeout(limits.handshake_timeout(), portal.tls.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => {
            tracing::debug!("TLS handshake failed or timed out");
            return;
        }
    };
    crate::telemetry::tls_handshake(tls.get_ref().1);
    let _live = crate::telemetry::SessionGauge::new("portal");
    let connection = Connection { peer, admitted };
    let app = router(portal.clone()).layer(axum::Extension(connection));
    let service = TowerToHyperService::new(app);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.http_header_timeout_secs));
    builder
        .http2()
        .max_concurrent_streams(limits.http_max_streams);
    let connection = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let shutdown = portal.shared.shutdown.clone();
    let idle = Duration::from_secs(limits.http_idle_timeout_secs.max(1));
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "portal connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.as_mut()).await;
        }
        // Browsers keep connections open; the portal does not need them for long.
        () = tokio::time::sleep(idle * 10) => {}
    }
}
