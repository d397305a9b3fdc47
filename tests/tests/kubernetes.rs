//! End-to-end: the DaemonSet's pod, reproduced on this kernel. No cluster runs here, so the
//! pod's environment is built from the manifest's own values: a private mount and cgroup
//! namespace, the host's cgroup2 hierarchy bind-mounted read-only, the host's bpffs, the
//! host's /run/egress-enforcer bind-mounted (hostPath), a read-only root, the ConfigMap laid
//! out the way the kubelet writes it (`..data` symlink swapped on update), and a bounding set
//! of exactly the capabilities the DaemonSet adds (the container runs as root with
//! `drop: [ALL]`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use e2e::{Env, cgroup2_mount, enforcer_bin, http_get, only_capabilities, spawn_daemon};
use serde_yaml_ng::Value;

/// The object of `kind` in the ConfigMap variant, as `kubectl kustomize` renders it (this
/// test reproduces a ConfigMap volume; the API server variant is tested in apiserver.rs).
fn manifest(kind: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/kubernetes/overlays/configmap");
    let out = e2e::run(Command::new("kubectl").arg("kustomize").arg(&dir));
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .find(|v: &Value| v["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the rendered manifests"))
}

/// The capabilities the DaemonSet adds, as setpriv names them.
fn daemonset_caps() -> Vec<String> {
    let ds = manifest("DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let add = c["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add");
    add.iter()
        .map(|v| v.as_str().expect("cap name").to_ascii_lowercase())
        .collect()
}

/// Builds the pod's namespaces and mounts, then execs the daemon with only `caps`.
const POD_PRELUDE: &str = r#"
cg=$1; shift
# volume "cgroup": the host's cgroup2 hierarchy, readOnly: true
mount --bind "$cg" "$cg"
mount -o remount,bind,ro "$cg"
# volume "run": hostPath /run/egress-enforcer (DirectoryOrCreate), shared by pod generations
mkdir -p /run/egress-enforcer
mount --bind /run/egress-enforcer /run/egress-enforcer
# readOnlyRootFilesystem: true
mount -o remount,bind,ro /
exec "$@"
"#;

fn pod_command(caps: &[String], config: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--cgroup", "--propagation", "private", "--"])
        .args(["sh", "-ec", POD_PRELUDE, "pod"])
        .arg(cgroup2_mount())
        .args(only_capabilities(caps))
        .arg(enforcer_bin())
        // The DaemonSet's args, with this test's config file.
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "info");
    c
}

/// What the node provides before the pod starts: the kubepods cgroup exists (the kubelet made
/// it) and the host's bpffs is mounted (systemd did).
fn node(env: &Env) {
    std::fs::create_dir_all(&env.cgroup_path).expect("cgroup");
    env.premount_bpffs();
}

fn se(address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api-{n}\n  \
         namespace: shop\nspec:\n  hosts: [api-{n}.ee.test]\n  location: MESH_EXTERNAL\n  \
         ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  \
         endpoints: [{{address: {address}}}]\n",
        n = address.replace('.', "-")
    )
}

/// A ConfigMap volume as the kubelet writes it: the data in a timestamped directory,
/// `..data` pointing at it, and each key a symlink through `..data`.
struct ConfigMapVolume {
    dir: PathBuf,
    generation: u32,
}

impl ConfigMapVolume {
    fn new(dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).expect("configmap dir");
        Self { dir, generation: 0 }
    }

    /// Publishes a new version atomically, the kubelet's way: new directory, `..data_tmp`
    /// symlink renamed over `..data`, old directory removed.
    fn publish(&mut self, data: &[(&str, String)]) {
        self.generation += 1;
        let version = format!("..2026_11_26_00_00_0{}.000", self.generation);
        let vdir = self.dir.join(&version);
        std::fs::create_dir_all(&vdir).expect("version dir");
        for (key, text) in data {
            std::fs::write(vdir.join(key), text).expect("key file");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ignored = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).expect("..data_tmp");
        let old = std::fs::read_link(self.dir.join("..data")).ok();
        std::fs::rename(&tmp, self.dir.join("..data")).expect("swap ..data");
        for (key, _) in data {
            let link = self.dir.join(key);
            if !link.exists() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).expect("key");
            }
        }
        if let Some(old) = old {
            let _ignored = std::fs::remove_dir_all(self.dir.join(old));
        }
    }
}

/// The ConfigMap's config.yaml, with only what must differ in a test changed: this test's
/// cgroup, pins, ServiceEntry path, enforce mode, a free loopback port, and no host resolver.
fn shipped_config_for(env: &Env, cm_dir: &Path) -> String {
    let cm = manifest("ConfigMap");
    let text = cm["data"]["config.yaml"].as_str().expect("config.yaml key");
    let mut cfg: Value = serde_yaml_ng::from_str(text).expect("config YAML");
    let set = |v: &mut Value, key: &str, value: Value| {
        v.as_mapping_mut()
            .expect("mapping")
            .insert(Value::from(key), value);
    };
    set(&mut cfg, "mode", Value::from("enforce"));
    set(
        &mut cfg,
        "cgroups",
        Value::Sequence(vec![Value::from(env.cgroup.as_str())]),
    );
    set(
        &mut cfg,
        "bpffs",
        Value::from(env.bpffs.display().to_string()),
    );
    set(
        &mut cfg,
        "serviceEntries",
        Value::Sequence(vec![Value::from(
            cm_dir.join("serviceentries.yaml").display().to_string(),
        )]),
    );
    set(&mut cfg["http"], "listen", Value::from("127.0.0.1:0"));
    set(&mut cfg["allow"], "dnsServers", Value::Sequence(Vec::new()));
    serde_yaml_ng::to_string(&cfg).expect("config text")
}

