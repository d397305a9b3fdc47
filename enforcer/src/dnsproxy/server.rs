//! The proxy's sockets: queries in over UDP and TCP, forwarded to the server the workload
//! asked (or the configured upstreams), answers out only after their addresses are allowed
//! in the kernel (docs/architecture.md, "DNS-aware mode").

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use enforcer_common::{DnsSocket, IPPROTO_TCP, IPPROTO_UDP};
use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    time::timeout_at,
};
use tracing::{debug, warn};

use super::{
    journal::Journal,
    kernel::{self, KernelMaps},
    learned::LearnedTable,
    message::{self, Learned, ParsedQuery, Refusal},
    names::{Class, NameTable},
    upstream::UdpPool,
};

/// Queries answered at once; more get SERVFAIL at once rather than queue without bound.
const MAX_IN_FLIGHT: usize = 1024;
/// TCP connections at once, and how long one may sit idle.
const MAX_TCP: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the proxy did with a query, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Refused,
    Passthrough,
    Servfail,
    /// Unregistered, forwarded because of audit mode.
    Audit,
}

pub const VERDICTS: [(Verdict, &str); 5] = [
    (Verdict::Allowed, "allowed"),
    (Verdict::Refused, "refused"),
    (Verdict::Passthrough, "passthrough"),
    (Verdict::Servfail, "servfail"),
    (Verdict::Audit, "audit"),
];

/// Upper bounds (seconds) of the latency histogram's buckets: 50 µs to 5 s.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
];

/// The commit histogram's buckets: 1 µs to 10 ms.
pub const COMMIT_BUCKETS: [f64; 13] = [
    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_03, 0.000_05, 0.000_1, 0.000_2,
    0.000_5, 0.001, 0.002, 0.01,
];

#[derive(Debug)]
pub struct ProxyMetrics {
    pub verdicts: [AtomicU64; 5],
    /// From a query's arrival to its answer being ready to send.
    pub latency: prometheus_client::metrics::histogram::Histogram,
    /// From an answer parsed to its addresses in the kernel (journal and map writes).
    pub commit: prometheus_client::metrics::histogram::Histogram,
    pub learned_rules: AtomicU64,
    pub commit_failures: AtomicU64,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            verdicts: Default::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new(LATENCY_BUCKETS),
            commit: prometheus_client::metrics::histogram::Histogram::new(COMMIT_BUCKETS),
            learned_rules: AtomicU64::new(0),
            commit_failures: AtomicU64::new(0),
        }
    }
}

impl ProxyMetrics {
    fn observe(&self, verdict: Verdict, took: Duration) {
        let i = VERDICTS
            .iter()
            .position(|(v, _)| *v == verdict)
            .unwrap_or(0);
        if let Some(c) = self.verdicts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(took.as_secs_f64());
    }
}

/// How learned addresses age (`dns.minTtl`, `dns.maxTtl`, `dns.staleGrace`).
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub grace: Duration,
}

impl Lifetime {
    fn expiry(&self, now_ns: u64, ttl: u32) -> u64 {
        let ttl = Duration::from_secs(u64::from(ttl)).clamp(self.min_ttl, self.max_ttl);
        kernel::after(now_ns, ttl + self.grace)
    }
}

/// The policy side of the proxy, swapped whole on a reload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub table: NameTable,
    pub audit: bool,
    pub unregistered: ResponseCode,
    /// `dns.proxy.upstreams`; empty: the server the workload asked, if trusted.
    pub upstreams: Vec<SocketAddr>,
    /// The servers a workload may choose (`allow.dnsServers`): a query to any other goes to
    /// `fallback`, or a workload could pick the server whose answers get allowed.
    pub trusted: Vec<IpAddr>,
    /// When the asked server is unknown or unusable from here: the daemon's own resolvers.
    pub fallback: Vec<SocketAddr>,
    pub timeout: Duration,
    pub lifetime: Lifetime,
    /// The proxy's own addresses: a query asking one of them is not forwarded to itself.
    pub own: (Ipv4Addr, Option<Ipv6Addr>),
    /// The proxy's network namespace (`SO_NETNS_COOKIE`; 0 if unknown).
    pub netns_cookie: u64,
}

/// Everything a commit changes, under one lock: the table, the record, the kernel.
pub struct State {
    pub learned: LearnedTable,
    pub journal: Journal,
    pub maps: KernelMaps,
    pub sets: super::sets::ProxySets,
}

