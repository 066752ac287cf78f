//! `apm_tap::Task`, the type-erased task a `Spawner` receives, under hostile executors
//! and wakers: polled on several threads, after `Ready`, inside `spawn`, after a
//! panicking poll; dropped inside `spawn`, on another thread, or forgotten; with wakers
//! whose `clone` panics or cancels the operation. Every waker clone the crate makes is
//! dropped exactly once, and the callback runs once. (Written by a hostile review of
//! the change that erased the task; Miri runs it under both borrow models.)

// The hostile waker needs a hand-written `RawWakerVTable`.
#![allow(unsafe_code)]

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::thread;

use apm_tap::{Abandonment, AsyncCallback, AsyncResult, Builder, Error, Task};

/// A waker over an `Arc<Ctl>` whose clone / drop can panic or run a hook.
#[derive(Default)]
struct Ctl {
    panic_clone: AtomicBool,
    panic_drop: AtomicBool,
    clones: AtomicUsize,
    drops: AtomicUsize,
    wakes: AtomicUsize,
    on_clone: Mutex<Option<Box<dyn FnMut() + Send>>>,
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_by_ref_raw, drop_raw);

// Each function receives the pointer of an `Arc<Ctl>` that the waker owns (`hostile`
// makes it with `Arc::into_raw`, `clone_raw` counts one more).

unsafe fn clone_raw(p: *const ()) -> RawWaker {
    // SAFETY: `p` is a live `Arc<Ctl>`'s, owned by the waker being cloned.
    let ctl = unsafe { &*(p as *const Ctl) };
    if ctl.panic_clone.load(SeqCst) {
        panic!("hostile clone");
    }
    let hook = ctl.on_clone.lock().unwrap().take();
    if let Some(mut hook) = hook {
        hook();
    }
    ctl.clones.fetch_add(1, SeqCst);
    // SAFETY: as above; the new waker owns the count added here.
    unsafe { Arc::increment_strong_count(p as *const Ctl) };
    RawWaker::new(p, &VTABLE)
}
unsafe fn wake_raw(p: *const ()) {
    // SAFETY: the waker's own pointer, then its count, given up by `wake`.
    unsafe { wake_by_ref_raw(p) };
    // SAFETY: as above.
    unsafe { drop_raw(p) };
}

unsafe fn wake_by_ref_raw(p: *const ()) {
    // SAFETY: as in `clone_raw`.
    let ctl = unsafe { &*(p as *const Ctl) };
    ctl.wakes.fetch_add(1, SeqCst);
}

unsafe fn drop_raw(p: *const ()) {
    // SAFETY: the waker's count, given up by its drop.
    let ctl = unsafe { Arc::from_raw(p as *const Ctl) };
    ctl.drops.fetch_add(1, SeqCst);
    let panic = ctl.panic_drop.load(SeqCst);
    drop(ctl);
    if panic {
        panic!("hostile drop");
    }
}

fn hostile() -> (Arc<Ctl>, Waker) {
    let ctl = Arc::new(Ctl::default());
    let p = Arc::into_raw(Arc::clone(&ctl)) as *const ();
    // SAFETY: the vtable's functions keep `Waker`'s contract over that count.
    (ctl, unsafe { Waker::from_raw(RawWaker::new(p, &VTABLE)) })
}

fn poll_task(task: &mut Task, waker: &Waker) -> Poll<()> {
    Pin::new(task).poll(&mut Context::from_waker(waker))
}

/// A spawner that hands tasks to the test.
fn keeper() -> (impl Fn(Task), mpsc::Receiver<Task>) {
    let (tx, rx) = mpsc::channel::<Task>();
    let tx = Mutex::new(tx);
    (move |t: Task| tx.lock().unwrap().send(t).unwrap(), rx)
}

/// What a callback saw: each call's `end()`.
type Seen<T> = Arc<Mutex<Vec<Result<T, Error>>>>;

