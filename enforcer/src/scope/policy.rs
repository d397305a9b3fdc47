//! Policies: what a workload may use, as Istio scopes it. A workload's view depends on its
//! namespace (`exportTo`) and the Sidecar that applies to it (`egress[].hosts`); workloads
//! with the same view share a policy id (docs/kubernetes.md, "Policies").

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

use super::{export::ExportTo, select::Sidecars, table::Subject};
use crate::serviceentry::Loaded;

/// What decides a workload's view.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    pub namespace: String,
    /// The Sidecar that applies (`namespace/name`), if any.
    pub sidecar: Option<String>,
}

/// One host of one entry: indices into the entries and into its `spec.hosts`.
pub type HostRef = (usize, usize);

/// The entries and Sidecars a set of views is computed from.
pub struct Scope<'a> {
    entries: &'a [Loaded],
    exports: Vec<ExportTo>,
    sidecars: &'a Sidecars,
    /// Per entry: from `serviceEntries` or the API server (seen by namespace), not only from
    /// units' own paths.
    shared: Vec<bool>,
    /// Per entry: the units whose own paths hold it.
    claimed_by: Vec<BTreeSet<String>>,
    /// Unit cgroup → the namespaces whose exported entries it sees.
    units: BTreeMap<String, Vec<String>>,
}

/// A host unit as scoping sees it.
pub struct UnitScope {
    pub cgroup: String,
    pub namespaces: Vec<String>,
    pub paths: Vec<PathBuf>,
}

impl<'a> Scope<'a> {
    /// `default_export`: the mesh default for entries without `exportTo`.
    pub fn new(entries: &'a [Loaded], default_export: &[String], sidecars: &'a Sidecars) -> Self {
        let exports = entries
            .iter()
            .map(|e| ExportTo::of(&e.entry.spec.export_to, default_export))
            .collect();
        Self {
            entries,
            exports,
            sidecars,
            shared: vec![true; entries.len()],
            claimed_by: vec![BTreeSet::new(); entries.len()],
            units: BTreeMap::new(),
        }
    }

    /// With host units: `shared` tells, per entry, whether it comes from `serviceEntries` or
    /// the API server; a unit's own paths give it their entries whatever their `exportTo`.
    pub fn with_units(mut self, units: &[UnitScope], shared: Vec<bool>) -> Self {
        self.shared = shared;
        self.shared.resize(self.entries.len(), true);
        for (i, e) in self.entries.iter().enumerate() {
            for u in units {
                if u.paths.iter().any(|p| e.origin.file.starts_with(p)) {
                    self.claimed_by[i].insert(u.cgroup.clone());
                }
            }
        }
        self.units = units
            .iter()
            .map(|u| (u.cgroup.clone(), u.namespaces.clone()))
            .collect();
        self
    }

    pub fn entries(&self) -> &[Loaded] {
        self.entries
    }

    /// Every host a subject may use.
    pub fn visible_to(&self, subject: &Subject) -> BTreeSet<HostRef> {
        match subject {
            Subject::Default => self
                .valid()
                .filter(|i| self.shared[*i])
                .flat_map(|i| self.hosts_of(i))
                .collect(),
            Subject::Workload(key) => self.visible(key),
            Subject::Unit(cgroup) => {
                let mut out: BTreeSet<HostRef> = self
                    .valid()
                    .filter(|i| self.claimed_by[*i].contains(cgroup))
                    .flat_map(|i| self.hosts_of(i))
                    .collect();
                for ns in self.units.get(cgroup).into_iter().flatten() {
                    out.extend(self.visible(&PolicyKey {
                        namespace: ns.clone(),
                        sidecar: None,
                    }));
                }
                out
            }
        }
    }

    fn valid(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.entries.len()).filter(|i| self.entries[*i].is_valid())
    }

    fn hosts_of(&self, i: usize) -> impl Iterator<Item = HostRef> + '_ {
        (0..self.entries[i].entry.spec.hosts.len()).map(move |j| (i, j))
    }

    /// The key of a workload in `namespace` with `labels`.
    pub fn key(&self, namespace: &str, labels: &BTreeMap<String, String>) -> PolicyKey {
        PolicyKey {
            namespace: namespace.to_owned(),
            sidecar: self
                .sidecars
                .for_workload(namespace, labels)
                .map(super::sidecar::Sidecar::id),
        }
    }

    /// Every host the view of `key` may use: exported to its namespace and imported by its
    /// Sidecar. A host imported from several namespaces is taken from the workload's own
    /// namespace when it is among them (as Istio does); otherwise from all of them.
    pub fn visible(&self, key: &PolicyKey) -> BTreeSet<HostRef> {
        let sidecar = match &key.sidecar {
            None => None,
            Some(id) => match self.sidecars.all().find(|s| &s.id() == id) {
                Some(s) => Some(s),
                // A key naming a Sidecar that is gone sees nothing, not everything.
                None => return BTreeSet::new(),
            },
        };
        let ns = key.namespace.as_str();
        let mut by_host: BTreeMap<&str, Vec<(HostRef, bool)>> = BTreeMap::new();
        for (i, loaded) in self.entries.iter().enumerate() {
            if !loaded.is_valid() || !self.shared[i] {
                continue;
            }
            let entry_ns = loaded.entry.metadata.namespace();
            if !self.exports[i].visible_to(entry_ns, ns) {
                continue;
            }
            for (j, host) in loaded.entry.spec.hosts.iter().enumerate() {
                if sidecar.is_none_or(|s| s.imports(ns, entry_ns, host)) {
                    by_host
                        .entry(host.as_str())
                        .or_default()
                        .push(((i, j), entry_ns == ns));
                }
            }
        }
        let mut out = BTreeSet::new();
        for refs in by_host.values() {
            let own = refs.iter().any(|(_, mine)| *mine);
            // Not the workload's own: Istio keeps one namespace's, the oldest entry's (by
            // creation time, then name, then namespace), so that a newer entry elsewhere
            // cannot take the host over.
            let keep_ns = if own {
                ns
            } else {
                refs.iter()
                    .map(|((i, _), _)| &self.entries[*i].entry.metadata)
                    .min_by(|a, b| {
                        (a.created.as_deref().unwrap_or(""), &a.name, a.namespace()).cmp(&(
                            b.created.as_deref().unwrap_or(""),
                            &b.name,
                            b.namespace(),
                        ))
                    })
                    .map_or(ns, |m| m.namespace())
            };
            out.extend(
                refs.iter()
                    .filter(|((i, _), _)| self.entries[*i].entry.metadata.namespace() == keep_ns)
                    .map(|(r, _)| *r),
            );
        }
        out
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
