//! Batched map operations (`BPF_MAP_{LOOKUP,UPDATE,DELETE}_BATCH`, Linux 5.6+), which aya 0.14
//! does not wrap. One syscall moves thousands of rules instead of one, which is what lets a
//! million-rule policy load (and be read back for diffing) in well under a second.
//!
//! Hash maps support them; LPM tries do not. Each function returns [`Batch::Unsupported`] when
//! the kernel refuses the command for this map before touching anything, so that the caller can
//! fall back to per-element operations.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal ENOTSUPP, which batch commands leak to userspace.
const ENOTSUPP: i32 = 524;
/// Elements per syscall: large enough to amortise the syscall, small enough that the kernel's
/// temporary copy stays small.
pub const CHUNK: usize = 8192;

/// The `batch` member of `union bpf_attr` (stable kernel ABI).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Outcome of a batch operation that may not be available.
#[derive(Debug)]
pub enum Batch<T> {
    Done(T),
    /// The kernel or the map type has no batch support; nothing was changed.
    Unsupported,
}

fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size passed; the pointers it
    // holds are set by the callers to buffers that outlive the call and hold `count` elements of
    // the map's key and value sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Runs a batch command over `len` elements, `CHUNK` at a time; `attr_for(start, count)`
/// describes elements `start..start + count`. A call interrupted by a signal resumes after the
/// elements the kernel reports as done.
fn in_chunks(
    cmd: libc::c_long,
    len: usize,
    mut attr_for: impl FnMut(usize, usize) -> BatchAttr,
) -> io::Result<Batch<()>> {
    let mut done = 0;
    while done < len {
        let count = (len - done).min(CHUNK);
        let mut attr = attr_for(done, count);
        match sys_bpf(cmd, &mut attr) {
            Ok(()) => done += count,
            Err(e) if done == 0 && attr.count == 0 && unsupported(&e) => {
                return Ok(Batch::Unsupported);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => done += attr.count as usize,
            Err(e) => return Err(e),
        }
    }
    Ok(Batch::Done(()))
}

/// Inserts or replaces every `(key, value)`.
pub fn update<K: Pod, V: Pod>(fd: BorrowedFd<'_>, entries: &[(K, V)]) -> io::Result<Batch<()>> {
    // The kernel wants keys and values in two arrays.
    let keys: Vec<K> = entries.iter().map(|(k, _)| *k).collect();
    let values: Vec<V> = entries.iter().map(|(_, v)| *v).collect();
    in_chunks(BPF_MAP_UPDATE_BATCH, entries.len(), |start, count| {
        BatchAttr {
            keys: keys[start..].as_ptr() as u64,
            values: values[start..].as_ptr() as u64,
            count: count as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        }
    })
}

/// Deletes every key. A key that is already gone is an error (ENOENT), as with single deletes.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<Batch<()>> {
    in_chunks(BPF_MAP_DELETE_BATCH, keys.len(), |start, count| BatchAttr {
        keys: keys[start..].as_ptr() as u64,
        count: count as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    })
}

/// Reads every entry of a hash map.
pub fn dump<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Batch<Vec<(K, V)>>> {
    let mut out = Vec::new();
    Ok(
        match for_each_chunk(fd, |k: &[K], v: &[V]| {
            out.extend(k.iter().copied().zip(v.iter().copied()));
        })? {
            Batch::Done(()) => Batch::Done(out),
            Batch::Unsupported => Batch::Unsupported,
        },
    )
}

/// Reads every entry of a map (an array's in index order), [`CHUNK`] at a time: a large map
/// is never copied whole.
pub fn for_each_chunk<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(&[K], &[V]),
) -> io::Result<Batch<()>> {
    // SAFETY: `Pod` types are valid for every bit pattern, including all zeroes.
    let (zk, zv): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut keys = vec![zk; CHUNK];
    let mut values = vec![zv; CHUNK];
    // The position token is opaque; hash maps use a u32, a key-sized buffer is always enough.
    let token_len = size_of::<K>().max(8);
    let mut token_in = vec![0u8; token_len];
    let mut token_out = vec![0u8; token_len];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(CHUNK);
        match result {
            Ok(()) => {}
            // ENOENT: the walk reached the end; `count` holds the last entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                f(&keys[..got], &values[..got]);
                return Ok(Batch::Done(()));
            }
            Err(e) if first && unsupported(&e) => return Ok(Batch::Unsupported),
            Err(e) => return Err(e),
        }
        f(&keys[..got], &values[..got]);
        token_in.copy_from_slice(&token_out);
        first = false;
    }
}

/// Every value of an array map, in index order: a batch per chunk, or a lookup per element
/// where the kernel has no batch lookup for arrays. `what` names the map in errors.
pub fn read_array<V: Pod>(
    map: &aya::maps::Array<aya::maps::MapData, V>,
    what: &str,
) -> anyhow::Result<Vec<V>> {
    use std::os::fd::AsFd as _;

    use anyhow::Context as _;
    use aya::maps::IterableMap as _;

    let mut values = Vec::with_capacity(map.len() as usize);
    let fd = map.map().fd().as_fd();
    match for_each_chunk(fd, |_: &[u32], v: &[V]| values.extend_from_slice(v))
        .with_context(|| format!("reading {what}"))?
    {
        Batch::Done(()) => {}
        Batch::Unsupported => {
            for v in map.iter() {
                values.push(v.with_context(|| format!("reading {what}"))?);
            }
        }
    }
    Ok(values)
}
