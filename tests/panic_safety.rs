//! Rule 17: a panic in user code (Begin, End, callbacks, hooks, handle methods, wakers,
//! spawners, `Drop` of values and states) never loses a result, never skips End, never
//! skips the other waiters or the callback, and unwinds only into the `poll` or call
//! that ran it: never out of a `Drop`, never into a thread that only called the crate.
//!
//! Each test provokes one place of the table in the crate docs and asserts what it
//! promises. Tests whose operation needs the crate's default runtime (End run on a
//! thread of its own) are in `misuse.rs`, where Miri does not check leaks.

// Wakers whose `clone` or `drop` panic are built from raw vtables (the only way to get
// them), and one test calls back through an `extern "C"` function with a raw pointer,
// as a C library would.
#![allow(unsafe_code)]

mod common;

use std::ffi::c_void;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::thread;

use apm_tap::{
    Abandonment, ApmCallback, AsyncHandle, AsyncResult, Builder, Completer, Error, State, Task,
};
use common::{poll_with, CountingWaker, Fire, Probe};

/// A waker that counts its wakes and panics in the place it is told to: `clone`,
/// `wake` or `drop` (every drop of every clone). Built from a vtable over a `static`,
/// so that it panics no matter which clone is dropped last, and leaks nothing.
struct Hostile {
    wakes: AtomicUsize,
    panics_on: &'static str,
}

impl Hostile {
    const fn new(panics_on: &'static str) -> Self {
        Hostile {
            wakes: AtomicUsize::new(0),
            panics_on,
        }
    }

    fn waker(&'static self) -> Waker {
        let raw = RawWaker::new((self as *const Hostile).cast(), &HOSTILE);
        // SAFETY: every vtable function reads the data pointer as this `'static`
        // `Hostile`, through a shared reference only.
        unsafe { Waker::from_raw(raw) }
    }

    fn wakes(&self) -> usize {
        self.wakes.load(SeqCst)
    }
}

/// # Safety
///
/// `data` is a `&'static Hostile` (see `Hostile::waker`).
unsafe fn hostile<'a>(data: *const ()) -> &'a Hostile {
    // SAFETY: by this function's contract.
    unsafe { &*data.cast::<Hostile>() }
}

static HOSTILE: RawWakerVTable = RawWakerVTable::new(
    |data| {
        // SAFETY: the data pointer of a `Hostile` waker.
        if unsafe { hostile(data) }.panics_on == "clone" {
            panic!("waker clone exploded");
        }
        RawWaker::new(data, &HOSTILE)
    },
    |data| {
        // SAFETY: as above.
        let hostile = unsafe { hostile(data) };
        hostile.wakes.fetch_add(1, SeqCst);
        if hostile.panics_on == "wake" {
            panic!("waker wake exploded");
        }
    },
    |data| {
        // SAFETY: as above.
        let hostile = unsafe { hostile(data) };
        hostile.wakes.fetch_add(1, SeqCst);
        if hostile.panics_on == "wake" {
            panic!("waker wake exploded");
        }
    },
    |data| {
        // SAFETY: as above.
        if unsafe { hostile(data) }.panics_on == "drop" {
            panic!("waker drop exploded");
        }
    },
);

/// A callback that counts its calls, then panics.
fn panicking_callback<T: Send + 'static>() -> (Arc<AtomicUsize>, impl FnOnce(AsyncResult<T>) + Send)
{
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let callback = move |handle: AsyncResult<T>| {
        assert!(handle.is_completed());
        c.fetch_add(1, SeqCst);
        panic!("callback exploded");
    };
    (calls, callback)
}

/// A legacy handle whose `completed_synchronously` panics.
struct Confused;

impl AsyncHandle for Confused {
    fn completed_synchronously(&self) -> bool {
        panic!("completed_synchronously exploded")
    }
}

// ---------------------------------------------------------------------------------
// APM to future: End, on_cancel, the handle, and the legacy thread that calls back.

