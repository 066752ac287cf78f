//! The completion cell: the one allocation shared by every clone of an
//! [`AsyncResult`], the [`Completer`](crate::Completer) or task that finishes it, and
//! the callback.
//!
//! # Owners
//!
//! A cell has one *writer* ([`Writer`]: a `Completer`, or the task running a `begin`
//! future), which alone stores a result, and any number of *handles* ([`Shared`]: every
//! `AsyncResult`), which wait, take the result or cancel. Both are counted in the state
//! word; the last owner to go frees the cell, dropping a result nobody took.
//!
//! # States
//!
//! ```text
//!            writer stores a value or error (VALUE)           take (end / await)
//!   pending ------------------------------------> complete --------------------> TAKEN
//!      |     or a handle cancels first (CANCELLED)    |     every later take gets
//!      |     the winner wakes the waiters and runs     |     Err(AlreadyEnded)
//!      |     the callback; the loser's value goes back  |
//! ```
//!
//! # Implementation notes
//!
//! - Lock-free on the paths every operation takes: one atomic word (`state`, see
//!   `word.rs`, with the table of every flag) holds the completion, the waiter flags and
//!   the owner counts; the result and the first waiter's waker sit in `UnsafeCell`s
//!   whose ownership the state word hands over. An uncontended synchronous completion costs one
//!   compare-and-swap; a handle that sees it is the last owner takes the result and
//!   frees the cell without any further read-modify-write. A completer takes the
//!   wakers and the callback out and gives up its ownership before it wakes anyone, so
//!   that the woken task usually finds itself the last owner.
//! - What most operations never need lives in `More`, allocated on first need: the
//!   callback of a `Completer`'s operation (an `UnsafeCell` handed over by the
//!   `CALLBACK` flag, so still lock-free) and, behind a mutex, every waiting handle but
//!   the first and the threads blocked in `end` or `wait`. The completer takes that
//!   mutex only when the `WAITERS` flag says somebody used it. A `begin` task's cell
//!   keeps its callback and its own waker in its header instead (`task.rs`), so that
//!   neither a callback nor a spawned task allocates a `More`.
//! - The cell is small on purpose: 56 bytes for a `u64` result, counts included (a
//!   64-byte block from the allocator).
//! - Every atomic, `UnsafeCell`, lock and park comes from [`crate::sync`], so that the
//!   loom models in `tests/loom.rs` explore this code's interleavings and check each
//!   `UnsafeCell` access for data races; Miri checks the pointer handling.

// The protocol's invariants and the `unsafe` they justify are written at each use.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::mem;
use std::num::NonZeroU32;
use std::ptr::{self, NonNull};
use std::task::{Poll, Waker};

use crate::sync::{
    AtomicPtr, Mutex, MutexGuard,
    Ordering::{AcqRel, Acquire},
    PoisonError, Thread, UnsafeCell,
};
use crate::track::Tracker;
use crate::unwind::{catch, drop_quietly, drop_quietly_if_some, Payload};
use crate::{Abandonment, AsyncResult, Dispatch, Error, State};

mod shared;
pub(crate) mod signal;
mod spare;
mod task;
#[cfg(all(test, not(apm_tap_loom)))]
mod tests;
mod word;
mod writer;

pub(crate) use shared::Shared;
pub(crate) use task::{new_task, AnyShared, Driver, RawTask, TaskWriter};
use word::{Snapshot, Word, CALLBACK, SYNC, TASK, TASK_WAKER, WAITERS, WAKER};
pub(crate) use writer::{Completion, Writer};

/// The boxed callback stored in a cell, run once with a clone of the handle.
pub(crate) type Callback<T> = Box<dyn CallbackFn<T>>;

/// What a cell's callback is: any `FnOnce(AsyncResult<T>)`, or a user's callback that
/// can also take a [`Dispatch`] into its own box (see `AsyncCallback::new`).
pub(crate) trait CallbackFn<T>: Send {
    /// Runs the callback.
    fn call(self: Box<Self>, handle: AsyncResult<T>);

    /// Makes the callback run as `dispatch` says, inside its own box; gives `dispatch`
    /// back if it cannot (the caller then wraps it).
    fn post_to(&mut self, dispatch: Dispatch) -> Result<(), Dispatch> {
        Err(dispatch)
    }
}

