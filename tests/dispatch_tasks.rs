//! A `Dispatch` as the executor of the crate's other callbacks: a subscriber's and a
//! progress handler's calls run where each policy says, in order, one at a time, and a
//! callback re-entering its subscription or operation completes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread::{self, ThreadId};

use apm_tap::progress;
use apm_tap::stream::{self, Buffer, Demand, Emit, Emitter, Subscriber};
use apm_tap::{AsyncResult, Builder, CallbackThread, Completer, Dispatch, Error, Task};

const THREADS: usize = 8;
const EACH: u32 = 500;

/// What a policy promises about the thread a callback runs on.
enum Where {
    /// Not a thread of the test: the producers' or the requester's, whichever wakes it.
    Waker,
    /// A thread with this name.
    Named(&'static str),
    /// A thread whose name starts with this.
    Prefixed(&'static str),
    /// This one thread.
    Thread(ThreadId),
}

impl Where {
    fn check(&self, policy: &str, thread: &thread::Thread) {
        let name = thread.name().unwrap_or_default();
        let ok = match self {
            Where::Waker => true,
            Where::Named(expected) => name == *expected,
            Where::Prefixed(prefix) => name.starts_with(prefix),
            Where::Thread(id) => thread.id() == *id,
        };
        assert!(ok, "{policy}: ran on {name:?} ({:?})", thread.id());
    }
}

/// Every policy, with what keeps its target alive.
fn policies() -> Vec<(&'static str, Dispatch, Where, Box<dyn std::any::Any>)> {
    let runtime = common::multi_thread(2, "tasks-tokio");
    let pool = futures::executor::ThreadPool::builder()
        .name_prefix("tasks-pool-")
        .pool_size(2)
        .create()
        .unwrap();
    let ui = CallbackThread::spawn("tasks-ui").unwrap();
    let ui_id = ui.id();
    vec![
        ("inline", Dispatch::inline(), Where::Waker, Box::new(())),
        (
            "tokio",
            Dispatch::tokio(runtime.handle().clone()),
            Where::Named("tasks-tokio"),
            Box::new(runtime),
        ),
        (
            "spawner",
            Dispatch::spawner(move |task: Task| pool.spawn_ok(task)),
            Where::Prefixed("tasks-pool-"),
            Box::new(()),
        ),
        (
            "blocking",
            Dispatch::blocking(),
            // No ambient runtime: the crate's default runtime's blocking pool.
            Where::Named("apm-tap-worker"),
            Box::new(()),
        ),
        (
            "thread",
            Dispatch::thread(&ui),
            Where::Thread(ui_id),
            Box::new(ui),
        ),
    ]
}

/// Checks that no two calls overlap, and where each runs.
struct Serial {
    inside: AtomicBool,
}

impl Serial {
    fn enter(&self) -> impl Drop + '_ {
        assert!(!self.inside.swap(true, SeqCst), "two calls at once");
        struct Leave<'a>(&'a AtomicBool);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.store(false, SeqCst);
            }
        }
        Leave(&self.inside)
    }
}

