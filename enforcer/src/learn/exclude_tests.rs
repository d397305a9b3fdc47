use std::path::Path;

use super::*;
use crate::{
    policy::compile::{ConfigAllows, compile},
    serviceentry::source::{LoadReport, load_text},
};

const YAML: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec: {hosts: [api.example.com], ports: [{number: 443, name: https, protocol: TLS}], resolution: DNS}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wild}
spec: {hosts: ['*.cdn.example.com'], ports: [{number: 443, name: https, protocol: TLS}], resolution: NONE}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: net}
spec: {hosts: [n.internal], addresses: [198.18.4.0/24], ports: [{number: 53, name: dns, protocol: UDP}], resolution: NONE}
";

fn policy(dns_aware: bool) -> CompiledPolicy {
    let mut r = LoadReport::default();
    load_text(YAML, Path::new("se.yaml"), &mut r);
    let allows = ConfigAllows {
        dns_aware,
        ..ConfigAllows::default()
    };
    compile(&allows, &r.entries)
}

fn obs(host: Option<&str>, addr: &str, port: u16, proto: Transport) -> Observation {
    Observation {
        cgroup: "app".into(),
        pod: None,
        addr: addr.parse().unwrap(),
        port,
        proto,
        hosts: host.map(|h| vec![h.to_owned()]).unwrap_or_default(),
        first_seen: 1,
        last_seen: 1,
        count: 1,
        denied: 0,
    }
}

#[test]
fn names_on_their_ports_and_addresses_in_their_networks_are_allowed() {
    let p = policy(true);
    let v = PolicyView::new(&p, &[], |_| Caller::Unscoped);
    let tcp = Transport::Tcp;
    assert!(v.allows(&obs(Some("api.example.com"), "198.18.0.1", 443, tcp)));
    assert!(!v.allows(&obs(Some("api.example.com"), "198.18.0.1", 80, tcp)));
    assert!(v.registers(&obs(Some("api.example.com"), "198.18.0.1", 80, tcp)));
    assert!(v.allows(&obs(Some("img.cdn.example.com"), "198.18.0.2", 443, tcp)));
    assert!(
        !v.allows(&obs(Some("cdn.example.com"), "198.18.0.2", 443, tcp)),
        "a wildcard is not its suffix"
    );
    assert!(v.allows(&obs(None, "198.18.4.9", 53, Transport::Udp)));
    assert!(
        v.allows(&obs(None, "::ffff:198.18.4.9", 53, Transport::Udp)),
        "v4-mapped"
    );
    assert!(!v.allows(&obs(None, "198.18.4.9", 53, tcp)));
    assert!(v.registers(&obs(None, "198.18.4.9", 53, tcp)));
    assert!(!v.registers(&obs(None, "198.18.5.9", 53, Transport::Udp)));
    assert!(!v.registers(&obs(Some("other.example.com"), "198.18.0.3", 443, tcp)));
}

#[test]
fn wildcards_allow_nothing_without_dns_aware_mode() {
    let p = policy(false);
    let v = PolicyView::new(&p, &[], |_| Caller::Unscoped);
    assert!(!v.allows(&obs(
        Some("img.cdn.example.com"),
        "198.18.0.2",
        443,
        Transport::Tcp
    )));
}

#[test]
fn a_workload_without_a_policy_sees_only_everyones_rules() {
    let p = policy(true);
    let v = PolicyView::new(&p, &[], |_| Caller::Nobody);
    // Nothing here is scoped: compile() without scopes makes every rule everyone's.
    assert!(v.allows(&obs(
        Some("api.example.com"),
        "198.18.0.1",
        443,
        Transport::Tcp
    )));
    assert!(sees(&Visibility::Everyone, Caller::Nobody));
    let only = Visibility::Only([3].into_iter().collect());
    assert!(!sees(&only, Caller::Nobody));
    assert!(sees(&only, Caller::Policy(3)));
    assert!(!sees(&only, Caller::Policy(4)));
}
