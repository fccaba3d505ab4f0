//! Tuning of mimalloc for binaries that make it their global allocator (the `mimalloc`
//! feature). A training step frees and reallocates the same few hundred megabytes every op;
//! mimalloc's default purges freed pages after 10 ms, so they would be page-faulted back in on
//! the next op, and training would run slower than with glibc's allocator. Kept, they are reused.

/// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h` (the sys crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages instead of purging them. Call it once at the start of `main`, before any
/// other thread exists; it has no effect unless mimalloc is the global allocator.
#[allow(unsafe_code)]
pub fn keep_freed_pages() {
    // SAFETY: `mi_option_set` writes one of mimalloc's global option slots; it takes no pointers.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}
