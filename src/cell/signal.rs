//! The one-shot signal between a [`from_apm`](fn@crate::from_apm) future and the
//! [`ApmCallback`](crate::ApmCallback) it gives to Begin.
//!
//! `from_apm` needs much less than a [`Completer`](crate::Completer): no value (End
//! reads the legacy handle), no state, no callback, no second handle, nobody blocked.
//! So the callback's side gets this signal of its own, in the shape of a oneshot
//! channel of `bool`: one state word, the future's waker, and the End to run if the
//! future is dropped first. A Begin that calls back inside Begin costs one
//! compare-and-swap, and the future then frees the allocation without another one.
//!
//! The state word's flags (the future is the receiver, the callback the sender):
//!
//! | flag | set by | cleared by | hands over |
//! |---|---|---|---|
//! | `WAKER` | receiver, after writing `waker` | receiver, to look at, replace or drop it | `waker`: the sender takes and wakes it if its `DONE` found `WAKER` set |
//! | `DONE` (with `CALLED` if called) | sender, once (called or dropped) | never | the outcome; after it the receiver never writes `waker` |
//! | `CLOSED` | receiver leaving before `DONE`, with `RX` cleared | never | `finish` and the allocation, to the sender |
//! | `TX` | (initially) | sender, when it leaves: in its `DONE` if `WAKER` was clear, after taking the waker otherwise | |
//! | `RX` | (initially) | receiver, when it leaves | |
//!
//! Whoever clears the last of `TX` and `RX`, or finds the other already cleared,
//! frees the allocation; the sender also frees it when it finds `CLOSED`.
//!
//! Every access to the state word is `AcqRel` (read-modify-write) or `Acquire` (load):
//! each side publishes what it wrote in a slot (the waker, `finish`) or elsewhere
//! before it hands over (the legacy side's writes to the handle before it calls back)
//! with its read-modify-write, and reads what the other side handed over after its
//! load or read-modify-write.

// The protocol's invariants and the `unsafe` they justify are written at each use.
#![allow(unsafe_code)]

use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::task::{Context, Poll, Waker};

use super::spare;
use crate::sync::{AtomicUsize, Ordering, UnsafeCell};
use crate::unwind::{drop_quietly_if_some, quietly};

/// What the receiver leaves for the sender when it leaves first: End with its handle.
/// Run if the callback is called, dropped if it is dropped uncalled.
pub(crate) type Finish = Box<dyn FnOnce() + Send>;

const WAKER: usize = 1 << 0;
const DONE: usize = 1 << 1;
const CALLED: usize = 1 << 2;
const CLOSED: usize = 1 << 3;
const TX: usize = 1 << 4;
const RX: usize = 1 << 5;

struct Inner {
    state: AtomicUsize,
    /// The receiver's waker: the receiver's while `WAKER` is clear and `DONE` is not
    /// set; taken by the sender when its `DONE` found `WAKER` set.
    waker: UnsafeCell<Option<Waker>>,
    /// Written by the receiver before `CLOSED`; taken by the sender after it.
    finish: UnsafeCell<Option<Finish>>,
}

/// The callback's side: completes the signal once, by [`call`](Sender::call) or by
/// being dropped.
pub(crate) struct Sender {
    inner: NonNull<Inner>,
}

/// The future's side.
pub(crate) struct Receiver {
    inner: NonNull<Inner>,
}

// SAFETY: the two sides share the allocation through the protocol above, which orders
// every access to its slots; what they hold (`Waker`, `Finish`) is `Send`, and neither
// side gives out a reference to it.
unsafe impl Send for Sender {}
// SAFETY: as above; `Sender` has no method that takes `&self`.
unsafe impl Sync for Sender {}
// SAFETY: as for `Sender`.
unsafe impl Send for Receiver {}
// SAFETY: `Receiver`'s only `&self` method loads the state word.
unsafe impl Sync for Receiver {}

/// Makes a signal: the sender to give to Begin, the receiver for the future.
#[inline]
pub(crate) fn signal() -> (Sender, Receiver) {
    let inner = spare::alloc::<Inner>();
    // SAFETY: memory for an `Inner` that nothing else uses.
    unsafe {
        inner.as_ptr().write(Inner {
            state: AtomicUsize::new(TX | RX),
            waker: UnsafeCell::new(None),
            finish: UnsafeCell::new(None),
        });
    }
    (Sender { inner }, Receiver { inner })
}

