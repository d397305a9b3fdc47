//! End-to-end: DNS-aware mode (`dns.mode: proxy`). Workloads resolve the way real programs
//! do, through a real dnsmasq in a namespace standing for the node; the kernel sends every
//! query to the daemon's proxy, and only registered names' answers are allowed.

use std::time::Duration;

use e2e::{
    dnsworld::{DnsWorld, ROGUE4},
    parse_probe, probe_bin, service_entry as se,
};

const API: &str =
    "hosts: [api.ee.test]\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: DNS";

/// The probe (with listeners on the targets) in the workload's namespace, in the cgroup.
fn connects(w: &DnsWorld, ns: &str, ops: &[&str]) -> Vec<(String, String)> {
    let probe = probe_bin();
    let mut argv = vec![probe.to_str().expect("utf-8 path"), "--serve"];
    argv.extend(ops);
    let out = w.run_in(ns, &argv);
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_probe(&String::from_utf8_lossy(&out.stdout)).results
}

fn result(results: &[(String, String)], op: &str) -> String {
    results
        .iter()
        .find(|(o, _)| o == op)
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| panic!("no {op} in {results:?}"))
}

#[test]
fn a_workload_in_its_own_netns_reaches_what_its_answers_said() {
    let w = DnsWorld::new("dnsaware-netns", "enforce", "", "");
    w.upstream.set(&[
        ("api.ee.test", "198.18.0.1"),
        ("other.ee.test", "198.18.0.2"),
    ]);
    w.env.write_se("api.yaml", &se("api", API));
    let mut d = w.start_daemon();
    let ns = w.env.netns.name.clone();

    // Before any answer: nothing is allowed.
    let r = connects(&w, &ns, &["tcp:198.18.0.1:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "EPERM");

    // glibc resolves through the proxy (the reply must look like it came from the server
    // asked, or glibc drops it), and the answer is allowed before glibc sees it.
    assert_eq!(w.getent(&ns, "api.ee.test"), ["198.18.0.1"]);
    let r = connects(
        &w,
        &ns,
        &[
            "tcp:198.18.0.1:8080",
            "tcp:198.18.0.1:9090",
            "tcp:198.18.0.2:8080",
        ],
    );
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "ok");
    assert_eq!(
        result(&r, "tcp:198.18.0.1:9090"),
        "EPERM",
        "only the entry's port"
    );
    assert_eq!(
        result(&r, "tcp:198.18.0.2:8080"),
        "EPERM",
        "not in the answer"
    );
    assert!(w.upstream.was_asked("api.ee.test"));

    // An unregistered name is answered NXDOMAIN by the proxy and never leaves the node.
    assert!(w.getent(&ns, "other.ee.test").is_empty());
    assert!(
        !w.upstream.was_asked("other.ee.test"),
        "{}",
        w.upstream.log_text()
    );
    d.wait_for("the refusal report", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("unregistered name refused"))
                && r["name"] == "other.ee.test"
                && r["comm"] == "getent"
                && r["cgroup"]
                    .as_str()
                    .is_some_and(|c| c.ends_with(&w.env.cgroup))
                && r["pid"].as_u64().is_some_and(|p| p > 0)
        })
    });
}

#[test]
fn queries_to_any_server_go_through_the_proxy() {
    let w = DnsWorld::new("dnsaware-direct", "enforce", "", "");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    let _d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    // dig over UDP and TCP, straight at the rogue resolver: an unregistered name gets
    // NXDOMAIN from the proxy and nothing reaches the rogue server.
    for tcp in [false, true] {
        let mut argv = vec![
            "dig",
            "+tries=1",
            "+time=2",
            "@198.18.31.53",
            "exfil.secret.test",
        ];
        if tcp {
            argv.push("+tcp");
        }
        let out = w.workload(&argv);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("status: NXDOMAIN"), "tcp={tcp}: {text}");
        assert!(
            text.contains(&format!("SERVER: {ROGUE4}#53")),
            "the reply shows the server asked: {text}"
        );
    }
    assert!(
        !w.rogue.was_asked("exfil.secret.test"),
        "{}",
        w.rogue.log_text()
    );
    // A registered name asked over TCP is answered (from the server asked) and allowed.
    let out = w.workload(&["dig", "+tcp", "+short", "@198.18.30.53", "api.ee.test"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "198.18.0.1");
    let r = connects(&w, &ns, &["tcp:198.18.0.1:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "ok");
}

#[test]
fn a_workload_in_the_daemons_netns_uses_the_stub_resolver() {
    let w = DnsWorld::new("dnsaware-host", "enforce", "", "");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    let _d = w.start_daemon();
    let node = w.node.name.clone();
    // resolv.conf says 127.0.0.53 (systemd-resolved's stub): redirected like any server.
    assert_eq!(w.getent(&node, "api.ee.test"), ["198.18.0.1"]);
    let r = connects(&w, &node, &["tcp:198.18.0.1:8080", "tcp:198.18.0.2:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "ok");
    assert_eq!(result(&r, "tcp:198.18.0.2:8080"), "EPERM");
    assert!(w.getent(&node, "nothere.example").is_empty());
    assert!(!w.upstream.was_asked("nothere.example"));
}