const ALLOWED: &str = "tcp:198.18.0.1:8080";
const DENIED: &str = "tcp:198.18.0.3:8080";

#[test]
fn daemonset_capabilities_suffice_and_each_one_is_needed() {
    let env = Env::new("k8s-caps", "enforce", "");
    node(&env);
    let caps = daemonset_caps();
    assert!(!caps.is_empty());
    // Add the rule through the config file, as the DaemonSet's args carry no --allow.
    let se_file = env.dir.join("se.yaml");
    std::fs::write(&se_file, se("198.18.0.1")).expect("se");
    let mut cfg = std::fs::read_to_string(&env.config).expect("config");
    cfg.push_str(&format!("serviceEntries: [{}]\n", se_file.display()));
    std::fs::write(&env.config, cfg).expect("config");

    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let mut d = spawn_daemon(pod_command(&fewer, &env.config));
        let status = d.wait_exit(Duration::from_secs(20));
        let log = d.lines().join("\n");
        assert!(
            status.is_some_and(|s| !s.success()),
            "the daemon runs without CAP_{}: the DaemonSet's set is not minimal\n{log}",
            missing.to_ascii_uppercase()
        );
        assert!(log.contains("error"), "a failure names its cause:\n{log}");
        // Nothing of a half-started daemon may remain attached.
        let _ignored = e2e::run(env.cmd().args(["uninstall", "--force"]));
    }

    let mut d = spawn_daemon(pod_command(&caps, &env.config));
    d.wait_ready();
    let addr = d.http_addr();
    d.wait_for("the first full apply", Duration::from_secs(20), |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    assert_eq!(http_get(addr, "/readyz").0, 200);
    assert_eq!(http_get(addr, "/healthz").0, 200);
    let p = env.probe_in_cgroup(&[ALLOWED, DENIED]);
    assert_eq!(p.result(ALLOWED), "ok");
    assert_eq!(p.result(DENIED), "EPERM");

    // `kubectl exec … egress-enforcer inspect` runs with the same capabilities: the links'
    // programs are read from their pins, not by id (which would need CAP_SYS_ADMIN).
    let wrapper = only_capabilities(&caps);
    let out = e2e::run(
        Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(enforcer_bin())
            .arg("--config")
            .arg(&env.config)
            .args(["inspect", "links", "--json"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let links = report["links"].as_array().expect("links");
    assert_eq!(links.len(), 7, "{report}");
    for l in links {
        assert!(l["verified_insns"].as_u64().is_some_and(|n| n > 0), "{l}");
        assert!(l["run_count"].is_u64(), "{l}");
    }
}

#[test]
fn pod_replacement_keeps_enforcement_and_configmap_updates_reload() {
    let env = Env::new("k8s-roll", "enforce", "");
    node(&env);
    let caps = daemonset_caps();
    let mut cm = ConfigMapVolume::new(env.dir.join("configmap"));
    let config = shipped_config_for(&env, &cm.dir);
    cm.publish(&[
        ("config.yaml", config.clone()),
        ("serviceentries.yaml", se("198.18.0.1")),
    ]);
    let config_path = cm.dir.join("config.yaml");

    let mut old = spawn_daemon(pod_command(&caps, &config_path));
    old.wait_for("the first full apply", Duration::from_secs(20), |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    // A workload keeps connecting while the pod is replaced (maxSurge 0: the old pod stops
    // before the new one starts, and nothing runs in between).
    let probe = env.probe_loop(&[ALLOWED, DENIED]);
    std::thread::sleep(Duration::from_millis(200));
    let status = old.stop(libc::SIGTERM);
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    std::thread::sleep(Duration::from_millis(500));
    let mut new = spawn_daemon(pod_command(&caps, &config_path));
    new.wait_for("the first full apply", Duration::from_secs(20), |r| {
        r.iter().any(|r| r["message"] == "first full apply done")
    });
    std::thread::sleep(Duration::from_millis(200));
    probe.finish_steady(
        &[(ALLOWED, "ok"), (DENIED, "EPERM")],
        "across the replacement",
    );

    // `kubectl edit configmap`: the kubelet swaps ..data; the new pod reloads on its own.
    cm.publish(&[
        ("config.yaml", config),
        (
            "serviceentries.yaml",
            format!("{}---\n{}", se("198.18.0.1"), se("198.18.0.3")),
        ),
    ]);
    env.wait_probe(DENIED, "ok", Duration::from_secs(15));
    new.wait_for("the reload record", Duration::from_secs(5), |r| {
        r.iter().any(|r| r["message"] == "reloaded")
    });
}