/// A callback that records what it saw.
fn counting_callback<T: Send + std::fmt::Debug + 'static>() -> (AsyncCallback<T>, Seen<T>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    (
        AsyncCallback::new(move |h: AsyncResult<T>| {
            assert!(h.is_completed());
            s.lock().unwrap().push(h.end());
        }),
        seen,
    )
}

/// Pending until the gate opens.
fn gated(
    v: u32,
) -> (
    futures::channel::oneshot::Sender<()>,
    impl Future<Output = u32> + Send,
) {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
        v
    })
}

#[test]
fn task_moves_between_threads_and_is_polled_after_ready() {
    let (spawner, rx) = keeper();
    let (cb, seen) = counting_callback();
    let (gate, fut) = gated(7);
    let handle = Builder::new().callback(cb).spawner(&spawner).begin(fut);
    assert!(!handle.completed_synchronously());
    let mut task = rx.recv().unwrap();
    let noop = futures::task::noop_waker();
    assert!(poll_task(&mut task, &noop).is_pending());
    let task = thread::spawn(move || {
        assert!(poll_task(&mut task, &noop).is_pending());
        task
    })
    .join()
    .unwrap();
    gate.send(()).unwrap();
    let task = thread::spawn(move || {
        let mut task = task;
        let noop = futures::task::noop_waker();
        assert!(poll_task(&mut task, &noop).is_ready());
        assert!(poll_task(&mut task, &noop).is_ready());
        assert!(poll_task(&mut task, &noop).is_ready());
        task
    })
    .join()
    .unwrap();
    thread::spawn(move || drop(task)).join().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Ok(7)]);
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

#[test]
fn waker_clone_panic_then_repoll_completes() {
    let (spawner, rx) = keeper();
    let (cb, seen) = counting_callback();
    let (gate, fut) = gated(9);
    let handle = Builder::new().callback(cb).spawner(&spawner).begin(fut);
    let mut task = rx.recv().unwrap();
    let (ctl, bad) = hostile();
    ctl.panic_clone.store(true, SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| poll_task(&mut task, &bad))).is_err());
    assert!(!handle.is_completed());
    // On another thread, with a good waker.
    let (good_ctl, good) = hostile();
    gate.send(()).unwrap();
    let task = thread::spawn(move || {
        let mut task = task;
        while poll_task(&mut task, &good).is_pending() {}
        assert!(poll_task(&mut task, &good).is_ready());
        task
    })
    .join()
    .unwrap();
    drop(task);
    assert_eq!(*seen.lock().unwrap(), vec![Ok(9)]);
    drop(handle);
    drop(bad);
    // every clone the crate made was dropped
    assert_eq!(
        good_ctl.clones.load(SeqCst),
        good_ctl.drops.load(SeqCst) - 1
    );
    assert_eq!(ctl.clones.load(SeqCst), ctl.drops.load(SeqCst) - 1);
}

/// A waker left in the task's waker slot with `TASK_WAKER` clear (a later clone
/// panicked) is dropped exactly once, quietly, when the cell is freed.
#[test]
fn leftover_task_waker_dropped_once_quietly() {
    let (spawner, rx) = keeper();
    // A future that never clones its waker.
    let fut = futures::future::poll_fn(|_| Poll::<u32>::Pending);
    let handle = Builder::new().spawner(&spawner).begin(fut);
    let mut task = rx.recv().unwrap();
    let (w1ctl, w1) = hostile();
    assert!(poll_task(&mut task, &w1).is_pending());
    assert_eq!(w1ctl.clones.load(SeqCst), 1);
    let (w2ctl, w2) = hostile();
    w2ctl.panic_clone.store(true, SeqCst);
    assert!(catch_unwind(AssertUnwindSafe(|| poll_task(&mut task, &w2))).is_err());
    // The test's own `w1` goes quietly; the crate's clone will panic when dropped.
    drop(w1);
    w1ctl.panic_drop.store(true, SeqCst);
    assert_eq!(w1ctl.drops.load(SeqCst), 1);
    // Dropped unfinished: abandoned, quietly.
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(task)));
    assert!(dropped.is_ok(), "Task drop unwound");
    assert_eq!(
        handle.clone().end(),
        Err(Error::Abandoned(Abandonment::TaskDropped))
    );
    let freed = catch_unwind(AssertUnwindSafe(|| drop(handle)));
    assert!(freed.is_ok(), "a leftover waker's panicking drop escaped");
    assert_eq!(
        w1ctl.drops.load(SeqCst),
        2,
        "the crate's clone dropped once"
    );
    drop(w2);
}

