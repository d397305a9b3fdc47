//! The ServiceEntries from the API server that were in force, kept in /run for the next
//! start: a restarted daemon compiles them at once, so no rule is lost while it waits for
//! the API server (which may be unreachable for a while).

use std::{path::Path, sync::Arc};

use tracing::warn;

use super::{Snapshot, decode::service_entry, watch::VERSIONS};
use crate::dataplane::sources::{CLUSTER as KIND, state_file, write_state};

pub fn write(pin_root: &Path, snapshot: &Snapshot) -> anyhow::Result<()> {
    write_state(&state_file(pin_root, KIND), &*snapshot.raw)
}

/// The previous run's objects, decoded again (one that no longer validates is dropped, with
/// a warning); empty when there is no record.
pub fn read(pin_root: &Path) -> Snapshot {
    let path = state_file(pin_root, KIND);
    let Ok(bytes) = std::fs::read(&path) else {
        return Snapshot::default();
    };
    let raw: Vec<serde_json::Value> = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(path = %path.display(), "the record of the API server's objects is unreadable: {e}");
            return Snapshot::default();
        }
    };
    let mut entries = Vec::new();
    let mut kept = Vec::new();
    for v in raw {
        let Ok(obj) = serde_json::from_value::<kube::api::DynamicObject>(v.clone()) else {
            continue;
        };
        let version = v.get("apiVersion").and_then(|a| a.as_str()).map_or_else(
            || format!("{}/{}", super::watch::GROUP, VERSIONS[0]),
            str::to_owned,
        );
        match service_entry(&obj, &version) {
            (_, Ok(loaded)) => {
                entries.push(loaded);
                kept.push(v);
            }
            (key, Err(r)) => warn!(
                object = %format!("{}/{}", key.0, key.1),
                "a recorded ServiceEntry no longer validates and is dropped: {}",
                r.errors.join("; ")
            ),
        }
    }
    Snapshot {
        entries: Arc::new(entries),
        raw: Arc::new(kept),
        synced: false,
    }
}
