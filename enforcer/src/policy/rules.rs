//! The rule set the kernel maps should hold, in the maps' own key/value types.

use std::collections::BTreeMap;

use enforcer_common::{
    POLICY_NODE, RULE_KEY_FIXED_BITS, RuleKey, RuleValue, SKIP_EXACT_ANY_PORT,
    SKIP_PREFIX_ANY_PORT, SKIP_PREFIX_PORT, SKIP_SCOPING, VSET_EVERYONE,
};

use super::{
    allow_spec::{AllowSpec, Net, Proto, V4_MAPPED},
    visibility::Visibility,
};

/// Rules sorted by key, each once: a million of them take 40 bytes each, not a tree's 70.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleList<K>(Vec<(K, RuleValue)>);

impl<K> Default for RuleList<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord> RuleList<K> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, key: &K) -> Option<usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key)).ok()
    }

    pub fn get(&self, key: &K) -> Option<&RuleValue> {
        self.find(key).map(|i| &self.0[i].1)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut RuleValue> {
        self.find(key).map(|i| &mut self.0[i].1)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_some()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &RuleValue> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &RuleValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn as_slice(&self) -> &[(K, RuleValue)] {
        &self.0
    }

    /// The rules, moved out (the maps keep them as their mirror).
    pub fn take(&mut self) -> Vec<(K, RuleValue)> {
        std::mem::take(&mut self.0)
    }
}

impl<K> IntoIterator for RuleList<K> {
    type Item = (K, RuleValue);
    type IntoIter = std::vec::IntoIter<(K, RuleValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A rule added but not yet sorted in carries, until [`DesiredRules::seal`], an index into
/// `DesiredRules::vis` in its `vset` (0: everyone's), so that the common case costs no more
/// than the rule, and sealing compacts the rules where they are (no second million-rule
/// vector).
fn pending_value(rule_id: u32, flags: u32, vis: u32) -> RuleValue {
    RuleValue {
        rule_id,
        flags,
        vset: vis,
        pad: 0,
    }
}

/// Exact rules everyone may use, listed from where they are kept for the daemon's life (the
/// compiled static destinations) instead of copied: at a million rules a copy is 40 MB, held
/// beside the maps' mirror at a reload's peak (docs/architecture.md, "Reloads").
pub trait InKeyOrder: Send + Sync {
    /// Sorted by key, each key once, every value usable by everyone.
    fn exact_in_key_order(&self) -> Box<dyn Iterator<Item = (RuleKey, RuleValue)> + '_>;

    /// Whether one of them is for any port (0).
    fn any_port(&self) -> bool;
}

/// A shared [`InKeyOrder`] list: two are equal when they are the same list.
#[derive(Clone)]
pub struct Listed(pub std::sync::Arc<dyn InKeyOrder>);

impl std::fmt::Debug for Listed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listed(..)")
    }
}

impl PartialEq for Listed {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Listed {}

/// The exact-map key of a host destination (none for a network, or for an IPv6 address
/// inside `::ffff:0:0/96`, which the IPv4 rule covers).
/// The same as a host's one [`Net::kernel_prefixes`], without the general case: a reload
/// asks this of a million destinations.
pub fn exact_key(spec: &AllowSpec) -> Option<RuleKey> {
    if !spec.net.is_host() {
        return None;
    }
    let (addr, _) = spec.net.normalized();
    if spec.net.addr.is_ipv6() && u128::from_be_bytes(addr) >> 32 == V4_MAPPED >> 32 {
        return None;
    }
    Some(RuleKey {
        policy: POLICY_NODE,
        port: spec.port,
        proto: spec.proto.number(),
        pad: 0,
        addr,
    })
}

/// Desired content of the two rule maps plus the names of the rule ids used in them. Rules
/// are added, then [`DesiredRules::seal`]ed: sorted, with the sources of one key merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRules {
    /// The exact rules, besides those of `listed`.
    pub exact: RuleList<RuleKey>,
    /// More exact rules, everyone's, listed from elsewhere; where a key is in both, the two
    /// merge as sources of one key do ([`DesiredRules::exact_rules`]).
    pub listed: Option<Listed>,
    /// Keyed by (LPM prefix length over the whole key, key with host bits cleared).
    pub prefix: RuleList<(u32, RuleKey)>,
    pub sources: BTreeMap<u32, String>,
    /// Scoping: who may use each rule not everyone may (docs/architecture.md, "Scoping");
    /// their `vset` is set by `visibility::intern`.
    pub scoped: BTreeMap<RuleKey, Visibility>,
    pub scoped_prefix: BTreeMap<(u32, RuleKey), Visibility>,
    /// Scoping is configured (units or pods): learned rules may be scoped too, so the
    /// programs must look the caller's policy up.
    pub scoping: bool,
    pending_exact: Vec<(RuleKey, RuleValue)>,
    pending_prefix: Vec<((u32, RuleKey), RuleValue)>,
    /// Visibilities of pending rules other than everyone's (index - 1).
    vis: Vec<Visibility>,
}

impl DesiredRules {
    /// Room for `exact` exact rules before they are sealed.
    pub fn with_capacity(exact: usize) -> Self {
        Self {
            pending_exact: Vec::with_capacity(exact),
            ..Self::default()
        }
    }

    /// Adds one destination under `rule_id`. When two sources allow the same key, the lower
    /// rule id is kept so that the result does not depend on insertion order.
    pub fn add(&mut self, spec: &AllowSpec, rule_id: u32) {
        self.add_flagged(spec, rule_id, 0);
    }

    /// Like [`DesiredRules::add`], with [`RuleValue::flags`] (e.g. `RULE_FLAG_DNS`); flags of
    /// two sources of one key are combined.
    pub fn add_flagged(&mut self, spec: &AllowSpec, rule_id: u32, flags: u32) {
        self.add_scoped(spec, rule_id, flags, &Visibility::Everyone);
    }

    /// Like [`DesiredRules::add_flagged`], for the policies in `vis` only; a key allowed by
    /// several sources may be used by the policies of each. A rule nobody may use is left out.
    pub fn add_scoped(&mut self, spec: &AllowSpec, rule_id: u32, flags: u32, vis: &Visibility) {
        if matches!(vis, Visibility::Only(ids) if ids.is_empty()) {
            return;
        }
        let vis = if *vis == Visibility::Everyone {
            0
        } else {
            self.vis.push(vis.clone());
            self.vis.len() as u32
        };
        let value = pending_value(rule_id, flags, vis);
        for (addr, addr_prefix) in spec.net.kernel_prefixes() {
            let key = RuleKey {
                policy: POLICY_NODE,
                port: spec.port,
                proto: spec.proto.number(),
                pad: 0,
                addr,
            };
            if addr_prefix == 128 {
                self.pending_exact.push((key, value));
            } else {
                let len = RULE_KEY_FIXED_BITS + u32::from(addr_prefix);
                self.pending_prefix.push(((len, key), value));
            }
        }
    }

    /// Sorts what was added in: one rule per key, with the lowest rule id of its sources, their
    /// flags combined, usable by everyone any of them allows (everyone's if one is).
    pub fn seal(mut self) -> Self {
        let vis = std::mem::take(&mut self.vis);
        let exact = std::mem::take(&mut self.pending_exact);
        merge_in(&mut self.exact, &mut self.scoped, exact, &vis);
        let prefix = std::mem::take(&mut self.pending_prefix);
        merge_in(&mut self.prefix, &mut self.scoped_prefix, prefix, &vis);
        self
    }

    /// Every exact rule in key order: `exact` and `listed` merged.
    pub fn exact_rules(&self) -> impl Iterator<Item = (RuleKey, RuleValue)> + '_ {
        let listed = self.listed.as_ref().map(|l| l.0.exact_in_key_order());
        MergeListed {
            own: self.exact.iter().map(|(k, v)| (*k, *v)).peekable(),
            listed: listed.into_iter().flatten().peekable(),
        }
    }

    /// The `Config::skip` bits for this rule set: the lookups the kernel can leave out because
    /// no rule of that kind exists.
    pub fn lookup_skips(&self) -> u32 {
        let mut skip = SKIP_EXACT_ANY_PORT | SKIP_PREFIX_PORT | SKIP_PREFIX_ANY_PORT;
        if !self.scoping && self.scoped.is_empty() && self.scoped_prefix.is_empty() {
            skip |= SKIP_SCOPING;
        }
        let listed_any = self.listed.as_ref().is_some_and(|l| l.0.any_port());
        if listed_any || self.exact.keys().any(|k| k.port == 0) {
            skip &= !SKIP_EXACT_ANY_PORT;
        }
        for (_, k) in self.prefix.keys() {
            skip &= !if k.port == 0 {
                SKIP_PREFIX_ANY_PORT
            } else {
                SKIP_PREFIX_PORT
            };
        }
        skip
    }

    /// `NO_PREFIX`'s words for these rules: the regions no prefix rule reaches.
    pub fn no_prefix_words(&self) -> Vec<u64> {
        super::prefix_regions::no_prefix_words(self.prefix.keys())
    }

    /// Builds the rule set for `--allow` flags: rule id = position + 1 (0 is never used, so
    /// that a zeroed value is recognisably wrong).
    pub fn from_specs<'a>(specs: impl IntoIterator<Item = &'a AllowSpec>) -> Self {
        let mut rules = Self::default();
        for (i, spec) in specs.into_iter().enumerate() {
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            rules.sources.insert(id, format!("--allow {spec}"));
            rules.add(spec, id);
        }
        rules.seal()
    }
}

