//! Scoping in the daemon (docs/architecture.md, "Scoping"): each scoped rule gets its
//! visibility set, unit cgroups are mapped to their policy, and the table is recorded in
//! /run so that a restart keeps every id (and `inspect` can name them).

pub mod pods;
pub mod units;
pub mod watch;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use enforcer_common::PolicyBits;
use tracing::warn;

use crate::{
    config::Config,
    dataplane::{
        maps::Maps,
        policy_record::{self as record, Record},
    },
    policy::{
        rules::DesiredRules,
        visibility::{Interner, VsetPlan, intern},
    },
    scope::table::PolicyTable,
};

pub struct Scoping {
    interner: Interner,
    /// CGROUP_POLICY as last written; `None` after a failed write (then read back).
    mapped: Option<BTreeMap<u64, u32>>,
    mount: PathBuf,
    pin_root: PathBuf,
    watch: Vec<PathBuf>,
}

/// Where policies go: units by path, pods by UID under the enforced kubepods cgroups.
pub struct Placement<'a> {
    pub table: &'a PolicyTable,
    pub pods: &'a BTreeMap<String, pods::PodPolicy>,
    /// `(kubelet root, kubepods cgroup)`, relative to the mount; empty without pod scoping.
    pub kubepods: &'a [(String, String)],
}

/// Sets written for an apply in progress.
pub struct Staged {
    ids: HashMap<PolicyBits, u32>,
    plan: VsetPlan,
}

impl Scoping {
    /// Takes over the sets and mappings in the maps (a previous run's after a restart).
    pub fn start(maps: &Maps, cfg: &Config, mount: &Path, pin_root: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            interner: Interner::seeded(ranges(cfg).0, maps.visibility_sets()?),
            mapped: Some(maps.cgroup_policies()?),
            mount: mount.to_path_buf(),
            pin_root: pin_root.to_path_buf(),
            watch: Vec::new(),
        })
    }

    /// Gives every scoped rule of `desired` its set id, writing new sets now: before any rule
    /// names them.
    pub fn stage(&mut self, maps: &mut Maps, desired: &mut DesiredRules) -> anyhow::Result<Staged> {
        let (ids, plan) = intern(desired, &self.interner, &Default::default())?;
        self.interner.reserve(&plan);
        maps.write_sets(&plan.new)?;
        Ok(Staged { ids, plan })
    }

    /// After the rules: cgroups get their policies, then the sets no rule names are emptied.
    /// Returns how many mappings changed.
    pub fn finish(
        &mut self,
        maps: &mut Maps,
        staged: Staged,
        placement: &Placement<'_>,
    ) -> anyhow::Result<usize> {
        let changed = self.map_cgroups(maps, placement)?;
        maps.clear_sets(&staged.plan.freed)?;
        self.interner.commit(staged.ids);
        Ok(changed)
    }

    /// Maps each unit's and pod's cgroup that exists to its policy and forgets the ones that
    /// are gone; the kernel gives their descendants the same policy. Returns how many
    /// mappings changed, and the directories to watch for new ones.
    pub fn map_cgroups(
        &mut self,
        maps: &mut Maps,
        placement: &Placement<'_>,
    ) -> anyhow::Result<usize> {
        let (desired, names, watch) = self.desired(placement);
        let live = match self.mapped.take() {
            Some(m) => m,
            None => maps.cgroup_policies()?,
        };
        let changed = maps.sync_cgroup_policies(&live, &desired)?;
        self.record(placement.table, &desired, &names);
        self.mapped = Some(desired);
        self.watch = watch;
        Ok(changed)
    }

    /// Where new unit and pod cgroups appear, as of the last mapping.
    pub fn watch_targets(&self) -> &[PathBuf] {
        &self.watch
    }

    #[expect(clippy::type_complexity, reason = "three views of one scan")]
    fn desired(
        &self,
        p: &Placement<'_>,
    ) -> (
        BTreeMap<u64, u32>,
        BTreeMap<u64, (String, Option<String>)>,
        Vec<PathBuf>,
    ) {
        let mut mapped = units::present(&self.mount, p.table);
        let mut names: BTreeMap<u64, (String, Option<String>)> =
            units::paths_by_id(&self.mount, p.table)
                .into_iter()
                .map(|(id, path)| (id, (path, None)))
                .collect();
        let mut watch = units::targets(&self.mount, p.table);
        if !p.kubepods.is_empty() {
            let found = pods::scan(&self.mount, p.kubepods, p.pods);
            mapped.extend(found.mapped);
            names.extend(
                found
                    .names
                    .into_iter()
                    .map(|(id, (path, pod))| (id, (path, Some(pod)))),
            );
            watch.extend(found.watch);
        }
        watch.sort();
        watch.dedup();
        (mapped, names, watch)
    }

    fn record(
        &self,
        table: &PolicyTable,
        mapped: &BTreeMap<u64, u32>,
        names: &BTreeMap<u64, (String, Option<String>)>,
    ) {
        let rec = Record::new(table, mapped, names);
        if let Err(e) = record::write(&self.pin_root, &rec) {
            warn!("cannot record the policy ids for restarts and `inspect`: {e:#}");
        }
    }
}

/// The `VSETS` ids of the daemon's rules and of DNS-aware mode's learned rules, which the
/// proxy gives one at a time: halves of `maps.visibilitySets` in DNS-aware mode.
pub fn ranges(cfg: &Config) -> ((u32, u32), (u32, u32)) {
    let c = cfg.maps.visibility_sets;
    if cfg.dns.mode == crate::config::DnsMode::Proxy {
        ((1, c / 2), (c / 2, c))
    } else {
        ((1, c), (c, c))
    }
}

/// The policy ids a previous run recorded (none: a fresh table).
pub fn recorded(pin_root: &Path) -> PolicyTable {
    record::read(pin_root).map(|r| r.table).unwrap_or_default()
}
