//! What the portal does, once for its pages and its JSON API: the steps of a request that are
//! more than one account-service call (throttles, failure delays, the second sign-in step,
//! sending codes, the uniform answer of "Can't sign in?"). Pages render the outcome as HTML,
//! the API as JSON or `application/problem+json`.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::delivery::Why;
use super::pages::{Browser, Page, Signed, failure_delay, page_error, reconfirmed};
use super::{Connection, Portal, Setting};
use crate::credentials::Service;
use crate::credentials::accounts::{AccountError, Channel, Enrolment, Proof, TwoFactorOn};
use crate::credentials::model::{
    AccountState, AppPasswordId, GenerationBump, PasswordLimits, now_ms,
};
use crate::credentials::{AuthError, Secret};
use crate::server::gate::{Gate, Labels};

/// A refusal: the status and the one sentence the person is shown.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// An account-service error as the person sees it.
    pub fn from_error(e: &AccountError) -> Self {
        let status = match e {
            AccountError::Store(_) | AccountError::Hash(_) | AccountError::NoKey => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AccountError::BadCredentials | AccountError::WrongCode => StatusCode::UNAUTHORIZED,
            AccountError::UnknownAppPassword { .. } => StatusCode::NOT_FOUND,
            AccountError::NotAllowed(_) => StatusCode::FORBIDDEN,
            AccountError::Domain(_) => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, page_error(e))
    }

    fn throttled() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts from your address. Wait a minute and try again.",
        )
    }

    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Signing in is not possible right now. Try again later.",
        )
    }
}

/// How a sign-in step went.
pub enum SignIn {
    /// Signed in: the new cookie (this account current) and the account.
    Done(HeaderValue, AccountState),
    /// The password was right and 2FA is on: the token for the code step.
    NeedsCode(String),
}

/// Sign-in with the main password, through the login gate: throttled and banned by address,
/// answered at the failure delay with one message whatever failed.
pub async fn sign_in(
    browser: &Browser,
    login: &str,
    password: &str,
    remember: bool,
) -> Result<SignIn, Refusal> {
    let Browser(portal, conn, headers, signed) = browser;
    let accounts = &portal.shared.accounts;
    let secret = Secret::from(password);
    // The login gate every protocol's login passes: throttle and bans by address, the
    // failure delay, the one log line per failure.
    let gate = Gate::arrived(&portal.shared, conn.peer.ip().into());
    let checked = gate
        .decide(Labels::PORTAL, login, &secret, async {
            match accounts.verify_main_password(login, &secret).await {
                Ok(account) => Ok(account),
                Err(AccountError::BadCredentials) => Err(AuthError::Rejected),
                Err(e) => Err(AuthError::Unavailable(e.to_string())),
            }
        })
        .await;
    let account = match checked {
        Ok(account) => account,
        Err(AuthError::Rejected) => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "Wrong login or password.",
            ));
        }
        Err(AuthError::Unavailable(e)) => {
            tracing::warn!(error = %e, "portal sign-in failed");
            return Err(Refusal::unavailable());
        }
    };
    if account.two_factor {
        return match accounts.second_step_token(&account, remember) {
            Ok(token) => Ok(SignIn::NeedsCode(token)),
            Err(e) => {
                tracing::warn!(error = %e, "portal sign-in failed");
                Err(Refusal::unavailable())
            }
        };
    }
    let cookie = open_session(portal, conn, headers, signed, &account, remember).await?;
    portal.signed_in(login);
    Ok(SignIn::Done(cookie, account))
}

/// The second step of a sign-in with 2FA: a code from the app, or a recovery code.
pub async fn sign_in_code(browser: &Browser, token: &str, code: &str) -> Result<SignIn, Refusal> {
    let Browser(portal, conn, headers, signed) = browser;
    let arrived = Instant::now();
    if !portal.may_attempt(conn.peer.ip()) {
        return Err(Refusal::throttled());
    }
    if portal.codes_blocked(token) {
        return Err(Refusal::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong codes for this account. Wait 15 minutes and try again.",
        ));
    }
    match portal.shared.accounts.second_step(token, code).await {
        Ok((account, remember)) => {
            let cookie = open_session(portal, conn, headers, signed, &account, remember).await?;
            portal.signed_in(account.login.as_str());
            Ok(SignIn::Done(cookie, account))
        }
        Err(AccountError::WrongCode) => {
            tracing::info!(peer = %conn.peer, "portal sign-in code refused");
            tokio::time::sleep_until(arrived + portal.code_refusal_delay(token)).await;
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "That code is wrong or was already used. Wait for the next one.",
            ))
        }
        Err(e) => {
            tracing::info!(error = %e, peer = %conn.peer, "portal sign-in second step refused");
            failure_delay(portal, arrived).await;
            Err(Refusal::new(
                StatusCode::GONE,
                "The sign-in took too long. Sign in again.",
            ))
        }
    }
}

