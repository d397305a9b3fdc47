use std::path::Path;

use super::*;
use crate::{
    learn::render,
    serviceentry::{LoadReport, Severity, source::load_text},
};

/// A policy that allows nothing and registers nothing.
struct Empty;

impl Policy for Empty {
    fn allows(&self, _: &Observation) -> bool {
        false
    }
    fn registers(&self, _: &Observation) -> bool {
        false
    }
}

fn obs(host: Option<&str>, addr: &str, port: u16, proto: Transport) -> Observation {
    Observation {
        cgroup: "egress-enforcer/app".into(),
        pod: None,
        addr: addr.parse().unwrap(),
        port,
        proto,
        hosts: host.map(|h| vec![h.to_owned()]).unwrap_or_default(),
        first_seen: 1_796_332_500,
        last_seen: 1_796_332_560,
        count: 3,
        denied: 0,
    }
}

const TCP: Transport = Transport::Tcp;
const UDP: Transport = Transport::Udp;

fn sample() -> Vec<Observation> {
    vec![
        obs(Some("api.example.com"), "198.18.0.10", 443, TCP),
        obs(Some("api.example.com"), "198.18.0.11", 443, TCP),
        obs(Some("cdn.example.com"), "198.18.0.12", 443, TCP),
        obs(Some("db.example.co.uk"), "198.18.0.20", 5432, TCP),
        obs(Some("db.example.co.uk"), "198.18.0.20", 5432, UDP),
        obs(Some("metrics.example.co.uk"), "198.18.0.21", 8125, UDP),
        obs(None, "198.18.0.30", 9000, TCP),
        obs(None, "fd00::30", 53, UDP),
    ]
}

/// Every document validates as Istio would: no error, and no warning.
fn assert_valid(yaml: &str) -> LoadReport {
    let mut r = LoadReport::default();
    load_text(yaml, Path::new("suggested.yaml"), &mut r);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    for e in &r.entries {
        let bad: Vec<_> = e
            .issues
            .iter()
            .filter(|i| i.severity != Severity::Notice)
            .collect();
        assert!(bad.is_empty(), "{}: {bad:?}\n{yaml}", e.id());
    }
    r
}

#[test]
fn one_entry_per_name_and_per_unnamed_address() {
    let d = suggest(&sample(), &Options::default(), &Empty);
    let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "addr-198-18-0-30",
            "addr-fd00-0-0-0-0-0-0-30",
            "api-example-com",
            "cdn-example-com",
            "db-example-co-uk",
            "db-example-co-uk-udp",
            "metrics-example-co-uk",
        ]
    );
    let api = &d[2];
    assert_eq!(api.hosts, ["api.example.com"]);
    assert_eq!(api.resolution, Resolution::Dns);
    let t = &api.ports[&(443, TCP)];
    assert_eq!((t.observations, t.count, t.addrs.len()), (2, 6, 2));
    let unnamed = &d[0];
    assert_eq!(unnamed.resolution, Resolution::None);
    assert_eq!(
        unnamed.addresses,
        ["198.18.0.30".parse::<IpAddr>().unwrap()]
    );
    let r = assert_valid(&render::stream(&d));
    assert_eq!(r.entries.len(), 7);
}

#[test]
fn domains_group_where_istio_lets_hosts_share_an_entry() {
    let opts = Options {
        group: Group::Domain,
        ..Options::default()
    };
    let d = suggest(&sample(), &opts, &Empty);
    let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
    // example.com: two names on 443 (TLS) share one entry; example.co.uk has TCP and UDP
    // ports, which Istio allows only with one host: one entry per name.
    assert!(names.contains(&"example-com"), "{names:?}");
    let ex = d.iter().find(|d| d.name == "example-com").unwrap();
    assert_eq!(ex.hosts, ["api.example.com", "cdn.example.com"]);
    assert!(names.contains(&"db-example-co-uk") && names.contains(&"metrics-example-co-uk"));
    assert_valid(&render::stream(&d));
    let wild = Options {
        wildcard: true,
        ..opts
    };
    let d = suggest(&sample(), &wild, &Empty);
    let w = d.iter().find(|d| d.name == "wildcard-example-com").unwrap();
    assert_eq!(w.hosts, ["*.example.com"]);
    assert_eq!(w.resolution, Resolution::None);
    let uk = d
        .iter()
        .find(|d| d.name == "wildcard-example-co-uk")
        .unwrap();
    assert_eq!(uk.ports.len(), 2);
    // A wildcard entry with plain TCP ports draws Istio's addresses warning, nothing else.
    let mut r = LoadReport::default();
    load_text(&render::stream(&d), Path::new("w.yaml"), &mut r);
    for e in &r.entries {
        for i in &e.issues {
            assert!(
                i.severity != Severity::Error
                    && (i.severity != Severity::Warning || i.rule == "addresses-for-tcp"),
                "{}: {i:?}",
                e.id()
            );
        }
    }
}

