//! The names each workload resolved for each address, from the DNS proxy's answers, so that
//! an observation of an address can say which name that workload meant (docs/architecture.md,
//! "Learn mode"). Registered or not: in audit mode an unregistered name is answered too, and
//! that is the name a suggestion needs. Kept per workload (the cgroup that asked): another
//! workload's answers for the same address never name this one's connections. Bounded: the
//! least recently answered go, a workload past its quota losing its own first.

use std::{collections::VecDeque, net::IpAddr};

use super::{
    lru::{Grouped, Lru},
    store::MAX_HOSTS,
};

/// (cgroup id, address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u64, IpAddr);

impl Grouped for Key {
    type Group = u64;
    fn group(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone)]
pub struct RecentNames {
    lru: Lru<Key, VecDeque<String>>,
    cap: usize,
}

impl RecentNames {
    pub fn new(cap: usize) -> Self {
        Self {
            lru: Lru::default(),
            cap: cap.max(4),
        }
    }

    /// An answer for `name` to a workload in cgroup `cgroup` gave these addresses. A name
    /// that is not a plain DNS name in normal form (a wildcard, an escaped byte, the root)
    /// names nothing a ServiceEntry could hold, and is not kept.
    pub fn note(&mut self, cgroup: u64, name: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        if !crate::dnsproxy::names::normalize(name).is_ok_and(|n| n == name) {
            return;
        }
        for a in addrs {
            let names = self
                .lru
                .touch(&Key(cgroup, a.to_canonical()), VecDeque::new);
            if names.back().is_some_and(|n| n == name) {
                continue;
            }
            names.retain(|n| n != name);
            names.push_back(name.to_owned());
            if names.len() > MAX_HOSTS {
                names.pop_front();
            }
        }
        while self.lru.group_len(&cgroup) > self.cap / 4 {
            self.lru.pop_oldest_in(&cgroup);
        }
        while self.lru.len() > self.cap {
            self.lru.pop_oldest();
        }
    }

    /// The names last answered to `cgroup` with `addr`, least recent first.
    pub fn names_of(&self, cgroup: u64, addr: IpAddr) -> Vec<String> {
        self.lru
            .get(&Key(cgroup, addr.to_canonical()))
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_remembers_the_names_answered_to_each_workload() {
        let mut r = RecentNames::new(8);
        r.note(1, "a.example.com", [ip("198.18.0.1"), ip("198.18.0.2")]);
        r.note(1, "b.example.com", [ip("198.18.0.1")]);
        assert_eq!(
            r.names_of(1, ip("198.18.0.1")),
            ["a.example.com", "b.example.com"]
        );
        // A v4-mapped address is the same address.
        assert_eq!(r.names_of(1, ip("::ffff:198.18.0.2")), ["a.example.com"]);
        // Another workload's answer names nothing of this one's.
        r.note(2, "evil.example.net", [ip("198.18.0.1")]);
        assert_eq!(r.names_of(1, ip("198.18.0.1")).len(), 2);
        assert_eq!(r.names_of(2, ip("198.18.0.1")), ["evil.example.net"]);
    }

    #[test]
    fn names_nobody_could_register_are_not_kept() {
        let mut r = RecentNames::new(8);
        for bad in ["*.example.com", "", "A.example.com", "a b.example.com"] {
            r.note(1, bad, [ip("198.18.0.1")]);
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_workload_flooding_answers_loses_its_own_oldest() {
        let mut r = RecentNames::new(8);
        r.note(1, "quiet.example.com", [ip("198.18.0.1")]);
        for i in 0..20u8 {
            r.note(2, "noisy.example.com", [IpAddr::from([198, 18, 1, i])]);
        }
        assert_eq!(r.names_of(1, ip("198.18.0.1")), ["quiet.example.com"]);
        assert_eq!(r.len(), 3, "workload 2 keeps a quarter");
        r.note(
            3,
            "c.example.com",
            (0..10u8).map(|i| IpAddr::from([198, 18, 2, i])),
        );
        assert!(r.len() <= 8);
    }
}
