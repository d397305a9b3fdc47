//! The first `u32` of a `BPF_F_MMAPABLE` array, written with one atomic store through a shared
//! mapping. A value written with the `bpf(2)` update command is copied by the kernel's memcpy,
//! which may move it a byte at a time (`rep movsb`): a program reading it meanwhile could see
//! half of the old value and half of the new one. `ROOTS_GEN` must never be read that way
//! (docs/architecture.md, "Sockets from outside").

use std::{
    io,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicU32, Ordering},
};

use super::table_mmap::{Mapping, page_size};

pub struct MappedWord(Mapping);

impl MappedWord {
    /// Maps the first page of the array behind `fd` (an mmapable array's values start at a
    /// page boundary).
    pub fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Self(Mapping::new(fd, page_size(), 0)?))
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mapping is page-aligned, at least 4 bytes long and lives as long as
        // `self`; the kernel's programs access the word only with single aligned loads and
        // stores, which is what an atomic needs of the other side.
        unsafe { self.0.start::<AtomicU32>().as_ref() }
    }

    pub fn load(&self) -> u32 {
        self.word().load(Ordering::Acquire)
    }

    pub fn store(&self, value: u32) {
        self.word().store(value, Ordering::Release);
    }
}