/// Opens a web session for `account` in this browser (it becomes the current account) and
/// returns the new cookie; refused when the browser holds the most accounts already.
async fn open_session(
    portal: &Portal,
    conn: &Connection,
    headers: &HeaderMap,
    signed: &Signed,
    account: &AccountState,
    remember: bool,
) -> Result<HeaderValue, Refusal> {
    let accounts = &portal.shared.accounts;
    // The browser's list: this account first, without its older session if it had one.
    let mut tokens: Vec<Secret> = Vec::new();
    for (token, session) in signed.tokens.iter().zip(&signed.sessions) {
        if session.account_id == account.id {
            let _ = accounts.end_web_session(account, session.id).await;
        } else {
            tokens.push(token.clone());
        }
    }
    if tokens.len() >= portal.config.max_accounts {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            format!(
                "{} accounts are signed in in this browser already: log out of one first.",
                portal.config.max_accounts
            ),
        ));
    }
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown browser");
    let session = accounts
        .open_web_session(account, remember, &conn.peer.ip().to_string(), user_agent)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "could not open a web session");
            Refusal::unavailable()
        })?;
    tracing::info!(login = %account.login, peer = %conn.peer, "portal sign-in");
    conn.admitted.logged_in();
    tokens.insert(0, session.token);
    Ok(super::pages::set_cookie(portal, &tokens, remember))
}

/// A new app password, with the settings its kind of program needs.
pub struct Created {
    pub id: AppPasswordId,
    pub name: String,
    pub service: Service,
    pub secret: Secret,
    pub settings: Vec<Setting>,
    pub limits: PasswordLimits,
}

/// Makes an app password, after the main password again if the sign-in is not recent.
pub async fn create_app_password(
    page: &Page,
    request: &NewAppPassword<'_>,
) -> Result<Created, Refusal> {
    let Page(Browser(portal, ..), account, _) = page;
    if !reconfirmed(page, request.password).await {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "Wrong password."));
    }
    let Ok(service) = request.service.parse::<Service>() else {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose a service.",
        ));
    };
    let limits = PasswordLimits::parse(request.expires, &request.networks, now_ms())
        .map_err(|e| Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}.")))?;
    let name = request.name;
    let made = portal
        .shared
        .accounts
        .create_limited_app_password(&account.login, service, name, &limits)
        .await
        .map_err(|e| Refusal::from_error(&e))?;
    tracing::info!(login = %account.login, id = made.id.0, %service, "app password created in the portal");
    Ok(Created {
        id: made.id,
        name: name.trim().to_owned(),
        service,
        secret: made.secret,
        settings: super::pages::settings(portal, service),
        limits,
    })
}

