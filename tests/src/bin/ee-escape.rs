//! The attacker of the escape matrix (tests/tests/escape.rs): tries every way out of an
//! enforced cgroup it knows and prints one result line per attempt.
//!
//! ```text
//! ee-escape --netns NAME --join CGROUP_DIR [--user UID[:net_raw]] [--until FILE] PATH:ADDR...
//! ```
//! With `--until`, it prints `joined` once in the cgroup, then repeats the attempts until FILE
//! exists and prints `PATH:ADDR RESULT COUNT` for every result seen (paths that can repeat:
//! sockets made before joining are reused, as duplicated descriptors).
//! It starts outside the cgroup as root: enters the namespace, opens its receivers there, makes
//! the sockets of `before-join*` paths and forks the helper that hands out sockets for `scm-*`
//! paths, then moves itself into the cgroup, drops to `UID` (keeping only `CAP_NET_RAW` with
//! `:net_raw`) and tries each path. ADDR is `IP:PORT` (`[IPv6]:PORT`); ICMP paths ignore the
//! port. Results: `ok` (the datagram, echo reply or connection arrived), `sent` (raw TCP: the
//! syscall succeeded, arrival is not checked), `lost` (sent but nothing arrived), or the errno
//! name of the call that failed.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use e2e::sys::{RawAddr, errno_name};

const PATHS: &[&str] = &[
    "tcp",
    "udp",
    "raw-udp",
    "raw-tcp",
    "raw-icmp",
    "ip-raw",
    "ping-connect",
    "ping-sendto",
    "packet-raw",
    "packet-dgram",
    "udplite",
    "mptcp",
    "tfo",
    "sendmmsg",
    "uring-connect",
    "uring-sendmsg",
    "before-join",
    "before-join-udp",
    "scm-tcp",
    "scm-udp",
    "srcroute",
    "srcroute-cmsg",
];

const WAIT: Duration = Duration::from_millis(300);
const IPPROTO_UDPLITE: i32 = 136;
const IPPROTO_MPTCP: i32 = 262;
const CAP_NET_RAW: u32 = 13;

struct Op {
    text: String,
    path: &'static str,
    addr: SocketAddr,
    /// Tags this attempt's datagrams so that a receiver knows them from earlier ones.
    tag: [u8; 8],
}

fn parse_op(s: &str, i: usize) -> anyhow::Result<Op> {
    let (p, a) = s.split_once(':').context("expected PATH:ADDR")?;
    let path = PATHS
        .iter()
        .find(|k| **k == p)
        .with_context(|| format!("unknown path {p}"))?;
    let mut tag = *b"ee-esc00";
    tag[6] = b'0' + (i / 10 % 10) as u8;
    tag[7] = b'0' + (i % 10) as u8;
    Ok(Op {
        text: s.to_owned(),
        path,
        addr: a.parse().with_context(|| format!("bad address {a}"))?,
        tag,
    })
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn err_name(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| format!("error-{}", e.kind()), errno_name)
}

fn check(rc: i64) -> std::io::Result<i64> {
    if rc < 0 { Err(last_err()) } else { Ok(rc) }
}

fn socket(family: i32, ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = check(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) }.into())?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn sendto(fd: &OwnedFd, buf: &[u8], to: &RawAddr, flags: i32) -> std::io::Result<()> {
    // SAFETY: buffer and address are valid for the call.
    check(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            to.ptr(),
            to.socklen(),
        )
    } as i64)
    .map(drop)
}

fn connect(fd: &OwnedFd, to: &RawAddr) -> std::io::Result<()> {
    // SAFETY: valid address for the call.
    check(unsafe { libc::connect(fd.as_raw_fd(), to.ptr(), to.socklen()) }.into()).map(drop)
}

fn send(fd: &OwnedFd, buf: &[u8]) -> std::io::Result<()> {
    // SAFETY: valid buffer.
    check(unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) } as i64).map(drop)
}

fn set_rcv_timeout(fd: RawFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros() as i32),
    };
    // SAFETY: option value is one timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// Waits for a datagram containing `tag` on `fd`.
fn await_tag(fd: RawFd, tag: &[u8]) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        set_rcv_timeout(
            fd,
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return false;
        }
        if buf[..n as usize].windows(tag.len()).any(|w| w == tag) {
            return true;
        }
    }
    false
}

