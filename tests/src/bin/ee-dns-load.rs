//! The client side of DNS-aware mode's benchmarks.
//!
//! ```text
//! ee-dns-load rate --server IP:PORT --name NAME --qps N --seconds S
//!     A queries for NAME at N per second on one connected UDP socket; prints the latency
//!     median and 99th percentile of the answers (µs) and how many were lost.
//! ee-dns-load names --server IP:PORT --suffix DOMAIN --count N --qps Q
//!     A queries for n0.DOMAIN … n{N-1}.DOMAIN; prints how many were answered with an address.
//! ee-dns-load resolve-connect --name NAME --port P --iters N
//!     N times: resolve NAME with the system resolver (glibc getaddrinfo), then TCP-connect to
//!     the first IPv4 address; a listener on 0.0.0.0:P in this process accepts. Prints how
//!     many connects succeeded, were denied, or failed otherwise, and how many lookups failed.
//! ```
//! Output: one JSON object on stdout.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _, UdpSocket},
    str::FromStr as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};

fn query(id: u16, name: &str) -> anyhow::Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

/// Waits until `at` by sleeping: the queries due meanwhile go out together. Spinning would take
/// a core from the proxy and the server being measured (the machine may have two).
fn pace(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sends `names(i)` for i in 0..count at `qps`; returns (sent, per-answer latency µs, answers
/// with at least one record).
fn blast(
    server: SocketAddr,
    count: usize,
    qps: f64,
    names: impl Fn(usize) -> String,
) -> anyhow::Result<(usize, Vec<f64>, usize)> {
    let sock = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let sent_at: Arc<Mutex<HashMap<u16, Instant>>> = Arc::default();
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (sock, sent_at) = (sock.try_clone()?, Arc::clone(&sent_at));
        let finished = Arc::clone(&finished);
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut with_records = 0;
            let mut buf = [0u8; 4096];
            let mut idle_since = Instant::now();
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        idle_since = Instant::now();
                        let Ok(m) = Message::from_vec(&buf[..n]) else {
                            continue;
                        };
                        let t = sent_at.lock().map(|mut s| s.remove(&m.metadata.id));
                        if let Ok(Some(t)) = t {
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                            with_records += usize::from(!m.answers.is_empty());
                        }
                    }
                    Err(_) => {
                        let pending = sent_at.lock().map_or(0, |s| s.len());
                        let done = finished.load(std::sync::atomic::Ordering::Acquire);
                        // Lost answers are given 3 s after the last one seen.
                        if done && (pending == 0 || idle_since.elapsed() > Duration::from_secs(3)) {
                            return (lat, with_records);
                        }
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / qps);
    // Sleeps are at least this long; the queries due within one go out back to back.
    let tick = Duration::from_micros(500).max(interval);
    let mut sent = 0;
    for i in 0..count {
        let at = start + interval * u32::try_from(i)?;
        if at > Instant::now() + tick / 2 {
            pace(at);
        }
        let id = (i % 65_536) as u16;
        let q = query(id, &names(i))?;
        if let Ok(mut s) = sent_at.lock() {
            s.insert(id, Instant::now());
        }
        if sock.send(&q).is_ok() {
            sent += 1;
        }
    }
    finished.store(true, std::sync::atomic::Ordering::Release);
    let (lat, with_records) = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    Ok((sent, lat, with_records))
}

fn resolve_connect(name: &str, port: u16, iters: usize) -> anyhow::Result<serde_json::Value> {
    let listener = TcpListener::bind(("0.0.0.0", port))?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let (mut ok, mut denied, mut other, mut unresolved) = (0, 0, 0, 0);
    let mut errors: HashMap<String, usize> = HashMap::new();
    for _ in 0..iters {
        let addr = match (name, port).to_socket_addrs() {
            Ok(mut a) => a.find(SocketAddr::is_ipv4),
            Err(e) => {
                *errors.entry(e.to_string()).or_default() += 1;
                None
            }
        };
        let Some(addr) = addr else {
            unresolved += 1;
            continue;
        };
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => ok += 1,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => denied += 1,
            Err(e) => {
                other += 1;
                *errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    Ok(serde_json::json!({
        "iters": iters, "ok": ok, "denied": denied, "other": other,
        "unresolved": unresolved, "errors": errors,
    }))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .context("a mode: rate, names or resolve-connect")?;
    let mut opt: HashMap<String, String> = HashMap::new();
    while let Some(a) = args.next() {
        let k = a
            .strip_prefix("--")
            .with_context(|| format!("unexpected {a}"))?;
        opt.insert(
            k.to_owned(),
            args.next().with_context(|| format!("{a} needs a value"))?,
        );
    }
    let get = |k: &str| opt.get(k).with_context(|| format!("--{k} is required"));
    let out = match mode.as_str() {
        "rate" => {
            let server: SocketAddr = get("server")?.parse()?;
            let qps: f64 = get("qps")?.parse()?;
            let count = (qps * get("seconds")?.parse::<f64>()?) as usize;
            let name = get("name")?.clone();
            let (sent, mut lat, _) = blast(server, count, qps, |_| name.clone())?;
            lat.sort_by(f64::total_cmp);
            serde_json::json!({
                "sent": sent, "answered": lat.len(), "lost": sent - lat.len(),
                "p50_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99),
            })
        }
        "names" => {
            let server: SocketAddr = get("server")?.parse()?;
            let count: usize = get("count")?.parse()?;
            let suffix = get("suffix")?.clone();
            let (sent, lat, with_records) = blast(server, count, get("qps")?.parse()?, |i| {
                format!("n{i}.{suffix}")
            })?;
            serde_json::json!({"sent": sent, "answered": lat.len(), "with_address": with_records})
        }
        "resolve-connect" => {
            resolve_connect(get("name")?, get("port")?.parse()?, get("iters")?.parse()?)?
        }
        m => bail!("unknown mode {m}"),
    };
    println!("{out}");
    Ok(())
}
