use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;
use crate::credentials::AuthError;
use crate::credentials::index::IndexSettings;
use crate::credentials::model::{Credentials, Protocol};
use crate::store::testing::store_test;

async fn service() -> (AccountService, Arc<CredentialIndex>, Login) {
    let store = crate::store::open(&crate::store::testing::store_url())
        .await
        .unwrap();
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

store_test! {
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
}}

store_test! {
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
}}

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

store_test! {
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
}}

store_test! {
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
}}

fn now_secs() -> u64 {
    u64::try_from(crate::credentials::model::now_ms() / 1000).unwrap()
}

store_test! {
async fn two_factor_codes_are_single_use_within_one_step_of_drift() {
    let (service, _, alice) = service().await;
    let account = service.account(&alice).await.unwrap();
    let enrolment = service.begin_two_factor(&account).unwrap();
    let seed = String::from_utf8(enrolment.secret.expose().to_vec()).unwrap();
    assert!(String::from_utf8_lossy(enrolment.uri.expose()).starts_with("otpauth://totp/"));
    assert!(enrolment.qr_svg.contains("<svg"));
    // Nothing changes before a right code.
    assert!(matches!(
        service
            .enable_two_factor(&alice, &enrolment.token, "12345")
            .await,
        Err(AccountError::WrongCode)
    ));
    assert!(!service.account(&alice).await.unwrap().two_factor);
    // Another account's token does not enrol this one.
    let bob = service.login("bob").unwrap();
    service
        .create_account(&bob, &Secret::from("bob's long password"))
        .await
        .unwrap();
    let now = now_secs();
    let code = code_at(&seed, now).unwrap();
    assert!(matches!(
        service
            .enable_two_factor(&bob, &enrolment.token, &code)
            .await,
        Err(AccountError::EnrolmentExpired)
    ));
    let on = service
        .enable_two_factor(&alice, &enrolment.token, &code)
        .await
        .unwrap();
    assert_eq!(on.recovery_codes.len(), RECOVERY_CODES);
    let account = service.account(&alice).await.unwrap();
    assert!(account.two_factor && account.app_passwords_only);
    assert_eq!(account.generation, Generation(2));
    // The enrolling code, a code two steps away, and a wrong code are refused.
    for refused in [
        code.clone(),
        code_at(&seed, now + 90).unwrap(),
        code_at(&seed, now.saturating_sub(90)).unwrap(),
        "000000".into(),
    ] {
        if refused == code_at(&seed, now + 30).unwrap() {
            continue;
        }
        assert!(
            !service
                .verify_second_factor(&account, &refused)
                .await
                .unwrap(),
            "{refused}"
        );
    }
    // The next step's code (one step of drift) once, not twice.
    let next = code_at(&seed, now + 30).unwrap();
    assert!(service.verify_second_factor(&account, &next).await.unwrap());
    assert!(!service.verify_second_factor(&account, &next).await.unwrap());
    // A recovery code once, however typed.
    let recovery = String::from_utf8(on.recovery_codes[0].expose().to_vec()).unwrap();
    let typed = recovery.to_uppercase().replace('-', " ");
    assert!(
        service
            .verify_second_factor(&account, &typed)
            .await
            .unwrap()
    );
    assert!(
        !service
            .verify_second_factor(&account, &recovery)
            .await
            .unwrap()
    );
    assert_eq!(
        service.recovery_codes_left(&account).await.unwrap(),
        i64::try_from(RECOVERY_CODES).unwrap() - 1
    );
    // Turning 2FA off takes a code and removes the seed and the codes.
    assert!(matches!(
        service.disable_two_factor(&alice, "000000").await,
        Err(AccountError::WrongCode)
    ));
    let second = String::from_utf8(on.recovery_codes[1].expose().to_vec()).unwrap();
    assert_eq!(
        service.disable_two_factor(&alice, &second).await.unwrap(),
        Outcome::Changed(Some(Generation(3)))
    );
    let account = service.account(&alice).await.unwrap();
    assert!(!account.two_factor);
    assert_eq!(service.recovery_codes_left(&account).await.unwrap(), 0);
    let third = String::from_utf8(on.recovery_codes[2].expose().to_vec()).unwrap();
    assert!(
        !service
            .verify_second_factor(&account, &third)
            .await
            .unwrap()
    );
}}

