//! The portal's pages: sign-in, access management, devices and sessions, account switching.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;
use tokio::time::Instant;

use super::actions::{self, SignIn};
use super::{COOKIE, Connection, Portal, Setting, Shown};
use crate::credentials::accounts::AccountError;
use crate::credentials::model::{AccountState, AppPasswordId, now_ms};
use crate::credentials::{Secret, Service};
use crate::store::WebSession;

/// The browser's signed-in sessions, the current one first.
pub(super) struct Signed {
    /// Tokens as in the cookie (live ones only), in order.
    pub(super) tokens: Vec<Secret>,
    pub(super) sessions: Vec<WebSession>,
    /// The cookie named sessions that have ended: it must be rewritten.
    stale: bool,
}

impl Signed {
    pub(super) fn current(&self) -> Option<&WebSession> {
        self.sessions.first()
    }

    pub(super) fn logins(&self) -> Vec<String> {
        self.sessions.iter().map(|s| s.login.to_string()).collect()
    }
}

/// The tokens in the request's cookie.
fn cookie_tokens(headers: &HeaderMap) -> Vec<Secret> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE)
        .flat_map(|(_, value)| value.split('.'))
        // Tokens are 64 hex digits; anything else is not ours.
        .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .take(16)
        .map(Secret::from)
        .collect()
}

/// Resolves the cookie's tokens to live sessions (and marks the connection logged in). A
/// request with an `Authorization` header is a script's, never a browser session's: its
/// cookies are not read.
async fn signed(portal: &Portal, headers: &HeaderMap, conn: &Connection) -> Signed {
    let mut signed = Signed {
        tokens: Vec::new(),
        sessions: Vec::new(),
        stale: false,
    };
    if headers.contains_key(header::AUTHORIZATION) {
        return signed;
    }
    for token in cookie_tokens(headers) {
        match portal.shared.accounts.web_session(&token).await {
            Ok(Some(session)) => {
                signed.tokens.push(token);
                signed.sessions.push(session);
            }
            Ok(None) => signed.stale = true,
            Err(e) => {
                tracing::warn!(error = %e, "web session lookup failed");
                signed.stale = true;
            }
        }
    }
    if !signed.sessions.is_empty() {
        conn.admitted.logged_in();
    }
    signed
}

