use super::*;
use crate::credentials::hashing::{app_password_digest, generate_app_password};

async fn store() -> Store {
    Store::open("sqlite::memory:").await.unwrap()
}

fn alice() -> Login {
    Login::parse("alice@example.org", None).unwrap()
}

#[tokio::test]
async fn account_lifecycle_and_generation_rules() {
    let store = store().await;
    let id = store
        .create_account(&alice(), "$argon2id$fake")
        .await
        .unwrap();
    assert!(matches!(
        store.create_account(&alice(), "x").await,
        Err(StoreError::AccountExists(_))
    ));
    let state = store.require_account(&alice()).await.unwrap();
    assert_eq!(state.id, id);
    assert_eq!(state.generation, Generation(1));
    assert!(
        state.app_passwords_only,
        "new accounts accept app passwords only"
    );
    assert!(!state.two_factor);

    // Password change with 2FA off bumps the generation.
    assert_eq!(
        store.set_password(&alice(), "h2").await.unwrap(),
        Outcome::Changed(Some(Generation(2)))
    );
    // 2FA on bumps and forces the option on; off is then refused.
    store.set_app_passwords_only(&alice(), false).await.unwrap();
    assert_eq!(
        store.set_two_factor(&alice(), true).await.unwrap(),
        Outcome::Changed(Some(Generation(3)))
    );
    assert!(
        store
            .require_account(&alice())
            .await
            .unwrap()
            .app_passwords_only
    );
    assert!(matches!(
        store.set_app_passwords_only(&alice(), false).await,
        Err(StoreError::AppPasswordsRequired(_))
    ));
    assert_eq!(
        store.set_two_factor(&alice(), true).await.unwrap(),
        Outcome::Unchanged
    );
    // Password change with 2FA on leaves the generation alone but moves the password version.
    let before = store.require_account(&alice()).await.unwrap();
    assert_eq!(
        store.set_password(&alice(), "h3").await.unwrap(),
        Outcome::Changed(None)
    );
    let after = store.require_account(&alice()).await.unwrap();
    assert_eq!(after.generation, before.generation);
    assert_eq!(after.password_version, before.password_version + 1);
    // The other bumps.
    assert_eq!(
        store.set_two_factor(&alice(), false).await.unwrap(),
        Outcome::Changed(Some(Generation(4)))
    );
    assert_eq!(
        store
            .bump_generation(&alice(), GenerationBump::AccessRestored)
            .await
            .unwrap(),
        Generation(5)
    );
    assert_eq!(
        store
            .bump_generation(&alice(), GenerationBump::LogoutEverywhere)
            .await
            .unwrap(),
        Generation(6)
    );
    assert!(matches!(
        store
            .require_account(&Login::parse("bob@example.org", None).unwrap())
            .await,
        Err(StoreError::UnknownAccount(_))
    ));
}

#[tokio::test]
async fn app_passwords_are_stored_as_digests_and_die_with_their_generation() {
    let store = store().await;
    let account = store.create_account(&alice(), "h").await.unwrap();
    let secret = generate_app_password();
    let digest = app_password_digest(&secret);
    let id = store
        .create_app_password(&alice(), Service::Mail, "Thunderbird", &digest)
        .await
        .unwrap();
    let other = store
        .create_app_password(
            &alice(),
            Service::Disk,
            "Files",
            &app_password_digest(&generate_app_password()),
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
        store.revoke_app_password(&alice(), id).await.unwrap(),
        Outcome::Changed(None)
    );
    assert_eq!(
        store.revoke_app_password(&alice(), id).await.unwrap(),
        Outcome::Unchanged
    );
    assert!(matches!(
        store
            .revoke_app_password(&alice(), AppPasswordId(999))
            .await,
        Err(StoreError::UnknownAppPassword { .. })
    ));
    let (_, live) = store.account_snapshot(account).await.unwrap().unwrap();
    assert_eq!(live, vec![other]);

    // A bump kills the rest.
    store
        .bump_generation(&alice(), GenerationBump::LogoutEverywhere)
        .await
        .unwrap();
    let (_, live) = store.account_snapshot(account).await.unwrap().unwrap();
    assert!(live.is_empty());
    let listed = store.list_app_passwords(&alice()).await.unwrap();
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
}

#[tokio::test]
async fn every_mutation_appends_to_the_change_feed_and_bumps_the_revision() {
    let store = store().await;
    let start = store.latest_change().await.unwrap();
    let account = store.create_account(&alice(), "h").await.unwrap();
    let r1 = store.require_account(&alice()).await.unwrap().revision;
    store
        .create_app_password(
            &alice(),
            Service::Mail,
            "x",
            &app_password_digest(&generate_app_password()),
        )
        .await
        .unwrap();
    store.set_two_factor(&alice(), true).await.unwrap();
    let changes = store.changes_since(start, 100).await.unwrap();
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|(_, a)| *a == account));
    assert!(changes.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        store.require_account(&alice()).await.unwrap().revision,
        r1 + 2
    );
    assert_eq!(
        store.changes_since(changes[2].0, 100).await.unwrap(),
        vec![]
    );
}

#[tokio::test]
async fn a_file_database_is_created_with_its_folder_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/dir/p.db", dir.path().display());
    {
        let store = Store::open(&url).await.unwrap();
        store.create_account(&alice(), "h").await.unwrap();
    }
    let store = Store::open(&url).await.unwrap();
    assert!(store.require_account(&alice()).await.is_ok());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    assert!(matches!(
        Store::open("postgres://x").await,
        Err(StoreError::UnsupportedUrl(_))
    ));
}
