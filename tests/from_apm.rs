//! APM to future: rules 1 to 8 of DESIGN.md, for `from_apm`, `try_from_apm`,
//! `from_async_result` and `from_callback`.

mod common;

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::task::Poll;
use std::thread;

use apm_tap::{Abandonment, ApmCallback, Completer, Error};
use common::{legacy_begin, poll_with, CountingWaker, DropCounter, Fire, Probe};
use futures::future::BoxFuture;
use futures::FutureExt;

/// Rule 1: nothing starts before the first poll; `begin` runs exactly once.
#[test]
fn rule_1_begin_runs_once_on_first_poll() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let p = Arc::clone(&probe);
    let mut future =
        apm_tap::from_apm(move |cb| legacy_begin(&p, cb, 1, false, Fire::Later(tx)), {
            let p = Arc::clone(&probe);
            move |h| p.end(h)
        });
    assert_eq!(probe.begins(), 0, "begin ran before the first poll");
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    assert_eq!(probe.begins(), 1);
    assert!(poll_with(&mut future, &waker).is_pending());
    assert_eq!(probe.begins(), 1, "a second poll ran begin again");
    rx.recv().unwrap().call();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(1)));
    assert_eq!((probe.begins(), probe.ends()), (1, 1));
}

/// Rule 2, normal path: `end` runs once, in `poll`, on the polling thread.
#[test]
fn rule_2_end_runs_once_in_poll() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&probe, 7, false, Fire::Later(tx));
    let (counter, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    let callback = rx.recv().unwrap();
    thread::spawn(move || callback.call()).join().unwrap();
    assert_eq!(counter.wakes(), 1);
    assert_eq!(
        probe.ends(),
        0,
        "end ran in the callback although the future is alive"
    );
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(7)));
    assert_eq!(probe.ends(), 1);
    assert_eq!(
        *probe.end_thread.lock().unwrap(),
        Some(thread::current().id())
    );
    drop(future);
    assert_eq!(probe.ends(), 1, "drop after completion ran end again");
}

/// Rule 2, dropped after completion: `end` runs once, in `drop`.
#[test]
fn rule_2_end_runs_once_in_drop_after_completion() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&probe, 7, false, Fire::Later(tx));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    let callback = rx.recv().unwrap();
    thread::spawn(move || callback.call()).join().unwrap();
    assert_eq!(probe.ends(), 0);
    drop(future);
    assert_eq!(probe.ends(), 1);
    assert_eq!(
        *probe.end_thread.lock().unwrap(),
        Some(thread::current().id())
    );
}

/// Rule 2, dropped before completion: `end` runs once, from the callback, on its thread.
#[test]
fn rule_2_end_runs_once_from_late_callback() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&probe, 7, false, Fire::Later(tx));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    assert_eq!(probe.ends(), 0, "end ran before the operation completed");
    assert_eq!(probe.cancels(), 1);
    let callback = rx.recv().unwrap();
    let late = thread::spawn(move || {
        callback.call();
        thread::current().id()
    });
    let late_thread = late.join().unwrap();
    assert_eq!(probe.ends(), 1);
    assert_eq!(*probe.end_thread.lock().unwrap(), Some(late_thread));
}

/// Rule 2: the result `end` produces after the future was dropped is dropped exactly once.
#[test]
fn rule_2_late_result_is_dropped_once() {
    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let d = Arc::clone(&drops);
    let mut future = apm_tap::from_apm(
        move |cb| legacy_begin(&Probe::default(), cb, 0, false, Fire::Later(tx)),
        move |_| DropCounter(d),
    );
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    rx.recv().unwrap().call();
    assert_eq!(drops.load(SeqCst), 1);
}

/// Rule 3: a synchronous completion runs `end` once, after `begin` returned, whether the
/// callback was called inside `begin`, dropped, or called later.
#[test]
fn rule_3_synchronous_completion_ends_after_begin() {
    for fire in ["inside", "drop", "later"] {
        let probe = Probe::new();
        let (tx, rx) = mpsc::channel();
        let mode = match fire {
            "inside" => Fire::InsideBegin,
            "drop" => Fire::Drop,
            _ => Fire::Later(tx),
        };
        let mut future = common::probed(&probe, 3, true, mode);
        let (counter, waker) = CountingWaker::new();
        assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(3)), "{fire}");
        assert_eq!(probe.ends(), 1, "{fire}");
        assert!(
            !probe.ended_inside_begin.load(SeqCst),
            "{fire}: end ran inside begin"
        );
        if let Ok(callback) = rx.try_recv() {
            callback.call();
        }
        drop(future);
        assert_eq!(probe.ends(), 1, "{fire}: the callback path ran end too");
        assert_eq!(counter.wakes(), 0, "{fire}");
    }
}

