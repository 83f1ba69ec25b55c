//! Brute-force defence for the login gate: what a client address (IPv4 /32, IPv6 /64) and a
//! login from that address have failed lately, and what that costs them next.
//!
//! The rules, all decided here and nowhere else:
//!
//! - A failure counts once per (login, secret): a phone that keeps presenting its owner's old
//!   app password fails the same way every time, and that is not escalated (the owner's
//!   address is not banned because of a forgotten device). Only distinct guesses count.
//! - Past `free_failures_per_address` distinct failures in the window, every attempt from the
//!   address waits for a slot: one attempt per delay, the delay doubling with every further
//!   failure up to `max_delay_secs`. One attempt may wait for the next slot; any other is
//!   refused unchecked. So a flood from many connections of one address gets no more guesses
//!   than one connection, and no hash time beyond one check per slot.
//! - The same applies to one login from one address past `free_failures_per_login`, so a
//!   guesser of one account is slowed before the address's whole budget is spent.
//! - Past `ban_after` distinct failures in the window the address is banned for `ban_secs`:
//!   every attempt is refused unchecked until then. Bans expire; operators list and lift them
//!   (`portcullis bans`), and they reach every node through the store.
//! - Nothing is keyed on a login alone: no attacker can lock an account's owner out from
//!   elsewhere. A success forgives that login's failures from that address, never the
//!   address's (an attacker could interleave logins of an account of their own).
//!
//! Pure: every method takes the time, so the tests drive the clock.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::credentials::Secret;
use crate::credentials::model::Network;

/// The limits; `[auth.throttle]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// How long a failure counts.
    pub window_secs: u64,
    /// Distinct failures from one address in the window before its attempts are slowed.
    pub free_failures_per_address: u32,
    /// Distinct failures of one login from one address before that login's attempts from
    /// there are slowed.
    pub free_failures_per_login: u32,
    /// The widest the slots get apart.
    pub max_delay_secs: u64,
    /// Distinct failures from one address in the window that ban it.
    pub ban_after: u32,
    /// How long a ban lasts.
    pub ban_secs: u64,
    /// Addresses tracked at once (memory bound); past it, new addresses are not tracked until
    /// old ones age out.
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window_secs: 900,
            free_failures_per_address: 10,
            free_failures_per_login: 5,
            max_delay_secs: 60,
            ban_after: 50,
            ban_secs: 3600,
            max_tracked: 100_000,
        }
    }
}

/// What an attempt may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Check it now.
    Now,
    /// Check it at this time (its slot), not before.
    At(tokio::time::Instant),
    /// Refuse it unchecked: the address is slowed and no slot is free soon enough.
    Throttled,
    /// Refuse it unchecked: the address is banned until this Unix time (ms).
    Banned(i64),
}

/// What a failed check counted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A (login, secret) this address already failed with in the window: a stale device.
    Repeated,
    /// A new guess; with the ban it earned, if it did.
    Counted(Option<NewBan>),
}

/// A ban to record in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBan {
    pub address: Network,
    pub until_ms: i64,
    pub failures: u32,
}

type Instant = tokio::time::Instant;

#[derive(Default)]
struct Slot {
    /// When the next slowed attempt may be checked.
    next: Option<Instant>,
    /// The delay `next` was set with.
    spacing: Duration,
}

impl Slot {
    /// Takes the next slot, `delay` after the previous one; `None` if it is further away than
    /// one `delay` (an attempt already waits for the next slot: one waits at a time, so a
    /// burst of connections cannot reserve slots ahead at today's spacing) or than `max`.
    fn take(&mut self, now: Instant, delay: Duration, max: Duration) -> Option<Instant> {
        let at = self.next.map_or(now, |next| next.max(now));
        // Further ahead than one spacing: an attempt already waits for the slot before.
        let ahead = at.duration_since(now);
        if ahead > self.spacing || ahead > max {
            return None;
        }
        self.next = Some(at + delay);
        self.spacing = delay;
        Some(at)
    }
}

