//! One resource from the API server: discovery of the served version, then list and watch
//! (kube's watcher, with its default backoff) into a [`Store`] of last valid versions. A
//! relist (after `410 Gone`, or a failed list) is buffered and swapped in whole.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use kube::{
    api::{Api, DynamicObject},
    discovery::ApiResource,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    Snapshot,
    decode::service_entry,
    status::{RejectedRow, Status},
    store::{Change, Store},
};
use crate::serviceentry::Loaded;

pub const GROUP: &str = "networking.istio.io";
/// In order of preference: the first one the server serves is used.
pub const VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];
pub const SERVICEENTRIES: &str = "serviceentries";

/// The first of [`VERSIONS`] whose resources include `kind`.
pub fn pick_version<'a>(
    served: impl IntoIterator<Item = (&'a str, Vec<String>)>,
    kind: &str,
) -> Option<&'static str> {
    let served: Vec<(&str, Vec<String>)> = served.into_iter().collect();
    VERSIONS.into_iter().find(|v| {
        served
            .iter()
            .any(|(sv, kinds)| sv == v && kinds.iter().any(|k| k == kind))
    })
}

async fn discover(client: &kube::Client, kind: &str) -> anyhow::Result<ApiResource> {
    let group = kube::discovery::group(client, GROUP).await?;
    let served: Vec<(String, Vec<String>)> = group
        .versions()
        .map(|v| {
            let kinds = group
                .versioned_resources(v)
                .into_iter()
                .map(|(ar, _)| ar.kind)
                .collect();
            (v.to_owned(), kinds)
        })
        .collect();
    let version = pick_version(served.iter().map(|(v, k)| (v.as_str(), k.clone())), kind)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{GROUP} serves no {kind} in {} (is Istio's CRD installed?)",
                VERSIONS.join(", ")
            )
        })?;
    group
        .versioned_resources(version)
        .into_iter()
        .map(|(ar, _)| ar)
        .find(|ar| ar.kind == kind)
        .ok_or_else(|| anyhow::anyhow!("{kind} vanished from {GROUP}/{version}"))
}

/// Discovery, retried with backoff until it succeeds.
async fn discover_until_found(client: &kube::Client, kind: &str, status: &Status) -> ApiResource {
    let mut wait = Duration::from_millis(800);
    loop {
        match discover(client, kind).await {
            Ok(ar) => {
                status.update(SERVICEENTRIES, |s| s.version = Some(ar.version.clone()));
                info!(resource = SERVICEENTRIES, version = %ar.version, "watching the API server");
                return ar;
            }
            Err(e) => {
                let msg = format!("discovery: {e:#}");
                if status.failed(SERVICEENTRIES, msg.clone(), std::time::Instant::now()) {
                    warn!("{msg} (retrying with backoff; the policy in force stays)");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// A valid object: what it compiles from, and its JSON for the next start's record.
#[derive(Debug, Clone)]
pub struct Valid {
    pub resource_version: String,
    pub loaded: Loaded,
    pub raw: Arc<serde_json::Value>,
}

impl PartialEq for Valid {
    fn eq(&self, other: &Self) -> bool {
        self.resource_version == other.resource_version
    }
}

/// Updates the status; sends a new snapshot only when the set in force `changed`.
fn publish(store: &Store<Valid>, status: &Status, tx: &watch::Sender<Snapshot>, changed: bool) {
    let rejected: Vec<RejectedRow> = store
        .rejected()
        .map(|(k, r, older)| RejectedRow {
            object: format!("{}/{}", k.0, k.1),
            rejected: r.clone(),
            older_in_force: older,
        })
        .collect();
    status.update(SERVICEENTRIES, |s| {
        s.synced = store.synced();
        s.objects = store.len();
        s.rejected = rejected;
    });
    if !changed {
        return;
    }
    let valid: Vec<&Valid> = store.valid().map(|(_, v)| v).collect();
    tx.send_replace(Snapshot {
        entries: Arc::new(valid.iter().map(|v| v.loaded.clone()).collect()),
        raw: Arc::new(valid.iter().map(|v| (*v.raw).clone()).collect()),
        synced: store.synced(),
    });
}

fn apply(store: &mut Store<Valid>, obj: &DynamicObject, api_version: &str) -> Change {
    let (key, decoded) = service_entry(obj, api_version);
    let rv = obj.metadata.resource_version.clone().unwrap_or_default();
    let decoded = decoded.map(|loaded| Valid {
        resource_version: rv,
        loaded,
        raw: Arc::new(serde_json::to_value(obj).unwrap_or_default()),
    });
    if let Err(r) = &decoded {
        warn!(
            object = %format!("{}/{}", key.0, key.1),
            resource_version = %r.resource_version,
            "ServiceEntry from the API server refused, its last valid version stays in force: {}",
            r.errors.join("; ")
        );
    }
    store.apply(key, decoded)
}

/// Runs until the daemon stops: every change to the set in force is published.
pub async fn run(client: kube::Client, status: Arc<Status>, tx: watch::Sender<Snapshot>) {
    let ar = discover_until_found(&client, "ServiceEntry", &status).await;
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut store: Store<Valid> = Store::default();
    while let Some(event) = events.next().await {
        let now = std::time::Instant::now();
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                let msg = format!("{e}");
                if status.failed(SERVICEENTRIES, msg.clone(), now) {
                    warn!(
                        resource = SERVICEENTRIES,
                        "watch failed, retrying with backoff (the policy in force stays): {msg}"
                    );
                }
                continue;
            }
        };
        status.ok(SERVICEENTRIES, now);
        let changed = match event {
            watcher::Event::Init => {
                store.begin_relist();
                continue;
            }
            watcher::Event::InitApply(o) => {
                apply(&mut store, &o, &ar.api_version);
                continue;
            }
            watcher::Event::InitDone => {
                let first = !store.synced();
                store.finish_relist() || first
            }
            watcher::Event::Apply(o) => apply(&mut store, &o, &ar.api_version) != Change::Same,
            watcher::Event::Delete(o) => store.delete(&super::decode::key(&o)) == Change::Changed,
        };
        publish(&store, &status, &tx, changed);
    }
}