impl<T, F: FnOnce(AsyncResult<T>) + Send> CallbackFn<T> for F {
    fn call(self: Box<Self>, handle: AsyncResult<T>) {
        (*self)(handle);
    }
}

/// What the writer stores. Errors are boxed (the cold path), so that the slot stays as
/// small as `T` plus a word; `Abandoned`, what every dropped `Completer` stores, needs
/// no allocation.
enum Outcome<T> {
    Value(T),
    Abandoned(Abandonment),
    Failed(Box<Error>),
}

impl<T> Outcome<T> {
    fn new(result: Result<T, Error>) -> Self {
        match result {
            Ok(value) => Outcome::Value(value),
            Err(Error::Abandoned(why)) => Outcome::Abandoned(why),
            Err(error) => Outcome::Failed(Box::new(error)),
        }
    }

    /// Why the operation was abandoned, if it was.
    #[inline(always)]
    fn abandonment(&self) -> Option<Abandonment> {
        match self {
            Outcome::Abandoned(why) => Some(*why),
            _ => None,
        }
    }

    fn into_result(self) -> Result<T, Error> {
        match self {
            Outcome::Value(value) => Ok(value),
            Outcome::Abandoned(why) => Err(Error::Abandoned(why)),
            Outcome::Failed(error) => Err(*error),
        }
    }
}

/// A handle's waiter entry, none until the handle first waits: entry 0 is the cell's
/// inline `waker`, entry `n > 0` is `More::wakers[n - 1]`. Kept in four bytes (as
/// `n + 1`), so that an `AsyncResult` is two words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entry(Option<NonZeroU32>);

impl Entry {
    pub(crate) fn get(self) -> Option<usize> {
        self.0.map(|n| n.get() as usize - 1)
    }

    fn set(&mut self, index: usize) {
        // More than 2^32 - 1 handles of one operation waiting at once would need far
        // more memory than a machine has (a waker each).
        let n = u32::try_from(index + 1).expect("fewer than 2^32 waiting handles");
        self.0 = NonZeroU32::new(n);
    }
}

pub(crate) struct Cell<T> {
    state: Word,
    slot: UnsafeCell<Option<Outcome<T>>>,
    /// Waiter entry 0: the first awaiting handle's waker (see `WAKER`).
    waker: UnsafeCell<Option<Waker>>,
    /// Null until first needed; set once, freed with the cell.
    more: AtomicPtr<More<T>>,
    /// `None` for `State::none()`, which most operations have.
    state_object: Option<Box<State>>,
    /// The operation's record: zero-sized without the `diagnostics` feature.
    tracker: Tracker,
}

/// What most operations never need, allocated when one does.
struct More<T> {
    /// See `CALLBACK`: written by whoever installs the callback while the flag is clear
    /// (once per cell), taken by the completer once it is set. A task's cell keeps its
    /// callback in its header instead (see `task.rs`): `begin` with a callback then
    /// needs no `More`.
    callback: UnsafeCell<Option<Callback<T>>>,
    waiters: Mutex<Waiters>,
}

/// Waiter entries 1, 2, ... and blocked threads.
#[derive(Default)]
struct Waiters {
    /// Entry `n` is `wakers[n - 1]`; `None` is a free entry.
    wakers: Vec<Option<Waker>>,
    parked: Vec<Thread>,
}

static NO_STATE: State = State::none();

impl<T> More<T> {
    fn boxed(callback: Option<Callback<T>>) -> *mut More<T> {
        Box::into_raw(Box::new(More {
            callback: UnsafeCell::new(callback),
            waiters: Mutex::new(Waiters::default()),
        }))
    }

