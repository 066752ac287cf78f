//! Future to APM: rules 9 to 16 of DESIGN.md, from plain threads, inside a multi-thread
//! tokio runtime and inside a current-thread runtime.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier};
use std::thread::{self, ThreadId};
use std::time::Duration;

use apm_tap::{Abandonment, AsyncCallback, AsyncResult, Error, PollHandle, Spawner, State, Task};
use common::DropCounter;
use tokio::sync::oneshot;

/// Where a test body runs: a plain thread, a multi-thread runtime's `block_on`, a task
/// spawned on it, and a current-thread runtime's `block_on`.
fn in_every_context(body: fn()) {
    thread::spawn(body).join().unwrap();
    let multi = common::multi_thread(2, "ctx-multi");
    multi.block_on(async { body() });
    multi.block_on(async { tokio::spawn(async move { body() }).await.unwrap() });
    common::current_thread().block_on(async { body() });
}

/// What the callback saw.
#[derive(Debug)]
struct Seen {
    thread: ThreadId,
    begin_had_returned: bool,
    completed: bool,
    synchronous: bool,
}

/// A callback that reports what it saw, with the flag the test sets when `begin` returns.
fn reporting_callback<T: Send + 'static>(
    returned: &Arc<AtomicBool>,
) -> (AsyncCallback<T>, mpsc::Receiver<(Seen, AsyncResult<T>)>) {
    let (tx, rx) = mpsc::channel();
    let returned = Arc::clone(returned);
    let callback = AsyncCallback::new(move |handle: AsyncResult<T>| {
        let seen = Seen {
            thread: thread::current().id(),
            begin_had_returned: returned.load(SeqCst),
            completed: handle.is_completed(),
            synchronous: handle.completed_synchronously(),
        };
        tx.send((seen, handle)).unwrap();
    });
    (callback, rx)
}

/// Rule 9's synchronous case: the callback already ran, on this thread, before `begin`
/// returned, and saw the operation complete and synchronous; so does the handle.
fn assert_completed_inside_begin<T>(
    seen: &mpsc::Receiver<(Seen, AsyncResult<T>)>,
    handle: &AsyncResult<T>,
) {
    let (seen, _) = seen.try_recv().expect("the callback ran inside begin");
    assert_eq!(seen.thread, thread::current().id());
    assert!(!seen.begin_had_returned);
    assert!(seen.completed && seen.synchronous, "{seen:?}");
    assert!(handle.completed_synchronously());
}

/// Rule 9: a future ready on its first poll completes synchronously: the callback runs on
/// the caller's thread before `begin` returns, and sees `completed_synchronously`.
#[test]
fn rule_9_ready_future_completes_synchronously() {
    in_every_context(|| {
        let returned = Arc::new(AtomicBool::new(false));
        let (callback, seen) = reporting_callback(&returned);
        let handle = apm_tap::Builder::new()
            .callback(callback)
            .begin(async { 9 });
        returned.store(true, SeqCst);
        assert_completed_inside_begin(&seen, &handle);
        assert_eq!(handle.end(), Ok(9));
    });
}

/// Rule 9: the first poll runs inside the runtime's context, so tokio resources work
/// even when `begin` is called from a plain thread.
#[test]
fn rule_9_first_poll_runs_in_runtime_context() {
    let handle =
        thread::spawn(|| apm_tap::begin(async { tokio::runtime::Handle::try_current().is_ok() }))
            .join()
            .unwrap();
    assert!(handle.completed_synchronously());
    assert_eq!(handle.end(), Ok(true));
}

