//! The shipped Kubernetes manifests and Dockerfile agree with each other and with what the
//! binary expects: every invariant here is one a broken deployment would violate. Static
//! checks only (no cluster, no image build here); the capability set itself is exercised
//! against the real kernel by the end-to-end suite (tests/tests/kubernetes.rs).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use clap::Parser as _;
use enforcer::{
    cli::{Cli, Command},
    config::Config,
    dataplane::sources::STATE_DIR,
    serviceentry::source::load_text,
};
use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s_dir() -> PathBuf {
    repo().join("config/kubernetes")
}

/// The two variants: ServiceEntries from the API server (the default) and from a ConfigMap.
const OVERLAYS: [&str; 2] = ["overlays/apiserver", "overlays/configmap"];

/// The objects `kubectl kustomize` renders from `dir` (relative to config/kubernetes), as the
/// cluster would get them from `kubectl apply -k`.
fn render(dir: &str) -> Vec<Value> {
    let path = k8s_dir().join(dir);
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl (it comes with the machine image; `cargo xtask setup` checks it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 manifests");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{dir}: rendered output is not YAML: {e}"))
        })
        .collect()
}

/// One rendered variant.
struct Rendered {
    name: &'static str,
    docs: Vec<Value>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|v| v["kind"].as_str() == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str) -> Value {
        let all = self.of_kind(kind);
        assert_eq!(all.len(), 1, "{}: exactly one {kind} expected", self.name);
        all[0].clone()
    }

    fn container(&self) -> Value {
        let ds = self.one("DaemonSet");
        let containers = seq(&ds["spec"]["template"]["spec"]["containers"], "containers");
        assert_eq!(containers.len(), 1, "one container: the daemon");
        containers[0].clone()
    }

    fn configmap_text(&self, key: &str) -> String {
        let cm = self.one("ConfigMap");
        s(&cm["data"][key], &format!("ConfigMap data.{key}")).to_owned()
    }

    /// The daemon config shipped in the ConfigMap, parsed by the daemon's own parser.
    fn config(&self) -> Config {
        Config::parse(
            &self.configmap_text("config.yaml"),
            Path::new(&format!("{}: configmap data.config.yaml", self.name)),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{}: config.yaml is rejected by the daemon: {e:#}",
                self.name
            )
        })
    }

    /// The container's volume mount backed by the named volume.
    fn mount_of(&self, volume: &str) -> Value {
        seq(&self.container()["volumeMounts"], "volumeMounts")
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("no volumeMount for volume {volume}"))
            .clone()
    }

    fn volume(&self, name: &str) -> Value {
        let ds = self.one("DaemonSet");
        seq(&ds["spec"]["template"]["spec"]["volumes"], "volumes")
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    }
}

fn variants() -> Vec<Rendered> {
    OVERLAYS
        .iter()
        .map(|o| Rendered {
            name: o,
            docs: render(o),
        })
        .collect()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: not a list: {v:?}"))
}

/// Every YAML file under `dir`, relative to config/kubernetes.
fn yaml_files(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("config/kubernetes") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.insert(p.strip_prefix(k8s_dir()).expect("inside").to_path_buf());
        }
    }
}

#[test]
fn every_file_is_used_and_the_default_is_the_api_server_variant() {
    let mut files = BTreeSet::new();
    yaml_files(&k8s_dir(), &mut files);
    let mut used = BTreeSet::new();
    for f in files.iter().filter(|f| f.ends_with("kustomization.yaml")) {
        let dir = f.parent().expect("a directory");
        used.insert(f.clone());
        let text = std::fs::read_to_string(k8s_dir().join(f)).expect("kustomization");
        let k: Value = serde_yaml_ng::from_str(&text).expect("kustomization YAML");
        let listed = k["resources"].as_sequence().into_iter().flatten();
        let patches = k["patches"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|p| &p["path"]);
        for r in listed.chain(patches) {
            let p = dir.join(s(r, "resource"));
            if !k8s_dir().join(&p).is_dir() {
                used.insert(p);
            }
        }
    }
    assert_eq!(used, files, "files no kustomization uses (or missing ones)");
    assert_eq!(
        render("."),
        render("overlays/apiserver"),
        "`kubectl apply -k config/kubernetes` is the API server variant"
    );
}

