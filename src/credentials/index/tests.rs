use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::credentials::accounts::AccountService;
use crate::credentials::model::GenerationBump;
use crate::store::feed;
use crate::store::testing::store_test;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Fixture {
    store: Store,
    /// Changes accounts by the service's rules; the index is not told (tests refresh it, as
    /// the feed would).
    accounts: AccountService,
    index: CredentialIndex,
    account: AccountId,
}

fn settings() -> IndexSettings {
    IndexSettings {
        default_domain: Some("example.org".into()),
        cache_capacity: 1000,
        cache_idle: Duration::from_secs(600),
        hash_concurrency: 2,
    }
}

async fn fixture() -> Fixture {
    let store = crate::store::open(&crate::store::testing::store_url())
        .await
        .unwrap();
    let accounts = AccountService::new(store.clone(), PasswordHasher::new(1), None)
        .with_keys(Arc::new(crate::credentials::keys::Keys::random()));
    accounts
        .create_account(&login(), &Secret::from("main password"))
        .await
        .unwrap();
    let account = accounts.account(&login()).await.unwrap().id;
    let index = CredentialIndex::new(store.clone(), &settings());
    Fixture {
        store,
        accounts,
        index,
        account,
    }
}

fn login() -> Login {
    Login::parse("alice@example.org", None).unwrap()
}

impl Fixture {
    async fn app_password(&self, service: Service) -> (Secret, AppPasswordId) {
        let made = self
            .accounts
            .create_app_password(&login(), service, "test")
            .await
            .unwrap();
        self.index.refresh_account(self.account).await.unwrap();
        (made.secret, made.id)
    }

    async fn login(
        &self,
        service: Service,
        user: &str,
        secret: &Secret,
    ) -> Result<Grant, AuthError> {
        self.index
            .authenticate(
                service,
                Protocol::Imap,
                &Credentials::new(user.to_owned(), secret.clone()),
                &PEER.into(),
            )
            .await
    }

    async fn accepted(&self, service: Service, secret: &Secret) -> bool {
        self.login(service, "alice", secret).await.is_ok()
    }
}

store_test! {
async fn an_app_password_opens_only_its_own_service() {
    let f = fixture().await;
    let (mail, _) = f.app_password(Service::Mail).await;
    let (disk, _) = f.app_password(Service::Disk).await;
    assert!(f.accepted(Service::Mail, &mail).await);
    assert!(f.accepted(Service::Disk, &disk).await);
    assert!(!f.accepted(Service::Disk, &mail).await);
    assert!(!f.accepted(Service::Mail, &disk).await);
    // Also after the mail login was cached.
    assert!(!f.accepted(Service::Calendar, &mail).await);
}}

store_test! {
async fn logins_are_normalised_and_typed_spaces_are_ignored() {
    let f = fixture().await;
    let (mail, _) = f.app_password(Service::Mail).await;
    let text = std::str::from_utf8(mail.expose()).unwrap();
    let spaced = format!(
        "{} {} {} {}",
        &text[..4],
        &text[4..8],
        &text[8..12],
        &text[12..]
    );
    for user in ["alice", "Alice", "alice@example.org", "ALICE@EXAMPLE.ORG"] {
        assert!(
            f.login(Service::Mail, user, &Secret::from(spaced.as_str()))
                .await
                .is_ok(),
            "{user}"
        );
    }
    let grant = f.login(Service::Mail, "Alice", &mail).await.unwrap();
    assert_eq!(grant.login.as_str(), "alice@example.org");
}}

