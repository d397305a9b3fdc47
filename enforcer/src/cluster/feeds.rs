//! The three resources the source follows and what each adds to the snapshot: every
//! namespace's ServiceEntries and Sidecars, and this node's pods (docs/kubernetes.md).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Api, DynamicObject},
    core::PartialObjectMeta,
    runtime::watcher,
};
use tokio::sync::watch;
use tracing::warn;

use super::{
    Snapshot,
    decode::service_entry,
    pods,
    status::Status,
    store::{Key, Rejected, Store},
    watch::{PODS, SERVICEENTRIES, SIDECARS, discover_until_found, follow, rejected_rows},
};
use crate::{scope::sidecar::Sidecar, serviceentry::Loaded};

/// A valid object: what it compiles from, and its JSON for the next start's record.
#[derive(Debug, Clone)]
pub struct Valid<T> {
    pub resource_version: String,
    pub item: T,
    pub raw: Arc<serde_json::Value>,
}

impl<T> PartialEq for Valid<T> {
    fn eq(&self, other: &Self) -> bool {
        self.resource_version == other.resource_version
    }
}

fn status_of<T: Clone + PartialEq>(status: &Status, resource: &str, store: &Store<T>) {
    let rejected = rejected_rows(store);
    status.update(resource, |s| {
        s.synced = store.synced();
        s.objects = store.len();
        s.rejected = rejected;
    });
}

fn valid<T: Clone>(
    obj: &DynamicObject,
    key: Key,
    decoded: Result<T, Rejected>,
    what: &str,
) -> (Key, Result<Valid<T>, Rejected>) {
    if let Err(r) = &decoded {
        warn!(
            object = %format!("{}/{}", key.0, key.1),
            resource_version = %r.resource_version,
            "{what} from the API server refused, its last valid version stays in force: {}",
            r.errors.join("; ")
        );
    }
    let decoded = decoded.map(|item| Valid {
        resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
        item,
        raw: Arc::new(serde_json::to_value(obj).unwrap_or_default()),
    });
    (key, decoded)
}

pub async fn service_entries(
    client: kube::Client,
    status: Arc<Status>,
    tx: watch::Sender<Snapshot>,
) {
    let ar = discover_until_found(&client, "ServiceEntry", SERVICEENTRIES, &status).await;
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let decode = |o: &DynamicObject| {
        let (key, d) = service_entry(o, &ar.api_version);
        valid(o, key, d, "ServiceEntry")
    };
    let publish = |store: &Store<Valid<Loaded>>, changed: bool| {
        status_of(&status, SERVICEENTRIES, store);
        if changed {
            let v: Vec<&Valid<Loaded>> = store.valid().map(|(_, v)| v).collect();
            tx.send_modify(|s| {
                s.generation = status.published();
                s.entries = Arc::new(v.iter().map(|v| v.item.clone()).collect());
                s.raw = Arc::new(v.iter().map(|v| (*v.raw).clone()).collect());
                s.synced = store.synced();
            });
        }
    };
    follow(
        api,
        watcher::Config::default(),
        SERVICEENTRIES,
        Arc::clone(&status),
        decode,
        publish,
    )
    .await;
}

/// Sidecars: an invalid one keeps its last valid version; one never valid claims its
/// workloads and imports nothing for them (fail closed, `scope::sidecar::decode`).
pub async fn sidecars(client: kube::Client, status: Arc<Status>, tx: watch::Sender<Snapshot>) {
    let ar = discover_until_found(&client, "Sidecar", SIDECARS, &status).await;
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    // Filled by `decode`, read by `publish`: what a refused Sidecar with no valid version
    // stands for.
    let fallback: Arc<Mutex<HashMap<Key, (Sidecar, serde_json::Value)>>> = Arc::default();
    let fill = Arc::clone(&fallback);
    let decode = move |o: &DynamicObject| {
        let key = super::watch::object_key(o);
        let (sidecar, errors) = decode_sidecar(o);
        let mut fb = fill
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let decoded = match sidecar {
            Some(s) if errors.is_empty() => {
                fb.remove(&key);
                Ok(s)
            }
            other => {
                if let Some(s) = other {
                    let raw = serde_json::to_value(o).unwrap_or_default();
                    fb.insert(key.clone(), (s, raw));
                }
                Err(Rejected {
                    resource_version: o.metadata.resource_version.clone().unwrap_or_default(),
                    errors,
                })
            }
        };
        valid(o, key, decoded, "Sidecar")
    };
    let publish = |store: &Store<Valid<Sidecar>>, changed: bool| {
        status_of(&status, SIDECARS, store);
        if changed {
            let fb = fallback
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut all: Vec<Sidecar> = store.valid().map(|(_, v)| v.item.clone()).collect();
            let mut raw: Vec<serde_json::Value> =
                store.valid().map(|(_, v)| (*v.raw).clone()).collect();
            for (s, r) in store
                .rejected()
                .filter(|(_, _, older)| !older)
                .filter_map(|(k, _, _)| fb.get(k))
            {
                all.push(s.clone());
                raw.push(r.clone());
            }
            tx.send_modify(|s| {
                s.generation = status.published();
                s.sidecars = Arc::new(all);
                s.sidecars_raw = Arc::new(raw);
                s.sidecars_synced = store.synced();
            });
        }
    };
    follow(
        api,
        watcher::Config::default(),
        SIDECARS,
        Arc::clone(&status),
        decode,
        publish,
    )
    .await;
}

/// A Sidecar object decoded and validated, with its errors.
pub fn decode_sidecar(o: &impl serde::Serialize) -> (Option<Sidecar>, Vec<String>) {
    let value = serde_yaml_ng::to_value(o).unwrap_or_default();
    let (sidecar, issues) = crate::scope::sidecar::decode(&value);
    let errors = issues
        .iter()
        .filter(|i| i.severity == crate::serviceentry::Severity::Error)
        .map(ToString::to_string)
        .collect();
    (sidecar, errors)
}

/// This node's pods (`spec.nodeName`), metadata only.
pub async fn pods(
    client: kube::Client,
    node: String,
    status: Arc<Status>,
    tx: watch::Sender<Snapshot>,
) {
    let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let publish = |store: &Store<pods::PodMeta>, changed: bool| {
        status_of(&status, PODS, store);
        if changed {
            let all: Vec<pods::PodMeta> = store.valid().map(|(_, p)| p.clone()).collect();
            tx.send_modify(|s| {
                s.generation = status.published();
                s.pods = Arc::new(all);
                s.pods_synced = store.synced();
            });
        }
    };
    follow(
        api,
        config,
        PODS,
        Arc::clone(&status),
        pods::decode,
        publish,
    )
    .await;
}
