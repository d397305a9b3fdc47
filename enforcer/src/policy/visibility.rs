//! Which policies may use a kernel rule (docs/architecture.md, "Scoping"): sets of policy
//! ids, their stable ids in the `VSETS` map across applies, and the closure that keeps the
//! longest-prefix match honest. Pure.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use enforcer_common::{MAX_POLICIES, POLICY_WORDS, PolicyBits, RuleKey, VSET_EVERYONE};

use super::rules::DesiredRules;

/// Who may use a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Visibility {
    Everyone,
    /// Policy ids below [`MAX_POLICIES`]; empty: nobody (the rule is not written).
    Only(BTreeSet<u32>),
}

impl Visibility {
    /// Both together: a rule allowed by two sources is usable by either's policies.
    #[must_use]
    pub fn union(&self, other: &Self) -> Self {
        match (self, other) {
            (Self::Everyone, _) | (_, Self::Everyone) => Self::Everyone,
            (Self::Only(a), Self::Only(b)) => Self::Only(a.union(b).copied().collect()),
        }
    }

    /// Whether every policy that may use `other` may use this one too.
    pub fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Everyone, _) => true,
            (Self::Only(_), Self::Everyone) => false,
            (Self::Only(a), Self::Only(b)) => b.is_subset(a),
        }
    }

    /// The bitmap the kernel reads; `None` for everyone.
    pub fn bits(&self) -> Option<PolicyBits> {
        let Self::Only(ids) = self else {
            return None;
        };
        let mut bits = [0u64; POLICY_WORDS as usize];
        for p in ids.iter().filter(|p| **p < MAX_POLICIES) {
            bits[(p / 64) as usize] |= 1 << (p % 64);
        }
        Some(bits)
    }
}

/// A set id no set is ever written to (beyond every `maps.visibilitySets`): a rule naming
/// it is usable by no one, since the kernel's lookup of its words fails.
pub const NOBODY: u32 = u32::MAX / enforcer_common::POLICY_WORDS;

/// Who may use one ServiceEntry's rules: each host's answers, and the entry's addresses and
/// endpoints (the policies of any of its hosts, as Istio allows an entry's addresses to
/// whoever imports one of its hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryScope {
    pub entry: Visibility,
    pub hosts: Vec<Visibility>,
}

/// Gives each scoped rule of `rules` its `VSETS` id: prefix rules first take the visibility
/// of the shorter prefixes that cover them ([`close_prefixes`]). `extra`: sets in use
/// elsewhere (learned rules) that must keep their ids. Returns the ids and what the maps
/// must do.
pub fn intern(
    rules: &mut DesiredRules,
    interner: &Interner,
    extra: &BTreeSet<PolicyBits>,
) -> Result<(HashMap<PolicyBits, u32>, VsetPlan), VsetsFull> {
    if !rules.scoped_prefix.is_empty() {
        let mut all: BTreeMap<(u32, RuleKey), Visibility> = rules
            .prefix
            .keys()
            .map(|k| {
                let v = rules.scoped_prefix.get(k).cloned();
                (*k, v.unwrap_or(Visibility::Everyone))
            })
            .collect();
        close_prefixes(&mut all);
        rules.scoped_prefix = all
            .into_iter()
            .filter(|(_, v)| *v != Visibility::Everyone)
            .collect();
    }
    let mut wanted: BTreeSet<PolicyBits> = extra.clone();
    wanted.extend(rules.scoped.values().filter_map(Visibility::bits));
    wanted.extend(rules.scoped_prefix.values().filter_map(Visibility::bits));
    let (ids, plan) = interner.plan(&wanted)?;
    // Every set is in the plan; were one missing, the rule must be no one's, never
    // everyone's (the value it was created with).
    let id = |v: &Visibility| Interner::id_of(&ids, v).unwrap_or(NOBODY);
    for (k, v) in &rules.scoped {
        if let Some(value) = rules.exact.get_mut(k) {
            value.vset = id(v);
        }
    }
    for (k, v) in &rules.scoped_prefix {
        if let Some(value) = rules.prefix.get_mut(k) {
            value.vset = id(v);
        }
    }
    Ok((ids, plan))
}

/// The `VSETS` ids of the sets in the maps. An id keeps its set for as long as it is in use,
/// so a rule's visibility changes only by pointing the rule at another id; a new set never
/// reuses an id freed in the same apply, so no rule that still names an old id sees another
/// set through it.
#[derive(Debug, Clone)]
pub struct Interner {
    ids: HashMap<PolicyBits, u32>,
    /// The ids it may give: `first..end`.
    first: u32,
    end: u32,
}

