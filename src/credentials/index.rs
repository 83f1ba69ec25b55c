//! The cached credential index: decides a login in microseconds on a cache hit, and never lets a
//! dead credential through.
//!
//! A verified login is cached under a keyed hash of (service, login, secret), so the cache never
//! holds a secret and an entry can only be found by someone who knows the secret. Each entry
//! names the credential it proved (an app password and its generation, or the main password and
//! its version) and points at the account's [`LiveAccount`]: the in-memory state that every hit
//! is re-checked against. That state changes the moment this process changes the store, and
//! within the feed interval when another process does (see [`crate::store::feed`]); the same
//! state wakes relayed sessions whose credential just died.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use super::hashing::{HashError, PasswordHasher, app_password_digest, normalize_app_password};
use super::model::{
    AccountId, AccountState, AppPasswordId, Credentials, Generation, IdentityError, Login, Network,
    Origin, PasswordLimits, Protocol, Service, now_ms,
};
use super::secret::Secret;
use crate::store::{Store, StoreError, Use};

/// Tuning of the index.
#[derive(Debug, Clone)]
pub struct IndexSettings {
    /// Domain appended to a bare login.
    pub default_domain: Option<String>,
    /// How many verified logins are kept.
    pub cache_capacity: u64,
    /// How long a verified login is kept without being used again.
    pub cache_idle: Duration,
    /// argon2 verifications running at once.
    pub hash_concurrency: usize,
}

/// Why a login did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong secret, wrong service, dead credential, or a policy that refuses the
    /// main password: one variant, so no caller can tell them apart in a reply.
    #[error("authentication failed")]
    Rejected,
    /// The store or the hasher failed: the client should try again later.
    #[error("credential check unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Unavailable(e.to_string())
    }
}

/// Which credential a login proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    AppPassword {
        id: AppPasswordId,
        generation: Generation,
    },
    MainPassword {
        generation: Generation,
        password_version: i64,
    },
}

/// What the index holds about an account, shared with every session logged in to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: AccountState,
    /// App passwords not revoked and made under the current generation, with the limits
    /// their owner set (an expired one is here until the next reload, and refused by time).
    pub live_app_passwords: HashMap<AppPasswordId, PasswordLimits>,
}

impl Snapshot {
    /// Whether `credential` still opens its service for this account at `now`.
    pub fn allows(&self, credential: &Credential, now: i64) -> bool {
        match *credential {
            Credential::AppPassword { id, generation } => {
                !self.state.blocked
                    && generation == self.state.generation
                    && self
                        .live_app_passwords
                        .get(&id)
                        .is_some_and(|limits| !limits.expired(now))
            }
            Credential::MainPassword {
                generation,
                password_version,
            } => {
                generation == self.state.generation
                    && password_version == self.state.password_version
                    && self.state.main_password_allowed()
            }
        }
    }
}

/// The in-memory, always-current state of one account.
#[derive(Debug)]
pub struct LiveAccount {
    snapshot: watch::Sender<Snapshot>,
}

impl LiveAccount {
    /// Replaces the snapshot unless the one held is newer (a slow reader must not roll back
    /// what the feed already delivered). Wakes every session watching the account.
    fn update(&self, next: Snapshot) {
        self.snapshot.send_if_modified(|current| {
            if next.state.revision >= current.state.revision && *current != next {
                *current = next;
                true
            } else {
                false
            }
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }
}

/// A successful login: who, with which credential, and the live state that can revoke it.
#[derive(Debug, Clone)]
pub struct Grant {
    pub login: Login,
    pub service: Service,
    pub credential: Credential,
    live: Arc<LiveAccount>,
}

impl Grant {
    /// Whether the credential is still alive.
    pub fn is_alive(&self) -> bool {
        self.live
            .snapshot
            .borrow()
            .allows(&self.credential, now_ms())
    }

    /// Whether a login from `origin` may use the credential now: an app password's owner may
    /// have limited it to some networks.
    fn permits(&self, origin: &Origin) -> bool {
        let Credential::AppPassword { id, .. } = self.credential else {
            return true;
        };
        let client = origin.ip_known.then_some(origin.ip);
        self.live
            .snapshot
            .borrow()
            .live_app_passwords
            .get(&id)
            .is_some_and(|limits| limits.permit(client, now_ms()))
    }

    /// When the credential expires, if its owner gave it an end.
    fn expires_at(&self, snapshot: &Snapshot) -> Option<i64> {
        match self.credential {
            Credential::AppPassword { id, .. } => snapshot
                .live_app_passwords
                .get(&id)
                .and_then(|limits| limits.expires_at),
            Credential::MainPassword { .. } => None,
        }
    }

    /// Resolves once the credential dies (revoked, expired, generation bumped, password
    /// changed, policy no longer accepting it). Cancel-safe: drop it and call again.
    pub async fn dead(&self) {
        let mut rx = self.live.snapshot.subscribe();
        loop {
            let expires_at = {
                let snapshot = rx.borrow_and_update();
                if !snapshot.allows(&self.credential, now_ms()) {
                    return;
                }
                self.expires_at(&snapshot)
            };
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    // The account left the index; nothing can revoke through it any more, so
                    // only the expiry is left (the index never drops an account while it runs).
                    until(expires_at).await;
                    return;
                },
                () = until(expires_at) => {}
            }
        }
    }
}