/// Rule 4: the callback fires inside `begin` of an asynchronous handle.
#[test]
fn rule_4_callback_inside_begin() {
    let probe = Probe::new();
    let mut future = common::probed(&probe, 4, false, Fire::InsideBegin);
    let (counter, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(4)));
    assert_eq!(probe.ends(), 1);
    assert!(!probe.ended_inside_begin.load(SeqCst));
    assert_eq!(counter.wakes(), 0);
    assert_eq!(counter.clones_held(), 0);
}

/// Rule 4: the callback fires on another thread before `begin` returns.
#[test]
fn rule_4_callback_on_other_thread_before_begin_returns() {
    let probe = Probe::new();
    let p = Arc::clone(&probe);
    let p2 = Arc::clone(&probe);
    let mut future = apm_tap::from_apm(
        move |cb: ApmCallback| {
            p.begin(|| {
                let (fired_tx, fired_rx) = mpsc::channel();
                thread::spawn(move || {
                    cb.call();
                    fired_tx.send(()).unwrap();
                });
                fired_rx.recv().unwrap();
                common::LegacyHandle {
                    value: 5,
                    synchronous: false,
                    completed: Default::default(),
                }
            })
        },
        move |h| p2.end(h),
    );
    let (_, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(5)));
    assert_eq!(probe.ends(), 1);
}

/// Rule 4: a callback dropped uncalled resolves the future with `Abandoned`; `end` is not
/// called (it would block forever).
#[test]
fn rule_4_dropped_callback_is_abandoned() {
    for inside in [true, false] {
        let probe = Probe::new();
        let (tx, rx) = mpsc::channel();
        let mode = if inside { Fire::Drop } else { Fire::Later(tx) };
        let mut future = common::probed(&probe, 0, false, mode);
        let (counter, waker) = CountingWaker::new();
        if !inside {
            assert!(poll_with(&mut future, &waker).is_pending());
            drop(rx.recv().unwrap());
            assert_eq!(counter.wakes(), 1);
        }
        assert_eq!(
            poll_with(&mut future, &waker),
            Poll::Ready(Err(Error::Abandoned(Abandonment::CallbackDropped)))
        );
        assert_eq!(probe.ends(), 0);
    }
}

/// Rule 4: a callback kept forever leaves the future pending; dropping it (rule 6) is
/// the remedy and runs `on_cancel`.
#[test]
fn rule_4_callback_kept_forever_stays_pending() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&probe, 0, false, Fire::Later(tx));
    let (counter, waker) = CountingWaker::new();
    let _kept = {
        assert!(poll_with(&mut future, &waker).is_pending());
        rx.recv().unwrap()
    };
    for _ in 0..3 {
        assert!(poll_with(&mut future, &waker).is_pending());
    }
    assert_eq!(counter.wakes(), 0);
    drop(future);
    assert_eq!((probe.cancels(), probe.ends()), (1, 0));
}

/// Rule 5: a panic in `begin` surfaces in `poll`; `end` never runs.
#[test]
fn rule_5_panic_in_begin_surfaces_in_poll() {
    let probe = Probe::new();
    let p = Arc::clone(&probe);
    let mut future = apm_tap::from_apm(
        |_cb| -> common::LegacyHandle { panic!("begin exploded") },
        move |h| p.end(h),
    );
    let (_, waker) = CountingWaker::new();
    let panic = catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &waker))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"begin exploded"));
    drop(future);
    assert_eq!(probe.ends(), 0);
}

/// Rule 5: a panic in `end` surfaces in `poll`, once.
#[test]
fn rule_5_panic_in_end_surfaces_in_poll() {
    let ends = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&ends);
    let mut future = apm_tap::from_apm(
        |cb| legacy_begin(&Probe::default(), cb, 0, false, Fire::InsideBegin),
        move |_| -> u32 {
            e.fetch_add(1, SeqCst);
            panic!("end exploded")
        },
    );
    let (_, waker) = CountingWaker::new();
    let panic = catch_unwind(AssertUnwindSafe(|| poll_with(&mut future, &waker))).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"end exploded"));
    drop(future);
    assert_eq!(ends.load(SeqCst), 1);
}

