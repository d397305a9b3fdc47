//! End-to-end: the health and metrics endpoint of a real daemon, checked against traffic the
//! test made.

use std::time::Duration;

use e2e::{Env, http_get, metric, run};

const ALLOWED: &str = "tcp:198.18.0.1:8080";
const DENIED: &str = "tcp:198.18.0.3:8080";

fn verdict(body: &str, verdict: &str) -> Option<f64> {
    metric(
        body,
        &format!(
            r#"egress_enforcer_verdicts_total{{hook="connect4",proto="tcp",verdict="{verdict}"}}"#
        ),
    )
}

#[test]
fn health_readiness_and_metrics_match_what_happened() {
    let env = Env::new("http", "enforce", "");
    let mut d = env.start_daemon(&["198.18.0.1:8080/tcp", "198.18.2.0/24:*/udp"]);
    let addr = d.http_addr();
    assert!(addr.ip().is_loopback(), "{addr}");
    d.wait_for("the first full apply", Duration::from_secs(10), |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz").0, 200);
    assert_eq!(http_get(addr, "/nope").0, 404);

    let (_, before) = http_get(addr, "/metrics");
    assert_eq!(verdict(&before, "allow"), Some(0.0), "{before}");
    assert_eq!(verdict(&before, "deny"), Some(0.0));
    assert_eq!(
        metric(&before, r#"egress_enforcer_rules{kind="exact"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&before, r#"egress_enforcer_rules{kind="prefix"}"#),
        Some(1.0)
    );
    assert_eq!(metric(&before, "egress_enforcer_ready"), Some(1.0));
    assert!(metric(&before, "egress_enforcer_last_apply_age_seconds").is_some());

    // Two allowed connects and three denied ones, all TCP over connect4.
    let p = env.probe_in_cgroup(&[ALLOWED, DENIED, ALLOWED, DENIED, DENIED]);
    assert_eq!(p.result(ALLOWED), "ok");
    assert_eq!(p.result(DENIED), "EPERM");
    let (status, after) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(verdict(&after, "allow"), Some(2.0), "{after}");
    assert_eq!(verdict(&after, "deny"), Some(3.0));
    assert_eq!(
        metric(&after, "egress_enforcer_events_dropped_total"),
        Some(0.0)
    );

    // A good reload and a rejected one are both counted.
    let reloads = |b: &str| metric(b, "egress_enforcer_reloads_total").unwrap_or(-1.0);
    let failures = |b: &str| metric(b, "egress_enforcer_reload_failures_total").unwrap_or(-1.0);
    assert_eq!((reloads(&after), failures(&after)), (0.0, 0.0));
    d.signal(libc::SIGHUP);
    d.wait_for("the reload", Duration::from_secs(10), |r| {
        r.iter().any(|r| r["message"] == "reloaded")
    });
    let good = std::fs::read_to_string(&env.config).expect("config");
    std::fs::write(&env.config, "mode: [broken\n").expect("config");
    d.wait_for("the rejected reload", Duration::from_secs(10), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("reload failed"))
        })
    });
    let (_, body) = http_get(addr, "/metrics");
    assert!(reloads(&body) >= 1.0, "{body}");
    assert!(failures(&body) >= 1.0, "{body}");
    std::fs::write(&env.config, good).expect("config");

    // Enforcement removed under the running daemon: health says so at its next check (the
    // endpoint answers from the last check, made every second).
    let out = run(env.cmd().args(["uninstall", "--force"]));
    assert!(out.status.success());
    let start = std::time::Instant::now();
    loop {
        let (status, why) = http_get(addr, "/healthz");
        if status == 503 {
            assert!(why.contains("attached"), "{why}");
            break;
        }
        assert_eq!(status, 200, "{why}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "/healthz still 200 after the links were removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_taken_port_is_a_clear_start_up_error() {
    let env = Env::new("httpbusy", "enforce", "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = run(env.cmd().args(["run", "--listen", &addr.to_string()]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains(&addr.to_string()),
        "{err}"
    );
}

/// The first full apply fails (the DNS answers need more rules than the map holds): the
/// daemon stays not ready and says why, retries, and is ready once the apply succeeds.
#[test]
fn not_ready_until_the_first_full_apply_succeeds() {
    let (env, dns) = e2e::env_with_dns("unready", "enforce", "maps: {exactRules: 3}\n", "2s");
    let many = ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.1.7"];
    dns.set(&many.map(|ip| ("api.ee.test", ip)));
    env.write_se(
        "api.yaml",
        &e2e::service_entry(
            "api",
            "hosts: [api.ee.test]\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: DNS",
        ),
    );
    let mut d = env.start_daemon(&[]);
    let addr = d.http_addr();
    d.wait_for("the failed first apply", Duration::from_secs(20), |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("applying the policy failed"))
        })
    });
    let (status, why) = http_get(addr, "/readyz");
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("do not fit") && why.contains("maps.exactRules"),
        "{why}"
    );
    let (_, body) = http_get(addr, "/metrics");
    assert_eq!(metric(&body, "egress_enforcer_ready"), Some(0.0), "{body}");
    assert!(metric(&body, "egress_enforcer_apply_failures_total").is_some_and(|n| n >= 1.0));
    assert!(
        !d.records()
            .iter()
            .any(|r| r["message"] == "first full apply done"),
        "must not claim the first full apply"
    );

    dns.set(&[("api.ee.test", "198.18.0.1")]);
    d.wait_for("the retried first apply", Duration::from_secs(20), |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    assert_eq!(http_get(addr, "/readyz").0, 200);
    let p = env.probe_in_cgroup(&[ALLOWED, DENIED]);
    assert_eq!((p.result(ALLOWED), p.result(DENIED)), ("ok", "EPERM"));
}
