//! Allocation watch for the realtime threads. The receiver installs
//! `Counting` as its global allocator; a thread that must not allocate
//! after start-up (playout, net) marks itself with `watch_this_thread`, and
//! every allocation it makes from then on is counted. The count is on the
//! statistics line and in the stopping line, so a regression shows in the
//! field and in the end-to-end tests, not only in unit tests.
//!
//! Cost: one thread-local read per allocation of any thread (the
//! thread-local is a const-initialised `Cell`, with no destructor to
//! register), and an atomic add only on a watched thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The watched threads, each with its own count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    Playout = 1,
    Net = 2,
}

thread_local! {
    static WATCHED: Cell<u8> = const { Cell::new(0) };
}

static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// The system allocator, counting what watched threads allocate.
pub struct Counting;

fn note() {
    // `try_with`: allocations while the thread-local is being torn down
    // are simply not counted.
    if let Ok(w) = WATCHED.try_with(Cell::get) {
        if w != 0 {
            if let Some(c) = COUNTS.get(w as usize) {
                c.fetch_add(1, Relaxed);
            }
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counting
// touches only a thread-local `Cell` and an atomic, neither of which
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Makes every page of `buf` resident now, on the calling (start-up)
/// thread. A large zeroed allocation is fresh anonymous memory: each page
/// would otherwise be faulted in by the thread that first writes it, the
/// realtime thread, as a ring turns for the first time. Writes each
/// page's first element back unchanged (volatile: a write the compiler
/// cannot drop, though it knows the memory to be zero).
pub fn prefault<T: Copy>(buf: &mut [T]) {
    const PAGE_BYTES: usize = 4096;
    let step = (PAGE_BYTES / core::mem::size_of::<T>().max(1)).max(1);
    for v in buf.iter_mut().step_by(step) {
        let p: *mut T = v;
        // SAFETY: `p` comes from a live `&mut T`: aligned, initialised
        // and exclusively ours for the duration of the two accesses.
        unsafe { core::ptr::write_volatile(p, core::ptr::read_volatile(p)) };
    }
}

/// From now on, allocations of the calling thread count as `which`.
pub fn watch_this_thread(which: Watched) {
    let _ = WATCHED.try_with(|w| w.set(which as u8));
}

/// Allocations counted for `which` so far (0 unless the program installed
/// `Counting` as its global allocator).
pub fn allocations(which: Watched) -> u64 {
    COUNTS.get(which as usize).map_or(0, |c| c.load(Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwatched_threads_are_not_counted() {
        // The test binary's allocator is the system one: nothing counts,
        // and marking a thread is harmless.
        let before = allocations(Watched::Net);
        std::thread::spawn(|| {
            watch_this_thread(Watched::Net);
            let v: Vec<u8> = Vec::with_capacity(64);
            drop(v);
        })
        .join()
        .expect("thread");
        assert_eq!(allocations(Watched::Net), before);
    }
}
