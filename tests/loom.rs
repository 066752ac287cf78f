//! Loom models of the completion machinery: every interleaving (up to the preemption
//! bound) of legacy callbacks, polls, drops, blocking waits and cancels.
//!
//! ```sh
//! RUSTFLAGS="--cfg apm_tap_loom" LOOM_MAX_PREEMPTIONS=3 \
//!     cargo test --release --test loom -- --nocapture --test-threads=1
//! ```
//!
//! Each model prints how many interleavings it explored.
#![cfg(apm_tap_loom)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::time::Duration;

use apm_tap::{
    Abandonment, AnyAsyncResult, ApmCallback, AsyncCallback, AsyncHandle, AsyncResult, Completer,
    Error,
};
use common::{poll_with, CountingWaker, DropCounter};
use loom::thread;

/// Runs `f` under loom and reports the number of interleavings explored.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let iterations = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&iterations);
    loom::model(move || {
        counted.fetch_add(1, SeqCst);
        f();
    });
    println!("loom model {name}: {} iterations", iterations.load(SeqCst));
}

/// A legacy handle that allocates nothing and counts its drops.
struct Handle {
    drops: Arc<AtomicUsize>,
}

impl AsyncHandle for Handle {
    fn completed_synchronously(&self) -> bool {
        false
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Counters for one run of a model: ends, values dropped, handles dropped.
#[derive(Clone, Default)]
struct Counts {
    ends: Arc<AtomicUsize>,
    values: Arc<AtomicUsize>,
    handles: Arc<AtomicUsize>,
}

impl Counts {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.ends.load(SeqCst),
            self.values.load(SeqCst),
            self.handles.load(SeqCst),
        )
    }
}

/// `from_apm` whose Begin hands the callback to the test through `tx` (or calls it at
/// once) and whose End counts itself and returns a drop-counted value.
fn bridged(
    counts: &Counts,
    tx: Option<mpsc::Sender<ApmCallback>>,
) -> impl std::future::Future<Output = Result<DropCounter, Error>> + Unpin {
    let (handles, ends, values) = (
        Arc::clone(&counts.handles),
        Arc::clone(&counts.ends),
        Arc::clone(&counts.values),
    );
    apm_tap::from_apm(
        move |cb| {
            match tx {
                Some(tx) => tx.send(cb).unwrap(),
                None => cb.call(),
            }
            Handle { drops: handles }
        },
        move |_handle| {
            ends.fetch_add(1, SeqCst);
            DropCounter(values)
        },
    )
}

#[test]
fn model_01_callback_inside_begin() {
    model("01 callback inside begin", || {
        let counts = Counts::default();
        let value = loom::future::block_on(bridged(&counts, None)).unwrap();
        drop(value);
        assert_eq!(counts.get(), (1, 1, 1));

        let (completer_done, handle) = Completer::new();
        completer_done.complete(3_u8).unwrap();
        assert_eq!(
            loom::future::block_on(apm_tap::from_async_result(handle, |h| h.end())),
            Ok(3)
        );
    });
}

#[test]
fn model_02_callback_on_other_thread_races_first_poll() {
    model("02 callback on another thread races the first poll", || {
        let counts = Counts::default();
        let (tx, rx) = mpsc::channel();
        let mut future = bridged(&counts, Some(tx));
        let (_, waker) = CountingWaker::new();
        let first = poll_with(&mut future, &waker);
        assert!(
            first.is_pending(),
            "the callback is not called inside begin here"
        );
        let callback = rx.try_recv().unwrap();
        let caller = thread::spawn(move || callback.call());
        let value = loom::future::block_on(future).unwrap();
        caller.join().unwrap();
        drop(value);
        assert_eq!(counts.get(), (1, 1, 1));
    });
}

#[test]
fn model_03_waker_replaced_between_polls() {
    model("03 waker replaced between polls", || {
        let counts = Counts::default();
        let (tx, rx) = mpsc::channel();
        let mut future = bridged(&counts, Some(tx));
        let (old, old_waker) = CountingWaker::new();
        let (new, new_waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &old_waker).is_pending());
        assert!(poll_with(&mut future, &old_waker).is_pending());
        assert_eq!(
            old.clones_held(),
            1,
            "re-polling with the same waker cloned it"
        );
        let callback = rx.try_recv().unwrap();
        let caller = thread::spawn(move || callback.call());
        let second = poll_with(&mut future, &new_waker);
        caller.join().unwrap();
        match second {
            Poll::Pending => {
                assert_eq!((old.wakes(), new.wakes()), (0, 1));
                assert!(matches!(
                    poll_with(&mut future, &new_waker),
                    Poll::Ready(Ok(_))
                ));
            }
            Poll::Ready(value) => {
                assert!(value.is_ok());
                assert!(old.wakes() <= 1);
                assert_eq!(new.wakes(), 0);
            }
        }
        drop(future);
        assert_eq!(counts.get(), (1, 1, 1));
        assert_eq!((old.clones_held(), new.clones_held()), (0, 0));
    });
}

