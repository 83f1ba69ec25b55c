//! Hosted domains: a customer's domain, its mailboxes, its administrators and API tokens.
//!
//! - **Platform accounts** live in the operator's own domains (`[platform] domains`); only they
//!   connect and manage domains. An account of a connected domain is a **mailbox**: it logs in
//!   everywhere for its own access, never to manage its domain.
//! - **Connect** makes a claim of one platform account on a name, with a random token; the
//!   owner publishes it in TXT at `_portcullis-challenge.<domain>`. **Confirm** looks it up (real
//!   DNS) and makes the claim the domain's one confirmed owner; other claims on the name go. A
//!   confirmed domain cannot be claimed by another account. Claims expire.
//! - The owner and **additional administrators** (other platform accounts) manage mailboxes; only
//!   the owner disconnects, and adds or removes administrators and **API tokens**. A token
//!   manages its domain's mailboxes and nothing else.
//! - A domain with mailboxes cannot be disconnected: the owner deletes them first; then another
//!   account may connect and confirm it. Moving a domain with its mailboxes is the operator's
//!   (`domain transfer`).
//! - Blocking a mailbox bumps its generation and ends its web sessions (every app password and
//!   relayed session dies); deleting it removes the account and runs the operator's hook for the
//!   backend's data.
//! - Every change is written to the audit log with who did it and from where.

use std::time::Duration;

use super::{AccountError, AccountService, SELF_SERVICE, check_password};
use crate::credentials::hashing::{app_password_digest, generate_app_password};
use crate::credentials::model::{AccountState, GenerationBump, Login, now_ms};
use crate::credentials::secret::Secret;
use crate::store::{
    AccountChange, AuditEntry, DomainRecord, DomainToken, Mailbox, NewAudit, StoreError,
};

/// The label under the domain where the owner publishes the token.
pub const CHALLENGE_LABEL: &str = "_portcullis-challenge";

/// The prefix of the TXT value.
const CHALLENGE_PREFIX: &str = "portcullis-domain-verification=";

/// How long the mailbox-deletion hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Who asks for a domain change.
#[derive(Debug, Clone)]
pub enum Actor {
    /// A signed-in platform account.
    Account(AccountState),
    /// A domain API token (its id and domain).
    Token { id: i64, domain: i64 },
    /// The operator at the CLI.
    Operator,
}

/// What the owner publishes to confirm a domain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Challenge {
    /// `_portcullis-challenge.shop.example`
    pub name: String,
    /// The TXT record's value.
    pub value: String,
}

/// A domain as its managers see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DomainView {
    #[serde(flatten)]
    pub record: DomainRecord,
    pub challenge: Challenge,
    /// Whether the one asking owns it (else: an additional administrator).
    pub owned: bool,
}

/// Whether `name` is a DNS host name: LDH labels of 1 to 63 characters, neither starting nor
/// ending with a hyphen, 253 characters at most. A single label (`localhost`) is one.
pub fn is_host_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The canonical form of a domain name: lower case, no trailing dot, host-name labels, at
/// least two of them.
pub fn normalize_domain(typed: &str) -> Result<String, AccountError> {
    let name = typed.trim().trim_end_matches('.').to_ascii_lowercase();
    if !name.contains('.') || !is_host_name(&name) {
        return Err(AccountError::BadInput(format!(
            "{:?} is not a domain name (ASCII, like shop.example; an IDN in its xn-- form)",
            crate::protocol::printable(typed.trim())
        )));
    }
    Ok(name)
}

/// The challenge of a claim.
pub fn challenge(record: &DomainRecord) -> Challenge {
    Challenge {
        name: format!("{CHALLENGE_LABEL}.{}", record.name),
        value: format!("{CHALLENGE_PREFIX}{}", record.token),
    }
}

fn domain_error(message: impl Into<String>) -> AccountError {
    AccountError::Domain(message.into())
}

fn not_allowed(message: impl Into<String>) -> AccountError {
    AccountError::NotAllowed(message.into())
}

