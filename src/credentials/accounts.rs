//! The account service: every rule about accounts and app passwords, in one place.
//!
//! The CLI, the portal and its API change accounts only through [`AccountService`]; the store
//! ([`crate::store::AccountStore`]) only applies what the service decided. The rules:
//!
//! - New accounts have 2FA off and the "app passwords" option on.
//! - 2FA forces the option on; turning the option off with 2FA on is refused.
//! - A main-password change bumps the credential generation only while 2FA is off (with 2FA on
//!   the second factor already protects the account); either way the old password dies.
//! - 2FA on, 2FA off, access restored and "log out on all devices" bump the generation.
//! - No app password is made while the option is off (the main password is what protocols take
//!   then).
//! - Passwords have a minimum length and are not on a list of common ones; app-password names
//!   are 1 to 100 printable characters.
//!
//! A change made here reaches this process's credential index at once (not after the feed
//! interval): the service refreshes the account in the index after every write.

use std::sync::Arc;

use super::hashing::{PasswordHasher, app_password_digest, generate_app_password};
use super::index::CredentialIndex;
use super::keys::Keys;
use super::model::{
    AccountState, AppPasswordId, AppPasswordInfo, Generation, GenerationBump, Login, LoginError,
    PasswordLimits, Service, now_ms,
};
use super::secret::Secret;
use crate::store::{AccountChange, NewWebSession, Revocation, Store, StoreError, WebSession};

/// Shortest main password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;

/// Longest main password accepted, in bytes (argon2 takes any length; this bounds the work a
/// request can ask for).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Passwords people pick first: refused whatever their length.
const COMMON_PASSWORDS: &[&str] = &[
    "1234567890",
    "12345678910",
    "0123456789",
    "1111111111",
    "123123123123",
    "qwertyuiop",
    "1q2w3e4r5t",
    "password123",
    "password1234",
    "passw0rd123",
    "iloveyou123",
    "qwerty12345",
    "qwerty123456",
    "abcdefghij",
    "letmein123",
    "welcome123",
    "administrator",
    "changeme123",
    "sunshine123",
    "football123",
];

/// Longest app-password name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// The audit actor of a service nobody named one for: the account acts on itself.
const SELF_SERVICE: &str = "self";

tokio::task_local! {
    /// The client address of the portal request being served, for the audit log.
    pub static CLIENT_IP: String;
}

/// The client network of the portal request being served, if any: its slow hashes take that
/// network's turn ([`PasswordHasher::verify_from`]).
fn client_network() -> Option<super::model::Network> {
    CLIENT_IP
        .try_with(|ip| ip.parse::<std::net::IpAddr>().ok())
        .ok()
        .flatten()
        .map(super::model::Network::of)
}

/// How often a write is decided again when the account changed under it.
const CONFLICT_RETRIES: usize = 5;

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    #[error("invalid login: {0}")]
    Login(#[from] LoginError),
    #[error("unknown account {0}")]
    UnknownAccount(String),
    #[error("account {0} already exists")]
    Exists(String),
    #[error(
        "the password is too weak: it needs at least {MIN_PASSWORD_CHARS} characters and must not be a common password"
    )]
    WeakPassword,
    #[error("the password is longer than {MAX_PASSWORD_BYTES} bytes")]
    PasswordTooLong,
    #[error("the name must be 1 to {MAX_NAME_CHARS} printable characters")]
    BadName,
    #[error(
        "the app-passwords option is off for {0}: turn it on first (the main password opens the protocols until then)"
    )]
    AppPasswordsOff(String),
    #[error(
        "two-factor authentication is on for {0}: app passwords are mandatory and the option cannot be turned off"
    )]
    AppPasswordsRequired(String),
    #[error("account {login} has no app password with id {id}")]
    UnknownAppPassword { login: String, id: i64 },
    /// A sign-in that failed: the same whatever failed (no such account, wrong password).
    #[error("wrong login or password")]
    BadCredentials,
    /// A second-factor code (or recovery code) that is wrong, used, or out of its window.
    #[error("the code is wrong or was already used")]
    WrongCode,
    /// Turning on two-factor authentication took too long (the enrolment expired).
    #[error("the set-up expired: start again")]
    EnrolmentExpired,
    #[error("two-factor authentication is already on")]
    TwoFactorAlreadyOn,
    #[error("{0}")]
    BadInput(String),
    /// A domain operation refused by the domain's state (pending, has mailboxes, taken).
    #[error("{0}")]
    Domain(String),
    /// A domain operation the one asking may not do (not theirs, not the owner, a mailbox).
    #[error("{0}")]
    NotAllowed(String),
    #[error(
        "no secret key is configured ([store] secret_key_file): two-factor authentication and restore access need one"
    )]
    NoKey,
    #[error("{0}")]
    Store(StoreError),
    #[error("{0}")]
    Hash(#[from] super::hashing::HashError),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownAccount(login) => AccountError::UnknownAccount(login),
            StoreError::AccountExists(login) => AccountError::Exists(login),
            e => AccountError::Store(e),
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The change was made; `Some` when it bumped the generation to this value.
    Changed(Option<Generation>),
    /// Nothing to do: the account was already in that state.
    Unchanged,
}

