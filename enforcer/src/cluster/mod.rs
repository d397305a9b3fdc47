//! ServiceEntries from the Kubernetes API server (docs/kubernetes.md): discovery, list and
//! watch, the last valid version of every object, and how current the daemon is. The daemon
//! compiles what this publishes together with the files, like one more source.

pub mod client;
pub mod decode;
pub mod feeds;
pub mod observe;
pub mod pods;
pub mod record;
pub mod status;
pub mod store;
pub mod watch;

use std::{path::Path, sync::Arc};

use tokio::sync::watch as channel;

use crate::{scope::sidecar::Sidecar, serviceentry::Loaded};

/// What the cluster contributes to the policy: the valid ServiceEntries and Sidecars in
/// force, and this node's pods.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub entries: Arc<Vec<Loaded>>,
    /// The same objects as JSON, for the record the next start begins from.
    pub raw: Arc<Vec<serde_json::Value>>,
    /// From a complete list (false: the previous run's record, or nothing yet).
    pub synced: bool,
    pub sidecars: Arc<Vec<Sidecar>>,
    pub sidecars_raw: Arc<Vec<serde_json::Value>>,
    pub sidecars_synced: bool,
    /// The Sidecars come from the previous run's record (complete as of then).
    pub sidecars_recorded: bool,
    pub pods: Arc<Vec<pods::PodMeta>>,
    pub pods_synced: bool,
    /// `Status::published` when it went out (0: the previous run's record).
    pub generation: u64,
}

/// The resources the source lists and watches: with pod scoping, Sidecars and this node's
/// pods too.
pub fn watched(pods: bool) -> &'static [&'static str] {
    if pods {
        &[watch::SERVICEENTRIES, watch::SIDECARS, watch::PODS]
    } else {
        &[watch::SERVICEENTRIES]
    }
}

/// A running source: its snapshots and its status.
pub struct Source {
    pub snapshots: channel::Receiver<Snapshot>,
    pub status: Arc<status::Status>,
    pub connected: client::Connected,
}

/// Connects and starts watching; `node`: also this node's pods and every Sidecar (pod
/// scoping). The first snapshot is `initial` (the previous run's objects), so a restart
/// keeps the policy in force until the API server has answered.
pub async fn start(
    kubeconfig: Option<&Path>,
    node: Option<String>,
    initial: Snapshot,
) -> anyhow::Result<Source> {
    let watched = watched(node.is_some());
    let status = Arc::new(status::Status::new(watched));
    let connected = client::connect(kubeconfig, &status, watched).await?;
    let (tx, rx) = channel::channel(initial);
    let client = &connected.client;
    tokio::spawn(feeds::service_entries(
        client.clone(),
        Arc::clone(&status),
        tx.clone(),
    ));
    if let Some(node) = node {
        tokio::spawn(feeds::sidecars(
            client.clone(),
            Arc::clone(&status),
            tx.clone(),
        ));
        tokio::spawn(feeds::pods(client.clone(), node, Arc::clone(&status), tx));
    }
    Ok(Source {
        snapshots: rx,
        status,
        connected,
    })
}
