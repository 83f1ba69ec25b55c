//! The credential store: accounts, app passwords and the change feed.
//!
//! [`AccountStore`] is what the rest of the gateway sees: reads for the login path, the
//! primitive writes the account service ([`crate::credentials::accounts`]) decides, and the
//! change feed. It holds no account rule: the service reads an account, decides what changes,
//! and the store applies that change atomically, only if the account is still as it was read
//! (its revision), or says [`StoreError::Conflict`] and the service decides again.
//!
//! [`SqlStore`] is the one implementation, on SQLite (embedded, WAL: the zero-set-up default)
//! or PostgreSQL (several gateway nodes on one database); its queries are written once in the
//! SQL the two share, and [`dialect`] holds what differs. Every write runs in one transaction
//! that also appends a row to `changes`; the commit returns only once the database has made it
//! durable, so an acknowledged change is never lost, and the change row is how running gateways
//! in other processes and on other nodes learn of it (see [`feed`]).

pub mod copy;
pub mod dialect;
mod domains;
pub mod feed;
#[doc(hidden)]
pub mod testing;

pub use domains::{AuditEntry, DomainRecord, DomainStore, DomainToken, Mailbox, NewAudit};

use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

pub use dialect::Dialect;
use dialect::{begin_write, locking};

use crate::credentials::model::{
    AccountId, AccountState, AppPasswordId, AppPasswordInfo, Generation, GenerationBump, Login,
    PasswordLimits, Service, now_ms,
};

/// Changes older than this are deleted from the feed by the next writer. A gateway that was
/// down longer reloads everything it caches on start anyway.
const CHANGE_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The store URL is not one this build can open.
    #[error(
        "unsupported store url {0:?}: expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE"
    )]
    UnsupportedUrl(String),
    /// No account has this login.
    #[error("unknown account {0}")]
    UnknownAccount(String),
    /// `account create` for a login that exists.
    #[error("account {0} already exists")]
    AccountExists(String),
    /// A row holds a value this version does not understand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The account changed between the read a decision was based on and the write: decide
    /// again on the new state.
    #[error("account {0} changed meanwhile")]
    Conflict(String),
}

/// A change to one account, decided by the account service from the account's state at
/// `revision`; the store applies all of it in one transaction, or none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountChange {
    /// A new main-password hash (argon2 PHC string); moves the password version.
    pub password_hash: Option<String>,
    pub two_factor: Option<bool>,
    pub app_passwords_only: Option<bool>,
    /// Bump the credential generation, for this event.
    pub bump: Option<GenerationBump>,
    /// A new sealed TOTP seed (`Some(None)` removes it), with the time step its confirming code
    /// used, so that code is not accepted again.
    pub totp: Option<Option<(String, i64)>>,
    /// The account's recovery codes (digests) replaced by these; empty removes them all.
    pub recovery_codes: Option<Vec<String>>,
    /// Blocked (no login anywhere) or not.
    pub blocked: Option<bool>,
    /// What happened, recorded in the change feed.
    pub kind: &'static str,
}

/// A web session of the account portal, as stored (the token's digest, never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    pub id: i64,
    pub account_id: AccountId,
    pub login: Login,
    pub created_at: i64,
    /// When the main password (and second factor) were last given in this session.
    pub signed_in_at: i64,
    pub last_seen_at: i64,
    /// "Remember me": the cookie persists; otherwise it ends with the browser.
    pub remember: bool,
    pub ip: String,
    pub user_agent: String,
}

/// A web session to create.
#[derive(Debug, Clone)]
pub struct NewWebSession<'a> {
    pub account_id: AccountId,
    pub digest: &'a str,
    pub remember: bool,
    pub ip: &'a str,
    pub user_agent: &'a str,
}

/// The account's second factor as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondFactor {
    /// The sealed TOTP seed.
    pub sealed_seed: String,
    /// The newest time step a code was accepted for.
    pub last_step: i64,
    /// Recovery codes not used yet.
    pub recovery_codes_left: i64,
}

/// What an account's owner says about themselves and how they get back in.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Profile {
    pub first_name: String,
    pub last_name: String,
    /// Confirmed phone number (E.164).
    pub phone: Option<String>,
    /// Confirmed backup email.
    pub email: Option<String>,
    pub question: Option<String>,
    /// argon2 PHC string of the normalised answer.
    #[serde(skip)]
    pub answer_hash: Option<String>,
}

