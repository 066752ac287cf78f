//! Progress reporting: reports never outlive completion, arrive in order and one at a
//! time, and are refused once the operation completed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;

use apm_tap::progress::{self, Progress, Update};
use apm_tap::stream::{Buffer, Emit, Overflow};
use apm_tap::{AsyncResult, Builder, Error};
use common::DropCounter;
use futures::StreamExt;

#[test]
fn reports_racing_completion_are_delivered_before_the_result_or_refused() {
    for _ in 0..if cfg!(miri) { 3 } else { 200 } {
        let (give, take) = mpsc::channel::<Progress<u64>>();
        let (finish, finished) = mpsc::channel::<()>();
        let job = progress::reporting_with(Buffer::unbounded(), move |progress| {
            give.send(progress).unwrap();
            async move {
                // Completes when told, while the reporter keeps reporting.
                futures::future::poll_fn(|_| match finished.try_recv() {
                    Ok(()) => std::task::Poll::Ready(()),
                    Err(_) => std::task::Poll::Pending,
                })
                .await;
                "done"
            }
        });
        let reporter = thread::spawn(move || {
            let progress = take.recv().unwrap();
            let mut accepted = Vec::new();
            for seq in 0..10_000_u64 {
                match progress.report(seq) {
                    Emit::Queued => accepted.push(seq),
                    Emit::Closed(refused) => {
                        assert_eq!(refused, seq);
                        // Once refused, always refused.
                        assert!(matches!(progress.report(seq + 1), Emit::Closed(_)));
                        break;
                    }
                    other => panic!("unbounded: {:?}", other.is_queued()),
                }
                if seq == 100 {
                    finish.send(()).unwrap();
                }
            }
            accepted
        });
        let updates: Vec<Update<u64, &str>> = common::current_thread().block_on(async {
            let mut job = std::pin::pin!(job);
            let mut updates = Vec::new();
            // The job is polled again by every report's wake-up, so it sees the signal.
            while let Some(update) = job.next().await {
                updates.push(update);
            }
            updates
        });
        let accepted = reporter.join().unwrap();
        let (last, reports) = updates.split_last().unwrap();
        assert_eq!(*last, Update::Done("done"));
        let delivered: Vec<u64> = reports
            .iter()
            .map(|update| match update {
                Update::Progress(seq) => *seq,
                Update::Done(_) => panic!("one result, last"),
            })
            .collect();
        assert_eq!(
            delivered, accepted,
            "every accepted report, in order, before the result"
        );
    }
}

#[test]
fn reports_from_eight_threads_arrive_in_per_thread_order_one_at_a_time() {
    for buffer in [Buffer::unbounded(), Buffer::latest()] {
        let per_thread = if cfg!(miri) { 20 } else { 2_000 };
        let start = Arc::new(Barrier::new(8));
        let (give, take) = mpsc::channel();
        let job = progress::reporting_with(buffer, move |progress: Progress<(usize, u64)>| {
            let reporters: Vec<_> = (0..8)
                .map(|thread| {
                    let (progress, start) = (progress.clone(), Arc::clone(&start));
                    thread::spawn(move || {
                        start.wait();
                        (0..per_thread)
                            .filter(|&seq| progress.report((thread, seq)) == Emit::Queued)
                            .count()
                    })
                })
                .collect();
            give.send(()).unwrap();
            async move {
                reporters
                    .into_iter()
                    .map(|reporter| reporter.join().unwrap())
                    .sum::<usize>()
            }
        });
        let inside = AtomicBool::new(false);
        let mut last = [None::<u64>; 8];
        let mut handled = 0;
        let queued = futures::executor::block_on(job.on_progress(|(thread, seq)| {
            assert!(!inside.swap(true, SeqCst), "two handlers at once");
            assert!(
                last[thread] < Some(seq),
                "thread {thread}: {seq} after {:?}",
                last[thread]
            );
            last[thread] = Some(seq);
            handled += 1;
            inside.store(false, SeqCst);
        }));
        take.recv().unwrap();
        if buffer == Buffer::unbounded() {
            assert_eq!(queued, 8 * per_thread as usize);
            assert_eq!(handled, 8 * per_thread as usize, "nothing lost");
        } else {
            assert!(handled >= 1);
        }
    }
}