/// Sends (thread, sequence number) from `THREADS` threads started together, `EACH`
/// each, through `send`, which must queue every one; returns once all are sent.
fn from_threads<S: Clone + Send + 'static>(sender: &S, send: fn(&S, (usize, u32)) -> bool) {
    let start = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (sender, start) = (sender.clone(), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                for seq in 0..EACH {
                    assert!(send(&sender, (t, seq)), "not queued");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Every report arrived, per thread in order: `seen` holds each thread's sequence.
fn assert_in_order(seen: &[Vec<u32>]) {
    for (t, sequence) in seen.iter().enumerate() {
        assert_eq!(*sequence, (0..EACH).collect::<Vec<_>>(), "thread {t}");
    }
}

#[test]
fn progress_handlers_run_in_order_one_at_a_time_under_every_policy() {
    for (policy, dispatch, place, _keep) in policies() {
        let seen = Arc::new(Mutex::new(vec![Vec::new(); THREADS]));
        let serial = Arc::new(Serial {
            inside: AtomicBool::new(false),
        });
        let (log, check) = (Arc::clone(&seen), Arc::clone(&serial));
        let (finish, finished) = Completer::<()>::new();
        let (progress_tx, progress_rx) = mpsc::channel();
        let handle = Builder::new().spawner(&dispatch).begin(
            progress::reporting_with(Buffer::unbounded(), move |progress| {
                progress_tx.send(progress).unwrap();
                async move {
                    finished.await.unwrap();
                    "done"
                }
            })
            .on_progress(move |(t, seq): (usize, u32)| {
                let _inside = check.enter();
                place.check(policy, &thread::current());
                log.lock().unwrap()[t].push(seq);
            }),
        );
        // `reporting_with` ran `start` at once: the reporter is out.
        from_threads(&progress_rx.recv().unwrap(), |progress, item| {
            matches!(progress.report(item), Emit::Queued)
        });
        finish.complete(()).unwrap();
        assert_eq!(handle.end(), Ok("done"), "{policy}");
        // `end` returned: every report was handled before the result was stored.
        assert_in_order(&seen.lock().unwrap());
    }
}

/// Records every signal, checking that none overlaps another and where each runs;
/// asks for one item at a time from inside `on_next`.
struct Record {
    policy: &'static str,
    place: Where,
    serial: Serial,
    seen: mpsc::Sender<Signal>,
}

#[derive(Debug, PartialEq)]
enum Signal {
    Next(usize, u32),
    Complete,
    Error(Error),
}

impl Subscriber<(usize, u32), Error> for Record {
    fn on_next(&mut self, item: (usize, u32), demand: &Demand) {
        let _inside = self.serial.enter();
        self.place.check(self.policy, &thread::current());
        self.seen.send(Signal::Next(item.0, item.1)).unwrap();
        demand.request(1);
    }

    fn on_error(&mut self, error: Error) {
        let _inside = self.serial.enter();
        self.seen.send(Signal::Error(error)).unwrap();
    }

    fn on_complete(&mut self) {
        let _inside = self.serial.enter();
        self.place.check(self.policy, &thread::current());
        self.seen.send(Signal::Complete).unwrap();
    }
}

#[test]
fn subscribers_run_in_order_one_at_a_time_under_every_policy() {
    for (policy, dispatch, place, _keep) in policies() {
        let (emitter_tx, emitter_rx) = mpsc::channel::<Emitter<(usize, u32), Error>>();
        let events = stream::from_events(Buffer::bounded(4, stream::Overflow::Suspend), {
            move |emitter| {
                emitter_tx.send(emitter).unwrap();
                Ok(|| {})
            }
        });
        let (seen, signals) = mpsc::channel();
        let subscriber = Record {
            policy,
            place,
            serial: Serial {
                inside: AtomicBool::new(false),
            },
            seen,
        };
        let subscription = stream::subscribe_on(&dispatch, events, subscriber);
        subscription.request(1);
        let emitter = emitter_rx.recv().expect("registered on the first poll");
        from_threads(&emitter, |emitter, item| {
            matches!(emitter.emit_blocking(item), Emit::Queued)
        });
        emitter.finish();
        drop(emitter);
        assert_eq!(subscription.end(), Ok(()), "{policy}");
        let mut by_thread = vec![Vec::new(); THREADS];
        let mut signals: Vec<_> = signals.try_iter().collect();
        assert_eq!(signals.pop(), Some(Signal::Complete), "{policy}");
        for signal in signals {
            match signal {
                Signal::Next(t, seq) => by_thread[t].push(seq),
                other => panic!("{policy}: {other:?} before the end"),
            }
        }
        assert_in_order(&by_thread);
    }
}

#[test]
fn an_inline_subscription_requesting_from_on_next_does_not_dive() {
    struct Count(u64, mpsc::Sender<u64>);
    impl Subscriber<u64, Error> for Count {
        fn on_next(&mut self, _: u64, demand: &Demand) {
            self.0 += 1;
            demand.request(1);
        }
        fn on_error(&mut self, _: Error) {}
        fn on_complete(&mut self) {
            self.1.send(self.0).unwrap();
        }
    }
    const ITEMS: u64 = 1_000_000;
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || {
            let items = futures::stream::StreamExt::map(futures::stream::iter(0..ITEMS), Ok);
            let subscription = stream::subscribe_on(&Dispatch::inline(), items, Count(0, tx));
            // Every item is ready: the request below runs the whole subscription here,
            // inside `request`, one poll after another at one depth.
            subscription.request(1);
            assert!(subscription.is_completed());
            assert_eq!(subscription.end(), Ok(()));
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(rx.recv().unwrap(), ITEMS);
}

#[test]
fn no_poll_of_a_posted_task_runs_inside_begin() {
    let ui = CallbackThread::spawn("tasks-first-poll").unwrap();
    let (tx, rx) = mpsc::channel();
    let handle = Builder::new()
        .spawner(&Dispatch::thread(&ui))
        .begin(async move { tx.send(thread::current().id()).unwrap() });
    assert!(!handle.completed_synchronously());
    assert_eq!(handle.end(), Ok(()));
    assert_eq!(rx.recv().unwrap(), ui.id());
}

#[test]
fn blocking_on_a_task_of_the_callback_thread_from_that_thread_is_refused() {
    let ui = CallbackThread::spawn("tasks-deadlock").unwrap();
    let dispatch = Dispatch::thread(&ui);
    let (release, released) = futures::channel::oneshot::channel::<()>();
    let waiting = Builder::new()
        .spawner(&dispatch)
        .begin(async move { released.await.unwrap() });
    let (tx, rx) = mpsc::channel();
    let blocked = waiting.clone();
    dispatch.run(move || tx.send(blocked.wait()).unwrap());
    assert_eq!(rx.recv().unwrap(), Err(Error::WouldDeadlock));
    release.send(()).unwrap();
    assert_eq!(waiting.end(), Ok(()));
}

#[test]
fn a_callback_thread_ending_abandons_its_pending_tasks() {
    let ui = CallbackThread::spawn("tasks-ending").unwrap();
    let dispatch = Dispatch::thread(&ui);
    let pending = Builder::new()
        .spawner(&dispatch)
        .begin(std::future::pending::<()>());
    drop((ui, dispatch));
    assert!(matches!(pending.end(), Err(Error::Abandoned(_))));
}

#[test]
fn a_blocking_policy_task_is_polled_on_the_blocking_pool_each_time() {
    let (wake, woken) = futures::channel::oneshot::channel::<()>();
    let (tx, rx) = mpsc::channel();
    let handle = Builder::new()
        .spawner(&Dispatch::blocking())
        .begin(async move {
            tx.send(thread::current().name().map(str::to_owned))
                .unwrap();
            woken.await.unwrap();
            tx.send(thread::current().name().map(str::to_owned))
                .unwrap();
        });
    assert_eq!(rx.recv().unwrap().as_deref(), Some("apm-tap-worker"));
    // Woken from this thread: the poll is posted to the pool, not run here.
    wake.send(()).unwrap();
    assert_eq!(rx.recv().unwrap().as_deref(), Some("apm-tap-worker"));
    assert_eq!(handle.end(), Ok(()));
}

#[test]
fn an_inline_task_is_polled_by_the_thread_that_wakes_it() {
    let (wake, woken) = futures::channel::oneshot::channel::<()>();
    let (tx, rx) = mpsc::channel();
    let handle: AsyncResult<()> = Builder::new()
        .spawner(&Dispatch::inline())
        .begin(async move {
            woken.await.unwrap();
            tx.send(thread::current().id()).unwrap();
        });
    assert!(!handle.completed_synchronously());
    let waker = thread::spawn(move || {
        wake.send(()).unwrap();
        thread::current().id()
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv().unwrap(), waker);
    assert_eq!(handle.end(), Ok(()));
}

#[test]
fn a_callback_on_the_callback_thread_runs_outside_its_runtime() {
    let ui = CallbackThread::spawn("tasks-plain").unwrap();
    let (tx, rx) = mpsc::channel();
    Dispatch::thread(&ui).run(move || {
        // A plain thread's `begin`: the default runtime, which this thread may wait for.
        let handle = apm_tap::begin(async {
            futures::future::ready(()).await;
            42
        });
        let ended = handle.end();
        // Legacy code may run a runtime of its own here.
        let own = std::panic::catch_unwind(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async { 1 })
        });
        tx.send((ended, own.ok())).unwrap();
    });
    assert_eq!(rx.recv().unwrap(), (Ok(42), Some(1)));
}

#[test]
fn inline_tasks_waking_one_another_in_a_chain_do_not_dive() {
    const TASKS: usize = 10_000;
    thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let (first, mut next) = futures::channel::oneshot::channel::<()>();
            let mut handles = Vec::with_capacity(TASKS);
            for _ in 0..TASKS {
                let (tx, rx) = futures::channel::oneshot::channel::<()>();
                let mine = std::mem::replace(&mut next, rx);
                handles.push(
                    Builder::new()
                        .spawner(&Dispatch::inline())
                        .begin(async move {
                            mine.await.unwrap();
                            let _ = tx.send(());
                        }),
                );
            }
            // Each task's poll wakes the next one, on this thread.
            first.send(()).unwrap();
            assert!(handles.iter().all(AsyncResult::is_completed));
            for handle in handles {
                assert_eq!(handle.end(), Ok(()));
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn tasks_on_a_callback_thread_run_while_callbacks_keep_coming() {
    const LIMIT: u32 = 100_000;
    let ui = CallbackThread::spawn("tasks-busy").unwrap();
    let dispatch = Dispatch::thread(&ui);
    let handle = Builder::new().spawner(&dispatch).begin(async { 5_u8 });
    // Each callback posts the next until the task has run: the queue is never empty.
    fn again(dispatch: Dispatch, handle: AsyncResult<u8>, n: u32, tx: mpsc::Sender<u32>) {
        if handle.is_completed() || n >= LIMIT {
            return tx.send(n).unwrap();
        }
        let next = dispatch.clone();
        dispatch.run(move || again(next, handle, n + 1, tx));
    }
    let (tx, rx) = mpsc::channel();
    let first = dispatch.clone();
    dispatch.run(move || again(first, handle, 0, tx));
    assert!(rx.recv().unwrap() < LIMIT, "the task starved");
}

#[test]
fn a_callback_deep_in_a_chain_can_wait_for_an_inline_task() {
    // A Begin -> callback -> Begin chain 20 deep: past the trampoline's limit (16),
    // where callbacks run queued; the inline task's poll must not queue behind them.
    fn step(n: u32, tx: mpsc::Sender<Result<u8, Error>>) {
        drop(
            Builder::new()
                .callback(move |_: AsyncResult<()>| {
                    if n == 20 {
                        let task = Builder::new()
                            .spawner(&Dispatch::inline())
                            .begin(async { 6_u8 });
                        tx.send(task.end()).unwrap();
                    } else {
                        step(n + 1, tx);
                    }
                })
                .begin(async {}),
        );
    }
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || step(0, tx));
    assert_eq!(
        rx.recv_timeout(std::time::Duration::from_secs(30)),
        Ok(Ok(6))
    );
}

#[test]
fn a_subscriber_cancelling_from_on_next_ends_it_under_every_policy() {
    struct CancelAtThree {
        seen: Vec<u32>,
        done: mpsc::Sender<Vec<u32>>,
    }
    impl Subscriber<u32, Error> for CancelAtThree {
        fn on_next(&mut self, item: u32, demand: &Demand) {
            self.seen.push(item);
            if self.seen.len() == 3 {
                demand.cancel();
                demand.cancel(); // idempotent
                self.done.send(self.seen.clone()).unwrap();
            } else {
                demand.request(1);
            }
        }
        fn on_error(&mut self, error: Error) {
            panic!("no call after cancel: on_error({error:?})");
        }
        fn on_complete(&mut self) {
            panic!("no call after cancel: on_complete");
        }
    }
    for (policy, dispatch, _, _keep) in policies() {
        let (done, seen) = mpsc::channel();
        let items = futures::stream::StreamExt::map(futures::stream::iter(0..100_u32), Ok);
        let subscriber = CancelAtThree {
            seen: Vec::new(),
            done,
        };
        let subscription = stream::subscribe_on(&dispatch, items, subscriber);
        subscription.request(1);
        assert_eq!(seen.recv().unwrap(), [0, 1, 2], "{policy}");
        assert_eq!(subscription.end(), Err(Error::Cancelled), "{policy}");
    }
}

#[test]
fn a_progress_handler_beginning_on_its_own_policy_completes_or_is_refused() {
    for (policy, dispatch, _, _keep) in policies() {
        let (tx, rx) = mpsc::channel();
        let again = dispatch.clone();
        let handle = Builder::new().spawner(&dispatch).begin(
            progress::reporting(|progress| async move {
                let _ = progress.report(1_u8);
                "done"
            })
            .on_progress(move |_| {
                let nested = Builder::new().spawner(&again).begin(async { 7_u8 });
                tx.send(nested.end()).unwrap();
            }),
        );
        assert_eq!(handle.end(), Ok("done"), "{policy}");
        // Only the callback thread would have to run the nested task itself, and it is
        // busy running this handler: refused rather than a deadlock (rule 12).
        let expected = if policy == "thread" {
            Err(Error::WouldDeadlock)
        } else {
            Ok(7)
        };
        assert_eq!(rx.recv().unwrap(), expected, "{policy}");
    }
}

#[test]
fn an_inline_poll_blocking_on_a_task_it_woke_runs_that_task_first() {
    let inline = Dispatch::inline();
    let (wake_b, b_woken) = futures::channel::oneshot::channel::<()>();
    let b = Builder::new().spawner(&inline).begin(async move {
        b_woken.await.unwrap();
        8_u8
    });
    let (wake_a, a_woken) = futures::channel::oneshot::channel::<()>();
    let a = Builder::new().spawner(&inline).begin(async move {
        a_woken.await.unwrap();
        // Wakes B from inside this poll (B's poll is queued behind this one), then
        // blocks for it.
        wake_b.send(()).unwrap();
        b.end()
    });
    wake_a.send(()).unwrap();
    assert_eq!(a.end(), Ok(Ok(8)));
}
