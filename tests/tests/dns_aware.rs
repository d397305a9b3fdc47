//! End-to-end: DNS-aware mode (`dns.mode: proxy`). Workloads resolve the way real programs
//! do, through a real dnsmasq in a namespace standing for the node; the kernel sends every
//! query to the daemon's proxy, and only registered names' answers are allowed.

use std::time::Duration;

use e2e::{
    dnsworld::{DNS_TIMING, DnsWorld, ROGUE4},
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
    let w = DnsWorld::new("dnsaware-netns", "enforce", DNS_TIMING, "", "");
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
    let w = DnsWorld::new("dnsaware-direct", "enforce", DNS_TIMING, "", "");
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
    let w = DnsWorld::new("dnsaware-host", "enforce", DNS_TIMING, "", "");
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

/// Python in the workload: one raw query by an unconnected `sendto`, then glibc's
/// `getaddrinfo`; prints how each ended and how long it took (ms).
const FAIL_FAST: &str = r#"
import socket, time, sys
q = bytes.fromhex("abcd01000001000000000000") + b"\x03api\x02ee\x04test\x00" + bytes.fromhex("00010001")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.monotonic()
try:
    s.sendto(q, ("198.18.30.53", 53))
    s.settimeout(3)
    s.recvfrom(512)
    print("sendto answered", (time.monotonic() - t) * 1000)
except OSError as e:
    print("sendto", e.errno, (time.monotonic() - t) * 1000)
t = time.monotonic()
try:
    socket.getaddrinfo("api.ee.test", 8080, socket.AF_INET)
    print("getaddrinfo answered", (time.monotonic() - t) * 1000)
except socket.gaierror as e:
    print("getaddrinfo", e.errno, (time.monotonic() - t) * 1000)
"#;

fn fail_fast(w: &DnsWorld) -> Vec<(String, String, f64)> {
    let out = w.workload(&["/usr/bin/python3", "-c", FAIL_FAST]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[1].to_owned(), f[2].parse().expect("ms"))
        })
        .collect()
}