pub struct Proxy {
    settings: RwLock<Arc<Settings>>,
    state: Mutex<State>,
    pub metrics: Arc<ProxyMetrics>,
    in_flight: Arc<Semaphore>,
    reports: Mutex<super::report_limit::ReportLimit>,
    upstream: UdpPool,
    /// Learn mode: every answer relayed, registered name or not, is noted here.
    names: Option<Arc<Mutex<crate::learn::names::RecentNames>>>,
}

/// The listening sockets (bound before the kernel starts redirecting to them), as std
/// sockets: they are registered with the proxy's own runtime when it starts.
pub struct Sockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
}

impl Sockets {
    /// Binds the proxy's UDP and TCP sockets on each address, or takes an already bound
    /// one from `inherited(addr, stream)` (systemd socket activation).
    pub fn bind(
        v4: Ipv4Addr,
        v6: Option<Ipv6Addr>,
        port: u16,
        mut inherited: impl FnMut(SocketAddr, bool) -> Option<std::os::fd::OwnedFd>,
    ) -> anyhow::Result<Self> {
        let mut addrs = vec![SocketAddr::new(IpAddr::V4(v4), port)];
        addrs.extend(v6.map(|a| SocketAddr::new(IpAddr::V6(a), port)));
        let mut out = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for a in addrs {
            let udp = match inherited(a, false) {
                Some(fd) => std::net::UdpSocket::from(fd),
                None => std::net::UdpSocket::bind(a)
                    .with_context(|| format!("DNS proxy: binding UDP {a}"))?,
            };
            let tcp = match inherited(a, true) {
                Some(fd) => std::net::TcpListener::from(fd),
                None => std::net::TcpListener::bind(a)
                    .with_context(|| format!("DNS proxy: binding TCP {a}"))?,
            };
            udp.set_nonblocking(true)?;
            tcp.set_nonblocking(true)?;
            out.udp.push(udp);
            out.tcp.push(tcp);
        }
        Ok(out)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Proxy {
    pub fn new(settings: Settings, state: State) -> Self {
        Self {
            settings: RwLock::new(Arc::new(settings)),
            state: Mutex::new(state),
            metrics: Arc::default(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            reports: Mutex::default(),
            upstream: UdpPool::default(),
            names: None,
        }
    }

    /// Notes the names of every answer in `names` (learn mode).
    #[must_use]
    pub fn with_names(
        mut self,
        names: Option<Arc<Mutex<crate::learn::names::RecentNames>>>,
    ) -> Self {
        self.names = names;
        self
    }

    fn settings(&self) -> Arc<Settings> {
        Arc::clone(
            &self
                .settings
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// A reload: the new names take effect for the next query, and learned rules that the
    /// new policy no longer justifies go now.
    pub fn update(&self, settings: Settings) -> anyhow::Result<()> {
        let mut guard = lock(&self.state);
        let st = &mut *guard;
        let (mut puts, deletes) = st.learned.retarget(&settings.table);
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
        // Revocations first: a failed write must not leave them undone.
        let written = st
            .maps
            .delete(&deletes)
            .and_then(|()| st.sets.assign(&mut puts, &st.learned))
            .and_then(|()| st.maps.put(&puts))
            .and_then(|()| st.sets.release(&st.learned));
        if written.is_err() {
            st.learned.forget(puts.iter().map(|(k, _)| *k));
        }
        self.metrics
            .learned_rules
            .store(st.learned.len() as u64, Ordering::Relaxed);
        written
    }

    /// Drops expired learned rules (the kernel already ignores them), and compacts the record.
    pub fn sweep(&self) -> anyhow::Result<()> {
        let mut st = lock(&self.state);
        let dead = st.learned.sweep(kernel::monotonic_ns());
        self.metrics
            .learned_rules
            .store(st.learned.len() as u64, Ordering::Relaxed);
        st.maps.delete(&dead)?;
        let State { learned, sets, .. } = &mut *st;
        sets.release(learned)?;
        let State {
            learned, journal, ..
        } = &mut *st;
        journal.compact_if_large(learned.by_name())
    }

    pub fn set_exempt(&self, ids: &[u64]) -> anyhow::Result<()> {
        lock(&self.state).maps.set_exempt(ids)
    }

    /// The names a workload resolved to `addr`, each with its targets under the policy in
    /// force (for events). Linear in the learned entries; events are few and aggregated.
    pub fn owners_of(&self, addr: IpAddr) -> Vec<(String, super::names::Targets)> {
        let names = lock(&self.state).learned.names_of(addr);
        let s = self.settings();
        names
            .into_iter()
            .filter_map(|n| match s.table.classify(&n) {
                Class::Registered(t) if !t.is_empty() => Some((n, t)),
                _ => None,
            })
            .collect()
    }

    pub fn with_learned<R>(&self, f: impl FnOnce(&LearnedTable) -> R) -> R {
        f(&lock(&self.state).learned)
    }

    /// Answers one message from a workload; `None`: nothing to send back.
    pub async fn answer(&self, bytes: &[u8], peer: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let started = Instant::now();
        let q = match message::parse_query(bytes) {
            Ok(q) => q,
            Err(Refusal::Drop) => return None,
            Err(Refusal::Reply(r)) => return Some(r),
        };
        let proto = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        let client = lock(&self.state).maps.client(peer, proto);
        let s = self.settings();
        let (verdict, reply) = match s.table.classify(&q.name) {
            Class::Unregistered if !s.audit => {
                self.report(&q, client.as_ref(), peer, "refused");
                (Verdict::Refused, message::error_answer(&q, s.unregistered))
            }
            class => {
                self.forward_and_commit(&s, &q, bytes, client.as_ref(), peer, tcp, class)
                    .await
            }
        };
        self.metrics.observe(verdict, started.elapsed());
        Some(reply)
    }

    #[expect(clippy::too_many_arguments, reason = "one query's whole context")]
    async fn forward_and_commit(
        &self,
        s: &Settings,
        q: &ParsedQuery,
        bytes: &[u8],
        client: Option<&DnsSocket>,
        peer: SocketAddr,
        tcp: bool,
        class: Class,
    ) -> (Verdict, Vec<u8>) {
        let servfail = || {
            (
                Verdict::Servfail,
                message::error_answer(q, ResponseCode::ServFail),
            )
        };
        let upstreams = upstreams_for(s, client);
        let deadline = tokio::time::Instant::now() + s.timeout;
        let answered = self.ask_any(&upstreams, bytes, q, tcp, deadline).await;
        let (raw, learned) = match answered {
            Ok(a) => a,
            Err(e) => {
                debug!(name = %q.name, "DNS proxy: no answer from {upstreams:?}: {e:#}");
                return servfail();
            }
        };
        if let (Some(n), Some(c)) = (&self.names, client) {
            lock(n).note(
                c.cgroup_id,
                &q.name,
                learned.addrs.iter().map(|(ip, _)| *ip),
            );
        }
        let verdict = match class {
            Class::Registered(_) => {
                if let Err(e) = self.commit(s, &q.name, &learned) {
                    self.metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(name = %q.name, "DNS proxy: the answer could not be allowed, SERVFAIL: {e:#}");
                    return servfail();
                }
                Verdict::Allowed
            }
            Class::Passthrough => Verdict::Passthrough,
            Class::Unregistered => {
                self.report(q, client, peer, "would be refused (audit mode)");
                Verdict::Audit
            }
        };
        (verdict, raw)
    }

    /// Writes the answer's addresses into the kernel; only then may the answer be released.
    fn commit(&self, s: &Settings, name: &str, learned: &Learned) -> anyhow::Result<()> {
        let started = Instant::now();
        let now = kernel::monotonic_ns();
        let addrs: Vec<(IpAddr, u64)> = learned
            .addrs
            .iter()
            .map(|(ip, ttl)| (*ip, s.lifetime.expiry(now, *ttl)))
            .collect();
        let mut st = lock(&self.state);
        // A reload may have come between the query and its answer: the policy in force now
        // decides (under the lock that `update` takes), not the one the query started with.
        let current = self.settings();
        let Class::Registered(targets) = current.table.classify(name) else {
            return Ok(());
        };
        let targets = &targets;
        let learn = st.learned.learn(name, targets, &addrs)?;
        let mut puts = learn.puts;
        let State {
            learned,
            journal,
            maps,
            sets,
        } = &mut *st;
        // Recorded first: every rule in the kernel has its line (docs/architecture.md).
        let written = (if learn.record.is_empty() {
            Ok(())
        } else {
            journal.append(name, &learn.record)
        })
        .and_then(|()| sets.assign(&mut puts, learned))
        .and_then(|()| maps.put(&puts));
        if written.is_err() {
            st.learned.forget(puts.iter().map(|(k, _)| *k));
        }
        self.metrics
            .learned_rules
            .store(st.learned.len() as u64, Ordering::Relaxed);
        self.metrics.commit.observe(started.elapsed().as_secs_f64());
        written
    }

    /// Reports a query for an unregistered name, within the rate limit.
    fn report(&self, q: &ParsedQuery, client: Option<&DnsSocket>, peer: SocketAddr, what: &str) {
        let d = lock(&self.reports).offer(Instant::now());
        if d.held_before > 0 {
            warn!(
                held = d.held_before,
                "{} reports of unregistered names held back in the last second", d.held_before
            );
        }
        if d.log {
            report(q, client, peer, what);
        }
    }

    pub async fn serve_udp(self: Arc<Self>, sock: std::net::UdpSocket) -> anyhow::Result<()> {
        let sock = Arc::new(UdpSocket::from_std(sock)?);
        let mut buf = vec![0u8; message::MAX_MESSAGE];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here; the socket is still good.
                Err(e) => {
                    debug!("DNS proxy: UDP receive: {e}");
                    continue;
                }
            };
            let bytes = buf.get(..n).unwrap_or_default().to_vec();
            let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
                if let Ok(q) = message::parse_query(&bytes) {
                    self.metrics.observe(Verdict::Servfail, Duration::ZERO);
                    let _ignored = sock
                        .send_to(&message::error_answer(&q, ResponseCode::ServFail), peer)
                        .await;
                }
                continue;
            };
            let (me, sock) = (Arc::clone(&self), Arc::clone(&sock));
            tokio::spawn(async move {
                if let Some(reply) = me.answer(&bytes, peer, false).await {
                    let _ignored = sock.send_to(&reply, peer).await;
                }
                drop(permit);
            });
        }
    }

    pub async fn serve_tcp(self: Arc<Self>, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let listener = TcpListener::from_std(listener)?;
        let conns = Arc::new(Semaphore::new(MAX_TCP));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!("DNS proxy: TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(e) = me.tcp_connection(stream, peer).await {
                    debug!("DNS proxy: TCP connection from {peer}: {e}");
                }
                drop(permit);
            });
        }
    }

    async fn tcp_connection(&self, mut stream: TcpStream, peer: SocketAddr) -> std::io::Result<()> {
        loop {
            let deadline = tokio::time::Instant::now() + TCP_IDLE;
            let Ok(msg) = timeout_at(deadline, read_framed(&mut stream)).await else {
                return Ok(());
            };
            let Some(msg) = msg? else { return Ok(()) };
            if let Some(reply) = self.answer(&msg, peer, true).await {
                // A client that does not read must not hold its slot for ever.
                let deadline = tokio::time::Instant::now() + TCP_IDLE;
                timeout_at(deadline, write_framed(&mut stream, &reply))
                    .await
                    .map_err(|_| std::io::Error::other("the client stopped reading"))??;
            }
        }
    }
}

