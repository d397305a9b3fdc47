//! Which names the proxy answers, and what an answer for each allows (docs/architecture.md,
//! "DNS-aware mode"). Pure: built from the compiled policy, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::bail;

use crate::policy::{
    compile::{CompiledPolicy, Target},
    visibility::Visibility,
};

/// Longest name in presentation form without the trailing dot (RFC 1035 §2.3.4).
const MAX_NAME: usize = 253;

/// Lowercase, without the trailing dot; refuses what is not a DNS name.
pub fn normalize(name: &str) -> anyhow::Result<String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if n.is_empty() || n.len() > MAX_NAME {
        bail!("not a domain name (1 to {MAX_NAME} characters)");
    }
    if n.split('.').any(|l| l.is_empty() || l.len() > 63) {
        bail!("every label must have 1 to 63 characters");
    }
    if n.bytes().any(|b| b.is_ascii_whitespace() || b == b'*') {
        bail!("no spaces or wildcards");
    }
    Ok(n)
}

/// What an answer for a name allows on one target: the rule id the learned rule carries (the
/// lowest of the ServiceEntries that allow it) and who may use it (scoping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub rule_id: u32,
    pub vis: Visibility,
}

/// Targets of a name and what each allows.
pub type Targets = BTreeMap<Target, Grant>;

/// What the proxy does with a query for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Registered; the A/AAAA answers are allowed on these targets (none: answered, but the
    /// entry's own addresses or endpoints are what it allows).
    Registered(Targets),
    /// Under a passthrough domain: forwarded, no rules.
    Passthrough,
    /// No ServiceEntry registers it.
    Unregistered,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    exact: HashMap<String, Targets>,
    /// `*.suffix` hosts, keyed by the suffix.
    wildcard: HashMap<String, Targets>,
    /// Partial wildcards (`*foo.example.com`, DYNAMIC_DNS only): names ending in the rest.
    partial: Vec<(String, Targets)>,
    known_partial: Vec<String>,
    /// A host `*`: every name.
    any: Option<Targets>,
    /// Registered hosts whose answers create no rule.
    known: HashSet<String>,
    known_wildcard: HashSet<String>,
    passthrough: HashSet<String>,
}

/// The grants of one registered host (`host` as written in the entries: `*.suffix` for
/// wildcards), from its targets' rule ids.
fn grants(policy: &CompiledPolicy, host: &str, t: &BTreeMap<Target, BTreeSet<u32>>) -> Targets {
    t.iter()
        .map(|(k, ids)| {
            let g = Grant {
                rule_id: ids.first().copied().unwrap_or(0),
                vis: policy.host_usable_by(host, ids.iter().copied()),
            };
            (*k, g)
        })
        .collect()
}

fn merge(into: &mut Targets, from: &Targets) {
    for (t, g) in from {
        into.entry(*t)
            .and_modify(|v| {
                v.rule_id = v.rule_id.min(g.rule_id);
                v.vis = v.vis.union(&g.vis);
            })
            .or_insert_with(|| g.clone());
    }
}

impl NameTable {
    /// `passthrough` holds validated domains (`normalize`).
    pub fn build(policy: &CompiledPolicy, passthrough: &[String]) -> Self {
        let mut t = Self::default();
        for (host, targets) in policy.hostnames.iter().chain(&policy.dynamic) {
            let g = grants(policy, host, targets);
            merge(t.exact.entry(host.clone()).or_default(), &g);
        }
        for (suffix, targets) in &policy.wildcards {
            if suffix == "*" || suffix.is_empty() {
                let g = grants(policy, "*", targets);
                merge(t.any.get_or_insert_with(Targets::new), &g);
            } else if let Some(rest) = suffix.strip_prefix('*') {
                t.partial
                    .push((rest.to_owned(), grants(policy, suffix, targets)));
            } else {
                let g = grants(policy, &format!("*.{suffix}"), targets);
                merge(t.wildcard.entry(suffix.clone()).or_default(), &g);
            }
        }
        for host in &policy.registered {
            match host.strip_prefix("*.") {
                Some(suffix) => t.known_wildcard.insert(suffix.to_owned()),
                None if host == "*" => {
                    t.any.get_or_insert_with(Targets::new);
                    true
                }
                None if host.starts_with('*') => {
                    t.known_partial
                        .push(host.trim_start_matches('*').to_owned());
                    true
                }
                None => t.known.insert(host.clone()),
            };
        }
        t.passthrough = passthrough
            .iter()
            .filter_map(|d| normalize(d).ok())
            .collect();
        t
    }

