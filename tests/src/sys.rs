//! Small syscall helpers shared by the workload binaries (`ee-probe`, `ee-bench-worker`).

use std::{
    fs::File,
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
};

use anyhow::Context as _;

/// Opens a named network namespace (`ip netns add NAME`).
pub fn open_netns(name: &str) -> anyhow::Result<File> {
    File::open(format!("/run/netns/{name}")).with_context(|| format!("netns {name}"))
}

/// Moves the calling thread into the namespace; sockets created afterwards belong to it.
pub fn enter_netns(ns: &File) -> anyhow::Result<()> {
    // SAFETY: setns on an fd we own; the callers are single-threaded.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// The name the probes print for an errno.
pub fn errno_name(code: i32) -> String {
    match code {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EDESTADDRREQ => "EDESTADDRREQ".into(),
        n => format!("errno-{n}"),
    }
}

/// A socket address in the C layout, for the raw socket calls std does not offer
/// (MSG_FASTOPEN, connect on a reused UDP socket without allocation).
pub struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    pub fn new(a: SocketAddr) -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage; the writes below stay inside it, since
        // sockaddr_in and sockaddr_in6 are both smaller than sockaddr_storage.
        unsafe {
            let mut storage: libc::sockaddr_storage = std::mem::zeroed();
            let len = match a {
                SocketAddr::V4(v4) => {
                    let sin = (&raw mut storage).cast::<libc::sockaddr_in>();
                    (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                    (*sin).sin_port = v4.port().to_be();
                    (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                    size_of::<libc::sockaddr_in>()
                }
                SocketAddr::V6(v6) => {
                    let sin6 = (&raw mut storage).cast::<libc::sockaddr_in6>();
                    (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    (*sin6).sin6_port = v6.port().to_be();
                    (*sin6).sin6_addr.s6_addr = v6.ip().octets();
                    size_of::<libc::sockaddr_in6>()
                }
            };
            Self {
                storage,
                len: len as libc::socklen_t,
            }
        }
    }

    pub fn ptr(&self) -> *const libc::sockaddr {
        (&raw const self.storage).cast()
    }

    pub const fn socklen(&self) -> libc::socklen_t {
        self.len
    }
}

/// Makes `close` send RST instead of FIN, so that thousands of connections made in a loop do
/// not exhaust ports in TIME_WAIT.
pub fn reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: option value pointer and length describe one linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Whether process `pid` holds a TCP socket listening on `port` (IPv4), read from
/// /proc/net/tcp (socket inodes) and the process's fd table: a port that answers may belong
/// to someone else.
pub fn listens_on(pid: u32, port: u16) -> anyhow::Result<bool> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .with_context(|| format!("/proc/{pid}/net/tcp"))?;
    let want = format!(":{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, state 0A (LISTEN), inode
            (f.get(1)?.ends_with(&want) && *f.get(3)? == "0A")
                .then(|| f.get(9).map(|s| (*s).to_owned()))?
        })
        .collect();
    if inodes.is_empty() {
        return Ok(false);
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Ok(false);
    };
    Ok(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|t| {
            let t = t.to_string_lossy();
            inodes.iter().any(|i| t == format!("socket:[{i}]"))
        })
    }))
}