#[test]
fn with_the_daemon_down_queries_fail_fast_and_learned_rules_stay() {
    let w = DnsWorld::new(
        "dnsaware-kill",
        "enforce",
        "minTtl: 1s, maxTtl: 30s, staleGrace: 60s",
        "",
        "",
    );
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    let d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    assert_eq!(w.getent(&ns, "api.ee.test"), ["198.18.0.1"]);
    let answered = fail_fast(&w);
    assert_eq!(answered[0].1, "answered", "{answered:?}");
    assert_eq!(answered[1].1, "answered", "{answered:?}");

    d.stop(libc::SIGKILL);
    // No proxy: the kernel fails every query at the socket at once (EPERM), instead of
    // leaving the resolver to time out.
    let down = fail_fast(&w);
    assert_eq!(down[0].1, libc::EPERM.to_string(), "{down:?}");
    assert_eq!(down[1].0, "getaddrinfo");
    assert_ne!(down[1].1, "answered", "{down:?}");
    for (what, _, ms) in &down {
        assert!(
            *ms < 10.0,
            "{what} took {ms} ms with the daemon down: {down:?}"
        );
    }
    // What was learned stays allowed, and everything else stays denied.
    let r = connects(&w, &ns, &["tcp:198.18.0.1:8080", "tcp:198.18.0.2:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "ok");
    assert_eq!(result(&r, "tcp:198.18.0.2:8080"), "EPERM");

    // Back up: queries are answered again within a second of the start, and the rule
    // learned before the kill is still there (from the record), not revoked early.
    let started = std::time::Instant::now();
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", w.node.name))
        .arg(e2e::enforcer_bin())
        .arg("--config")
        .arg(&w.env.config)
        .arg("run")
        .env("RUST_LOG", "info");
    let mut d = e2e::spawn_daemon(cmd);
    let first_answer = loop {
        let out = w.workload(&["getent", "ahosts", "api.ee.test"]);
        if out.status.success() {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no answer after the restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("first answer {first_answer:?} after the restart began; daemon down: {down:?}");
    assert!(
        first_answer < Duration::from_secs(1),
        "first answer {first_answer:?} after the restart"
    );
    d.wait_for("the learned rule kept", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["message"] == "DNS proxy answering (DNS-aware mode)" && r["kept"].as_u64() == Some(1)
        })
    });
}

fn entry(host: &str, port: u16, resolution: &str) -> String {
    format!(
        "hosts: ['{host}']\nports: [{{number: {port}, name: p, protocol: TLS}}]\nresolution: {resolution}"
    )
}

#[test]
fn wildcards_dynamic_dns_cname_chains_ipv6_and_passthrough() {
    let mut w = DnsWorld::new("dnsaware-names", "enforce", DNS_TIMING, "", "");
    w.upstream.set(&[
        ("a.wild.ee.test", "198.18.0.1"),
        ("wild.ee.test", "198.18.0.3"),
        ("x.y.dyn.ee.test", "198.18.0.2"),
        ("edge.cdnhost.test", "198.18.1.7"),
        ("v6.ee.test", "fd00::1"),
        ("kube-dns.svc.cluster.local", "198.18.2.7"),
    ]);
    w.env.write_se(
        "wild.yaml",
        &se("wild", &entry("*.wild.ee.test", 8080, "NONE")),
    );
    w.env.write_se(
        "dyn.yaml",
        &se("dyn", &entry("*.dyn.ee.test", 8081, "DYNAMIC_DNS")),
    );
    w.env
        .write_se("app.yaml", &se("app", &entry("app.ee.test", 8080, "DNS")));
    w.env
        .write_se("v6.yaml", &se("v6", &entry("v6.ee.test", 8080, "DNS")));
    let _d = w.start_daemon();
    let ns = w.env.netns.name.clone();

    // A wildcard matches names under it at any depth, never its own suffix.
    assert_eq!(w.getent(&ns, "a.wild.ee.test"), ["198.18.0.1"]);
    assert!(w.getent(&ns, "wild.ee.test").is_empty());
    assert!(!w.upstream.was_asked("wild.ee.test"));
    // DYNAMIC_DNS, two labels below the wildcard.
    assert_eq!(w.getent(&ns, "x.y.dyn.ee.test"), ["198.18.0.2"]);
    // A CNAME chain into another domain: the final address gets the entry's ports.
    assert_eq!(w.getent(&ns, "app.ee.test"), ["198.18.1.7"]);
    // A passthrough domain is answered but allows nothing.
    assert_eq!(w.getent(&ns, "kube-dns.svc.cluster.local"), ["198.18.2.7"]);
    let r = connects(
        &w,
        &ns,
        &[
            "tcp:198.18.0.1:8080",
            "tcp:198.18.0.2:8081",
            "tcp:198.18.0.2:8080",
            "tcp:198.18.1.7:8080",
            "tcp:198.18.2.7:8080",
            "tcp:198.18.0.3:8080",
        ],
    );
    for (op, want) in [
        ("tcp:198.18.0.1:8080", "ok"),
        ("tcp:198.18.0.2:8081", "ok"),
        ("tcp:198.18.0.2:8080", "EPERM"),
        ("tcp:198.18.1.7:8080", "ok"),
        ("tcp:198.18.2.7:8080", "EPERM"),
        ("tcp:198.18.0.3:8080", "EPERM"),
    ] {
        assert_eq!(result(&r, op), want, "{op}");
    }

    // IPv6 all the way: the workload asks an IPv6 server, the kernel sends it to the
    // proxy's IPv6 address, glibc accepts the reply as the server's.
    w.set_resolv_conf(&ns, "nameserver fd00:30::53\n");
    assert_eq!(w.getent(&ns, "v6.ee.test"), ["fd00::1"]);
    let r = connects(&w, &ns, &["tcp:[fd00::1]:8080", "tcp:[fd00::2]:8080"]);
    assert_eq!(result(&r, "tcp:[fd00::1]:8080"), "ok");
    assert_eq!(result(&r, "tcp:[fd00::2]:8080"), "EPERM");
}

/// curl by name, against a real HTTP server in the workload's namespace.
const CURL: &str = r#"
import http.server, subprocess, sys, threading
srv = http.server.HTTPServer(("198.18.0.1", 8080), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3", sys.argv[1]], capture_output=True, text=True)
print(r.returncode, r.stdout)
"#;

#[test]
fn curl_by_name_and_audit_mode() {
    let w = DnsWorld::new("dnsaware-audit", "audit", DNS_TIMING, "", "");
    w.upstream.set(&[
        ("api.ee.test", "198.18.0.1"),
        ("other.ee.test", "198.18.0.1"),
    ]);
    w.env.write_se("api.yaml", &se("api", API));
    let mut d = w.start_daemon();
    let curl = |url: &str| {
        let out = w.workload(&["/usr/bin/python3", "-c", CURL, url]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(curl("http://api.ee.test:8080/"), "0 200");
    // Audit: an unregistered name is forwarded and answered, and reported as what enforce
    // mode would refuse.
    assert_eq!(curl("http://other.ee.test:8080/"), "0 200");
    assert!(w.upstream.was_asked("other.ee.test"));
    d.wait_for("the audit report", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("would be refused"))
                && r["name"] == "other.ee.test"
                && r["comm"] == "curl"
        })
    });
}

