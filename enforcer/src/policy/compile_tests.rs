//! The table in docs/architecture.md ("ServiceEntry semantics"), row by row, and every combination of resolution, endpoints and
//! addresses.

use std::path::Path;

use super::*;
use crate::serviceentry::source::{LoadReport, load_text};

fn load(yaml: &str) -> Vec<Loaded> {
    let mut r = LoadReport::default();
    load_text(yaml, Path::new("se.yaml"), &mut r);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    r.entries
}

fn entry(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

fn compile_one(spec: &str) -> CompiledPolicy {
    compile(&ConfigAllows::default(), &load(&entry("e", spec)))
}

/// Statics as `addr:port/proto` strings.
fn statics(p: &CompiledPolicy) -> Vec<String> {
    p.statics.keys().map(ToString::to_string).collect()
}

fn hosts(p: &CompiledPolicy) -> Vec<String> {
    p.hostnames.keys().cloned().collect()
}

fn host_targets(p: &CompiledPolicy, h: &str) -> Vec<String> {
    p.hostnames[h]
        .keys()
        .map(|(port, proto)| format!("{port}/{proto}"))
        .collect()
}

fn notice_rules(p: &CompiledPolicy) -> Vec<&'static str> {
    p.notices.iter().map(|n| n.issue.rule).collect()
}

#[test]
fn none_with_addresses_allows_the_listed_ips_and_cidrs_only() {
    let p = compile_one(
        "hosts: [api.example.com]\naddresses: [192.0.2.1, 10.0.0.0/8, '2001:db8::/32']\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
    );
    assert_eq!(
        statics(&p),
        [
            "10.0.0.0/8:443/tcp",
            "192.0.2.1:443/tcp",
            "[2001:db8::/32]:443/tcp"
        ]
    );
    assert!(
        hosts(&p).is_empty(),
        "hosts are not resolved when addresses are given"
    );
}

#[test]
fn none_without_addresses_allows_the_hosts_dns_answers() {
    let p = compile_one(
        "hosts: [api.example.com, 'Other.Example.com.', '*.wild.example.com']\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
    );
    assert_eq!(hosts(&p), ["api.example.com", "other.example.com"]);
    assert!(statics(&p).is_empty());
    assert_eq!(
        notice_rules(&p),
        ["dns-aware-mode"],
        "a wildcard host needs DNS-aware mode"
    );
}

#[test]
fn static_allows_endpoint_ips_with_overrides_plus_addresses() {
    let p = compile_one(
        "hosts: [db.internal]\naddresses: [192.0.2.50]\nports: [{number: 5432, name: pg, protocol: TCP}]\nresolution: STATIC\nendpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, ports: {pg: 6432}}, {address: 'unix:///tmp/s.sock'}]",
    );
    let p2 = compile_one(
        "hosts: [db.internal]\naddresses: [192.0.2.50]\nports: [{number: 5432, name: pg, protocol: TCP}]\nresolution: STATIC\nendpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, ports: {pg: 6432}}]",
    );
    assert_eq!(
        statics(&p2),
        [
            "192.0.2.10:5432/tcp",
            "192.0.2.11:5432/tcp",
            "192.0.2.11:6432/tcp",
            "192.0.2.50:5432/tcp"
        ]
    );
    assert!(hosts(&p2).is_empty(), "STATIC never resolves hosts");
    // A unix endpoint (valid with one service port) carries no network traffic: noticed.
    assert_eq!(notice_rules(&p), ["no-network"]);
}

#[test]
fn dns_without_endpoints_resolves_the_hosts_plus_addresses() {
    let p = compile_one(
        "hosts: [api.example.com]\naddresses: [192.0.2.1]\nports: [{number: 443, name: https, protocol: HTTPS, targetPort: 8443}]\nresolution: DNS",
    );
    assert_eq!(hosts(&p), ["api.example.com"]);
    assert_eq!(host_targets(&p, "api.example.com"), ["443/tcp", "8443/tcp"]);
    assert_eq!(statics(&p), ["192.0.2.1:443/tcp", "192.0.2.1:8443/tcp"]);
}