/// Rule 9: a future pending on its first poll is not synchronous, ever, and its callback
/// never runs inside `begin`.
#[test]
fn rule_9_pending_future_is_never_synchronous() {
    // Plain thread: the result arrives after `begin` returned.
    let returned = Arc::new(AtomicBool::new(false));
    let (callback, seen) = reporting_callback(&returned);
    let (tx, rx) = oneshot::channel::<u32>();
    let handle = apm_tap::Builder::new()
        .callback(callback)
        .begin(async move { rx.await.unwrap() });
    returned.store(true, SeqCst);
    assert!(!handle.is_completed() && !handle.completed_synchronously());
    tx.send(10).unwrap();
    let (seen, _) = seen.recv().unwrap();
    assert_ne!(seen.thread, thread::current().id());
    assert!(
        seen.begin_had_returned && seen.completed && !seen.synchronous,
        "{seen:?}"
    );
    assert!(!handle.completed_synchronously());
    assert_eq!(handle.end(), Ok(10));

    // A future that finishes on a worker at once may complete before `begin` returns,
    // but on another thread, never inside `begin`.
    in_every_context(|| {
        for _ in 0..common::rounds(100) {
            let returned = Arc::new(AtomicBool::new(false));
            let (callback, seen) = reporting_callback(&returned);
            let handle = apm_tap::Builder::new()
                .callback(callback)
                .begin(async { tokio::task::yield_now().await });
            returned.store(true, SeqCst);
            assert!(!handle.completed_synchronously());
            if tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
            {
                // The current-thread runtime runs the task only once this thread yields.
                assert!(seen.try_recv().is_err());
                return;
            }
            // `end` first: it blocks in place, letting the runtime run the task; a plain
            // `recv` on a worker could starve it.
            assert_eq!(handle.end(), Ok(()));
            let (seen, _) = seen.recv().unwrap();
            assert!(
                seen.thread != thread::current().id() || seen.begin_had_returned,
                "{seen:?}"
            );
            assert!(!seen.synchronous);
        }
    });
}

/// Rule 9 on every path: when the operation completes inside `spawn` on this thread (a
/// tokio handle whose runtime shut down and a spawner that drop the task, or a spawner
/// that runs it there and then), it completes inside Begin: synchronously, with the
/// callback run on this thread before `begin` returns, never inside the spawner with
/// `completed_synchronously` false.
#[test]
fn rule_9_completion_inside_spawn_is_synchronous() {
    let shut_down = {
        let runtime = common::multi_thread(1, "shut-down");
        let handle = runtime.handle().clone();
        drop(runtime);
        handle
    };
    let refusing = |task: Task| drop(task);
    let inline = |task: Task| futures::executor::block_on(task);
    let abandoned = Err(Error::Abandoned(Abandonment::TaskDropped));
    let cases: [(&dyn Spawner, Result<u8, Error>); 3] = [
        (&shut_down, abandoned.clone()),
        (&refusing, abandoned),
        (&inline, Ok(9)),
    ];
    for (spawner, expected) in cases {
        let returned = Arc::new(AtomicBool::new(false));
        let (callback, seen) = reporting_callback(&returned);
        let handle = apm_tap::Builder::new()
            .callback(callback)
            .spawner(spawner)
            .begin(async {
                tokio::task::yield_now().await;
                9
            });
        returned.store(true, SeqCst);
        assert_completed_inside_begin(&seen, &handle);
        assert_eq!(handle.end(), expected);
    }
}

/// A spawner whose `enter` calls its closure twice: the future is polled inline once
/// all the same (a second poll of a finished future used to panic inside the crate).
#[test]
fn enter_that_runs_its_closure_twice_polls_once() {
    struct Twice;
    impl Spawner for Twice {
        fn spawn(&self, task: Task) {
            futures::executor::block_on(task);
        }
        fn enter(&self, f: &mut dyn FnMut()) {
            f();
            f();
        }
    }
    let polls = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&polls);
    let ready = apm_tap::begin_on(
        &Twice,
        std::future::poll_fn(move |_| {
            p.fetch_add(1, SeqCst);
            std::task::Poll::Ready(5)
        }),
    );
    assert_eq!((ready.end(), polls.load(SeqCst)), (Ok(5), 1));
    let pending = apm_tap::begin_on(&Twice, async {
        tokio::task::yield_now().await;
        6
    });
    assert!(pending.completed_synchronously()); // finished inside `spawn`, here
    assert_eq!(pending.end(), Ok(6));
}

