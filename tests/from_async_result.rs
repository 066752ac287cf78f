//! `from_async_result` (.NET's `FromAsync(IAsyncResult, end)`) once its future is
//! dropped before the operation completed: End still runs exactly once, never inside
//! the handle's `Waker::wake`, and `drop` never blocks or spins, whatever the handle
//! does (rules 2, 17, 19).
//!
//! These operations finish on the crate's default runtime, whose threads live as long
//! as the process: Miri runs this file without its leak check.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::Duration;

use apm_tap::{AsyncResult, Completer, PollHandle};
use common::{poll_with, CountingWaker};

/// Dropped before completion: `on_cancel` runs once, and End still runs exactly once
/// when the operation completes, on a task of the default runtime, not inside the
/// completing thread's wake.
#[test]
fn from_async_result_dropped_early_ends_once_off_the_waking_thread() {
    let (completer, handle) = Completer::new();
    let ends = Arc::new(AtomicUsize::new(0));
    let cancels = Arc::new(AtomicUsize::new(0));
    let (end_tx, end_rx) = mpsc::channel();
    let (e, c) = (Arc::clone(&ends), Arc::clone(&cancels));
    let mut future = apm_tap::from_async_result(handle, move |h| {
        e.fetch_add(1, SeqCst);
        end_tx
            .send((thread::current().name().map(str::to_owned), h.end()))
            .unwrap();
    })
    .on_cancel(move |h| {
        assert!(!h.is_completed());
        c.fetch_add(1, SeqCst);
    });
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    assert_eq!((cancels.load(SeqCst), ends.load(SeqCst)), (1, 0));
    thread::spawn(move || completer.complete(99_u32).unwrap())
        .join()
        .unwrap();
    // Not inside the completing thread's wake: on a task of the default runtime.
    let (end_thread, ended) = end_rx.recv().unwrap();
    assert_eq!(
        (end_thread.as_deref(), ended),
        (Some("apm-tap-worker"), Ok(99))
    );
    assert_eq!((cancels.load(SeqCst), ends.load(SeqCst)), (1, 1));
}

/// `from_async_result` never polled, dropped while another thread completes the
/// operation: `end` runs exactly once whoever wins. Loom model 04b is what found the
/// lost wake-up that once left `end` unrun here (its window is too narrow for real
/// threads to hit reliably); this runs the same race on real threads.
#[test]
fn from_async_result_dropped_racing_completion_ends_once() {
    for _ in 0..common::rounds(2_000) {
        let (completer, handle) = Completer::new();
        let (end_tx, end_rx) = mpsc::channel();
        let future = apm_tap::from_async_result(handle, move |h| end_tx.send(h.end()).unwrap());
        let start = Arc::new(Barrier::new(2));
        let s = Arc::clone(&start);
        let completing = thread::spawn(move || {
            s.wait();
            completer.complete(1_u8).unwrap();
        });
        start.wait();
        drop(future);
        completing.join().unwrap();
        let ended = end_rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(ended, Ok(Ok(1)));
        assert!(end_rx.try_recv().is_err(), "end ran twice");
    }
}

/// `from_async_result`: dropped after completion, `end` runs once in `drop`, no cancel.
#[test]
fn from_async_result_dropped_after_completion_ends_in_drop() {
    let (completer, handle) = Completer::new();
    let (end_tx, end_rx) = mpsc::channel();
    let cancels = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&cancels);
    let mut future = apm_tap::from_async_result(handle, move |h| end_tx.send(h.end()).unwrap())
        .on_cancel(move |_| {
            c.fetch_add(1, SeqCst);
        });
    let (counter, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    completer.complete(5_u8).unwrap();
    assert_eq!(counter.wakes(), 1);
    drop(future);
    assert_eq!(end_rx.try_recv().unwrap(), Ok(5));
    assert_eq!(cancels.load(SeqCst), 0);
}

/// A panicking `on_cancel` hook: `drop` returns, and End still runs once the operation
/// completes (the reproduction, as for `from_apm` in `panic_safety.rs`).
#[test]
fn on_cancel_panic_still_ends_from_async_result() {
    let (completer, handle) = Completer::new();
    let (ended, end_result) = mpsc::channel();
    let mut future = apm_tap::from_async_result(handle, move |h: AsyncResult<u8>| {
        ended.send(h.end()).unwrap()
    })
    .on_cancel(|_| panic!("on_cancel exploded"));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(future)));
    assert!(dropped.is_ok(), "the hook's panic escaped drop");
    assert!(end_result.try_recv().is_err(), "End ran before completion");
    completer.complete(9).unwrap();
    assert_eq!(end_result.recv().unwrap(), Ok(9));
    assert!(end_result.try_recv().is_err(), "End ran twice");
}

