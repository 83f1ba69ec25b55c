//! The change feed: how a running gateway learns what other processes and nodes wrote.
//!
//! Every mutation appends a row to `changes` in its own transaction, with an id taken in commit
//! order (migration 0007), so a cursor (the last id seen) never skips a change. The gateway
//! reads the rows after its cursor; for each changed account it holds in memory, it reloads the
//! account, which refuses dead credentials from then on and wakes the sessions relaying on them.
//!
//! When to read: on SQLite, every `feed_interval_ms` (no notifications cross processes; an
//! indexed range read every 50 ms by default costs next to nothing). On PostgreSQL, as soon as
//! a change commits: a listener task holds a `LISTEN` connection and wakes the reader on each
//! notification, and after every reconnection (notifications sent while it was away are lost,
//! the cursor is not; until that read has caught up, the index checks logins against the store). A read every [`SAFETY_NET`] catches anything else. Whichever way, the
//! index only trusts its cache while reads succeed ([`CredentialIndex::caught_up`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::credentials::index::CredentialIndex;
use crate::store::dialect::CHANGES_CHANNEL;

/// Rows read per poll; a burst larger than this is drained over consecutive polls without
/// waiting.
const BATCH: i64 = 1000;

/// With notifications, the feed still reads this often (and on SQLite, every interval).
pub const SAFETY_NET: Duration = Duration::from_secs(1);

/// Follows the feed from the newest change on until `shutdown`. Store errors are logged and
/// retried at the next tick.
pub async fn follow(index: Arc<CredentialIndex>, interval: Duration, shutdown: CancellationToken) {
    let wake = Arc::new(Notify::new());
    let listening = index.store().notifications_url().map(|url| {
        tokio::spawn(listen(
            url.to_owned(),
            index.clone(),
            wake.clone(),
            interval,
            shutdown.clone(),
        ))
    });
    // Start after the newest change: everything older is already in what the index loads.
    // A store that cannot be read yet is retried, never given up on.
    let mut cursor = loop {
        match index.store().latest_change().await {
            Ok(cursor) => {
                index.caught_up();
                break cursor;
            }
            Err(e) => {
                tracing::warn!(error = %e, "change feed cannot start yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        }
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = ticker.tick() => {
                // With a listener the ticks only keep the safety net.
                if listening.is_some() && last_read.elapsed() < SAFETY_NET {
                    continue;
                }
            }
        }
        last_read = Instant::now();
        loop {
            match poll_once(&index, cursor).await {
                Ok((next, count)) => {
                    cursor = next;
                    if count < BATCH {
                        index.caught_up();
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "change feed poll failed; retrying");
                    break;
                }
            }
        }
    }
    if let Some(task) = listening {
        let _ = task.await;
    }
}

/// Holds a `LISTEN` connection to a PostgreSQL store and wakes the feed reader for every
/// committed change and after every (re)connection; a lost connection is retried every
/// `retry` until `shutdown`.
async fn listen(
    url: String,
    index: Arc<CredentialIndex>,
    wake: Arc<Notify>,
    retry: Duration,
    shutdown: CancellationToken,
) {
    let mut listener: Option<PgListener> = None;
    let mut first = true;
    loop {
        let Some(active) = listener.as_mut() else {
            let connected = async {
                let mut l = PgListener::connect(&url).await?;
                l.listen(CHANGES_CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = connected => match result {
                    Ok(l) => {
                        tracing::info!("change feed listening for notifications");
                        listener = Some(l);
                        if !first {
                            // Notifications sent while away are lost: no cached login until
                            // the read this wakes has caught up from the cursor.
                            index.must_catch_up();
                        }
                        first = false;
                        // What committed before LISTEN took effect is read now.
                        wake.notify_one();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed cannot listen; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(retry) => {}
                        }
                    }
                },
            }
            continue;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = active.try_recv() => match received {
                Ok(Some(_)) => {
                    // One read serves every notification already buffered.
                    while active.next_buffered().is_some() {}
                    wake.notify_one();
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("change feed lost its notification connection; reconnecting");
                    listener = None;
                    wake.notify_one();
                }
            },
        }
    }
}

/// Applies the changes after `cursor`; returns the new cursor and how many rows were read.
pub async fn poll_once(
    index: &CredentialIndex,
    cursor: i64,
) -> Result<(i64, i64), crate::store::StoreError> {
    let changes = index.store().changes_since(cursor, BATCH).await?;
    let count = i64::try_from(changes.len()).unwrap_or(BATCH);
    let mut next = cursor;
    let mut seen = std::collections::HashSet::new();
    let newest = changes.last().map(|&(_, _, at)| at);
    for (id, account, _) in changes {
        if seen.insert(account) && index.knows(account) {
            // A failed reload leaves the cursor before this change, so the next poll retries it.
            index.refresh_account(account).await?;
            tracing::debug!(
                account = account.0,
                change = id,
                "account reloaded from feed"
            );
        }
        next = id;
    }
    if let Some(at) = newest {
        let lag = crate::credentials::model::now_ms().saturating_sub(at);
        crate::telemetry::feed_lag(Duration::from_millis(u64::try_from(lag).unwrap_or(0)));
    }
    Ok((next, count))
}