    /// Exact host and every matching wildcard together (each port is allowed by whichever
    /// entry names it, as Istio picks per port); a wildcard never matches its own suffix.
    /// Passthrough domains come after registrations: a registered name under one still
    /// creates rules. Time: O(labels), one hash lookup per suffix.
    pub fn classify(&self, name: &str) -> Class {
        let mut targets: Option<Targets> = self.exact.get(name).cloned();
        let mut known = self.known.contains(name);
        let mut passthrough = self.passthrough.contains(name);
        let mut rest = name;
        while let Some((_, suffix)) = rest.split_once('.') {
            if let Some(t) = self.wildcard.get(suffix) {
                merge(targets.get_or_insert_with(Targets::new), t);
            }
            known |= self.known_wildcard.contains(suffix);
            passthrough |= self.passthrough.contains(suffix);
            rest = suffix;
        }
        if let Some(t) = &self.any {
            merge(targets.get_or_insert_with(Targets::new), t);
        }
        let under = |rest: &str| name.len() > rest.len() && name.ends_with(rest);
        for (rest, t) in &self.partial {
            if under(rest) {
                merge(targets.get_or_insert_with(Targets::new), t);
            }
        }
        known |= self.known_partial.iter().any(|r| under(r));
        match targets {
            Some(t) => Class::Registered(t),
            None if known => Class::Registered(Targets::new()),
            None if passthrough => Class::Passthrough,
            None => Class::Unregistered,
        }
    }

    /// Whether any name can create a rule (otherwise the learned-rule table stays empty).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allow_spec::Proto;

    fn table(hosts: &[(&str, u16)], registered: &[&str], passthrough: &[&str]) -> NameTable {
        let mut p = CompiledPolicy::default();
        for (i, (h, port)) in hosts.iter().enumerate() {
            let id = u32::try_from(i + 1).unwrap();
            let targets = BTreeMap::from([((*port, Proto::Tcp), BTreeSet::from([id]))]);
            match h.strip_prefix("*.") {
                Some(s) => p.wildcards.insert(s.to_owned(), targets),
                None if h.starts_with('*') => p.wildcards.insert((*h).to_owned(), targets),
                None => p.hostnames.insert((*h).to_owned(), targets),
            };
            p.registered.insert((*h).to_owned());
        }
        p.registered
            .extend(registered.iter().map(|s| (*s).to_owned()));
        let pass: Vec<String> = passthrough.iter().map(|s| (*s).to_owned()).collect();
        NameTable::build(&p, &pass)
    }

    fn ports(c: &Class) -> Vec<u16> {
        match c {
            Class::Registered(t) => t.keys().map(|(p, _)| *p).collect(),
            _ => panic!("{c:?}"),
        }
    }

    #[test]
    fn wildcards_match_any_depth_but_never_their_own_suffix() {
        let t = table(&[("*.example.com", 443)], &[], &[]);
        assert_eq!(ports(&t.classify("a.example.com")), [443]);
        assert_eq!(ports(&t.classify("a.b.c.example.com")), [443]);
        assert_eq!(t.classify("example.com"), Class::Unregistered);
        assert_eq!(t.classify("badexample.com"), Class::Unregistered);
        assert_eq!(t.classify("example.com.evil"), Class::Unregistered);
    }

    #[test]
    fn partial_wildcards_match_longer_names_ending_in_the_rest() {
        let t = table(&[("*foo.example.com", 443)], &[], &[]);
        assert_eq!(ports(&t.classify("barfoo.example.com")), [443]);
        assert_eq!(ports(&t.classify("a.foo.example.com")), [443]);
        assert_eq!(t.classify("foo.example.com"), Class::Unregistered);
        assert_eq!(t.classify("fooo.example.com"), Class::Unregistered);
    }

    #[test]
    fn exact_and_wildcards_combine_per_port() {
        let t = table(&[("api.example.com", 443), ("*.example.com", 80)], &[], &[]);
        assert_eq!(ports(&t.classify("api.example.com")), [80, 443]);
        assert_eq!(ports(&t.classify("www.example.com")), [80]);
    }

    #[test]
    fn registered_without_rules_and_passthrough() {
        let t = table(
            &[("api.example.com", 443)],
            &["static.example.com", "*.static.test"],
            &["cluster.local"],
        );
        assert_eq!(
            t.classify("static.example.com"),
            Class::Registered(Targets::new())
        );
        assert_eq!(
            t.classify("x.static.test"),
            Class::Registered(Targets::new())
        );
        assert_eq!(
            t.classify("kube-dns.kube-system.svc.cluster.local"),
            Class::Passthrough
        );
        assert_eq!(t.classify("cluster.local"), Class::Passthrough);
        assert_eq!(t.classify("local"), Class::Unregistered);
        assert_eq!(
            t.classify("api.example.com.cluster.local"),
            Class::Passthrough
        );
    }

    #[test]
    fn the_lowest_rule_id_is_kept() {
        let t = table(&[("*.example.com", 443), ("a.example.com", 443)], &[], &[]);
        match t.classify("a.example.com") {
            Class::Registered(m) => {
                assert_eq!(m.values().map(|g| g.rule_id).collect::<Vec<_>>(), [1])
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn normalize_refuses_non_names() {
        assert_eq!(normalize("Cluster.Local.").unwrap(), "cluster.local");
        for bad in [
            "",
            ".",
            "a..b",
            "*.x",
            "a b",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }
}
