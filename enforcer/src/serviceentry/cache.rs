//! ServiceEntry files as last read (docs/architecture.md, "Reloads"): a reload parses only the
//! files whose identity or timestamps changed, and the files that must be read are read on
//! every core at once.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime},
};

use super::source::{LoadReport, collect_files, load_file};

/// What identifies a file's content without reading it. A file changed within
/// [`RACY`] of being read may change again within the timestamps' granularity without
/// changing them: it is read again next time (as git does with racily clean entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    max_bytes: u64,
}

const RACY: Duration = Duration::from_secs(2);

fn stamp(path: &Path, max_bytes: u64) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
        max_bytes,
    })
}

/// Whether the file's last change is far enough in the past for its stamp to be trusted.
fn settled(s: &Stamp, now: SystemTime) -> bool {
    let newest = s.mtime.max(s.ctime);
    let Ok(secs) = u64::try_from(newest.0) else {
        return false;
    };
    let changed =
        SystemTime::UNIX_EPOCH + Duration::new(secs, newest.1.clamp(0, 999_999_999) as u32);
    now.duration_since(changed).is_ok_and(|age| age >= RACY)
}

#[derive(Default)]
pub struct FileCache {
    files: HashMap<PathBuf, (Stamp, LoadReport)>,
}

/// How a load went: files parsed, and files whose last reading was reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reads {
    pub parsed: usize,
    pub reused: usize,
}

impl FileCache {
    /// Every ServiceEntry under `paths`, like [`super::load_paths`], reading only what changed
    /// since the last call.
    pub fn load(&mut self, paths: &[PathBuf], max_bytes: u64) -> (LoadReport, Reads) {
        let (files, problems) = collect_files(paths);
        let now = SystemTime::now();
        let stamps: Vec<Option<Stamp>> = files.iter().map(|f| stamp(f, max_bytes)).collect();
        let stale: Vec<usize> = (0..files.len())
            .filter(|&i| {
                let cached = self.files.get(&files[i]).map(|(s, _)| Some(*s));
                stamps[i].is_none() || cached != Some(stamps[i])
            })
            .collect();
        let fresh = read_all(
            &stale
                .iter()
                .map(|&i| files[i].as_path())
                .collect::<Vec<_>>(),
            max_bytes,
        );
        let mut fresh: HashMap<usize, LoadReport> = stale.iter().copied().zip(fresh).collect();
        let mut out = LoadReport {
            problems,
            ..LoadReport::default()
        };
        let mut kept = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let report = match fresh.remove(&i) {
                Some(r) => r,
                None => match self.files.remove(f) {
                    Some((_, r)) => r,
                    None => continue,
                },
            };
            match stamps[i].filter(|s| settled(s, now)) {
                Some(s) => {
                    out.entries.extend(report.entries.iter().cloned());
                    out.problems.extend(report.problems.iter().cloned());
                    kept.insert(f.clone(), (s, report));
                }
                None => {
                    out.entries.extend(report.entries);
                    out.problems.extend(report.problems);
                }
            }
        }
        // Files no longer there, or read while still changing, are forgotten.
        self.files = kept;
        out.files = files;
        let reads = Reads {
            parsed: stale.len(),
            reused: out.files.len() - stale.len(),
        };
        (out, reads)
    }
}

/// Reads and validates every ServiceEntry under `paths`, with no cache.
pub fn load_paths(paths: &[PathBuf], max_bytes: u64) -> LoadReport {
    let (files, problems) = collect_files(paths);
    let mut out = LoadReport {
        problems,
        ..LoadReport::default()
    };
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    for r in read_all(&refs, max_bytes) {
        out.entries.extend(r.entries);
        out.problems.extend(r.problems);
    }
    out.files = files;
    out
}

