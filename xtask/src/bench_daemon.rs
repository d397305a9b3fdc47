//! Daemon benchmarks (need root): time from a ServiceEntry file change to the rule being in
//! the kernel map, resolving and applying 1,000 DNS hosts against a local dnsmasq, and the
//! daemon's RSS with 10,000 entries. Each runs a real daemon on its own bpffs pin directory
//! and cgroup; DNS traffic stays on 127.0.0.1.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use e2e::Dns;

use crate::{bench::Row, workspace_root};

/// A daemon started for a benchmark; killed and uninstalled when dropped, so that a failed
/// benchmark leaves no enforcement behind.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    bin: PathBuf,
    config: PathBuf,
}

fn read_lines(stderr: ChildStderr) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Daemon {
    pub fn start(bin: &Path, config: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting egress-enforcer")?;
        let lines = read_lines(child.stderr.take().context("stderr")?);
        Ok(Self {
            child,
            lines,
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
        })
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<Instant> {
        self.wait_for_line(needle, timeout).map(|(t, _)| t)
    }

    /// Waits for a log line containing `needle`; returns when it came and the line.
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut recent = std::collections::VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok((Instant::now(), l)),
                Ok(l) => {
                    if recent.len() == 10 {
                        recent.pop_front();
                    }
                    recent.push_back(l);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let tail: Vec<String> = recent.into_iter().collect();
                    bail!(
                        "the daemon exited before logging {needle:?}:\n{}",
                        tail.join("\n")
                    )
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no {needle:?} from the daemon within {timeout:?}")
                }
            }
        }
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:").unwrap_or(0)
    }

    /// A kB field of the daemon's `/proc/PID/status` (`VmRSS:`, `VmHWM:`).
    pub fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in {path}"))
    }

    /// Drops pending log lines (so that the next wait sees only what follows).
    pub fn drain(&mut self) {
        while self.lines.try_recv().is_ok() {}
    }

    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ignored = self.child.kill();
        let _ignored = self.child.wait();
        let _ignored = Command::new(&self.bin)
            .arg("--config")
            .arg(&self.config)
            .args(["uninstall", "--force"])
            .output();
    }
}

/// Names the benchmarks use; dnsmasq answers NXDOMAIN for the ones it does not list.
const BENCH_DOMAINS: &[&str] = &["bench.test", "example.com", "example.org", "example"];

fn config(dir: &Path, se_dir: &Path, dns_port: u16, cgroup: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "cgroups: [{cgroup}]\nbpffs: {}\nserviceEntries: [{}]\nallow: {{dnsServers: []}}\ndns: {{mode: resolve, servers: ['127.0.0.1:{dns_port}'], concurrency: 64}}\nlog: {{format: json}}\nhttp: {{listen: ''}}\n",
            dir.join("bpffs").display(),
            se_dir.display()
        ),
    )?;
    Ok(path)
}

fn static_entry(i: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}}}\nspec:\n  hosts: [s{i}.bench.test]\n  addresses: [10.{}.{}.{}]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n",
        i / 65536 % 256,
        i / 256 % 256,
        i % 256
    )
}

fn dns_entry(i: usize) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: h{i}}}\nspec:\n  hosts: [h{i}.bench.test]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: DNS\n"
    )
}

pub fn cleanup(dir: &Path) {
    let bpffs = dir.join("bpffs");
    if let Ok(c) = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ignored = std::fs::remove_dir_all(dir);
}

pub fn fresh_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/bench").join(name);
    cleanup(&dir);
    std::fs::create_dir_all(dir.join("se"))?;
    Ok(dir)
}

/// File change → rule applied (the daemon logs after the map writes return).
fn change_to_enforced(bin: &Path, samples: usize) -> anyhow::Result<Row> {
    let dir = fresh_dir("change")?;
    let dns = Dns::start_with(&dir, 300, BENCH_DOMAINS)?;
    let se = dir.join("se");
    std::fs::write(se.join("base.yaml"), static_entry(0))?;
    let mut d = Daemon::start(bin, &config(&dir, &se, dns.port, "ee-bench-change")?)?;
    d.wait_for("first full apply done", Duration::from_secs(30))?;
    let mut ms = Vec::new();
    for i in 1..=samples {
        // Let the previous change's events settle so that each sample is one reload.
        std::thread::sleep(Duration::from_millis(60));
        d.drain();
        let t0 = Instant::now();
        std::fs::write(se.join("changing.yaml"), static_entry(i))?;
        let t1 = d.wait_for("rules updated", Duration::from_secs(10))?;
        ms.push(t1.duration_since(t0).as_secs_f64() * 1e3);
    }
    d.stop();
    drop(dns);
    cleanup(&dir);
    let (lo, hi) = (
        ms.iter().copied().fold(f64::INFINITY, f64::min),
        ms.iter().copied().fold(0.0, f64::max),
    );
    Ok(Row {
        case: "ServiceEntry file change → rule in the kernel map (static entry)".to_owned(),
        median: crate::bench::median(ms),
        unit: "ms",
        target: Some(50.0),
        detail: format!(
            "{samples} changes; min {lo:.1} / max {hi:.1} ms; includes the 25 ms debounce"
        ),
    })
}

