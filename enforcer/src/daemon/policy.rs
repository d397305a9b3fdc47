//! One complete policy load: config file, every ServiceEntry, compiled. Either all of it is
//! good or none of it is applied.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::{
    cluster::pods::PodMeta,
    config::{self, Config},
    daemon::scoping::pods::PodPolicy,
    policy::{
        allow_spec::AllowSpec,
        compile::{CompiledPolicy, ConfigAllows, compile_scoped},
        visibility::EntryScope,
    },
    scope::{
        policy::{Scope, UnitScope},
        select::Sidecars,
        sidecar::Sidecar,
        table::{PolicyTable, Subject},
    },
    serviceentry::{LoadReport, Loaded, Severity, cache::FileCache, load_paths},
};

pub struct LoadedPolicy {
    pub config: Config,
    /// Shared with the event reader, which explains events from it (no copy per address).
    pub compiled: std::sync::Arc<CompiledPolicy>,
    /// Policy ids (scoping; empty without units or pods).
    pub table: PolicyTable,
    /// Pod UID (as its cgroup names it) → policy id.
    pub pods: BTreeMap<String, PodPolicy>,
    /// `(kubelet root, kubepods cgroup)` pairs where pods are found (pod scoping).
    pub kubepods: Vec<(String, String)>,
    pub entries: usize,
    /// Of `entries`, how many come from files (the rest from the API server).
    pub from_files: usize,
    /// Warnings and notices, formatted for the log.
    pub remarks: Vec<String>,
    /// `namespace/name` of every entry.
    pub entry_ids: BTreeSet<String>,
}

/// Every error, one per line, each naming file, document, entry, field and rule.
#[derive(Debug)]
pub struct LoadError(pub Vec<String>);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

fn describe(report: &LoadReport, severity: Severity) -> Vec<String> {
    let mut out: Vec<String> = report
        .problems
        .iter()
        .filter(|(_, i)| i.severity == severity)
        .map(|(o, i)| format!("{o}: {} [{}]", i.message, i.rule))
        .collect();
    for e in &report.entries {
        for i in e.issues.iter().filter(|i| i.severity == severity) {
            out.push(format!("{}: ServiceEntry {}: {i}", e.origin, e.id()));
        }
    }
    out
}

/// The ServiceEntry paths to read; the default directory may be absent (no entries yet),
/// any path the config names explicitly must exist.
fn entry_paths(cfg: &Config) -> Vec<PathBuf> {
    cfg.all_entry_paths()
        .iter()
        .filter(|p| p.as_path() != Path::new(config::DEFAULT_SERVICEENTRIES) || p.exists())
        .cloned()
        .collect()
}

/// What one load reads besides the files the config names.
#[derive(Default)]
pub struct Inputs<'a> {
    pub config: Option<&'a Path>,
    /// `--allow` flags.
    pub allow: &'a [AllowSpec],
    /// `--kubeconfig`: watch the API server with this file.
    pub kubeconfig: Option<&'a Path>,
    /// The valid ServiceEntries from the API server (each one validated already).
    pub cluster: &'a [Loaded],
    /// The API server's addresses: always allowed.
    pub api_server: &'a [std::net::SocketAddr],
    /// The policy ids in force: subjects keep theirs.
    pub policies: Option<&'a PolicyTable>,
    /// Every Sidecar, and this node's pods (pod scoping).
    pub sidecars: &'a [Sidecar],
    /// `sidecars` is complete: listed from the API server, or recorded by the previous run.
    pub sidecars_known: bool,
    pub pods: &'a [PodMeta],
}

/// The scoping half of a load: policy ids, who may use each entry, and each pod's policy.
struct Scoped {
    table: PolicyTable,
    scopes: Option<Vec<EntryScope>>,
    pods: BTreeMap<String, PodPolicy>,
}