#[test]
fn cancel_then_poll_twice_and_drop() {
    let (spawner, rx) = keeper();
    let (cb, seen) = counting_callback::<u32>();
    let drops = Arc::new(AtomicUsize::new(0));
    struct D(Arc<AtomicUsize>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let d = D(Arc::clone(&drops));
    let (_gate, fut) = gated(3);
    let handle = Builder::new()
        .callback(cb)
        .spawner(&spawner)
        .begin(async move {
            let _d = d;
            fut.await
        });
    let mut task = rx.recv().unwrap();
    let (ctl, w) = hostile();
    assert!(poll_task(&mut task, &w).is_pending());
    handle.cancel();
    assert_eq!(ctl.wakes.load(SeqCst), 1, "the cancel woke the task");
    assert_eq!(
        drops.load(SeqCst),
        0,
        "dropped on its executor, not in cancel"
    );
    assert!(poll_task(&mut task, &w).is_ready());
    assert_eq!(drops.load(SeqCst), 1);
    assert!(poll_task(&mut task, &w).is_ready());
    drop(task);
    assert_eq!(drops.load(SeqCst), 1);
    assert_eq!(*seen.lock().unwrap(), vec![Err(Error::Cancelled)]);
    drop(handle);
    drop(w);
    assert_eq!(ctl.clones.load(SeqCst) + 1, ctl.drops.load(SeqCst));
}

#[test]
fn future_cancels_its_own_operation_while_polled() {
    let (spawner, rx) = keeper();
    let (cb, seen) = counting_callback::<u32>();
    let (htx, hrx) = futures::channel::oneshot::channel::<AsyncResult<u32>>();
    let handle = Builder::new()
        .callback(cb)
        .spawner(&spawner)
        .begin(async move {
            let me = hrx.await.unwrap();
            me.cancel();
            5
        });
    htx.send(handle.clone()).unwrap_or_else(|_| panic!());
    let mut task = rx.recv().unwrap();
    let (ctl, w) = hostile();
    while poll_task(&mut task, &w).is_pending() {}
    assert!(poll_task(&mut task, &w).is_ready());
    drop(task);
    assert_eq!(*seen.lock().unwrap(), vec![Err(Error::Cancelled)]);
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
    drop(w);
    assert_eq!(ctl.clones.load(SeqCst) + 1, ctl.drops.load(SeqCst));
}

#[test]
fn waker_clone_cancels_the_operation() {
    let (spawner, rx) = keeper();
    let (cb, seen) = counting_callback::<u32>();
    let (_gate, fut) = gated(3);
    let handle = Builder::new().callback(cb).spawner(&spawner).begin(fut);
    let mut task = rx.recv().unwrap();
    let (ctl, w) = hostile();
    let h2 = handle.clone();
    *ctl.on_clone.lock().unwrap() = Some(Box::new(move || h2.cancel()));
    assert!(
        poll_task(&mut task, &w).is_ready(),
        "cancelled while registering"
    );
    assert!(poll_task(&mut task, &w).is_ready());
    drop(task);
    assert_eq!(*seen.lock().unwrap(), vec![Err(Error::Cancelled)]);
    drop(handle);
    drop(w);
    // The hook (holding h2) was consumed; every clone dropped.
    assert_eq!(ctl.clones.load(SeqCst) + 1, ctl.drops.load(SeqCst));
}

#[test]
fn polled_inside_spawn_then_finished_elsewhere() {
    let (tx, rx) = mpsc::channel::<Task>();
    let tx = Mutex::new(tx);
    let spawner = move |mut t: Task| {
        let noop = futures::task::noop_waker();
        assert!(poll_task(&mut t, &noop).is_pending());
        tx.lock().unwrap().send(t).unwrap();
    };
    let (cb, seen) = counting_callback::<u32>();
    let (gate, fut) = gated(11);
    let handle = Builder::new().callback(cb).spawner(&spawner).begin(fut);
    assert!(!handle.completed_synchronously());
    let mut task = rx.recv().unwrap();
    gate.send(()).unwrap();
    thread::spawn(move || {
        let noop = futures::task::noop_waker();
        assert!(poll_task(&mut task, &noop).is_ready());
    })
    .join()
    .unwrap();
    assert!(!handle.completed_synchronously());
    assert_eq!(*seen.lock().unwrap(), vec![Ok(11)]);
}

#[test]
fn panicking_future_on_executor_then_polled_again() {
    let (spawner, rx) = keeper();
    let (cb, seen) = counting_callback::<u32>();
    let (gate, fut) = gated(1);
    let handle = Builder::new()
        .callback(cb)
        .spawner(&spawner)
        .begin(async move {
            fut.await;
            panic!("boom")
        });
    let mut task = rx.recv().unwrap();
    let noop = futures::task::noop_waker();
    assert!(poll_task(&mut task, &noop).is_pending());
    gate.send(()).unwrap();
    assert!(poll_task(&mut task, &noop).is_ready());
    assert!(poll_task(&mut task, &noop).is_ready());
    drop(task);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert!(matches!(seen[0], Err(Error::Panicked(_))));
    drop(handle);
}

#[test]
fn dropped_inside_spawn_after_a_pending_poll() {
    let spawner = |mut t: Task| {
        let noop = futures::task::noop_waker();
        assert!(poll_task(&mut t, &noop).is_pending());
        drop(t);
    };
    let (cb, seen) = counting_callback::<u32>();
    let (_gate, fut) = gated(1);
    let handle = Builder::new().callback(cb).spawner(&spawner).begin(fut);
    assert!(handle.completed_synchronously());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Err(Error::Abandoned(Abandonment::TaskDropped))]
    );
}

