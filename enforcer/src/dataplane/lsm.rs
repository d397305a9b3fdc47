//! Whether the kernel runs BPF LSM programs. `CONFIG_BPF_LSM` alone is not enough: unless
//! `bpf` is in the active LSM list (`lsm=` on the kernel command line, or `CONFIG_LSM`), an LSM
//! program loads and attaches without error and then never runs.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};

/// Where securityfs lists the active LSMs.
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Whether the comma-separated active LSM list names `bpf`.
pub fn list_has_bpf(list: &str) -> bool {
    list.trim().split(',').any(|m| m.trim() == "bpf")
}

/// Reads the active LSM list, mounting securityfs on a private temporary directory when the
/// standard path is not mounted (as in most containers and some minimal hosts).
pub fn active_list() -> anyhow::Result<String> {
    match fs::read_to_string(LSM_LIST) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => read_via_private_mount(),
        Err(e) => Err(e).with_context(|| format!("reading {LSM_LIST}")),
    }
}

fn read_via_private_mount() -> anyhow::Result<String> {
    let dir =
        std::env::temp_dir().join(format!("egress-enforcer-securityfs-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = mount_and_read(&dir);
    let _ignored = fs::remove_dir(&dir);
    result
}

fn mount_and_read(dir: &Path) -> anyhow::Result<String> {
    let target = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let fstype = c"securityfs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("{LSM_LIST} is missing and securityfs cannot be mounted: {e}");
    }
    let list = fs::read_to_string(dir.join("lsm"));
    // SAFETY: unmounting what this function mounted.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    list.context("reading the active LSM list from securityfs")
}

/// `Ok(())` if BPF LSM programs run on this kernel, otherwise why not.
pub fn check_active() -> anyhow::Result<()> {
    let list = active_list()?;
    if !list_has_bpf(&list) {
        bail!(
            "bpf is not among the active LSMs ({}): add it to the kernel's lsm= boot parameter",
            list.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bpf_in_the_list() {
        assert!(list_has_bpf("lockdown,capability,landlock,bpf\n"));
        assert!(list_has_bpf("bpf"));
        assert!(!list_has_bpf("lockdown,capability,landlock,bpfx"));
        assert!(!list_has_bpf(""));
    }
}
