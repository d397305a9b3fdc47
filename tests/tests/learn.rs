//! End-to-end: learn mode. A workload runs in audit mode and reaches destinations by name
//! (resolved by a real dnsmasq through the DNS proxy) and by address, over TCP and UDP;
//! `suggest` writes ServiceEntries from what the daemon observed; the daemon restarts in
//! enforce mode with them, and the same workload runs again with no denial, while a
//! destination it never used before is refused.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use e2e::{
    dnsworld::{DNS_TIMING, DnsWorld},
    metric, run, service_entry as se,
};

/// The workload: for each `KIND/HOST/PORT`, resolve HOST (a name goes through the system
/// resolver, hence the proxy), serve it locally, then TCP connect or UDP sendto it.
const WORKLOAD: &str = r#"
import errno, socket, sys
for op in sys.argv[1:]:
    kind, host, port = op.split("/")
    typ = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    try:
        fam, _, _, _, sa = socket.getaddrinfo(host, int(port), 0, typ)[0]
    except socket.gaierror as e:
        print(op, "no-address"); continue
    srv = socket.socket(fam, typ)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(sa)
    if kind == "tcp": srv.listen()
    c = socket.socket(fam, typ)
    c.settimeout(3)
    try:
        c.connect(sa) if kind == "tcp" else c.sendto(b"x", sa)
        print(op, "ok")
    except OSError as e:
        print(op, errno.errorcode.get(e.errno, str(e.errno)))
"#;

const USED: &[&str] = &[
    "tcp/api.ee.test/8443",
    "udp/metrics.ee.test/8125",
    "tcp/dual.ee.test/5300",
    "udp/dual.ee.test/5300",
    "tcp/198.18.1.7/9000",
    "udp/fd00::1/9001",
];

