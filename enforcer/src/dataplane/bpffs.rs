//! The BPF filesystem that holds our pins: found, or mounted when missing.

use std::{ffi::CString, os::unix::ffi::OsStrExt as _, path::Path};

use anyhow::{Context as _, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn fs_magic(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between libcs"
    )]
    Ok(st.f_type as i64)
}

pub fn is_bpffs(path: &Path) -> bool {
    fs_magic(path).is_ok_and(|m| m == BPF_FS_MAGIC)
}

/// Makes `path` usable for pins: a directory on a bpffs.
///
/// - already on a bpffs (the mount point or below it): create it if needed;
/// - an existing directory elsewhere, or one we can create: mount a bpffs there;
/// - below an empty directory we cannot write into (the usual unmounted `/sys/fs/bpf`, which
///   sysfs provides as a bare mount point): mount a bpffs on that directory, then create `path`.
pub fn ensure(path: &Path) -> anyhow::Result<()> {
    let existing = path
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return create(path);
    }
    if existing == path || std::fs::create_dir_all(path).is_ok() {
        return mount(path);
    }
    let empty = std::fs::read_dir(existing).is_ok_and(|mut rd| rd.next().is_none());
    if !empty {
        bail!(
            "{} is not on a bpffs and cannot be created (nearest existing directory: {})",
            path.display(),
            existing.display()
        );
    }
    mount(existing)?;
    create(path)
}

fn create(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

fn mount(path: &Path) -> anyhow::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings or null (no data).
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!(
            "bpffs is not mounted at {} and mounting it failed: {e} (needs root / CAP_SYS_ADMIN)",
            path.display()
        );
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}
