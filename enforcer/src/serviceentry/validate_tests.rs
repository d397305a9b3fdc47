//! One test per validation rule, beyond Istio's corpus.

use super::*;
use crate::serviceentry::{Severity, decode::decode};

/// A valid spec; each test changes one thing.
const BASE: &str = "hosts: [api.example.com]\naddresses: [192.0.2.10]\nports: [{number: 443, name: https, protocol: TLS}]\nresolution: DNS\n";

fn issues_for(metadata: &str, spec: &str) -> Vec<Issue> {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {metadata}\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    let (se, mut issues) = decode(&serde_yaml_ng::from_str(&yaml).expect("test YAML"));
    issues.extend(validate(&se));
    issues
}

fn issues(spec: &str) -> Vec<Issue> {
    issues_for("{name: t, namespace: ns}", spec)
}

fn rules(issues: &[Issue], severity: Severity) -> Vec<&'static str> {
    issues
        .iter()
        .filter(|i| i.severity == severity)
        .map(|i| i.rule)
        .collect()
}

#[track_caller]
fn fires(spec: &str, rule: &str) -> Issue {
    let all = issues(spec);
    all.iter()
        .find(|i| i.rule == rule)
        .cloned()
        .unwrap_or_else(|| panic!("{rule} did not fire for\n{spec}\ngot {all:#?}"))
}

#[track_caller]
fn error(spec: &str, rule: &str) -> Issue {
    let i = fires(spec, rule);
    assert_eq!(i.severity, Severity::Error, "{i:?}");
    i
}

#[track_caller]
fn warning(spec: &str, rule: &str) {
    let i = fires(spec, rule);
    assert_eq!(i.severity, Severity::Warning, "{i:?}");
    assert!(
        rules(&issues(spec), Severity::Error).is_empty(),
        "a warning alone must not reject"
    );
}

#[track_caller]
fn clean(spec: &str) {
    let all = issues(spec);
    assert!(
        all.is_empty(),
        "expected no issues for\n{spec}\ngot {all:#?}"
    );
}

fn with(change: &str) -> String {
    // Later keys replace earlier ones in our YAML decoding only if unique, so rebuild instead.
    let mut keys: Vec<(String, String)> = BASE
        .lines()
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .expect("k: v")
        })
        .collect();
    for l in change.lines() {
        let (k, v) = l.split_once(':').expect("k: v");
        match keys.iter_mut().find(|(kk, _)| kk == k) {
            Some(slot) => slot.1 = v.to_owned(),
            None => keys.push((k.to_owned(), v.to_owned())),
        }
    }
    keys.retain(|(_, v)| v.trim() != "DROP");
    keys.iter().map(|(k, v)| format!("{k}:{v}\n")).collect()
}

#[test]
fn base_is_clean() {
    clean(BASE);
}

#[test]
fn hosts_required() {
    error(&with("hosts: []"), "hosts-required");
}

#[test]
fn host_full_wildcard() {
    error(&with("hosts: ['*']"), "host-full-wildcard");
}

#[test]
fn host_syntax() {
    for h in ["bad_host.com", "a.*.com", "-", "example.123", "''"] {
        let i = error(&with(&format!("hosts: [{h}]")), "host-syntax");
        assert_eq!(i.path, "spec.hosts[0]");
    }
    clean(&with("hosts: [api.example.com.]"));
}

#[test]
fn host_partial_wildcard_warns_except_for_dynamic_dns() {
    warning(
        &with("hosts: ['*x.example.com']\nresolution: NONE"),
        "host-partial-wildcard",
    );
    let dyn_dns = with("hosts: ['*x.example.com']\nresolution: DYNAMIC_DNS\naddresses: DROP");
    assert!(!rules(&issues(&dyn_dns), Severity::Warning).contains(&"host-partial-wildcard"));
}

#[test]
fn address_syntax() {
    for a in [
        "1.2.3",
        "10.0.0.0/33",
        "10.0.0.0/8/8",
        "fe80::1%eth0/64",
        "example.com",
    ] {
        let i = error(
            &with(&format!("addresses: ['{a}']\nresolution: STATIC")),
            "address-syntax",
        );
        assert_eq!(i.path, "spec.addresses[0]");
    }
}

#[test]
fn cidr_only_with_none_or_static() {
    error(&with("addresses: [10.0.0.0/8]"), "cidr-resolution");
    clean(&with("addresses: [10.0.0.0/8]\nresolution: NONE"));
    assert!(
        rules(
            &issues(&with("addresses: [10.0.0.0/8]\nresolution: STATIC")),
            Severity::Error
        )
        .is_empty()
    );
}