/// `begin` in a thread-local destructor that runs after tokio's own thread-local is
/// gone: it works (it used to panic there, inside tokio, and abort the process).
#[test]
fn begin_works_in_a_thread_local_destructor() {
    struct BeginsOnExit(mpsc::Sender<(bool, Result<u8, Error>)>);
    impl Drop for BeginsOnExit {
        fn drop(&mut self) {
            let ready = apm_tap::begin(async { 13 });
            let pending = apm_tap::begin(async {
                tokio::task::yield_now().await;
                14
            });
            let synchronous = ready.completed_synchronously();
            self.0.send((synchronous, ready.end())).unwrap();
            self.0
                .send((pending.completed_synchronously(), pending.end()))
                .unwrap();
        }
    }
    thread_local! {
        static ON_EXIT: std::cell::RefCell<Option<BeginsOnExit>> =
            const { std::cell::RefCell::new(None) };
    }
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // Set before tokio's thread-local is first used, so destroyed after it.
        ON_EXIT.with(|slot| *slot.borrow_mut() = Some(BeginsOnExit(tx)));
        assert_eq!(apm_tap::begin(async { 0 }).end(), Ok(0));
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv().unwrap(), (true, Ok(13)));
    assert_eq!(rx.recv().unwrap(), (false, Ok(14)));
}

/// Rule 10: the callback runs once, after the result is stored, with a clone of the
/// handle `begin` returned; `end` inside it does not block.
#[test]
fn rule_10_callback_sees_stored_result_on_a_clone() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (tx, rx) = mpsc::channel();
    let (go, gate) = oneshot::channel::<()>();
    let handle = apm_tap::Builder::new()
        .callback(move |h: AsyncResult<&'static str>| {
            c.fetch_add(1, SeqCst);
            assert!(h.is_completed());
            let clone = h.clone();
            tx.send((clone, h.end())).unwrap();
        })
        .begin(async move {
            gate.await.unwrap();
            "stored"
        });
    go.send(()).unwrap();
    let (inside, ended) = rx.recv().unwrap();
    assert!(inside.ptr_eq(&handle));
    assert_eq!(ended, Ok("stored"));
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
    assert_eq!(calls.load(SeqCst), 1);
}

/// Rule 11: `end` returns the value once; later `end`s and awaits on clones get
/// `AlreadyEnded`; `wait` and `wait_timeout` do not consume.
#[test]
fn rule_11_end_once_wait_does_not_consume() {
    let (tx, rx) = oneshot::channel::<u8>();
    let handle = apm_tap::begin(async move { rx.await.unwrap() });
    assert_eq!(handle.wait_timeout(Duration::ZERO), Ok(false));
    assert_eq!(
        handle.wait_timeout(Duration::from_millis(5)),
        Ok(false),
        "completed early"
    );
    tx.send(11).unwrap();
    handle.wait().unwrap();
    assert_eq!(handle.wait_timeout(Duration::from_secs(60)), Ok(true));
    let (a, b, c) = (handle.clone(), handle.clone(), handle.clone());
    assert_eq!(a.end(), Ok(11));
    assert_eq!(b.end(), Err(Error::AlreadyEnded));
    assert_eq!(futures::executor::block_on(c), Err(Error::AlreadyEnded));
    handle.wait().unwrap();
    assert_eq!(handle.end(), Err(Error::AlreadyEnded));
}

/// Rule 11: two clones racing to `end` get one value and one `AlreadyEnded`; the value
/// is dropped exactly once.
#[test]
fn rule_11_racing_ends_deliver_once() {
    for _ in 0..common::rounds(500) {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&drops);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = apm_tap::begin(async move {
            rx.await.unwrap();
            DropCounter(d)
        });
        let start = Arc::new(Barrier::new(2));
        let (s, other) = (Arc::clone(&start), handle.clone());
        let racer = thread::spawn(move || {
            s.wait();
            other.end().is_ok()
        });
        start.wait();
        tx.send(()).unwrap();
        let mine = handle.end();
        let theirs = racer.join().unwrap();
        assert!(mine.is_ok() != theirs, "exactly one end gets the value");
        if let Err(e) = &mine {
            assert_eq!(*e, Error::AlreadyEnded);
        }
        drop(mine);
        assert_eq!(drops.load(SeqCst), 1);
    }
}

/// Rule 12: on a current-thread runtime, a blocking `end`/`wait` on an unfinished
/// operation returns `WouldDeadlock` at once instead of hanging; `.await` works.
#[test]
fn rule_12_current_thread_refuses_to_deadlock() {
    common::current_thread().block_on(async {
        let (tx, rx) = oneshot::channel::<u8>();
        let handle = apm_tap::begin(async move { rx.await.unwrap() });
        assert_eq!(handle.wait(), Err(Error::WouldDeadlock));
        assert_eq!(
            handle.wait_timeout(Duration::from_secs(60)),
            Err(Error::WouldDeadlock)
        );
        assert_eq!(handle.wait_timeout(Duration::ZERO), Ok(false));
        assert_eq!(handle.clone().end(), Err(Error::WouldDeadlock));
        tx.send(12).unwrap();
        assert_eq!(handle.clone().await, Ok(12));
        // Complete: no blocking needed, so no refusal.
        assert_eq!(handle.wait(), Ok(()));
        assert_eq!(handle.end(), Err(Error::AlreadyEnded));
    });
}

