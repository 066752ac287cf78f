//! The writer's side of a cell: storing the outcome, waking, giving up ownership.

use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop};
use std::ops::Deref;
use std::ptr::NonNull;

use super::word::{CALLBACK, SYNC, TASK, TASK_WAKER, VALUE, WAITERS, WRITER};
use super::{access, free, quietly_wake, Cell, Outcome, Wake};
use crate::{Abandonment, Error};

/// The writer's ownership of a cell. Dropping it unfinished completes the cell with
/// `Abandoned`: [`Abandonment::TaskDropped`] for a task's cell, else
/// [`Abandonment::CompleterDropped`].
pub(crate) struct Writer<T> {
    pub(super) ptr: NonNull<Cell<T>>,
    pub(super) _owns: PhantomData<Box<Cell<T>>>,
}

// SAFETY: a writer moves a `T` into the cell, to be taken on another thread (so
// `T: Send`), and never gives out a `&T`; everything else it touches is `Send + Sync`
// or handed over by the state word's protocol.
unsafe impl<T: Send> Send for Writer<T> {}
// SAFETY: through `&Writer` only the atomic state and the immutable `State` are read.
unsafe impl<T: Send> Sync for Writer<T> {}

impl<T> Deref for Writer<T> {
    type Target = Cell<T>;

    fn deref(&self) -> &Cell<T> {
        // SAFETY: the writer owns the cell until `finish` gives the ownership up.
        unsafe { self.ptr.as_ref() }
    }
}

/// What storing an outcome left to do: the wake-ups and the callback to run (`Ok`), or
/// the outcome handed back because a handle cancelled first (`Err`).
pub(crate) type Completion<T> = Result<Option<Wake<T>>, Result<T, Error>>;