#[test]
fn model_04_future_dropped_while_callback_completes() {
    model(
        "04a future polled once, dropped while the callback completes",
        || {
            let counts = Counts::default();
            let (tx, rx) = mpsc::channel();
            let mut future = bridged(&counts, Some(tx));
            let (_, waker) = CountingWaker::new();
            assert!(poll_with(&mut future, &waker).is_pending());
            let callback = rx.try_recv().unwrap();
            let caller = thread::spawn(move || callback.call());
            drop(future);
            caller.join().unwrap();
            assert_eq!(counts.get(), (1, 1, 1));
        },
    );
    model(
        "04b future never polled, dropped while the operation completes",
        || {
            let (completer, end_ran, future) = reaped(false);
            let completing = thread::spawn(move || completer.complete(4).unwrap());
            drop(future);
            completing.join().unwrap();
            // End runs in `drop`, or on the task that the completion's wake schedules.
            assert_eq!(end_ran.recv().unwrap(), Ok(4));
            assert!(end_ran.try_recv().is_err(), "End ran twice");
        },
    );
}

#[test]
fn model_05_callback_after_future_dropped() {
    model("05 callback fires after the future was dropped", || {
        let counts = Counts::default();
        let (tx, rx) = mpsc::channel();
        let mut future = bridged(&counts, Some(tx));
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        drop(future);
        assert_eq!(counts.get(), (0, 0, 0));
        let callback = rx.try_recv().unwrap();
        thread::spawn(move || callback.call()).join().unwrap();
        assert_eq!(counts.get(), (1, 1, 1));
    });
}

#[test]
fn model_06_callback_never_fires() {
    model("06 callback never fires, future dropped", || {
        let counts = Counts::default();
        let (tx, rx) = mpsc::channel();
        let mut future = bridged(&counts, Some(tx));
        let (waker_counts, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        let callback = rx.try_recv().unwrap();
        let dropper = thread::spawn(move || drop(callback));
        drop(future);
        dropper.join().unwrap();
        // End is not called for an abandoned operation; the handle is still released.
        assert_eq!(counts.get(), (0, 0, 1));
        assert_eq!(waker_counts.clones_held(), 0);
    });
}

#[test]
fn model_07_blocking_wait_races_completion() {
    model("07a blocking end races completion", || {
        let (completer, handle) = Completer::new();
        let completing = thread::spawn(move || completer.complete(7_u8).unwrap());
        assert_eq!(handle.end(), Ok(7));
        completing.join().unwrap();
    });
    model("07b wait_timeout races completion", || {
        let (completer, handle) = Completer::new();
        let completing = thread::spawn(move || completer.complete(7_u8).unwrap());
        let completed = handle.wait_timeout(Duration::from_secs(1)).unwrap();
        // `true` only if the result really is there; `false` (the modelled timeout)
        // must not lose the completion.
        assert!(!completed || handle.is_completed());
        completing.join().unwrap();
        assert!(handle.is_completed());
        assert_eq!(handle.end(), Ok(7));
    });
}

#[test]
fn model_08_two_clones_race_to_end() {
    model("08 two clones race to end", || {
        let (completer, handle) = Completer::new();
        let other = handle.clone();
        let completing = thread::spawn(move || completer.complete(8_u8).unwrap());
        let racer = thread::spawn(move || other.end());
        let mine = handle.end();
        let theirs = racer.join().unwrap();
        completing.join().unwrap();
        let mut outcomes = [mine, theirs];
        outcomes.sort_by_key(Result::is_err);
        assert_eq!(outcomes, [Ok(8), Err(Error::AlreadyEnded)]);
    });
}

#[test]
fn model_09_cancel_races_completion() {
    model("09 cancel races completion", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let (completer, handle) = apm_tap::Builder::new()
            .callback(move |h: AsyncResult<u8>| {
                assert!(h.is_completed());
                c.fetch_add(1, SeqCst);
            })
            .completer();
        let completing = thread::spawn(move || completer.complete(9));
        handle.cancel();
        let completed = completing.join().unwrap();
        match handle.end() {
            Ok(value) => assert_eq!((value, completed), (9, Ok(()))),
            Err(error) => assert_eq!((error, completed), (Error::Cancelled, Err(9))),
        }
        assert_eq!(calls.load(SeqCst), 1);
    });
}