#[test]
fn port_name_duplicate() {
    let i = error(
        &with("ports: [{number: 1, name: a}, {number: 2, name: a}]"),
        "port-name-duplicate",
    );
    assert_eq!(i.path, "spec.ports[1].name");
}

#[test]
fn port_number_duplicate() {
    let i = error(
        &with("ports: [{number: 1, name: a}, {number: 1, name: b}]"),
        "port-number-duplicate",
    );
    assert_eq!(i.path, "spec.ports[1].number");
}

#[test]
fn target_port_range() {
    let i = error(
        &with("ports: [{number: 1, name: a, targetPort: 70000}]"),
        "target-port-range",
    );
    assert_eq!(i.path, "spec.ports[0].targetPort");
    clean(&with(
        "ports: [{number: 1, name: a, targetPort: 65535, protocol: TLS}]",
    ));
}

#[test]
fn addresses_for_tcp_ports_when_not_auto_allocated() {
    warning(
        &with("addresses: DROP\nresolution: NONE\nports: [{number: 1, name: a, protocol: TCP}]"),
        "addresses-for-tcp",
    );
    warning(
        &with("addresses: DROP\nresolution: NONE\nports: [{number: 1, name: a}]"),
        "addresses-for-tcp",
    );
    // Istio compares the protocol case-sensitively.
    clean(&with(
        "addresses: DROP\nresolution: NONE\nports: [{number: 1, name: a, protocol: tcp}]",
    ));
    // DNS resolution without addresses gets an auto-allocated IP...
    clean(&with(
        "addresses: DROP\nports: [{number: 1, name: a, protocol: TCP}]",
    ));
    // ...unless the user opts out.
    let opted_out = issues_for(
        "{name: t, labels: {networking.istio.io/enable-autoallocate-ip: 'False'}}",
        &with("addresses: DROP\nports: [{number: 1, name: a, protocol: TCP}]"),
    );
    assert_eq!(rules(&opted_out, Severity::Warning), ["addresses-for-tcp"]);
}

#[test]
fn port_name_syntax() {
    for n in ["Bad_Name", "''", "-a", "a.b"] {
        let i = error(
            &with(&format!("ports: [{{number: 1, name: {n}, protocol: TLS}}]")),
            "port-name-syntax",
        );
        assert_eq!(i.path, "spec.ports[0].name");
    }
}

#[test]
fn port_protocol() {
    error(
        &with("ports: [{number: 1, name: a, protocol: SCTP}]"),
        "port-protocol",
    );
    // Listed in Istio's parser but unreachable there (compared after lowercasing).
    error(
        &with("ports: [{number: 1, name: a, protocol: DoubleHBONE}]"),
        "port-protocol",
    );
    for p in [
        "http",
        "HTTPS",
        "grpc-web",
        "Mongo",
        "mysql",
        "redis",
        "http_proxy",
        "http2",
        "udp",
        "tls",
    ] {
        assert!(
            !rules(
                &issues(&with(&format!(
                    "ports: [{{number: 1, name: a, protocol: {p}}}]"
                ))),
                Severity::Error
            )
            .contains(&"port-protocol"),
            "{p}"
        );
    }
}

#[test]
fn port_range() {
    error(
        &with("ports: [{number: 0, name: a, protocol: TLS}]"),
        "port-range",
    );
    error(
        &with("ports: [{number: 65536, name: a, protocol: TLS}]"),
        "port-range",
    );
}

#[test]
fn selector_and_endpoints() {
    error(
        &with(
            "resolution: STATIC\nworkloadSelector: {labels: {app: x}}\nendpoints: [{address: 192.0.2.1}]",
        ),
        "selector-and-endpoints",
    );
}

#[test]
fn selector_key_empty() {
    error(
        &with("resolution: STATIC\nworkloadSelector: {labels: {'': x}}"),
        "selector-key-empty",
    );
}

#[test]
fn selector_wildcard() {
    error(
        &with("resolution: STATIC\nworkloadSelector: {labels: {app: 'x*'}}"),
        "selector-wildcard",
    );
    error(
        &with("resolution: STATIC\nworkloadSelector: {labels: {'a*': x}}"),
        "selector-wildcard",
    );
}

#[test]
fn selector_without_labels() {
    warning(
        &with("resolution: STATIC\nworkloadSelector: {}"),
        "selector-without-labels",
    );
}

#[test]
fn none_endpoints_even_an_empty_list() {
    error(
        &with("resolution: NONE\nendpoints: [{address: 192.0.2.1}]"),
        "none-endpoints",
    );
    error(&with("resolution: NONE\nendpoints: []"), "none-endpoints");
}

#[test]
fn none_selector() {
    warning(
        &with("resolution: NONE\nworkloadSelector: {labels: {app: x}}"),
        "none-selector",
    );
}