impl Sender {
    /// Reports that the operation completed.
    #[inline]
    pub(crate) fn call(self) {
        let this = ManuallyDrop::new(self);
        // SAFETY: the sender's reference is live.
        let state = unsafe { &this.inner.as_ref().state };
        // The common case first, a callback before the future waits (inside Begin, or
        // before the first poll is over): nothing to wake, so this side leaves at once.
        // ORDERING: as in `complete`.
        let fresh = state.compare_exchange(
            TX | RX,
            RX | DONE | CALLED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if fresh.is_err() {
            // SAFETY: the sender's reference is still live (the exchange failed), and
            // `ManuallyDrop` keeps `drop` from giving it up a second time.
            unsafe { complete(this.inner, DONE | CALLED) }
        }
    }
}

impl Drop for Sender {
    /// Reports that the callback will never be called.
    fn drop(&mut self) {
        // SAFETY: the sender's reference is live; this gives it up.
        unsafe { complete(self.inner, DONE) }
    }
}

/// The sender's one act: sets `done` and leaves. Wakes the receiver, or runs what it
/// left (`finish`) if it already left. Never unwinds.
///
/// # Safety
///
/// `inner` is live, and the caller holds the sender's reference, which this gives up.
unsafe fn complete(inner: NonNull<Inner>, done: usize) {
    // SAFETY: live until this side gives up its reference (the last use of `state`).
    let state = unsafe { &inner.as_ref().state };
    // ORDERING: Acquire, so that `finish` (written before `CLOSED`) is visible.
    let mut current = state.load(Ordering::Acquire);
    loop {
        if current & CLOSED != 0 {
            // The receiver left first: this side owns everything now.
            // SAFETY: `CLOSED` handed `finish` over, and the receiver is gone.
            let finish = unsafe { inner.as_ref() }.finish.with_mut(|finish| {
                // SAFETY: no other side can touch the slot any more.
                unsafe { (*finish).take() }
            });
            match finish {
                Some(finish) if done & CALLED != 0 => quietly(finish),
                unused => drop_quietly_if_some(unused),
            }
            // SAFETY: the receiver's reference is gone (`CLOSED` cleared `RX`), and
            // this was the sender's.
            unsafe { free(inner) };
            return;
        }
        // With no waker to wake, this side leaves in the same step.
        let next = if current & WAKER != 0 {
            current | done
        } else {
            (current | done) & !TX
        };
        // ORDERING: Release publishes the legacy side's writes before the callback
        // (what End reads); Acquire makes the waker written before `WAKER` visible.
        match state.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(actual) => current = actual,
        }
    }
    if current & WAKER == 0 {
        return;
    }
    // SAFETY: this side still holds its reference; `DONE` found `WAKER` set, which hands
    // the slot to this side: the receiver no longer touches it.
    let waker = unsafe { inner.as_ref() }.waker.with_mut(|waker| {
        // SAFETY: as above.
        unsafe { (*waker).take() }
    });
    // ORDERING: AcqRel: the last side to leave sees the other's accesses before freeing.
    let previous = state.fetch_and(!TX, Ordering::AcqRel);
    if previous & RX == 0 {
        // SAFETY: both references are gone; this side cleared the last.
        unsafe { free(inner) };
    }
    if let Some(waker) = waker {
        quietly(|| waker.wake());
    }
}

impl Receiver {
    /// Whether the callback was called or dropped.
    pub(crate) fn is_done(&self) -> bool {
        // SAFETY: the receiver's reference keeps the allocation alive.
        let state = unsafe { self.inner.as_ref() }.state.load(Ordering::Acquire);
        state & DONE != 0
    }

