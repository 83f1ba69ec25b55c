use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;
use crate::credentials::AuthError;
use crate::credentials::index::IndexSettings;
use crate::credentials::model::{Credentials, Protocol};

async fn service() -> (AccountService, Arc<CredentialIndex>, Login) {
    let store = crate::store::open("sqlite::memory:").await.unwrap();
    let index = Arc::new(CredentialIndex::new(
        store.clone(),
        &IndexSettings {
            default_domain: Some("example.org".into()),
            cache_capacity: 100,
            cache_idle: Duration::from_secs(60),
            hash_concurrency: 1,
        },
    ));
    let service = AccountService::new(store, PasswordHasher::new(1), Some("example.org".into()))
        .with_index(index.clone())
        .with_keys(Arc::new(Keys::random()));
    let alice = service.login("Alice").unwrap();
    service
        .create_account(&alice, &Secret::from("a long main password"))
        .await
        .unwrap();
    (service, index, alice)
}

#[tokio::test]
async fn the_rules_of_accounts() {
    let (service, _, alice) = service().await;
    assert_eq!(alice.as_str(), "alice@example.org");
    assert!(matches!(
        service
            .create_account(&alice, &Secret::from("another long password"))
            .await,
        Err(AccountError::Exists(_))
    ));
    let state = service.account(&alice).await.unwrap();
    assert_eq!(state.generation, Generation(1));
    assert!(state.app_passwords_only && !state.two_factor);

    // A password change with 2FA off bumps the generation.
    assert_eq!(
        service
            .change_password(&alice, &Secret::from("a new main password"))
            .await
            .unwrap(),
        Outcome::Changed(Some(Generation(2)))
    );
    // 2FA on bumps and forces the option on; off is then refused.
    service.set_app_passwords_only(&alice, false).await.unwrap();
    assert_eq!(
        service.set_two_factor(&alice, true).await.unwrap(),
        Outcome::Changed(Some(Generation(3)))
    );
    assert!(service.account(&alice).await.unwrap().app_passwords_only);
    assert!(matches!(
        service.set_app_passwords_only(&alice, false).await,
        Err(AccountError::AppPasswordsRequired(_))
    ));
    assert_eq!(
        service.set_two_factor(&alice, true).await.unwrap(),
        Outcome::Unchanged
    );
    // With 2FA on, a password change keeps the generation but moves the password version.
    let before = service.account(&alice).await.unwrap();
    assert_eq!(
        service
            .change_password(&alice, &Secret::from("yet another password"))
            .await
            .unwrap(),
        Outcome::Changed(None)
    );
    let after = service.account(&alice).await.unwrap();
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.password_version, before.password_version + 1);
    // 2FA off bumps again; restore and log out everywhere bump.
    assert_eq!(
        service.set_two_factor(&alice, false).await.unwrap(),
        Outcome::Changed(Some(Generation(4)))
    );
    for (event, generation) in [
        (GenerationBump::AccessRestored, 5),
        (GenerationBump::LogoutEverywhere, 6),
    ] {
        assert_eq!(
            service.bump_generation(&alice, event).await.unwrap(),
            Generation(generation)
        );
    }
    let bob = service.login("bob").unwrap();
    assert!(matches!(
        service.set_two_factor(&bob, true).await,
        Err(AccountError::UnknownAccount(_))
    ));
}

#[tokio::test]
async fn app_passwords_need_the_option_and_a_good_name() {
    let (service, _, alice) = service().await;
    let made = service
        .create_app_password(&alice, Service::Mail, "  Thunderbird at home ")
        .await
        .unwrap();
    assert_eq!(made.secret.expose().len(), 16);
    let (_, list) = service.list_app_passwords(&alice).await.unwrap();
    assert_eq!(list[0].name, "Thunderbird at home");
    assert!(list[0].alive);
    for bad in ["", "   ", &"x".repeat(101), "tab\there"] {
        assert!(matches!(
            service
                .create_app_password(&alice, Service::Mail, bad)
                .await,
            Err(AccountError::BadName)
        ));
    }
    service.set_app_passwords_only(&alice, false).await.unwrap();
    assert!(matches!(
        service
            .create_app_password(&alice, Service::Disk, "Files")
            .await,
        Err(AccountError::AppPasswordsOff(_))
    ));
    assert_eq!(
        service.revoke_app_password(&alice, made.id).await.unwrap(),
        Outcome::Changed(None)
    );
    assert_eq!(
        service.revoke_app_password(&alice, made.id).await.unwrap(),
        Outcome::Unchanged
    );
    assert!(matches!(
        service
            .revoke_app_password(&alice, AppPasswordId(999))
            .await,
        Err(AccountError::UnknownAppPassword { .. })
    ));
}

#[test]
fn password_rules() {
    for weak in [
        "short",
        "123456789",
        "1234567890",
        "Password1234",
        "aaaaaaaaaaaaaaaa",
        "QWERTYUIOP",
    ] {
        assert!(
            matches!(
                check_password(&Secret::from(weak)),
                Err(AccountError::WeakPassword)
            ),
            "{weak}"
        );
    }
    assert!(check_password(&Secret::from("correct horse battery")).is_ok());
    assert!(matches!(
        check_password(&Secret::from("x".repeat(2000))),
        Err(AccountError::PasswordTooLong)
    ));
}

#[tokio::test]
async fn a_change_made_here_reaches_this_process_index_at_once() {
    // No change feed runs here: only the service's own refresh can make these hold.
    let (service, index, alice) = service().await;
    let made = service
        .create_app_password(&alice, Service::Mail, "phone")
        .await
        .unwrap();
    let credentials = Credentials::new("alice".into(), made.secret.clone());
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST).into();
    let grant = index
        .authenticate(Service::Mail, Protocol::Imap, &credentials, &peer)
        .await
        .unwrap();
    assert!(grant.is_alive());
    service.revoke_app_password(&alice, made.id).await.unwrap();
    assert!(
        !grant.is_alive(),
        "the live grant still stood after the revocation"
    );
    assert!(matches!(
        index
            .authenticate(Service::Mail, Protocol::Imap, &credentials, &peer)
            .await,
        Err(AuthError::Rejected)
    ));
    // A generation bump likewise.
    let other = service
        .create_app_password(&alice, Service::Mail, "laptop")
        .await
        .unwrap();
    let credentials = Credentials::new("alice".into(), other.secret.clone());
    let grant = index
        .authenticate(Service::Mail, Protocol::Imap, &credentials, &peer)
        .await
        .unwrap();
    service
        .bump_generation(&alice, GenerationBump::LogoutEverywhere)
        .await
        .unwrap();
    assert!(!grant.is_alive());
}

#[tokio::test]
async fn a_decision_is_made_again_when_the_account_changed_under_it() {
    let (service, _, alice) = service().await;
    // A stale read (as another writer would leave it) is refused by the store...
    let stale = service.account(&alice).await.unwrap();
    service.set_two_factor(&alice, true).await.unwrap();
    assert!(matches!(
        service
            .store
            .apply_change(&stale, &option_change(&stale, false).unwrap().unwrap())
            .await,
        Err(StoreError::Conflict(_))
    ));
    // ...so the option cannot be turned off behind 2FA's back.
    assert!(service.account(&alice).await.unwrap().app_passwords_only);
}
