//! Hostile YAML: `egress-enforcer check` on files at the size limit built to be expensive
//! (deep nesting, many documents, many items, aliases, long scalars), timed side by side with
//! a valid file of ServiceEntries of the same size. Linear cost means a ratio near 1.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::bail;

use crate::{bench::Row, bench_daemon::fresh_dir};

/// Hostile cases: name and content of about `size` bytes.
fn cases(size: usize) -> Vec<(&'static str, String)> {
    let mut anchors = String::with_capacity(size);
    let mut i = 0;
    while anchors.len() < size / 2 {
        let _ = writeln!(anchors, "- &a{i} [x, y]");
        i += 1;
    }
    while anchors.len() < size {
        let _ = writeln!(anchors, "- *a{}", i / 2);
    }
    vec![
        ("deep flow nesting", "[".repeat(size)),
        ("deep block nesting", "- ".repeat(size / 2)),
        ("deep mapping nesting", "{a: ".repeat(size / 4)),
        ("documents", "---\n".repeat(size / 4)),
        (
            "flow list items",
            format!("[{}]", "a,".repeat(size / 2 - 2)),
        ),
        ("block list items", "- a\n".repeat(size / 4)),
        ("anchors and aliases", anchors),
        (
            "one long scalar",
            format!("a: {}", "x ".repeat(size / 2 - 2)),
        ),
        // Each needs go-yaml's flow-colon repair, which reads the file again (bounded).
        (
            "flow values ending in ':'",
            format!("[{}]", "{k: v:}, ".repeat(size / 9 - 1)),
        ),
    ]
}

/// A valid file of STATIC ServiceEntries of at most `size` bytes (whole entries only).
fn valid(size: usize) -> String {
    let mut out = String::with_capacity(size);
    for n in 0u32.. {
        let addrs = (n * 4_000..(n + 1) * 4_000).map(|k| {
            let [_, a, b, c] = k.to_be_bytes();
            std::net::Ipv4Addr::new(10, a, b, c)
        });
        let entry = crate::bench_kernel::static_entries(&format!("v{n}"), addrs);
        if out.len() + entry.len() > size {
            break;
        }
        out.push_str(&entry);
    }
    out
}

/// One `check FILE`: wall time in ms and peak RSS in MiB (from `wait4`). Any verdict is fine;
/// a crash or a signal fails the bench.
fn check_once(bin: &Path, file: &Path) -> anyhow::Result<(f64, f64)> {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(bin);
    cmd.arg("check")
        .arg(file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // A vfork-style spawn would hand this process's peak RSS to the child's `ru_maxrss`
    // (the kernel keeps the old mm's high-water mark at exec); a pre-exec hook forces fork.
    // SAFETY: the hook does nothing, so it is async-signal-safe.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let t0 = Instant::now();
    let child = cmd.spawn()?;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; the pid is our own unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; wait4 reaps the child (std's Child is not waited on afterwards).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if !matches!(code, Some(0 | 1)) {
        bail!("check {} ended with wait status {status}", file.display());
    }
    Ok((ms, usage.ru_maxrss as f64 / 1024.0))
}

/// The fastest wall time (ms) and the peak RSS (MiB) of `check FILE` over `runs` fresh
/// processes. The fastest run is the one least disturbed by the VM: the cost being compared
/// is CPU work, and a growth ratio of noisy medians overstates it.
fn time_check(bin: &Path, file: &Path, runs: usize) -> anyhow::Result<(f64, f64)> {
    let mut fastest = f64::INFINITY;
    let mut rss: f64 = 0.0;
    for _ in 0..runs {
        let (t, r) = check_once(bin, file)?;
        fastest = fastest.min(t);
        rss = rss.max(r);
    }
    Ok((fastest, rss))
}

/// Every hostile case at `size` bytes: (name, median ms, peak MiB), and the valid file's.
type Case = (&'static str, f64, f64);

fn measure(bin: &Path, dir: &Path, size: usize, runs: usize) -> anyhow::Result<(Vec<Case>, Case)> {
    // Every file is written, and its text dropped, before anything is timed: the child's peak
    // RSS counts this process's pages until it execs.
    let valid_file = dir.join("valid.yaml");
    std::fs::write(&valid_file, valid(size))?;
    let mut files = Vec::new();
    for (i, (name, content)) in cases(size).into_iter().enumerate() {
        let file = dir.join(format!("hostile-{i}.yaml"));
        std::fs::write(&file, content)?;
        files.push((name, file));
    }
    let (ms, rss) = time_check(bin, &valid_file, runs)?;
    let base = ("valid ServiceEntries", ms, rss);
    let mut out = Vec::new();
    for (name, file) in files {
        let (ms, rss) = time_check(bin, &file, runs)?;
        out.push((name, ms, rss));
    }
    Ok((out, base))
}

fn max_by(cases: &[Case], key: impl Fn(&Case) -> f64) -> Case {
    cases
        .iter()
        .copied()
        .fold(("", 0.0, 0.0), |w, c| if key(&c) > key(&w) { c } else { w })
}

fn list(v: &[Case]) -> String {
    v.iter()
        .map(|(n, ms, rss)| format!("{n} {ms:.0} ms / {rss:.0} MiB"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn hostile_yaml(bin: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    // The largest size is just under the 16 MiB file limit (`limits.maxFileBytes`); a
    // quarter of it shows how the cost grows (linear: 4x; quadratic would be 16x).
    let large = if quick { 2 << 20 } else { (16 << 20) - 64 };
    let small = large / 4;
    let runs = 5;
    let dir = fresh_dir("hostile-yaml")?;
    let (at_small, _) = measure(bin, &dir, small, runs)?;
    let (at_large, base) = measure(bin, &dir, large, runs)?;
    let _ignored = std::fs::remove_dir_all(&dir);
    let slowest = max_by(&at_large, |c| c.1);
    let biggest = max_by(&at_large, |c| c.2);
    let growth: Vec<Case> = at_large
        .iter()
        .zip(&at_small)
        .map(|(l, s)| (l.0, l.1 / s.1.max(1.0), 0.0))
        .collect();
    let steepest = max_by(&growth, |c| c.1);
    let mib = |b: usize| b as f64 / f64::from(1 << 20);
    Ok(vec![
        Row {
            case: format!(
                "`check` of a {:.0} MiB hostile YAML file, worst case",
                mib(large)
            ),
            median: slowest.1,
            unit: "ms",
            target: None,
            detail: format!(
                "worst: {}; valid ServiceEntries of the same size: {:.0} ms / {:.0} MiB; {}",
                slowest.0,
                base.1,
                base.2,
                list(&at_large)
            ),
        },
        Row {
            case: format!(
                "peak memory of `check` on a {:.0} MiB hostile file ÷ a valid one of the same size",
                mib(large)
            ),
            median: biggest.2 / base.2,
            unit: "×",
            target: Some(1.25),
            detail: format!(
                "largest: {} {:.0} MiB, valid {:.0} MiB",
                biggest.0, biggest.2, base.2
            ),
        },
        Row {
            case: format!(
                "hostile YAML cost from {:.1} to {:.0} MiB, steepest case (linear: 4x)",
                mib(small),
                mib(large)
            ),
            median: steepest.1,
            unit: "×",
            target: Some(5.0),
            detail: format!(
                "steepest: {}; at {:.1} MiB: {}; fastest of {runs} runs, each a fresh process",
                steepest.0,
                mib(small),
                list(&at_small)
            ),
        },
    ])
}
