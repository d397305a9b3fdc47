//! Policies: what a workload may use, as Istio scopes it. A workload's view depends on its
//! namespace (`exportTo`) and the Sidecar that applies to it (`egress[].hosts`); workloads
//! with the same view share a policy id (docs/kubernetes.md, "Policies").

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{export::ExportTo, select::Sidecars};
use crate::serviceentry::Loaded;

/// What decides a workload's view.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
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
        }
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
            if !loaded.is_valid() {
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
            out.extend(
                refs.iter()
                    .filter(|(_, mine)| *mine || !own)
                    .map(|(r, _)| *r),
            );
        }
        out
    }
}

/// Policy ids for a set of keys: one id per distinct view.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub ids: BTreeMap<PolicyKey, u32>,
    /// The view of each id, at `id - FIRST`.
    pub views: Vec<BTreeSet<HostRef>>,
}

impl Policies {
    /// Ids below this are reserved (0: unmapped, denied everything a ServiceEntry allows).
    pub const FIRST: u32 = 1;

    pub fn assign(scope: &Scope<'_>, keys: impl IntoIterator<Item = PolicyKey>) -> Self {
        let mut p = Self::default();
        let mut by_view: BTreeMap<BTreeSet<HostRef>, u32> = BTreeMap::new();
        for key in keys {
            if p.ids.contains_key(&key) {
                continue;
            }
            let view = scope.visible(&key);
            let next = Self::FIRST + p.views.len() as u32;
            let id = *by_view.entry(view.clone()).or_insert_with(|| {
                p.views.push(view);
                next
            });
            p.ids.insert(key, id);
        }
        p
    }

    /// The policies whose view includes `r`.
    pub fn using(&self, r: HostRef) -> impl Iterator<Item = u32> + '_ {
        self.views
            .iter()
            .enumerate()
            .filter(move |(_, v)| v.contains(&r))
            .map(|(i, _)| Self::FIRST + i as u32)
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
