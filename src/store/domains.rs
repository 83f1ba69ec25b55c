//! Hosted domains in the store: claims and confirmed domains, mailboxes, additional
//! administrators, domain API tokens, and the audit log. Like the rest of the store it holds no
//! rule: the account service decides ([`crate::credentials::accounts`]), the store applies.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::dialect::is_unique_violation;
use super::{SqlStore, StoreError, account_from_row, append_change, insert_account};
use crate::credentials::model::{AccountId, AccountState, Login, now_ms};

/// A domain connected (claimed) by a platform account, confirmed or not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainRecord {
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub owner: AccountId,
    pub owner_login: String,
    /// What the owner publishes in TXT at the challenge label.
    pub token: String,
    pub confirmed_at: Option<i64>,
    pub created_at: i64,
}

impl DomainRecord {
    pub fn confirmed(&self) -> bool {
        self.confirmed_at.is_some()
    }
}

/// A mailbox of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub account: AccountState,
    pub first_name: String,
    pub last_name: String,
    pub created_at: i64,
}

/// A domain API token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DomainToken {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_used_ip: Option<String>,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub ip: Option<String>,
    #[serde(skip)]
    pub account_id: Option<AccountId>,
    pub domain: Option<String>,
    pub action: String,
    pub detail: String,
}

/// An entry to append.
#[derive(Debug, Clone, Default)]
pub struct NewAudit<'a> {
    pub actor: &'a str,
    pub ip: Option<&'a str>,
    /// Whose account log it belongs to.
    pub account_id: Option<AccountId>,
    /// Whose domain log it belongs to.
    pub domain: Option<&'a str>,
    pub action: &'a str,
    pub detail: &'a str,
}

/// Hosted domains, as the account service sees them.
#[async_trait::async_trait]
pub trait DomainStore: Send + Sync {
    /// The claim `owner` holds on `name`, confirmed or not.
    async fn domain_claim(
        &self,
        owner: AccountId,
        name: &str,
    ) -> Result<Option<DomainRecord>, StoreError>;

    /// The confirmed domain `name`, whoever owns it.
    async fn confirmed_domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError>;

    /// The domain with this id.
    async fn domain(&self, id: i64) -> Result<Option<DomainRecord>, StoreError>;

    /// Domains `account` owns (claims included) or administers, by name.
    async fn domains_of(&self, account: AccountId) -> Result<Vec<DomainRecord>, StoreError>;

    /// A new claim of `owner` on `name`.
    async fn create_claim(
        &self,
        owner: AccountId,
        name: &str,
        token: &str,
    ) -> Result<DomainRecord, StoreError>;

    /// Marks the claim confirmed; `Conflict` when the domain is confirmed for someone already.
    async fn confirm_claim(&self, id: i64) -> Result<(), StoreError>;

    /// Removes a domain (claim or confirmed) that has no mailboxes; returns how many mailboxes
    /// it has instead when it has some.
    async fn delete_domain(&self, id: i64) -> Result<Result<(), i64>, StoreError>;

    /// Claims not confirmed by `before` (Unix ms) go.
    async fn expire_claims(&self, before: i64) -> Result<u64, StoreError>;

    /// Gives the domain to `owner` (mailboxes stay); other claims on the name go.
    async fn transfer_domain(&self, id: i64, owner: AccountId) -> Result<(), StoreError>;

    /// The domain's additional administrators.
    async fn domain_admins(&self, id: i64) -> Result<Vec<(AccountId, Login)>, StoreError>;

    async fn add_domain_admin(&self, id: i64, account: AccountId) -> Result<bool, StoreError>;

    async fn remove_domain_admin(&self, id: i64, account: AccountId) -> Result<bool, StoreError>;

    /// The domain's mailboxes, by login.
    async fn mailboxes(&self, id: i64) -> Result<Vec<Mailbox>, StoreError>;

    /// A new mailbox of the domain (like `create_account`, and under the domain).
    async fn create_mailbox(
        &self,
        domain: i64,
        login: &Login,
        password_hash: &str,
        first_name: &str,
        last_name: &str,
    ) -> Result<AccountId, StoreError>;

    /// Deletes an account and everything of it (app passwords, web sessions, profile, codes);
    /// the change feed tells running gateways, which cut its sessions.
    async fn delete_account(&self, account: AccountId) -> Result<(), StoreError>;

    async fn create_domain_token(
        &self,
        domain: i64,
        name: &str,
        digest: &str,
    ) -> Result<i64, StoreError>;

    async fn domain_tokens(&self, domain: i64) -> Result<Vec<DomainToken>, StoreError>;

    async fn revoke_domain_token(&self, domain: i64, id: i64) -> Result<bool, StoreError>;