/// The reproduction: a panicking `on_cancel` dropped the handle and End with
/// it, so End never ran. Now the hook's panic stays in `drop`, which returns, and End
/// runs once the operation completes.
#[test]
fn on_cancel_panic_still_ends() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let (b, e) = (Arc::clone(&probe), Arc::clone(&probe));
    let mut future = apm_tap::from_apm(
        move |cb| common::legacy_begin(&b, cb, 5, false, Fire::Later(tx)),
        move |h| e.end(h),
    )
    .on_cancel(|_| panic!("on_cancel exploded"));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(future)));
    assert!(dropped.is_ok(), "the hook's panic escaped drop");
    rx.recv().unwrap().call();
    assert_eq!(probe.ends(), 1);
}

/// A handle whose `completed_synchronously` panics is taken for asynchronous: the
/// panic reaches the caller of `poll`, and End runs once, when the callback comes:
/// in a later poll, or on the callback's thread if the future is dropped.
#[test]
fn completed_synchronously_panic_still_ends() {
    for keep_polling in [true, false] {
        let ends = Arc::new(AtomicUsize::new(0));
        let e = Arc::clone(&ends);
        let (tx, rx) = mpsc::channel::<ApmCallback>();
        let mut future = apm_tap::from_apm(
            move |cb| {
                tx.send(cb).unwrap();
                Confused
            },
            move |_| e.fetch_add(1, SeqCst) + 1,
        );
        let (_, waker) = CountingWaker::new();
        let first = catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &waker)));
        assert_eq!(
            first.unwrap_err().downcast_ref::<&str>(),
            Some(&"completed_synchronously exploded")
        );
        assert_eq!(ends.load(SeqCst), 0);
        rx.recv().unwrap().call();
        if keep_polling {
            assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(1)));
        }
        drop(future);
        assert_eq!(ends.load(SeqCst), 1);
    }
}

/// A `from_apm` future, polled once, whose End counts its runs and then panics; and
/// the callback Begin handed over.
fn polled_with_exploding_end() -> (
    Arc<AtomicUsize>,
    ApmCallback,
    impl Future<Output = Result<u8, Error>> + Unpin,
) {
    let ends = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&ends);
    let (tx, rx) = mpsc::channel();
    let mut future = apm_tap::from_apm(
        move |cb| common::legacy_begin(&Probe::default(), cb, 0, false, Fire::Later(tx)),
        move |_| -> u8 {
            e.fetch_add(1, SeqCst);
            panic!("end exploded")
        },
    );
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    (ends, rx.recv().unwrap(), future)
}

/// End that panics in `drop` (the callback came, nobody polled): `drop` returns, End
/// ran once.
#[test]
fn end_panic_in_drop_stays_in_drop() {
    let (ends, callback, future) = polled_with_exploding_end();
    callback.call();
    assert!(catch_unwind(AssertUnwindSafe(move || drop(future))).is_ok());
    assert_eq!(ends.load(SeqCst), 1);
}

/// A C library's notify function, as `aio_read` with `SIGEV_THREAD` calls it: an
/// `extern "C"` function, where an unwinding panic aborts the process.
extern "C" fn c_notify(callback: *mut c_void) {
    // SAFETY: made by `Box::into_raw` in the test below, and given back exactly once.
    let callback = unsafe { Box::from_raw(callback.cast::<ApmCallback>()) };
    callback.call();
}

/// End that panics on the thread that calls back (the future was dropped first): the
/// panic stays inside `ApmCallback::call`, which is safe to call from an `extern "C"`
/// function.
#[test]
fn end_panic_never_reaches_the_callback_thread() {
    let (ends, callback, future) = polled_with_exploding_end();
    drop(future);
    let address = Box::into_raw(Box::new(callback)) as usize;
    let outcome = thread::spawn(move || c_notify(address as *mut c_void)).join();
    assert!(outcome.is_ok(), "End's panic reached the callback's thread");
    assert_eq!(ends.load(SeqCst), 1);
}

/// A value whose `Drop` panics, captured by a closure given to the crate.
struct ExplodesOnDrop;

