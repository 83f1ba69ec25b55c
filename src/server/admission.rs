//! Who gets a connection: the overall limit, the share of it that connections still logging
//! in may hold, and each client network's share of that.
//!
//! A connection is admitted with a permit of the overall limit and a pre-login slot; the slot
//! is given back the moment the connection logs in ([`Admitted::logged_in`]) or ends. So a
//! flood of idle connections from one address fills that address's share and no more, and a
//! flood from many fills the pre-login share, while logins from elsewhere and sessions already
//! logged in keep the rest.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use crate::credentials::model::Network;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every connection is taken.
    Full,
    /// The share for connections not logged in yet is taken.
    PreLoginFull,
    /// This client network's share is taken.
    AddressFull,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "connection limit reached",
            Refusal::PreLoginFull => "pre-login connection limit reached",
            Refusal::AddressFull => "pre-login connection limit for this address reached",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Full => "connection-limit",
            Refusal::PreLoginFull => "pre-login-limit",
            Refusal::AddressFull => "address-limit",
        }
    }
}

/// Refused connections are logged at most once per [`Self::INTERVAL`], each line counting the
/// refusals since the one before: a flood of connections must not become a flood of log lines
/// (the disk, the journal, and the CPU that formats them), and the counter metric has every
/// refusal.
#[derive(Debug)]
pub struct RefusalLog {
    started: Instant,
    /// Milliseconds since `started` before which no line is due.
    next_line_ms: AtomicU64,
    /// Refusals not logged since the last line.
    unlogged: AtomicU64,
}

impl RefusalLog {
    pub const INTERVAL: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            next_line_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        }
    }

    /// One refusal now: `Some(n)` when it is to be logged, `n` being the refusals left out
    /// since the last line.
    pub fn refused(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.refused_at(now)
    }

    fn refused_at(&self, now_ms: u64) -> Option<u64> {
        let due = self.next_line_ms.load(Ordering::Acquire);
        let interval = u64::try_from(Self::INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now_ms >= due
            && self
                .next_line_ms
                .compare_exchange(
                    due,
                    now_ms.saturating_add(interval),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::AcqRel));
        }
        self.unlogged.fetch_add(1, Ordering::AcqRel);
        None
    }
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new()
    }
}

/// The limits and the pre-login connections per network.
pub struct Admission {
    total: Arc<Semaphore>,
    pre_login: Arc<Semaphore>,
    per_network: Arc<DashMap<Network, usize>>,
    per_network_max: usize,
    /// When the refusals are logged.
    pub refusals: RefusalLog,
}

impl Admission {
    pub fn new(total: usize, pre_login: usize, per_network: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            pre_login: Arc::new(Semaphore::new(pre_login)),
            per_network: Arc::new(DashMap::new()),
            per_network_max: per_network,
            refusals: RefusalLog::new(),
        }
    }

    /// Admits a new connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Admitted, Refusal> {
        let network = Network::of(ip);
        // The network's count first: it is the cheapest to give back.
        {
            let mut count = self.per_network.entry(network).or_insert(0);
            if *count >= self.per_network_max {
                return Err(Refusal::AddressFull);
            }
            *count += 1;
        }
        let slot = NetworkSlot {
            network,
            table: self.per_network.clone(),
        };
        let Ok(pre_login) = self.pre_login.clone().try_acquire_owned() else {
            return Err(Refusal::PreLoginFull);
        };
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            return Err(Refusal::Full);
        };
        Ok(Admitted {
            _total: total,
            pre_login: Mutex::new(Some(PreLogin {
                _permit: pre_login,
                _slot: slot,
            })),
        })
    }

    /// Connections not logged in yet from `ip`'s network (for tests and metrics).
    pub fn pre_login_from(&self, ip: IpAddr) -> usize {
        self.per_network
            .get(&Network::of(ip))
            .map_or(0, |count| *count)
    }
}

/// An admitted connection: its permit of the overall limit, and its pre-login slot until it
/// logs in. Dropping it gives everything back.
pub struct Admitted {
    _total: OwnedSemaphorePermit,
    pre_login: Mutex<Option<PreLogin>>,
}

impl Admitted {
    /// The connection logged in: it no longer counts against the pre-login limits.
    pub fn logged_in(&self) {
        if let Ok(mut pre_login) = self.pre_login.lock() {
            pre_login.take();
        }
    }
}

struct PreLogin {
    _permit: OwnedSemaphorePermit,
    _slot: NetworkSlot,
}

/// One count in the per-network table, taken back on drop (the entry goes when it reaches 0).
struct NetworkSlot {
    network: Network,
    table: Arc<DashMap<Network, usize>>,
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        self.table.remove_if_mut(&self.network, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_the_count_left_out() {
        let log = RefusalLog::new();
        assert_eq!(
            log.refused_at(0),
            Some(0),
            "the first refusal is logged at once"
        );
        for ms in 1..=500 {
            assert_eq!(log.refused_at(ms), None);
        }
        assert_eq!(log.refused_at(999), None);
        assert_eq!(log.refused_at(1000), Some(501));
        assert_eq!(log.refused_at(1001), None);
        // After a quiet spell the next refusal is logged at once again.
        assert_eq!(log.refused_at(60_000), Some(1));
    }

    #[test]
    fn one_network_gets_its_share_and_logins_give_it_back() {
        let admission = Admission::new(10, 6, 2);
        let a = admission.admit(ip("192.0.2.1")).unwrap();
        let b = admission.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            admission.admit(ip("192.0.2.1")).err(),
            Some(Refusal::AddressFull)
        );
        // Another address is not affected.
        let _c = admission.admit(ip("192.0.2.2")).unwrap();
        // A login frees the address's slot; an ended connection does too.
        a.logged_in();
        let d = admission.admit(ip("192.0.2.1")).unwrap();
        drop(b);
        let _e = admission.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(admission.pre_login_from(ip("192.0.2.1")), 2);
        drop(d);
        assert_eq!(admission.pre_login_from(ip("192.0.2.1")), 1);
        drop(a);
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let admission = Admission::new(10, 10, 1);
        let _a = admission.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            admission.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::AddressFull)
        );
        let _b = admission.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = admission.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            admission.admit(ip("::ffff:192.0.2.7")).err(),
            Some(Refusal::AddressFull)
        );
    }

    #[test]
    fn pre_login_connections_leave_room_for_logged_in_sessions() {
        let admission = Admission::new(4, 2, 10);
        let a = admission.admit(ip("192.0.2.1")).unwrap();
        let _b = admission.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(
            admission.admit(ip("192.0.2.3")).err(),
            Some(Refusal::PreLoginFull)
        );
        a.logged_in();
        let c = admission.admit(ip("192.0.2.3")).unwrap();
        c.logged_in();
        let d = admission.admit(ip("192.0.2.4")).unwrap();
        d.logged_in();
        // Four connections open (three logged in): the overall limit.
        assert_eq!(admission.admit(ip("192.0.2.5")).err(), Some(Refusal::Full));
        // A refusal leaves nothing behind.
        assert_eq!(admission.pre_login_from(ip("192.0.2.5")), 0);
    }
}
