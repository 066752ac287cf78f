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
//! - Lock-free on the paths every operation takes: one atomic word (`state`) holds the
//!   completion, the waiter flags and the owner counts; the result and the first
//!   waiter's waker sit in `UnsafeCell`s whose ownership the state word hands over (see
//!   the flag constants). An uncontended synchronous completion costs one
//!   compare-and-swap; a handle that sees it is the last owner takes the result and
//!   frees the cell without any further read-modify-write. A completer takes the
//!   wakers and the callback out and gives up its ownership before it wakes anyone, so
//!   that the woken task usually finds itself the last owner.
//! - What most operations never need lives in `More`, allocated on first need: the
//!   callback and the waker of a running `begin` task (`UnsafeCell`s handed over by the
//!   `CALLBACK` and `TASK_WAKER` flags, so still lock-free) and, behind a mutex, every
//!   waiting handle but the first and the threads blocked in `end` or `wait`. The
//!   completer takes that mutex only when the `WAITERS` flag says somebody used it.
//! - The cell is small on purpose: 56 bytes for a `u64` result, counts included (a
//!   64-byte block from the allocator).
//! - Every atomic, `UnsafeCell`, lock and park comes from [`crate::sync`], so that the
//!   loom models in `tests/loom.rs` explore this code's interleavings and check each
//!   `UnsafeCell` access for data races; Miri checks the pointer handling.

// The protocol's invariants and the `unsafe` they justify are written at each use.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::mem::{self, ManuallyDrop, MaybeUninit};
use std::num::NonZeroU32;
use std::ops::Deref;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::sync::{
    self, AtomicPtr, AtomicUsize, Mutex, MutexGuard,
    Ordering::{AcqRel, Acquire, Relaxed},
    PoisonError, Thread, UnsafeCell,
};
use crate::{AsyncResult, Error, State};

/// The boxed callback stored in a cell, run once with a clone of the handle.
pub(crate) type Callback<T> = Box<dyn FnOnce(AsyncResult<T>) + Send>;

/// What the writer stores. Errors are boxed (the cold path), so that the slot stays as
/// small as `T` plus a word; `Abandoned`, what every dropped `Completer` stores, needs
/// no allocation.
enum Outcome<T> {
    Value(T),
    Abandoned,
    Failed(Box<Error>),
}

impl<T> Outcome<T> {
    fn new(result: Result<T, Error>) -> Self {
        match result {
            Ok(value) => Outcome::Value(value),
            Err(Error::Abandoned) => Outcome::Abandoned,
            Err(error) => Outcome::Failed(Box::new(error)),
        }
    }

    fn into_result(self) -> Result<T, Error> {
        match self {
            Outcome::Value(value) => Ok(value),
            Outcome::Abandoned => Err(Error::Abandoned),
            Outcome::Failed(error) => Err(*error),
        }
    }
}

// The state word. Flags in the low bits, the number of handles above them.

/// The writer stored its outcome in `slot`. Set once, only by the writer, only while
/// `CANCELLED` is clear; from then on a handle that sets `TAKEN` owns the slot.
const VALUE: usize = 1;
/// A handle cancelled before the writer stored anything: the result is
/// `Err(Cancelled)` and `slot` stays the writer's (it takes back what it stores).
const CANCELLED: usize = 1 << 1;
/// Either of the two: the cell is complete.
const COMPLETE: usize = VALUE | CANCELLED;
/// The result was taken; later takes get `AlreadyEnded`.
const TAKEN: usize = 1 << 2;
/// The writer completed on the thread that began the operation, inside Begin.
const SYNC: usize = 1 << 3;
/// `waker` holds the waker of the handle that owns entry 0. While set and the cell is
/// pending, the completer may take the waker at any moment, so the owner must clear
/// the flag (which fails once complete) before it touches `waker`; while clear, the
/// owner alone touches it. Whoever completes the cell takes the waker if the flag was
/// set at that moment.
const WAKER: usize = 1 << 4;
/// Entry 0 (`waker`) belongs to a handle.
const ENTRY0: usize = 1 << 5;
/// `More::task_waker` holds the writer's own waker (a running `begin` task waiting to
/// learn of a cancel), under the same rules as `WAKER`, with the writer as owner.
const TASK_WAKER: usize = 1 << 6;
/// `More::waiters` may hold wakers or parked threads: the completer must lock it.
const WAITERS: usize = 1 << 7;
/// `More::callback` holds the callback: whoever completes the cell takes it.
const CALLBACK: usize = 1 << 8;
/// The writer still owns the cell.
const WRITER: usize = 1 << 9;
/// One handle. The count of handles takes every bit from here up.
const REF: usize = 1 << 10;

