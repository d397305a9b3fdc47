//! Which static rules a broader one covers, so that the kernel holds only the broader one
//! (docs/architecture.md, "Rule maps"). Pure: a compiled policy in, the folds out.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{
    allow_spec::{AllowSpec, Net, mask128},
    compile::CompiledPolicy,
};

/// (rule, the broader rule it folds into), in the order they fold. Only a network wider than
/// a host, or a rule for any port, can cover another: those (few) are the candidates, and
/// only a rule inside the addresses they span is looked up among them. A rule already folded
/// covers nothing more (as if removed on the spot); the ids folded into a cover so far count
/// for who may use it.
pub(super) fn covered(policy: &CompiledPolicy) -> Vec<(AllowSpec, AllowSpec)> {
    let statics = &policy.statics;
    let covers: Vec<AllowSpec> = statics
        .keys()
        .filter(|s| !s.net.is_host() || s.port == 0)
        .copied()
        .collect();
    if covers.is_empty() {
        return Vec::new();
    }
    let mut spans = Spans::new(&covers);
    let lens: Vec<u8> = covers
        .iter()
        .map(|s| s.net.normalized().1)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut folded: HashSet<AllowSpec> = HashSet::new();
    let mut gained: HashMap<AllowSpec, Vec<u32>> = HashMap::new();
    let mut folds = Vec::new();
    for (spec, ids) in statics.iter().filter(|(s, _)| spans.may_cover(s)) {
        let (addr, own_len) = spec.net.normalized();
        let own = || ids.iter().chain(gained_ids(spec, &gained));
        let covering = lens
            .iter()
            .filter(|l| **l <= own_len)
            .flat_map(|l| {
                let masked = mask128(u128::from_be_bytes(addr), u32::from(*l));
                let net = Net::from_normalized(masked.to_be_bytes(), *l);
                [spec.port, 0].map(|port| AllowSpec {
                    net,
                    port,
                    proto: spec.proto,
                })
            })
            // An IPv6 network never covers IPv4 (Net::kernel_prefixes), nor the reverse.
            .filter(|c| c.net.addr.is_ipv4() == spec.net.addr.is_ipv4())
            .filter(|c| c != spec && covers.binary_search(c).is_ok() && !folded.contains(c))
            .find(|c| {
                statics.get(c).is_some_and(|cover| {
                    let cover_ids = cover.iter().chain(gained_ids(c, &gained));
                    policy.usable_by(cover_ids).covers(&policy.usable_by(own()))
                })
            });
        if let Some(cover) = covering {
            let moved: Vec<u32> = own().collect();
            gained.entry(cover).or_default().extend(moved);
            folded.insert(*spec);
            folds.push((*spec, cover));
        }
    }
    folds
}

/// The addresses the candidate covers span, per family, as merged sorted ranges over the
/// 128-bit normalized form. A million host rules are checked against a thousand networks
/// on every reload: one search among these ranges rules out most of them.
struct Spans {
    v4: Cursor,
    v6: Cursor,
}

impl Spans {
    fn new(covers: &[AllowSpec]) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for c in covers {
            let list = if c.net.addr.is_ipv4() {
                &mut v4
            } else {
                &mut v6
            };
            list.push(range(c.net));
        }
        Self {
            v4: Cursor::new(v4),
            v6: Cursor::new(v6),
        }
    }

    /// Whether some cover may contain `spec`'s network (false: none does). Asked in the
    /// statics' order (ascending addresses in each family), each answer resumes where the
    /// last one stopped: a million rules cost one pass over the ranges.
    fn may_cover(&mut self, spec: &AllowSpec) -> bool {
        let (lo, hi) = range(spec.net);
        let cursor = if spec.net.addr.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if cursor.last > lo {
            cursor.at = 0;
        }
        cursor.last = lo;
        while cursor
            .ranges
            .get(cursor.at)
            .is_some_and(|(_, end)| *end < lo)
        {
            cursor.at += 1;
        }
        cursor
            .ranges
            .get(cursor.at)
            .is_some_and(|(start, end)| *start <= lo && hi <= *end)
    }
}

/// One family's ranges, and where the last question left off.
struct Cursor {
    ranges: Vec<(u128, u128)>,
    at: usize,
    /// The last address asked about (an earlier one starts again from the first range).
    last: u128,
}

impl Cursor {
    fn new(ranges: Vec<(u128, u128)>) -> Self {
        Self {
            ranges: merged(ranges),
            at: 0,
            last: 0,
        }
    }
}

/// First and last address of `net`, normalized.
fn range(net: Net) -> (u128, u128) {
    let (addr, len) = net.normalized();
    let lo = u128::from_be_bytes(addr);
    let host_bits = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
    (lo, lo | host_bits)
}

/// Ranges sorted, overlapping and adjacent ones joined.
fn merged(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some((_, end)) if lo <= end.saturating_add(1) => *end = (*end).max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn gained_ids<'a>(
    spec: &AllowSpec,
    gained: &'a HashMap<AllowSpec, Vec<u32>>,
) -> impl Iterator<Item = u32> + 'a {
    gained.get(spec).into_iter().flatten().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> AllowSpec {
        s.parse().unwrap()
    }

    #[test]
    fn spans_rule_out_only_rules_outside_every_cover() {
        let mut spans = Spans::new(&[
            spec("10.0.0.0/24:443/tcp"),
            spec("10.0.1.0/24:*/tcp"),
            spec("192.0.2.7:*/udp"),
            spec("[fd00::/64]:443/tcp"),
        ]);
        for inside in [
            "10.0.0.0:443/tcp",
            "10.0.1.255:80/tcp",
            "10.0.0.0/23:443/tcp",
            "192.0.2.7:53/udp",
            "[fd00::1]:443/tcp",
        ] {
            assert!(spans.may_cover(&spec(inside)), "{inside}");
        }
        for outside in [
            "10.0.2.0:443/tcp",
            "9.255.255.255:443/tcp",
            "10.0.0.0/22:443/tcp",
            "192.0.2.8:53/udp",
            "[fd00:0:0:1::1]:443/tcp",
        ] {
            assert!(!spans.may_cover(&spec(outside)), "{outside}");
        }
        // Asked out of order (the cases above are), the answers stay right.
        assert!(spans.may_cover(&spec("10.0.0.0:443/tcp")));
    }
}
