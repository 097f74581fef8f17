//! The failed-authentication limit: per peer address, a GCRA budget of failed
//! authentications (a presented API key that is malformed, unknown or revoked; a JWT that is
//! refused). A peer over its budget is answered 429 before any key is looked up or any token
//! verified — its valid credentials included — until the budget refills.
//!
//! Governor cannot tell whether a key is over its budget without spending a cell, and the
//! check must come before the lookup while only failures spend: hence this small GCRA of its
//! own (one theoretical arrival time per peer).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Peers tracked before expired entries are swept out.
const SWEEP_AT: usize = 4096;

/// Failed authentications per peer: `per_minute` in a burst, then one every
/// `60 s / per_minute`.
pub(crate) struct AuthFailures {
    /// Time between two failures at the sustained rate.
    interval: Duration,
    /// How far ahead of now a peer's theoretical arrival time may be before it is blocked.
    tolerance: Duration,
    peers: Mutex<Peers>,
}

struct Peers {
    tat: HashMap<IpAddr, Instant>,
    sweep_at: usize,
}

impl std::fmt::Debug for AuthFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFailures").field("interval", &self.interval).finish_non_exhaustive()
    }
}

/// The address a peer is counted under: IPv4 (IPv4-mapped IPv6 included) as is, IPv6 by its
/// /64, the smallest block one subscriber usually holds.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl AuthFailures {
    pub(crate) fn new(per_minute: NonZeroU32) -> Self {
        let interval = Duration::from_secs(60) / per_minute.get();
        let tolerance = Duration::from_secs(60).saturating_sub(interval);
        Self {
            interval,
            tolerance,
            peers: Mutex::new(Peers { tat: HashMap::new(), sweep_at: SWEEP_AT }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Peers> {
        // A panic while holding this lock leaves a map of instants: still consistent.
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Ok` when `ip` may authenticate now; else how long until it may.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let peers = self.lock();
        match peers.tat.get(&bucket(ip)) {
            Some(&tat) if tat > now + self.tolerance => Err(tat - (now + self.tolerance)),
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut peers = self.lock();
        let tat = peers.tat.entry(bucket(ip)).or_insert(now);
        *tat = (*tat).max(now) + self.interval;
        if peers.tat.len() >= peers.sweep_at {
            // Forget peers whose budget is full again; sweep next when the map has doubled,
            // so sweeping costs O(1) per failure however many peers fail.
            peers.tat.retain(|_, tat| *tat > now);
            peers.sweep_at = (peers.tat.len() * 2).max(SWEEP_AT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_allowance_then_blocked_and_other_peers_are_not() {
        let limits = AuthFailures::new(NonZeroU32::new(3).expect("non-zero"));
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(limits.admit(a).is_ok());
            limits.failed(a);
        }
        let wait = limits.admit(a).expect_err("blocked after 3 failures");
        assert!(wait > Duration::from_secs(15) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limits.admit("192.0.2.2".parse().expect("ip")).is_ok());
        // IPv4-mapped IPv6 is the same peer; an IPv6 /64 is one peer.
        assert!(limits.admit("::ffff:192.0.2.1".parse().expect("ip")).is_err());
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        for _ in 0..3 {
            limits.failed(v6);
        }
        assert!(limits.admit("2001:db8::ffff:2".parse().expect("ip")).is_err());
        assert!(limits.admit("2001:db8:0:1::1".parse().expect("ip")).is_ok());
    }

    #[test]
    fn the_map_is_swept_of_peers_whose_budget_is_full() {
        let limits = AuthFailures::new(NonZeroU32::new(u32::MAX).expect("non-zero"));
        for i in 0..(SWEEP_AT as u32 * 3) {
            limits.failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limits.lock().tat.len() < SWEEP_AT * 2, "{}", limits.lock().tat.len());
    }
}