/// What a person asked for in the portal's form or the API.
pub struct NewAppPassword<'a> {
    pub service: &'a str,
    pub name: &'a str,
    /// The main password again, when the sign-in is not recent.
    pub password: Option<&'a str>,
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ`; empty or none: never.
    pub expires: Option<&'a str>,
    /// CIDR blocks or addresses; none: any network.
    pub networks: Vec<&'a str>,
}

/// The first step of "Can't sign in?": a code goes out when the address is the account's, or
/// the question (real or decoy) comes back. The answer is the same, as late, whatever exists.
pub async fn restore_begin(
    browser: &Browser,
    login: &str,
    proof: &str,
    address: &str,
) -> Result<(String, Option<String>), Refusal> {
    let Browser(portal, conn, ..) = browser;
    let arrived = Instant::now();
    if !portal.may_restore(conn.peer.ip()) {
        return Err(Refusal::throttled());
    }
    let accounts = &portal.shared.accounts;
    let proof: Proof = proof.parse().map_err(|e| Refusal::from_error(&e))?;
    let token = accounts
        .restore_token(login, proof)
        .map_err(|e| Refusal::from_error(&e))?;
    let Some(channel) = proof.channel() else {
        let question = accounts
            .restore_question(login)
            .await
            .map_err(|e| Refusal::from_error(&e))?;
        return Ok((token, Some(question)));
    };
    channel
        .normalize(address)
        .map_err(|e| Refusal::from_error(&e))?;
    match accounts.start_restore(login, channel, address).await {
        Ok(Some(code)) => {
            // Delivered in the background: a slow relay must not make the answer for a real
            // address later than the one for no address.
            let portal = portal.clone();
            tokio::spawn(async move {
                if let Err(e) = portal.delivery.send(&code, Why::Restore).await {
                    tracing::warn!(error = %e, "a restore code could not be sent");
                }
            });
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "starting a restore failed"),
    }
    failure_delay(portal, arrived).await;
    Ok((token, None))
}

/// The last step of "Can't sign in?": the code or the answer, and the new password.
pub async fn restore_finish(
    browser: &Browser,
    token: &str,
    proof: &str,
    new_password: &str,
) -> Result<(), Refusal> {
    let Browser(portal, conn, ..) = browser;
    let arrived = Instant::now();
    let accounts = &portal.shared.accounts;
    let Ok((login, kind)) = accounts.restore_claims(token) else {
        return Err(Refusal::new(
            StatusCode::GONE,
            "That took too long. Start again.",
        ));
    };
    if !portal.may_restore(conn.peer.ip()) {
        return Err(Refusal::throttled());
    }
    let password = Secret::from(new_password);
    let result = match kind.channel() {
        Some(channel) => {
            accounts
                .restore_with_code(&login, channel, proof, &password)
                .await
        }
        None => accounts.restore_with_answer(&login, proof, &password).await,
    };
    match result {
        Ok(()) => {
            tracing::info!(login = %crate::protocol::printable(&login), peer = %conn.peer, "access restored in the portal");
            portal.signed_in(&login);
            Ok(())
        }
        Err(AccountError::WrongCode) => {
            tracing::info!(peer = %conn.peer, "restore refused");
            tokio::time::sleep_until(arrived + portal.refusal_delay(&login)).await;
            Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                match kind {
                    Proof::Question => "That answer does not open this account.",
                    _ => "That code is wrong or has expired.",
                },
            ))
        }
        Err(e) => Err(Refusal::from_error(&e)),
    }
}

/// Starts 2FA enrolment, after the main password again if the sign-in is not recent.
pub async fn two_factor_begin(page: &Page, password: Option<&str>) -> Result<Enrolment, Refusal> {
    if !reconfirmed(page, password).await {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "Wrong password."));
    }
    page.0
        .0
        .shared
        .accounts
        .begin_two_factor(&page.1)
        .map_err(|e| Refusal::from_error(&e))
}

/// Finishes 2FA enrolment with a code from the app.
pub async fn two_factor_enable(
    page: &Page,
    token: &str,
    code: &str,
) -> Result<TwoFactorOn, Refusal> {
    let arrived = Instant::now();
    let Page(Browser(portal, ..), account, _) = page;
    let result = portal
        .shared
        .accounts
        .enable_two_factor(&account.login, token, code)
        .await;
    let on = code_checked(
        portal,
        arrived,
        result,
        "That code is wrong. Check the time on your phone and type the code the app shows now.",
    )
    .await?;
    tracing::info!(login = %account.login, "two-factor authentication turned on in the portal");
    Ok(on)
}

/// Turns 2FA off, given a code or a recovery code.
pub async fn two_factor_disable(page: &Page, code: &str) -> Result<(), Refusal> {
    let arrived = Instant::now();
    let Page(Browser(portal, ..), account, _) = page;
    let result = portal
        .shared
        .accounts
        .disable_two_factor(&account.login, code)
        .await;
    code_checked(
        portal,
        arrived,
        result,
        "That code is wrong or was already used.",
    )
    .await?;
    tracing::info!(login = %account.login, "two-factor authentication turned off in the portal");
    Ok(())
}

/// `email` or `phone`.
pub fn channel(kind: &str) -> Result<Channel, Refusal> {
    match kind {
        "email" => Ok(Channel::Email),
        "phone" => Ok(Channel::Phone),
        _ => Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Choose phone or email.",
        )),
    }
}

/// Adding a phone or an email: a code goes there (after the main password again if the
/// sign-in is not recent); returns the canonical address.
pub async fn add_contact(
    page: &Page,
    channel: Channel,
    value: &str,
    password: Option<&str>,
) -> Result<String, Refusal> {
    if !reconfirmed(page, password).await {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "Wrong password."));
    }
    let Page(Browser(portal, ..), account, _) = page;
    if !portal.delivery.can_send(channel) {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "This server cannot send codes that way.",
        ));
    }
    let code = portal
        .shared
        .accounts
        .start_confirm(account, channel, value)
        .await
        .map_err(|e| Refusal::from_error(&e))?;
    if let Err(e) = portal.delivery.send(&code, Why::Confirm).await {
        tracing::warn!(error = %e, login = %account.login, "a confirmation code could not be sent");
        return Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "The code could not be sent. Try again later.",
        ));
    }
    Ok(code.target)
}

/// Finishes adding a phone or an email with the code sent there.
pub async fn confirm_contact(page: &Page, channel: Channel, code: &str) -> Result<String, Refusal> {
    let arrived = Instant::now();
    let Page(Browser(portal, ..), account, _) = page;
    let result = portal
        .shared
        .accounts
        .finish_confirm(account, channel, code)
        .await;
    let target = code_checked(
        portal,
        arrived,
        result,
        "That code is wrong or has expired.",
    )
    .await?;
    tracing::info!(login = %account.login, "contact confirmed in the portal");
    Ok(target)
}

/// A code check as the person sees it: a wrong code is answered at the failure delay with
/// `wrong`; other errors as usual.
async fn code_checked<T>(
    portal: &Portal,
    arrived: Instant,
    result: Result<T, AccountError>,
    wrong: &str,
) -> Result<T, Refusal> {
    match result {
        Ok(value) => Ok(value),
        Err(AccountError::WrongCode) => {
            failure_delay(portal, arrived).await;
            Err(Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, wrong))
        }
        Err(e) => Err(Refusal::from_error(&e)),
    }
}

/// Sets the security question, after the main password again if the sign-in is not recent.
pub async fn set_question(
    page: &Page,
    question: &str,
    answer: &str,
    password: Option<&str>,
) -> Result<(), Refusal> {
    if !reconfirmed(page, password).await {
        return Err(Refusal::new(StatusCode::UNAUTHORIZED, "Wrong password."));
    }
    let Page(Browser(portal, ..), account, _) = page;
    portal
        .shared
        .accounts
        .set_question(account, question, answer)
        .await
        .map_err(|e| Refusal::from_error(&e))
}

/// A new main password, given the current one; the other web sessions end if asked.
pub async fn change_password(
    page: &Page,
    current: &str,
    new: &str,
    end_others: bool,
) -> Result<(), Refusal> {
    let arrived = Instant::now();
    let Page(Browser(portal, ..), account, session) = page;
    let accounts = &portal.shared.accounts;
    if accounts
        .verify_main_password(account.login.as_str(), &Secret::from(current))
        .await
        .is_err()
    {
        failure_delay(portal, arrived).await;
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "Wrong current password.",
        ));
    }
    accounts
        .change_password(&account.login, &Secret::from(new))
        .await
        .map_err(|e| Refusal::from_error(&e))?;
    tracing::info!(login = %account.login, "main password changed in the portal");
    if end_others {
        for other in accounts.web_sessions(account).await.unwrap_or_default() {
            if other.id != session.id {
                let _ = accounts.end_web_session(account, other.id).await;
            }
        }
    }
    let _ = accounts.reconfirm_web_session(session).await;
    Ok(())
}

/// "Log out on all devices": the generation moves on and every web session of the account
/// ends, this one included; returns the cookie with the browser's other accounts.
pub async fn log_out_everywhere(page: &Page) -> Result<HeaderValue, Refusal> {
    let Page(Browser(portal, _, _, signed), account, _) = page;
    let generation = portal
        .shared
        .accounts
        .end_everything(&account.login, GenerationBump::LogoutEverywhere)
        .await
        .map_err(|e| Refusal::from_error(&e))?;
    tracing::info!(login = %account.login, generation = generation.0, "logged out on all devices from the portal");
    let others: Vec<usize> = signed
        .sessions
        .iter()
        .enumerate()
        .filter(|(_, s)| s.account_id == account.id)
        .map(|(i, _)| i)
        .collect();
    Ok(remove_from_browser(portal, signed, &others).await.0)
}

/// Ends the sessions at `indexes` of the browser's list: the rewritten cookie, and whether
/// any account is left signed in.
pub async fn remove_from_browser(
    portal: &Portal,
    signed: &Signed,
    indexes: &[usize],
) -> (HeaderValue, bool) {
    let mut tokens = Vec::new();
    let mut remember = None;
    for (i, (token, session)) in signed.tokens.iter().zip(&signed.sessions).enumerate() {
        if indexes.contains(&i) {
            // Ended by id and account, so a session of an account already gone is a no-op.
            if let Ok(account) = portal.shared.accounts.account(&session.login).await {
                let _ = portal
                    .shared
                    .accounts
                    .end_web_session(&account, session.id)
                    .await;
            }
        } else {
            remember.get_or_insert(session.remember);
            tokens.push(token.clone());
        }
    }
    let left = !tokens.is_empty();
    (
        super::pages::set_cookie(portal, &tokens, remember.unwrap_or(false)),
        left,
    )
}

/// Makes the browser's account at `index` current; `None` if there is none there.
pub fn switch_to(portal: &Portal, signed: &Signed, index: usize) -> Option<HeaderValue> {
    if index >= signed.tokens.len() {
        return None;
    }
    let mut tokens = signed.tokens.clone();
    let chosen = tokens.remove(index);
    tokens.insert(0, chosen);
    let remember = signed.sessions.get(index).is_some_and(|s| s.remember);
    Some(super::pages::set_cookie(portal, &tokens, remember))
}
