//! `cargo xtask install [--prefix DIR]`: the release binary, the systemd unit, the man pages,
//! the bash/zsh/fish completions and `/etc/egress-enforcer/` (example config and
//! ServiceEntries). An existing config or
//! ServiceEntry directory is never overwritten: it holds the operator's policy.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::workspace_root;

/// Where each part goes for a prefix: `/usr/local` (the default) installs the binary to
/// /usr/local/bin, the unit to /etc/systemd/system and the config to /etc/egress-enforcer;
/// any other prefix keeps everything under it (for packaging and for tests).
pub struct Layout {
    pub bin: PathBuf,
    pub unit: PathBuf,
    /// DNS-aware mode's socket unit (installed, not enabled).
    pub socket: PathBuf,
    pub etc: PathBuf,
    pub man1: PathBuf,
    /// (generated script name, installed path), where each shell looks by default.
    pub completions: Vec<(&'static str, PathBuf)>,
}

impl Layout {
    pub fn for_prefix(prefix: &Path) -> Self {
        let system = prefix == Path::new("/usr/local") || prefix == Path::new("/usr");
        let etc = if system {
            PathBuf::from("/etc")
        } else {
            prefix.join("etc")
        };
        let share = prefix.join("share");
        Self {
            bin: prefix.join("bin/egress-enforcer"),
            unit: etc.join("systemd/system/egress-enforcer.service"),
            socket: etc.join("systemd/system/egress-enforcer.socket"),
            etc: etc.join("egress-enforcer"),
            man1: share.join("man/man1"),
            completions: vec![
                (
                    "egress-enforcer.bash",
                    share.join("bash-completion/completions/egress-enforcer"),
                ),
                (
                    "_egress-enforcer",
                    share.join("zsh/site-functions/_egress-enforcer"),
                ),
                (
                    "egress-enforcer.fish",
                    share.join("fish/vendor_completions.d/egress-enforcer.fish"),
                ),
            ],
        }
    }

    /// The shipped unit, pointed at this layout's binary and config.
    pub fn unit_text(&self, shipped: &str) -> String {
        shipped
            .replace(
                "/usr/local/bin/egress-enforcer",
                &self.bin.display().to_string(),
            )
            .replace(
                "/etc/egress-enforcer/config.yaml",
                &self.etc.join("config.yaml").display().to_string(),
            )
    }
}

fn copy_if_absent(from: &Path, to: &Path) -> anyhow::Result<bool> {
    if to.exists() {
        return Ok(false);
    }
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_if_absent(&e.path(), &to.join(e.file_name()))?;
        }
    } else {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(true)
}

pub fn install(prefix: &Path, binary: &Path) -> anyhow::Result<()> {
    let l = Layout::for_prefix(prefix);
    let root = workspace_root();
    for dir in [&l.bin, &l.unit] {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
    }
    std::fs::create_dir_all(&l.etc).with_context(|| format!("creating {}", l.etc.display()))?;
    // Copy then rename, so that a running daemon's binary is replaced, not rewritten in place.
    let tmp = l.bin.with_extension("new");
    std::fs::copy(binary, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
    std::fs::rename(&tmp, &l.bin)?;
    eprintln!("installed {}", l.bin.display());
    let shipped = std::fs::read_to_string(root.join("config/systemd/egress-enforcer.service"))?;
    std::fs::write(&l.unit, l.unit_text(&shipped))?;
    eprintln!("installed {}", l.unit.display());
    std::fs::copy(
        root.join("config/systemd/egress-enforcer.socket"),
        &l.socket,
    )
    .with_context(|| format!("installing {}", l.socket.display()))?;
    eprintln!(
        "installed {} (for dns.mode: proxy; not enabled)",
        l.socket.display()
    );
    docs(&l, binary)?;
    for (what, from, to) in [
        ("config", "config/config.yaml", l.etc.join("config.yaml")),
        (
            "ServiceEntries",
            "config/serviceentries",
            l.etc.join("serviceentries"),
        ),
    ] {
        if copy_if_absent(&root.join(from), &to)? {
            eprintln!("installed the example {what}: {}", to.display());
        } else {
            eprintln!("kept the existing {what}: {}", to.display());
        }
    }
    eprintln!(
        "next: systemctl daemon-reload && systemctl enable --now egress-enforcer \
         (edit {} first)",
        l.etc.join("config.yaml").display()
    );
    Ok(())
}

/// Man pages and completion scripts, generated by the binary being installed.
fn docs(l: &Layout, binary: &Path) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("ee-install-docs-{}", std::process::id()));
    let (man, completions) = crate::docs::man_and_completions(binary, &tmp)?;
    std::fs::create_dir_all(&l.man1).with_context(|| format!("creating {}", l.man1.display()))?;
    let mut pages = 0;
    for e in std::fs::read_dir(&man)? {
        let e = e?;
        std::fs::copy(e.path(), l.man1.join(e.file_name()))?;
        pages += 1;
    }
    eprintln!("installed {pages} man pages in {}", l.man1.display());
    for (script, to) in &l.completions {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(completions.join(script), to)
            .with_context(|| format!("installing {}", to.display()))?;
        eprintln!("installed {}", to.display());
    }
    let _ignored = std::fs::remove_dir_all(&tmp);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_prefix_uses_etc_and_others_stay_under_the_prefix() {
        let sys = Layout::for_prefix(Path::new("/usr/local"));
        assert_eq!(sys.bin, Path::new("/usr/local/bin/egress-enforcer"));
        assert_eq!(
            sys.unit,
            Path::new("/etc/systemd/system/egress-enforcer.service")
        );
        assert_eq!(sys.etc, Path::new("/etc/egress-enforcer"));
        let staged = Layout::for_prefix(Path::new("/tmp/p"));
        assert_eq!(staged.etc, Path::new("/tmp/p/etc/egress-enforcer"));
        assert_eq!(sys.man1, Path::new("/usr/local/share/man/man1"));
        assert!(
            staged
                .completions
                .iter()
                .all(|(_, p)| p.starts_with("/tmp/p/share"))
        );
        let unit = staged.unit_text(
            "ExecStart=/usr/local/bin/egress-enforcer --config /etc/egress-enforcer/config.yaml run",
        );
        assert_eq!(
            unit,
            "ExecStart=/tmp/p/bin/egress-enforcer --config /tmp/p/etc/egress-enforcer/config.yaml run"
        );
    }

    #[test]
    fn an_existing_config_is_kept() {
        let dir = std::env::temp_dir().join(format!("ee-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (src, dst) = (dir.join("src.yaml"), dir.join("dst.yaml"));
        std::fs::write(&src, "new").unwrap();
        std::fs::write(&dst, "mine").unwrap();
        assert!(!copy_if_absent(&src, &dst).unwrap());
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "mine");
        std::fs::remove_file(&dst).unwrap();
        assert!(copy_if_absent(&src, &dst).unwrap());
        assert_eq!(std::fs::read_to_string(&dst).unwrap(), "new");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
