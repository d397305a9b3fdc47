//! End to end: one policy per unit on a host (`policies.units`). Each unit cgroup below the
//! enforced one sees the ServiceEntries exported to its namespaces or in its own files; the
//! rest get the default. On the real kernel, with the real daemon.

use std::{
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use e2e::Env;

fn entry(ns: &str, name: &str, addresses: &str, port: u16, export: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.example.com]\n  addresses: [{addresses}]\n  ports: [{{number: {port}, name: p, protocol: TCP}}]\n  resolution: NONE\n{export}---\n"
    )
}

const OPS: &[&str] = &[
    "tcp:198.18.0.1:8080", // web's own (exportTo: ["."] in namespace web)
    "tcp:198.18.0.2:8080", // shared, exported everywhere
    "tcp:198.18.0.3:8080", // in the ops unit's own directory
    "tcp:[fd00::1]:8080",  // web's own, IPv6
    "tcp:198.18.1.7:9090", // web's /16 and ops's /24
    "tcp:198.18.2.7:9090", // web's /16 only
    "tcp:198.18.0.1:7070", // --allow: everyone
];

fn verdicts(env: &Env, cgroup: &str) -> Vec<String> {
    let p = env.probe_in_cgroup_named(cgroup, OPS);
    OPS.iter().map(|op| p.result(op).to_owned()).collect()
}

fn expect(got: &[String], want: &[&str], who: &str) {
    let got: Vec<&str> = got.iter().map(String::as_str).collect();
    assert_eq!(got, want, "{who}: {OPS:?}");
}

struct Units {
    env: Env,
    web: String,
    ops: String,
}