#[test]
fn model_10_dropped_completer_races_waiter() {
    model("10 completer dropped unfinished races a waiter", || {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let (completer, handle) = apm_tap::Builder::new()
            .callback(move |_: AsyncResult<u8>| {
                c.fetch_add(1, SeqCst);
            })
            .completer();
        let dropping = thread::spawn(move || drop(completer));
        assert_eq!(
            handle.end(),
            Err(Error::Abandoned(Abandonment::CompleterDropped))
        );
        dropping.join().unwrap();
        assert_eq!(calls.load(SeqCst), 1);
    });
}

#[test]
fn model_12_two_clones_awaited_while_the_writer_completes() {
    model(
        "12 two clones awaited at once while the writer completes",
        || {
            let values = Arc::new(AtomicUsize::new(0));
            let (completer, mut first) = Completer::new();
            let mut second = first.clone();
            let (a, waker_a) = CountingWaker::new();
            let (b, waker_b) = CountingWaker::new();
            assert!(poll_with(&mut first, &waker_a).is_pending());
            let v = Arc::clone(&values);
            let completing = thread::spawn(move || completer.complete(DropCounter(v)).is_ok());
            // Registers in the second waker entry, racing the completion.
            let raced = poll_with(&mut second, &waker_b);
            assert!(completing.join().unwrap());
            assert_eq!(a.wakes(), 1);
            let second_result = match raced {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    assert_eq!(b.wakes(), 1);
                    match poll_with(&mut second, &waker_b) {
                        Poll::Ready(result) => result,
                        Poll::Pending => panic!("woken but not ready"),
                    }
                }
            };
            assert!(second_result.is_ok());
            assert!(matches!(
                poll_with(&mut first, &waker_a),
                Poll::Ready(Err(Error::AlreadyEnded))
            ));
            drop(second_result);
            assert_eq!(values.load(SeqCst), 1);
            drop((first, second));
            assert_eq!((a.clones_held(), b.clones_held()), (0, 0));
        },
    );
}

#[test]
fn model_13_handles_dropped_while_the_writer_completes() {
    model(
        "13 a waiting handle and its clone dropped while the writer completes",
        || {
            let values = Arc::new(AtomicUsize::new(0));
            let (completer, mut handle) = Completer::new();
            let clone = handle.clone();
            let (w, waker) = CountingWaker::new();
            assert!(poll_with(&mut handle, &waker).is_pending());
            let v = Arc::clone(&values);
            let completing = thread::spawn(move || completer.complete(DropCounter(v)).is_ok());
            let dropping = thread::spawn(move || drop(clone));
            // Gives up its waker entry and its count while both of the others run.
            drop(handle);
            assert!(completing.join().unwrap());
            dropping.join().unwrap();
            // The value nobody took is dropped exactly once, by the last owner.
            assert_eq!(values.load(SeqCst), 1);
            assert_eq!(w.clones_held(), 0);
            assert!(w.wakes() <= 1);
        },
    );
}

/// The loom threads a `loom_spawner` started, to join.
type Started = Arc<std::sync::Mutex<Vec<thread::JoinHandle<()>>>>;

/// A `Spawner` that runs each task on a loom thread, and the threads to join.
fn loom_spawner() -> (impl Fn(apm_tap::Task), Started) {
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = Arc::clone(&threads);
    let spawner = move |task| {
        t.lock()
            .unwrap()
            .push(thread::spawn(move || loom::future::block_on(task)));
    };
    (spawner, threads)
}

#[test]
fn model_11_cancel_races_the_running_future() {
    model(
        "11a cancel wakes the task of a future that never finishes",
        || {
            let (spawner, threads) = loom_spawner();
            let (callback, calls) = counting_callback::<()>();
            let handle = apm_tap::Builder::new()
                .callback(callback)
                .spawner(&spawner)
                .begin(std::future::pending::<()>());
            handle.cancel();
            // The task must see the cancel, drop the future and finish: a lost wake-up would
            // leave this join (and loom) waiting forever.
            for task in threads.lock().unwrap().drain(..) {
                task.join().unwrap();
            }
            assert_eq!(handle.end(), Err(Error::Cancelled));
            assert_eq!(calls.load(SeqCst), 1);
        },
    );
    model("11b cancel races the future's own completion", || {
        let (spawner, threads) = loom_spawner();
        let (callback, calls) = counting_callback::<u8>();
        let (completer, inner) = Completer::new();
        let handle = apm_tap::Builder::new()
            .callback(callback)
            .spawner(&spawner)
            .begin(async move { inner.await.unwrap() });
        let completing = thread::spawn(move || {
            let _ = completer.complete(11);
        });
        handle.cancel();
        completing.join().unwrap();
        for task in threads.lock().unwrap().drain(..) {
            task.join().unwrap();
        }
        let ended = handle.end();
        assert!(
            ended == Ok(11) || ended == Err(Error::Cancelled),
            "{ended:?}"
        );
        assert_eq!(calls.load(SeqCst), 1);
    });
}

