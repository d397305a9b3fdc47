//! Kernel-path benchmarks (docs/architecture.md, "Tests and benchmarks"): the per-call cost of UDP connect, UDP connect + first
//! datagram and TCP connect+accept with no enforcement, with egress-enforcer, with an nftables
//! set matched on the cgroup and with linear iptables rules matched on the cgroup — side by side,
//! each configuration measured in alternation with the no-enforcement baseline in the same run.
//! Also each program's in-kernel cost (`kernel.bpf_stats_enabled`) and how fast rules load.
//!
//! Traffic only goes to addresses on the `lo` of two namespaces created here: `ee-bench-case`
//! (where nftables/iptables rules go) and `ee-bench-base` (always empty). The workload runs in
//! cgroup `ee-bench-kernel/case` (where egress-enforcer attaches) or `ee-bench-kernel/base`.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use e2e::Netns;
use serde_json::{Value, json};

use crate::{
    bench::{Row, Section, median},
    bench_daemon::{Daemon, cleanup, fresh_dir},
    bench_noop::{Calibration, Noop},
};

const ALLOWED: &str = "198.18.0.1";
const DENIED: &str = "198.18.0.2";
const ALLOWED6: &str = "fd00::1";
const DENIED6: &str = "fd00::2";
const UDP_PORT: u16 = 9;
const TCP_PORT: u16 = 8080;
pub(crate) const CIDR_RULES: usize = 1_000;
pub(crate) const CGROUP: &str = "ee-bench-kernel";
/// The workload runs on the last CPU; the daemon and the rest of the system keep the others.
fn worker_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    /// A program that allows everything and does nothing: the cost of the hook itself.
    Noop,
    Enforcer,
    Nft,
    Iptables,
}

impl System {
    const fn label(self) -> &'static str {
        match self {
            Self::Noop => "no-op cgroup program (calibration)",
            Self::Enforcer => "egress-enforcer",
            Self::Nft => "nftables set (socket cgroupv2)",
            Self::Iptables => "iptables linear (-m cgroup --path)",
        }
    }
}

/// One timed operation.
#[derive(Clone, Copy)]
struct Work {
    key: &'static str,
    title: &'static str,
    workload: &'static str,
    port: u16,
}

const WORKS: [Work; 3] = [
    Work {
        key: "udp_connect",
        title: "UDP connect(), reused socket (one UDP socket, connect() again and again: the \
                syscall plus the hooks, no packet)",
        workload: "udp-connect",
        port: UDP_PORT,
    },
    Work {
        key: "udp_connect_send",
        title: "UDP connect() + first datagram, reused socket (where netfilter first sees the \
                flow)",
        workload: "udp-send",
        port: UDP_PORT,
    },
    Work {
        key: "tcp_connect_accept",
        title: "TCP connect + accept + close, fresh socket each time (peer in the same namespace)",
        workload: "tcp",
        port: TCP_PORT,
    },
];

#[derive(Clone, Copy)]
pub(crate) struct Iters {
    udp_connect: u64,
    udp_send: u64,
    tcp: u64,
    pub(crate) kernel: u64,
}

impl Iters {
    const fn of(&self, w: &Work) -> u64 {
        match w.workload.as_bytes() {
            b"udp-connect" => self.udp_connect,
            b"udp-send" => self.udp_send,
            _ => self.tcp,
        }
    }
}

pub struct Plan {
    pub runs: usize,
    pub(crate) iters: Iters,
    enforcer_sizes: Vec<usize>,
    iptables_sizes: Vec<usize>,
    diff: usize,
}

impl Plan {
    /// The same plan, one run: for measurements interleaved run by run with others.
    pub(crate) fn one_run(&self) -> Self {
        Self {
            runs: 1,
            iters: self.iters,
            enforcer_sizes: Vec::new(),
            iptables_sizes: Vec::new(),
            diff: 0,
        }
    }

    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 5,
                iters: Iters {
                    udp_connect: 20_000,
                    udp_send: 10_000,
                    tcp: 1_000,
                    kernel: 10_000,
                },
                enforcer_sizes: vec![10, 10_000],
                iptables_sizes: vec![10, 1_000],
                diff: 1_000,
            }
        } else {
            Self {
                runs: 7,
                iters: Iters {
                    udp_connect: 200_000,
                    udp_send: 100_000,
                    tcp: 5_000,
                    kernel: 100_000,
                },
                enforcer_sizes: vec![10, 10_000, 1_000_000],
                iptables_sizes: vec![10, 1_000, 10_000],
                diff: 100_000,
            }
        }
    }
}

/// Namespaces and cgroups for the whole kernel benchmark; removed on drop.
pub(crate) struct Fixture {
    base_ns: Netns,
    case_ns: Netns,
    cg2: PathBuf,
    worker: PathBuf,
}

impl Fixture {
    pub(crate) fn new(worker: PathBuf) -> anyhow::Result<Self> {
        let cg2 = e2e::cgroup2_mount();
        for sub in ["base", "case", "noop"] {
            let p = cg2.join(CGROUP).join(sub);
            std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        Ok(Self {
            base_ns: Netns::new("ee-bench-base"),
            case_ns: Netns::new("ee-bench-case"),
            cg2,
            worker,
        })
    }

    pub(crate) fn cgroup(&self, sub: &str) -> PathBuf {
        self.cg2.join(CGROUP).join(sub)
    }

    /// Runs the worker once in the `case` namespace and cgroup, interleaved with the baseline
    /// side when `with_base`; returns per case (ns/op, baseline ns/op, errno), in order.
    fn run(&self, cases: &[String], with_base: bool) -> anyhow::Result<Vec<Sample>> {
        self.run_in("case", cases, with_base)
    }

    /// Like `run`, with the worker's timed side in the `sub` cgroup (`base` is not enforced).
    fn run_in(&self, sub: &str, cases: &[String], with_base: bool) -> anyhow::Result<Vec<Sample>> {
        let mut cmd = Command::new(&self.worker);
        cmd.args([
            "--netns",
            &self.case_ns.name,
            "--cpu",
            &worker_cpu().to_string(),
        ])
        .arg("--cgroup")
        .arg(self.cgroup(sub))
        .arg("--server-cgroup")
        .arg(self.cgroup("base"));
        if with_base {
            cmd.args(["--base-netns", &self.base_ns.name])
                .arg("--base-cgroup")
                .arg(self.cgroup("base"));
        }
        let out = cmd
            .args(cases)
            .output()
            .context("running ee-bench-worker")?;
        if !out.status.success() {
            bail!(
                "ee-bench-worker failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut res = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line).with_context(|| format!("worker: {line}"))?;
            res.push(Sample {
                ns: v["ns_per_op"].as_f64().context("ns_per_op")?,
                base_ns: v["base_ns_per_op"].as_f64(),
                errno: v["errno"].as_str().map(str::to_owned),
            });
        }
        if res.len() != cases.len() {
            bail!(
                "ee-bench-worker printed {} results for {} cases",
                res.len(),
                cases.len()
            );
        }
        Ok(res)
    }
}

struct Sample {
    ns: f64,
    base_ns: Option<f64>,
    errno: Option<String>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for sub in ["case", "noop", "base", ""] {
            let _ignored = std::fs::remove_dir(self.cg2.join(CGROUP).join(sub));
        }
    }
}

/// `n`-th filler address: never contacted, only used to fill rule tables.
pub(crate) fn filler(n: usize, first_octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(first_octet, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

fn cidr(n: usize) -> String {
    format!("172.{}.{}.0/24", 16 + n / 256, n % 256)
}

/// STATIC ServiceEntries, one rule (443/tcp) per endpoint, at most 4,000 endpoints per entry.
pub fn static_entries(name: &str, addrs: impl Iterator<Item = Ipv4Addr>) -> String {
    let addrs: Vec<Ipv4Addr> = addrs.collect();
    let mut out = String::new();
    for (i, chunk) in addrs.chunks(4_000).enumerate() {
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}-{i}}}\nspec:\n  hosts: [{name}-{i}.bench.test]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: STATIC\n  endpoints:\n"
        );
        for a in chunk {
            let _ = writeln!(out, "  - {{address: {a}}}");
        }
    }
    out
}