/// Rule 12: the refusal holds in a task of the current-thread runtime too, not only in
/// its `block_on`, and `begin_on` with the runtime's handle is detected like `begin`.
#[test]
fn rule_12_refuses_in_the_runtimes_tasks() {
    let runtime = common::current_thread();
    let refused = runtime.block_on(async {
        let handle = tokio::runtime::Handle::current();
        tokio::spawn(async move {
            let (_tx, rx) = oneshot::channel::<u8>();
            let op = apm_tap::begin_on(&handle, async move { rx.await.unwrap_or(0) });
            (op.clone().end(), op.wait_timeout(Duration::from_millis(1)))
        })
        .await
        .unwrap()
    });
    assert_eq!(
        refused,
        (Err(Error::WouldDeadlock), Err(Error::WouldDeadlock))
    );
}

/// Rule 12: nothing is refused where nothing can deadlock. On a current-thread
/// runtime's thread, an operation that another thread completes, or whose task runs on
/// another runtime, is waited for (stalling this runtime meanwhile, as `# Blocking`
/// says), timed waits included.
#[test]
fn rule_12_current_thread_waits_for_work_done_elsewhere() {
    let elsewhere = common::multi_thread(1, "elsewhere");
    common::current_thread().block_on(async {
        let (completer, handle) = apm_tap::Completer::new();
        assert_eq!(handle.wait_timeout(Duration::from_millis(1)), Ok(false));
        let completing = thread::spawn(move || completer.complete(5));
        assert_eq!(handle.end(), Ok(5));
        completing.join().unwrap().unwrap();
        let other = apm_tap::begin_on(&elsewhere, async {
            tokio::task::yield_now().await;
            6
        });
        assert_eq!(other.end(), Ok(6));
    });
}

/// Rule 12: in `spawn_blocking` (where tokio says blocking calls go), waiting for an
/// operation whose task runs on the same current-thread runtime blocks, while that
/// runtime's driver runs the task.
#[test]
fn rule_12_spawn_blocking_may_wait() {
    let value = common::current_thread().block_on(async {
        let (tx, rx) = oneshot::channel::<u8>();
        let handle = apm_tap::begin(async move { rx.await.unwrap() });
        tokio::task::spawn_blocking(move || {
            // Unfinished until this thread sends: the wait has to block.
            let waited = handle.wait_timeout(Duration::from_millis(1));
            tx.send(12).unwrap();
            (waited, handle.end())
        })
        .await
        .unwrap()
    });
    assert_eq!(value, (Ok(false), Ok(12)));
}

/// Rule 12, and no panic from tokio: a current-thread `block_on` that entered a
/// multi-thread runtime's handle ends an operation running on the latter by blocking
/// (it used to panic in `block_in_place`).
#[test]
fn rule_12_multi_thread_handle_entered_in_current_thread_block_on() {
    let multi = common::multi_thread(1, "entered");
    let value = common::current_thread().block_on(async {
        let _entered = multi.enter();
        let handle = apm_tap::begin(async {
            tokio::task::yield_now().await;
            thread::current().name().map(str::to_owned)
        });
        handle.end()
    });
    assert_eq!(value, Ok(Some("entered".to_owned())));
}

/// Rule 12, what cannot be detected: a task on a current-thread runtime that no thread
/// drives (its `block_on` returned). tokio cannot tell whether a thread will drive it
/// again, so a wait waits: it ends when one does, or with `Abandoned` once the runtime
/// is dropped.
// The handle is returned out of `block_on` unawaited on purpose: that is the case.
#[allow(clippy::async_yields_async)]
#[test]
fn rule_12_undriven_current_thread_runtime_is_waited_for() {
    let runtime = common::current_thread();
    let handle = runtime.block_on(async {
        apm_tap::begin(async {
            tokio::task::yield_now().await;
            4
        })
    });
    assert_eq!(handle.wait_timeout(Duration::from_millis(10)), Ok(false));
    let mut driven = handle.clone();
    runtime.block_on(std::future::poll_fn(|cx| driven.poll_completed(cx)));
    assert_eq!(handle.end(), Ok(4));

    let handle = apm_tap::begin_on(&runtime, std::future::pending::<u8>());
    let waiting = thread::spawn(move || handle.end());
    drop(runtime);
    assert_eq!(
        waiting.join().unwrap(),
        Err(Error::Abandoned(Abandonment::TaskDropped))
    );
}