/// A callback that counts its calls.
fn counting_callback<T: Send + 'static>() -> (AsyncCallback<T>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let callback = AsyncCallback::new(move |h: AsyncResult<T>| {
        assert!(h.is_completed());
        c.fetch_add(1, SeqCst);
    });
    (callback, calls)
}

/// `from_async_result` over a `Completer`'s handle, whose End reports the result on a
/// channel (it may run on the task that the handle's wake schedules), with an
/// `on_cancel` hook that cancels or does nothing.
fn reaped(
    cancels: bool,
) -> (
    Completer<u8>,
    loom::sync::mpsc::Receiver<Result<u8, Error>>,
    impl std::future::Future<Output = ()> + Unpin,
) {
    let (completer, handle) = Completer::new();
    let (ended, end_ran) = loom::sync::mpsc::channel();
    let future = apm_tap::from_async_result(handle, move |h: AsyncResult<u8>| {
        ended.send(h.end()).unwrap();
    })
    .on_cancel(move |h| {
        if cancels {
            h.cancel();
        }
    });
    (completer, end_ran, future)
}

#[test]
fn model_14_reaper_races_completion() {
    model("14a future dropped while the operation completes", || {
        let (completer, end_ran, mut future) = reaped(false);
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        let completing = thread::spawn(move || completer.complete(14).unwrap());
        drop(future);
        completing.join().unwrap();
        assert_eq!(end_ran.recv().unwrap(), Ok(14));
        assert!(end_ran.try_recv().is_err(), "End ran twice");
    });
    model(
        "14b on_cancel cancels while the operation completes",
        || {
            let (completer, end_ran, mut future) = reaped(true);
            let (_, waker) = CountingWaker::new();
            assert!(poll_with(&mut future, &waker).is_pending());
            let completing = thread::spawn(move || {
                let _ = completer.complete(14);
            });
            drop(future);
            completing.join().unwrap();
            let seen = end_ran.recv().unwrap();
            assert!(seen == Ok(14) || seen == Err(Error::Cancelled), "{seen:?}");
            assert!(end_ran.try_recv().is_err(), "End ran twice");
        },
    );
}

/// A handle that wakes its poller from inside `poll_completed` until `done`.
struct SelfWaking(Arc<loom::sync::atomic::AtomicBool>);

impl apm_tap::PollHandle for SelfWaking {
    fn poll_completed(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.0.load(SeqCst) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        // Lets loom run the thread that sets `done`.
        thread::yield_now();
        Poll::Pending
    }
}

#[test]
fn model_15_reaper_hands_a_self_waking_handle_over() {
    model("15 drop hands a self-waking handle to a task", || {
        let done = Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let ends = Arc::new(AtomicUsize::new(0));
        let e = Arc::clone(&ends);
        let (ended, end_ran) = loom::sync::mpsc::channel();
        let mut future = apm_tap::from_async_result(SelfWaking(Arc::clone(&done)), move |_| {
            e.fetch_add(1, SeqCst);
            ended.send(()).unwrap();
        });
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        drop(future);
        done.store(true, SeqCst);
        end_ran.recv().unwrap();
        assert_eq!(ends.load(SeqCst), 1);
    });
}

/// Rule 6 for `from_callback`: dropping the future races its completer. The hook runs
/// exactly when the drop's cancel won, and then the value comes back to the completer.
#[test]
fn model_16_from_callback_dropped_while_its_completer_completes() {
    model(
        "16 from_callback dropped while its completer completes",
        || {
            let hooks = Arc::new(AtomicUsize::new(0));
            let h = Arc::clone(&hooks);
            let (tx, rx) = mpsc::channel();
            let mut future =
                apm_tap::from_callback(move |done: Completer<u8>| tx.send(done).unwrap())
                    .on_cancel(move |()| {
                        h.fetch_add(1, SeqCst);
                    });
            let (_, waker) = CountingWaker::new();
            assert!(poll_with(&mut future, &waker).is_pending());
            let completer = rx.recv().unwrap();
            let completing = thread::spawn(move || completer.complete(4).is_ok());
            drop(future);
            let stored = completing.join().unwrap();
            assert_eq!(hooks.load(SeqCst), usize::from(!stored));
        },
    );
}

