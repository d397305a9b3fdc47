//! Per-name DNS state and its timing rules (docs/architecture.md, "DNS resolution"), pure: every function takes `now`.
//!
//! - an answer refreshes at its TTL clamped to `[min_ttl, max_ttl]`;
//! - a failed lookup keeps the last good answer and retries with exponential backoff (1 s,
//!   2 s, 4 s … up to `max_ttl`);
//! - an address that leaves the answers stays allowed for `stale_grace`, because workloads
//!   cache answers too.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub stale_grace: Duration,
}

/// What one lookup produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records, possibly none (NXDOMAIN / no data), with the TTL to refresh at.
    Records { addrs: Vec<IpAddr>, ttl: Duration },
    /// No usable answer (timeout, SERVFAIL, network error).
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct NameState {
    /// Allowed addresses: `None` while in the latest answer, `Some(deadline)` once stale.
    addrs: BTreeMap<IpAddr, Option<Instant>>,
    next_lookup: Instant,
    failures: u32,
    /// At least one lookup finished (success or failure).
    pub attempted: bool,
    pub last_error: Option<String>,
}

impl NameState {
    pub fn new(now: Instant) -> Self {
        Self {
            addrs: BTreeMap::new(),
            next_lookup: now,
            failures: 0,
            attempted: false,
            last_error: None,
        }
    }

    /// A name whose addresses a previous run allowed: each stays allowed until its deadline
    /// (or longer, if an answer names it again), as if it had left the last answer.
    pub fn seeded(now: Instant, addrs: impl IntoIterator<Item = (IpAddr, Instant)>) -> Self {
        let mut s = Self::new(now);
        s.addrs = addrs
            .into_iter()
            .map(|(a, until)| (a, Some(until)))
            .collect();
        s.expire(now);
        s
    }