// ---- packet building ----

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP datagram from port 40000 to `to` carrying `tag`; the checksum over the pseudo
/// header for `src` (IPv4 may leave it zero).
fn udp(src: IpAddr, to: SocketAddr, tag: &[u8]) -> Vec<u8> {
    let len = (8 + tag.len()) as u16;
    let mut d = Vec::new();
    d.extend(40000u16.to_be_bytes());
    d.extend(to.port().to_be_bytes());
    d.extend(len.to_be_bytes());
    d.extend([0, 0]);
    d.extend(tag);
    if let (IpAddr::V6(s), IpAddr::V6(t)) = (src, to.ip()) {
        let mut sum = csum_add(0, &s.octets());
        sum = csum_add(sum, &t.octets());
        sum = csum_add(sum, &u32::from(len).to_be_bytes());
        sum = csum_add(sum, &[0, 0, 0, 17]);
        let c = csum_fold(csum_add(sum, &d));
        d[6..8].copy_from_slice(&c.to_be_bytes());
    }
    d
}

/// `payload` (UDP) behind an IP header from `src` to `to`.
fn ip_packet(src: IpAddr, to: IpAddr, payload: &[u8]) -> Vec<u8> {
    match (src, to) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            let total = (20 + payload.len()) as u16;
            let mut h = vec![0x45, 0];
            h.extend(total.to_be_bytes());
            h.extend([0, 1, 0x40, 0, 64, 17, 0, 0]);
            h.extend(s.octets());
            h.extend(t.octets());
            let c = csum_fold(csum_add(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend(payload);
            h
        }
        (s, t) => {
            let (IpAddr::V6(s), IpAddr::V6(t)) = (s, t) else {
                return Vec::new();
            };
            let mut h = vec![0x60, 0, 0, 0];
            h.extend((payload.len() as u16).to_be_bytes());
            h.extend([17, 64]);
            h.extend(s.octets());
            h.extend(t.octets());
            h.extend(payload);
            h
        }
    }
}

/// Packets are sent from the destination's own address (all test addresses are local).
fn src_for(to: &SocketAddr) -> IpAddr {
    to.ip()
}

fn echo_request(v6: bool, tag: &[u8]) -> Vec<u8> {
    let mut d = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0x12, 0x34, 0, 1];
    d.extend(tag);
    if !v6 {
        let c = csum_fold(csum_add(0, &d));
        d[2..4].copy_from_slice(&c.to_be_bytes());
    }
    d
}

// ---- receivers ----

#[derive(Default)]
struct Receivers {
    udp: HashMap<SocketAddr, UdpSocket>,
    udplite: HashMap<SocketAddr, OwnedFd>,
    tcp: HashMap<SocketAddr, TcpListener>,
}

fn bound(family: i32, ty: i32, proto: i32, a: SocketAddr) -> anyhow::Result<OwnedFd> {
    let fd = socket(family, ty, proto)?;
    let ra = RawAddr::new(a);
    // SAFETY: valid address.
    check(unsafe { libc::bind(fd.as_raw_fd(), ra.ptr(), ra.socklen()) }.into())
        .with_context(|| format!("bind {a}"))?;
    Ok(fd)
}

impl Receivers {
    fn open(&mut self, op: &Op) -> anyhow::Result<()> {
        let a = op.addr;
        match op.path {
            "tcp" | "mptcp" | "tfo" | "uring-connect" | "before-join" | "scm-tcp" => {
                if let std::collections::hash_map::Entry::Vacant(v) = self.tcp.entry(a) {
                    v.insert(TcpListener::bind(a).with_context(|| format!("listen {a}"))?);
                }
            }
            "udplite" => {
                if let std::collections::hash_map::Entry::Vacant(v) = self.udplite.entry(a) {
                    v.insert(bound(family(&a), libc::SOCK_DGRAM, IPPROTO_UDPLITE, a)?);
                }
            }
            "raw-icmp" | "ping-connect" | "ping-sendto" | "raw-tcp" => {}
            _ => {
                if let std::collections::hash_map::Entry::Vacant(v) = self.udp.entry(a) {
                    v.insert(UdpSocket::bind(a).with_context(|| format!("bind {a}"))?);
                }
            }
        }
        Ok(())
    }

    fn udp_got(&self, op: &Op) -> String {
        let got = self
            .udp
            .get(&op.addr)
            .is_some_and(|s| await_tag(s.as_raw_fd(), &op.tag));
        if got { "ok" } else { "lost" }.to_owned()
    }
}

