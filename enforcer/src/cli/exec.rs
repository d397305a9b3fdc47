use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, ExitCode},
};

use super::{Failure, OrFailure as _};
use crate::{
    config::Config,
    dataplane::{
        cgroup::{self, Cgroup},
        pins::PinLayout,
    },
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// cgroup to run in, relative to the cgroup2 mount [default: the first of `cgroups` in the
    /// config]
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<String>,
    /// Run even if no egress-enforcer links enforce that cgroup (or an ancestor)
    #[arg(long)]
    pub allow_unenforced: bool,
    /// The command and its arguments
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Whether the cgroup or one of its ancestors has our pinned links (cgroup programs apply to
/// the whole subtree).
fn enforced(layout: &PinLayout, relative: &str) -> bool {
    let mut candidate = Some(relative.to_owned());
    while let Some(rel) = candidate {
        if layout
            .link(&rel, enforcer_common::PROGRAM_NAMES[0])
            .exists()
        {
            return true;
        }
        candidate = if rel.is_empty() {
            None
        } else {
            Some(
                rel.rsplit_once('/')
                    .map_or(String::new(), |(p, _)| p.to_owned()),
            )
        };
    }
    false
}

/// Moves this process into the cgroup and then replaces it with the command, so the command
/// and everything it starts are enforced from their first instruction, and its exit status
/// (or signal) is ours.
pub fn exec(config: Option<&Path>, args: Args) -> Result<ExitCode, Failure> {
    let cfg = Config::load(config).user()?;
    let dir = match args.cgroup {
        Some(d) => d,
        None => cfg.cgroups.first().cloned().unwrap_or_default(),
    };
    let mount = cgroup::cgroup2_mount().runtime()?;
    let cg = Cgroup::resolve(&mount, &dir).user()?;
    if !cg.path.is_dir() {
        return Err(anyhow::anyhow!(
            "cgroup {} does not exist ({}); is the daemon running?",
            cg.display(),
            cg.path.display()
        ))
        .user();
    }
    let layout = PinLayout::new(&cfg.bpffs);
    if !args.allow_unenforced && !enforced(&layout, &cg.relative) {
        return Err(anyhow::anyhow!(
            "cgroup {} is not enforced: no egress-enforcer links under {} for it or an ancestor. \
             Start `egress-enforcer run` with this cgroup in `cgroups:`, or pass \
             --allow-unenforced",
            cg.display(),
            layout.links_dir().display()
        ))
        .user();
    }
    cgroup::join_self(&cg.path)
        .map_err(|e| anyhow::anyhow!("joining cgroup {}: {e}", cg.path.display()))
        .runtime()?;
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("no command given"))
        .user()?;
    let err = Command::new(program).args(rest).exec();
    // Only reached when exec failed; 127/126 as in env(1) and shells.
    eprintln!("egress-enforcer: exec {}: {err}", program.to_string_lossy());
    Ok(ExitCode::from(
        if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_count_as_enforced() {
        let dir = std::env::temp_dir().join(format!("ee-exec-test-{}", std::process::id()));
        let layout = PinLayout::new(&dir);
        std::fs::create_dir_all(layout.cgroup_links_dir("a")).unwrap();
        std::fs::write(layout.link("a", "connect4"), b"").unwrap();
        assert!(enforced(&layout, "a"));
        assert!(enforced(&layout, "a/b/c"));
        assert!(!enforced(&layout, "b"));
        assert!(!enforced(&layout, ""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
