//! Calibration programs for the kernel benchmarks: `cgroup/connect4` programs that allow
//! everything. The no-op one (`r0 = 1; exit`), attached to the workload's cgroup, shows what any
//! cgroup sock_addr hook costs on this machine — the dispatch in the syscall and, with
//! `kernel.bpf_stats_enabled`, the statistics' own overhead — which is the floor under
//! egress-enforcer's numbers. The others call one helper first: what it costs on this kernel
//! is the floor under any design that needs it (scoping must learn who the caller is).
//! Loaded with raw `bpf(2)` calls: three instructions need no toolchain.

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
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;

/// The hook a calibration program is attached to (`bpf_attach_type`), by the enforcing
/// program's name. The same three instructions measure differently on different hooks (on
/// this VM 55 ns on connect4 and 70 ns on sendmsg4, driven by a UDP connect and a sendto), so
/// each enforcing program is compared with a no-op on its own hook.
pub fn attach_type(hook: &str) -> anyhow::Result<u32> {
    Ok(match hook {
        "connect4" => BPF_CGROUP_INET4_CONNECT,
        "connect6" => BPF_CGROUP_INET6_CONNECT,
        "sendmsg4" => BPF_CGROUP_UDP4_SENDMSG,
        "sendmsg6" => BPF_CGROUP_UDP6_SENDMSG,
        _ => anyhow::bail!("no calibration hook {hook}"),
    })
}

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

/// What a calibration program does before it allows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Calibration {
    /// Nothing.
    Noop,
    /// `bpf_get_current_cgroup_id()`: the calling task's cgroup, which scoping looks up.
    CgroupId,
    /// `bpf_get_netns_cookie(ctx)`: the socket's network namespace, the cheapest helper that
    /// tells one pod from another.
    NetnsCookie,
}

impl Calibration {
    /// The helper called first, if any (`BPF_FUNC_*`), and the program's name.
    fn helper(self) -> (Option<i32>, &'static [u8]) {
        match self {
            Self::Noop => (None, b"ee_noop_4"),
            Self::CgroupId => (Some(80), b"ee_cgid_4"),
            Self::NetnsCookie => (Some(122), b"ee_netns_4"),
        }
    }
}

/// A loaded and attached calibration program; dropping it detaches it.
pub struct Noop {
    prog: OwnedFd,
    _link: OwnedFd,
}

impl Noop {
    /// On `cgroup/connect4`.
    pub fn attach(cgroup: &Path, what: Calibration) -> anyhow::Result<Self> {
        Self::attach_to(cgroup, what, BPF_CGROUP_INET4_CONNECT)
    }

    /// On the hook `attach_type` ([`attach_type`]).
    pub fn attach_to(cgroup: &Path, what: Calibration, attach_type: u32) -> anyhow::Result<Self> {
        let (helper, prog_name) = what.helper();
        // [call helper (r1 is still the context)] ; mov64 r0, 1 ; exit
        let mut insns: Vec<u64> = helper
            .map(|id| {
                let [a, b, c, d] = id.to_le_bytes();
                u64::from_le_bytes([0x85, 0, 0, 0, a, b, c, d])
            })
            .into_iter()
            .collect();
        insns.push(u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]));
        insns.push(u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]));
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..prog_name.len()].copy_from_slice(prog_name);
        let mut load = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: u32::try_from(insns.len())?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: attach_type,
            ..ProgLoadAttr::default()
        };
        let prog = sys_bpf(BPF_PROG_LOAD, &mut load)
            .with_context(|| format!("loading the {what:?} calibration program"))?;
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let mut link = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cg.as_raw_fd() as u32,
            attach_type,
            flags: 0,
        };
        let link = sys_bpf(BPF_LINK_CREATE, &mut link)
            .with_context(|| format!("attaching the {what:?} calibration program"))?;
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
