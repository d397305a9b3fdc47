//! `inspect policies`: each policy id with whose view it is and how many rules it may use,
//! and each cgroup mapped to a policy (docs/architecture.md, "Scoping").

use std::collections::BTreeMap;

use enforcer_common::{POLICY_UNMAPPED, PolicyBits};
use serde::Serialize;

use crate::dataplane::{
    maps::{Maps, RuleRow},
    pins::PinLayout,
    policy_record,
};

#[derive(Debug, Serialize)]
pub struct PoliciesReport {
    /// The policy of an enforced cgroup that no mapping covers (0: none, only the rules
    /// that are everyone's).
    default_policy: u32,
    policies: Vec<PolicyRow>,
    cgroups: Vec<CgroupRow>,
}

#[derive(Debug, Serialize)]
struct PolicyRow {
    id: u32,
    subject: String,
    /// Kernel rules this policy may use (learned ones included).
    rules: usize,
}

#[derive(Debug, Serialize)]
struct CgroupRow {
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    policy: u32,
}

fn members(bits: &PolicyBits) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, word) in (0u32..).zip(bits) {
        for b in 0..64 {
            if word >> b & 1 == 1 {
                out.push(w * 64 + b);
            }
        }
    }
    out
}

/// Fills in who may use each scoped rule, from `VSETS`.
pub fn name_policies(maps: &Maps, rows: &mut [RuleRow]) -> anyhow::Result<()> {
    if rows.iter().all(|r| r.vset == 0) {
        return Ok(());
    }
    let sets: BTreeMap<u32, PolicyBits> = maps.visibility_sets()?.into_iter().collect();
    for r in rows.iter_mut().filter(|r| r.vset != 0) {
        r.policies = Some(sets.get(&r.vset).map(members).unwrap_or_default());
    }
    Ok(())
}

/// `None` without scoping, unless asked for by name (then an empty report says so).
pub fn report(
    layout: &PinLayout,
    maps: &Maps,
    kernel: &enforcer_common::Config,
    asked: bool,
) -> anyhow::Result<Option<PoliciesReport>> {
    let record = policy_record::read(&layout.root).unwrap_or_default();
    let live = maps.cgroup_policies()?;
    if record.table.is_empty() && live.is_empty() && !asked {
        return Ok(None);
    }
    let mut rows = maps.rules()?;
    name_policies(maps, &mut rows)?;
    let paths: BTreeMap<u64, String> = record
        .cgroups
        .iter()
        .filter_map(|m| Some((m.cgroup_id, m.path.clone()?)))
        .collect();
    let policies = record
        .table
        .policies
        .iter()
        .map(|a| PolicyRow {
            id: a.id,
            subject: a.subject.to_string(),
            rules: rows
                .iter()
                .filter(|r| r.policies.as_ref().is_none_or(|p| p.contains(&a.id)))
                .count(),
        })
        .collect();
    Ok(Some(PoliciesReport {
        default_policy: kernel.default_policy,
        policies,
        cgroups: live
            .into_iter()
            .map(|(id, policy)| CgroupRow {
                cgroup_id: id,
                path: paths.get(&id).cloned(),
                policy,
            })
            .collect(),
    }))
}

pub fn render(out: &mut String, r: &PoliciesReport) {
    use std::fmt::Write as _;
    let default = if r.default_policy == POLICY_UNMAPPED {
        "none (only rules for everyone)".to_owned()
    } else {
        r.default_policy.to_string()
    };
    let _ = writeln!(
        out,
        "\npolicies ({}; default: {default}):",
        r.policies.len()
    );
    let _ = writeln!(out, "  {:>6} {:>8}  SUBJECT", "ID", "RULES");
    for p in &r.policies {
        let _ = writeln!(out, "  {:>6} {:>8}  {}", p.id, p.rules, p.subject);
    }
    let _ = writeln!(out, "\nmapped cgroups ({}):", r.cgroups.len());
    let _ = writeln!(out, "  {:>12} {:>6}  PATH", "CGROUP ID", "POLICY");
    for c in &r.cgroups {
        let _ = writeln!(
            out,
            "  {:>12} {:>6}  {}",
            c.cgroup_id,
            c.policy,
            c.path.as_deref().unwrap_or("-")
        );
    }
}
