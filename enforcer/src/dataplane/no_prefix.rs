//! `NO_PREFIX`, the address regions no prefix rule reaches (docs/architecture.md, "The
//! denied path"). A set bit lets the programs skip the trie walks; a clear one never harms. So while
//! an apply has old and new rules side by side, a bit is set only where both sets allow it.

use std::os::fd::AsFd as _;

use anyhow::Context as _;
use aya::maps::{Array, IterableMap as _, MapData};

use super::batch::{self, Batch};

pub struct NoPrefix {
    map: Array<MapData, u64>,
}

impl NoPrefix {
    pub fn new(map: Array<MapData, u64>) -> Self {
        Self { map }
    }

    fn read(&self) -> anyhow::Result<Vec<u64>> {
        batch::read_array(&self.map, "NO_PREFIX")
    }

    /// Writes the words of `want` that differ from `now`.
    fn write(&mut self, now: &[u64], want: &[u64]) -> anyhow::Result<()> {
        let changed: Vec<(u32, u64)> = (0u32..)
            .zip(now.iter().zip(want))
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (_, b))| (i, *b))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        match batch::update(self.map.map().fd().as_fd(), &changed).context("writing NO_PREFIX")? {
            Batch::Done(()) => Ok(()),
            Batch::Unsupported => changed
                .iter()
                .try_for_each(|(i, w)| Ok(self.map.set(*i, w, 0)?)),
        }
    }

    /// Before rules change: only the regions that neither the rules in force nor `want`'s
    /// reach stay skipped. Returns what the map now holds.
    pub fn narrow(&mut self, want: &[u64]) -> anyhow::Result<Vec<u64>> {
        let now = self.read()?;
        // Words left out of both would keep stale skips.
        anyhow::ensure!(
            now.len() == want.len(),
            "NO_PREFIX holds {} words, {} expected",
            now.len(),
            want.len()
        );
        let both: Vec<u64> = now.iter().zip(want).map(|(a, b)| a & b).collect();
        self.write(&now, &both)?;
        Ok(both)
    }

    /// Once only `want`'s rules are in force.
    pub fn widen(&mut self, now: &[u64], want: &[u64]) -> anyhow::Result<()> {
        self.write(now, want)
    }
}