pub(crate) fn cidr_entries() -> String {
    let mut out = String::new();
    for (i, chunk) in (0..CIDR_RULES).collect::<Vec<_>>().chunks(250).enumerate() {
        let list: Vec<String> = chunk.iter().map(|&n| cidr(n)).collect();
        let _ = write!(
            out,
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ranges-{i}}}\nspec:\n  hosts: [ranges-{i}.bench.test]\n  addresses: [{}]\n  ports: [{{number: 443, name: tls, protocol: TLS}}]\n  resolution: NONE\n",
            list.join(", ")
        );
    }
    out
}

/// The destinations the workload may reach: 4 exact rules (v4 and v6, UDP and TCP).
pub(crate) fn allowed_entry() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: bench-allowed}}\nspec:\n  hosts: [allowed.bench.test]\n  ports:\n  - {{number: {UDP_PORT}, name: udp-sink, protocol: UDP}}\n  - {{number: {TCP_PORT}, name: http, protocol: TCP}}\n  resolution: STATIC\n  endpoints:\n  - {{address: {ALLOWED}}}\n  - {{address: {ALLOWED6}}}\n"
    )
}

struct Loaded {
    daemon: Daemon,
    dir: PathBuf,
    config: PathBuf,
    start_to_enforcing_ms: f64,
    first_apply_ms: f64,
    rules: usize,
}

pub(crate) fn log_number(line: &str, key: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(line).ok()?;
    let f = &v[key];
    f.as_f64().or_else(|| f.as_str()?.parse().ok())
}

/// Starts the daemon with `n` exact rules (of which `diff` in their own file) + 1,000 CIDRs,
/// with the programs on the cgroup root and ping allowed (the egress program) when `extras`.
fn start_enforcer(bin: &Path, n: usize, diff: usize, extras: bool) -> anyhow::Result<Loaded> {
    let dir = fresh_dir(&format!("kernel-enforcer-{n}"))?;
    let se = dir.join("se");
    std::fs::write(se.join("allowed.yaml"), allowed_entry())?;
    std::fs::write(se.join("ranges.yaml"), cidr_entries())?;
    let fill = n.saturating_sub(4 + diff);
    // 100,000 rules (about 2.5 MB) per file keeps each file far below the size limit.
    for (f, start) in (0..fill).step_by(100_000).enumerate() {
        let end = (start + 100_000).min(fill);
        std::fs::write(
            se.join(format!("filler-{f:02}.yaml")),
            static_entries(&format!("fill{f}"), (start..end).map(|i| filler(i, 10))),
        )?;
    }
    if diff > 0 {
        std::fs::write(
            se.join("diff.yaml"),
            static_entries("diff", (0..diff).map(|i| filler(i, 11))),
        )?;
    }
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "cgroups: [{CGROUP}/case]\nbpffs: {}\nserviceEntries: [{}]\nallow: {{dnsServers: [], ping: {extras}}}\ndns: {{mode: resolve}}\nmaps: {{exactRules: {}, prefixRules: {}}}\nlog: {{format: json}}\nhttp: {{listen: ''}}\nforeignSockets: {}\n",
            dir.join("bpffs").display(),
            se.display(),
            // With ping every address also gets an ICMP rule.
            (if extras { 2 * n } else { n } + n / 8).max(1024),
            if extras { 3 } else { 2 } * CIDR_RULES,
            if extras { "enforce" } else { "off" }
        ),
    )?;
    let t0 = Instant::now();
    let mut daemon = Daemon::start(bin, &config)?;
    let (t1, line) = daemon.wait_for_line("\"enforcing\"", Duration::from_secs(600))?;
    daemon.wait_for("first full apply done", Duration::from_secs(60))?;
    let loaded = log_number(&line, "static_rules").unwrap_or(0.0) as usize;
    let want = n + CIDR_RULES;
    // With ping, ICMP rules come on top (their number depends on how entries merge).
    if loaded != want && !(extras && loaded > want) {
        bail!("the daemon loaded {loaded} rules, expected {want}: {line}");
    }
    let rules = want;
    Ok(Loaded {
        daemon,
        dir,
        config,
        start_to_enforcing_ms: t1.duration_since(t0).as_secs_f64() * 1e3,
        first_apply_ms: log_number(&line, "apply_ms").context("apply_ms in the log")?,
        rules,
    })
}

/// Replaces the `diff` rules of diff.yaml by as many new ones; returns (file change → applied
/// ms, the daemon's own apply time ms).
fn apply_diff(l: &mut Loaded, diff: usize) -> anyhow::Result<(f64, f64)> {
    l.daemon.drain();
    let t0 = Instant::now();
    std::fs::write(
        l.dir.join("se/diff.yaml"),
        static_entries("diff", (0..diff).map(|i| filler(i, 12))),
    )?;
    let (t1, line) = l
        .daemon
        .wait_for_line("rules updated", Duration::from_secs(600))?;
    let (added, removed) = (
        log_number(&line, "added").unwrap_or(0.0) as usize,
        log_number(&line, "removed").unwrap_or(0.0) as usize,
    );
    if added != diff || removed != diff {
        bail!("expected {diff} added and {diff} removed: {line}");
    }
    Ok((
        t1.duration_since(t0).as_secs_f64() * 1e3,
        log_number(&line, "apply_ms").context("apply_ms")?,
    ))
}