/// A new app password: its id, and the secret, shown once and never stored.
#[derive(Debug)]
pub struct NewAppPassword {
    pub id: AppPasswordId,
    pub secret: Secret,
}

/// Checks a main password against the password rules.
pub fn check_password(password: &Secret) -> Result<(), AccountError> {
    if password.expose().len() > MAX_PASSWORD_BYTES {
        return Err(AccountError::PasswordTooLong);
    }
    let text = String::from_utf8_lossy(password.expose());
    let folded = text.trim().to_lowercase();
    if text.chars().count() < MIN_PASSWORD_CHARS
        || COMMON_PASSWORDS.contains(&folded.as_str())
        // One character over and over.
        || folded.chars().all(|c| folded.starts_with(c))
    {
        return Err(AccountError::WeakPassword);
    }
    Ok(())
}

/// Checks an app password's name; returns it trimmed.
pub fn check_name(name: &str) -> Result<&str, AccountError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(AccountError::BadName);
    }
    Ok(name)
}

/// The change a new main password makes to `account`.
pub fn password_change(account: &AccountState, hash: String) -> AccountChange {
    AccountChange {
        password_hash: Some(hash),
        bump: (!account.two_factor).then_some(GenerationBump::PasswordChanged),
        kind: "password",
        ..AccountChange::default()
    }
}

/// The change turning 2FA on or off makes, if any.
pub fn two_factor_change(account: &AccountState, on: bool) -> Option<AccountChange> {
    (account.two_factor != on).then(|| AccountChange {
        two_factor: Some(on),
        // The second factor makes app passwords mandatory.
        app_passwords_only: on.then_some(true),
        bump: Some(if on {
            GenerationBump::TwoFactorOn
        } else {
            GenerationBump::TwoFactorOff
        }),
        // Off removes the seed and the recovery codes with it; on brings its own (see
        // `enable_two_factor`).
        totp: (!on).then_some(None),
        recovery_codes: (!on).then(Vec::new),
        kind: "two-factor",
        ..AccountChange::default()
    })
}

/// The change setting the "app passwords" option makes, if any.
pub fn option_change(
    account: &AccountState,
    on: bool,
) -> Result<Option<AccountChange>, AccountError> {
    if !on && account.two_factor {
        return Err(AccountError::AppPasswordsRequired(
            account.login.to_string(),
        ));
    }
    Ok((account.app_passwords_only != on).then(|| AccountChange {
        app_passwords_only: Some(on),
        kind: "app-passwords-option",
        ..AccountChange::default()
    }))
}

/// The change of an event that only bumps the generation.
pub fn bump_change(event: GenerationBump) -> AccountChange {
    AccountChange {
        bump: Some(event),
        kind: "generation",
        ..AccountChange::default()
    }
}

/// How long web sessions of the portal live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRules {
    /// A session ends this long after its last request.
    pub idle: std::time::Duration,
    /// A remembered session ends this long after it began, however active.
    pub lifetime: std::time::Duration,
}