/// `from_apm`'s signal: the future polled again with the same waker (which takes the
/// waker's slot back to look at it) while the callback completes on another thread,
/// then polled to the end. End runs once, the waker is woken once if the re-poll was
/// pending (at most once otherwise), and no clone of it outlives the future.
#[test]
fn model_17_same_waker_repoll_races_the_callback() {
    model("17 re-poll with the same waker races the callback", || {
        let counts = Counts::default();
        let (tx, rx) = mpsc::channel();
        let mut future = bridged(&counts, Some(tx));
        let (waker_counts, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        let callback = rx.try_recv().unwrap();
        let caller = thread::spawn(move || callback.call());
        let second = poll_with(&mut future, &waker);
        caller.join().unwrap();
        if second.is_pending() {
            // The re-poll left the waker for the callback, which woke it.
            assert_eq!(waker_counts.wakes(), 1);
            assert!(poll_with(&mut future, &waker).is_ready());
        } else {
            // The callback may have woken it before the re-poll looked.
            assert!(waker_counts.wakes() <= 1);
        }
        drop(second);
        drop(future);
        assert_eq!(counts.get(), (1, 1, 1));
        assert_eq!(waker_counts.clones_held(), 0);
    });
}

/// `from_apm` whose Begin hands the callback to a thread it starts, which calls it
/// (`call`) or drops it uncalled; the handle says `synchronous`. The join handle of
/// that thread comes back through `joins`. `on_cancel` counts into `cancels`.
fn bridged_on_a_thread(
    counts: &Counts,
    cancels: &Arc<AtomicUsize>,
    synchronous: bool,
    call: bool,
    joins: mpsc::Sender<thread::JoinHandle<()>>,
) -> impl std::future::Future<Output = Result<DropCounter, Error>> + Unpin {
    /// A counted handle that reports what it is told.
    struct Reported {
        _counted: Handle,
        synchronous: bool,
    }
    impl AsyncHandle for Reported {
        fn completed_synchronously(&self) -> bool {
            self.synchronous
        }
    }
    let (handles, ends, values, cancels) = (
        Arc::clone(&counts.handles),
        Arc::clone(&counts.ends),
        Arc::clone(&counts.values),
        Arc::clone(cancels),
    );
    apm_tap::from_apm(
        move |callback: ApmCallback| {
            let caller = thread::spawn(move || {
                if call {
                    callback.call();
                } else {
                    drop(callback);
                }
            });
            joins.send(caller).unwrap();
            Reported {
                _counted: Handle { drops: handles },
                synchronous,
            }
        },
        move |_handle| {
            ends.fetch_add(1, SeqCst);
            DropCounter(values)
        },
    )
    .on_cancel(move |_| {
        cancels.fetch_add(1, SeqCst);
    })
}

/// `from_apm`'s signal, the races models 02-06 and 17 leave out (found by a review):
/// a callback on a thread started inside Begin (its one compare-and-swap against the
/// first poll's waker), a callback dropped uncalled against a re-poll with a new
/// waker, a synchronous handle's late callback against the future's drop, a re-poll
/// with a new waker against the callback and then the drop.
#[test]
fn model_18_signal_races() {
    model(
        "18a callback on a thread started inside Begin races the first poll",
        || {
            let (counts, cancels) = (Counts::default(), Arc::new(AtomicUsize::new(0)));
            let (joins, joined) = mpsc::channel();
            let mut future = bridged_on_a_thread(&counts, &cancels, false, true, joins);
            let (waker_counts, waker) = CountingWaker::new();
            let first = poll_with(&mut future, &waker);
            joined.try_recv().unwrap().join().unwrap();
            if first.is_pending() {
                assert_eq!(waker_counts.wakes(), 1);
                assert!(matches!(poll_with(&mut future, &waker), Poll::Ready(Ok(_))));
            }
            drop(first);
            drop(future);
            assert_eq!(counts.get(), (1, 1, 1));
            assert_eq!(waker_counts.clones_held(), 0);
        },
    );
    model(
        "18b callback dropped uncalled races a re-poll with a new waker",
        || {
            let (counts, cancels) = (Counts::default(), Arc::new(AtomicUsize::new(0)));
            let (joins, joined) = mpsc::channel();
            let mut future = bridged_on_a_thread(&counts, &cancels, false, false, joins);
            let (first_counts, first_waker) = CountingWaker::new();
            let (second_counts, second_waker) = CountingWaker::new();
            let mut outcome = poll_with(&mut future, &first_waker);
            let dropper = joined.try_recv().unwrap();
            if outcome.is_pending() {
                outcome = poll_with(&mut future, &second_waker);
            }
            dropper.join().unwrap();
            if outcome.is_pending() {
                assert_eq!(second_counts.wakes(), 1);
                outcome = poll_with(&mut future, &second_waker);
            }
            assert!(matches!(
                outcome,
                Poll::Ready(Err(Error::Abandoned(Abandonment::CallbackDropped)))
            ));
            drop(future);
            assert_eq!(
                counts.get(),
                (0, 0, 1),
                "End ran for an abandoned operation"
            );
            assert_eq!(
                (first_counts.clones_held(), second_counts.clones_held()),
                (0, 0)
            );
        },
    );
    model(
        "18c a synchronous handle's late callback races the future's drop",
        || {
            let (counts, cancels) = (Counts::default(), Arc::new(AtomicUsize::new(0)));
            let (joins, joined) = mpsc::channel();
            let mut future = bridged_on_a_thread(&counts, &cancels, true, true, joins);
            let (waker_counts, waker) = CountingWaker::new();
            let value = poll_with(&mut future, &waker);
            assert!(matches!(value, Poll::Ready(Ok(_))));
            drop(value);
            drop(future);
            joined.try_recv().unwrap().join().unwrap();
            assert_eq!(counts.get(), (1, 1, 1));
            assert_eq!((waker_counts.wakes(), waker_counts.clones_held()), (0, 0));
        },
    );
    model(
        "18d a re-poll with a new waker races the callback, then the drop",
        || {
            let (counts, cancels) = (Counts::default(), Arc::new(AtomicUsize::new(0)));
            let (joins, joined) = mpsc::channel();
            let mut future = bridged_on_a_thread(&counts, &cancels, false, true, joins);
            let (first_counts, first_waker) = CountingWaker::new();
            let (second_counts, second_waker) = CountingWaker::new();
            let first = poll_with(&mut future, &first_waker);
            let caller = joined.try_recv().unwrap();
            let mut completed = first.is_ready();
            drop(first);
            if !completed {
                let second = poll_with(&mut future, &second_waker);
                completed = second.is_ready();
            }
            drop(future);
            caller.join().unwrap();
            // End once, wherever it ran; the hook only if the drop came first.
            assert_eq!(counts.get(), (1, 1, 1));
            assert!(cancels.load(SeqCst) <= usize::from(!completed));
            assert!(first_counts.wakes() + second_counts.wakes() <= 1);
            assert_eq!(
                (first_counts.clones_held(), second_counts.clones_held()),
                (0, 0)
            );
        },
    );
}

/// A C caller's raw handle taken back by the callback (which ends the operation, as an
/// APM callback does) and by the caller (releasing it) at once, while the task
/// completes on a loom thread: exactly one of them gets it, and the value is dropped
/// once, when the last handle goes.
#[test]
#[allow(unsafe_code)] // Taking a raw handle back is `unsafe`: it is what the model checks.
fn model_19_raw_handle_taken_back_twice() {
    model(
        "19 the callback and the caller both take the raw handle back",
        || {
            let (spawner, threads) = loom_spawner();
            let (completer, inner) = Completer::new();
            let drops = Arc::new(AtomicUsize::new(0));
            let takes = Arc::new(AtomicUsize::new(0));
            let in_callback = Arc::clone(&takes);
            let callback = AsyncCallback::new(move |h: AsyncResult<Result<DropCounter, Error>>| {
                let raw = h.into_any().unwrap().as_ptr();
                // SAFETY: this callback's handle keeps the operation alive.
                if let Some(taken) = unsafe { AnyAsyncResult::from_raw(raw) } {
                    in_callback.fetch_add(1, SeqCst);
                    let ended = taken
                        .downcast::<Result<DropCounter, Error>>()
                        .unwrap()
                        .end();
                    assert!(matches!(ended, Ok(Ok(_))));
                }
            });
            let keeper = apm_tap::Builder::new()
                .callback(callback)
                .spawner(&spawner)
                .begin(inner)
                .into_any()
                .unwrap();
            let raw = keeper.clone().into_raw().unwrap();
            let counter = DropCounter(Arc::clone(&drops));
            let completing = thread::spawn(move || {
                let _ = completer.complete(counter);
            });
            // SAFETY: `keeper` keeps the operation alive.
            if let Some(taken) = unsafe { AnyAsyncResult::from_raw(raw) } {
                takes.fetch_add(1, SeqCst);
                drop(taken);
            }
            completing.join().unwrap();
            for task in threads.lock().unwrap().drain(..) {
                task.join().unwrap();
            }
            assert_eq!(takes.load(SeqCst), 1);
            drop(keeper);
            assert_eq!(drops.load(SeqCst), 1);
        },
    );
}

/// The review's race: one thread uses the raw handle without taking it back
/// (`with_raw`, as C's `wait` or `cancel` do) while another takes it back and drops it
/// (C's `end`). The user gets a count of its own or nothing, the taker always gets the
/// raw count, and the value is dropped once, after the last handle.
#[test]
#[allow(unsafe_code)] // Raw handles are `unsafe`: they are what the model checks.
fn model_20_raw_handle_borrowed_while_taken_back() {
    model("20 a borrow of the raw handle races its take-back", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let counter = DropCounter(Arc::clone(&drops));
        let (spawner, threads) = loom_spawner();
        let keeper = apm_tap::Builder::new()
            .spawner(&spawner)
            .begin(async move { counter })
            .into_any()
            .unwrap();
        for task in threads.lock().unwrap().drain(..) {
            task.join().unwrap();
        }
        let raw = keeper.clone().into_raw().unwrap();
        let address = raw.as_ptr() as usize;
        let taker = thread::spawn(move || {
            let raw = std::ptr::NonNull::new(address as *mut ()).unwrap();
            // SAFETY: `keeper` keeps the operation alive until both threads joined.
            let taken = unsafe { AnyAsyncResult::from_raw(raw) };
            assert!(taken.is_some());
            drop(taken);
        });
        // SAFETY: as above.
        let borrowed = unsafe { AnyAsyncResult::with_raw(raw, |handle| handle.is_completed()) };
        assert!(borrowed.is_none() || borrowed == Some(true));
        taker.join().unwrap();
        assert_eq!(drops.load(SeqCst), 0);
        drop(keeper);
        assert_eq!(drops.load(SeqCst), 1);
    });
}

