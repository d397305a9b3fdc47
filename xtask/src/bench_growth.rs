//! How the cost of enforcement grows with the rules (docs/architecture.md, "Tests and
//! benchmarks"): at 1k, 10k, 100k and 1M exact rules (plus 1,000 CIDR rules), the daemon's
//! memory, its start to every rule enforced, one changed file to its rules enforced, and the
//! in-kernel cost of each hook's allowed and denied call. ServiceEntries are laid out as
//! operators keep them: one STATIC entry of 1,000 endpoints per file (1,000 files at 1M).
//! Writes a table and an SVG plot of it.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    bench::{Row, Section, median},
    bench_daemon::{Daemon, cleanup, fresh_dir},
    bench_kernel::{
        CGROUP, CIDR_RULES, Fixture, KERNEL_CASES, KernelCell, Plan, allowed_entry, cidr_entries,
        filler, log_number, measure_kernel, measure_noop_with, static_entries,
    },
    bench_noop::{Calibration, Noop, attach_type},
};

const PER_FILE: usize = 1_000;
/// The 4 exact rules of `allowed_entry`.
const ALLOWED_RULES: usize = 4;
const HOOKS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

/// Where main stood when the targets were set (issue 15, same machine, release build).
const BEFORE: &str = "before: 884 MiB at 1M rules (≈ 880 B/rule), start 4.4–5.3 s, one \
                      change 6.5 s, allowed 75 ns vs no-op 37.7 ns, denied ≈ 300 ns";

/// One size's measurements.
struct Point {
    exact: usize,
    rules: usize,
    rss_mib: f64,
    hwm_mib: f64,
    start_ms: f64,
    change_ms: f64,
    /// Per hook (HOOKS order): allowed, denied, in ns.
    calls: Vec<(f64, f64)>,
    /// Per hook (HOOKS order): a no-op program on the same hook, measured in the same rounds.
    noop: Vec<f64>,
}

pub struct Growth {
    pub rows: Vec<Row>,
    pub section: Section,
    pub svg: String,
}

/// File `f`'s entry; `generation` moves its 1,000 addresses elsewhere (a change).
fn file_entry(f: usize, generation: usize) -> String {
    let first_octet = if generation.is_multiple_of(2) { 10 } else { 11 };
    static_entries(
        &format!("f{f:04}"),
        (f * PER_FILE..(f + 1) * PER_FILE).map(|i| filler(i, first_octet)),
    )
}

fn file_name(f: usize) -> String {
    format!("f{f:04}.yaml")
}

/// The allowed entry, `exact` more exact rules and (with `ranges`) the CIDR rules.
fn write_config(dir: &Path, exact: usize, ranges: bool) -> anyhow::Result<PathBuf> {
    let se = dir.join("se");
    std::fs::write(se.join("allowed.yaml"), allowed_entry())?;
    if ranges {
        std::fs::write(se.join("ranges.yaml"), cidr_entries())?;
    }
    for f in 0..exact / PER_FILE {
        std::fs::write(se.join(file_name(f)), file_entry(f, 0))?;
    }
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "cgroups: [{CGROUP}/case]\nbpffs: {}\nserviceEntries: [{}]\nallow: {{dnsServers: []}}\ndns: {{mode: resolve}}\nmaps: {{exactRules: {}, prefixRules: {}}}\nlog: {{format: json}}\nhttp: {{listen: ''}}\n",
            dir.join("bpffs").display(),
            se.display(),
            (exact + exact / 8).max(1024) + 2 * PER_FILE,
            2 * CIDR_RULES,
        ),
    )?;
    Ok(config)
}

/// Start → enforcing; the logged rule count must be everything written.
fn start(bin: &Path, config: &Path, rules: usize) -> anyhow::Result<(Daemon, f64)> {
    let t0 = Instant::now();
    let mut d = Daemon::start(bin, config)?;
    let (t1, line) = d.wait_for_line("\"enforcing\"", Duration::from_secs(600))?;
    let loaded = log_number(&line, "static_rules").unwrap_or(0.0) as usize;
    if loaded != rules {
        bail!("the daemon loaded {loaded} rules, expected {rules}: {line}");
    }
    d.wait_for("first full apply done", Duration::from_secs(60))?;
    Ok((d, t1.duration_since(t0).as_secs_f64() * 1e3))
}

/// VmRSS once the daemon has settled after the load, in MiB.
fn settled_rss(d: &Daemon) -> anyhow::Result<f64> {
    // Freed memory is handed back and the event/DNS tasks start in the first second.
    std::thread::sleep(Duration::from_secs(1));
    Ok(d.status_kib("VmRSS:")? as f64 / 1024.0)
}

