//! egress-enforcer: Istio ServiceEntry egress allow-lists enforced by eBPF cgroup hooks.
//!
//! `serviceentry` (decode + validate) and `policy` (compile to rules) are pure; `dataplane`
//! does all kernel I/O; `daemon` wires them together; `cli` is the command line.

#[cfg(feature = "runtime")]
pub mod cluster;
pub mod config;
pub mod dnsproxy;
pub mod duration;
pub mod k8syaml;
pub mod learn;
pub mod policy;
pub mod scope;
pub mod serviceentry;

#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod daemon;
#[cfg(feature = "runtime")]
pub mod dataplane;
#[cfg(feature = "runtime")]
pub mod exit;
#[cfg(feature = "runtime")]
pub mod logging;
#[cfg(feature = "runtime")]
pub mod resolve;