/// A callback stream registered by its first poll; returns it with its emitter and a
/// count of unregister calls.
fn event_stream(
    buffer: apm_tap::stream::Buffer,
) -> (
    apm_tap::stream::EventStream<DropCounter>,
    apm_tap::stream::Emitter<DropCounter>,
    Arc<AtomicUsize>,
) {
    use futures::StreamExt;
    let unregisters = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&unregisters);
    let (give, take) = mpsc::channel();
    let mut stream = apm_tap::stream::from_events(buffer, move |emitter| {
        give.send(emitter).unwrap();
        Ok::<_, Error>(move || {
            counted.fetch_add(1, SeqCst);
        })
    });
    let waker = futures::task::noop_waker();
    let cx = &mut std::task::Context::from_waker(&waker);
    assert!(stream.poll_next_unpin(cx).is_pending());
    (stream, take.recv().unwrap(), unregisters)
}

/// A producer thread emits two items and finishes while the consumer awaits them: no
/// wake-up is lost, the items come in order, each is dropped once, and the registration
/// is undone once, by the poll that yields the end.
#[test]
fn model_21_stream_items_race_the_consumer() {
    model(
        "21 a producer's emits and end race the stream's consumer",
        || {
            use futures::StreamExt;
            let drops = Arc::new(AtomicUsize::new(0));
            let (stream, emitter, unregisters) = event_stream(apm_tap::stream::Buffer::unbounded());
            let counter = Arc::clone(&drops);
            let producer = thread::spawn(move || {
                for _ in 0..2 {
                    assert!(emitter.emit(DropCounter(Arc::clone(&counter))).is_queued());
                }
                emitter.finish();
            });
            let items = loom::future::block_on(stream.collect::<Vec<_>>());
            assert_eq!(items.len(), 2);
            assert_eq!(unregisters.load(SeqCst), 1);
            drop(items);
            producer.join().unwrap();
            assert_eq!(drops.load(SeqCst), 2);
        },
    );
}