#[test]
fn all_objects_share_one_namespace_and_the_pod_its_account() {
    for v in variants() {
        let ns = v.one("Namespace");
        let ns = s(&ns["metadata"]["name"], "Namespace name");
        for kind in ["ServiceAccount", "ConfigMap", "DaemonSet"] {
            assert_eq!(
                v.one(kind)["metadata"]["namespace"].as_str(),
                Some(ns),
                "{kind}"
            );
        }
        let ds = v.one("DaemonSet");
        let pod = &ds["spec"]["template"]["spec"];
        let sa = v.one("ServiceAccount");
        assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
        // No other pod using the account ever gets its token.
        assert_eq!(sa["automountServiceAccountToken"].as_bool(), Some(false));
        let labels = &ds["spec"]["template"]["metadata"]["labels"];
        let selector = ds["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .expect("matchLabels");
        for (k, val) in selector {
            assert_eq!(
                &labels[k], val,
                "selector label {k:?} not on the pod template"
            );
        }
    }
}

/// The ConfigMap variant never talks to the API server: no role, no token.
#[test]
fn the_configmap_variant_has_no_role_and_no_token() {
    let v = Rendered {
        name: "configmap",
        docs: render("overlays/configmap"),
    };
    assert!(v.of_kind("ClusterRole").is_empty() && v.of_kind("ClusterRoleBinding").is_empty());
    assert!(v.of_kind("Role").is_empty() && v.of_kind("RoleBinding").is_empty());
    let ds = v.one("DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    assert!(!v.config().kubernetes.api_server);
}

/// The API server variant: read-only access to exactly what the daemon reads, bound to the
/// daemon's account, the token in its pod, and the node and pod from the downward API.
#[test]
fn the_api_server_variant_reads_only_what_it_needs() {
    let v = Rendered {
        name: "apiserver",
        docs: render("overlays/apiserver"),
    };
    let role = v.one("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in seq(&role["rules"], "rules") {
        assert!(rule["resourceNames"].is_null() && rule["nonResourceURLs"].is_null());
        let verbs: BTreeSet<&str> = seq(&rule["verbs"], "verbs")
            .iter()
            .map(|x| s(x, "verb"))
            .collect();
        assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]), "read-only");
        for g in seq(&rule["apiGroups"], "apiGroups") {
            for r in seq(&rule["resources"], "resources") {
                granted.insert((s(g, "group").to_owned(), s(r, "resource").to_owned()));
            }
        }
    }
    let want: BTreeSet<(String, String)> = [
        ("networking.istio.io", "serviceentries"),
        ("networking.istio.io", "sidecars"),
        ("", "pods"),
    ]
    .iter()
    .map(|(g, r)| ((*g).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(granted, want);
    assert!(v.of_kind("Role").is_empty() && v.of_kind("RoleBinding").is_empty());

    let binding = v.one("ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let sa = v.one("ServiceAccount");
    let subjects = seq(&binding["subjects"], "subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
    assert_eq!(subjects[0]["namespace"], sa["metadata"]["namespace"]);

    let ds = v.one("DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["automountServiceAccountToken"].as_bool(),
        Some(true),
        "the in-cluster client needs the token"
    );
    let container = v.container();
    let env = seq(&container["env"], "env");
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .map(|e| s(&e["valueFrom"]["fieldRef"]["fieldPath"], name).to_owned())
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(field("POD_UID").as_deref(), Some("metadata.uid"));

    let cfg = v.config();
    assert!(cfg.kubernetes.api_server);
    assert!(cfg.kubernetes.kubeconfig().is_none(), "in-cluster config");
    assert!(
        cfg.kubernetes.pods,
        "pods are scoped by namespace and Sidecar"
    );
    assert!(
        cfg.kubernetes.node_name.is_empty(),
        "the node comes from NODE_NAME"
    );
    assert_eq!(
        cfg.default_policy(),
        enforcer::config::DefaultPolicy::Deny,
        "a pod not placed yet is denied"
    );
    assert!(
        !cfg.kubepods_cgroups().is_empty(),
        "the enforced cgroup is the kubelet's kubepods"
    );
    assert!(
        cfg.service_entries.is_empty(),
        "ServiceEntries come from the API server"
    );
}

#[test]
fn security_context_is_the_smallest_that_works() {
    for v in variants() {
        security_context(&v);
    }
}

fn security_context(v: &Rendered) {
    let ds = v.one("DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host].as_bool(), Some(true), "{host} is not needed");
    }
    let c = v.container();
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true), "not privileged");
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let drop: Vec<&str> = seq(&sc["capabilities"]["drop"], "drop")
        .iter()
        .map(|c| s(c, "cap"))
        .collect();
    assert_eq!(drop, ["ALL"]);
    let add: BTreeSet<&str> = seq(&sc["capabilities"]["add"], "add")
        .iter()
        .map(|c| s(c, "cap"))
        .collect();
    // The e2e suite proves each of these is needed and that together they suffice.
    assert_eq!(add, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));
    // Root is needed (cgroupfs and bpffs belong to root) but nothing more: no SYS_ADMIN
    // anywhere, which is what the unconfined seccomp profile is traded against.
    assert_eq!(sc["runAsUser"].as_u64(), Some(0));
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("Unconfined"));
    assert_eq!(sc["appArmorProfile"]["type"].as_str(), Some("Unconfined"));
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    let legacy = format!(
        "container.apparmor.security.beta.kubernetes.io/{}",
        s(&c["name"], "container name")
    );
    assert_eq!(
        annotations[legacy.as_str()].as_str(),
        Some("unconfined"),
        "the pre-1.30 AppArmor annotation must name the container and agree"
    );
}