impl Drop for ExplodesOnDrop {
    fn drop(&mut self) {
        panic!("captured value's drop exploded");
    }
}

/// Begin panics while End, unused, owns a value whose `Drop` panics: End is dropped
/// quietly, and only Begin's panic leaves `poll` (two panics at once aborted the
/// process).
#[test]
fn begin_panic_with_an_end_whose_drop_panics() {
    let guard = ExplodesOnDrop;
    let mut future = apm_tap::from_apm(
        |_cb| -> common::LegacyHandle { panic!("begin exploded") },
        move |h| {
            let _guard = &guard;
            h.value
        },
    );
    let (_, waker) = CountingWaker::new();
    let polled = catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &waker)));
    assert_eq!(
        polled.unwrap_err().downcast_ref::<&str>(),
        Some(&"begin exploded")
    );
}

/// A failing Begin (`try_from_apm`) with an End whose `Drop` panics: the future
/// resolves to Begin's error; End's drop panic stays out of `poll`.
#[test]
fn failed_begin_with_an_end_whose_drop_panics_keeps_the_error() {
    let guard = ExplodesOnDrop;
    let mut future = apm_tap::try_from_apm(
        |_cb| -> std::io::Result<common::LegacyHandle> { Err(std::io::ErrorKind::NotFound.into()) },
        move |h| {
            let _guard = &guard;
            Ok(h.value)
        },
    );
    let (_, waker) = CountingWaker::new();
    let polled = catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &waker)));
    match polled {
        Ok(Poll::Ready(Err(error))) => assert_eq!(error.kind(), std::io::ErrorKind::NotFound),
        other => panic!(
            "not Begin's error: {:?}",
            other.map(|p| p.map(|r| r.is_ok()))
        ),
    }
}

/// A spawner whose `tokio_handle` panics: as for `spawn`, `begin` re-raises it after
/// completing the operation inside Begin (callback run first), and a future whose
/// `Drop` panics is dropped quietly meanwhile.
#[test]
fn spawner_tokio_handle_panic_abandons_synchronously() {
    struct BadHandle;
    impl apm_tap::Spawner for BadHandle {
        fn spawn(&self, _task: Task) {
            unreachable!("nothing is spawned once the spawner failed");
        }
        fn tokio_handle(&self) -> Option<&tokio::runtime::Handle> {
            panic!("tokio_handle exploded");
        }
    }
    let (tx, rx) = mpsc::channel();
    let guard = ExplodesOnDrop;
    let begun = catch_unwind(AssertUnwindSafe(|| {
        Builder::new()
            .callback(move |h: AsyncResult<u8>| {
                tx.send((h.completed_synchronously(), h.end())).unwrap();
            })
            .spawner(&BadHandle)
            .begin(async move {
                let _guard = guard;
                1
            })
    }));
    assert_eq!(
        begun.unwrap_err().downcast_ref::<&str>(),
        Some(&"tokio_handle exploded")
    );
    assert_eq!(
        rx.try_recv().expect("the callback ran in begin"),
        (true, Err(Error::Abandoned(Abandonment::TaskDropped)))
    );
}

// ---------------------------------------------------------------------------------
// The AIO scenario: a foreign handle whose memory the legacy side writes until it
// calls back. Dropping it before End is a use after free, which Miri reports.

/// The control block of a C operation, owned by the Rust handle, written by the
/// "C library" (another thread) through a raw pointer until it calls back.
struct ControlBlock {
    result: u64,
}

/// Owns the control block, as a Rust wrapper of `aiocb` does: frees it when dropped.
/// End reads the result (`aio_return`), then drops it.
struct AioHandle(*mut ControlBlock);

// SAFETY: the block is plain data owned by the handle; the other thread writes it only
// until it calls back, before End (the property under test).
unsafe impl Send for AioHandle {}

impl AsyncHandle for AioHandle {
    fn completed_synchronously(&self) -> bool {
        false
    }
}