store_test! {
async fn the_seed_is_sealed_for_its_account_and_the_sign_in_token_for_its_password() {
    let (service, _, alice) = service().await;
    let (enrolment, _) = service.enable_two_factor_for(&alice).await.unwrap();
    let account = service.account(&alice).await.unwrap();
    let stored = service
        .store
        .second_factor(account.id)
        .await
        .unwrap()
        .unwrap();
    let seed = String::from_utf8(enrolment.secret.expose().to_vec()).unwrap();
    assert!(!stored.sealed_seed.contains(&seed));
    // Another deployment's key does not open it.
    let other = service.clone().with_keys(Arc::new(Keys::random()));
    let code = code_at(&seed, now_secs()).unwrap();
    assert!(!other.verify_second_factor(&account, &code).await.unwrap());
    // A second-step token dies with the password it was issued for.
    let token = service.second_step_token(&account, true).unwrap();
    service
        .change_password(&alice, &Secret::from("another long password"))
        .await
        .unwrap();
    assert!(matches!(
        service.second_step(&token, &code).await,
        Err(AccountError::BadCredentials)
    ));
    let account = service.account(&alice).await.unwrap();
    let token = service.second_step_token(&account, false).unwrap();
    let (signed_in, remember) = service.second_step(&token, &code).await.unwrap();
    assert_eq!(signed_in.id, account.id);
    assert!(!remember);
}}

store_test! {
async fn restoring_access_needs_the_registered_address_or_the_answer_and_ends_everything() {
    let (service, _, alice) = service().await;
    let account = service.account(&alice).await.unwrap();
    // Confirming an email: stored only once its code comes back.
    let sent = service
        .start_confirm(&account, Channel::Email, " alice@Example.NET ")
        .await
        .unwrap();
    assert_eq!(sent.target, "alice@example.net");
    assert_eq!(service.profile(&account).await.unwrap().email, None);
    assert!(matches!(
        service
            .finish_confirm(&account, Channel::Email, "000000")
            .await,
        Err(AccountError::WrongCode)
    ));
    let code = String::from_utf8(sent.code.expose().to_vec()).unwrap();
    service
        .finish_confirm(&account, Channel::Email, &code)
        .await
        .unwrap();
    // Used up.
    assert!(matches!(
        service
            .finish_confirm(&account, Channel::Email, &code)
            .await,
        Err(AccountError::WrongCode)
    ));
    assert_eq!(
        service.profile(&account).await.unwrap().email.as_deref(),
        Some("alice@example.net")
    );
    // No code for another address or another account.
    for (login, address) in [
        ("alice", "mallory@example.net"),
        ("nobody", "alice@example.net"),
    ] {
        assert!(
            service
                .start_restore(login, Channel::Email, address)
                .await
                .unwrap()
                .is_none()
        );
    }
    let sent = service
        .start_restore("Alice", Channel::Email, "ALICE@example.net")
        .await
        .unwrap()
        .unwrap();
    let code = String::from_utf8(sent.code.expose().to_vec()).unwrap();
    let session = service
        .open_web_session(&account, true, "127.0.0.1", "test")
        .await
        .unwrap();
    // A weak new password is refused before the code is spent.
    assert!(matches!(
        service
            .restore_with_code("alice", Channel::Email, &code, &Secret::from("short"))
            .await,
        Err(AccountError::WeakPassword)
    ));
    service
        .restore_with_code(
            "alice",
            Channel::Email,
            &code,
            &Secret::from("a restored long password"),
        )
        .await
        .unwrap();
    let after = service.account(&alice).await.unwrap();
    assert_eq!(after.generation.0, account.generation.0 + 1);
    assert!(service.web_session(&session.token).await.unwrap().is_none());
    service
        .verify_main_password("alice", &Secret::from("a restored long password"))
        .await
        .unwrap();

    // The question: a decoy, stable, for accounts without one; case and spaces ignored.
    let decoy = service.restore_question("nobody").await.unwrap();
    assert_eq!(decoy, service.restore_question("nobody").await.unwrap());
    assert!(QUESTIONS.contains(&decoy.as_str()));
    assert!(matches!(
        service
            .set_question(&after, "What is your favourite colour?", "blue")
            .await,
        Err(AccountError::BadInput(_))
    ));
    service
        .set_question(&after, QUESTIONS[2], "Hill Top School")
        .await
        .unwrap();
    assert_eq!(
        service.restore_question("alice").await.unwrap(),
        QUESTIONS[2]
    );
    let new = Secret::from("restored by the answer");
    for wrong in [("alice", "Hill Top"), ("nobody", "Hill Top School")] {
        assert!(matches!(
            service.restore_with_answer(wrong.0, wrong.1, &new).await,
            Err(AccountError::WrongCode)
        ));
    }
    service
        .restore_with_answer("alice", " hilltop  SCHOOL ", &new)
        .await
        .unwrap();
    assert_eq!(
        service.account(&alice).await.unwrap().generation.0,
        after.generation.0 + 1
    );
}}