#[test]
fn host_mounts_match_the_config_and_keep_pins_on_the_host() {
    for v in variants() {
        host_mounts(&v);
    }
}

fn host_mounts(v: &Rendered) {
    let cfg = v.config();
    // bpffs: the host's own, so pins (and enforcement) outlive the pod.
    let bpf_mount = v.mount_of("bpffs");
    let bpf_volume = v.volume("bpffs");
    assert_eq!(
        s(&bpf_volume["hostPath"]["path"], "bpffs hostPath"),
        "/sys/fs/bpf"
    );
    assert_eq!(bpf_volume["hostPath"]["type"].as_str(), Some("Directory"));
    let at = PathBuf::from(s(&bpf_mount["mountPath"], "bpffs mountPath"));
    assert!(
        cfg.bpffs.starts_with(&at),
        "config bpffs {} is not on the hostPath mount {}",
        cfg.bpffs.display(),
        at.display()
    );
    // Bidirectional would need a privileged container; the pod must never mount a bpffs of
    // its own (it would vanish with the pod), and has no capability to.
    assert_eq!(
        bpf_mount["mountPropagation"].as_str(),
        Some("HostToContainer")
    );

    // cgroup2: the host's hierarchy, read-only (attaching only opens the directory), at the
    // path the daemon finds in mountinfo.
    let cg_mount = v.mount_of("cgroup");
    let cg_volume = v.volume("cgroup");
    assert_eq!(
        s(&cg_volume["hostPath"]["path"], "cgroup hostPath"),
        "/sys/fs/cgroup"
    );
    assert_eq!(
        s(&cg_mount["mountPath"], "cgroup mountPath"),
        "/sys/fs/cgroup"
    );
    assert_eq!(cg_mount["readOnly"].as_bool(), Some(true));

    // Only pods: the kubelet's kubepods cgroup, never the host root.
    assert!(!cfg.cgroups.is_empty());
    for cg in &cfg.cgroups {
        let top = cg.trim_start_matches('/').split('/').next().unwrap_or("");
        assert!(
            top == "kubepods" || top == "kubepods.slice",
            "cgroup {cg:?} is not the kubepods cgroup"
        );
    }

    // The rule sources and DNS answers need a writable directory on a read-only root, and
    // the answers must outlive the pod (the next pod carries them over).
    let run = v.mount_of("run");
    assert_eq!(s(&run["mountPath"], "run mountPath"), STATE_DIR);
    let host = &v.volume("run")["hostPath"];
    assert_eq!(s(&host["path"], "run hostPath"), STATE_DIR);
    assert_eq!(s(&host["type"], "run hostPath type"), "DirectoryOrCreate");
}

