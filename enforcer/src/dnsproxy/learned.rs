//! The addresses learned from answers, by name, and the kernel rules they make: one rule per
//! address, port and protocol, expiring when the last name that allows it expires. Pure; the
//! caller writes what each call returns to `RULES_LEARNED` (docs/architecture.md, "DNS-aware
//! mode").

use std::{
    collections::{BTreeSet, HashMap, hash_map::Entry},
    net::IpAddr,
};

use enforcer_common::{LearnedValue, POLICY_NODE, RULE_FLAG_DNS, RuleKey};

use super::names::{Class, NameTable, Targets};
use crate::policy::visibility::Visibility;

/// A kernel write the caller makes.
pub type Put = (RuleKey, LearnedValue);

/// An expiry (recorded, and in the kernel) is rewritten only when it would grow by more than
/// the table's slack: at most this, and at most half of `dns.staleGrace`. A name asked
/// thousands of times a second then costs one write a second, not one per answer, and an
/// address stays allowed at least for its TTL and half the grace (docs/architecture.md,
/// "DNS-aware mode").
pub const MAX_SLACK_NS: u64 = 1_000_000_000;

/// What one answer changes: kernel writes, and name/address entries to record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learn {
    pub puts: Vec<Put>,
    pub record: Vec<(IpAddr, u64)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{wanted} learned addresses do not fit ({max} at most); raise maps.learnedRules")]
pub struct Full {
    pub wanted: usize,
    pub max: usize,
}

/// At most this many addresses of one answer are learned (the rest of a larger answer is not:
/// no service needs more, and a zone a workload controls could otherwise fill the table with
/// one TCP answer of thousands of records).
pub const MAX_PER_ANSWER: usize = 64;

#[derive(Debug, Default)]
pub struct LearnedTable {
    /// name → address → expiry (CLOCK_MONOTONIC ns).
    by_name: HashMap<String, HashMap<IpAddr, u64>>,
    /// address → the names it was learned for (for events, without a scan).
    by_addr: HashMap<IpAddr, BTreeSet<String>>,
    entries: usize,
    /// What `RULES_LEARNED` holds (the caller fills in each value's `vset`).
    keys: HashMap<RuleKey, LearnedValue>,
    /// Who may use each rule: the union over the names that allow it (scoping).
    vis: HashMap<RuleKey, Visibility>,
    /// Caps on `keys` (the map's size) and on name/address pairs (many names may share one
    /// address, and each costs memory here).
    max_keys: usize,
    max_entries: usize,
    /// How much an expiry must grow to be rewritten (`MAX_SLACK_NS`).
    slack_ns: u64,
}

/// An address the kernel can match: IPv4-mapped IPv6 in an AAAA record would allow IPv4
/// traffic, and the families never cross (docs/architecture.md, "Rule maps").
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none() && !v6.is_unspecified(),
    }
}

pub fn rule_key(ip: IpAddr, port: u16, proto: u8) -> RuleKey {
    let addr = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    RuleKey {
        policy: POLICY_NODE,
        port,
        proto,
        pad: 0,
        addr,
    }
}

/// The rules an address makes on `targets`; none for a target nobody may use.
fn keys_of(
    ip: IpAddr,
    targets: &Targets,
) -> impl Iterator<Item = (RuleKey, u32, &Visibility)> + '_ {
    targets
        .iter()
        .filter(|(_, g)| !matches!(&g.vis, Visibility::Only(ids) if ids.is_empty()))
        .map(move |((port, proto), g)| (rule_key(ip, *port, proto.number()), g.rule_id, &g.vis))
}

/// `key`'s visibility once `v` also allows it; whether that changed it.
fn widen_vis(vis: &mut HashMap<RuleKey, Visibility>, key: RuleKey, v: &Visibility) -> bool {
    match vis.get_mut(&key) {
        Some(old) => {
            let both = old.union(v);
            let changed = both != *old;
            *old = both;
            changed
        }
        None => {
            vis.insert(key, v.clone());
            true
        }
    }
}

