//! `/run/egress-enforcer/<pins>.policies.json`: the policy ids and the cgroups mapped to
//! them, written by the daemon (`daemon::scoping`). A restart keeps the ids (so no cgroup
//! ever points at another subject's policy) and `inspect policies` names them.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use super::sources::{POLICIES, state_file, write_state};
use crate::scope::table::PolicyTable;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Record {
    pub table: PolicyTable,
    pub cgroups: Vec<Mapped>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mapped {
    pub cgroup_id: u64,
    pub policy: u32,
    /// Relative to the cgroup2 mount, when the daemon knows it.
    pub path: Option<String>,
    /// The pod (`namespace/name`) it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl Record {
    /// `names`: cgroup id → path and pod, where known.
    pub fn new(
        table: &PolicyTable,
        mapped: &BTreeMap<u64, u32>,
        names: &BTreeMap<u64, (String, Option<String>)>,
    ) -> Self {
        Self {
            table: table.clone(),
            cgroups: mapped
                .iter()
                .map(|(id, policy)| Mapped {
                    cgroup_id: *id,
                    policy: *policy,
                    path: names.get(id).map(|n| n.0.clone()),
                    pod: names.get(id).and_then(|n| n.1.clone()),
                })
                .collect(),
        }
    }
}

pub fn write(pin_root: &Path, record: &Record) -> anyhow::Result<()> {
    write_state(&state_file(pin_root, POLICIES), record)
}

/// `None` when there is no record or it cannot be read (then ids start afresh).
pub fn read(pin_root: &Path) -> Option<Record> {
    let bytes = std::fs::read(state_file(pin_root, POLICIES)).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!("the record of policy ids is unreadable, ids start afresh: {e}");
            None
        }
    }
}
