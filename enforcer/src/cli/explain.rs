//! `egress-enforcer explain DEST [--pod NS/NAME | --cgroup PATH]`: why a destination is
//! allowed or denied to a workload, read from the live maps the way the kernel decides
//! (`policy::decide`), with the rules that would allow it and why they do not apply.

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use anyhow::Context as _;
use enforcer_common::{POLICY_UNMAPPED, PolicyBits, RULE_KEY_FIXED_BITS, RuleKey, VSET_EVERYONE};
use serde::Serialize;

use super::{Failure, OrFailure as _};
use crate::{
    config::Config,
    dataplane::{cgroup, maps::Maps, pins::PinLayout, policy_record, sources},
    policy::{
        allow_spec::AllowSpec,
        decide::{Hit, Lookup, Stage, caller_policy, decide},
        rules::describe,
    },
    scope::{export::ExportTo, table::Subject},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The destination: ADDR:PORT[/tcp|udp] (one address, one port)
    pub destination: AllowSpec,
    /// The workload: a pod on this node
    #[arg(long, value_name = "NS/NAME", conflicts_with = "cgroup")]
    pub pod: Option<String>,
    /// The workload: a cgroup (relative to the cgroup2 mount)
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Explanation {
    destination: String,
    caller: String,
    policy: u32,
    policy_subject: String,
    allowed: bool,
    /// Why, in one line.
    verdict: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<RuleInfo>,
    /// Rules for this destination the caller may not use, with the reason.
    not_for_caller: Vec<RuleInfo>,
    /// Rules for this address on other ports or protocols.
    other_ports: Vec<RuleInfo>,
}

#[derive(Debug, Serialize)]
struct RuleInfo {
    rule: String,
    kind: &'static str,
    rule_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    /// The policies that may use it; absent: every policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    policies: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why_not: Option<String>,
}

/// The maps read once, looked up like the kernel does.
struct Live {
    exact: HashMap<RuleKey, (u32, u32)>,
    learned: HashMap<RuleKey, (u32, u32)>,
    prefix: Vec<(u32, RuleKey, u32, u32)>,
    sets: BTreeMap<u32, PolicyBits>,
}

impl Lookup for Live {
    fn exact(&self, key: &RuleKey) -> Option<(u32, u32)> {
        self.exact.get(key).copied()
    }

    fn learned(&self, key: &RuleKey) -> Option<(u32, u32)> {
        self.learned.get(key).copied()
    }

    fn prefix(&self, key: &RuleKey) -> Option<(u32, RuleKey, u32, u32)> {
        self.prefix
            .iter()
            .filter(|(len, k, _, _)| {
                k.port == key.port && k.proto == key.proto && covers(*len, &k.addr, &key.addr)
            })
            .max_by_key(|(len, ..)| *len)
            .copied()
    }
}

fn covers(len: u32, net: &[u8; 16], addr: &[u8; 16]) -> bool {
    let bits = len.saturating_sub(RULE_KEY_FIXED_BITS).min(128);
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    u128::from_be_bytes(*net) == u128::from_be_bytes(*addr) & mask
}

impl Live {
    fn read(maps: &Maps, layout: &PinLayout) -> anyhow::Result<Self> {
        let now = crate::dnsproxy::kernel::monotonic_ns();
        Ok(Self {
            exact: maps
                .exact_entries()?
                .into_iter()
                .map(|(k, v)| (k, (v.rule_id, v.vset)))
                .collect(),
            learned: Maps::learned_rules(layout, now)?
                .into_iter()
                .map(|(k, v)| (k, (v.rule_id, v.vset)))
                .collect(),
            prefix: maps
                .prefix_entries()?
                .into_iter()
                .map(|((l, k), v)| (l, k, v.rule_id, v.vset))
                .collect(),
            sets: maps.visibility_sets()?.into_iter().collect(),
        })
    }

    fn sees(&self, policy: u32, vset: u32) -> bool {
        if vset == VSET_EVERYONE {
            return true;
        }
        self.sets.get(&vset).is_some_and(|bits| {
            policy < enforcer_common::MAX_POLICIES
                && bits[(policy / 64) as usize] >> (policy % 64) & 1 == 1
        })
    }

    fn members(&self, vset: u32) -> Option<Vec<u32>> {
        (vset != VSET_EVERYONE).then(|| {
            let bits = self.sets.get(&vset).copied().unwrap_or_default();
            (0..enforcer_common::MAX_POLICIES)
                .filter(|p| bits[(p / 64) as usize] >> (p % 64) & 1 == 1)
                .collect()
        })
    }
}

pub fn explain(config: Option<&Path>, args: Args) -> Result<(), Failure> {
    let cfg = Config::load(config).user()?;
    let dest = args.destination;
    if dest.port == 0 || !dest.net.is_host() {
        return Err(anyhow::anyhow!(
            "{dest}: explain one address and one port (e.g. 198.51.100.7:443/tcp)"
        ))
        .user();
    }
    let layout = PinLayout::new(&cfg.bpffs);
    let maps = Maps::from_pins(&layout).runtime()?;
    let kernel = maps.read_config().runtime()?;
    let record = policy_record::read(&layout.root).unwrap_or_default();
    let mapped = maps.cgroup_policies().runtime()?;
    let (caller, policy) = match (&args.pod, &args.cgroup) {
        (Some(pod), _) => {
            let m = record
                .cgroups
                .iter()
                .find(|m| m.pod.as_deref() == Some(pod.as_str()))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "pod {pod}: no cgroup of it is mapped on this node (not scheduled \
                         here, not started yet, or kubernetes.pods is off); it would get the \
                         default policy"
                    )
                })
                .user()?;
            (format!("pod {pod}"), m.policy)
        }
        (None, Some(c)) => {
            let mount = cgroup::cgroup2_mount().runtime()?;
            let rel = cgroup::Cgroup::resolve(&mount, c)
                .with_context(|| "--cgroup".to_owned())
                .user()?
                .relative;
            let (own, ancestors) = ids_of(&mount, &rel).user()?;
            let p = caller_policy(
                own,
                &ancestors,
                |id| mapped.get(&id).copied(),
                kernel.default_policy,
            );
            (format!("cgroup {rel}"), p)
        }
        (None, None) => (
            "an enforced cgroup in no unit and no pod".to_owned(),
            kernel.default_policy,
        ),
    };
    let subject = subject_name(&record.table, policy);
    let live = Live::read(&maps, &layout).runtime()?;
    let names = sources::read(&layout.root);
    let key = crate::dnsproxy::learned::rule_key(dest.net.addr, dest.port, dest.proto.number());
    let learned_on = kernel.dns & enforcer_common::DNS_REDIRECT != 0;
    // As the kernel: without scoping, no policy is looked up and scoped rules are no one's.
    let effective = if kernel.skip & enforcer_common::SKIP_SCOPING != 0 {
        POLICY_UNMAPPED
    } else {
        policy
    };
    let (allowed, seen) = decide(&live, key, kernel.skip, learned_on, |v| {
        live.sees(effective, v)
    });
    let info = |h: &Hit| RuleInfo {
        rule: describe(h.prefix_len, &h.key).to_string(),
        kind: stage_name(h.stage),
        rule_id: h.rule_id,
        source: names.get(&h.rule_id).cloned(),
        policies: live.members(h.vset),
        why_not: None,
    };
    let mut not_for_caller: Vec<RuleInfo> = seen
        .iter()
        .filter(|h| Some(**h) != allowed)
        .map(|h| {
            let mut i = info(h);
            i.why_not = Some(why_not(
                &cfg,
                &layout,
                &record.table,
                policy,
                i.source.as_deref(),
            ));
            i
        })
        .collect();
    not_for_caller.sort_by(|a, b| a.rule.cmp(&b.rule));
    let loopback = dest.net.addr.is_loopback() && kernel.allow_loopback != 0;
    let audit = kernel.mode == enforcer_common::MODE_AUDIT;
    let verdict = match (&allowed, loopback, audit) {
        (_, true, _) => "allowed: loopback (allow.loopback)".to_owned(),
        (Some(h), ..) => format!(
            "allowed by the {} rule {}",
            stage_name(h.stage),
            describe(h.prefix_len, &h.key)
        ),
        (None, _, true) => "denied by the policy, but allowed and logged: audit mode".to_owned(),
        (None, _, false) => {
            "denied (EPERM): no rule for this destination that the caller may use".to_owned()
        }
    };
    let e = Explanation {
        destination: dest.to_string(),
        caller,
        policy,
        policy_subject: subject,
        allowed: allowed.is_some() || loopback || audit,
        verdict,
        rule: allowed.as_ref().map(info),
        not_for_caller,
        other_ports: other_ports(&live, &key, &names),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e).runtime()?);
    } else {
        print!("{}", render(&e));
    }
    Ok(())
}