impl Default for SessionRules {
    fn default() -> Self {
        Self {
            idle: std::time::Duration::from_secs(7200),
            lifetime: std::time::Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl SessionRules {
    /// Whether `session` is still alive at `now` (milliseconds).
    pub fn alive(&self, session: &WebSession, now: i64) -> bool {
        let idle = i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX);
        let lifetime = i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX);
        now - session.last_seen_at <= idle && now - session.created_at <= lifetime
    }
}

/// A new web session: its id and the token for the cookie (only its digest is stored).
#[derive(Debug)]
pub struct NewSession {
    pub id: i64,
    pub token: Secret,
}

/// The stored form and lookup key of a web session token.
pub fn session_digest(token: &Secret) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"portcullis web-session v1\0");
    hasher.update(token.expose());
    super::hashing::hex(&hasher.finalize())
}

/// Accounts and app passwords, by their rules.
#[derive(Clone)]
pub struct AccountService {
    store: Store,
    hasher: PasswordHasher,
    default_domain: Option<String>,
    /// This process's credential index, told of every change at once.
    index: Option<Arc<CredentialIndex>>,
    sessions: SessionRules,
    /// The deployment's secret key (TOTP seeds, form tokens, code digests); without it 2FA and
    /// restore access are unavailable.
    keys: Option<Arc<Keys>>,
    /// The name authenticator apps show for this deployment's accounts.
    issuer: String,
    /// A hash of nothing, verified when a login names no account, so a refusal takes as long
    /// either way.
    decoy_hash: Arc<tokio::sync::OnceCell<String>>,
    /// The operator's own domains (`[platform] domains`); empty: every domain is.
    platform: Vec<String>,
    /// Run with a deleted mailbox's login as its last argument.
    mailbox_hook: Vec<String>,
    /// How long a domain claim waits for its confirmation.
    claim_ttl: std::time::Duration,
    /// Where TXT records are looked up.
    dns: Option<Arc<dyn crate::dns::TxtLookup>>,
    /// Who is acting, for the audit log: a login or "operator", and the client address.
    actor: Arc<(String, Option<String>)>,
}

impl AccountService {
    pub fn new(store: Store, hasher: PasswordHasher, default_domain: Option<String>) -> Self {
        Self {
            store,
            hasher,
            default_domain,
            index: None,
            sessions: SessionRules::default(),
            keys: None,
            issuer: "portcullis".to_owned(),
            decoy_hash: Arc::new(tokio::sync::OnceCell::new()),
            platform: Vec::new(),
            mailbox_hook: Vec::new(),
            claim_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            dns: None,
            actor: Arc::new((SELF_SERVICE.to_owned(), None)),
        }
    }

    /// The same service, writing `who` (from `ip`) into the audit log for what it changes.
    pub fn acting(&self, who: &str, ip: Option<&str>) -> Self {
        let mut service = self.clone();
        service.actor = Arc::new((who.to_owned(), ip.map(str::to_owned)));
        service
    }

    fn actor_for_audit(&self) -> (String, Option<String>) {
        (*self.actor).clone()
    }

    /// Hosted domains: the operator's own domains, the deletion hook, the claim lifetime.
    pub fn with_domains(
        mut self,
        platform: Vec<String>,
        mailbox_hook: Vec<String>,
        claim_ttl: std::time::Duration,
    ) -> Self {
        self.platform = platform
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        self.mailbox_hook = mailbox_hook;
        self.claim_ttl = claim_ttl;
        self
    }

    /// TXT lookups for confirming domains go through `dns`.
    pub fn with_dns(mut self, dns: Arc<dyn crate::dns::TxtLookup>) -> Self {
        self.dns = Some(dns);
        self
    }

    /// The service as a configuration describes it: default domain, secret key, issuer, web
    /// session rules. The CLI and the server both start from here.
    pub fn configured(
        store: Store,
        hasher: PasswordHasher,
        config: &crate::config::Config,
    ) -> Result<Self, String> {
        let mut service = Self::new(store, hasher, config.default_domain.clone())
            .with_session_rules(SessionRules {
                idle: std::time::Duration::from_secs(config.portal.idle_timeout_secs),
                lifetime: std::time::Duration::from_secs(config.portal.remember_days * 24 * 3600),
            })
            .with_issuer(
                config
                    .portal
                    .issuer
                    .as_deref()
                    .or(config.hostname.as_deref())
                    .unwrap_or("portcullis"),
            );
        if let Some(path) = &config.store.secret_key_file {
            let keys = Keys::load(path).map_err(|e| format!("[store] secret_key_file: {e}"))?;
            service = service.with_keys(Arc::new(keys));
        }
        service = service.with_domains(
            config.platform_domains(),
            config.domains.on_mailbox_delete.clone().unwrap_or_default(),
            std::time::Duration::from_secs(config.domains.claim_days * 24 * 3600),
        );
        let dns = crate::dns::Resolver::new(&config.dns.resolvers)?;
        Ok(service.with_dns(Arc::new(dns)))
    }

