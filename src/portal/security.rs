//! The portal's security pages: two-factor authentication, the profile (names, phone, backup
//! email, security question) and "Can't sign in?" (restore access). The rules are the account
//! service's; these handlers only ask, show and deliver codes.

use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use minijinja::context;
use serde::Deserialize;
use tokio::time::Instant;

use super::delivery::Why;
use super::pages::{Browser, Page, failure_delay, page_error, reconfirmed};
use crate::credentials::Secret;
use crate::credentials::accounts::{AccountError, Channel, Enrolment, Proof, QUESTIONS};

fn text(secret: &Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
}

fn with_status(mut response: Response, status: StatusCode) -> Response {
    *response.status_mut() = status;
    response
}

/// The QR code as an `<img>` source: CSP allows `data:` images, and no script is involved.
fn qr_data_uri(svg: &str) -> String {
    format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    )
}

// ----- two-factor authentication -----

/// The 2FA page: its state, with what each change does to app passwords.
pub async fn two_factor(page: Page) -> Response {
    two_factor_view(&page, None, None, None).await
}

async fn two_factor_view(
    page: &Page,
    enrolment: Option<&Enrolment>,
    codes: Option<Vec<String>>,
    error: Option<String>,
) -> Response {
    let Page(Browser(portal, _, _, signed), account, _) = page;
    let left = portal
        .shared
        .accounts
        .recovery_codes_left(account)
        .await
        .unwrap_or(0);
    let enrolment = enrolment.map(|e| {
        context! {
            secret => text(&e.secret),
            uri => text(&e.uri),
            qr => qr_data_uri(&e.qr_svg),
            token => e.token.clone(),
        }
    });
    let has_codes = codes.is_some();
    with_status(
        portal.render(
            "two_factor.html",
            context! {
                accounts => signed.logins(),
                login => account.login.to_string(),
                two_factor => account.two_factor,
                recovery_left => left,
                enrolment => enrolment,
                recovery_codes => codes,
                error => error.clone(),
            },
        ),
        match (error.is_some(), has_codes) {
            (true, _) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::OK,
        },
    )
}

#[derive(Deserialize)]
pub struct BeginForm {
    password: Option<String>,
}

/// Starts enrolment: the QR code and the secret as text, nothing stored yet.
pub async fn two_factor_begin(page: Page, Form(form): Form<BeginForm>) -> Response {
    if !reconfirmed(&page, form.password.as_deref()).await {
        return two_factor_view(&page, None, None, Some("Wrong password.".into())).await;
    }
    match page.0.0.shared.accounts.begin_two_factor(&page.1) {
        Ok(enrolment) => two_factor_view(&page, Some(&enrolment), None, None).await,
        Err(e) => two_factor_view(&page, None, None, Some(page_error(&e))).await,
    }
}

#[derive(Deserialize)]
pub struct EnableForm {
    token: String,
    code: String,
}

/// Finishes enrolment with a code from the app; the recovery codes are shown once, on this
/// response only.
pub async fn two_factor_enable(page: Page, Form(form): Form<EnableForm>) -> Response {
    let arrived = Instant::now();
    let Page(Browser(portal, ..), account, _) = &page;
    let accounts = &portal.shared.accounts;
    match accounts
        .enable_two_factor(&account.login, &form.token, &form.code)
        .await
    {
        Ok(on) => {
            tracing::info!(login = %account.login, "two-factor authentication turned on in the portal");
            // The page shows the account as it is now.
            let Ok(account) = accounts.account(&account.login).await else {
                return Redirect::to("/two-factor").into_response();
            };
            let page = Page(page.0, account, page.2);
            let codes = on.recovery_codes.iter().map(text).collect();
            two_factor_view(&page, None, Some(codes), None).await
        }
        Err(AccountError::WrongCode) => {
            failure_delay(portal, arrived).await;
            let enrolment = accounts.enrolment(account, &form.token).ok();
            two_factor_view(
                &page,
                enrolment.as_ref(),
                None,
                Some("That code is wrong. Check the time on your phone and type the code the app shows now.".into()),
            )
            .await
        }
        Err(e) => two_factor_view(&page, None, None, Some(page_error(&e))).await,
    }
}