/// Two key-ordered lists as one: a key in both gets the lower rule id and both flags, and is
/// everyone's (as every listed rule is).
struct MergeListed<A: Iterator, B: Iterator> {
    own: std::iter::Peekable<A>,
    listed: std::iter::Peekable<B>,
}

impl<A, B> Iterator for MergeListed<A, B>
where
    A: Iterator<Item = (RuleKey, RuleValue)>,
    B: Iterator<Item = (RuleKey, RuleValue)>,
{
    type Item = (RuleKey, RuleValue);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.own.peek(), self.listed.peek()) {
            (Some((a, _)), Some((b, _))) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => self.own.next(),
            std::cmp::Ordering::Greater => self.listed.next(),
            std::cmp::Ordering::Equal => {
                let (k, own) = self.own.next()?;
                let (_, listed) = self.listed.next()?;
                let flags = own.flags | listed.flags;
                let id = own.rule_id.min(listed.rule_id);
                Some((k, pending_value(id, flags, VSET_EVERYONE)))
            }
        }
    }
}

/// Sorts `pending` into `list` (and the scoped visibilities into `scoped`), merging the
/// sources of each key; `vis[i - 1]` is pending visibility `i` (carried in `vset`).
fn merge_in<K: Ord + Copy>(
    list: &mut RuleList<K>,
    scoped: &mut BTreeMap<K, Visibility>,
    mut pending: Vec<(K, RuleValue)>,
    vis: &[Visibility],
) {
    if pending.is_empty() {
        return;
    }
    // Rules already in take part like the pending ones (their visibility from `scoped`).
    let mut extra = Vec::new();
    for (k, v) in list.take() {
        let vis = match scoped.remove(&k) {
            Some(s) => {
                extra.push(s);
                (vis.len() + extra.len()) as u32
            }
            None => 0,
        };
        pending.push((k, pending_value(v.rule_id, v.flags, vis)));
    }
    let visibility = |i: u32| -> Visibility {
        let i = (i as usize).wrapping_sub(1);
        vis.get(i)
            .or_else(|| extra.get(i.wrapping_sub(vis.len())))
            .cloned()
            .unwrap_or(Visibility::Everyone)
    };
    super::sorting::sort_mostly_sorted(&mut pending);
    // Compacted in place: rules 0..kept are final, the last of them still gathering its run.
    let mut kept = 0;
    let mut run_vis: Option<Visibility> = None;
    for i in 0..pending.len() {
        let (k, p) = pending[i];
        if kept > 0 && pending[kept - 1].0 == k {
            let v = &mut pending[kept - 1].1;
            v.flags |= p.flags;
            v.rule_id = v.rule_id.min(p.rule_id);
            run_vis = match (run_vis, p.vset) {
                (None, _) | (_, 0) => None,
                (Some(a), i) => Some(a.union(&visibility(i))),
            };
            continue;
        }
        if let (true, Some(v)) = (kept > 0, run_vis.take()) {
            scoped.insert(pending[kept - 1].0, v);
        }
        run_vis = (p.vset != 0).then(|| visibility(p.vset));
        pending[kept] = (k, pending_value(p.rule_id, p.flags, VSET_EVERYONE));
        kept += 1;
    }
    if let (true, Some(v)) = (kept > 0, run_vis) {
        scoped.insert(pending[kept - 1].0, v);
    }
    // A union that reached everyone is no scope at all.
    scoped.retain(|_, v| *v != Visibility::Everyone);
    pending.truncate(kept);
    pending.shrink_to_fit();
    *list = RuleList(pending);
}

