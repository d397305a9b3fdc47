//! The eBPF object is linked by `bpf-linker`, which cargo does not know about: rebuild when the
//! linker binary changes (e.g. after `cargo xtask setup` rebuilt it for a new LLVM).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