#[test]
fn configmap_keys_are_what_the_config_and_args_expect() {
    for v in variants() {
        configmap_keys(&v);
    }
}

fn configmap_keys(v: &Rendered) {
    let cm = v.one("ConfigMap");
    let c = v.container();
    let cfg_volume = v.volume("config");
    assert_eq!(cfg_volume["configMap"]["name"], cm["metadata"]["name"]);
    let mount = PathBuf::from(s(&v.mount_of("config")["mountPath"], "config mountPath"));

    // The container's args are a valid command line for this very binary: `run` with the
    // config file the ConfigMap provides.
    let args: Vec<String> = seq(&c["args"], "args")
        .iter()
        .map(|a| s(a, "arg").to_owned())
        .collect();
    assert!(
        c["command"].is_null(),
        "the image's ENTRYPOINT is the binary"
    );
    let cli = Cli::try_parse_from(std::iter::once("egress-enforcer".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("DaemonSet args are not a valid command line: {e}"));
    assert!(
        matches!(cli.command, Command::Run(_)),
        "the DaemonSet runs `run`"
    );
    let config_path = cli.config.expect("--config in the args");
    let keys: BTreeSet<String> = cm["data"]
        .as_mapping()
        .expect("ConfigMap data")
        .keys()
        .map(|k| s(k, "key").to_owned())
        .collect();
    let key_of = |p: &Path| -> String {
        let rel = p
            .strip_prefix(&mount)
            .unwrap_or_else(|_| panic!("{} is not in the ConfigMap mount", p.display()));
        rel.to_string_lossy().into_owned()
    };
    let mut used = BTreeSet::from([key_of(&config_path)]);
    let cfg = v.config();
    assert!(
        !cfg.service_entries.is_empty() || cfg.kubernetes.api_server,
        "{}: no ServiceEntries from anywhere",
        v.name
    );
    for p in &cfg.service_entries {
        used.insert(key_of(p));
    }
    assert_eq!(used, keys, "ConfigMap keys vs the files the daemon reads");

    // Each ServiceEntry key is valid as the daemon (and Istio) would judge it.
    for key in keys.iter().filter(|k| **k != key_of(&config_path)) {
        let mut report = enforcer::serviceentry::LoadReport::default();
        load_text(&v.configmap_text(key), Path::new(key), &mut report);
        assert_eq!(report.error_count(), 0, "ConfigMap {key}: {report:#?}");
        assert!(
            !report.entries.is_empty(),
            "ConfigMap {key} holds no ServiceEntry"
        );
    }
}

#[test]
fn probes_and_ports_match_http_listen() {
    for v in variants() {
        probes_and_ports(&v);
    }
}

fn probes_and_ports(v: &Rendered) {
    let cfg = v.config();
    let listen = cfg
        .http
        .listen_addr()
        .expect("http.listen must be on: the kubelet probes it");
    // The kubelet probes (and Prometheus scrapes) the pod IP, never the pod's loopback.
    assert!(
        listen.ip().is_unspecified(),
        "http.listen {listen} is unreachable from the kubelet"
    );
    let c = v.container();
    let ports = seq(&c["ports"], "ports");
    let http = ports
        .iter()
        .find(|p| p["name"].as_str() == Some("http"))
        .expect("a port named http");
    assert_eq!(
        http["containerPort"].as_u64(),
        Some(u64::from(listen.port()))
    );
    let probe = |kind: &str, path: &str| {
        let p = &c[kind]["httpGet"];
        assert_eq!(p["path"].as_str(), Some(path), "{kind} path");
        let port = &p["port"];
        assert!(
            port.as_str() == Some("http") || port.as_u64() == Some(u64::from(listen.port())),
            "{kind} port {port:?}"
        );
    };
    probe("readinessProbe", "/readyz");
    probe("livenessProbe", "/healthz");
    probe("startupProbe", "/healthz");
    let ds = v.one("DaemonSet");
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(listen.port().to_string().as_str())
    );
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));
}