/// The `Set-Cookie` value for `tokens` (current first); empty tokens clear the cookie. A
/// remembered sign-in persists for `remember_days`; otherwise the cookie ends with the browser.
pub(super) fn set_cookie(portal: &Portal, tokens: &[Secret], remember: bool) -> HeaderValue {
    let value: Vec<String> = tokens
        .iter()
        .map(|t| String::from_utf8_lossy(t.expose()).into_owned())
        .collect();
    let lifetime = if tokens.is_empty() {
        "; Max-Age=0".to_owned()
    } else if remember {
        format!("; Max-Age={}", portal.config.remember_days * 24 * 3600)
    } else {
        String::new()
    };
    let cookie = format!(
        "{COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Lax{lifetime}",
        value.join(".")
    );
    let mut value = HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// A redirect that also rewrites the session cookie.
pub(super) fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    let mut response = Redirect::to(to).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// The cookie as it should be after dropping ended sessions (if any were dropped).
fn refreshed_cookie(portal: &Portal, signed: &Signed) -> Option<HeaderValue> {
    signed.stale.then(|| {
        let remember = signed.current().is_some_and(|s| s.remember);
        set_cookie(portal, &signed.tokens, remember)
    })
}

fn with_cookie(mut response: Response, cookie: Option<HeaderValue>) -> Response {
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn time(ms: i64) -> String {
    crate::cli::timestamp(ms)
}

/// A request and the browser behind it: the portal, the connection (address, admission slot),
/// the request's headers and the browser's signed-in sessions, resolved once per request.
pub struct Browser(
    pub(super) Arc<Portal>,
    pub(super) Connection,
    pub(super) HeaderMap,
    pub(super) Signed,
);

impl FromRequestParts<Arc<Portal>> for Browser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Self, Response> {
        let conn = parts
            .extensions
            .get::<Connection>()
            .cloned()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        let signed = signed(portal, &parts.headers, &conn).await;
        Ok(Self(portal.clone(), conn, parts.headers.clone(), signed))
    }
}

/// A page of the current account: the browser, the account and its web session. Without a
/// signed-in account the request gets the sign-in page instead.
pub struct Page(
    pub(super) Browser,
    pub(super) AccountState,
    pub(super) WebSession,
);

impl FromRequestParts<Arc<Portal>> for Page {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Self, Response> {
        let browser = Browser::from_request_parts(parts, portal).await?;
        let Some(session) = browser.3.current().cloned() else {
            return Err(redirect_with_cookie(
                "/signin",
                set_cookie(portal, &[], false),
            ));
        };
        match portal.shared.accounts.account(&session.login).await {
            Ok(account) => Ok(Self(browser, account, session)),
            Err(e) => {
                tracing::warn!(error = %e, "portal account lookup failed");
                Err((StatusCode::SERVICE_UNAVAILABLE, "Try again later\n").into_response())
            }
        }
    }
}

/// Whether the session's sign-in is older than the portal asks for a sensitive action.
pub(super) fn needs_reconfirm(portal: &Portal, session: &WebSession) -> bool {
    now_ms() - session.signed_in_at
        > i64::try_from(portal.config.reconfirm_after_secs * 1000).unwrap_or(i64::MAX)
}

/// Whether a sensitive action may go ahead: the sign-in is recent, or `typed` is the main
/// password (which renews it). A wrong one is answered at the failure delay.
pub(super) async fn reconfirmed(page: &Page, typed: Option<&str>) -> bool {
    let Page(Browser(portal, ..), account, session) = page;
    if !needs_reconfirm(portal, session) {
        return true;
    }
    let arrived = Instant::now();
    let accounts = &portal.shared.accounts;
    let typed = Secret::from(typed.unwrap_or(""));
    match accounts
        .verify_main_password(account.login.as_str(), &typed)
        .await
    {
        Ok(_) => {
            let _ = accounts.reconfirm_web_session(session).await;
            true
        }
        Err(_) => {
            failure_delay(portal, arrived).await;
            false
        }
    }
}

/// Waits out the failure delay counted from `arrived`, before answering a refusal.
pub(super) async fn failure_delay(portal: &Portal, arrived: Instant) {
    let delay = Duration::from_millis(portal.shared.auth.failure_delay_ms);
    tokio::time::sleep_until(arrived + delay).await;
}

/// `/`: the access page when signed in, the sign-in page otherwise.
pub async fn home(Browser(portal, _, _, signed): Browser) -> Response {
    let to = if signed.current().is_some() {
        "/access"
    } else {
        "/signin"
    };
    with_cookie(
        Redirect::to(to).into_response(),
        refreshed_cookie(&portal, &signed),
    )
}

#[derive(Deserialize)]
pub struct SigninQuery {
    add: Option<String>,
}

pub async fn signin_page(
    Browser(portal, _, _, signed): Browser,
    axum::extract::Query(query): axum::extract::Query<SigninQuery>,
) -> Response {
    if signed.current().is_some() && query.add.is_none() {
        return Redirect::to("/access").into_response();
    }
    with_cookie(
        portal.render(
            "signin.html",
            context! { accounts => signed.logins(), login => "" },
        ),
        refreshed_cookie(&portal, &signed),
    )
}

#[derive(Deserialize)]
pub struct SigninForm {
    login: String,
    password: String,
    forget: Option<String>,
}

/// Sign-in: the main password (see [`actions::sign_in`]); with 2FA on, the code page next.
pub async fn signin(browser: Browser, Form(form): Form<SigninForm>) -> Response {
    let outcome =
        actions::sign_in(&browser, &form.login, &form.password, form.forget.is_none()).await;
    let Browser(portal, _, _, signed) = &browser;
    match outcome {
        Ok(SignIn::Done(cookie, _)) => redirect_with_cookie("/access", cookie),
        Ok(SignIn::NeedsCode(token)) => portal.render(
            "signin_code.html",
            context! { accounts => signed.logins(), token => token },
        ),
        Err(refusal) => with_status(
            portal.render(
                "signin.html",
                context! { accounts => signed.logins(), login => form.login, error => refusal.message },
            ),
            refusal.status,
        ),
    }
}

#[derive(Deserialize)]
pub struct CodeForm {
    token: String,
    code: String,
}

/// The second step of a sign-in with 2FA (see [`actions::sign_in_code`]).
pub async fn signin_code(browser: Browser, Form(form): Form<CodeForm>) -> Response {
    let outcome = actions::sign_in_code(&browser, &form.token, &form.code).await;
    let Browser(portal, _, _, signed) = &browser;
    match outcome {
        Ok(SignIn::Done(cookie, _)) => redirect_with_cookie("/access", cookie),
        Ok(SignIn::NeedsCode(_)) => Redirect::to("/signin").into_response(),
        Err(refusal) if refusal.status == StatusCode::GONE => with_status(
            portal.render(
                "signin.html",
                context! { accounts => signed.logins(), login => "", error => refusal.message },
            ),
            StatusCode::UNAUTHORIZED,
        ),
        Err(refusal) => with_status(
            portal.render(
                "signin_code.html",
                context! { accounts => signed.logins(), token => form.token, error => refusal.message },
            ),
            refusal.status,
        ),
    }
}

pub(super) fn with_status(mut response: Response, status: StatusCode) -> Response {
    *response.status_mut() = status;
    response
}

fn services() -> Vec<minijinja::Value> {
    [
        (Service::Mail, "Mail (IMAP, SMTP)"),
        (Service::Disk, "Disk (WebDAV)"),
        (Service::Calendar, "Calendar (CalDAV)"),
        (Service::Contacts, "Contacts (CardDAV)"),
        (Service::Xmpp, "Chat (XMPP)"),
    ]
    .into_iter()
    .map(|(s, label)| context! { value => s.as_str(), label => label })
    .collect()
}

/// The servers a program of `service` is told to use, from the deployment's public endpoints.
pub(super) fn settings(portal: &Portal, service: Service) -> Vec<Setting> {
    portal
        .directory
        .settings(service)
        .into_iter()
        .map(|(what, value)| Setting { what, value })
        .collect()
}

pub(super) fn page_error(e: &AccountError) -> String {
    match e {
        AccountError::Store(_) | AccountError::Hash(_) => {
            "That did not work right now. Try again later.".to_owned()
        }
        e => {
            let text = e.to_string();
            let mut chars = text.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>() + ".")
                .unwrap_or_default()
        }
    }
}

