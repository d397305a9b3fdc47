//! Command line: one module per subcommand. Exit codes: 0 ok, 1 user or config error,
//! 2 runtime failure (`crate::exit`); `exec` passes its command's status through.

mod check;
mod exec;
mod explain;
pub mod generate;
mod inspect;
mod run;
mod suggest;
mod uninstall;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "egress-enforcer",
    version,
    about = "Allow a workload's outbound connections only to registered destinations (eBPF cgroup hooks)",
    after_long_help = "Exit codes: 0 ok; 1 user or config error (bad flag, bad YAML, unknown key, \
        unenforced cgroup for `exec`); 2 runtime failure (kernel refused, permissions, pinned \
        state incompatible). `exec` exits with its command's status.\n\n\
        Addresses: ADDR[/LEN]:PORT[/tcp|udp], e.g. 198.51.100.7:443/tcp, [2001:db8::7]:443, \
        203.0.113.0/24:*/udp (`*` = any port; the protocol defaults to tcp)."
)]
pub struct Cli {
    /// Daemon config file [default: /etc/egress-enforcer/config.yaml if it exists]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground: load, attach, keep the rules in the kernel
    ///
    /// Loads the ServiceEntries, looks up their hosts, and keeps the kernel's rules equal to
    /// them. SIGHUP or a change to the config or a ServiceEntry file reloads; a reload with any
    /// error is rejected as a whole and the policy in force stays. SIGTERM and SIGINT exit and
    /// leave enforcement pinned (`uninstall` removes it). Under systemd, READY=1 is sent after
    /// the first full apply.
    Run(run::Args),
    /// Validate ServiceEntry files as Istio would; exit 1 on any error
    Check(check::Args),
    /// Run a command inside an enforced cgroup
    ///
    /// The command joins the cgroup before it starts, so every socket it opens is enforced.
    /// A cgroup that no egress-enforcer program enforces is refused unless
    /// --allow-unenforced.
    Exec(exec::Args),
    /// Show the pinned rules, counters or links (works with or without a running daemon)
    Inspect(inspect::Args),
    /// Why a destination is allowed or denied to a pod or cgroup: the rule that decides, or
    /// the rules that would allow it and why they do not apply (read from the live maps)
    Explain(explain::Args),
    /// Detach every program and remove the pinned state
    ///
    /// Refused while a daemon holds the pins, unless --force.
    Uninstall(uninstall::Args),
    /// ServiceEntries for what workloads reached in audit mode (or were refused), less what
    /// the policy in force allows them: learn mode's observations turned into policy
    Suggest(suggest::Args),
    /// Write the man pages, the shell completions or this CLI reference
    ///
    /// For packaging; `cargo xtask install` puts the man pages and the bash, zsh and fish
    /// completions where those tools look.
    Generate(generate::Args),
}

pub use crate::exit::{Failure, OrFailure};

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ignored = e.print();
            return ExitCode::from(code);
        }
    };
    if !matches!(cli.command, Command::Run(_)) {
        // Report-printing commands end quietly when their reader goes away (`| head`), like
        // other Unix tools; the daemon keeps Rust's default (SIGPIPE ignored) so that a closed
        // log pipe never takes enforcement management down with it.
        // SAFETY: restoring the default disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Run(a) => run::run(config, a).map(|()| ExitCode::SUCCESS),
        Command::Check(a) => check::check(config, a).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }),
        Command::Exec(a) => exec::exec(config, a),
        Command::Inspect(a) => inspect::inspect(config, a).map(|()| ExitCode::SUCCESS),
        Command::Explain(a) => explain::explain(config, a).map(|()| ExitCode::SUCCESS),
        Command::Uninstall(a) => uninstall::uninstall(config, a).map(|()| ExitCode::SUCCESS),
        Command::Suggest(a) => suggest::suggest(config, a).map(|()| ExitCode::SUCCESS),
        Command::Generate(a) => generate::generate(a).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            let (Failure::User(e) | Failure::Runtime(e)) = &f;
            eprintln!("egress-enforcer: error: {e:#}");
            ExitCode::from(f.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let c = Cli::try_parse_from([
            "egress-enforcer",
            "run",
            "--allow",
            "198.51.100.7:443/tcp",
            "--allow",
            "203.0.113.0/24:*/udp",
            "--config",
            "/x.yaml",
        ])
        .unwrap();
        assert_eq!(c.config, Some(PathBuf::from("/x.yaml")));
        let Command::Run(r) = c.command else { panic!() };
        assert_eq!(r.allow.len(), 2);
        assert!(Cli::try_parse_from(["egress-enforcer", "run", "--allow", "nonsense"]).is_err());
        let c = Cli::try_parse_from([
            "egress-enforcer",
            "exec",
            "--cgroup",
            "x",
            "--",
            "curl",
            "-v",
        ])
        .unwrap();
        let Command::Exec(e) = c.command else {
            panic!()
        };
        assert_eq!(e.cgroup.as_deref(), Some("x"));
        assert_eq!(e.command, ["curl", "-v"]);
        assert!(Cli::try_parse_from(["egress-enforcer", "inspect", "stats", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["egress-enforcer", "inspect", "bogus"]).is_err());
    }
}