#[test]
fn a_report_after_completion_is_refused_and_handed_back() {
    let (give, take) = mpsc::channel();
    let job = progress::reporting(move |progress: Progress<String>| {
        give.send(progress).unwrap();
        async { 1 }
    });
    let updates: Vec<_> = futures::executor::block_on(job.collect());
    assert_eq!(updates, [Update::Done(1)]);
    let progress = take.recv().unwrap();
    assert!(progress.is_closed());
    assert_eq!(
        progress.report("late".to_owned()),
        Emit::Closed("late".to_owned())
    );
}

#[test]
fn the_none_reporter_refuses_everything() {
    let progress = Progress::none();
    assert!(progress.is_closed());
    assert_eq!(progress.clone().report(3), Emit::Closed(3));
}

#[test]
fn dropping_the_reader_refuses_later_reports_and_drops_the_unread_once() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (give, take) = mpsc::channel();
    let job = progress::reporting_with(
        Buffer::unbounded(),
        move |progress: Progress<DropCounter>| {
            give.send(progress).unwrap();
            futures::future::pending::<()>()
        },
    );
    let mut job = Box::pin(job);
    let waker = futures::task::noop_waker();
    let cx = &mut std::task::Context::from_waker(&waker);
    assert!(futures::Stream::poll_next(job.as_mut(), cx).is_pending());
    let progress = take.recv().unwrap();
    for _ in 0..3 {
        assert!(progress
            .report(DropCounter(Arc::clone(&dropped)))
            .is_queued());
    }
    drop(job);
    assert_eq!(dropped.load(SeqCst), 3);
    let Emit::Closed(late) = progress.report(DropCounter(Arc::clone(&dropped))) else {
        panic!("refused");
    };
    drop(late);
    assert_eq!(dropped.load(SeqCst), 4);
}

#[test]
fn apm_progress_reaches_on_progress_before_the_callback_and_end() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let at_callback = Arc::new(Mutex::new(Vec::new()));
    let copy = Arc::clone(&at_callback);
    let observed = Arc::clone(&seen);
    let (callback_ran, ran) = mpsc::channel();
    let handle = Builder::new()
        .callback(move |handle: AsyncResult<u32>| {
            *copy.lock().unwrap() = observed.lock().unwrap().clone();
            callback_ran.send(handle.end()).unwrap();
        })
        .begin(
            progress::reporting_with(Buffer::unbounded(), |progress| async move {
                for step in 1..=5 {
                    let _ = progress.report(step);
                    tokio::task::yield_now().await;
                }
                99
            })
            .on_progress(move |step: u32| log.lock().unwrap().push(step)),
        );
    assert_eq!(ran.recv().unwrap(), Ok(99));
    assert_eq!(*at_callback.lock().unwrap(), [1, 2, 3, 4, 5]);
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

#[test]
fn a_panicking_progress_handler_ends_the_operation_as_panicked() {
    let handle = progress::begin(
        |progress| async move {
            let _ = progress.report(1);
            2
        },
        |_: u32| panic!("handler failed"),
    );
    assert_eq!(
        common::panic_message(handle.end()),
        Ok(Some("handler failed".to_owned()))
    );
}

#[test]
fn an_overflowed_fail_buffer_refuses_reports_but_keeps_the_result() {
    let (go, wait) = futures::channel::oneshot::channel::<()>();
    let job = progress::reporting_with(
        Buffer::bounded(1, Overflow::Fail),
        move |progress| async move {
            assert_eq!(progress.report(1), Emit::Queued);
            assert_eq!(progress.report(2), Emit::Rejected(2));
            assert_eq!(progress.report(3), Emit::Closed(3));
            let _ = wait.await;
            "done"
        },
    );
    let mut job = Box::pin(job);
    futures::executor::block_on(async {
        assert_eq!(job.next().await, Some(Update::Progress(1)));
        assert!(
            futures::poll!(job.next()).is_pending(),
            "the operation still runs"
        );
        drop(go);
        assert_eq!(job.next().await, Some(Update::Done("done")));
        assert_eq!(job.next().await, None);
    });
}

