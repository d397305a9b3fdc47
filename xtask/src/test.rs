//! `cargo xtask test`: the one test command (DESIGN §7).

use std::process::Command;

use anyhow::bail;

use crate::{cargo, step, workspace_root};

/// What the end-to-end suite needs from the machine; each missing item is named.
fn e2e_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (BPF programs, cgroups and network namespaces need it)".to_owned());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mountinfo.lines().any(|l| {
        l.split(" - ")
            .nth(1)
            .is_some_and(|r| r.starts_with("cgroup2 "))
    }) {
        missing.push("a mounted cgroup v2 hierarchy".to_owned());
    }
    if !std::path::Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        missing.push("a kernel with the bpf() syscall (CONFIG_BPF_SYSCALL)".to_owned());
    }
    let cgroup_bpf = std::fs::read_to_string("/proc/kallsyms")
        .map(|k| k.contains(" __cgroup_bpf_run_filter_sock_addr"))
        .unwrap_or(true);
    if !cgroup_bpf {
        missing.push("cgroup BPF support (CONFIG_CGROUP_BPF)".to_owned());
    }
    missing
}

pub fn test(unit_only: bool) -> anyhow::Result<()> {
    if !unit_only {
        let missing = e2e_prerequisites();
        if !missing.is_empty() {
            bail!(
                "the end-to-end suite cannot run here; missing: {}. (`cargo xtask test \
                 --unit-only` runs everything else.)",
                missing.join("; ")
            );
        }
    }
    step("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "clippy (eBPF programs, bpf target)",
        Command::new("cargo")
            .current_dir(workspace_root().join("enforcer-ebpf"))
            .env_remove("RUSTUP_TOOLCHAIN")
            .args([
                "+nightly",
                "clippy",
                "-Z",
                "build-std=core",
                "--target",
                "bpfel-unknown-none",
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    step(
        "unit tests",
        cargo().args(["test", "--workspace", "--exclude", "e2e"]),
    )?;
    if unit_only {
        return Ok(());
    }
    step(
        "build binaries",
        cargo().args(["build", "--workspace", "--bins"]),
    )?;
    step(
        "end-to-end tests",
        cargo()
            .args(["test", "--package", "e2e", "--", "--test-threads", "2"])
            .env(
                "EE_BIN",
                workspace_root().join("target/debug/egress-enforcer"),
            ),
    )
}
