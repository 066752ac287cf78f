//! The completion cell: the one allocation shared by every clone of an
//! [`AsyncResult`], the [`Completer`](crate::Completer) or task that finishes it, and
//! the callback.
//!
//! # States
//!
//! The result slot moves one way only:
//!
//! ```text
//!            complete(Ok / Err)                  take (end / await)
//!   Empty ---------------------------> Ready ---------------------------> Taken
//!     |   sets COMPLETED (+ SYNCHRONOUS)           every later take gets
//!     |   takes wakers, parked threads,            Err(AlreadyEnded)
//!     |   callback; runs them after unlocking
//!     +-- a second complete is refused and hands its value back
//! ```
//!
//! `flags` mirrors the slot for lock-free reads: `COMPLETED` is set, under the lock, in
//! the same critical section that fills the slot, and never cleared. `SYNCHRONOUS` is set
//! with `COMPLETED` or not at all, so it never changes after completion.
//!
//! # Implementation notes
//!
//! - The cell is owned by `Arc`: every handle clone, the completer, the running task and
//!   a pending callback's handle hold one reference; the last to go frees the cell and
//!   drops a result nobody took.
//! - All mutable fields sit behind one mutex, held only for short bookkeeping. No user
//!   code (waker, callback, thread unpark) runs while it is held, except `Waker::clone`,
//!   which leaves the state untouched if it panics.
//! - Waiters: each awaiting handle owns one slot index in `wakers` (so several clones
//!   can be awaited at once and a re-poll replaces only its own waker); blocked threads
//!   push their `Thread` into `parked`, which is empty (no allocation) until someone
//!   blocks.
//! - Every atomic, lock, `Arc` and park comes from [`crate::sync`], so that the loom
//!   models in `tests/loom.rs` explore this code's interleavings.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::{
    self, Arc, AtomicU8, AtomicWaker, Mutex, MutexGuard, Ordering, PoisonError, Thread,
};
use crate::{AsyncResult, Error, State};

/// The boxed callback stored in a cell, run once with a clone of the handle.
pub(crate) type Callback<T> = Box<dyn FnOnce(AsyncResult<T>) + Send>;

/// The result slot holds a value. Set by `complete`, under the lock; never cleared.
const COMPLETED: u8 = 1 << 0;
/// The operation completed on the thread that began it, before Begin returned. Set only
/// together with `COMPLETED`.
const SYNCHRONOUS: u8 = 1 << 1;

enum Slot<T> {
    Empty,
    Ready(Result<T, Error>),
    Taken,
}

struct Inner<T> {
    slot: Slot<T>,
    callback: Option<Callback<T>>,
    /// One entry per awaiting handle; `None` is a free entry.
    wakers: Vec<Option<Waker>>,
    parked: Vec<Thread>,
}

pub(crate) struct Cell<T> {
    flags: AtomicU8,
    inner: Mutex<Inner<T>>,
    state: State,
    /// The task running a future for `begin`: woken when the cell completes early
    /// (cancelled) so that the task drops the future on its executor.
    runner: AtomicWaker,
}

impl<T> Cell<T> {
    pub(crate) fn new(callback: Option<Callback<T>>, state: State) -> Arc<Self> {
        Arc::new(Cell {
            flags: AtomicU8::new(0),
            inner: Mutex::new(Inner {
                slot: Slot::Empty,
                callback,
                wakers: Vec::new(),
                parked: Vec::new(),
            }),
            state,
            runner: AtomicWaker::new(),
        })
    }

