//! cgroup v2: where it is mounted, which directories we enforce, and moving a process in.
//!
//! The mount point differs between hosts (`/sys/fs/cgroup` unified, `/sys/fs/cgroup/unified`
//! hybrid), so it is read from mountinfo, never assumed.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// Finds the cgroup2 mount point in mountinfo text (format: proc(5)).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let text =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_mount(&text).context(
        "no cgroup2 filesystem is mounted (cgroup v1 only?): egress-enforcer needs cgroup v2, \
         e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified` or boot with \
         systemd.unified_cgroup_hierarchy=1",
    )
}

pub use crate::config::cgroup_relative as validate_relative;

/// A cgroup we enforce: its path relative to the cgroup2 mount and its absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub relative: String,
    pub path: PathBuf,
}

impl Cgroup {
    pub fn resolve(mount: &Path, dir: &str) -> anyhow::Result<Self> {
        let relative = validate_relative(dir).with_context(|| format!("cgroup {dir:?}"))?;
        // The mount itself written in front (a cgroup2 mounted elsewhere than /sys/fs/cgroup,
        // which `validate_relative` already refuses): the same mistake, known only here.
        let mount_rel = validate_relative(&mount.to_string_lossy()).unwrap_or_default();
        if !mount_rel.is_empty()
            && (relative == mount_rel || relative.starts_with(&format!("{mount_rel}/")))
        {
            anyhow::bail!(
                "cgroup {dir:?}: {}",
                crate::config::filesystem_path_error(&mount.display().to_string())
            );
        }
        let path = if relative.is_empty() {
            mount.to_path_buf()
        } else {
            mount.join(&relative)
        };
        Ok(Self { relative, path })
    }

    /// Whether a process is in the cgroup or below it (`cgroup.events`); None if unreadable.
    pub fn populated(&self) -> Option<bool> {
        let events = fs::read_to_string(self.path.join("cgroup.events")).ok()?;
        parse_populated(&events)
    }

    /// Shown to users: `/` for the root, else `/a/b`.
    /// The id the kernel's cgroup helpers report: the directory's inode number.
    pub fn id(&self) -> anyhow::Result<u64> {
        Ok(fs::metadata(&self.path)
            .with_context(|| format!("reading cgroup {}", self.display()))?
            .ino())
    }

    pub fn display(&self) -> String {
        format!("/{}", self.relative)
    }

    /// Said in the log when the cgroup is new: a typo in `cgroups` makes an empty cgroup that
    /// is enforced while the workload runs elsewhere, and this line is where that shows.
    pub fn create(&self) -> anyhow::Result<()> {
        if self.path.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&self.path)
            .with_context(|| format!("creating cgroup {}", self.path.display()))?;
        tracing::info!(
            cgroup = %self.display(),
            "created the cgroup (it did not exist): nothing in it until processes are moved in"
        );
        Ok(())
    }
}

/// `populated` of a `cgroup.events` file (cgroup v2: `populated 0|1`).
fn parse_populated(events: &str) -> Option<bool> {
    events
        .lines()
        .find_map(|l| match l.strip_prefix("populated ")? {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        })
}

/// Moves the calling process into the cgroup at `path` (used between fork and exec).
pub fn join_self(path: &Path) -> std::io::Result<()> {
    fs::write(path.join("cgroup.procs"), b"0")
}

/// Finds the cgroup path (relative to the mount, with a leading `/`) for a cgroup id by
/// walking the trees under `roots`. Events carry only the id.
pub fn path_for_id(mount: &Path, roots: &[Cgroup], id: u64) -> Option<String> {
    fn walk(dir: &Path, id: u64, depth: usize) -> Option<PathBuf> {
        let meta = fs::metadata(dir).ok()?;
        if meta.ino() == id {
            return Some(dir.to_path_buf());
        }
        if depth == 0 {
            return None;
        }
        for e in fs::read_dir(dir).ok()?.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir())
                && let Some(p) = walk(&e.path(), id, depth - 1)
            {
                return Some(p);
            }
        }
        None
    }
    roots.iter().find_map(|r| {
        let p = walk(&r.path, id, 8)?;
        Some(format!("/{}", p.strip_prefix(mount).ok()?.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let v1 = "27 25 0:25 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(parse_cgroup2_mount(v1), None);
        let escaped = "30 1 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn relative_paths_are_normalised_and_confined() {
        assert_eq!(validate_relative("/").unwrap(), "");
        assert_eq!(validate_relative("a/./b/").unwrap(), "a/b");
        assert_eq!(
            validate_relative("/kubepods.slice").unwrap(),
            "kubepods.slice"
        );
        assert!(validate_relative("a/../../etc").is_err());
    }

    #[test]
    fn a_filesystem_path_is_refused_not_taken_as_a_new_cgroup() {
        for path in [
            "/sys/fs/cgroup/unified/kx/case",
            "/sys/fs/cgroup/system.slice",
            "sys/fs/cgroup",
            "/sys/./fs/cgroup/x",
        ] {
            let e = validate_relative(path).unwrap_err().to_string();
            assert!(
                e.contains("filesystem path") && e.contains("relative to the cgroup2 mount"),
                "{path}: {e}"
            );
        }
        // Only the whole prefix: a cgroup that merely begins like it is still a cgroup.
        assert_eq!(validate_relative("/sys/fs").unwrap(), "sys/fs");
        assert_eq!(validate_relative("sysfs/cgroup").unwrap(), "sysfs/cgroup");
    }

    #[test]
    fn the_mount_written_in_front_is_refused_wherever_cgroup2_is_mounted() {
        for dir in ["/run/cilium/cgroupv2/pods/a", "run/cilium/cgroupv2"] {
            let e = Cgroup::resolve(Path::new("/run/cilium/cgroupv2"), dir)
                .unwrap_err()
                .to_string();
            assert!(e.contains("filesystem path"), "{dir}: {e}");
        }
        // A cgroup that only shares the first name is a cgroup.
        let c = Cgroup::resolve(Path::new("/run/cg"), "runner/x").unwrap();
        assert_eq!(c.path, PathBuf::from("/run/cg/runner/x"));
    }

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\npopulated 1\n"), Some(true));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }

    #[test]
    fn resolve_joins_under_the_mount() {
        let c = Cgroup::resolve(Path::new("/cg"), "x/y").unwrap();
        assert_eq!(c.path, PathBuf::from("/cg/x/y"));
        assert_eq!(c.display(), "/x/y");
        let root = Cgroup::resolve(Path::new("/cg"), "/").unwrap();
        assert_eq!(
            (root.path.clone(), root.display()),
            (PathBuf::from("/cg"), "/".to_owned())
        );
    }
}
