//! `egress-enforcer`: entry point only; see `cli` for the subcommands.

fn main() -> std::process::ExitCode {
    enforcer::cli::main()
}