/// A one-time code to store: only its keyed digest.
#[derive(Debug, Clone)]
pub struct NewCode<'a> {
    pub account_id: AccountId,
    pub purpose: &'a str,
    /// Where it was sent (a phone number, an email address).
    pub target: &'a str,
    pub digest: &'a str,
    pub expires_at: i64,
    pub tries: i64,
}

/// How a one-time code check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right: the code is used up; where it had been sent.
    Accepted { target: String },
    /// Wrong (a try is used up), or no live code.
    Refused,
}

/// A banned client address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ban {
    pub address: String,
    pub until: i64,
    /// Distinct failed logins that earned it (0: an operator's).
    pub failures: i64,
    pub created_at: i64,
}

/// A TLS session-ticket key as the store holds it: sealed with the deployment's secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedTicketKey {
    pub id: i64,
    /// Unix ms from which nodes encrypt new tickets with it.
    pub not_before: i64,
    pub sealed: String,
}

/// How a revocation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    AlreadyRevoked,
    /// The account has no app password with that id.
    Unknown,
}

/// The store as the gateway, the account service and the change feed see it.
#[async_trait::async_trait]
pub trait AccountStore: DomainStore + Send + Sync {
    // ----- reads on the login path -----

    /// The account and its main-password hash, by canonical login.
    async fn account_by_login(
        &self,
        login: &Login,
    ) -> Result<Option<(AccountState, String)>, StoreError>;

    /// The app password whose digest this is, if any.
    async fn app_password_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<AppPasswordRecord>, StoreError>;

    /// The account's state with the ids of its live app passwords (not revoked, current
    /// generation), read together so the two agree.
    async fn account_snapshot(
        &self,
        id: AccountId,
    ) -> Result<Option<(AccountState, Vec<(AppPasswordId, PasswordLimits)>)>, StoreError>;

    /// Records last uses, one transaction for the batch.
    async fn record_uses(&self, uses: &[Use]) -> Result<(), StoreError>;

    // ----- writes the account service decides -----

    /// A new account (2FA off, the "app passwords" option on, generation 1);
    /// `AccountExists` if the login is taken.
    async fn create_account(
        &self,
        login: &Login,
        password_hash: &str,
    ) -> Result<AccountId, StoreError>;

    /// Applies `change` to `account` if it is still at `account.revision`; returns the
    /// account's generation afterwards.
    async fn apply_change(
        &self,
        account: &AccountState,
        change: &AccountChange,
    ) -> Result<Generation, StoreError>;

    /// Stores an app password (its digest only) under the account's generation, if the
    /// account is still at `account.revision`.
    async fn create_app_password(
        &self,
        account: &AccountState,
        service: Service,
        name: &str,
        digest: &str,
        limits: &PasswordLimits,
    ) -> Result<AppPasswordId, StoreError>;

    /// Every app password of the account, newest first, revoked and dead ones included.
    async fn list_app_passwords(
        &self,
        account: &AccountState,
    ) -> Result<Vec<AppPasswordInfo>, StoreError>;

    /// Revokes one app password of the account.
    async fn revoke_app_password(
        &self,
        account: AccountId,
        id: AppPasswordId,
    ) -> Result<Revocation, StoreError>;

    // ----- web sessions of the portal -----

