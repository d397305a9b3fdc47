//! Policy ids: one per subject (a host unit, the default, a namespace and Sidecar of pods),
//! stable across applies and restarts, and who may use each ServiceEntry host under them
//! (docs/architecture.md, "Scoping"). Pure.

use std::collections::{BTreeMap, BTreeSet};

use enforcer_common::MAX_POLICIES;
use serde::{Deserialize, Serialize};

use super::policy::{PolicyKey, Scope};
use crate::policy::visibility::{EntryScope, Visibility};

/// Whose view a policy is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// Enforced cgroups in no unit, with `policies.default: all`.
    Default,
    /// A host unit, by its cgroup (relative to the cgroup2 mount).
    Unit(String),
    /// Pods with this namespace and Sidecar.
    Workload(PolicyKey),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => write!(f, "default"),
            Self::Unit(c) => write!(f, "unit {c}"),
            Self::Workload(k) => match &k.sidecar {
                Some(s) => write!(f, "namespace {} with Sidecar {s}", k.namespace),
                None => write!(f, "namespace {}", k.namespace),
            },
        }
    }
}

/// One policy id per subject.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyTable {
    pub policies: Vec<Assigned>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub subject: Subject,
    pub id: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{wanted} policies (units, namespaces and Sidecars in use) do not fit: at most {}", MAX_POLICIES - 1)]
pub struct TooManyPolicies {
    pub wanted: usize,
}

impl PolicyTable {
    /// Ids for `subjects`: each keeps the id it had in `previous`; a new one takes the lowest
    /// id that `previous` did not use either, so that a cgroup still mapped to a gone
    /// subject's id never sees a newcomer's rules through it. Id 0 is the unmapped caller's.
    pub fn assign(
        previous: &Self,
        subjects: impl IntoIterator<Item = Subject>,
    ) -> Result<Self, TooManyPolicies> {
        let old: BTreeMap<&Subject, u32> = previous
            .policies
            .iter()
            .map(|a| (&a.subject, a.id))
            .collect();
        let wanted: BTreeSet<Subject> = subjects.into_iter().collect();
        let taken: BTreeSet<u32> = previous.policies.iter().map(|a| a.id).collect();
        let mut policies = Vec::with_capacity(wanted.len());
        let mut fresh = Vec::new();
        for s in wanted {
            match old.get(&s) {
                Some(id) => policies.push(Assigned {
                    subject: s,
                    id: *id,
                }),
                None => fresh.push(s),
            }
        }
        let mut free = (1..MAX_POLICIES).filter(|id| !taken.contains(id));
        for s in fresh {
            let id = free.next().ok_or(TooManyPolicies {
                wanted: policies.len() + 1,
            })?;
            policies.push(Assigned { subject: s, id });
        }
        policies.sort_by_key(|a| a.id);
        Ok(Self { policies })
    }

    pub fn id(&self, s: &Subject) -> Option<u32> {
        self.policies.iter().find(|a| &a.subject == s).map(|a| a.id)
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Who may use each host of each entry (indices as in the scope's entries). A host every
    /// policy may use, the default's included, is everyone's: such rules cost the kernel no
    /// policy lookup.
    pub fn entry_scopes(&self, scope: &Scope<'_>) -> Vec<EntryScope> {
        let mut out: Vec<EntryScope> = scope
            .entries()
            .iter()
            .map(|e| EntryScope {
                entry: Visibility::Only(BTreeSet::new()),
                hosts: vec![Visibility::Only(BTreeSet::new()); e.entry.spec.hosts.len()],
            })
            .collect();
        for a in &self.policies {
            for (i, j) in scope.visible_to(&a.subject) {
                if let Some(Visibility::Only(ids)) = out.get_mut(i).and_then(|e| e.hosts.get_mut(j))
                {
                    ids.insert(a.id);
                }
            }
        }
        let everyone = self.id(&Subject::Default).is_some();
        let all = self.policies.len();
        for e in &mut out {
            for h in &mut e.hosts {
                if everyone && matches!(h, Visibility::Only(ids) if ids.len() == all) {
                    *h = Visibility::Everyone;
                }
            }
            e.entry = e
                .hosts
                .iter()
                .fold(Visibility::Only(BTreeSet::new()), |acc, h| acc.union(h));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(c: &str) -> Subject {
        Subject::Unit(c.to_owned())
    }

    #[test]
    fn ids_stay_with_their_subject_and_are_not_reused_at_once() {
        let t1 = PolicyTable::assign(&PolicyTable::default(), [unit("a"), unit("b")]).unwrap();
        assert_eq!((t1.id(&unit("a")), t1.id(&unit("b"))), (Some(1), Some(2)));
        // b goes, c comes: c does not take b's id while a cgroup may still be mapped to it.
        let t2 = PolicyTable::assign(&t1, [unit("c"), unit("a")]).unwrap();
        assert_eq!((t2.id(&unit("a")), t2.id(&unit("c"))), (Some(1), Some(3)));
        assert_eq!(t2.id(&unit("b")), None);
        // One apply later, 2 is free again.
        let t3 = PolicyTable::assign(&t2, [unit("a"), unit("c"), unit("d")]).unwrap();
        assert_eq!(t3.id(&unit("d")), Some(2));
        let json = serde_json::to_string(&t3).unwrap();
        assert_eq!(serde_json::from_str::<PolicyTable>(&json).unwrap(), t3);
    }

    #[test]
    fn more_subjects_than_ids_is_an_error() {
        let many = (0..MAX_POLICIES).map(|i| unit(&i.to_string()));
        let e = PolicyTable::assign(&PolicyTable::default(), many).unwrap_err();
        assert_eq!(e.wanted, MAX_POLICIES as usize);
    }
}
