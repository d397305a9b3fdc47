//! Static destinations (IP addresses and networks of ServiceEntries and the config) and the rule
//! ids that allow each one. A million of them are kept for the daemon's whole life (events
//! and `explain` read them), so they are a sorted vector of (destination, lowest id), 28 bytes
//! each, with the rare further ids aside, rather than a tree of sets (about 160 bytes each).

use std::{collections::BTreeMap, ops::Range};

use enforcer_common::RuleKey;

use super::{
    allow_spec::{AllowSpec, Net, V4_MAPPED},
    rules::exact_key,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statics {
    /// Sorted by destination, each once, with its lowest rule id.
    rules: Vec<(AllowSpec, u32)>,
    /// The other ids of destinations more than one rule allows, ascending.
    more: BTreeMap<AllowSpec, Vec<u32>>,
    /// What [`Statics::host_keys`] gives, kept beside the rules it describes (recomputed
    /// whenever they change).
    hosts: HostKeys,
}

/// The host destinations' exact-map keys, as [`Statics::host_keys`] lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HostKeys {
    /// Strictly ascending: the maps can take them as they are, without a sort.
    in_order: bool,
    /// One of them is for any port.
    any_port: bool,
}

/// The rule ids of one destination, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids<'a> {
    first: u32,
    more: &'a [u32],
}

/// Runs of the rules one after the other: a reload walks a million of them, and a chain of
/// iterators cost twice what this loop does.
struct Runs<'a> {
    rules: &'a [(AllowSpec, u32)],
    runs: [Range<usize>; 3],
    at: usize,
}

impl<'a> Iterator for Runs<'a> {
    type Item = (&'a AllowSpec, u32);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(i) = self.runs.get_mut(self.at)?.next() {
                let (spec, id) = self.rules.get(i)?;
                return Some((spec, *id));
            }
            self.at += 1;
        }
    }
}

impl<'a> Ids<'a> {
    /// The lowest: the id the kernel's rule carries.
    pub fn first(self) -> u32 {
        self.first
    }

    pub fn iter(self) -> impl Iterator<Item = u32> + 'a {
        std::iter::once(self.first).chain(self.more.iter().copied())
    }
}

impl Statics {
    /// From (destination, id) pairs in any order, repeats allowed.
    pub fn from_pairs(mut pairs: Vec<(AllowSpec, u32)>) -> Self {
        super::sorting::par_sort(&mut pairs);
        pairs.dedup();
        // Compacted in place: a second million-pair vector would double the peak.
        let mut more: BTreeMap<AllowSpec, Vec<u32>> = BTreeMap::new();
        let mut kept = 0;
        for i in 0..pairs.len() {
            let (spec, id) = pairs[i];
            if kept > 0 && pairs[kept - 1].0 == spec {
                more.entry(spec).or_default().push(id);
            } else {
                pairs[kept] = (spec, id);
                kept += 1;
            }
        }
        pairs.truncate(kept);
        pairs.shrink_to_fit();
        let mut statics = Self {
            rules: pairs,
            more,
            hosts: HostKeys::default(),
        };
        statics.survey_hosts();
        statics
    }

    /// Whether the host destinations' keys come out of [`Statics::host_keys`] strictly
    /// ascending. Not all do when two destinations share a key, or were the order of specs
    /// and of kernel keys ever to part: the desired rules are then copied and sorted.
    pub fn host_keys_in_order(&self) -> bool {
        self.hosts.in_order
    }

    /// Whether a host destination is for any port.
    pub fn hosts_any_port(&self) -> bool {
        self.hosts.any_port
    }

