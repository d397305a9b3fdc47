//! End to end: pods scoped as Istio scopes them, on the real kernel. ServiceEntries, Sidecars
//! and pods come from the fake API server; the kubelet's cgroup tree is made by hand with
//! both drivers (systemd and cgroupfs), Guaranteed, Burstable and BestEffort pods, and
//! container cgroups inside; workers run in container cgroups and the test's namespace.

use std::time::{Duration, Instant};

use e2e::{
    Daemon, Env,
    fake_apiserver::{
        FakeApiServer,
        fixtures::{pod, service_entry},
    },
};
use serde_json::{Value, json};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(15);

const OPS: &[&str] = &[
    "tcp:198.18.0.1:8080", // payments/api, exportTo ["."]
    "tcp:198.18.0.2:8080", // shared/partner, exported everywhere
    "tcp:198.18.0.3:8080", // shop/catalog, exportTo [shop, payments]
    "tcp:198.18.0.1:7070", // --allow: everyone's
];

fn entry(addr: &str, export: &[&str]) -> Value {
    json!({
        "hosts": [format!("{}.ee.test", addr.replace('.', "-"))],
        "addresses": [addr],
        "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
        "resolution": "NONE",
        "exportTo": export,
    })
}

fn sidecar(ns: &str, name: &str, selector: Option<Value>, hosts: &[&str]) -> Value {
    let mut spec = json!({"egress": [{"hosts": hosts}]});
    if let Some(s) = selector {
        spec["workloadSelector"] = json!({"labels": s});
    }
    json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// A pod's cgroup as the kubelet names it, with one container inside.
struct PodDir {
    pod: String,
    container: String,
}

fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn systemd_pod(qos: &str, uid: &str, n: u8) -> PodDir {
    let u = uid.replace('-', "_");
    let pod = match qos {
        "" => format!("kubepods.slice/kubepods-pod{u}.slice"),
        q => format!("kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{u}.slice"),
    };
    let container = format!("{pod}/cri-containerd-{}.scope", container_id(n));
    PodDir { pod, container }
}

fn cgroupfs_pod(qos: &str, uid: &str, n: u8) -> PodDir {
    let pod = match qos {
        "" => format!("kubepods/pod{uid}"),
        q => format!("kubepods/{q}/pod{uid}"),
    };
    let container = format!("{pod}/{}", container_id(n));
    PodDir { pod, container }
}

const WEB: &str = "11111111-1111-4111-8111-111111111111";
const BATCH: &str = "22222222-2222-4222-8222-222222222222";
const FRONT: &str = "33333333-3333-4333-8333-333333333333";
const ELSEWHERE: &str = "44444444-4444-4444-8444-444444444444";
const LATE: &str = "55555555-5555-4555-8555-555555555555";
const EARLY: &str = "66666666-6666-4666-8666-666666666666";

struct World {
    env: Env,
    server: FakeApiServer,
    daemon: Option<Daemon>,
    /// The test's cgroup: the kubelet's tree starts here.
    base: String,
}

impl World {
    /// Starts the daemon and waits for `/readyz`: every resource listed, and in force.
    fn start_daemon(&mut self) {
        let mut d = self.env.start_daemon(&["198.18.0.1:7070/tcp"]);
        let http = d.http_addr();
        let start = Instant::now();
        loop {
            let (code, body) = e2e::http_get(http, "/readyz");
            if code == 200 {
                break;
            }
            assert!(
                start.elapsed() < WAIT,
                "/readyz: {code} {body}\n{}",
                d.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(d);
    }

    /// Repeats the probe until `cgroup` gets `want` (a change from the API server is
    /// applied asynchronously).
    fn wait_verdicts(&self, cgroup: &str, want: &[&str], who: &str) {
        let start = Instant::now();
        loop {
            let got = self.verdicts(cgroup);
            if got == want {
                return;
            }
            if start.elapsed() > WAIT {
                self.expect(cgroup, want, who);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn explain(&self, dest: &str, who: &[&str]) -> Value {
        let out = e2e::run(self.env.cmd().args(["explain", dest, "--json"]).args(who));
        assert!(
            out.status.success(),
            "explain {dest} {who:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("explain JSON")
    }

    /// `explain` must say what the kernel does, for every destination of OPS.
    fn explain_agrees(&self, cgroup: &str) {
        let kernel = self.verdicts(cgroup);
        for (op, got) in OPS.iter().zip(kernel) {
            let dest = format!("{}/tcp", op.trim_start_matches("tcp:"));
            let e = self.explain(&dest, &["--cgroup", cgroup]);
            assert_eq!(
                e["allowed"],
                got == "ok",
                "explain {dest} for {cgroup}: {e:#}"
            );
        }
    }

    fn mkdir(&self, dir: &PodDir) {
        let mount = e2e::cgroup2_mount();
        std::fs::create_dir_all(mount.join(&self.base).join(&dir.container)).expect("pod cgroup");
    }

    fn in_container(&self, dir: &PodDir) -> String {
        format!("{}/{}", self.base, dir.container)
    }

    fn verdicts(&self, cgroup: &str) -> Vec<String> {
        let p = self.env.probe_in_cgroup_named(cgroup, OPS);
        OPS.iter().map(|op| p.result(op).to_owned()).collect()
    }

    fn expect(&self, cgroup: &str, want: &[&str], who: &str) {
        let got = self.verdicts(cgroup);
        if got != want {
            let log = self
                .daemon
                .as_ref()
                .map(|d| d.lines().join("\n"))
                .unwrap_or_default();
            panic!(
                "{who} ({cgroup}): {OPS:?} gave {got:?}, want {want:?}\npolicies: {:#}\ndaemon log:\n{log}",
                self.env.inspect("policies")
            );
        }
    }

    /// Waits until the cgroup's id is mapped to some policy (`inspect policies`).
    fn wait_mapped(&self, rel: &str) -> Duration {
        use std::os::unix::fs::MetadataExt as _;
        let path = e2e::cgroup2_mount().join(&self.base).join(rel);
        let id = std::fs::metadata(&path).expect("cgroup").ino();
        let start = Instant::now();
        loop {
            let p = self.env.inspect("policies");
            if p["policies"]["cgroups"]
                .as_array()
                .is_some_and(|c| c.iter().any(|m| m["cgroup_id"] == id))
            {
                return start.elapsed();
            }
            assert!(start.elapsed() < WAIT, "{rel} not mapped: {p:#}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn start(test: &str) -> World {
    let server = FakeApiServer::start(&["v1"]);
    server.apply(
        "serviceentries",
        service_entry("payments", "api", entry("198.18.0.1", &["."])),
    );
    server.apply(
        "serviceentries",
        service_entry("shared", "partner", entry("198.18.0.2", &[])),
    );
    server.apply(
        "serviceentries",
        service_entry(
            "shop",
            "catalog",
            entry("198.18.0.3", &["shop", "payments"]),
        ),
    );
    // Batch pods in payments import their own namespace's hosts only.
    server.apply(
        "sidecars",
        sidecar(
            "payments",
            "batch-only-own",
            Some(json!({"app": "batch"})),
            &["./*"],
        ),
    );
    server.apply(
        "pods",
        pod("payments", "web-0", WEB, NODE, json!({"app": "web"})),
    );
    server.apply(
        "pods",
        pod("payments", "batch-0", BATCH, NODE, json!({"app": "batch"})),
    );
    server.apply(
        "pods",
        pod("shop", "front-0", FRONT, NODE, json!({"app": "front"})),
    );
    // Same namespace and labels, another node: not this daemon's.
    server.apply(
        "pods",
        pod(
            "shop",
            "front-1",
            ELSEWHERE,
            "node-b",
            json!({"app": "front"}),
        ),
    );
    let env = Env::new(test, "enforce", "");
    let base = env.cgroup.clone();
    let kubeconfig = server.kubeconfig(&env.dir);
    let config = std::fs::read_to_string(&env.config).expect("the test config");
    // The kubelet's two trees (one per driver) are what is enforced.
    let config = config.replace(
        &format!("cgroups: [{base}]"),
        &format!("cgroups: [{base}/kubepods.slice, {base}/kubepods]"),
    );
    std::fs::write(
        &env.config,
        format!(
            "{config}serviceEntries: []\nkubernetes: {{apiServer: true, pods: true, nodeName: {NODE}, kubeconfig: {}}}\n",
            kubeconfig.display()
        ),
    )
    .expect("write the config");
    let w = World {
        env,
        server,
        daemon: None,
        base,
    };
    for d in [
        systemd_pod("burstable", WEB, 1),
        cgroupfs_pod("", BATCH, 2),
        systemd_pod("besteffort", FRONT, 3),
        cgroupfs_pod("burstable", ELSEWHERE, 4),
    ] {
        w.mkdir(&d);
    }
    w
}

const WEB_SEES: &[&str] = &["ok", "ok", "ok", "ok"];
const BATCH_SEES: &[&str] = &["ok", "EPERM", "EPERM", "ok"];
const FRONT_SEES: &[&str] = &["EPERM", "ok", "ok", "ok"];
/// shop/front once shop's Sidecar imports its own namespace's hosts only.
const FRONT_OWN: &[&str] = &["EPERM", "EPERM", "ok", "ok"];
const NOTHING: &[&str] = &["EPERM", "EPERM", "EPERM", "ok"];

#[test]
fn pods_see_what_istio_shows_their_namespace_and_sidecar() {
    let mut w = start("pods");
    w.start_daemon();
    w.expect(
        &w.in_container(&systemd_pod("burstable", WEB, 1)),
        WEB_SEES,
        "payments/web (systemd, Burstable)",
    );
    w.expect(
        &w.in_container(&cgroupfs_pod("", BATCH, 2)),
        BATCH_SEES,
        "payments/batch (cgroupfs, Guaranteed, Sidecar ./*)",
    );
    w.expect(
        &w.in_container(&systemd_pod("besteffort", FRONT, 3)),
        FRONT_SEES,
        "shop/front (systemd, BestEffort)",
    );
    w.expect(
        &w.in_container(&cgroupfs_pod("burstable", ELSEWHERE, 4)),
        NOTHING,
        "a pod of another node: default deny",
    );
    w.expect(
        &format!("{}/kubepods.slice", w.base),
        NOTHING,
        "kubepods itself: default deny",
    );

    // Deny events name the pod.
    w.daemon
        .as_mut()
        .expect("daemon")
        .wait_for("a denial naming the pod", WAIT, |r| {
            r.iter().any(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("connection denied"))
                    && l["pod"] == "shop/front-0"
                    && l["dst"] == "198.18.0.1"
            })
        });
    // `explain` replays the kernel's decision, and says why a rule does not apply.
    for d in [
        systemd_pod("burstable", WEB, 1),
        cgroupfs_pod("", BATCH, 2),
        systemd_pod("besteffort", FRONT, 3),
    ] {
        w.explain_agrees(&w.in_container(&d));
    }
    let e = w.explain("198.18.0.1:8080/tcp", &["--pod", "payments/web-0"]);
    assert_eq!(e["allowed"], true, "{e:#}");
    assert!(
        e["rule"]["source"]
            .as_str()
            .is_some_and(|s| s.contains("ServiceEntry payments/api")),
        "{e:#}"
    );
    let e = w.explain("198.18.0.1:8080/tcp", &["--pod", "shop/front-0"]);
    assert_eq!(e["allowed"], false, "{e:#}");
    assert!(
        e["not_for_caller"][0]["why_not"]
            .as_str()
            .is_some_and(|s| s.contains("exportTo")),
        "{e:#}"
    );
    let e = w.explain("198.18.0.2:8080/tcp", &["--pod", "payments/batch-0"]);
    assert!(
        e["not_for_caller"][0]["why_not"]
            .as_str()
            .is_some_and(|s| s.contains("Sidecar payments/batch-only-own")),
        "{e:#}"
    );
    let e = w.explain("198.18.0.1:9999/tcp", &["--pod", "payments/web-0"]);
    assert!(
        e["other_ports"]
            .as_array()
            .is_some_and(|o| o.iter().any(|r| r["rule"] == "198.18.0.1:8080/tcp")),
        "{e:#}"
    );

    // A pod known to the API server before its cgroup exists (the usual order).
    w.server.apply(
        "pods",
        pod("shop", "late-0", LATE, NODE, json!({"app": "front"})),
    );
    // Known to the policy in force (a reload with 4 pods on this node) before the cgroup.
    w.daemon
        .as_mut()
        .expect("daemon")
        .wait_for("the new pod in force", WAIT, |r| {
            r.iter()
                .any(|l| l["message"] == "reloaded" && l["pods"] == 4)
        });
    let late = systemd_pod("burstable", LATE, 5);
    w.mkdir(&late);
    let took = w.wait_mapped(&late.pod);
    eprintln!("a new pod's cgroup mapped {took:?} after it appeared");
    w.expect(&w.in_container(&late), FRONT_SEES, "shop/late (new)");
    // A cgroup before its pod: default deny until the API server says whose it is.
    let early = cgroupfs_pod("besteffort", EARLY, 6);
    w.mkdir(&early);
    w.expect(
        &w.in_container(&early),
        NOTHING,
        "a pod cgroup the API server has not named yet",
    );
    w.server.apply(
        "pods",
        pod("payments", "early-0", EARLY, NODE, json!({"app": "web"})),
    );
    w.wait_mapped(&early.pod);
    w.expect(
        &w.in_container(&early),
        WEB_SEES,
        "payments/early once named",
    );

    // 410 Gone: the relist swaps in what changed meanwhile. web-0's labels now match the
    // batch Sidecar, and a namespace-wide Sidecar narrows shop to its own hosts.
    w.server.expire(|s| {
        s.apply(
            "pods",
            pod("payments", "web-0", WEB, NODE, json!({"app": "batch"})),
        );
        s.apply("sidecars", sidecar("shop", "own-only", None, &["./*"]));
    });
    w.wait_verdicts(
        &w.in_container(&systemd_pod("burstable", WEB, 1)),
        BATCH_SEES,
        "web-0 relabelled, after a relist",
    );
    w.wait_verdicts(
        &w.in_container(&systemd_pod("besteffort", FRONT, 3)),
        FRONT_OWN,
        "shop/front with a namespace-wide Sidecar, after a relist",
    );

    // A Sidecar edited to be invalid keeps its last valid version.
    w.server.apply(
        "sidecars",
        sidecar(
            "payments",
            "batch-only-own",
            Some(json!({"app": "batch"})),
            &["not-a-host-form"],
        ),
    );
    w.daemon
        .as_mut()
        .expect("daemon")
        .wait_for("the refusal", WAIT, |r| {
            r.iter().any(|l| {
                l["object"] == "payments/batch-only-own"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("last valid version stays"))
            })
        });
    w.expect(
        &w.in_container(&cgroupfs_pod("", BATCH, 2)),
        BATCH_SEES,
        "batch after an invalid Sidecar edit",
    );
    // The API server goes away: every pod keeps its policy, and a daemon restart too.
    w.server.stop();
    drop(w.daemon.take());
    // Not ready (the API server is gone), but enforcing what it recorded.
    w.daemon = Some(w.env.start_daemon(&["198.18.0.1:7070/tcp"]));
    w.expect(
        &w.in_container(&cgroupfs_pod("", BATCH, 2)),
        BATCH_SEES,
        "batch, API server gone, daemon restarted",
    );
    w.expect(
        &w.in_container(&systemd_pod("besteffort", FRONT, 3)),
        FRONT_OWN,
        "front, API server gone, daemon restarted",
    );
}
