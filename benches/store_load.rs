//! The store under load, SQLite against PostgreSQL in one run.
//!
//! 1. **Login rates**: 16 concurrent workers authenticate app-password logins of 1 000
//!    accounts through the credential index, for LOAD_SECS (default 3) per row:
//!    *cached* (every login a hit in the index's cache: what a busy node mostly serves) and
//!    *uncached* (the cache off: each login reads its app password and account from the
//!    store). SQLite is a file database (WAL, `synchronous = FULL`) as `scripts/run` makes;
//!    PostgreSQL is a private cluster on loopback. Printed as rates and as PostgreSQL/SQLite
//!    ratios.
//! 2. **The feed's cost**: 10 000 accounts on PostgreSQL, a writer making 100 changes/s
//!    (a new app password each) for LOAD_SECS x 3 seconds, first alone, then with three
//!    followers (three nodes' indexes, each holding all 10 000 accounts, each following the
//!    feed by LISTEN/NOTIFY and reloading every changed account). The difference is the feed's
//!    cost: PostgreSQL's CPU time (every server process, from /proc) and its transactions.
//!
//! The private cluster runs with `fsync = off` (a test cluster): commit costs are not
//! measured here, only reads and the feed.
//!
//! `cargo bench --bench store_load`

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::credentials::hashing::{app_password_digest, generate_app_password};
use portcullis::credentials::index::IndexSettings;
use portcullis::credentials::model::PasswordLimits;
use portcullis::credentials::{CredentialIndex, Credentials, Login, Protocol, Service};
use portcullis::store::testing::PgCluster;
use portcullis::store::{Store, open};
use support::{LoadResult, closed_loop, knob};
use tokio_util::sync::CancellationToken;

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WORKERS: usize = 16;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = knob("LOAD_SECS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("portcullis-store-load-{}", std::process::id()));
    let sqlite_url = format!("sqlite://{}/bench.db", dir.display());
    let pg_url = pg.database();

    runtime.block_on(async {
        let mut rows = Vec::new();
        for (name, url) in [("SQLite", &sqlite_url), ("PostgreSQL", &pg_url)] {
            let store = open(url).await.expect("store");
            let logins = populate(&store, 0, 1_000).await;
            let cached = login_rate(&store, &logins, true, secs).await;
            let uncached = login_rate(&store, &logins, false, secs).await;
            assert_eq!(
                (cached.failed, uncached.failed),
                (0, 0),
                "{name}: logins failed"
            );
            rows.push((name, cached, uncached));
        }
        println!("Login rates, {WORKERS} workers, 1 000 accounts, {secs} s per row");
        println!();
        println!("| store | cached logins/s | p99 ms | uncached logins/s | p99 ms |");
        println!("|---|---|---|---|---|");
        for (name, cached, uncached) in &rows {
            println!(
                "| {name} | {:.0} | {:.3} | {:.0} | {:.2} |",
                cached.rate,
                cached.percentile(99.0),
                uncached.rate,
                uncached.percentile(99.0)
            );
        }
        let ratio = |f: fn(&(&str, LoadResult, LoadResult)) -> f64| f(&rows[1]) / f(&rows[0]);
        println!(
            "| PostgreSQL / SQLite | {:.2}x | | {:.2}x | |",
            ratio(|r| r.1.rate),
            ratio(|r| r.2.rate)
        );
        println!();

        let store = open(&pg_url).await.expect("store");
        populate(&store, 1_000, 10_000).await;
        let window = Duration::from_secs(secs * 3);
        let alone = feed_cost(&pg, &pg_url, 0, window).await;
        let followed = feed_cost(&pg, &pg_url, 3, window).await;
        println!(
            "The feed's cost on PostgreSQL: 10 000 accounts, 100 changes/s for {} s",
            window.as_secs()
        );
        println!();
        println!("| followers | changes/s | server CPU ms/s | transactions/s | rows read/s |");
        println!("|---|---|---|---|---|");
        for (followers, cost) in [(0, &alone), (3, &followed)] {
            println!(
                "| {followers} | {:.0} | {:.1} | {:.0} | {:.0} |",
                cost.changes, cost.cpu_ms, cost.transactions, cost.rows_read
            );
        }
        println!(
            "| per follower | | {:.1} | {:.0} | {:.0} |",
            (followed.cpu_ms - alone.cpu_ms) / 3.0,
            (followed.transactions - alone.transactions) / 3.0,
            (followed.rows_read - alone.rows_read) / 3.0
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Accounts `from..to` (`user<n>@example.org`), each with one mail app password; what a client
/// presents for each.
async fn populate(store: &Store, from: usize, to: usize) -> Arc<Vec<Credentials>> {
    let mut tasks = Vec::new();
    let chunk = (to - from).div_ceil(8);
    for start in (from..to).step_by(chunk) {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for n in start..(start + chunk).min(to) {
                let login = Login::parse(&format!("user{n}@example.org"), None).expect("login");
                store
                    .create_account(&login, "$argon2id$unused")
                    .await
                    .expect("account");
                let (state, _) = store
                    .account_by_login(&login)
                    .await
                    .expect("read")
                    .expect("account");
                let secret = generate_app_password();
                store
                    .create_app_password(
                        &state,
                        Service::Mail,
                        "bench",
                        &app_password_digest(&secret),
                        &PasswordLimits::default(),
                    )
                    .await
                    .expect("app password");
                out.push(Credentials::new(login.to_string(), secret));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("populate"));
    }
    Arc::new(all)
}

fn index(store: &Store, cached: bool) -> CredentialIndex {
    CredentialIndex::new(
        store.clone(),
        &IndexSettings {
            default_domain: Some("example.org".into()),
            cache_capacity: 100_000,
            // Entries that expire at once: every login goes to the store.
            cache_idle: if cached {
                Duration::from_secs(600)
            } else {
                Duration::from_nanos(1)
            },
            hash_concurrency: 2,
        },
    )
}

async fn login_rate(
    store: &Store,
    logins: &Arc<Vec<Credentials>>,
    cached: bool,
    secs: u64,
) -> LoadResult {
    let index = Arc::new(index(store, cached));
    for credentials in logins.iter() {
        index
            .authenticate(Service::Mail, Protocol::Imap, credentials, &PEER.into())
            .await
            .expect("warm");
    }
    let logins = logins.clone();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    closed_loop(WORKERS, Duration::from_secs(secs), move || {
        let (index, logins, next) = (index.clone(), logins.clone(), next.clone());
        async move {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % logins.len();
            index
                .authenticate(Service::Mail, Protocol::Imap, &logins[n], &PEER.into())
                .await
                .map(drop)
                .map_err(|e| format!("{e:?}"))
        }
    })
    .await
}

struct Cost {
    changes: f64,
    cpu_ms: f64,
    transactions: f64,
    rows_read: f64,
}

/// Runs the 100 changes/s writer for `window` with `followers` feed followers, each an index
/// holding all 10 000 accounts; PostgreSQL's cost per second over the window.
async fn feed_cost(pg: &PgCluster, url: &str, followers: usize, window: Duration) -> Cost {
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..followers {
        let store = open(url).await.expect("store");
        let index = Arc::new(index(&store, true));
        // The index holds every account, so every change is one it reloads.
        for n in 0..10_000 {
            let login = Login::parse(&format!("user{n}@example.org"), None).expect("login");
            let (state, _) = store
                .account_by_login(&login)
                .await
                .expect("read")
                .expect("account");
            index.refresh_account(state.id).await.expect("load");
        }
        tasks.push(tokio::spawn(portcullis::store::feed::follow(
            index,
            Duration::from_millis(50),
            shutdown.clone(),
        )));
    }
    // Let the followers connect and settle before the window opens.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writer = open(url).await.expect("store");
    let before = server_usage(pg);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut changes = 0u64;
    while started.elapsed() < window {
        ticker.tick().await;
        let n = rand_index(changes) % 10_000;
        let login = Login::parse(&format!("user{n}@example.org"), None).expect("login");
        let (state, _) = writer
            .account_by_login(&login)
            .await
            .expect("read")
            .expect("account");
        writer
            .create_app_password(
                &state,
                Service::Mail,
                "feed",
                &app_password_digest(&generate_app_password()),
                &PasswordLimits::default(),
            )
            .await
            .expect("change");
        changes += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The last notifications are read, and the statistics flushed (at most every second),
    // before the window's usage is taken.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = server_usage(pg);
    shutdown.cancel();
    for task in tasks {
        let _ = task.await;
    }
    Cost {
        changes: changes as f64 / elapsed,
        cpu_ms: (after.0 - before.0) / elapsed,
        transactions: (after.1 - before.1) / elapsed,
        rows_read: (after.2 - before.2) / elapsed,
    }
}

/// A spread of account numbers without a random generator (golden-ratio steps).
fn rand_index(n: u64) -> usize {
    (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
}

/// PostgreSQL's CPU time so far (ms, every server process) and its committed transactions and
/// rows returned (pg_stat_database, every database).
fn server_usage(pg: &PgCluster) -> (f64, f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let mut cpu = 0.0;
    if let Some(pid) = pg.pid() {
        let mut pids = vec![pid.to_string()];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(children.split_whitespace().map(str::to_owned));
        }
        for (i, p) in pids.iter().enumerate() {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                // Fields after the command's closing parenthesis: utime, stime, cutime, cstime
                // are the 12th to 15th. The postmaster's cutime/cstime hold the backends that
                // have exited (it waited for them); the live ones count their own.
                let fields: Vec<f64> = stat
                    .rsplit_once(") ")
                    .map(|(_, rest)| {
                        rest.split_whitespace()
                            .map(|v| v.parse().unwrap_or(0.0))
                            .collect()
                    })
                    .unwrap_or_default();
                let own = if i == 0 { 11..15 } else { 11..13 };
                cpu += fields.get(own).map_or(0.0, |f| f.iter().sum::<f64>()) * 1000.0 / ticks;
            }
        }
    }
    let stats = pg
        .psql(
            "postgres",
            "SELECT SUM(xact_commit), SUM(tup_returned + tup_fetched) FROM pg_stat_database",
        )
        .unwrap_or_default();
    let mut parts = stats
        .split('|')
        .map(|v| v.trim().parse::<f64>().unwrap_or(0.0));
    (
        cpu,
        parts.next().unwrap_or(0.0),
        parts.next().unwrap_or(0.0),
    )
}
