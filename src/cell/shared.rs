//! A handle's side of a cell: waiting, taking the result, cancelling.

use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::word::{Snapshot, CANCELLED, ENTRY0, REF, TAKEN, VALUE, WAKER};
use super::{access, free, Cell, Entry};
use crate::sync;
use crate::unwind::drop_quietly;
use crate::Error;

/// A handle's ownership of a cell: the inside of an [`AsyncResult`].
pub(crate) struct Shared<T> {
    pub(super) ptr: NonNull<Cell<T>>,
    pub(super) _owns: PhantomData<Box<Cell<T>>>,
}

// SAFETY: a handle hands out a `T` only by value, taken once under the state word's
// protocol (so `T: Send` is needed to take it on another thread, and suffices), and
// never gives out a `&T`; the rest of the cell is `Send + Sync` or handed over by the
// protocol. The same bounds as `Arc<Mutex<T>>`.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: as above; what `&Shared` allows (waiting, cancelling, cloning, reading the
// state) follows the protocol, and taking the result needs `&mut Shared`.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Deref for Shared<T> {
    type Target = Cell<T>;

    fn deref(&self) -> &Cell<T> {
        // SAFETY: a handle owns the cell until it is dropped.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        // SAFETY: this handle owns the cell by `self.ptr`.
        unsafe { Shared::new_from(self.ptr) }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        if self.load().is_sole() {
            // SAFETY: the only owner (the Acquire load saw every other owner leave).
            unsafe { free(self.ptr) };
            return;
        }
        if self.state.remove_handle().is_sole() {
            // SAFETY: this handle was the last owner.
            unsafe { free(self.ptr) };
        }
    }
}

impl<T> Shared<T> {
    /// A new handle of the cell at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is the pointer by which the caller owns the cell (as a handle or as the
    /// writer): the new handle frees the cell through it if it is the last owner.
    pub(super) unsafe fn new_from(ptr: NonNull<Cell<T>>) -> Self {
        // SAFETY: the caller owns the cell.
        let cell = unsafe { ptr.as_ref() };
        if cell.state.add_handle().handles() >= usize::MAX / REF / 2 {
            // As `Arc` does: a count this high means clones are being leaked.
            std::process::abort();
        }
        Shared {
            ptr,
            _owns: PhantomData,
        }
    }

    pub(crate) fn ptr_eq(&self, other: &Shared<T>) -> bool {
        self.ptr == other.ptr
    }

    /// Takes the result of a complete cell (`state` has `COMPLETE`). `&mut`: only the
    /// owner of this handle takes through it, so that when it is the cell's only owner
    /// no other thread can touch the state word (see the plain store below).
    #[inline]
    fn take(&mut self, state: Snapshot) -> Result<T, Error> {
        let state = if state.is_sole() {
            if state.has(TAKEN) {
                return Err(Error::AlreadyEnded);
            }
            // Nobody else can update the word: no other owner, and this handle is
            // borrowed mutably.
            self.state.set_taken_alone(state);
            state
        } else {
            // Exactly one handle sees `TAKEN` clear, and it acquires the writer's slot.
            let before = self.state.set(TAKEN);
            if before.has(TAKEN) {
                return Err(Error::AlreadyEnded);
            }
            before
        };
        if !state.has(VALUE) {
            self.tracker.ended(None);
            return Err(Error::Cancelled);
        }
        // SAFETY: `VALUE` is set (the writer is done with the slot) and this handle set
        // `TAKEN`: nobody else reads the slot.
        let outcome = unsafe { access(&self.slot, Option::take) };
        let outcome = outcome.expect("a complete cell with VALUE holds an outcome");
        self.tracker.ended(outcome.abandonment());
        outcome.into_result()
    }

    /// Takes the result if there is one, without blocking.
    pub(crate) fn try_take(&mut self) -> Option<Result<T, Error>> {
        let state = self.load();
        state.is_complete().then(|| self.take(state))
    }

