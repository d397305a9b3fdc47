//! DNS-aware mode (docs/architecture.md, "DNS-aware mode"): the kernel sends every DNS query
//! of an enforced workload here; a registered name's answer reaches the workload only after
//! its addresses are allowed in the kernel, an unregistered name never leaves the node.
//!
//! `names`, `message` and `learned` are pure (unit-tested, fuzzed); `server` does the socket
//! I/O, `kernel` the map writes and `sets` the learned rules' visibility sets.

#[cfg(feature = "runtime")]
pub mod journal;
#[cfg(feature = "runtime")]
pub mod kernel;
pub mod learned;
pub mod message;
pub mod names;
pub mod report_limit;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod sets;
#[cfg(feature = "runtime")]
pub mod upstream;
