//! ServiceEntry YAML for the drafts of `suggest`, with comments that say where each entry
//! came from. Every string that comes from a workload (cgroup and pod names in comments)
//! is reduced to one printable line; names and addresses are written quoted.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use super::{
    suggest::{Draft, Resolution, Tally, protocol},
    time,
};

/// Items listed in a comment before "and N more".
const LIST: usize = 5;

/// One line of printable text: YAML ends a comment at any line break (NEL, U+2028/9 too).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

fn list<T: ToString>(items: impl ExactSizeIterator<Item = T>) -> String {
    let n = items.len();
    let mut shown: Vec<String> = items.take(LIST).map(|i| clean(&i.to_string())).collect();
    if n > LIST {
        shown.push(format!("and {} more", n - LIST));
    }
    shown.join(", ")
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn header(out: &mut String, d: &Draft) {
    let mut all = Tally::default();
    let mut first = u64::MAX;
    for t in d.ports.values() {
        first = first.min(t.first);
        all.last = all.last.max(t.last);
        all.observations += t.observations;
        all.count = all.count.saturating_add(t.count);
        all.denied = all.denied.saturating_add(t.denied);
        all.workloads.extend(t.workloads.iter().cloned());
    }
    let _ = writeln!(
        out,
        "# Suggested by egress-enforcer from {}: {} ({} denied),",
        plural(all.observations, "observation", "observations"),
        plural(all.count, "call", "calls"),
        all.denied
    );
    let _ = writeln!(
        out,
        "# first seen {}, last seen {}.",
        time::format(first),
        time::format(all.last)
    );
    let _ = writeln!(out, "# Workloads: {}", list(all.workloads.iter()));
    for ((port, t), tally) in &d.ports {
        let addrs: &BTreeSet<IpAddr> = &tally.addrs;
        let _ = writeln!(
            out,
            "#   {port}/{}: {} to {}",
            t.as_str(),
            plural(tally.count, "call", "calls"),
            list(addrs.iter())
        );
    }
    if let Some(note) = d.note {
        let _ = writeln!(out, "# Note: {note}.");
    }
}

/// One document: comments, then the entry. With a namespace (its pod's), the entry is
/// exported to it alone (`exportTo: ["."]`), so that it widens only that namespace's policy.
pub fn render(d: &Draft) -> String {
    let namespace = d.namespace.as_deref();
    let mut out = String::new();
    header(&mut out, d);
    out.push_str("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n");
    // Quoted: both are DNS labels, which YAML 1.1 may read as something else (`off`, `null`
    // and `123` are a boolean, a null and a number, and then no valid name).
    let _ = writeln!(out, "  name: \"{}\"", d.name);
    if let Some(ns) = namespace {
        let _ = writeln!(out, "  namespace: \"{ns}\"");
    }
    out.push_str("spec:\n  hosts:\n");
    for h in &d.hosts {
        let _ = writeln!(out, "  - \"{h}\"");
    }
    if !d.addresses.is_empty() {
        out.push_str("  addresses:\n");
        for a in &d.addresses {
            let _ = writeln!(out, "  - \"{a}\"");
        }
    }
    out.push_str("  ports:\n");
    let guessed = d
        .ports
        .keys()
        .any(|(p, t)| !matches!(protocol(*p, *t, d.guess_protocols).0, "TCP" | "UDP"));
    for (port, t) in d.ports.keys() {
        let (proto, name) = protocol(*port, *t, d.guess_protocols);
        let _ = writeln!(
            out,
            "  - number: {port}\n    name: {name}\n    protocol: {proto}"
        );
    }
    if guessed {
        out.push_str("    # HTTP and TLS are guessed from the port numbers: check them before Istio uses this.\n");
    }
    out.push_str("  location: MESH_EXTERNAL\n");
    let res = match d.resolution {
        Resolution::Dns => "DNS",
        Resolution::None => "NONE",
    };
    let _ = writeln!(out, "  resolution: {res}");
    if namespace.is_some() {
        out.push_str("  exportTo: [\".\"]\n");
    }
    out
}

/// Every draft as one multi-document stream.
pub fn stream(drafts: &[Draft]) -> String {
    drafts.iter().map(render).collect::<Vec<_>>().join("---\n")
}