    /// Allowed addresses that are no longer in the answers, with when they expire.
    pub fn stale(&self) -> impl Iterator<Item = (IpAddr, Instant)> + '_ {
        self.addrs.iter().filter_map(|(a, d)| d.map(|d| (*a, d)))
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_lookup
    }

    /// Records an answer; returns whether the allowed set changed.
    pub fn apply(&mut self, now: Instant, answer: Answer, t: &Timing) -> bool {
        self.attempted = true;
        let before = self.allowed_now();
        match answer {
            Answer::Records { addrs, ttl } => {
                self.failures = 0;
                self.last_error = None;
                for state in self.addrs.values_mut() {
                    if state.is_none() {
                        *state = Some(now + t.stale_grace);
                    }
                }
                for a in addrs {
                    self.addrs.insert(a, None);
                }
                self.next_lookup = now + ttl.clamp(t.min_ttl, t.max_ttl);
            }
            Answer::Failed(e) => {
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(e);
                let backoff = Duration::from_secs(1u64 << self.failures.saturating_sub(1).min(20));
                self.next_lookup = now + backoff.min(t.max_ttl).max(Duration::from_secs(1));
            }
        }
        self.expire(now);
        before != self.allowed_now()
    }

    /// Drops stale addresses whose grace has run out; returns whether any went.
    pub fn expire(&mut self, now: Instant) -> bool {
        let n = self.addrs.len();
        self.addrs.retain(|_, d| d.is_none_or(|d| d > now));
        n != self.addrs.len()
    }

    fn allowed_now(&self) -> Vec<IpAddr> {
        self.addrs.keys().copied().collect()
    }

    pub fn allowed(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.keys().copied()
    }

    /// When the next lookup is due.
    pub fn next_lookup(&self) -> Instant {
        self.next_lookup
    }

    /// The next instant something happens to this name: a lookup or a stale address expiring.
    pub fn next_event(&self) -> Instant {
        self.addrs
            .values()
            .flatten()
            .copied()
            .fold(self.next_lookup, Instant::min)
    }

    /// Not resolvable right now: the next lookup is after a failure.
    pub fn failing(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        min_ttl: Duration::from_secs(5),
        max_ttl: Duration::from_secs(300),
        stale_grace: Duration::from_secs(120),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn records(a: &[&str], ttl: u64) -> Answer {
        Answer::Records {
            addrs: a.iter().map(|s| ip(s)).collect(),
            ttl: Duration::from_secs(ttl),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_is_clamped() {
        let now = Instant::now();
        let mut s = NameState::new(now);
        assert!(s.due(now));
        assert!(s.apply(now, records(&["192.0.2.1"], 1), &T));
        assert_eq!(s.next_event(), now + Duration::from_secs(5), "below minTtl");
        s.apply(now, records(&["192.0.2.1"], 86400), &T);
        assert_eq!(
            s.next_event(),
            now + Duration::from_secs(300),
            "above maxTtl"
        );
        s.apply(now, records(&["192.0.2.1"], 60), &T);
        assert_eq!(s.next_event(), now + Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(s.due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_last_good_answer_and_back_off() {
        let start = Instant::now();
        let mut s = NameState::new(start);
        s.apply(start, records(&["192.0.2.1"], 30), &T);
        let mut expected = 1;
        for _ in 0..12 {
            let now = Instant::now();
            assert!(
                !s.apply(now, Answer::Failed("timeout".into()), &T),
                "allowed set unchanged"
            );
            assert_eq!(s.allowed().collect::<Vec<_>>(), [ip("192.0.2.1")]);
            assert_eq!(s.next_event() - now, Duration::from_secs(expected.min(300)));
            expected *= 2;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(s.failing());
        // Recovery resets the backoff.
        let now = Instant::now();
        s.apply(now, records(&["192.0.2.1"], 30), &T);
        assert!(!s.failing());
        assert_eq!(s.next_event() - now, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_leaves_stays_for_the_grace_period() {
        let start = Instant::now();
        let mut s = NameState::new(start);
        s.apply(start, records(&["192.0.2.1"], 30), &T);
        assert!(
            s.apply(start, records(&["192.0.2.2"], 30), &T),
            "new address added"
        );
        assert_eq!(
            s.allowed().collect::<Vec<_>>(),
            [ip("192.0.2.1"), ip("192.0.2.2")]
        );
        assert_eq!(s.next_event(), start + Duration::from_secs(30));
        // It comes back before the grace ends: fresh again, no expiry.
        tokio::time::advance(Duration::from_secs(60)).await;
        s.apply(
            Instant::now(),
            records(&["192.0.2.1", "192.0.2.2"], 300),
            &T,
        );
        tokio::time::advance(Duration::from_secs(130)).await;
        assert!(!s.expire(Instant::now()));
        // It leaves again and expires after exactly the grace.
        let left = Instant::now();
        s.apply(left, records(&["192.0.2.2"], 300), &T);
        assert_eq!(s.next_event(), left + Duration::from_secs(120));
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!s.expire(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.expire(Instant::now()));
        assert_eq!(s.allowed().collect::<Vec<_>>(), [ip("192.0.2.2")]);
    }

    #[tokio::test(start_paused = true)]
    async fn seeded_addresses_last_until_their_deadline_unless_answered_again() {
        let now = Instant::now();
        let until = now + Duration::from_secs(120);
        let mut s = NameState::seeded(now, [(ip("192.0.2.1"), until), (ip("192.0.2.2"), until)]);
        assert_eq!(s.allowed().count(), 2);
        assert!(s.due(now), "looked up at once");
        // The answer names one of them again: that one is fresh, the other keeps its deadline.
        s.apply(now, records(&["192.0.2.2"], 300), &T);
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(!s.expire(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(s.expire(Instant::now()));
        assert_eq!(s.allowed().collect::<Vec<_>>(), [ip("192.0.2.2")]);
        // Failures do not extend a seed either.
        let mut f = NameState::seeded(
            Instant::now(),
            [(ip("192.0.2.9"), Instant::now() + T.stale_grace)],
        );
        f.apply(Instant::now(), Answer::Failed("timeout".into()), &T);
        tokio::time::advance(T.stale_grace).await;
        f.expire(Instant::now());
        assert_eq!(f.allowed().count(), 0);
        assert_eq!(
            NameState::seeded(now, [(ip("192.0.2.1"), now)])
                .allowed()
                .count(),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_answer_starts_the_grace_for_everything() {
        let now = Instant::now();
        let mut s = NameState::new(now);
        s.apply(now, records(&["192.0.2.1"], 30), &T);
        s.apply(now, records(&[], 30), &T);
        assert_eq!(s.allowed().count(), 1, "still within grace");
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(s.expire(Instant::now()));
        assert_eq!(s.allowed().count(), 0);
    }
}
