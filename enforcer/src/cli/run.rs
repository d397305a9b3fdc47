use std::path::Path;

use super::{Failure, OrFailure as _};
use crate::{config::Config, policy::allow_spec::AllowSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Allow a destination: ADDR[/LEN]:PORT[/tcp|udp], IPv6 in brackets, PORT `*` = any.
    /// Repeatable. Example: --allow 198.51.100.7:443/tcp --allow '[2001:db8::/32]:*/udp'
    #[arg(long, value_name = "SPEC")]
    pub allow: Vec<AllowSpec>,
}

pub fn run(config: Option<&Path>, args: Args) -> Result<(), Failure> {
    let cfg = Config::load(config).user()?;
    crate::daemon::run(config, cfg, args.allow)
}
