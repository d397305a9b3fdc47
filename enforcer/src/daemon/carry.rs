//! What a restarted daemon keeps of the rules the previous run put in the kernel
//! (docs/architecture.md, "Restart and migration").
//!
//! Static rules are recomputed from the config. DNS-derived rules cannot be: the answers that
//! produced them may not be available again yet (DNS down, slow). So every apply records the
//! allowed addresses per name, with the deadline of those that already left the answers, in
//! a state file; at start the addresses of names that are *still configured* and still live in
//! the kernel are carried over, each until its recorded deadline and never longer than
//! `dns.staleGrace`. Everything else (rules of removed entries, hosts and `--allow` flags)
//! goes at the first apply.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv6Addr},
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_common::{RULE_FLAG_DNS, RuleKey, RuleValue};
use serde::{Deserialize, Serialize};

use crate::{dataplane::sources, policy::compile::CompiledPolicy, resolve::Resolved};

/// One allowed address of a name as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub addr: IpAddr,
    /// Seconds since the Unix epoch when it stops being allowed; absent while the address is
    /// in the latest answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

/// Allowed addresses per name, as recorded after each apply.
pub type Answers = BTreeMap<String, Vec<Record>>;

/// What to carry, per name: each address with the time it may still stay.
pub type Seeds = BTreeMap<String, Vec<(IpAddr, Duration)>>;

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

/// Records what `resolved` allows, deadlines as wall-clock time (the record outlives the
/// process, and the monotonic clock of the next one starts elsewhere).
pub fn write(pin_root: &Path, resolved: &Resolved) -> anyhow::Result<()> {
    let (now, wall) = (tokio::time::Instant::now(), SystemTime::now());
    let unix = |t: tokio::time::Instant| {
        let at = wall + t.saturating_duration_since(now);
        at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
    };
    let answers: Answers = resolved
        .addrs
        .iter()
        .map(|(name, addrs)| {
            let stale: BTreeMap<IpAddr, tokio::time::Instant> = resolved
                .stale
                .get(name)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            let records = addrs
                .iter()
                .map(|a| Record {
                    addr: *a,
                    until: stale.get(a).map(|t| unix(*t)),
                })
                .collect();
            (name.clone(), records)
        })
        .collect();
    sources::write_state(&sources::state_file(pin_root, sources::ANSWERS), &answers)
}