/// A map entry decoded back into user terms, for `inspect` and logs.
pub fn describe(prefix_len: Option<u32>, key: &RuleKey) -> AllowSpec {
    let addr_prefix = prefix_len.map_or(128, |p| p.saturating_sub(RULE_KEY_FIXED_BITS).min(128));
    let net = Net::from_normalized(key.addr, addr_prefix as u8);
    AllowSpec {
        net,
        port: key.port,
        proto: Proto::from_number(key.proto).unwrap_or(Proto::Tcp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(s: &[&str]) -> Vec<AllowSpec> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn lookup_skips_name_only_the_kinds_that_are_absent() {
        let all = SKIP_EXACT_ANY_PORT | SKIP_PREFIX_PORT | SKIP_PREFIX_ANY_PORT | SKIP_SCOPING;
        // Without scoping the policy lookup is skipped too; the other bits are the same.
        let skips = |s: &[&str]| DesiredRules::from_specs(&specs(s)).lookup_skips() & !SKIP_SCOPING;
        let all = all & !SKIP_SCOPING;
        assert_eq!(skips(&[]), all);
        assert_eq!(skips(&["198.18.0.1:80/tcp"]), all);
        assert_eq!(
            skips(&["198.18.0.1:*/tcp"]),
            SKIP_PREFIX_PORT | SKIP_PREFIX_ANY_PORT
        );
        assert_eq!(
            skips(&["198.18.1.0/24:443/tcp"]),
            SKIP_EXACT_ANY_PORT | SKIP_PREFIX_ANY_PORT
        );
        assert_eq!(
            skips(&["198.18.1.0/24:*/udp"]),
            SKIP_EXACT_ANY_PORT | SKIP_PREFIX_PORT
        );
        assert_eq!(
            skips(&[
                "198.18.0.1:*/tcp",
                "198.18.1.0/24:*/udp",
                "[fd00::/64]:53/udp"
            ]),
            0
        );
        let mut r = DesiredRules::from_specs(&specs(&["198.18.0.1:80/tcp"]));
        assert_eq!(r.lookup_skips() & SKIP_SCOPING, SKIP_SCOPING, "no scoping");
        r.scoping = true;
        assert_eq!(
            r.lookup_skips() & SKIP_SCOPING,
            0,
            "units or pods configured"
        );
        let mut r = DesiredRules::default();
        let only = Visibility::Only([1].into());
        r.add_scoped(&"198.18.0.1:80/tcp".parse().unwrap(), 1, 0, &only);
        let r = r.seal();
        assert_eq!(r.lookup_skips() & SKIP_SCOPING, 0, "a scoped rule");
    }

    #[test]
    fn hosts_go_to_the_exact_map_and_networks_to_the_trie() {
        let r = DesiredRules::from_specs(&specs(&[
            "198.18.0.1:80/tcp",
            "[fd00::1]:53/udp",
            "198.18.1.0/24:*/tcp",
            "[fd00:1::/64]:443/tcp",
        ]));
        assert_eq!(r.exact.len(), 2);
        assert_eq!(r.prefix.len(), 2);
        let lens: Vec<u32> = r.prefix.keys().map(|(l, _)| *l).collect();
        assert!(lens.contains(&(64 + 96 + 24)));
        assert!(lens.contains(&(64 + 64)));
        let k = r.exact.keys().find(|k| k.proto == 17).unwrap();
        assert_eq!((k.port, k.policy), (53, 0));
    }

    #[test]
    fn duplicates_merge_to_the_lowest_rule_id() {
        let r = DesiredRules::from_specs(&specs(&[
            "198.18.0.1:80",
            "198.18.0.2:80",
            "198.18.0.1:80/tcp",
        ]));
        assert_eq!(r.exact.len(), 2);
        let ids: Vec<u32> = r.exact.values().map(|v| v.rule_id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(r.sources.len(), 3);
    }

    #[test]
    fn exact_key_is_the_one_host_prefix_the_kernel_holds() {
        for (addr, prefix) in [
            ("198.18.0.1", 32),
            ("fd00::1", 128),
            ("::1", 128),
            ("::ffff:198.18.0.1", 128),
            ("::fffe:198.18.0.1", 128),
            ("::1:ffff:198.18.0.1", 128),
            ("198.18.1.0", 24),
            ("fd00::", 64),
            ("::", 0),
            ("::ffff:0:0", 96),
        ] {
            let net = Net {
                addr: addr.parse().unwrap(),
                prefix,
            };
            let spec = AllowSpec {
                net,
                port: 80,
                proto: Proto::Tcp,
            };
            let mut prefixes = net.kernel_prefixes();
            let host = match (prefixes.next(), prefixes.next()) {
                (Some((addr, 128)), None) => Some(addr),
                _ => None,
            };
            assert_eq!(exact_key(&spec).map(|k| k.addr), host, "{addr}/{prefix}");
            if let Some(k) = exact_key(&spec) {
                let mut one = DesiredRules::default();
                one.add(&spec, 1);
                assert_eq!(Some(&k), one.seal().exact.keys().next());
            }
        }
    }

    #[test]
    fn describe_inverts_add() {
        for s in [
            "198.18.0.1:80/tcp",
            "198.18.1.0/24:*/udp",
            "[fd00::/8]:443/tcp",
        ] {
            let spec: AllowSpec = s.parse().unwrap();
            let r = DesiredRules::from_specs([&spec]);
            let got = if let Some(k) = r.exact.keys().next() {
                describe(None, k)
            } else {
                let (l, k) = r.prefix.keys().next().unwrap();
                describe(Some(*l), k)
            };
            assert_eq!(got.net, spec.net, "{s}");
            assert_eq!((got.port, got.proto), (spec.port, spec.proto));
        }
    }
}
