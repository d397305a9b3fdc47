//! Builds the kernel programs (`enforcer-ebpf`) for the bpf target and puts the object in
//! OUT_DIR, where `dataplane::object` embeds it.
//!
//! With `AYA_BUILD_SKIP=1` (pure-userspace work: `cargo check`, parser tests) no eBPF toolchain
//! is needed: an empty stub object is written instead, and loading it fails with a message that
//! says so.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("enforcer");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if skip {
        fs::write(&object, []).with_context(|| format!("writing stub {}", object.display()))?;
        return Ok(());
    }
    let ebpf_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../enforcer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "enforcer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and \
         bpf-linker), or set AYA_BUILD_SKIP=1 for userspace-only work",
    )
}
