//! End-to-end: the daemon enforcing ServiceEntries, with a real DNS server (dnsmasq) whose
//! records the tests change.

use std::time::Duration;

use e2e::{Dns, Env, run, service_entry as se};

const API: &str =
    "hosts: [api.ee.test]\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: DNS";

fn env_with_dns(test: &str, mode: &str, extra: &str) -> (Env, Dns) {
    e2e::env_with_dns(test, mode, extra, "2s")
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_resolved_host_is_allowed_and_the_rest_denied() {
    let (env, dns) = env_with_dns("dns-basic", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1"), ("v6.ee.test", "fd00::1")]);
    env.write_se("api.yaml", &se("api", API));
    env.write_se(
        "v6.yaml",
        &se("v6", &API.replace("api.ee.test", "v6.ee.test")),
    );
    let mut d = env.start_daemon(&[]);
    d.wait_for("the first full apply", WAIT, |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    let p = env.probe_in_cgroup(&[
        "tcp:198.18.0.1:8080",
        "tcp:198.18.0.1:8081",
        "tcp:198.18.0.3:8080",
        "tcp:[fd00::1]:8080",
        "tcp:[fd00::2]:8080",
    ]);
    assert_eq!(p.result("tcp:198.18.0.1:8080"), "ok", "A record");
    assert_eq!(p.result("tcp:[fd00::1]:8080"), "ok", "AAAA record");
    assert_eq!(p.result("tcp:198.18.0.1:8081"), "EPERM", "another port");
    assert_eq!(p.result("tcp:198.18.0.3:8080"), "EPERM", "unregistered");
    assert_eq!(p.result("tcp:[fd00::2]:8080"), "EPERM", "unregistered v6");
    // inspect names the ServiceEntry behind each kernel rule.
    let rules = env.column("rules", "rule");
    let sources = env.column("rules", "source");
    let i = rules
        .iter()
        .position(|r| r == "198.18.0.1:8080/tcp")
        .expect("rule in the map");
    assert!(
        sources[i].starts_with("ServiceEntry shop/api ("),
        "{sources:?}"
    );

    // The denial names the host and the entry that allows the address on another port.
    d.wait_for("the explained event", WAIT, |r| {
        r.iter().any(|e| {
            e["target"] == "egress_enforcer::event"
                && e["port"] == 8081
                && e["hosts"] == "api.ee.test"
                && e["entries"]
                    .as_str()
                    .is_some_and(|s| s.contains("ServiceEntry shop/api"))
                && e["nearest"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("allows 8080/tcp"))
        })
    });
}

#[test]
fn a_changed_record_moves_the_allowed_ip_and_the_old_one_expires_after_the_grace() {
    let (env, dns) = env_with_dns("dns-move", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let _d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    // The old address cannot leave the answers before the record changes.
    let changed = std::time::Instant::now();
    dns.set(&[("api.ee.test", "198.18.0.2")]);
    // Within the TTL (1-2 s) the new address is allowed...
    let moved = env.wait_probe("tcp:198.18.0.2:8080", "ok", Duration::from_secs(5));
    // ...and the old one still is, for the grace period (2 s), then denied.
    let p = env.probe_in_cgroup(&["tcp:198.18.0.1:8080"]);
    assert_eq!(
        p.result("tcp:198.18.0.1:8080"),
        "ok",
        "old address within the grace period (moved after {moved:?})"
    );
    env.wait_probe("tcp:198.18.0.1:8080", "EPERM", Duration::from_secs(8));
    let gone = changed.elapsed();
    assert!(
        gone >= Duration::from_secs(2),
        "expired {gone:?} after the record changed, before the 2 s grace"
    );
}

#[test]
fn a_dns_outage_keeps_the_last_good_answer() {
    let (env, dns) = env_with_dns("dns-outage", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let mut d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    dns.pause(true);
    d.wait_for("a failed lookup", Duration::from_secs(20), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("DNS lookup failed"))
        })
    });
    // Well past maxTtl + staleGrace (2 s + 2 s): each family's lookup has failed twice (a
    // lookup times out after 2 s, the retry comes 1 s later), so more than 5 s of outage.
    let addr = d.http_addr();
    let failures = || {
        e2e::metric(
            &e2e::http_get(addr, "/metrics").1,
            "egress_enforcer_dns_lookup_failures_total",
        )
        .unwrap_or(0.0)
    };
    let start = std::time::Instant::now();
    while failures() < 4.0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "lookups did not fail"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let p = env.probe_in_cgroup(&["tcp:198.18.0.1:8080"]);
    assert_eq!(
        p.result("tcp:198.18.0.1:8080"),
        "ok",
        "last good answer kept during the outage"
    );
    dns.pause(false);
}

#[test]
fn entries_added_edited_and_removed_while_running_take_effect() {
    let (env, dns) = env_with_dns("dns-edit", "enforce", "");
    dns.set(&[
        ("api.ee.test", "198.18.0.1"),
        ("other.ee.test", "198.18.0.3"),
    ]);
    env.write_se("api.yaml", &se("api", API));
    let _d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    env.wait_probe("tcp:198.18.0.3:8080", "EPERM", WAIT);
    // Added.
    env.write_se(
        "other.yaml",
        &se("other", &API.replace("api.ee.test", "other.ee.test")),
    );
    env.wait_probe("tcp:198.18.0.3:8080", "ok", WAIT);
    // Edited: another port.
    env.write_se(
        "other.yaml",
        &se(
            "other",
            &API.replace("api.ee.test", "other.ee.test")
                .replace("8080", "9090"),
        ),
    );
    env.wait_probe("tcp:198.18.0.3:8080", "EPERM", WAIT);
    env.wait_probe("tcp:198.18.0.3:9090", "ok", WAIT);
    // Removed.
    env.remove_se("other.yaml");
    env.wait_probe("tcp:198.18.0.3:9090", "EPERM", WAIT);
    let p = env.probe_in_cgroup(&["tcp:198.18.0.1:8080"]);
    assert_eq!(
        p.result("tcp:198.18.0.1:8080"),
        "ok",
        "the other entry was never disturbed"
    );
}

#[test]
fn a_broken_file_keeps_the_old_policy_and_the_daemon_up() {
    let (env, dns) = env_with_dns("dns-broken", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let mut d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    env.write_se(
        "api.yaml",
        &se(
            "api",
            "hosts: ['*']\nports: [{number: 8080, name: http, protocol: HTTP, targetPort: 99999}]",
        ),
    );
    d.wait_for("the rejected reload", WAIT, |r| {
        r.iter().any(|r| {
            r["message"].as_str().is_some_and(|m| {
                m.contains("reload failed")
                    && m.contains("api.yaml")
                    && m.contains("spec.hosts[0]")
                    && m.contains("spec.ports[0].targetPort")
            })
        })
    });
    // Up and serving after the refused reload.
    let addr = d.http_addr();
    assert_eq!(
        e2e::http_get(addr, "/healthz").0,
        200,
        "the daemon stays up"
    );
    let p = env.probe_in_cgroup(&["tcp:198.18.0.1:8080"]);
    assert_eq!(
        p.result("tcp:198.18.0.1:8080"),
        "ok",
        "the old policy stays in force"
    );
    // The next good version applies.
    env.write_se("api.yaml", &se("api", &API.replace("8080", "9090")));
    env.wait_probe("tcp:198.18.0.1:9090", "ok", WAIT);
}

#[test]
fn sighup_reloads() {
    let (env, dns) = env_with_dns("dns-hup", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let mut d = env.start_daemon(&[]);
    let before = d
        .records()
        .iter()
        .filter(|r| r["message"] == "reloaded")
        .count();
    d.signal(libc::SIGHUP);
    d.wait_for("a reload after SIGHUP", WAIT, |r| {
        let hup = r.iter().position(|r| r["message"] == "SIGHUP: reloading");
        hup.is_some_and(|i| r[i..].iter().any(|r| r["message"] == "reloaded"))
    });
    assert_eq!(
        d.records()
            .iter()
            .filter(|r| r["message"] == "reloaded")
            .count(),
        before + 1
    );
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
}

#[test]
fn audit_mode_logs_and_allows() {
    let (env, dns) = env_with_dns("dns-audit", "audit", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let mut d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    let p = env.probe_in_cgroup(&["tcp:198.18.0.3:8080"]);
    assert_eq!(p.result("tcp:198.18.0.3:8080"), "ok");
    d.wait_for("the audit event", WAIT, |r| {
        r.iter().any(|e| {
            e["target"] == "egress_enforcer::event"
                && e["verdict"] == "audit"
                && e["dst"] == "198.18.0.3"
        })
    });
}

#[test]
fn dns_servers_are_allowed_on_port_53_only() {
    let (env, dns) = env_with_dns(
        "dns-servers",
        "enforce",
        "allow: {dnsServers: [198.18.0.53]}\n",
    );
    dns.set(&[]);
    let _d = env.start_daemon(&[]);
    let p = env.probe_in_cgroup(&[
        "sendto:198.18.0.53:53",
        "tcp:198.18.0.53:53",
        "tcp:198.18.0.53:54",
        "sendto:198.18.0.53:5353",
        "sendto:198.18.0.54:53",
        "tcp:169.254.169.254:80",
    ]);
    assert_eq!(
        p.result("tcp:169.254.169.254:80"),
        "EPERM",
        "cloud metadata is not allowed by default"
    );
    assert_eq!(p.result("sendto:198.18.0.53:53"), "ok");
    assert_eq!(p.result("tcp:198.18.0.53:53"), "ok");
    assert_eq!(
        p.result("tcp:198.18.0.53:54"),
        "EPERM",
        "the DNS server on another port"
    );
    assert_eq!(p.result("sendto:198.18.0.53:5353"), "EPERM");
    assert_eq!(
        p.result("sendto:198.18.0.54:53"),
        "EPERM",
        "port 53 on a server not configured"
    );
}

#[test]
fn static_none_cidr_and_dns_with_endpoints_follow_the_table() {
    let (env, dns) = env_with_dns("dns-table", "enforce", "");
    // The host of the DNS entry resolves somewhere else: with endpoints, only they count.
    dns.set(&[("ep.ee.test", "198.18.0.2"), ("svc.ee.test", "198.18.0.3")]);
    env.write_se(
        "static.yaml",
        &se("db", "hosts: [db.ee.test]\nports: [{number: 5432, name: pg, protocol: TCP}]\nresolution: STATIC\nendpoints: [{address: 198.18.1.7}, {address: 198.18.0.1, ports: {pg: 6432}}]"),
    );
    env.write_se(
        "cidr.yaml",
        &se("range", "hosts: [range.ee.test]\naddresses: [198.18.2.0/24]\nports: [{number: 53, name: dns, protocol: UDP}]\nresolution: NONE"),
    );
    env.write_se(
        "dns-ep.yaml",
        &se("svc", "hosts: [svc.ee.test]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DNS\nendpoints: [{address: ep.ee.test}]"),
    );
    let mut d = env.start_daemon(&[]);
    d.wait_for("the first full apply", WAIT, |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    let ops = [
        ("tcp:198.18.1.7:5432", "ok"),
        ("tcp:198.18.0.1:5432", "ok"),
        ("tcp:198.18.0.1:6432", "ok"),
        ("tcp:198.18.1.7:6432", "EPERM"),
        ("sendto:198.18.2.7:53", "ok"),
        ("tcp:198.18.2.7:53", "EPERM"),
        ("tcp:198.18.0.2:443", "ok"),
        ("tcp:198.18.0.3:443", "EPERM"),
    ];
    let p = env.probe_in_cgroup(&ops.map(|(o, _)| o));
    for (op, want) in ops {
        assert_eq!(p.result(op), want, "{op}");
    }
}

/// Static endpoints added, moved and removed while running, one of them also a DNS answer
/// of another entry (one kernel rule, two sources): reloads diff the static hosts listed from
/// the compiled policy against the maps' mirror (docs/architecture.md, "Reloads"), and the
/// kernel holds exactly the rules of each step, with the right source.
#[test]
fn static_endpoints_edited_while_running_leave_exactly_the_rules_of_each_step() {
    let (env, dns) = env_with_dns("static-edit", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.2")]);
    let statics = |addrs: &[&str]| {
        let eps: Vec<String> = addrs.iter().map(|a| format!("{{address: {a}}}")).collect();
        se(
            "db",
            &format!(
                "hosts: [db.ee.test]\nports: [{{number: 8080, name: http, protocol: HTTP}}]\nresolution: STATIC\nendpoints: [{}]",
                eps.join(", ")
            ),
        )
    };
    let rules = |env: &Env| {
        let mut r: Vec<(String, String)> = env
            .column("rules", "rule")
            .into_iter()
            .zip(env.column("rules", "source"))
            .filter(|(r, _)| r.ends_with(":8080/tcp"))
            .map(|(r, s)| (r, s.split(" (").next().unwrap_or_default().to_owned()))
            .collect();
        r.sort();
        r
    };
    let want = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(r, s)| (format!("{r}:8080/tcp"), format!("ServiceEntry shop/{s}")))
            .collect()
    };
    env.write_se("db.yaml", &statics(&["198.18.0.1", "198.18.0.2"]));
    env.write_se("api.yaml", &se("api", API));
    let _d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    env.wait_probe("tcp:198.18.0.2:8080", "ok", WAIT);
    // api.yaml is read first: its rule id is the lower, and names the shared rule.
    assert_eq!(
        rules(&env),
        want(&[("198.18.0.1", "db"), ("198.18.0.2", "api")])
    );
    // Moved: .1 goes, .3 comes; .2 stays allowed by the DNS answer alone.
    env.write_se("db.yaml", &statics(&["198.18.0.3"]));
    env.wait_probe("tcp:198.18.0.3:8080", "ok", WAIT);
    env.wait_probe("tcp:198.18.0.1:8080", "EPERM", WAIT);
    assert_eq!(
        rules(&env),
        want(&[("198.18.0.2", "api"), ("198.18.0.3", "db")])
    );
    let p = env.probe_in_cgroup(&["tcp:198.18.0.2:8080"]);
    assert_eq!(
        p.result("tcp:198.18.0.2:8080"),
        "ok",
        "the DNS answer's rule"
    );
    // .2 static again and the DNS entry gone: the rule stays, now the static entry's.
    env.write_se("db.yaml", &statics(&["198.18.0.2", "198.18.0.3"]));
    env.remove_se("api.yaml");
    let wanted = want(&[("198.18.0.2", "db"), ("198.18.0.3", "db")]);
    let deadline = std::time::Instant::now() + WAIT;
    while rules(&env) != wanted && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rules(&env), wanted);
    // Removed.
    env.remove_se("db.yaml");
    env.wait_probe("tcp:198.18.0.3:8080", "EPERM", WAIT);
    env.wait_probe("tcp:198.18.0.2:8080", "EPERM", WAIT);
    assert_eq!(rules(&env), want(&[]));
}

/// A CIDR rule added where no rule was (no prefix rule at all: the trie walks were skipped)
/// is matched once enforced, and one removed stops matching, in both families.
#[test]
fn a_cidr_rule_added_where_none_was_is_matched_and_removed_is_not() {
    cidr_rule_added_and_removed("cidr-none", None);
}

/// The same with a CIDR rule standing in other address regions (another IPv4 and IPv6 /16):
/// the programs then skip the trie walks by region (docs/architecture.md, "The denied path"),
/// so the added rule's region must stop being skipped before it is enforced, and the standing
/// rule must keep matching throughout.
#[test]
fn a_cidr_rule_added_in_a_region_no_rule_reached_is_matched_and_removed_is_not() {
    cidr_rule_added_and_removed(
        "cidr-region",
        Some((
            se(
                "far",
                "hosts: [far.ee.test]\naddresses: [198.19.0.0/24, \"fd01::/64\"]\nports: [{number: 7070, name: http, protocol: TCP}]\nresolution: NONE",
            ),
            ["tcp:198.19.0.7:7070", "tcp:[fd01::7]:7070"],
        )),
    );
}

/// Rules in force throughout: a static endpoint, and `standing` (a CIDR rule with its
/// probes). A destination of the added rule is probed in both families and v4-mapped from a
/// dual-stack socket (the IPv6 programs, an IPv4 region).
fn cidr_rule_added_and_removed(name: &str, standing: Option<(String, [&str; 2])>) {
    let (env, _dns) = env_with_dns(name, "enforce", "");
    env.write_se(
        "static.yaml",
        &se("db", "hosts: [db.ee.test]\nports: [{number: 8080, name: http, protocol: TCP}]\nresolution: STATIC\nendpoints: [{address: 198.18.0.1}]"),
    );
    let mut kept = vec!["tcp:198.18.0.1:8080"];
    if let Some((yaml, probes)) = &standing {
        env.write_se("far.yaml", yaml);
        kept.extend(probes);
    }
    let _d = env.start_daemon(&[]);
    let added = [
        "tcp:198.18.1.7:9090",
        "tcp:[fd00:1::5]:9090",
        "tcp:[::ffff:198.18.1.7]:9090",
    ];
    env.wait_probe(kept[0], "ok", WAIT);
    let p = env.probe_in_cgroup(&kept);
    for k in &kept {
        assert_eq!(p.result(k), "ok", "{k}");
    }
    let p = env.probe_in_cgroup(&added);
    for a in added {
        assert_eq!(p.result(a), "EPERM", "{a} before its rule");
    }
    let during = env.probe_loop(&kept);
    env.write_se(
        "cidr.yaml",
        &se("range", "hosts: [range.ee.test]\naddresses: [198.18.1.0/24, \"fd00:1::/64\"]\nports: [{number: 9090, name: http, protocol: TCP}]\nresolution: NONE"),
    );
    for a in added {
        env.wait_probe(a, "ok", WAIT);
    }
    env.remove_se("cidr.yaml");
    for a in added {
        env.wait_probe(a, "EPERM", WAIT);
    }
    let want: Vec<(&str, &str)> = kept.iter().map(|k| (*k, "ok")).collect();
    during.finish_steady(&want, "while a CIDR rule was added and removed");
}

#[test]
fn a_registered_rule_survives_100_reloads_without_a_gap() {
    let (env, dns) = env_with_dns("dns-reloads", "enforce", "");
    dns.set(&[
        ("api.ee.test", "198.18.0.1"),
        ("other.ee.test", "198.18.0.3"),
    ]);
    env.write_se("api.yaml", &se("api", API));
    let mut d = env.start_daemon(&[]);
    env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    let probe = env.probe_loop(&["tcp:198.18.0.1:8080", "tcp:198.18.0.2:8080"]);
    let other = se("other", &API.replace("api.ee.test", "other.ee.test"));
    let reloads = |d: &e2e::Daemon| {
        d.records()
            .iter()
            .filter(|r| r["message"] == "reloaded")
            .count()
    };
    for i in 0..100 {
        let before = reloads(&d);
        // Alternate: add another entry, remove it; also re-write the stable one.
        if i % 2 == 0 {
            env.write_se("other.yaml", &other);
        } else {
            env.remove_se("other.yaml");
        }
        env.write_se("api.yaml", &se("api", API));
        d.wait_for(&format!("reload {i}"), WAIT, |r| {
            r.iter().filter(|r| r["message"] == "reloaded").count() > before
        });
    }
    let results = probe.finish();
    let (_, allowed) = results
        .iter()
        .find(|(o, _)| o == "tcp:198.18.0.1:8080")
        .expect("tally");
    let (_, denied) = results
        .iter()
        .find(|(o, _)| o == "tcp:198.18.0.2:8080")
        .expect("tally");
    assert!(
        allowed.starts_with("ok=") && !allowed.contains(','),
        "allowed across 100 reloads: {allowed}"
    );
    assert!(
        denied.starts_with("EPERM=") && !denied.contains(','),
        "denied across 100 reloads: {denied}"
    );
    assert!(reloads(&d) >= 100);
}

#[test]
fn once_applies_and_exits_leaving_the_policy_pinned() {
    let (env, dns) = env_with_dns("dns-once", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let out = run(env.cmd().args(["run", "--once"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = env.probe_in_cgroup(&["tcp:198.18.0.1:8080", "tcp:198.18.0.3:8080"]);
    assert_eq!(
        p.result("tcp:198.18.0.1:8080"),
        "ok",
        "resolved before exiting"
    );
    assert_eq!(p.result("tcp:198.18.0.3:8080"), "EPERM");
}

#[test]
fn readiness_is_signalled_to_systemd_after_the_first_full_apply() {
    let (env, dns) = env_with_dns("dns-notify", "enforce", "");
    dns.set(&[("api.ee.test", "198.18.0.1")]);
    env.write_se("api.yaml", &se("api", API));
    let sock_path = env.dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut cmd = env.cmd();
    cmd.arg("run").env("NOTIFY_SOCKET", &sock_path);
    let d = e2e::spawn_daemon(cmd);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within the timeout");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Ready means enforced, DNS included.
    let p = env.probe_in_cgroup(&["tcp:198.18.0.1:8080"]);
    assert_eq!(p.result("tcp:198.18.0.1:8080"), "ok");
    drop(d);
}
