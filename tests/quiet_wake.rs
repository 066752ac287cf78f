//! `from_callback`'s registration and the writer's quiet wake-ups, against wakers and
//! callbacks that drop the last handle or panic, and a waker whose clone completes the
//! operation inside `poll`. No runtime, so that Miri checks every path. (Written by the
//! hostile review of the round-2 completion changes.)

// One waker is built from a raw vtable, to run user code inside `Waker::clone`.
#![allow(unsafe_code)]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use apm_tap::{AsyncResult, Builder, Completer, Error};
use common::{poll_with, CountingWaker};
use futures::future::FusedFuture;

struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// A registration with a field, whose own Drop panics: the field must be dropped once.
struct Panicky {
    _field: Counted,
}
impl Drop for Panicky {
    fn drop(&mut self) {
        panic!("registration drop");
    }
}

/// A registration whose `Drop` panics (with a field of its own): dropped once, by the
/// poll that returns the result, its panic discarded; no hook after completion.
#[test]
fn panicking_registration_is_dropped_once_and_the_result_returned() {
    let drops = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    let h = Arc::clone(&hooks);
    let mut future = apm_tap::from_callback(move |done: Completer<u8>| {
        done.complete(1).unwrap();
        Panicky { _field: Counted(d) }
    })
    .on_cancel(move |_r: Panicky| {
        h.fetch_add(1, SeqCst);
    });
    let (_c, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(1)));
    assert_eq!(drops.load(SeqCst), 1);
    assert!(future.is_terminated());
    drop(future);
    assert_eq!(drops.load(SeqCst), 1, "registration dropped once");
    assert_eq!(hooks.load(SeqCst), 0, "no hook after completion");
}

/// Polled after Ready: no panic, is_terminated stays true.
#[test]
fn poll_after_ready_is_already_ended() {
    let mut future = apm_tap::from_callback(|done: Completer<u8>| done.complete(2).unwrap());
    let (_c, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(2)));
    assert!(future.is_terminated());
    let again = poll_with(&mut future, &waker);
    assert!(matches!(again, Poll::Ready(Err(Error::AlreadyEnded))));
    assert!(future.is_terminated());
}

thread_local! {
    static STASH: std::cell::RefCell<Option<Completer<u8>>> = const { std::cell::RefCell::new(None) };
}

/// A waker whose clone completes the operation stashed in `STASH`: user code that runs
/// inside `poll`, between the check for completion and the registration of the waker.
fn clone_completes_waker() -> Waker {
    use std::task::{RawWaker, RawWakerVTable};
    // The data pointer is unused (null): the functions touch only `STASH`.
    unsafe fn clone(_: *const ()) -> RawWaker {
        STASH.with(|s| {
            if let Some(c) = s.borrow_mut().take() {
                c.complete(9).unwrap();
            }
        });
        RawWaker::new(std::ptr::null(), &VTABLE)
    }
    unsafe fn noop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    // SAFETY: the vtable's functions ignore the data pointer and own nothing.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

/// The operation completes inside the poll itself (in `Waker::clone`): the poll that
/// returns the result still drops the registration, and no hook runs. (Before the fix,
/// the registration outlived `Ready` until the future was dropped.)
#[test]
fn registration_dropped_when_completion_comes_inside_the_poll() {
    let drops = Arc::new(AtomicUsize::new(0));
    let hooks = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&drops);
    let h = Arc::clone(&hooks);
    let mut future = apm_tap::from_callback(move |done: Completer<u8>| {
        STASH.with(|s| *s.borrow_mut() = Some(done));
        Counted(d)
    })
    .on_cancel(move |_r: Counted| {
        h.fetch_add(1, SeqCst);
    });
    let waker = clone_completes_waker();
    let polled = std::pin::Pin::new(&mut future).poll(&mut Context::from_waker(&waker));
    assert_eq!(polled, Poll::Ready(Ok(9)));
    assert_eq!(
        drops.load(SeqCst),
        1,
        "dropped by the poll that returned the result"
    );
    drop(future);
    assert_eq!((drops.load(SeqCst), hooks.load(SeqCst)), (1, 0));
}

/// Waker whose wake drops the last handle (held inside the waker) and panics.
struct DropsHandle {
    handle: Mutex<Option<AsyncResult<Vec<u8>>>>,
    wakes: AtomicUsize,
}
impl DropsHandle {
    /// Awaits `handle` with a `DropsHandle` waker, then hands the handle to that waker:
    /// the operation's cell holds the only clone of the waker, and the waker the handle.
    fn own(mut handle: AsyncResult<Vec<u8>>) -> Arc<DropsHandle> {
        let owner = Arc::new(DropsHandle {
            handle: Mutex::new(None),
            wakes: AtomicUsize::new(0),
        });
        let waker = Waker::from(Arc::clone(&owner));
        assert!(handle
            .poll_end(&mut Context::from_waker(&waker))
            .is_pending());
        *owner.handle.lock().unwrap() = Some(handle);
        owner
    }
}

impl Wake for DropsHandle {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, SeqCst);
        let h = self.handle.lock().unwrap().take();
        drop(h);
        panic!("wake panics");
    }
}

/// The single-waker quiet fast path: the waker's wake drops the last handle (the
/// cell is freed inside wake) and panics; complete returns Ok, no unwind.
#[test]
fn quiet_single_waker_drops_the_last_handle_and_panics() {
    let (completer, handle) = Completer::<Vec<u8>>::new();
    let w = DropsHandle::own(handle);
    assert_eq!(completer.complete(vec![1, 2, 3]), Ok(()));
    assert_eq!(w.wakes.load(SeqCst), 1);
    assert!(w.handle.lock().unwrap().is_none());
}