impl Drop for AioHandle {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` below, freed only here.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// The address of a control block, sent to the thread that plays the C library.
struct Address(*mut ControlBlock);

// SAFETY: as for `AioHandle`.
unsafe impl Send for Address {}

#[test]
fn ffi_handle_outlives_the_legacy_writes_despite_a_panicking_hook() {
    let (go, started) = mpsc::channel::<()>();
    let (result_tx, result_rx) = mpsc::channel();
    let mut future = apm_tap::from_apm(
        move |callback: ApmCallback| {
            let block = Box::into_raw(Box::new(ControlBlock { result: 0 }));
            let address = Address(block);
            thread::spawn(move || {
                let address = address;
                started.recv().unwrap();
                // SAFETY: the block lives until End, which runs after this callback;
                // freeing it before (the bug under test) makes this a use after free.
                unsafe { (*address.0).result = 42 };
                callback.call();
            });
            AioHandle(block)
        },
        // SAFETY: End runs once the callback came: the writer is done with the block.
        move |handle: AioHandle| result_tx.send(unsafe { (*handle.0).result }).unwrap(),
    )
    .on_cancel(|_| panic!("aio_cancel wrapper exploded"));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    go.send(()).unwrap();
    assert_eq!(result_rx.recv().unwrap(), 42);
}

// ---------------------------------------------------------------------------------
// Future to APM: callbacks, futures, spawners.

/// A callback that panics in `Completer::complete`: the result is stored first and
/// kept, and `complete` returns normally: a legacy thread (or C) may call it.
#[test]
fn callback_panic_stays_out_of_complete() {
    let (calls, callback) = panicking_callback::<u8>();
    let (completer, handle) = Builder::new().callback(callback).completer();
    let completed = thread::spawn(move || completer.complete(8)).join();
    assert_eq!(
        completed.expect("the callback's panic reached the completer"),
        Ok(())
    );
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(handle.end(), Ok(8));
}

/// The reproduction: a completer dropped by a thread that is already panicking
/// runs the callback inside that unwind; a callback that panics there aborted the
/// process. Now the worker's own panic is the only one, and the operation is
/// abandoned.
#[test]
fn completer_dropped_while_unwinding_with_a_panicking_callback() {
    let (calls, callback) = panicking_callback::<u32>();
    let (completer, handle) = Builder::new().callback(callback).completer();
    let worker = thread::spawn(move || {
        let _completer = completer;
        panic!("worker failed")
    });
    let payload = worker.join().unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"worker failed"));
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(
        handle.end(),
        Err(Error::Abandoned(Abandonment::CompleterDropped))
    );
}

/// A callback that panics in `cancel`: `cancel` returns normally, the operation is
/// cancelled.
#[test]
fn callback_panic_stays_out_of_cancel() {
    let (calls, callback) = panicking_callback::<u8>();
    let (completer, handle) = Builder::new().callback(callback).completer();
    assert!(catch_unwind(AssertUnwindSafe(|| handle.cancel())).is_ok());
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(completer.complete(1), Err(1));
    assert_eq!(handle.end(), Err(Error::Cancelled));
}

/// A callback that panics on the executor: the runtime keeps serving, the result is
/// kept.
#[test]
fn callback_panic_on_the_executor_keeps_the_runtime() {
    let runtime = common::multi_thread(1, "panic-safety");
    for round in 0..3 {
        let (calls, callback) = panicking_callback::<i32>();
        let handle = Builder::new()
            .callback(callback)
            .spawner(&runtime)
            .begin(async move {
                tokio::task::yield_now().await;
                round
            });
        assert_eq!(handle.end(), Ok(round));
        common::assert_still_serving(&runtime);
        assert_eq!(calls.load(SeqCst), 1);
    }
}

/// A future whose `Drop` panics, dropped by the task once it finished: the value is
/// delivered and the runtime keeps serving.
#[test]
fn future_drop_panic_on_the_executor_keeps_the_result() {
    /// Ready with 7 at its `polls`-th poll; panics when dropped.
    struct ExplodesOnDrop {
        polls: u8,
    }
    impl Future for ExplodesOnDrop {
        type Output = u8;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
            self.polls -= 1;
            if self.polls > 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(7)
        }
    }
    impl Drop for ExplodesOnDrop {
        fn drop(&mut self) {
            panic!("future drop exploded");
        }
    }
    let runtime = common::multi_thread(1, "future-drop");
    for polls in [1, 2] {
        let handle = apm_tap::begin_on(&runtime, ExplodesOnDrop { polls });
        assert_eq!(handle.completed_synchronously(), polls == 1);
        assert_eq!(handle.end(), Ok(7));
        common::assert_still_serving(&runtime);
    }
}

/// A spawner whose `spawn` panics (after dropping the task, as a refusing spawner
/// does): `begin_on` re-raises it, and the operation is abandoned inside Begin:
/// synchronously, the callback run on this thread.
#[test]
fn spawner_panic_reaches_begin_and_abandons_synchronously() {
    let exploding = |task: Task| {
        drop(task);
        panic!("spawn exploded");
    };
    let (tx, rx) = mpsc::channel();
    let caller = thread::current().id();
    let begun = catch_unwind(AssertUnwindSafe(|| {
        Builder::new()
            .callback(move |h: AsyncResult<()>| {
                tx.send((thread::current().id(), h.completed_synchronously(), h.end()))
                    .unwrap();
            })
            .spawner(&exploding)
            .begin(std::future::pending::<()>())
    }));
    assert_eq!(
        begun.unwrap_err().downcast_ref::<&str>(),
        Some(&"spawn exploded")
    );
    let (thread, synchronous, ended) = rx.try_recv().expect("the callback ran in begin");
    assert_eq!(thread, caller);
    assert!(synchronous);
    assert_eq!(ended, Err(Error::Abandoned(Abandonment::TaskDropped)));
}

/// A spawner whose `enter` panics before the first poll: the same.
#[test]
fn spawner_enter_panic_reaches_begin_and_abandons() {
    struct BadEnter;
    impl apm_tap::Spawner for BadEnter {
        fn spawn(&self, _task: Task) {
            unreachable!("nothing is spawned after `enter` failed");
        }
        fn enter(&self, _f: &mut dyn FnMut()) {
            panic!("enter exploded");
        }
    }
    let (tx, rx) = mpsc::channel();
    let begun = catch_unwind(AssertUnwindSafe(|| {
        Builder::new()
            .callback(move |h: AsyncResult<u8>| {
                tx.send((h.completed_synchronously(), h.end())).unwrap();
            })
            .spawner(&BadEnter)
            .begin(async { 1 })
    }));
    assert_eq!(
        begun.unwrap_err().downcast_ref::<&str>(),
        Some(&"enter exploded")
    );
    assert_eq!(
        rx.try_recv().expect("the callback ran in begin"),
        (true, Err(Error::Abandoned(Abandonment::TaskDropped)))
    );
}

// ---------------------------------------------------------------------------------
// Wakers: wake, clone and drop.

/// A waker whose `wake` panics: the other waiters, a blocked thread and the callback
/// are still woken, and `complete` returns normally.
#[test]
fn waker_wake_panic_wakes_everyone_else() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (completer, handle) = Builder::new()
        .callback(move |_: AsyncResult<u8>| {
            c.fetch_add(1, SeqCst);
        })
        .completer();
    let mut bad = handle.clone();
    let mut good = handle.clone();
    static HOSTILE: Hostile = Hostile::new("wake");
    let (hostile, bad_waker) = (&HOSTILE, HOSTILE.waker());
    let (counter, good_waker) = CountingWaker::new();
    assert!(poll_with(&mut bad, &bad_waker).is_pending());
    assert!(poll_with(&mut good, &good_waker).is_pending());
    let started = Arc::new(Barrier::new(2));
    let waiter = {
        let (handle, started) = (handle.clone(), Arc::clone(&started));
        thread::spawn(move || {
            started.wait();
            handle.wait()
        })
    };
    started.wait();
    let completed = thread::spawn(move || completer.complete(5)).join();
    assert_eq!(
        completed.expect("the waker's panic reached the completer"),
        Ok(())
    );
    assert_eq!(hostile.wakes(), 1);
    assert_eq!(counter.wakes(), 1, "the other waker was skipped");
    assert_eq!(calls.load(SeqCst), 1, "the callback was skipped");
    assert_eq!(
        waiter.join().unwrap(),
        Ok(()),
        "a blocked thread was left parked"
    );
    assert_eq!(poll_with(&mut good, &good_waker), Poll::Ready(Ok(5)));
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
    std::mem::forget(bad_waker);
}

/// An executor whose waker panics when dropped: when the task completes, dropping the
/// task's own waker no longer stops the wake-up of the operation's waiter and the
/// callback.
#[test]
fn waker_drop_panic_wakes_everyone_else() {
    let (tasks, spawned) = mpsc::channel();
    let executor = move |task: Task| tasks.send(task).unwrap();
    let (gate, opened) = futures::channel::oneshot::channel::<u8>();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let mut handle = Builder::new()
        .callback(move |_: AsyncResult<u8>| {
            c.fetch_add(1, SeqCst);
        })
        .spawner(&executor)
        .begin(async move { opened.await.unwrap() });
    let mut task = spawned.recv().unwrap();
    static HOSTILE: Hostile = Hostile::new("drop");
    let hostile = HOSTILE.waker();
    let mut cx = Context::from_waker(&hostile);
    assert!(Pin::new(&mut task).poll(&mut cx).is_pending());
    let (counter, good) = CountingWaker::new();
    assert!(poll_with(&mut handle, &good).is_pending());
    gate.send(3).unwrap();
    let finished = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut task).poll(&mut cx)));
    assert_eq!(
        finished.ok(),
        Some(Poll::Ready(())),
        "the waker's panic escaped the task"
    );
    assert_eq!(counter.wakes(), 1, "the waiter was not woken");
    assert_eq!(calls.load(SeqCst), 1, "the callback did not run");
    assert_eq!(poll_with(&mut handle, &good), Poll::Ready(Ok(3)));
    drop(task);
    std::mem::forget(hostile);
}

/// A handle dropped while its (last) waker panics on drop: the handle's `drop` returns.
#[test]
fn waker_drop_panic_stays_out_of_handle_drop() {
    let (completer, handle) = Completer::<u8>::new();
    for first in [true, false] {
        // Entry 0 for the first handle, a shared entry for the second.
        let mut polled = handle.clone();
        static HOSTILE: Hostile = Hostile::new("drop");
        let hostile = HOSTILE.waker();
        assert!(poll_with(&mut polled, &hostile).is_pending());
        std::mem::forget(hostile);
        assert!(
            catch_unwind(AssertUnwindSafe(move || drop(polled))).is_ok(),
            "dropping a handle let the waker's panic out (entry {})",
            if first { "0" } else { "1" }
        );
    }
    completer.complete(1).unwrap();
    assert_eq!(handle.end(), Ok(1));
}

/// A waker whose `clone` panics leaves the cell usable: the next poll registers.
#[test]
fn waker_clone_panic_leaves_the_cell_usable() {
    let (completer, handle) = Completer::new();
    let mut polled = handle.clone();
    static HOSTILE: Hostile = Hostile::new("clone");
    let bad = HOSTILE.waker();
    let panic = catch_unwind(AssertUnwindSafe(|| poll_with(&mut polled, &bad))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"waker clone exploded"));
    let (counter, good) = CountingWaker::new();
    assert!(poll_with(&mut polled, &good).is_pending());
    completer.complete("fine").unwrap();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(poll_with(&mut polled, &good), Poll::Ready(Ok("fine")));
    drop(polled);
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

/// A waker whose `clone` panics, in a `from_apm` future's poll: the next poll works.
#[test]
fn waker_clone_panic_in_from_apm_poll() {
    let (tx, rx) = mpsc::channel();
    let mut future = apm_tap::from_apm(
        move |cb| common::legacy_begin(&Probe::default(), cb, 1, false, Fire::Later(tx)),
        |h| h.value,
    );
    static HOSTILE: Hostile = Hostile::new("clone");
    let bad = HOSTILE.waker();
    assert!(catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &bad))).is_err());
    rx.recv().unwrap().call();
    let (_, good) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &good), Poll::Ready(Ok(1)));
}

/// `from_apm`: a waker whose `wake` panics is woken on the callback's thread, inside
/// `ApmCallback::call`, which returns normally; the result is not lost.
#[test]
fn from_apm_wake_panic_stays_out_of_the_callback() {
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&Probe::new(), 2, false, Fire::Later(tx));
    static HOSTILE: Hostile = Hostile::new("wake");
    let bad = HOSTILE.waker();
    assert!(poll_with(&mut future, &bad).is_pending());
    let callback = rx.recv().unwrap();
    let called = thread::spawn(move || catch_unwind(AssertUnwindSafe(|| callback.call())));
    assert!(
        called.join().unwrap().is_ok(),
        "`call` let the wake's panic out"
    );
    assert_eq!(HOSTILE.wakes(), 1);
    assert_eq!(poll_with(&mut future, &bad), Poll::Ready(Ok(2)));
}

/// `from_apm`: a waker whose `drop` panics is dropped where it is replaced (in `poll`)
/// and where the future is dropped: neither lets the panic out, and End still runs
/// once, when the callback comes.
#[test]
fn from_apm_waker_drop_panics_stay_in() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&probe, 3, false, Fire::Later(tx));
    static HOSTILE: Hostile = Hostile::new("drop");
    let bad = HOSTILE.waker();
    let (_, good) = CountingWaker::new();
    assert!(poll_with(&mut future, &bad).is_pending());
    let replaced = catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &good)));
    assert!(
        matches!(replaced, Ok(Poll::Pending)),
        "the old waker's drop panic escaped `poll`"
    );
    assert!(poll_with(&mut future, &bad).is_pending());
    assert!(
        catch_unwind(AssertUnwindSafe(|| drop(future))).is_ok(),
        "the waker's drop panic escaped the future's `drop`"
    );
    assert_eq!(probe.ends(), 0);
    rx.recv().unwrap().call();
    assert_eq!(probe.ends(), 1);
    std::mem::forget(bad);
}

/// `from_apm`: the future dropped first, then the callback dropped uncalled on another
/// thread, by a legacy side whose handle's `Drop` panics there: End does not run, the
/// handle is dropped once, and the panic stays on the callback's side of `drop`.
#[test]
fn from_apm_abandoned_after_drop_with_a_handle_whose_drop_panics() {
    struct Exploding(Arc<AtomicUsize>);
    impl AsyncHandle for Exploding {
        fn completed_synchronously(&self) -> bool {
            false
        }
    }
    impl Drop for Exploding {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
            panic!("handle drop exploded");
        }
    }
    let (drops, ends) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (tx, rx) = mpsc::channel();
    let (d, e) = (Arc::clone(&drops), Arc::clone(&ends));
    let mut future = apm_tap::from_apm(
        move |cb: ApmCallback| {
            tx.send(cb).unwrap();
            Exploding(d)
        },
        move |_handle| {
            e.fetch_add(1, SeqCst);
        },
    );
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    assert!(catch_unwind(AssertUnwindSafe(|| drop(future))).is_ok());
    let callback = rx.recv().unwrap();
    let dropped = thread::spawn(move || catch_unwind(AssertUnwindSafe(|| drop(callback))));
    assert!(
        dropped.join().unwrap().is_ok(),
        "the handle's panic escaped"
    );
    assert_eq!((ends.load(SeqCst), drops.load(SeqCst)), (0, 1));
}

/// A waker whose `clone` calls back into the same operation (here: `cancel`), for the
/// second waiter of one operation, whose waker used to be cloned under the waiters'
/// lock: no deadlock.
#[test]
fn waker_clone_that_reenters_the_operation() {
    /// Cancels its operation (the leaked handle behind `data`) from inside `clone`.
    fn clone_cancels(data: *const ()) -> RawWaker {
        // SAFETY: the data pointer is the test's `AsyncResult<u8>`, alive while wakers
        // made from it are.
        unsafe { &*data.cast::<AsyncResult<u8>>() }.cancel();
        RawWaker::new(data, &REENTRANT)
    }
    fn nothing(_: *const ()) {}
    static REENTRANT: RawWakerVTable =
        RawWakerVTable::new(clone_cancels, nothing, nothing, nothing);

    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        let (completer, handle) = Completer::<u8>::new();
        let mut first = handle.clone();
        let mut second = handle.clone();
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut first, &waker).is_pending());
        let kept = Box::into_raw(Box::new(handle.clone()));
        let raw = RawWaker::new(kept.cast_const().cast(), &REENTRANT);
        // SAFETY: the vtable only reads the handle, which is freed below, after the
        // waker and every clone of it are gone (the cell dropped its clone when the
        // cancel completed it).
        let waker = unsafe { Waker::from_raw(raw) };
        let polled = poll_with(&mut second, &waker);
        drop(waker);
        drop(second);
        // SAFETY: made by `Box::into_raw` above; no waker refers to it any more.
        drop(unsafe { Box::from_raw(kept) });
        done.send((polled, completer.complete(1), handle.end()))
            .unwrap();
    });
    let (polled, completed, ended) = finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("a waker's clone that cancels deadlocked the poll");
    assert_eq!(polled, Poll::Ready(Err(Error::Cancelled)));
    assert_eq!((completed, ended), (Err(1), Err(Error::AlreadyEnded)));
}

// ---------------------------------------------------------------------------------
// Values and states whose `Drop` panics.

/// The last handle drops an untaken result and a state whose `Drop`s panic: its `drop`
/// returns, and every part is dropped once.
#[test]
fn value_and_state_drop_panics_stay_out_of_handle_drop() {
    struct Explodes(Arc<AtomicUsize>);
    impl Drop for Explodes {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
            panic!("value drop exploded");
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let (completer, handle) = Builder::new()
        .state(State::new(Explodes(Arc::clone(&drops))))
        .completer();
    completer
        .complete(Explodes(Arc::clone(&drops)))
        .ok()
        .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(move || drop(handle))).is_ok());
    assert_eq!(drops.load(SeqCst), 2);

    // Dropped by the writer, the handles gone first: `complete` returns.
    let (completer, handle) = Completer::new();
    drop(handle);
    let completed = catch_unwind(AssertUnwindSafe(|| {
        completer.complete(Explodes(Arc::clone(&drops))).is_ok()
    }));
    assert_eq!(completed.ok(), Some(true));
    assert_eq!(drops.load(SeqCst), 3);
}

/// `from_callback` drops what `start` returned in the poll that returns the result: a
/// panic in that `Drop` is discarded, and the result returned (rule 17: nothing lost).
#[test]
fn from_callback_registration_whose_drop_panics_loses_no_result() {
    struct Registration;
    impl Drop for Registration {
        fn drop(&mut self) {
            panic!("registration drop");
        }
    }
    let mut future = apm_tap::from_callback(|done| {
        done.complete(5_u8).unwrap();
        Registration
    });
    let (counter, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(5)));
    assert_eq!(counter.wakes(), 0);
    drop(future);
}

/// The registration is dropped with the result, not when the future is.
#[test]
fn from_callback_drops_the_registration_at_completion() {
    let drops = Arc::new(AtomicUsize::new(0));
    let registration = common::DropCounter(Arc::clone(&drops));
    let mut future = apm_tap::from_callback(move |done| {
        done.complete('r').unwrap();
        registration
    });
    let (_counter, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok('r')));
    assert_eq!(
        drops.load(SeqCst),
        1,
        "dropped by the poll that returned the result"
    );
    drop(future);
    assert_eq!(drops.load(SeqCst), 1);
}