/// Longer expiry wins (by more than `slack`); of equal rules the lower id.
fn widen(
    slot: Entry<'_, RuleKey, LearnedValue>,
    v: LearnedValue,
    slack: u64,
) -> Option<LearnedValue> {
    match slot {
        Entry::Vacant(e) => Some(*e.insert(v)),
        Entry::Occupied(mut e) => {
            let cur = e.get_mut();
            let grown = LearnedValue {
                rule_id: cur.rule_id.min(v.rule_id),
                flags: cur.flags | v.flags,
                expires_ns: if v.expires_ns > cur.expires_ns.saturating_add(slack) {
                    v.expires_ns
                } else {
                    cur.expires_ns
                },
                // Sets are never widened here: the daemon writes one per key.
                vset: v.vset,
                pad: 0,
            };
            (grown != *cur).then(|| {
                *cur = grown;
                grown
            })
        }
    }
}

impl LearnedTable {
    pub fn new(max_keys: usize) -> Self {
        Self {
            max_keys,
            max_entries: max_keys.saturating_mul(4),
            slack_ns: MAX_SLACK_NS,
            ..Self::default()
        }
    }

    /// Rewrites grow an expiry by more than half of `grace` (and 1 s at most).
    pub fn with_grace(mut self, grace_ns: u64) -> Self {
        self.slack_ns = MAX_SLACK_NS.min(grace_ns / 2);
        self
    }

    /// Records `addrs` (address, expiry) of `name`, allowed on `targets`; returns the kernel
    /// writes (new rules, and rules whose expiry grew). Over the caps nothing is recorded.
    pub fn learn(
        &mut self,
        name: &str,
        targets: &Targets,
        addrs: &[(IpAddr, u64)],
    ) -> Result<Learn, Full> {
        // Each address once (the earliest expiry: the lowest TTL of its records), in answer
        // order, at most MAX_PER_ANSWER.
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        let mut unique: Vec<(IpAddr, u64)> = Vec::new();
        for (ip, exp) in addrs.iter().copied().filter(|(ip, _)| usable(*ip)) {
            match seen.get(&ip) {
                Some(&i) => {
                    if let Some(e) = unique.get_mut(i) {
                        e.1 = e.1.min(exp);
                    }
                }
                None if unique.len() < MAX_PER_ANSWER => {
                    seen.insert(ip, unique.len());
                    unique.push((ip, exp));
                }
                None => {}
            }
        }
        let addrs = unique;
        if targets.is_empty() || addrs.is_empty() {
            return Ok(Learn::default());
        }
        let known = self.by_name.get(name);
        let new_entries = addrs
            .iter()
            .filter(|(ip, _)| known.is_none_or(|m| !m.contains_key(ip)))
            .count();
        let new_keys = addrs
            .iter()
            .flat_map(|(ip, _)| keys_of(*ip, targets))
            .filter(|(k, _, _)| !self.keys.contains_key(k))
            .map(|(k, _, _)| k)
            .collect::<BTreeSet<_>>()
            .len();
        if self.keys.len() + new_keys > self.max_keys {
            return Err(Full {
                wanted: self.keys.len() + new_keys,
                max: self.max_keys,
            });
        }
        if self.entries + new_entries > self.max_entries {
            return Err(Full {
                wanted: self.entries + new_entries,
                max: self.max_entries,
            });
        }
        let slot = self.by_name.entry(name.to_owned()).or_default();
        let mut out = Learn::default();
        for (ip, expires) in addrs {
            if !slot.contains_key(&ip) {
                self.by_addr.entry(ip).or_default().insert(name.to_owned());
            }
            let e = slot.entry(ip).or_insert(0);
            if expires > e.saturating_add(self.slack_ns) || *e == 0 {
                *e = expires;
                out.record.push((ip, expires));
            }
            for (key, rule_id, vis) in keys_of(ip, targets) {
                let v = LearnedValue {
                    rule_id,
                    flags: RULE_FLAG_DNS,
                    expires_ns: expires,
                    vset: enforcer_common::VSET_EVERYONE,
                    pad: 0,
                };
                let wider = widen_vis(&mut self.vis, key, vis);
                match widen(self.keys.entry(key), v, self.slack_ns) {
                    Some(written) => out.puts.push((key, written)),
                    None if wider => {
                        if let Some(cur) = self.keys.get(&key) {
                            out.puts.push((key, *cur));
                        }
                    }
                    None => {}
                }
            }
        }
        self.entries += new_entries;
        Ok(out)
    }