/// Where to send a query: the configured upstreams, else the server the workload asked if it
/// is a trusted one, and not this proxy, nor a loopback address of another network namespace
/// (which from here would be another server); else the fallback servers.
fn upstreams_for(s: &Settings, client: Option<&DnsSocket>) -> Vec<SocketAddr> {
    if !s.upstreams.is_empty() {
        return s.upstreams.clone();
    }
    match client {
        Some(c) if usable_upstream(s, c) => {
            let v6 = Ipv6Addr::from(c.server);
            let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
            vec![SocketAddr::new(ip, c.server_port)]
        }
        _ => s.fallback.clone(),
    }
}

fn usable_upstream(s: &Settings, c: &DnsSocket) -> bool {
    let v6 = Ipv6Addr::from(c.server);
    let server = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    if !s.trusted.contains(&server) {
        return false;
    }
    let own = match server {
        IpAddr::V4(v4) => v4 == s.own.0,
        IpAddr::V6(v6) => Some(v6) == s.own.1,
    };
    let foreign_loopback = server.is_loopback() && c.netns_cookie != s.netns_cookie;
    !own && !foreign_loopback && !server.is_unspecified()
}

/// This process's network namespace cookie (Linux 5.14+; 0 if unavailable).
pub fn own_netns_cookie() -> u64 {
    let Ok(sock) = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return 0;
    };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc == 0 { cookie } else { 0 }
}

