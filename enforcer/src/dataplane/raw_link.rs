//! A cgroup link made and pinned with the bpf(2) syscall itself, for the one program type whose
//! aya link cannot become an `FdLink` (cgroup sockopt, aya 0.14): created, pinned at a path,
//! and handed back as the same `FdLink` every other program gets.

use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;
use aya::programs::links::{FdLink, PinnedLink};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: BPF_CGROUP_SETSOCKOPT.
pub const CGROUP_SETSOCKOPT: u32 = 22;

/// The leading fields of `union bpf_attr` for BPF_LINK_CREATE; the rest stays zero.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    rest: [u64; 8],
}

/// The fields of `union bpf_attr` for BPF_OBJ_PIN.
#[repr(C)]
#[derive(Default)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
    rest: [u64; 6],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-padded prefix of `union bpf_attr` for `cmd`, and its size is
    // passed along, so the kernel reads nothing beyond it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Attaches `prog` to `cgroup` with a link pinned at `pin` (which must not exist), and returns
/// the link.
pub fn attach_pinned(
    prog: impl AsFd,
    cgroup: impl AsFd,
    attach_type: u32,
    pin: &Path,
) -> anyhow::Result<FdLink> {
    let mut create = LinkCreate {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        target_fd: cgroup.as_fd().as_raw_fd() as u32,
        attach_type,
        ..LinkCreate::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut create).context("bpf(BPF_LINK_CREATE)")?;
    // SAFETY: a new fd the kernel just gave us, owned from here on.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut obj = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        ..ObjPin::default()
    };
    bpf(BPF_OBJ_PIN, &mut obj).with_context(|| format!("pinning {}", pin.display()))?;
    // The pin holds the link now; the fd closes when `link` drops.
    Ok(FdLink::from(PinnedLink::from_pin(pin)?))
}