/// The access management page.
pub async fn access(page: Page) -> Response {
    access_page(&page, None).await
}

async fn access_page(page: &Page, error: Option<String>) -> Response {
    let Page(Browser(portal, _, _, signed), account, session) = page;
    // Shown once: taken out of the map by the page that shows it.
    let created = portal
        .shown
        .remove(&session.id)
        .filter(|(_, shown)| shown.made.elapsed() < super::SHOWN_FOR)
        .map(|(_, shown)| {
            let profile = crate::discovery::profile::offered(&portal.directory, shown.service);
            if profile {
                portal
                    .profiles
                    .retain(|_, held| held.made.elapsed() < super::SHOWN_FOR);
                portal.profiles.insert(session.id, shown.clone());
            }
            context! {
                id => shown.id.0,
                profile => profile,
                name => shown.name,
                secret => String::from_utf8_lossy(shown.secret.expose()).into_owned(),
                settings => shown
                    .settings
                    .iter()
                    .map(|s| context! { what => s.what.clone(), value => s.value.clone() })
                    .collect::<Vec<_>>(),
            }
        });
    let passwords = match portal
        .shared
        .accounts
        .list_app_passwords(&account.login)
        .await
    {
        Ok((_, list)) => list,
        Err(e) => {
            tracing::warn!(error = %e, "listing app passwords failed");
            Vec::new()
        }
    };
    let passwords: Vec<minijinja::Value> = passwords
        .iter()
        .filter(|p| p.alive)
        .map(|p| {
            let last_used = match (&p.last_used_at, &p.last_used_ip, &p.last_used_protocol) {
                (Some(at), Some(ip), Some(protocol)) => {
                    format!("{} from {ip} ({protocol})", time(*at))
                }
                _ => "never".to_owned(),
            };
            context! {
                id => p.id.0,
                name => p.name.clone(),
                service => p.service.as_str(),
                created => time(p.created_at),
                last_used => last_used,
                limits => p.limits.summary().unwrap_or_else(|| "none".to_owned()),
            }
        })
        .collect();
    let response = portal.render(
        "access.html",
        context! {
            accounts => signed.logins(),
            login => account.login.to_string(),
            two_factor => account.two_factor,
            app_passwords_only => account.app_passwords_only,
            services => services(),
            passwords => passwords,
            created => created,
            reconfirm => needs_reconfirm(portal, session),
            error => error,
        },
    );
    with_cookie(response, refreshed_cookie(portal, signed))
}

