use super::*;

const LIMITS: Limits = Limits {
    max_observations: 100,
    max_bytes: 1 << 20,
    max_per_workload: 100,
};

fn key(cgroup: &str, addr: &str, port: u16) -> Key {
    Key {
        cgroup: cgroup.into(),
        addr: addr.parse().unwrap(),
        port,
        proto: Transport::Tcp,
    }
}

fn sight<'a>(k: Key, hosts: &'a [String], now: u64, denied: bool) -> Sighting<'a> {
    Sighting {
        key: k,
        pod: None,
        hosts,
        now,
        count: 1,
        denied,
    }
}

#[test]
fn repeats_are_one_observation_with_a_count_and_a_time_span() {
    let mut s = Store::new(LIMITS);
    let h = vec!["api.example.com".to_owned()];
    assert!(s.record(&sight(key("app", "198.18.0.1", 443), &h, 100, false)));
    assert!(!s.record(&sight(key("app", "198.18.0.1", 443), &[], 160, true)));
    assert!(s.record(&sight(key("app", "198.18.0.1", 80), &[], 170, false)));
    let o = s.observations();
    assert_eq!(o.len(), 2);
    let first = &o[0];
    assert_eq!((first.port, first.count, first.denied), (443, 2, 1));
    assert_eq!((first.first_seen, first.last_seen), (100, 160));
    assert_eq!(first.hosts, ["api.example.com"]);
}

#[test]
fn names_are_capped_keeping_the_most_recent() {
    let mut s = Store::new(LIMITS);
    let k = key("app", "198.18.0.1", 443);
    for i in 0..6 {
        let h = vec![format!("n{i}.example.com")];
        s.record(&sight(k.clone(), &h, i, false));
    }
    assert_eq!(
        s.observations()[0].hosts,
        [
            "n2.example.com",
            "n3.example.com",
            "n4.example.com",
            "n5.example.com"
        ]
    );
}

#[test]
fn the_least_recently_seen_leave_first_and_are_counted() {
    let mut s = Store::new(Limits {
        max_observations: 3,
        ..LIMITS
    });
    for port in 1..=3 {
        s.record(&sight(key("app", "198.18.0.1", port), &[], 10, false));
    }
    // Port 1 seen again: port 2 is now the oldest.
    s.record(&sight(key("app", "198.18.0.1", 1), &[], 20, false));
    s.record(&sight(key("app", "198.18.0.1", 4), &[], 30, false));
    let ports: Vec<u16> = s.observations().iter().map(|o| o.port).collect();
    assert_eq!(ports, [3, 1, 4]);
    assert_eq!(s.dropped(), 1);
}

#[test]
fn the_byte_cap_holds_for_long_cgroup_paths() {
    let limits = Limits {
        max_observations: 1000,
        max_bytes: 10_000,
        max_per_workload: 1000,
    };
    let mut s = Store::new(limits);
    let long = "a/".repeat(1000);
    for port in 1..=50 {
        s.record(&sight(key(&long, "198.18.0.1", port), &[], 1, false));
        assert!(s.bytes() <= limits.max_bytes || s.len() == 1);
    }
    assert!(
        s.len() < 50 && s.dropped() > 0,
        "{} {}",
        s.len(),
        s.dropped()
    );
    let saved = s.encode().unwrap();
    assert!(
        saved.len() <= s.bytes() + 200,
        "{} vs {}",
        saved.len(),
        s.bytes()
    );
}

#[test]
fn a_saved_store_reads_back_the_same_bytes() {
    let mut s = Store::new(LIMITS);
    let h = vec!["api.example.com".to_owned()];
    s.record(&Sighting {
        pod: Some("web/frontend"),
        ..sight(key("kubepods/pod1", "fd00::1", 443), &h, 5, true)
    });
    s.record(&sight(key("app", "198.18.0.1", 53), &[], 7, false));
    let bytes = s.encode().unwrap();
    let (back, skipped) = Store::decode(&bytes, LIMITS).unwrap();
    assert_eq!(skipped.count, 0);
    assert_eq!(back.observations(), s.observations());
    assert_eq!(back.encode().unwrap(), bytes);
}

#[test]
fn a_store_read_with_lower_limits_keeps_the_most_recent() {
    let mut s = Store::new(LIMITS);
    for port in 1..=10 {
        s.record(&sight(
            key("app", "198.18.0.1", port),
            &[],
            u64::from(port),
            false,
        ));
    }
    let small = Limits {
        max_observations: 4,
        ..LIMITS
    };
    let (back, _) = Store::decode(&s.encode().unwrap(), small).unwrap();
    let ports: Vec<u16> = back.observations().iter().map(|o| o.port).collect();
    assert_eq!(ports, [7, 8, 9, 10]);
    assert_eq!(back.dropped(), 6);
}