/// Rule 12: on a multi-thread worker, `end` blocks in place and the runtime keeps going,
/// even with one worker that must also run the operation.
#[test]
fn rule_12_multi_thread_blocks_in_place() {
    let runtime = common::multi_thread(1, "rule-12");
    let value = runtime.block_on(async {
        tokio::spawn(async {
            let handle = apm_tap::begin(async {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                thread::current().name().map(str::to_owned)
            });
            handle.end()
        })
        .await
        .unwrap()
    });
    assert_eq!(value, Ok(Some("rule-12".to_owned())));
}

/// Rule 12: from a plain thread, `end` blocks until a result produced on the runtime.
#[test]
fn rule_12_plain_thread_blocks_until_done() {
    let (tx, rx) = oneshot::channel::<&str>();
    let handle = apm_tap::begin(async move { rx.await.unwrap() });
    let sender = thread::spawn(move || tx.send("late").unwrap());
    assert_eq!(handle.end(), Ok("late"));
    sender.join().unwrap();
}

/// Rule 13: a panicking future completes with `Panicked(message)`, the callback runs
/// once, and the runtime keeps serving other operations; on the first poll too.
#[test]
fn rule_13_panicking_future_is_reported() {
    let runtime = common::multi_thread(1, "rule-13");
    for inline in [true, false] {
        let (callback, probe) = common::callback_probe();
        let handle = apm_tap::Builder::new()
            .callback(callback)
            .spawner(&runtime)
            .begin(async move {
                if !inline {
                    tokio::task::yield_now().await;
                }
                panic!("boom {}", 13);
            });
        assert_eq!(handle.completed_synchronously(), inline);
        assert_eq!(
            common::panic_message(handle.end()),
            Ok(Some("boom 13".to_owned()))
        );
        probe.ran_once();
        common::assert_still_serving(&runtime);
    }
}

/// Rule 13: a panicking callback cannot lose the result: it was stored first.
#[test]
fn rule_13_panicking_callback_keeps_result() {
    // On the executor: the task panics after storing; `end` still gets the value.
    let runtime = common::multi_thread(1, "rule-13-cb");
    let (tx, rx) = oneshot::channel::<u8>();
    let handle = apm_tap::Builder::new()
        .callback(|_: AsyncResult<u8>| panic!("callback exploded"))
        .spawner(&runtime)
        .begin(async move { rx.await.unwrap() });
    tx.send(13).unwrap();
    assert_eq!(handle.end(), Ok(13));
    common::assert_still_serving(&runtime);

    // Inline: the panic leaves `begin`, the handle the callback got still has the value.
    let (keep_tx, keep_rx) = mpsc::channel();
    let panic = catch_unwind(AssertUnwindSafe(|| {
        apm_tap::Builder::new()
            .callback(move |h: AsyncResult<i32>| {
                keep_tx.send(h).unwrap();
                panic!("inline callback exploded");
            })
            .begin(async { 31 })
    }))
    .unwrap_err();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"inline callback exploded")
    );
    assert_eq!(keep_rx.recv().unwrap().end(), Ok(31));
}

/// Rule 14: `cancel` stops a pending future (dropped on its executor), the callback runs
/// once, and `end` returns `Cancelled`.
#[test]
fn rule_14_cancel_drops_future_on_executor() {
    let runtime = common::multi_thread(1, "rule-14");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (dropped_tx, dropped_rx) = mpsc::channel();
    struct OnDrop(mpsc::Sender<Option<String>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0
                .send(thread::current().name().map(str::to_owned))
                .unwrap();
        }
    }
    let guard = OnDrop(dropped_tx);
    let handle = apm_tap::Builder::new()
        .callback(move |h: AsyncResult<u8>| {
            assert!(h.is_completed());
            c.fetch_add(1, SeqCst);
        })
        .spawner(&runtime)
        .begin(async move {
            let _guard = guard;
            std::future::pending::<u8>().await
        });
    handle.cancel();
    handle.cancel();
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(dropped_rx.recv().unwrap(), Some("rule-14".to_owned()));
    assert_eq!(handle.end(), Err(Error::Cancelled));
    assert_eq!(calls.load(SeqCst), 1);
}

