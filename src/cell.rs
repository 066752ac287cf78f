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
//!   Empty ---------------------------> Ready / Failed ------------------> Taken
//!     |   records `synchronous`;                   every later take gets
//!     |   takes wakers, parked threads,            Err(AlreadyEnded);
//!     |   callback; runs them after unlocking      `synchronous` is kept
//!     +-- a second complete is refused and hands its value back
//! ```
//!
//! # Implementation notes
//!
//! - The cell is owned by `Arc`: every handle clone, the completer, the running task and
//!   a pending callback's handle hold one reference; the last to go frees the cell and
//!   drops a result nobody took.
//! - Everything mutable sits behind one mutex, held only for short bookkeeping. No user
//!   code (waker, callback, thread unpark) runs while it is held, except `Waker::clone`,
//!   which leaves the state untouched if it panics.
//! - The cell is small on purpose (72 bytes for a `u64` result, counts included): what
//!   most operations never use lives elsewhere. Errors are boxed (the cold path); the
//!   state sits behind a pointer that is null when there is none; the callback, every
//!   waiter but the first and the parked threads live in `More`, allocated only when an
//!   operation has a callback, a second concurrent waiter, or a thread that blocks.
//! - Waiters: each awaiting handle (and the task running a `begin` future) owns one
//!   entry: entry 0 is the inline `waker`, entry `n > 0` is `More::wakers[n - 1]`. So
//!   several clones can be awaited at once and a re-poll replaces only its own waker.
//!   Blocked threads push their `Thread` into `More::parked`.
//! - Every lock, `Arc` and park comes from [`crate::sync`], so that the loom models in
//!   `tests/loom.rs` explore this code's interleavings.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::{self, Arc, Mutex, MutexGuard, PoisonError, Thread, TryLockError};
use crate::{AsyncResult, Error, State};

/// The boxed callback stored in a cell, run once with a clone of the handle.
pub(crate) type Callback<T> = Box<dyn FnOnce(AsyncResult<T>) + Send>;

/// The result slot. `synchronous`: the operation completed on the thread that began it,
/// before Begin returned; set with the result and kept when it is taken.
enum Slot<T> {
    Empty,
    Ready {
        value: T,
        synchronous: bool,
    },
    Failed {
        error: Box<Error>,
        synchronous: bool,
    },
    Taken {
        synchronous: bool,
    },
}

struct Inner<T> {
    slot: Slot<T>,
    /// Waiter entry 0.
    waker: Option<Waker>,
    more: Option<Box<More<T>>>,
}

/// What most operations never need, allocated when one does.
struct More<T> {
    callback: Option<Callback<T>>,
    /// Waiter entries 1, 2, ...; `None` is a free entry.
    wakers: Vec<Option<Waker>>,
    parked: Vec<Thread>,
}

// Not derived: that would require `T: Default`.
impl<T> Default for More<T> {
    fn default() -> Self {
        More {
            callback: None,
            wakers: Vec::new(),
            parked: Vec::new(),
        }
    }
}

pub(crate) struct Cell<T> {
    inner: Mutex<Inner<T>>,
    /// `None` for `State::none()`, which most operations have.
    state: Option<Box<State>>,
}

static NO_STATE: State = State::none();

impl<T> Inner<T> {
    fn more(&mut self) -> &mut More<T> {
        self.more.get_or_insert_with(Box::default)
    }

    fn is_completed(&self) -> bool {
        !matches!(self.slot, Slot::Empty)
    }
}

impl<T> Cell<T> {
    pub(crate) fn new(callback: Option<Callback<T>>, state: State) -> Arc<Self> {
        let more = callback.map(|callback| {
            Box::new(More {
                callback: Some(callback),
                ..More::default()
            })
        });
        Arc::new(Cell {
            inner: Mutex::new(Inner {
                slot: Slot::Empty,
                waker: None,
                more,
            }),
            state: (!state.is_none()).then(|| Box::new(state)),
        })
    }

