//! `cargo xtask bench`: measurements with targets, written to bench/RESULTS.md and
//! bench/results.json together with the machine they ran on. Quote medians.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cargo, step, workspace_root};

/// A titled markdown table of measurements that have no single target.
pub struct Section {
    pub title: String,
    pub body: String,
}

/// One measured case: name, median, unit, target, and whether the target is met.
pub struct Row {
    pub case: String,
    pub median: f64,
    pub unit: &'static str,
    pub target: Option<f64>,
    pub detail: String,
}

impl Row {
    fn verdict(&self) -> &'static str {
        match self.target {
            Some(t) if self.median <= t => "met",
            Some(_) => "MISSED",
            None => "-",
        }
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

fn json_f64(line: &str, key: &str) -> anyhow::Result<f64> {
    let pat = format!("\"{key}\": ");
    let rest = line
        .split_once(&pat)
        .map(|(_, r)| r)
        .with_context(|| format!("no {key} in {line}"))?;
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    Ok(num.parse()?)
}

/// Builds the ServiceEntry generator and engine benchmark (the engine and daemon groups use it).
pub fn serviceentry_bench_bin() -> anyhow::Result<std::path::PathBuf> {
    step(
        "bench: build serviceentry_bench (release)",
        cargo().env("AYA_BUILD_SKIP", "1").args([
            "build",
            "--release",
            "-p",
            "enforcer",
            "--no-default-features",
            "--example",
            "serviceentry_bench",
        ]),
    )?;
    Ok(workspace_root().join("target/release/examples/serviceentry_bench"))
}

/// Parse + validate + compile N ServiceEntries in a fresh process, `runs` times.
fn serviceentries(n: usize, runs: usize) -> anyhow::Result<Vec<Row>> {
    let bin = serviceentry_bench_bin()?;
    let dir = workspace_root().join(format!("target/bench/serviceentries-{n}"));
    let _ignored = std::fs::remove_dir_all(&dir);
    step(
        &format!("bench: generate {n} ServiceEntries"),
        Command::new(&bin)
            .arg("generate")
            .arg(&dir)
            .arg(n.to_string()),
    )?;
    let mut ms = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let out = Command::new(&bin).arg("run").arg(&dir).output()?;
        if !out.status.success() {
            bail!(
                "serviceentry_bench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        if json_f64(&line, "entries")? as usize != n || json_f64(&line, "errors")? != 0.0 {
            bail!("serviceentry_bench did not load {n} valid entries: {line}");
        }
        ms.push(json_f64(&line, "total_ms")?);
        rss.push(json_f64(&line, "peak_rss_kib")? / 1024.0);
    }
    let detail = format!(
        "{runs} runs, each a fresh process; min {:.0} / max {:.0} ms",
        ms.iter().copied().fold(f64::INFINITY, f64::min),
        ms.iter().copied().fold(0.0, f64::max)
    );
    Ok(vec![
        Row {
            case: format!("parse + validate + compile {n} ServiceEntries"),
            median: median(ms),
            unit: "ms",
            target: Some(1000.0),
            detail,
        },
        Row {
            case: format!("peak RSS, {n} ServiceEntries"),
            median: median(rss),
            unit: "MiB",
            target: Some(100.0),
            detail: "VmHWM of the whole process".to_owned(),
        },
    ])
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib:.0} GiB; Linux {kernel}; {date}")
}

fn write_results(
    rows: &[Row],
    sections: &[Section],
    kernel_json: &serde_json::Value,
    quick: bool,
    save: bool,
) -> anyhow::Result<()> {
    let dir = workspace_root().join("bench");
    std::fs::create_dir_all(&dir)?;
    let command = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n");
    let _ = writeln!(md, "Generated by `{command}` — do not edit by hand.\n");
    let _ = writeln!(md, "- Machine: {}", machine());
    let _ = writeln!(md, "- Statistic: median over the runs stated per case\n");
    let _ = writeln!(md, "| case | median | target | verdict | notes |");
    let _ = writeln!(md, "| --- | ---: | ---: | --- | --- |");
    for r in rows {
        let target = r
            .target
            .map_or_else(|| "-".to_owned(), |t| format!("≤ {t} {}", r.unit));
        let _ = writeln!(
            md,
            "| {} | {:.2} {} | {target} | {} | {} |",
            r.case,
            r.median,
            r.unit,
            r.verdict(),
            r.detail
        );
    }
    for sec in sections {
        let _ = writeln!(md, "\n## {}\n\n{}", sec.title, sec.body);
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "case": r.case, "median": r.median, "unit": r.unit,
                "target": r.target, "verdict": r.verdict(), "notes": r.detail,
            })
        })
        .collect();
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "machine": machine(), "command": command, "results": json, "kernel_path": kernel_json,
    }))? + "\n";
    let (md_name, json_name) = if quick {
        ("RESULTS-quick.md", "results-quick.json")
    } else {
        ("RESULTS.md", "results.json")
    };
    print!("\n{md}");
    if !save {
        println!("(one group only: results files left as they were)");
        return Ok(());
    }
    std::fs::write(dir.join(md_name), &md)?;
    std::fs::write(dir.join(json_name), json)?;
    println!("written to {}", Path::new("bench").join(md_name).display());
    Ok(())
}

