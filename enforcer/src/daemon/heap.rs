//! Giving freed memory back. A large load (every ServiceEntry parsed, the policy compiled,
//! the rules written) frees most of what it allocated, but glibc keeps freed heap for reuse
//! and the daemon's resident memory would stay at its peak; after each load it is returned.

/// Returns the heap's free pages to the kernel.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