/// Rule 14: `cancel` after completion keeps the result; the callback does not run again.
#[test]
fn rule_14_cancel_after_completion_keeps_result() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let handle = apm_tap::Builder::new()
        .callback(move |_: AsyncResult<i32>| {
            c.fetch_add(1, SeqCst);
        })
        .begin(async { 14 });
    handle.cancel();
    assert_eq!(handle.end(), Ok(14));
    assert_eq!(calls.load(SeqCst), 1);
}

/// Rule 14: `cancel` racing completion: the callback runs once, `end` gets the value or
/// `Cancelled`, and the value is dropped exactly once either way.
#[test]
fn rule_14_cancel_racing_completion() {
    let (mut kept, mut cancelled) = (0, 0);
    for _ in 0..common::rounds(500) {
        let drops = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&drops);
        let (callback, probe) = common::callback_probe();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = apm_tap::Builder::new()
            .callback(callback)
            .begin(async move {
                rx.await.unwrap();
                DropCounter(d)
            });
        let start = Arc::new(Barrier::new(2));
        let s = Arc::clone(&start);
        let racer = thread::spawn(move || {
            s.wait();
            // Fails when `cancel` already dropped the future: that is the other outcome.
            let _ = tx.send(());
        });
        start.wait();
        handle.cancel();
        racer.join().unwrap();
        match handle.end() {
            Ok(value) => {
                kept += 1;
                drop(value);
                assert_eq!(drops.load(SeqCst), 1);
            }
            Err(e) => {
                assert_eq!(e, Error::Cancelled);
                cancelled += 1;
                // The future may still produce its value, which the task then drops;
                // never twice.
                assert!(drops.load(SeqCst) <= 1);
            }
        }
        probe.ran_once();
    }
    assert_eq!(kept + cancelled, common::rounds(500));
}

/// Rule 15: a plain thread uses the default runtime; inside a tokio runtime, that
/// runtime; `begin_on` takes a tokio `Handle` or a `futures` executor.
#[test]
fn rule_15_runtime_choice() {
    async fn where_it_ran() -> Option<String> {
        tokio::task::yield_now().await;
        thread::current().name().map(str::to_owned)
    }
    let from_plain = thread::spawn(|| apm_tap::begin(where_it_ran()).end())
        .join()
        .unwrap();
    assert_eq!(from_plain, Ok(Some("apm-tap-worker".to_owned())));

    let runtime = common::multi_thread(1, "rule-15");
    let ambient = runtime.block_on(async { apm_tap::begin(where_it_ran()).await });
    assert_eq!(ambient, Ok(Some("rule-15".to_owned())));

    let by_handle = apm_tap::begin_on(runtime.handle(), where_it_ran()).end();
    assert_eq!(by_handle, Ok(Some("rule-15".to_owned())));

    let pool = futures::executor::ThreadPool::builder()
        .name_prefix("pool-")
        .pool_size(1)
        .create()
        .unwrap();
    let on_pool = |task| pool.spawn_ok(task);
    let pooled = apm_tap::begin_on(&on_pool, async {
        thread::current().name().map(str::to_owned)
    });
    // Ready at once: it ran inline, on this thread.
    assert!(pooled.completed_synchronously());
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    let pooled = apm_tap::begin_on(&on_pool, async move {
        rx.await.unwrap();
        thread::current().name().map(str::to_owned)
    });
    tx.send(()).unwrap();
    assert_eq!(pooled.end(), Ok(Some("pool-0".to_owned())));
}