/// The benchmark groups, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Group {
    /// ServiceEntry parse + validate + compile
    Engine,
    /// Reload latency, DNS resolution, RSS of the running daemon, scoping's kernel memory
    Daemon,
    /// Per-call cost against nftables and iptables, in-kernel cost, rule loading
    Kernel,
    /// DNS-aware mode: proxy latency, commit time, never-repeating answers, memory
    Dns,
    /// Memory, start, change and per-call cost at 1k, 10k, 100k and 1M rules (and the plot)
    Growth,
}

pub fn bench(quick: bool, only: Option<Group>) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load BPF programs and create namespaces: run them as root");
    }
    let wanted = |g: Group| only.is_none_or(|o| o == g);
    // The harness's DnsWorld starts this binary (the release build made below). Set before
    // any thread of this process exists.
    // SAFETY: single-threaded here; nothing reads the environment concurrently.
    unsafe {
        std::env::set_var(
            "EE_BIN",
            workspace_root().join("target/release/egress-enforcer"),
        );
    }
    let runs = if quick { 3 } else { 7 };
    let mut rows = Vec::new();
    if wanted(Group::Engine) {
        rows.extend(serviceentries(if quick { 2_000 } else { 10_000 }, runs)?);
    }
    step(
        "bench: build egress-enforcer and ee-bench-worker (release)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "enforcer",
            "--bin",
            "egress-enforcer",
            "-p",
            "e2e",
            "--bin",
            "ee-bench-worker",
            "--bin",
            "ee-dns-load",
            "--bin",
            "ee-dns-rotor",
        ]),
    )?;
    let release = workspace_root().join("target/release");
    let bin = release.join("egress-enforcer");
    if wanted(Group::Engine) {
        rows.extend(crate::bench_yaml::hostile_yaml(&bin, quick)?);
    }
    if wanted(Group::Daemon) {
        rows.extend(crate::bench_daemon::daemon_rows(&bin, quick)?);
        rows.extend(crate::bench_scoping::memory_rows(&bin, quick)?);
    }
    if wanted(Group::Dns) {
        rows.extend(crate::bench_dns::dns_rows(&release, quick)?);
    }
    let mut sections = Vec::new();
    let mut kernel_json = serde_json::Value::Null;
    let plan = crate::bench_kernel::Plan::new(quick);
    let mut svg = None;
    if wanted(Group::Growth) {
        let growth = crate::bench_growth::run(&plan, &bin, release.join("ee-bench-worker"), quick)?;
        rows.extend(growth.rows);
        sections.push(growth.section);
        svg = Some(growth.svg);
    }
    if wanted(Group::Kernel) {
        let kernel = crate::bench_kernel::run(&plan, &bin, release.join("ee-bench-worker"))?;
        rows.extend(kernel.rows);
        sections.extend(kernel.sections);
        kernel_json = kernel.json;
    }
    write_results(&rows, &sections, &kernel_json, quick, only.is_none())?;
    if let Some(svg) = svg {
        let name = crate::bench_growth::svg_name(quick);
        let path = workspace_root().join("bench").join(name);
        if only.is_none() {
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        } else {
            let path = workspace_root().join("target/bench").join(name);
            std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

/// The smoke check `cargo xtask test` runs after `bench --quick`: every case must have produced
/// a finite, positive number (their values are not judged). Returns how many were checked.
pub fn check_quick_results() -> anyhow::Result<usize> {
    let path = workspace_root().join("bench/results-quick.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    check_results(&v).with_context(|| format!("in {}", path.display()))
}

/// Every case produced a number of the right sign; the count of numbers checked.
fn check_results(v: &serde_json::Value) -> anyhow::Result<usize> {
    let mut checked = 0;
    // Times, sizes and ratios cannot be negative; an overhead in % can (a denied call that
    // fails early is cheaper than the connect it replaces, and noise goes both ways).
    let mut check_signed =
        |what: &str, x: &serde_json::Value, signed: bool| -> anyhow::Result<()> {
            match x.as_f64() {
                Some(f) if f.is_finite() && (signed || f >= 0.0) => {
                    checked += 1;
                    Ok(())
                }
                _ => bail!("{what}: no number ({x})"),
            }
        };
    let list = |key: &str| -> anyhow::Result<Vec<serde_json::Value>> {
        let mut node = v;
        for k in key.split('.') {
            node = &node[k];
        }
        let items = node.as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            bail!("{key}: no cases");
        }
        Ok(items)
    };
    for r in list("results")? {
        // Differences (an overhead in %, a cost less the no-op floor, the latency the proxy
        // adds over the direct path) can be negative when noise exceeds them.
        let signed = r["unit"].as_str() == Some("%")
            || r["case"].as_str().is_some_and(|c| {
                c.starts_with("in-kernel cost added") || c.starts_with("DNS proxy: added latency")
            });
        check_signed(&format!("results: {}", r["case"]), &r["median"], signed)?;
    }
    let mut check = |what: &str, x: &serde_json::Value| check_signed(what, x, false);
    let per_call = list("kernel_path.per_call")?;
    for c in &per_call {
        let name = format!(
            "per call: {} {} {} {}",
            c["system"], c["rules"], c["work"], c["destination"]
        );
        check(&name, &c["median_ns"])?;
        check(&name, &c["baseline_median_ns"])?;
    }
    // Every configuration measured every work for both destinations.
    let systems: std::collections::BTreeSet<String> =
        per_call.iter().map(|c| c["system"].to_string()).collect();
    if systems.len() != 4 {
        bail!(
            "per-call results cover {} configurations, not 4: {systems:?}",
            systems.len()
        );
    }
    if per_call.len() % 6 != 0 {
        bail!(
            "{} per-call results: not 3 works × 2 destinations per configuration",
            per_call.len()
        );
    }
    for k in list("kernel_path.in_kernel")? {
        check(
            &format!("in-kernel: {} {}", k["program"], k["exact_rules"]),
            &k["median_ns_per_run"],
        )?;
    }
    for l in list("kernel_path.loading")? {
        check(
            &format!("loading: {} {}", l["system"], l["rules"]),
            &l["ms"],
        )?;
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal complete result set: 4 configurations × 3 works × 2 destinations.
    fn results(overhead: f64, ms: f64) -> serde_json::Value {
        let mut per_call = Vec::new();
        for system in ["none", "enforcer", "nft", "iptables"] {
            for work in ["udp_connect", "udp_connect_send", "tcp_connect_accept"] {
                for destination in ["allowed", "denied"] {
                    per_call.push(serde_json::json!({
                        "system": system, "rules": 10, "work": work, "destination": destination,
                        "median_ns": 500.0, "baseline_median_ns": 490.0,
                    }));
                }
            }
        }
        serde_json::json!({
            "results": [
                {"case": "overhead", "unit": "%", "median": overhead},
                {"case": "parse", "unit": "ms", "median": ms},
            ],
            "kernel_path": {
                "per_call": per_call,
                "in_kernel": [{"program": "connect4", "exact_rules": 10, "median_ns_per_run": 70.0}],
                "loading": [{"system": "enforcer", "rules": 10, "ms": 1.0}],
            },
        })
    }

    #[test]
    fn overheads_may_be_negative_and_nothing_else_may() {
        assert_eq!(
            check_results(&results(-1.95, 120.0)).unwrap(),
            2 + 24 * 2 + 1 + 1
        );
        assert!(check_results(&results(3.0, -1.0)).is_err());
        assert!(check_results(&results(f64::NAN, 1.0)).is_err());
        let mut missing = results(3.0, 1.0);
        missing["kernel_path"]["per_call"] = serde_json::json!([]);
        assert!(check_results(&missing).is_err());
    }
}