/// The number of handles counted in `state`.
#[inline]
const fn handles(state: usize) -> usize {
    state / REF
}

/// Whether `state`, as seen by a handle, says that this handle is the cell's only
/// owner: no other handle, no writer. Only the owner itself could create another (by
/// cloning), so once true it stays true for as long as that owner does not clone.
#[inline]
const fn is_sole(state: usize) -> bool {
    handles(state) == 1 && state & WRITER == 0
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
    state: AtomicUsize,
    slot: UnsafeCell<Option<Outcome<T>>>,
    /// Waiter entry 0: the first awaiting handle's waker (see `WAKER`).
    waker: UnsafeCell<Option<Waker>>,
    /// Null until first needed; set once, freed with the cell.
    more: AtomicPtr<More<T>>,
    /// `None` for `State::none()`, which most operations have.
    state_object: Option<Box<State>>,
}

/// What most operations never need, allocated when one does.
struct More<T> {
    /// See `CALLBACK`: written by whoever installs the callback while the flag is clear
    /// (once per cell), taken by the completer once it is set.
    callback: UnsafeCell<Option<Callback<T>>>,
    /// The writer's waker (see `TASK_WAKER`).
    task_waker: UnsafeCell<Option<Waker>>,
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
            task_waker: UnsafeCell::new(None),
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
pub(crate) fn new<T>(callback: Option<Callback<T>>, state: State) -> (Writer<T>, Shared<T>) {
    let mut bits = WRITER | REF;
    let more = match callback {
        None => ptr::null_mut(),
        Some(callback) => {
            bits |= CALLBACK;
            More::boxed(Some(callback))
        }
    };
    let state_object = (!state.is_none()).then(|| Box::new(state));
    // Written field by field into the allocation: `Box::new(Cell { .. })` builds the cell
    // on the stack and copies it, which costs more than the rest of a synchronous
    // completion's bookkeeping.
    let cell = Box::into_raw(Box::new(MaybeUninit::<Cell<T>>::uninit())).cast::<Cell<T>>();
    // SAFETY: `cell` is a fresh allocation for a `Cell<T>`; each field is written once,
    // through raw pointers (no reference to the uninitialised cell is made), so that
    // afterwards it is fully initialised.
    unsafe {
        ptr::addr_of_mut!((*cell).state).write(AtomicUsize::new(bits));
        ptr::addr_of_mut!((*cell).slot).write(UnsafeCell::new(None));
        ptr::addr_of_mut!((*cell).waker).write(UnsafeCell::new(None));
        ptr::addr_of_mut!((*cell).more).write(AtomicPtr::new(more));
        ptr::addr_of_mut!((*cell).state_object).write(state_object);
    }
    let ptr = NonNull::new(cell).expect("`Box::into_raw` is never null");
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
    fn load(&self) -> usize {
        // ORDERING: Acquire pairs with the AcqRel read-modify-writes that publish the
        // slots: a reader that sees a flag sees what was written before it was set.
        self.state.load(Acquire)
    }

    pub(crate) fn state(&self) -> &State {
        self.state_object.as_deref().unwrap_or(&NO_STATE)
    }

    pub(crate) fn is_completed(&self) -> bool {
        self.load() & COMPLETE != 0
    }

    pub(crate) fn completed_synchronously(&self) -> bool {
        self.load() & SYNC != 0
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
        let mut state = self.load();
        // Take the slot back from a possible completer first.
        while state & flag != 0 {
            if state & COMPLETE != 0 {
                return Poll::Ready(());
            }
            match cas(&self.state, state, state & !flag) {
                Ok(_) => state &= !flag,
                Err(actual) => state = actual,
            }
        }
        // SAFETY: `flag` is clear and the caller owns the slot's entry: nobody else
        // touches the slot now (a completer takes it only if `flag` was set).
        let old = unsafe {
            access(slot, |slot| match slot {
                Some(current) if current.will_wake(waker) => None,
                _ => slot.replace(waker.clone()),
            })
        };
        loop {
            if state & COMPLETE != 0 {
                // The completer did not see `flag`: the waker is still ours.
                // SAFETY: as above, `flag` is clear.
                let mine = unsafe { access(slot, Option::take) };
                drop((mine, old));
                return Poll::Ready(());
            }
            match cas(&self.state, state, state | flag | extra) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        drop(old);
        Poll::Pending
    }

    /// Registers `waker` in entry `n > 0` (or a new entry), or sees completion.
    fn register_more(&self, state: usize, waker: &Waker, entry: &mut Entry) -> Poll<()> {
        let Some(mut waiters) = self.lock_waiters(state) else {
            return Poll::Ready(());
        };
        let index = match entry.get() {
            Some(index) => index,
            None => {
                let index = match waiters.wakers.iter().position(Option::is_none) {
                    Some(free) => free + 1,
                    None => {
                        waiters.wakers.push(None);
                        waiters.wakers.len()
                    }
                };
                entry.set(index);
                index
            }
        };
        let slot = &mut waiters.wakers[index - 1];
        let old = match slot {
            Some(current) if current.will_wake(waker) => None,
            _ => slot.replace(waker.clone()),
        };
        drop(waiters);
        drop(old);
        Poll::Pending
    }

    /// Locks `More::waiters` to add a waiter, after making sure that the completer will
    /// look there; `None` if the cell completed (nothing to add then).
    fn lock_waiters(&self, state: usize) -> Option<MutexGuard<'_, Waiters>> {
        let more = self.more_or_install();
        if state & WAITERS == 0 {
            // ORDERING: AcqRel, and a read-modify-write: ordered against the completing
            // one, so either the completer sees `WAITERS` or this sees completion.
            let before = self.state.fetch_or(WAITERS, AcqRel);
            if before & COMPLETE != 0 {
                return None;
            }
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
    unsafe fn collect(ptr: NonNull<Cell<T>>, before: usize, by_writer: bool) -> Wake<T> {
        // SAFETY: the caller owns the cell.
        let this = unsafe { ptr.as_ref() };
        // A flag that was set when the cell completed can no longer be cleared by its
        // owner: the completer (this thread) owns that slot now.
        let first = if before & WAKER != 0 {
            // SAFETY: `WAKER` was set, see above.
            unsafe { access(&this.waker, Option::take) }
        } else {
            None
        };
        let more = this.more();
        let task = match more {
            // SAFETY: `TASK_WAKER` was set, see above.
            Some(more) if before & TASK_WAKER != 0 => unsafe {
                access(&more.task_waker, Option::take)
            },
            _ => None,
        };
        let wakers = match more {
            Some(more) if before & WAITERS != 0 => {
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
        let callback = match more {
            // SAFETY: `CALLBACK` was set when the cell completed: the installer is done
            // with the slot, and only the completer takes it.
            Some(more) if before & CALLBACK != 0 => unsafe { access(&more.callback, Option::take) },
            _ => None,
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

/// What `Cell::collect` took out of a completed cell.
struct Wake<T> {
    first: Option<Waker>,
    task: Option<Waker>,
    /// The writer's own waker, when the writer completed: dropped, not woken.
    own: Option<Waker>,
    wakers: Vec<Option<Waker>>,
    callback: Option<(Callback<T>, Shared<T>)>,
}

impl<T> Wake<T> {
    /// Wakes every waiter, then runs the callback.
    ///
    /// A panicking waker is re-raised only after every other waiter was woken and the
    /// callback ran; a panicking callback propagates (the result is stored by then).
    fn run(self) {
        let Wake {
            first,
            task,
            own,
            wakers,
            callback,
        } = self;
        drop(own);
        let mut waker_panic = None;
        for waker in first
            .into_iter()
            .chain(task)
            .chain(wakers.into_iter().flatten())
        {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                waker_panic.get_or_insert(payload);
            }
        }
        if let Some((callback, handle)) = callback {
            callback(AsyncResult::from_shared(handle));
        }
        if let Some(payload) = waker_panic {
            resume_unwind(payload);
        }
    }
}

impl<T> Drop for Cell<T> {
    fn drop(&mut self) {
        // ORDERING: the last owner acquired every other owner's writes when it found it
        // was the last; Acquire is for loom, which checks that.
        let more = self.more.load(Acquire);
        if !more.is_null() {
            // SAFETY: installed with `Box::into_raw` for this cell, freed only here.
            drop(unsafe { Box::from_raw(more) });
        }
    }
}

/// One compare-and-swap step of a read-modify-write loop on the state word.
///
/// It takes the atomic alone, not `&Cell`: an update that gives up ownership lets
/// another thread free the cell at once, while this call is still running, and a
/// reference to the whole cell must not outlive the cell even then.
#[inline]
fn cas(state: &AtomicUsize, current: usize, new: usize) -> Result<usize, usize> {
    // ORDERING: AcqRel: a successful update both publishes this thread's writes to the
    // slots it hands over and acquires the slots handed to it; the failure ordering
    // matters only for the value read, which the loop re-examines.
    state.compare_exchange_weak(current, new, AcqRel, Acquire)
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

/// Frees the cell.
///
/// # Safety
///
/// The caller was its last owner, has acquired every other owner's writes, and does not
/// touch the cell again.
unsafe fn free<T>(ptr: NonNull<Cell<T>>) {
    // SAFETY: allocated with `Box` in `new`; the caller guarantees exclusive access.
    drop(unsafe { Box::from_raw(ptr.as_ptr()) });
}

/// The writer's ownership of a cell. Dropping it unfinished completes the cell with
/// [`Error::Abandoned`].
pub(crate) struct Writer<T> {
    ptr: NonNull<Cell<T>>,
    _owns: PhantomData<Box<Cell<T>>>,
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

impl<T> Writer<T> {
    /// Stores the result unless a handle cancelled first (then the result comes back),
    /// wakes every waiter and runs the callback.
    pub(crate) fn complete(
        self,
        result: Result<T, Error>,
        synchronous: bool,
    ) -> Result<(), Result<T, Error>> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again.
        unsafe { this.finish(result, synchronous) }
    }

    /// Ready once a handle cancelled the cell; otherwise registers the writer's waker
    /// to be woken by a cancel.
    pub(crate) fn poll_cancelled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_completed() {
            return Poll::Ready(());
        }
        let more = self.more_or_install();
        self.register_inline(&more.task_waker, TASK_WAKER, 0, cx.waker())
    }

    /// Completes the cell, then gives up the writer's ownership.
    ///
    /// # Safety
    ///
    /// Called once; the writer is not used or dropped afterwards.
    #[inline]
    unsafe fn finish(
        &mut self,
        result: Result<T, Error>,
        synchronous: bool,
    ) -> Result<(), Result<T, Error>> {
        let ptr = self.ptr;
        // SAFETY: the writer owns the cell until `release_writer` below.
        let cell = unsafe { ptr.as_ref() };
        let state = cell.load();
        if state & COMPLETE != 0 {
            // SAFETY: the writer owns its reference and gives it up here.
            unsafe { release_writer(ptr) };
            return Err(result);
        }
        // SAFETY: only the writer writes the slot, and nobody reads it before `VALUE`,
        // which only the writer sets, below.
        unsafe { access(&cell.slot, |slot| *slot = Some(Outcome::new(result))) };
        let set = VALUE | if synchronous { SYNC } else { 0 };
        // The common case, inline: nobody to wake, no callback, a handle left to take the
        // result. Publishing it also gives up the writer's ownership.
        if state & (WAKER | TASK_WAKER | WAITERS | CALLBACK) == 0
            && handles(state) != 0
            // ORDERING: as in `cas`.
            && cell
                .state
                .compare_exchange(state, (state | set) & !WRITER, AcqRel, Acquire)
                .is_ok()
        {
            return Ok(());
        }
        // SAFETY: the writer's ownership passes to `publish`.
        unsafe { Self::publish(ptr, set) }
    }

    /// The rest of `finish` once the outcome is in the slot: publishes it unless a
    /// handle cancelled meanwhile, wakes the waiters, runs the callback and gives up the
    /// writer's ownership.
    ///
    /// # Safety
    ///
    /// The caller holds the writer's ownership, by `ptr`, and gives it up.
    #[inline(never)]
    unsafe fn publish(ptr: NonNull<Cell<T>>, set: usize) -> Result<(), Result<T, Error>> {
        // SAFETY: the writer owns the cell until `release_writer` or `free` below.
        let cell = unsafe { ptr.as_ref() };
        let mut state = cell.load();
        let mut released;
        loop {
            if state & COMPLETE != 0 {
                // SAFETY: cancelled meanwhile: `VALUE` was never set, so no handle reads
                // the slot, and the writer takes back what it stored.
                let back = unsafe { access(&cell.slot, Option::take) };
                // SAFETY: the writer owns its reference and gives it up here.
                unsafe { release_writer(ptr) };
                let back = back.expect("the writer stored its outcome just above");
                return Err(back.into_result());
            }
            // Nobody to wake and no callback: give up the writer's ownership in the same
            // update.
            released = state & (WAKER | TASK_WAKER | WAITERS | CALLBACK) == 0;
            let new = if released {
                (state | set) & !WRITER
            } else {
                state | set
            };
            match cas(&cell.state, state, new) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        if released {
            if handles(state) == 0 {
                // SAFETY: no handle and the writer gone: this thread was the last owner,
                // and its AcqRel update acquired the others' writes.
                unsafe { free(ptr) };
            }
            return Ok(());
        }
        if state & (TASK_WAKER | WAITERS | CALLBACK) == 0 {
            // The common case of an awaited operation: one waker, no callback.
            // SAFETY: `WAKER` was set when the cell completed: the completer owns it.
            let waker = unsafe { access(&cell.waker, Option::take) };
            // SAFETY: the writer's last use of the cell.
            unsafe { release_writer(ptr) };
            if let Some(waker) = waker {
                waker.wake();
            }
            return Ok(());
        }
        // SAFETY: the writer owns the cell by `ptr` until it gives that up just below.
        let wake = unsafe { Cell::collect(ptr, state, true) };
        // SAFETY: the writer's last use of the cell: `wake` does not need it.
        unsafe { release_writer(ptr) };
        wake.run();
        Ok(())
    }
}

impl<T> Drop for Writer<T> {
    fn drop(&mut self) {
        // Refused, harmlessly, when the cell was cancelled.
        // SAFETY: this is the writer's last use.
        let _ = unsafe { self.finish(Err(Error::Abandoned), false) };
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
    // ORDERING: AcqRel: releases this writer's accesses to whoever frees the cell, and
    // acquires the handles' if that is this thread.
    let before = cell.state.fetch_sub(WRITER, AcqRel);
    if handles(before) == 0 {
        // SAFETY: the writer was the last owner.
        unsafe { free(ptr) };
    }
}

/// A handle's ownership of a cell: the inside of an [`AsyncResult`].
pub(crate) struct Shared<T> {
    ptr: NonNull<Cell<T>>,
    _owns: PhantomData<Box<Cell<T>>>,
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
        if is_sole(self.load()) {
            // SAFETY: the only owner (the Acquire load saw every other owner leave).
            unsafe { free(self.ptr) };
            return;
        }
        // ORDERING: AcqRel, as for the writer's release.
        let before = self.state.fetch_sub(REF, AcqRel);
        if is_sole(before) {
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
    unsafe fn new_from(ptr: NonNull<Cell<T>>) -> Self {
        // SAFETY: the caller owns the cell.
        let cell = unsafe { ptr.as_ref() };
        // ORDERING: Relaxed, as for `Arc::clone`: the caller's ownership keeps the cell
        // alive, and handing the new handle to another thread synchronises by itself.
        let before = cell.state.fetch_add(REF, Relaxed);
        if handles(before) >= handles(usize::MAX) / 2 {
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
    fn take(&mut self, state: usize) -> Result<T, Error> {
        let state = if is_sole(state) {
            if state & TAKEN != 0 {
                return Err(Error::AlreadyEnded);
            }
            // ORDERING: nobody else can update the word (no other owner, see `is_sole`,
            // and this handle is borrowed mutably), so a plain store does; a later clone
            // publishes it with its own update.
            self.state.store(state | TAKEN, Relaxed);
            state
        } else {
            // ORDERING: AcqRel: exactly one handle sees `TAKEN` clear, and it acquires
            // the writer's slot.
            let before = self.state.fetch_or(TAKEN, AcqRel);
            if before & TAKEN != 0 {
                return Err(Error::AlreadyEnded);
            }
            before
        };
        if state & VALUE == 0 {
            return Err(Error::Cancelled);
        }
        // SAFETY: `VALUE` is set (the writer is done with the slot) and this handle set
        // `TAKEN`: nobody else reads the slot.
        let outcome = unsafe { access(&self.slot, Option::take) };
        outcome
            .expect("a complete cell with VALUE holds an outcome")
            .into_result()
    }

    /// Takes the result if there is one, without blocking.
    pub(crate) fn try_take(&mut self) -> Option<Result<T, Error>> {
        let state = self.load();
        (state & COMPLETE != 0).then(|| self.take(state))
    }

    /// Takes the result, or registers `cx`'s waker in the caller's waker entry.
    pub(crate) fn poll_take(
        &mut self,
        cx: &mut Context<'_>,
        entry: &mut Entry,
    ) -> Poll<Result<T, Error>> {
        let state = self.load();
        if state & COMPLETE != 0 {
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
        if state & COMPLETE != 0 {
            return Poll::Ready(());
        }
        self.register(state, cx.waker(), entry)
    }

    /// Registers `waker` in the caller's waker entry (taking one on first use) while the
    /// cell is pending (as `state` last said); Ready if it completed meanwhile.
    fn register(&self, state: usize, waker: &Waker, entry: &mut Entry) -> Poll<()> {
        match entry.get() {
            Some(0) => self.register_inline(&self.waker, WAKER, 0, waker),
            Some(_) => self.register_more(state, waker, entry),
            None if state & ENTRY0 != 0 => self.register_more(state, waker, entry),
            // The only handle: no other can compete for entry 0 (only this one could make
            // another, by cloning), and the writer never uses it, so claiming the entry
            // and publishing the waker is one update.
            // The entry is recorded only once the waker is in place: if cloning it
            // panics, `ENTRY0` stays clear and the entry free.
            None if handles(state) == 1 => {
                let registered = self.register_inline(&self.waker, WAKER, ENTRY0, waker);
                entry.set(0);
                registered
            }
            None => self.claim_entry0(state, waker, entry),
        }
    }

    /// Claims entry 0 for this handle if it is free, else registers in `More`.
    fn claim_entry0(&self, mut state: usize, waker: &Waker, entry: &mut Entry) -> Poll<()> {
        loop {
            if state & COMPLETE != 0 {
                return Poll::Ready(());
            }
            if state & ENTRY0 != 0 {
                return self.register_more(state, waker, entry);
            }
            match cas(&self.state, state, state | ENTRY0) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
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
            drop(old);
            return;
        }
        let mut state = self.load();
        loop {
            if state & COMPLETE != 0 {
                // The completer took the waker, or it stays until the cell is freed.
                return;
            }
            if state & WAKER == 0 {
                break;
            }
            match cas(&self.state, state, state & !WAKER) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        // SAFETY: `WAKER` is clear and this handle owns entry 0.
        let old = unsafe { access(&self.waker, Option::take) };
        // ORDERING: AcqRel: hands the (now empty) slot to the next handle that claims
        // entry 0.
        self.state.fetch_and(!ENTRY0, AcqRel);
        drop(old);
    }

    /// Asks the operation to stop: completes the cell with `Cancelled` unless it is
    /// complete already.
    pub(crate) fn cancel(&self) {
        let mut state = self.load();
        loop {
            if state & COMPLETE != 0 {
                return;
            }
            match cas(&self.state, state, state | CANCELLED) {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        // SAFETY: this handle owns the cell by `self.ptr` until this returns.
        unsafe { Cell::collect(self.ptr, state, false) }.run();
    }

    /// Installs the completion callback, or hands it back if the cell already completed
    /// (the caller then runs it itself). Called at most once per cell, on a cell made
    /// without a callback.
    pub(crate) fn set_callback(&self, callback: Callback<T>) -> Result<(), Callback<T>> {
        let more = self.more_or_install();
        let mut state = self.load();
        debug_assert_eq!(state & CALLBACK, 0, "a second callback");
        if state & COMPLETE != 0 {
            return Err(callback);
        }
        // SAFETY: `CALLBACK` is clear and this is the cell's only installer.
        unsafe { access(&more.callback, |slot| *slot = Some(callback)) };
        loop {
            if state & COMPLETE != 0 {
                // SAFETY: still clear: the completer did not take it.
                let back = unsafe { access(&more.callback, Option::take) };
                return Err(back.expect("installed just above"));
            }
            match cas(&self.state, state, state | CALLBACK) {
                Ok(_) => return Ok(()),
                Err(actual) => state = actual,
            }
        }
    }

    /// Blocks the current thread until the cell completes or `deadline` passes; returns
    /// whether it completed.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let started = Instant::now();
        if sync::spin_until(|| self.is_completed()) {
            return true;
        }
        let completed = self.park_until(deadline);
        sync::record_wait(started.elapsed());
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

    /// The layout budget: the issue allows 64 bytes of overhead per pending operation
    /// beyond a `u64` result; the cell takes 48, the owner counts included (they live in
    /// the state word), so that with the allocator's header it fills one 64-byte block.
    #[test]
    fn cell_stays_within_its_size_budget() {
        let overhead = std::mem::size_of::<Cell<u64>>() - std::mem::size_of::<u64>();
        assert!(overhead <= 48, "{overhead} bytes");
    }

    #[test]
    fn first_completion_wins_and_result_is_taken_once() {
        let (writer, mut handle) = new::<u8>(None, State::none());
        assert!(!handle.is_completed());
        let mut other = handle.clone();
        handle.cancel();
        assert_eq!(writer.complete(Ok(2), false), Err(Ok(2)));
        assert!(handle.is_completed() && !handle.completed_synchronously());
        assert_eq!(other.try_take(), Some(Err(Error::Cancelled)));
        assert_eq!(handle.try_take(), Some(Err(Error::AlreadyEnded)));

        let (writer, mut handle) = new::<u8>(None, State::none());
        assert_eq!(writer.complete(Ok(1), true), Ok(()));
        handle.cancel();
        assert!(handle.completed_synchronously());
        assert_eq!(handle.try_take(), Some(Ok(1)));
        assert_eq!(handle.try_take(), Some(Err(Error::AlreadyEnded)));
    }

    #[test]
    fn each_entry_keeps_only_its_latest_waker() {
        let (writer, mut handle) = new::<u8>(None, State::none());
        let other_handle = handle.clone();
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        let (other, other_waker) = counting_waker();
        let (mut entry, mut other_entry) = (Entry::default(), Entry::default());
        let mut cx = Context::from_waker(&first_waker);
        assert!(handle.poll_take(&mut cx, &mut entry).is_pending());
        let mut cx = Context::from_waker(&second_waker);
        assert!(handle.poll_take(&mut cx, &mut entry).is_pending());
        let mut cx = Context::from_waker(&other_waker);
        assert!(other_handle
            .poll_completed(&mut cx, &mut other_entry)
            .is_pending());
        assert_eq!((entry.get(), other_entry.get()), (Some(0), Some(1)));
        assert_eq!(writer.complete(Ok(3), false), Ok(()));
        let wakes = |c: &CountWakes| c.0.load(SeqCst);
        assert_eq!((wakes(&first), wakes(&second), wakes(&other)), (0, 1, 1));
        let mut cx = Context::from_waker(&second_waker);
        assert_eq!(handle.poll_take(&mut cx, &mut entry), Poll::Ready(Ok(3)));
    }

    #[test]
    fn released_entries_are_reused_and_not_woken() {
        let (writer, handle) = new::<u8>(None, State::none());
        let second = handle.clone();
        let (gone, gone_waker) = counting_waker();
        let mut cx = Context::from_waker(&gone_waker);
        let (mut entry, mut second_entry) = (Entry::default(), Entry::default());
        assert!(handle.poll_completed(&mut cx, &mut entry).is_pending());
        assert!(second
            .poll_completed(&mut cx, &mut second_entry)
            .is_pending());
        handle.release_entry(entry.get().unwrap());
        second.release_entry(second_entry.get().unwrap());
        let (_, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut next, mut second_next) = (Entry::default(), Entry::default());
        assert!(second.poll_completed(&mut cx, &mut next).is_pending());
        assert!(handle
            .poll_completed(&mut cx, &mut second_next)
            .is_pending());
        assert_eq!((next, second_next), (entry, second_entry));
        writer.complete(Err(Error::Cancelled), false).unwrap();
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
        let (writer, handle) = new(Some(callback), State::none());
        writer.complete(Ok(4), false).unwrap();
        handle.cancel();
        assert_eq!(calls.load(SeqCst), 1);

        let (writer, handle) = new(None, State::none());
        writer.complete(Ok(5), false).unwrap();
        let late: Callback<u8> = Box::new(|_| unreachable!("installed after completion"));
        assert!(handle.set_callback(late).is_err());
    }

    #[test]
    fn the_last_owner_frees_an_untaken_result() {
        let drops = std::sync::Arc::new(AtomicUsize::new(0));
        struct Counted(std::sync::Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, SeqCst);
            }
        }
        // Handles gone first, then the writer stores: the value is dropped at once.
        let (writer, handle) = new(None, State::none());
        drop(handle);
        assert!(writer
            .complete(Ok(Counted(std::sync::Arc::clone(&drops))), false)
            .is_ok());
        assert_eq!(drops.load(SeqCst), 1);
        // Writer first, then the last of two handles.
        let (writer, handle) = new(None, State::none());
        let clone = handle.clone();
        assert!(writer
            .complete(Ok(Counted(std::sync::Arc::clone(&drops))), false)
            .is_ok());
        drop(handle);
        assert_eq!(drops.load(SeqCst), 1);
        drop(clone);
        assert_eq!(drops.load(SeqCst), 2);
    }

    #[test]
    fn timed_wait_times_out_then_sees_completion() {
        let (writer, handle) = new::<u8>(None, State::none());
        assert!(!handle.wait_until(Some(Instant::now() + Duration::from_millis(1))));
        let thread = std::thread::spawn(move || writer.complete(Ok(6), false));
        assert!(handle.wait_until(None));
        thread.join().unwrap().unwrap();
        assert!(handle.wait_until(Some(Instant::now())));
    }
}