#[test]
fn endpoint_address_required() {
    let i = error(
        &with("resolution: STATIC\nendpoints: [{labels: {a: b}}]"),
        "endpoint-address-required",
    );
    assert_eq!(i.path, "spec.endpoints[0].address");
}

#[test]
fn endpoint_address_unset_with_network() {
    warning(
        &with("resolution: STATIC\nendpoints: [{network: n1}]"),
        "endpoint-address-unset",
    );
}

#[test]
fn endpoint_unix_path() {
    error(
        &with(
            "resolution: STATIC\nendpoints: [{address: 'unix://relative.sock'}]\nports: [{number: 1, name: a, protocol: TLS}]",
        ),
        "endpoint-unix-path",
    );
    error(
        &with(
            "resolution: STATIC\nendpoints: [{address: 'unix:///dir/'}]\nports: [{number: 1, name: a, protocol: TLS}]",
        ),
        "endpoint-unix-path",
    );
}

#[test]
fn endpoint_unix_ports() {
    error(
        &with("resolution: STATIC\nendpoints: [{address: 'unix:///s.sock', ports: {https: 1}}]"),
        "endpoint-unix-ports",
    );
}

#[test]
fn unix_single_port() {
    error(
        &with(
            "resolution: STATIC\nendpoints: [{address: 'unix:///s.sock'}]\nports: [{number: 1, name: a, protocol: TLS}, {number: 2, name: b, protocol: TLS}]",
        ),
        "unix-single-port",
    );
}

#[test]
fn endpoint_ip_for_static() {
    error(
        &with("resolution: STATIC\nendpoints: [{address: api.example.com}]"),
        "endpoint-ip",
    );
    clean(&with(
        "resolution: STATIC\nendpoints: [{address: '2001:db8::1'}, {address: 192.0.2.1}]",
    ));
}

#[test]
fn endpoint_port_undefined() {
    let i = error(
        &with("resolution: STATIC\nendpoints: [{address: 192.0.2.1, ports: {nope: 8443}}]"),
        "endpoint-port-undefined",
    );
    assert_eq!(i.path, "spec.endpoints[0].ports.nope");
    error(
        &with("endpoints: [{address: a.example.com, ports: {nope: 8443}}]"),
        "endpoint-port-undefined",
    );
}

#[test]
fn endpoint_port_name() {
    error(
        &with("resolution: STATIC\nendpoints: [{address: 192.0.2.1, ports: {Bad_Name: 1}}]"),
        "endpoint-port-name",
    );
}

#[test]
fn endpoint_port_range() {
    error(
        &with("resolution: STATIC\nendpoints: [{address: 192.0.2.1, ports: {https: 0}}]"),
        "endpoint-port-range",
    );
    error(
        &with("endpoints: [{address: a.example.com, ports: {https: 70000}}]"),
        "endpoint-port-range",
    );
}

#[test]
fn endpoint_labels() {
    error(
        &with("resolution: STATIC\nendpoints: [{address: 192.0.2.1, labels: {'bad key': v}}]"),
        "endpoint-labels",
    );
    error(
        &with("endpoints: [{address: a.example.com, labels: {k: 'bad value'}}]"),
        "endpoint-labels",
    );
}

#[test]
fn dns_hosts_must_be_fqdn_without_endpoints() {
    error(&with("hosts: ['*.example.com']"), "dns-hosts-fqdn");
    error(
        &with("hosts: ['*.example.com']\nresolution: DNS_ROUND_ROBIN"),
        "dns-hosts-fqdn",
    );
    clean(&with(
        "hosts: ['*.example.com']\nendpoints: [{address: a.example.com}]",
    ));
}

#[test]
fn dns_round_robin_endpoints() {
    error(
        &with(
            "resolution: DNS_ROUND_ROBIN\nendpoints: [{address: a.example.com}, {address: b.example.com}]",
        ),
        "dns-rr-endpoints",
    );
    clean(&with(
        "resolution: DNS_ROUND_ROBIN\nendpoints: [{address: a.example.com}]",
    ));
}

#[test]
fn dns_endpoint_address() {
    for a in ["not_valid", "'unix:///s.sock'", "''", "'*.example.com'"] {
        error(
            &with(&format!("endpoints: [{{address: {a}}}]")),
            "dns-endpoint-address",
        );
    }
}

#[test]
fn dns_multiple_hosts_with_address_and_tcp_port() {
    warning(
        &with(
            "hosts: [a.example.com, b.example.com]\nports: [{number: 443, name: https, protocol: HTTPS}]",
        ),
        "dns-multiple-hosts-address-tcp",
    );
}