/// The consumer drops the stream while a producer emits: the item is dropped once,
/// by the stream or by the producer it was handed back to, and the registration is
/// undone once.
#[test]
fn model_22_stream_dropped_while_an_item_is_emitted() {
    model("22 a stream's drop races an emit", || {
        let drops = Arc::new(AtomicUsize::new(0));
        let (stream, emitter, unregisters) = event_stream(apm_tap::stream::Buffer::latest());
        let counter = Arc::clone(&drops);
        let producer = thread::spawn(move || {
            let outcome = emitter.emit(DropCounter(counter));
            let closed = emitter.is_closed();
            drop(outcome);
            closed
        });
        drop(stream);
        assert_eq!(unregisters.load(SeqCst), 1);
        let _ = producer.join().unwrap();
        assert_eq!(drops.load(SeqCst), 1);
    });
}

/// A producer blocked on a full `Suspend` buffer is released by the consumer's read:
/// no lost notification (loom reports a deadlock if one is), and the order holds. With
/// capacity 2 the consumer takes both items into its hand at once, and gives their room
/// back one by one.
#[test]
fn model_23_blocked_producer_released_by_the_consumer() {
    model("23 a blocking emit waits for the consumer's read", || {
        use apm_tap::stream::{Buffer, Emit, Overflow};
        use futures::StreamExt;
        let (stream, emitter, _) = event_stream(Buffer::bounded(2, Overflow::Suspend));
        let drops = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&drops);
        let producer = thread::spawn(move || {
            for _ in 0..3 {
                assert!(matches!(
                    emitter.emit_blocking(DropCounter(Arc::clone(&counter))),
                    Emit::Queued
                ));
            }
        });
        let items = loom::future::block_on(stream.take(3).collect::<Vec<_>>());
        assert_eq!(items.len(), 3);
        producer.join().unwrap();
        drop(items);
        assert_eq!(drops.load(SeqCst), 3);
    });
}

