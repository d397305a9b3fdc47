use std::path::Path;

use super::{Failure, OrFailure as _};
use crate::{config::Config, dataplane};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove the pins even while a daemon holds them
    #[arg(long)]
    pub force: bool,
}

pub fn uninstall(config: Option<&Path>, args: Args) -> Result<(), Failure> {
    let cfg = Config::load(config).user()?;
    let done = dataplane::uninstall(&cfg.bpffs, args.force).runtime()?;
    println!(
        "detached {} links, removed {} pinned maps from {}",
        done.links,
        done.maps,
        dataplane::pins::PinLayout::new(&cfg.bpffs).root.display()
    );
    Ok(())
}