    /// Stores a new web session; returns its id.
    async fn create_web_session(&self, session: &NewWebSession<'_>) -> Result<i64, StoreError>;

    /// The web session whose token has this digest.
    async fn web_session(&self, digest: &str) -> Result<Option<WebSession>, StoreError>;

    /// Records activity (and, with `signed_in`, a new proof of the password) at `at`.
    async fn touch_web_session(&self, id: i64, at: i64, signed_in: bool) -> Result<(), StoreError>;

    /// Ends one web session of the account; false if it had none with that id.
    async fn end_web_session(&self, account: AccountId, id: i64) -> Result<bool, StoreError>;

    /// Ends every web session of the account.
    async fn end_web_sessions(&self, account: AccountId) -> Result<u64, StoreError>;

    /// The account's web sessions, most recently active first.
    async fn web_sessions(&self, account: AccountId) -> Result<Vec<WebSession>, StoreError>;

    // ----- second factor -----

    /// The account's sealed TOTP seed and its replay state, if 2FA is set up.
    async fn second_factor(&self, account: AccountId) -> Result<Option<SecondFactor>, StoreError>;

    /// Accepts a code of time step `step` if no code of that step or a later one was accepted
    /// before (atomically: two requests with one code cannot both pass).
    async fn accept_totp_step(&self, account: AccountId, step: i64) -> Result<bool, StoreError>;

    /// Uses up the unused recovery code with this digest; false if there is none.
    async fn use_recovery_code(&self, account: AccountId, digest: &str)
    -> Result<bool, StoreError>;

    // ----- profile and one-time codes -----

    /// The account's profile (empty if never written).
    async fn profile(&self, account: AccountId) -> Result<Profile, StoreError>;

    /// Writes the whole profile.
    async fn set_profile(&self, account: AccountId, profile: &Profile) -> Result<(), StoreError>;

    /// Stores a one-time code; older live codes of the same purpose for the account end.
    async fn create_code(&self, code: &NewCode<'_>) -> Result<(), StoreError>;

    /// Checks `digest` against the account's live code for `purpose` at `now`: a match uses it
    /// up, a miss uses up a try.
    async fn check_code(
        &self,
        account: AccountId,
        purpose: &str,
        digest: &str,
        now: i64,
    ) -> Result<CodeCheck, StoreError>;

    // ----- one-time tickets -----

    /// Stores a ticket (its digest) for `login` on `service` until `expires_at`; expired
    /// tickets go.
    async fn create_ticket(
        &self,
        digest: &str,
        login: &Login,
        service: Service,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Takes the ticket with this digest out (whatever happens next, it is spent): its account
    /// and service, if it had not expired at `now`.
    async fn take_ticket(
        &self,
        digest: &str,
        now: i64,
    ) -> Result<Option<(Login, Service)>, StoreError>;

    // ----- change feed -----

    /// The id of the newest change; a gateway starts reading the feed after it.
    async fn latest_change(&self) -> Result<i64, StoreError>;

    /// Changes after `after`, oldest first, at most `limit`.
    async fn changes_since(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, AccountId, i64)>, StoreError>;

    // ----- bans of the login gate -----

    /// Bans `address` until `until` (Unix ms), replacing an earlier ban of it; expired bans go.
    async fn add_ban(&self, address: &str, until: i64, failures: i64) -> Result<(), StoreError>;

    /// The bans in force at `now`, longest-lasting first.
    async fn bans(&self, now: i64) -> Result<Vec<Ban>, StoreError>;

    /// Lifts the ban of `address`; false if there was none.
    async fn lift_ban(&self, address: &str) -> Result<bool, StoreError>;

    // ----- TLS session-ticket keys shared by the nodes -----

    /// Every ticket key, oldest first.
    async fn ticket_keys(&self) -> Result<Vec<SealedTicketKey>, StoreError>;

    /// Adds a key taking effect at `not_before` unless a key already takes effect after
    /// `unless_after` (another node was first); then deletes keys that took effect before
    /// `prune_before`. Two nodes adding at once is harmless: every node learns both.
    async fn add_ticket_key(
        &self,
        not_before: i64,
        sealed: &str,
        unless_after: i64,
        prune_before: i64,
    ) -> Result<bool, StoreError>;

    /// Where the feed can listen for committed changes instead of only polling: the URL of a
    /// PostgreSQL store (notified on [`dialect::CHANGES_CHANNEL`]); `None` for SQLite.
    fn notifications_url(&self) -> Option<&str> {
        None
    }
}

/// The store every part of one process shares.
pub type Store = Arc<dyn AccountStore>;

/// Opens the store a `[store] url` names (`sqlite://PATH`, `sqlite::memory:`,
/// `postgres://...`).
pub async fn open(url: &str) -> Result<Store, StoreError> {
    Ok(Arc::new(SqlStore::open(url).await?))
}

/// An app password found by its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPasswordRecord {
    pub id: AppPasswordId,
    pub account_id: AccountId,
    pub service: Service,
    pub generation: Generation,
    pub revoked: bool,
}

/// One last use of an app password, written in batches by the gateway.
#[derive(Debug, Clone)]
pub struct Use {
    pub id: AppPasswordId,
    pub at: i64,
    pub ip: String,
    pub protocol: &'static str,
    /// Who reported `ip` when the gateway did not see the client itself (a daemon asking the
    /// auth server); `None` when it did.
    pub reporter: Option<String>,
}

/// The store on SQLite or PostgreSQL (see [`dialect`] for what differs); cheap to clone.
#[derive(Clone)]
pub struct SqlStore {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
    url: Arc<str>,
}

impl SqlStore {
    /// Opens (creating an SQLite file if missing) the database at `url` and applies pending
    /// migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (pool, dialect) = dialect::connect(url).await?;
        dialect::migrate(&pool, dialect).await?;
        Ok(Self {
            pool,
            dialect,
            url: url.into(),
        })
    }

    /// Which database this store is on.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        begin_write(&self.pool, self.dialect).await
    }
}