fn workload(w: &DnsWorld, ops: &[&str]) -> Vec<(String, String)> {
    let mut argv = vec!["/usr/bin/python3", "-c", WORKLOAD];
    argv.extend(ops);
    let out = w.workload(&argv);
    assert!(
        out.status.success(),
        "workload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(o, r)| (o.to_owned(), r.to_owned()))
        .collect()
}

fn suggest(w: &DnsWorld, args: &[&str]) -> Output {
    run(w.env.cmd().arg("suggest").args(args))
}

/// The files `suggest --output` wrote, by name.
fn written(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until `suggest` writes exactly `want` (the daemon saves every second).
fn wait_suggested(w: &DnsWorld, dir: &Path, want: &[&str]) {
    let start = Instant::now();
    loop {
        let _ = std::fs::remove_dir_all(dir);
        let out = suggest(w, &["--output", dir.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "suggest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = written(dir);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "suggest wrote {got:?}, want {want:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn set_mode(config: &Path, mode: &str) {
    let text = std::fs::read_to_string(config).expect("config");
    let (_, rest) = text.split_once('\n').expect("a mode line first");
    std::fs::write(config, format!("mode: {mode}\n{rest}")).expect("config");
}

#[test]
fn audit_then_suggest_then_enforce_with_no_denial() {
    let w = DnsWorld::new("learn", "audit", DNS_TIMING, "", "");
    w.upstream.set(&[
        ("api.ee.test", "198.18.0.1"),
        ("metrics.ee.test", "198.18.0.2"),
        ("dual.ee.test", "198.18.0.3"),
    ]);
    let d = w.start_daemon();
    for (op, r) in workload(&w, USED) {
        assert_eq!(r, "ok", "{op} in audit mode");
    }
    let out_dir = w.env.dir.join("suggested");
    let expected = [
        "addr-198-18-1-7.yaml",
        "addr-fd00-0-0-0-0-0-0-1.yaml",
        "api-ee-test.yaml",
        "dual-ee-test-udp.yaml",
        "dual-ee-test.yaml",
        "metrics-ee-test.yaml",
    ];
    wait_suggested(&w, &out_dir, &expected);
    let api = std::fs::read_to_string(out_dir.join("api-ee-test.yaml")).expect("api");
    for want in [
        "- \"api.ee.test\"",
        "number: 8443",
        "protocol: TLS",
        "resolution: DNS",
        "location: MESH_EXTERNAL",
        "to 198.18.0.1",
    ] {
        assert!(api.contains(want), "{want} in:\n{api}");
    }
    let unnamed =
        std::fs::read_to_string(out_dir.join("addr-fd00-0-0-0-0-0-0-1.yaml")).expect("v6");
    assert!(
        unnamed.contains("resolution: NONE")
            && unnamed.contains("- \"fd00::1\"")
            && unnamed.contains("protocol: UDP"),
        "{unnamed}"
    );
    // Never over a file that is there already.
    let again = suggest(&w, &["--output", out_dir.to_str().expect("utf-8")]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists: suggest does not replace files")
    );
    // Valid as Istio would have it, and the same bytes again from the same observations.
    let check = run(w.env.cmd().arg("check").arg(&out_dir));
    assert!(
        check.status.success(),
        "check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    let a = suggest(&w, &[]);
    let b = suggest(&w, &[]);
    assert!(a.status.success() && !a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout, "stable output");

    let http = {
        let mut d = d;
        let addr = d.http_addr();
        let body = w.http_get(addr, "/metrics");
        assert_eq!(
            metric(&body, "egress_enforcer_observations"),
            Some(6.0),
            "{body}"
        );
        assert!(
            metric(&body, "egress_enforcer_observations_recorded_total").is_some_and(|n| n >= 6.0)
        );
        assert_eq!(
            metric(&body, "egress_enforcer_observations_dropped_total"),
            Some(0.0)
        );
        d.stop(libc::SIGTERM);
        addr
    };
    let _ = http;

    // Enforce with exactly what was suggested; the store survives the restart.
    for f in &expected {
        let text = std::fs::read_to_string(out_dir.join(f)).expect("suggested file");
        w.env.write_se(f, &text);
    }
    set_mode(&w.env.config, "enforce");
    let mut d = w.start_daemon();
    let body = w.http_get(d.http_addr(), "/metrics");
    assert_eq!(
        metric(&body, "egress_enforcer_observations"),
        Some(6.0),
        "restored: {body}"
    );
    for (op, r) in workload(&w, USED) {
        assert_eq!(r, "ok", "{op} in enforce mode with the suggested entries");
    }
    let fresh = workload(&w, &["tcp/198.18.2.7/9000", "tcp/api.ee.test/8444"]);
    for (op, r) in &fresh {
        assert_eq!(r, "EPERM", "{op} was never used: denied");
    }
    let denials: u64 = w
        .env
        .counters()
        .iter()
        .filter(|((_, _, v), _)| v == "deny")
        .map(|(_, n)| *n)
        .sum();
    assert_eq!(denials, 2, "only the two new destinations were denied");
    // Enforce mode's denials are observations too: the next suggestion is exactly them.
    // api-ee-test is the name of an entry in force: the new one is api-ee-test-2.
    wait_suggested(
        &w,
        &out_dir,
        &["addr-198-18-2-7.yaml", "api-ee-test-2.yaml"],
    );
    let api = std::fs::read_to_string(out_dir.join("api-ee-test-2.yaml")).expect("api");
    assert!(
        api.contains("number: 8444") && !api.contains("number: 8443"),
        "{api}"
    );
    assert!(api.contains("(1 denied)"), "{api}");
    d.stop(libc::SIGTERM);
}

#[test]
fn a_corrupt_store_is_reported_and_replaced_and_the_policy_holds() {
    let w = DnsWorld::new("learn-corrupt", "enforce", DNS_TIMING, "", "");
    w.upstream.set(&[("api.ee.test", "198.18.0.1")]);
    w.env.write_se(
        "api.yaml",
        &se("api", "hosts: [api.ee.test]\nports: [{number: 8443, name: tcp, protocol: TCP}]\nresolution: DNS"),
    );
    let store: PathBuf = w.env.dir.join("observations.json");
    let good = r#"{"format":"egress-enforcer/observations","version":1,"dropped":0,"observations":[{"cgroup":"/x","addr":"198.18.0.9","port":1,"proto":"tcp","firstSeen":1,"lastSeen":1,"count":1}]}"#;
    let truncated = &good[..good.len() - 40];
    std::fs::write(&store, truncated).expect("store");
    let out = suggest(&w, &[]);
    assert_eq!(out.status.code(), Some(1), "suggest refuses it");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("observations.json") && err.contains("truncated"),
        "{err}"
    );

    let mut d = w.start_daemon();
    d.wait_for("the report", Duration::from_secs(5), |r| {
        r.iter().any(|r| {
            r["message"].as_str().is_some_and(|m| {
                m.contains("observation store is unreadable") && m.contains("truncated")
            })
        })
    });
    let kept = w.env.dir.join("observations.json.corrupt");
    assert_eq!(
        std::fs::read_to_string(&kept).expect("kept aside"),
        truncated
    );
    let body = w.http_get(d.http_addr(), "/metrics");
    assert_eq!(
        metric(
            &body,
            "egress_enforcer_observation_store_errors_total{op=\"load\"}"
        ),
        Some(1.0),
        "{body}"
    );
    // The policy is in force as ever.
    let r = workload(&w, &["tcp/api.ee.test/8443", "tcp/198.18.2.7/9000"]);
    assert_eq!(
        r,
        [
            ("tcp/api.ee.test/8443".to_owned(), "ok".to_owned()),
            ("tcp/198.18.2.7/9000".to_owned(), "EPERM".to_owned())
        ]
    );
    // ...and the new store holds the denial.
    wait_suggested(&w, &w.env.dir.join("suggested"), &["addr-198-18-2-7.yaml"]);
    d.stop(libc::SIGTERM);
}