fn err(bytes: &[u8]) -> String {
    Store::decode(bytes, LIMITS).unwrap_err().to_string()
}

#[test]
fn truncated_corrupt_and_foreign_files_are_refused_with_the_reason() {
    let mut s = Store::new(LIMITS);
    s.record(&sight(key("app", "198.18.0.1", 443), &[], 1, false));
    let good = s.encode().unwrap();
    let cut = &good[..good.len() / 2];
    assert!(err(cut).starts_with("truncated"), "{}", err(cut));
    assert!(err(b"{\"format\": 3}").starts_with("not a valid store"));
    assert!(err(b"\xff\xfe garbage").starts_with("not a valid store"));
    let other =
        br#"{"format":"egress-enforcer/observations","version":9,"dropped":0,"observations":[]}"#;
    assert!(err(other).contains("version 9"), "{}", err(other));
    let text = String::from_utf8(good).unwrap();
    let unknown = text.replace("\"count\": 1", "\"count\": 1, \"extra\": true");
    assert!(err(unknown.as_bytes()).contains("unknown field"));
    let huge = vec![b' '; (Store::max_file_bytes(LIMITS) + 1) as usize];
    assert!(err(&huge).contains("more than"), "{}", err(&huge));
}

#[test]
fn an_observation_not_in_normal_form_is_left_out_not_the_store() {
    let mut s = Store::new(LIMITS);
    s.record(&sight(key("app", "198.18.0.1", 443), &[], 1, false));
    s.record(&sight(key("app", "198.18.0.2", 443), &[], 2, false));
    let text = String::from_utf8(s.encode().unwrap()).unwrap();
    let bad = text.replacen("\"count\": 1", "\"count\": 1, \"hosts\": [\"Bad Name\"]", 1);
    let (back, skipped) = Store::decode(bad.as_bytes(), LIMITS).unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back.dropped(), 1);
    assert_eq!(skipped.count, 1);
    assert_eq!(
        skipped.first.unwrap().to_string(),
        "observations[0].hosts: \"Bad Name\": no spaces or wildcards"
    );
    let zero = text.replace("\"count\": 1", "\"count\": 0");
    let (back, skipped) = Store::decode(zero.as_bytes(), LIMITS).unwrap();
    assert!(back.is_empty());
    assert_eq!(skipped.count, 2);
}

#[test]
fn what_a_workload_sends_is_saved_in_a_form_that_reads_back() {
    let mut s = Store::new(LIMITS);
    let long_label = "a".repeat(64);
    let hosts: Vec<String> = [
        "*.attacker.example",
        "",
        long_label.as_str(),
        "ok.example.com",
        "Upper.example.com",
    ]
    .iter()
    .map(|h| (*h).to_owned())
    .collect();
    let long = "x/".repeat(3000) + "\0tail";
    s.record(&Sighting {
        pod: Some("not-a-pod"),
        ..sight(key(&long, "::ffff:198.18.0.1", 443), &hosts, 1, false)
    });
    let (back, skipped) = Store::decode(&s.encode().unwrap(), LIMITS).unwrap();
    assert_eq!(skipped.count, 0);
    let o = &back.observations()[0];
    assert_eq!(o.hosts, ["ok.example.com"]);
    assert!(o.cgroup.len() <= 4096 && o.pod.is_none());
}

#[test]
fn a_workload_flooding_destinations_loses_its_own_oldest() {
    let limits = Limits {
        max_observations: 100,
        max_bytes: 1 << 20,
        max_per_workload: 10,
    };
    let mut s = Store::new(limits);
    s.record(&sight(key("quiet", "198.18.0.1", 443), &[], 1, false));
    for port in 1..=50 {
        s.record(&sight(key("noisy", "198.18.0.2", port), &[], 2, false));
    }
    let o = s.observations();
    assert_eq!(o.len(), 11);
    assert!(o.iter().any(|o| o.cgroup == "quiet"));
    assert_eq!(s.dropped(), 40);
}

#[test]
fn a_pod_is_a_kubernetes_namespace_and_name() {
    for ok in [
        "web/frontend-1",
        "kube-system/coredns-5d78c9869d-abcde",
        "a/b.c",
    ] {
        assert!(valid_pod(ok), "{ok}");
    }
    for bad in [
        "web",
        "we:b/x",
        "Web/x",
        "web/X",
        "web/",
        "/x",
        "a/b/c",
        "a\n/b",
        "web/x\nkind: Secret",
    ] {
        assert!(!valid_pod(bad), "{bad:?}");
    }
}