/// What an apply does to `VSETS`: write `new` before any rule names them, drop `freed` once
/// no rule does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VsetPlan {
    pub new: Vec<(u32, PolicyBits)>,
    pub freed: Vec<u32>,
}

/// More distinct sets than `maps.visibilitySets` holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{wanted} distinct visibility sets do not fit in VSETS (maps.visibilitySets: {capacity})")]
pub struct VsetsFull {
    pub wanted: usize,
    pub capacity: u32,
}

impl Interner {
    /// `capacity`: `maps.visibilitySets` (id 0 is everyone and never stored).
    pub fn new(capacity: u32) -> Self {
        Self::with_range(1, capacity)
    }

    /// Gives ids in `first..end` only (DNS-aware mode's learned rules have the rest).
    pub fn with_range(first: u32, end: u32) -> Self {
        Self {
            ids: HashMap::new(),
            first: first.max(1),
            end,
        }
    }

    /// The id of each wanted set: kept where the set is already in the map, new otherwise.
    /// Call [`Interner::commit`] once the maps hold the result.
    pub fn plan(
        &self,
        wanted: &BTreeSet<PolicyBits>,
    ) -> Result<(HashMap<PolicyBits, u32>, VsetPlan), VsetsFull> {
        let full = || VsetsFull {
            wanted: wanted.len(),
            capacity: self.end - self.first + 1,
        };
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let mut free = (self.first..self.end).filter(|id| !used.contains(id));
        let mut ids = HashMap::new();
        let mut plan = VsetPlan::default();
        for bits in wanted {
            let id = match self.ids.get(bits) {
                Some(id) => *id,
                None => {
                    let id = free.next().ok_or_else(full)?;
                    plan.new.push((id, *bits));
                    id
                }
            };
            ids.insert(*bits, id);
        }
        plan.freed = self
            .ids
            .iter()
            .filter(|(bits, _)| !wanted.contains(*bits))
            .map(|(_, id)| *id)
            .collect();
        plan.freed.sort_unstable();
        Ok((ids, plan))
    }

    /// The maps hold the plan's new sets; until [`Interner::commit`] their ids stay taken
    /// (with the old ones), even if the apply fails midway and a rule names one.
    pub fn reserve(&mut self, plan: &VsetPlan) {
        for (id, bits) in &plan.new {
            self.ids.entry(*bits).or_insert(*id);
        }
    }

    /// The maps now hold `ids` (and nothing that was freed).
    pub fn commit(&mut self, ids: HashMap<PolicyBits, u32>) {
        self.ids = ids;
    }

    /// Seeded from the sets a previous run left in the map (`(id, bits)`, empty sets
    /// skipped), so that a restart keeps every rule's id.
    pub fn seeded(
        (first, end): (u32, u32),
        sets: impl IntoIterator<Item = (u32, PolicyBits)>,
    ) -> Self {
        let mut i = Self::with_range(first, end);
        for (id, bits) in sets {
            if (i.first..i.end).contains(&id) && bits.iter().any(|w| *w != 0) {
                i.ids.entry(bits).or_insert(id);
            }
        }
        i
    }

    /// The vset id of a visibility under `ids` (from [`Interner::plan`]); `None` for a set
    /// the plan does not hold, which must never be written as everyone's.
    pub fn id_of(ids: &HashMap<PolicyBits, u32>, v: &Visibility) -> Option<u32> {
        match v.bits() {
            None => Some(VSET_EVERYONE),
            Some(b) => ids.get(&b).copied(),
        }
    }
}

/// Sets for rules made one at a time (DNS-aware mode's learned rules): an id per distinct
/// set, given on first use and taken back once no rule names it. Pure; the caller writes
/// new sets to the map before a rule names them and empties freed ones after.
#[derive(Debug, Default)]
pub struct Pool {
    ids: HashMap<PolicyBits, u32>,
    first: u32,
    end: u32,
}

impl Pool {
    /// Ids in `first..end`; `sets`: what the map holds in that range now.
    pub fn new(first: u32, end: u32, sets: impl IntoIterator<Item = (u32, PolicyBits)>) -> Self {
        let ids = sets
            .into_iter()
            .filter(|(id, b)| (first..end).contains(id) && b.iter().any(|w| *w != 0))
            .map(|(id, b)| (b, id))
            .collect();
        Self { ids, first, end }
    }

