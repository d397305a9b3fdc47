//! What a restarted daemon keeps of the rules the previous run put in the kernel
//! (docs/architecture.md, "Restart and migration").
//!
//! Static rules are recomputed from the config. DNS-derived rules cannot be: the answers that
//! produced them may not be available again yet (DNS down, slow). So every apply records the
//! allowed addresses per name in a state file, and at start the addresses of names that are
//! *still configured* and still live in the kernel are carried over, for at most
//! `dns.staleGrace`. Everything else (rules of removed entries, hosts and `--allow` flags) goes
//! at the first apply.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use enforcer_common::RuleKey;

use crate::{dataplane::sources, policy::compile::CompiledPolicy};

/// Allowed addresses per name, as recorded after each apply.
pub type Answers = BTreeMap<String, Vec<IpAddr>>;

/// The previous run's answers; `None` when there is no readable record (first start since
/// boot, or a record this version cannot read), which is reported.
pub fn read(pin_root: &Path) -> Result<Option<Answers>, String> {
    let path = sources::state_file(pin_root, sources::ANSWERS);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn write(pin_root: &Path, answers: &Answers) -> anyhow::Result<()> {
    sources::write_state(&sources::state_file(pin_root, sources::ANSWERS), answers)
}

fn addr_of(key: &RuleKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// The addresses to carry per configured name. `live` are the exact rules the kernel holds.
///
/// With a record: a name's recorded addresses that the kernel still allows on one of the
/// name's ports. Without one: every live address on a port and protocol of the name (the
/// attribution is coarser, so the wider set is what keeps a restart without a window; it
/// expires after the grace all the same).
pub fn carried(compiled: &CompiledPolicy, record: Option<&Answers>, live: &[RuleKey]) -> Answers {
    let live_by_target: BTreeMap<(u16, u8), BTreeSet<IpAddr>> =
        live.iter().fold(BTreeMap::new(), |mut m, k| {
            m.entry((k.port, k.proto)).or_default().insert(addr_of(k));
            m
        });
    let mut out = Answers::new();
    for (name, targets) in &compiled.hostnames {
        let mut on_ports = BTreeSet::new();
        for (port, proto) in targets.keys() {
            if let Some(addrs) = live_by_target.get(&(*port, proto.number())) {
                on_ports.extend(addrs.iter().copied());
            }
        }
        let addrs: Vec<IpAddr> = match record {
            Some(r) => r
                .get(name)
                .into_iter()
                .flatten()
                .filter(|a| on_ports.contains(a))
                .copied()
                .collect(),
            None => on_ports.into_iter().collect(),
        };
        if !addrs.is_empty() {
            out.insert(name.clone(), addrs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        allow_spec::{AllowSpec, Proto},
        rules::DesiredRules,
    };

    fn policy(hosts: &[(&str, u16)]) -> CompiledPolicy {
        let mut p = CompiledPolicy::default();
        for (h, port) in hosts {
            p.hostnames
                .entry((*h).to_owned())
                .or_default()
                .insert((*port, Proto::Tcp), BTreeSet::from([1]));
        }
        p
    }

    fn live(specs: &[&str]) -> Vec<RuleKey> {
        let specs: Vec<AllowSpec> = specs.iter().map(|s| s.parse().unwrap()).collect();
        DesiredRules::from_specs(&specs).exact.into_keys().collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn with_a_record_only_configured_names_and_live_addresses_carry() {
        let record = Answers::from([
            (
                "api.example".to_owned(),
                vec![ip("192.0.2.1"), ip("192.0.2.2")],
            ),
            ("removed.example".to_owned(), vec![ip("192.0.2.9")]),
        ]);
        let kernel = live(&[
            "192.0.2.1:443/tcp",
            "192.0.2.9:443/tcp",
            "[2001:db8::1]:443/tcp",
        ]);
        let got = carried(&policy(&[("api.example", 443)]), Some(&record), &kernel);
        // 192.0.2.2 is not in the kernel (any more): nothing to keep.
        assert_eq!(
            got,
            Answers::from([("api.example".to_owned(), vec![ip("192.0.2.1")])])
        );
    }

    #[test]
    fn a_name_whose_port_changed_carries_nothing() {
        let record = Answers::from([("api.example".to_owned(), vec![ip("192.0.2.1")])]);
        let kernel = live(&["192.0.2.1:443/tcp"]);
        assert!(carried(&policy(&[("api.example", 8443)]), Some(&record), &kernel).is_empty());
    }

    #[test]
    fn without_a_record_live_addresses_on_the_names_ports_carry() {
        let kernel = live(&[
            "192.0.2.1:443/tcp",
            "192.0.2.5:80/tcp",
            "[2001:db8::1]:443/tcp",
            "192.0.2.6:443/udp",
        ]);
        let got = carried(
            &policy(&[("a.example", 443), ("b.example", 22)]),
            None,
            &kernel,
        );
        assert_eq!(
            got,
            Answers::from([(
                "a.example".to_owned(),
                vec![ip("192.0.2.1"), ip("2001:db8::1")]
            )])
        );
    }
}
