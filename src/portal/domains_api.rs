//! The hosted-domain part of the JSON API, `/api/v1/domains/...`.
//!
//! Two kinds of caller: a signed-in platform account (the session cookie, the CSRF rule), or a
//! script with a domain API token (`Authorization: Bearer pcd_...`), which the browser never
//! attaches by itself, so no CSRF rule applies to it; a request that carries one is never read
//! as a session. A token manages its own domain's mailboxes and nothing else; the account
//! service decides who may do what.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::Portal;
use super::actions::Refusal;
use super::api::{Body, Signed, problem};
use super::pages::{Browser, Page};
use crate::credentials::Secret;
use crate::credentials::accounts::{AccountService, Actor};
use crate::store::Mailbox;

/// The bearer token of a request, if it carries one.
pub fn bearer(parts: &Parts) -> Option<Secret> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::from(token.trim()))
}

/// Who manages: a signed-in platform account or a domain token, with the account service
/// acting for them in the audit log.
pub struct Manager(Actor, AccountService);

impl FromRequestParts<Arc<Portal>> for Manager {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Self, Response> {
        if let Some(token) = bearer(parts) {
            let ip = parts
                .extensions
                .get::<super::Connection>()
                .map(|c| c.peer.ip().to_string())
                .unwrap_or_default();
            return match portal.shared.accounts.token_actor(&token, &ip).await {
                Ok(Some(actor)) => {
                    let who = match &actor {
                        Actor::Token { id, .. } => format!("API token {id}"),
                        _ => "API token".to_owned(),
                    };
                    Ok(Self(actor, portal.shared.accounts.acting(&who, Some(&ip))))
                }
                Ok(None) => Err(problem(
                    StatusCode::UNAUTHORIZED,
                    "That API token is not valid (revoked, or never made).",
                )),
                Err(_) => Err(problem(StatusCode::SERVICE_UNAVAILABLE, "Try again later.")),
            };
        }
        let Signed(page) = Signed::from_request_parts(parts, portal).await?;
        let service = acting_for(&page);
        Ok(Self(Actor::Account(page.1.clone()), service))
    }
}

/// The account service acting for the page's account, from its address (for the audit log).
pub fn acting_for(page: &Page) -> AccountService {
    let Page(Browser(portal, conn, ..), account, _) = page;
    portal
        .shared
        .accounts
        .acting(account.login.as_str(), Some(&conn.peer.ip().to_string()))
}

fn refused(e: &crate::credentials::accounts::AccountError) -> Response {
    Refusal::from_error(e).into_response()
}

fn done<T>(result: Result<T, crate::credentials::accounts::AccountError>) -> Response {
    match result {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => refused(&e),
    }
}

pub fn mailbox_json(m: &Mailbox) -> serde_json::Value {
    json!({
        "login": m.account.login.as_str(),
        "blocked": m.account.blocked,
        "first_name": m.first_name,
        "last_name": m.last_name,
        "created_at": m.created_at,
    })
}

/// `GET /domains`: the domains the signed-in account owns or administers.
pub async fn list(Signed(page): Signed) -> Response {
    match acting_for(&page).domains(&page.1).await {
        Ok(list) => Json(json!({ "domains": list })).into_response(),
        Err(e) => refused(&e),
    }
}

#[derive(Deserialize)]
pub struct ConnectBody {
    domain: String,
}

/// `POST /domains`: connect a domain (pending until confirmed); the TXT record to publish.
pub async fn connect(Signed(page): Signed, Body(body): Body<ConnectBody>) -> Response {
    match acting_for(&page)
        .connect_domain(&page.1, &body.domain)
        .await
    {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => refused(&e),
    }
}

/// `POST /domains/{domain}/confirm`: look the TXT record up now.
pub async fn confirm(Signed(page): Signed, Path(domain): Path<String>) -> Response {
    match acting_for(&page).confirm_domain(&page.1, &domain).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => refused(&e),
    }
}

/// `DELETE /domains/{domain}`: disconnect (owner; no mailboxes left).
pub async fn disconnect(Manager(actor, service): Manager, Path(domain): Path<String>) -> Response {
    done(service.disconnect_domain(&actor, &domain).await)
}

