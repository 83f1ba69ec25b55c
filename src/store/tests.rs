//! The SQLite store's primitives. The rules that decide them are the account service's
//! (`credentials::accounts`), tested there.

use super::*;
use crate::credentials::hashing::{app_password_digest, generate_app_password};
use crate::store::testing::store_test;

async fn store() -> SqlStore {
    SqlStore::open(&crate::store::testing::store_url())
        .await
        .unwrap()
}

fn alice() -> Login {
    Login::parse("alice@example.org", None).unwrap()
}

async fn state(store: &SqlStore) -> AccountState {
    store.account_by_login(&alice()).await.unwrap().unwrap().0
}

store_test! {
async fn accounts_are_created_once_with_the_defaults() {
    let store = store().await;
    let id = store
        .create_account(&alice(), "$argon2id$fake")
        .await
        .unwrap();
    assert!(matches!(
        store.create_account(&alice(), "x").await,
        Err(StoreError::AccountExists(_))
    ));
    let (account, hash) = store.account_by_login(&alice()).await.unwrap().unwrap();
    assert_eq!((account.id, hash.as_str()), (id, "$argon2id$fake"));
    assert_eq!(account.generation, Generation(1));
    assert!(account.app_passwords_only && !account.two_factor);
}}

store_test! {
async fn a_change_applies_whole_and_only_to_the_state_it_was_decided_on() {
    let store = store().await;
    store.create_account(&alice(), "h1").await.unwrap();
    let before = state(&store).await;
    let change = AccountChange {
        password_hash: Some("h2".into()),
        two_factor: Some(true),
        app_passwords_only: Some(true),
        bump: Some(GenerationBump::TwoFactorOn),
        kind: "test",
        totp: None,
        recovery_codes: None,
        blocked: None,
    };
    assert_eq!(
        store.apply_change(&before, &change).await.unwrap(),
        Generation(2)
    );
    let (after, hash) = store.account_by_login(&alice()).await.unwrap().unwrap();
    assert_eq!(hash, "h2");
    assert!(after.two_factor);
    assert_eq!(after.password_version, before.password_version + 1);
    assert_eq!(after.generation, Generation(2));
    // The same decision on the old state is refused whole: nothing of it is applied again.
    assert!(matches!(
        store.apply_change(&before, &change).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(state(&store).await.generation, Generation(2));
    assert!(matches!(
        store
            .create_app_password(&before, Service::Mail, "x", "digest", &PasswordLimits::default())
            .await,
        Err(StoreError::Conflict(_))
    ));
}}

store_test! {
async fn app_passwords_are_stored_as_digests_and_die_with_their_generation() {
    let store = store().await;
    let account = store.create_account(&alice(), "h").await.unwrap();
    let secret = generate_app_password();
    let digest = app_password_digest(&secret);
    let id = store
        .create_app_password(&state(&store).await, Service::Mail, "Thunderbird", &digest, &PasswordLimits::default())
        .await
        .unwrap();
    let other = store
        .create_app_password(
            &state(&store).await,
            Service::Disk,
            "Files",
            &app_password_digest(&generate_app_password()), &PasswordLimits::default(),
        )
        .await
        .unwrap();

    let record = store
        .app_password_by_digest(&digest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.id, record.account_id, record.service),
        (id, account, Service::Mail)
    );
    let (_, live) = store.account_snapshot(account).await.unwrap().unwrap();
    assert_eq!(live.len(), 2);

    // Revoking one leaves the other.
    assert_eq!(
        store.revoke_app_password(account, id).await.unwrap(),
        Revocation::Revoked
    );
    assert_eq!(
        store.revoke_app_password(account, id).await.unwrap(),
        Revocation::AlreadyRevoked
    );
    assert_eq!(
        store
            .revoke_app_password(account, AppPasswordId(999))
            .await
            .unwrap(),
        Revocation::Unknown
    );
    let (_, live) = store.account_snapshot(account).await.unwrap().unwrap();
    assert_eq!(live, vec![(other, PasswordLimits::default())]);

    // A bump kills the rest.
    let change = AccountChange {
        bump: Some(GenerationBump::LogoutEverywhere),
        kind: "test",
        ..AccountChange::default()
    };
    store
        .apply_change(&state(&store).await, &change)
        .await
        .unwrap();
    let (_, live) = store.account_snapshot(account).await.unwrap().unwrap();
    assert!(live.is_empty());
    let listed = store
        .list_app_passwords(&state(&store).await)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|p| !p.alive));
    assert_eq!(listed[0].name, "Files");

    // The secret itself is nowhere in the database.
    let rows: Vec<String> = sqlx::query_scalar("SELECT digest FROM app_passwords")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    let text = std::str::from_utf8(secret.expose()).unwrap();
    assert!(rows.iter().all(|d| !d.contains(text)));
}}