    /// The state behind the lock is consistent at every point where user code could
    /// panic, so a poisoned lock is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Makes a pending operation: its writer and its first handle.
#[inline]
pub(crate) fn new<T>(
    callback: Option<Callback<T>>,
    state: State,
    tracker: Tracker,
) -> (Writer<T>, Shared<T>) {
    let cell = spare::alloc::<Cell<T>>();
    // SAFETY: memory for a `Cell<T>` that nothing else uses.
    unsafe { init(cell.as_ptr(), callback, state, 0, tracker) };
    owners(cell)
}

/// Writes a pending cell's fields into `cell`, with `flags` set in its state word.
///
/// Written field by field into the allocation: `Box::new(Cell { .. })` builds the cell on
/// the stack and copies it, which costs more than the rest of a synchronous completion's
/// bookkeeping.
///
/// # Safety
///
/// `cell` points to memory for a `Cell<T>` that nothing else uses; afterwards it holds an
/// initialised cell owned by one writer and one handle.
#[inline]
unsafe fn init<T>(
    cell: *mut Cell<T>,
    callback: Option<Callback<T>>,
    state: State,
    flags: usize,
    tracker: Tracker,
) {
    let mut flags = flags;
    let more = match callback {
        None => ptr::null_mut(),
        Some(callback) => {
            flags |= CALLBACK;
            More::boxed(Some(callback))
        }
    };
    let state_object = (!state.is_none()).then(|| Box::new(state));
    // SAFETY: by this function's contract; each field is written once, through raw
    // pointers (no reference to the uninitialised cell is made), so that afterwards it
    // is fully initialised.
    unsafe {
        ptr::addr_of_mut!((*cell).state).write(Word::new(flags));
        ptr::addr_of_mut!((*cell).slot).write(UnsafeCell::new(None));
        ptr::addr_of_mut!((*cell).waker).write(UnsafeCell::new(None));
        ptr::addr_of_mut!((*cell).more).write(AtomicPtr::new(more));
        ptr::addr_of_mut!((*cell).state_object).write(state_object);
        ptr::addr_of_mut!((*cell).tracker).write(tracker);
    }
}

/// The writer and the first handle of the cell at `ptr`, just initialised by `init`.
fn owners<T>(ptr: NonNull<Cell<T>>) -> (Writer<T>, Shared<T>) {
    (
        Writer {
            ptr,
            _owns: PhantomData,
        },
        Shared {
            ptr,
            _owns: PhantomData,
        },
    )
}

impl<T> Cell<T> {
    fn load(&self) -> Snapshot {
        self.state.load()
    }

    pub(crate) fn state(&self) -> &State {
        self.state_object.as_deref().unwrap_or(&NO_STATE)
    }

    pub(crate) fn is_completed(&self) -> bool {
        self.load().is_complete()
    }

    pub(crate) fn completed_synchronously(&self) -> bool {
        self.load().has(SYNC)
    }

    fn more(&self) -> Option<&More<T>> {
        // ORDERING: Acquire pairs with the AcqRel install in `more_or_install`.
        let more = self.more.load(Acquire);
        // SAFETY: `more` is null or points to the `More` installed for this cell, which
        // lives until the cell is freed.
        unsafe { more.as_ref() }
    }

