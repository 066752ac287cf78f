//! Panic safety: wakers whose `clone` or `wake` panic, panicking callbacks, futures and
//! End. The cell stays consistent and the result stays retrievable; no abort, no hang.

// One test builds a waker from a raw vtable: the only way to get a `clone` that panics.
#![allow(unsafe_code)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Poll, RawWaker, RawWakerVTable, Wake, Waker};
use std::thread;

use apm_tap::{AsyncCallback, AsyncResult, Completer, Error};
use common::{poll_with, CountingWaker};

/// A waker whose `wake` panics.
struct PanickingWake;

impl Wake for PanickingWake {
    fn wake(self: Arc<Self>) {
        panic!("wake exploded");
    }
}

/// A waker whose `clone` panics: built from a vtable, since `Wake` clones through `Arc`.
fn clone_panics() -> Waker {
    fn clone(_: *const ()) -> RawWaker {
        panic!("clone exploded")
    }
    fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: every vtable function ignores the data pointer, so a null one is valid,
    // and none of them touches memory.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

#[test]
fn panicking_wake_still_wakes_others_and_runs_callback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (completer, handle) = apm_tap::Builder::new()
        .callback(AsyncCallback::new(move |_: AsyncResult<u8>| {
            c.fetch_add(1, SeqCst);
        }))
        .completer();
    let mut bad = handle.clone();
    let mut good = handle.clone();
    let bad_waker = Waker::from(Arc::new(PanickingWake));
    let (counter, good_waker) = CountingWaker::new();
    assert!(poll_with(&mut bad, &bad_waker).is_pending());
    assert!(poll_with(&mut good, &good_waker).is_pending());
    let waiter = {
        let handle = handle.clone();
        thread::spawn(move || handle.wait())
    };
    let completed = thread::spawn(move || completer.complete(5)).join();
    let payload = completed.expect_err("the waker's panic reaches the completer");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"wake exploded"));
    assert_eq!(counter.wakes(), 1, "the other waker was skipped");
    assert_eq!(calls.load(SeqCst), 1, "the callback was skipped");
    assert_eq!(
        waiter.join().unwrap(),
        Ok(()),
        "a blocked thread was left parked"
    );
    assert_eq!(poll_with(&mut good, &good_waker), Poll::Ready(Ok(5)));
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

#[test]
fn panicking_waker_clone_leaves_cell_usable() {
    let (completer, handle) = Completer::new();
    let mut polled = handle.clone();
    let bad = clone_panics();
    let panic = catch_unwind(AssertUnwindSafe(|| poll_with(&mut polled, &bad))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"clone exploded"));
    let (counter, good) = CountingWaker::new();
    assert!(poll_with(&mut polled, &good).is_pending());
    completer.complete("fine").unwrap();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll_with(&mut polled, &good), Poll::Ready(Ok("fine")));
    drop(polled);
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

#[test]
fn panicking_waker_clone_in_from_apm_poll() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut future = apm_tap::from_apm(
        move |cb| {
            tx.send(cb).unwrap();
            common::LegacyHandle {
                value: 1,
                synchronous: false,
                completed: Default::default(),
            }
        },
        |h| h.value,
    );
    let bad = clone_panics();
    assert!(catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &bad))).is_err());
    rx.recv().unwrap().call();
    let (_, good) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &good), Poll::Ready(Ok(1)));
}

#[test]
fn panicking_callback_on_a_runtime_keeps_the_runtime() {
    let runtime = common::multi_thread(1, "panic-safety");
    for round in 0..3 {
        let handle = apm_tap::Builder::new()
            .callback(|_: AsyncResult<i32>| panic!("callback exploded"))
            .spawner(&runtime)
            .begin(async move {
                tokio::task::yield_now().await;
                round
            });
        assert_eq!(handle.end(), Ok(round));
    }
}

#[test]
fn panicking_end_in_the_callback_path_hits_the_callers_thread_only() {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut future = apm_tap::from_apm(
        move |cb| {
            tx.send(cb).unwrap();
            common::LegacyHandle {
                value: 0,
                synchronous: false,
                completed: Default::default(),
            }
        },
        |_| -> u8 { panic!("end exploded") },
    );
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    let callback = rx.recv().unwrap();
    // End runs on the thread that calls back; its panic surfaces there.
    let outcome = thread::spawn(move || callback.call()).join();
    assert_eq!(
        outcome.unwrap_err().downcast_ref::<&str>(),
        Some(&"end exploded")
    );
}
