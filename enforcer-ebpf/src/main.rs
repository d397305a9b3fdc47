//! Kernel side of egress-enforcer: `cgroup/sock_addr` programs that allow a workload's
//! connect()/sendmsg() only to registered destinations, and in DNS-aware mode send its DNS
//! queries to the daemon's proxy. See docs/architecture.md, "The kernel
//! path".
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod foreign;
#[cfg(target_arch = "bpf")]
mod guard;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod programs;
#[cfg(target_arch = "bpf")]
mod scope;

// The host build of this crate (e.g. `cargo clippy --workspace`) only needs to type-check.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
