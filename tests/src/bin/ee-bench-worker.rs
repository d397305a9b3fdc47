//! The measuring side of `cargo xtask bench` (kernel path). It times each case in a tight loop
//! on one CPU, on two sides in alternation inside this one process: the side under test
//! (`--netns`/`--cgroup`) and, with `--base-netns`/`--base-cgroup`, the baseline without any
//! enforcement. A socket belongs to the namespace and cgroup it was created in, so the process
//! enters a side before each chunk of iterations (untimed) and the two sides are measured in
//! interleaved chunks: drift of the machine over the run affects both alike.
//!
//! The server side (TCP listeners, UDP sinks) is opened in each namespace as a process of
//! `--server-cgroup`: it stands for the remote peer and must not be subject to the policy.
//! Every iteration's outcome is checked, so a configuration that does not enforce what the
//! table claims fails the benchmark instead of producing a flattering number.
//!
//! ```text
//! ee-bench-worker --netns NAME --cgroup DIR [--base-netns NAME --base-cgroup DIR]
//!                 --server-cgroup DIR [--cpu N] [--rounds R] CASE...
//! CASE := WORKLOAD,EXPECT,ADDR,ITERS       ITERS per side, split over R rounds (default 10)
//! WORKLOAD := udp-connect   connect() again and again on one UDP socket (reused socket)
//!           | udp-send      connect() then send() one datagram, on one UDP socket
//!           | tcp           socket + connect + accept + close (fresh socket each time)
//!           | sendto        sendto() on one unconnected UDP socket
//! EXPECT := ok | deny      on the side under test; deny: every iteration fails with one errno.
//!                          The baseline side must always succeed.
//! ```
//! Output: one JSON line per case: `ns_per_op` and `base_ns_per_op` (mean per iteration over
//! all rounds, after ITERS/10 warm-up iterations per side) and the errno seen.

use std::{
    fs::File,
    io::Write as _,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, bail};
use e2e::sys::{RawAddr, enter_netns, errno_name, open_netns};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    UdpConnect,
    UdpSend,
    Tcp,
    Sendto,
}

struct Case {
    text: String,
    workload: Workload,
    deny: bool,
    addr: SocketAddr,
    iters: u64,
}

fn parse_case(s: &str) -> anyhow::Result<Case> {
    let parts: Vec<&str> = s.split(',').collect();
    let [w, e, a, n] = parts[..] else {
        bail!("CASE must be WORKLOAD,EXPECT,ADDR,ITERS: {s}");
    };
    let workload = match w {
        "udp-connect" => Workload::UdpConnect,
        "udp-send" => Workload::UdpSend,
        "tcp" => Workload::Tcp,
        "sendto" => Workload::Sendto,
        _ => bail!("unknown workload {w}"),
    };
    let deny = match e {
        "ok" => false,
        "deny" => true,
        _ => bail!("EXPECT must be ok or deny: {e}"),
    };
    Ok(Case {
        text: s.to_owned(),
        workload,
        deny,
        addr: a.parse().with_context(|| format!("bad address {a}"))?,
        iters: n.parse().with_context(|| format!("bad ITERS {n}"))?,
    })
}

fn os_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn join_cgroup(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("cgroup.procs");
    std::fs::write(&path, std::process::id().to_string())
        .with_context(|| format!("joining {}", path.display()))
}

fn pin_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within its bounds for
    // cpu < CPU_SETSIZE, which sched_setaffinity then checks against the machine.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(os_err()).with_context(|| format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