#[test]
fn dns_with_endpoints_resolves_the_endpoints_not_the_hosts() {
    for res in ["DNS", "DNS_ROUND_ROBIN"] {
        let eps = if res == "DNS" {
            "[{address: eu.example.com, ports: {https: 9443}}, {address: 192.0.2.9}]"
        } else {
            "[{address: eu.example.com, ports: {https: 9443}}]"
        };
        let p = compile_one(&format!(
            "hosts: ['*.example.com']\nports: [{{number: 443, name: https, protocol: TLS}}]\nresolution: {res}\nendpoints: {eps}"
        ));
        assert_eq!(hosts(&p), ["eu.example.com"], "{res}");
        assert_eq!(
            host_targets(&p, "eu.example.com"),
            ["443/tcp", "9443/tcp"],
            "{res}"
        );
        if res == "DNS" {
            assert_eq!(statics(&p), ["192.0.2.9:443/tcp"]);
        }
    }
}

#[test]
fn dynamic_dns_needs_dns_aware_mode() {
    let p = compile_one(
        "hosts: ['*.example.com']\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DYNAMIC_DNS",
    );
    assert!(statics(&p).is_empty() && hosts(&p).is_empty());
    assert_eq!(notice_rules(&p), ["dns-aware-mode"]);
}

#[test]
fn location_changes_nothing() {
    let spec = "hosts: [api.example.com]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: DNS";
    let ext = compile_one(&format!("{spec}\nlocation: MESH_EXTERNAL"));
    let int = compile_one(&format!("{spec}\nlocation: MESH_INTERNAL"));
    assert_eq!(ext.hostnames, int.hostnames);
    assert_eq!(ext.statics, int.statics);
}

#[test]
fn scoping_fields_draw_a_notice() {
    let p = compile_one(
        "hosts: [api.example.com]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: DNS\nexportTo: ['.']\nworkloadSelector: {labels: {app: x}}",
    );
    assert_eq!(notice_rules(&p), ["scoping", "scoping"]);
    assert_eq!(hosts(&p), ["api.example.com"], "still allowed, node-wide");
}

#[test]
fn protocols_map_to_tcp_except_udp() {
    let p = compile_one(
        "hosts: [api.example.com]\naddresses: [192.0.2.1]\nports: [{number: 53, name: dns, protocol: UDP}, {number: 54, name: dns-tcp, protocol: TCP}, {number: 80, name: http, protocol: HTTP}, {number: 81, name: plain}, {number: 82, name: grpc, protocol: grpc}, {number: 83, name: udp-lower, protocol: udp}]\nresolution: STATIC",
    );
    assert_eq!(
        statics(&p),
        [
            "192.0.2.1:53/udp",
            "192.0.2.1:54/tcp",
            "192.0.2.1:80/tcp",
            "192.0.2.1:81/tcp",
            "192.0.2.1:82/tcp",
            "192.0.2.1:83/udp"
        ]
    );
}

#[test]
fn entries_without_ports_allow_nothing() {
    let p = compile_one("hosts: [api.example.com]\naddresses: [192.0.2.1]\nresolution: NONE");
    assert!(statics(&p).is_empty());
    assert_eq!(notice_rules(&p), ["no-ports"]);
}