/// Resolves at `at` (milliseconds since the epoch), or never.
async fn until(at: Option<i64>) {
    match at {
        Some(at) => {
            let wait = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

type CacheKey = [u8; 32];

/// The credential index. One per gateway process; cheap to share behind an `Arc`.
pub struct CredentialIndex {
    store: Store,
    hasher: PasswordHasher,
    default_domain: Option<String>,
    /// Verified logins, under a keyed hash of (service, login, secret).
    cache: moka::future::Cache<CacheKey, (Arc<LiveAccount>, Credential, Login)>,
    /// Random per process: the cache keys mean nothing outside it.
    cache_key: [u8; 32],
    /// Every account this process has seen, kept current by [`Self::refresh_account`].
    accounts: DashMap<AccountId, Arc<LiveAccount>>,
    /// Last-use records for app passwords, written to the store in batches.
    uses: Option<mpsc::Sender<Use>>,
    /// When the change feed last read everything there was (Unix ms).
    caught_up_at: std::sync::atomic::AtomicI64,
    /// How far behind the feed may fall before cached logins are no longer trusted; `None`
    /// when no feed runs (a CLI process, where every change is made here).
    max_staleness: Option<Duration>,
    /// Whether the "not trusting the cache" warning is out (said once per episode).
    stale_said: std::sync::atomic::AtomicBool,
    /// The feed reconnected after losing its notifications: until it has read from its cursor
    /// again, the cache may hold what changed meanwhile.
    resyncing: std::sync::atomic::AtomicBool,
}

impl CredentialIndex {
    pub fn new(store: Store, settings: &IndexSettings) -> Self {
        Self {
            store,
            hasher: PasswordHasher::new(settings.hash_concurrency),
            default_domain: settings.default_domain.clone(),
            cache: moka::future::Cache::builder()
                .max_capacity(settings.cache_capacity)
                .time_to_idle(settings.cache_idle)
                .build(),
            cache_key: rand::random(),
            accounts: DashMap::new(),
            uses: None,
            caught_up_at: std::sync::atomic::AtomicI64::new(crate::credentials::model::now_ms()),
            max_staleness: None,
            stale_said: std::sync::atomic::AtomicBool::new(false),
            resyncing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A change feed keeps this index current: once it has not caught up for `max`, cached
    /// logins are checked against the store again (see [`Self::cache_trusted`]).
    pub fn with_feed_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = Some(max);
        self
    }

    /// The feed has read every change there was.
    pub fn caught_up(&self) {
        use std::sync::atomic::Ordering;
        self.caught_up_at
            .store(crate::credentials::model::now_ms(), Ordering::Relaxed);
        self.resyncing.store(false, Ordering::Release);
        if self.stale_said.swap(false, Ordering::Relaxed) {
            tracing::info!("change feed caught up: the login cache is trusted again");
        }
    }

    /// The feed lost its notifications and is back: cached logins are checked against the
    /// store until its next read from the cursor ([`Self::caught_up`]), which follows at once.
    pub fn must_catch_up(&self) {
        self.resyncing
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a cached login may be taken as it is: not when the feed has been behind longer
    /// than allowed, nor right after it reconnected, since a change made elsewhere (a
    /// revocation) may be in what it missed.
    fn cache_trusted(&self) -> bool {
        use std::sync::atomic::Ordering;
        let Some(max) = self.max_staleness else {
            return true;
        };
        if self.resyncing.load(Ordering::Acquire) {
            return false;
        }
        let behind =
            crate::credentials::model::now_ms() - self.caught_up_at.load(Ordering::Relaxed);
        let trusted = behind <= i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
        if !trusted && !self.stale_said.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                behind_ms = behind,
                "the change feed has not caught up for longer than max_feed_staleness_secs: logins are checked against the store, not the cache, until it does"
            );
        }
        trusted
    }

    /// Records each app password's last use through `sink` (see [`spawn_use_writer`]).
    pub fn with_use_recorder(mut self, sink: mpsc::Sender<Use>) -> Self {
        self.uses = Some(sink);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The bounded argon2 pool, for whoever else hashes main passwords in this process (the
    /// account service): one pool, so a flood anywhere cannot starve logins.
    pub fn hasher(&self) -> PasswordHasher {
        self.hasher.clone()
    }

    pub fn default_domain(&self) -> Option<&str> {
        self.default_domain.as_deref()
    }

    /// The account `credentials` claim, or a refusal: the login names no account, or the
    /// authorization identity names another one (logged, since that is someone trying to act
    /// for someone else; the client hears the same refusal as for a wrong password).
    pub fn claimed_account(&self, credentials: &Credentials) -> Result<Login, AuthError> {
        credentials
            .account(self.default_domain.as_deref())
            .map_err(|e| {
                if e == IdentityError::OtherAccount {
                    tracing::info!(
                        login = %crate::protocol::printable(&credentials.login),
                        authzid = %crate::protocol::printable(credentials.authzid.as_deref().unwrap_or_default()),
                        "login refused: the authorization identity names another account"
                    );
                }
                AuthError::Rejected
            })
    }

    /// Decides a login for `service`.
    pub async fn authenticate(
        &self,
        service: Service,
        protocol: Protocol,
        credentials: &Credentials,
        origin: &Origin,
    ) -> Result<Grant, AuthError> {
        let login = self.claimed_account(credentials)?;
        let secret = &credentials.secret;
        if secret.is_empty() {
            return Err(AuthError::Rejected);
        }
        let key = self.cache_key_for(service, &login, secret);

        if self.cache_trusted()
            && let Some((live, credential, login)) = self.cache.get(&key).await
        {
            let grant = Grant {
                login,
                service,
                credential,
                live,
            };
            if grant.is_alive() {
                if !grant.permits(origin) {
                    return Err(AuthError::Rejected);
                }
                self.record_use(&grant, origin, protocol);
                return Ok(grant);
            }
            self.cache.invalidate(&key).await;
        }

        let grant = self.verify(service, login, secret, origin).await?;
        self.cache
            .insert(
                key,
                (grant.live.clone(), grant.credential, grant.login.clone()),
            )
            .await;
        if !grant.permits(origin) {
            return Err(AuthError::Rejected);
        }
        self.record_use(&grant, origin, protocol);
        Ok(grant)
    }

    /// The slow path: store lookup, then the app-password digest or the argon2 check.
    async fn verify(
        &self,
        service: Service,
        login: Login,
        secret: &Secret,
        origin: &Origin,
    ) -> Result<Grant, AuthError> {
        let Some((account, password_hash)) = self.store.account_by_login(&login).await? else {
            return Err(AuthError::Rejected);
        };
        let live = self
            .refresh_account(account.id)
            .await?
            .ok_or(AuthError::Rejected)?;
        let snapshot = live.snapshot();
        let grant = |credential| Grant {
            login: snapshot.state.login.clone(),
            service,
            credential,
            live: live.clone(),
        };

        if let Some(normalized) = normalize_app_password(secret)
            && let Some(record) = self
                .store
                .app_password_by_digest(&app_password_digest(&normalized))
                .await?
            && record.account_id == account.id
            && record.service == service
        {
            let credential = Credential::AppPassword {
                id: record.id,
                generation: record.generation,
            };
            return if snapshot.allows(&credential, now_ms()) {
                Ok(grant(credential))
            } else {
                Err(AuthError::Rejected)
            };
        }

        if !snapshot.state.main_password_allowed() {
            return Err(AuthError::Rejected);
        }
        let matches = self
            .hasher
            .verify_from(Some(Network::of(origin.ip)), secret, &password_hash)
            .await
            .map_err(|e| match e {
                // A full queue must look like any other refusal: a temporary failure here
                // would say that the account exists.
                HashError::Busy => {
                    tracing::warn!("password check queue full; login refused");
                    AuthError::Rejected
                }
                e => AuthError::Unavailable(e.to_string()),
            })?;
        // The grant names the version of the hash that was checked (read in the same row), so
        // if the password changed since, the snapshot's newer version refuses it below.
        let credential = Credential::MainPassword {
            generation: account.generation,
            password_version: account.password_version,
        };
        if matches && snapshot.allows(&credential, now_ms()) {
            Ok(grant(credential))
        } else {
            Err(AuthError::Rejected)
        }
    }

    /// Reloads one account from the store into memory and wakes its sessions. Called after this
    /// process changes the store and for every change the feed reports. Returns `None` when the
    /// account no longer exists.
    pub async fn refresh_account(
        &self,
        id: AccountId,
    ) -> Result<Option<Arc<LiveAccount>>, StoreError> {
        let Some((state, live_ids)) = self.store.account_snapshot(id).await? else {
            // Deleted: whatever this process still holds of it dies.
            self.forget_account(id);
            return Ok(None);
        };
        let snapshot = Snapshot {
            state,
            live_app_passwords: live_ids.into_iter().collect(),
        };
        let live = self
            .accounts
            .entry(id)
            .or_insert_with(|| {
                Arc::new(LiveAccount {
                    snapshot: watch::Sender::new(snapshot.clone()),
                })
            })
            .clone();
        live.update(snapshot);
        Ok(Some(live))
    }

    /// An account that no longer exists: its cached grants fail their next check and every
    /// session relayed with it is cut, then it is dropped.
    pub fn forget_account(&self, id: AccountId) {
        if let Some((_, live)) = self.accounts.remove(&id) {
            let mut dead = live.snapshot.borrow().clone();
            dead.state.blocked = true;
            dead.state.revision += 1;
            live.update(dead);
        }
    }

    /// Whether this process holds the account in memory (the feed only reloads those).
    pub fn knows(&self, id: AccountId) -> bool {
        self.accounts.contains_key(&id)
    }

    fn cache_key_for(&self, service: Service, login: &Login, secret: &Secret) -> CacheKey {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.cache_key)
            .expect("HMAC takes a key of any length");
        mac.update(service.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(login.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(secret.expose());
        mac.finalize().into_bytes().into()
    }

    fn record_use(&self, grant: &Grant, origin: &Origin, protocol: Protocol) {
        if let (Some(sink), Credential::AppPassword { id, .. }) = (&self.uses, grant.credential) {
            // A full queue drops the record: last-use bookkeeping must never slow a login.
            let _ = sink.try_send(Use {
                id,
                at: crate::credentials::model::now_ms(),
                ip: origin.ip.to_string(),
                protocol: protocol.as_str(),
                reporter: origin.reported_by.clone(),
            });
        }
    }
}

/// Writes last-use records to the store once a second, keeping only the newest per password.
pub fn spawn_use_writer(store: Store) -> (mpsc::Sender<Use>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Use>(4096);
    let task = tokio::spawn(async move {
        let mut pending: std::collections::HashMap<AppPasswordId, Use> = Default::default();
        loop {
            let first = rx.recv().await;
            let Some(first) = first else { break };
            pending.insert(first.id, first);
            tokio::time::sleep(Duration::from_secs(1)).await;
            while let Ok(u) = rx.try_recv() {
                pending.insert(u.id, u);
            }
            let batch: Vec<Use> = pending.drain().map(|(_, u)| u).collect();
            if let Err(e) = store.record_uses(&batch).await {
                tracing::warn!(error = %e, "could not record app password use");
            }
        }
    });
    (tx, task)
}

#[cfg(test)]
mod tests;