/// A cgroup's id and its ancestors' (from the hierarchy's first level down to its parent).
fn ids_of(mount: &Path, rel: &str) -> anyhow::Result<(u64, Vec<u64>)> {
    let stat = |p: &Path| -> anyhow::Result<u64> {
        Ok(std::fs::metadata(p)
            .map_err(|e| anyhow::anyhow!("cgroup {}: {e}", p.display()))?
            .ino())
    };
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let mut ancestors = Vec::new();
    for i in 1..parts.len() {
        ancestors.push(stat(&mount.join(parts[..i].join("/")))?);
    }
    Ok((stat(&mount.join(rel))?, ancestors))
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Exact => "exact",
        Stage::Learned => "learned",
        Stage::Prefix => "prefix",
        Stage::ExactAnyPort => "exact any-port",
        Stage::PrefixAnyPort => "prefix any-port",
    }
}

fn subject_name(table: &crate::scope::table::PolicyTable, policy: u32) -> String {
    if policy == POLICY_UNMAPPED {
        return "none: only the rules that are everyone's (allow.*, --allow, DNS servers, the API server)".to_owned();
    }
    table.policies.iter().find(|a| a.id == policy).map_or_else(
        || format!("policy {policy} (not in the daemon's record)"),
        |a| a.subject.to_string(),
    )
}