    /// `Ready(true)` once the callback was called, `Ready(false)` once it was dropped
    /// uncalled; otherwise registers the context's waker (cloned only if it would not
    /// wake the same task as the registered one), which the callback then wakes and
    /// drops.
    ///
    /// # Panics
    ///
    /// If the waker's `clone` panics; the signal is then left with no waker.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        // SAFETY: the receiver's reference keeps the allocation alive.
        let inner = unsafe { self.inner.as_ref() };
        // ORDERING: Acquire: the legacy side's writes before the callback.
        let current = inner.state.load(Ordering::Acquire);
        if current & DONE != 0 {
            return Poll::Ready(current & CALLED != 0);
        }
        if current & WAKER != 0 {
            // Take the slot back to look at the waker in it.
            // ORDERING: AcqRel, as every read-modify-write here (see the module docs).
            let previous = inner.state.fetch_and(!WAKER, Ordering::AcqRel);
            if previous & DONE != 0 {
                // The sender has the waker, to wake it.
                return Poll::Ready(previous & CALLED != 0);
            }
        }
        // `WAKER` is clear and `DONE` was not set: the slot is this side's.
        let same = inner.waker.with(|waker| {
            // SAFETY: as above.
            unsafe { &*waker }
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        });
        if !same {
            let old = inner.waker.with_mut(|waker| {
                // SAFETY: as above.
                unsafe { (*waker).take() }
            });
            drop_quietly_if_some(old);
            let new = cx.waker().clone();
            inner.waker.with_mut(|waker| {
                // SAFETY: as above.
                unsafe { *waker = Some(new) }
            });
        }
        // ORDERING: AcqRel: Release hands the waker to the sender.
        let previous = inner.state.fetch_or(WAKER, Ordering::AcqRel);
        if previous & DONE != 0 {
            // The sender did not see the waker: it stays in the slot until the free.
            return Poll::Ready(previous & CALLED != 0);
        }
        Poll::Pending
    }

    /// Leaves `finish` to run on the callback's thread when it is called (or be dropped
    /// if it is dropped uncalled); runs or drops it here if that already happened.
    /// Never unwinds.
    pub(crate) fn close(self, finish: Finish) {
        let this = ManuallyDrop::new(self);
        // SAFETY: the receiver's reference is live, and `ManuallyDrop` keeps `drop`
        // from giving it up a second time.
        unsafe { leave(this.inner, Some(finish)) }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // SAFETY: the receiver's reference is live; this gives it up.
        unsafe { leave(self.inner, None) }
    }
}

/// The receiver's last act. Never unwinds.
///
/// # Safety
///
/// `inner` is live, and the caller holds the receiver's reference, which this gives up.
unsafe fn leave(inner: NonNull<Inner>, mut finish: Option<Finish>) {
    // SAFETY: live until this side gives up its reference (the last use of `state`).
    let state = unsafe { &inner.as_ref().state };
    // ORDERING: Acquire: the sender's accesses, if it left already.
    let mut current = state.load(Ordering::Acquire);
    if current & (DONE | TX) == DONE && finish.is_none() {
        // The common case: the sender finished and left, and there is nothing to run.
        // SAFETY: the sender left already (its `DONE` cleared `TX`).
        unsafe { free(inner) };
        return;
    }
    if current & (DONE | WAKER) == WAKER {
        // Take the waker back before leaving, so that it is not kept until the callback.
        // ORDERING: AcqRel, as every read-modify-write here.
        current = state.fetch_and(!WAKER, Ordering::AcqRel);
        if current & DONE == 0 {
            current &= !WAKER;
            // SAFETY: `WAKER` is clear before `DONE`: the sender will not read the slot.
            let waker = unsafe { inner.as_ref() }.waker.with_mut(|waker| {
                // SAFETY: as above.
                unsafe { (*waker).take() }
            });
            drop_quietly_if_some(waker);
        }
    }
    if current & DONE == 0 {
        // SAFETY: until `CLOSED`, the slot is this side's.
        unsafe { inner.as_ref() }.finish.with_mut(|slot| {
            // SAFETY: as above.
            unsafe { *slot = finish.take() }
        });
        loop {
            let next = (current | CLOSED) & !RX;
            // ORDERING: Release hands `finish` over; Acquire sees the sender's `DONE`.
            match state.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                // The sender runs or drops `finish`, and frees.
                Ok(_) => return,
                Err(actual) if actual & DONE != 0 => {
                    current = actual;
                    break;
                }
                Err(actual) => current = actual,
            }
        }
        // The sender finished first: `finish` is still this side's.
        // SAFETY: this side still holds its reference.
        finish = unsafe { inner.as_ref() }.finish.with_mut(|slot| {
            // SAFETY: `CLOSED` was not set.
            unsafe { (*slot).take() }
        });
    }
    // `DONE`: the sender finished (it may still be taking the waker).
    match finish {
        Some(finish) if current & CALLED != 0 => quietly(finish),
        unused => drop_quietly_if_some(unused),
    }
    if current & TX == 0 {
        // SAFETY: the sender left already (its `DONE` cleared `TX`).
        unsafe { free(inner) };
        return;
    }
    // ORDERING: AcqRel: the last side to leave sees the other's accesses before freeing.
    let previous = state.fetch_and(!RX, Ordering::AcqRel);
    if previous & TX == 0 {
        // SAFETY: both references are gone; this side cleared the last.
        unsafe { free(inner) };
    }
}

