//! The portal's JSON API, `/api/v1/...`: everything the pages do, for scripts and apps.
//!
//! The same session cookie as the pages (`POST /api/v1/session` sets it), the same CSRF rule
//! (a state-changing request names this origin in `Origin` or `Sec-Fetch-Site`), the same
//! actions ([`super::actions`]) and the same account service. Errors are RFC 9457
//! `application/problem+json`. The contract is `openapi.json` in this folder, served at
//! `/api/v1/openapi.json`.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Portal;
use super::actions::{self, Refusal, SignIn};
use super::pages::{Browser, Page};
use crate::credentials::Secret;
use crate::credentials::model::{AccountState, AppPasswordId};
use std::sync::Arc;

/// The OpenAPI document, as kept in the repository.
pub const OPENAPI: &str = include_str!("openapi.json");

/// An RFC 9457 problem.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": detail,
        })
        .to_string(),
    )
        .into_response()
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        problem(self.status, &self.message)
    }
}

fn text(secret: &Secret) -> String {
    String::from_utf8_lossy(secret.expose()).into_owned()
}

fn with_cookie(mut response: Response, cookie: HeaderValue) -> Response {
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// A JSON body; a malformed one is a problem, not axum's plain-text rejection.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(problem(rejection.status(), &rejection.body_text())),
        }
    }
}

/// A request of the signed-in current account; without one, 401.
pub struct Signed(pub Page);

impl FromRequestParts<Arc<Portal>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, portal: &Arc<Portal>) -> Result<Self, Response> {
        let browser = Browser::from_request_parts(parts, portal).await?;
        let Some(session) = browser.3.current().cloned() else {
            return Err(problem(
                StatusCode::UNAUTHORIZED,
                "Not signed in: POST /api/v1/session first.",
            ));
        };
        match portal.shared.accounts.account(&session.login).await {
            Ok(account) => Ok(Self(Page(browser, account, session))),
            Err(e) => {
                tracing::warn!(error = %e, "portal account lookup failed");
                Err(problem(StatusCode::SERVICE_UNAVAILABLE, "Try again later."))
            }
        }
    }
}

fn account_json(account: &AccountState, recovery_codes_left: i64) -> Value {
    json!({
        "login": account.login.as_str(),
        "generation": account.generation.0,
        "two_factor": account.two_factor,
        "app_passwords_only": account.app_passwords_only,
        "recovery_codes_left": recovery_codes_left,
    })
}

// ----- session -----

#[derive(Deserialize)]
pub struct SignInBody {
    login: String,
    password: String,
    #[serde(default = "yes")]
    remember: bool,
}

fn yes() -> bool {
    true
}

