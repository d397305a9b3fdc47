//! The learned addresses on disk, so that a restarted daemon knows which name each learned
//! rule belongs to and revokes nothing early (docs/architecture.md, "DNS-aware mode").
//!
//! An append-only file of JSON lines in /run/egress-enforcer, one line per name/address whose
//! expiry grew, written before the rule goes into the kernel: every rule in the kernel has its
//! line. It is compacted (rewritten with only the live entries, then renamed over) when it
//! holds far more lines than live entries. Expiries are wall-clock time: the monotonic clock of
//! the next process is the same, but the record may be read after a reboot (then the maps are
//! gone too, and everything in it has expired or is refused by the kernel anyway).

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::kernel::monotonic_ns;

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    /// Name.
    n: String,
    /// Address.
    a: IpAddr,
    /// Expiry, milliseconds since the Unix epoch.
    u: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Monotonic ns ↔ wall-clock ms, at one moment.
#[derive(Clone, Copy)]
struct Clocks {
    mono_ns: u64,
    wall_ms: u64,
}

impl Clocks {
    fn now() -> Self {
        Self {
            mono_ns: monotonic_ns(),
            wall_ms: unix_ms(),
        }
    }

    fn to_wall(self, mono: u64) -> u64 {
        if mono >= self.mono_ns {
            self.wall_ms
                .saturating_add((mono - self.mono_ns) / 1_000_000)
        } else {
            self.wall_ms
                .saturating_sub((self.mono_ns - mono).div_ceil(1_000_000))
        }
    }

    fn to_mono(self, wall: u64) -> Option<u64> {
        let ahead_ms = wall.checked_sub(self.wall_ms).filter(|a| *a > 0)?;
        Some(
            self.mono_ns
                .saturating_add(ahead_ms.saturating_mul(1_000_000)),
        )
    }
}

pub type Entries = HashMap<String, HashMap<IpAddr, u64>>;

/// The unexpired entries in the file (monotonic expiries), and how many lines were unreadable.
fn read_at(path: &Path, clocks: Clocks) -> (Entries, usize) {
    let mut entries: Entries = HashMap::new();
    let mut skipped = 0;
    let Ok(f) = File::open(path) else {
        return (entries, 0);
    };
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Line>(&line) {
            Ok(l) => {
                if let Some(exp) = clocks.to_mono(l.u) {
                    let e = entries.entry(l.n).or_default().entry(l.a).or_insert(0);
                    *e = (*e).max(exp);
                }
            }
            Err(_) => skipped += 1,
        }
    }
    (entries, skipped)
}

/// What the record says now, without touching it (for `inspect`).
pub fn read(path: &Path) -> Entries {
    read_at(path, Clocks::now()).0
}

impl Journal {
    /// Reads what a previous run recorded (unexpired entries, as monotonic expiries) and
    /// opens the file for appending. Unreadable lines (a write cut short) are skipped.
    pub fn open(path: &Path) -> anyhow::Result<(Self, Entries)> {
        let clocks = Clocks::now();
        let (entries, skipped) = read_at(path, clocks);
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "unreadable lines in the learned-address record");
        }
        let mut j = Self::create(path, &entries, clocks)?;
        j.lines = entries.values().map(HashMap::len).sum();
        Ok((j, entries))
    }

    /// Writes `entries` to a new file and renames it over `path`.
    fn create(path: &Path, entries: &Entries, clocks: Clocks) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        let mut out = Vec::new();
        for (name, addrs) in entries {
            for (a, exp) in addrs {
                let line = Line {
                    n: name.clone(),
                    a: *a,
                    u: clocks.to_wall(*exp),
                };
                serde_json::to_writer(&mut out, &line)?;
                out.push(b'\n');
            }
        }
        std::fs::write(&tmp, &out).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            lines: 0,
        })
    }

    /// Appends one answer's entries in a single write.
    pub fn append(&mut self, name: &str, addrs: &[(IpAddr, u64)]) -> anyhow::Result<()> {
        let clocks = Clocks::now();
        let mut out = Vec::with_capacity(64 * addrs.len());
        for (a, exp) in addrs {
            serde_json::to_writer(
                &mut out,
                &Line {
                    n: name.to_owned(),
                    a: *a,
                    u: clocks.to_wall(*exp),
                },
            )?;
            out.push(b'\n');
        }
        self.file
            .write_all(&out)
            .with_context(|| format!("appending to {}", self.path.display()))?;
        self.lines += addrs.len();
        Ok(())
    }

    /// Rewrites the file with only `live` when it has grown to several times its size.
    pub fn compact_if_large(&mut self, live: &Entries) -> anyhow::Result<()> {
        let n: usize = live.values().map(HashMap::len).sum();
        if self.lines <= 2 * n + 1024 {
            return Ok(());
        }
        *self = Self::create(&self.path, live, Clocks::now())?;
        self.lines = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_compaction_keeps_only_the_live() {
        let dir = std::env::temp_dir().join(format!("ee-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("x.learned");
        let now = monotonic_ns();
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        let (mut j, e) = Journal::open(&path).unwrap();
        assert!(e.is_empty());
        j.append("a.example.com", &[(ip, now + 60_000_000_000)])
            .unwrap();
        j.append(
            "old.example.com",
            &[(ip, now.saturating_sub(1_000_000_000))],
        )
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"n\":\"cut")
            .unwrap();
        drop(j);
        let (mut j, e) = Journal::open(&path).unwrap();
        assert_eq!(e.len(), 1, "expired and cut lines are dropped: {e:?}");
        let exp = e["a.example.com"][&ip];
        assert!(
            exp > now + 59_000_000_000 && exp < now + 61_000_000_000,
            "{exp} vs {now}"
        );
        for _ in 0..3000 {
            j.append("a.example.com", &[(ip, exp)]).unwrap();
        }
        j.compact_if_large(&e).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