/// Rules at the destination's address for other ports or protocols (exact rules only: a
/// network rule is about many addresses).
fn other_ports(live: &Live, key: &RuleKey, names: &BTreeMap<u32, String>) -> Vec<RuleInfo> {
    let mut out: Vec<RuleInfo> = live
        .exact
        .iter()
        .filter(|(k, _)| {
            k.addr == key.addr && (k.port != key.port || k.proto != key.proto) && k.port != 0
        })
        .map(|(k, (id, vset))| RuleInfo {
            rule: describe(None, k).to_string(),
            kind: "exact",
            rule_id: *id,
            source: names.get(id).cloned(),
            policies: live.members(*vset),
            why_not: Some("another port or protocol".to_owned()),
        })
        .collect();
    out.sort_by(|a, b| a.rule.cmp(&b.rule));
    out
}

/// Why a rule's ServiceEntry is not for the caller's policy.
fn why_not(
    cfg: &Config,
    layout: &PinLayout,
    table: &crate::scope::table::PolicyTable,
    policy: u32,
    source: Option<&str>,
) -> String {
    let Some(subject) = table
        .policies
        .iter()
        .find(|a| a.id == policy)
        .map(|a| &a.subject)
    else {
        return "the caller has no policy (policies.default: deny, or not placed yet): only rules for everyone apply".to_owned();
    };
    let entry = source
        .and_then(|s| s.strip_prefix("ServiceEntry "))
        .and_then(|s| s.split(' ').next())
        .and_then(|id| find_entry(cfg, layout, id));
    match (subject, entry) {
        (Subject::Workload(k), Some(e)) => {
            let export = ExportTo::of(&e.entry.spec.export_to, &cfg.policies.default_export_to);
            let entry_ns = e.entry.metadata.namespace();
            if !export.visible_to(entry_ns, &k.namespace) {
                format!(
                    "exportTo {:?} (empty: the mesh default {:?}) does not include namespace {}",
                    e.entry.spec.export_to, cfg.policies.default_export_to, k.namespace
                )
            } else if let Some(sc) = &k.sidecar {
                format!(
                    "Sidecar {sc} does not import its hosts {:?}",
                    e.entry.spec.hosts
                )
            } else {
                "another namespace's entry for the same host is the one this namespace sees"
                    .to_owned()
            }
        }
        (Subject::Unit(c), _) => format!(
            "not exported to the namespaces of unit {c}, nor in its own serviceEntries paths"
        ),
        (Subject::Default, _) => "only in a unit's own serviceEntries paths".to_owned(),
        (Subject::Workload(k), None) => {
            format!("not visible to namespace {} and its Sidecar", k.namespace)
        }
    }
}

/// A ServiceEntry by `namespace/name`, from the config's files or the API server's record.
fn find_entry(cfg: &Config, layout: &PinLayout, id: &str) -> Option<crate::serviceentry::Loaded> {
    let from_api = crate::cluster::record::read(&layout.root);
    if let Some(e) = from_api.entries.iter().find(|e| e.id() == id) {
        return Some(e.clone());
    }
    let files = crate::serviceentry::load_paths(&cfg.all_entry_paths(), cfg.limits.max_file_bytes);
    files.entries.into_iter().find(|e| e.id() == id)
}

fn render(e: &Explanation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "{} from {}", e.destination, e.caller);
    let _ = writeln!(out, "  policy:  {} ({})", e.policy, e.policy_subject);
    let _ = writeln!(out, "  verdict: {}", e.verdict);
    let line = |out: &mut String, r: &RuleInfo| {
        let who = r.policies.as_ref().map_or_else(
            || "everyone".to_owned(),
            |p| {
                format!(
                    "policies {}",
                    p.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                )
            },
        );
        let _ = writeln!(
            out,
            "    {} ({} rule {}; {}; {who})",
            r.rule,
            r.kind,
            r.rule_id,
            r.source.as_deref().unwrap_or("source unknown")
        );
        if let Some(w) = &r.why_not {
            let _ = writeln!(out, "      not for this caller: {w}");
        }
    };
    if let Some(r) = &e.rule {
        let _ = writeln!(out, "  rule:");
        line(&mut out, r);
    }
    if !e.not_for_caller.is_empty() {
        let _ = writeln!(out, "  rules for this destination, not for this caller:");
        for r in &e.not_for_caller {
            line(&mut out, r);
        }
    }
    if !e.other_ports.is_empty() {
        let _ = writeln!(out, "  rules for this address on other ports or protocols:");
        for r in &e.other_ports {
            line(&mut out, r);
        }
    }
    out
}