#[derive(Default)]
struct Address {
    /// Distinct failures in the window: when, and a digest of (login, secret).
    failures: VecDeque<(Instant, u64)>,
    /// Attempts admitted and not decided yet: they count against the budget as failures
    /// would, so a burst of connections cannot all pass while the first checks still run.
    pending: u32,
    slot: Slot,
    logins: HashMap<String, (VecDeque<Instant>, Slot)>,
}

impl Address {
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > window)
        {
            self.failures.pop_front();
        }
        self.logins.retain(|_, (failures, _)| {
            while failures
                .front()
                .is_some_and(|at| now.duration_since(*at) > window)
            {
                failures.pop_front();
            }
            !failures.is_empty()
        });
    }
}

/// The gate's memory of failures and its bans.
pub struct Throttle {
    config: ThrottleConfig,
    failure_delay: Duration,
    /// Keys the (login, secret) digests: random per process, never stored.
    digest_key: std::collections::hash_map::RandomState,
    addresses: Mutex<HashMap<Network, Address>>,
    /// Banned addresses and until when (Unix ms): this node's, and every node's as last read
    /// from the store.
    bans: Mutex<HashMap<Network, i64>>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig, failure_delay: Duration) -> Self {
        Self {
            config,
            failure_delay,
            digest_key: std::collections::hash_map::RandomState::new(),
            addresses: Mutex::new(HashMap::new()),
            bans: Mutex::new(HashMap::new()),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.config.window_secs)
    }

    fn delay_for(&self, excess: u32) -> Duration {
        self.failure_delay
            .max(Duration::from_millis(100))
            .saturating_mul(1u32 << excess.min(16))
            .min(Duration::from_secs(self.config.max_delay_secs))
    }

    /// What an attempt of `login` from `ip` may do at `now` (`now_ms`: the Unix time).
    pub fn admit(&self, ip: IpAddr, login: &str, now: Instant, now_ms: i64) -> Admission {
        let key = Network::of(ip);
        if let Some(&until) = lock(&self.bans).get(&key)
            && until > now_ms
        {
            return Admission::Banned(until);
        }
        let mut addresses = lock(&self.addresses);
        if !addresses.contains_key(&key) && addresses.len() >= self.config.max_tracked {
            return Admission::Now;
        }
        let address = addresses.entry(key).or_default();
        address.prune(now, self.window());
        let admission = self.admit_tracked(address, login, now);
        if matches!(admission, Admission::Now | Admission::At(_)) {
            address.pending += 1;
        }
        admission
    }

    fn admit_tracked(&self, address: &mut Address, login: &str, now: Instant) -> Admission {
        let max = Duration::from_secs(self.config.max_delay_secs);
        // Over either budget, the attempt takes a slot of each it is over; the later decides.
        let mut at: Option<Instant> = None;
        // Attempts not yet decided count against the budget once the address has failed: a
        // guesser's burst cannot slip through while its first checks run. From an address with
        // no failure they count for nothing, so a crowd behind one NAT that logs in at once
        // (an office after a network blip) is never refused.
        let in_flight = if address.failures.is_empty() {
            0
        } else {
            address.pending
        };
        let over_address = count(address.failures.len())
            .saturating_add(in_flight)
            .saturating_sub(self.config.free_failures_per_address);
        if over_address > 0 {
            match address
                .slot
                .take(now, self.delay_for(over_address - 1), max)
            {
                Some(slot) => at = Some(slot),
                None => return Admission::Throttled,
            }
        }
        if let Some((failures, slot)) = address.logins.get_mut(&normalise(login)) {
            let over_login =
                count(failures.len()).saturating_sub(self.config.free_failures_per_login);
            if over_login > 0 {
                match slot.take(now, self.delay_for(over_login - 1), max) {
                    Some(slot) => at = Some(at.map_or(slot, |a| a.max(slot))),
                    None => return Admission::Throttled,
                }
            }
        }
        match at {
            Some(at) => slot_admission(at, now),
            None => Admission::Now,
        }
    }

    /// A checked attempt failed: a repeat, or a new guess (with the ban it earned, if any).
    pub fn failed(
        &self,
        ip: IpAddr,
        login: &str,
        secret: &Secret,
        now: Instant,
        now_ms: i64,
    ) -> Failure {
        let key = Network::of(ip);
        let login = normalise(login);
        let digest = {
            let mut h = self.digest_key.build_hasher();
            login.hash(&mut h);
            secret.expose().hash(&mut h);
            h.finish()
        };
        let failures = {
            let mut addresses = lock(&self.addresses);
            if !addresses.contains_key(&key) && addresses.len() >= self.config.max_tracked {
                let window = self.window();
                addresses.retain(|_, a| {
                    a.prune(now, window);
                    !a.failures.is_empty() || a.pending > 0
                });
                if addresses.len() >= self.config.max_tracked {
                    return Failure::Counted(None);
                }
            }
            let address = addresses.entry(key).or_default();
            address.pending = address.pending.saturating_sub(1);
            address.prune(now, self.window());
            // The same wrong secret again: a stale device, not a new guess.
            if address.failures.iter().any(|(_, d)| *d == digest) {
                return Failure::Repeated;
            }
            address.failures.push_back((now, digest));
            address.logins.entry(login).or_default().0.push_back(now);
            count(address.failures.len())
        };
        if failures < self.config.ban_after {
            return Failure::Counted(None);
        }
        let ban = NewBan {
            address: key,
            until_ms: now_ms + i64::try_from(self.config.ban_secs * 1000).unwrap_or(i64::MAX),
            failures,
        };
        self.ban(ban.address, ban.until_ms);
        // The ban stands on its own now; the failures start over after it.
        lock(&self.addresses).remove(&key);
        Failure::Counted(Some(ban))
    }

    /// A checked attempt succeeded: that login's failures from that address are forgiven.
    pub fn succeeded(&self, ip: IpAddr, login: &str) {
        self.settle(ip, |address| {
            address.logins.remove(&normalise(login));
        });
    }

    /// An admitted attempt could not be decided (the store was unreachable): it counts for
    /// nothing.
    pub fn undecided(&self, ip: IpAddr) {
        self.settle(ip, |_| {});
    }

    /// Ends an admitted attempt that did not fail; an address with nothing left to remember
    /// is forgotten (every client that logs in passes through here, not only guessers).
    fn settle(&self, ip: IpAddr, also: impl FnOnce(&mut Address)) {
        let key = Network::of(ip);
        let mut addresses = lock(&self.addresses);
        if let Some(address) = addresses.get_mut(&key) {
            address.pending = address.pending.saturating_sub(1);
            also(address);
            if address.pending == 0 && address.failures.is_empty() && address.logins.is_empty() {
                addresses.remove(&key);
            }
        }
    }

    /// Bans `network` until `until_ms` (from this node, the store or an operator).
    pub fn ban(&self, network: Network, until_ms: i64) {
        lock(&self.bans).insert(network, until_ms);
    }

    /// Replaces the bans with the store's current list (every node's, minus lifted ones).
    pub fn replace_bans(&self, bans: impl IntoIterator<Item = (Network, i64)>) {
        let mut current = lock(&self.bans);
        current.clear();
        current.extend(bans);
    }
}