    /// Forgets everything expired at `now`; returns the rules to delete (those whose last
    /// name expired; the kernel already ignores them).
    pub fn sweep(&mut self, now: u64) -> Vec<RuleKey> {
        let mut gone = 0;
        let by_addr = &mut self.by_addr;
        self.by_name.retain(|name, addrs| {
            addrs.retain(|ip, exp| {
                let keep = *exp >= now;
                if !keep {
                    gone += 1;
                    if let Some(names) = by_addr.get_mut(ip) {
                        names.remove(name);
                        if names.is_empty() {
                            by_addr.remove(ip);
                        }
                    }
                }
                keep
            });
            !addrs.is_empty()
        });
        self.entries -= gone;
        let dead: Vec<RuleKey> = self
            .keys
            .iter()
            .filter(|(_, v)| v.expires_ns < now)
            .map(|(k, _)| *k)
            .collect();
        for k in &dead {
            self.keys.remove(k);
            self.vis.remove(k);
        }
        dead
    }

    /// Recomputes every rule under a new policy (a reload): names no longer registered, and
    /// ports no longer theirs, lose their rules at once. Returns (writes, deletes).
    pub fn retarget(&mut self, table: &NameTable) -> (Vec<Put>, Vec<RuleKey>) {
        self.by_name.retain(
            |name, _| matches!(table.classify(name), Class::Registered(t) if !t.is_empty()),
        );
        self.reindex();
        let mut want: HashMap<RuleKey, LearnedValue> = HashMap::new();
        let mut vis: HashMap<RuleKey, Visibility> = HashMap::new();
        for (name, addrs) in &self.by_name {
            let Class::Registered(targets) = table.classify(name) else {
                continue;
            };
            for (ip, expires) in addrs {
                for (key, rule_id, v) in keys_of(*ip, &targets) {
                    let value = LearnedValue {
                        rule_id,
                        flags: RULE_FLAG_DNS,
                        expires_ns: *expires,
                        vset: enforcer_common::VSET_EVERYONE,
                        pad: 0,
                    };
                    widen(want.entry(key), value, 0);
                    widen_vis(&mut vis, key, v);
                }
            }
        }
        let deletes = self
            .keys
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        let puts = want
            .iter()
            .filter(|(k, v)| self.keys.get(k) != Some(v) || self.vis.get(k) != vis.get(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        self.keys = want;
        self.vis = vis;
        (puts, deletes)
    }

    /// Takes over what a previous run left: the rules in the kernel and the recorded
    /// name/address entries. The caller then calls `retarget`, which rewrites the rules the
    /// entries justify and deletes the others.
    pub fn restore(&mut self, kernel: &[Put], entries: HashMap<String, HashMap<IpAddr, u64>>) {
        self.keys = kernel.iter().copied().collect();
        // Unknown until `retarget`, which rewrites every rule with its names' visibility.
        self.vis.clear();
        self.by_name = entries
            .into_iter()
            .map(|(n, a)| (n, a.into_iter().filter(|(ip, _)| usable(*ip)).collect()))
            .collect();
        self.reindex();
    }

    /// Recounts the entries and rebuilds the address index from `by_name`.
    fn reindex(&mut self) {
        self.entries = self.by_name.values().map(HashMap::len).sum();
        self.by_addr.clear();
        for (name, addrs) in &self.by_name {
            for ip in addrs.keys() {
                self.by_addr.entry(*ip).or_default().insert(name.clone());
            }
        }
    }

    /// Forgets that `keys` are in the kernel (their write failed), so that the next answer
    /// writes them again.
    pub fn forget(&mut self, keys: impl IntoIterator<Item = RuleKey>) {
        for k in keys {
            self.keys.remove(&k);
            self.vis.remove(&k);
        }
    }

    /// Who may use the rule at `key` (everyone when unknown: only before `retarget`).
    pub fn visibility(&self, key: &RuleKey) -> &Visibility {
        self.vis.get(key).unwrap_or(&Visibility::Everyone)
    }

    /// Every set the rules use.
    pub fn sets_in_use(&self) -> BTreeSet<enforcer_common::PolicyBits> {
        self.vis.values().filter_map(Visibility::bits).collect()
    }

    /// Rules in the kernel.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Name/address pairs held.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The names `addr` was learned for.
    pub fn names_of(&self, addr: IpAddr) -> Vec<String> {
        self.by_addr
            .get(&addr)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// name → address → expiry, for the record that survives a restart.
    pub fn by_name(&self) -> &HashMap<String, HashMap<IpAddr, u64>> {
        &self.by_name
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::policy::{allow_spec::Proto, compile::CompiledPolicy};

    fn targets(ports: &[u16]) -> Targets {
        ports
            .iter()
            .map(|p| {
                let g = crate::dnsproxy::names::Grant {
                    rule_id: 1,
                    vis: Visibility::Everyone,
                };
                ((*p, Proto::Tcp), g)
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_stays_until_its_last_name_expires() {
        let mut t = LearnedTable::new(100).with_grace(0);
        let puts = t
            .learn(
                "a.example.com",
                &targets(&[443]),
                &[(ip("198.18.0.1"), 100)],
            )
            .unwrap()
            .puts;
        assert_eq!(puts.len(), 1);
        let puts = t
            .learn(
                "b.example.com",
                &targets(&[443]),
                &[(ip("198.18.0.1"), 300)],
            )
            .unwrap()
            .puts;
        assert_eq!(puts[0].1.expires_ns, 300, "the later expiry wins");
        assert!(
            t.learn("a.example.com", &targets(&[443]), &[(ip("198.18.0.1"), 50)])
                .unwrap()
                .puts
                .is_empty(),
            "an earlier expiry writes nothing"
        );
        assert!(t.sweep(200).is_empty());
        assert_eq!(t.names_of(ip("198.18.0.1")), ["b.example.com"]);
        assert_eq!(t.sweep(301), vec![rule_key(ip("198.18.0.1"), 443, 6)]);
        assert!(t.is_empty() && t.entries() == 0);
    }

    #[test]
    fn a_name_asked_again_is_rewritten_only_when_its_expiry_grows_past_the_slack() {
        let mut t = LearnedTable::new(100);
        let s = MAX_SLACK_NS;
        let first = t
            .learn(
                "a.example.com",
                &targets(&[443]),
                &[(ip("198.18.0.1"), 10 * s)],
            )
            .unwrap();
        assert_eq!(first.record.len(), 1);
        let again = t
            .learn(
                "a.example.com",
                &targets(&[443]),
                &[(ip("198.18.0.1"), 10 * s + s / 2)],
            )
            .unwrap();
        assert!(again.record.is_empty(), "within the slack: no record write");
        assert!(again.puts.is_empty(), "and no kernel write");
        let later = t
            .learn(
                "a.example.com",
                &targets(&[443]),
                &[(ip("198.18.0.1"), 12 * s)],
            )
            .unwrap();
        assert_eq!(later.record, vec![(ip("198.18.0.1"), 12 * s)]);
        assert_eq!(later.puts.len(), 1);
        assert_eq!(later.puts[0].1.expires_ns, 12 * s);
    }

    #[test]
    fn the_slack_is_at_most_half_the_grace() {
        let s = MAX_SLACK_NS;
        let mut t = LearnedTable::new(100).with_grace(s / 5);
        let a = ip("198.18.0.1");
        t.learn("a.example.com", &targets(&[443]), &[(a, 10 * s)])
            .unwrap();
        let within = t.learn("a.example.com", &targets(&[443]), &[(a, 10 * s + s / 10)]);
        assert!(within.unwrap().puts.is_empty());
        let past = t.learn("a.example.com", &targets(&[443]), &[(a, 10 * s + s / 5)]);
        assert_eq!(past.unwrap().puts[0].1.expires_ns, 10 * s + s / 5);
        let mut none = LearnedTable::new(100).with_grace(0);
        none.learn("a.example.com", &targets(&[443]), &[(a, 10 * s)])
            .unwrap();
        let next = none.learn("a.example.com", &targets(&[443]), &[(a, 10 * s + 1)]);
        assert_eq!(
            next.unwrap().puts.len(),
            1,
            "no grace: every growth is written"
        );
    }

    #[test]
    fn duplicates_count_once_and_large_answers_are_cut() {
        let mut t = LearnedTable::new(1000);
        let a = ip("198.18.0.1");
        let l = t
            .learn(
                "a.example.com",
                &targets(&[443]),
                &[(a, 50), (a, 20), (a, 90)],
            )
            .unwrap();
        assert_eq!(l.record, vec![(a, 20)], "once, with the earliest expiry");
        assert_eq!((t.entries(), t.len()), (1, 1));
        let many: Vec<(IpAddr, u64)> = (0..200u32)
            .map(|i| (IpAddr::V4(std::net::Ipv4Addr::from(0xc613_0000 + i)), 9))
            .collect();
        t.learn("b.example.com", &targets(&[443]), &many).unwrap();
        assert_eq!(t.len(), 1 + MAX_PER_ANSWER);
        assert_eq!(t.sweep(10).len(), MAX_PER_ANSWER);
        assert_eq!(t.entries(), 1, "the count follows what is stored");
        assert_eq!(t.sweep(100).len(), 1);
        assert_eq!(t.entries(), 0);
        assert!(t.names_of(a).is_empty());
    }

    #[test]
    fn mapped_and_unspecified_answers_allow_nothing() {
        let mut t = LearnedTable::new(100);
        let puts = t
            .learn(
                "a.example.com",
                &targets(&[443]),
                &[
                    (ip("::ffff:198.18.0.1"), 9),
                    (ip("0.0.0.0"), 9),
                    (ip("::"), 9),
                ],
            )
            .unwrap()
            .puts;
        assert!(puts.is_empty() && t.is_empty());
    }

    #[test]
    fn the_caps_refuse_instead_of_growing() {
        let mut t = LearnedTable::new(2);
        t.learn(
            "a.example.com",
            &targets(&[80, 443]),
            &[(ip("198.18.0.1"), 9)],
        )
        .unwrap();
        let e = t
            .learn("a.example.com", &targets(&[80]), &[(ip("198.18.0.2"), 9)])
            .unwrap_err();
        assert_eq!(e, Full { wanted: 3, max: 2 });
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_reload_revokes_names_and_ports_that_are_gone() {
        let mut t = LearnedTable::new(100);
        t.learn(
            "a.example.com",
            &targets(&[80, 443]),
            &[(ip("198.18.0.1"), 9)],
        )
        .unwrap();
        t.learn(
            "gone.example.com",
            &targets(&[443]),
            &[(ip("198.18.0.2"), 9)],
        )
        .unwrap();
        let mut p = CompiledPolicy::default();
        p.hostnames.insert(
            "a.example.com".into(),
            BTreeMap::from([((443, Proto::Tcp), BTreeSet::from([7]))]),
        );
        let (puts, mut deletes) = t.retarget(&NameTable::build(&p, &[]));
        deletes.sort();
        assert_eq!(puts.len(), 1, "the kept rule now carries the new rule id");
        assert_eq!(puts[0].1.rule_id, 7);
        let mut want = vec![
            rule_key(ip("198.18.0.1"), 80, 6),
            rule_key(ip("198.18.0.2"), 443, 6),
        ];
        want.sort();
        assert_eq!(deletes, want);
        assert_eq!((t.len(), t.entries()), (1, 1));
    }

    fn scoped(port: u16, ids: &[u32]) -> Targets {
        let g = crate::dnsproxy::names::Grant {
            rule_id: 1,
            vis: Visibility::Only(ids.iter().copied().collect()),
        };
        [((port, Proto::Tcp), g)].into()
    }

    #[test]
    fn an_address_two_names_share_is_for_both_names_policies() {
        let mut t = LearnedTable::new(100).with_grace(0);
        let a = t
            .learn(
                "a.example.com",
                &scoped(443, &[1]),
                &[(ip("198.18.0.1"), 100)],
            )
            .unwrap();
        let key = a.puts[0].0;
        assert_eq!(t.visibility(&key), &Visibility::Only([1].into()));
        // Same address, same expiry, another name for policy 2: the rule is rewritten for both.
        let b = t
            .learn(
                "b.example.com",
                &scoped(443, &[2]),
                &[(ip("198.18.0.1"), 100)],
            )
            .unwrap();
        assert_eq!(
            b.puts.len(),
            1,
            "the value is the same, its visibility is not"
        );
        assert_eq!(t.visibility(&key), &Visibility::Only([1, 2].into()));
        assert_eq!(t.sets_in_use().len(), 1);
        // Nobody may use a target: no rule.
        let none = t
            .learn(
                "c.example.com",
                &scoped(8443, &[]),
                &[(ip("198.18.0.9"), 100)],
            )
            .unwrap();
        assert!(none.puts.is_empty());
        // Expired: the rule and its set go.
        t.sweep(1_000);
        assert!(t.sets_in_use().is_empty());
    }
}