/// A daemon enforcing the env's cgroup, with units `web.service` (namespace web) and
/// `ops.service` (its own directory) below it.
fn setup(test: &str, default: &str) -> Units {
    // Env's own naming: its directory and cgroup are known before it exists.
    let name = format!("ee-{test}-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    let cg = format!("ee-e2e/{name}");
    let (web, ops) = (format!("{cg}/web.service"), format!("{cg}/ops.service"));
    let extra = format!(
        "serviceEntries: [{se}]\npolicies:\n  default: {default}\n  units:\n  - cgroup: {web}\n    namespaces: [web]\n  - cgroup: {ops}\n    serviceEntries: [{own}]\n",
        se = dir.join("se").display(),
        own = dir.join("ops").display(),
    );
    let env = Env::new(test, "enforce", &extra);
    assert_eq!(env.cgroup, cg);
    env.write_se(
        "entries.yaml",
        &(entry(
            "web",
            "site",
            "198.18.0.1, fd00::1",
            8080,
            "  exportTo: [\".\"]\n",
        ) + &entry("shared", "partner", "198.18.0.2", 8080, "")
            + &entry("web", "wide", "198.18.0.0/16", 9090, "  exportTo: [web]\n")),
    );
    std::fs::create_dir_all(env.dir.join("ops")).expect("ops dir");
    std::fs::write(
        env.dir.join("ops/ops.yaml"),
        entry("ops", "metrics", "198.18.0.3", 8080, "")
            + &entry("ops", "narrow", "198.18.1.0/24", 9090, ""),
    )
    .expect("ops entries");
    for c in [&web, &ops] {
        std::fs::create_dir_all(e2e::cgroup2_mount().join(c)).expect("unit cgroup");
    }
    Units { env, web, ops }
}

const WEB: &[&str] = &["ok", "ok", "EPERM", "ok", "ok", "ok", "ok"];
const OPS_UNIT: &[&str] = &["EPERM", "EPERM", "ok", "EPERM", "ok", "EPERM", "ok"];

#[test]
fn each_unit_reaches_what_is_its_own_and_the_rest_get_the_default() {
    let u = setup("units", "deny");
    let d = u.env.start_daemon(&["198.18.0.1:7070/tcp"]);
    expect(&verdicts(&u.env, &u.web), WEB, "web.service");
    // A longer prefix for ops alone must not hide web's /16 (198.18.1.7 is in both).
    expect(&verdicts(&u.env, &u.ops), OPS_UNIT, "ops.service");
    let child = format!("{}/worker", u.web);
    std::fs::create_dir_all(e2e::cgroup2_mount().join(&child)).expect("child cgroup");
    expect(&verdicts(&u.env, &child), WEB, "a cgroup below web.service");
    expect(
        &verdicts(&u.env, &u.env.cgroup),
        &["EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "EPERM", "ok"],
        "outside every unit, default deny: only what is everyone's",
    );
    // `explain` replays the kernel: the ops entry is not for web.service, and says why.
    let out = e2e::run(u.env.cmd().args([
        "explain",
        "198.18.0.3:8080/tcp",
        "--json",
        "--cgroup",
        &u.web,
    ]));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain JSON");
    assert_eq!(e["allowed"], false, "{e:#}");
    assert!(
        e["not_for_caller"][0]["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("unit")),
        "{e:#}"
    );
    let out = e2e::run(u.env.cmd().args([
        "explain",
        "198.18.1.7:9090/tcp",
        "--json",
        "--cgroup",
        &child,
    ]));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).expect("explain JSON");
    assert_eq!(
        e["allowed"], true,
        "a cgroup below the unit, through the /16: {e:#}"
    );
    // The kernel holds one rule per destination, not one per unit.
    let rules = u.env.inspect("rules");
    let n = rules["rules"].as_array().map_or(0, Vec::len);
    assert_eq!(n, 7, "{rules:#}");
    drop(d);
}

#[test]
fn a_unit_restarted_is_mapped_again_at_once_and_a_daemon_restart_keeps_every_verdict() {
    let u = setup("units-restart", "all");
    let d = u.env.start_daemon(&[]);
    let mount = e2e::cgroup2_mount();
    expect(
        &verdicts(&u.env, &u.env.cgroup)[..6],
        &["ok", "ok", "EPERM", "ok", "ok", "ok"],
        "default all: every shared entry whatever its exportTo, not a unit's own files",
    );
    // systemd removes a unit's cgroup when it stops and makes a new one (a new id) when it
    // starts: the new one must get the unit's policy from the inotify report, long before
    // the 10 s rescan.
    std::fs::remove_dir(mount.join(&u.ops)).expect("rmdir unit");
    std::fs::create_dir(mount.join(&u.ops)).expect("mkdir unit");
    let id = std::fs::metadata(mount.join(&u.ops))
        .expect("stat unit")
        .ino();
    let start = Instant::now();
    loop {
        let mapped = u.env.inspect("policies");
        let found = mapped["policies"]["cgroups"]
            .as_array()
            .is_some_and(|c| c.iter().any(|m| m["cgroup_id"] == id));
        if found {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new ops.service cgroup is not mapped after 5 s: {mapped:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("new unit cgroup mapped after {:?}", start.elapsed());
    expect(
        &verdicts(&u.env, &u.ops)[..6],
        &OPS_UNIT[..6],
        "the restarted ops.service",
    );
    // A daemon restart: the pinned maps keep enforcing, and the new daemon keeps every id.
    let ops = ["tcp:198.18.0.1:8080", "tcp:198.18.0.3:8080"];
    let web_loop = u.env.probe_loop_in(&u.web, &ops, true);
    let ops_loop = u.env.probe_loop_in(&u.ops, &ops, false);
    let before = u.env.inspect("policies");
    d.stop(libc::SIGTERM);
    let d = u.env.start_daemon(&[]);
    let after = u.env.inspect("policies");
    assert_eq!(
        before["policies"]["policies"], after["policies"]["policies"],
        "policy ids after a restart"
    );
    web_loop.finish_steady(
        &[
            ("tcp:198.18.0.1:8080", "ok"),
            ("tcp:198.18.0.3:8080", "EPERM"),
        ],
        "across a daemon restart",
    );
    // The second loop connects to the first one's servers, whose backlog it can overflow
    // (a rare ETIMEDOUT): what matters is that no verdict ever changed.
    let tallies = ops_loop.finish();
    let tally = |op: &str| {
        tallies
            .iter()
            .find(|(o, _)| o == op)
            .map_or(String::new(), |(_, t)| t.clone())
    };
    let denied = tally("tcp:198.18.0.1:8080");
    assert!(
        denied.starts_with("EPERM=") && !denied.contains(','),
        "ops to web's: {denied}"
    );
    let allowed = tally("tcp:198.18.0.3:8080");
    assert!(
        allowed.contains("ok=") && !allowed.contains("EPERM"),
        "ops to its own: {allowed}"
    );
    drop(d);
}
