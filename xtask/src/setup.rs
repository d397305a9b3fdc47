//! `cargo xtask setup`: nightly rust-src, bpf-linker built against nightly's own LLVM, and the
//! Debian packages the tests use. Each step checks first, so a ready machine takes well under
//! a second; a failing step stops with its name.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages, each with a command that proves it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("dnsmasq-base", "dnsmasq"),
    ("nftables", "nft"),
    ("iptables", "iptables"),
    ("bpftool", "bpftool"),
    ("systemd", "systemd-analyze"),
    ("groff-base", "groff"),
    // DNS-aware mode's tests resolve the way real programs do.
    ("dnsutils", "dig"),
    ("curl", "curl"),
    ("python3-minimal", "python3"),
];

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(program).is_file())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "step `nightly toolchain`: `rustc +nightly` does not run; install it with `rustup \
         toolchain install nightly`",
    )?;
    Ok(PathBuf::from(out.trim()))
}

fn llvm_major() -> anyhow::Result<String> {
    let v = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("step `nightly toolchain`: `rustc +nightly -vV` failed")?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("step `nightly toolchain`: no LLVM version in `rustc +nightly -vV`")?;
    Ok(line.split('.').next().unwrap_or(line).trim().to_owned())
}

fn rust_src(sysroot: &std::path::Path) -> anyhow::Result<()> {
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    crate::step(
        "setup: rustup component add rust-src --toolchain nightly",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
    .context("step `rust-src`")
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// bpf-linker is usable when it runs (its libLLVM resolves) and has the pinned version.
fn bpf_linker_ok() -> bool {
    let bin = cargo_bin_dir().join("bpf-linker");
    output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

/// Builds bpf-linker against nightly's own libLLVM: a prefix whose lib/ holds `libLLVM.so` and
/// the library's soname, both pointing at the sysroot's copy. The prefix must outlive the
/// build (the binary's RUNPATH points into it), so it sits under the cargo home.
fn bpf_linker(sysroot: &std::path::Path) -> anyhow::Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    let major = llvm_major()?;
    let lib = sysroot.join("lib");
    let real = std::fs::read_dir(&lib)
        .with_context(|| format!("step `bpf-linker`: reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("step `bpf-linker`: no libLLVM.so.* in {}", lib.display()))?;
    let soname = real.file_name().context("libLLVM file name")?.to_owned();
    let prefix = cargo_bin_dir()
        .parent()
        .map_or_else(
            || PathBuf::from("/root/.cargo"),
            std::path::Path::to_path_buf,
        )
        .join(format!("egress-enforcer-llvm-{major}"));
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("step `bpf-linker`: creating {}", prefix_lib.display()))?;
    for name in [std::ffi::OsString::from("libLLVM.so"), soname] {
        let link = prefix_lib.join(name);
        let _ignored = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link)
            .with_context(|| format!("step `bpf-linker`: linking {}", link.display()))?;
    }
    crate::step(
        &format!("setup: cargo install bpf-linker@{BPF_LINKER_VERSION} (LLVM {major}, ~1 min)"),
        crate::cargo()
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args([
                "install",
                "--locked",
                "--force",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
    )
    .context("step `bpf-linker`")?;
    if !bpf_linker_ok() {
        bail!("step `bpf-linker`: installed, but `bpf-linker --version` still fails");
    }
    Ok(())
}

/// The packages the unit tests use (the man page check runs groff); the rest serve the
/// end-to-end suite and the benchmarks.
const UNIT_TEST_PACKAGES: &[&str] = &["groff-base"];

fn packages(wanted: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(_, cmd)| !have(cmd))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "step `packages`: missing {}; install them as root (apt-get install -y {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    crate::step(
        "setup: apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )
    .context("step `packages`")?;
    crate::step(
        &format!("setup: apt-get install {}", missing.join(" ")),
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("step `packages`")
}

/// cargo-fuzz drives the libFuzzer target in `fuzz/`.
fn cargo_fuzz() -> anyhow::Result<()> {
    if output(Command::new(cargo_bin_dir().join("cargo-fuzz")).arg("--version")).is_some() {
        return Ok(());
    }
    crate::step(
        "setup: cargo install cargo-fuzz (~1 min)",
        crate::cargo().args(["install", "--locked", "cargo-fuzz@0.13.2"]),
    )
    .context("step `cargo-fuzz`")
}

/// What building `egress-enforcer` needs, and nothing the tests need (the container image).
pub fn setup_build() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot)?;
    bpf_linker(&sysroot)
}

pub fn setup() -> anyhow::Result<()> {
    setup_build()?;
    cargo_fuzz()?;
    packages(PACKAGES)
}

/// What `cargo xtask test --unit-only` needs: no root unless a package is missing.
pub fn setup_unit() -> anyhow::Result<()> {
    setup_build()?;
    cargo_fuzz()?;
    let unit: Vec<(&str, &str)> = PACKAGES
        .iter()
        .filter(|(pkg, _)| UNIT_TEST_PACKAGES.contains(pkg))
        .copied()
        .collect();
    packages(&unit)
}
