//! The credential check: a cached login against an argon2id verify (what every login would cost
//! without the index), and the uncached app-password path (store lookup + digest, no slow hash).
//!
//! Prints the ratio of the two measured in this run (the machines are shared and noisy, so only
//! ratios from one run mean anything). Target: cached check at least 10 000x cheaper.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use std::hint::black_box;

use criterion::Criterion;
use portcullis::credentials::accounts::AccountService;
use portcullis::credentials::hashing::{PasswordHasher, verify_blocking};
use portcullis::credentials::index::IndexSettings;
use portcullis::credentials::{CredentialIndex, Credentials, Login, Protocol, Secret, Service};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (index, secret, hash, uncached) = rt.block_on(async {
        let store = portcullis::store::open("sqlite::memory:")
            .await
            .expect("store");
        let accounts = AccountService::new(store.clone(), PasswordHasher::new(1), None);
        let login = Login::parse("alice@example.org", None).expect("login");
        accounts
            .create_account(&login, &Secret::from("main password"))
            .await
            .expect("account");
        let hash = PasswordHasher::new(1)
            .hash(&Secret::from("main password"))
            .await
            .expect("hash");
        let secret = accounts
            .create_app_password(&login, Service::Mail, "bench")
            .await
            .expect("app password")
            .secret;
        let settings = IndexSettings {
            default_domain: Some("example.org".into()),
            cache_capacity: 1000,
            cache_idle: Duration::from_secs(600),
            hash_concurrency: 1,
        };
        let index = CredentialIndex::new(store.clone(), &settings);
        // An index whose entries expire at once measures the uncached path.
        let uncached = CredentialIndex::new(
            store,
            &IndexSettings {
                cache_idle: Duration::from_nanos(1),
                ..settings
            },
        );
        // What a client presents: built once, as a protocol machine hands it over.
        let secret = Credentials::new("alice".to_owned(), secret);
        index
            .authenticate(Service::Mail, Protocol::Imap, &secret, &PEER.into())
            .await
            .expect("warm");
        (index, secret, hash, uncached)
    });

    let mut group = c.benchmark_group("credential_check");
    group.bench_function("cached_app_password", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                index
                    .authenticate(Service::Mail, Protocol::Imap, &secret, &PEER.into())
                    .await
                    .expect("accepted"),
            )
        })
    });
    group.bench_function("uncached_app_password", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                uncached
                    .authenticate(Service::Mail, Protocol::Imap, &secret, &PEER.into())
                    .await
                    .expect("accepted"),
            )
        })
    });
    group.sample_size(20);
    group.bench_function("argon2id_verify", |b| {
        let password = Secret::from("main password");
        b.iter(|| black_box(verify_blocking(&password, &hash)))
    });
    group.finish();
}

/// The mean of a benchmark from criterion's estimates of this run, in nanoseconds.
fn mean_ns(name: &str) -> Option<f64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/criterion/credential_check")
        .join(name)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    if let (Some(cached), Some(uncached), Some(argon)) = (
        mean_ns("cached_app_password"),
        mean_ns("uncached_app_password"),
        mean_ns("argon2id_verify"),
    ) {
        println!();
        println!("| check | mean | argon2id verify / this |");
        println!("|---|---|---|");
        println!(
            "| cached app password | {:.2} us | {:.0}x |",
            cached / 1e3,
            argon / cached
        );
        println!(
            "| uncached app password (store + digest) | {:.2} us | {:.0}x |",
            uncached / 1e3,
            argon / uncached
        );
        println!("| argon2id verify | {:.2} ms | 1x |", argon / 1e6);
    }
}
