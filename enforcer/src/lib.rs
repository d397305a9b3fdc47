//! egress-enforcer: Istio ServiceEntry egress allow-lists enforced by eBPF cgroup hooks.
//!
//! `serviceentry` (decode + validate) and `policy` (compile to rules) are pure; `dataplane`
//! does all kernel I/O; `daemon` wires them together; `cli` is the command line.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod logging;
pub mod policy;
pub mod serviceentry;
