//! Wiring for the API server source: its snapshots trigger reloads, its status feeds
//! `/readyz`, `/metrics` and `inspect cluster`, and its objects are recorded for the next
//! start (docs/kubernetes.md).

use std::{path::Path, sync::Arc, time::Duration};

use tokio::sync::watch;
use tracing::warn;

use crate::{
    cluster::{self, Snapshot, status::Status},
    config::Config,
    dataplane::sources::{CLUSTER_STATUS, state_file, write_state},
};

pub struct Cluster {
    snapshots: watch::Receiver<Snapshot>,
    /// The snapshot the policy in force was compiled from.
    pub current: Snapshot,
    pub status: Arc<Status>,
    pub addresses: Vec<std::net::SocketAddr>,
    pub server: String,
    /// A snapshot newer than the policy in force is waiting for a successful reload.
    pub pending: bool,
    /// When a change was seen that no reload has taken yet.
    arrived: Option<tokio::time::Instant>,
    /// The daemon runs inside an enforced cgroup (or cannot tell, in a cgroup namespace),
    /// so its way to the API server needs a rule.
    pub self_enforced: bool,
}

impl Cluster {
    /// Connects and starts watching; the previous run's objects are the first snapshot.
    pub async fn start(cfg: &Config, pin_root: &Path) -> anyhow::Result<Self> {
        let node = if cfg.kubernetes.pods {
            Some(node_name(cfg)?)
        } else {
            None
        };
        let enforced = &cfg.cgroups;
        let initial = cluster::record::read(pin_root);
        let source = cluster::start(cfg.kubernetes.kubeconfig(), node, initial.clone()).await?;
        Ok(Self {
            snapshots: source.snapshots,
            current: initial,
            status: source.status,
            addresses: source.connected.addresses,
            server: source.connected.server,
            pending: false,
            arrived: None,
            // The DaemonSet's pod (POD_UID from the downward API) runs under kubepods, which
            // it enforces; elsewhere the daemon's cgroup path says.
            self_enforced: std::env::var_os("POD_UID").is_some()
                || self_enforced(
                    &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
                    enforced,
                ),
        })
    }

    /// Waits for a new snapshot; a burst of changes within [`SETTLE`] is taken as one.
    /// Cancel-safe (it runs in the daemon's `select!`): a change seen before the wait was cut
    /// short is remembered, and the next call finishes the wait.
    pub async fn changed(&mut self) -> Option<Snapshot> {
        let since = match self.arrived {
            Some(t) => t,
            None => {
                self.snapshots.changed().await.ok()?;
                *self.arrived.insert(tokio::time::Instant::now())
            }
        };
        tokio::time::sleep_until(since + SETTLE).await;
        self.arrived = None;
        Some(self.snapshots.borrow_and_update().clone())
    }

    /// Records what is in force now, for the next start.
    pub fn record(&self, pin_root: &Path) {
        if let Err(e) = cluster::record::write(pin_root, &self.current) {
            warn!("cannot record the API server's objects for the next start: {e:#}");
        }
    }
}

/// `kubernetes.nodeName`, else `$NODE_NAME` (the DaemonSet sets it from `spec.nodeName`).
fn node_name(cfg: &Config) -> anyhow::Result<String> {
    let n = if cfg.kubernetes.node_name.is_empty() {
        std::env::var("NODE_NAME").unwrap_or_default()
    } else {
        cfg.kubernetes.node_name.clone()
    };
    if n.is_empty() {
        anyhow::bail!(
            "kubernetes.pods: this node's name is unknown: set kubernetes.nodeName, or NODE_NAME \
             from the downward API (spec.nodeName)"
        );
    }
    Ok(n)
}

/// Whether the cgroup in `/proc/self/cgroup` text is inside one of `enforced` (relative to
/// the cgroup2 mount). Without a cgroup2 line it cannot tell: assume so.
fn self_enforced(proc_cgroup: &str, enforced: &[String]) -> bool {
    let Some(path) = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")) else {
        return true;
    };
    let path = path.trim().trim_matches('/');
    enforced.iter().any(|c| {
        let c = c.trim_matches('/');
        c.is_empty() || path == c || path.starts_with(&format!("{c}/"))
    })
}

/// How long a change waits for the ones right behind it.
const SETTLE: Duration = Duration::from_millis(100);

/// Waits for `cluster`'s next snapshot; never, without a cluster.
pub async fn next(cluster: &mut Option<Cluster>) -> Option<Snapshot> {
    match cluster {
        Some(c) => c.changed().await,
        None => std::future::pending().await,
    }
}

/// Keeps the status file for `inspect cluster` current (written when it changes).
pub async fn publish_status(status: Arc<Status>, pin_root: std::path::PathBuf) {
    let path = state_file(&pin_root, CLUSTER_STATUS);
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let report = status.report(std::time::Instant::now());
        if last.as_ref() != Some(&report) {
            if let Err(e) = write_state(&path, &report) {
                warn!("cannot write the API server status for `inspect`: {e:#}");
            }
            last = Some(report);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn self_enforced_by_path() {
        let e = ["kubepods.slice".to_owned(), "egress-enforcer".to_owned()];
        assert!(super::self_enforced("0::/kubepods.slice/x/y\n", &e));
        assert!(
            !super::self_enforced("0::/\n", &e),
            "the root is not under kubepods"
        );
        assert!(
            super::self_enforced("1:name=systemd:/\n", &e),
            "no cgroup2 line: assume so"
        );
        assert!(!super::self_enforced(
            "0::/system.slice/egress-enforcer.service\n",
            &e
        ));
        assert!(!super::self_enforced("0::/egress-enforcer-other\n", &e));
        assert!(super::self_enforced("0::/a\n", &["/".to_owned()]));
    }
}