#[test]
fn phones_and_emails_are_checked_and_made_canonical() {
    assert_eq!(
        Channel::Phone.normalize("+44 (20) 7946-0958").unwrap(),
        "+442079460958"
    );
    for bad in ["07946 0958", "+12", "+44 20 7946 0958 1234 5678", "+44abc"] {
        assert!(Channel::Phone.normalize(bad).is_err(), "{bad}");
    }
    for bad in [
        "alice",
        "alice@",
        "@example.org",
        "a b@example.org",
        "alice@localhost",
    ] {
        assert!(Channel::Email.normalize(bad).is_err(), "{bad}");
    }
}

/// TXT records served from memory (the real resolver is tested against a real DNS server in
/// tests/domains.rs).
struct Txt(std::sync::Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl crate::dns::TxtLookup for Txt {
    async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        let records = self.0.lock().map_err(|e| e.to_string())?;
        Ok(records
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect())
    }
}

/// A service hosting domains: platform accounts owner, helper and stranger in example.org, and
/// shop.example confirmed for owner.
async fn hosting() -> (AccountService, Arc<CredentialIndex>, AccountState) {
    let (service, index, _) = service().await;
    let txt = Arc::new(Txt(std::sync::Mutex::new(Vec::new())));
    let service = service
        .with_domains(
            vec!["example.org".into()],
            Vec::new(),
            Duration::from_secs(3600),
        )
        .with_dns(txt.clone());
    for login in ["owner", "helper", "stranger"] {
        service
            .create_account(
                &service.login(login).unwrap(),
                &Secret::from("a long main password"),
            )
            .await
            .unwrap();
    }
    let owner = service
        .account(&service.login("owner").unwrap())
        .await
        .unwrap();
    let view = service
        .connect_domain(&owner, "shop.example")
        .await
        .unwrap();
    txt.0
        .lock()
        .unwrap()
        .push((view.challenge.name.clone(), view.challenge.value.clone()));
    service
        .confirm_domain(&owner, "shop.example")
        .await
        .unwrap();
    (service, index, owner)
}