/// Rule 5: a fallible begin resolves the future to its error without calling `end`.
#[test]
fn rule_5_failing_begin_resolves_to_its_error() {
    let probe = Probe::new();
    let p = Arc::clone(&probe);
    let future = apm_tap::try_from_apm(
        |_cb| -> io::Result<common::LegacyHandle> {
            Err(io::Error::new(io::ErrorKind::AddrInUse, "busy"))
        },
        move |h| -> io::Result<u32> { Ok(p.end(h)) },
    );
    let error = futures::executor::block_on(future).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    assert_eq!(probe.ends(), 0);
}

/// `try_from_apm` passes `end`'s own error through and converts the bridge's.
#[test]
fn try_from_apm_flattens_errors() {
    let ok = apm_tap::try_from_apm(
        |cb| {
            Ok::<_, io::Error>(legacy_begin(
                &Probe::default(),
                cb,
                9,
                false,
                Fire::InsideBegin,
            ))
        },
        |h| -> io::Result<u32> { Ok(h.value) },
    );
    assert_eq!(futures::executor::block_on(ok).unwrap(), 9);

    let failed = apm_tap::try_from_apm(
        |cb| {
            Ok::<_, io::Error>(legacy_begin(
                &Probe::default(),
                cb,
                9,
                false,
                Fire::InsideBegin,
            ))
        },
        |_| -> io::Result<u32> { Err(io::ErrorKind::UnexpectedEof.into()) },
    );
    assert_eq!(
        futures::executor::block_on(failed).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );

    let abandoned = apm_tap::try_from_apm(
        |cb| Ok::<_, io::Error>(legacy_begin(&Probe::default(), cb, 9, false, Fire::Drop)),
        |h| -> io::Result<u32> { Ok(h.value) },
    );
    let error = futures::executor::block_on(abandoned).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(
        error.into_inner().unwrap().downcast::<Error>().unwrap(),
        Box::new(Error::Abandoned(Abandonment::CallbackDropped))
    );
}

/// Rule 6: dropping before completion runs `on_cancel` once with the handle; when the
/// legacy Cancel completes the operation synchronously, `end` runs once, in `drop`.
#[test]
fn rule_6_on_cancel_runs_once_and_end_still_runs() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let p = Arc::clone(&probe);
    let p2 = Arc::clone(&probe);
    let p3 = Arc::clone(&probe);
    let (cancel_tx, cancel_rx) = mpsc::channel::<ApmCallback>();
    let mut future = apm_tap::from_apm(
        move |cb| legacy_begin(&p, cb, 6, false, Fire::Later(tx)),
        move |h| p2.end(h),
    )
    .on_cancel(move |handle| {
        assert_eq!(handle.value, 6);
        p3.cancels.fetch_add(1, SeqCst);
        // The legacy Cancel completes the operation at once.
        cancel_rx.recv().unwrap().call();
    });
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    cancel_tx.send(rx.recv().unwrap()).unwrap();
    drop(future);
    assert_eq!((probe.cancels(), probe.ends()), (1, 1));
    assert_eq!(
        *probe.end_thread.lock().unwrap(),
        Some(thread::current().id())
    );
}

/// Rule 6: `on_cancel` does not run when the operation completed before the drop.
#[test]
fn rule_6_no_cancel_after_completion() {
    let probe = Probe::new();
    let (tx, rx) = mpsc::channel();
    let mut future = common::probed(&probe, 6, false, Fire::Later(tx));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    rx.recv().unwrap().call();
    drop(future);
    assert_eq!((probe.cancels(), probe.ends()), (0, 1));
}

/// Rule 6: a completion racing the drop is neither lost nor delivered twice: `end` runs
/// exactly once and its result is dropped exactly once, whoever wins.
#[test]
fn rule_6_completion_racing_drop_ends_once() {
    for _ in 0..common::rounds(2_000) {
        let ends = Arc::new(AtomicUsize::new(0));
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (e, d) = (Arc::clone(&ends), Arc::clone(&drops));
        let mut future = apm_tap::from_apm(
            move |cb| legacy_begin(&Probe::default(), cb, 0, false, Fire::Later(tx)),
            move |_| {
                e.fetch_add(1, SeqCst);
                DropCounter(d)
            },
        );
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        let callback = rx.recv().unwrap();
        let start = Arc::new(Barrier::new(2));
        let s = Arc::clone(&start);
        let racer = thread::spawn(move || {
            s.wait();
            callback.call();
        });
        start.wait();
        drop(future);
        racer.join().unwrap();
        assert_eq!(ends.load(SeqCst), 1);
        assert_eq!(drops.load(SeqCst), 1);
    }
}