/// The same through Writer::drop (completer dropped unfinished).
#[test]
fn completer_drop_wakes_quietly() {
    let (completer, handle) = Completer::<Vec<u8>>::new();
    let w = DropsHandle::own(handle);
    drop(completer);
    assert_eq!(w.wakes.load(SeqCst), 1);
}

/// Several waiters and a callback that drops its handle (the last owner): each
/// waker woken once, panics discarded, callback once.
#[test]
fn many_waiters_and_a_callback_that_is_the_last_owner() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (completer, handle) = Builder::<Vec<u8>>::new()
        .callback(move |h: AsyncResult<Vec<u8>>| {
            c.fetch_add(1, SeqCst);
            assert_eq!(
                h.end(),
                Err(Error::Abandoned(apm_tap::Abandonment::CompleterDropped))
            );
            panic!("callback panics");
        })
        .completer();
    let h2 = handle.clone();
    let mut h3 = handle.clone();
    let (c1, w1) = CountingWaker::new();
    let (c2, w2) = CountingWaker::new();
    let mut handle = handle;
    assert!(handle.poll_end(&mut Context::from_waker(&w1)).is_pending());
    let p = DropsHandle::own(h2);
    assert!(h3.poll_end(&mut Context::from_waker(&w2)).is_pending());
    drop(handle);
    drop(h3);
    // c1's handle was dropped: its waker was withdrawn; c2's too.
    drop(completer);
    assert_eq!(p.wakes.load(SeqCst), 1);
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!((c1.wakes(), c2.wakes()), (0, 0));
    assert_eq!((c1.clones_held(), c2.clones_held()), (0, 0));
}

/// Single waiter + callback, complete: woken once, callback once, its panic
/// discarded.
#[test]
fn a_waiter_and_a_panicking_callback() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (completer, mut handle) = Builder::<Vec<u8>>::new()
        .callback(move |h: AsyncResult<Vec<u8>>| {
            c.fetch_add(1, SeqCst);
            assert!(h.is_completed());
            drop(h);
            panic!("callback panics");
        })
        .completer();
    let (counter, waker) = CountingWaker::new();
    assert!(handle
        .poll_end(&mut Context::from_waker(&waker))
        .is_pending());
    assert_eq!(completer.complete(vec![5]), Ok(()));
    assert_eq!(counter.wakes(), 1);
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(counter.clones_held(), 0);
    assert_eq!(handle.end(), Ok(vec![5]));
}

/// Three live waiters, one panicking: each woken exactly once.
#[test]
fn three_waiters_each_woken_once() {
    let (completer, mut a) = Completer::<Vec<u8>>::new();
    let b = a.clone();
    let mut c = a.clone();
    let (ca, wa) = CountingWaker::new();
    let (cc, wc) = CountingWaker::new();
    assert!(a.poll_end(&mut Context::from_waker(&wa)).is_pending());
    let p = DropsHandle::own(b);
    assert!(c.poll_end(&mut Context::from_waker(&wc)).is_pending());
    assert_eq!(completer.complete(vec![1]), Ok(()));
    assert_eq!((ca.wakes(), p.wakes.load(SeqCst), cc.wakes()), (1, 1, 1));
    assert_eq!((ca.clones_held(), cc.clones_held()), (0, 0));
    assert_eq!(a.end(), Ok(vec![1]));
    assert_eq!(c.end(), Err(Error::AlreadyEnded));
}

fn stored_task(tasks: &Mutex<Vec<apm_tap::Task>>) -> (apm_tap::Task, AsyncResult<Vec<u8>>) {
    let spawner = |task: apm_tap::Task| tasks.lock().unwrap().push(task);
    let handle = apm_tap::begin_on(&spawner, async {
        futures::future::pending::<()>().await;
        vec![0_u8]
    });
    (tasks.lock().unwrap().pop().unwrap(), handle)
}

/// A task's writer dropped unpolled with one waiter whose wake drops the last
/// handle and panics (Writer::drop, quiet one-waker path on a task cell).
#[test]
fn task_dropped_unpolled_wakes_its_waiter_quietly() {
    let tasks = Mutex::new(Vec::new());
    let (task, handle) = stored_task(&tasks);
    let w = DropsHandle::own(handle);
    drop(task);
    assert_eq!(w.wakes.load(SeqCst), 1);
}

/// The task was polled (its own waker stored), then dropped: the waiter woken once,
/// the task's own waker dropped, not woken.
#[test]
fn task_polled_then_dropped_drops_its_own_waker() {
    let tasks = Mutex::new(Vec::new());
    let (mut task, handle) = stored_task(&tasks);
    let (own, own_waker) = CountingWaker::new();
    assert!(std::pin::Pin::new(&mut task)
        .poll(&mut Context::from_waker(&own_waker))
        .is_pending());
    let w = DropsHandle::own(handle);
    drop(task);
    assert_eq!(w.wakes.load(SeqCst), 1);
    assert_eq!(own.wakes(), 0);
    assert_eq!(own.clones_held(), 0);
}

/// Polled task, no handle left, then dropped: freed by the writer.
#[test]
fn task_polled_with_no_handle_then_dropped() {
    let tasks = Mutex::new(Vec::new());
    let (mut task, handle) = stored_task(&tasks);
    let (own, own_waker) = CountingWaker::new();
    assert!(std::pin::Pin::new(&mut task)
        .poll(&mut Context::from_waker(&own_waker))
        .is_pending());
    drop(handle);
    drop(task);
    assert_eq!(own.clones_held(), 0);
}
