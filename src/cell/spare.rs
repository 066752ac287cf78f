//! One freed block per thread, kept for the thread's next allocation of the same
//! layout.
//!
//! An operation that completes inside Begin frees its allocation (the cell, or
//! `from_apm`'s signal) on the thread that makes the next one, and a loop of them
//! allocates the same layout each time. Reusing the last freed block skips the
//! allocator's `malloc` and `free`: with glibc's, a fifth of such an operation's
//! instructions (`BENCHMARKS.md`). One block per thread, of at most `MAX_KEPT` bytes, is
//! all it keeps; a block of another layout replaces it, and it is freed with the
//! thread. Not under loom, which models the memory itself.

// Allocation by hand: each block says why it holds.
#![allow(unsafe_code)]

use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

/// Memory for a `T`, uninitialised: this thread's spare block if it has `T`'s layout,
/// else a new allocation (as `Box<MaybeUninit<T>>` makes one).
#[inline]
pub(crate) fn alloc<T>() -> NonNull<T> {
    // A zero-sized `T` has no block to keep (and `dealloc` must not see one).
    const { assert!(size_of::<T>() != 0, "spare blocks are for sized values") };
    match imp::take(Layout::new::<T>()) {
        Some(block) => block.cast(),
        None => NonNull::from(Box::leak(Box::new(MaybeUninit::<T>::uninit()))).cast(),
    }
}

/// The largest block kept: a thread holds at most this much memory for its next
/// operation (a cell holding a large result, or a large future's task, is freed).
const MAX_KEPT: usize = 512;

/// Gives back the memory of a `T` whose value was dropped or moved out: kept as this
/// thread's spare block if it is small, or freed.
///
/// # Safety
///
/// `ptr` came from [`alloc::<T>`](alloc), is not used after this, and holds no value
/// that still needs dropping.
#[inline]
pub(crate) unsafe fn free<T>(ptr: NonNull<T>) {
    let block = Block {
        ptr: ptr.cast(),
        layout: Layout::new::<T>(),
    };
    if block.layout.size() <= MAX_KEPT {
        imp::put(block);
    }
}

/// A block of memory with the layout it was allocated with, owned: freed on drop.
/// Made only by `free`, whose contract makes the ownership true.
struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated by the global allocator with `layout` (`alloc`'s `Box` of a
        // `MaybeUninit<T>` has `Layout::new::<T>()`), and owned by this block alone.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(not(apm_tap_loom))]
mod imp {
    use std::alloc::Layout;
    use std::cell::Cell;
    use std::mem::ManuallyDrop;
    use std::ptr::NonNull;

    use super::Block;

    std::thread_local! {
        static SPARE: Cell<Option<Block>> = const { Cell::new(None) };
        /// Whether this thread has made an operation. Only such a thread keeps a spare
        /// block: a thread that only completes operations (a C library's callback
        /// thread) gets no thread-local destructor from this crate, and holds no memory.
        static MAKES: Cell<bool> = const { Cell::new(false) };
    }

    /// This thread's spare block, if it has `layout` (and the thread-locals are not
    /// gone); another block stays.
    #[inline]
    pub(super) fn take(layout: Layout) -> Option<NonNull<u8>> {
        // `MAKES` has no destructor, so it is never gone.
        MAKES.with(|makes| makes.set(true));
        SPARE
            .try_with(|spare| match spare.take() {
                Some(block) if block.layout == layout => Some(ManuallyDrop::new(block).ptr),
                other => {
                    spare.set(other);
                    None
                }
            })
            .ok()
            .flatten()
    }

    /// Keeps the block as this thread's spare, freeing the one it replaces; frees this
    /// one instead on a thread that makes no operations, or whose thread-locals are gone.
    #[inline]
    pub(super) fn put(block: Block) {
        if MAKES.with(Cell::get) {
            let _ = SPARE.try_with(move |spare| drop(spare.replace(Some(block))));
        }
    }
}

#[cfg(apm_tap_loom)]
mod imp {
    use std::alloc::Layout;
    use std::ptr::NonNull;

    use super::Block;

    pub(super) fn take(_layout: Layout) -> Option<NonNull<u8>> {
        None
    }

    pub(super) fn put(block: Block) {
        drop(block);
    }
}

#[cfg(all(test, not(apm_tap_loom)))]
mod tests {
    use std::alloc::Layout;

    use super::{alloc, free, imp, MAX_KEPT};

    #[test]
    fn a_thread_that_makes_no_operation_keeps_no_block() {
        struct Sent(std::ptr::NonNull<u64>);
        // SAFETY: the block is handed over whole; the spawning thread forgets it.
        unsafe impl Send for Sent {}
        let block = Sent(alloc::<u64>());
        // Freed by a thread that never allocated through `alloc`: not kept there.
        std::thread::spawn(move || {
            let block = block;
            // SAFETY: from `alloc` on the spawning thread, holding nothing, used
            // nowhere else.
            unsafe { free(block.0) };
            assert_eq!(imp::take(Layout::new::<u64>()), None);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn only_a_small_block_is_kept() {
        type Large = [u8; MAX_KEPT + 1];
        type Largest = [u8; MAX_KEPT];
        // SAFETY: from `alloc`, holding nothing.
        unsafe { free(alloc::<Large>()) };
        assert_eq!(imp::take(Layout::new::<Large>()), None);
        let largest = alloc::<Largest>();
        // SAFETY: from `alloc`, holding nothing.
        unsafe { free(largest) };
        assert_eq!(alloc::<Largest>(), largest);
        // SAFETY: from `alloc`, holding nothing.
        unsafe { free(largest) };
    }

    #[test]
    fn a_freed_block_is_reused_for_the_same_layout_only() {
        let first = alloc::<[u64; 5]>();
        // SAFETY: from `alloc`, holds nothing.
        unsafe { free(first) };
        let other = alloc::<[u8; 3]>();
        assert_ne!(other.cast::<u8>(), first.cast::<u8>());
        let again = alloc::<[u64; 5]>();
        assert_eq!(again, first, "the spare block was not reused");
        // SAFETY: from `alloc`, hold nothing.
        unsafe {
            free(other);
            free(again);
        }
    }
}
