//! tracing setup: text or JSON lines on stderr, level from `RUST_LOG` (default info, kube's
//! client quieter).
//! The `log` records of aya and aya-log are forwarded into tracing.

use tracing_subscriber::{EnvFilter, util::SubscriberInitExt as _};

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    // kube's client logs a whole response body at WARN when it cannot parse one (which can
    // be a list of megabytes, on every retry); the daemon reports the error itself.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_client::client=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // try_init: a second call (e.g. from tests) keeps the first subscriber.
    let _already_set = match format {
        LogFormat::Text => builder.finish().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).finish().try_init(),
    };
}

/// The target of the kernel programs' aya-log records (their module path).
pub const KERNEL_TARGET: &str = "enforcer::programs";

/// Whether the kernel programs' debug records would be shown (e.g. `RUST_LOG=debug` or
/// `RUST_LOG=info,enforcer=debug`); only then is their logging switched on, as it costs
/// instructions on the deny path.
pub fn kernel_debug_enabled() -> bool {
    tracing::enabled!(target: KERNEL_TARGET, tracing::Level::DEBUG)
}