#[test]
fn filters_select_by_time_namespace_and_cgroup() {
    let mut o = sample();
    o[0].last_seen = 100;
    o[1].pod = Some("web/frontend".into());
    o[2].cgroup = "other/unit".into();
    let since = Options {
        since: Some(1_000),
        ..Options::default()
    };
    let d = suggest(&o[..1], &since, &Empty);
    assert!(d.is_empty());
    let ns = Options {
        namespaces: vec!["web".into()],
        ..Options::default()
    };
    let d = suggest(&o, &ns, &Empty);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].ports[&(443, TCP)].addrs.len(), 1);
    let cg = Options {
        cgroups: vec!["/other/".into()],
        ..Options::default()
    };
    let d = suggest(&o, &cg, &Empty);
    assert_eq!(
        d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
        ["cdn-example-com"]
    );
    let prefix_only = Options {
        cgroups: vec!["oth".into()],
        ..Options::default()
    };
    assert!(
        suggest(&o, &prefix_only, &Empty).is_empty(),
        "a cgroup is a whole path component"
    );
}

struct AllowsApi;

impl Policy for AllowsApi {
    fn allows(&self, o: &Observation) -> bool {
        o.hosts.iter().any(|h| h == "api.example.com") && o.port == 443
    }
    fn registers(&self, o: &Observation) -> bool {
        o.hosts.iter().any(|h| h.ends_with("example.com"))
    }
}

#[test]
fn exclusion_leaves_out_what_the_policy_covers() {
    let count = |exclude| {
        suggest(
            &sample(),
            &Options {
                exclude,
                ..Options::default()
            },
            &AllowsApi,
        )
        .len()
    };
    assert_eq!(count(Exclude::None), 7);
    assert_eq!(count(Exclude::Allowed), 6);
    assert_eq!(count(Exclude::Registered), 5);
}

#[test]
fn the_same_observations_give_the_same_bytes_in_any_order() {
    let mut o = sample();
    for x in &mut o[..4] {
        x.pod = Some("web/frontend-1".into());
    }
    let a = render::stream(&suggest(&o, &Options::default(), &Empty));
    o.reverse();
    let b = render::stream(&suggest(&o, &Options::default(), &Empty));
    assert_eq!(a, b);
    assert!(a.contains("  namespace: \"web\"\n") && a.contains("exportTo: [\".\"]"));
    assert_valid(&a);
}

/// Kubernetes names YAML 1.1 reads as something else (found by the observations fuzzer:
/// namespace `off` came back a boolean).
#[test]
fn names_yaml_reads_as_booleans_numbers_or_null_stay_strings() {
    let mut drafts = Vec::new();
    for (i, word) in ["off", "yes", "null", "123", "0x1f", "1e3"]
        .iter()
        .enumerate()
    {
        let mut o = obs(Some(word), &format!("198.18.0.{}", i + 1), 443, TCP);
        o.pod = Some(format!("{word}/frontend"));
        drafts.extend(suggest(&[o], &Options::default(), &Empty));
    }
    let yaml = render::stream(&drafts);
    let r = assert_valid(&yaml);
    assert_eq!(r.entries.len(), 6, "{yaml}");
    for (e, word) in r
        .entries
        .iter()
        .zip(["off", "yes", "null", "123", "0x1f", "1e3"])
    {
        assert_eq!(e.entry.metadata.namespace.as_deref(), Some(word), "{yaml}");
    }
}

#[test]
fn names_from_workloads_cannot_break_the_yaml() {
    let mut o = obs(Some("x.example.com"), "198.18.0.1", 443, TCP);
    o.cgroup = "evil\nkind: Secret\u{2028}#".into();
    o.pod = Some("ns/name\r\nspec: {}".into());
    let mut bad = obs(Some("bad\"name.example.com"), "198.18.0.2", 443, TCP);
    bad.hosts.push("also:bad".into());
    let d = suggest(&[o, bad], &Options::default(), &Empty);
    let yaml = render::stream(&d);
    let r = assert_valid(&yaml);
    assert_eq!(r.entries.len(), 2, "{yaml}");
    assert!(
        d.iter().any(|d| d.name == "addr-198-18-0-2"),
        "an invalid name is no name"
    );
    assert!(
        !yaml.contains("\nkind: Secret") && !yaml.contains("\nspec: {}"),
        "{yaml}"
    );
}