// ---- sockets made outside the cgroup ----

/// Forks a process that stays in the current cgroup and answers each request (`4t`, `6u`...:
/// family and TCP/UDP) with a new socket sent over SCM_RIGHTS.
fn spawn_fd_helper() -> anyhow::Result<UnixStream> {
    let (parent, child) = UnixStream::pair()?;
    // SAFETY: the process is single-threaded; the child only makes syscalls and exits.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", last_err()),
        0 => {
            drop(parent);
            serve_fds(child);
            // SAFETY: leaving the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        _ => Ok(parent),
    }
}

fn serve_fds(mut s: UnixStream) {
    let mut req = [0u8; 2];
    while s.read_exact(&mut req).is_ok() {
        let fam = if req[0] == b'6' {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let ty = if req[1] == b't' {
            libc::SOCK_STREAM
        } else {
            libc::SOCK_DGRAM
        };
        let Ok(fd) = socket(fam, ty, 0) else {
            return;
        };
        if send_fd(&s, fd.as_raw_fd()).is_err() {
            return;
        }
    }
}

fn send_fd(s: &UnixStream, fd: RawFd) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; the pointers set below outlive the call.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        check(libc::sendmsg(s.as_raw_fd(), &raw const msg, 0) as i64).map(drop)
    }
}

