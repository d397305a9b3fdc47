//! ServiceEntries from the Kubernetes API server (docs/kubernetes.md): discovery, list and
//! watch, the last valid version of every object, and how current the daemon is. The daemon
//! compiles what this publishes together with the files, like one more source.

pub mod client;
pub mod decode;
pub mod observe;
pub mod record;
pub mod status;
pub mod store;
pub mod watch;

use std::{path::Path, sync::Arc};

use tokio::sync::watch as channel;

use crate::serviceentry::Loaded;

/// What the cluster contributes to the policy: the valid ServiceEntries in force.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub entries: Arc<Vec<Loaded>>,
    /// The same objects as JSON, for the record the next start begins from.
    pub raw: Arc<Vec<serde_json::Value>>,
    /// From a complete list (false: the previous run's record, or nothing yet).
    pub synced: bool,
}

/// The resources the source lists and watches.
pub const WATCHED: &[&str] = &[watch::SERVICEENTRIES];

/// A running source: its snapshots and its status.
pub struct Source {
    pub snapshots: channel::Receiver<Snapshot>,
    pub status: Arc<status::Status>,
    pub connected: client::Connected,
}

/// Connects and starts watching. The first snapshot is `initial` (the previous run's
/// objects), so a restart keeps the policy in force until the API server has answered.
pub async fn start(kubeconfig: Option<&Path>, initial: Snapshot) -> anyhow::Result<Source> {
    let status = Arc::new(status::Status::new(WATCHED));
    let connected = client::connect(kubeconfig, &status, WATCHED).await?;
    let (tx, rx) = channel::channel(initial);
    tokio::spawn(watch::run(
        connected.client.clone(),
        Arc::clone(&status),
        tx,
    ));
    Ok(Source {
        snapshots: rx,
        status,
        connected,
    })
}
