//! The state word: every flag and owner count of a cell in one atomic, read as a
//! [`Snapshot`] and changed only by the named transitions of [`Word`].
//!
//! # Flags
//!
//! Each flag either records a fact (once set, never cleared) or hands one of the cell's
//! `UnsafeCell` slots from one party to another: whoever sets or clears the flag with a
//! successful read-modify-write owns the slot from then on, as the table says.
//!
//! | flag | set by | cleared by | slot it hands over |
//! |---|---|---|---|
//! | `VALUE` | the writer, storing its outcome, while `CANCELLED` is clear | never | `slot`: from the writer to the handle that sets `TAKEN` |
//! | `CANCELLED` | a handle's `cancel`, while `VALUE` is clear | never | none: `slot` stays the writer's, which takes back what it stored |
//! | `TAKEN` | the handle that takes the result (once; later takes see it and get `AlreadyEnded`) | never | `slot`, to that handle |
//! | `SYNC` | the writer, with `VALUE`, when it completed inside Begin | never | none |
//! | `WAKER` | the owner of entry 0, publishing its waker while the cell is pending | that owner, to replace or drop its waker (fails once complete) | `waker`: while set and pending, the completer may take it; while clear, only the owner touches it; whoever completes the cell takes it if it was set then |
//! | `ENTRY0` | the handle claiming entry 0 (the only handle may claim it with `WAKER` in one step) | that handle, when it lets go of the entry | the right to use `waker` (as its owner, see `WAKER`) |
//! | `TASK_WAKER` | the writer of a running task, publishing its waker to be told of a cancel (only while a handle is left to cancel) | the writer, to replace its waker | the task waker slot in the `TaskCell`'s header, as `WAKER` does `waker` |
//! | `WAITERS` | a handle about to add a waker or a parked thread to `More::waiters` | never | none: it tells the completer to lock `More::waiters` |
//! | `CALLBACK` | whoever makes the cell with a callback | never | the callback slot (a task's in its header, any other's in `More`): from the installer to whoever completes the cell |
//! | `WRITER` | creation | the writer, when it gives up its ownership | none: it counts the writer as an owner |
//! | `TASK` | creation, for a `TaskCell` | never | none: the cell heads a `TaskCell` (see `task.rs`) |
//! | `RAW` | `AnyShared::into_raw` while clear, or creation for `begin_raw` | `AnyShared::from_raw` (once: a second sees it clear and takes nothing) | none: one of the handle counts is the raw pointer's, at most one at a time; a borrower adds a count of its own only while it is set |
//!
//! Above the flags, from `REF` up, the number of handles. The owner whose update leaves
//! neither a handle nor `WRITER` frees the cell.
//!
//! # Orderings
//!
//! Every read-modify-write that hands a slot over is `AcqRel` (it publishes what this
//! thread wrote to the slot and acquires what the previous owner wrote); loads are
//! `Acquire`, so that a thread that sees a flag sees what was written before it was set.
//! Adding a handle is `Relaxed`, as `Arc::clone` is.

use crate::sync::{
    AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed},
};

/// The writer stored its outcome in `slot`.
pub(super) const VALUE: usize = 1;
/// A handle cancelled before the writer stored anything: the result is `Err(Cancelled)`.
pub(super) const CANCELLED: usize = 1 << 1;
/// Either of the two: the cell is complete.
pub(super) const COMPLETE: usize = VALUE | CANCELLED;
/// The result was taken; later takes get `AlreadyEnded`.
pub(super) const TAKEN: usize = 1 << 2;
/// The writer completed on the thread that began the operation, inside Begin.
pub(super) const SYNC: usize = 1 << 3;
/// `waker` holds the waker of the handle that owns entry 0 (see the table).
pub(super) const WAKER: usize = 1 << 4;
/// Entry 0 (`waker`) belongs to a handle.
pub(super) const ENTRY0: usize = 1 << 5;
/// The task waker slot (in a `TaskCell`'s header) holds the writer's own waker.
pub(super) const TASK_WAKER: usize = 1 << 6;
/// `More::waiters` may hold wakers or parked threads: the completer must lock it.
pub(super) const WAITERS: usize = 1 << 7;
/// The callback is installed: whoever completes the cell takes it.
pub(super) const CALLBACK: usize = 1 << 8;
/// The writer still owns the cell.
pub(super) const WRITER: usize = 1 << 9;
/// The cell heads a `TaskCell` (see `task.rs`).
pub(super) const TASK: usize = 1 << 10;
/// A handle is out as a raw pointer (`AnyShared::into_raw`), owning one of the counts.
pub(super) const RAW: usize = 1 << 11;
/// One handle. The count of handles takes every bit from here up.
pub(super) const REF: usize = 1 << 12;

/// What completing a cell may owe someone: a waker to wake or a callback to run.
const OWED: usize = WAKER | TASK_WAKER | WAITERS | CALLBACK;

/// One reading of the state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Snapshot(usize);

impl Snapshot {
    /// Whether every flag of `flags` is set.
    #[inline]
    pub(super) const fn has(self, flags: usize) -> bool {
        self.0 & flags == flags
    }

    /// Whether any flag of `flags` is set.
    #[inline]
    pub(super) const fn has_any(self, flags: usize) -> bool {
        self.0 & flags != 0
    }