/// A result whose drop panics.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("result drop failed");
    }
}

#[test]
fn a_result_nobody_took_is_dropped_quietly_with_the_reader() {
    let mut job = Box::pin(progress::reporting(|progress| async move {
        let _ = progress.report(1_u8);
        PanicsOnDrop
    }));
    assert!(matches!(
        futures::executor::block_on(job.next()),
        Some(Update::Progress(1))
    ));
    // The result is held until the report before it is read: the drop drops it.
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(job))).is_ok());
}

#[test]
fn latest_starts_from_an_unread_report_and_follows_every_accepted_one() {
    let job = progress::reporting_with(Buffer::bounded(1, Overflow::DropNewest), |progress| {
        // Made before anyone asked for the latest: still unread, so it counts.
        assert_eq!(progress.report(7_u32), Emit::Queued);
        assert_eq!(progress.report(8), Emit::Rejected(8), "full: refused");
        async move { progress }
    });
    let latest = job.latest();
    assert_eq!(latest.get(), Some(7), "a refused report does not count");
    let mut job = Box::pin(job);
    let first = futures::executor::block_on(job.next());
    assert!(matches!(first, Some(Update::Progress(7))));
    assert_eq!(latest.get(), Some(7), "read, and still the newest");
    let Some(Update::Done(progress)) = futures::executor::block_on(job.next()) else {
        panic!("the result comes last");
    };
    assert_eq!(progress.report(9), Emit::Closed(9));
    assert_eq!(
        latest.get(),
        Some(7),
        "refused after completion: does not count"
    );
    assert_eq!(latest.clone().get(), Some(7));
}

#[test]
fn latest_read_from_another_thread_never_goes_back() {
    const REPORTS: u32 = if cfg!(miri) { 50 } else { 100_000 };
    let (give, take) = mpsc::channel::<Progress<u32>>();
    let (finish, finished) = futures::channel::oneshot::channel::<()>();
    let job = progress::reporting(move |progress| {
        give.send(progress).unwrap();
        async move { finished.await.unwrap() }
    });
    let latest = job.latest();
    let handle = apm_tap::begin(job.on_progress(|_| {}));
    let progress = take.recv().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (latest, done) = (latest.clone(), Arc::clone(&done));
        thread::spawn(move || {
            let mut last = None;
            while !done.load(SeqCst) {
                let now = latest.get();
                assert!(now >= last, "went back from {last:?} to {now:?}");
                last = now;
            }
        })
    };
    for i in 1..=REPORTS {
        assert!(matches!(
            progress.report(i),
            Emit::Queued | Emit::Evicted(_)
        ));
    }
    done.store(true, SeqCst);
    reader.join().unwrap();
    assert_eq!(latest.get(), Some(REPORTS));
    finish.send(()).unwrap();
    assert_eq!(handle.end(), Ok(()));
}

#[test]
fn latest_does_not_know_a_report_read_before_it_was_asked_for() {
    let (go, went) = futures::channel::oneshot::channel::<()>();
    let mut job = Box::pin(progress::reporting(|progress| async move {
        let _ = progress.report(1_u32);
        went.await.unwrap();
        let _ = progress.report(2);
        "done"
    }));
    let first = futures::executor::block_on(job.next());
    assert!(matches!(first, Some(Update::Progress(1))));
    let latest = job.latest();
    assert_eq!(latest.get(), None, "1 was read before `latest`");
    go.send(()).unwrap();
    let rest: Vec<_> = futures::executor::block_on(job.collect());
    assert!(matches!(
        rest[..],
        [Update::Progress(2), Update::Done("done")]
    ));
    assert_eq!(latest.get(), Some(2));
}