/// Start → every one of N names resolved (dnsmasq on loopback) and applied.
fn resolve_hosts(bin: &Path, n: usize, runs: usize) -> anyhow::Result<Row> {
    let mut ms = Vec::new();
    for run in 0..runs {
        let dir = fresh_dir(&format!("resolve-{run}"))?;
        let hosts = dir.join("dns-hosts");
        let text: String = (0..n)
            .map(|i| format!("198.18.{}.{} h{i}.bench.test\n", i / 250, i % 250 + 1))
            .collect();
        std::fs::write(&hosts, text)?;
        let dns = Dns::start_with(&dir, 300, BENCH_DOMAINS)?;
        let se = dir.join("se");
        let yaml: String = (0..n).map(dns_entry).collect();
        std::fs::write(se.join("hosts.yaml"), yaml)?;
        let t0 = Instant::now();
        let mut d = Daemon::start(
            bin,
            &config(&dir, &se, dns.port, &format!("ee-bench-resolve-{run}"))?,
        )?;
        d.wait_for("enforcing", Duration::from_secs(60))?;
        let t_static = Instant::now();
        let t1 = d.wait_for("first full apply done", Duration::from_secs(120))?;
        ms.push(t1.duration_since(t_static).as_secs_f64() * 1e3);
        let _ = t0;
        d.stop();
        drop(dns);
        cleanup(&dir);
    }
    Ok(Row {
        case: format!("resolve + apply {n} DNS hosts (A and AAAA, local dnsmasq)"),
        median: crate::bench::median(ms),
        unit: "ms",
        target: None,
        detail: format!(
            "{runs} runs; from static rules enforced to every answer applied; 64 lookups in flight"
        ),
    })
}

/// The daemon's resident memory once 10,000 entries are loaded, resolved and applied.
fn rss(bin: &Path, entries: usize) -> anyhow::Result<Row> {
    let dir = fresh_dir("rss")?;
    let dns = Dns::start_with(&dir, 300, BENCH_DOMAINS)?;
    let se = dir.join("se");
    let generator = crate::bench::serviceentry_bench_bin()?;
    let st = Command::new(&generator)
        .arg("generate")
        .arg(&se)
        .arg(entries.to_string())
        .status()?;
    if !st.success() {
        bail!("generating entries failed");
    }
    let mut d = Daemon::start(bin, &config(&dir, &se, dns.port, "ee-bench-rss")?)?;
    d.wait_for("first full apply done", Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_millis(500));
    let kib = d.rss_kib();
    d.stop();
    drop(dns);
    cleanup(&dir);
    Ok(Row {
        case: format!("daemon RSS with {entries} ServiceEntries"),
        median: kib as f64 / 1024.0,
        unit: "MiB",
        target: Some(50.0),
        detail: "VmRSS after the first full apply (names answered NXDOMAIN by the local dnsmasq)"
            .to_owned(),
    })
}

/// A config like [`config`]'s with the endpoint on a free loopback port.
fn config_with_http(
    dir: &Path,
    se_dir: &Path,
    dns_port: u16,
    cgroup: &str,
    extra: &str,
) -> anyhow::Result<PathBuf> {
    let path = config(dir, se_dir, dns_port, cgroup)?;
    let text = std::fs::read_to_string(&path)?
        .replace("http: {listen: ''}", "http: {listen: '127.0.0.1:0'}");
    std::fs::write(&path, format!("{text}{extra}"))?;
    Ok(path)
}

/// One `GET /healthz` over a fresh connection; its latency.
fn healthz_once(addr: std::net::SocketAddr) -> anyhow::Result<Duration> {
    use std::io::{Read as _, Write as _};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("/healthz answered {:?}", String::from_utf8_lossy(&buf));
    }
    Ok(t0.elapsed())
}

