use std::path::Path;

use super::Failure;
use crate::{daemon::RunOptions, policy::allow_spec::AllowSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Allow a destination besides the ServiceEntries: ADDR[/LEN]:PORT[/tcp|udp|icmp], IPv6 in
    /// brackets, PORT `*` = any (ICMP: always `*`, and ping needs allow.ping). Repeatable.
    /// Example: --allow 198.51.100.7:443/tcp
    #[arg(long, value_name = "SPEC")]
    pub allow: Vec<AllowSpec>,
    /// Apply the policy once (after every host has been looked up) and exit, leaving it
    /// pinned: for init containers and scripts
    #[arg(long)]
    pub once: bool,
    /// Serve /healthz, /readyz and /metrics on IP:PORT instead of `http.listen`; "" = none
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<String>,
    /// Watch ServiceEntries in the Kubernetes API server this kubeconfig points to (sets
    /// kubernetes.apiServer and kubernetes.kubeconfig)
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

pub fn run(config: Option<&Path>, args: Args) -> Result<(), Failure> {
    crate::daemon::run(RunOptions {
        config: config.map(Path::to_path_buf),
        allow: args.allow,
        once: args.once,
        listen: args.listen,
        kubeconfig: args.kubeconfig,
    })
}
