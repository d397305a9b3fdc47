//! Reload on file changes: inotify (through `notify`) on the config file's directory and on
//! every ServiceEntry path. Events only say "something changed"; the daemon debounces them
//! and reloads everything, which is cheap and cannot miss a change.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Directories to watch: a file's parent (editors replace files by rename, which a watch on
/// the file itself would lose), or the directory itself, recursively.
fn targets(config: Option<&Path>, service_entries: &[PathBuf]) -> Vec<(PathBuf, RecursiveMode)> {
    let parent = |f: &Path| {
        let p = f.parent().unwrap_or(Path::new("."));
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        (p.to_path_buf(), RecursiveMode::NonRecursive)
    };
    let mut out: Vec<(PathBuf, RecursiveMode)> = config.map(parent).into_iter().collect();
    for p in service_entries {
        out.push(if p.is_dir() {
            (p.clone(), RecursiveMode::Recursive)
        } else {
            parent(p)
        });
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

impl FileWatch {
    /// Every change under the watched paths sends `()` on `tx`.
    pub fn start(
        config: Option<&Path>,
        service_entries: &[PathBuf],
        tx: mpsc::UnboundedSender<()>,
    ) -> anyhow::Result<Self> {
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res
                    && !ev.kind.is_access()
                {
                    let _ignored = tx.send(());
                }
            })?;
        for (path, mode) in targets(config, service_entries) {
            if let Err(e) = watcher.watch(&path, mode) {
                tracing::warn!(path = %path.display(), "cannot watch for changes: {e} (SIGHUP still reloads)");
            }
        }
        Ok(Self { _watcher: watcher })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_watched_through_their_directory() {
        let dir = std::env::temp_dir();
        let t = targets(
            Some(Path::new("/etc/ee/config.yaml")),
            &[dir.clone(), PathBuf::from("/etc/ee/se.yaml")],
        );
        assert_eq!(t.len(), 2);
        assert!(t.contains(&(PathBuf::from("/etc/ee"), RecursiveMode::NonRecursive)));
        assert!(t.contains(&(dir, RecursiveMode::Recursive)));
    }
}