/// Rule 15: an executor that drops the task unfinished (it shut down) completes the
/// operation with `Abandoned`, and the callback still runs.
#[test]
fn rule_15_runtime_shutdown_abandons() {
    let runtime = common::multi_thread(1, "rule-15-down");
    let (callback, probe) = common::callback_probe();
    let handle = apm_tap::Builder::new()
        .callback(callback)
        .spawner(&runtime)
        .begin(std::future::pending::<()>());
    drop(runtime);
    assert_eq!(
        handle.end(),
        Err(Error::Abandoned(Abandonment::TaskDropped))
    );
    probe.ran_once();

    let refusing = |task: apm_tap::Task| drop(task);
    let refused = apm_tap::begin_on(&refusing, std::future::pending::<()>());
    assert_eq!(
        refused.end(),
        Err(Error::Abandoned(Abandonment::TaskDropped))
    );
}

/// Rule 16: the state given to `begin` comes back unchanged from every clone and inside
/// the callback.
#[test]
fn rule_16_state_round_trips() {
    let state = State::new(String::from("request 16"));
    let (tx, rx) = mpsc::channel();
    let handle = apm_tap::Builder::new()
        .callback(move |h: AsyncResult<()>| tx.send(h.state().clone()).unwrap())
        .state(state.clone())
        .begin(async { tokio::task::yield_now().await });
    let inside = rx.recv().unwrap();
    assert!(inside.ptr_eq(&state));
    assert!(handle.clone().state().ptr_eq(&state));
    assert_eq!(
        handle.state().downcast_ref::<String>().map(String::as_str),
        Some("request 16")
    );
    assert!(apm_tap::begin(async {}).state().is_none());
}

/// `callbackify` hands the value, or the bridge's error, to a plain callback, once.
#[test]
fn callbackify_delivers_once() {
    let (tx, rx) = mpsc::channel();
    let t = tx.clone();
    apm_tap::callbackify(
        async {
            tokio::task::yield_now().await;
            5
        },
        move |r| t.send(r).unwrap(),
    );
    assert_eq!(rx.recv().unwrap(), Ok(5));
    apm_tap::callbackify(async { panic!("nope") }, move |r: Result<(), Error>| {
        tx.send(r.map(|()| 0)).unwrap()
    });
    assert_eq!(
        common::panic_message(rx.recv().unwrap()),
        Ok(Some("nope".to_owned()))
    );
    assert!(rx.recv().is_err(), "a callback ran twice");
}

/// Handles can cross threads; the futures are `Send` when their parts are.
#[test]
fn handles_and_futures_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<AsyncResult<String>>();
    send_sync::<State>();
    send(&apm_tap::from_apm(
        |_cb| apm_tap::begin(async {}),
        |h| h.end(),
    ));
    send(&apm_tap::from_callback(|c: apm_tap::Completer<u8>| drop(c)));
}

/// Once every handle is gone nobody can cancel the task (a handle comes only from
/// another one, or with the callback once the task finished): it no longer holds a
/// clone of its waker to be told of a cancel. While a handle lives, it does.
#[test]
fn a_task_nobody_can_cancel_holds_no_waker_for_a_cancel() {
    let (spawned, tasks) = mpsc::channel::<Task>();
    let keep = move |task: Task| spawned.send(task).unwrap();
    let (open, gate) = oneshot::channel::<u8>();
    let handle = apm_tap::begin_on(&keep, async move { gate.await.unwrap() });
    let mut task = tasks.recv().unwrap();
    let (counter, waker) = common::CountingWaker::new();
    assert!(common::poll_with(&mut task, &waker).is_pending());
    // The gate's receiver and the cancel watch.
    assert_eq!(counter.clones_held(), 2);

    handle.cancel();
    assert_eq!(counter.wakes(), 1, "the cancel woke the task");
    assert!(common::poll_with(&mut task, &waker).is_ready());
    drop((task, open));

    let (open, gate) = oneshot::channel::<u8>();
    let (called, result) = mpsc::channel();
    let handle = apm_tap::Builder::new()
        .callback(move |h: AsyncResult<u8>| called.send(h.end()).unwrap())
        .spawner(&keep)
        .begin(async move { gate.await.unwrap() });
    drop(handle);
    let mut task = tasks.recv().unwrap();
    let (counter, waker) = common::CountingWaker::new();
    assert!(common::poll_with(&mut task, &waker).is_pending());
    assert_eq!(
        counter.clones_held(),
        1,
        "only the gate's receiver holds the waker"
    );
    open.send(9).unwrap();
    assert!(common::poll_with(&mut task, &waker).is_ready());
    assert_eq!(result.recv().unwrap(), Ok(9));
}
