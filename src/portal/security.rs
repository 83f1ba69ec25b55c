//! The portal's security pages: two-factor authentication, the profile (names, phone, backup
//! email, security question) and "Can't sign in?" (restore access). The rules are the account
//! service's; these handlers only ask, show and deliver codes.

use axum::extract::Form;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use minijinja::context;
use serde::Deserialize;

use super::actions;
use super::pages::{Browser, Page, page_error, with_status};
use crate::credentials::Secret;
use crate::credentials::accounts::{Channel, Enrolment, Proof, QUESTIONS};

fn text(secret: &Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
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
    match actions::two_factor_begin(&page, form.password.as_deref()).await {
        Ok(enrolment) => two_factor_view(&page, Some(&enrolment), None, None).await,
        Err(refusal) => two_factor_view(&page, None, None, Some(refusal.message)).await,
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
    match actions::two_factor_enable(&page, &form.token, &form.code).await {
        Ok(on) => {
            // The page shows the account as it is now.
            let Ok(account) = page.0.0.shared.accounts.account(&page.1.login).await else {
                return Redirect::to("/two-factor").into_response();
            };
            let page = Page(page.0, account, page.2);
            let codes = on.recovery_codes.iter().map(text).collect();
            two_factor_view(&page, None, Some(codes), None).await
        }
        Err(refusal) => {
            let enrolment = page
                .0
                .0
                .shared
                .accounts
                .enrolment(&page.1, &form.token)
                .ok();
            two_factor_view(&page, enrolment.as_ref(), None, Some(refusal.message)).await
        }
    }
}

#[derive(Deserialize)]
pub struct DisableForm {
    code: String,
}

/// Turns 2FA off, given a code.
pub async fn two_factor_disable(page: Page, Form(form): Form<DisableForm>) -> Response {
    match actions::two_factor_disable(&page, &form.code).await {
        Ok(()) => Redirect::to("/two-factor").into_response(),
        Err(refusal) => two_factor_view(&page, None, None, Some(refusal.message)).await,
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

/// Adding a phone or an email: a code goes there; it is stored once the code comes back.
pub async fn add_contact(page: Page, Form(form): Form<ContactForm>) -> Response {
    let channel = match actions::channel(&form.kind) {
        Ok(channel) => channel,
        Err(refusal) => return profile_view(&page, None, None, Some(refusal.message)).await,
    };
    match actions::add_contact(&page, channel, &form.value, form.password.as_deref()).await {
        Ok(target) => {
            profile_view(
                &page,
                Some(channel),
                Some(format!("A code is on its way to {target}.")),
                None,
            )
            .await
        }
        Err(refusal) => profile_view(&page, None, None, Some(refusal.message)).await,
    }
}

#[derive(Deserialize)]
pub struct ConfirmForm {
    kind: String,
    code: String,
}

pub async fn confirm_contact(page: Page, Form(form): Form<ConfirmForm>) -> Response {
    let channel = match actions::channel(&form.kind) {
        Ok(channel) => channel,
        Err(refusal) => return profile_view(&page, None, None, Some(refusal.message)).await,
    };
    match actions::confirm_contact(&page, channel, &form.code).await {
        Ok(target) => {
            profile_view(&page, None, Some(format!("{target} is confirmed.")), None).await
        }
        Err(refusal) => profile_view(&page, Some(channel), None, Some(refusal.message)).await,
    }
}

#[derive(Deserialize)]
pub struct QuestionForm {
    question: String,
    answer: String,
    password: Option<String>,
}

pub async fn set_question(page: Page, Form(form): Form<QuestionForm>) -> Response {
    match actions::set_question(
        &page,
        &form.question,
        &form.answer,
        form.password.as_deref(),
    )
    .await
    {
        Ok(()) => profile_view(&page, None, Some("Security question saved.".into()), None).await,
        Err(refusal) => profile_view(&page, None, None, Some(refusal.message)).await,
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
        kind => match actions::channel(kind) {
            Ok(channel) => Some(channel),
            Err(_) => return Redirect::to("/profile").into_response(),
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

/// Sends a code when the address is the account's, or shows the question (see
/// [`actions::restore_begin`]).
pub async fn restore_begin(browser: Browser, Form(form): Form<RestoreForm>) -> Response {
    let outcome = actions::restore_begin(
        &browser,
        &form.login,
        &form.proof,
        form.address.as_deref().unwrap_or(""),
    )
    .await;
    let portal = &browser.0;
    match outcome {
        Ok((token, question)) => portal.render(
            "restore.html",
            context! {
                step => "prove",
                proof => form.proof,
                question => question,
                token => token,
                min_chars => crate::credentials::accounts::MIN_PASSWORD_CHARS,
            },
        ),
        Err(refusal) => with_status(
            restore_start(portal, Some(&refusal.message), &form.login),
            refusal.status,
        ),
    }
}

#[derive(Deserialize)]
pub struct RestoreFinishForm {
    token: String,
    /// The code sent, or the answer.
    proof: String,
    new_password: String,
}

/// Checks the code or the answer; on success the new password is set and everything signed
/// in before is ended (see [`actions::restore_finish`]).
pub async fn restore_finish(browser: Browser, Form(form): Form<RestoreFinishForm>) -> Response {
    let outcome =
        actions::restore_finish(&browser, &form.token, &form.proof, &form.new_password).await;
    let portal = &browser.0;
    match outcome {
        Ok(()) => portal.render("restore.html", context! { step => "done" }),
        Err(refusal) if refusal.status == StatusCode::GONE => with_status(
            restore_start(portal, Some(&refusal.message), ""),
            StatusCode::UNAUTHORIZED,
        ),
        Err(refusal) => {
            let accounts = &portal.shared.accounts;
            let (proof, question) = match accounts.restore_claims(&form.token) {
                Ok((login, Proof::Question)) => {
                    ("question", accounts.restore_question(&login).await.ok())
                }
                Ok((_, Proof::Phone)) => ("phone", None),
                _ => ("email", None),
            };
            with_status(
                portal.render(
                    "restore.html",
                    context! {
                        step => "prove",
                        proof => proof,
                        question => question,
                        token => form.token,
                        min_chars => crate::credentials::accounts::MIN_PASSWORD_CHARS,
                        error => refusal.message,
                    },
                ),
                refusal.status,
            )
        }
    }
}