fn addr_of(key: &RuleKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Live exact rules by (port, protocol), each with whether it came from DNS.
type LiveByTarget = BTreeMap<(u16, u8), BTreeMap<IpAddr, bool>>;

fn by_target(live: &[(RuleKey, RuleValue)]) -> LiveByTarget {
    live.iter().fold(BTreeMap::new(), |mut m, (k, v)| {
        m.entry((k.port, k.proto))
            .or_default()
            .insert(addr_of(k), v.flags & RULE_FLAG_DNS != 0);
        m
    })
}

/// The addresses to carry per configured name, each with the time it may still stay (the
/// caller caps it at the grace). `live` is what the kernel holds, `None` if it could not be
/// read (then the record alone decides).
///
/// - With a record: the name's recorded addresses that the kernel still allows on one of the
///   name's ports; an address whose recorded deadline has passed is not carried.
/// - Without one: the live rules that came from DNS on one of the name's ports and
///   protocols. Maps written by a version that did not mark DNS rules have no marks at all;
///   then every live rule on such a port is carried (coarser, bounded by the grace all the
///   same).
pub fn carried(
    compiled: &CompiledPolicy,
    record: Option<&Answers>,
    live: Option<&[(RuleKey, RuleValue)]>,
    now: SystemTime,
    grace: Duration,
) -> Seeds {
    let live_by_target = live.map(by_target);
    let marked = live.is_some_and(|l| l.iter().any(|(_, v)| v.flags & RULE_FLAG_DNS != 0));
    let mut out = Seeds::new();
    for (name, targets) in &compiled.hostnames {
        let on_ports: Option<BTreeSet<IpAddr>> = live_by_target.as_ref().map(|by| {
            targets
                .keys()
                .filter_map(|(port, proto)| by.get(&(*port, proto.number())))
                .flat_map(|addrs| addrs.iter())
                .filter(|(_, from_dns)| **from_dns || !marked)
                .map(|(a, _)| *a)
                .collect()
        });
        let seeds: Vec<(IpAddr, Duration)> = match (record, &on_ports) {
            (Some(r), _) => r
                .get(name)
                .into_iter()
                .flatten()
                .filter(|rec| {
                    on_ports
                        .as_ref()
                        .is_none_or(|live| live.contains(&rec.addr))
                })
                .filter_map(|rec| Some((rec.addr, left(rec.until, now, grace)?)))
                .collect(),
            (None, Some(live)) => live.iter().map(|a| (*a, grace)).collect(),
            (None, None) => Vec::new(),
        };
        if !seeds.is_empty() {
            out.insert(name.clone(), seeds);
        }
    }
    out
}

/// Time left before `until` (none: a whole grace), or `None` if it has passed.
fn left(until: Option<u64>, now: SystemTime, grace: Duration) -> Option<Duration> {
    let Some(until) = until else {
        return Some(grace);
    };
    let at = UNIX_EPOCH + Duration::from_secs(until);
    at.duration_since(now).ok().filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        allow_spec::{AllowSpec, Proto},
        rules::DesiredRules,
    };

    const GRACE: Duration = Duration::from_secs(120);

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

    /// Live rules: `dns` marks them as DNS-derived.
    fn live(specs: &[&str], dns: bool) -> Vec<(RuleKey, RuleValue)> {
        let mut r = DesiredRules::default();
        for s in specs {
            let spec: AllowSpec = s.parse().unwrap();
            r.add_flagged(&spec, 1, if dns { RULE_FLAG_DNS } else { 0 });
        }
        r.seal().exact.into_iter().collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rec(a: &str, until: Option<u64>) -> Record {
        Record { addr: ip(a), until }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// What carries for one name on 443/tcp.
    fn carry_api(record: &Answers, kernel: &[(RuleKey, RuleValue)]) -> Seeds {
        carried(
            &policy(&[("api.example", 443)]),
            Some(record),
            Some(kernel),
            now(),
            GRACE,
        )
    }

    #[test]
    fn with_a_record_only_configured_names_and_live_addresses_carry() {
        let record = Answers::from([
            (
                "api.example".to_owned(),
                vec![rec("192.0.2.1", None), rec("192.0.2.2", None)],
            ),
            ("removed.example".to_owned(), vec![rec("192.0.2.9", None)]),
        ]);
        let kernel = live(
            &[
                "192.0.2.1:443/tcp",
                "192.0.2.9:443/tcp",
                "[2001:db8::1]:443/tcp",
            ],
            true,
        );
        let got = carry_api(&record, &kernel);
        // 192.0.2.2 is not in the kernel (any more): nothing to keep.
        assert_eq!(
            got,
            Seeds::from([("api.example".to_owned(), vec![(ip("192.0.2.1"), GRACE)])])
        );
    }

    #[test]
    fn recorded_deadlines_are_kept_across_restarts() {
        let record = Answers::from([(
            "api.example".to_owned(),
            vec![
                rec("192.0.2.1", Some(1_000_030)),
                rec("192.0.2.2", Some(999_999)),
                rec("192.0.2.3", None),
            ],
        )]);
        let kernel = live(
            &[
                "192.0.2.1:443/tcp",
                "192.0.2.2:443/tcp",
                "192.0.2.3:443/tcp",
            ],
            true,
        );
        let got = carry_api(&record, &kernel);
        assert_eq!(
            got["api.example"],
            [
                (ip("192.0.2.1"), Duration::from_secs(30)),
                (ip("192.0.2.3"), GRACE)
            ],
            "a stale address keeps its deadline; an expired one is not carried"
        );
    }

    #[test]
    fn unreadable_maps_leave_the_record_to_decide() {
        let record = Answers::from([("api.example".to_owned(), vec![rec("192.0.2.1", None)])]);
        let got = carried(
            &policy(&[("api.example", 443)]),
            Some(&record),
            None,
            now(),
            GRACE,
        );
        assert_eq!(got["api.example"], [(ip("192.0.2.1"), GRACE)]);
    }

    #[test]
    fn a_name_whose_port_changed_carries_nothing() {
        let record = Answers::from([("api.example".to_owned(), vec![rec("192.0.2.1", None)])]);
        let kernel = live(&["192.0.2.1:443/tcp"], true);
        assert!(
            carried(
                &policy(&[("api.example", 8443)]),
                Some(&record),
                Some(&kernel),
                now(),
                GRACE
            )
            .is_empty()
        );
    }

    #[test]
    fn without_a_record_only_rules_marked_as_dns_carry() {
        let mut kernel = live(&["192.0.2.1:443/tcp", "[2001:db8::1]:443/tcp"], true);
        // A removed STATIC entry or --allow on the same port: not from DNS, not carried.
        kernel.extend(live(&["192.0.2.5:443/tcp", "192.0.2.6:443/udp"], false));
        let got = carried(
            &policy(&[("a.example", 443), ("b.example", 22)]),
            None,
            Some(&kernel),
            now(),
            GRACE,
        );
        assert_eq!(
            got,
            Seeds::from([(
                "a.example".to_owned(),
                vec![(ip("192.0.2.1"), GRACE), (ip("2001:db8::1"), GRACE)]
            )])
        );
    }

    #[test]
    fn maps_from_before_the_marks_carry_by_port() {
        let kernel = live(&["192.0.2.1:443/tcp", "192.0.2.5:80/tcp"], false);
        let got = carried(
            &policy(&[("a.example", 443)]),
            None,
            Some(&kernel),
            now(),
            GRACE,
        );
        assert_eq!(got["a.example"], [(ip("192.0.2.1"), GRACE)]);
    }
}