    fn more_or_install(&self) -> &More<T> {
        if let Some(more) = self.more() {
            return more;
        }
        let fresh = More::boxed(None);
        // ORDERING: AcqRel: publishes the new `More` on success, acquires the winner's on
        // failure.
        let installed = match self
            .more
            .compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire)
        {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: `fresh` came from `Box::into_raw` above and was never shared.
                drop(unsafe { Box::from_raw(fresh) });
                winner
            }
        };
        // SAFETY: non-null, installed for this cell, freed only with it.
        unsafe { &*installed }
    }

    /// Puts `waker` in an inline waker slot that the caller owns under the rules of
    /// `WAKER` (the caller passes `flag`, `WAKER` or `TASK_WAKER`) and publishes it,
    /// also setting `extra`. Ready if the cell completed first; an equal waker is not
    /// cloned.
    fn register_inline(
        &self,
        slot: &UnsafeCell<Option<Waker>>,
        flag: usize,
        extra: usize,
        waker: &Waker,
    ) -> Poll<()> {
        // Take the slot back from a possible completer first.
        let taken_back = self.state.update(self.load(), |s| {
            (s.has(flag) && !s.is_complete()).then(|| s.without(flag))
        });
        let state = match taken_back {
            Ok(before) => before.without(flag),
            // Complete while the flag was set: the completer owns the slot now.
            Err(now) if now.has(flag) => return Poll::Ready(()),
            Err(now) => now,
        };
        // SAFETY: `flag` is clear and the caller owns the slot's entry: nobody else
        // touches the slot now (a completer takes it only if `flag` was set).
        let old = unsafe {
            access(slot, |slot| match slot {
                Some(current) if current.will_wake(waker) => None,
                _ => slot.replace(waker.clone()),
            })
        };
        let published = self
            .state
            .update(state, |s| (!s.is_complete()).then(|| s.with(flag | extra)));
        if published.is_err() {
            // The completer did not see `flag`: the waker is still ours.
            // SAFETY: as above, `flag` is clear.
            let mine = unsafe { access(slot, Option::take) };
            drop((mine, old));
            return Poll::Ready(());
        }
        drop(old);
        Poll::Pending
    }

    /// Registers `waker` in entry `n > 0` (or a new entry), or sees completion.
    ///
    /// The waker is cloned with no lock held: `Waker::clone` is user code and may call
    /// back into this operation (rule 18).
    fn register_more(&self, state: Snapshot, waker: &Waker, entry: &mut Entry) -> Poll<()> {
        if let Some(index) = entry.get() {
            let Some(waiters) = self.lock_waiters(state) else {
                return Poll::Ready(());
            };
            // An entry keeps its waker until the handle leaves or the cell completes.
            if waiters.wakers[index - 1]
                .as_ref()
                .is_some_and(|current| current.will_wake(waker))
            {
                return Poll::Pending;
            }
        }
        let fresh = waker.clone();
        let Some(mut waiters) = self.lock_waiters(self.load()) else {
            drop(fresh);
            return Poll::Ready(());
        };
        let old = match entry.get() {
            Some(index) => waiters.wakers[index - 1].replace(fresh),
            None => {
                let index = match waiters.wakers.iter().position(Option::is_none) {
                    Some(free) => {
                        waiters.wakers[free] = Some(fresh);
                        free + 1
                    }
                    None => {
                        waiters.wakers.push(Some(fresh));
                        waiters.wakers.len()
                    }
                };
                entry.set(index);
                None
            }
        };
        drop(waiters);
        drop(old);
        Poll::Pending
    }

    /// Locks `More::waiters` to add a waiter, after making sure that the completer will
    /// look there; `None` if the cell completed (nothing to add then).
    fn lock_waiters(&self, state: Snapshot) -> Option<MutexGuard<'_, Waiters>> {
        let more = self.more_or_install();
        // A read-modify-write, ordered against the completing one: either the completer
        // sees `WAITERS` or this sees completion.
        if !state.has(WAITERS) && self.state.set(WAITERS).is_complete() {
            return None;
        }
        let waiters = more.lock();
        // A completer that locked before us drained the list already; its completion
        // is then visible here through the lock.
        (!self.is_completed()).then_some(waiters)
    }

    /// Takes out of a cell that just completed everything to wake and call: its
    /// waiters' wakers, its callback with a new handle for it, and (for the writer, to
    /// drop) the writer's own waker; unparks the blocked threads. `before` is the state
    /// just before the read-modify-write that completed the cell. Runs no user code, so
    /// that the completer can give up its ownership before waking anyone: a task woken
    /// then finds itself the last owner more often, and needs no further update.
    ///
    /// # Safety
    ///
    /// `ptr` is the pointer by which the caller (the completer) owns the cell, and the
    /// caller keeps owning it until this returns.
    unsafe fn collect(ptr: NonNull<Cell<T>>, before: Snapshot, by_writer: bool) -> Wake<T> {
        // SAFETY: the caller owns the cell.
        let this = unsafe { ptr.as_ref() };
        // A flag that was set when the cell completed can no longer be cleared by its
        // owner: the completer (this thread) owns that slot now.
        let first = if before.has(WAKER) {
            // SAFETY: `WAKER` was set, see above.
            unsafe { access(&this.waker, Option::take) }
        } else {
            None
        };
        let task = if before.has(TASK_WAKER) {
            // SAFETY: `TASK_WAKER` was set, see above; only a task's writer sets it, so the
            // cell heads a `TaskCell`, which the caller's ownership keeps alive.
            unsafe { access(task::task_waker_slot(ptr), Option::take) }
        } else {
            None
        };
        let more = this.more();
        let wakers = match more {
            Some(more) if before.has(WAITERS) => {
                let mut waiters = more.lock();
                // Unparked under the lock: a blocked thread that saw the completion on
                // its own locks before it returns (see `park_until`), so no unpark
                // reaches it after it has left.
                for thread in mem::take(&mut waiters.parked) {
                    thread.unpark();
                }
                mem::take(&mut waiters.wakers)
            }
            _ => Vec::new(),
        };
        let callback = if before.has(CALLBACK) {
            // SAFETY: the caller owns the cell by `ptr`; `CALLBACK` was set when the cell
            // completed: the installer is done with the slot, and only the completer
            // takes it.
            unsafe { access(callback_slot(ptr, before), Option::take) }
        } else {
            None
        };
        // SAFETY: the caller owns the cell by `ptr`.
        let callback = callback.map(|callback| (callback, unsafe { Shared::new_from(ptr) }));
        let (task, own) = if by_writer {
            (None, task)
        } else {
            (task, None)
        };
        Wake {
            first,
            task,
            own,
            wakers,
            callback,
        }
    }
}