/// `from_apm`'s signal on real threads (for Miri's data-race and weak-memory checks, and
/// for the spare blocks: each thread makes a new operation on the memory it just
/// freed). The callback is called or dropped on another thread while the future is
/// re-polled with a new waker and dropped, dropped at once, or driven to the end.
#[test]
fn signal_races_on_real_threads() {
    /// One operation whose callback this thread calls at once.
    fn reuse() {
        let (tx, rx) = mpsc::channel();
        let mut future = common::probed(&Probe::new(), 9, false, Fire::Later(tx));
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        rx.recv().unwrap().call();
        assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(9)));
    }
    for round in 0..common::rounds(200) {
        for (mode, call) in [
            ("re-poll, drop", true),
            ("drop", true),
            ("await", true),
            ("await", false),
        ] {
            let probe = Probe::new();
            let (tx, rx) = mpsc::channel();
            let mut future = common::probed(&probe, round as u32, false, Fire::Later(tx));
            let (first_counts, first) = CountingWaker::new();
            let (second_counts, second) = CountingWaker::new();
            assert!(poll_with(&mut future, &first).is_pending());
            let callback = rx.recv().unwrap();
            let racer = thread::spawn(move || {
                if call {
                    callback.call();
                } else {
                    drop(callback);
                }
                reuse();
            });
            match mode {
                "re-poll, drop" => {
                    let _ = poll_with(&mut future, &second);
                    drop(future);
                }
                "drop" => drop(future),
                _ => {
                    let outcome = futures::executor::block_on(future);
                    let expected = if call {
                        Ok(round as u32)
                    } else {
                        Err(Error::Abandoned(Abandonment::CallbackDropped))
                    };
                    assert_eq!(outcome, expected);
                }
            }
            reuse();
            racer.join().unwrap();
            assert_eq!(probe.ends(), usize::from(call), "{mode}, called: {call}");
            assert!(first_counts.wakes() + second_counts.wakes() <= 1);
            assert_eq!(
                (first_counts.clones_held(), second_counts.clones_held()),
                (0, 0)
            );
        }
    }
}

/// Rule 6 for `from_callback`: a completion racing the drop either wins (the value is
/// stored, the hook does not run) or loses (the value comes back to the completer, the
/// hook runs once). Never both, never neither.
#[test]
fn rule_6_from_callback_hook_runs_only_if_the_cancel_won() {
    for _ in 0..common::rounds(2_000) {
        let hooked = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hooked);
        let (tx, rx) = mpsc::channel();
        let mut future = apm_tap::from_callback(move |done: Completer<u8>| tx.send(done).unwrap())
            .on_cancel(move |()| {
                h.fetch_add(1, SeqCst);
            });
        let (_, waker) = CountingWaker::new();
        assert!(poll_with(&mut future, &waker).is_pending());
        let completer = rx.recv().unwrap();
        let start = Arc::new(Barrier::new(2));
        let s = Arc::clone(&start);
        let racer = thread::spawn(move || {
            s.wait();
            completer.complete(3).is_ok()
        });
        start.wait();
        drop(future);
        let stored = racer.join().unwrap();
        assert_eq!(hooked.load(SeqCst), usize::from(!stored));
    }
}

/// Rule 7: only the latest poll's waker is woken, exactly once; re-polling with an equal
/// waker does not clone it, and no waker is kept after completion.
#[test]
fn rule_7_latest_waker_woken_once() {
    let (tx, rx) = mpsc::channel();
    let mut future = apm_tap::from_apm(
        move |cb| legacy_begin(&Probe::default(), cb, 1, false, Fire::Later(tx)),
        |h| h.value,
    );
    let (first, first_waker) = CountingWaker::new();
    let (second, second_waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &first_waker).is_pending());
    assert_eq!(first.clones_held(), 1);
    assert!(poll_with(&mut future, &first_waker).is_pending());
    assert_eq!(first.clones_held(), 1, "an equal waker was cloned again");
    assert!(poll_with(&mut future, &second_waker).is_pending());
    assert_eq!(first.clones_held(), 0, "the replaced waker was kept");
    assert_eq!(second.clones_held(), 1);
    rx.recv().unwrap().call();
    assert_eq!((first.wakes(), second.wakes()), (0, 1));
    assert_eq!(poll_with(&mut future, &second_waker), Poll::Ready(Ok(1)));
    assert_eq!(second.clones_held(), 0);
}

