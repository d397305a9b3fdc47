//! `cargo xtask docs`: the README's CLI reference, the man pages and the shell completions,
//! all produced by the built binary from its own clap definitions (`egress-enforcer generate`,
//! which uses clap_mangen and clap_complete).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

const BEGIN: &str = "<!-- cli-reference:begin (cargo xtask docs) -->\n";
const END: &str = "<!-- cli-reference:end -->";

/// The README with the text between the markers replaced by `reference`.
pub fn splice(readme: &str, reference: &str) -> anyhow::Result<String> {
    let start = readme
        .find(BEGIN)
        .context("README.md has no CLI reference begin marker")?
        + BEGIN.len();
    let end = readme
        .find(END)
        .context("README.md has no CLI reference end marker")?;
    if end < start {
        bail!("README.md's CLI reference markers are out of order");
    }
    Ok(format!(
        "{}{}{}",
        &readme[..start],
        reference,
        &readme[end..]
    ))
}

fn generate(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("generate")
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`egress-enforcer generate {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("generate printed non-UTF-8")
}

/// Man pages into `<dir>/man`, completion scripts into `<dir>/completions`.
pub fn man_and_completions(bin: &Path, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for (what, to) in [("man", &man), ("completions", &completions)] {
        let to = to.to_str().context("non-UTF-8 output directory")?;
        generate(bin, &[what, to])?;
    }
    Ok((man, completions))
}

pub fn docs(bin: &Path, out: &Path) -> anyhow::Result<()> {
    let readme_path = crate::workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).context("reading README.md")?;
    let updated = splice(&readme, &generate(bin, &["cli-reference"])?)?;
    if updated == readme {
        eprintln!("README.md: CLI reference already current");
    } else {
        std::fs::write(&readme_path, updated).context("writing README.md")?;
        eprintln!("README.md: CLI reference updated");
    }
    let (man, completions) = man_and_completions(bin, out)?;
    eprintln!(
        "man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_between_the_markers() {
        let readme = format!("a\n{BEGIN}old\n{END}\nb\n");
        let out = splice(&readme, "new\n").unwrap();
        assert_eq!(out, format!("a\n{BEGIN}new\n{END}\nb\n"));
        assert_eq!(splice(&out, "new\n").unwrap(), out, "idempotent");
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{END}{BEGIN}"), "x").is_err());
    }
}