#[test]
fn forgotten_task_is_merely_leaked() {
    let (spawner, rx) = keeper();
    let (_gate, fut) = gated(1);
    let handle = Builder::new().spawner(&spawner).begin(fut);
    std::mem::forget(rx.recv().unwrap());
    assert!(!handle.is_completed());
    drop(handle);
}

#[test]
fn cancel_races_completion_on_another_thread() {
    let rounds = if cfg!(miri) { 4 } else { 500 };
    for _ in 0..rounds {
        let (spawner, rx) = keeper();
        let (cb, seen) = counting_callback::<u32>();
        let (gate, fut) = gated(6);
        let handle = Builder::new().callback(cb).spawner(&spawner).begin(fut);
        let mut task = rx.recv().unwrap();
        let (ctl, w) = hostile();
        assert!(poll_task(&mut task, &w).is_pending());
        let h2 = handle.clone();
        let canceller = thread::spawn(move || h2.cancel());
        gate.send(()).unwrap();
        let runner = thread::spawn(move || {
            let (_c, w) = hostile();
            while poll_task(&mut task, &w).is_pending() {}
            task
        });
        canceller.join().unwrap();
        let task = runner.join().unwrap();
        drop(task);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "callback ran once");
        assert!(seen[0] == Ok(6) || seen[0] == Err(Error::Cancelled));
        assert_eq!(handle.end(), Err(Error::AlreadyEnded));
        drop(w);
        assert_eq!(ctl.clones.load(SeqCst) + 1, ctl.drops.load(SeqCst));
    }
}