    /// Takes the result, or registers `cx`'s waker in the caller's waker entry.
    #[inline]
    pub(crate) fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        entry: &mut Entry,
    ) -> Poll<Result<T, Error>> {
        let state = self.load();
        if state.is_complete() {
            return Poll::Ready(self.take(state));
        }
        match self.register(state, cx.waker(), entry) {
            Poll::Ready(()) => Poll::Ready(self.take(self.load())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ready once the cell has completed; does not take the result.
    pub(crate) fn poll_completed(&self, cx: &mut Context<'_>, entry: &mut Entry) -> Poll<()> {
        let state = self.load();
        if state.is_complete() {
            return Poll::Ready(());
        }
        self.register(state, cx.waker(), entry)
    }

    /// Registers `waker` in the caller's waker entry (taking one on first use) while the
    /// cell is pending (as `state` last said); Ready if it completed meanwhile.
    fn register(&self, state: Snapshot, waker: &Waker, entry: &mut Entry) -> Poll<()> {
        match entry.get() {
            Some(0) => self.register_inline(&self.waker, WAKER, 0, waker),
            Some(_) => self.register_more(state, waker, entry),
            None if state.has(ENTRY0) => self.register_more(state, waker, entry),
            // The only handle: no other can compete for entry 0 (only this one could make
            // another, by cloning), and the writer never uses it, so claiming the entry
            // and publishing the waker is one update.
            // The entry is recorded only once the waker is in place: if cloning it
            // panics, `ENTRY0` stays clear and the entry free.
            None if state.handles() == 1 => {
                let registered = self.register_inline(&self.waker, WAKER, ENTRY0, waker);
                entry.set(0);
                registered
            }
            None => self.claim_entry0(state, waker, entry),
        }
    }

    /// Claims entry 0 for this handle if it is free, else registers in `More`.
    fn claim_entry0(&self, state: Snapshot, waker: &Waker, entry: &mut Entry) -> Poll<()> {
        let claimed = self.state.update(state, |s| {
            (!s.is_complete() && !s.has(ENTRY0)).then(|| s.with(ENTRY0))
        });
        match claimed {
            Ok(_) => {}
            Err(now) if now.is_complete() => return Poll::Ready(()),
            Err(now) => return self.register_more(now, waker, entry),
        }
        entry.set(0);
        self.register_inline(&self.waker, WAKER, 0, waker)
    }

    /// Frees a handle's waker entry when the handle goes away.
    pub(crate) fn release_entry(&self, entry: usize) {
        if entry > 0 {
            let old = self
                .more()
                .and_then(|more| more.lock().wakers.get_mut(entry - 1)?.take());
            drop_quietly(old);
            return;
        }
        let withdrawn = self.state.update(self.load(), |s| {
            (!s.is_complete() && s.has(WAKER)).then(|| s.without(WAKER))
        });
        if let Err(now) = withdrawn {
            if now.is_complete() {
                // The completer took the waker, or it stays until the cell is freed.
                return;
            }
        }
        // SAFETY: `WAKER` is clear and this handle owns entry 0.
        let old = unsafe { access(&self.waker, Option::take) };
        // Hands the (now empty) slot to the next handle that claims entry 0.
        self.state.clear(ENTRY0);
        drop_quietly(old);
    }

    /// Asks the operation to stop: completes the cell with `Cancelled` unless it is
    /// complete already; returns whether it did. Wakes the waiters and runs the callback here; never unwinds
    /// (their panics are discarded, see `crate::unwind`).
    pub(crate) fn cancel(&self) -> bool {
        let cancelled = self.state.update(self.load(), |s| {
            (!s.is_complete()).then(|| s.with(CANCELLED))
        });
        let Ok(state) = cancelled else {
            return false;
        };
        self.tracker.cancelled();
        // SAFETY: this handle owns the cell by `self.ptr` until this returns.
        unsafe { Cell::collect(self.ptr, state, false) }.run_quietly();
        true
    }

    /// Blocks the current thread until the cell completes or `deadline` passes; returns
    /// whether it completed.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let started = Instant::now();
        if sync::spin_until(|| self.is_completed(), deadline) {
            return true;
        }
        let completed = self.park_until(deadline);
        sync::record_wait(started.elapsed(), completed);
        completed
    }

    /// The blocking part of `wait_until`, once spinning did not see the result.
    fn park_until(&self, deadline: Option<Instant>) -> bool {
        let me = sync::current();
        match self.lock_waiters(self.load()) {
            None => return true,
            Some(mut waiters) => waiters.parked.push(me.clone()),
        }
        // A completion after the check above unparks `me` (it takes `parked` under the
        // lock), and an unpark that comes before the park makes the park return at once.
        loop {
            let completed = self.is_completed();
            let timed_out = !completed && deadline.is_some_and(sync::park_until);
            if completed || timed_out {
                // Leave the list, or wait for the completer (which unparks under the lock)
                // to be done with `me`: no unpark arrives after this returns.
                if let Some(more) = self.more() {
                    more.lock().parked.retain(|t| t.id() != me.id());
                }
                return completed || self.is_completed();
            }
            if deadline.is_none() {
                sync::park();
            }
        }
    }
}