#[test]
fn dynamic_dns_rules() {
    let base = "hosts: ['*.example.com']\naddresses: DROP\nresolution: DYNAMIC_DNS\nports: [{number: 443, name: https, protocol: TLS}]";
    clean(&with(base));
    error(&with(&format!("{base}\nhosts: []")), "dynamic-dns-hosts");
    error(
        &with(&format!("{base}\nhosts: [api.example.com]")),
        "dynamic-dns-host-wildcard",
    );
    error(
        &with(&format!("{base}\naddresses: [192.0.2.1]")),
        "dynamic-dns-addresses",
    );
    error(
        &with(&format!("{base}\nendpoints: [{{address: 192.0.2.1}}]")),
        "dynamic-dns-endpoints",
    );
    error(
        &with(&format!(
            "{base}\nports: [{{number: 443, name: https, protocol: HTTPS}}]"
        )),
        "dynamic-dns-protocol",
    );
    let spec = with(&format!("{base}\nlocation: MESH_INTERNAL"));
    let wp = issues_for("{name: t, labels: {istio.io/use-waypoint: wp}}", &spec);
    assert_eq!(rules(&wp, Severity::Error), ["dynamic-dns-waypoint"]);
    let none = issues_for("{name: t, labels: {istio.io/use-waypoint: None}}", &spec);
    assert!(none.is_empty(), "{none:?}");
}

#[test]
fn multiple_hosts_need_http_or_tls_ports_unless_none() {
    let spec = "hosts: [a.example.com, b.example.com]\naddresses: DROP\nports: [{number: 5432, name: pg, protocol: TCP}]";
    let i = error(&with(spec), "multiple-hosts-tcp");
    assert_eq!(i.path, "spec.ports[0]");
    assert!(
        !rules(
            &issues(&with(&format!(
                "{spec}\nresolution: NONE\naddresses: [192.0.2.1]"
            ))),
            Severity::Error
        )
        .contains(&"multiple-hosts-tcp")
    );
}

#[test]
fn export_to_rules() {
    clean(&with("exportTo: ['.', other, '~']").replace(", '~'", ""));
    clean(&with("exportTo: ['~']"));
    clean(&with("exportTo: ['*']"));
    let i = error(&with("exportTo: [ns, '.']"), "export-to-duplicate");
    assert!(i.message.contains(". and current namespace ns"), "{i:?}");
    error(&with("exportTo: [a, a]"), "export-to-duplicate");
    error(&with("exportTo: ['Bad!']"), "export-to-syntax");
    error(&with("exportTo: ['*', a]"), "export-to-public");
    error(&with("exportTo: ['~', a]"), "export-to-none");
}

#[test]
fn crd_limits() {
    let hosts: Vec<String> = (0..257).map(|i| format!("h{i}.example.com")).collect();
    error(
        &with(&format!("hosts: [{}]\nresolution: NONE", hosts.join(", "))),
        "crd-limit",
    );
    error(
        &with(&format!("addresses: ['fe80::1%{}']", "a".repeat(60))),
        "crd-limit",
    );
    let long = "a".repeat(63);
    error(
        &with(&format!(
            "resolution: STATIC\nports: [{{number: 1, name: {long}, protocol: TLS}}]\nendpoints: [{{address: 192.0.2.1, ports: {{{long}: 1}}}}]"
        )),
        "crd-port-name",
    );
    // An address-only endpoint skips the endpoint checks only when it is a plain IP within
    // the CRD's length limit: a zone long enough to pass the limit is still caught.
    let err = error(
        &with(&format!(
            "resolution: STATIC\nendpoints: [{{address: 'fe80::1%{}'}}]",
            "a".repeat(300)
        )),
        "crd-limit",
    );
    assert_eq!(err.path, "spec.endpoints[0].address");
    clean(&with(
        "resolution: STATIC\nendpoints: [{address: 192.0.2.1}, {address: '2001:db8::1'}]",
    ));
}

#[test]
fn kubernetes_metadata() {
    let spec = with("");
    assert_eq!(
        rules(&issues_for("{namespace: ns}", &spec), Severity::Error),
        ["k8s-name"]
    );
    assert_eq!(
        rules(&issues_for("{name: Upper}", &spec), Severity::Error),
        ["k8s-name"]
    );
    assert_eq!(
        rules(
            &issues_for("{name: a, namespace: Bad_NS}", &spec),
            Severity::Error
        ),
        ["k8s-namespace"]
    );
    assert_eq!(
        rules(
            &issues_for("{name: a, labels: {'bad key': v}}", &spec),
            Severity::Error
        ),
        ["k8s-labels"]
    );
    assert!(issues_for("{name: a.b-c, labels: {app.kubernetes.io/name: x}}", &spec).is_empty());
}
