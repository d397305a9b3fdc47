//! `cargo xtask test`: the one test command (docs/architecture.md, "Tests and benchmarks").

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

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
    // The manifests are rendered as users render them (`kubectl kustomize`), and the fake API
    // server is checked against kubectl: the machine image provides kubectl.
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        bail!("kubectl is missing: the manifest and fake API server tests use it");
    }
    step("fmt", cargo().args(["fmt", "--all", "--", "--check"]))?;
    dependency_policy()?;
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
    // The fuzz targets build the library without the runtime (aya, tokio): a module that
    // needs it must say so, and this finds out before the long stages do.
    step(
        "check the pure library (no runtime feature, as the fuzz targets build it)",
        cargo().args(["check", "-p", "enforcer", "--no-default-features", "--lib"]),
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
    let mut totals = Totals::default();
    let unit = counted_step(
        "unit tests",
        cargo().args(["test", "--workspace", "--exclude", "e2e"]),
        &mut totals,
    );
    if unit.is_err() {
        totals.print();
        return unit;
    }
    let fuzz = fuzz();
    if unit_only || fuzz.is_err() {
        totals.print();
        return fuzz;
    }
    step(
        "build binaries",
        cargo().args(["build", "--workspace", "--bins"]),
    )?;
    let e2e = counted_step(
        "end-to-end tests",
        cargo()
            .args(["test", "--package", "e2e", "--", "--test-threads", "2"])
            .env(
                "EE_BIN",
                workspace_root().join("target/debug/egress-enforcer"),
            ),
        &mut totals,
    );
    if e2e.is_err() {
        totals.print();
        return e2e;
    }
    // Smoke test of the benchmarks: every case runs and yields numbers.
    let smoke = crate::bench::bench(true, None).and_then(|()| crate::bench::check_quick_results());
    match smoke {
        Ok(n) => {
            eprintln!("bench --quick: all {n} measurements present");
            totals.passed += 1;
        }
        Err(_) => totals.failed += 1,
    }
    totals.print();
    smoke
        .map(drop)
        .context("benchmark smoke test (cargo xtask bench --quick)")
}

/// Crates the daemon must never link: OpenSSL and aws-lc (kube and rustls use ring here),
/// and h2 (the API client and the endpoint speak HTTP/1.1 only).
fn dependency_policy() -> anyhow::Result<()> {
    eprintln!("==> dependency policy");
    for banned in ["openssl-sys", "aws-lc-rs", "aws-lc-sys", "h2"] {
        let out = cargo()
            .args([
                "tree",
                "--workspace",
                "-e",
                "normal,build",
                "--invert",
                banned,
            ])
            .output()
            .context("cargo tree")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            bail!(
                "{banned} is in the dependency tree:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if !stderr.contains("did not match any packages") {
            bail!("cargo tree failed for {banned}: {stderr}");
        }
    }
    Ok(())
}

/// Runs each fuzz target for a bounded time (`EE_FUZZ_SECS` each, default 30): ServiceEntry
/// decoding, seeded with the conformance corpus, the shipped examples and hostile shapes; and
/// DNS-aware mode's message handling, seeded with queries and answers; learn mode's store
/// file and what `suggest` makes of it. A crash, leak, timeout
/// or memory blow-up fails the step and leaves the input in fuzz/artifacts/.
fn fuzz() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("EE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let root = workspace_root();
    let data = root.join("enforcer/tests/data/istio-serviceentry");
    fuzz_target(
        "serviceentry",
        "ServiceEntry decoding",
        &[
            data.join("valid"),
            data.join("warning"),
            data.join("invalid"),
            root.join("config/serviceentries"),
            // Hostile shapes (deep nesting, aliases, many documents, go-yaml's flow colons).
            root.join("fuzz/seeds/hostile"),
        ],
        65_536,
        secs,
    )?;
    fuzz_target(
        "dns_message",
        "DNS proxy message handling",
        &[root.join("fuzz/seeds/dns")],
        // The largest DNS message (over TCP).
        65_535,
        secs,
    )?;
    fuzz_target(
        "observations",
        "learn mode's observation store and suggest",
        &[root.join("fuzz/seeds/observations")],
        1 << 16,
        secs,
    )
}

fn fuzz_target(
    target: &str,
    what: &str,
    seeds: &[std::path::PathBuf],
    max_len: usize,
    secs: u64,
) -> anyhow::Result<()> {
    let root = workspace_root();
    let corpus = root.join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("fuzz"))
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "run", target, "--fuzz-dir", "."])
        .arg(&corpus)
        .args(seeds)
        .args([
            "--",
            &format!("-max_total_time={secs}"),
            "-rss_limit_mb=2048",
            "-timeout=10",
            &format!("-max_len={max_len}"),
            "-print_final_stats=1",
        ]);
    step(&format!("fuzz {what} for {secs} s"), &mut cmd)
}

/// Sum of cargo's per-binary "test result" lines, printed once at the end so the whole run
/// has one closing line.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }

    fn print(&self) {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        );
    }
}

/// Like `step`, but echoes the command's stdout while counting its test results.
fn counted_step(name: &str, cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    eprintln!("==> {name}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{name}: could not start {cmd:?}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cargo_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 13 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 4.11s");
        t.add("test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 5 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (17, 1, 1));
    }
}