store_test! {
async fn an_authorization_identity_is_accepted_only_for_the_same_account() {
    let f = fixture().await;
    let bob = Login::parse("bob@example.org", None).unwrap();
    f.accounts
        .create_account(&bob, &Secret::from("bob main password"))
        .await
        .unwrap();
    let (mail, _) = f.app_password(Service::Mail).await;
    let with = |login: &str, authzid: &str| Credentials {
        login: login.to_owned(),
        authzid: Some(authzid.to_owned()),
        secret: mail.clone(),
    };
    for (login, authzid) in [
        ("alice", "alice@example.org"),
        ("alice@example.org", "alice"),
        ("ALICE", "Alice@Example.ORG"),
    ] {
        let grant = f
            .index
            .authenticate(
                Service::Mail,
                Protocol::Imap,
                &with(login, authzid),
                &PEER.into(),
            )
            .await
            .unwrap_or_else(|e| panic!("{login} as {authzid}: {e}"));
        assert_eq!(grant.login, login_of("alice@example.org"));
    }
    // Another account as the authorization identity is refused even with alice's good (and
    // by now cached) secret, the same refusal as a wrong password.
    for (login, authzid) in [
        ("alice", "bob"),
        ("alice", "bob@example.org"),
        ("bob", "alice"),
    ] {
        assert!(matches!(
            f.index
                .authenticate(
                    Service::Mail,
                    Protocol::Imap,
                    &with(login, authzid),
                    &PEER.into()
                )
                .await,
            Err(AuthError::Rejected)
        ));
    }
}}

fn login_of(text: &str) -> Login {
    Login::parse(text, None).unwrap()
}

store_test! {
async fn unknown_user_wrong_secret_and_wrong_service_are_the_same_rejection() {
    let f = fixture().await;
    let (mail, _) = f.app_password(Service::Mail).await;
    let outcomes = [
        f.login(Service::Mail, "bob", &mail).await,
        f.login(Service::Mail, "alice", &Secret::from("abcdefghijklmnop"))
            .await,
        f.login(Service::Disk, "alice", &mail).await,
        f.login(Service::Mail, "alice", &Secret::from("")).await,
        f.login(Service::Mail, "al ice", &mail).await,
    ];
    for outcome in outcomes {
        assert!(matches!(outcome, Err(AuthError::Rejected)));
    }
}}

store_test! {
async fn main_password_follows_the_option_and_two_factor() {
    let f = fixture().await;
    let main = Secret::from("main password");
    // New accounts: app passwords only.
    assert!(!f.accepted(Service::Mail, &main).await);
    f.accounts
        .set_app_passwords_only(&login(), false)
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    assert!(f.accepted(Service::Mail, &main).await);
    assert!(
        f.accepted(Service::Disk, &main).await,
        "legacy mode opens every protocol"
    );
    assert!(
        !f.accepted(Service::Mail, &Secret::from("main passwort"))
            .await
    );
    // A cached main-password login dies when the option goes back on.
    f.accounts
        .set_app_passwords_only(&login(), true)
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    assert!(!f.accepted(Service::Mail, &main).await);
    // 2FA forces app passwords.
    f.accounts
        .set_app_passwords_only(&login(), false)
        .await
        .unwrap();
    f.accounts.set_two_factor(&login(), true).await.unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    assert!(!f.accepted(Service::Mail, &main).await);
}}

store_test! {
async fn a_changed_main_password_kills_the_cached_old_one_even_with_two_factor_history() {
    let f = fixture().await;
    f.accounts
        .set_app_passwords_only(&login(), false)
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    let old = Secret::from("main password");
    let grant = f.login(Service::Mail, "alice", &old).await.unwrap();
    f.accounts
        .change_password(&login(), &Secret::from("new password here"))
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    assert!(!grant.is_alive());
    assert!(!f.accepted(Service::Mail, &old).await);
    assert!(
        f.accepted(Service::Mail, &Secret::from("new password here"))
            .await
    );
}}

store_test! {
async fn revocation_is_instant_in_process_and_spares_the_others() {
    let f = fixture().await;
    let (a, a_id) = f.app_password(Service::Mail).await;
    let (b, _) = f.app_password(Service::Mail).await;
    let grant = f.login(Service::Mail, "alice", &a).await.unwrap();
    assert!(f.accepted(Service::Mail, &a).await, "cached");
    f.accounts
        .revoke_app_password(&login(), a_id)
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    assert!(!grant.is_alive());
    assert!(
        !f.accepted(Service::Mail, &a).await,
        "the very next attempt is refused"
    );
    assert!(f.accepted(Service::Mail, &b).await);
}}

