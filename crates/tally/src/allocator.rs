//! The global allocator, mimalloc, and the one setting Tally changes.
//!
//! The import pipeline allocates and frees large buffers from several
//! threads; glibc's allocator returns them to the kernel and pays a page
//! fault per page on reuse (a tenth of import time in profiles), so the
//! binary uses mimalloc.
//!
//! mimalloc v3 returns freed memory to the kernel after one second (its
//! `purge_delay`). The raw store's memtable is a few hundred megabytes of
//! small allocations freed at once after every flush, and under a steady
//! stream of notifications the next memtable fills within about two
//! seconds: memory handed back was faulted in again, and the kernel zeroed
//! every page anew. That zeroing was 13% of `tally serve`'s CPU while it
//! consumed notifications (docs/benchmarks.md). Ten seconds keeps freed
//! memory across a flush cycle and still returns it when the load stops.

use std::ffi::{c_int, c_long};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long freed memory is kept before it goes back to the kernel, in
/// milliseconds. `MIMALLOC_PURGE_DELAY` in the environment overrides it.
pub const PURGE_DELAY_MS: c_long = 10_000;

/// `mi_option_purge_delay`'s position in mimalloc v3's `mi_option_t` (the
/// bundled C sources, `include/mimalloc.h`); the Rust crate names no
/// constant for it. A test checks that the option there has v3's default.
const MI_OPTION_PURGE_DELAY: c_int = 15;

unsafe extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// Sets the purge delay, unless the operator set one in the environment
/// (which mimalloc has then already read). Call first thing in `main`.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
        || std::env::var_os("MIMALLOC_RESET_DELAY").is_some()
    {
        return;
    }
    // SAFETY: mimalloc's option setter takes any option index and value
    // and checks the index's range itself.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
}

/// The purge delay in force.
#[cfg(test)]
fn purge_delay_ms() -> c_long {
    // SAFETY: as above; reading an option has no preconditions.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_set_is_mimallocs_purge_delay() {
        // v3's default purge delay is 1000 ms; a mimalloc whose options
        // are numbered differently gives another value here, and then
        // `MI_OPTION_PURGE_DELAY` must be looked up again.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
        }
        keep_freed_memory();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