/// Polls `/healthz` back to back until `stop` is set; every latency in ms.
fn poll_healthz(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<Vec<f64>>> {
    std::thread::spawn(move || {
        let mut ms = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            ms.push(healthz_once(addr)?.as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(ms)
    })
}

fn p99(mut v: Vec<f64>) -> (f64, f64, f64, usize) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let at = |q: f64| {
        v.get(((n as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.99), at(0.5), v.last().copied().unwrap_or(f64::NAN), n)
}

/// `/healthz` latency while the daemon reloads `entries` ServiceEntries (each SIGHUP parses
/// them all) and while it applies `rules` new rules in one reload. The endpoint answers from
/// state, on another worker than the reload.
fn healthz_under_load(bin: &Path, entries: usize, rules: usize) -> anyhow::Result<Vec<Row>> {
    let dir = fresh_dir("healthz")?;
    let dns = Dns::start_with(&dir, 300, BENCH_DOMAINS)?;
    let se = dir.join("se");
    let generator = crate::bench::serviceentry_bench_bin()?;
    if !Command::new(&generator)
        .arg("generate")
        .arg(&se)
        .arg(entries.to_string())
        .status()?
        .success()
    {
        bail!("generating entries failed");
    }
    let extra = format!("maps: {{exactRules: {}}}\n", rules + entries * 4 + 1024);
    let cfg = config_with_http(&dir, &se, dns.port, "ee-bench-healthz", &extra)?;
    let mut d = Daemon::start(bin, &cfg)?;
    let (_, line) = d.wait_for_line("\"listen\"", Duration::from_secs(60))?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    let addr: std::net::SocketAddr = v["listen"].as_str().context("listen address")?.parse()?;
    d.wait_for("first full apply done", Duration::from_secs(300))?;

    let measure = |d: &mut Daemon,
                   act: &dyn Fn() -> anyhow::Result<()>,
                   done: &str|
     -> anyhow::Result<Vec<f64>> {
        d.drain();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = poll_healthz(addr, std::sync::Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(20));
        act()?;
        let waited = d.wait_for(done, Duration::from_secs(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let ms = poller
            .join()
            .map_err(|_| anyhow::anyhow!("poller panicked"))??;
        waited?;
        Ok(ms)
    };
    let pid = d.child.id() as i32;
    let mut reload_ms = Vec::new();
    for _ in 0..5 {
        // SAFETY: signalling our own child.
        let hup = || {
            unsafe { libc::kill(pid, libc::SIGHUP) };
            Ok(())
        };
        reload_ms.extend(measure(&mut d, &hup, "\"reloaded\"")?);
    }
    // The new rules arrive as one directory (files stay under the size limit), renamed into
    // the watched tree at once: one reload applies them all.
    let staging = dir.join("staging");
    std::fs::create_dir_all(&staging)?;
    for (i, chunk) in (0..rules).collect::<Vec<_>>().chunks(100_000).enumerate() {
        let addrs = chunk.iter().map(|&n| {
            let [_, a, b, c] = (n as u32).to_be_bytes();
            std::net::Ipv4Addr::new(100, 64 + a % 64, b, c)
        });
        let text = crate::bench_kernel::static_entries(&format!("many{i}"), addrs);
        std::fs::write(staging.join(format!("many-{i}.yaml")), text)?;
    }
    let into_place = || Ok(std::fs::rename(&staging, se.join("many"))?);
    let apply_ms = measure(&mut d, &into_place, "rules updated")?;
    d.stop();
    drop(dns);
    cleanup(&dir);
    let row = |what: String, ms: Vec<f64>| {
        let (p, med, max, n) = p99(ms);
        Row {
            case: format!("/healthz latency p99 during {what}"),
            median: p,
            unit: "ms",
            target: Some(10.0),
            detail: format!(
                "{n} requests, each on a new connection; median {med:.2} ms, max {max:.2} ms"
            ),
        }
    };
    Ok(vec![
        row(format!("5 reloads of {entries} ServiceEntries"), reload_ms),
        row(format!("one reload applying {rules} new rules"), apply_ms),
    ])
}

pub fn daemon_rows(bin: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    let (samples, n_hosts, runs, entries) = if quick {
        (9, 200, 1, 2_000)
    } else {
        (41, 1_000, 5, 10_000)
    };
    let (healthz_entries, healthz_rules) = if quick {
        (2_000, 20_000)
    } else {
        (10_000, 1_000_000)
    };
    let mut rows = vec![
        change_to_enforced(bin, samples)?,
        resolve_hosts(bin, n_hosts, runs)?,
        rss(bin, entries)?,
    ];
    rows.extend(healthz_under_load(bin, healthz_entries, healthz_rules)?);
    Ok(rows)
}
