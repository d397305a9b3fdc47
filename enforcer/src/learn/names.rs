//! The names workloads resolved for each address, from the DNS proxy's answers, so that an
//! observation of an address can say which name the workload meant (docs/architecture.md,
//! "Learn mode"). Registered or not: in audit mode an unregistered name is answered too, and
//! that is the name a suggestion needs. Bounded: the least recently answered address goes.

use std::{collections::VecDeque, net::IpAddr};

use super::{lru::Lru, store::MAX_HOSTS};

#[derive(Debug, Clone)]
pub struct RecentNames {
    lru: Lru<IpAddr, VecDeque<String>>,
    cap: usize,
}

impl RecentNames {
    pub fn new(cap: usize) -> Self {
        Self {
            lru: Lru::default(),
            cap: cap.max(1),
        }
    }

    /// An answer for `name` (normalized) gave these addresses.
    pub fn note(&mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        for a in addrs {
            let names = self.lru.touch(&a.to_canonical(), VecDeque::new);
            if names.back().is_some_and(|n| n == name) {
                continue;
            }
            names.retain(|n| n != name);
            names.push_back(name.to_owned());
            if names.len() > MAX_HOSTS {
                names.pop_front();
            }
        }
        while self.lru.len() > self.cap {
            self.lru.pop_oldest();
        }
    }

    /// The names last answered with `addr`, least recent first.
    pub fn names_of(&self, addr: IpAddr) -> Vec<String> {
        self.lru
            .get(&addr.to_canonical())
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
    fn an_address_remembers_the_names_answered_with_it() {
        let mut r = RecentNames::new(2);
        r.note("a.example.com", [ip("198.18.0.1"), ip("198.18.0.2")]);
        r.note("b.example.com", [ip("198.18.0.1")]);
        assert_eq!(
            r.names_of(ip("198.18.0.1")),
            ["a.example.com", "b.example.com"]
        );
        // A v4-mapped address is the same address.
        assert_eq!(r.names_of(ip("::ffff:198.18.0.2")), ["a.example.com"]);
        r.note("c.example.com", [ip("198.18.0.3")]);
        assert_eq!(r.len(), 2);
        assert!(
            r.names_of(ip("198.18.0.2")).is_empty(),
            "the oldest address went"
        );
    }
}