impl<T> Writer<T> {
    /// Stores the result unless a handle cancelled first (then the result comes back)
    /// and gives up the writer's ownership. The caller runs the returned [`Wake`], and
    /// decides what becomes of a panic in it.
    #[inline]
    pub(crate) fn complete(self, result: Result<T, Error>, synchronous: bool) -> Completion<T> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again.
        unsafe { this.finish(result, synchronous, false) }
    }

    /// [`complete`](Self::complete), then wakes the waiters and runs the callback
    /// right here, where nobody can catch their panics: they are discarded (see
    /// `crate::unwind`), so this never unwinds.
    #[inline]
    pub(crate) fn complete_quietly(
        self,
        result: Result<T, Error>,
        synchronous: bool,
    ) -> Result<(), Result<T, Error>> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again.
        let done = unsafe { this.finish(result, synchronous, true) }?;
        // Quietly, the wake-ups have run: nothing is left, and no drop glue needs to
        // find that out.
        debug_assert!(done.is_none());
        mem::forget(done);
        Ok(())
    }

    /// Completes the cell, then gives up the writer's ownership. With `quietly`, runs
    /// the wake-ups itself, as [`Wake::run_quietly`] does, and returns none: they are
    /// not moved out and back, which costs more than waking one waker.
    ///
    /// # Safety
    ///
    /// Called once; the writer is not used or dropped afterwards.
    #[inline(always)]
    unsafe fn finish(
        &mut self,
        result: Result<T, Error>,
        synchronous: bool,
        quietly: bool,
    ) -> Completion<T> {
        let ptr = self.ptr;
        // SAFETY: the writer owns the cell until `release_writer` below.
        let cell = unsafe { ptr.as_ref() };
        let state = cell.load();
        if state.is_complete() {
            // SAFETY: the writer owns its reference and gives it up here.
            unsafe { release_writer(ptr) };
            return Err(result);
        }
        cell.tracker.completed(&result);
        // The slot is empty (the writer stores once): nothing to drop, and no call to
        // find that out.
        // SAFETY: only the writer writes the slot, and nobody reads it before `VALUE`,
        // which only the writer sets, below.
        let empty = unsafe { access(&cell.slot, |slot| slot.replace(Outcome::new(result))) };
        debug_assert!(empty.is_none(), "the writer stores once");
        mem::forget(empty);
        let set = VALUE | if synchronous { SYNC } else { 0 };
        // The common case, inline: nobody to wake, no callback, a handle left to take the
        // result. Publishing it also gives up the writer's ownership.
        if !state.owes()
            && state.handles() != 0
            && cell.state.replace(state, state.with(set).without(WRITER))
        {
            return Ok(None);
        }
        // SAFETY: the writer's ownership passes to `publish`.
        unsafe { Self::publish(ptr, set, quietly) }
    }

    /// The rest of `finish` once the outcome is in the slot: publishes it unless a
    /// handle cancelled meanwhile, takes out what is to be woken and called, and gives
    /// up the writer's ownership.
    ///
    /// # Safety
    ///
    /// The caller holds the writer's ownership, by `ptr`, and gives it up.
    #[inline(never)]
    unsafe fn publish(ptr: NonNull<Cell<T>>, set: usize, quietly: bool) -> Completion<T> {
        // SAFETY: the writer owns the cell until `release_writer` or `free` below.
        let cell = unsafe { ptr.as_ref() };
        let published = cell.state.update(cell.load(), |s| {
            if s.is_complete() {
                return None;
            }
            // Nobody to wake and no callback: give up the writer's ownership in the same
            // update.
            Some(if s.owes() {
                s.with(set)
            } else {
                s.with(set).without(WRITER)
            })
        });
        let Ok(state) = published else {
            // SAFETY: cancelled meanwhile: `VALUE` was never set, so no handle reads the
            // slot, and the writer takes back what it stored.
            let back = unsafe { access(&cell.slot, Option::take) };
            // SAFETY: the writer owns its reference and gives it up here.
            unsafe { release_writer(ptr) };
            let back = back.expect("the writer stored its outcome just above");
            return Err(back.into_result());
        };
        if !state.owes() {
            if state.handles() == 0 {
                // SAFETY: no handle and the writer gone: this thread was the last owner,
                // and its AcqRel update acquired the others' writes.
                unsafe { free(ptr) };
            }
            return Ok(None);
        }
        let wake = if !state.has_any(TASK_WAKER | WAITERS | CALLBACK) {
            // The common case of an awaited operation: one waker, no callback.
            // SAFETY: `WAKER` was set when the cell completed: the completer owns it.
            let waker = unsafe { access(&cell.waker, Option::take) };
            // SAFETY: the writer's last use of the cell.
            unsafe { release_writer(ptr) };
            if quietly {
                if let Some(waker) = waker {
                    quietly_wake(waker);
                }
                return Ok(None);
            }
            return Ok(Some(Wake::one(waker)));
        } else {
            // SAFETY: the writer owns the cell by `ptr` until it gives that up below.
            unsafe { Cell::collect(ptr, state, true) }
        };
        // SAFETY: the writer's last use of the cell: `wake` does not need it.
        unsafe { release_writer(ptr) };
        if quietly {
            wake.run_quietly();
            return Ok(None);
        }
        Ok(Some(wake))
    }
}

impl<T> Drop for Writer<T> {
    /// Completes the cell with `Abandoned`, unless it was cancelled; never unwinds.
    fn drop(&mut self) {
        let why = if self.load().has(TASK) {
            Abandonment::TaskDropped
        } else {
            Abandonment::CompleterDropped
        };
        // SAFETY: this is the writer's last use. Refused, harmlessly, when the cell was
        // cancelled.
        let _ = unsafe { self.finish(Err(Error::Abandoned(why)), false, true) };
    }
}

/// Gives up the writer's ownership of the cell, freeing it if no handle is left.
///
/// # Safety
///
/// The caller owns the writer's ownership and does not touch the cell afterwards.
unsafe fn release_writer<T>(ptr: NonNull<Cell<T>>) {
    // SAFETY: the writer's ownership keeps the cell alive until this update.
    let cell = unsafe { ptr.as_ref() };
    if cell.state.remove_writer().handles() == 0 {
        // SAFETY: the writer was the last owner.
        unsafe { free(ptr) };
    }
}