    /// Seals TOTP seeds and signs form tokens with `keys`.
    pub fn with_keys(mut self, keys: Arc<Keys>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Authenticator apps list this deployment's accounts under `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.issuer = issuer.replace(':', " ");
        self
    }

    /// The deployment's secret key, if configured (TLS ticket keys are sealed with it too).
    pub fn secret_keys(&self) -> Option<Arc<Keys>> {
        self.keys.clone()
    }

    fn keys(&self) -> Result<&Keys, AccountError> {
        self.keys.as_deref().ok_or(AccountError::NoKey)
    }

    /// Spends the time a real password check takes, for a login that names no account.
    async fn decoy_verify(&self, password: &Secret) {
        let hash = self
            .decoy_hash
            .get_or_try_init(|| async {
                self.hasher
                    .hash(&Secret::from("decoy password of no account"))
                    .await
            })
            .await;
        if let Ok(hash) = hash {
            let _ = self
                .hasher
                .verify_from(client_network(), password, hash)
                .await;
        }
    }

    /// Web sessions live by `rules`.
    pub fn with_session_rules(mut self, rules: SessionRules) -> Self {
        self.sessions = rules;
        self
    }

    /// Checks a main password for the portal's sign-in. Unlike the protocols, the portal takes
    /// the main password whatever the app-passwords option says, and never an app password.
    /// Every failure is the same `BadCredentials`.
    pub async fn verify_main_password(
        &self,
        typed_login: &str,
        password: &Secret,
    ) -> Result<AccountState, AccountError> {
        let Ok(login) = self.login(typed_login) else {
            return Err(AccountError::BadCredentials);
        };
        if password.is_empty() || password.expose().len() > MAX_PASSWORD_BYTES {
            return Err(AccountError::BadCredentials);
        }
        let Some((account, hash)) = self.store.account_by_login(&login).await? else {
            self.decoy_verify(password).await;
            return Err(AccountError::BadCredentials);
        };
        match self
            .hasher
            .verify_from(client_network(), password, &hash)
            .await
        {
            Ok(true) if account.blocked => Err(AccountError::BadCredentials),
            Ok(true) => Ok(account),
            Ok(false) | Err(super::hashing::HashError::Busy) => Err(AccountError::BadCredentials),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a web session for `account` after a sign-in.
    pub async fn open_web_session(
        &self,
        account: &AccountState,
        remember: bool,
        ip: &str,
        user_agent: &str,
    ) -> Result<NewSession, AccountError> {
        let token = Secret::new(super::hashing::hex(&rand::random::<[u8; 32]>()).into_bytes());
        let digest = session_digest(&token);
        let user_agent: String = user_agent.chars().take(200).collect();
        let id = self
            .store
            .create_web_session(&NewWebSession {
                account_id: account.id,
                digest: &digest,
                remember,
                ip,
                user_agent: &user_agent,
            })
            .await?;
        Ok(NewSession { id, token })
    }

    /// The live web session a cookie token names, marked active now; `None` when there is
    /// none or it has expired (an expired one is ended).
    pub async fn web_session(&self, token: &Secret) -> Result<Option<WebSession>, AccountError> {
        let Some(session) = self.store.web_session(&session_digest(token)).await? else {
            return Ok(None);
        };
        let now = super::model::now_ms();
        if !self.sessions.alive(&session, now) {
            self.store
                .end_web_session(session.account_id, session.id)
                .await?;
            return Ok(None);
        }
        // Activity is written at most every so often, not on every request: a page view is a
        // read, and the idle rule does not need millisecond precision.
        let every = i64::try_from((self.sessions.idle / 4).as_millis())
            .unwrap_or(i64::MAX)
            .min(30_000);
        if now - session.last_seen_at >= every {
            self.store.touch_web_session(session.id, now, false).await?;
        }
        Ok(Some(session))
    }

    /// The main password was given again in this session (before a sensitive action).
    pub async fn reconfirm_web_session(&self, session: &WebSession) -> Result<(), AccountError> {
        self.store
            .touch_web_session(session.id, super::model::now_ms(), true)
            .await?;
        Ok(())
    }

    /// Ends one web session of the account.
    pub async fn end_web_session(
        &self,
        account: &AccountState,
        id: i64,
    ) -> Result<bool, AccountError> {
        Ok(self.store.end_web_session(account.id, id).await?)
    }

    /// The account's web sessions, most recently active first (expired ones left out).
    pub async fn web_sessions(
        &self,
        account: &AccountState,
    ) -> Result<Vec<WebSession>, AccountError> {
        let now = super::model::now_ms();
        Ok(self
            .store
            .web_sessions(account.id)
            .await?
            .into_iter()
            .filter(|s| self.sessions.alive(s, now))
            .collect())
    }

    /// "Log out on all devices" and "access restored": the generation moves on (every app
    /// password and the sessions relayed with them die) and every web session ends.
    pub async fn end_everything(
        &self,
        login: &Login,
        event: GenerationBump,
    ) -> Result<Generation, AccountError> {
        let generation = self.bump_generation(login, event).await?;
        let account = self.account(login).await?;
        self.store.end_web_sessions(account.id).await?;
        Ok(generation)
    }

    /// Keeps `index` current with every change this service makes.
    pub fn with_index(mut self, index: Arc<CredentialIndex>) -> Self {
        self.index = Some(index);
        self
    }

    /// The canonical login for what a person typed.
    pub fn login(&self, typed: &str) -> Result<Login, AccountError> {
        Ok(Login::parse(typed, self.default_domain.as_deref())?)
    }

    /// The account's current state.
    pub async fn account(&self, login: &Login) -> Result<AccountState, AccountError> {
        self.store
            .account_by_login(login)
            .await?
            .map(|(state, _)| state)
            .ok_or_else(|| AccountError::UnknownAccount(login.to_string()))
    }

    /// Creates an account with `password` as its main password.
    pub async fn create_account(
        &self,
        login: &Login,
        password: &Secret,
    ) -> Result<(), AccountError> {
        // "Exists" before the password rules: it is the answer that helps.
        if self.store.account_by_login(login).await?.is_some() {
            return Err(AccountError::Exists(login.to_string()));
        }
        if !self.is_platform(login) {
            return Err(AccountError::Domain(format!(
                "{} is not one of this service's own domains ({}): a hosted domain's mailboxes are made by its managers (`mailbox create`)",
                login.domain(),
                self.platform.join(", ")
            )));
        }
        check_password(password)?;
        let hash = self.hasher.hash(password).await?;
        self.store.create_account(login, &hash).await?;
        Ok(())
    }

    /// Sets a new main password (see [`password_change`]).
    pub async fn change_password(
        &self,
        login: &Login,
        password: &Secret,
    ) -> Result<Outcome, AccountError> {
        check_password(password)?;
        self.account(login).await?;
        let hash = self.hasher.hash(password).await?;
        self.decide(login, |account| {
            Ok(Some(password_change(account, hash.clone())))
        })
        .await
    }

    /// Sets the "app passwords" option (see [`option_change`]).
    pub async fn set_app_passwords_only(
        &self,
        login: &Login,
        on: bool,
    ) -> Result<Outcome, AccountError> {
        self.decide(login, |account| option_change(account, on))
            .await
    }

    /// Access restored, or "log out on all devices": the generation moves on.
    pub async fn bump_generation(
        &self,
        login: &Login,
        event: GenerationBump,
    ) -> Result<Generation, AccountError> {
        match self.decide(login, |_| Ok(Some(bump_change(event)))).await? {
            Outcome::Changed(Some(generation)) => Ok(generation),
            _ => Ok(self.account(login).await?.generation),
        }
    }

    /// Makes an app password for `service` named `name`; the secret is returned once.
    pub async fn create_app_password(
        &self,
        login: &Login,
        service: Service,
        name: &str,
    ) -> Result<NewAppPassword, AccountError> {
        self.create_limited_app_password(login, service, name, &PasswordLimits::default())
            .await
    }

    /// A new app password that works only until `limits.expires_at` and from
    /// `limits.networks` (made with [`PasswordLimits::parse`]).
    pub async fn create_limited_app_password(
        &self,
        login: &Login,
        service: Service,
        name: &str,
        limits: &PasswordLimits,
    ) -> Result<NewAppPassword, AccountError> {
        let name = check_name(name)?;
        if limits.expired(now_ms()) {
            return Err(AccountError::BadInput(
                "the expiry is not in the future".into(),
            ));
        }
        let secret = generate_app_password();
        let digest = app_password_digest(&secret);
        for _ in 0..CONFLICT_RETRIES {
            let account = self.account(login).await?;
            if !account.app_passwords_only {
                return Err(AccountError::AppPasswordsOff(login.to_string()));
            }
            match self
                .store
                .create_app_password(&account, service, name, &digest, limits)
                .await
            {
                Ok(id) => {
                    self.refresh(&account).await;
                    return Ok(NewAppPassword { id, secret });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(login.to_string()).into())
    }

    /// The account and every app password it has had, newest first.
    pub async fn list_app_passwords(
        &self,
        login: &Login,
    ) -> Result<(AccountState, Vec<AppPasswordInfo>), AccountError> {
        let account = self.account(login).await?;
        let passwords = self.store.list_app_passwords(&account).await?;
        Ok((account, passwords))
    }

    /// Revokes one app password; the others stay alive.
    pub async fn revoke_app_password(
        &self,
        login: &Login,
        id: AppPasswordId,
    ) -> Result<Outcome, AccountError> {
        let account = self.account(login).await?;
        match self.store.revoke_app_password(account.id, id).await? {
            Revocation::Revoked => {
                self.refresh(&account).await;
                Ok(Outcome::Changed(None))
            }
            Revocation::AlreadyRevoked => Ok(Outcome::Unchanged),
            Revocation::Unknown => Err(AccountError::UnknownAppPassword {
                login: login.to_string(),
                id: id.0,
            }),
        }
    }

    /// Reads the account, lets `rule` decide the change, and applies it; decides again if the
    /// account changed in between.
    async fn decide(
        &self,
        login: &Login,
        rule: impl Fn(&AccountState) -> Result<Option<AccountChange>, AccountError>,
    ) -> Result<Outcome, AccountError> {
        for _ in 0..CONFLICT_RETRIES {
            let account = self.account(login).await?;
            let Some(change) = rule(&account)? else {
                return Ok(Outcome::Unchanged);
            };
            match self.store.apply_change(&account, &change).await {
                Ok(generation) => {
                    self.refresh(&account).await;
                    if let Some(event) = change.bump {
                        self.audit_write(
                            Some(&account),
                            None,
                            "generation bumped",
                            &format!("{event:?} (now {})", generation.0),
                        )
                        .await;
                    }
                    return Ok(Outcome::Changed(change.bump.map(|_| generation)));
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict(login.to_string()).into())
    }

    /// An account deleted: this process's index refuses it from now on and cuts its sessions.
    async fn forget(&self, account: &AccountState) {
        if let Some(index) = &self.index {
            index.forget_account(account.id);
        }
    }

    /// Tells this process's index at once; other processes learn it from the change feed.
    async fn refresh(&self, account: &AccountState) {
        if let Some(index) = &self.index
            && let Err(e) = index.refresh_account(account.id).await
        {
            // The feed will bring it within its interval.
            tracing::warn!(error = %e, "could not refresh the index after a change");
        }
    }
}

mod domains;
mod restore;
mod two_factor;

pub use domains::{Actor, CHALLENGE_LABEL, Challenge, DomainView, is_host_name, normalize_domain};

pub use restore::{Channel, CodeToSend, Proof, QUESTIONS};
pub use two_factor::{Enrolment, RECOVERY_CODES, TwoFactorOn, code_at};

#[cfg(test)]
mod tests;