    /// Locks the cell. The state behind the lock is consistent at every point where user
    /// code could panic, so a poisoned lock is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> &State {
        self.state.as_deref().unwrap_or(&NO_STATE)
    }

    pub(crate) fn is_completed(&self) -> bool {
        self.lock().is_completed()
    }

    pub(crate) fn completed_synchronously(&self) -> bool {
        match self.lock().slot {
            Slot::Empty => false,
            Slot::Ready { synchronous, .. }
            | Slot::Failed { synchronous, .. }
            | Slot::Taken { synchronous } => synchronous,
        }
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
        if inner.is_completed() {
            return Err(result);
        }
        inner.slot = match result {
            Ok(value) => Slot::Ready { value, synchronous },
            Err(error) => Slot::Failed {
                error: Box::new(error),
                synchronous,
            },
        };
        let first = inner.waker.take();
        let more = inner.more.take();
        drop(inner);

        let (callback, wakers, parked) = match more {
            Some(more) => {
                let More {
                    callback,
                    wakers,
                    parked,
                } = *more;
                (callback, wakers, parked)
            }
            None => (None, Vec::new(), Vec::new()),
        };
        // A waker that panics must not keep the other waiters asleep or skip the
        // callback: wake everyone, run the callback, then re-raise the first panic.
        let mut waker_panic = None;
        for waker in first.into_iter().chain(wakers.into_iter().flatten()) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                waker_panic.get_or_insert(payload);
            }
        }
        for thread in parked {
            thread.unpark();
        }
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
        if inner.is_completed() {
            return Err(callback);
        }
        inner.more().callback = Some(callback);
        Ok(())
    }

    fn take_locked(inner: &mut Inner<T>) -> Option<Result<T, Error>> {
        let synchronous = match inner.slot {
            Slot::Empty => return None,
            Slot::Taken { .. } => return Some(Err(Error::AlreadyEnded)),
            Slot::Ready { synchronous, .. } | Slot::Failed { synchronous, .. } => synchronous,
        };
        match std::mem::replace(&mut inner.slot, Slot::Taken { synchronous }) {
            Slot::Ready { value, .. } => Some(Ok(value)),
            Slot::Failed { error, .. } => Some(Err(*error)),
            Slot::Empty | Slot::Taken { .. } => unreachable!("matched above"),
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
        let mut inner = self.lock();
        if inner.is_completed() {
            return Poll::Ready(());
        }
        let old = Self::register_locked(&mut inner, cx.waker(), entry);
        drop(inner);
        drop(old);
        Poll::Pending
    }

    /// Puts `waker` in the caller's entry (taking one on first use) and returns the
    /// waker it replaced, to be dropped after unlocking. An equal waker is not cloned.
    fn register_locked(
        inner: &mut Inner<T>,
        waker: &Waker,
        entry: &mut Option<usize>,
    ) -> Option<Waker> {
        let index = match *entry {
            Some(index) => index,
            None => {
                // While pending, entry 0 is free exactly when it holds no waker.
                let index = if inner.waker.is_none() {
                    0
                } else {
                    let more = inner.more();
                    match more.wakers.iter().position(Option::is_none) {
                        Some(free) => free + 1,
                        None => {
                            more.wakers.push(None);
                            more.wakers.len()
                        }
                    }
                };
                *entry = Some(index);
                index
            }
        };
        let slot = if index == 0 {
            &mut inner.waker
        } else {
            &mut inner.more().wakers[index - 1]
        };
        match slot {
            Some(current) if current.will_wake(waker) => None,
            _ => slot.replace(waker.clone()),
        }
    }

    /// Frees a handle's waker entry when the handle goes away.
    pub(crate) fn release_entry(&self, entry: usize) {
        let mut inner = self.lock();
        let old = if entry == 0 {
            inner.waker.take()
        } else {
            inner
                .more
                .as_mut()
                .and_then(|more| more.wakers.get_mut(entry - 1)?.take())
        };
        drop(inner);
        drop(old);
    }

    /// Blocks the current thread until the cell completes or `deadline` passes; returns
    /// whether it completed.
    /// Whether the cell has completed, if that can be seen without waiting for the
    /// lock: the spinning waiter peeks with this so that it never makes the completer
    /// wait for the lock (which would put the completer to sleep on it).
    fn peek_completed(&self) -> bool {
        match self.inner.try_lock() {
            Ok(inner) => inner.is_completed(),
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().is_completed(),
            Err(TryLockError::WouldBlock) => false,
        }
    }

    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let started = Instant::now();
        if sync::spin_until(|| self.peek_completed()) {
            return true;
        }
        let completed = self.park_until(deadline);
        sync::record_wait(started.elapsed());
        completed
    }

    /// The blocking part of `wait_until`, once spinning did not see the result.
    fn park_until(&self, deadline: Option<Instant>) -> bool {
        let me = sync::current();
        {
            let mut inner = self.lock();
            if inner.is_completed() {
                return true;
            }
            inner.more().parked.push(me.clone());
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
                        if let Some(more) = inner.more.as_mut() {
                            more.parked.retain(|t| t.id() != me.id());
                        }
                        return inner.is_completed();
                    }
                }
            }
        }
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

    /// The layout budget: 64 bytes of overhead per pending operation beyond a `u64`
    /// result, the `Arc`'s two counts included.
    #[test]
    fn cell_stays_within_its_size_budget() {
        let arc_counts = 2 * std::mem::size_of::<usize>();
        let overhead = arc_counts + std::mem::size_of::<Cell<u64>>() - std::mem::size_of::<u64>();
        assert!(overhead <= 64, "{overhead} bytes");
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
