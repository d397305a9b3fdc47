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

/// Median wall time of `check FILE` (any verdict; a crash or a signal fails the bench).
fn time_check(bin: &Path, file: &Path, runs: usize) -> anyhow::Result<f64> {
    let mut ms = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = Command::new(bin).arg("check").arg(file).output()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if !matches!(out.status.code(), Some(0 | 1)) {
            bail!(
                "check {} ended with {}: {}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(crate::bench::median(ms))
}

/// Every hostile case at `size` bytes: (name, median ms), and the valid file's median.
fn measure(
    bin: &Path,
    dir: &Path,
    size: usize,
    runs: usize,
) -> anyhow::Result<(Vec<(&'static str, f64)>, f64)> {
    let valid_file = dir.join("valid.yaml");
    std::fs::write(&valid_file, valid(size))?;
    let base = time_check(bin, &valid_file, runs)?;
    let mut out = Vec::new();
    for (name, content) in cases(size) {
        let file = dir.join("hostile.yaml");
        std::fs::write(&file, content)?;
        out.push((name, time_check(bin, &file, runs)?));
    }
    Ok((out, base))
}

fn worst(cases: &[(&'static str, f64)]) -> (&'static str, f64) {
    cases
        .iter()
        .copied()
        .fold(("", 0.0), |w, c| if c.1 > w.1 { c } else { w })
}

pub fn hostile_yaml(bin: &Path, quick: bool) -> anyhow::Result<Vec<Row>> {
    // The largest size is just under the 16 MiB file limit (`limits.maxFileBytes`); a
    // quarter of it shows how the cost grows (linear: 4x; quadratic would be 16x).
    let large = if quick { 2 << 20 } else { (16 << 20) - 64 };
    let small = large / 4;
    let runs = 3;
    let dir = fresh_dir("hostile-yaml")?;
    let (at_small, _) = measure(bin, &dir, small, runs)?;
    let (at_large, base) = measure(bin, &dir, large, runs)?;
    let _ignored = std::fs::remove_dir_all(&dir);
    let (name, ms) = worst(&at_large);
    let growth = at_large
        .iter()
        .zip(&at_small)
        .map(|((n, l), (_, s))| (*n, l / s.max(1.0)))
        .fold(("", 0.0f64), |w, c| if c.1 > w.1 { c } else { w });
    let mib = |b: usize| b as f64 / f64::from(1 << 20);
    let list = |v: &[(&str, f64)]| {
        v.iter()
            .map(|(n, ms)| format!("{n} {ms:.0} ms"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(vec![
        Row {
            case: format!(
                "`check` of a {:.0} MiB hostile YAML file, worst case",
                mib(large)
            ),
            median: ms,
            unit: "ms",
            target: None,
            detail: format!(
                "worst: {name} ({:.1}x the {base:.0} ms of valid ServiceEntries of the same size); {}",
                ms / base,
                list(&at_large)
            ),
        },
        Row {
            case: format!(
                "hostile YAML cost from {:.1} to {:.0} MiB, steepest case (linear: 4x)",
                mib(small),
                mib(large)
            ),
            median: growth.1,
            unit: "×",
            target: Some(5.0),
            detail: format!(
                "steepest: {}; at {:.1} MiB: {}; medians of {runs} runs, each a fresh process",
                growth.0,
                mib(small),
                list(&at_small)
            ),
        },
    ])
}
