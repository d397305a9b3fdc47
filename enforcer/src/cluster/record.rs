//! The API server's objects that were in force (ServiceEntries, Sidecars, this node's pods),
//! kept in /run for the next start: a restarted daemon compiles them at once, so no rule and
//! no pod's policy is lost while it waits for the API server (which may be unreachable).

use std::{path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    Snapshot, decode::service_entry, feeds::decode_sidecar, pods::PodMeta, watch::VERSIONS,
};
use crate::dataplane::sources::{CLUSTER as KIND, state_file, write_state};

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Record {
    service_entries: Vec<serde_json::Value>,
    sidecars: Vec<serde_json::Value>,
    pods: Vec<PodMeta>,
}

/// Before Sidecars and pods, the record was the list of ServiceEntries.
#[derive(Deserialize)]
#[serde(untagged)]
enum AnyRecord {
    Current(Record),
    Entries(Vec<serde_json::Value>),
}

pub fn write(pin_root: &Path, snapshot: &Snapshot) -> anyhow::Result<()> {
    let record = Record {
        service_entries: (*snapshot.raw).clone(),
        sidecars: (*snapshot.sidecars_raw).clone(),
        pods: (*snapshot.pods).clone(),
    };
    write_state(&state_file(pin_root, KIND), &record)
}

/// The previous run's objects, decoded again (one that no longer validates is dropped, with
/// a warning); empty when there is no record.
pub fn read(pin_root: &Path) -> Snapshot {
    let path = state_file(pin_root, KIND);
    let Ok(bytes) = std::fs::read(&path) else {
        return Snapshot::default();
    };
    let record = match serde_json::from_slice(&bytes) {
        Ok(AnyRecord::Current(r)) => r,
        Ok(AnyRecord::Entries(e)) => Record {
            service_entries: e,
            ..Record::default()
        },
        Err(e) => {
            warn!(path = %path.display(), "the record of the API server's objects is unreadable: {e}");
            return Snapshot::default();
        }
    };
    let recorded_sidecars = has_sidecars_key(&bytes);
    let (entries, raw) = service_entries(record.service_entries);
    let (sidecars, sidecars_raw): (Vec<_>, Vec<_>) = record
        .sidecars
        .into_iter()
        // An invalid one decodes to its fail-closed form (it claims its pods, imports nothing).
        .filter_map(|v| decode_sidecar(&v).0.map(|s| (s, v)))
        .unzip();
    Snapshot {
        entries: Arc::new(entries),
        raw: Arc::new(raw),
        synced: false,
        sidecars: Arc::new(sidecars),
        sidecars_raw: Arc::new(sidecars_raw),
        sidecars_synced: false,
        sidecars_recorded: recorded_sidecars,
        pods: Arc::new(record.pods),
        pods_synced: false,
        generation: 0,
    }
}

/// Whether the record is of the format that holds Sidecars (an older one does not: its
/// pods would be scoped without them).
fn has_sidecars_key(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("sidecars").is_some())
}

fn service_entries(
    raw: Vec<serde_json::Value>,
) -> (Vec<crate::serviceentry::Loaded>, Vec<serde_json::Value>) {
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
    (entries, kept)
}
