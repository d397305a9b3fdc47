//! End-to-end: ServiceEntries from the (fake) Kubernetes API server, enforced by the real
//! daemon on the real kernel, through edits, invalid edits, 410 relists, dropped watches,
//! 403/500 answers, a stopped server and a daemon restart while it is away.

use std::time::{Duration, Instant};

use e2e::{
    Daemon, Env,
    fake_apiserver::{FakeApiServer, fixtures::service_entry},
    http_get, metric,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(15);

fn static_entry(addr: &str) -> Value {
    json!({
        "hosts": ["api.ee.test"],
        "addresses": [addr],
        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC",
        "endpoints": [{"address": addr}],
    })
}

struct World {
    env: Env,
    server: FakeApiServer,
    daemon: Daemon,
    http: std::net::SocketAddr,
}

fn start(test: &str, versions: &[&str], objects: &[(&str, &str, Value)]) -> World {
    let server = FakeApiServer::start(versions);
    for (ns, name, spec) in objects {
        server.apply("serviceentries", service_entry(ns, name, spec.clone()));
    }
    let env = Env::new(test, "enforce", "");
    let kubeconfig = server.kubeconfig(&env.dir);
    let config = std::fs::read_to_string(&env.config).expect("the test config");
    std::fs::write(
        &env.config,
        format!(
            "{config}serviceEntries: []\nkubernetes: {{apiServer: true, kubeconfig: {}}}\n",
            kubeconfig.display()
        ),
    )
    .expect("write the config");
    let mut daemon = env.start_daemon(&[]);
    let http = daemon.http_addr();
    World {
        env,
        server,
        daemon,
        http,
    }
}

impl World {
    fn readyz(&self) -> (u16, String) {
        http_get(self.http, "/readyz")
    }

    fn wait_readyz(&self, want: u16, containing: &str) {
        let start = Instant::now();
        loop {
            let (code, body) = self.readyz();
            if code == want && body.contains(containing) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "/readyz is {code} {body:?}, want {want} with {containing:?}; daemon log:\n{}\nrequests: {:?}",
                self.daemon.lines().join("\n"),
                self.server
                    .requests()
                    .iter()
                    .map(|r| format!("{} {}", r.status, r.uri))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The result of one probe operation in the enforced cgroup.
    fn probe(&self, op: &str) -> String {
        self.env.probe_in_cgroup(&[op]).result(op).to_owned()
    }

    fn metric(&self, series: &str) -> Option<f64> {
        metric(&http_get(self.http, "/metrics").1, series)
    }

    fn cluster(&self) -> Value {
        self.env.inspect("cluster")["cluster"][0].clone()
    }

    /// Waits until `inspect cluster` satisfies `pred` (the daemon has taken an event in).
    fn wait_cluster(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let c = self.cluster();
            if pred(&c) {
                return c;
            }
            assert!(start.elapsed() < WAIT, "waiting for {what}: {c}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn entries_from_the_api_server_are_enforced_and_follow_changes() {
    let w = start(
        "kube-basic",
        &["v1", "v1beta1", "v1alpha3"],
        &[("payments", "api", static_entry("198.18.0.1"))],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    let p = w
        .env
        .probe_in_cgroup(&["tcp:198.18.0.2:8080", "tcp:198.18.0.1:8081"]);
    assert_eq!(p.result("tcp:198.18.0.2:8080"), "EPERM");
    assert_eq!(p.result("tcp:198.18.0.1:8081"), "EPERM");
    w.wait_readyz(200, "ready");
    assert_eq!(
        w.metric("egress_enforcer_kube_synced{resource=\"serviceentries\"}"),
        Some(1.0)
    );
    assert_eq!(
        w.metric("egress_enforcer_kube_sync_age_seconds{resource=\"serviceentries\"}"),
        Some(0.0)
    );
    let c = w.cluster();
    assert_eq!(c["version"], "v1");
    assert_eq!(c["objects"], 1);
    // The rule names the object it comes from.
    let sources = w.env.column("rules", "source");
    assert!(
        sources.iter().any(
            |s| s.contains("ServiceEntry payments/api (apiserver:serviceentries/payments/api)")
        ),
        "{sources:?}"
    );
    // The daemon runs outside the enforced cgroup here: its way to the API server needs no
    // rule, so none opens it to the workloads (inside one, it gets one: unit tests).
    assert!(
        !sources
            .iter()
            .any(|s| s.starts_with("Kubernetes API server")),
        "{sources:?}"
    );

    w.server.apply(
        "serviceentries",
        service_entry("shop", "second", static_entry("198.18.0.2")),
    );
    w.env.wait_probe("tcp:198.18.0.2:8080", "ok", WAIT);
    w.server.delete("serviceentries", "payments", "api");
    w.env.wait_probe("tcp:198.18.0.1:8080", "EPERM", WAIT);
    assert_eq!(
        w.server
            .count_requests("/apis/networking.istio.io/v1/serviceentries?")
            - w.server.count_requests("watch=true"),
        1,
        "one list, then only watches: {:?}",
        w.server.requests()
    );
}

#[test]
fn an_invalid_edit_keeps_the_last_valid_version() {
    let mut w = start(
        "kube-invalid",
        &["v1"],
        &[("payments", "api", static_entry("198.18.0.1"))],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    let mut bad = static_entry("198.18.0.2");
    bad["ports"][0]["number"] = json!(70000);
    let rv = w
        .server
        .apply("serviceentries", service_entry("payments", "api", bad));
    let c = w.wait_cluster("the refusal", |c| {
        c["rejected"].as_array().is_some_and(|r| !r.is_empty())
    });
    let refused = &c["rejected"][0];
    assert_eq!(refused["object"], "payments/api");
    assert_eq!(refused["resource_version"], rv.to_string());
    assert_eq!(refused["older_in_force"], true);
    assert!(
        refused["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("spec.ports[0]")),
        "{refused}"
    );
    // The daemon has seen the bad version: the old one is still what is enforced.
    let p = w
        .env
        .probe_in_cgroup(&["tcp:198.18.0.1:8080", "tcp:198.18.0.2:8080"]);
    assert_eq!(p.result("tcp:198.18.0.1:8080"), "ok");
    assert_eq!(p.result("tcp:198.18.0.2:8080"), "EPERM");
    assert_eq!(
        w.metric("egress_enforcer_kube_rejected_objects{resource=\"serviceentries\"}"),
        Some(1.0)
    );
    w.daemon.wait_for("the refusal in the log", WAIT, |r| {
        r.iter().any(|r| {
            r["level"] == "WARN"
                && r["object"] == "payments/api"
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("last valid version stays"))
        })
    });
    let text = e2e::run(w.env.cmd().args(["inspect", "cluster"]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("refused payments/api") && text.contains("an older version stays in force"),
        "{text}"
    );
    // Fixed: the new version takes over and the refusal is gone.
    w.server.apply(
        "serviceentries",
        service_entry("payments", "api", static_entry("198.18.0.2")),
    );
    w.env.wait_probe("tcp:198.18.0.2:8080", "ok", WAIT);
    w.env.wait_probe("tcp:198.18.0.1:8080", "EPERM", WAIT);
    w.wait_cluster("no refusal", |c| c["rejected"] == json!([]));
}

#[test]
fn a_410_relists_and_a_cut_watch_resumes() {
    let w = start(
        "kube-relist",
        &["v1"],
        &[("payments", "api", static_entry("198.18.0.1"))],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    let lists = |s: &FakeApiServer| {
        s.requests()
            .iter()
            .filter(|r| r.uri.contains("/serviceentries?") && !r.uri.contains("watch=true"))
            .count()
    };
    assert_eq!(lists(&w.server), 1);

    // A cut connection: the watch resumes from its version, without a list.
    w.server.cut_watches();
    w.server.apply(
        "serviceentries",
        service_entry("payments", "second", static_entry("198.18.0.2")),
    );
    w.env.wait_probe("tcp:198.18.0.2:8080", "ok", WAIT);
    assert_eq!(lists(&w.server), 1, "a resumed watch does not list");

    // Changes the watch can no longer replay: 410 in the stream, a new list, and the
    // result swaps in whole (the deleted entry goes, the added one comes).
    w.server.expire(|s| {
        s.delete("serviceentries", "payments", "api");
        s.apply(
            "serviceentries",
            service_entry("payments", "third", static_entry("198.18.0.3")),
        );
    });
    w.env.wait_probe("tcp:198.18.0.3:8080", "ok", WAIT);
    w.env.wait_probe("tcp:198.18.0.1:8080", "EPERM", WAIT);
    assert_eq!(lists(&w.server), 2, "the 410 made the daemon list again");
    assert_eq!(w.probe("tcp:198.18.0.2:8080"), "ok");
}

#[test]
fn the_policy_stays_while_the_api_server_refuses_or_is_gone() {
    let mut w = start(
        "kube-away",
        &["v1"],
        &[("payments", "api", static_entry("198.18.0.1"))],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    w.wait_readyz(200, "ready");
    for (code, says) in [(403, "forbidden"), (500, "Internal error")] {
        w.server.fail("serviceentries", code);
        w.wait_readyz(503, says);
        assert_eq!(
            w.probe("tcp:198.18.0.1:8080"),
            "ok",
            "the policy stays while the API server answers {code}"
        );
        w.server.heal("serviceentries");
        w.wait_readyz(200, "ready");
    }
    w.server.stop();
    w.wait_readyz(503, "out of sync");
    assert_eq!(
        w.probe("tcp:198.18.0.1:8080"),
        "ok",
        "the policy stays while the API server is gone"
    );
    // The age grows while it is away.
    let start = Instant::now();
    while w
        .metric("egress_enforcer_kube_sync_age_seconds{resource=\"serviceentries\"}")
        .unwrap_or_default()
        < 1.0
    {
        assert!(start.elapsed() < WAIT, "the sync age does not grow");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        w.metric("egress_enforcer_kube_watch_errors_total{resource=\"serviceentries\"}")
            .is_some_and(|n| n >= 3.0)
    );
    w.daemon.wait_for("the warning", WAIT, |r| {
        r.iter().any(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("the policy in force stays"))
        })
    });
    // Back, with a change made meanwhile.
    w.server.apply(
        "serviceentries",
        service_entry("payments", "second", static_entry("198.18.0.2")),
    );
    w.server.restart();
    w.env
        .wait_probe("tcp:198.18.0.2:8080", "ok", Duration::from_secs(45));
    w.wait_readyz(200, "ready");
}

#[test]
fn a_restart_while_the_api_server_is_gone_loses_no_rule() {
    let mut w = start(
        "kube-restart",
        &["v1"],
        &[("payments", "api", static_entry("198.18.0.1"))],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    w.server.stop();
    let World {
        env,
        daemon,
        mut server,
        ..
    } = w;
    daemon.stop(libc::SIGTERM);
    let mut daemon = env.start_daemon(&[]);
    daemon.wait_for("the recorded objects", WAIT, |r| {
        r.iter().any(|r| {
            r["message"] == "watching ServiceEntries in the API server" && r["recorded"] == 1
        })
    });
    // Started and enforcing with the API server unreachable: the recorded entry is in force.
    assert_eq!(
        env.probe_in_cgroup(&["tcp:198.18.0.1:8080", "tcp:198.18.0.2:8080"])
            .results,
        [
            ("tcp:198.18.0.1:8080".to_owned(), "ok".to_owned()),
            ("tcp:198.18.0.2:8080".to_owned(), "EPERM".to_owned())
        ]
    );
    let http = daemon.http_addr();
    let (code, body) = http_get(http, "/readyz");
    assert_eq!(code, 503, "{body}");
    // The API server returns without the entry: it goes.
    server.delete("serviceentries", "payments", "api");
    server.restart();
    env.wait_probe("tcp:198.18.0.1:8080", "EPERM", Duration::from_secs(45));
}

#[test]
fn the_oldest_served_version_is_used_when_it_is_the_only_one() {
    let w = start(
        "kube-alpha",
        &["v1alpha3"],
        &[("payments", "api", static_entry("198.18.0.1"))],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    assert_eq!(w.cluster()["version"], "v1alpha3");
    assert!(
        w.server
            .count_requests("/apis/networking.istio.io/v1alpha3/serviceentries?")
            >= 2,
        "listed and watched in v1alpha3: {:?}",
        w.server.requests()
    );
}

/// One object too large for the maps is refused on its own (it cannot make every reload
/// fail and so hold later revocations), and while a reload fails for another reason the
/// API server's latest objects are not in force: `/readyz` says so until they are.
#[test]
fn nothing_holds_the_api_servers_changes_back_unseen() {
    let w = start(
        "kube-held",
        &["v1"],
        &[
            ("payments", "api", static_entry("198.18.0.1")),
            ("shop", "second", static_entry("198.18.0.2")),
        ],
    );
    w.env.wait_probe("tcp:198.18.0.1:8080", "ok", WAIT);
    w.wait_readyz(200, "ready");
    let cidrs: Vec<String> = (0..256).map(|i| format!("10.{i}.0.0/24")).collect();
    let ports: Vec<Value> = (1..=256)
        .map(|p| json!({"number": p, "name": format!("p{p}"), "protocol": "TCP"}))
        .collect();
    w.server.apply(
        "serviceentries",
        service_entry(
            "tenant",
            "big",
            json!({"hosts": ["big.example.com"], "addresses": cidrs, "ports": ports, "resolution": "NONE"}),
        ),
    );
    w.wait_cluster("the refusal of the large object", |c| {
        c["rejected"].as_array().is_some_and(|r| {
            r.iter().any(|x| {
                x["errors"][0]
                    .as_str()
                    .is_some_and(|e| e.contains("rules-per-object"))
            })
        })
    });
    w.server.delete("serviceentries", "payments", "api");
    w.env.wait_probe("tcp:198.18.0.1:8080", "EPERM", WAIT);
    w.wait_readyz(200, "ready");

    // An invalid ServiceEntry file: reloads fail; the next change from the API server waits,
    // and readiness says it does.
    w.env
        .write_se("bad.yaml", &e2e::service_entry("bad", "hosts: []"));
    let good = std::fs::read_to_string(&w.env.config).expect("config");
    let se_dir = w.env.dir.join("se");
    std::fs::write(
        &w.env.config,
        good.replace(
            "serviceEntries: []",
            &format!("serviceEntries: [{}]", se_dir.display()),
        ),
    )
    .expect("point at the files");
    w.server.delete("serviceentries", "shop", "second");
    w.wait_readyz(503, "not in force");
    assert_eq!(
        w.probe("tcp:198.18.0.2:8080"),
        "ok",
        "the policy in force stays while reloads fail"
    );
    w.env.remove_se("bad.yaml");
    w.env.wait_probe("tcp:198.18.0.2:8080", "EPERM", WAIT);
    w.wait_readyz(200, "ready");
}