/// `GET /domains/{domain}/mailboxes`.
pub async fn mailboxes(Manager(actor, service): Manager, Path(domain): Path<String>) -> Response {
    match service.mailboxes(&actor, &domain).await {
        Ok(list) => Json(json!({
            "mailboxes": list.iter().map(mailbox_json).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => refused(&e),
    }
}

#[derive(Deserialize)]
pub struct MailboxBody {
    login: String,
    password: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
}

/// `POST /domains/{domain}/mailboxes`.
pub async fn create_mailbox(
    Manager(actor, service): Manager,
    Path(domain): Path<String>,
    Body(body): Body<MailboxBody>,
) -> Response {
    match service
        .create_mailbox(
            &actor,
            &domain,
            &body.login,
            &Secret::from(body.password.as_str()),
            &body.first_name,
            &body.last_name,
        )
        .await
    {
        Ok(account) => (
            StatusCode::CREATED,
            Json(json!({ "login": account.login.as_str() })),
        )
            .into_response(),
        Err(e) => refused(&e),
    }
}

/// `POST /domains/{domain}/mailboxes/{login}/block`.
pub async fn block(
    Manager(actor, service): Manager,
    Path((domain, login)): Path<(String, String)>,
) -> Response {
    done(service.block_mailbox(&actor, &domain, &login, true).await)
}

/// `POST /domains/{domain}/mailboxes/{login}/unblock`.
pub async fn unblock(
    Manager(actor, service): Manager,
    Path((domain, login)): Path<(String, String)>,
) -> Response {
    done(service.block_mailbox(&actor, &domain, &login, false).await)
}

#[derive(Deserialize)]
pub struct PasswordBody {
    password: String,
}

/// `POST /domains/{domain}/mailboxes/{login}/password`.
pub async fn reset_password(
    Manager(actor, service): Manager,
    Path((domain, login)): Path<(String, String)>,
    Body(body): Body<PasswordBody>,
) -> Response {
    done(
        service
            .reset_mailbox_password(
                &actor,
                &domain,
                &login,
                &Secret::from(body.password.as_str()),
            )
            .await,
    )
}

/// `DELETE /domains/{domain}/mailboxes/{login}`: for good; the deletion hook runs.
pub async fn delete_mailbox(
    Manager(actor, service): Manager,
    Path((domain, login)): Path<(String, String)>,
) -> Response {
    match service.delete_mailbox(&actor, &domain, &login).await {
        Ok(None) => StatusCode::NO_CONTENT.into_response(),
        Ok(Some(_)) => problem(
            StatusCode::BAD_GATEWAY,
            "The mailbox is deleted, but removing its data from the server failed; the operator has been told.",
        ),
        Err(e) => refused(&e),
    }
}

/// `GET /domains/{domain}/admins`.
pub async fn admins(Manager(actor, service): Manager, Path(domain): Path<String>) -> Response {
    match service.domain_admins(&actor, &domain).await {
        Ok(list) => Json(json!({
            "admins": list.iter().map(|l| l.as_str()).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => refused(&e),
    }
}

#[derive(Deserialize)]
pub struct AdminBody {
    login: String,
}

/// `POST /domains/{domain}/admins` (owner).
pub async fn add_admin(
    Manager(actor, service): Manager,
    Path(domain): Path<String>,
    Body(body): Body<AdminBody>,
) -> Response {
    done(
        service
            .set_domain_admin(&actor, &domain, &body.login, true)
            .await,
    )
}

/// `DELETE /domains/{domain}/admins/{login}` (owner).
pub async fn remove_admin(
    Manager(actor, service): Manager,
    Path((domain, login)): Path<(String, String)>,
) -> Response {
    done(
        service
            .set_domain_admin(&actor, &domain, &login, false)
            .await,
    )
}

/// `GET /domains/{domain}/tokens` (owner).
pub async fn tokens(Manager(actor, service): Manager, Path(domain): Path<String>) -> Response {
    match service.domain_tokens(&actor, &domain).await {
        Ok(list) => Json(json!({ "tokens": list })).into_response(),
        Err(e) => refused(&e),
    }
}

#[derive(Deserialize)]
pub struct TokenBody {
    name: String,
}

/// `POST /domains/{domain}/tokens` (owner): the token, in this response only.
pub async fn create_token(
    Manager(actor, service): Manager,
    Path(domain): Path<String>,
    Body(body): Body<TokenBody>,
) -> Response {
    match service
        .create_domain_token(&actor, &domain, &body.name)
        .await
    {
        Ok((id, secret)) => (
            StatusCode::CREATED,
            Json(json!({
                "id": id,
                "name": body.name.trim(),
                "token": String::from_utf8_lossy(secret.expose()),
            })),
        )
            .into_response(),
        Err(e) => refused(&e),
    }
}

/// `DELETE /domains/{domain}/tokens/{id}` (owner).
pub async fn revoke_token(
    Manager(actor, service): Manager,
    Path((domain, id)): Path<(String, i64)>,
) -> Response {
    done(service.revoke_domain_token(&actor, &domain, id).await)
}

/// `GET /domains/{domain}/audit` (owner).
pub async fn domain_audit(
    Manager(actor, service): Manager,
    Path(domain): Path<String>,
) -> Response {
    match service.domain_audit(&actor, &domain).await {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(e) => refused(&e),
    }
}

/// `GET /account/audit`: the signed-in account's own log.
pub async fn account_audit(Signed(page): Signed) -> Response {
    match page.0.0.shared.accounts.account_audit(&page.1).await {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(e) => refused(&e),
    }
}
