//! `cargo xtask setup|build|run|test`: the project's entry points (docs/architecture.md).

mod bench;
mod bench_daemon;
mod bench_dns;
mod bench_growth;
mod bench_kernel;
mod bench_noop;
mod bench_scoping;
mod bench_yaml;
mod docs;
mod install;
mod setup;
mod test;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent; fast when all is present)
    Setup {
        /// Only what building the binary needs (nightly rust-src, bpf-linker): for images
        #[arg(long)]
        build_only: bool,
    },
    /// Build the workspace, including the eBPF programs
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run the daemon as root: `cargo xtask run -- --allow 198.51.100.7:443/tcp`
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `egress-enforcer run`
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Measure against the targets; results go to bench/RESULTS.md and bench/results.json
    Bench {
        /// A reduced set that finishes in well under two minutes
        #[arg(long)]
        quick: bool,
        /// Run one group only and print it without writing the results files
        #[arg(long, value_enum)]
        only: Option<bench::Group>,
    },
    /// Install the release binary, the systemd unit and /etc/egress-enforcer (an existing
    /// config is kept)
    Install {
        /// /usr/local installs to /usr/local/bin, /etc/systemd/system and /etc; any other
        /// prefix keeps everything under it
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// Regenerate the README's CLI reference, and write the man pages and shell completions
    Docs {
        /// Where the man pages (man/) and completions (completions/) go
        #[arg(long, default_value = "target/dist")]
        out: PathBuf,
    },
    /// fmt check, clippy -D warnings, unit tests, then the end-to-end suite (needs root)
    Test {
        /// Skip the end-to-end suite (no root needed)
        #[arg(long)]
        unit_only: bool,
    },
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command, failing with the step's name.
pub fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("==> {name}");
    let status = cmd
        .status()
        .with_context(|| format!("{name}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// cargo, run from the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "enforcer"]);
    if release {
        cmd.arg("--release");
    }
    step("build egress-enforcer (with eBPF programs)", &mut cmd)?;
    Ok(workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("egress-enforcer"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup { build_only: true } => setup::setup_build(),
        Task::Setup { build_only: false } => setup::setup(),
        Task::Build { release } => setup::setup().and_then(|()| build(release).map(drop)),
        Task::Run { release, args } => setup::setup().and_then(|()| {
            let bin = build(release)?;
            let mut cmd = Command::new(bin);
            cmd.arg("run").args(args);
            step("egress-enforcer run", &mut cmd)
        }),
        Task::Bench { quick, only } => setup::setup().and_then(|()| bench::bench(quick, only)),
        Task::Install { prefix } => setup::setup().and_then(|()| {
            let bin = build(true)?;
            install::install(&prefix, &bin)
        }),
        Task::Docs { out } => setup::setup_build().and_then(|()| {
            let bin = build(false)?;
            docs::docs(&bin, &workspace_root().join(out))
        }),
        Task::Test { unit_only: true } => setup::setup_unit().and_then(|()| test::test(true)),
        Task::Test { unit_only: false } => setup::setup().and_then(|()| test::test(false)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