#[derive(Deserialize)]
pub struct DisableForm {
    code: String,
}

/// Turns 2FA off, given a code.
pub async fn two_factor_disable(page: Page, Form(form): Form<DisableForm>) -> Response {
    let arrived = Instant::now();
    let Page(Browser(portal, ..), account, _) = &page;
    let accounts = &portal.shared.accounts;
    match accounts
        .disable_two_factor(&account.login, &form.code)
        .await
    {
        Ok(_) => {
            tracing::info!(login = %account.login, "two-factor authentication turned off in the portal");
            Redirect::to("/two-factor").into_response()
        }
        Err(AccountError::WrongCode) => {
            failure_delay(portal, arrived).await;
            two_factor_view(
                &page,
                None,
                None,
                Some("That code is wrong or was already used.".into()),
            )
            .await
        }
        Err(e) => two_factor_view(&page, None, None, Some(page_error(&e))).await,
    }
}

// ----- profile -----

/// The profile page.
pub async fn profile(page: Page) -> Response {
    profile_view(&page, None, None, None).await
}

/// `confirming`: the channel whose code form to show.
async fn profile_view(
    page: &Page,
    confirming: Option<Channel>,
    message: Option<String>,
    error: Option<String>,
) -> Response {
    let Page(Browser(portal, _, _, signed), account, session) = page;
    let profile = match portal.shared.accounts.profile(account).await {
        Ok(profile) => profile,
        Err(e) => {
            tracing::warn!(error = %e, "reading a profile failed");
            Default::default()
        }
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    with_status(
        portal.render(
            "profile.html",
            context! {
                accounts => signed.logins(),
                login => account.login.to_string(),
                profile => minijinja::value::Serde(&profile),
                questions => QUESTIONS.iter().map(|q| (*q).to_owned()).collect::<Vec<_>>(),
                confirming => confirming.map(|c| match c { Channel::Email => "email", Channel::Phone => "phone" }),
                can_email => portal.delivery.can_send(Channel::Email),
                can_phone => portal.delivery.can_send(Channel::Phone),
                reconfirm => super::pages::needs_reconfirm(portal, session),
                message => message,
                error => error,
            },
        ),
        status,
    )
}

#[derive(Deserialize)]
pub struct NamesForm {
    first_name: String,
    last_name: String,
}

pub async fn set_names(page: Page, Form(form): Form<NamesForm>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .set_names(account, &form.first_name, &form.last_name)
        .await
    {
        Ok(()) => Redirect::to("/profile").into_response(),
        Err(e) => profile_view(&page, None, None, Some(page_error(&e))).await,
    }
}

#[derive(Deserialize)]
pub struct ContactForm {
    /// `email` or `phone`.
    kind: String,
    value: String,
    password: Option<String>,
}

fn channel(kind: &str) -> Option<Channel> {
    match kind {
        "email" => Some(Channel::Email),
        "phone" => Some(Channel::Phone),
        _ => None,
    }
}

/// Adding a phone or an email: a code goes there; it is stored once the code comes back.
pub async fn add_contact(page: Page, Form(form): Form<ContactForm>) -> Response {
    let Some(channel) = channel(&form.kind) else {
        return profile_view(&page, None, None, Some("Choose phone or email.".into())).await;
    };
    if !reconfirmed(&page, form.password.as_deref()).await {
        return profile_view(&page, None, None, Some("Wrong password.".into())).await;
    }
    let Page(Browser(portal, ..), account, _) = &page;
    if !portal.delivery.can_send(channel) {
        return profile_view(
            &page,
            None,
            None,
            Some("This server cannot send codes that way.".into()),
        )
        .await;
    }
    let code = match portal
        .shared
        .accounts
        .start_confirm(account, channel, &form.value)
        .await
    {
        Ok(code) => code,
        Err(e) => return profile_view(&page, None, None, Some(page_error(&e))).await,
    };
    if let Err(e) = portal.delivery.send(&code, Why::Confirm).await {
        tracing::warn!(error = %e, login = %account.login, "a confirmation code could not be sent");
        return profile_view(
            &page,
            None,
            None,
            Some("The code could not be sent. Try again later.".into()),
        )
        .await;
    }
    profile_view(
        &page,
        Some(channel),
        Some(format!("A code is on its way to {}.", code.target)),
        None,
    )
    .await
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    kind: String,
    code: String,
}

pub async fn confirm_contact(page: Page, Form(form): Form<ConfirmForm>) -> Response {
    let arrived = Instant::now();
    let Some(channel) = channel(&form.kind) else {
        return profile_view(&page, None, None, Some("Choose phone or email.".into())).await;
    };
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .finish_confirm(account, channel, &form.code)
        .await
    {
        Ok(target) => {
            tracing::info!(login = %account.login, kind = form.kind, "contact confirmed in the portal");
            profile_view(&page, None, Some(format!("{target} is confirmed.")), None).await
        }
        Err(AccountError::WrongCode) => {
            failure_delay(portal, arrived).await;
            profile_view(
                &page,
                Some(channel),
                None,
                Some("That code is wrong or has expired.".into()),
            )
            .await
        }
        Err(e) => profile_view(&page, None, None, Some(page_error(&e))).await,
    }
}

#[derive(Deserialize)]
pub struct QuestionForm {
    question: String,
    answer: String,
    password: Option<String>,
}

pub async fn set_question(page: Page, Form(form): Form<QuestionForm>) -> Response {
    if !reconfirmed(&page, form.password.as_deref()).await {
        return profile_view(&page, None, None, Some("Wrong password.".into())).await;
    }
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .set_question(account, &form.question, &form.answer)
        .await
    {
        Ok(()) => profile_view(&page, None, Some("Security question saved.".into()), None).await,
        Err(e) => profile_view(&page, None, None, Some(page_error(&e))).await,
    }
}

#[derive(Deserialize)]
pub struct RemoveForm {
    /// `email`, `phone` or `question`.
    what: String,
}

pub async fn remove_contact(page: Page, Form(form): Form<RemoveForm>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    let what = match form.what.as_str() {
        "question" => None,
        kind => match channel(kind) {
            Some(channel) => Some(channel),
            None => return Redirect::to("/profile").into_response(),
        },
    };
    match portal.shared.accounts.remove_contact(account, what).await {
        Ok(()) => Redirect::to("/profile").into_response(),
        Err(e) => profile_view(&page, None, None, Some(page_error(&e))).await,
    }
}

// ----- restore access -----

/// "Can't sign in?": the first page.
pub async fn restore_page(Browser(portal, ..): Browser) -> Response {
    restore_start(&portal, None, "")
}

fn restore_start(portal: &super::Portal, error: Option<&str>, login: &str) -> Response {
    portal.render(
        "restore.html",
        context! {
            step => "start",
            login => login,
            can_email => portal.delivery.can_send(Channel::Email),
            can_phone => portal.delivery.can_send(Channel::Phone),
            error => error,
        },
    )
}

#[derive(Deserialize)]
pub struct RestoreForm {
    login: String,
    /// `email`, `phone` or `question`.
    proof: String,
    /// The backup email or phone number, for `email` and `phone`.
    address: Option<String>,
}

/// Sends a code when the address is the account's, or shows the question; the page says the
/// same whatever exists.
pub async fn restore_begin(
    Browser(portal, conn, ..): Browser,
    Form(form): Form<RestoreForm>,
) -> Response {
    let arrived = Instant::now();
    if !portal.may_restore(conn.peer.ip()) {
        return with_status(
            restore_start(
                &portal,
                Some("Too many attempts from your address. Wait a minute and try again."),
                &form.login,
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let accounts = &portal.shared.accounts;
    let proof: Proof = match form.proof.parse() {
        Ok(proof) => proof,
        Err(e) => return restore_start(&portal, Some(&page_error(&e)), &form.login),
    };
    let token = match accounts.restore_token(&form.login, proof) {
        Ok(token) => token,
        Err(e) => return restore_start(&portal, Some(&page_error(&e)), &form.login),
    };
    let question = match proof.channel() {
        None => match accounts.restore_question(&form.login).await {
            Ok(question) => Some(question),
            Err(e) => return restore_start(&portal, Some(&page_error(&e)), &form.login),
        },
        Some(channel) => {
            let address = form.address.as_deref().unwrap_or("");
            if let Err(e) = channel.normalize(address) {
                return restore_start(&portal, Some(&page_error(&e)), &form.login);
            }
            match accounts.start_restore(&form.login, channel, address).await {
                Ok(Some(code)) => {
                    if let Err(e) = portal.delivery.send(&code, Why::Restore).await {
                        tracing::warn!(error = %e, "a restore code could not be sent");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "starting a restore failed"),
            }
            // The same answer, as late, whether a code went out or not.
            failure_delay(&portal, arrived).await;
            None
        }
    };
    portal.render(
        "restore.html",
        context! {
            step => "prove",
            proof => form.proof,
            question => question,
            token => token,
            min_chars => crate::credentials::accounts::MIN_PASSWORD_CHARS,
        },
    )
}

#[derive(Deserialize)]
pub struct RestoreFinishForm {
    token: String,
    /// The code sent, or the answer.
    proof: String,
    new_password: String,
}

/// Checks the code or the answer; on success the new password is set and everything signed
/// in before is ended.
pub async fn restore_finish(
    Browser(portal, conn, ..): Browser,
    Form(form): Form<RestoreFinishForm>,
) -> Response {
    let arrived = Instant::now();
    let accounts = &portal.shared.accounts;
    let again = |error: &str, status: StatusCode, question: Option<String>, proof: &str| {
        with_status(
            portal.render(
                "restore.html",
                context! {
                    step => "prove",
                    proof => proof,
                    question => question,
                    token => form.token.clone(),
                    min_chars => crate::credentials::accounts::MIN_PASSWORD_CHARS,
                    error => error,
                },
            ),
            status,
        )
    };
    let Ok((login, proof)) = accounts.restore_claims(&form.token) else {
        return with_status(
            restore_start(&portal, Some("That took too long. Start again."), ""),
            StatusCode::UNAUTHORIZED,
        );
    };
    let proof_name = match proof {
        Proof::Email => "email",
        Proof::Phone => "phone",
        Proof::Question => "question",
    };
    let question = match proof {
        Proof::Question => accounts.restore_question(&login).await.ok(),
        _ => None,
    };
    if !portal.may_restore(conn.peer.ip()) {
        return again(
            "Too many attempts from your address. Wait a minute and try again.",
            StatusCode::TOO_MANY_REQUESTS,
            question,
            proof_name,
        );
    }
    let password = Secret::from(form.new_password.as_str());
    let result = match proof.channel() {
        Some(channel) => {
            accounts
                .restore_with_code(&login, channel, &form.proof, &password)
                .await
        }
        None => {
            accounts
                .restore_with_answer(&login, &form.proof, &password)
                .await
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(login = %crate::protocol::printable(&login), peer = %conn.peer, "access restored in the portal");
            portal.signed_in(&login);
            portal.render("restore.html", context! { step => "done" })
        }
        Err(AccountError::WrongCode) => {
            tracing::info!(peer = %conn.peer, "restore refused");
            tokio::time::sleep_until(arrived + portal.refusal_delay(&login)).await;
            let message = match proof {
                Proof::Question => "That answer does not open this account.",
                _ => "That code is wrong or has expired.",
            };
            again(message, StatusCode::UNAUTHORIZED, question, proof_name)
        }
        Err(e) => again(
            &page_error(&e),
            StatusCode::UNPROCESSABLE_ENTITY,
            question,
            proof_name,
        ),
    }
}