store_test! {
async fn every_generation_bump_kills_every_older_app_password() {
    let events: [(&str, GenerationBump); 5] = [
        ("password", GenerationBump::PasswordChanged),
        ("2fa on", GenerationBump::TwoFactorOn),
        ("2fa off", GenerationBump::TwoFactorOff),
        ("restore", GenerationBump::AccessRestored),
        ("logout", GenerationBump::LogoutEverywhere),
    ];
    for (what, event) in events {
        let f = fixture().await;
        if event == GenerationBump::TwoFactorOff {
            f.accounts.set_two_factor(&login(), true).await.unwrap();
        }
        let (mail, _) = f.app_password(Service::Mail).await;
        let (disk, _) = f.app_password(Service::Disk).await;
        let grant = f.login(Service::Mail, "alice", &mail).await.unwrap();
        match event {
            GenerationBump::PasswordChanged => {
                f.accounts
                    .change_password(&login(), &Secret::from("a changed password"))
                    .await
                    .unwrap();
            }
            GenerationBump::TwoFactorOn => {
                f.accounts.set_two_factor(&login(), true).await.unwrap();
            }
            GenerationBump::TwoFactorOff => {
                f.accounts.set_two_factor(&login(), false).await.unwrap();
            }
            other => {
                f.accounts.bump_generation(&login(), other).await.unwrap();
            }
        }
        f.index.refresh_account(f.account).await.unwrap();
        assert!(!grant.is_alive(), "{what}");
        assert!(!f.accepted(Service::Mail, &mail).await, "{what}");
        assert!(!f.accepted(Service::Disk, &disk).await, "{what}");
        // A password made after the bump works.
        let (fresh, _) = f.app_password(Service::Mail).await;
        assert!(f.accepted(Service::Mail, &fresh).await, "{what}");
    }
}}

store_test! {
async fn a_password_change_with_two_factor_on_leaves_app_passwords_alive() {
    let f = fixture().await;
    f.accounts.set_two_factor(&login(), true).await.unwrap();
    let (mail, _) = f.app_password(Service::Mail).await;
    let grant = f.login(Service::Mail, "alice", &mail).await.unwrap();
    f.accounts
        .change_password(&login(), &Secret::from("a changed password"))
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    assert!(grant.is_alive());
    assert!(f.accepted(Service::Mail, &mail).await);
}}

store_test! {
async fn changes_from_another_writer_arrive_through_the_feed() {
    let f = fixture().await;
    let (mail, id) = f.app_password(Service::Mail).await;
    let grant = f.login(Service::Mail, "alice", &mail).await.unwrap();
    let cursor = f.store.latest_change().await.unwrap();
    // Another writer (here: the same store, but the index is not told).
    f.accounts.revoke_app_password(&login(), id).await.unwrap();
    assert!(grant.is_alive(), "not yet seen");
    let dead = tokio::spawn({
        let grant = grant.clone();
        async move { grant.dead().await }
    });
    let (next, count) = feed::poll_once(&f.index, cursor).await.unwrap();
    assert_eq!(count, 1);
    assert!(next > cursor);
    assert!(!grant.is_alive());
    tokio::time::timeout(Duration::from_secs(1), dead)
        .await
        .unwrap()
        .unwrap();
    assert!(!f.accepted(Service::Mail, &mail).await);
}}

store_test! {
async fn an_older_snapshot_never_replaces_a_newer_one() {
    let f = fixture().await;
    let (mail, id) = f.app_password(Service::Mail).await;
    let grant = f.login(Service::Mail, "alice", &mail).await.unwrap();
    let stale = f.index.accounts.get(&f.account).unwrap().snapshot();
    f.accounts.revoke_app_password(&login(), id).await.unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    f.index.accounts.get(&f.account).unwrap().update(stale);
    assert!(!grant.is_alive());
}}

store_test! {
async fn a_wrong_app_password_guess_runs_no_slow_hash() {
    // With the option on, a guess never reaches argon2: the hasher has no permits to give, so a
    // login that tried to hash would hang and the timeout would fire.
    let f = fixture().await;
    let index = CredentialIndex {
        hasher: PasswordHasher::new(1),
        ..CredentialIndex::new(f.store.clone(), &settings())
    };
    let _held = index.hasher.permits.clone().acquire_owned().await.unwrap();
    for guess in ["abcdefghijklmnop", "not even the right shape"] {
        let outcome = tokio::time::timeout(
            Duration::from_secs(2),
            index.authenticate(
                Service::Mail,
                Protocol::Imap,
                &Credentials::new("alice".to_owned(), Secret::from(guess)),
                &PEER.into(),
            ),
        )
        .await
        .expect("a wrong guess must not wait for the hasher");
        assert!(matches!(outcome, Err(AuthError::Rejected)));
    }
}}

