//! Workload stand-in for the end-to-end tests. It enters a network namespace, optionally
//! serves the targets itself (listeners and UDP receivers on the namespace's addresses), then
//! performs each operation once, or in a loop until a stop file appears, and prints one result
//! line per operation.
//!
//! ```text
//! ee-probe [--netns NAME] [--serve] [--until FILE [--pace-us N] [--max-secs N]] OP...
//! OP := tcp:ADDR     TCP connect (and accept, when serving)
//!     | udp:ADDR     UDP connect, send, receive
//!     | sendto:ADDR  unconnected UDP sendto, receive
//! ```
//! The socket family follows ADDR: `[::ffff:198.18.0.1]:80` uses an AF_INET6 socket with a
//! v4-mapped destination. Results: `ok`, an errno name such as `EPERM`, or `lost` (a UDP
//! datagram that was sent but not received).

use std::{
    collections::HashMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Tcp,
    /// TCP Fast Open: the connection is made by sendto(MSG_FASTOPEN), not connect().
    Tfo,
    Udp,
    Sendto,
}

struct Op {
    text: String,
    kind: Kind,
    addr: SocketAddr,
}

fn parse_op(s: &str) -> anyhow::Result<Op> {
    let (k, a) = s.split_once(':').context("OP must be KIND:ADDR")?;
    let kind = match k {
        "tcp" => Kind::Tcp,
        "udp" => Kind::Udp,
        "sendto" => Kind::Sendto,
        "tfo" => Kind::Tfo,
        _ => bail!("unknown op kind {k}"),
    };
    Ok(Op {
        text: s.to_owned(),
        kind,
        addr: a.parse().with_context(|| format!("bad address {a}"))?,
    })
}

/// Where the server side binds: a v4-mapped destination is served by an IPv4 socket.
fn serve_addr(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => e2e::sys::errno_name(n),
        None if e.kind() == std::io::ErrorKind::TimedOut => "ETIMEDOUT".into(),
        None => format!("error-{}", e.kind()),
    }
}

fn enter_netns(name: &str) -> anyhow::Result<()> {
    e2e::sys::enter_netns(&e2e::sys::open_netns(name)?)
}

struct Servers {
    tcp: HashMap<SocketAddr, TcpListener>,
    udp: HashMap<SocketAddr, UdpSocket>,
}

impl Servers {
    fn new(ops: &[Op]) -> anyhow::Result<Self> {
        let mut s = Self {
            tcp: HashMap::new(),
            udp: HashMap::new(),
        };
        for op in ops {
            let at = serve_addr(op.addr);
            match op.kind {
                Kind::Tcp | Kind::Tfo => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = s.tcp.entry(at) {
                        slot.insert(TcpListener::bind(at).with_context(|| format!("listen {at}"))?);
                    }
                }
                Kind::Udp | Kind::Sendto => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = s.udp.entry(at) {
                        let u = UdpSocket::bind(at).with_context(|| format!("bind {at}"))?;
                        u.set_read_timeout(Some(Duration::from_secs(1)))?;
                        slot.insert(u);
                    }
                }
            }
        }
        Ok(s)
    }
}

/// Closing with RST keeps thousands of loop iterations from exhausting ports in TIME_WAIT.
fn reset_on_close(s: &TcpStream) {
    e2e::sys::reset_on_close(s.as_raw_fd());
}

fn unspecified_for(a: SocketAddr) -> SocketAddr {
    if a.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(a)
    } else {
        "[::]:0".parse().unwrap_or(a)
    }
}

fn receive(servers: &Servers, op: &Op, token: &[u8]) -> String {
    let Some(rx) = servers.udp.get(&serve_addr(op.addr)) else {
        return "ok".into();
    };
    let mut buf = [0u8; 64];
    loop {
        match rx.recv(&mut buf) {
            // Stale datagrams from an earlier iteration are skipped.
            Ok(n) if &buf[..n] == token => return "ok".into(),
            Ok(_) => {}
            Err(_) => return "lost".into(),
        }
    }
}