#[test]
fn learned_rules_are_visible_in_events_inspect_and_metrics() {
    let w = DnsWorld::new(
        "dnsaware-visible",
        "enforce",
        DNS_TIMING,
        "",
        "http: {listen: '127.0.0.1:0'}\n",
    );
    w.upstream.set(&[
        ("api.ee.test", "198.18.0.1"),
        ("wide.ee.test", "198.18.0.2"),
    ]);
    w.env.write_se("api.yaml", &se("api", API));
    let mut d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    assert_eq!(w.getent(&ns, "api.ee.test"), ["198.18.0.1"]);
    assert!(w.getent(&ns, "nope.ee.test").is_empty());

    // A denial on another port of a learned address names the host the workload resolved.
    let r = connects(&w, &ns, &["tcp:198.18.0.1:9090"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:9090"), "EPERM");
    d.wait_for("the denial naming the host", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["target"] == "egress_enforcer::event"
                && r["port"] == 9090
                && r["hosts"] == "api.ee.test"
                && r["nearest"]
                    .as_str()
                    .is_some_and(|n| n.contains("8080/tcp"))
        })
    });

    // inspect: the learned rule with its name, entry and time left.
    let rules = w.env.inspect("rules");
    let learned: Vec<&serde_json::Value> = rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["kind"] == "learned")
        .collect();
    assert_eq!(learned.len(), 1, "{rules}");
    assert_eq!(learned[0]["rule"], "198.18.0.1:8080/tcp");
    assert_eq!(learned[0]["names"], serde_json::json!(["api.ee.test"]));
    assert!(
        learned[0]["source"]
            .as_str()
            .is_some_and(|s| s.contains("ServiceEntry"))
    );
    assert!(
        learned[0]["expires_in_secs"]
            .as_u64()
            .is_some_and(|s| s <= 4)
    );

    // /metrics: queries by verdict, latency histogram, learned rules.
    let body = w.http_get(d.http_addr(), "/metrics");
    let m = |s: &str| e2e::metric(&body, s).unwrap_or_else(|| panic!("no {s} in\n{body}"));
    assert!(m(r#"egress_enforcer_dns_proxy_queries_total{verdict="allowed"}"#) >= 2.0);
    assert!(m(r#"egress_enforcer_dns_proxy_queries_total{verdict="refused"}"#) >= 2.0);
    assert_eq!(
        m(r#"egress_enforcer_dns_proxy_queries_total{verdict="servfail"}"#),
        0.0
    );
    assert!(m("egress_enforcer_dns_proxy_latency_seconds_count") >= 4.0);
    assert_eq!(m("egress_enforcer_dns_learned_rules"), 1.0);
}

#[test]
fn an_answer_that_cannot_be_allowed_is_servfail() {
    // Room for one learned rule: an answer with two addresses cannot be allowed whole.
    let w = DnsWorld::new(
        "dnsaware-full",
        "enforce",
        DNS_TIMING,
        "",
        "maps: {learnedRules: 1}\n",
    );
    w.upstream
        .set(&[("api.ee.test", "198.18.0.1"), ("api.ee.test", "198.18.0.2")]);
    w.env.write_se("api.yaml", &se("api", API));
    let mut d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    let out = w.workload(&["dig", "+tries=1", "@198.18.30.53", "api.ee.test", "A"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: SERVFAIL"), "{text}");
    let r = connects(&w, &ns, &["tcp:198.18.0.1:8080", "tcp:198.18.0.2:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "EPERM");
    assert_eq!(result(&r, "tcp:198.18.0.2:8080"), "EPERM");
    d.wait_for("the commit failure", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not be allowed"))
        })
    });
}

/// A v4-mapped query from an IPv6 socket (unconnected `sendto`), printing the reply's source.
const MAPPED: &str = r#"
import socket
q = bytes.fromhex("abcd01000001000000000000") + b"\x03api\x02ee\x04test\x00" + bytes.fromhex("00010001")
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, ("::ffff:198.18.30.53", 53))
data, peer = s.recvfrom(512)
print(peer[0], peer[1], len(data))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(("198.18.30.53", 53))
print("peer", *c.getpeername())
"#;

#[test]
fn exempt_cgroups_reach_their_servers_and_v4_mapped_queries_are_redirected() {
    let cgroup = format!("ee-e2e/ee-dnsaware-exempt-{}", std::process::id());
    let w = DnsWorld::new(
        "dnsaware-exempt",
        "enforce",
        DNS_TIMING,
        &format!(", exemptCgroups: ['{cgroup}/dns']"),
        "",
    );
    assert_eq!(w.env.cgroup, cgroup);
    std::fs::create_dir_all(w.env.cgroup_path.join("dns")).expect("exempt cgroup");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    let _d = w.start_daemon();
    let ns = w.env.netns.name.clone();

    // A DNS server running as a workload (here: its client) in the exempt cgroup talks to
    // its own upstream directly.
    let out = e2e::run(
        w.env
            .cmd()
            .args(["exec", "--cgroup", &format!("{cgroup}/dns"), "--"])
            .args(["ip", "netns", "exec", &ns, "dig", "+tries=1", "+time=2"])
            .args(["@198.18.31.53", "cluster-upstream.secret.test"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        w.rogue.was_asked("cluster-upstream.secret.test"),
        "{}",
        w.rogue.log_text()
    );
    // Its sibling, not exempt, is redirected.
    let out = w.workload(&[
        "dig",
        "+tries=1",
        "+time=2",
        "@198.18.31.53",
        "other.secret.test",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: NXDOMAIN"));
    assert!(!w.rogue.was_asked("other.secret.test"));

    // A v4-mapped destination on an IPv6 socket goes to the proxy too, and the reply shows
    // the server asked.
    let out = w.workload(&["/usr/bin/python3", "-c", MAPPED]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("::ffff:198.18.30.53 53 "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // getpeername on a redirected socket shows the server too.
    assert!(text.contains("peer 198.18.30.53 53"), "{text}");
    let r = connects(&w, &ns, &["tcp:198.18.0.1:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "ok");
}

#[test]
fn with_socket_activation_no_query_is_lost_across_a_restart() {
    let w = DnsWorld::new("dnsaware-sockact", "enforce", DNS_TIMING, "", "");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    // What a .socket unit holds: the sockets outlive every daemon process.
    let held = w.proxy_sockets();
    let fds: Vec<i32> = held.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let mut d = w.start_daemon_with_sockets(&fds);
    d.wait_for(
        "the sockets taken from systemd",
        Duration::from_secs(5),
        |r| {
            r.iter()
                .filter(|r| r["message"] == "DNS proxy: socket from systemd")
                .count()
                == 4
        },
    );
    let ns = w.env.netns.name.clone();
    assert_eq!(w.getent(&ns, "api.ee.test"), ["198.18.0.1"]);

    d.stop(libc::SIGKILL);
    // A query sent while no daemon runs waits in the socket...
    let (w_ns, cfg, cgroup) = (ns.clone(), w.env.config.clone(), w.env.cgroup.clone());
    let asked = std::time::Instant::now();
    let query = std::thread::spawn(move || {
        let out = e2e::run(
            std::process::Command::new(e2e::enforcer_bin())
                .arg("--config")
                .arg(&cfg)
                .args([
                    "exec", "--cgroup", &cgroup, "--", "ip", "netns", "exec", &w_ns,
                ])
                .args([
                    "dig",
                    "+tries=1",
                    "+time=8",
                    "+short",
                    "@198.18.30.53",
                    "api.ee.test",
                ]),
        );
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            asked.elapsed(),
        )
    });
    let start = std::time::Instant::now();
    while w.proxy_udp_queue() == 0 {
        if start.elapsed() > Duration::from_secs(5) {
            let (answer, took) = query.join().expect("query thread");
            panic!("the query never reached the held socket: {answer:?} after {took:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...and is answered by the next daemon.
    let _d = w.start_daemon_with_sockets(&fds);
    let (answer, took) = query.join().expect("query thread");
    assert_eq!(answer, "198.18.0.1", "the query sent during the restart");
    eprintln!("a query sent while the daemon was down was answered after {took:?}");
    drop(held);
}

#[test]
fn answers_that_never_repeat_are_all_reachable() {
    // The issue this mode exists for: a CDN-like server gives every query a fresh address
    // (TTL 0 or 1); resolve mode allows the daemon's own answers, so almost every connect of
    // the workload failed. Here every one must succeed.
    let mut w = DnsWorld::new("dnsaware-rotor", "enforce", DNS_TIMING, "", "");
    let _rotor = w.rotating_cdn(&e2e::probe_bin().with_file_name("ee-dns-rotor"));
    let _d = w.start_daemon();
    let out = w.resolve_connect(&e2e::probe_bin().with_file_name("ee-dns-load"), 300);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["ok"], 300, "{r}");
}

/// One raw query for `name` by an unconnected `sendto` to `server`; prints the reply's rcode.
const SENDTO: &str = r#"
import socket, sys
labels = b"".join(bytes([len(l)]) + l.encode() for l in sys.argv[2].split("."))
q = bytes.fromhex("beef01000001000000000000") + labels + b"\x00" + bytes.fromhex("00010001")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(q, (sys.argv[1], 53))
data, peer = s.recvfrom(512)
print(peer[0], "rcode", data[3] & 15)
"#;

#[test]
fn configured_upstreams_and_refused_for_unregistered_names() {
    let w = DnsWorld::new(
        "dnsaware-upstreams",
        "enforce",
        DNS_TIMING,
        ", upstreams: ['198.18.31.53'], unregistered: refused",
        "",
    );
    // The configured upstream (the "rogue" server here) and the server the workload asks
    // disagree: the configured one decides.
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.rogue.set(&[("api.ee.test", "198.18.0.2")]);
    w.env.write_se("api.yaml", &se("api", API));
    let _d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    assert_eq!(w.getent(&ns, "api.ee.test"), ["198.18.0.2"]);
    assert!(w.rogue.was_asked("api.ee.test"));
    assert!(!w.upstream.was_asked("api.ee.test"));
    let r = connects(&w, &ns, &["tcp:198.18.0.2:8080", "tcp:198.18.0.1:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.2:8080"), "ok");
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "EPERM");
    // An unregistered name, by a raw sendto to any address: REFUSED from the proxy, shown as
    // coming from the address asked, and nobody upstream hears of it.
    let out = w.workload(&[
        "/usr/bin/python3",
        "-c",
        SENDTO,
        "198.18.30.53",
        "leak.secret.test",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        "198.18.30.53 rcode 5",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!w.rogue.was_asked("leak.secret.test") && !w.upstream.was_asked("leak.secret.test"));
}

#[test]
fn a_workload_cannot_choose_the_server_whose_answers_are_allowed() {
    // The rogue resolver is not in allow.dnsServers: a registered name asked there is
    // forwarded to the trusted resolver instead, so the rogue's answer (198.18.0.2) allows
    // nothing and never reaches the workload.
    let w = DnsWorld::new("dnsaware-untrusted", "enforce", DNS_TIMING, "", "");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.rogue.set(&[("api.ee.test", "198.18.0.2")]);
    w.env.write_se("api.yaml", &se("api", API));
    let _d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    let out = w.workload(&["dig", "+short", "+tries=1", "@198.18.31.53", "api.ee.test"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "198.18.0.1");
    assert!(!w.rogue.was_asked("api.ee.test"), "{}", w.rogue.log_text());
    let r = connects(&w, &ns, &["tcp:198.18.0.2:8080", "tcp:198.18.0.1:8080"]);
    assert_eq!(result(&r, "tcp:198.18.0.2:8080"), "EPERM");
    assert_eq!(result(&r, "tcp:198.18.0.1:8080"), "ok");
}

/// In another namespace, something listens on the loopback port of the proxy (as istio-agent
/// does on 127.0.0.1:15053); the query must fail at once, not reach it.
const IMPOSTOR: &str = r#"
import socket
impostor = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
impostor.bind(("127.0.0.1", 15053))
impostor.settimeout(0.5)
q = bytes.fromhex("abcd01000001000000000000") + b"\x03api\x02ee\x04test\x00" + bytes.fromhex("00010001")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(q, ("198.18.30.53", 53))
    print("sent")
except OSError as e:
    print("errno", e.errno)
try:
    impostor.recvfrom(512)
    print("impostor got it")
except socket.timeout:
    print("impostor got nothing")
"#;

#[test]
fn a_loopback_proxy_is_never_asked_from_another_namespace() {
    let mut w = DnsWorld::new("dnsaware-loopback", "enforce", DNS_TIMING, "", "");
    let cfg = std::fs::read_to_string(&w.env.config).expect("config");
    let cfg = cfg.replace(
        "address: 198.18.20.53, address6: 'fd00:20::53'",
        "address: 127.0.0.1, address6: ''",
    );
    assert!(cfg.contains("address: 127.0.0.1"), "{cfg}");
    std::fs::write(&w.env.config, cfg).expect("config");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    let mut d = w.start_daemon();
    let out = w.workload(&["/usr/bin/python3", "-c", IMPOSTOR]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            format!("errno {}", libc::EPERM).as_str(),
            "impostor got nothing"
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_for("the denial of port 53", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["target"] == "egress_enforcer::event" && r["port"] == 53 && r["verdict"] == "deny"
        })
    });
    // In the daemon's own namespace the same proxy address works.
    let node = w.node.name.clone();
    w.set_resolv_conf(&node, "nameserver 198.18.30.53\n");
    assert_eq!(w.getent(&node, "api.ee.test"), ["198.18.0.1"]);
}

/// Asks for `api.ee.test` on one socket, makes and uses (twice, as the LRU keeps what is used)
/// enough other sockets to push it out of the kernel's record of sockets made inside the
/// cgroup, then asks again on the same socket.
const EVICTED_ASKS: &str = r#"
import socket, struct, sys
def ask(s):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in "api.ee.test".split(".")) + b"\0"
    s.sendto(q + struct.pack(">HH", 1, 1), (sys.argv[1], 53))
    s.settimeout(3)
    a, _ = s.recvfrom(2048)
    return struct.unpack(">H", a[6:8])[0]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("first", ask(s))
for _ in range(6):
    others = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(400)]
    for _ in range(2):
        for o in others:
            o.sendto(b"x", ("127.0.0.1", 9))
    for o in others:
        o.close()
print("again", ask(s))
"#;

/// A socket that has fallen out of the kernel's record of sockets made in enforced cgroups
/// (an LRU of `maps.nativeSockets`) is decided again by the programs on the cgroup root. Its
/// query, already sent to the proxy by its cgroup's program, must still be answered.
#[test]
fn a_socket_forgotten_as_native_still_gets_its_answers() {
    let w = DnsWorld::new(
        "dnsaware-evicted",
        "enforce",
        DNS_TIMING,
        "",
        "maps: {nativeSockets: 64}\n",
    );
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se("api.yaml", &se("api", API));
    let _d = w.start_daemon();
    let out = w.workload(&["python3", "-c", EVICTED_ASKS, ROGUE4]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["first 1", "again 1"],
        "answers"
    );
    // The second query really was decided on the root (the socket had left the record).
    let c = w.env.counters();
    assert!(
        c.keys().any(|(h, _, _)| h == "foreign_sendmsg4"),
        "no send was decided on the cgroup root: {c:?}"
    );
    let root_denials: u64 = c
        .iter()
        .filter(|((h, _, v), _)| h.starts_with("foreign_") && v == "deny")
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(root_denials, 0, "{c:?}");
}

/// A ServiceEntry for `host` in namespace `ns`, exported to its own namespace only when
/// `own` (else everywhere).
fn scoped_entry(ns: &str, host: &str, own: bool) -> String {
    let export = if own { "\n  exportTo: [\".\"]" } else { "" };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  resolution: DNS{export}\n",
        host.replace('.', "-")
    )
}

#[test]
fn each_unit_may_use_only_the_answers_for_its_own_names() {
    let test = "dnsaware-units";
    let cg = format!("ee-e2e/ee-{test}-{}", std::process::id());
    let (web, ops) = (format!("{cg}/web.service"), format!("{cg}/ops.service"));
    let extra = format!(
        "policies:\n  default: deny\n  units:\n  - {{cgroup: {web}, namespaces: [web]}}\n  - {{cgroup: {ops}, namespaces: [ops]}}\n"
    );
    let w = DnsWorld::new(test, "enforce", DNS_TIMING, "", &extra);
    for c in [&web, &ops] {
        std::fs::create_dir_all(e2e::cgroup2_mount().join(c)).expect("unit cgroup");
    }
    // site is web's, api is ops's, and both shares site's address and is everyone's.
    w.upstream.set(&[
        ("site.ee.test", "198.18.0.1"),
        ("api.ee.test", "198.18.0.2"),
        ("both.ee.test", "198.18.0.1"),
    ]);
    w.env.write_se(
        "entries.yaml",
        &(scoped_entry("web", "site.ee.test", true)
            + "---\n"
            + &scoped_entry("ops", "api.ee.test", true)
            + "---\n"
            + &scoped_entry("shared", "both.ee.test", false)),
    );
    let _d = w.start_daemon();
    let ns = w.env.netns.name.clone();
    let resolve = |cgroup: &str, name: &str| {
        let out = w.run_in_cgroup(cgroup, &ns, &["getent", "ahostsv4", name]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let connect = |cgroup: &str, op: &str| {
        let probe = probe_bin();
        let out = w.run_in_cgroup(
            cgroup,
            &ns,
            &[probe.to_str().expect("utf-8"), "--serve", op],
        );
        assert!(
            out.status.success(),
            "probe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        result(
            &parse_probe(&String::from_utf8_lossy(&out.stdout)).results,
            op,
        )
    };
    assert!(resolve(&web, "site.ee.test").contains("198.18.0.1"));
    assert_eq!(connect(&web, "tcp:198.18.0.1:8080"), "ok", "web's own name");
    assert_eq!(
        connect(&ops, "tcp:198.18.0.1:8080"),
        "EPERM",
        "the rule web's answer made is web's only"
    );
    // ops resolves its own name, and a name everyone may use that shares site's address.
    assert!(resolve(&ops, "api.ee.test").contains("198.18.0.2"));
    assert_eq!(connect(&ops, "tcp:198.18.0.2:8080"), "ok");
    assert_eq!(connect(&web, "tcp:198.18.0.2:8080"), "EPERM", "ops's name");
    assert!(resolve(&ops, "both.ee.test").contains("198.18.0.1"));
    assert_eq!(
        connect(&ops, "tcp:198.18.0.1:8080"),
        "ok",
        "through both.ee.test"
    );
    assert_eq!(connect(&web, "tcp:198.18.0.1:8080"), "ok", "still web's");
    // Outside both units (default deny): none of the learned rules.
    assert_eq!(connect(&w.env.cgroup, "tcp:198.18.0.1:8080"), "EPERM");
    let rules = w.env.inspect("rules");
    let learned: Vec<&serde_json::Value> = rules["rules"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["kind"] == "learned").collect())
        .unwrap_or_default();
    assert!(
        learned
            .iter()
            .all(|r| r["policies"].as_array().is_some_and(|p| !p.is_empty())),
        "every learned rule names its policies: {rules:#}"
    );
}