    /// The id of `v` (0 for everyone) and whether its set is new (to be written first).
    pub fn id(&mut self, v: &Visibility) -> Result<(u32, bool), VsetsFull> {
        let Some(bits) = v.bits() else {
            return Ok((VSET_EVERYONE, false));
        };
        if let Some(id) = self.ids.get(&bits) {
            return Ok((*id, false));
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let id = (self.first..self.end)
            .find(|id| !used.contains(id))
            .ok_or(VsetsFull {
                wanted: self.ids.len() + 1,
                capacity: self.end.saturating_sub(self.first),
            })?;
        self.ids.insert(bits, id);
        Ok((id, true))
    }

    /// Forgets every set not in `used`; returns their ids (to be emptied).
    pub fn keep(&mut self, used: &BTreeSet<PolicyBits>) -> Vec<u32> {
        let mut gone: Vec<u32> = self
            .ids
            .iter()
            .filter(|(b, _)| !used.contains(*b))
            .map(|(_, id)| *id)
            .collect();
        self.ids.retain(|b, _| used.contains(b));
        gone.sort_unstable();
        gone
    }
}

/// The trie answers with the longest matching prefix only: a longer prefix visible to fewer
/// policies would hide a shorter one that allows the destination to others. Each prefix rule
/// therefore gets the union of its visibility with that of every shorter prefix of the same
/// port and protocol that covers it. `prefixes` is keyed like `DesiredRules::prefix` (LPM
/// length over the whole key, key with host bits cleared).
pub fn close_prefixes(prefixes: &mut BTreeMap<(u32, RuleKey), Visibility>) {
    let fixed = enforcer_common::RULE_KEY_FIXED_BITS;
    let lens: BTreeSet<u32> = prefixes.keys().map(|(l, _)| *l).collect();
    let snapshot = prefixes.clone();
    for ((len, key), vis) in prefixes.iter_mut() {
        for shorter in lens.iter().filter(|l| **l < *len) {
            let mut k = *key;
            k.addr = mask(k.addr, shorter - fixed);
            if let Some(wider) = snapshot.get(&(*shorter, k)) {
                *vis = vis.union(wider);
            }
        }
    }
}

fn mask(addr: [u8; 16], len: u32) -> [u8; 16] {
    let bits = u128::from_be_bytes(addr);
    let m = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    (bits & m).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(ids: &[u32]) -> Visibility {
        Visibility::Only(ids.iter().copied().collect())
    }

    #[test]
    fn unions_and_covering() {
        assert_eq!(only(&[1]).union(&only(&[2])), only(&[1, 2]));
        assert_eq!(
            only(&[1]).union(&Visibility::Everyone),
            Visibility::Everyone
        );
        assert!(Visibility::Everyone.covers(&only(&[3])));
        assert!(only(&[1, 2]).covers(&only(&[2])));
        assert!(!only(&[1]).covers(&only(&[2])));
        assert!(!only(&[1]).covers(&Visibility::Everyone));
        let b = only(&[0, 63, 64, 1023]).bits().unwrap();
        assert_eq!(b[0], 1 | 1 << 63);
        assert_eq!(b[1], 1);
        assert_eq!(b[15], 1 << 63);
        assert_eq!(Visibility::Everyone.bits(), None);
    }

    #[test]
    fn ids_are_stable_and_never_reused_within_an_apply() {
        let mut i = Interner::new(4);
        let a = only(&[1]).bits().unwrap();
        let b = only(&[2]).bits().unwrap();
        let c = only(&[3]).bits().unwrap();
        let (ids, plan) = i.plan(&[a, b].into()).unwrap();
        assert_eq!(plan.new.len(), 2);
        assert!(plan.freed.is_empty());
        let (ida, idb) = (ids[&a], ids[&b]);
        assert!(ida != 0 && idb != 0 && ida != idb);
        i.commit(ids);
        // b goes, c comes: a keeps its id, c does not take b's while b may still be named.
        let (ids, plan) = i.plan(&[a, c].into()).unwrap();
        assert_eq!(ids[&a], ida);
        assert_ne!(ids[&c], idb);
        assert_eq!(plan.freed, [idb]);
        assert_eq!(plan.new, [(ids[&c], c)]);
        assert_eq!(Interner::id_of(&ids, &only(&[3])), Some(ids[&c]));
        assert_eq!(
            Interner::id_of(&ids, &Visibility::Everyone),
            Some(VSET_EVERYONE)
        );
        assert_eq!(Interner::id_of(&ids, &only(&[9])), None, "never everyone's");
        i.commit(ids);
        // Capacity 4 holds ids 1..=3.
        let d = only(&[4]).bits().unwrap();
        let e = only(&[5]).bits().unwrap();
        assert_eq!(
            i.plan(&[a, c, d, e].into()).unwrap_err(),
            VsetsFull {
                wanted: 4,
                capacity: 4
            }
        );
    }

    fn key(addr: [u8; 4], port: u16) -> RuleKey {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&addr);
        RuleKey {
            policy: 0,
            port,
            proto: 6,
            pad: 0,
            addr: a,
        }
    }

