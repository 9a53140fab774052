//! [`LineAligned`]: mimalloc, with large blocks guaranteed to start on a cache line.
//!
//! Why aligned: AMX tiles store a 32 x 32 block of sums straight into a product's output only
//! where the output's rows start on 64-byte lines; elsewhere the sums go through a buffer and
//! are copied, and on a Sapphire Rapids core that copy into the cold output took 40% of the
//! tile loop's time (2 x 2 tile blocks over K = 576 and 1536 columns, one core: 0.84 TFLOP/s
//! with the copy, 1.25 with the stores straight into C and the column blocks in L2-sized
//! groups). Rust's `Vec<f32>` asks for 4-byte alignment only, and glibc hands large blocks out
//! 16 bytes past a page.
//!
//! Why mimalloc underneath: glibc maps every large aligned block anew and unmaps it when freed,
//! so the page faults of each product's output took 10% of an AMX bf16 run (SmolLM2, 500
//! texts) and peak memory grew by 130 MiB; mimalloc keeps freed pages for the next product
//! (bf16 3% faster than glibc even without the alignment, peak memory 30 MiB lower).
//!
//! A binary registers it (`#[global_allocator]`) to get the fast path; without it every
//! product still gives the same bits, through the copy.
//!
//! Why [`keep_freed_pages`]: by default mimalloc returns freed pages to the OS once they have
//! been free for a while (`purge_delay`, 1 s in mimalloc 3.3), and in an extraction the product
//! outputs and attention buffers were still faulted in anew, page by page, batch after batch: a
//! Gemma-3-270M int8 extraction of 3,000 texts took 174,703 page faults, with the pages kept
//! 8,013, nearly all in its first batches (docs/extraction-speed.md: 1-7% faster, peak memory
//! 1-6% higher). Kept pages serve later blocks, so resident memory stays near the peak of live
//! blocks; what was freed before the call (a model load's temporaries) is returned first, so
//! that it does not stay resident unused.
//!
//! Why the kept pages are scheduled for a purge that does not come ([`KEPT_MS`]) rather than
//! never scheduled (a delay of -1): mimalloc's forced collection purges only the free ranges
//! scheduled for a purge. With -1, a model's pages stayed resident after it was dropped, for as
//! long as the process ran: in one `run` of a pipeline, SmolLM2's int8 extraction after
//! Qwen2.5-Coder-0.5B's peaked at 1.01 GB, against about 300 MB on its own. Now
//! [`keep_freed_pages`], called when a model is dropped and before the next one loads, gives
//! them all back.
//!
//! Why [`return_freed_pages`] before a load: with the default delay, the pages a load freed
//! within its last second were not all returned by the collection at its end. Qwen2.5-Coder-1.5B
//! int8 kept 250 MiB of them resident after its load (1,875 MiB, against 1,623 with the pages
//! returned as they were freed), bf16 420 MiB, and the load's peak was higher by as much.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// Blocks of at least this many bytes start on a cache line: every product output (a batch's
/// rows times at least 256 columns of f32) is larger, and small blocks keep malloc's own
/// alignment and speed (mimalloc's own large blocks happen to start on lines; this makes it a
/// guarantee).
const LARGE: usize = 16 * 1024;
/// A cache line.
const LINE: usize = 64;

/// mimalloc with blocks of [`LARGE`] bytes or more on 64-byte lines.
pub struct LineAligned;

/// mimalloc 3's `mi_option_purge_delay` (`mimalloc.h`, `enum mi_option_e`), which
/// `libmimalloc-sys` does not name; `purge_delay_is_the_option_this_mimalloc_has` checks that
/// the enum is still the one this index was read from.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay of kept pages, in ms (about 11.6 days): scheduled, so that a forced
/// collection can purge them, but not due within any extraction's life.
const KEPT_MS: std::ffi::c_long = 1_000_000_000;

fn set_purge_delay(ms: std::ffi::c_long) {
    // SAFETY: options are thread-safe and take any value (0 purges at once).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
}