#[derive(Deserialize)]
pub struct OptionForm {
    on: String,
}

pub async fn set_option(page: Page, Form(form): Form<OptionForm>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .set_app_passwords_only(&account.login, form.on == "1")
        .await
    {
        Ok(_) => Redirect::to("/access").into_response(),
        Err(e) => access_page(&page, Some(page_error(&e))).await,
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    service: String,
    name: String,
    password: Option<String>,
    expires: Option<String>,
    networks: Option<String>,
}

/// Makes an app password; the next page view shows it once (POST, redirect, GET: reloading or
/// going back never shows it again).
pub async fn create(page: Page, Form(form): Form<CreateForm>) -> Response {
    let request = actions::NewAppPassword {
        service: &form.service,
        name: &form.name,
        password: form.password.as_deref(),
        expires: form.expires.as_deref(),
        networks: form.networks.as_deref().into_iter().collect(),
    };
    match actions::create_app_password(&page, &request).await {
        Ok(made) => {
            let portal = &page.0.0;
            portal
                .shown
                .retain(|_, shown| shown.made.elapsed() < super::SHOWN_FOR);
            portal.shown.insert(
                page.2.id,
                Shown {
                    id: made.id,
                    service: made.service,
                    name: made.name,
                    secret: made.secret,
                    settings: made.settings,
                    made: Instant::now(),
                },
            );
            Redirect::to("/access").into_response()
        }
        Err(refusal) => access_page(&page, Some(refusal.message)).await,
    }
}

pub async fn delete(page: Page, Path(id): Path<i64>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .revoke_app_password(&account.login, AppPasswordId(id))
        .await
    {
        Ok(_) => {
            tracing::info!(login = %account.login, id, "app password deleted in the portal");
            Redirect::to("/access").into_response()
        }
        Err(e) => access_page(&page, Some(page_error(&e))).await,
    }
}

/// The password page.
pub async fn password_page(page: Page) -> Response {
    password_view(&page, None)
}

fn password_view(page: &Page, error: Option<String>) -> Response {
    let Page(Browser(portal, _, _, signed), account, _) = page;
    portal.render(
        "password.html",
        context! {
            accounts => signed.logins(),
            login => account.login.to_string(),
            two_factor => account.two_factor,
            min_chars => crate::credentials::accounts::MIN_PASSWORD_CHARS,
            error => error,
        },
    )
}

#[derive(Deserialize)]
pub struct PasswordForm {
    current: String,
    new: String,
    end_others: Option<String>,
}

/// A new main password, given the current one; by the account service's rule it kills every
/// app password while 2FA is off. The other web sessions end if asked (this one stays).
pub async fn change_password(page: Page, Form(form): Form<PasswordForm>) -> Response {
    match actions::change_password(&page, &form.current, &form.new, form.end_others.is_some()).await
    {
        Ok(()) => Redirect::to("/access").into_response(),
        Err(refusal) => password_view(&page, Some(refusal.message)),
    }
}

/// The account's web sessions, on every device.
pub async fn sessions(Page(Browser(portal, _, _, signed), account, session): Page) -> Response {
    let list = portal
        .shared
        .accounts
        .web_sessions(&account)
        .await
        .unwrap_or_default();
    let rows: Vec<minijinja::Value> = list
        .iter()
        .map(|s| {
            context! {
                id => s.id,
                user_agent => s.user_agent.clone(),
                ip => s.ip.clone(),
                last_seen => time(s.last_seen_at),
                this => s.id == session.id,
            }
        })
        .collect();
    portal.render(
        "sessions.html",
        context! { accounts => signed.logins(), login => account.login.to_string(), sessions => rows },
    )
}

pub async fn end_session(
    Page(Browser(portal, ..), account, _): Page,
    Path(id): Path<i64>,
) -> Response {
    let _ = portal.shared.accounts.end_web_session(&account, id).await;
    Redirect::to("/sessions").into_response()
}

/// The browser's accounts, to log out of several at once.
pub async fn accounts(Browser(portal, _, _, signed): Browser) -> Response {
    if signed.current().is_none() {
        return Redirect::to("/signin").into_response();
    }
    portal.render("accounts.html", context! { accounts => signed.logins() })
}

/// Ends the sessions at `indexes` of the browser's list and rewrites the cookie.
async fn remove(portal: &Portal, signed: Signed, indexes: &[usize]) -> Response {
    let (cookie, left) = actions::remove_from_browser(portal, &signed, indexes).await;
    redirect_with_cookie(if left { "/access" } else { "/signin" }, cookie)
}

/// "Log out": the current account leaves the list; the next one is current.
pub async fn logout(Browser(portal, _, _, signed): Browser) -> Response {
    remove(&portal, signed, &[0]).await
}

/// "Log out of all accounts": the list is emptied.
pub async fn logout_all(Browser(portal, _, _, signed): Browser) -> Response {
    let all: Vec<usize> = (0..signed.sessions.len()).collect();
    remove(&portal, signed, &all).await
}

/// "Edit list": log out of the selected accounts.
pub async fn remove_accounts(
    Browser(portal, _, _, signed): Browser,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let indexes: Vec<usize> = form
        .iter()
        .filter(|(k, _)| k == "remove")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    remove(&portal, signed, &indexes).await
}

#[derive(Deserialize)]
pub struct SwitchForm {
    index: usize,
}

/// Makes another account of the browser's list current, without asking for credentials.
pub async fn switch(
    Browser(portal, _, _, signed): Browser,
    Form(form): Form<SwitchForm>,
) -> Response {
    match actions::switch_to(&portal, &signed, form.index) {
        Some(cookie) => redirect_with_cookie("/access", cookie),
        None => Redirect::to("/access").into_response(),
    }
}

/// "Log out on all devices": the generation moves on (every app password dies, every session
/// relayed with one is cut) and every web session of the account ends, this one included.
pub async fn logout_everywhere(page: Page) -> Response {
    match actions::log_out_everywhere(&page).await {
        Ok(cookie) => redirect_with_cookie("/signin", cookie),
        Err(refusal) => access_page(&page, Some(refusal.message)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_are_read_from_the_cookie() {
        let good = "a".repeat(64);
        let other = "b".repeat(64);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "theme=dark; {COOKIE}={good}.short.{other}.{}; x=y",
                "z".repeat(64)
            ))
            .unwrap(),
        );
        let tokens: Vec<Vec<u8>> = cookie_tokens(&headers)
            .iter()
            .map(|t| t.expose().to_vec())
            .collect();
        assert_eq!(tokens, vec![good.into_bytes(), other.into_bytes()]);
    }
}
