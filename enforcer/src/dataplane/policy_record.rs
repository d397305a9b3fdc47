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
}

impl Record {
    /// `paths`: cgroup id → path, where known.
    pub fn new(
        table: &PolicyTable,
        mapped: &BTreeMap<u64, u32>,
        paths: &BTreeMap<u64, String>,
    ) -> Self {
        Self {
            table: table.clone(),
            cgroups: mapped
                .iter()
                .map(|(id, policy)| Mapped {
                    cgroup_id: *id,
                    policy: *policy,
                    path: paths.get(id).cloned(),
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