#[test]
fn long_names_stay_valid_kubernetes_names() {
    let host = format!("{}.example.com", ["a"; 30].join("-long-label-"));
    let host = host
        .get(host.len() - 200..)
        .unwrap()
        .trim_start_matches(['-', '.'])
        .to_owned();
    let o = vec![
        obs(Some(&host), "198.18.0.1", 53, TCP),
        obs(Some(&host), "198.18.0.1", 53, UDP),
    ];
    let d = suggest(&o, &Options::default(), &Empty);
    assert_eq!(d.len(), 2);
    assert!(
        d.iter().all(|d| d.name.len() <= 63),
        "{:?}",
        d.iter().map(|d| &d.name).collect::<Vec<_>>()
    );
    assert_valid(&render::stream(&d));
}

#[test]
fn names_in_force_are_not_taken_again() {
    let opts = Options {
        taken: [
            "default/api-example-com".to_owned(),
            "default/api-example-com-2".to_owned(),
            "web/api-example-com-3".to_owned(),
        ]
        .into_iter()
        .collect(),
        ..Options::default()
    };
    let d = suggest(&sample()[..1], &opts, &Empty);
    assert_eq!(d[0].name, "api-example-com-3");
}

#[test]
fn a_pods_entries_go_to_its_namespace_others_to_everyone() {
    let mut o = sample();
    o[0].pod = Some("web/frontend".into());
    o[1].pod = Some("shop/cart".into());
    let d = suggest(&o[..3], &Options::default(), &Empty);
    let got: Vec<(Option<&str>, &str)> = d
        .iter()
        .map(|d| (d.namespace.as_deref(), d.name.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (None, "cdn-example-com"),
            (Some("shop"), "api-example-com"),
            (Some("web"), "api-example-com"),
        ]
    );
    assert_valid(&render::stream(&d));
}

#[test]
fn a_domain_shares_an_entry_only_among_names_seen_on_the_same_ports() {
    let o = vec![
        obs(Some("a.example.com"), "198.18.0.1", 443, TCP),
        obs(Some("b.example.com"), "198.18.0.2", 443, TCP),
        obs(Some("c.example.com"), "198.18.0.3", 8443, TCP),
    ];
    let opts = Options {
        group: Group::Domain,
        ..Options::default()
    };
    let d = suggest(&o, &opts, &Empty);
    let got: Vec<(&str, &Vec<String>)> = d.iter().map(|d| (d.name.as_str(), &d.hosts)).collect();
    assert_eq!(
        got,
        [
            ("c-example-com", &vec!["c.example.com".to_owned()]),
            (
                "example-com",
                &vec!["a.example.com".to_owned(), "b.example.com".to_owned()]
            ),
        ]
    );
}

#[test]
fn private_suffixes_are_never_grouped_or_folded() {
    assert_eq!(registrable("api.example.co.uk"), "example.co.uk");
    assert_eq!(registrable("a.svc.cluster.local"), "a.svc.cluster.local");
    assert_eq!(registrable("db.corp.internal"), "db.corp.internal");
    let o = vec![
        obs(Some("a.svc.cluster.local"), "198.18.0.1", 443, TCP),
        obs(Some("b.svc.cluster.local"), "198.18.0.2", 443, TCP),
    ];
    let wild = Options {
        group: Group::Domain,
        wildcard: true,
        ..Options::default()
    };
    let d = suggest(&o, &wild, &Empty);
    assert!(d.iter().all(|d| !d.hosts[0].starts_with('*')), "{d:?}");
}

#[test]
fn addresses_get_tcp_not_a_guessed_http() {
    let d = suggest(
        &[obs(None, "198.18.0.9", 80, TCP)],
        &Options::default(),
        &Empty,
    );
    let yaml = render::stream(&d);
    assert!(
        yaml.contains("protocol: TCP") && !yaml.contains("HTTP"),
        "{yaml}"
    );
    let named = render::stream(&suggest(
        &[obs(Some("w.example.com"), "198.18.0.9", 80, TCP)],
        &Options::default(),
        &Empty,
    ));
    assert!(named.contains("protocol: HTTP"), "{named}");
}

#[test]
fn many_names_on_one_label_each_get_their_own_suffix() {
    // a-b.example.com, a.b-example.com ... all make the label a-b-example-com.
    let o: Vec<Observation> = (0..3000u32)
        .map(|i| {
            let dots: String = (0..12)
                .map(|b| if i >> b & 1 == 1 { '.' } else { '-' })
                .collect();
            let labels: Vec<String> = "abcdefghijklm".chars().map(String::from).collect();
            let mut host = String::new();
            for (k, l) in labels.iter().enumerate() {
                host.push_str(l);
                if let Some(c) = dots.chars().nth(k) {
                    host.push(c);
                }
            }
            obs(Some(&format!("{host}.com")), "198.18.0.1", 443, TCP)
        })
        .collect();
    let d = suggest(&o, &Options::default(), &Empty);
    let names: std::collections::BTreeSet<&str> = d.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names.len(), d.len(), "unique");
    assert!(d.len() >= 3000 - 10, "{}", d.len());
}
