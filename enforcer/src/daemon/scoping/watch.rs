//! inotify on the directories where unit and pod cgroups appear: every directory created or
//! removed there is reported (without detail), and the daemon maps what exists. One watcher
//! for the daemon's life; directories are added and dropped as the tree changes, so no
//! event is lost to a re-arm.

use std::{collections::BTreeSet, path::PathBuf};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tracing::debug;

pub struct CgroupWatch {
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl CgroupWatch {
    pub fn start(tx: mpsc::Sender<()>) -> anyhow::Result<Self> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let wanted = match &res {
                Ok(e) => e.kind.is_create() || e.kind.is_remove() || e.need_rescan(),
                Err(_) => true,
            };
            if wanted {
                // Full: a remap is already due, and it maps everything.
                let _ = tx.try_send(());
            }
        })?;
        Ok(Self {
            watcher,
            watched: BTreeSet::new(),
        })
    }

    /// Watches exactly `targets` from now on. A directory that vanished meanwhile is skipped
    /// (its parent's watch reports it).
    pub fn set_targets(&mut self, targets: &[PathBuf]) {
        let want: BTreeSet<PathBuf> = targets.iter().cloned().collect();
        for gone in self.watched.difference(&want) {
            // Fails when the directory is gone, which already ended the watch.
            let _ = self.watcher.unwatch(gone);
        }
        let mut now = BTreeSet::new();
        for t in &want {
            if self.watched.contains(t) {
                now.insert(t.clone());
                continue;
            }
            match self.watcher.watch(t, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    now.insert(t.clone());
                }
                Err(e) => debug!(dir = %t.display(), "not watched: {e}"),
            }
        }
        self.watched = now;
    }
}