/// A report races the operation's completion: it is either delivered before the
/// result or refused, never lost, never after the result, and dropped once.
#[test]
fn model_24_progress_report_races_completion() {
    model(
        "24 a progress report races the operation's completion",
        || {
            use apm_tap::progress::{self, Update};
            use apm_tap::stream::Emit;
            use futures::StreamExt;
            let drops = Arc::new(AtomicUsize::new(0));
            let (give, take) = mpsc::channel();
            let job = progress::reporting(move |progress| {
                give.send(progress).unwrap();
                async { 7 }
            });
            let mut job = Box::pin(job);
            // `reporting` built the operation (not started): its reporter is out already.
            let progress = take.recv().unwrap();
            let counter = Arc::clone(&drops);
            let reporter = thread::spawn(move || {
                let outcome = progress.report(DropCounter(counter));
                let refused = matches!(outcome, Emit::Closed(_));
                drop(outcome);
                refused
            });
            let updates = loom::future::block_on(job.as_mut().collect::<Vec<_>>());
            let refused = reporter.join().unwrap();
            let reported = updates
                .iter()
                .filter(|update| matches!(update, Update::Progress(_)))
                .count();
            assert!(matches!(updates.last(), Some(Update::Done(7))));
            assert_eq!(reported, usize::from(!refused));
            drop(updates);
            drop(job);
            assert_eq!(drops.load(SeqCst), 1);
        },
    );
}

/// A task run by `Dispatch::inline` is woken by two threads while its first poll may
/// still run: no wake-up is lost (it completes), and no two polls overlap.
#[test]
fn model_25_inline_dispatch_task_woken_from_two_threads() {
    model(
        "25 an inline-dispatched task woken from two threads",
        || {
            use apm_tap::{Builder, Dispatch};
            use loom::sync::atomic::AtomicBool;
            use loom::sync::Mutex;
            use std::task::Waker;

            /// Events seen (one bit per thread) and the waker to wake for the next one.
            type Shared = Arc<Mutex<(u8, Option<Waker>)>>;
            let shared: Shared = Arc::new(Mutex::new((0, None)));
            let polling = Arc::new(AtomicBool::new(false));
            let (events, busy) = (Arc::clone(&shared), Arc::clone(&polling));
            let handle =
                Builder::new()
                    .spawner(&Dispatch::inline())
                    .begin(futures::future::poll_fn(move |cx| {
                        assert!(!busy.swap(true, SeqCst), "two polls at once");
                        let mut state = events.lock().unwrap();
                        let outcome = if state.0 == 0b11 {
                            Poll::Ready(7)
                        } else {
                            state.1 = Some(cx.waker().clone());
                            Poll::Pending
                        };
                        drop(state);
                        busy.store(false, SeqCst);
                        outcome
                    }));
            let wakers: Vec<_> = [0b01_u8, 0b10]
                .into_iter()
                .map(|bit| {
                    let shared = Arc::clone(&shared);
                    thread::spawn(move || {
                        let mut state = shared.lock().unwrap();
                        state.0 |= bit;
                        let waker = state.1.take();
                        drop(state);
                        if let Some(waker) = waker {
                            waker.wake();
                        }
                    })
                })
                .collect();
            for waker in wakers {
                waker.join().unwrap();
            }
            assert!(handle.is_completed(), "a wake-up was lost");
            assert_eq!(handle.end(), Ok(7));
        },
    );
}

/// A hook given from another thread races the drop of a `cancellable` future before it
/// completed: each hook runs exactly once, whether at the drop or at once in `on_cancel`.
#[test]
fn model_26_cancel_hook_races_the_drop() {
    model("26 a cancellation hook races the future's drop", || {
        use futures::FutureExt;
        let runs = Arc::new(AtomicUsize::new(0));
        let (give, take) = mpsc::channel();
        let mut pending = Box::pin(apm_tap::cancellable(move |cancellation| {
            give.send(cancellation).unwrap();
            std::future::pending::<()>()
        }));
        assert!((&mut pending).now_or_never().is_none());
        let cancellation = take.recv().unwrap();
        let first = Arc::clone(&runs);
        cancellation.on_cancel(move || {
            first.fetch_add(1, SeqCst);
        });
        let late = Arc::clone(&runs);
        let giver = thread::spawn(move || {
            cancellation.on_cancel(move || {
                late.fetch_add(1, SeqCst);
            });
            cancellation
        });
        drop(pending);
        let cancellation = giver.join().unwrap();
        assert!(cancellation.is_cancelled());
        assert_eq!(runs.load(SeqCst), 2);
    });
}
