//! Sockets passed by systemd socket activation (`sd_listen_fds(3)`: `LISTEN_PID`,
//! `LISTEN_FDS`, descriptors from 3). DNS-aware mode takes its proxy sockets from here when a
//! `.socket` unit holds them, so that queries sent while the daemon restarts wait in the
//! socket instead of failing (docs/architecture.md, "DNS-aware mode").

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

/// One inherited socket: its type (`SOCK_DGRAM` or `SOCK_STREAM`) and local address.
pub struct Inherited {
    pub fd: OwnedFd,
    pub stream: bool,
    pub addr: SocketAddr,
}

const FIRST_FD: RawFd = 3;

/// Takes the sockets passed to this process (none when `LISTEN_PID` names another process),
/// and unsets the variables so that children do not take them too.
pub fn take() -> Vec<Inherited> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // SAFETY: removing variables before any other thread exists (called at start-up, from
    // `run`, before the runtime is built).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !ours {
        return Vec::new();
    }
    (FIRST_FD..FIRST_FD.saturating_add(n))
        .filter_map(|fd| {
            // SAFETY: systemd passed these descriptors to us and nothing else owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            describe(fd)
        })
        .collect()
}

fn describe(fd: OwnedFd) -> Option<Inherited> {
    let mut ty: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            std::ptr::from_mut(&mut ty).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        tracing::warn!(
            fd = fd.as_raw_fd(),
            "an inherited descriptor is not a socket; ignored"
        );
        return None;
    }
    let std_sock = std::net::UdpSocket::from(fd);
    let addr = std_sock.local_addr().ok()?;
    Some(Inherited {
        fd: OwnedFd::from(std_sock),
        stream: ty == libc::SOCK_STREAM,
        addr,
    })
}