fn in_netns(ns: &Netns, program: &str) -> Command {
    // nsenter rather than `ip netns exec`, which remounts /sys and so hides the cgroup2 mount
    // that nft resolves `socket cgroupv2` paths against.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name)).arg(program);
    c
}

fn run_checked(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The workload cgroup as nft wants it: relative to /sys/fs/cgroup, plus its cgroup2 level.
fn nft_cgroup(fx: &Fixture) -> anyhow::Result<(String, usize)> {
    let rel = fx
        .cgroup("case")
        .strip_prefix("/sys/fs/cgroup")
        .map(|p| p.display().to_string())
        .with_context(|| {
            format!(
                "nft resolves cgroup paths under /sys/fs/cgroup, but cgroup2 is at {}",
                fx.cg2.display()
            )
        })?;
    Ok((rel, Path::new(CGROUP).join("case").components().count()))
}

/// Loads an nftables ruleset of `n` exact elements + 1,000 CIDR elements; returns load ms.
fn load_nft(fx: &Fixture, n: usize, dir: &Path) -> anyhow::Result<f64> {
    let (path, level) = nft_cgroup(fx)?;
    let mut elems: Vec<String> = (0..n.saturating_sub(2))
        .map(|i| format!("{} . tcp . 443", filler(i, 10)))
        .collect();
    elems.push(format!("{ALLOWED} . udp . {UDP_PORT}"));
    elems.push(format!("{ALLOWED} . tcp . {TCP_PORT}"));
    let cidrs: Vec<String> = (0..CIDR_RULES)
        .map(|i| format!("{} . tcp . 443", cidr(i)))
        .collect();
    let text = format!(
        "table inet ee_bench {{\n  set exact4 {{ type ipv4_addr . inet_proto . inet_service; size {}; elements = {{ {} }} }}\n  set cidr4 {{ type ipv4_addr . inet_proto . inet_service; flags interval; elements = {{ {} }} }}\n  chain workload {{\n    ip daddr . meta l4proto . th dport @exact4 accept\n    ip daddr . meta l4proto . th dport @cidr4 accept\n    meta l4proto tcp reject with tcp reset\n    drop\n  }}\n  chain output {{\n    type filter hook output priority 0; policy accept;\n    socket cgroupv2 level {level} \"{path}\" jump workload\n  }}\n}}\n",
        (n * 2).max(64),
        elems.join(",\n"),
        cidrs.join(",\n")
    );
    let file = dir.join("ruleset.nft");
    std::fs::write(&file, text)?;
    let t0 = Instant::now();
    let mut c = in_netns(&fx.case_ns, "nft");
    c.arg("-f").arg(&file);
    run_checked(c, "loading the nftables ruleset")?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn unload_nft(fx: &Fixture) {
    let mut c = in_netns(&fx.case_ns, "nft");
    c.args(["delete", "table", "inet", "ee_bench"]);
    let _ignored = c.output();
}

/// x_tables proper when installed (the classic linear evaluator), else the nft-backed one.
fn iptables() -> (&'static str, &'static str) {
    let legacy = Command::new("iptables-legacy")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if legacy {
        ("iptables-legacy", "iptables-legacy-restore")
    } else {
        ("iptables", "iptables-restore")
    }
}

/// Loads `n` linear ACCEPT rules (the allowed destination last, so it costs what a denied
/// packet costs) and the reject/drop tail; returns load ms.
fn load_iptables(fx: &Fixture, n: usize, dir: &Path) -> anyhow::Result<f64> {
    let cg = format!("{CGROUP}/case");
    let mut text = String::from("*filter\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..n.saturating_sub(2) {
        let _ = writeln!(
            text,
            "-A OUTPUT -d {}/32 -p tcp -m cgroup --path {cg} -m tcp --dport 443 -j ACCEPT",
            filler(i, 10)
        );
    }
    let _ = writeln!(
        text,
        "-A OUTPUT -d {ALLOWED}/32 -p udp -m cgroup --path {cg} -m udp --dport {UDP_PORT} -j ACCEPT"
    );
    let _ = writeln!(
        text,
        "-A OUTPUT -d {ALLOWED}/32 -p tcp -m cgroup --path {cg} -m tcp --dport {TCP_PORT} -j ACCEPT"
    );
    let _ = writeln!(
        text,
        "-A OUTPUT -p tcp -m cgroup --path {cg} -j REJECT --reject-with tcp-reset"
    );
    let _ = writeln!(text, "-A OUTPUT -m cgroup --path {cg} -j DROP\nCOMMIT");
    let file = dir.join("rules.iptables");
    std::fs::write(&file, text)?;
    let t0 = Instant::now();
    let mut c = in_netns(&fx.case_ns, iptables().1);
    c.stdin(std::fs::File::open(&file)?);
    run_checked(c, "loading the iptables rules")?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

fn unload_iptables(fx: &Fixture) {
    let mut c = in_netns(&fx.case_ns, iptables().0);
    c.args(["-F", "OUTPUT"]);
    let _ignored = c.output();
}

/// Whether `system` refuses `work` to the denied destination (UDP connect() sends no packet, so
/// netfilter has nothing to decide until the first datagram).
fn denies(system: System, work: &Work) -> bool {
    match system {
        System::Noop => false,
        System::Enforcer => true,
        System::Nft | System::Iptables => work.workload != "udp-connect",
    }
}

/// One measured cell: a configuration, a workload and a destination.
struct Cell {
    system: Option<System>,
    rules: usize,
    work: &'static str,
    denied_dest: bool,
    case: Vec<f64>,
    base: Vec<f64>,
    errno: Option<String>,
}

impl Cell {
    fn median(&self) -> f64 {
        median(self.case.clone())
    }

    /// Median of the per-run ratios: each run's two sides were measured interleaved.
    fn ratio(&self) -> f64 {
        median(
            self.case
                .iter()
                .zip(&self.base)
                .map(|(c, b)| c / b)
                .collect(),
        )
    }
}

/// Measures every work × destination for the configuration currently in force, interleaved
/// (inside each worker run) with the baseline: a namespace and cgroup without any enforcement.
fn measure_block(
    fx: &Fixture,
    plan: &Plan,
    system: System,
    rules: usize,
) -> anyhow::Result<Vec<Cell>> {
    let mut cells = Vec::new();
    let mut args = Vec::new();
    for work in &WORKS {
        for denied_dest in [false, true] {
            let dest = if denied_dest { DENIED } else { ALLOWED };
            let expect = if denied_dest && denies(system, work) {
                "deny"
            } else {
                "ok"
            };
            let n = plan.iters.of(work);
            args.push(format!(
                "{},{expect},{dest}:{},{n}",
                work.workload, work.port
            ));
            cells.push(Cell {
                system: Some(system),
                rules,
                work: work.key,
                denied_dest,
                case: Vec::new(),
                base: Vec::new(),
                errno: None,
            });
        }
    }
    for _ in 0..plan.runs {
        for (cell, sample) in cells.iter_mut().zip(fx.run(&args, true)?) {
            cell.case.push(sample.ns);
            cell.base
                .push(sample.base_ns.context("no baseline in the worker output")?);
            cell.errno = sample.errno;
        }
    }
    Ok(cells)
}

/// (program, work, address, denied?) for the in-kernel pass: each program, each verdict.
/// (program, workload, destination, denied, run outside the enforced cgroup)
pub(crate) type KernelCase = (&'static str, &'static str, &'static str, bool, bool);

pub(crate) const KERNEL_CASES: [KernelCase; 9] = [
    ("connect4", "udp-connect", ALLOWED, false, false),
    ("connect4", "udp-connect", DENIED, true, false),
    ("connect6", "udp-connect", ALLOWED6, false, false),
    ("connect6", "udp-connect", DENIED6, true, false),
    ("sendmsg4", "sendto", ALLOWED, false, false),
    ("sendmsg4", "sendto", DENIED, true, false),
    ("sendmsg6", "sendto", ALLOWED6, false, false),
    ("sendmsg6", "sendto", DENIED6, true, false),
    // What the escape protections add (docs/threat-model.md): socket creation here; the
    // rest with the switches below on.
    ("sock_create", "tcp", ALLOWED, false, false),
];

/// With `foreignSockets: enforce` and `allow.ping` (a daemon of its own: the other blocks run
/// without the programs on the cgroup root and the egress program, so that their baseline is
/// a host without enforcement): the egress program on every packet, and the programs on the
/// cgroup root for a task inside an enforced cgroup (its own socket) and for one outside.
const FOREIGN_CASES: [KernelCase; 5] = [
    ("egress", "sendto", ALLOWED, false, false),
    ("foreign_connect4", "udp-connect", ALLOWED, false, false),
    ("foreign_sendmsg4", "sendto", ALLOWED, false, false),
    ("foreign_connect4", "udp-connect", ALLOWED, false, true),
    ("foreign_sendmsg4", "sendto", ALLOWED, false, true),
];

pub(crate) struct KernelCell {
    rules: usize,
    pub(crate) program: &'static str,
    pub(crate) denied: bool,
    /// Run by a task outside every enforced cgroup.
    outside: bool,
    /// `Some(false)`: the scoping block before its sets were written; `Some(true)`: after.
    scoped: Option<bool>,
    pub(crate) ns: Vec<f64>,
}

/// The allowed destinations' cases, measured with every rule for everyone and then with the
/// allowed rules scoped to the caller's policy (a daemon of its own).
const SCOPED_CASES: [KernelCase; 4] = [
    ("connect4", "udp-connect", ALLOWED, false, false),
    ("sendmsg4", "sendto", ALLOWED, false, false),
    ("connect6", "udp-connect", ALLOWED6, false, false),
    ("sendmsg6", "sendto", ALLOWED6, false, false),
];

/// cgroups mapped to a policy and policies in the scoping block (the 1k pods and
/// 100 policies).
const SCOPED_CGROUPS: u64 = 1_000;
const SCOPED_POLICIES: u64 = 100;
/// The workload's policy in the scoping block.
const CASE_POLICY: u64 = 5;

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The exact-rule key of `addr:port/proto` as the daemon writes it.
fn rule_key(addr: &str, port: u16, proto: u8) -> anyhow::Result<Vec<u8>> {
    let ip: std::net::IpAddr = addr.parse()?;
    let v6 = match ip {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped(),
        std::net::IpAddr::V6(a) => a,
    };
    let mut k = vec![0u8; 4];
    k.extend(port.to_le_bytes());
    k.extend([proto, 0]);
    k.extend(v6.octets());
    Ok(k)
}

/// The live `RULES_TABLE` slot holding `key` (index, slot bytes), searched from its home as
/// the programs do.
fn table_slot(table: &str, key: &[u8], mask: u32) -> anyhow::Result<(u32, Vec<u8>)> {
    let k = enforcer_common::RuleKey {
        policy: u32::from_le_bytes(key[0..4].try_into()?),
        port: u16::from_le_bytes(key[4..6].try_into()?),
        proto: key[6],
        pad: key[7],
        addr: key[8..24].try_into()?,
    };
    let home = enforcer_common::table_home(&k, mask);
    for i in 0..enforcer_common::TABLE_PROBES {
        let index = home.wrapping_add(i) & mask;
        let slot = lookup(table, &index.to_le_bytes())?;
        let state = slot.get(40..44).context("table slot too short")?;
        if state == enforcer_common::SLOT_LIVE.to_le_bytes() && slot.get(..24) == Some(key) {
            return Ok((index, slot));
        }
    }
    bail!("not in RULES_TABLE")
}

/// One value of a pinned map, through bpftool.
fn lookup(map: &str, key: &[u8]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new("bpftool")
        .args(["-j", "map", "lookup", "pinned", map, "key", "hex"])
        .args(hex(key).split(' '))
        .output()
        .context("bpftool map lookup")?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "bpftool lookup in {map}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(v["value"]
        .as_array()
        .context("value bytes")?
        .iter()
        .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
        .collect())
}

/// Scopes the allowed rules the way the daemon will for pods (docs/architecture.md,
/// "Scoping"), with bpftool on the pinned maps: 100 visibility sets, 1,000 cgroups mapped
/// to policies, the workload's cgroup among them, and the allowed rules naming a set that
/// holds its policy. The rules stay allowed for the workload: the cases check it.
fn scope_allowed(fx: &Fixture, l: &Loaded) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let maps = l.dir.join("bpffs/egress-enforcer/maps");
    let map = |name: &str| maps.join(name).display().to_string();
    let mut batch = String::new();
    for s in 1..=SCOPED_POLICIES {
        let mut word = 1u64 << (s % 64);
        if s == 1 {
            word |= 1 << CASE_POLICY;
        }
        let index = u32::try_from(s * u64::from(enforcer_common_words()))?;
        let _ = writeln!(
            batch,
            "map update pinned {} key hex {} value hex {}",
            map("VSETS"),
            hex(&index.to_le_bytes()),
            hex(&word.to_le_bytes())
        );
    }
    let case_id = std::fs::metadata(fx.cgroup("case"))?.ino();
    let ids = (1..SCOPED_CGROUPS).map(|i| (1_000_000_000 + i, 1 + i % SCOPED_POLICIES));
    for (id, policy) in ids.chain([(case_id, CASE_POLICY)]) {
        let _ = writeln!(
            batch,
            "map update pinned {} key hex {} value hex {}",
            map("CGROUP_POLICY"),
            hex(&id.to_le_bytes()),
            hex(&u32::try_from(policy)?.to_le_bytes())
        );
    }
    let mut config = lookup(&map("CONFIG"), &0u32.to_le_bytes())?;
    // `Config.table_mask`, the last word.
    let mask = u32::from_le_bytes(
        config
            .get(60..64)
            .context("CONFIG value too short")?
            .try_into()?,
    );
    for (addr, port, proto) in [
        (ALLOWED, UDP_PORT, 17u8),
        (ALLOWED6, UDP_PORT, 17),
        (ALLOWED, TCP_PORT, 6),
        (ALLOWED6, TCP_PORT, 6),
    ] {
        let key = rule_key(addr, port, proto)?;
        // A rule with no free slot near its home lives in the overflow map (about 0.4 % of
        // them at 1M rules: docs/architecture.md, "The exact-rule table").
        match table_slot(&map("RULES_TABLE"), &key, mask) {
            Ok((index, mut slot)) => {
                // `TableSlot.value.vset`: the key's 24 bytes, then rule_id and flags.
                slot[32..36].copy_from_slice(&1u32.to_le_bytes());
                let _ = writeln!(
                    batch,
                    "map update pinned {} key hex {} value hex {}",
                    map("RULES_TABLE"),
                    hex(&index.to_le_bytes()),
                    hex(&slot)
                );
            }
            Err(_) => {
                let mut value = lookup(&map("RULES_EXACT"), &key).with_context(|| {
                    format!("the rule for {addr}:{port}: in neither RULES_TABLE nor RULES_EXACT")
                })?;
                // `RuleValue.vset`, after rule_id and flags.
                value
                    .get_mut(8..12)
                    .context("RULES_EXACT value too short")?
                    .copy_from_slice(&1u32.to_le_bytes());
                let _ = writeln!(
                    batch,
                    "map update pinned {} key hex {} value hex {}",
                    map("RULES_EXACT"),
                    hex(&key),
                    hex(&value)
                );
            }
        }
    }
    // The daemon runs without units or pods, so it tells the programs to skip the policy
    // lookup (`SKIP_SCOPING`, bit 3 of `Config.skip` at byte 12): clear it, as a daemon
    // with scoping configured does.
    let skip = config.get_mut(12).context("CONFIG value too short")?;
    *skip &= !8;
    let _ = writeln!(
        batch,
        "map update pinned {} key hex {} value hex {}",
        map("CONFIG"),
        hex(&0u32.to_le_bytes()),
        hex(&config)
    );
    let file = l.dir.join("scope.batch");
    std::fs::write(&file, batch)?;
    let out = Command::new("bpftool")
        .args(["batch", "file"])
        .arg(&file)
        .output()
        .context("bpftool batch")?;
    if !out.status.success() {
        bail!("bpftool batch: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Words per visibility set (the ABI's `POLICY_WORDS`).
const fn enforcer_common_words() -> u32 {
    1024 / 64
}

/// (run count, run time ns) of the program behind each pinned link, via `inspect links`.
fn prog_stats(bin: &Path, config: &Path, program: &str) -> anyhow::Result<(u64, u64)> {
    let out = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["inspect", "links", "--json"])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("inspect links --json")?;
    let links = v["links"].as_array().context("links in inspect output")?;
    let root = v["root_links"]
        .as_array()
        .context("root links in inspect output")?;
    let l = links
        .iter()
        .chain(root)
        .find(|l| l["hook"] == program)
        .with_context(|| format!("no {program} link"))?;
    Ok((
        l["run_count"].as_u64().context("run_count")?,
        l["run_time_ns"].as_u64().context("run_time_ns")?,
    ))
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns BPF run-time statistics on for its lifetime. They cost two clock reads per program
/// run, so they are off while syscalls are timed.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(STATS_SYSCTL).context("reading bpf_stats_enabled")?;
        std::fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ignored = std::fs::write(STATS_SYSCTL, &self.0);
    }
}

/// Each case's in-kernel cost against a daemon with `config` holding `exact` exact rules.
pub(crate) fn measure_kernel(
    fx: &Fixture,
    plan: &Plan,
    bin: &Path,
    (config, exact): (&Path, usize),
    cases: &[KernelCase],
) -> anyhow::Result<Vec<KernelCell>> {
    let _stats = BpfStats::enable()?;
    let mut cells: Vec<KernelCell> = cases
        .iter()
        .map(|&(program, _, _, denied, outside)| KernelCell {
            rules: exact,
            program,
            denied,
            outside,
            scoped: None,
            ns: Vec::new(),
        })
        .collect();
    for _ in 0..plan.runs {
        for (cell, &(program, work, addr, denied, outside)) in cells.iter_mut().zip(cases) {
            let port = if work == "tcp" { TCP_PORT } else { UDP_PORT };
            let dest = if addr.contains(':') {
                format!("[{addr}]:{port}")
            } else {
                format!("{addr}:{port}")
            };
            let expect = if denied { "deny" } else { "ok" };
            let iters = if work == "tcp" {
                plan.iters.tcp
            } else {
                plan.iters.kernel
            };
            let case = format!("{work},{expect},{dest},{iters}");
            let (n0, t0) = prog_stats(bin, config, program)?;
            fx.run_in(if outside { "base" } else { "case" }, &[case], false)?;
            let (n1, t1) = prog_stats(bin, config, program)?;
            if n1 - n0 < iters {
                bail!(
                    "{program} ran {} times for {iters} calls: are BPF stats working?",
                    n1 - n0
                );
            }
            cell.ns.push((t1 - t0) as f64 / (n1 - n0) as f64);
        }
    }
    Ok(cells)
}

/// In-kernel cost of the no-op program on `cgroup/connect4`: the floor of what the
/// statistics can show.
pub(crate) fn measure_noop(
    fx: &Fixture,
    plan: &Plan,
    noop: &Noop,
    program: &'static str,
) -> anyhow::Result<KernelCell> {
    measure_noop_with(fx, plan, noop, program, ("udp-connect", ALLOWED, "case"))
}

/// [`measure_noop`] for a no-op attached to another hook (and cgroup `sub` of the fixture),
/// driven by `(workload, address)` as the enforcing program of that hook is in
/// [`KERNEL_CASES`].
pub(crate) fn measure_noop_with(
    fx: &Fixture,
    plan: &Plan,
    noop: &Noop,
    program: &'static str,
    (work, addr, sub): (&str, &str, &str),
) -> anyhow::Result<KernelCell> {
    let _stats = BpfStats::enable()?;
    let dest = if addr.contains(':') {
        format!("[{addr}]:{UDP_PORT}")
    } else {
        format!("{addr}:{UDP_PORT}")
    };
    let mut ns = Vec::new();
    for _ in 0..plan.runs {
        let case = format!("{work},ok,{dest},{}", plan.iters.kernel);
        let (n0, t0) = noop.stats()?;
        fx.run_in(sub, &[case], false)?;
        let (n1, t1) = noop.stats()?;
        if n1 - n0 < plan.iters.kernel {
            bail!(
                "the no-op program ran {} times for {} calls",
                n1 - n0,
                plan.iters.kernel
            );
        }
        ns.push((t1 - t0) as f64 / (n1 - n0) as f64);
    }
    Ok(KernelCell {
        rules: 0,
        program,
        denied: false,
        outside: false,
        scoped: None,
        ns,
    })
}

struct LoadRow {
    system: &'static str,
    rules: String,
    ms: f64,
    what: String,
}

pub struct KernelResults {
    pub rows: Vec<Row>,
    pub sections: Vec<Section>,
    pub json: Value,
}

pub fn run(plan: &Plan, bin: &Path, worker: PathBuf) -> anyhow::Result<KernelResults> {
    let fx = Fixture::new(worker)?;
    let mut cells = Vec::new();
    let mut kernel = Vec::new();
    let mut loads = Vec::new();
    let max = plan.enforcer_sizes.iter().copied().max().unwrap_or(0);
    {
        eprintln!("==> bench: calibration, a no-op cgroup/connect4 program");
        let noop = Noop::attach(&fx.cgroup("case"), Calibration::Noop)?;
        cells.extend(measure_block(&fx, plan, System::Noop, 0)?);
        kernel.push(measure_noop(&fx, plan, &noop, "noop")?);
    }
    for (what, program, _) in HELPER_CALIBRATIONS {
        eprintln!("==> bench: calibration, {program}");
        let prog = Noop::attach(&fx.cgroup("case"), what)?;
        kernel.push(measure_noop(&fx, plan, &prog, program)?);
    }
    for &n in &plan.enforcer_sizes {
        let diff = if n == max { plan.diff.min(n / 2) } else { 0 };
        eprintln!("==> bench: egress-enforcer, {n} exact + {CIDR_RULES} CIDR rules");
        let mut l = start_enforcer(bin, n, diff, false)?;
        loads.push(LoadRow {
            system: "egress-enforcer",
            rules: format!("{} ({n} exact + {CIDR_RULES} CIDR)", l.rules),
            ms: l.first_apply_ms,
            what: format!(
                "map writes (batched); {:.0} rules/s. Daemon start → enforcing, including \
                 parsing and validating the ServiceEntries: {:.0} ms",
                l.rules as f64 / (l.first_apply_ms / 1e3),
                l.start_to_enforcing_ms
            ),
        });
        cells.extend(measure_block(&fx, plan, System::Enforcer, n)?);
        kernel.extend(measure_kernel(
            &fx,
            plan,
            bin,
            (&l.config, l.rules - CIDR_RULES),
            &KERNEL_CASES,
        )?);
        if diff > 0 {
            let (wall, apply) = apply_diff(&mut l, diff)?;
            loads.push(LoadRow {
                system: "egress-enforcer",
                rules: format!("diff: {diff} replaced in {}", l.rules),
                ms: apply,
                what: format!(
                    "{diff} added + {diff} removed, live map read back and diffed; file change \
                     → applied, including re-reading all {} rules' ServiceEntries: {wall:.0} ms",
                    l.rules
                ),
            });
        }
        l.daemon.stop();
        cleanup(&l.dir);
    }
    {
        eprintln!("==> bench: egress-enforcer, allowed rules scoped to the caller's policy");
        let l = start_enforcer(bin, max, 0, false)?;
        for scoped in [false, true] {
            if scoped {
                scope_allowed(&fx, &l)?;
            }
            let mut cells = measure_kernel(
                &fx,
                plan,
                bin,
                (&l.config, l.rules - CIDR_RULES),
                &SCOPED_CASES,
            )?;
            for c in &mut cells {
                c.scoped = Some(scoped);
            }
            kernel.extend(cells);
        }
        l.daemon.stop();
        cleanup(&l.dir);
    }
    {
        eprintln!("==> bench: egress-enforcer with foreignSockets: enforce and allow.ping");
        let l = start_enforcer(bin, max, 0, true)?;
        kernel.extend(measure_kernel(
            &fx,
            plan,
            bin,
            (&l.config, l.rules - CIDR_RULES),
            &FOREIGN_CASES,
        )?);
        l.daemon.stop();
        cleanup(&l.dir);
    }
    for &n in &plan.enforcer_sizes {
        eprintln!("==> bench: nftables, {n} + {CIDR_RULES} CIDR set elements");
        let dir = fresh_dir(&format!("kernel-nft-{n}"))?;
        let ms = load_nft(&fx, n, &dir)?;
        loads.push(LoadRow {
            system: "nftables",
            rules: format!("{} ({n} exact + {CIDR_RULES} CIDR)", n + CIDR_RULES),
            ms,
            what: "`nft -f` of the whole ruleset".into(),
        });
        let res = measure_block(&fx, plan, System::Nft, n);
        unload_nft(&fx);
        cells.extend(res?);
        cleanup(&dir);
    }
    for &n in &plan.iptables_sizes {
        eprintln!("==> bench: iptables, {n} linear rules");
        let dir = fresh_dir(&format!("kernel-iptables-{n}"))?;
        let ms = load_iptables(&fx, n, &dir)?;
        loads.push(LoadRow {
            system: iptables().0,
            rules: n.to_string(),
            ms,
            what: format!("`{}` of the whole table", iptables().1),
        });
        let res = measure_block(&fx, plan, System::Iptables, n);
        unload_iptables(&fx);
        cells.extend(res?);
        cleanup(&dir);
    }
    Ok(report(plan, &cells, &kernel, &loads, max))
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn rules_label(system: System, n: usize) -> String {
    match system {
        System::Noop => "-".to_owned(),
        System::Iptables => format!("{n} rules"),
        _ => format!("{n} exact + {CIDR_RULES} CIDR"),
    }
}

fn report(
    plan: &Plan,
    cells: &[Cell],
    kernel: &[KernelCell],
    loads: &[LoadRow],
    max: usize,
) -> KernelResults {
    let mut sections = Vec::new();
    let find = |system: System, n: usize, work: &str, denied: bool| {
        cells.iter().find(|c| {
            c.system == Some(system) && c.rules == n && c.work == work && c.denied_dest == denied
        })
    };
    for work in &WORKS {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "| enforcement | rules | allowed destination | × none | denied destination | × none | denied gets |"
        );
        let _ = writeln!(md, "| --- | --- | ---: | ---: | ---: | ---: | --- |");
        let base = |denied: bool| {
            let all: Vec<f64> = cells
                .iter()
                .filter(|c| c.work == work.key && c.denied_dest == denied)
                .flat_map(|c| c.base.iter().copied())
                .collect();
            median(all)
        };
        let _ = writeln!(
            md,
            "| none | - | {} | 1.00 | {} | 1.00 | (connects) |",
            fmt_ns(base(false)),
            fmt_ns(base(true))
        );
        let mut seen = Vec::new();
        for c in cells
            .iter()
            .filter(|c| c.work == work.key && !c.denied_dest)
        {
            let Some(system) = c.system else { continue };
            if seen.contains(&(system, c.rules)) {
                continue;
            }
            seen.push((system, c.rules));
            let Some(d) = find(system, c.rules, work.key, true) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {} | {:.2} | {} |",
                system.label(),
                rules_label(system, c.rules),
                fmt_ns(c.median()),
                c.ratio(),
                fmt_ns(d.median()),
                d.ratio(),
                d.errno.as_deref().unwrap_or("(connects)")
            );
        }
        sections.push(Section {
            title: work.title.to_owned(),
            body: md,
        });
    }

    let mut md = String::new();
    let programs = ["connect4", "connect6", "sendmsg4", "sendmsg6"];
    let _ = write!(md, "| exact rules (+ {CIDR_RULES} CIDR) |");
    for p in programs {
        let _ = write!(md, " {p} allowed | {p} denied |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "| ---: |{}", " ---: |".repeat(programs.len() * 2));
    if let Some(k) = kernel.iter().find(|k| k.program == "noop") {
        let _ = writeln!(
            md,
            "| no-op program (floor: hook + statistics) | {:.1} ns |{}",
            median(k.ns.clone()),
            " |".repeat(programs.len() * 2 - 1)
        );
    }
    let mut sizes: Vec<usize> = kernel
        .iter()
        .filter(|k| k.program != "noop" && HELPER_CALIBRATIONS.iter().all(|c| c.1 != k.program))
        .map(|k| k.rules)
        .collect();
    sizes.dedup();
    for n in &sizes {
        let _ = write!(md, "| {n} |");
        for p in programs {
            for denied in [false, true] {
                let v = kernel
                    .iter()
                    .find(|k| {
                        k.rules == *n && k.program == p && k.denied == denied && k.scoped.is_none()
                    })
                    .map_or(f64::NAN, |k| median(k.ns.clone()));
                let _ = write!(md, " {v:.1} ns |");
            }
        }
        let _ = writeln!(md);
    }
    sections.push(Section {
        title: "In-kernel cost per program run (kernel.bpf_stats_enabled: run_time_ns / run_cnt)"
            .to_owned(),
        body: md,
    });

    let mut md = String::from("| system | rules | time | notes |\n| --- | --- | ---: | --- |\n");
    for l in loads {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} ms | {} |",
            l.system, l.rules, l.ms, l.what
        );
    }
    sections.push(Section {
        title: "Loading rules".to_owned(),
        body: md,
    });

    let rows = targets(plan, cells, kernel, max);
    let json = json!({
        "runs": plan.runs,
        "iterations": {
            "udp_connect": plan.iters.udp_connect, "udp_connect_send": plan.iters.udp_send,
            "tcp_connect_accept": plan.iters.tcp, "in_kernel": plan.iters.kernel,
        },
        "per_call": cells.iter().map(|c| json!({
            "system": c.system.map(System::label), "rules": c.rules, "work": c.work,
            "destination": if c.denied_dest { "denied" } else { "allowed" },
            "median_ns": c.median(), "baseline_median_ns": median(c.base.clone()),
            "ratio": c.ratio(), "runs_ns": c.case, "baseline_runs_ns": c.base,
            "denied_errno": c.errno,
        })).collect::<Vec<_>>(),
        "in_kernel": kernel.iter().map(|k| json!({
            "exact_rules": k.rules, "cidr_rules": CIDR_RULES, "program": k.program,
            "destination": if k.denied { "denied" } else { "allowed" },
            "caller": if k.outside { "outside every enforced cgroup" } else { "enforced" },
            "scoping": match k.scoped { None => "no", Some(false) => "rules for everyone", Some(true) => "rules scoped to the caller's policy" },
            "median_ns_per_run": median(k.ns.clone()), "runs_ns": k.ns,
        })).collect::<Vec<_>>(),
        "loading": loads.iter().map(|l| json!({
            "system": l.system, "rules": l.rules, "ms": l.ms, "notes": l.what,
        })).collect::<Vec<_>>(),
    });
    KernelResults {
        rows,
        sections,
        json,
    }
}

/// Programs that call one helper and allow, measured like the no-op one: the cost of learning
/// who the caller is, which scoping cannot do without.
const HELPER_CALIBRATIONS: [(Calibration, &str, &str); 2] = [
    (
        Calibration::CgroupId,
        "bpf_get_current_cgroup_id",
        "the caller's cgroup, where scoping's lookup starts: a scoped decision costs at least this",
    ),
    (
        Calibration::NetnsCookie,
        "bpf_get_netns_cookie",
        "the socket's network namespace, the cheapest helper that tells one pod from another",
    ),
];

/// What scoping adds to an allowed call: the same daemon, rules and workload, before and
/// after the allowed rules name a visibility set (1,000 cgroups mapped, 100 policies).
/// Target: at most 15 ns. Then the floor under it: each helper alone, less the no-op.
fn scoping_rows(kernel: &[KernelCell], noop_ns: Option<f64>) -> Vec<Row> {
    let mut rows = Vec::new();
    for (program, ..) in SCOPED_CASES {
        let cell = |scoped| {
            kernel
                .iter()
                .find(|k| k.program == program && k.scoped == Some(scoped))
        };
        let (Some(off), Some(on)) = (cell(false), cell(true)) else {
            continue;
        };
        let (a, b) = (median(off.ns.clone()), median(on.ns.clone()));
        rows.push(Row {
            case: format!(
                "in-kernel cost added by scoping: allowed {program} ({SCOPED_CGROUPS} cgroups mapped, {SCOPED_POLICIES} policies)"
            ),
            median: b - a,
            unit: "ns",
            target: Some(15.0),
            detail: format!(
                "run_time_ns / run_cnt with the rule for everyone {} and scoped {}, {} runs each, {} exact rules",
                fmt_ns(a),
                fmt_ns(b),
                on.ns.len(),
                on.rules
            ),
        });
    }
    for (_, helper, what) in HELPER_CALIBRATIONS {
        let helper_ns = kernel
            .iter()
            .find(|k| k.program == helper)
            .map(|k| median(k.ns.clone()));
        let (Some(noop), Some(ns)) = (noop_ns, helper_ns) else {
            continue;
        };
        rows.push(Row {
            case: format!("floor under scoping: {helper}() alone, in a program that then allows"),
            median: ns - noop,
            unit: "ns",
            target: None,
            detail: format!(
                "run_time_ns / run_cnt {} less the no-op program's {}; {what}",
                fmt_ns(ns),
                fmt_ns(noop)
            ),
        });
    }
    rows
}

/// The targets, each as a row with a verdict.
/// What the escape protections add in the kernel (docs/threat-model.md), each program's run
/// time less the no-op program's (the floor the statistics show for a program doing
/// nothing). Target: at most 10 ns more per allowed TCP connect and per UDP sendto.
fn escape_rows(kernel: &[KernelCell], max: usize, noop_ns: Option<f64>) -> Vec<Row> {
    let cases = [
        (
            "egress",
            false,
            "egress program per packet sent (every packet of an enforced cgroup)",
        ),
        (
            "sock_create",
            false,
            "sock_create program per socket() of an enforced cgroup (TCP, allowed)",
        ),
        (
            "foreign_connect4",
            false,
            "root program per allowed connect() of a task in an enforced cgroup, its own socket",
        ),
        (
            "foreign_sendmsg4",
            false,
            "root program per allowed UDP sendto() of a task in an enforced cgroup, its own socket",
        ),
        (
            "foreign_connect4",
            true,
            "root program per connect() of a task outside every enforced cgroup (the whole host pays this)",
        ),
        (
            "foreign_sendmsg4",
            true,
            "root program per UDP sendto() of a task outside every enforced cgroup (the whole host pays this)",
        ),
    ];
    let mut rows = Vec::new();
    for (program, outside, what) in cases {
        let Some(k) = kernel.iter().find(|k| {
            k.rules == max && k.program == program && k.outside == outside && k.scoped.is_none()
        }) else {
            continue;
        };
        let ns = median(k.ns.clone());
        // Socket creation is not on the connect or sendto path: shown, no target.
        let target = (program != "sock_create").then_some(10.0);
        rows.push(Row {
            case: format!("in-kernel cost added by the escape protections: {what}"),
            median: noop_ns.map_or(ns, |floor| ns - floor),
            unit: "ns",
            target,
            detail: format!(
                "run_time_ns / run_cnt {} less the no-op program's {}, {} runs; the no-op \
                 figure is also roughly what attaching one more program costs",
                fmt_ns(ns),
                noop_ns.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ns")),
                k.ns.len()
            ),
        });
    }
    rows
}

fn targets(plan: &Plan, cells: &[Cell], kernel: &[KernelCell], max: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    let noop_overhead = cells
        .iter()
        .find(|c| c.system == Some(System::Noop) && c.work == "udp_connect" && !c.denied_dest)
        .map(Cell::ratio);
    let noop_ns = kernel
        .iter()
        .find(|k| k.program == "noop")
        .map(|k| median(k.ns.clone()));
    for denied in [false, true] {
        if let Some(c) = cells.iter().find(|c| {
            c.system == Some(System::Enforcer)
                && c.rules == max
                && c.work == "udp_connect"
                && c.denied_dest == denied
        }) {
            rows.push(Row {
                case: format!(
                    "UDP connect() overhead over no enforcement, {max} exact + {CIDR_RULES} CIDR \
                     rules, {} destination",
                    if denied { "denied" } else { "allowed" }
                ),
                median: (c.ratio() - 1.0) * 100.0,
                unit: "%",
                target: Some(5.0),
                detail: format!(
                    "{} vs {} per call, medians of {} interleaved runs; a no-op program \
                     attached the same way: {}",
                    fmt_ns(c.median()),
                    fmt_ns(median(c.base.clone())),
                    plan.runs,
                    noop_overhead.map_or_else(
                        || "-".to_owned(),
                        |r| format!("{:+.1} %", (r - 1.0) * 100.0)
                    )
                ),
            });
        }
    }
    // The in-kernel cost of each hook's allowed and denied call has its rows in the growth
    // group (bench_growth.rs), at every size.
    rows.extend(escape_rows(kernel, max, noop_ns));
    rows.extend(scoping_rows(kernel, noop_ns));
    let mut sizes: Vec<usize> = plan.enforcer_sizes.clone();
    sizes.sort_unstable();
    for n in sizes {
        // Like for like: the workloads where netfilter decides too.
        let mut worst: Option<(f64, String)> = None;
        for work in ["udp_connect_send", "tcp_connect_accept"] {
            for denied in [false, true] {
                let get = |s: System| {
                    cells.iter().find(|c| {
                        c.system == Some(s)
                            && c.rules == n
                            && c.work == work
                            && c.denied_dest == denied
                    })
                };
                // Each side against the baseline it was interleaved with: blocks run minutes
                // apart, and the machine drifts more than the difference being measured.
                if let (Some(e), Some(f)) = (get(System::Enforcer), get(System::Nft)) {
                    let r = e.ratio() / f.ratio();
                    let what = format!("{work} {}", if denied { "denied" } else { "allowed" });
                    if worst.as_ref().is_none_or(|(w, _)| r > *w) {
                        worst = Some((r, what));
                    }
                }
            }
        }
        if let Some((r, what)) = worst {
            rows.push(Row {
                case: format!(
                    "egress-enforcer ÷ nftables, per-call cost relative to no enforcement, {n} \
                     exact + {CIDR_RULES} CIDR (worst of UDP connect+send and TCP \
                     connect+accept, allowed and denied)"
                ),
                median: r,
                unit: "×",
                target: Some(1.0),
                detail: format!("worst: {what}"),
            });
        }
    }
    rows
}