#[async_trait::async_trait]
impl AccountStore for SqlStore {
    async fn account_by_login(
        &self,
        login: &Login,
    ) -> Result<Option<(AccountState, String)>, StoreError> {
        let row = sqlx::query(ACCOUNT_COLUMNS_BY_LOGIN)
            .bind(login.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((account_from_row(&row)?, row.try_get("password_hash")?)))
            .transpose()
    }

    async fn app_password_by_digest(
        &self,
        digest: &str,
    ) -> Result<Option<AppPasswordRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, account_id, service, generation, revoked_at FROM app_passwords WHERE digest = $1",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let service: String = row.try_get("service")?;
            Ok(AppPasswordRecord {
                id: AppPasswordId(row.try_get("id")?),
                account_id: AccountId(row.try_get("account_id")?),
                service: service
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("service {service:?}")))?,
                generation: Generation(row.try_get("generation")?),
                revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
            })
        })
        .transpose()
    }

    async fn account_snapshot(
        &self,
        id: AccountId,
    ) -> Result<Option<(AccountState, Vec<(AppPasswordId, PasswordLimits)>)>, StoreError> {
        // One statement, so one snapshot on either database and one round trip: a row per live
        // app password (or one row with a NULL id when there is none).
        let rows = sqlx::query(ACCOUNT_WITH_LIVE_APP_PASSWORDS)
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let account = account_from_row(first)?;
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(live) = row.try_get::<Option<i64>, _>("live_id")? {
                let networks: Option<String> = row.try_get("live_networks")?;
                let limits = PasswordLimits::from_stored(
                    row.try_get("live_expires_at")?,
                    networks.as_deref(),
                );
                ids.push((AppPasswordId(live), limits));
            }
        }
        Ok(Some((account, ids)))
    }

    async fn record_uses(&self, uses: &[Use]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for u in uses {
            sqlx::query(
                "UPDATE app_passwords SET last_used_at = $1, last_used_ip = $2, last_used_protocol = $3, last_used_reporter = $4 WHERE id = $5",
            )
            .bind(u.at)
            .bind(&u.ip)
            .bind(u.protocol)
            .bind(u.reporter.as_deref())
            .bind(u.id.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn create_account(
        &self,
        login: &Login,
        password_hash: &str,
    ) -> Result<AccountId, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = insert_account(&mut tx, login, password_hash, None).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn apply_change(
        &self,
        account: &AccountState,
        change: &AccountChange,
    ) -> Result<Generation, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = locked_account(&mut tx, account).await?;
        let now = now_ms();
        if let Some(hash) = &change.password_hash {
            sqlx::query(
                "UPDATE accounts SET password_hash = $1, password_version = password_version + 1, updated_at = $2 WHERE id = $3",
            )
            .bind(hash)
            .bind(now)
            .bind(current.id.0)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(on) = change.two_factor {
            sqlx::query("UPDATE accounts SET two_factor = $1, updated_at = $2 WHERE id = $3")
                .bind(i64::from(on))
                .bind(now)
                .bind(current.id.0)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(on) = change.app_passwords_only {
            sqlx::query(
                "UPDATE accounts SET app_passwords_only = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(i64::from(on))
            .bind(now)
            .bind(current.id.0)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(blocked) = change.blocked {
            sqlx::query("UPDATE accounts SET blocked = $1, updated_at = $2 WHERE id = $3")
                .bind(i64::from(blocked))
                .bind(now)
                .bind(current.id.0)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(totp) = &change.totp {
            let (seed, step) = match totp {
                Some((seed, step)) => (Some(seed.as_str()), *step),
                None => (None, 0),
            };
            sqlx::query(
                "UPDATE accounts SET totp_seed = $1, totp_last_step = $2, updated_at = $3 WHERE id = $4",
            )
            .bind(seed)
            .bind(step)
            .bind(now)
            .bind(current.id.0)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(codes) = &change.recovery_codes {
            sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
                .bind(current.id.0)
                .execute(&mut *tx)
                .await?;
            for digest in codes {
                sqlx::query("INSERT INTO recovery_codes (account_id, digest) VALUES ($1, $2)")
                    .bind(current.id.0)
                    .bind(digest)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let generation = match change.bump {
            Some(event) => bump(&mut tx, &current, event).await?,
            None => {
                append_change(&mut tx, current.id, change.kind).await?;
                current.generation
            }
        };
        tx.commit().await?;
        Ok(generation)
    }

    async fn create_app_password(
        &self,
        account: &AccountState,
        service: Service,
        name: &str,
        digest: &str,
        limits: &PasswordLimits,
    ) -> Result<AppPasswordId, StoreError> {
        let mut tx = self.begin_write().await?;
        let current = locked_account(&mut tx, account).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO app_passwords (account_id, service, name, digest, generation, created_at, expires_at, networks) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(current.id.0)
        .bind(service.as_str())
        .bind(name)
        .bind(digest)
        .bind(current.generation.0)
        .bind(now_ms())
        .bind(limits.expires_at)
        .bind(limits.stored_networks())
        .fetch_one(&mut *tx)
        .await?;
        append_change(&mut tx, current.id, "app-password-created").await?;
        tx.commit().await?;
        Ok(AppPasswordId(id))
    }

    async fn list_app_passwords(
        &self,
        account: &AccountState,
    ) -> Result<Vec<AppPasswordInfo>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The generation as it is now, in the same read as the list.
        let generation: Option<i64> =
            sqlx::query_scalar("SELECT generation FROM accounts WHERE id = $1")
                .bind(account.id.0)
                .fetch_optional(&mut *tx)
                .await?;
        let generation = Generation(
            generation.ok_or_else(|| StoreError::UnknownAccount(account.login.to_string()))?,
        );
        let rows = sqlx::query(
            "SELECT id, service, name, generation, created_at, revoked_at, last_used_at, last_used_ip, last_used_protocol, last_used_reporter, expires_at, networks FROM app_passwords WHERE account_id = $1 ORDER BY id DESC",
        )
        .bind(account.id.0)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let service: String = row.try_get("service")?;
                let made_under = Generation(row.try_get("generation")?);
                let revoked_at: Option<i64> = row.try_get("revoked_at")?;
                let networks: Option<String> = row.try_get("networks")?;
                let limits =
                    PasswordLimits::from_stored(row.try_get("expires_at")?, networks.as_deref());
                Ok(AppPasswordInfo {
                    id: AppPasswordId(row.try_get("id")?),
                    service: service
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("service {service:?}")))?,
                    name: row.try_get("name")?,
                    generation: made_under,
                    created_at: row.try_get("created_at")?,
                    revoked_at,
                    last_used_at: row.try_get("last_used_at")?,
                    last_used_ip: row.try_get("last_used_ip")?,
                    last_used_protocol: row.try_get("last_used_protocol")?,
                    last_used_reporter: row.try_get("last_used_reporter")?,
                    alive: revoked_at.is_none()
                        && made_under == generation
                        && !limits.expired(now_ms()),
                    limits,
                })
            })
            .collect()
    }

    async fn revoke_app_password(
        &self,
        account: AccountId,
        id: AppPasswordId,
    ) -> Result<Revocation, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked_at: Option<Option<i64>> = sqlx::query_scalar(self.dialect.lock(locking!(
            "SELECT revoked_at FROM app_passwords WHERE id = $1 AND account_id = $2"
        )))
        .bind(id.0)
        .bind(account.0)
        .fetch_optional(&mut *tx)
        .await?;
        match revoked_at {
            None => Ok(Revocation::Unknown),
            Some(Some(_)) => Ok(Revocation::AlreadyRevoked),
            Some(None) => {
                sqlx::query("UPDATE app_passwords SET revoked_at = $1 WHERE id = $2")
                    .bind(now_ms())
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
                append_change(&mut tx, account, "app-password-revoked").await?;
                tx.commit().await?;
                Ok(Revocation::Revoked)
            }
        }
    }

    async fn create_web_session(&self, session: &NewWebSession<'_>) -> Result<i64, StoreError> {
        let now = now_ms();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO web_sessions (account_id, digest, created_at, signed_in_at, last_seen_at, remember, ip, user_agent) VALUES ($1, $2, $3, $3, $3, $4, $5, $6) RETURNING id",
        )
        .bind(session.account_id.0)
        .bind(session.digest)
        .bind(now)
        .bind(i64::from(session.remember))
        .bind(session.ip)
        .bind(session.user_agent)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    async fn web_session(&self, digest: &str) -> Result<Option<WebSession>, StoreError> {
        let row = sqlx::query(WEB_SESSION_BY_DIGEST)
            .bind(digest)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| web_session_from_row(&row)).transpose()
    }

    async fn touch_web_session(&self, id: i64, at: i64, signed_in: bool) -> Result<(), StoreError> {
        let sql = if signed_in {
            "UPDATE web_sessions SET last_seen_at = $1, signed_in_at = $1 WHERE id = $2"
        } else {
            "UPDATE web_sessions SET last_seen_at = $1 WHERE id = $2"
        };
        sqlx::query(sql)
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn end_web_session(&self, account: AccountId, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(account.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_web_sessions(&self, account: AccountId) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE account_id = $1")
            .bind(account.0)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn web_sessions(&self, account: AccountId) -> Result<Vec<WebSession>, StoreError> {
        let rows = sqlx::query(WEB_SESSIONS_OF_ACCOUNT)
            .bind(account.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(web_session_from_row).collect()
    }

    async fn second_factor(&self, account: AccountId) -> Result<Option<SecondFactor>, StoreError> {
        let row = sqlx::query(
            "SELECT totp_seed, totp_last_step, (SELECT COUNT(*) FROM recovery_codes r WHERE r.account_id = a.id AND r.used_at IS NULL) AS left_codes FROM accounts a WHERE id = $1",
        )
        .bind(account.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let Some(sealed_seed) = row.try_get::<Option<String>, _>("totp_seed")? else {
            return Ok(None);
        };
        Ok(Some(SecondFactor {
            sealed_seed,
            last_step: row.try_get("totp_last_step")?,
            recovery_codes_left: row.try_get("left_codes")?,
        }))
    }

    async fn accept_totp_step(&self, account: AccountId, step: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE accounts SET totp_last_step = $1 WHERE id = $2 AND totp_seed IS NOT NULL AND totp_last_step < $1",
        )
        .bind(step)
        .bind(account.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_recovery_code(
        &self,
        account: AccountId,
        digest: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 WHERE account_id = $2 AND digest = $3 AND used_at IS NULL",
        )
        .bind(now_ms())
        .bind(account.0)
        .bind(digest)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn profile(&self, account: AccountId) -> Result<Profile, StoreError> {
        let row = sqlx::query(
            "SELECT first_name, last_name, phone, email, question, answer_hash FROM profiles WHERE account_id = $1",
        )
        .bind(account.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Profile::default());
        };
        Ok(Profile {
            first_name: row.try_get("first_name")?,
            last_name: row.try_get("last_name")?,
            phone: row.try_get("phone")?,
            email: row.try_get("email")?,
            question: row.try_get("question")?,
            answer_hash: row.try_get("answer_hash")?,
        })
    }

    async fn set_profile(&self, account: AccountId, profile: &Profile) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO profiles (account_id, first_name, last_name, phone, email, question, answer_hash, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (account_id) DO UPDATE SET first_name = excluded.first_name, last_name = excluded.last_name, phone = excluded.phone, email = excluded.email, question = excluded.question, answer_hash = excluded.answer_hash, updated_at = excluded.updated_at",
        )
        .bind(account.0)
        .bind(&profile.first_name)
        .bind(&profile.last_name)
        .bind(profile.phone.as_deref())
        .bind(profile.email.as_deref())
        .bind(profile.question.as_deref())
        .bind(profile.answer_hash.as_deref())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn create_code(&self, code: &NewCode<'_>) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // One live code per purpose: a new one ends the others (and old rows go).
        sqlx::query(
            "DELETE FROM one_time_codes WHERE (account_id = $1 AND purpose = $2) OR expires_at < $3",
        )
        .bind(code.account_id.0)
        .bind(code.purpose)
        .bind(now - CHANGE_RETENTION_MS)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO one_time_codes (account_id, purpose, target, digest, created_at, expires_at, tries_left) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(code.account_id.0)
        .bind(code.purpose)
        .bind(code.target)
        .bind(code.digest)
        .bind(now)
        .bind(code.expires_at)
        .bind(code.tries)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn check_code(
        &self,
        account: AccountId,
        purpose: &str,
        digest: &str,
        now: i64,
    ) -> Result<CodeCheck, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(self.dialect.lock(locking!(
            "SELECT id, target, digest FROM one_time_codes WHERE account_id = $1 AND purpose = $2 AND used_at IS NULL AND tries_left > 0 AND expires_at >= $3 ORDER BY id DESC LIMIT 1"
        )))
        .bind(account.0)
        .bind(purpose)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(CodeCheck::Refused);
        };
        let id: i64 = row.try_get("id")?;
        let stored: String = row.try_get("digest")?;
        let right: bool =
            subtle::ConstantTimeEq::ct_eq(stored.as_bytes(), digest.as_bytes()).into();
        let result = if right {
            sqlx::query("UPDATE one_time_codes SET used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            CodeCheck::Accepted {
                target: row.try_get("target")?,
            }
        } else {
            sqlx::query("UPDATE one_time_codes SET tries_left = tries_left - 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            CodeCheck::Refused
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn create_ticket(
        &self,
        digest: &str,
        login: &Login,
        service: Service,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM tickets WHERE expires_at < $1")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO tickets (digest, login, service, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(digest)
        .bind(login.as_str())
        .bind(service.as_str())
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_ticket(
        &self,
        digest: &str,
        now: i64,
    ) -> Result<Option<(Login, Service)>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM tickets WHERE digest = $1 RETURNING login, service, expires_at",
        )
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let expires_at: i64 = row.try_get("expires_at")?;
        if expires_at < now {
            return Ok(None);
        }
        let service: String = row.try_get("service")?;
        Ok(Some((
            Login::from_stored(row.try_get("login")?),
            service
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("service {service:?}")))?,
        )))
    }

    async fn latest_change(&self) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    async fn changes_since(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, AccountId, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, account_id, at FROM changes WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("id")?,
                    AccountId(row.try_get("account_id")?),
                    row.try_get("at")?,
                ))
            })
            .collect()
    }

    async fn add_ban(&self, address: &str, until: i64, failures: i64) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM bans WHERE until < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO bans (address, until, failures, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (address) DO UPDATE SET until = excluded.until, failures = excluded.failures, created_at = excluded.created_at",
        )
        .bind(address)
        .bind(until)
        .bind(failures)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn bans(&self, now: i64) -> Result<Vec<Ban>, StoreError> {
        let rows = sqlx::query(
            "SELECT address, until, failures, created_at FROM bans WHERE until > $1 ORDER BY until DESC",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Ban {
                    address: row.try_get("address")?,
                    until: row.try_get("until")?,
                    failures: row.try_get("failures")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn lift_ban(&self, address: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM bans WHERE address = $1")
            .bind(address)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn ticket_keys(&self) -> Result<Vec<SealedTicketKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, not_before, sealed FROM tls_ticket_keys ORDER BY not_before, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SealedTicketKey {
                    id: row.try_get("id")?,
                    not_before: row.try_get("not_before")?,
                    sealed: row.try_get("sealed")?,
                })
            })
            .collect()
    }

    async fn add_ticket_key(
        &self,
        not_before: i64,
        sealed: &str,
        unless_after: i64,
        prune_before: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let added = sqlx::query(
            "INSERT INTO tls_ticket_keys (not_before, sealed) SELECT $1, $2 \
             WHERE NOT EXISTS (SELECT 1 FROM tls_ticket_keys WHERE not_before > $3)",
        )
        .bind(not_before)
        .bind(sealed)
        .bind(unless_after)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        sqlx::query("DELETE FROM tls_ticket_keys WHERE not_before < $1")
            .bind(prune_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(added)
    }

    fn notifications_url(&self) -> Option<&str> {
        (self.dialect == Dialect::Postgres).then_some(&*self.url)
    }
}

macro_rules! account_columns {
    ($where:literal) => {
        concat!(
            "SELECT id, login, password_hash, password_version, two_factor, app_passwords_only, generation, revision, blocked, domain_id FROM accounts WHERE ",
            $where
        )
    };
}
const ACCOUNT_COLUMNS_BY_LOGIN: &str = account_columns!("login = $1");
const ACCOUNT_WITH_LIVE_APP_PASSWORDS: &str = "SELECT a.id, a.login, a.password_hash, a.password_version, a.two_factor, a.app_passwords_only, a.generation, a.revision, a.blocked, a.domain_id, p.id AS live_id, p.expires_at AS live_expires_at, p.networks AS live_networks FROM accounts a LEFT JOIN app_passwords p ON p.account_id = a.id AND p.generation = a.generation AND p.revoked_at IS NULL WHERE a.id = $1";
const ACCOUNT_BY_ID_LOCKING: dialect::Locking = locking!(account_columns!("id = $1"));

const WEB_SESSION_BY_DIGEST: &str = "SELECT s.id, s.account_id, a.login, s.created_at, s.signed_in_at, s.last_seen_at, s.remember, s.ip, s.user_agent FROM web_sessions s JOIN accounts a ON a.id = s.account_id WHERE s.digest = $1";
const WEB_SESSIONS_OF_ACCOUNT: &str = "SELECT s.id, s.account_id, a.login, s.created_at, s.signed_in_at, s.last_seen_at, s.remember, s.ip, s.user_agent FROM web_sessions s JOIN accounts a ON a.id = s.account_id WHERE s.account_id = $1 ORDER BY s.last_seen_at DESC";

fn web_session_from_row(row: &AnyRow) -> Result<WebSession, StoreError> {
    Ok(WebSession {
        id: row.try_get("id")?,
        account_id: AccountId(row.try_get("account_id")?),
        login: Login::from_stored(row.try_get("login")?),
        created_at: row.try_get("created_at")?,
        signed_in_at: row.try_get("signed_in_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        remember: row.try_get::<i64, _>("remember")? != 0,
        ip: row.try_get("ip")?,
        user_agent: row.try_get("user_agent")?,
    })
}

pub(crate) fn account_from_row(row: &AnyRow) -> Result<AccountState, StoreError> {
    Ok(AccountState {
        id: AccountId(row.try_get("id")?),
        login: Login::from_stored(row.try_get("login")?),
        generation: Generation(row.try_get("generation")?),
        password_version: row.try_get("password_version")?,
        two_factor: row.try_get::<i64, _>("two_factor")? != 0,
        app_passwords_only: row.try_get::<i64, _>("app_passwords_only")? != 0,
        revision: row.try_get("revision")?,
        blocked: row.try_get::<i64, _>("blocked")? != 0,
        domain_id: row.try_get("domain_id")?,
    })
}

/// Reads the account inside a write transaction, locked (see [`Dialect::lock`]), and checks that it is still at the revision the caller's decision was based on.
async fn locked_account(
    tx: &mut Transaction<'static, Any>,
    account: &AccountState,
) -> Result<AccountState, StoreError> {
    let dialect = Dialect::of(tx);
    let row = sqlx::query(dialect.lock(ACCOUNT_BY_ID_LOCKING))
        .bind(account.id.0)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::UnknownAccount(account.login.to_string()))?;
    let current = account_from_row(&row)?;
    if current.revision != account.revision {
        return Err(StoreError::Conflict(account.login.to_string()));
    }
    Ok(current)
}

async fn bump(
    tx: &mut Transaction<'static, Any>,
    account: &AccountState,
    event: GenerationBump,
) -> Result<Generation, StoreError> {
    let generation: i64 = sqlx::query_scalar(
        "UPDATE accounts SET generation = generation + 1, updated_at = $1 WHERE id = $2 RETURNING generation",
    )
    .bind(now_ms())
    .bind(account.id.0)
    .fetch_one(&mut **tx)
    .await?;
    let kind = match event {
        GenerationBump::PasswordChanged => "generation:password",
        GenerationBump::TwoFactorOn => "generation:two-factor-on",
        GenerationBump::TwoFactorOff => "generation:two-factor-off",
        GenerationBump::AccessRestored => "generation:restored",
        GenerationBump::LogoutEverywhere => "generation:logout-everywhere",
        GenerationBump::Blocked => "generation:blocked",
    };
    append_change(tx, account.id, kind).await?;
    Ok(Generation(generation))
}

/// Inserts a new account (a mailbox of `domain`, or a platform account) and its "created"
/// change, in the caller's transaction; `AccountExists` if the login is taken.
pub(crate) async fn insert_account(
    tx: &mut Transaction<'static, Any>,
    login: &Login,
    password_hash: &str,
    domain: Option<i64>,
) -> Result<AccountId, StoreError> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE login = $1")
        .bind(login.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_some() {
        return Err(StoreError::AccountExists(login.to_string()));
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO accounts (login, password_hash, created_at, updated_at, domain_id) VALUES ($1, $2, $3, $3, $4) RETURNING id",
    )
    .bind(login.as_str())
    .bind(password_hash)
    .bind(now_ms())
    .bind(domain)
    .fetch_one(&mut **tx)
    .await?;
    append_change(tx, AccountId(id), "created").await?;
    Ok(AccountId(id))
}

pub(crate) async fn append_change(
    tx: &mut Transaction<'static, Any>,
    account: AccountId,
    kind: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query("UPDATE accounts SET revision = revision + 1 WHERE id = $1")
        .bind(account.0)
        .execute(&mut **tx)
        .await?;
    // The next id in commit order: the counter row stays locked until this transaction ends
    // (see migration 0007), and it is taken after the account row, always in that order.
    let id: i64 = sqlx::query_scalar("UPDATE change_counter SET last = last + 1 RETURNING last")
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO changes (id, account_id, kind, at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(account.0)
        .bind(kind)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    if Dialect::of(tx) == Dialect::Postgres {
        // Delivered to every listening node when (and only if) this transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(dialect::CHANGES_CHANNEL)
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query("DELETE FROM changes WHERE at < $1")
        .bind(now - CHANGE_RETENTION_MS)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests;
