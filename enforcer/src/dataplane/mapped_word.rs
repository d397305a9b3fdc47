//! The first `u32` of a `BPF_F_MMAPABLE` array, written with one atomic store through a shared
//! mapping. A value written with the `bpf(2)` update command is copied by the kernel's memcpy,
//! which may move it a byte at a time (`rep movsb`): a program reading it meanwhile could see
//! half of the old value and half of the new one. `ROOTS_GEN` must never be read that way
//! (docs/architecture.md, "Sockets from outside").

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

pub struct MappedWord {
    addr: NonNull<libc::c_void>,
    bytes: usize,
}

// SAFETY: the mapping is shared memory that belongs to no thread; it is only accessed through
// an `AtomicU32`.
unsafe impl Send for MappedWord {}

impl MappedWord {
    /// Maps the first page of the array behind `fd` (an mmapable array's values start at a
    /// page boundary).
    pub fn map(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let bytes = super::table_mmap::page_size();
        // SAFETY: a new shared mapping at an address the kernel picks; it aliases no Rust
        // object, and `Drop` unmaps exactly it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { addr, bytes })
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mapping is page-aligned, at least 4 bytes long and lives as long as
        // `self`; the kernel's programs access the word only with single aligned loads and
        // stores, which is what an atomic needs of the other side.
        unsafe { self.addr.cast::<AtomicU32>().as_ref() }
    }

    pub fn load(&self) -> u32 {
        self.word().load(Ordering::Acquire)
    }

    pub fn store(&self, value: u32) {
        self.word().store(value, Ordering::Release);
    }
}

impl Drop for MappedWord {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`, which nothing references any more.
        unsafe {
            libc::munmap(self.addr.as_ptr(), self.bytes);
        }
    }
}
