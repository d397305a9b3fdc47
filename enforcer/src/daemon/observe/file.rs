//! The observation store on disk: read once at start (a file that cannot be read as a store
//! is kept aside and replaced, never trusted in part), written whole to a temporary file
//! and renamed over the old one, so a crash leaves the previous copy or the new one.

use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::learn::store::{Limits, Skipped, Store, StoreError};

/// What reading the store found.
#[derive(Debug)]
pub enum Loaded {
    /// With the observations left out for not being in normal form.
    Store(Store, Skipped),
    /// No file yet.
    Missing,
    /// The file could not be read as a store; it was moved to `kept` (if it could be).
    Replaced {
        error: StoreError,
        kept: Option<PathBuf>,
    },
    /// The file exists but could not be read at all (permissions, I/O).
    Unreadable(std::io::Error),
}

pub fn corrupt_copy(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".corrupt");
    PathBuf::from(p)
}

pub fn load(path: &Path, limits: Limits) -> Loaded {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return Loaded::Unreadable(e),
    };
    // One byte past the limit is enough to know it is too large: a hostile file costs no
    // more than that to refuse.
    let limit = Store::max_file_bytes(limits);
    let mut bytes = Vec::new();
    if let Err(e) = file.take(limit + 1).read_to_end(&mut bytes) {
        return Loaded::Unreadable(e);
    }
    match Store::decode(&bytes, limits) {
        Ok((s, skipped)) => Loaded::Store(s, skipped),
        Err(error) => {
            let aside = corrupt_copy(path);
            let kept = fs::rename(path, &aside).ok().map(|()| aside);
            Loaded::Replaced { error, kept }
        }
    }
}

/// Reads the store without changing anything (for `suggest`): a missing file is an empty
/// store, anything else wrong is the error, with the file named.
pub fn read(path: &Path, limits: Limits) -> anyhow::Result<(Store, Skipped)> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Store::new(limits), Skipped::default()));
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut bytes = Vec::new();
    file.take(Store::max_file_bytes(limits) + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    Store::decode(&bytes, limits).with_context(|| format!("{}", path.display()))
}

/// Writes `bytes` as the store at `path`, atomically.
pub fn save(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::store::{Key, Sighting, Transport};

    const LIMITS: Limits = Limits {
        max_observations: 10,
        max_bytes: 1 << 16,
        max_per_workload: 10,
    };

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ee-observe-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn saved_then_loaded_and_a_corrupt_file_is_kept_aside() {
        let d = dir();
        let path = d.join("sub/observations.json");
        assert!(matches!(load(&path, LIMITS), Loaded::Missing));
        let mut s = Store::new(LIMITS);
        s.record(&Sighting {
            key: Key {
                cgroup: "/app".into(),
                addr: "198.18.0.1".parse().unwrap(),
                port: 443,
                proto: Transport::Tcp,
            },
            pod: None,
            hosts: &[],
            now: 1,
            count: 1,
            denied: false,
        });
        save(&path, &s.encode().unwrap()).unwrap();
        let Loaded::Store(back, _) = load(&path, LIMITS) else {
            panic!("not loaded")
        };
        assert_eq!(back.observations(), s.observations());
        // Cut in half, as a crash mid-write on a filesystem without rename would.
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        match load(&path, LIMITS) {
            Loaded::Replaced {
                error: StoreError::Truncated(_),
                kept: Some(k),
            } => assert_eq!(fs::read(k).unwrap(), &bytes[..bytes.len() / 2]),
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(load(&path, LIMITS), Loaded::Missing),
            "moved aside"
        );
        fs::remove_dir_all(&d).unwrap();
    }
}