/// Collects every rayon thread's free pages into mimalloc's arenas, then the calling thread's,
/// which with `force` purges every range scheduled for a purge, due or not.
fn collect_all_threads() {
    // SAFETY: `mi_collect` may run at any time, on any thread.
    rayon::broadcast(|_| unsafe { libmimalloc_sys::mi_collect(true) });
    // SAFETY: as above.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Returns what is free now to the OS, then sends every page freed from now on back at once:
/// for a model's load, whose temporary matrices are freed as it goes and are not needed again
/// (see the module docs).
pub fn return_freed_pages() {
    keep_freed_pages();
    set_purge_delay(0);
}

/// Returns the pages free now to the OS, on every thread, then keeps every page freed from now
/// on for later blocks (see the module docs). For a process about to run the same work over and
/// over (the batches of an extraction), and for when a model is dropped, whose weights and kept
/// batch buffers nothing in the process needs again; without [`LineAligned`] registered it
/// changes nothing.
pub fn keep_freed_pages() {
    // A forced collection purges the ranges scheduled for a purge, due or not, and a freed
    // range is scheduled only while the delay is positive.
    set_purge_delay(KEPT_MS);
    collect_all_threads();
}

/// The layout a block of `layout` is given: the same, or the same size on a line.
fn placed(layout: Layout) -> Layout {
    if layout.size() >= LARGE && layout.align() < LINE {
        // A power of two no larger than the size (LINE < LARGE <= size): always valid.
        Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every block is allocated and freed by mimalloc with the layout `placed` gives for
// the caller's layout, which is a pure function of it, so each `dealloc`/`realloc` passes
// mimalloc the layout the block was allocated with; alignments only grow, so the caller's
// own alignment holds.
unsafe impl GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract (non-zero size), unchanged by `placed`.
        unsafe { MiMalloc.alloc(placed(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { MiMalloc.alloc_zeroed(placed(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout, so from mimalloc with `placed`'s.
        unsafe { MiMalloc.dealloc(ptr, placed(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract: `new_size`, rounded up to the alignment, fits isize.
        let asked = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let (old, new) = (placed(layout), placed(asked));
        if old.align() == new.align() {
            // SAFETY: the block was allocated with `old`; mimalloc keeps its alignment.
            return unsafe { MiMalloc.realloc(ptr, old, new_size) };
        }
        // Crossing LARGE changes the alignment, which realloc cannot: move the block.
        // SAFETY: `new` has a non-zero size (the caller's contract); both blocks hold at least
        // the copied bytes, and the old one was allocated with `old`.
        unsafe {
            let moved = MiMalloc.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                MiMalloc.dealloc(ptr, old);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_delay_is_the_option_this_mimalloc_has() {
        // The index was read from mimalloc 3's enum of 47 options; a mimalloc whose enum has
        // another length has moved or added options, and the index must be read again.
        assert_eq!(libmimalloc_sys::_mi_option_last, 47);
        // SAFETY: reading an option is thread-safe.
        let delay = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        // mimalloc 3.3's default purge delay is 1,000 ms (no neighbouring option's default is),
        // unless the environment sets it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(delay(), 1000);
        }
        return_freed_pages();
        assert_eq!(delay(), 0);
        keep_freed_pages();
        assert_eq!(delay(), KEPT_MS);
        // Again, as when the model is dropped.
        keep_freed_pages();
        assert_eq!(delay(), KEPT_MS);
    }

    #[test]
    fn large_blocks_start_on_lines_and_keep_their_bytes_when_they_move() {
        let alloc = LineAligned;
        let small = Layout::from_size_align(LARGE - 4, 4).unwrap();
        // SAFETY: non-zero sizes; each block is freed once with the layout it has then.
        unsafe {
            let p = alloc.alloc(small);
            assert!(!p.is_null());
            for i in 0..small.size() {
                *p.add(i) = (i % 251) as u8;
            }
            // Growing past LARGE moves the block onto a line, with its bytes.
            let q = alloc.realloc(p, small, 3 * LARGE);
            assert_eq!(q as usize % LINE, 0, "a large block off its line");
            assert!((0..small.size()).all(|i| *q.add(i) == (i % 251) as u8));
            let large = Layout::from_size_align(3 * LARGE, 4).unwrap();
            // Shrinking below it moves it back, with the bytes that remain.
            let r = alloc.realloc(q, large, 100);
            assert!((0..100).all(|i| *r.add(i) == (i % 251) as u8));
            alloc.dealloc(r, Layout::from_size_align(100, 4).unwrap());
            for size in [LARGE, LARGE + 4, 1 << 20, (1 << 22) + 12] {
                let layout = Layout::from_size_align(size, 4).unwrap();
                let z = alloc.alloc_zeroed(layout);
                assert_eq!(z as usize % LINE, 0, "{size} bytes off a line");
                assert!((0..size).step_by(997).all(|i| *z.add(i) == 0));
                alloc.dealloc(z, layout);
            }
        }
    }
}