/// The scenarios of rule 8, as one future: later completion on a legacy thread,
/// synchronous completion, abandonment, `from_callback` and `from_async_result`.
fn scenarios() -> BoxFuture<'static, ()> {
    async {
        let later = apm_tap::from_apm(
            |cb| {
                let completed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let c = Arc::clone(&completed);
                thread::spawn(move || {
                    c.store(true, SeqCst);
                    cb.call();
                });
                common::LegacyHandle {
                    value: 10,
                    synchronous: false,
                    completed,
                }
            },
            |h| h.value,
        );
        let sync = apm_tap::from_apm(
            |cb| legacy_begin(&Probe::default(), cb, 11, true, Fire::InsideBegin),
            |h| h.value,
        );
        let abandoned = apm_tap::from_apm(
            |cb| legacy_begin(&Probe::default(), cb, 12, false, Fire::Drop),
            |h| h.value,
        );
        let callback = apm_tap::from_callback(|done| {
            thread::spawn(move || done.complete((13, String::from("thirteen"))).unwrap());
        });
        let (completer, handle) = Completer::new();
        thread::spawn(move || completer.complete(14_u32).unwrap());
        let started = apm_tap::from_async_result(handle, |h| h.end());
        let results = futures::join!(later, sync, abandoned, callback, started);
        assert_eq!(
            results,
            (
                Ok(10),
                Ok(11),
                Err(Error::Abandoned(Abandonment::CallbackDropped)),
                Ok((13, String::from("thirteen"))),
                Ok(14)
            )
        );
    }
    .boxed()
}

/// Rule 8: no runtime needed; the same scenarios pass on `futures::executor`.
#[test]
fn rule_8_futures_executor() {
    futures::executor::block_on(scenarios());
    let pool = futures::executor::ThreadPool::new().unwrap();
    let (tx, rx) = mpsc::channel();
    pool.spawn_ok(async move {
        scenarios().await;
        tx.send(()).unwrap();
    });
    rx.recv().unwrap();
}

/// Rule 8: on tokio's current-thread runtime.
#[test]
fn rule_8_tokio_current_thread() {
    common::current_thread().block_on(scenarios());
}

/// Rule 8: on tokio's multi-thread runtime, in `block_on` and in a spawned task.
#[test]
fn rule_8_tokio_multi_thread() {
    let runtime = common::multi_thread(2, "rule-8");
    runtime.block_on(scenarios());
    runtime.block_on(async { tokio::spawn(scenarios()).await.unwrap() });
}

/// The futures compose: `select!` against a timeout and `join_all`.
#[test]
fn composes_with_select_timeout_and_join_all() {
    common::current_thread().block_on(async {
        let (tx, _kept) = mpsc::channel();
        let never = apm_tap::from_apm(
            move |cb| legacy_begin(&Probe::default(), cb, 0, false, Fire::Later(tx)),
            |h| h.value,
        );
        let timed_out = tokio::time::timeout(std::time::Duration::from_millis(5), never).await;
        assert!(timed_out.is_err());

        let all = futures::future::join_all((0..10).map(|i| {
            apm_tap::from_apm(
                move |cb| legacy_begin(&Probe::default(), cb, i, false, Fire::InsideBegin),
                |h| h.value,
            )
        }))
        .await;
        assert_eq!(all, (0..10).map(Ok).collect::<Vec<_>>());

        let fast = apm_tap::from_callback(|done| done.complete("fast").unwrap());
        // Kept, never completed: the slow operation stays pending.
        let mut unfinished = None;
        let slow = apm_tap::from_callback(|done: Completer<&str>| unfinished = Some(done));
        tokio::select! {
            value = fast => assert_eq!(value, Ok("fast")),
            _ = slow => unreachable!("the slow operation never completes"),
        }
    });
}

