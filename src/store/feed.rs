//! The change feed: how a running gateway learns what other processes wrote.
//!
//! Every mutation appends a row to `changes` in its own transaction. The gateway remembers the
//! last id it has seen and polls for newer rows (SQLite has no notifications across processes;
//! an indexed range read every 50 ms by default costs next to nothing). For each changed
//! account it holds in memory, it reloads the account, which refuses dead credentials from then
//! on and wakes the sessions relaying on them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::credentials::index::CredentialIndex;

/// Rows read per poll; a burst larger than this is drained over consecutive polls without
/// waiting.
const BATCH: i64 = 1000;

/// Follows the feed from the newest change on until `shutdown`. Store errors are logged and
/// retried at the next tick.
pub async fn follow(index: Arc<CredentialIndex>, interval: Duration, shutdown: CancellationToken) {
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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
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
    for (id, account) in changes {
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
    Ok((next, count))
}