    /// Locks the cell. The state behind the lock is consistent at every point where user
    /// code could panic, so a poisoned lock is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    pub(crate) fn is_completed(&self) -> bool {
        // ORDERING: Acquire pairs with the Release in `complete`, so a caller that sees
        // COMPLETED also sees the stored result (it is read under the lock anyway).
        self.flags.load(Ordering::Acquire) & COMPLETED != 0
    }

    pub(crate) fn completed_synchronously(&self) -> bool {
        // ORDERING: as in `is_completed`; SYNCHRONOUS is only ever set with COMPLETED.
        self.flags.load(Ordering::Acquire) & SYNCHRONOUS != 0
    }

    /// Stores the result unless one is already there, then wakes every waiter and runs
    /// the callback with a clone of the handle. The first completion wins; a later one
    /// gets its result back.
    ///
    /// A panicking waker is re-raised only after every other waiter was woken and the
    /// callback ran; a panicking callback propagates (the result is stored by then).
    pub(crate) fn complete(
        this: &Arc<Self>,
        result: Result<T, Error>,
        synchronous: bool,
    ) -> Result<(), Result<T, Error>> {
        let mut inner = this.lock();
        if !matches!(inner.slot, Slot::Empty) {
            return Err(result);
        }
        inner.slot = Slot::Ready(result);
        let flags = if synchronous {
            COMPLETED | SYNCHRONOUS
        } else {
            COMPLETED
        };
        // ORDERING: Release publishes the slot to lock-free readers of the flags.
        this.flags.fetch_or(flags, Ordering::Release);
        let wakers = std::mem::take(&mut inner.wakers);
        let parked = std::mem::take(&mut inner.parked);
        let callback = inner.callback.take();
        drop(inner);

        // A waker that panics must not keep the other waiters asleep or skip the
        // callback: wake everyone, run the callback, then re-raise the first panic.
        let mut waker_panic = None;
        for waker in wakers.into_iter().flatten() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                waker_panic.get_or_insert(payload);
            }
        }
        for thread in parked {
            thread.unpark();
        }
        this.runner.wake();
        if let Some(callback) = callback {
            callback(AsyncResult::from_cell(Arc::clone(this)));
        }
        if let Some(payload) = waker_panic {
            resume_unwind(payload);
        }
        Ok(())
    }

    /// Installs the completion callback, or hands it back if the cell already completed
    /// (the caller then runs it itself).
    pub(crate) fn set_callback(&self, callback: Callback<T>) -> Result<(), Callback<T>> {
        let mut inner = self.lock();
        match inner.slot {
            Slot::Empty => {
                inner.callback = Some(callback);
                Ok(())
            }
            _ => Err(callback),
        }
    }

    fn take_locked(inner: &mut Inner<T>) -> Option<Result<T, Error>> {
        match std::mem::replace(&mut inner.slot, Slot::Taken) {
            Slot::Ready(result) => Some(result),
            Slot::Taken => Some(Err(Error::AlreadyEnded)),
            Slot::Empty => {
                inner.slot = Slot::Empty;
                None
            }
        }
    }

    /// Takes the result if there is one, without blocking.
    pub(crate) fn try_take(&self) -> Option<Result<T, Error>> {
        Self::take_locked(&mut self.lock())
    }

    /// Takes the result, or registers `cx`'s waker in the caller's waker entry.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        entry: &mut Option<usize>,
    ) -> Poll<Result<T, Error>> {
        let mut inner = self.lock();
        match Self::take_locked(&mut inner) {
            Some(result) => Poll::Ready(result),
            None => {
                let old = Self::register_locked(&mut inner, cx.waker(), entry);
                drop(inner);
                drop(old);
                Poll::Pending
            }
        }
    }

    /// Ready once the cell has completed; does not take the result.
    pub(crate) fn poll_completed(
        &self,
        cx: &mut Context<'_>,
        entry: &mut Option<usize>,
    ) -> Poll<()> {
        if self.is_completed() {
            return Poll::Ready(());
        }
        let mut inner = self.lock();
        if !matches!(inner.slot, Slot::Empty) {
            return Poll::Ready(());
        }
        let old = Self::register_locked(&mut inner, cx.waker(), entry);
        drop(inner);
        drop(old);
        Poll::Pending
    }

    /// Puts `waker` in the caller's entry (allocating one on first use) and returns the
    /// waker it replaced, to be dropped after unlocking. An equal waker is not cloned.
    fn register_locked(
        inner: &mut Inner<T>,
        waker: &Waker,
        entry: &mut Option<usize>,
    ) -> Option<Waker> {
        let index = match *entry {
            Some(index) if index < inner.wakers.len() => index,
            _ => {
                let index = match inner.wakers.iter().position(Option::is_none) {
                    Some(free) => free,
                    None => {
                        inner.wakers.push(None);
                        inner.wakers.len() - 1
                    }
                };
                *entry = Some(index);
                index
            }
        };
        match &inner.wakers[index] {
            Some(current) if current.will_wake(waker) => None,
            _ => inner.wakers[index].replace(waker.clone()),
        }
    }

    /// Frees a handle's waker entry when the handle goes away.
    pub(crate) fn release_entry(&self, entry: usize) {
        let mut inner = self.lock();
        let old = inner.wakers.get_mut(entry).and_then(Option::take);
        drop(inner);
        drop(old);
    }

    /// Blocks the current thread until the cell completes or `deadline` passes; returns
    /// whether it completed.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if sync::spin_until(|| self.is_completed()) {
            return true;
        }
        let me = sync::current();
        {
            let mut inner = self.lock();
            if !matches!(inner.slot, Slot::Empty) {
                return true;
            }
            inner.parked.push(me.clone());
        }
        // A completion after the check above unparks `me` (it took `parked` under the
        // lock), and an unpark that comes before the park makes the park return at once.
        loop {
            if self.is_completed() {
                return true;
            }
            match deadline {
                None => sync::park(),
                Some(deadline) => {
                    if sync::park_until(deadline) {
                        let mut inner = self.lock();
                        inner.parked.retain(|t| t.id() != me.id());
                        return !matches!(inner.slot, Slot::Empty);
                    }
                }
            }
        }
    }

    /// Registers the waker of the task running the operation's future.
    pub(crate) fn register_runner(&self, waker: &Waker) {
        self.runner.register(waker);
    }
}