    /// The live token with this digest: its id and domain; its use is recorded.
    async fn use_domain_token(
        &self,
        digest: &str,
        ip: &str,
    ) -> Result<Option<(i64, DomainRecord)>, StoreError>;

    async fn append_audit(&self, entry: &NewAudit<'_>) -> Result<(), StoreError>;

    /// Entries of an account's log, or a domain's, or (both `None`) everyone's; newest first.
    async fn audit(
        &self,
        account: Option<AccountId>,
        domain: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

const CLAIM: &str = "SELECT d.id, d.name, d.owner_id, a.login AS owner_login, d.token, d.confirmed_at, d.created_at FROM domains d JOIN accounts a ON a.id = d.owner_id WHERE d.owner_id = $1 AND d.name = $2";
const CONFIRMED: &str = "SELECT d.id, d.name, d.owner_id, a.login AS owner_login, d.token, d.confirmed_at, d.created_at FROM domains d JOIN accounts a ON a.id = d.owner_id WHERE d.name = $1 AND d.confirmed_at IS NOT NULL";
const BY_ID: &str = "SELECT d.id, d.name, d.owner_id, a.login AS owner_login, d.token, d.confirmed_at, d.created_at FROM domains d JOIN accounts a ON a.id = d.owner_id WHERE d.id = $1";
const OF_ACCOUNT: &str = "SELECT d.id, d.name, d.owner_id, a.login AS owner_login, d.token, d.confirmed_at, d.created_at FROM domains d JOIN accounts a ON a.id = d.owner_id WHERE d.owner_id = $1 OR d.id IN (SELECT domain_id FROM domain_admins WHERE account_id = $1) ORDER BY d.name";
const MAILBOXES: &str = "SELECT a.id, a.login, a.password_hash, a.password_version, a.two_factor, a.app_passwords_only, a.generation, a.revision, a.blocked, a.domain_id, a.created_at, COALESCE(p.first_name, '') AS first_name, COALESCE(p.last_name, '') AS last_name FROM accounts a LEFT JOIN profiles p ON p.account_id = a.id WHERE a.domain_id = $1 ORDER BY a.login";
const AUDIT_ACCOUNT: &str = "SELECT id, at, actor, ip, account_id, domain, action, detail FROM audit_log WHERE account_id = $1 ORDER BY id DESC LIMIT $2";
const AUDIT_DOMAIN: &str = "SELECT id, at, actor, ip, account_id, domain, action, detail FROM audit_log WHERE domain = $1 ORDER BY id DESC LIMIT $2";
const AUDIT_ALL: &str = "SELECT id, at, actor, ip, account_id, domain, action, detail FROM audit_log ORDER BY id DESC LIMIT $1";

fn domain_from_row(row: &AnyRow) -> Result<DomainRecord, StoreError> {
    Ok(DomainRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner: AccountId(row.try_get("owner_id")?),
        owner_login: row.try_get("owner_login")?,
        token: row.try_get("token")?,
        confirmed_at: row.try_get("confirmed_at")?,
        created_at: row.try_get("created_at")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        ip: row.try_get("ip")?,
        account_id: row.try_get::<Option<i64>, _>("account_id")?.map(AccountId),
        domain: row.try_get("domain")?,
        action: row.try_get("action")?,
        detail: row.try_get("detail")?,
    })
}

#[async_trait::async_trait]
impl DomainStore for SqlStore {
    async fn domain_claim(
        &self,
        owner: AccountId,
        name: &str,
    ) -> Result<Option<DomainRecord>, StoreError> {
        let row = sqlx::query(CLAIM)
            .bind(owner.0)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    async fn confirmed_domain(&self, name: &str) -> Result<Option<DomainRecord>, StoreError> {
        let row = sqlx::query(CONFIRMED)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    async fn domain(&self, id: i64) -> Result<Option<DomainRecord>, StoreError> {
        let row = sqlx::query(BY_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(domain_from_row).transpose()
    }

    async fn domains_of(&self, account: AccountId) -> Result<Vec<DomainRecord>, StoreError> {
        let rows = sqlx::query(OF_ACCOUNT)
            .bind(account.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(domain_from_row).collect()
    }

    async fn create_claim(
        &self,
        owner: AccountId,
        name: &str,
        token: &str,
    ) -> Result<DomainRecord, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO domains (name, owner_id, token, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(name)
        .bind(owner.0)
        .bind(token)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(name.to_owned())
            } else {
                e.into()
            }
        })?;
        self.domain(id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("domain {id} vanished")))
    }

    async fn confirm_claim(&self, id: i64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE domains SET confirmed_at = $1 WHERE id = $2 AND confirmed_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Conflict(id.to_string())),
            Err(e) => return Err(e.into()),
        }
        // Every other claim on the name goes: the domain has its owner.
        sqlx::query(
            "DELETE FROM domains WHERE name = (SELECT name FROM domains WHERE id = $1) AND id <> $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_domain(&self, id: i64) -> Result<Result<(), i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mailboxes: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE domain_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if mailboxes > 0 {
            return Ok(Err(mailboxes));
        }
        sqlx::query("DELETE FROM domains WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    async fn expire_claims(&self, before: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM domains WHERE confirmed_at IS NULL AND created_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    async fn transfer_domain(&self, id: i64, owner: AccountId) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM domains WHERE name = (SELECT name FROM domains WHERE id = $1) AND id <> $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE domains SET owner_id = $1 WHERE id = $2")
            .bind(owner.0)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        // The new owner is no longer an additional administrator of it.
        sqlx::query("DELETE FROM domain_admins WHERE domain_id = $1 AND account_id = $2")
            .bind(id)
            .bind(owner.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn domain_admins(&self, id: i64) -> Result<Vec<(AccountId, Login)>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.id, a.login FROM domain_admins d JOIN accounts a ON a.id = d.account_id WHERE d.domain_id = $1 ORDER BY a.login",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    AccountId(r.try_get("id")?),
                    Login::from_stored(r.try_get("login")?),
                ))
            })
            .collect()
    }

    async fn add_domain_admin(&self, id: i64, account: AccountId) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO domain_admins (domain_id, account_id, added_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(account.0)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn remove_domain_admin(&self, id: i64, account: AccountId) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM domain_admins WHERE domain_id = $1 AND account_id = $2")
                .bind(id)
                .bind(account.0)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn mailboxes(&self, id: i64) -> Result<Vec<Mailbox>, StoreError> {
        let rows = sqlx::query(MAILBOXES)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Mailbox {
                    account: account_from_row(row)?,
                    first_name: row.try_get("first_name")?,
                    last_name: row.try_get("last_name")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn create_mailbox(
        &self,
        domain: i64,
        login: &Login,
        password_hash: &str,
        first_name: &str,
        last_name: &str,
    ) -> Result<AccountId, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = insert_account(&mut tx, login, password_hash, Some(domain)).await?;
        sqlx::query(
            "INSERT INTO profiles (account_id, first_name, last_name, updated_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.0)
        .bind(first_name)
        .bind(last_name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn delete_account(&self, account: AccountId) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // The change row first: it outlives the account and tells the feed.
        append_change(&mut tx, account, "deleted").await?;
        for sql in [
            "DELETE FROM app_passwords WHERE account_id = $1",
            "DELETE FROM domain_admins WHERE account_id = $1",
            "DELETE FROM accounts WHERE id = $1",
        ] {
            sqlx::query(sql).bind(account.0).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_domain_token(
        &self,
        domain: i64,
        name: &str,
        digest: &str,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO domain_tokens (domain_id, name, digest, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(domain)
        .bind(name)
        .bind(digest)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?)
    }

    async fn domain_tokens(&self, domain: i64) -> Result<Vec<DomainToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, created_at, revoked_at, last_used_at, last_used_ip FROM domain_tokens WHERE domain_id = $1 ORDER BY id DESC",
        )
        .bind(domain)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DomainToken {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                    last_used_at: r.try_get("last_used_at")?,
                    last_used_ip: r.try_get("last_used_ip")?,
                })
            })
            .collect()
    }

    async fn revoke_domain_token(&self, domain: i64, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE domain_tokens SET revoked_at = $1 WHERE id = $2 AND domain_id = $3 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .bind(domain)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn use_domain_token(
        &self,
        digest: &str,
        ip: &str,
    ) -> Result<Option<(i64, DomainRecord)>, StoreError> {
        let row = sqlx::query(
            "SELECT id, domain_id FROM domain_tokens WHERE digest = $1 AND revoked_at IS NULL",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (id, domain): (i64, i64) = (row.try_get("id")?, row.try_get("domain_id")?);
        sqlx::query("UPDATE domain_tokens SET last_used_at = $1, last_used_ip = $2 WHERE id = $3")
            .bind(now_ms())
            .bind(ip)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(self.domain(domain).await?.map(|d| (id, d)))
    }

    async fn append_audit(&self, entry: &NewAudit<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, ip, account_id, domain, action, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now_ms())
        .bind(entry.actor)
        .bind(entry.ip)
        .bind(entry.account_id.map(|a| a.0))
        .bind(entry.domain)
        .bind(entry.action)
        .bind(entry.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit(
        &self,
        account: Option<AccountId>,
        domain: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = match (account, domain) {
            (Some(account), _) => {
                sqlx::query(AUDIT_ACCOUNT)
                    .bind(account.0)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            (None, Some(domain)) => {
                sqlx::query(AUDIT_DOMAIN)
                    .bind(domain)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            (None, None) => {
                sqlx::query(AUDIT_ALL)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(audit_from_row).collect()
    }
}