fn recv_fd(s: &mut UnixStream, req: [u8; 2]) -> anyhow::Result<OwnedFd> {
    s.write_all(&req)?;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in send_fd; the received fd is owned from here on.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        check(libc::recvmsg(s.as_raw_fd(), &raw mut msg, 0) as i64)?;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            bail!("no fd received");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

// ---- joining and dropping privileges ----

fn join(cgroup_dir: &str) -> anyhow::Result<()> {
    std::fs::write(format!("{cgroup_dir}/cgroup.procs"), "0")
        .with_context(|| format!("joining {cgroup_dir}"))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Becomes `uid`/`gid` with no supplementary groups and no capabilities but, with
/// `net_raw`, CAP_NET_RAW.
fn drop_to(uid: u32, net_raw: bool) -> anyhow::Result<()> {
    // SAFETY: plain syscalls with valid arguments.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0).into()).context("keepcaps")?;
        check(libc::setgroups(0, std::ptr::null()).into()).context("setgroups")?;
        check(libc::setresgid(uid, uid, uid).into()).context("setresgid")?;
        check(libc::setresuid(uid, uid, uid).into()).context("setresuid")?;
        let hdr = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let bits = if net_raw { 1u32 << CAP_NET_RAW } else { 0 };
        let data = [
            CapData {
                effective: bits,
                permitted: bits,
                inheritable: 0,
            },
            CapData::default(),
        ];
        check(libc::syscall(
            libc::SYS_capset,
            &raw const hdr,
            data.as_ptr(),
        ))
        .context("capset")?;
    }
    Ok(())
}

// ---- the paths ----

struct Attacker {
    rx: Receivers,
    before: HashMap<usize, OwnedFd>,
    helper: Option<UnixStream>,
}

fn result(r: anyhow::Result<String>) -> String {
    match r {
        Ok(s) => s,
        Err(e) => match e.downcast_ref::<std::io::Error>() {
            Some(io) => err_name(io),
            None => format!("error:{e}"),
        },
    }
}

impl Attacker {
    fn attempt(&mut self, i: usize, op: &Op) -> String {
        result(self.try_path(i, op))
    }

    fn try_path(&mut self, i: usize, op: &Op) -> anyhow::Result<String> {
        let a = op.addr;
        let ra = RawAddr::new(a);
        let fam = family(&a);
        let v6 = a.is_ipv6();
        Ok(match op.path {
            "tcp" => {
                let fd = socket(fam, libc::SOCK_STREAM, 0)?;
                connect(&fd, &ra)?;
                "ok".into()
            }
            "udp" => {
                let fd = socket(fam, libc::SOCK_DGRAM, 0)?;
                sendto(&fd, &op.tag, &ra, 0)?;
                self.rx.udp_got(op)
            }
            "raw-udp" => {
                let fd = socket(fam, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
                if v6 {
                    set_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, 6)?;
                }
                let port0 = RawAddr::new(SocketAddr::new(a.ip(), 0));
                sendto(&fd, &udp(src_for(&a), a, &op.tag), &port0, 0)?;
                self.rx.udp_got(op)
            }
            "raw-tcp" => {
                let fd = socket(fam, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
                let mut syn = Vec::new();
                syn.extend(40001u16.to_be_bytes());
                syn.extend(a.port().to_be_bytes());
                syn.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0x40, 0, 0, 0, 0, 0]);
                let port0 = RawAddr::new(SocketAddr::new(a.ip(), 0));
                sendto(&fd, &syn, &port0, 0)?;
                "sent".into()
            }
            "raw-icmp" => {
                let proto = if v6 {
                    libc::IPPROTO_ICMPV6
                } else {
                    libc::IPPROTO_ICMP
                };
                let fd = socket(fam, libc::SOCK_RAW, proto)?;
                let port0 = RawAddr::new(SocketAddr::new(a.ip(), 0));
                sendto(&fd, &echo_request(v6, &op.tag), &port0, 0)?;
                got(await_tag(fd.as_raw_fd(), &op.tag))
            }
            "ip-raw" => {
                let fd = socket(fam, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
                let pkt = ip_packet(src_for(&a), a.ip(), &udp(src_for(&a), a, &op.tag));
                let port0 = RawAddr::new(SocketAddr::new(a.ip(), 0));
                sendto(&fd, &pkt, &port0, 0)?;
                self.rx.udp_got(op)
            }
            "ping-connect" | "ping-sendto" => {
                let proto = if v6 {
                    libc::IPPROTO_ICMPV6
                } else {
                    libc::IPPROTO_ICMP
                };
                let fd = socket(fam, libc::SOCK_DGRAM, proto)?;
                let to = RawAddr::new(SocketAddr::new(a.ip(), 0));
                let echo = echo_request(v6, &op.tag);
                if op.path == "ping-connect" {
                    connect(&fd, &to)?;
                    send(&fd, &echo)?;
                } else {
                    sendto(&fd, &echo, &to, 0)?;
                }
                got(await_tag(fd.as_raw_fd(), &op.tag))
            }
            "packet-raw" | "packet-dgram" => self.packet(op)?,
            "udplite" => {
                let fd = socket(fam, libc::SOCK_DGRAM, IPPROTO_UDPLITE)?;
                connect(&fd, &ra)?;
                send(&fd, &op.tag)?;
                let rx = self.rx.udplite.get(&a).map(|f| f.as_raw_fd());
                got(rx.is_some_and(|r| await_tag(r, &op.tag)))
            }
            "mptcp" => {
                let fd = socket(fam, libc::SOCK_STREAM, IPPROTO_MPTCP)?;
                connect(&fd, &ra)?;
                "ok".into()
            }
            "tfo" => {
                let fd = socket(fam, libc::SOCK_STREAM, 0)?;
                sendto(&fd, &op.tag, &ra, libc::MSG_FASTOPEN)?;
                "ok".into()
            }
            "sendmmsg" => {
                let fd = socket(fam, libc::SOCK_DGRAM, 0)?;
                sendmmsg(&fd, &ra, &op.tag)?;
                self.rx.udp_got(op)
            }
            "uring-connect" => {
                let fd = socket(fam, libc::SOCK_STREAM, 0)?;
                uring(
                    io_uring::opcode::Connect::new(
                        io_uring::types::Fd(fd.as_raw_fd()),
                        ra.ptr(),
                        ra.socklen(),
                    )
                    .build(),
                )?;
                "ok".into()
            }
            "uring-sendmsg" => {
                let fd = socket(fam, libc::SOCK_DGRAM, 0)?;
                let mut iov = libc::iovec {
                    iov_base: op.tag.as_ptr() as *mut _,
                    iov_len: op.tag.len(),
                };
                // SAFETY: plain data; the pointers outlive the submission.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_name = ra.ptr() as *mut _;
                msg.msg_namelen = ra.socklen();
                msg.msg_iov = &raw mut iov;
                msg.msg_iovlen = 1;
                uring(
                    io_uring::opcode::SendMsg::new(
                        io_uring::types::Fd(fd.as_raw_fd()),
                        &raw const msg,
                    )
                    .build(),
                )?;
                self.rx.udp_got(op)
            }
            "before-join" | "scm-tcp" => {
                let fd = self.outside_socket(i, op, b't')?;
                connect(&fd, &ra)?;
                "ok".into()
            }
            "before-join-udp" | "scm-udp" => {
                let fd = self.outside_socket(i, op, b'u')?;
                sendto(&fd, &op.tag, &ra, 0)?;
                self.rx.udp_got(op)
            }
            "srcroute" | "srcroute-cmsg" => self.source_routed(op)?,
            p => bail!("unhandled path {p}"),
        })
    }

    fn outside_socket(&mut self, i: usize, op: &Op, kind: u8) -> anyhow::Result<OwnedFd> {
        if op.path.starts_with("before-join") {
            // A duplicate: the same socket, so that the attempt can be repeated.
            let fd = self
                .before
                .get(&i)
                .context("no socket made before joining")?;
            return Ok(fd.try_clone()?);
        }
        let helper = self.helper.as_mut().context("no fd helper")?;
        recv_fd(helper, [if op.addr.is_ipv6() { b'6' } else { b'4' }, kind])
    }

    /// A whole IP/UDP packet through a packet socket on the namespace's `lo`.
    fn packet(&self, op: &Op) -> anyhow::Result<String> {
        let a = op.addr;
        let ethertype: u16 = if a.is_ipv6() { 0x86dd } else { 0x0800 };
        let raw = op.path == "packet-raw";
        let ty = if raw {
            libc::SOCK_RAW
        } else {
            libc::SOCK_DGRAM
        };
        let fd = socket(libc::AF_PACKET, ty, i32::from(ethertype.to_be()))?;
        let mut frame = Vec::new();
        if raw {
            frame.extend([0u8; 12]);
            frame.extend(ethertype.to_be_bytes());
        }
        // An IPv4 packet arriving on `lo` from one of the host's own addresses is dropped as
        // martian; an address of the test range that is not assigned is not.
        let src = match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 255, 254)),
            v6 => v6,
        };
        frame.extend(ip_packet(src, a.ip(), &udp(src, a, &op.tag)));
        // SAFETY: plain data.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ethertype.to_be();
        // SAFETY: NUL-terminated name.
        ll.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
        ll.sll_halen = 6;
        // SAFETY: valid buffer and address.
        check(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        } as i64)?;
        Ok(self.rx.udp_got(op))
    }
}