store_test! {
async fn every_write_appends_to_the_change_feed_and_bumps_the_revision() {
    let store = store().await;
    let start = store.latest_change().await.unwrap();
    let account = store.create_account(&alice(), "h").await.unwrap();
    let r1 = state(&store).await.revision;
    store
        .create_app_password(
            &state(&store).await,
            Service::Mail,
            "x",
            &app_password_digest(&generate_app_password()), &PasswordLimits::default(),
        )
        .await
        .unwrap();
    let change = AccountChange {
        two_factor: Some(true),
        kind: "test",
        ..AccountChange::default()
    };
    store
        .apply_change(&state(&store).await, &change)
        .await
        .unwrap();
    let changes = store.changes_since(start, 100).await.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|(_, a, _)| *a == account));
    assert!(changes.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(state(&store).await.revision, r1 + 2);
    assert_eq!(
        store.changes_since(changes[2].0, 100).await.unwrap(),
        vec![]
    );
}}

#[tokio::test]
async fn a_file_database_is_created_with_its_folder_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/dir/p.db", dir.path().display());
    {
        let store = SqlStore::open(&url).await.unwrap();
        store.create_account(&alice(), "h").await.unwrap();
    }
    let store = SqlStore::open(&url).await.unwrap();
    assert!(store.account_by_login(&alice()).await.unwrap().is_some());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(matches!(
        open("mysql://x").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}

#[tokio::test]
async fn an_installation_is_copied_from_sqlite_to_postgresql_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let source = SqlStore::open(&format!("sqlite://{}/p.db", dir.path().display()))
        .await
        .unwrap();
    let id = source.create_account(&alice(), "h").await.unwrap();
    let secret = generate_app_password();
    let account = state(&source).await;
    let ap = source
        .create_app_password(
            &account,
            Service::Mail,
            "phone",
            &app_password_digest(&secret),
            &PasswordLimits::default(),
        )
        .await
        .unwrap();
    source.revoke_app_password(id, ap).await.unwrap();
    let second = generate_app_password();
    source
        .create_app_password(
            &state(&source).await,
            Service::Disk,
            "laptop",
            &app_password_digest(&second),
            &PasswordLimits::default(),
        )
        .await
        .unwrap();
    source
        .create_ticket("digest", &alice(), Service::Xmpp, now_ms() + 60_000)
        .await
        .unwrap();
    let cursor = source.latest_change().await.unwrap();

    let target = SqlStore::open(&crate::store::testing::PgCluster::shared().database())
        .await
        .unwrap();
    assert_eq!(target.dialect(), Dialect::Postgres);
    let report = copy::copy(&source, &target).await.unwrap();
    assert!(report.contains(&("app_passwords", 2)), "{report:?}");
    assert!(copy::up_to_date(&target).await.unwrap());

    // Everything reads back the same, ids kept.
    let copied = state(&target).await;
    assert_eq!(copied, state(&source).await);
    assert_eq!(
        target.list_app_passwords(&copied).await.unwrap(),
        source.list_app_passwords(&copied).await.unwrap()
    );
    let found = target
        .app_password_by_digest(&app_password_digest(&second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((found.service, found.revoked), (Service::Disk, false));
    assert_eq!(
        target.take_ticket("digest", now_ms()).await.unwrap(),
        Some((alice(), Service::Xmpp))
    );
    // The feed goes on after the copied changes, and new rows get new ids.
    assert_eq!(target.latest_change().await.unwrap(), cursor);
    let bob = Login::parse("bob@example.org", None).unwrap();
    let bob_id = target.create_account(&bob, "h").await.unwrap();
    assert!(bob_id.0 > id.0);
    assert_eq!(
        target
            .changes_since(cursor, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, account, _)| (id, account))
            .collect::<Vec<_>>(),
        vec![(cursor + 1, bob_id)]
    );
    // A store that holds accounts is not a target.
    assert!(matches!(
        copy::copy(&source, &target).await,
        Err(StoreError::Corrupt(_))
    ));
}

store_test! {
async fn an_app_password_keeps_its_expiry_and_networks() {
    let store = store().await;
    let account = store.create_account(&alice(), "h").await.unwrap();
    let limits = PasswordLimits::parse(
        Some("2099-12-31T23:00:00Z"),
        &["192.0.2.0/24", "2001:db8::/48"],
        now_ms(),
    )
    .unwrap();
    let id = store
        .create_app_password(
            &state(&store).await,
            Service::Mail,
            "office",
            &app_password_digest(&generate_app_password()),
            &limits,
        )
        .await
        .unwrap();
    let (_, live) = store.account_snapshot(account).await.unwrap().unwrap();
    assert_eq!(live, vec![(id, limits.clone())]);
    let listed = store.list_app_passwords(&state(&store).await).await.unwrap();
    assert_eq!(listed[0].limits, limits);
    assert!(listed[0].alive);

    // Listed as dead once past its expiry.
    let soon = PasswordLimits {
        expires_at: Some(now_ms() + 50),
        networks: Vec::new(),
    };
    store
        .create_app_password(
            &state(&store).await,
            Service::Mail,
            "brief",
            &app_password_digest(&generate_app_password()),
            &soon,
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let listed = store.list_app_passwords(&state(&store).await).await.unwrap();
    assert_eq!(listed[0].name, "brief");
    assert!(!listed[0].alive);
}}