fn slot_admission(at: Instant, now: Instant) -> Admission {
    if at <= now {
        Admission::Now
    } else {
        Admission::At(at)
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One key per login however it is spelled (case, surrounding space), bounded in length.
fn normalise(login: &str) -> String {
    login.trim().to_lowercase().chars().take(320).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(
            ThrottleConfig {
                window_secs: 600,
                free_failures_per_address: 4,
                free_failures_per_login: 2,
                max_delay_secs: 10,
                ban_after: 8,
                ban_secs: 60,
                max_tracked: 100,
            },
            Duration::from_millis(250),
        )
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const VICTIM: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn guess(n: usize) -> Secret {
        Secret::from(format!("guess number {n}").as_str())
    }

    /// An admission whose attempt is then left undecided (it counts for nothing).
    fn probe(t: &Throttle, ip: IpAddr, login: &str, now: Instant) -> Admission {
        let admission = t.admit(ip, login, now, 0);
        if matches!(admission, Admission::Now | Admission::At(_)) {
            t.undecided(ip);
        }
        admission
    }

    #[test]
    fn networks_are_ipv4_hosts_and_ipv6_slash_64s_and_read_back_as_written() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Network::of(a), Network::of(b));
        assert_ne!(Network::of(a), Network::of(c));
        assert_eq!(Network::of(a).to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            "2001:db8:1:2::/64".parse::<Network>().unwrap(),
            Network::of(b)
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Network::of(mapped).to_string(), "192.0.2.1");
        assert_eq!(
            "192.0.2.1".parse::<Network>().unwrap(),
            Network::of(ATTACKER)
        );
    }

    #[test]
    fn a_stale_password_repeated_is_not_escalated() {
        let t = throttle();
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.admit(VICTIM, "alice", now, 0), Admission::Now);
            t.failed(VICTIM, "alice", &guess(0), now, 0);
        }
        assert_eq!(
            t.failed(VICTIM, "alice", &guess(0), now, 0),
            Failure::Repeated
        );
        assert_eq!(t.admit(VICTIM, "alice", now, 0), Admission::Now);
    }

    #[test]
    fn guesses_of_one_login_are_slowed_then_the_address_then_banned() {
        let t = throttle();
        let now = Instant::now();
        // Two free failures for alice from this address, then her attempts take slots.
        for n in 0..2 {
            assert_eq!(t.admit(ATTACKER, "alice", now, 0), Admission::Now);
            t.failed(ATTACKER, "alice", &guess(n), now, 0);
        }
        assert_eq!(t.admit(ATTACKER, "alice", now, 0), Admission::Now);
        t.failed(ATTACKER, "alice", &guess(2), now, 0);
        // One slot per 250 ms: the first attempt goes now, the next waits for its slot.
        assert_eq!(probe(&t, ATTACKER, "alice", now), Admission::Now);
        assert_eq!(
            probe(&t, ATTACKER, "alice", now),
            Admission::At(now + Duration::from_millis(250))
        );
        // Another login from there is not slowed yet; the owner elsewhere never is.
        assert_eq!(probe(&t, ATTACKER, "bob", now), Admission::Now);
        assert_eq!(probe(&t, VICTIM, "alice", now), Admission::Now);
        // Past the address's budget every login from it waits, one slot at a time; beyond
        // max_delay, attempts are refused unchecked.
        t.failed(ATTACKER, "bob", &guess(3), now, 0);
        t.failed(ATTACKER, "carol", &guess(4), now, 0);
        // A hundred connections at once: one checked now, one waiting for the next slot; the
        // rest are refused without a check.
        let throttled = (0..100)
            .filter(|_| t.admit(ATTACKER, "dave", now, 0) == Admission::Throttled)
            .count();
        assert_eq!(throttled, 98);
        // Ban after 8 distinct failures; refused unchecked until it expires.
        for n in 5..7 {
            assert_eq!(
                t.failed(ATTACKER, "x", &guess(n), now, 0),
                Failure::Counted(None)
            );
        }
        let Failure::Counted(Some(ban)) = t.failed(ATTACKER, "x", &guess(7), now, 1_000) else {
            panic!("not banned");
        };
        assert_eq!(
            (ban.address, ban.until_ms, ban.failures),
            (Network::of(ATTACKER), 61_000, 8)
        );
        assert_eq!(
            t.admit(ATTACKER, "alice", now, 2_000),
            Admission::Banned(61_000)
        );
        assert_eq!(t.admit(VICTIM, "alice", now, 2_000), Admission::Now);
        assert_eq!(t.admit(ATTACKER, "alice", now, 61_001), Admission::Now);
    }

    /// Whether attempts of `login` from `ip` are slowed: the second of two at once waits
    /// (both then left undecided).
    fn slowed(t: &Throttle, ip: IpAddr, login: &str, now: Instant) -> bool {
        probe(t, ip, login, now);
        probe(t, ip, login, now) != Admission::Now
    }

    #[test]
    fn failures_age_out_of_the_window_and_a_success_forgives_the_login_only() {
        let t = throttle();
        let now = Instant::now();
        for n in 0..4 {
            t.failed(ATTACKER, "alice", &guess(n), now, 0);
        }
        assert!(slowed(&t, ATTACKER, "alice", now));
        t.succeeded(ATTACKER, "alice");
        assert!(!slowed(&t, ATTACKER, "alice", now));
        t.failed(ATTACKER, "bob", &guess(9), now, 0);
        // The address's count stands (5 > 4): every login from it is slowed.
        assert!(slowed(&t, ATTACKER, "zed", now));
        let later = now + Duration::from_secs(601);
        assert!(!slowed(&t, ATTACKER, "zed", later));
    }

    #[test]
    fn a_burst_counts_its_undecided_attempts_once_the_address_has_failed() {
        let t = throttle();
        let now = Instant::now();
        // Thirty clients behind one address log in at once: none is refused or slowed.
        for n in 0..30 {
            assert_eq!(
                t.admit(ATTACKER, &format!("user{n}"), now, 0),
                Admission::Now
            );
        }
        for _ in 0..30 {
            t.succeeded(ATTACKER, "user0");
        }
        // Once it has failed, undecided attempts count: of thirty at once, as many go now as
        // could fail without slowing the address (three more, and the fourth, which the third
        // failure would not slow), then one takes the first slot and one waits for the next;
        // the rest are refused unchecked.
        assert_eq!(t.admit(ATTACKER, "user0", now, 0), Admission::Now);
        t.failed(ATTACKER, "user0", &guess(0), now, 0);
        let admitted: Vec<Admission> = (1..31)
            .map(|n| t.admit(ATTACKER, &format!("user{n}"), now, 0))
            .filter(|a| *a != Admission::Throttled)
            .collect();
        assert_eq!(admitted.len(), 6, "{admitted:?}");
        for n in 1..7 {
            t.failed(ATTACKER, &format!("user{n}"), &guess(n), now, 0);
        }
    }

    #[test]
    fn addresses_that_only_log_in_are_not_kept() {
        let t = throttle();
        let now = Instant::now();
        for n in 0..50u8 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n));
            assert_eq!(t.admit(ip, "alice", now, 0), Admission::Now);
            t.succeeded(ip, "alice");
        }
        assert_eq!(lock(&t.addresses).len(), 0);
    }

    #[test]
    fn over_both_budgets_the_later_slot_decides() {
        let t = throttle();
        let now = Instant::now();
        // Five of alice's from one address: over the address's budget (4) by one and over the
        // login's (2) by three; the login's slots are the wider apart.
        for n in 0..5 {
            t.failed(ATTACKER, "alice", &guess(n), now, 0);
        }
        assert_eq!(t.admit(ATTACKER, "alice", now, 0), Admission::Now);
        assert_eq!(
            t.admit(ATTACKER, "alice", now, 0),
            Admission::At(now + Duration::from_millis(1000))
        );
    }

    #[test]
    fn bans_from_the_store_replace_the_local_list() {
        let t = throttle();
        t.ban(Network::of(ATTACKER), 10_000);
        assert_eq!(
            t.admit(ATTACKER, "a", Instant::now(), 0),
            Admission::Banned(10_000)
        );
        t.replace_bans([(Network::of(VICTIM), 5_000)]);
        assert_eq!(t.admit(ATTACKER, "a", Instant::now(), 0), Admission::Now);
        assert_eq!(
            t.admit(VICTIM, "a", Instant::now(), 0),
            Admission::Banned(5_000)
        );
    }
}