/// Reads `files`, each into its own report, in order, on as many threads as there are cores
/// (at most 4: parsing is what takes the time, and the daemon has other work).
pub fn read_all(files: &[&Path], max_bytes: u64) -> Vec<LoadReport> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, 4)
        .min(files.len());
    if threads <= 1 {
        return files.iter().map(|f| read_one(f, max_bytes)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, LoadReport)> = std::thread::scope(|s| {
        // A thread that cannot be made (a tasks limit) is no error: the files no worker
        // read are read below.
        let workers: Vec<_> = (0..threads)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .spawn_scoped(s, || {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(f) = files.get(i) else { break };
                            mine.push((i, read_one(f, max_bytes)));
                        }
                        mine
                    })
                    .ok()
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    // A worker that panicked (or never started) left its files out: read them here (and
    // panic here, where the caller sees it, if it happens again).
    let mut out = Vec::with_capacity(files.len());
    let mut done = done.into_iter().peekable();
    for (i, f) in files.iter().enumerate() {
        match done.next_if(|(j, _)| *j == i) {
            Some((_, r)) => out.push(r),
            None => out.push(read_one(f, max_bytes)),
        }
    }
    out
}

fn read_one(file: &Path, max_bytes: u64) -> LoadReport {
    let mut r = LoadReport::default();
    load_file(file, max_bytes, &mut r);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const SE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: NAME}\nspec: {hosts: [a.example.com], addresses: [10.0.0.1], ports: [{number: 443, name: https, protocol: TLS}]}\n";

    fn names(r: &LoadReport) -> Vec<String> {
        r.entries
            .iter()
            .map(|e| e.entry.metadata.name.clone())
            .collect()
    }

    #[test]
    fn only_changed_files_are_parsed_and_the_order_is_kept() {
        let dir = tempfile_dir("cache-order");
        for n in ["a", "b", "c"] {
            std::fs::write(dir.join(format!("{n}.yaml")), SE.replace("NAME", n)).unwrap();
        }
        let mut cache = FileCache::default();
        let (r, reads) = cache.load(std::slice::from_ref(&dir), 1 << 20);
        assert_eq!(names(&r), ["a", "b", "c"]);
        assert_eq!(reads.parsed, 3);
        // Just written: a change within the timestamps' granularity could go unseen, so they
        // are read again until they have been left alone for a while.
        let (_, reads) = cache.load(std::slice::from_ref(&dir), 1 << 20);
        assert_eq!(reads.parsed, 3);
        std::thread::sleep(RACY);
        cache.load(std::slice::from_ref(&dir), 1 << 20);
        let (r, reads) = cache.load(std::slice::from_ref(&dir), 1 << 20);
        assert_eq!(names(&r), ["a", "b", "c"]);
        assert_eq!(
            reads,
            Reads {
                parsed: 0,
                reused: 3
            }
        );
        // A changed file (same size: the inode's times tell), a removed one, a new one.
        std::fs::write(dir.join("b.yaml"), SE.replace("NAME", "x")).unwrap();
        std::fs::remove_file(dir.join("c.yaml")).unwrap();
        std::fs::write(dir.join("0.yaml"), SE.replace("NAME", "z")).unwrap();
        let (r, reads) = cache.load(std::slice::from_ref(&dir), 1 << 20);
        assert_eq!(names(&r), ["z", "a", "x"]);
        assert_eq!(
            reads,
            Reads {
                parsed: 2,
                reused: 1
            }
        );
        // A changed size limit reads everything again.
        let (_, reads) = cache.load(std::slice::from_ref(&dir), 1 << 19);
        assert_eq!(reads.parsed, 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reading_on_several_threads_gives_what_one_gives() {
        let dir = tempfile_dir("cache-threads");
        let mut files = Vec::new();
        for i in 0..40 {
            let p = dir.join(format!("{i:02}.yaml"));
            let text = if i == 7 {
                "kind: [unclosed".to_owned()
            } else {
                SE.replace("NAME", &format!("e{i}"))
            };
            std::fs::write(&p, text).unwrap();
            files.push(p);
        }
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let many = read_all(&refs, 1 << 20);
        let one: Vec<LoadReport> = refs.iter().map(|f| read_one(f, 1 << 20)).collect();
        assert_eq!(many.len(), 40);
        for (a, b) in many.iter().zip(&one) {
            assert_eq!(names(a), names(b));
            assert_eq!(a.problems, b.problems);
        }
        assert_eq!(many[7].problems.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ee-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