/// What `Cell::collect` took out of a completed cell: the wake-ups and the callback
/// that its completer owes, to run once the completer has let go of the cell.
pub(crate) struct Wake<T> {
    first: Option<Waker>,
    task: Option<Waker>,
    /// The writer's own waker, when the writer completed: dropped, not woken.
    own: Option<Waker>,
    wakers: Vec<Option<Waker>>,
    callback: Option<(Callback<T>, Shared<T>)>,
}

impl<T> Wake<T> {
    /// Wakes every waiter, then runs the callback. Never unwinds: a panicking waker
    /// (its `wake` or its `drop`) or callback cannot keep the others from running; the
    /// first panic's payload is returned, for the caller to re-raise where someone can
    /// catch it, or to discard (see `crate::unwind`).
    pub(crate) fn run(self) -> Option<Payload> {
        let Wake {
            first,
            task,
            own,
            wakers,
            callback,
        } = self;
        let mut first_panic = None;
        if let Some(own) = own {
            keep_first(&mut first_panic, catch(move || drop(own)));
        }
        if let Some(waker) = first {
            keep_first(&mut first_panic, catch(move || waker.wake()));
        }
        if let Some(waker) = task {
            keep_first(&mut first_panic, catch(move || waker.wake()));
        }
        if !wakers.is_empty() {
            for waker in wakers.into_iter().flatten() {
                keep_first(&mut first_panic, catch(move || waker.wake()));
            }
        }
        if let Some((callback, handle)) = callback {
            handle.tracker.called_back();
            let called = catch(move || callback.call(AsyncResult::from_shared(handle)));
            keep_first(&mut first_panic, called);
        }
        first_panic
    }

    /// [`run`](Self::run), where nobody can catch a panic: it is discarded.
    pub(crate) fn run_quietly(self) {
        if let Some(payload) = self.run() {
            crate::unwind::discard(payload);
        }
    }

    /// Just one waker to wake: the common case of an awaited operation.
    fn one(first: Option<Waker>) -> Self {
        Wake {
            first,
            task: None,
            own: None,
            wakers: Vec::new(),
            callback: None,
        }
    }
}

/// Wakes `waker` where nobody can catch a panic of its `wake`: it is discarded (see
/// `crate::unwind`).
#[inline]
fn quietly_wake(waker: Waker) {
    if let Err(payload) = catch(move || waker.wake()) {
        crate::unwind::discard(payload);
    }
}

/// Keeps the first of several panics; the later ones are dropped.
#[inline]
fn keep_first(first: &mut Option<Payload>, outcome: Result<(), Payload>) {
    if let Err(payload) = outcome {
        match first {
            Some(_) => crate::unwind::discard(payload),
            None => *first = Some(payload),
        }
    }
}

