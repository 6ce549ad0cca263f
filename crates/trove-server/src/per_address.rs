//! Connections per source address: one peer cannot take every slot.
//!
//! A count per address is kept only while that address has a connection
//! open, so the table holds at most as many entries as there are open
//! connections (each plane's cap bounds it). IPv6 peers are counted per
//! /64, the block one host or site is usually given: counting single
//! IPv6 addresses would let one host take a slot per address it can make
//! up. An IPv4-mapped IPv6 address counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

/// What connections are counted under: the address, or its /64.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Open connections by source address, capped at `max` each.
pub(crate) struct PerAddress {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    pub fn new(max: usize) -> Self {
        Self { max, counts: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection from `key` ([`source_key`]), or refuses it
    /// (false) when that address has `max` open.
    pub fn try_take(&self, key: IpAddr) -> bool {
        let mut counts = self.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    /// Connections open from `key` now.
    pub fn open(&self, key: IpAddr) -> usize {
        self.lock().get(&key).copied().unwrap_or(0)
    }

    /// A connection from `key` closed.
    pub fn give_back(&self, key: IpAddr) {
        let mut counts = self.lock();
        let n = counts.get_mut(&key).expect("given back by a connection that took it");
        assert!(*n > 0, "a count is removed when it reaches zero");
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }

    /// Addresses with a connection open now.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_capped_and_forgotten_when_its_last_connection_closes() {
        let p = PerAddress::new(2);
        let a = source_key("10.0.0.1".parse().unwrap());
        let b = source_key("10.0.0.2".parse().unwrap());
        assert!(p.try_take(a) && p.try_take(a));
        assert!(!p.try_take(a), "the third from one address is refused");
        assert!(p.try_take(b), "another address is not");
        assert_eq!(p.addresses(), 2);
        p.give_back(a);
        assert!(p.try_take(a));
        p.give_back(a);
        p.give_back(a);
        p.give_back(b);
        assert_eq!(p.addresses(), 0, "no entry outlives its connections");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let one = source_key("2001:db8:1:2::1".parse().unwrap());
        let other = source_key("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(one, other, "one /64");
        assert_ne!(one, source_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(source_key("::ffff:10.0.0.1".parse().unwrap()), source_key("10.0.0.1".parse().unwrap()));
    }
}