    /// The host destinations' exact-map keys, in [`Statics::in_kernel_order`], each with its
    /// lowest rule id.
    pub fn host_keys(&self) -> impl Iterator<Item = (RuleKey, u32)> + '_ {
        self.firsts_in_kernel_order()
            .filter_map(|(spec, id)| Some((exact_key(spec)?, id)))
    }

    fn survey_hosts(&mut self) {
        let mut keys = self.host_keys().map(|(k, _)| k);
        let mut last = keys.next();
        let mut hosts = HostKeys {
            in_order: true,
            any_port: last.is_some_and(|k| k.port == 0),
        };
        for k in keys {
            hosts.in_order &= last.is_some_and(|l| l < k);
            hosts.any_port |= k.port == 0;
            last = Some(k);
        }
        self.hosts = hosts;
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn ids(&self, (spec, first): &(AllowSpec, u32)) -> Ids<'_> {
        Ids {
            first: *first,
            more: self.more.get(spec).map_or(&[], Vec::as_slice),
        }
    }

    /// Every destination in order, with its ids.
    pub fn iter(&self) -> impl Iterator<Item = (&AllowSpec, Ids<'_>)> {
        self.rules.iter().map(|r| (&r.0, self.ids(r)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &AllowSpec> {
        self.rules.iter().map(|r| &r.0)
    }

    pub fn get_key_value(&self, spec: &AllowSpec) -> Option<(&AllowSpec, Ids<'_>)> {
        let i = self.rules.binary_search_by(|r| r.0.cmp(spec)).ok()?;
        let r = &self.rules[i];
        Some((&r.0, self.ids(r)))
    }

    pub fn get(&self, spec: &AllowSpec) -> Option<Ids<'_>> {
        self.get_key_value(spec).map(|(_, ids)| ids)
    }

    /// The destinations of one network (every port and protocol), in order.
    pub fn of_net(&self, net: Net) -> impl Iterator<Item = (&AllowSpec, Ids<'_>)> {
        let key = net.order();
        let from = self.rules.partition_point(|r| r.0.net.order() < key);
        let to = self.rules.partition_point(|r| r.0.net.order() <= key);
        self.slice(from..to.max(from))
    }

    /// Every destination, host rules in the order of their kernel keys (`RuleKey`: the
    /// 16-byte address first, where IPv4 sits at `::ffff:0:0/96`, among the IPv6
    /// addresses), so that the desired rules built from them need no sort.
    pub fn in_kernel_order(&self) -> impl Iterator<Item = (&AllowSpec, Ids<'_>)> {
        self.firsts_in_kernel_order()
            .map(|(spec, first)| (spec, self.ids(&(*spec, first))))
    }

    /// [`Statics::in_kernel_order`] with the lowest id alone (no look-up of the others).
    pub fn firsts_in_kernel_order(&self) -> impl Iterator<Item = (&AllowSpec, u32)> {
        let v6 = self.rules.partition_point(|r| r.0.net.addr.is_ipv4());
        let below = v6 + self.rules[v6..].partition_point(|r| r.0.net.order().1 < V4_MAPPED);
        Runs {
            rules: &self.rules,
            runs: [v6..below, 0..v6, below..self.rules.len()],
            at: 0,
        }
    }

    fn slice(&self, at: Range<usize>) -> impl Iterator<Item = (&AllowSpec, Ids<'_>)> {
        self.rules[at].iter().map(|r| (&r.0, self.ids(r)))
    }

    /// Folds destinations into broader ones: `folds` are (destination, the one that covers
    /// it); the folded destination goes, its ids join the cover's.
    pub fn fold(&mut self, folds: &[(AllowSpec, AllowSpec)]) {
        if folds.is_empty() {
            return;
        }
        let mut gone = vec![false; self.rules.len()];
        for (spec, cover) in folds {
            let (Ok(i), Ok(c)) = (
                self.rules.binary_search_by(|r| r.0.cmp(spec)),
                self.rules.binary_search_by(|r| r.0.cmp(cover)),
            ) else {
                continue;
            };
            gone[i] = true;
            let mut ids: Vec<u32> = self.ids(&self.rules[c]).iter().collect();
            ids.extend(self.ids(&self.rules[i]).iter());
            ids.sort_unstable();
            ids.dedup();
            self.more.remove(spec);
            self.rules[c].1 = ids[0];
            if ids.len() > 1 {
                self.more.insert(*cover, ids[1..].to_vec());
            }
        }
        let mut keep = gone.iter().map(|g| !g);
        self.rules.retain(|_| keep.next().unwrap_or(true));
        self.survey_hosts();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> AllowSpec {
        s.parse().unwrap()
    }

    #[test]
    fn one_entry_per_destination_with_every_id_lowest_first() {
        let s = Statics::from_pairs(vec![
            (spec("10.0.0.2:443/tcp"), 7),
            (spec("10.0.0.1:443/tcp"), 9),
            (spec("10.0.0.2:443/tcp"), 3),
            (spec("10.0.0.2:443/tcp"), 7),
        ]);
        assert_eq!(s.len(), 2);
        let ids: Vec<u32> = s.get(&spec("10.0.0.2:443/tcp")).unwrap().iter().collect();
        assert_eq!(ids, vec![3, 7]);
        assert_eq!(s.get(&spec("10.0.0.1:443/tcp")).unwrap().first(), 9);
        assert_eq!(s.get(&spec("10.0.0.3:443/tcp")), None);
        let keys: Vec<String> = s.keys().map(ToString::to_string).collect();
        assert_eq!(keys, vec!["10.0.0.1:443/tcp", "10.0.0.2:443/tcp"]);
    }

    #[test]
    fn kernel_order_is_by_normalized_address_then_port_and_protocol() {
        let s = Statics::from_pairs(
            [
                "[fd00::1]:80/tcp",
                "10.0.0.1:80/tcp",
                "[::1]:80/tcp",
                "10.0.0.1:*/icmp",
                "[::a]:53/udp",
                "9.0.0.1:443/udp",
                "9.0.0.1:443/tcp",
            ]
            .into_iter()
            .enumerate()
            .map(|(i, s)| (spec(s), i as u32))
            .collect(),
        );
        let got: Vec<&AllowSpec> = s.in_kernel_order().map(|(k, _)| k).collect();
        let mut want: Vec<&AllowSpec> = s.keys().collect();
        want.sort_by_key(|k| (k.net.normalized(), k.port, k.proto.number()));
        assert_eq!(got, want);
        assert_eq!(got[0].to_string(), "[::1]:80/tcp");
    }

    #[test]
    fn ranges_and_folds() {
        let mut s = Statics::from_pairs(vec![
            (spec("10.0.0.0/8:443/tcp"), 5),
            (spec("10.0.0.1:443/tcp"), 2),
            (spec("10.0.0.1:80/tcp"), 4),
            (spec("10.0.0.2:443/tcp"), 6),
        ]);
        let net = spec("10.0.0.1:1/tcp").net;
        let of_net: Vec<String> = s.of_net(net).map(|(k, _)| k.to_string()).collect();
        assert_eq!(of_net, vec!["10.0.0.1:80/tcp", "10.0.0.1:443/tcp"]);
        s.fold(&[
            (spec("10.0.0.1:443/tcp"), spec("10.0.0.0/8:443/tcp")),
            (spec("10.0.0.2:443/tcp"), spec("10.0.0.0/8:443/tcp")),
        ]);
        assert_eq!(s.len(), 2);
        let ids: Vec<u32> = s.get(&spec("10.0.0.0/8:443/tcp")).unwrap().iter().collect();
        assert_eq!(ids, vec![2, 5, 6]);
        assert_eq!(s.get(&spec("10.0.0.2:443/tcp")), None);
    }
}