/// Frees the allocation, dropping what its slots still hold. Never unwinds.
///
/// # Safety
///
/// Both sides have left, and the caller is the one that found it so.
#[inline]
unsafe fn free(inner: NonNull<Inner>) {
    // SAFETY: initialised by `signal`, and the caller is the last to use it: its
    // contents are moved out once, then its memory is given back.
    let Inner { waker, finish, .. } = unsafe { inner.as_ptr().read() };
    // SAFETY: from `spare::alloc`, its value moved out just above.
    unsafe { spare::free(inner) };
    let (waker, finish) = (waker.into_inner(), finish.into_inner());
    if waker.is_some() || finish.is_some() {
        drop_leftovers(waker, finish);
    }
}

#[cold]
fn drop_leftovers(waker: Option<Waker>, finish: Option<Finish>) {
    drop_quietly_if_some(waker);
    drop_quietly_if_some(finish);
}

#[cfg(all(test, not(apm_tap_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    use super::{signal, Finish};

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    /// A `Finish` that counts its runs (`.0`) and its drops, run or not (`.1`).
    fn finish(counts: &Arc<(AtomicUsize, AtomicUsize)>) -> Finish {
        struct Dropped(Arc<(AtomicUsize, AtomicUsize)>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0 .1.fetch_add(1, SeqCst);
            }
        }
        let dropped = Dropped(Arc::clone(counts));
        Box::new(move || {
            dropped.0 .0.fetch_add(1, SeqCst);
        })
    }

    #[test]
    fn outcome_and_wakes() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);

        let (sender, mut receiver) = signal();
        assert_eq!(receiver.poll(&mut cx), Poll::Pending);
        assert_eq!(receiver.poll(&mut cx), Poll::Pending);
        assert_eq!(
            Arc::strong_count(&wakes),
            3,
            "re-polling with the same waker cloned it again"
        );
        sender.call();
        assert_eq!(wakes.0.load(SeqCst), 1);
        assert_eq!(Arc::strong_count(&wakes), 2, "the woken waker still held");
        assert_eq!(receiver.poll(&mut cx), Poll::Ready(true));

        let (sender, mut receiver) = signal();
        assert_eq!(receiver.poll(&mut cx), Poll::Pending);
        drop(sender);
        assert_eq!(wakes.0.load(SeqCst), 2);
        assert_eq!(receiver.poll(&mut cx), Poll::Ready(false));
        assert!(receiver.is_done());
        drop(receiver);
        assert_eq!(Arc::strong_count(&wakes), 2);
    }

    #[test]
    fn finish_runs_once_if_called_and_is_dropped_otherwise() {
        // (receiver closes first, sender calls), (sender calls first), (sender drops).
        for (close_first, call, runs) in [(true, true, 1), (false, true, 1), (true, false, 0)] {
            let counts = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
            let (sender, receiver) = signal();
            if close_first {
                receiver.close(finish(&counts));
                assert_eq!(counts.0.load(SeqCst), 0, "ran before the callback");
                if call {
                    sender.call();
                } else {
                    drop(sender);
                }
            } else {
                sender.call();
                receiver.close(finish(&counts));
            }
            assert_eq!(counts.0.load(SeqCst), runs);
            assert_eq!(counts.1.load(SeqCst), 1, "dropped once");
        }
    }

    #[test]
    fn a_closing_receiver_drops_its_waker_at_once() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(Arc::clone(&wakes));
        let (sender, mut receiver) = signal();
        assert!(receiver.poll(&mut Context::from_waker(&waker)).is_pending());
        drop(receiver);
        assert_eq!(
            Arc::strong_count(&wakes),
            2,
            "only `waker` and `wakes` left"
        );
        sender.call();
        assert_eq!(wakes.0.load(SeqCst), 0);
    }
}