fn run_op(op: &Op, servers: Option<&Servers>, seq: u64) -> String {
    let token = format!("ee-probe-{seq}");
    match op.kind {
        Kind::Tcp => match TcpStream::connect_timeout(&op.addr, Duration::from_secs(2)) {
            Ok(s) => {
                reset_on_close(&s);
                if let Some(l) = servers.and_then(|sv| sv.tcp.get(&serve_addr(op.addr)))
                    && let Err(e) = l.accept()
                {
                    return format!("accept-{}", errno_name(&e));
                }
                "ok".into()
            }
            Err(e) => errno_name(&e),
        },
        Kind::Udp => {
            let s = match UdpSocket::bind(unspecified_for(op.addr)) {
                Ok(s) => s,
                Err(e) => return format!("bind-{}", errno_name(&e)),
            };
            if let Err(e) = s.connect(op.addr) {
                return errno_name(&e);
            }
            if let Err(e) = s.send(token.as_bytes()) {
                return format!("send-{}", errno_name(&e));
            }
            servers.map_or_else(|| "ok".into(), |sv| receive(sv, op, token.as_bytes()))
        }
        Kind::Tfo => tfo(op, servers),
        Kind::Sendto => {
            let s = match UdpSocket::bind(unspecified_for(op.addr)) {
                Ok(s) => s,
                Err(e) => return format!("bind-{}", errno_name(&e)),
            };
            if let Err(e) = s.send_to(token.as_bytes(), op.addr) {
                return errno_name(&e);
            }
            servers.map_or_else(|| "ok".into(), |sv| receive(sv, op, token.as_bytes()))
        }
    }
}

/// sendto(MSG_FASTOPEN) on a fresh TCP socket: the kernel connects inside sendmsg.
fn tfo(op: &Op, servers: Option<&Servers>) -> String {
    let family = if op.addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on an fd we own and close; the sockaddr storage is sized
    // for either family.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return format!("socket-{}", errno_name(&std::io::Error::last_os_error()));
        }
        let raw = e2e::sys::RawAddr::new(op.addr);
        let msg = b"ee-probe-tfo";
        let rc = libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_FASTOPEN,
            raw.ptr(),
            raw.socklen(),
        );
        let result = if rc < 0 {
            errno_name(&std::io::Error::last_os_error())
        } else {
            let accepted = servers
                .and_then(|sv| sv.tcp.get(&serve_addr(op.addr)))
                .map_or(Ok(()), |l| l.accept().map(drop));
            match accepted {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("accept-{}", errno_name(&e)),
            }
        };
        libc::close(fd);
        result
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut netns = None;
    let mut serve = false;
    let mut until: Option<PathBuf> = None;
    let mut pace = Duration::from_micros(200);
    let mut max = Duration::from_secs(60);
    let mut ops = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--netns" => netns = Some(args.next().context("--netns NAME")?),
            "--serve" => serve = true,
            "--until" => until = Some(args.next().context("--until FILE")?.into()),
            "--pace-us" => {
                pace = Duration::from_micros(args.next().context("--pace-us N")?.parse()?)
            }
            "--max-secs" => {
                max = Duration::from_secs(args.next().context("--max-secs N")?.parse()?)
            }
            _ => ops.push(parse_op(&a)?),
        }
    }
    if let Some(ns) = &netns {
        enter_netns(ns)?;
    }
    let servers = if serve {
        Some(Servers::new(&ops)?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "pid {}", std::process::id())?;

    let Some(stop) = until else {
        for (i, op) in ops.iter().enumerate() {
            writeln!(
                out,
                "{} {}",
                op.text,
                run_op(op, servers.as_ref(), i as u64)
            )?;
        }
        return Ok(());
    };

    writeln!(out, "started")?;
    out.flush()?;
    let mut tallies: Vec<HashMap<String, u64>> = vec![HashMap::new(); ops.len()];
    let start = Instant::now();
    let mut seq = 0u64;
    while !stop.exists() && start.elapsed() < max {
        for (op, t) in ops.iter().zip(&mut tallies) {
            seq += 1;
            *t.entry(run_op(op, servers.as_ref(), seq)).or_default() += 1;
        }
        std::thread::sleep(pace);
    }
    for (op, t) in ops.iter().zip(&tallies) {
        let mut parts: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.sort();
        writeln!(out, "{} {}", op.text, parts.join(","))?;
    }
    Ok(())
}