#[cfg(all(test, not(apm_tap_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn counting_waker() -> (std::sync::Arc<CountWakes>, Waker) {
        let count = std::sync::Arc::new(CountWakes(AtomicUsize::new(0)));
        (std::sync::Arc::clone(&count), Waker::from(count))
    }

    #[test]
    fn first_completion_wins_and_result_is_taken_once() {
        let cell = Cell::<u8>::new(None, State::none());
        assert!(!cell.is_completed());
        assert_eq!(Cell::complete(&cell, Ok(1), true), Ok(()));
        assert_eq!(Cell::complete(&cell, Ok(2), false), Err(Ok(2)));
        assert!(cell.is_completed() && cell.completed_synchronously());
        assert_eq!(cell.try_take(), Some(Ok(1)));
        assert_eq!(cell.try_take(), Some(Err(Error::AlreadyEnded)));
    }

    #[test]
    fn each_entry_keeps_only_its_latest_waker() {
        let cell = Cell::<u8>::new(None, State::none());
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        let (other, other_waker) = counting_waker();
        let (mut entry, mut other_entry) = (None, None);
        let mut cx = Context::from_waker(&first_waker);
        assert!(cell.poll_take(&mut cx, &mut entry).is_pending());
        let mut cx = Context::from_waker(&second_waker);
        assert!(cell.poll_take(&mut cx, &mut entry).is_pending());
        let mut cx = Context::from_waker(&other_waker);
        assert!(cell.poll_completed(&mut cx, &mut other_entry).is_pending());
        assert_ne!(entry, other_entry);
        assert_eq!(Cell::complete(&cell, Ok(3), false), Ok(()));
        let wakes = |c: &CountWakes| c.0.load(SeqCst);
        assert_eq!((wakes(&first), wakes(&second), wakes(&other)), (0, 1, 1));
        let mut cx = Context::from_waker(&second_waker);
        assert_eq!(cell.poll_take(&mut cx, &mut entry), Poll::Ready(Ok(3)));
    }

    #[test]
    fn released_entry_is_reused_and_not_woken() {
        let cell = Cell::<u8>::new(None, State::none());
        let (gone, gone_waker) = counting_waker();
        let mut entry = None;
        let mut cx = Context::from_waker(&gone_waker);
        assert!(cell.poll_completed(&mut cx, &mut entry).is_pending());
        cell.release_entry(entry.unwrap());
        let (_, waker) = counting_waker();
        let mut next = None;
        let mut cx = Context::from_waker(&waker);
        assert!(cell.poll_completed(&mut cx, &mut next).is_pending());
        assert_eq!(next, entry, "a freed entry was not reused");
        Cell::complete(&cell, Err(Error::Cancelled), false).unwrap();
        assert_eq!(gone.0.load(SeqCst), 0);
    }

    #[test]
    fn callback_runs_once_after_the_result_is_stored() {
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let c = std::sync::Arc::clone(&calls);
        let callback: Callback<u8> = Box::new(move |handle| {
            assert!(handle.is_completed());
            c.fetch_add(1, SeqCst);
        });
        let cell = Cell::new(Some(callback), State::none());
        Cell::complete(&cell, Ok(4), false).unwrap();
        let _ = Cell::complete(&cell, Ok(5), false);
        assert_eq!(calls.load(SeqCst), 1);
        let late: Callback<u8> = Box::new(|_| unreachable!("installed after completion"));
        assert!(cell.set_callback(late).is_err());
    }

    #[test]
    fn timed_wait_times_out_then_sees_completion() {
        let cell = Cell::<u8>::new(None, State::none());
        assert!(!cell.wait_until(Some(Instant::now() + Duration::from_millis(1))));
        let completer = Arc::clone(&cell);
        let thread = std::thread::spawn(move || Cell::complete(&completer, Ok(6), false));
        assert!(cell.wait_until(None));
        thread.join().unwrap().unwrap();
        assert!(cell.wait_until(Some(Instant::now())));
    }
}