/// The first hop a source route sends through: an address of the test range that no rule
/// registers.
fn hop_for(a: &SocketAddr) -> IpAddr {
    if a.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 2))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2))
    }
}

/// (level, option or cmsg type, bytes) of a source route through `hop`: an IPv4 loose source
/// route option, or an IPv6 segment routing header whose only segment is the hop.
fn source_route(a: &SocketAddr, cmsg: bool) -> (i32, i32, Vec<u8>) {
    match hop_for(a) {
        IpAddr::V4(h) => {
            let mut o = vec![0x83, 7, 4];
            o.extend(h.octets());
            o.push(0);
            let ty = if cmsg {
                libc::IP_RETOPTS
            } else {
                libc::IP_OPTIONS
            };
            (libc::IPPROTO_IP, ty, o)
        }
        IpAddr::V6(h) => {
            let mut r = vec![0, 2, 4, 0, 0, 0, 0, 0];
            r.extend(h.octets());
            (libc::IPPROTO_IPV6, libc::IPV6_RTHDR, r)
        }
    }
}

impl Attacker {
    /// A UDP datagram to ADDR routed through an unregistered first hop, the route set on the
    /// socket (`srcroute`) or given with the message (`srcroute-cmsg`).
    fn source_routed(&self, op: &Op) -> anyhow::Result<String> {
        let a = op.addr;
        let ra = RawAddr::new(a);
        let fd = socket(family(&a), libc::SOCK_DGRAM, 0)?;
        let cmsg = op.path == "srcroute-cmsg";
        let (level, ty, route) = source_route(&a, cmsg);
        if !cmsg {
            // SAFETY: option value pointer and length describe `route`.
            check(
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        level,
                        ty,
                        route.as_ptr().cast(),
                        route.len() as libc::socklen_t,
                    )
                }
                .into(),
            )?;
            sendto(&fd, &op.tag, &ra, 0)?;
        } else {
            send_with_cmsg(&fd, &ra, &op.tag, level, ty, &route)?;
        }
        Ok(self.rx.udp_got(op))
    }
}

fn send_with_cmsg(
    fd: &OwnedFd,
    to: &RawAddr,
    data: &[u8],
    level: i32,
    ty: i32,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload.len() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call, and the cmsg
    // written fits the buffer CMSG_SPACE sized.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = to.ptr() as *mut _;
        msg.msg_namelen = to.socklen();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = ty;
        (*c).cmsg_len = libc::CMSG_LEN(payload.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(payload.as_ptr(), libc::CMSG_DATA(c), payload.len());
        check(libc::sendmsg(fd.as_raw_fd(), &raw const msg, 0) as i64).map(drop)
    }
}