#[test]
fn invalid_entries_are_skipped_and_ids_follow_config_sources() {
    let yaml = entry("bad", "hosts: ['*']\nports: [{number: 1, name: a}]")
        + &entry(
            "good",
            "hosts: [a.example.com]\naddresses: [192.0.2.1]\nports: [{number: 1, name: a, protocol: TLS}]\nresolution: STATIC",
        );
    let cfg = ConfigAllows {
        specs: vec!["198.18.0.1:80/tcp".parse().unwrap()],
        cidrs: vec![crate::policy::allow_spec::parse_cidr("10.96.0.0/12").unwrap()],
        dns_servers: vec!["192.0.2.53".parse().unwrap()],
        dns_aware: false,
        ping: false,
        api_server: vec!["203.0.113.9:6443".parse().unwrap()],
    };
    let p = compile(&cfg, &load(&yaml));
    let sources: Vec<&str> = p.sources.values().map(String::as_str).collect();
    assert_eq!(
        sources[..4],
        [
            "--allow 198.18.0.1:80/tcp",
            "allow.cidrs 10.96.0.0/12",
            "DNS server 192.0.2.53",
            "Kubernetes API server 203.0.113.9:6443"
        ]
    );
    assert!(
        sources[4].starts_with("ServiceEntry default/good (se.yaml:"),
        "{sources:?}"
    );
    assert_eq!(sources.len(), 5, "the invalid entry gets no rules");
    assert_eq!(
        statics(&p),
        [
            "10.96.0.0/12:*/tcp",
            "10.96.0.0/12:*/udp",
            "192.0.2.1:1/tcp",
            "192.0.2.53:53/tcp",
            "192.0.2.53:53/udp",
            "198.18.0.1:80/tcp",
            "203.0.113.9:6443/tcp"
        ]
    );
    assert_eq!(
        p.statics
            .iter()
            .find(|(s, _)| s.port == 1)
            .map(|(_, ids)| ids.iter().collect::<Vec<_>>()),
        Some(vec![5])
    );
}

#[test]
fn overlaps_merge_into_the_broader_rule() {
    let yaml = entry(
        "wide",
        "hosts: [a.example.com]\naddresses: [10.0.0.0/8]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
    ) + &entry(
        "narrow",
        "hosts: [b.example.com]\naddresses: [10.1.2.3, 10.1.0.0/16]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
    ) + &entry(
        "anyport",
        "hosts: [c.example.com]\naddresses: [192.0.2.0/24]\nports: [{number: 1, name: a, protocol: TLS}]\nresolution: NONE",
    ) + &entry(
        "same",
        "hosts: [d.example.com]\naddresses: [192.0.2.1]\nports: [{number: 1, name: a, protocol: TLS}, {number: 53, name: dns, protocol: UDP}]\nresolution: NONE",
    );
    let p = compile(
        &ConfigAllows {
            cidrs: vec![crate::policy::allow_spec::parse_cidr("192.0.2.0/24").unwrap()],
            ..Default::default()
        },
        &load(&yaml),
    );
    assert_eq!(
        statics(&p),
        [
            "10.0.0.0/8:443/tcp",
            "192.0.2.0/24:*/tcp",
            "192.0.2.0/24:*/udp"
        ]
    );
    let ids = |s: &str| {
        p.statics
            .iter()
            .find(|(k, _)| k.to_string() == s)
            .map(|(_, v)| v.iter().count())
            .unwrap_or(0)
    };
    assert_eq!(
        ids("10.0.0.0/8:443/tcp"),
        2,
        "the narrow entry's id is kept with the wide rule"
    );
    assert_eq!(ids("192.0.2.0/24:*/tcp"), 3);
}

#[test]
fn desired_rules_add_resolved_addresses() {
    let p = compile_one(
        "hosts: [api.example.com]\naddresses: [192.0.2.1]\nports: [{number: 443, name: https, protocol: HTTPS}]\nresolution: DNS",
    );
    let rules = p.desired_rules(|h| {
        assert_eq!(h, "api.example.com");
        vec![
            "198.51.100.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ]
    });
    let mut got: Vec<String> = rules
        .exact
        .keys()
        .map(|k| crate::policy::rules::describe(None, k).to_string())
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "192.0.2.1:443/tcp",
            "198.51.100.7:443/tcp",
            "[2001:db8::7]:443/tcp"
        ]
    );
    assert!(rules.exact.values().all(|v| v.rule_id == 1));
    assert!(
        p.desired_rules(|_| Vec::new()).exact.len() == 1,
        "unresolved hosts allow nothing"
    );
}