impl Proxy {
    /// Asks each upstream in turn until one answers, all within `deadline`.
    async fn ask_any(
        &self,
        upstreams: &[SocketAddr],
        bytes: &[u8],
        q: &ParsedQuery,
        tcp: bool,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<(Vec<u8>, Learned)> {
        let mut last = None;
        for server in upstreams {
            let r = if tcp {
                timeout_at(deadline, self.ask_tcp(*server, bytes, q)).await
            } else {
                timeout_at(deadline, self.ask_udp(*server, bytes, q)).await
            };
            match r {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(e)) => last = Some(e.context(format!("asking {server}"))),
                Err(_) => return Err(anyhow::anyhow!("{server}: no answer in time")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no upstream DNS server")))
    }

    /// One exchange over a pooled UDP socket (a random source port, `upstream::MAX_USES`
    /// queries at most) with a random query ID, so that a forged answer must guess both; the
    /// workload's ID is put back in the answer.
    async fn ask_udp(
        &self,
        server: SocketAddr,
        bytes: &[u8],
        q: &ParsedQuery,
    ) -> anyhow::Result<(Vec<u8>, Learned)> {
        let mark = |cookie, on| lock(&self.state).maps.own_socket(cookie, on);
        let mut lease = self.upstream.lease(server, &mark)?;
        let (query, expect) = with_upstream_id(bytes, q);
        let up = lease.socket()?;
        up.sock.send(&query).await?;
        loop {
            let n = up.sock.recv(&mut up.buf).await?;
            let raw = up.buf.get_mut(..n).unwrap_or_default();
            // Anything else on this socket (a forgery, a stray datagram, a late answer to an
            // earlier query) is dropped, and the real answer awaited.
            if let Ok(learned) = message::parse_answer(raw, &expect) {
                let answer = with_client_id(raw, q.id);
                lease.reusable();
                return Ok((answer, learned));
            }
        }
    }

    async fn ask_tcp(
        &self,
        server: SocketAddr,
        bytes: &[u8],
        q: &ParsedQuery,
    ) -> anyhow::Result<(Vec<u8>, Learned)> {
        let socket = if server.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let cookie = kernel::socket_cookie(&socket)?;
        lock(&self.state).maps.own_socket(cookie, true)?;
        // The connect hook runs when connect(2) is issued, on the first poll.
        let connected = socket.connect(server).await;
        lock(&self.state).maps.own_socket(cookie, false)?;
        let mut stream = connected?;
        let (query, expect) = with_upstream_id(bytes, q);
        timeout_at(
            tokio::time::Instant::now() + TCP_IDLE,
            write_framed(&mut stream, &query),
        )
        .await??;
        loop {
            let mut raw = read_framed(&mut stream)
                .await?
                .context("connection closed before the answer")?;
            if let Ok(learned) = message::parse_answer(&raw, &expect) {
                if let Some(id) = raw.get_mut(..2) {
                    id.copy_from_slice(&q.id.to_be_bytes());
                }
                return Ok((raw, learned));
            }
        }
    }
}

/// The query as sent upstream (a random ID of the proxy's own) and what its answer must be.
fn with_upstream_id(bytes: &[u8], q: &ParsedQuery) -> (Vec<u8>, ParsedQuery) {
    let id = kernel::random_id();
    let mut query = bytes.to_vec();
    if let Some(head) = query.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    let mut expect = q.clone();
    expect.id = id;
    (query, expect)
}

/// The upstream's answer with the workload's ID back in place.
fn with_client_id(raw: &mut [u8], id: u16) -> Vec<u8> {
    if let Some(head) = raw.get_mut(..2) {
        head.copy_from_slice(&id.to_be_bytes());
    }
    raw.to_vec()
}

/// One length-prefixed DNS message (RFC 1035 §4.2.2); `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| std::io::Error::other("DNS message over 65535 bytes"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend(len.to_be_bytes());
    out.extend(msg);
    stream.write_all(&out).await
}

/// A query for a name no ServiceEntry registers: who asked, from where, for what.
fn report(q: &ParsedQuery, client: Option<&DnsSocket>, peer: SocketAddr, what: &str) {
    let (pid, comm, cgroup) = client.map_or((0, String::new(), 0), |c| {
        let end = c.comm.iter().position(|b| *b == 0).unwrap_or(c.comm.len());
        (
            c.tgid,
            String::from_utf8_lossy(c.comm.get(..end).unwrap_or_default()).into_owned(),
            c.cgroup_id,
        )
    });
    warn!(
        pid,
        comm = %comm,
        cgroup = %cgroup_path(pid).unwrap_or_else(|| format!("id:{cgroup}")),
        name = %q.name,
        qtype = %q.qtype,
        client = %peer,
        "DNS query for an unregistered name {what}"
    );
}

/// The process's cgroup v2 path, from /proc (the id alone says little to a reader).
fn cgroup_path(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}
