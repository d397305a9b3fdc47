use std::path::Path;

use serde::Serialize;

use self::policies::PoliciesReport;
use super::{Failure, OrFailure as _};

#[path = "inspect_policies.rs"]
mod policies;
use crate::{
    cluster::status::ResourceReport,
    config::Config,
    dataplane::{
        links::{self, LinkRow},
        maps::{Maps, RuleRow},
        pins::PinLayout,
        protections::{self, Protections},
        stats::Stats,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    Rules,
    Stats,
    Links,
    /// Which ways out (raw, packet, ping sockets...) are closed.
    Protections,
    /// The Kubernetes API server source: sync state and refused objects.
    Cluster,
    /// Scoping: each policy (unit, namespace and Sidecar, default) and the cgroups mapped to it.
    Policies,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to show [default: all of them]
    pub what: Option<What>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Only the rules this policy may use (see `inspect policies`)
    #[arg(long, value_name = "ID")]
    pub policy: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Report {
    pin_dir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<Vec<RuleRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    links: Option<Vec<LinkRow>>,
    /// Links on the cgroup root (sockets from outside the enforced cgroups).
    #[serde(skip_serializing_if = "Option::is_none")]
    root_links: Option<Vec<LinkRow>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protections: Option<Protections>,
    /// Absent when the daemon does not watch an API server.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Vec<ResourceReport>>,
    /// Absent without scoping.
    #[serde(skip_serializing_if = "Option::is_none")]
    policies: Option<PoliciesReport>,
}

pub fn inspect(config: Option<&Path>, args: Args) -> Result<(), Failure> {
    let cfg = Config::load(config).user()?;
    let layout = PinLayout::new(&cfg.bpffs);
    let want = |w: What| args.what.is_none_or(|x| x == w);
    let maps = if want(What::Rules)
        || want(What::Stats)
        || want(What::Protections)
        || want(What::Policies)
    {
        Some(Maps::from_pins(&layout).runtime()?)
    } else {
        None
    };
    let kernel_cfg = match &maps {
        Some(m) => Some(m.read_config().runtime()?),
        None => None,
    };
    let mode = kernel_cfg.map(|c| match c.mode {
        enforcer_common::MODE_AUDIT => "audit",
        _ => "enforce",
    });
    let link_rows = (want(What::Links) || want(What::Protections)).then(|| links::list(&layout));
    let report = Report {
        pin_dir: layout.root.display().to_string(),
        mode,
        rules: match (&maps, want(What::Rules)) {
            (Some(m), true) => {
                let names = crate::dataplane::sources::read(&layout.root);
                let mut rows = m.rules().runtime()?;
                rows.extend(learned_rows(&layout).runtime()?);
                for r in &mut rows {
                    r.source = names.get(&r.rule_id).cloned();
                }
                policies::name_policies(m, &mut rows).runtime()?;
                if let Some(p) = args.policy {
                    rows.retain(|r| r.policies.as_ref().is_none_or(|ids| ids.contains(&p)));
                }
                Some(rows)
            }
            _ => None,
        },
        stats: match (&maps, want(What::Stats)) {
            (Some(m), true) => Some(m.stats().runtime()?),
            _ => None,
        },
        protections: match (&kernel_cfg, &link_rows, want(What::Protections)) {
            (Some(c), Some(rows), true) => Some(protections::describe(
                c.sockets,
                protections::lsm_from_links(rows),
            )),
            _ => None,
        },
        root_links: want(What::Links).then(|| links::list_host(&layout)),
        cluster: if want(What::Cluster) {
            cluster_status(&layout, args.what == Some(What::Cluster)).runtime()?
        } else {
            None
        },
        links: link_rows.filter(|_| want(What::Links)),
        policies: match (&maps, &kernel_cfg, want(What::Policies)) {
            (Some(m), Some(c), true) => {
                policies::report(&layout, m, c, args.what == Some(What::Policies)).runtime()?
            }
            _ => None,
        },
    };
    if args.json {
        let text = serde_json::to_string_pretty(&report).runtime()?;
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// The daemon's last word on the API server source. Asked for by name, a daemon that does
/// not watch one is an error; as part of everything, the section is left out.
fn cluster_status(layout: &PinLayout, asked: bool) -> anyhow::Result<Option<Vec<ResourceReport>>> {
    let path = crate::dataplane::sources::state_file(
        &layout.root,
        crate::dataplane::sources::CLUSTER_STATUS,
    );
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: unreadable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !asked => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "{}: {e} (is the daemon running with kubernetes.apiServer?)",
            path.display()
        )),
    }
}

/// DNS-aware mode's learned rules, with the names that allowed each address (from the
/// daemon's record) and the time left.
fn learned_rows(layout: &PinLayout) -> anyhow::Result<Vec<RuleRow>> {
    let now = crate::dnsproxy::kernel::monotonic_ns();
    let learned = Maps::learned_rules(layout, now)?;
    if learned.is_empty() {
        return Ok(Vec::new());
    }
    let record = crate::dnsproxy::journal::read(&crate::dataplane::sources::state_file(
        &layout.root,
        crate::dataplane::sources::LEARNED,
    ));
    let mut by_addr: std::collections::HashMap<std::net::IpAddr, Vec<String>> =
        std::collections::HashMap::new();
    for (name, addrs) in record {
        for (ip, _) in addrs {
            by_addr.entry(ip).or_default().push(name.clone());
        }
    }
    Ok(learned
        .into_iter()
        .map(|(k, v)| {
            let spec = crate::policy::rules::describe(None, &k);
            let mut names = by_addr.get(&spec.net.addr).cloned().unwrap_or_default();
            names.sort();
            RuleRow {
                rule: spec.to_string(),
                kind: "learned",
                rule_id: v.rule_id,
                source: None,
                names,
                expires_in_secs: Some(v.expires_ns.saturating_sub(now) / 1_000_000_000),
                policies: None,
                vset: v.vset,
            }
        })
        .collect())
}

fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "pin dir: {}", r.pin_dir);
    if let Some(mode) = r.mode {
        let _ = writeln!(out, "mode:    {mode}");
    }
    if let Some(rules) = &r.rules {
        let _ = writeln!(out, "\nrules ({}):", rules.len());
        let _ = writeln!(
            out,
            "  {:<44} {:<7} {:>8}  SOURCE",
            "DESTINATION", "KIND", "RULE ID"
        );
        for row in rules {
            let mut learned = match row.expires_in_secs {
                Some(s) => format!(" (names: {}; {s}s left)", row.names.join(", ")),
                None => String::new(),
            };
            if let Some(ids) = &row.policies {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                let _ = write!(learned, " [policies {}]", ids.join(","));
            }
            let _ = writeln!(
                out,
                "  {:<44} {:<7} {:>8}  {}{learned}",
                row.rule,
                row.kind,
                row.rule_id,
                row.source.as_deref().unwrap_or("-")
            );
        }
    }
    if let Some(stats) = &r.stats {
        let _ = writeln!(out, "\nverdicts:");
        let _ = writeln!(
            out,
            "  {:<16} {:<6} {:<15} {:>12}",
            "HOOK", "PROTO", "VERDICT", "COUNT"
        );
        for c in &stats.counters {
            let _ = writeln!(
                out,
                "  {:<16} {:<6} {:<15} {:>12}",
                c.hook, c.proto, c.verdict, c.count
            );
        }
        let _ = writeln!(
            out,
            "  events dropped (ring buffer full): {}",
            stats.events_dropped
        );
    }
    if let Some(p) = &r.protections {
        let _ = writeln!(out, "\nprotections:");
        for (what, how) in [
            ("raw sockets", &p.raw_sockets),
            ("packet sockets", &p.packet_sockets),
            ("ping", &p.ping),
            ("other protocols", &p.other_protocols),
            ("outside sockets", &p.outside_sockets),
        ] {
            let _ = writeln!(out, "  {what:<16} {how}");
        }
    }
    if let Some(c) = &r.cluster {
        render_cluster(&mut out, c);
    }
    if let Some(p) = &r.policies {
        policies::render(&mut out, p);
    }
    let all_links = r.links.as_ref().map(|l| {
        let mut all = l.clone();
        all.extend(r.root_links.iter().flatten().cloned());
        all
    });
    if let Some(links) = &all_links {
        let _ = writeln!(out, "\nlinks ({}):", links.len());
        let _ = writeln!(
            out,
            "  {:<36} {:<16} {:>8} {:>8} {:>14} {:>12} {:>10}",
            "CGROUP", "HOOK", "LINK", "PROGRAM", "VERIFIED INSNS", "RUNS", "NS/RUN"
        );
        let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for l in links {
            // Run statistics exist only while kernel.bpf_stats_enabled is on.
            let per_run = match (l.run_count, l.run_time_ns) {
                (Some(n), Some(t)) if n > 0 => format!("{:.1}", t as f64 / n as f64),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<36} {:<16} {:>8} {:>8} {:>14} {:>12} {:>10}{}",
                l.cgroup,
                l.hook,
                opt(l.link_id),
                opt(l.program_id),
                opt(l.verified_insns),
                l.run_count
                    .map_or_else(|| "-".to_owned(), |v| v.to_string()),
                per_run,
                l.error
                    .as_deref()
                    .map(|e| format!("  error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    out
}

fn render_cluster(out: &mut String, resources: &[ResourceReport]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "\nAPI server:");
    for r in resources {
        let state = match (&r.last_error, r.synced) {
            (None, true) => "in sync".to_owned(),
            (None, false) => "not listed yet".to_owned(),
            (Some(e), _) => format!(
                "OUT OF SYNC for {:.0} s (the last policy stays in force): {e}",
                r.sync_age_seconds
            ),
        };
        let _ = writeln!(
            out,
            "  {:<16} {:<9} {} objects, {} refused; {state}",
            r.resource,
            r.version.as_deref().unwrap_or("-"),
            r.objects,
            r.rejected.len()
        );
        for x in &r.rejected {
            let older = if x.older_in_force {
                "an older version stays in force"
            } else {
                "nothing of it is in force"
            };
            let _ = writeln!(
                out,
                "    refused {} (resourceVersion {}; {older}): {}",
                x.object,
                x.rejected.resource_version,
                x.rejected.errors.join("; ")
            );
        }
    }
}