/// Policy ids and who may use each entry, with units or pods.
fn scoping(
    cfg: &Config,
    inputs: &Inputs<'_>,
    entries: &[Loaded],
    files: usize,
) -> Result<Scoped, LoadError> {
    if !cfg.scoping() {
        return Ok(Scoped {
            table: PolicyTable::default(),
            scopes: None,
            pods: BTreeMap::new(),
        });
    }
    let p = &cfg.policies;
    let units: Vec<UnitScope> = p
        .units
        .iter()
        .zip(p.unit_cgroups())
        .map(|(u, cgroup)| UnitScope {
            cgroup,
            namespaces: u.namespaces.clone(),
            paths: u.service_entries.clone(),
        })
        .collect();
    let sidecars = Sidecars::new(
        inputs.sidecars.iter().cloned(),
        &cfg.kubernetes.root_namespace,
    );
    // Entries from the API server (after the files) and from `serviceEntries` are seen by
    // namespace; those only under a unit's own paths are that unit's.
    let shared = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            i >= files
                || cfg
                    .service_entries
                    .iter()
                    .any(|g| e.origin.file.starts_with(g))
        })
        .collect();
    let scope = Scope::new(entries, &p.default_export_to, &sidecars).with_units(&units, shared);
    // Until every Sidecar is known (listed, or recorded by the previous run), a pod's view
    // could be wider than its Sidecar allows: pods stay unplaced (the default, deny).
    let pods = if inputs.sidecars_known {
        inputs.pods
    } else {
        &[]
    };
    let pod_subjects: Vec<(&PodMeta, Subject)> = pods
        .iter()
        .map(|pod| {
            (
                pod,
                Subject::Workload(scope.key(&pod.namespace, &pod.labels)),
            )
        })
        .collect();
    let mut subjects: Vec<Subject> = units
        .iter()
        .map(|u| Subject::Unit(u.cgroup.clone()))
        .collect();
    subjects.extend(pod_subjects.iter().map(|(_, s)| s.clone()));
    if cfg.default_policy() == config::DefaultPolicy::All {
        subjects.push(Subject::Default);
    }
    let previous = inputs.policies.cloned().unwrap_or_default();
    let table = PolicyTable::assign(&previous, subjects)
        .map_err(|e| LoadError(vec![format!("policies: {e}")]))?;
    let scopes = table.entry_scopes(&scope);
    let mut pods: BTreeMap<String, PodPolicy> = BTreeMap::new();
    let mut claimed_twice = BTreeSet::new();
    for (pod, s) in pod_subjects {
        let Some(policy) = table.id(&s) else { continue };
        let name = format!("{}/{}", pod.namespace, pod.name);
        if let Some(first) = pods.insert(pod.uid.clone(), PodPolicy { policy, pod: name }) {
            claimed_twice.insert((pod.uid.clone(), first.pod));
        }
    }
    // Two pods naming one cgroup (a forged mirror annotation): neither policy is trusted.
    for (uid, first) in claimed_twice {
        if let Some(second) = pods.remove(&uid) {
            tracing::warn!(
                uid = %uid,
                "pods {first} and {} name the same cgroup: it gets the default policy",
                second.pod
            );
        }
    }
    Ok(Scoped {
        table,
        scopes: Some(scopes),
        pods,
    })
}

/// One load, every file read.
pub fn load(inputs: &Inputs<'_>) -> Result<LoadedPolicy, LoadError> {
    load_with(inputs, load_paths)
}

/// One load, reading only the files that changed since the cache last saw them (the daemon's
/// reloads: docs/architecture.md, "Reloads").
pub fn load_cached(inputs: &Inputs<'_>, files: &mut FileCache) -> Result<LoadedPolicy, LoadError> {
    load_with(inputs, |paths, max| {
        let (report, reads) = files.load(paths, max);
        tracing::debug!(
            parsed = reads.parsed,
            reused = reads.reused,
            "ServiceEntry files"
        );
        report
    })
}

fn load_with(
    inputs: &Inputs<'_>,
    read: impl FnOnce(&[PathBuf], u64) -> LoadReport,
) -> Result<LoadedPolicy, LoadError> {
    let mut cfg = Config::load(inputs.config).map_err(|e| LoadError(vec![format!("{e:#}")]))?;
    if let Some(k) = inputs.kubeconfig {
        cfg.kubernetes.api_server = true;
        cfg.kubernetes.kubeconfig = k.to_path_buf();
    }
    let t0 = std::time::Instant::now();
    let mut report = read(&entry_paths(&cfg), cfg.limits.max_file_bytes);
    tracing::debug!(ms = t0.elapsed().as_millis(), "policy: files read");
    let errors = describe(&report, Severity::Error);
    if !errors.is_empty() {
        return Err(LoadError(errors));
    }
    let dns_aware = cfg.dns.mode == config::DnsMode::Proxy;
    let files = report.entries.len();
    if cfg.kubernetes.api_server {
        report.entries.extend(inputs.cluster.iter().cloned());
    }
    let allows = ConfigAllows {
        api_server: if cfg.kubernetes.api_server {
            inputs.api_server.to_vec()
        } else {
            Vec::new()
        },
        specs: inputs.allow.to_vec(),
        cidrs: cfg.allowed_cidrs(),
        // In DNS-aware mode every query goes to the proxy: no resolver is reachable directly.
        dns_servers: if dns_aware {
            Vec::new()
        } else {
            cfg.allowed_dns_servers()
        },
        dns_aware,
        ping: cfg.allow.ping,
    };
    let scoped = scoping(&cfg, inputs, &report.entries, files)?;
    let compiled = compile_scoped(&allows, &report.entries, scoped.scopes.as_deref());
    tracing::debug!(ms = t0.elapsed().as_millis(), "policy: compiled");
    let mut remarks = describe(&report, Severity::Warning);
    remarks.extend(describe(&report, Severity::Notice));
    remarks.extend(compiled.notices.iter().map(|n| {
        format!(
            "ServiceEntry {}: {}: {} [{}]",
            n.entry, n.issue.path, n.issue.message, n.issue.rule
        )
    }));
    let kubepods = if cfg.kubernetes.pods {
        cfg.kubepods_cgroups()
    } else {
        Vec::new()
    };
    Ok(LoadedPolicy {
        entry_ids: report.entries.iter().map(Loaded::id).collect(),
        kubepods,
        entries: report.entries.len(),
        from_files: files,
        config: cfg,
        compiled: std::sync::Arc::new(compiled),
        table: scoped.table,
        pods: scoped.pods,
        remarks,
    })
}