    #[test]
    fn a_longer_prefix_carries_the_shorter_ones_visibility() {
        let fixed = enforcer_common::RULE_KEY_FIXED_BITS;
        let mut p = BTreeMap::new();
        // 10.0.0.0/8 for policy 1, 10.1.0.0/16 for policy 2, 10.1.2.0/24 any port for 3.
        p.insert((fixed + 104, key([10, 0, 0, 0], 443)), only(&[1]));
        p.insert((fixed + 112, key([10, 1, 0, 0], 443)), only(&[2]));
        p.insert((fixed + 120, key([10, 1, 2, 0], 0)), only(&[3]));
        p.insert((fixed + 112, key([10, 2, 0, 0], 443)), Visibility::Everyone);
        close_prefixes(&mut p);
        assert_eq!(p[&(fixed + 112, key([10, 1, 0, 0], 443))], only(&[1, 2]));
        assert_eq!(
            p[&(fixed + 120, key([10, 1, 2, 0], 0))],
            only(&[3]),
            "another port is another trie entry"
        );
        assert_eq!(p[&(fixed + 104, key([10, 0, 0, 0], 443))], only(&[1]));
        assert_eq!(
            p[&(fixed + 112, key([10, 2, 0, 0], 443))],
            Visibility::Everyone
        );
    }

    #[test]
    fn interning_sets_each_scoped_rule_and_closes_prefixes_first() {
        let fixed = enforcer_common::RULE_KEY_FIXED_BITS;
        let mut r = DesiredRules::default();
        r.add_scoped(&"198.18.0.0/16:443/tcp".parse().unwrap(), 1, 0, &only(&[1]));
        r.add_scoped(&"198.18.1.0/24:443/tcp".parse().unwrap(), 2, 0, &only(&[2]));
        r.add_scoped(&"198.18.9.9:443/tcp".parse().unwrap(), 3, 0, &only(&[2]));
        r.add(&"198.18.7.7:443/tcp".parse().unwrap(), 4);
        let mut r = r.seal();
        let mut i = Interner::new(16);
        let (ids, plan) = intern(&mut r, &i, &BTreeSet::new()).unwrap();
        // {1} for the /16, {1, 2} for the /24 (closed over the /16), {2} for the host.
        assert_eq!(plan.new.len(), 3, "{plan:?}");
        i.reserve(&plan);
        let vset = |len: u32, a: [u8; 4]| r.prefix.get(&(fixed + len, key(a, 443))).unwrap().vset;
        assert_eq!(
            ids[&only(&[1, 2]).bits().unwrap()],
            vset(120, [198, 18, 1, 0])
        );
        assert_ne!(vset(112, [198, 18, 0, 0]), 0);
        let exact = |a: [u8; 4]| r.exact.get(&key(a, 443)).unwrap().vset;
        assert_eq!(exact([198, 18, 7, 7]), VSET_EVERYONE);
        assert_ne!(exact([198, 18, 9, 9]), VSET_EVERYONE);
        i.commit(ids);
    }

    #[test]
    fn a_pool_gives_ids_in_its_range_and_takes_them_back() {
        let mut p = Pool::new(
            8,
            10,
            [
                (9, only(&[7]).bits().unwrap()),
                (3, only(&[1]).bits().unwrap()),
            ],
        );
        assert_eq!(p.id(&only(&[7])).unwrap(), (9, false), "kept from the map");
        assert_eq!(p.id(&Visibility::Everyone).unwrap(), (0, false));
        assert_eq!(
            p.id(&only(&[1])).unwrap(),
            (8, true),
            "id 3 is outside the range"
        );
        assert!(p.id(&only(&[2])).is_err(), "8 and 9 are taken");
        assert_eq!(p.keep(&[only(&[1]).bits().unwrap()].into()), [9]);
        assert_eq!(p.id(&only(&[2])).unwrap(), (9, true));
    }
}