/// The daemon with only the 4 allowed rules: what every point's memory is measured from.
fn baseline(bin: &Path) -> anyhow::Result<f64> {
    let dir = fresh_dir("growth-base")?;
    let config = write_config(&dir, 0, false)?;
    let (d, _) = start(bin, &config, ALLOWED_RULES)?;
    let rss = settled_rss(&d);
    d.stop();
    cleanup(&dir);
    rss
}

/// One file of the middle rewritten `changes` times; each time file change → "rules updated"
/// with exactly its 1,000 rules added and 1,000 removed.
fn changes(d: &mut Daemon, se: &Path, files: usize, changes: usize) -> anyhow::Result<f64> {
    let f = files / 2;
    let mut ms = Vec::new();
    for generation in 1..=changes {
        d.drain();
        let t0 = Instant::now();
        std::fs::write(se.join(file_name(f)), file_entry(f, generation))?;
        let (t1, line) = d.wait_for_line("rules updated", Duration::from_secs(600))?;
        let (added, removed) = (
            log_number(&line, "added").unwrap_or(0.0) as usize,
            log_number(&line, "removed").unwrap_or(0.0) as usize,
        );
        if added != PER_FILE || removed != PER_FILE {
            bail!("expected {PER_FILE} added and {PER_FILE} removed: {line}");
        }
        ms.push(t1.duration_since(t0).as_secs_f64() * 1e3);
    }
    Ok(median(ms))
}

fn point(
    fx: &Fixture,
    plan: &Plan,
    bin: &Path,
    exact: usize,
    n_changes: usize,
) -> anyhow::Result<Point> {
    let dir = fresh_dir(&format!("growth-{exact}"))?;
    let config = write_config(&dir, exact, true)?;
    // Files changed in the last 2 s are read again on every reload (their timestamps cannot
    // yet tell a later change apart: docs/architecture.md, "Reloads"); a real deployment's
    // files have been left alone far longer than that.
    std::thread::sleep(Duration::from_millis(2100));
    let rules = exact + ALLOWED_RULES + CIDR_RULES;
    let (mut d, start_ms) = start(bin, &config, rules)?;
    let rss_load = settled_rss(&d)?;
    let change_ms = changes(&mut d, &dir.join("se"), exact / PER_FILE, n_changes)?;
    let rss_mib = settled_rss(&d)?.max(rss_load);
    let hwm_mib = d.status_kib("VmHWM:")? as f64 / 1024.0;
    let (cells, noop) = calls_beside_noops(fx, plan, bin, (&config, exact + ALLOWED_RULES))?;
    d.stop();
    cleanup(&dir);
    let ns = |p: &str, denied: bool| {
        cells
            .iter()
            .find(|c| c.program == p && c.denied == denied)
            .map_or(f64::NAN, |c| median(c.ns.clone()))
    };
    Ok(Point {
        exact,
        rules,
        rss_mib,
        hwm_mib,
        start_ms,
        change_ms,
        calls: HOOKS.iter().map(|p| (ns(p, false), ns(p, true))).collect(),
        noop,
    })
}

/// The enforcing programs' cases of [`KERNEL_CASES`] and, in the same rounds, a no-op
/// program on each of the four hooks in a sibling cgroup, driven as the allowed case of that
/// hook: the floor each hook's figure stands on, measured side by side with it (a drift of
/// the machine between two separate blocks moved the difference by several ns).
fn calls_beside_noops(
    fx: &Fixture,
    plan: &Plan,
    bin: &Path,
    config: (&Path, usize),
) -> anyhow::Result<(Vec<KernelCell>, Vec<f64>)> {
    let mut noops = Vec::new();
    for hook in HOOKS {
        let &(_, work, addr, _, _) = KERNEL_CASES
            .iter()
            .find(|c| c.0 == hook && !c.3)
            .with_context(|| format!("no allowed case for {hook}"))?;
        let noop = Noop::attach_to(&fx.cgroup("noop"), Calibration::Noop, attach_type(hook)?)?;
        noops.push((noop, work, addr));
    }
    let one = plan.one_run();
    let mut cells: Vec<KernelCell> = Vec::new();
    let mut noop_ns = vec![Vec::new(); noops.len()];
    for _ in 0..plan.runs {
        let round = measure_kernel(fx, &one, bin, config, &KERNEL_CASES[..8])?;
        if cells.is_empty() {
            cells = round;
        } else {
            for (cell, more) in cells.iter_mut().zip(round) {
                cell.ns.extend(more.ns);
            }
        }
        for ((noop, work, addr), ns) in noops.iter().zip(&mut noop_ns) {
            ns.extend(measure_noop_with(fx, &one, noop, "noop", (work, addr, "noop"))?.ns);
        }
    }
    Ok((cells, noop_ns.into_iter().map(median).collect()))
}