impl AccountService {
    /// Whether `login` is in one of the operator's own domains.
    pub fn is_platform(&self, login: &Login) -> bool {
        self.platform.is_empty() || self.platform.iter().any(|d| d == login.domain())
    }

    /// Refuses an account of a hosted domain: domains are managed from platform accounts.
    fn require_platform(&self, account: &AccountState) -> Result<(), AccountError> {
        if account.domain_id.is_some() || !self.is_platform(&account.login) {
            return Err(not_allowed(format!(
                "{} is a mailbox of a hosted domain: a domain is managed from a platform account (one in {}), not from an account on that domain",
                account.login,
                self.platform.join(", ")
            )));
        }
        Ok(())
    }

    pub(super) async fn audit_write(
        &self,
        account: Option<&AccountState>,
        domain: Option<&str>,
        action: &str,
        detail: &str,
    ) {
        let (mut who, mut ip) = self.actor_for_audit();
        // Nobody named: the account holder acting on their own account (the portal's pages),
        // from the address of the request being served.
        if who == SELF_SERVICE
            && let Some(account) = account
        {
            who = account.login.to_string();
        }
        if ip.is_none() {
            ip = super::CLIENT_IP.try_with(Clone::clone).ok();
        }
        let entry = NewAudit {
            actor: &who,
            ip: ip.as_deref(),
            account_id: account.map(|a| a.id),
            domain,
            action,
            detail,
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            tracing::error!(error = %e, action, "could not write the audit log");
        }
    }

    /// Connects `name` to `owner` (pending until confirmed); the same claim again is returned
    /// as it is.
    pub async fn connect_domain(
        &self,
        owner: &AccountState,
        name: &str,
    ) -> Result<DomainView, AccountError> {
        self.require_platform(owner)?;
        let name = normalize_domain(name)?;
        if self.platform.contains(&name) {
            return Err(domain_error(format!(
                "{name} is one of this service's own domains"
            )));
        }
        self.expire_claims().await;
        if let Some(confirmed) = self.store.confirmed_domain(&name).await? {
            // Which account holds it is nobody else's business.
            if confirmed.owner != owner.id {
                return Err(domain_error(format!(
                    "{name} is already connected to another account"
                )));
            }
            return Ok(self.view(confirmed, owner));
        }
        if let Some(claim) = self.store.domain_claim(owner.id, &name).await? {
            return Ok(self.view(claim, owner));
        }
        let token = crate::credentials::hashing::hex(&rand::random::<[u8; 16]>());
        let claim = match self.store.create_claim(owner.id, &name, &token).await {
            Ok(claim) => claim,
            Err(StoreError::Conflict(_)) => {
                return Err(domain_error(format!("{name} is being connected already")));
            }
            Err(e) => return Err(e.into()),
        };
        self.audit_write(
            Some(owner),
            Some(&name),
            "domain connected",
            "pending confirmation",
        )
        .await;
        Ok(self.view(claim, owner))
    }

    fn view(&self, record: DomainRecord, asking: &AccountState) -> DomainView {
        DomainView {
            challenge: challenge(&record),
            owned: record.owner == asking.id,
            record,
        }
    }

    /// Whether the deployment serves mail for `domain`: one of the operator's own domains
    /// (every domain when none is configured), or a hosted domain whose DNS confirmation is
    /// done. Clients asking how to set up an address of another domain get nothing.
    pub async fn serves_domain(&self, domain: &str) -> Result<bool, AccountError> {
        let Ok(domain) = normalize_domain(domain) else {
            return Ok(false);
        };
        if self.platform.is_empty() || self.platform.contains(&domain) {
            return Ok(true);
        }
        Ok(self.store.confirmed_domain(&domain).await?.is_some())
    }

    /// The confirmed domain `name`, as stored.
    pub async fn domain_record(&self, name: &str) -> Result<Option<DomainRecord>, AccountError> {
        Ok(self
            .store
            .confirmed_domain(&normalize_domain(name)?)
            .await?)
    }