fn signed_in(outcome: Result<SignIn, Refusal>) -> Response {
    match outcome {
        Ok(SignIn::Done(cookie, account)) => with_cookie(
            Json(json!({ "login": account.login.as_str() })).into_response(),
            cookie,
        ),
        Ok(SignIn::NeedsCode(token)) => (
            StatusCode::ACCEPTED,
            Json(json!({ "second_factor": "required", "token": token })),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /session`: sign in; 202 with a token when a code must follow.
pub async fn sign_in(browser: Browser, Body(body): Body<SignInBody>) -> Response {
    signed_in(actions::sign_in(&browser, &body.login, &body.password, body.remember).await)
}

#[derive(Deserialize)]
pub struct CodeBody {
    token: String,
    code: String,
}

/// `POST /session/code`: the second step.
pub async fn sign_in_code(browser: Browser, Body(body): Body<CodeBody>) -> Response {
    signed_in(actions::sign_in_code(&browser, &body.token, &body.code).await)
}

/// `DELETE /session`: log out of the current account (the next one becomes current).
pub async fn sign_out(Browser(portal, _, _, signed): Browser) -> Response {
    let (cookie, _) = actions::remove_from_browser(&portal, &signed, &[0]).await;
    with_cookie(StatusCode::NO_CONTENT.into_response(), cookie)
}

/// `GET /browser`: the accounts signed in in this browser, the current one first.
pub async fn browser_accounts(Browser(_, _, _, signed): Browser) -> Response {
    Json(json!({ "accounts": signed.logins() })).into_response()
}

#[derive(Deserialize)]
pub struct SwitchBody {
    index: usize,
}

/// `POST /browser/switch`.
pub async fn switch(
    Browser(portal, _, _, signed): Browser,
    Body(body): Body<SwitchBody>,
) -> Response {
    match actions::switch_to(&portal, &signed, body.index) {
        Some(cookie) => with_cookie(StatusCode::NO_CONTENT.into_response(), cookie),
        None => problem(
            StatusCode::NOT_FOUND,
            "No account at that place in the list.",
        ),
    }
}

// ----- account -----

/// `GET /account`.
pub async fn account(Signed(page): Signed) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    let left = portal
        .shared
        .accounts
        .recovery_codes_left(account)
        .await
        .unwrap_or(0);
    Json(account_json(account, left)).into_response()
}

#[derive(Deserialize)]
pub struct OptionBody {
    on: bool,
}

/// `PUT /account/app-passwords-only`.
pub async fn set_option(Signed(page): Signed, Body(body): Body<OptionBody>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .set_app_passwords_only(&account.login, body.on)
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

/// `GET /app-passwords`: the live ones.
pub async fn app_passwords(Signed(page): Signed) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .list_app_passwords(&account.login)
        .await
    {
        Ok((_, list)) => {
            let items: Vec<Value> = list
                .iter()
                .filter(|p| p.alive)
                .map(|p| {
                    json!({
                        "id": p.id.0,
                        "name": p.name,
                        "service": p.service.as_str(),
                        "created_at": p.created_at,
                        "expires_at": p.limits.expires_at,
                        "networks": p.limits.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "last_used": p.last_used_at.map(|at| json!({
                            "at": at,
                            "ip": p.last_used_ip,
                            "protocol": p.last_used_protocol,
                        })),
                    })
                })
                .collect();
            Json(json!({ "app_passwords": items })).into_response()
        }
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct CreateBody {
    service: String,
    name: String,
    password: Option<String>,
    /// `YYYY-MM-DD` (through that day, UTC) or `YYYY-MM-DDTHH:MM:SSZ`.
    expires: Option<String>,
    /// CIDR blocks or addresses the password works from.
    #[serde(default)]
    networks: Vec<String>,
}

/// `POST /app-passwords`: 201 with the secret, in this response only.
pub async fn create(Signed(page): Signed, Body(body): Body<CreateBody>) -> Response {
    let request = actions::NewAppPassword {
        service: &body.service,
        name: &body.name,
        password: body.password.as_deref(),
        expires: body.expires.as_deref(),
        networks: body.networks.iter().map(String::as_str).collect(),
    };
    match actions::create_app_password(&page, &request).await {
        Ok(made) => (
            StatusCode::CREATED,
            Json(json!({
                "id": made.id.0,
                "name": made.name,
                "service": made.service.as_str(),
                "secret": text(&made.secret),
                "settings": made.settings,
                "expires_at": made.limits.expires_at,
                "networks": made.limits.networks.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `DELETE /app-passwords/{id}`: dead at once, live sessions included.
pub async fn delete(Signed(page): Signed, Path(id): Path<i64>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .revoke_app_password(&account.login, AppPasswordId(id))
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

/// `GET /sessions`: the account's web sessions on every device.
pub async fn sessions(Signed(page): Signed) -> Response {
    let Page(Browser(portal, ..), account, session) = &page;
    let list = portal
        .shared
        .accounts
        .web_sessions(account)
        .await
        .unwrap_or_default();
    let items: Vec<Value> = list
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "user_agent": s.user_agent,
                "ip": s.ip,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "current": s.id == session.id,
            })
        })
        .collect();
    Json(json!({ "sessions": items })).into_response()
}

/// `DELETE /sessions/{id}`.
pub async fn end_session(Signed(page): Signed, Path(id): Path<i64>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal.shared.accounts.end_web_session(account, id).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => problem(StatusCode::NOT_FOUND, "No such session."),
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

/// `POST /logout-everywhere`.
pub async fn logout_everywhere(Signed(page): Signed) -> Response {
    match actions::log_out_everywhere(&page).await {
        Ok(cookie) => with_cookie(StatusCode::NO_CONTENT.into_response(), cookie),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct PasswordBody {
    current: String,
    new: String,
    #[serde(default)]
    end_other_sessions: bool,
}

/// `POST /password`.
pub async fn change_password(Signed(page): Signed, Body(body): Body<PasswordBody>) -> Response {
    match actions::change_password(&page, &body.current, &body.new, body.end_other_sessions).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

// ----- two-factor -----

#[derive(Deserialize)]
pub struct BeginBody {
    password: Option<String>,
}

/// `POST /two-factor/enrolment`: a seed to confirm, nothing stored yet.
pub async fn two_factor_begin(Signed(page): Signed, Body(body): Body<BeginBody>) -> Response {
    match actions::two_factor_begin(&page, body.password.as_deref()).await {
        Ok(e) => Json(json!({
            "secret": text(&e.secret),
            "uri": text(&e.uri),
            "qr_svg": e.qr_svg,
            "token": e.token,
        }))
        .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct EnableBody {
    token: String,
    code: String,
}

/// `POST /two-factor`: on, with the recovery codes in this response only.
pub async fn two_factor_enable(Signed(page): Signed, Body(body): Body<EnableBody>) -> Response {
    match actions::two_factor_enable(&page, &body.token, &body.code).await {
        Ok(on) => Json(json!({
            "recovery_codes": on.recovery_codes.iter().map(text).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct DisableBody {
    code: String,
}

/// `DELETE /two-factor` (with a code in the body).
pub async fn two_factor_disable(Signed(page): Signed, Body(body): Body<DisableBody>) -> Response {
    match actions::two_factor_disable(&page, &body.code).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

// ----- profile -----

/// `GET /profile`.
pub async fn profile(Signed(page): Signed) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal.shared.accounts.profile(account).await {
        Ok(profile) => Json(profile).into_response(),
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct NamesBody {
    first_name: String,
    last_name: String,
}

/// `PUT /profile/names`.
pub async fn set_names(Signed(page): Signed, Body(body): Body<NamesBody>) -> Response {
    let Page(Browser(portal, ..), account, _) = &page;
    match portal
        .shared
        .accounts
        .set_names(account, &body.first_name, &body.last_name)
        .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct ContactBody {
    value: String,
    password: Option<String>,
}

/// `POST /profile/contacts/{kind}`: a code goes to the new email or phone (202).
pub async fn add_contact(
    Signed(page): Signed,
    Path(kind): Path<String>,
    Body(body): Body<ContactBody>,
) -> Response {
    let outcome = match actions::channel(&kind) {
        Ok(channel) => {
            actions::add_contact(&page, channel, &body.value, body.password.as_deref()).await
        }
        Err(refusal) => Err(refusal),
    };
    match outcome {
        Ok(target) => (StatusCode::ACCEPTED, Json(json!({ "sent_to": target }))).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct ConfirmBody {
    code: String,
}

/// `POST /profile/contacts/{kind}/confirm`.
pub async fn confirm_contact(
    Signed(page): Signed,
    Path(kind): Path<String>,
    Body(body): Body<ConfirmBody>,
) -> Response {
    let outcome = match actions::channel(&kind) {
        Ok(channel) => actions::confirm_contact(&page, channel, &body.code).await,
        Err(refusal) => Err(refusal),
    };
    match outcome {
        Ok(target) => Json(json!({ "confirmed": target })).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct QuestionBody {
    question: String,
    answer: String,
    password: Option<String>,
}

/// `PUT /profile/question`.
pub async fn set_question(Signed(page): Signed, Body(body): Body<QuestionBody>) -> Response {
    match actions::set_question(
        &page,
        &body.question,
        &body.answer,
        body.password.as_deref(),
    )
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `DELETE /profile/contacts/{kind}`: the email or the phone.
pub async fn remove_contact(Signed(page): Signed, Path(kind): Path<String>) -> Response {
    match actions::channel(&kind) {
        Ok(channel) => remove(&page, Some(channel)).await,
        Err(refusal) => refusal.into_response(),
    }
}

/// `DELETE /profile/question`.
pub async fn remove_question(Signed(page): Signed) -> Response {
    remove(&page, None).await
}

async fn remove(page: &Page, what: Option<crate::credentials::accounts::Channel>) -> Response {
    let Page(Browser(portal, ..), account, _) = page;
    match portal.shared.accounts.remove_contact(account, what).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => Refusal::from_error(&e).into_response(),
    }
}

// ----- restore access -----

#[derive(Deserialize)]
pub struct RestoreBody {
    login: String,
    proof: String,
    #[serde(default)]
    address: String,
}

/// `POST /restore`: the token for the last step, and the question when that is the proof.
pub async fn restore_begin(browser: Browser, Body(body): Body<RestoreBody>) -> Response {
    match actions::restore_begin(&browser, &body.login, &body.proof, &body.address).await {
        Ok((token, question)) => {
            Json(json!({ "token": token, "question": question })).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
pub struct RestoreFinishBody {
    token: String,
    proof: String,
    new_password: String,
}

/// `POST /restore/finish`.
pub async fn restore_finish(browser: Browser, Body(body): Body<RestoreFinishBody>) -> Response {
    match actions::restore_finish(&browser, &body.token, &body.proof, &body.new_password).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Anything else under the API: a problem, not the pages' HTML.
pub async fn not_found() -> Response {
    problem(StatusCode::NOT_FOUND, "No such endpoint.")
}

/// The API's routes, nested under `/api/v1`.
pub fn routes() -> axum::Router<Arc<Portal>> {
    use super::domains_api as d;
    use axum::routing::{delete as del, get, post, put};
    axum::Router::new()
        .route("/openapi.json", get(openapi))
        .route("/session", post(sign_in).delete(sign_out))
        .route("/session/code", post(sign_in_code))
        .route("/browser", get(browser_accounts))
        .route("/browser/switch", post(switch))
        .route("/account", get(account))
        .route("/account/app-passwords-only", put(set_option))
        .route("/app-passwords", get(app_passwords).post(create))
        .route("/app-passwords/{id}", del(delete))
        .route("/sessions", get(sessions))
        .route("/sessions/{id}", del(end_session))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/password", post(change_password))
        .route("/two-factor/enrolment", post(two_factor_begin))
        .route(
            "/two-factor",
            post(two_factor_enable).delete(two_factor_disable),
        )
        .route("/profile", get(profile))
        .route("/profile/names", put(set_names))
        .route(
            "/profile/question",
            put(set_question).delete(remove_question),
        )
        .route(
            "/profile/contacts/{kind}",
            post(add_contact).delete(remove_contact),
        )
        .route("/profile/contacts/{kind}/confirm", post(confirm_contact))
        .route("/restore", post(restore_begin))
        .route("/restore/finish", post(restore_finish))
        .route("/account/audit", get(d::account_audit))
        .route("/domains", get(d::list).post(d::connect))
        .route("/domains/{domain}", del(d::disconnect))
        .route("/domains/{domain}/confirm", post(d::confirm))
        .route(
            "/domains/{domain}/mailboxes",
            get(d::mailboxes).post(d::create_mailbox),
        )
        .route(
            "/domains/{domain}/mailboxes/{login}",
            del(d::delete_mailbox),
        )
        .route("/domains/{domain}/mailboxes/{login}/block", post(d::block))
        .route(
            "/domains/{domain}/mailboxes/{login}/unblock",
            post(d::unblock),
        )
        .route(
            "/domains/{domain}/mailboxes/{login}/password",
            post(d::reset_password),
        )
        .route(
            "/domains/{domain}/admins",
            get(d::admins).post(d::add_admin),
        )
        .route("/domains/{domain}/admins/{login}", del(d::remove_admin))
        .route(
            "/domains/{domain}/tokens",
            get(d::tokens).post(d::create_token),
        )
        .route("/domains/{domain}/tokens/{id}", del(d::revoke_token))
        .route("/domains/{domain}/audit", get(d::domain_audit))
        .fallback(not_found)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The document and the router name the same paths: no endpoint undocumented, no
    /// documented one missing.
    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let documented: BTreeSet<String> =
            doc["paths"].as_object().unwrap().keys().cloned().collect();
        // The router, not this test.
        let source = include_str!("api.rs").split("#[cfg(test)]").next().unwrap();
        let routed: BTreeSet<String> = source
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect();
        assert_eq!(documented, routed);
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
