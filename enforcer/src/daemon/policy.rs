//! One complete policy load: config file, every ServiceEntry, compiled. Either all of it is
//! good or none of it is applied.

use std::path::{Path, PathBuf};

use crate::{
    config::{self, Config},
    policy::{
        allow_spec::AllowSpec,
        compile::{CompiledPolicy, ConfigAllows, compile_scoped},
        visibility::EntryScope,
    },
    scope::{
        policy::{Scope, UnitScope},
        select::Sidecars,
        table::{PolicyTable, Subject},
    },
    serviceentry::{LoadReport, Loaded, Severity, load_paths},
};

pub struct LoadedPolicy {
    pub config: Config,
    pub compiled: CompiledPolicy,
    /// Policy ids (scoping; empty without units).
    pub table: PolicyTable,
    pub entries: usize,
    /// Of `entries`, how many come from files (the rest from the API server).
    pub from_files: usize,
    /// Warnings and notices, formatted for the log.
    pub remarks: Vec<String>,
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
}

/// Policy ids and who may use each entry, when units are configured.
fn scoping(
    cfg: &Config,
    entries: &[Loaded],
    files: usize,
    previous: &PolicyTable,
) -> Result<(PolicyTable, Option<Vec<EntryScope>>), LoadError> {
    let p = &cfg.policies;
    if p.units.is_empty() {
        return Ok((PolicyTable::default(), None));
    }
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
    let mut subjects: Vec<Subject> = units
        .iter()
        .map(|u| Subject::Unit(u.cgroup.clone()))
        .collect();
    if p.default == config::DefaultPolicy::All {
        subjects.push(Subject::Default);
    }
    let table = PolicyTable::assign(previous, subjects)
        .map_err(|e| LoadError(vec![format!("policies: {e}")]))?;
    let sidecars = Sidecars::default();
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
    let scopes = table.entry_scopes(&scope);
    Ok((table, Some(scopes)))
}

pub fn load(inputs: &Inputs<'_>) -> Result<LoadedPolicy, LoadError> {
    let mut cfg = Config::load(inputs.config).map_err(|e| LoadError(vec![format!("{e:#}")]))?;
    if let Some(k) = inputs.kubeconfig {
        cfg.kubernetes.api_server = true;
        cfg.kubernetes.kubeconfig = k.to_path_buf();
    }
    let mut report = load_paths(&entry_paths(&cfg), cfg.limits.max_file_bytes);
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
    let previous = inputs.policies.cloned().unwrap_or_default();
    let (table, scopes) = scoping(&cfg, &report.entries, files, &previous)?;
    let compiled = compile_scoped(&allows, &report.entries, scopes.as_deref());
    let mut remarks = describe(&report, Severity::Warning);
    remarks.extend(describe(&report, Severity::Notice));
    remarks.extend(compiled.notices.iter().map(|n| {
        format!(
            "ServiceEntry {}: {}: {} [{}]",
            n.entry, n.issue.path, n.issue.message, n.issue.rule
        )
    }));
    Ok(LoadedPolicy {
        entries: report.entries.len(),
        from_files: files,
        config: cfg,
        compiled,
        table,
        remarks,
    })
}