    /// The domains `account` owns or administers.
    pub async fn domains(&self, account: &AccountState) -> Result<Vec<DomainView>, AccountError> {
        self.require_platform(account)?;
        self.expire_claims().await;
        Ok(self
            .store
            .domains_of(account.id)
            .await?
            .into_iter()
            .map(|d| self.view(d, account))
            .collect())
    }

    async fn expire_claims(&self) {
        let before = now_ms() - i64::try_from(self.claim_ttl.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = self.store.expire_claims(before).await {
            tracing::warn!(error = %e, "could not expire domain claims");
        }
    }

    /// Confirms `owner`'s claim on `name` by looking up its TXT record.
    pub async fn confirm_domain(
        &self,
        owner: &AccountState,
        name: &str,
    ) -> Result<DomainView, AccountError> {
        self.require_platform(owner)?;
        let name = normalize_domain(name)?;
        self.expire_claims().await;
        let Some(claim) = self.store.domain_claim(owner.id, &name).await? else {
            return Err(domain_error(format!(
                "{name} is not connected to this account: connect it first"
            )));
        };
        if claim.confirmed() {
            return Ok(self.view(claim, owner));
        }
        let wanted = challenge(&claim);
        let dns = self
            .dns
            .as_ref()
            .ok_or_else(|| domain_error("no DNS resolver is configured"))?;
        let records = dns
            .txt(&wanted.name)
            .await
            .map_err(|e| domain_error(format!("the DNS lookup of {} failed: {e}", wanted.name)))?;
        if !records.iter().any(|r| r.trim() == wanted.value) {
            return Err(domain_error(format!(
                "no TXT record {:?} at {} yet (DNS changes can take a while to appear)",
                wanted.value, wanted.name
            )));
        }
        match self.store.confirm_claim(claim.id).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(domain_error(format!(
                    "{name} is already connected to another account"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.audit_write(Some(owner), Some(&name), "domain confirmed", &wanted.name)
            .await;
        let confirmed = self
            .store
            .domain(claim.id)
            .await?
            .ok_or_else(|| domain_error("the domain vanished"))?;
        Ok(self.view(confirmed, owner))
    }

    /// The domain `actor` may manage mailboxes of, and whether `actor` owns it (the operator
    /// counts as the owner).
    async fn managed(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<(DomainRecord, bool), AccountError> {
        let name = normalize_domain(name)?;
        let not_yours = || not_allowed(format!("{name} is not a domain you manage"));
        let domain = self.store.confirmed_domain(&name).await?;
        match actor {
            Actor::Operator => domain.map(|d| (d, true)).ok_or_else(not_yours),
            Actor::Token { domain: id, .. } => match domain {
                Some(d) if d.id == *id => Ok((d, false)),
                _ => Err(not_yours()),
            },
            Actor::Account(account) => {
                self.require_platform(account)?;
                let Some(domain) = domain else {
                    return Err(not_yours());
                };
                if domain.owner == account.id {
                    return Ok((domain, true));
                }
                let admins = self.store.domain_admins(domain.id).await?;
                if admins.iter().any(|(id, _)| *id == account.id) {
                    Ok((domain, false))
                } else {
                    Err(not_yours())
                }
            }
        }
    }

    async fn owned(&self, actor: &Actor, name: &str) -> Result<DomainRecord, AccountError> {
        let (domain, owner) = self.managed(actor, name).await?;
        if !owner {
            return Err(not_allowed(format!(
                "only the owner of {} may do that",
                domain.name
            )));
        }
        Ok(domain)
    }

    /// Disconnects a domain (a claim, or a confirmed domain without mailboxes).
    pub async fn disconnect_domain(&self, actor: &Actor, name: &str) -> Result<(), AccountError> {
        let name = normalize_domain(name)?;
        let domain = match actor {
            Actor::Account(owner) => {
                self.require_platform(owner)?;
                match self.store.domain_claim(owner.id, &name).await? {
                    Some(claim) => claim,
                    None => return Err(not_allowed(format!("{name} is not a domain you own"))),
                }
            }
            _ => self.owned(actor, &name).await?,
        };
        match self.store.delete_domain(domain.id).await? {
            Ok(()) => {
                self.audit_write(None, Some(&name), "domain disconnected", "")
                    .await;
                Ok(())
            }
            Err(count) => Err(domain_error(format!(
                "{name} still has {count} mailbox{}: delete {} first, then disconnect it",
                if count == 1 { "" } else { "es" },
                if count == 1 { "it" } else { "them" }
            ))),
        }
    }

    /// Support: moves a confirmed domain and its mailboxes to another platform account.
    pub async fn transfer_domain(&self, name: &str, to: &Login) -> Result<(), AccountError> {
        let domain = self.owned(&Actor::Operator, name).await?;
        let new_owner = self.account(to).await?;
        self.require_platform(&new_owner)?;
        self.store.transfer_domain(domain.id, new_owner.id).await?;
        self.audit_write(
            Some(&new_owner),
            Some(&domain.name),
            "domain transferred",
            &format!("from {} to {}", domain.owner_login, new_owner.login),
        )
        .await;
        Ok(())
    }

    /// The domain's additional administrators.
    pub async fn domain_admins(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<Vec<Login>, AccountError> {
        let (domain, _) = self.managed(actor, name).await?;
        Ok(self
            .store
            .domain_admins(domain.id)
            .await?
            .into_iter()
            .map(|(_, login)| login)
            .collect())
    }

    /// Adds (or with `add` false removes) an additional administrator: owner only.
    pub async fn set_domain_admin(
        &self,
        actor: &Actor,
        name: &str,
        admin: &str,
        add: bool,
    ) -> Result<(), AccountError> {
        let domain = self.owned(actor, name).await?;
        let login = self.login(admin)?;
        let Some((admin, _)) = self.store.account_by_login(&login).await? else {
            return Err(domain_error(format!("{login} is not an account here")));
        };
        self.require_platform(&admin)?;
        if admin.id == domain.owner {
            return Err(domain_error("the owner manages the domain already"));
        }
        if add {
            self.store.add_domain_admin(domain.id, admin.id).await?;
        } else {
            self.store.remove_domain_admin(domain.id, admin.id).await?;
        }
        let action = if add {
            "administrator added"
        } else {
            "administrator removed"
        };
        self.audit_write(None, Some(&domain.name), action, login.as_str())
            .await;
        Ok(())
    }

    /// The domain's mailboxes.
    pub async fn mailboxes(&self, actor: &Actor, name: &str) -> Result<Vec<Mailbox>, AccountError> {
        let (domain, _) = self.managed(actor, name).await?;
        Ok(self.store.mailboxes(domain.id).await?)
    }

    /// A mailbox of the domain by what was typed (`anna` or `anna@shop.example`).
    async fn mailbox(
        &self,
        domain: &DomainRecord,
        typed: &str,
    ) -> Result<AccountState, AccountError> {
        let login = self.mailbox_login(domain, typed)?;
        match self.store.account_by_login(&login).await? {
            Some((account, _)) if account.domain_id == Some(domain.id) => Ok(account),
            _ => Err(domain_error(format!(
                "{login} is not a mailbox of {}",
                domain.name
            ))),
        }
    }

    fn mailbox_login(&self, domain: &DomainRecord, typed: &str) -> Result<Login, AccountError> {
        let login = Login::parse(typed, Some(&domain.name))?;
        if login.domain() != domain.name {
            return Err(domain_error(format!("{login} is not in {}", domain.name)));
        }
        Ok(login)
    }

    /// Creates a mailbox with an initial password.
    pub async fn create_mailbox(
        &self,
        actor: &Actor,
        name: &str,
        typed: &str,
        password: &Secret,
        first_name: &str,
        last_name: &str,
    ) -> Result<AccountState, AccountError> {
        let (domain, _) = self.managed(actor, name).await?;
        let login = self.mailbox_login(&domain, typed)?;
        // Managers are the operator's customers: a new mailbox's name is one that is safe in
        // a path or a command line of the operator's (the deletion hook, a maildir).
        let local = login.local_part();
        if local.len() > 64
            || local.starts_with('.')
            || local.contains("..")
            || !local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
        {
            return Err(AccountError::BadInput(
                "A mailbox name has up to 64 letters, digits, dots, dashes, underscores and pluses (not starting with a dot)."
                    .into(),
            ));
        }
        check_password(password)?;
        let first = first_name.trim();
        let last = last_name.trim();
        if first.chars().count() > 100 || last.chars().count() > 100 {
            return Err(AccountError::BadInput(
                "Names are at most 100 characters.".into(),
            ));
        }
        let hash = self.hasher.hash(password).await?;
        self.store
            .create_mailbox(domain.id, &login, &hash, first, last)
            .await?;
        let account = self.account(&login).await?;
        self.audit_write(
            Some(&account),
            Some(&domain.name),
            "mailbox created",
            login.as_str(),
        )
        .await;
        Ok(account)
    }

    /// Blocks or unblocks a mailbox. Blocking kills its app passwords, relayed sessions and
    /// web sessions at once.
    pub async fn block_mailbox(
        &self,
        actor: &Actor,
        name: &str,
        typed: &str,
        blocked: bool,
    ) -> Result<(), AccountError> {
        let (domain, _) = self.managed(actor, name).await?;
        let account = self.mailbox(&domain, typed).await?;
        self.decide(&account.login, |current| {
            Ok((current.blocked != blocked).then(|| AccountChange {
                blocked: Some(blocked),
                bump: blocked.then_some(GenerationBump::Blocked),
                kind: "blocked",
                ..AccountChange::default()
            }))
        })
        .await?;
        if blocked {
            self.store.end_web_sessions(account.id).await?;
        }
        let action = if blocked {
            "mailbox blocked"
        } else {
            "mailbox unblocked"
        };
        self.audit_write(
            Some(&account),
            Some(&domain.name),
            action,
            account.login.as_str(),
        )
        .await;
        Ok(())
    }

    /// Sets a mailbox's main password (the password rules; with 2FA off it bumps).
    pub async fn reset_mailbox_password(
        &self,
        actor: &Actor,
        name: &str,
        typed: &str,
        password: &Secret,
    ) -> Result<(), AccountError> {
        let (domain, _) = self.managed(actor, name).await?;
        let account = self.mailbox(&domain, typed).await?;
        self.change_password(&account.login, password).await?;
        self.audit_write(
            Some(&account),
            Some(&domain.name),
            "mailbox password reset",
            account.login.as_str(),
        )
        .await;
        Ok(())
    }

    /// Deletes a mailbox for good: the account goes (its sessions are cut everywhere through
    /// the change feed), then the operator's hook removes the backend's data. Returns the
    /// hook's failure, if it failed (the account is gone either way).
    pub async fn delete_mailbox(
        &self,
        actor: &Actor,
        name: &str,
        typed: &str,
    ) -> Result<Option<String>, AccountError> {
        let (domain, _) = self.managed(actor, name).await?;
        let account = self.mailbox(&domain, typed).await?;
        self.store.delete_account(account.id).await?;
        self.forget(&account).await;
        self.audit_write(
            None,
            Some(&domain.name),
            "mailbox deleted",
            account.login.as_str(),
        )
        .await;
        let hook = self.run_delete_hook(&account.login).await;
        if let Some(failure) = &hook {
            tracing::error!(login = %account.login, error = %failure, "the mailbox deletion hook failed");
            self.audit_write(None, Some(&domain.name), "deletion hook failed", failure)
                .await;
        }
        Ok(hook)
    }

    async fn run_delete_hook(&self, login: &Login) -> Option<String> {
        let (program, args) = self.mailbox_hook.split_first()?;
        let run = tokio::process::Command::new(program)
            .args(args)
            .arg(login.as_str())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match tokio::time::timeout(HOOK_TIMEOUT, run).await {
            Ok(Ok(status)) if status.success() => None,
            Ok(Ok(status)) => Some(format!("{program} exited with {status}")),
            Ok(Err(e)) => Some(format!("cannot run {program}: {e}")),
            Err(_) => Some(format!("{program} did not finish in {HOOK_TIMEOUT:?}")),
        }
    }

    /// Makes a domain API token (owner only); the secret is returned once.
    pub async fn create_domain_token(
        &self,
        actor: &Actor,
        name: &str,
        token_name: &str,
    ) -> Result<(i64, Secret), AccountError> {
        let domain = self.owned(actor, name).await?;
        let token_name = super::check_name(token_name)?;
        // "pcd_" then 32 letters: told apart from app passwords at a glance.
        let secret = generate_app_password();
        let more = generate_app_password();
        let mut text = b"pcd_".to_vec();
        text.extend_from_slice(secret.expose());
        text.extend_from_slice(more.expose());
        let secret = Secret::new(text);
        let id = self
            .store
            .create_domain_token(domain.id, token_name, &token_digest(&secret))
            .await?;
        self.audit_write(None, Some(&domain.name), "API token created", token_name)
            .await;
        Ok((id, secret))
    }

    /// The domain's API tokens.
    pub async fn domain_tokens(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<Vec<DomainToken>, AccountError> {
        let domain = self.owned(actor, name).await?;
        Ok(self.store.domain_tokens(domain.id).await?)
    }

    /// Revokes a domain API token: refused from the next request on.
    pub async fn revoke_domain_token(
        &self,
        actor: &Actor,
        name: &str,
        id: i64,
    ) -> Result<(), AccountError> {
        let domain = self.owned(actor, name).await?;
        if !self.store.revoke_domain_token(domain.id, id).await? {
            return Err(domain_error(format!(
                "{} has no live token {id}",
                domain.name
            )));
        }
        self.audit_write(
            None,
            Some(&domain.name),
            "API token revoked",
            &id.to_string(),
        )
        .await;
        Ok(())
    }

    /// The actor a bearer token is, if it is a live domain token.
    pub async fn token_actor(
        &self,
        presented: &Secret,
        ip: &str,
    ) -> Result<Option<Actor>, AccountError> {
        if presented.expose().len() > 128 || !presented.expose().starts_with(b"pcd_") {
            return Ok(None);
        }
        Ok(self
            .store
            .use_domain_token(&token_digest(presented), ip)
            .await?
            .map(|(id, domain)| Actor::Token {
                id,
                domain: domain.id,
            }))
    }

    /// An account's audit log (its own entries), newest first.
    pub async fn account_audit(
        &self,
        account: &AccountState,
    ) -> Result<Vec<AuditEntry>, AccountError> {
        Ok(self.store.audit(Some(account.id), None, 200).await?)
    }

    /// A domain's audit log, for its owner.
    pub async fn domain_audit(
        &self,
        actor: &Actor,
        name: &str,
    ) -> Result<Vec<AuditEntry>, AccountError> {
        let domain = self.owned(actor, name).await?;
        Ok(self.store.audit(None, Some(&domain.name), 200).await?)
    }

    /// Every entry (the operator's `portcullis audit`).
    pub async fn audit_all(&self, limit: i64) -> Result<Vec<AuditEntry>, AccountError> {
        Ok(self.store.audit(None, None, limit).await?)
    }
}

/// The stored form of a domain API token.
fn token_digest(secret: &Secret) -> String {
    // The app-password digest with its own prefix in the input: one hash, two namespaces.
    let mut input = b"domain-token\0".to_vec();
    input.extend_from_slice(secret.expose());
    app_password_digest(&Secret::new(input))
}