pub fn run(plan: &Plan, bin: &Path, worker: PathBuf, quick: bool) -> anyhow::Result<Growth> {
    let sizes: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    let n_changes = if quick { 3 } else { 7 };
    let fx = Fixture::new(worker)?;
    eprintln!("==> bench: growth, the daemon's baseline");
    let base_mib = baseline(bin)?;
    let mut points = Vec::new();
    for &exact in sizes {
        eprintln!("==> bench: growth, {exact} exact + {CIDR_RULES} CIDR rules");
        points.push(point(&fx, plan, bin, exact, n_changes)?);
    }
    let last = points.last().context("no sizes")?;
    Ok(Growth {
        rows: rows(last, base_mib),
        section: table(&points, base_mib, svg_name(quick)),
        svg: svg(&points, base_mib),
    })
}

pub fn svg_name(quick: bool) -> &'static str {
    if quick {
        "growth-quick.svg"
    } else {
        "growth.svg"
    }
}

fn per_rule(p: &Point, base_mib: f64, mib: f64) -> f64 {
    (mib - base_mib) * 1024.0 * 1024.0 / p.rules as f64
}

fn rows(p: &Point, base_mib: f64) -> Vec<Row> {
    let size = format!(
        "{} exact + {CIDR_RULES} CIDR rules",
        p.exact + ALLOWED_RULES
    );
    let steady = per_rule(p, base_mib, p.rss_mib);
    let mut rows = vec![
        Row {
            case: format!("daemon memory per rule, steady, {size}"),
            median: steady,
            unit: "bytes",
            target: Some(150.0),
            detail: format!(
                "(VmRSS {:.1} MiB − baseline {base_mib:.1} MiB) ÷ {} rules, after the load \
                 and after the changes (the larger); {BEFORE}",
                p.rss_mib, p.rules
            ),
        },
        Row {
            case: format!("daemon peak memory ÷ steady, {size}"),
            median: per_rule(p, base_mib, p.hwm_mib) / steady,
            unit: "×",
            target: Some(1.5),
            detail: format!(
                "VmHWM {:.1} MiB over start and changes, both less the baseline",
                p.hwm_mib
            ),
        },
        Row {
            case: format!("daemon VmRSS, {size}, including its baseline"),
            median: p.rss_mib,
            unit: "MiB",
            target: Some(200.0),
            detail: format!("baseline (4 rules) {base_mib:.1} MiB"),
        },
        Row {
            case: format!("daemon start → every rule enforced, {size}"),
            median: p.start_ms,
            unit: "ms",
            target: Some(2000.0),
            detail: format!(
                "process start to the `enforcing` log line, fresh pin directory, {} files",
                p.exact / PER_FILE + 2
            ),
        },
        Row {
            case: format!(
                "one changed file among {} → enforced, {size}",
                p.exact / PER_FILE
            ),
            median: p.change_ms,
            unit: "ms",
            target: Some(200.0),
            detail: format!(
                "{PER_FILE} rules added and {PER_FILE} removed each time; file write to the \
                 `rules updated` log line, including the 25 ms debounce"
            ),
        },
    ];
    for ((hook, (allowed, denied)), noop_ns) in HOOKS.iter().zip(&p.calls).zip(&p.noop) {
        rows.push(Row {
            case: format!("in-kernel {hook} allowed, over the no-op program, {size}"),
            median: allowed - noop_ns,
            unit: "ns",
            target: Some(20.0),
            detail: format!(
                "run_time_ns / run_cnt {allowed:.1} ns less a no-op program's on {hook} in a \
                 sibling cgroup, measured in the same rounds, {noop_ns:.1} ns"
            ),
        });
        rows.push(Row {
            case: format!("in-kernel {hook} denied, {size}"),
            median: *denied,
            unit: "ns",
            target: Some(120.0),
            detail: format!(
                "run_time_ns / run_cnt, the same denial repeated (events collapsed); a no-op \
                 program on {hook} measures {noop_ns:.1} ns"
            ),
        });
    }
    rows
}

fn worst(calls: &[(f64, f64)], denied: bool) -> f64 {
    calls
        .iter()
        .map(|&(a, d)| if denied { d } else { a })
        .fold(f64::NAN, f64::max)
}