impl<T> Drop for Cell<T> {
    /// Drops what the cell still holds, each part on its own and quietly (an untaken
    /// result, the state, leftover wakers, a callback that never ran), so that a
    /// panicking `Drop` in one neither escapes the owner's `drop` nor keeps the others
    /// from being dropped (rule 17).
    #[inline]
    fn drop(&mut self) {
        // SAFETY: `&mut self`: the last owner is dropping the cell, nobody else can
        // touch any part of it.
        let empty = unsafe { access(&self.slot, |slot| slot.is_none()) }
            // SAFETY: as above.
            && unsafe { access(&self.waker, |waker| waker.is_none()) }
            && self.state_object.is_none()
            // ORDERING: as below.
            && self.more.load(Acquire).is_null();
        if !empty {
            self.drop_leftovers();
        }
    }
}

impl<T> Cell<T> {
    /// `drop`'s work when the cell still holds something.
    #[cold]
    fn drop_leftovers(&mut self) {
        // SAFETY: `&mut self`: the last owner is dropping the cell, nobody else can
        // touch any part of it.
        drop_quietly_if_some(unsafe { access(&self.slot, Option::take) });
        // SAFETY: as above.
        drop_quietly_if_some(unsafe { access(&self.waker, Option::take) });
        drop_quietly_if_some(self.state_object.take());
        // ORDERING: the last owner acquired every other owner's writes when it found it
        // was the last; Acquire is for loom, which checks that.
        let more = self.more.load(Acquire);
        if !more.is_null() {
            // SAFETY: installed with `Box::into_raw` for this cell, freed only here.
            let more = unsafe { Box::from_raw(more) };
            // SAFETY: as above, nobody else can touch the cell.
            drop_quietly_if_some(unsafe { access(&more.callback, Option::take) });
            // Taken out first: no user code runs under the lock (rule 18).
            let wakers = mem::take(&mut more.lock().wakers);
            drop_quietly(wakers);
        }
    }
}

/// Runs `f` on the contents of one of the cell's `UnsafeCell`s.
///
/// # Safety
///
/// The state word's protocol gives the caller exclusive access to that `UnsafeCell` for
/// the call (each caller says why).
unsafe fn access<U, R>(cell: &UnsafeCell<U>, f: impl FnOnce(&mut U) -> R) -> R {
    // SAFETY: exclusive access, by this function's contract.
    cell.with_mut(|contents| f(unsafe { &mut *contents }))
}

/// The slot of the cell's callback: in the header of a task's cell, else in `More`
/// (which must be there: `CALLBACK` was set).
/// `state` is any reading of the cell's word (`TASK` never changes).
///
/// # Safety
///
/// The caller owns the cell by `ptr` for as long as it uses the slot.
unsafe fn callback_slot<'a, T: 'a>(
    ptr: NonNull<Cell<T>>,
    state: Snapshot,
) -> &'a UnsafeCell<Option<Callback<T>>> {
    // SAFETY: the caller owns the cell.
    let cell = unsafe { ptr.as_ref() };
    if state.has(TASK) {
        // SAFETY: `TASK` is set only on a cell made by `new_task`, at the head of its
        // `TaskCell`; the caller's ownership keeps it alive.
        return unsafe { task::callback_slot(ptr) };
    }
    &cell
        .more()
        .expect("a cell with CALLBACK has `More`")
        .callback
}

/// Frees the cell: a plain one as the `Box<Cell<T>>` it was made as, a task's through
/// its header (see `task.rs`).
///
/// # Safety
///
/// The caller was its last owner, has acquired every other owner's writes, and does not
/// touch the cell again.
unsafe fn free<T>(ptr: NonNull<Cell<T>>) {
    // SAFETY: the caller is the last owner, so the cell is alive and nobody writes it.
    let cell = unsafe { ptr.as_ref() };
    if cell.load().has(TASK) {
        // SAFETY: `TASK` is set only on a cell made by `new_task`, at the head of its
        // `TaskCell`, whose header holds `free`; the caller's guarantee passes on.
        unsafe { task::free(ptr) }
    } else {
        // SAFETY: made by `new` with `spare::alloc`; the caller guarantees exclusive
        // access. `Cell`'s `Drop` drops the contents quietly, so this does not unwind;
        // then the memory is given back, holding nothing.
        unsafe {
            ptr::drop_in_place(ptr.as_ptr());
            spare::free(ptr);
        }
    }
}
