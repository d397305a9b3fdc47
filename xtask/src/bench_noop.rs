//! A calibration program for the kernel benchmarks: a `cgroup/connect4` program that allows
//! everything and does nothing else (`r0 = 1; exit`). Attached to the workload's cgroup it
//! shows what any cgroup sock_addr hook costs on this machine — the dispatch in the syscall and,
//! with `kernel.bpf_stats_enabled`, the statistics' own overhead — which is the floor under
//! egress-enforcer's numbers. Loaded with raw `bpf(2)` calls: two instructions need no toolchain.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::Context as _;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;

/// The prefix of `union bpf_attr` that BPF_PROG_LOAD reads (stable kernel ABI).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed; the pointers in
    // it point to buffers that outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success these commands return a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The loaded and attached no-op program; dropping it detaches it.
pub struct Noop {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl Noop {
    pub fn attach(cgroup: &Path) -> anyhow::Result<Self> {
        // mov64 r0, 1 ; exit
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..9].copy_from_slice(b"ee_noop_4");
        let mut load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_CGROUP_INET4_CONNECT,
            ..ProgLoadAttr::default()
        };
        let prog = sys_bpf(BPF_PROG_LOAD, &mut load).context("loading the no-op program")?;
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut link = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cg.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_INET4_CONNECT,
            flags: 0,
        };
        let link = sys_bpf(BPF_LINK_CREATE, &mut link).context("attaching the no-op program")?;
        Ok(Self { prog, _link: link })
    }

    /// (run count, run time ns) from the program's fdinfo.
    pub fn stats(&self) -> anyhow::Result<(u64, u64)> {
        let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.prog.as_raw_fd()))?;
        let field = |k: &str| -> anyhow::Result<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {k} in the program's fdinfo"))
        };
        Ok((field("run_cnt:")?, field("run_time_ns:")?))
    }
}