/// A legacy handle that wakes its poller from inside `poll_completed` and stays
/// pending until `done` (spurious wakes are allowed), counting its polls.
struct SelfWaking {
    done: Arc<AtomicBool>,
    polls: Arc<AtomicUsize>,
}

impl PollHandle for SelfWaking {
    fn poll_completed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.polls.fetch_add(1, SeqCst);
        if self.done.load(SeqCst) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Rule 19: dropping a `from_async_result` future over a handle that wakes itself
/// returns promptly (it used to poll it for ever on the dropping thread), even under a
/// `timeout` on a current-thread runtime; End still runs once, when the operation
/// completes.
#[test]
fn dropping_over_a_self_waking_handle_returns_and_ends_once() {
    let done = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicUsize::new(0));
    let handle = SelfWaking {
        done: Arc::clone(&done),
        polls: Arc::clone(&polls),
    };
    let (ended, end_ran) = mpsc::channel();
    let runtime = common::current_thread();
    let (returned, timed_out) = mpsc::channel();
    let driver = thread::spawn(move || {
        let future = apm_tap::from_async_result(handle, move |_| ended.send(()).unwrap());
        let outcome = runtime
            .block_on(async { tokio::time::timeout(Duration::from_millis(10), future).await });
        returned.send(outcome.is_err()).unwrap();
    });
    let elapsed = timed_out
        .recv_timeout(Duration::from_secs(30))
        .expect("dropping the future never returned");
    assert!(elapsed, "the self-waking handle completed by itself");
    driver.join().unwrap();
    assert!(end_ran.try_recv().is_err(), "End ran before completion");
    done.store(true, SeqCst);
    end_ran
        .recv_timeout(Duration::from_secs(30))
        .expect("End never ran");
    assert!(end_ran.try_recv().is_err(), "End ran twice");
}

/// A handle that panics in `poll_completed` once the future was dropped: End still
/// runs, on a thread of its own, where it may block until the operation completes.
#[test]
fn reaper_with_a_panicking_poll_completed_still_ends() {
    /// Pending at its first poll (the future's); panics at every later one.
    struct Fragile {
        polls: usize,
    }
    impl PollHandle for Fragile {
        fn poll_completed(&mut self, _: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            if self.polls > 1 {
                panic!("poll_completed exploded");
            }
            Poll::Pending
        }
    }
    let (complete, completed) = mpsc::channel::<()>();
    let (ended, end_ran) = mpsc::channel();
    let mut future = apm_tap::from_async_result(Fragile { polls: 0 }, move |_| {
        // An APM End blocks until the operation completes.
        completed.recv().unwrap();
        ended.send(thread::current().id()).unwrap();
    });
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(future)));
    assert!(dropped.is_ok(), "the handle's panic escaped drop");
    complete.send(()).unwrap();
    let end_thread = end_ran
        .recv_timeout(Duration::from_secs(30))
        .expect("End never ran");
    assert_ne!(end_thread, thread::current().id());
}

/// A hand-written handle that wakes under its own lock, as much legacy code does (take
/// the waker out of the shared state and wake it before unlocking), and whose
/// `poll_completed` takes that lock: a wake that polled the handle inside
/// `Waker::wake` deadlocked the completing thread.
#[test]
fn a_handle_that_wakes_under_its_own_lock_does_not_deadlock() {
    #[derive(Default)]
    struct Shared {
        done: bool,
        waker: Option<Waker>,
    }
    #[derive(Clone, Default)]
    struct Locked(Arc<Mutex<Shared>>);
    impl PollHandle for Locked {
        fn poll_completed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            let mut shared = self.0.lock().unwrap();
            if shared.done {
                return Poll::Ready(());
            }
            shared.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
    let handle = Locked::default();
    let legacy = handle.clone();
    let (ended, end_ran) = mpsc::channel();
    let mut future = apm_tap::from_async_result(handle, move |_| ended.send(()).unwrap());
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    let (finished, completed) = mpsc::channel();
    thread::spawn(move || {
        let mut shared = legacy.0.lock().unwrap();
        shared.done = true;
        if let Some(waker) = shared.waker.take() {
            waker.wake();
        }
        drop(shared);
        finished.send(()).unwrap();
    });
    completed
        .recv_timeout(Duration::from_secs(30))
        .expect("the completing thread deadlocked inside Waker::wake");
    end_run(&end_ran);
}

/// Waits for End's report; the limit only turns an End that never runs into a failure.
fn end_run<T>(end_ran: &mpsc::Receiver<T>) -> T {
    let ran = end_ran
        .recv_timeout(Duration::from_secs(30))
        .expect("End never ran");
    assert!(end_ran.try_recv().is_err(), "End ran twice");
    ran
}
