//! What mail programs and devices fetch from the portal's listener to set themselves up:
//! Thunderbird's autoconfig, Outlook's Autodiscover, and the Apple profile of an app password
//! just made. The content comes from [`crate::discovery`]; this is only the HTTP side.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Portal;
use super::pages::Page;
use crate::discovery::{self, autodiscover};

/// Whether `path` is Outlook's Autodiscover endpoint (either spelling clients use).
pub(super) fn is_autodiscover(path: &str) -> bool {
    path.eq_ignore_ascii_case("/autodiscover/autodiscover.xml")
}

#[derive(serde::Deserialize)]
pub struct AutoconfigQuery {
    /// Thunderbird sends the address being set up (`?emailaddress=alice@example.org`).
    emailaddress: Option<String>,
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Whether the deployment serves `domain`; a store failure answers as not served (the client
/// then asks its user, which is what it would do anyway).
async fn served(portal: &Portal, domain: &str) -> bool {
    match portal.shared.accounts.serves_domain(domain).await {
        Ok(served) => served,
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell whether a domain is served");
            false
        }
    }
}

/// `GET /.well-known/autoconfig/mail/config-v1.1.xml` (on the mail domain's own web server,
/// or here) and `GET /mail/config-v1.1.xml` (on `autoconfig.DOMAIN`).
pub async fn autoconfig(
    State(portal): State<Arc<Portal>>,
    headers: HeaderMap,
    Query(query): Query<AutoconfigQuery>,
) -> Response {
    let domain = match query.emailaddress.as_deref() {
        Some(address) => match discovery::email_address(address) {
            Some((_, domain)) => domain,
            None => return (StatusCode::BAD_REQUEST, "Not an email address\n").into_response(),
        },
        // Without the address, the host asked names the domain: autoconfig.DOMAIN or DOMAIN.
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(crate::protocol::http::host_without_port)
                .unwrap_or_default();
            host.strip_prefix("autoconfig.").unwrap_or(&host).to_owned()
        }
    };
    if !served(&portal, &domain).await {
        return (StatusCode::NOT_FOUND, "No configuration for that domain\n").into_response();
    }
    xml(
        StatusCode::OK,
        discovery::autoconfig::config(&portal.directory, &domain),
    )
}

/// `POST /autodiscover/autodiscover.xml`: Outlook's request, answered with the settings or an
/// Autodiscover error (both with 200, as Outlook expects).
pub async fn autodiscover(State(portal): State<Arc<Portal>>, body: axum::body::Body) -> Response {
    let Ok(body) = axum::body::to_bytes(body, autodiscover::MAX_REQUEST).await else {
        return xml(
            StatusCode::PAYLOAD_TOO_LARGE,
            autodiscover::error(600, "Invalid Request"),
        );
    };
    let request = match autodiscover::parse_request(&body) {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(error = %e, "Autodiscover request refused");
            return xml(StatusCode::OK, autodiscover::error(600, "Invalid Request"));
        }
    };
    if request
        .schema
        .as_deref()
        .is_some_and(|s| s != autodiscover::OUTLOOK_SCHEMA)
    {
        // ActiveSync (mobilesync) and the like: not served here.
        return xml(
            StatusCode::OK,
            autodiscover::error(601, "Provider is not available"),
        );
    }
    let Some((_, domain)) = discovery::email_address(&request.email) else {
        return xml(StatusCode::OK, autodiscover::error(600, "Invalid Request"));
    };
    if !served(&portal, &domain).await {
        return xml(StatusCode::OK, autodiscover::error(600, "Invalid Request"));
    }
    xml(
        StatusCode::OK,
        autodiscover::response(&portal.directory, request.email.trim()),
    )
}

/// `GET` on the Autodiscover path (clients probing it): the protocol's error.
pub async fn autodiscover_get() -> Response {
    xml(StatusCode::OK, autodiscover::error(600, "Invalid Request"))
}

#[derive(serde::Deserialize)]
pub struct ProfileForm {
    id: i64,
}

/// `POST /access/profile`: the Apple profile of the app password this web session just made,
/// for [`super::SHOWN_FOR`] after it was made. The password comes from memory; the form
/// carries only its id.
pub async fn profile(page: Page, Form(form): Form<ProfileForm>) -> Response {
    let portal = &page.0.0;
    let held = portal
        .profiles
        .get(&page.2.id)
        .filter(|held| held.id.0 == form.id && held.made.elapsed() < super::SHOWN_FOR)
        .map(|held| held.clone());
    let Some(held) = held else {
        return (
            StatusCode::GONE,
            "That profile is no longer available: profiles can be downloaded for ten minutes after the app password is made. Make a new app password for the device.\n",
        )
            .into_response();
    };
    let login = page.1.login.to_string();
    let owner = discovery::profile::Owner {
        email: &login,
        login: &login,
        name: &held.name,
        secret: &held.secret,
    };
    let Some(body) = discovery::profile::profile(&portal.directory, held.service, &owner) else {
        return (
            StatusCode::NOT_FOUND,
            "No profile for this kind of password\n",
        )
            .into_response();
    };
    tracing::info!(login = %login, id = held.id.0, "Apple profile downloaded");
    let file: String = held
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect();
    (
        [
            (
                header::CONTENT_TYPE,
                "application/x-apple-aspen-config".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}.mobileconfig\""),
            ),
        ],
        body,
    )
        .into_response()
}
