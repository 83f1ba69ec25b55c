//! The portal's domain pages: "My domains" (connect, the TXT record to publish, confirm) and
//! one page per domain (mailboxes; for the owner also administrators, API tokens, disconnect
//! and the domain's activity), plus the account's own activity log. The rules are the account
//! service's; a mailbox of a hosted domain gets its refusal.

use axum::extract::{Form, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;

use super::domains_api::acting_for;
use super::pages::{Browser, Page, page_error, with_status};
use crate::clock::timestamp;
use crate::credentials::Secret;
use crate::credentials::accounts::{AccountError, Actor, normalize_domain};

fn status_of(e: &AccountError) -> StatusCode {
    match e {
        AccountError::NotAllowed(_) => StatusCode::FORBIDDEN,
        AccountError::Domain(_) => StatusCode::CONFLICT,
        AccountError::Store(_) | AccountError::Hash(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// "My domains".
pub async fn domains(page: Page) -> Response {
    domains_view(&page, None).await
}

async fn domains_view(page: &Page, error: Option<(StatusCode, String)>) -> Response {
    let Page(Browser(portal, _, _, signed), account, _) = page;
    let (list, refusal) = match portal.shared.accounts.domains(account).await {
        Ok(list) => (list, None),
        Err(e) => (Vec::new(), Some((status_of(&e), page_error(&e)))),
    };
    let refusal = error.or(refusal);
    let rows: Vec<minijinja::Value> = list
        .iter()
        .map(|d| {
            context! {
                name => d.record.name.clone(),
                confirmed => d.record.confirmed(),
                owned => d.owned,
                challenge_name => d.challenge.name.clone(),
                challenge_value => d.challenge.value.clone(),
            }
        })
        .collect();
    let response = portal.render(
        "domains.html",
        context! {
            accounts => signed.logins(),
            login => account.login.to_string(),
            domains => rows,
            error => refusal.as_ref().map(|(_, m)| m.clone()),
        },
    );
    match refusal {
        Some((status, _)) => with_status(response, status),
        None => response,
    }
}

#[derive(Deserialize)]
pub struct DomainForm {
    domain: String,
}

pub async fn connect(page: Page, Form(form): Form<DomainForm>) -> Response {
    match acting_for(&page)
        .connect_domain(&page.1, &form.domain)
        .await
    {
        Ok(_) => Redirect::to("/domains").into_response(),
        Err(e) => domains_refused(&page, &e).await,
    }
}

pub async fn confirm(page: Page, Form(form): Form<DomainForm>) -> Response {
    match acting_for(&page)
        .confirm_domain(&page.1, &form.domain)
        .await
    {
        Ok(view) => Redirect::to(&format!("/domains/{}", view.record.name)).into_response(),
        Err(e) => domains_refused(&page, &e).await,
    }
}

/// One domain's page.
pub async fn domain(page: Page, Path(name): Path<String>) -> Response {
    domain_view(&page, &name, None, None, None).await
}

async fn domain_view(
    page: &Page,
    name: &str,
    message: Option<String>,
    error: Option<(StatusCode, String)>,
    new_token: Option<String>,
) -> Response {
    let Page(Browser(portal, _, _, signed), account, _) = page;
    let service = &portal.shared.accounts;
    let actor = Actor::Account(account.clone());
    let mailboxes = match service.mailboxes(&actor, name).await {
        Ok(list) => list,
        Err(e) => return domains_refused(page, &e).await,
    };
    let owned = match service.domain_record(name).await {
        Ok(Some(record)) => record.owner == account.id,
        _ => false,
    };
    let admins = service
        .domain_admins(&actor, name)
        .await
        .unwrap_or_default();
    let (tokens, activity) = if owned {
        (
            service
                .domain_tokens(&actor, name)
                .await
                .unwrap_or_default(),
            service.domain_audit(&actor, name).await.unwrap_or_default(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let response = portal.render(
        "domain.html",
        context! {
            accounts => signed.logins(),
            login => account.login.to_string(),
            domain => normalize_domain(name).unwrap_or_default(),
            owned => owned,
            mailboxes => mailboxes.iter().map(|m| context! {
                login => m.account.login.to_string(),
                local => m.account.login.local_part().to_owned(),
                blocked => m.account.blocked,
                name => format!("{} {}", m.first_name, m.last_name).trim().to_owned(),
                created => timestamp(m.created_at),
            }).collect::<Vec<_>>(),
            admins => admins.iter().map(ToString::to_string).collect::<Vec<_>>(),
            tokens => tokens.iter().filter(|t| t.revoked_at.is_none()).map(|t| context! {
                id => t.id,
                name => t.name.clone(),
                created => timestamp(t.created_at),
                last_used => match (t.last_used_at, &t.last_used_ip) {
                    (Some(at), Some(ip)) => format!("{} from {ip}", timestamp(at)),
                    _ => "never".to_owned(),
                },
            }).collect::<Vec<_>>(),
            new_token => new_token,
            activity => activity.iter().take(50).map(|e| context! {
                at => timestamp(e.at),
                actor => e.actor.clone(),
                ip => e.ip.clone().unwrap_or_default(),
                action => e.action.clone(),
                detail => e.detail.clone(),
            }).collect::<Vec<_>>(),
            min_chars => crate::credentials::accounts::MIN_PASSWORD_CHARS,
            message => message,
            error => error.as_ref().map(|(_, m)| m.clone()),
        },
    );
    match error {
        Some((status, _)) => with_status(response, status),
        None => response,
    }
}

/// Renders the domain page after a change: a redirect when it went through (so a reload does
/// not repeat it), the page with the refusal otherwise.
async fn after<T>(page: &Page, name: &str, result: Result<T, AccountError>) -> Response {
    match result {
        Ok(_) => Redirect::to(&format!(
            "/domains/{}",
            normalize_domain(name).unwrap_or_default()
        ))
        .into_response(),
        Err(e) => domain_refused(page, name, &e).await,
    }
}

/// The domain page with a refusal.
async fn domain_refused(page: &Page, name: &str, e: &AccountError) -> Response {
    domain_view(page, name, None, Some((status_of(e), page_error(e))), None).await
}

/// "My domains" with a refusal.
async fn domains_refused(page: &Page, e: &AccountError) -> Response {
    domains_view(page, Some((status_of(e), page_error(e)))).await
}

#[derive(Deserialize)]
pub struct MailboxForm {
    login: String,
    password: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
}

pub async fn create_mailbox(
    page: Page,
    Path(name): Path<String>,
    Form(form): Form<MailboxForm>,
) -> Response {
    let actor = Actor::Account(page.1.clone());
    let result = acting_for(&page)
        .create_mailbox(
            &actor,
            &name,
            &form.login,
            &Secret::from(form.password.as_str()),
            &form.first_name,
            &form.last_name,
        )
        .await;
    after(&page, &name, result).await
}

#[derive(Deserialize)]
pub struct MailboxActionForm {
    login: String,
    /// `block`, `unblock`, `delete` or `password`.
    action: String,
    password: Option<String>,
}

pub async fn mailbox_action(
    page: Page,
    Path(name): Path<String>,
    Form(form): Form<MailboxActionForm>,
) -> Response {
    let actor = Actor::Account(page.1.clone());
    let service = acting_for(&page);
    let result = match form.action.as_str() {
        "block" => {
            service
                .block_mailbox(&actor, &name, &form.login, true)
                .await
        }
        "unblock" => {
            service
                .block_mailbox(&actor, &name, &form.login, false)
                .await
        }
        "password" => {
            let password = Secret::from(form.password.as_deref().unwrap_or(""));
            service
                .reset_mailbox_password(&actor, &name, &form.login, &password)
                .await
        }
        "delete" => match service.delete_mailbox(&actor, &name, &form.login).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => {
                return domain_view(
                    &page,
                    &name,
                    None,
                    Some((
                        StatusCode::BAD_GATEWAY,
                        "The mailbox is deleted, but removing its data from the server failed; the operator has been told.".into(),
                    )),
                    None,
                )
                .await;
            }
            Err(e) => Err(e),
        },
        _ => Err(AccountError::BadInput("Choose an action.".into())),
    };
    after(&page, &name, result).await
}

#[derive(Deserialize)]
pub struct AdminForm {
    login: String,
    /// `add` or `remove`.
    action: String,
}

pub async fn admin(page: Page, Path(name): Path<String>, Form(form): Form<AdminForm>) -> Response {
    let actor = Actor::Account(page.1.clone());
    let result = acting_for(&page)
        .set_domain_admin(&actor, &name, &form.login, form.action == "add")
        .await;
    after(&page, &name, result).await
}

#[derive(Deserialize)]
pub struct TokenForm {
    name: String,
}

/// A new API token, shown on this response only.
pub async fn create_token(
    page: Page,
    Path(name): Path<String>,
    Form(form): Form<TokenForm>,
) -> Response {
    let actor = Actor::Account(page.1.clone());
    match acting_for(&page)
        .create_domain_token(&actor, &name, &form.name)
        .await
    {
        Ok((_, secret)) => {
            let token = String::from_utf8_lossy(secret.expose()).into_owned();
            domain_view(&page, &name, None, None, Some(token)).await
        }
        Err(e) => domain_refused(&page, &name, &e).await,
    }
}

#[derive(Deserialize)]
pub struct RevokeForm {
    id: i64,
}

pub async fn revoke_token(
    page: Page,
    Path(name): Path<String>,
    Form(form): Form<RevokeForm>,
) -> Response {
    let actor = Actor::Account(page.1.clone());
    let result = acting_for(&page)
        .revoke_domain_token(&actor, &name, form.id)
        .await;
    after(&page, &name, result).await
}

pub async fn disconnect(page: Page, Path(name): Path<String>) -> Response {
    let actor = Actor::Account(page.1.clone());
    match acting_for(&page).disconnect_domain(&actor, &name).await {
        Ok(()) => Redirect::to("/domains").into_response(),
        Err(e) => {
            // A pending claim has no domain page: answer on the list.
            if page
                .0
                .0
                .shared
                .accounts
                .domain_record(&name)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                return domains_refused(&page, &e).await;
            }
            domain_refused(&page, &name, &e).await
        }
    }
}

/// The account's own activity: generation bumps and what managers did to it.
pub async fn activity(page: Page) -> Response {
    let Page(Browser(portal, _, _, signed), account, _) = &page;
    let entries = portal
        .shared
        .accounts
        .account_audit(account)
        .await
        .unwrap_or_default();
    portal.render(
        "activity.html",
        context! {
            accounts => signed.logins(),
            login => account.login.to_string(),
            entries => entries.iter().map(|e| context! {
                at => timestamp(e.at),
                actor => e.actor.clone(),
                ip => e.ip.clone().unwrap_or_default(),
                action => e.action.clone(),
                detail => e.detail.clone(),
            }).collect::<Vec<_>>(),
        },
    )
}