fn quantity(v: &Value) -> f64 {
    let text = match v {
        Value::Number(n) => n.to_string(),
        other => s(other, "quantity").to_owned(),
    };
    let (num, mult) = [
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("m", 0.001),
    ]
    .iter()
    .find_map(|(suf, m)| text.strip_suffix(suf).map(|n| (n.to_owned(), *m)))
    .unwrap_or((text.clone(), 1.0));
    num.parse::<f64>()
        .unwrap_or_else(|_| panic!("quantity {text:?}"))
        * mult
}

#[test]
fn resources_rollout_and_scheduling() {
    for v in variants() {
        resources_rollout(&v);
    }
}

fn resources_rollout(v: &Rendered) {
    let c = v.container();
    for res in ["cpu", "memory"] {
        let req = quantity(&c["resources"]["requests"][res]);
        let lim = quantity(&c["resources"]["limits"][res]);
        assert!(req > 0.0 && lim >= req, "{res}: request {req} limit {lim}");
    }
    let ds = v.one("DaemonSet");
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    // Old pod out before the new one starts: two daemons on one pin directory are refused.
    let surge = &strategy["rollingUpdate"]["maxSurge"];
    assert!(
        surge.as_u64() == Some(0) || surge.as_str() == Some("0%"),
        "maxSurge {surge:?}"
    );
    let pod = &ds["spec"]["template"]["spec"];
    assert!(
        seq(&pod["tolerations"], "tolerations")
            .iter()
            .any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_null()),
        "every node, tainted ones too"
    );
    assert!(pod["terminationGracePeriodSeconds"].as_u64().is_some());
    // No preStop hook: whatever runs at pod stop must not remove the pins.
    assert!(c["lifecycle"].is_null(), "no lifecycle hooks");
    // The image the manifests name is this release.
    let image = s(&c["image"], "image");
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "image {image} is not tagged {}",
        env!("CARGO_PKG_VERSION")
    );
}

/// `FROM image [AS name]` lines and the instructions of each stage.
fn dockerfile_stages() -> Vec<(String, Option<String>, Vec<String>)> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    // Join continuation lines so each instruction is one line.
    let joined = text.replace("\\\n", " ");
    let mut stages: Vec<(String, Option<String>, Vec<String>)> = Vec::new();
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0].eq_ignore_ascii_case("FROM") {
            let name = (words.len() == 4 && words[2].eq_ignore_ascii_case("AS"))
                .then(|| words[3].to_owned());
            stages.push((words[1].to_owned(), name, Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.2.push(line.to_owned());
        }
    }
    stages
}

#[test]
fn dockerfile_is_multi_stage_with_just_the_binary_in_the_final_image() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (build_image, build_name, build) = &stages[0];
    assert!(
        build_image.contains("rust:"),
        "build stage from a Rust image"
    );
    let build_name = build_name.as_deref().expect("the build stage is named");
    assert!(
        build
            .iter()
            .any(|l| l.contains("cargo xtask setup --build-only")),
        "the build stage uses the project's toolchain recipe"
    );
    assert!(
        build
            .iter()
            .any(|l| l.contains("cargo build --release --locked --package enforcer")),
        "the build stage builds the locked release binary"
    );
    let (base, _, last) = stages.last().expect("final stage");
    assert!(
        base.contains("distroless") || base.contains("slim"),
        "final base {base} is not slim"
    );
    let copies: Vec<&String> = last.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "only the binary is copied: {copies:?}");
    assert!(copies[0].contains(&format!("--from={build_name}")));
    assert!(copies[0].ends_with("/usr/local/bin/egress-enforcer"));
    assert!(
        !last.iter().any(|l| l.starts_with("RUN")),
        "nothing runs in the final stage (distroless has no shell)"
    );
    let entrypoint = last
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("ENTRYPOINT");
    assert!(entrypoint.contains("\"/usr/local/bin/egress-enforcer\""));
    // The pinned toolchains are real versions.
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let arg = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("ARG {name}"))
            .to_owned()
    };
    assert!(arg("RUST_VERSION").split('.').count() == 3);
    assert!(arg("NIGHTLY").starts_with("nightly-20"));
    // The build context leaves out build output (gigabytes) but keeps the cargo alias.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    assert!(!ignore.lines().any(|l| l.trim().starts_with(".cargo")));
}