/// `from_callback`: lazy, one value or a tuple, `Abandoned` when the completer is dropped,
/// and a value arriving after the future was dropped is dropped exactly once.
#[test]
fn from_callback_delivers_tuple_or_abandoned() {
    let starts = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&starts);
    let future = apm_tap::from_callback(move |done| {
        s.fetch_add(1, SeqCst);
        done.complete((1, 'a', "x")).unwrap();
    });
    assert_eq!(starts.load(SeqCst), 0);
    assert_eq!(futures::executor::block_on(future), Ok((1, 'a', "x")));
    assert_eq!(starts.load(SeqCst), 1);

    let dropped = apm_tap::from_callback(|done: Completer<u8>| drop(done));
    assert_eq!(
        futures::executor::block_on(dropped),
        Err(Error::Abandoned(Abandonment::CompleterDropped))
    );

    let drops = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let mut future = apm_tap::from_callback(move |done| tx.send(done).unwrap());
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    // Dropping the future cancelled the operation: the late value comes back, once.
    let late = rx.recv().unwrap();
    assert!(late.is_cancelled());
    let back = late.complete(DropCounter(Arc::clone(&drops)));
    assert!(back.is_err());
    drop(back);
    assert_eq!(drops.load(SeqCst), 1);
}

/// `from_callback`'s `on_cancel`: runs once with what `start` returned when the future
/// is dropped before completion; not after completion, not before the first poll.
#[test]
fn from_callback_on_cancel_gets_the_registration() {
    let cancels = Arc::new(AtomicUsize::new(0));
    let hook = |cancels: &Arc<AtomicUsize>| {
        let c = Arc::clone(cancels);
        move |request: u32| {
            assert_eq!(request, 17);
            c.fetch_add(1, SeqCst);
        }
    };
    let (tx, rx) = mpsc::channel();
    let mut pending = apm_tap::from_callback(move |done: Completer<u8>| {
        tx.send(done).unwrap();
        17_u32
    })
    .on_cancel(hook(&cancels));
    let (_, waker) = CountingWaker::new();
    assert!(poll_with(&mut pending, &waker).is_pending());
    drop(pending);
    assert_eq!(cancels.load(SeqCst), 1);
    assert_eq!(rx.recv().unwrap().complete(1), Err(1));

    let mut done = apm_tap::from_callback(|done: Completer<u8>| {
        done.complete(2).unwrap();
        17_u32
    })
    .on_cancel(hook(&cancels));
    assert_eq!(poll_with(&mut done, &waker), Poll::Ready(Ok(2)));
    drop(done);
    let never_polled = apm_tap::from_callback(|_: Completer<u8>| 17_u32).on_cancel(hook(&cancels));
    drop(never_polled);
    assert_eq!(cancels.load(SeqCst), 1);
}

/// Every future of the crate is a `FusedFuture`, terminated once it returned `Ready`:
/// `select!` in a loop needs no `.fuse()`.
#[test]
fn futures_are_fused() {
    use futures::future::FusedFuture;
    let (_, waker) = CountingWaker::new();
    let mut apm = apm_tap::from_apm(
        |cb| legacy_begin(&Probe::default(), cb, 1, false, Fire::InsideBegin),
        |h| h.value,
    );
    let mut tried = apm_tap::try_from_apm(
        |cb| Ok::<_, io::Error>(legacy_begin(&Probe::default(), cb, 2, true, Fire::Drop)),
        |h| Ok(h.value),
    );
    let (completer, handle) = Completer::new();
    completer.complete(3).unwrap();
    let mut started = apm_tap::from_async_result(handle.clone(), |h| h.end());
    let mut callback = apm_tap::from_callback(|done| done.complete(4).unwrap());
    let mut awaited = handle;
    assert!(!apm.is_terminated() && !tried.is_terminated() && !started.is_terminated());
    assert!(!callback.is_terminated() && !awaited.is_terminated());
    assert_eq!(poll_with(&mut apm, &waker), Poll::Ready(Ok(1)));
    assert!(matches!(poll_with(&mut tried, &waker), Poll::Ready(Ok(2))));
    assert_eq!(poll_with(&mut started, &waker), Poll::Ready(Ok(3)));
    assert_eq!(poll_with(&mut callback, &waker), Poll::Ready(Ok(4)));
    assert_eq!(
        poll_with(&mut awaited, &waker),
        Poll::Ready(Err(Error::AlreadyEnded))
    );
    assert!(apm.is_terminated() && tried.is_terminated() && started.is_terminated());
    assert!(callback.is_terminated() && awaited.is_terminated());

    // `select!` in a loop, on the futures themselves.
    futures::executor::block_on(async {
        let mut first = apm_tap::from_callback(|done| done.complete("first").unwrap());
        let (completer, mut second) = Completer::new();
        completer.complete("second").unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            futures::select! {
                value = first => seen.push(value),
                value = second => seen.push(value),
            }
        }
        let mut seen: Vec<&str> = seen.into_iter().map(Result::unwrap).collect();
        seen.sort();
        assert_eq!(seen, ["first", "second"]);
    });
}