fn family(a: SocketAddr) -> libc::c_int {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn socket(a: SocketAddr, ty: libc::c_int) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe { libc::socket(family(a), ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os_err()).context("socket");
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: option value pointer and length describe one c_int.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The server side of one destination: a TCP listener and a UDP sink that nobody reads (once
/// its buffer is full the kernel drops datagrams silently, without an ICMP error).
fn serve(a: SocketAddr) -> anyhow::Result<[OwnedFd; 2]> {
    let raw = RawAddr::new(a);
    let tcp = socket(a, libc::SOCK_STREAM)?;
    set_int(tcp.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    let udp = socket(a, libc::SOCK_DGRAM)?;
    for s in [&tcp, &udp] {
        // SAFETY: raw describes a valid sockaddr of raw.len bytes.
        if unsafe { libc::bind(s.as_raw_fd(), raw.ptr(), raw.socklen()) } != 0 {
            return Err(os_err()).with_context(|| format!("bind {a}"));
        }
    }
    // SAFETY: listen on our own socket.
    if unsafe { libc::listen(tcp.as_raw_fd(), 4096) } != 0 {
        return Err(os_err()).context("listen");
    }
    Ok([tcp, udp])
}

/// One iteration's result: 0 on success, else the errno.
type Outcome = i32;

fn errno() -> i32 {
    os_err().raw_os_error().unwrap_or(-1)
}

fn connect(fd: RawFd, a: &RawAddr) -> Outcome {
    // SAFETY: a describes a valid sockaddr.
    if unsafe { libc::connect(fd, a.ptr(), a.socklen()) } == 0 {
        0
    } else {
        errno()
    }
}

fn send_one(fd: RawFd) -> Outcome {
    let b = [0u8; 1];
    // SAFETY: one-byte buffer.
    if unsafe { libc::send(fd, b.as_ptr().cast(), 1, libc::MSG_DONTWAIT) } == 1 {
        0
    } else {
        errno()
    }
}

fn sendto_one(fd: RawFd, a: &RawAddr) -> Outcome {
    let b = [0u8; 1];
    // SAFETY: one-byte buffer, valid sockaddr.
    if unsafe {
        libc::sendto(
            fd,
            b.as_ptr().cast(),
            1,
            libc::MSG_DONTWAIT,
            a.ptr(),
            a.socklen(),
        )
    } == 1
    {
        0
    } else {
        errno()
    }
}

/// One TCP connection made and torn down: an abortive close (RST) keeps TIME_WAIT sockets from
/// piling up over thousands of iterations.
fn tcp_once(a: SocketAddr, raw: &RawAddr, listener: RawFd) -> anyhow::Result<Outcome> {
    let s = socket(a, libc::SOCK_STREAM)?;
    e2e::sys::reset_on_close(s.as_raw_fd());
    let r = connect(s.as_raw_fd(), raw);
    if r == 0 {
        // SAFETY: accept on our listener; the new fd is owned right away.
        let c = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if c < 0 {
            return Err(os_err()).context("accept");
        }
        drop(s);
        // SAFETY: c is a fresh, valid descriptor.
        drop(unsafe { OwnedFd::from_raw_fd(c) });
    }
    Ok(r)
}

struct Checker {
    deny: bool,
    errno: Option<i32>,
    bad: u64,
}

impl Checker {
    fn see(&mut self, r: Outcome) {
        match (self.deny, r) {
            (false, 0) => {}
            (true, e) if e != 0 && self.errno.is_none_or(|x| x == e) => self.errno = Some(e),
            (_, e) => {
                self.bad += 1;
                if e != 0 {
                    self.errno.get_or_insert(e);
                }
            }
        }
    }
}

/// A namespace + cgroup the process can enter, with the peers it serves there.
struct Side {
    netns: File,
    cgroup: PathBuf,
    listeners: Vec<(SocketAddr, OwnedFd)>,
    _sinks: Vec<OwnedFd>,
}

impl Side {
    fn open(
        netns: &str,
        cgroup: &str,
        server_cg: &str,
        addrs: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let netns_file = open_netns(netns)?;
        enter_netns(&netns_file)?;
        join_cgroup(Path::new(server_cg))?;
        let mut listeners = Vec::new();
        let mut sinks = Vec::new();
        for &a in addrs {
            let [tcp, udp] = serve(a)?;
            listeners.push((a, tcp));
            sinks.push(udp);
        }
        Ok(Self {
            netns: netns_file,
            cgroup: PathBuf::from(cgroup),
            listeners,
            _sinks: sinks,
        })
    }

    fn enter(&self) -> anyhow::Result<()> {
        enter_netns(&self.netns)?;
        join_cgroup(&self.cgroup)
    }

    fn listener(&self, a: SocketAddr) -> Option<RawFd> {
        self.listeners
            .iter()
            .find(|(l, _)| *l == a)
            .map(|(_, l)| l.as_raw_fd())
    }
}

/// One side's state for one case: its reused UDP socket, outcome check and time spent.
struct Run {
    udp: OwnedFd,
    check: Checker,
    ns: u128,
}

fn once(c: &Case, raw: &RawAddr, side: &Side, run: &mut Run) -> anyhow::Result<()> {
    let u = run.udp.as_raw_fd();
    let r = match c.workload {
        Workload::UdpConnect => connect(u, raw),
        Workload::UdpSend => match connect(u, raw) {
            0 => send_one(u),
            e => e,
        },
        Workload::Sendto => sendto_one(u, raw),
        Workload::Tcp => {
            let l = side
                .listener(c.addr)
                .with_context(|| format!("no listener on {}", c.addr))?;
            tcp_once(c.addr, raw, l)?
        }
    };
    run.check.see(r);
    Ok(())
}

fn chunk(c: &Case, raw: &RawAddr, side: &Side, run: &mut Run, n: u64) -> anyhow::Result<()> {
    side.enter()?;
    let start = Instant::now();
    for _ in 0..n {
        once(c, raw, side, run)?;
    }
    run.ns += start.elapsed().as_nanos();
    Ok(())
}

/// Measures one case on each side in `rounds` interleaved chunks; returns ns per iteration.
fn run_case(c: &Case, sides: &[(&Side, bool)], rounds: u64) -> anyhow::Result<Vec<Run>> {
    let raw = RawAddr::new(c.addr);
    let mut runs = Vec::new();
    for &(side, deny) in sides {
        side.enter()?;
        let mut run = Run {
            udp: socket(c.addr, libc::SOCK_DGRAM)?,
            check: Checker {
                deny,
                errno: None,
                bad: 0,
            },
            ns: 0,
        };
        for _ in 0..(c.iters / 10).max(1) {
            once(c, &raw, side, &mut run)?;
        }
        run.check = Checker {
            deny,
            errno: None,
            bad: 0,
        };
        run.ns = 0;
        runs.push(run);
    }
    let per_round = (c.iters / rounds).max(1);
    for r in 0..rounds {
        let order: Vec<usize> = if r % 2 == 0 {
            (0..sides.len()).collect()
        } else {
            (0..sides.len()).rev().collect()
        };
        for i in order {
            chunk(c, &raw, sides[i].0, &mut runs[i], per_round)?;
        }
    }
    for run in &mut runs {
        run.ns /= u128::from(per_round * rounds);
    }
    Ok(runs)
}

fn fmt_errno(e: Option<i32>) -> String {
    e.map_or_else(|| "null".into(), |e| format!("\"{}\"", errno_name(e)))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opt: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut cases = Vec::new();
    while let Some(a) = args.next() {
        if let Some(name) = a.strip_prefix("--") {
            let v = args.next().with_context(|| format!("{a} needs a value"))?;
            opt.insert(name.to_owned(), v);
        } else {
            cases.push(parse_case(&a)?);
        }
    }
    let get = |k: &str| opt.get(k).map(String::as_str);
    let netns = get("netns").context("--netns is required")?;
    let cg = get("cgroup").context("--cgroup is required")?;
    let server_cg = get("server-cgroup").context("--server-cgroup is required")?;
    let rounds: u64 = get("rounds").map_or(Ok(10), str::parse)?;
    if let Some(cpu) = get("cpu") {
        pin_cpu(cpu.parse()?)?;
    }
    let mut addrs: Vec<SocketAddr> = cases.iter().map(|c| c.addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    let case_side = Side::open(netns, cg, server_cg, &addrs)?;
    let base_side = match (get("base-netns"), get("base-cgroup")) {
        (Some(n), Some(c)) => Some(Side::open(n, c, server_cg, &addrs)?),
        (None, None) => None,
        _ => bail!("--base-netns and --base-cgroup go together"),
    };
    let mut out = std::io::stdout().lock();
    for c in &cases {
        let mut sides = vec![(&case_side, c.deny)];
        if let Some(b) = &base_side {
            sides.push((b, false));
        }
        let runs = run_case(c, &sides, rounds)?;
        for (i, (run, (_, deny))) in runs.iter().zip(&sides).enumerate() {
            if run.check.bad > 0 {
                bail!(
                    "{}: {} iterations did not give the expected outcome on the {} side \
                     (expected {}; errno seen: {})",
                    c.text,
                    run.check.bad,
                    if i == 0 { "tested" } else { "baseline" },
                    if *deny { "deny" } else { "ok" },
                    fmt_errno(run.check.errno)
                );
            }
        }
        let base = runs
            .get(1)
            .map_or_else(|| "null".to_owned(), |r| r.ns.to_string());
        writeln!(
            out,
            "{{\"case\": \"{}\", \"ns_per_op\": {}, \"base_ns_per_op\": {base}, \"iters\": {}, \"errno\": {}}}",
            c.text,
            runs[0].ns,
            c.iters,
            fmt_errno(runs[0].check.errno)
        )?;
    }
    Ok(())
}
