//! `egress-enforcer`: entry point only; see `cli` for the subcommands.

mod cli;
mod config;
mod daemon;
mod dataplane;
mod logging;
mod policy;

fn main() -> std::process::ExitCode {
    cli::main()
}
