//! Reload on file changes: inotify (through `notify`) on the config file's directory and on
//! every ServiceEntry path. Events only say "something changed"; the daemon debounces them
//! and reloads everything, which is cheap and cannot miss a change.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// The symlink a Kubernetes ConfigMap volume swaps atomically on every update.
const CONFIGMAP_DATA: &str = "..data";

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

/// Whether a changed path can affect the policy: the config file, a named ServiceEntry file,
/// or a YAML file (or directory) below a ServiceEntry directory. Other files next to the
/// config (logs, pins, editor swap files) must not cause reloads.
///
/// Kubernetes updates a ConfigMap volume by swapping its `..data` symlink; the file names
/// (`config.yaml -> ..data/config.yaml`) never change, so that swap is the only event there is.
fn relevant(path: &Path, config: Option<&Path>, entries: &[PathBuf]) -> bool {
    if config == Some(path) {
        return true;
    }
    if path.file_name().is_some_and(|n| n == CONFIGMAP_DATA) {
        let dir = path.parent();
        let beside = |f: &Path| f.parent() == dir;
        return config.is_some_and(beside)
            || entries.iter().any(|e| beside(e) || path.starts_with(e));
    }
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    let yaml_or_dir = path.is_dir()
        || path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
    entries
        .iter()
        .any(|e| path == e || (path.starts_with(e) && !hidden && (yaml_or_dir || !path.exists())))
}

/// Whether a watcher report calls for a reload. A reload re-reads every file, so it is also
/// the full rescan that an inotify queue overflow (an event flagged `Rescan`, with no paths)
/// or a watcher error asks for: events may have been lost.
fn wants_reload(
    res: &notify::Result<notify::Event>,
    config: Option<&Path>,
    entries: &[PathBuf],
) -> bool {
    match res {
        Err(e) => {
            tracing::warn!("file watcher error, reloading from a full rescan: {e}");
            true
        }
        Ok(ev) if ev.need_rescan() => {
            tracing::warn!("file events were lost (queue overflow), reloading from a full rescan");
            true
        }
        Ok(ev) => !ev.kind.is_access() && ev.paths.iter().any(|p| relevant(p, config, entries)),
    }
}

impl FileWatch {
    /// Every change under the watched paths sends `()` on `tx`. The channel needs room for
    /// one message only: a pending reload covers every change made before it runs.
    pub fn start(
        config: Option<&Path>,
        service_entries: &[PathBuf],
        tx: mpsc::Sender<()>,
    ) -> anyhow::Result<Self> {
        let config_file = config.map(Path::to_path_buf);
        let entries = service_entries.to_vec();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if wants_reload(&res, config_file.as_deref(), &entries) {
                    // Full: a reload is already pending, and it will see this change too.
                    let _ignored = tx.try_send(());
                }
            })?;
        // A path that does not exist (yet) cannot be watched; SIGHUP covers it.
        for (path, mode) in targets(config, service_entries)
            .into_iter()
            .filter(|(p, _)| p.exists())
        {
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
    fn only_policy_files_are_relevant() {
        let dir = std::env::temp_dir().join(format!("ee-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.yaml");
        let se = dir.join("se");
        let entries = vec![se.clone(), dir.join("one.yaml")];
        assert!(relevant(&cfg, Some(&cfg), &entries));
        assert!(relevant(&se.join("a.yaml"), Some(&cfg), &entries));
        assert!(relevant(&se.join("sub/b.yml"), Some(&cfg), &entries));
        assert!(relevant(&dir.join("one.yaml"), Some(&cfg), &entries));
        assert!(!relevant(&dir.join("dnsmasq.log"), Some(&cfg), &entries));
        assert!(!relevant(&se.join(".a.yaml.tmp"), Some(&cfg), &entries));
        assert!(!relevant(&dir.join("other.yaml"), Some(&cfg), &entries));
        // A ConfigMap update: beside the config or a named file, or inside an entry directory.
        assert!(relevant(&dir.join("..data"), Some(&cfg), &entries));
        assert!(relevant(&se.join("..data"), None, &entries));
        assert!(relevant(&dir.join("..data"), None, &entries));
        assert!(!relevant(&dir.join("..data_tmp"), Some(&cfg), &entries));
        let elsewhere = std::env::temp_dir().join("ee-watch-elsewhere/..data");
        assert!(!relevant(&elsewhere, Some(&cfg), std::slice::from_ref(&se)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overflow_and_errors_reload_everything() {
        use notify::{
            Event, EventKind,
            event::{AccessKind, CreateKind, Flag},
        };
        let cfg = PathBuf::from("/etc/ee/config.yaml");
        let entries = vec![PathBuf::from("/etc/ee/se")];
        let want = |res: notify::Result<Event>| wants_reload(&res, Some(&cfg), &entries);
        assert!(want(Err(notify::Error::generic("inotify read failed"))));
        assert!(want(
            Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan))
        ));
        assert!(want(Ok(
            Event::new(EventKind::Create(CreateKind::File)).add_path(cfg.clone())
        )));
        assert!(!want(Ok(
            Event::new(EventKind::Access(AccessKind::Any)).add_path(cfg.clone())
        )));
        assert!(!want(Ok(Event::new(EventKind::Create(CreateKind::File))
            .add_path(PathBuf::from("/etc/ee/other.log")))));
        assert!(
            !want(Ok(Event::new(EventKind::Other))),
            "no paths, no rescan flag"
        );
    }

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
