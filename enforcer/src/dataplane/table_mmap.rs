//! Slot writes straight into `RULES_TABLE`'s memory through a shared mapping (the map is made
//! with `BPF_F_MMAPABLE`): a million slots in tens of milliseconds, where the batch syscall
//! takes half a second. Only for a table no attached program reads yet (docs/architecture.md,
//! "Rule maps"): plain stores give a concurrent reader none of the order that the taken →
//! live steps rely on.
//!
//! The table is mapped one window at a time: the kernel maps all of a window's pages at once
//! and counts them as the daemon's resident memory, so mapping a 100 MB table whole would
//! raise the daemon's peak by as much.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
};

use enforcer_common::TableSlot;

use super::batch::Batch;

/// Bytes of one slot in the kernel's array (values are laid out 8-byte aligned).
const SLOT_BYTES: usize = size_of::<TableSlot>();
const _: () = assert!(SLOT_BYTES.is_multiple_of(8));

/// About how much of the table is mapped at once.
const WINDOW_BYTES: usize = 4 << 20;

/// Slots per window: a whole number of pages and of slots.
fn window_slots(page: usize) -> u32 {
    let unit = lcm(page, SLOT_BYTES);
    ((WINDOW_BYTES / unit).max(1) * unit / SLOT_BYTES) as u32
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// `bytes` of the map behind `fd` from `offset`, mapped shared and writable; unmapped on drop.
pub(super) struct Mapping {
    addr: NonNull<libc::c_void>,
    bytes: usize,
}

// SAFETY: shared memory of a kernel map, owned by no thread; the users decide how it is
// accessed (plain stores to a table no program reads yet, or atomics).
unsafe impl Send for Mapping {}

impl Mapping {
    pub(super) fn new(fd: BorrowedFd<'_>, bytes: usize, offset: libc::off_t) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the map's memory at an address the kernel picks; it
        // aliases no Rust object, and `Drop` unmaps exactly it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr = NonNull::new(addr).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { addr, bytes })
    }

    /// The start of the mapping (page-aligned).
    pub(super) fn start<T>(&self) -> NonNull<T> {
        self.addr.cast()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which nothing references any more.
        unsafe {
            libc::munmap(self.addr.as_ptr(), self.bytes);
        }
    }
}

/// Slots `first..first + len` of the table, mapped writable.
struct Window {
    first: u32,
    len: u32,
    mapping: Mapping,
}

impl Window {
    fn map(fd: BorrowedFd<'_>, first: u32, len: u32, page: usize) -> io::Result<Self> {
        let bytes = (len as usize * SLOT_BYTES).div_ceil(page) * page;
        let offset = libc::off_t::try_from(first as usize * SLOT_BYTES)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(Self {
            first,
            len,
            mapping: Mapping::new(fd, bytes, offset)?,
        })
    }

    fn holds(&self, i: u32) -> bool {
        i >= self.first && i - self.first < self.len
    }

    fn write(&mut self, i: u32, slot: &TableSlot) {
        debug_assert!(self.holds(i));
        // SAFETY: `i` is within the window (checked by the caller through `holds`), so the
        // slot lies inside the mapping, which is page-aligned (slots are 8-byte aligned in it).
        unsafe {
            self.mapping
                .start::<TableSlot>()
                .add((i - self.first) as usize)
                .write(*slot);
        }
    }
}

/// Writes `writes` (slot index, slot) into a table of `table_slots` slots, best in ascending
/// order: an index outside the window mapped last maps its window again.
/// [`Batch::Unsupported`] when the table cannot be mapped (say the kernel refuses the mapping):
/// nothing was written, and the caller falls back to syscalls.
pub fn write_sorted(
    fd: BorrowedFd<'_>,
    table_slots: u32,
    writes: impl IntoIterator<Item = (u32, TableSlot)>,
) -> io::Result<Batch<()>> {
    let page = page_size();
    let per_window = window_slots(page);
    let mut window: Option<Window> = None;
    for (i, slot) in writes {
        if i >= table_slots {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slot {i} beyond a table of {table_slots}"),
            ));
        }
        let w = match &mut window {
            Some(w) if w.holds(i) => w,
            _ => {
                let first_window = window.is_none();
                // The old window is unmapped before the next one is mapped.
                window = None;
                let first = i / per_window * per_window;
                let len = per_window.min(table_slots - first);
                match Window::map(fd, first, len, page) {
                    Ok(w) => window.insert(w),
                    Err(e) if first_window => {
                        tracing::debug!("RULES_TABLE cannot be mapped ({e}): written by syscalls");
                        return Ok(Batch::Unsupported);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        w.write(i, &slot);
    }
    Ok(Batch::Done(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_whole_pages_and_whole_slots() {
        for page in [4096, 16384, 65536] {
            let w = window_slots(page) as usize;
            assert!((w * SLOT_BYTES).is_multiple_of(page), "page {page}");
            assert!(w * SLOT_BYTES <= WINDOW_BYTES.max(lcm(page, SLOT_BYTES)));
            assert!(w * SLOT_BYTES > WINDOW_BYTES / 2, "page {page}");
        }
        assert_eq!(lcm(4096, 48), 12288);
    }
}
