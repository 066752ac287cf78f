//! No stack dives: a legacy loop "Begin -> callback -> Begin" whose operations all
//! complete synchronously runs 10^6 iterations on a thread with a 128 KiB stack, in
//! both directions (rule 28).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use apm_tap::{ApmCallback, AsyncCallback, AsyncHandle, AsyncResult, Builder, Completer, State};

const ITERATIONS: u64 = if cfg!(miri) { 200 } else { 1_000_000 };

/// Runs `f` on a thread with a 128 KiB stack.
fn on_a_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// One iteration of the future -> APM loop: begins a ready future whose callback
/// begins the next one.
fn begin_step(i: u64, done: mpsc::Sender<u64>, synchronous: Arc<AtomicUsize>) {
    let counter = Arc::clone(&synchronous);
    let handle = Builder::new()
        .callback(move |handle: AsyncResult<u64>| {
            let value = handle.end().unwrap();
            assert_eq!(value, i);
            if i + 1 < ITERATIONS {
                begin_step(i + 1, done, synchronous);
            } else {
                done.send(value).unwrap();
            }
        })
        .begin(async move { i });
    if handle.completed_synchronously() {
        counter.fetch_add(1, SeqCst);
    }
}

#[test]
fn begin_then_callback_then_begin_a_million_times_on_a_small_stack() {
    let (last, synchronous) = on_a_small_stack(|| {
        let (done, finished) = mpsc::channel();
        let synchronous = Arc::new(AtomicUsize::new(0));
        begin_step(0, done, Arc::clone(&synchronous));
        // Every callback ran on this thread before the first `begin` returned.
        (finished.try_recv().unwrap(), synchronous.load(SeqCst))
    });
    assert_eq!(last, ITERATIONS - 1);
    assert_eq!(synchronous, ITERATIONS as usize);
}

/// A hand-written Begin that completes inside Begin (a `Completer`), whose callback
/// begins the next operation.
fn legacy_begin(value: u64, callback: AsyncCallback<u64>, state: State) -> AsyncResult<u64> {
    let (completer, handle): (Completer<u64>, _) =
        Builder::new().callback(callback).state(state).completer();
    completer.complete_synchronously(value).unwrap();
    handle
}

fn completer_step(i: u64, done: mpsc::Sender<u64>) {
    let callback = AsyncCallback::new(move |handle: AsyncResult<u64>| {
        assert!(handle.completed_synchronously());
        let value = handle.end().unwrap();
        if i + 1 < ITERATIONS {
            completer_step(value + 1, done);
        } else {
            done.send(value).unwrap();
        }
    });
    drop(legacy_begin(i, callback, State::none()));
}

#[test]
fn a_completer_completing_inside_begin_a_million_times_on_a_small_stack() {
    let last = on_a_small_stack(|| {
        let (done, finished) = mpsc::channel();
        completer_step(0, done);
        finished.try_recv().unwrap()
    });
    assert_eq!(last, ITERATIONS - 1);
}

/// A legacy handle that reports a synchronous completion.
struct Done(u64, bool);

impl AsyncHandle for Done {
    fn completed_synchronously(&self) -> bool {
        self.1
    }
}

#[test]
fn from_apm_of_synchronous_completions_a_million_times_on_a_small_stack() {
    for reports_synchronous in [true, false] {
        let sum = on_a_small_stack(move || {
            futures::executor::block_on(async move {
                let mut sum = 0;
                for i in 0..ITERATIONS {
                    // The legacy Begin calls back inside Begin, then returns its handle.
                    let value = apm_tap::from_apm(
                        move |callback: ApmCallback| {
                            callback.call();
                            Done(i, reports_synchronous)
                        },
                        |handle: Done| handle.0,
                    )
                    .await
                    .unwrap();
                    sum += value;
                }
                sum
            })
        });
        assert_eq!(sum, ITERATIONS * (ITERATIONS - 1) / 2);
    }
}

#[test]
fn shallow_nesting_stays_inline_and_deep_nesting_runs_after_in_order() {
    // Depth 1: a callback that begins a ready operation sees that one's callback run
    // inside `begin`, as rule 9 says.
    let order = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&order);
    drop(
        Builder::new()
            .callback(move |_: AsyncResult<()>| {
                let inner = Arc::clone(&log);
                drop(
                    Builder::new()
                        .callback(move |_: AsyncResult<()>| {
                            inner.lock().unwrap().push("inner callback")
                        })
                        .begin(async {}),
                );
                log.lock().unwrap().push("after inner begin");
            })
            .begin(async {}),
    );
    assert_eq!(
        *order.lock().unwrap(),
        ["inner callback", "after inner begin"]
    );

    // 40 levels: beyond the limit, callbacks are queued, and all of them still run,
    // in order, before the outermost `begin` returns.
    fn nest(level: usize, log: Arc<Mutex<Vec<usize>>>) {
        drop(
            Builder::new()
                .callback(move |_: AsyncResult<()>| {
                    log.lock().unwrap().push(level);
                    if level < 40 {
                        nest(level + 1, log);
                    }
                })
                .begin(async {}),
        );
    }
    let levels = Arc::new(Mutex::new(Vec::new()));
    nest(1, Arc::clone(&levels));
    assert_eq!(*levels.lock().unwrap(), (1..=40).collect::<Vec<_>>());
}

#[test]
fn a_panic_in_a_queued_callback_surfaces_in_the_outermost_begin_after_the_rest_ran() {
    fn nest(level: usize, ran: Arc<AtomicUsize>) {
        drop(
            Builder::new()
                .callback(move |_: AsyncResult<()>| {
                    ran.fetch_add(1, SeqCst);
                    if level < 40 {
                        nest(level + 1, Arc::clone(&ran));
                    }
                    if level == 30 {
                        panic!("callback 30 failed");
                    }
                })
                .begin(async {}),
        );
    }
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let panic = std::panic::catch_unwind(move || nest(1, counter)).unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"callback 30 failed"));
    assert_eq!(ran.load(SeqCst), 40, "every callback ran");
}

/// A legacy Begin's "read all" helper: each read completes at once; its callback begins
/// the next; the helper blocks until the last one called back.
fn read_all(last: u64) -> u64 {
    fn read_step(i: u64, last: u64, done: mpsc::Sender<u64>) {
        let callback = AsyncCallback::new(move |handle: AsyncResult<u64>| {
            let value = handle.end().unwrap();
            if value < last {
                read_step(value + 1, last, done);
            } else {
                done.send(value).unwrap();
            }
        });
        drop(legacy_begin(i, callback, State::none()));
    }
    let (done, finished) = mpsc::channel();
    read_step(0, last, done);
    finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the chain never finished")
}

#[test]
fn a_callback_that_waits_for_a_long_synchronous_chain_sees_it_finish() {
    // The review's deadlock: the chain's 17th callback was queued for the outermost
    // frame, the very one blocked in `read_all`.
    let (tx, rx) = mpsc::channel();
    let outer = AsyncCallback::new(move |_: AsyncResult<u64>| tx.send(read_all(40)).unwrap());
    drop(legacy_begin(0, outer, State::none()));
    assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)), Ok(40));
}