/// The largest allowed call over its own hook's no-op program.
fn worst_over_noop(p: &Point) -> f64 {
    p.calls
        .iter()
        .zip(&p.noop)
        .map(|(&(a, _), n)| a - n)
        .fold(f64::NAN, f64::max)
}

fn table(points: &[Point], base_mib: f64, plot: &str) -> Section {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Daemon baseline (4 rules) {base_mib:.1} MiB. Per call: the worst of connect4, \
         connect6, sendmsg4 and sendmsg6; \"over no-op\": less a no-op program on the same \
         hook in a sibling cgroup, measured in the same rounds. Plot: [{plot}]({plot}).\n"
    );
    let _ = writeln!(
        md,
        "| rules | files | daemon VmRSS | per rule | peak (VmHWM) | start → enforced | one file changed | allowed call | over no-op | denied call |"
    );
    let _ = writeln!(
        md,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for p in points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} MiB | {:.0} B | {:.1} MiB | {:.0} ms | {:.0} ms | {:.1} ns | {:.1} ns | {:.1} ns |",
            p.rules,
            p.exact / PER_FILE + 2,
            p.rss_mib,
            per_rule(p, base_mib, p.rss_mib),
            p.hwm_mib,
            p.start_ms,
            p.change_ms,
            worst(&p.calls, false),
            worst_over_noop(p),
            worst(&p.calls, true),
        );
    }
    Section {
        title: "Growth: 1k to 1M rules".to_owned(),
        body: md,
    }
}

/// One panel of the plot: a log-x line chart of `ys` against the rule counts.
fn panel(out: &mut String, (x0, y0): (f64, f64), title: &str, unit: &str, xs: &[f64], ys: &[f64]) {
    const W: f64 = 300.0;
    const H: f64 = 170.0;
    let (lx0, lx1) = (3.0_f64, 6.0_f64);
    let ymax = ys
        .iter()
        .copied()
        .filter(|y| y.is_finite())
        .fold(0.0, f64::max)
        * 1.15;
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let px = |x: f64| x0 + (x.log10() - lx0) / (lx1 - lx0) * W;
    let py = |y: f64| y0 + H - y / ymax * H;
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-weight="bold">{title}</text>"#,
        y0 - 10.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{y0}" width="{W}" height="{H}" fill="none" stroke="#999"/>"##
    );
    for (i, label) in ["1k", "10k", "100k", "1M"].iter().enumerate() {
        let x = px(10f64.powi(3 + i as i32));
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            y0 + H,
            y0 + H + 15.0
        );
    }
    for frac in [0.0, 0.5, 1.0] {
        let v = ymax / 1.15 * frac;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{v:.0} {unit}</text>"#,
            x0 - 4.0,
            py(v) + 4.0
        );
    }
    let pts: Vec<(f64, f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter(|(_, y)| y.is_finite())
        .map(|(&x, &y)| (px(x), py(y), y))
        .collect();
    let line: Vec<String> = pts
        .iter()
        .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        out,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        line.join(" ")
    );
    for (x, y, v) in pts {
        let _ = writeln!(
            out,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="#1f77b4"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#1f77b4">{:.0}</text>"##,
            y - 6.0,
            v
        );
    }
}

fn svg(points: &[Point], base_mib: f64) -> String {
    let xs: Vec<f64> = points.iter().map(|p| p.rules as f64).collect();
    let col = |f: &dyn Fn(&Point) -> f64| points.iter().map(f).collect::<Vec<f64>>();
    let mut out = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="820" height="520" font-family="sans-serif" font-size="11">
<text x="10" y="18" font-size="14" font-weight="bold">egress-enforcer: cost of growth (rules, log scale)</text>
"#,
    );
    let panels: [(&str, &str, Vec<f64>); 4] = [
        (
            "daemon memory above baseline",
            "MiB",
            col(&|p| p.rss_mib - base_mib),
        ),
        ("start → enforced", "ms", col(&|p| p.start_ms)),
        ("one file changed → enforced", "ms", col(&|p| p.change_ms)),
        (
            "allowed call over no-op (worst hook)",
            "ns",
            col(&worst_over_noop),
        ),
    ];
    for (i, (title, unit, ys)) in panels.iter().enumerate() {
        let origin = (70.0 + (i % 2) as f64 * 400.0, 60.0 + (i / 2) as f64 * 240.0);
        panel(&mut out, origin, title, unit, &xs, ys);
    }
    out.push_str("</svg>\n");
    out
}