store_test! {
async fn who_may_do_what_with_a_domain() {
    let (service, _, owner) = hosting().await;
    let account = |login: &'static str| {
        let service = service.clone();
        async move {
            service
                .account(&service.login(login).unwrap())
                .await
                .unwrap()
        }
    };
    let owner_actor = Actor::Account(owner.clone());
    let password = Secret::from("anna long password");
    let anna = service
        .create_mailbox(&owner_actor, "shop.example", "anna", &password, "Anna", "")
        .await
        .unwrap();
    assert_eq!(anna.login.as_str(), "anna@shop.example");
    for bad in [
        "../etc",
        ".hidden",
        "a/b",
        "semi;colon",
        "x".repeat(65).as_str(),
    ] {
        assert!(
            service
                .create_mailbox(&owner_actor, "shop.example", bad, &password, "", "")
                .await
                .is_err(),
            "{bad}"
        );
    }
    assert!(anna.domain_id.is_some());
    // A mailbox signs in for itself, but manages no domain.
    let refused = service.domains(&anna).await.unwrap_err().to_string();
    assert!(
        refused.contains("a domain is managed from a platform account"),
        "{refused}"
    );
    assert!(
        service
            .connect_domain(&anna, "other.example")
            .await
            .is_err()
    );
    // An account that is neither owner nor administrator sees nothing of it.
    let stranger = Actor::Account(account("stranger").await);
    assert!(service.mailboxes(&stranger, "shop.example").await.is_err());
    // An additional administrator manages mailboxes, and nothing that is the owner's.
    service
        .set_domain_admin(&owner_actor, "shop.example", "helper", true)
        .await
        .unwrap();
    let helper = Actor::Account(account("helper").await);
    assert_eq!(
        service
            .mailboxes(&helper, "shop.example")
            .await
            .unwrap()
            .len(),
        1
    );
    service
        .block_mailbox(&helper, "shop.example", "anna", true)
        .await
        .unwrap();
    for refused in [
        service
            .disconnect_domain(&helper, "shop.example")
            .await
            .err(),
        service
            .set_domain_admin(&helper, "shop.example", "stranger", true)
            .await
            .err(),
        service
            .create_domain_token(&helper, "shop.example", "script")
            .await
            .err(),
    ] {
        assert!(refused.is_some());
    }
    // A token manages its own domain's mailboxes only, until it is revoked.
    let (id, token) = service
        .create_domain_token(&owner_actor, "shop.example", "script")
        .await
        .unwrap();
    let actor = service
        .token_actor(&token, "192.0.2.1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        service
            .mailboxes(&actor, "shop.example")
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        service
            .disconnect_domain(&actor, "shop.example")
            .await
            .is_err()
    );
    assert!(service.mailboxes(&actor, "other.example").await.is_err());
    let listed = service
        .domain_tokens(&owner_actor, "shop.example")
        .await
        .unwrap();
    assert_eq!(listed[0].last_used_ip.as_deref(), Some("192.0.2.1"));
    service
        .revoke_domain_token(&owner_actor, "shop.example", id)
        .await
        .unwrap();
    assert!(
        service
            .token_actor(&token, "192.0.2.1")
            .await
            .unwrap()
            .is_none()
    );
    // An app password is no token, and a token is no password.
    assert!(
        service
            .token_actor(&Secret::from("abcdabcdabcdabcd"), "192.0.2.1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        service
            .verify_main_password("anna@shop.example", &token)
            .await
            .is_err()
    );
}}

store_test! {
async fn an_unconfirmed_claim_lapses() {
    let (service, _, _) = service().await;
    let service = service.with_domains(vec!["example.org".into()], Vec::new(), Duration::ZERO);
    let owner = service
        .account(&service.login("alice").unwrap())
        .await
        .unwrap();
    let first = service
        .connect_domain(&owner, "late.example")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = service
        .connect_domain(&owner, "late.example")
        .await
        .unwrap();
    assert_ne!(
        first.record.token, second.record.token,
        "the old claim did not lapse"
    );
}}

store_test! {
async fn blocked_and_deleted_mailboxes_log_in_nowhere_and_their_grants_die() {
    let (service, index, owner) = hosting().await;
    let owner = Actor::Account(owner);
    let anna = service
        .create_mailbox(
            &owner,
            "shop.example",
            "anna",
            &Secret::from("anna long password"),
            "",
            "",
        )
        .await
        .unwrap();
    let made = service
        .create_app_password(&anna.login, Service::Mail, "phone")
        .await
        .unwrap();
    let credentials = Credentials::new("anna@shop.example".into(), made.secret.clone());
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST).into();
    let grant = index
        .authenticate(Service::Mail, Protocol::Imap, &credentials, &peer)
        .await
        .unwrap();
    service
        .block_mailbox(&owner, "shop.example", "anna", true)
        .await
        .unwrap();
    assert!(!grant.is_alive());
    assert!(
        service
            .verify_main_password("anna@shop.example", &Secret::from("anna long password"))
            .await
            .is_err()
    );
    service
        .block_mailbox(&owner, "shop.example", "anna", false)
        .await
        .unwrap();
    let made = service
        .create_app_password(&anna.login, Service::Mail, "laptop")
        .await
        .unwrap();
    let credentials = Credentials::new("anna@shop.example".into(), made.secret.clone());
    let grant = index
        .authenticate(Service::Mail, Protocol::Imap, &credentials, &peer)
        .await
        .unwrap();
    assert_eq!(
        service
            .delete_mailbox(&owner, "shop.example", "anna")
            .await
            .unwrap(),
        None
    );
    assert!(!grant.is_alive());
    assert!(matches!(
        index
            .authenticate(Service::Mail, Protocol::Imap, &credentials, &peer)
            .await,
        Err(AuthError::Rejected)
    ));
    // Now the domain may go.
    service
        .disconnect_domain(&owner, "shop.example")
        .await
        .unwrap();
}}
