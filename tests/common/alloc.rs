//! A counting global allocator for the zero-allocation proofs. A test
//! binary installs it with
//!
//!     #[global_allocator]
//!     static GLOBAL: common::alloc::Counting = common::alloc::Counting;
//!
//! and counts the allocations made by threads that opted in with
//! [`count_this_thread`]; every other allocation goes straight to System.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

/// Starts (true) or stops (false) counting the calling thread's
/// allocations.
pub fn count_this_thread(on: bool) {
    COUNTING.with(|c| c.set(on));
}

/// Allocations counted so far, by every opted-in thread.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

pub fn reset() {
    ALLOCATIONS.store(0, Ordering::Relaxed);
}

/// Allocations counted so far; the count starts again from zero.
pub fn take() -> u64 {
    ALLOCATIONS.swap(0, Ordering::Relaxed)
}

fn counted() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}