store_test! {
async fn a_feed_too_far_behind_stops_the_cache_from_being_trusted() {
    let mut f = fixture().await;
    f.index = CredentialIndex::new(f.store.clone(), &settings())
        .with_feed_staleness(Duration::from_secs(10));
    let (secret, id) = f.app_password(Service::Mail).await;
    assert!(f.accepted(Service::Mail, &secret).await);
    // Revoked by another process; this index has not heard of it (no feed runs here).
    f.accounts.revoke_app_password(&login(), id).await.unwrap();
    // A feed that is up to date would bring the news within its interval: the cache stands.
    f.index.caught_up();
    assert!(
        f.accepted(Service::Mail, &secret).await,
        "fresh feed, cached login"
    );
    // A feed that has not caught up for longer than allowed: the store is asked again.
    f.index
        .caught_up_at
        .store(0, std::sync::atomic::Ordering::Relaxed);
    assert!(
        !f.accepted(Service::Mail, &secret).await,
        "stale feed, cache trusted"
    );
}}

store_test! {
async fn a_feed_that_reconnected_is_not_trusted_until_it_has_read_again() {
    let mut f = fixture().await;
    f.index = CredentialIndex::new(f.store.clone(), &settings())
        .with_feed_staleness(Duration::from_secs(10));
    let (secret, id) = f.app_password(Service::Mail).await;
    let (other, _) = f.app_password(Service::Mail).await;
    assert!(f.accepted(Service::Mail, &secret).await);
    assert!(f.accepted(Service::Mail, &other).await);
    f.accounts.revoke_app_password(&login(), id).await.unwrap();
    f.index.caught_up();
    // Within the staleness allowance, but the notifications were lost: the store decides.
    f.index.must_catch_up();
    assert!(!f.accepted(Service::Mail, &secret).await, "cache trusted while resyncing");
    assert!(f.accepted(Service::Mail, &other).await, "a live password still works");
}}

store_test! {
async fn a_limited_app_password_opens_only_from_its_networks_and_until_its_expiry() {
    let f = fixture().await;
    let limits = PasswordLimits {
        expires_at: Some(now_ms() + 400),
        networks: vec!["127.0.0.0/8".parse().unwrap()],
    };
    let made = f
        .accounts
        .create_limited_app_password(&login(), Service::Mail, "office", &limits)
        .await
        .unwrap();
    f.index.refresh_account(f.account).await.unwrap();
    let from = |ip: &str| -> Origin { ip.parse::<IpAddr>().unwrap().into() };
    let attempt = |origin: Origin| {
        let secret = made.secret.clone();
        let index = &f.index;
        async move {
            index
                .authenticate(
                    Service::Mail,
                    Protocol::Imap,
                    &Credentials::new("alice".to_owned(), secret),
                    &origin,
                )
                .await
        }
    };
    let grant = attempt(from("127.0.0.9")).await.unwrap();
    // Outside its networks, also once the login is cached.
    assert!(matches!(attempt(from("192.0.2.1")).await, Err(AuthError::Rejected)));
    // A daemon that did not say whose address: refused.
    let mut unknown = from("127.0.0.1");
    unknown.ip_known = false;
    assert!(matches!(attempt(unknown).await, Err(AuthError::Rejected)));

    // A live session ends at the expiry, without any change in the store.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(2), grant.dead())
        .await
        .expect("the session outlived its password's expiry");
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(!grant.is_alive());
    assert!(matches!(attempt(from("127.0.0.9")).await, Err(AuthError::Rejected)));
}}

#[tokio::test]
async fn an_expiry_in_the_past_is_refused() {
    let f = fixture().await;
    let limits = PasswordLimits {
        expires_at: Some(now_ms() - 1),
        networks: Vec::new(),
    };
    let refused = f
        .accounts
        .create_limited_app_password(&login(), Service::Mail, "late", &limits)
        .await;
    assert!(matches!(
        refused,
        Err(crate::credentials::accounts::AccountError::BadInput(_))
    ));
}
