//! `egress-enforcer suggest`: ServiceEntries for what workloads reached or tried to reach
//! (learn mode's observations), less what the policy in force already allows them
//! (docs/architecture.md, "Learn mode").

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;

use super::{Failure, OrFailure as _};
use crate::{
    config::Config,
    daemon::{observe::file, policy},
    dataplane::pins::PinLayout,
    learn::{
        exclude::{Caller, PolicyView},
        render,
        store::Observation,
        suggest::{self, Draft, Exclude, Group, Options, Policy},
        time,
    },
    scope::table::Subject,
    serviceentry::{LoadReport, Severity, source::load_text},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExcludeArg {
    /// What the policy in force allows the observing workload
    Allowed,
    /// Names and addresses the policy registers, on any port
    Registered,
    /// Nothing: every observation
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupArg {
    /// One entry per name
    Host,
    /// One entry per registrable domain (public suffix list)
    Domain,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only observations last seen within this long (24h, 7d) or since this UTC time
    /// (2026-12-03T10:00:00Z)
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Only pods in this namespace (repeatable). A pod's entries go into its namespace,
    /// exported to it alone; other workloads' are for everyone
    #[arg(long, value_name = "NS")]
    pub namespace: Vec<String>,
    /// Only this cgroup and those below it, relative to the cgroup2 mount (repeatable)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Vec<String>,
    /// Write one file per entry into DIR (created if missing), not to stdout; no file is
    /// replaced
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// What to leave out
    #[arg(long, value_enum, default_value_t = ExcludeArg::Allowed)]
    pub exclude: ExcludeArg,
    /// One entry per name, or per registrable domain where names share their ports
    #[arg(long, value_enum, default_value_t = GroupArg::Host)]
    pub group: GroupArg,
    /// Fold several names of one domain into `*.domain` (implies --group domain; allowed
    /// then are the workloads' own DNS answers, in DNS-aware mode)
    #[arg(long)]
    pub wildcard: bool,
    /// The observation store [default: learn.store of the config]
    #[arg(long, value_name = "FILE")]
    pub store: Option<PathBuf>,
}

fn since(arg: &str, now: u64) -> anyhow::Result<u64> {
    if let Ok(d) = crate::duration::parse(arg) {
        return Ok(now.saturating_sub(d.as_secs()));
    }
    time::parse(arg).map_err(|e| anyhow::anyhow!("--since: {e}, nor a duration like 24h"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn options(a: &Args) -> anyhow::Result<Options> {
    for ns in &a.namespace {
        if !crate::serviceentry::names::is_dns1123_label(ns)
            || ns.bytes().any(|c| c.is_ascii_uppercase())
        {
            anyhow::bail!("--namespace: {ns:?} is not a namespace name");
        }
    }
    Ok(Options {
        since: a
            .since
            .as_deref()
            .map(|s| since(s, unix_now()))
            .transpose()?,
        namespaces: a.namespace.clone(),
        // Normalised as the config's are: a filesystem path would silently match nothing.
        cgroups: a
            .cgroup
            .iter()
            .map(|c| crate::config::cgroup_relative(c).with_context(|| format!("--cgroup {c:?}")))
            .collect::<anyhow::Result<_>>()?,
        group: if a.wildcard || a.group == GroupArg::Domain {
            Group::Domain
        } else {
            Group::Host
        },
        wildcard: a.wildcard,
        exclude: match a.exclude {
            ExcludeArg::Allowed => Exclude::Allowed,
            ExcludeArg::Registered => Exclude::Registered,
            ExcludeArg::None => Exclude::None,
        },
        taken: std::collections::BTreeSet::new(),
    })
}

/// Nothing is covered (`--exclude none` needs no policy).
struct NoPolicy;

impl Policy for NoPolicy {
    fn allows(&self, _: &Observation) -> bool {
        false
    }
    fn registers(&self, _: &Observation) -> bool {
        false
    }
}

/// The deepest unit whose cgroup holds `cgroup`.
fn unit_of<'a>(units: &'a [String], cgroup: &str) -> Option<&'a String> {
    let c = cgroup.trim_matches('/');
    units
        .iter()
        .filter(|u| {
            let u = u.trim_matches('/');
            c == u || c.strip_prefix(u).is_some_and(|r| r.starts_with('/'))
        })
        .max_by_key(|u| u.len())
}

/// The policy in force as the daemon compiles it: the config's files, and what the API
/// server held when the daemon last recorded it.
fn load_policy(config: Option<&Path>, cfg: &Config) -> Result<policy::LoadedPolicy, Failure> {
    let recorded = cfg
        .kubernetes
        .api_server
        .then(|| crate::cluster::record::read(&PinLayout::new(&cfg.bpffs).root));
    let inputs = policy::Inputs {
        config,
        cluster: recorded.as_ref().map_or(&[][..], |r| r.entries.as_slice()),
        sidecars: recorded.as_ref().map_or(&[][..], |r| r.sidecars.as_slice()),
        sidecars_known: recorded.is_some(),
        pods: recorded.as_ref().map_or(&[][..], |r| r.pods.as_slice()),
        ..policy::Inputs::default()
    };
    policy::load(&inputs)
        .map_err(|e| {
            anyhow::anyhow!(
                "the policy in force cannot be read, so what it allows cannot be left out \
                 (--exclude none does without): {e}"
            )
        })
        .user()
}

fn caller(loaded: &policy::LoadedPolicy) -> impl Fn(&Observation) -> Caller + '_ {
    let units = loaded.config.policies.unit_cgroups();
    move |o: &Observation| {
        if !loaded.config.scoping() {
            return Caller::Unscoped;
        }
        if let Some(name) = o.pod.as_deref() {
            // A pod gone since (a rollout during the audit): its policy is unknown, so only
            // everyone's rules count as covering it (more is suggested, never less).
            return loaded
                .pods
                .values()
                .find(|p| p.pod == name)
                .map_or(Caller::Nobody, |p| Caller::Policy(p.policy));
        }
        let subject =
            unit_of(&units, &o.cgroup).map_or(Subject::Default, |u| Subject::Unit(u.clone()));
        loaded
            .table
            .id(&subject)
            .map_or(Caller::Nobody, Caller::Policy)
    }
}

/// Every suggested document passes validation as Istio would: anything else is our bug,
/// and must not reach a user's policy.
fn self_check(yaml: &str) -> anyhow::Result<()> {
    let mut r = LoadReport::default();
    load_text(yaml, Path::new("suggested"), &mut r);
    let errors: Vec<String> = r
        .entries
        .iter()
        .flat_map(|e| {
            e.issues
                .iter()
                .filter(|i| i.severity == Severity::Error)
                .map(move |i| format!("{}: {i}", e.id()))
        })
        .chain(r.problems.iter().map(|(o, i)| format!("{o}: {i}")))
        .collect();
    anyhow::ensure!(
        errors.is_empty(),
        "internal error: a suggested entry is invalid: {}",
        errors.join("; ")
    );
    Ok(())
}

/// The file of an entry: `NAME.yaml`, or `NAMESPACE.NAME.yaml` (neither has a dot).
fn file_name(d: &Draft) -> String {
    match &d.namespace {
        Some(ns) => format!("{ns}.{}.yaml", d.name),
        None => format!("{}.yaml", d.name),
    }
}

/// One file per entry, each created new: none replaces a file (a hand-written entry of the
/// same name, or an earlier suggestion not yet reviewed), nor writes through a symlink.
fn write_files(dir: &Path, docs: &[(String, String)]) -> anyhow::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(path) = docs
        .iter()
        .map(|(file, _)| dir.join(file))
        .find(|p| p.symlink_metadata().is_ok())
    {
        anyhow::bail!(
            "{} exists: suggest does not replace files (move it, or write to another --output)",
            path.display()
        );
    }
    for (file, yaml) in docs {
        let path = dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(yaml.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// What the exclusion left out, for the summary.
fn left_out(obs: &[Observation], exclude: Exclude, policy: &dyn Policy) -> usize {
    obs.iter()
        .filter(|o| match exclude {
            Exclude::Allowed => policy.allows(o),
            Exclude::Registered => policy.registers(o),
            Exclude::None => false,
        })
        .count()
}

fn summary(
    drafts: usize,
    observations: usize,
    left_out: usize,
    exclude: Exclude,
    path: &Path,
    dropped: u64,
) -> String {
    let entries = match drafts {
        1 => "1 entry".to_owned(),
        n => format!("{n} entries"),
    };
    let why = match exclude {
        Exclude::Allowed => format!(
            "; {left_out} left out as allowed by the policy in force (a workload still denied one: `egress-enforcer explain`)"
        ),
        Exclude::Registered => format!("; {left_out} left out as registered"),
        Exclude::None => String::new(),
    };
    format!(
        "egress-enforcer: {entries} suggested from {observations} observations in {}{why}; {dropped} dropped by the store's limits",
        path.display()
    )
}

pub fn suggest(config: Option<&Path>, a: Args) -> Result<(), Failure> {
    let cfg = Config::load(config).user()?;
    let opts = options(&a).user()?;
    let path = a.store.clone().unwrap_or_else(|| cfg.learn.store.clone());
    let (store, skipped) = file::read(&path, cfg.learn.limits()).user()?;
    if let Some(first) = &skipped.first {
        eprintln!(
            "egress-enforcer: warning: {}: {} observations not in normal form are left out (the first: {first})",
            path.display(),
            skipped.count
        );
    }
    if a.wildcard && cfg.dns.mode != crate::config::DnsMode::Proxy {
        eprintln!(
            "egress-enforcer: warning: dns.mode is resolve: wildcard entries allow nothing until DNS-aware mode (dns.mode: proxy) is on"
        );
    }
    let observations = store.observations();
    // The names in force are taken even with --exclude none, where the policy is not needed
    // for anything else (so a policy that does not load is no error then).
    let loaded = match opts.exclude {
        Exclude::None => load_policy(config, &cfg).ok(),
        _ => Some(load_policy(config, &cfg)?),
    };
    let passthrough = &cfg.dns.proxy.passthrough;
    let view = loaded
        .as_ref()
        .filter(|_| opts.exclude != Exclude::None)
        .map(|l| PolicyView::new(&l.compiled, passthrough, caller(l)));
    let policy: &dyn Policy = match &view {
        Some(v) => v,
        None => &NoPolicy,
    };
    let opts = Options {
        taken: loaded
            .iter()
            .flat_map(|l| l.entry_ids.iter().cloned())
            .collect(),
        ..opts
    };
    let drafts = suggest::suggest(&observations, &opts, policy);
    let docs: Vec<(String, String)> = drafts
        .iter()
        .map(|d| (file_name(d), render::render(d)))
        .collect();
    let stream = render::stream(&drafts);
    self_check(&stream).runtime()?;
    match &a.output {
        Some(dir) => write_files(dir, &docs).user()?,
        None => print!("{stream}"),
    }
    let left = left_out(&observations, opts.exclude, policy);
    eprintln!(
        "{}",
        summary(
            drafts.len(),
            observations.len(),
            left,
            opts.exclude,
            &path,
            store.dropped()
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_utc_time() {
        let now = 1_796_332_500;
        assert_eq!(since("1h", now).unwrap(), now - 3600);
        assert_eq!(since("7d", now).unwrap(), now - 7 * 86_400);
        assert_eq!(since("2026-12-03T00:00:00Z", now).unwrap(), 1_796_256_000);
        let e = since("yesterday", now).unwrap_err().to_string();
        assert!(e.starts_with("--since:"), "{e}");
    }

    #[test]
    fn a_unit_holds_the_cgroups_below_it_the_deepest_first() {
        let units = vec![
            "system.slice/a.service".to_owned(),
            "system.slice".to_owned(),
        ];
        assert_eq!(
            unit_of(&units, "/system.slice/a.service/x"),
            Some(&units[0])
        );
        assert_eq!(unit_of(&units, "/system.slice/b.service"), Some(&units[1]));
        assert_eq!(unit_of(&units, "/system.slicey"), None);
    }
}