    /// This reading with `flags` set.
    #[inline]
    pub(super) const fn with(self, flags: usize) -> Snapshot {
        Snapshot(self.0 | flags)
    }

    /// This reading with `flags` clear.
    #[inline]
    pub(super) const fn without(self, flags: usize) -> Snapshot {
        Snapshot(self.0 & !flags)
    }

    #[inline]
    pub(super) const fn is_complete(self) -> bool {
        self.has_any(COMPLETE)
    }

    /// Whether completing the cell now would owe a wake-up or a callback.
    #[inline]
    pub(super) const fn owes(self) -> bool {
        self.has_any(OWED)
    }

    /// The number of handles.
    #[inline]
    pub(super) const fn handles(self) -> usize {
        self.0 / REF
    }

    /// Whether a handle that reads this is the cell's only owner: no other handle, no
    /// writer. Only that owner could make another (by cloning), so once true it stays
    /// true for as long as it does not clone.
    #[inline]
    pub(super) const fn is_sole(self) -> bool {
        self.handles() == 1 && !self.has(WRITER)
    }
}

/// The atomic state word of a cell.
pub(super) struct Word(AtomicUsize);

impl Word {
    /// A pending cell's word: one writer, one handle, and `flags`, which may also count
    /// more handles (multiples of `REF`).
    pub(super) fn new(flags: usize) -> Word {
        Word(AtomicUsize::new((WRITER | flags) + REF))
    }

    #[inline]
    pub(super) fn load(&self) -> Snapshot {
        // ORDERING: Acquire pairs with the AcqRel updates that publish the slots.
        Snapshot(self.0.load(Acquire))
    }

    /// Applies `f` until it sticks, as `fetch_update` does: `Ok` with the reading it
    /// changed, or `Err` with the reading for which `f` chose no change.
    #[inline]
    pub(super) fn update(
        &self,
        mut current: Snapshot,
        mut f: impl FnMut(Snapshot) -> Option<Snapshot>,
    ) -> Result<Snapshot, Snapshot> {
        loop {
            let Some(new) = f(current) else {
                return Err(current);
            };
            // ORDERING: AcqRel: a successful update both publishes this thread's writes
            // to the slots it hands over and acquires the slots handed to it; the
            // failure ordering matters only for the value read, which `f` re-examines.
            match self
                .0
                .compare_exchange_weak(current.0, new.0, AcqRel, Acquire)
            {
                Ok(_) => return Ok(current),
                Err(actual) => current = Snapshot(actual),
            }
        }
    }

    /// Replaces `current` by `new` if the word still reads `current`; one attempt.
    #[inline]
    pub(super) fn replace(&self, current: Snapshot, new: Snapshot) -> bool {
        // ORDERING: as in `update`.
        self.0
            .compare_exchange(current.0, new.0, AcqRel, Acquire)
            .is_ok()
    }

    /// Sets `flags`; returns the reading before.
    #[inline]
    pub(super) fn set(&self, flags: usize) -> Snapshot {
        // ORDERING: AcqRel, and a read-modify-write: ordered against every other update.
        Snapshot(self.0.fetch_or(flags, AcqRel))
    }

    /// Clears `flags`; returns the reading before.
    #[inline]
    pub(super) fn clear(&self, flags: usize) -> Snapshot {
        // ORDERING: as in `set`.
        Snapshot(self.0.fetch_and(!flags, AcqRel))
    }

    /// Marks the result taken with a plain store, by a handle that read `current` and
    /// is the sole owner (`current.is_sole()`), borrowed mutably: nobody else can
    /// update the word, and a later clone publishes the store with its own update.
    #[inline]
    pub(super) fn set_taken_alone(&self, current: Snapshot) {
        debug_assert!(current.is_sole());
        // ORDERING: Relaxed: see above.
        self.0.store(current.with(TAKEN).0, Relaxed);
    }

    /// Counts a new handle if `RAW` is set, in one step: a borrower of the raw handle
    /// then owns the cell even if the raw handle is taken back meanwhile. Returns
    /// whether it did.
    pub(super) fn add_handle_if_raw(&self) -> bool {
        self.update(self.load(), |s| s.has(RAW).then_some(Snapshot(s.0 + REF)))
            .is_ok()
    }

    /// Counts a new handle; returns the reading before.
    #[inline]
    pub(super) fn add_handle(&self) -> Snapshot {
        // ORDERING: Relaxed, as for `Arc::clone`: the caller's ownership keeps the cell
        // alive, and handing the new handle to another thread synchronises by itself.
        Snapshot(self.0.fetch_add(REF, Relaxed))
    }

    /// Gives up a handle's ownership; returns the reading before.
    #[inline]
    pub(super) fn remove_handle(&self) -> Snapshot {
        // ORDERING: AcqRel: releases this handle's accesses to whoever frees the cell,
        // and acquires the other owners' if that is this thread.
        Snapshot(self.0.fetch_sub(REF, AcqRel))
    }

    /// Gives up the writer's ownership; returns the reading before.
    #[inline]
    pub(super) fn remove_writer(&self) -> Snapshot {
        // ORDERING: as in `remove_handle`.
        Snapshot(self.0.fetch_sub(WRITER, AcqRel))
    }
}
