//! Files derived from the clap definitions: man pages, shell completions and the README's CLI
//! reference. Generated, never written by hand, so none of them can disagree with the parser.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use clap::CommandFactory as _;
use clap_complete::Shell;

use super::{Cli, Failure, OrFailure as _};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Man pages: egress-enforcer.1 and one egress-enforcer-COMMAND.1 per command, into DIR
    Man { dir: PathBuf },
    /// Completion scripts for bash, zsh, fish, elvish and PowerShell, into DIR
    Completions { dir: PathBuf },
    /// The CLI reference in Markdown, on stdout (the README embeds it)
    CliReference,
}

/// The width help is wrapped to, fixed so that generated text does not depend on a terminal.
const WIDTH: usize = 100;

/// The parser's definition with its name and help width fixed.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command().term_width(WIDTH).bin_name("egress-enforcer");
    cmd.build();
    cmd
}

/// Every user-facing command's full help, in Markdown: one heading and one text block each.
pub fn cli_reference(cmd: &clap::Command) -> String {
    let mut out = String::new();
    let mut add = |name: &str, help: String| {
        let help = help.trim_end();
        let _ = write!(out, "#### `{name}`\n\n```text\n{help}\n```\n\n");
    };
    let mut top = cmd.clone();
    add("egress-enforcer", top.render_long_help().to_string());
    for sub in documented(cmd) {
        let mut sub = sub.clone();
        let name = sub.get_bin_name().map_or_else(
            || format!("egress-enforcer {}", sub.get_name()),
            str::to_owned,
        );
        add(&name, sub.render_long_help().to_string());
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

/// The visible subcommands, without clap's own `help`.
fn documented(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

fn man(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let cmd = command();
    let mut written = Vec::new();
    let pages = std::iter::once(("egress-enforcer".to_owned(), cmd.clone()))
        .chain(documented(&cmd).map(|s| (format!("egress-enforcer-{}", s.get_name()), s.clone())));
    for (name, page) in pages {
        let mut text = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.as_str())
            .render(&mut text)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    // clap_complete names the script's functions from a command it builds itself.
    let mut cmd = Cli::command();
    [
        Shell::Bash,
        Shell::Zsh,
        Shell::Fish,
        Shell::Elvish,
        Shell::PowerShell,
    ]
    .into_iter()
    .map(|shell| {
        Ok(clap_complete::generate_to(
            shell,
            &mut cmd,
            "egress-enforcer",
            dir,
        )?)
    })
    .collect()
}

pub fn generate(args: Args) -> Result<(), Failure> {
    let written = match args.what {
        What::Man { dir } => man(&dir).runtime()?,
        What::Completions { dir } => completions(&dir).runtime()?,
        What::CliReference => {
            print!("{}", cli_reference(&command()));
            return Ok(());
        }
    };
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's reference is exactly what the parser generates.
    #[test]
    fn readme_cli_reference_is_current() {
        const BEGIN: &str = "<!-- cli-reference:begin (cargo xtask docs) -->\n";
        const END: &str = "<!-- cli-reference:end -->";
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        let start = readme.find(BEGIN).expect("README has the begin marker") + BEGIN.len();
        let end = readme.find(END).expect("README has the end marker");
        let embedded = &readme[start..end];
        let generated = cli_reference(&command());
        assert!(
            embedded.trim() == generated.trim(),
            "README.md's CLI reference is stale: run `cargo xtask docs`"
        );
    }

    #[test]
    fn reference_covers_every_visible_command_and_flag() {
        let cmd = command();
        let text = cli_reference(&cmd);
        for sub in cmd.get_subcommands() {
            let heading = format!("#### `egress-enforcer {}`", sub.get_name());
            let shown = documented(&cmd).any(|d| d.get_name() == sub.get_name());
            assert_eq!(text.contains(&heading), shown, "{heading}");
            if !shown {
                continue;
            }
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    assert!(
                        text.contains(&format!("--{long}")),
                        "--{long} of {}",
                        sub.get_name()
                    );
                }
            }
        }
        assert!(!text.contains("\x1b["), "no terminal escapes");
    }

    /// Each man page passes groff's own lint, and bash's completion really completes.
    #[test]
    fn man_pages_lint_clean_and_bash_completes() {
        let dir = std::env::temp_dir().join(format!("ee-generate-{}", std::process::id()));
        let pages = man(&dir.join("man")).unwrap();
        let cmd = command();
        let mut want: Vec<PathBuf> = documented(&cmd)
            .map(|s| dir.join(format!("man/egress-enforcer-{}.1", s.get_name())))
            .collect();
        want.insert(0, dir.join("man/egress-enforcer.1"));
        assert_eq!(pages, want, "one page per command, none for `help`");
        for p in &pages {
            let out = std::process::Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(p)
                .output()
                .expect("groff (Debian: groff-base) must be installed");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let run = std::fs::read_to_string(dir.join("man/egress-enforcer-run.1")).unwrap();
        assert!(
            run.contains("allow") && run.contains("SIGHUP"),
            "run's page"
        );

        let scripts = completions(&dir.join("completions")).unwrap();
        assert_eq!(scripts.len(), 5);
        // What bash offers after `egress-enforcer ins<TAB>` and `egress-enforcer inspect <TAB>`.
        let script = dir.join("completions/egress-enforcer.bash");
        let complete = |words: &str, cword: usize| -> String {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                     COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; \
                     f=$(complete -p egress-enforcer | sed -E 's/.* -F ([^ ]+) .*/\\1/'); \
                     \"$f\" egress-enforcer \"${{COMP_WORDS[$COMP_CWORD]}}\" \
                     \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; echo \"${{COMPREPLY[*]}}\"",
                    script.display()
                ))
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(complete("egress-enforcer ins", 1), "inspect");
        let whats = complete("egress-enforcer inspect ''", 2);
        for what in ["rules", "stats", "links", "--json"] {
            assert!(whats.split(' ').any(|w| w == what), "{what} in {whats:?}");
        }
        let top = complete("egress-enforcer ''", 1);
        for sub in documented(&command()) {
            let name = sub.get_name();
            assert!(top.split(' ').any(|w| w == name), "{name} in {top:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
