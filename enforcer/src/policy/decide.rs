//! The kernel's decision, replayed in userspace for `explain`: which policy a calling cgroup
//! has (`enforcer-ebpf/src/scope.rs`) and which rule, if any, allows a destination to it
//! (`rule_matches` in `enforcer-ebpf/src/programs.rs`), in the same order and with the same
//! fall-through when a rule is not for the caller. Pure: the caller supplies map lookups.

use enforcer_common::{
    MAX_CGROUP_DEPTH, POLICY_UNMAPPED, RuleKey, SKIP_EXACT_ANY_PORT, SKIP_PREFIX_ANY_PORT,
    SKIP_PREFIX_PORT, VSET_EVERYONE,
};

/// The policy of a caller in cgroup `own`, whose ancestors from the hierarchy's level 1 down
/// to its parent are `ancestors`: its own mapping, else the deepest mapped ancestor's, else
/// `default`; a cgroup deeper than the kernel walks gets no policy (`POLICY_UNMAPPED`).
pub fn caller_policy(
    own: u64,
    ancestors: &[u64],
    mapped: impl Fn(u64) -> Option<u32>,
    default: u32,
) -> u32 {
    if let Some(p) = mapped(own) {
        return p;
    }
    if ancestors.len() >= MAX_CGROUP_DEPTH as usize {
        return POLICY_UNMAPPED;
    }
    ancestors
        .iter()
        .rev()
        .find_map(|a| mapped(*a))
        .unwrap_or(default)
}

/// Where a rule was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Exact,
    Learned,
    Prefix,
    ExactAnyPort,
    PrefixAnyPort,
}

/// A rule the kernel looks at for a destination: `prefix_len` over the whole key (`None`:
/// exact or learned), its key, rule id and visibility set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub stage: Stage,
    pub prefix_len: Option<u32>,
    pub key: RuleKey,
    pub rule_id: u32,
    pub vset: u32,
}

/// The maps, as the kernel reads them.
pub trait Lookup {
    fn exact(&self, key: &RuleKey) -> Option<(u32, u32)>;
    /// Learned rules still in force.
    fn learned(&self, key: &RuleKey) -> Option<(u32, u32)>;
    /// The longest prefix covering `key` with its port and protocol: (length, stored key,
    /// rule id, vset).
    fn prefix(&self, key: &RuleKey) -> Option<(u32, RuleKey, u32, u32)>;
}

/// One lookup stage.
type Find<'a> = &'a dyn Fn() -> Option<Hit>;

/// Every rule the kernel finds for `key`, in the order it looks, up to and including the
/// first one `sees` lets the caller use (the verdict): `Some(hit)` allows.
pub fn decide(
    maps: &impl Lookup,
    key: RuleKey,
    skip: u32,
    learned: bool,
    sees: impl Fn(u32) -> bool,
) -> (Option<Hit>, Vec<Hit>) {
    let mut seen = Vec::new();
    let mut any = key;
    any.port = 0;
    let exact = |k: RuleKey, stage| {
        maps.exact(&k)
            .map(|(id, vset)| hit(stage, None, k, id, vset))
    };
    let prefix = |k: RuleKey, stage| {
        maps.prefix(&k)
            .map(|(l, stored, id, vset)| hit(stage, Some(l), stored, id, vset))
    };
    let candidates: [(bool, Find<'_>); 5] = [
        (true, &|| exact(key, Stage::Exact)),
        (learned, &|| {
            maps.learned(&key)
                .map(|(id, vset)| hit(Stage::Learned, None, key, id, vset))
        }),
        (skip & SKIP_PREFIX_PORT == 0, &|| prefix(key, Stage::Prefix)),
        (skip & SKIP_EXACT_ANY_PORT == 0, &|| {
            exact(any, Stage::ExactAnyPort)
        }),
        (skip & SKIP_PREFIX_ANY_PORT == 0, &|| {
            prefix(any, Stage::PrefixAnyPort)
        }),
    ];
    for (on, find) in candidates {
        if !on {
            continue;
        }
        if let Some(h) = find() {
            seen.push(h);
            if h.vset == VSET_EVERYONE || sees(h.vset) {
                return (Some(h), seen);
            }
        }
    }
    (None, seen)
}

fn hit(stage: Stage, prefix_len: Option<u32>, key: RuleKey, rule_id: u32, vset: u32) -> Hit {
    Hit {
        stage,
        prefix_len,
        key,
        rule_id,
        vset,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use enforcer_common::RULE_KEY_FIXED_BITS;

    use super::*;

    fn key(a: [u8; 4], port: u16) -> RuleKey {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&a);
        RuleKey {
            policy: 0,
            port,
            proto: 6,
            pad: 0,
            addr,
        }
    }

    struct Maps {
        exact: BTreeMap<RuleKey, (u32, u32)>,
        prefix: Vec<(u32, RuleKey, u32, u32)>,
    }

    impl Lookup for Maps {
        fn exact(&self, k: &RuleKey) -> Option<(u32, u32)> {
            self.exact.get(k).copied()
        }
        fn learned(&self, _: &RuleKey) -> Option<(u32, u32)> {
            None
        }
        fn prefix(&self, k: &RuleKey) -> Option<(u32, RuleKey, u32, u32)> {
            self.prefix
                .iter()
                .filter(|(len, p, _, _)| {
                    let bits = len - RULE_KEY_FIXED_BITS;
                    let m = if bits == 0 {
                        0
                    } else {
                        u128::MAX << (128 - bits)
                    };
                    p.port == k.port
                        && p.proto == k.proto
                        && u128::from_be_bytes(p.addr) == u128::from_be_bytes(k.addr) & m
                })
                .max_by_key(|(len, ..)| *len)
                .copied()
        }
    }

    #[test]
    fn a_rule_for_others_falls_through_to_the_next_stage() {
        let host = key([198, 18, 0, 1], 443);
        let mut net = key([198, 18, 0, 0], 0);
        net.addr[14] = 0;
        let maps = Maps {
            exact: [(host, (5, 7))].into(),
            prefix: vec![(RULE_KEY_FIXED_BITS + 120, net, 9, 0)],
        };
        let (allowed, seen) = decide(&maps, host, 0, false, |v| v == 7);
        assert_eq!(allowed.map(|h| h.stage), Some(Stage::Exact));
        assert_eq!(seen.len(), 1);
        let (allowed, seen) = decide(&maps, host, 0, false, |_| false);
        assert_eq!(
            allowed.map(|h| (h.stage, h.rule_id)),
            Some((Stage::PrefixAnyPort, 9))
        );
        assert_eq!(seen.len(), 2, "the exact rule was seen and not usable");
        let (allowed, _) = decide(&maps, host, SKIP_PREFIX_ANY_PORT, false, |_| false);
        assert_eq!(allowed, None, "a skipped lookup finds nothing");
    }

    #[test]
    fn the_caller_policy_is_the_deepest_mapping_within_the_walk() {
        let mapped = |id: u64| match id {
            10 => Some(1),
            12 => Some(2),
            _ => None,
        };
        assert_eq!(caller_policy(13, &[10, 11, 12], mapped, 0), 2);
        assert_eq!(caller_policy(12, &[10, 11], mapped, 0), 2);
        assert_eq!(caller_policy(11, &[10], mapped, 0), 1);
        assert_eq!(caller_policy(99, &[98], mapped, 7), 7);
        let deep: Vec<u64> = (0..16).map(|i| if i == 0 { 10 } else { 100 + i }).collect();
        assert_eq!(
            caller_policy(999, &deep, mapped, 7),
            POLICY_UNMAPPED,
            "deeper than the walk: not even the default"
        );
    }
}