fn got(b: bool) -> String {
    if b { "ok" } else { "lost" }.to_owned()
}

fn set_int(fd: &OwnedFd, level: i32, name: i32, v: i32) -> std::io::Result<()> {
    // SAFETY: option value is one int.
    check(
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&raw const v).cast(),
                size_of::<i32>() as libc::socklen_t,
            )
        }
        .into(),
    )
    .map(drop)
}

/// Two datagrams in one `sendmmsg`: the hook runs for each.
fn sendmmsg(fd: &OwnedFd, to: &RawAddr, tag: &[u8]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: tag.as_ptr() as *mut _,
        iov_len: tag.len(),
    };
    // SAFETY: plain data; the pointers outlive the call.
    let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
    hdr.msg_hdr.msg_name = to.ptr() as *mut _;
    hdr.msg_hdr.msg_namelen = to.socklen();
    hdr.msg_hdr.msg_iov = &raw mut iov;
    hdr.msg_hdr.msg_iovlen = 1;
    let mut msgs = [hdr, hdr];
    // SAFETY: two valid message headers.
    let n = check(unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) }.into())?;
    if n == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// Submits one operation to a new ring and returns its result as the syscall would.
fn uring(entry: io_uring::squeue::Entry) -> anyhow::Result<()> {
    let mut ring = io_uring::IoUring::new(4)?;
    // SAFETY: the caller keeps every buffer the entry points to alive until this returns.
    unsafe { ring.submission().push(&entry) }.map_err(|_| anyhow::anyhow!("ring full"))?;
    ring.submit_and_wait(1)?;
    let cqe = ring.completion().next().context("no completion")?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()).into());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut netns, mut cgroup, mut user, mut until) = (None, None, None, None);
    let mut ops = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--netns" => netns = Some(args.next().context("--netns NAME")?),
            "--join" => cgroup = Some(args.next().context("--join DIR")?),
            "--user" => user = Some(args.next().context("--user UID[:net_raw]")?),
            "--until" => {
                until = Some(std::path::PathBuf::from(
                    args.next().context("--until FILE")?,
                ));
            }
            _ => ops.push(parse_op(&a, ops.len())?),
        }
    }
    let netns = netns.context("--netns is required")?;
    let cgroup = cgroup.context("--join is required")?;
    e2e::sys::enter_netns(&e2e::sys::open_netns(&netns)?)?;
    // Ping sockets for every group, so that the enforcer (not the sysctl) is what refuses.
    std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647")?;
    let mut att = Attacker {
        rx: Receivers::default(),
        before: HashMap::new(),
        helper: None,
    };
    for (i, op) in ops.iter().enumerate() {
        att.rx.open(op)?;
        match op.path {
            "before-join" => {
                att.before
                    .insert(i, socket(family(&op.addr), libc::SOCK_STREAM, 0)?);
            }
            "before-join-udp" => {
                att.before
                    .insert(i, socket(family(&op.addr), libc::SOCK_DGRAM, 0)?);
            }
            "scm-tcp" | "scm-udp" if att.helper.is_none() => {
                att.helper = Some(spawn_fd_helper()?);
            }
            _ => {}
        }
    }
    join(&cgroup)?;
    if let Some(u) = user {
        let (uid, caps) = u.split_once(':').unwrap_or((&u, ""));
        drop_to(uid.parse().context("UID")?, caps == "net_raw")?;
    }
    let mut out = std::io::stdout().lock();
    let Some(until) = until else {
        for (i, op) in ops.iter().enumerate() {
            let r = att.attempt(i, op);
            writeln!(out, "{} {r}", op.text)?;
        }
        return Ok(());
    };
    writeln!(out, "joined")?;
    out.flush()?;
    let mut seen: std::collections::BTreeMap<(String, String), u64> = Default::default();
    while !until.exists() {
        for (i, op) in ops.iter().enumerate() {
            let r = att.attempt(i, op);
            *seen.entry((op.text.clone(), r)).or_default() += 1;
        }
    }
    for ((op, r), n) in seen {
        writeln!(out, "{op} {r} {n}")?;
    }
    Ok(())
}