/// Every combination of resolution × endpoints × addresses: what is allowed statically and
/// which names are resolved. Combinations Istio rejects allow nothing.
#[test]
fn every_combination_of_resolution_endpoints_and_addresses() {
    let endpoints = [
        ("none", ""),
        ("ip", "\nendpoints: [{address: 192.0.2.7}]"),
        ("fqdn", "\nendpoints: [{address: backend.example.com}]"),
    ];
    let addresses = [("none", ""), ("addr", "\naddresses: [198.51.100.1]")];
    let expect = |res: &str, ep: &str, ad: &str| -> (Vec<&'static str>, Vec<&'static str>) {
        let addr = if ad == "addr" {
            vec!["198.51.100.1:443/tcp"]
        } else {
            vec![]
        };
        match (res, ep) {
            ("NONE", "none") if ad == "addr" => (addr, vec![]),
            ("NONE", "none") => (vec![], vec!["api.example.com"]),
            ("NONE", _) | ("STATIC", "fqdn") | ("DYNAMIC_DNS", _) => (vec![], vec![]),
            ("STATIC", "none") => (addr, vec![]),
            ("STATIC", "ip") => ([vec!["192.0.2.7:443/tcp"], addr].concat(), vec![]),
            (_, "none") => (addr, vec!["api.example.com"]),
            (_, "ip") => ([vec!["192.0.2.7:443/tcp"], addr].concat(), vec![]),
            (_, _) => (addr, vec!["backend.example.com"]),
        }
    };
    let mut checked = 0;
    for res in ["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] {
        for (ep, ep_yaml) in endpoints {
            for (ad, ad_yaml) in addresses {
                let p = compile_one(&format!(
                    "hosts: [api.example.com]\nports: [{{number: 443, name: https, protocol: TLS}}]\nresolution: {res}{ep_yaml}{ad_yaml}"
                ));
                let (want_statics, want_hosts) = expect(res, ep, ad);
                let mut got = statics(&p);
                got.sort();
                let mut want: Vec<String> = want_statics.iter().map(ToString::to_string).collect();
                want.sort();
                assert_eq!(got, want, "statics for {res} endpoints={ep} addresses={ad}");
                assert_eq!(
                    hosts(&p),
                    want_hosts,
                    "hostnames for {res} endpoints={ep} addresses={ad}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 30);
}

#[test]
fn an_ipv6_network_never_covers_ipv4_rules() {
    let p = compile_one(
        "hosts: [any.example]\naddresses: ['::/0', 198.18.0.11, '::ffff:198.18.0.12']\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: NONE",
    );
    // The IPv4 address is not folded into ::/0: they are different families.
    assert!(
        statics(&p).contains(&"198.18.0.11:8080/tcp".to_owned()),
        "{:?}",
        statics(&p)
    );
    assert!(notice_rules(&p).contains(&"v4-mapped"));
    let rules = p.desired_rules(|_| Vec::new());
    let v4_prefix = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
    let v4_exact: Vec<_> = rules
        .exact
        .keys()
        .filter(|k| k.addr[..12] == v4_prefix)
        .collect();
    assert_eq!(v4_exact.len(), 1, "only 198.18.0.11: {v4_exact:?}");
    for (len, k) in rules.prefix.keys() {
        let bits = len - enforcer_common::RULE_KEY_FIXED_BITS;
        assert!(bits <= 96 && k.addr[..12] != v4_prefix, "/{bits} {k:?}");
    }
    assert_eq!(rules.prefix.len(), 96);
}

fn compile_aware(spec: &str) -> CompiledPolicy {
    let allows = ConfigAllows {
        dns_aware: true,
        ..ConfigAllows::default()
    };
    compile(&allows, &load(&entry("e", spec)))
}

#[test]
fn dns_aware_mode_learns_wildcards_and_dynamic_dns_without_notices() {
    let p = compile_aware(
        "hosts: [api.example.com, '*.wild.example.com']\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
    );
    assert_eq!(hosts(&p), ["api.example.com"]);
    assert_eq!(p.wildcards.keys().collect::<Vec<_>>(), ["wild.example.com"]);
    assert!(notice_rules(&p).is_empty());
    let p = compile_aware(
        "hosts: ['*.example.com', '*foo.example.org']\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DYNAMIC_DNS",
    );
    assert!(hosts(&p).is_empty() && statics(&p).is_empty());
    assert_eq!(
        p.wildcards.keys().collect::<Vec<_>>(),
        ["*foo.example.org", "example.com"]
    );
    assert!(notice_rules(&p).is_empty());
}

#[test]
fn every_host_of_a_valid_entry_is_registered() {
    let p = compile_aware(
        "hosts: [static.example.com]\naddresses: [192.0.2.1]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: STATIC",
    );
    assert!(p.registered.contains("static.example.com"));
    assert!(
        hosts(&p).is_empty(),
        "a STATIC host's answers allow nothing"
    );
}

/// `allow.ping`: every address an entry allows some port of, and every `allow.cidrs` network,
/// may be pinged (one ICMP rule, no port); names carry ICMP as one more target. Without the
/// switch, no ICMP rule exists.
#[test]
fn ping_gives_every_registered_address_an_icmp_rule() {
    let yaml = entry(
        "static",
        "hosts: [s.example.com]\naddresses: [192.0.2.7]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
    ) + &entry(
        "named",
        "hosts: [n.example.com]\nports: [{number: 53, name: dns, protocol: UDP}]\nresolution: DNS",
    ) + &entry(
        "portless",
        "hosts: [p.example.com]\naddresses: [192.0.2.9]\nresolution: NONE",
    );
    let cidr = crate::policy::allow_spec::parse_cidr("10.0.0.0/8").unwrap();
    let with = |ping| {
        compile(
            &ConfigAllows {
                cidrs: vec![cidr],
                ping,
                ..Default::default()
            },
            &load(&yaml),
        )
    };
    let p = with(true);
    assert_eq!(
        statics(&p),
        [
            "10.0.0.0/8:*/icmp",
            "10.0.0.0/8:*/tcp",
            "10.0.0.0/8:*/udp",
            "192.0.2.7:*/icmp",
            "192.0.2.7:443/tcp"
        ]
    );
    assert_eq!(host_targets(&p, "n.example.com"), ["0/icmp", "53/udp"]);
    let p = with(false);
    assert!(
        statics(&p).iter().all(|s| !s.ends_with("icmp")),
        "{:?}",
        statics(&p)
    );
    assert_eq!(host_targets(&p, "n.example.com"), ["53/udp"]);
}

fn only(ids: &[u32]) -> Visibility {
    Visibility::Only(ids.iter().copied().collect())
}

#[test]
fn scoped_rules_keep_their_policies_and_never_fold_into_a_wider_visibility() {
    let es = load(
        &(entry(
            "host",
            "hosts: [one.example.com]\naddresses: [198.18.0.1]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
        ) + &entry(
            "net",
            "hosts: [net.example.com]\naddresses: [198.18.0.0/24]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: NONE",
        ) + &entry(
            "names",
            "hosts: [a.example.com, b.example.com]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: DNS",
        )),
    );
    let scopes = [
        EntryScope {
            entry: only(&[1]),
            hosts: vec![only(&[1])],
        },
        EntryScope {
            entry: only(&[2]),
            hosts: vec![only(&[2])],
        },
        EntryScope {
            entry: only(&[3, 4]),
            hosts: vec![only(&[3]), only(&[4])],
        },
    ];
    let p = compile_scoped(&ConfigAllows::default(), &es, Some(&scopes));
    assert_eq!(
        statics(&p),
        ["198.18.0.0/24:443/tcp", "198.18.0.1:443/tcp"],
        "the /32 is policy 1's only: folded into the /24 it would open that to policy 1"
    );
    assert!(notice_rules(&p).is_empty(), "exportTo is applied");
    // Both names answer with the same address: the rule is usable by each name's policy.
    let shared: IpAddr = "198.18.1.1".parse().unwrap();
    let rules = p.desired_rules(|_| vec![shared]);
    let by_spec = |s: &str| {
        let spec: AllowSpec = s.parse().unwrap();
        let mut one = DesiredRules::default();
        one.add(&spec, 1);
        *one.seal().exact.keys().next().unwrap()
    };
    assert_eq!(rules.scoped[&by_spec("198.18.1.1:443/tcp")], only(&[3, 4]));
    assert_eq!(rules.scoped[&by_spec("198.18.0.1:443/tcp")], only(&[1]));
    let a_only = p.desired_rules(|h| {
        if h == "a.example.com" {
            vec![shared]
        } else {
            vec![]
        }
    });
    assert_eq!(a_only.scoped[&by_spec("198.18.1.1:443/tcp")], only(&[3]));
    // Nobody may use an entry visible to no policy: no rule at all.
    let nobody = [
        EntryScope {
            entry: only(&[]),
            hosts: vec![only(&[])],
        },
        scopes[1].clone(),
        scopes[2].clone(),
    ];
    let p = compile_scoped(&ConfigAllows::default(), &es, Some(&nobody));
    let rules = p.desired_rules(|_| vec![]);
    assert_eq!(rules.exact.len(), 0, "{rules:?}");
    assert_eq!(rules.prefix.len(), 1);
}

#[test]
fn plain_endpoints_kept_compact_compile_like_the_entry_as_written() {
    let yaml = entry(
        "e",
        "hosts: [e.example.com]\nports: [{number: 443, name: tls, protocol: TLS}, {number: 53, name: dns, protocol: UDP}]\nresolution: STATIC\nendpoints:\n- {address: 198.51.100.1}\n- {address: 2001:db8::1}\n- {address: 198.51.100.2, ports: {tls: 8443}}\n- {address: 198.51.100.3, labels: {a: b}}\n- {address: '::ffff:198.51.100.4'}\n- {address: 198.51.100.5, weight: 3}",
    );
    let compact = load(&yaml);
    let spec = &compact[0].entry.spec;
    assert_eq!(spec.plain_endpoints.len(), 2, "{spec:?}");
    assert_eq!(spec.endpoints().len(), 4);
    let mut as_written = compact.clone();
    let s = &mut as_written[0].entry.spec;
    for ip in std::mem::take(&mut s.plain_endpoints).iter() {
        s.endpoints
            .get_or_insert_with(Vec::new)
            .push(WorkloadEntry {
                address: ip.to_string(),
                ..WorkloadEntry::default()
            });
    }
    let (a, b) = (
        compile(&ConfigAllows::default(), &compact),
        compile(&ConfigAllows::default(), &as_written),
    );
    assert_eq!(statics(&a), statics(&b));
    assert_eq!(a.notices, b.notices);
    assert_eq!(statics(&a).len(), 13, "{:?}", statics(&a));
}

/// Listing the static hosts from the policy (what reloads do) gives exactly the rules a
/// whole copy gives: the same keys, rule ids, flags and visibility, with hostnames' answers
/// that repeat a static address, IPv4 beside IPv6 (either side of `::ffff:0:0/96`),
/// any-port ICMP from `allow.ping`, and networks.
#[test]
fn listed_static_hosts_give_the_rules_a_whole_copy_gives() {
    let yaml = [
        entry(
            "s",
            "hosts: [s.example.com]\nports: [{number: 443, name: tls, protocol: TLS}, {number: 53, name: dns, protocol: UDP}]\nresolution: STATIC\nendpoints:\n- {address: 198.51.100.1}\n- {address: 2001:db8::1}\n- {address: '::1'}\n- {address: 198.51.100.2, ports: {tls: 8443}}\n- {address: '::ffff:198.51.100.4'}\n- {address: 'fd00::9'}",
        ),
        entry(
            "n",
            "hosts: [n.example.com]\naddresses: [198.51.100.0/30, 192.0.2.9]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: NONE",
        ),
        entry(
            "d",
            "hosts: [d.example.com]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DNS",
        ),
    ]
    .concat();
    let config = ConfigAllows {
        ping: true,
        dns_servers: vec!["198.51.100.53".parse().unwrap()],
        ..ConfigAllows::default()
    };
    let p = Arc::new(compile(&config, &load(&yaml)));
    assert!(p.statics.host_keys_in_order(), "{:?}", statics(&p));
    let answers = |_: &str| -> Vec<IpAddr> {
        ["198.51.100.1", "198.51.100.7", "2001:db8::1", "192.0.2.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect()
    };
    let whole = p.desired_rules(answers);
    let listed = p.desired_rules_listed(answers);
    assert!(listed.listed.is_some());
    assert!(
        listed.exact.len() < whole.exact.len(),
        "the static hosts are not copied"
    );
    let got: Vec<_> = listed.exact_rules().collect();
    let want: Vec<_> = whole.exact_rules().collect();
    assert_eq!(got, want);
    assert_eq!(listed.prefix, whole.prefix);
    assert_eq!(
        (&listed.scoped, &listed.sources),
        (&whole.scoped, &whole.sources)
    );
    assert_eq!(listed.lookup_skips(), whole.lookup_skips());
    // An answer that repeats a static host merges into it: the lower id, the DNS flag.
    let repeated = got
        .iter()
        .filter(|(_, v)| v.flags != 0 && v.rule_id != 4)
        .count();
    assert!(repeated > 0, "{got:?}");
}

/// A scoped policy is not listed: its static hosts carry who may use them.
#[test]
fn scoped_static_hosts_are_copied_whole() {
    let mut p = compile_one(
        "hosts: [s.example.com]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: STATIC\nendpoints: [{address: 198.51.100.1}]",
    );
    p.scoped.insert(1, Visibility::Only([1].into()));
    let p = Arc::new(p);
    let rules = p.desired_rules_listed(|_| Vec::new());
    assert!(rules.listed.is_none());
    assert_eq!(rules.exact.len(), 1);
}

/// A scoped answer for a name that repeats a static host (scoping per host, the entries
/// everyone's) merges into the host's rule for everyone, listed or copied: no visibility set
/// is held for it.
#[test]
fn a_scoped_answer_repeating_a_listed_host_keeps_no_scope() {
    let yaml = [
        entry(
            "s",
            "hosts: [s.example.com]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: STATIC\nendpoints: [{address: 198.51.100.1}]",
        ),
        entry(
            "d",
            "hosts: [d.example.com, e.example.com]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DNS",
        ),
    ]
    .concat();
    let mut p = compile(&ConfigAllows::default(), &load(&yaml));
    p.scoped_hosts.insert(
        (2, "d.example.com".to_owned()),
        Visibility::Only([1].into()),
    );
    let p = Arc::new(p);
    let answers = |h: &str| -> Vec<IpAddr> {
        let a = if h == "d.example.com" {
            "198.51.100.1"
        } else {
            "198.51.100.2"
        };
        vec![a.parse().unwrap()]
    };
    let whole = p.desired_rules(answers);
    let listed = p.desired_rules_listed(answers);
    assert!(listed.listed.is_some());
    assert!(whole.scoped.is_empty(), "{:?}", whole.scoped);
    assert_eq!(listed.scoped, whole.scoped);
    assert_eq!(
        listed.exact_rules().collect::<Vec<_>>(),
        whole.exact_rules().collect::<Vec<_>>()
    );
}
