//! apm-tap against the hand-rolled bridges (`tokio::sync::oneshot`,
//! `futures::channel::oneshot`, the `oneshot` crate), side by side in one run.
//!
//! `cargo bench -p apm-tap-benches` runs the criterion groups, then prints one summary:
//! medians, the ratio apm-tap / fastest baseline, allocations per operation, the
//! blocking hand-off latency, the CPU time of a 10 ms wait, and the 10^6-pending scale
//! test. See BENCHMARKS.md for the table of the last run.

// The counting global allocator needs `unsafe impl GlobalAlloc`; it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use apm_tap::{AsyncCallback, AsyncHandle, AsyncResult, Completer};
use criterion::Criterion;
use futures::task::noop_waker_ref;

// ---------------------------------------------------------------------------------------
// Counting allocator

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: both methods forward to `System` with the caller's arguments; the counters
// are atomics that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, SeqCst);
        LIVE_BYTES.fetch_add(layout.size() as isize, SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, SeqCst);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per call of `op`, over `n` calls.
fn allocations_per_op(n: usize, mut op: impl FnMut(usize)) -> f64 {
    let before = ALLOCATIONS.load(SeqCst);
    for i in 0..n {
        op(i);
    }
    (ALLOCATIONS.load(SeqCst) - before) as f64 / n as f64
}

// ---------------------------------------------------------------------------------------
// The legacy side: a callback API that completes inline, or on a worker thread.

/// A legacy operation: calls `callback` with `value`, now or later.
trait Legacy: Copy + Send + 'static {
    fn call(self, value: u64, callback: impl FnOnce(u64) + Send + 'static);
}

/// Completes inside the call, on the caller's thread.
#[derive(Clone, Copy)]
struct Inline;

impl Legacy for Inline {
    fn call(self, value: u64, callback: impl FnOnce(u64) + Send + 'static) {
        callback(value);
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Completes later, on a legacy worker thread.
#[derive(Clone, Copy)]
struct Worker(&'static mpsc::SyncSender<Job>);

impl Worker {
    fn start() -> Worker {
        let (tx, rx) = mpsc::sync_channel::<Job>(200_000);
        thread::Builder::new()
            .name("legacy-worker".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .unwrap();
        Worker(Box::leak(Box::new(tx)))
    }
}

impl Legacy for Worker {
    fn call(self, value: u64, callback: impl FnOnce(u64) + Send + 'static) {
        self.0.send(Box::new(move || callback(value))).unwrap();
    }
}

/// A legacy handle type that completes inside Begin.
struct SyncHandle(u64);

impl AsyncHandle for SyncHandle {
    fn completed_synchronously(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------
// The bridges: each turns one legacy call into a future of `Result<u64, _>`.

fn apm_tap<L: Legacy>(
    legacy: L,
    value: u64,
) -> impl Future<Output = Result<u64, apm_tap::Error>> + Send {
    apm_tap::from_callback(move |done: Completer<u64>| {
        legacy.call(value, move |v| {
            let _ = done.complete(v);
        })
    })
}

/// apm-tap started eagerly, as the hand-rolled bridges below are: the legacy call
/// starts when the future is made (`from_callback` is lazy and starts it at the first
/// poll), and the future is the operation's handle.
fn apm_tap_eager<L: Legacy>(
    legacy: L,
    value: u64,
) -> impl Future<Output = Result<u64, apm_tap::Error>> + Send {
    let (done, handle) = Completer::new();
    legacy.call(value, move |v| {
        let _ = done.complete(v);
    });
    handle
}

fn tokio_oneshot<L: Legacy>(
    legacy: L,
    value: u64,
) -> impl Future<Output = Result<u64, impl std::fmt::Debug>> + Send {
    let (tx, rx) = tokio::sync::oneshot::channel();
    legacy.call(value, move |v| {
        let _ = tx.send(v);
    });
    rx
}

fn futures_oneshot<L: Legacy>(
    legacy: L,
    value: u64,
) -> impl Future<Output = Result<u64, impl std::fmt::Debug>> + Send {
    let (tx, rx) = futures::channel::oneshot::channel();
    legacy.call(value, move |v| {
        let _ = tx.send(v);
    });
    rx
}

fn oneshot_crate<L: Legacy>(
    legacy: L,
    value: u64,
) -> impl Future<Output = Result<u64, impl std::fmt::Debug>> + Send {
    let (tx, rx) = oneshot::channel();
    legacy.call(value, move |v| {
        let _ = tx.send(v);
    });
    std::future::IntoFuture::into_future(rx)
}

/// Runs `$body!(name, bridge_fn)` for apm-tap and each baseline.
macro_rules! each_variant {
    ($body:ident) => {
        $body!("apm_tap", apm_tap);
        $body!("apm_tap_eager", apm_tap_eager);
        $body!("tokio_oneshot", tokio_oneshot);
        $body!("futures_oneshot", futures_oneshot);
        $body!("oneshot_crate", oneshot_crate);
    };
}

/// Polls once with a no-op waker; the future must be ready.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a synchronous completion was not ready"),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Scenarios 1-4, timed by criterion.

/// 1. The legacy operation completes inside the call; the future is awaited to its value.
fn sync_completion(c: &mut Criterion, allocs: &mut Vec<(String, f64)>) {
    let mut group = c.benchmark_group("1_sync_completion");
    macro_rules! run {
        ($name:literal, $bridge:ident) => {
            group.bench_function($name, |b| {
                b.iter(|| ready($bridge(Inline, black_box(7))).unwrap())
            });
            allocs.push((
                format!("1_sync_completion/{}", $name),
                allocations_per_op(10_000, |i| {
                    black_box(ready($bridge(Inline, i as u64)).unwrap());
                }),
            ));
        };
    }
    each_variant!(run);
    group.bench_function("apm_tap_from_apm_sync_handle", |b| {
        b.iter(|| ready(apm_tap::from_apm(|_cb| SyncHandle(black_box(7)), |h| h.0)).unwrap())
    });
    group.finish();
}

/// 2. A legacy worker thread fires the callback; the task awaits on a current-thread
///    runtime, one operation at a time.
fn cross_thread_one(c: &mut Criterion, worker: Worker, allocs: &mut Vec<(String, f64)>) {
    let runtime = current_thread();
    let mut group = c.benchmark_group("2_cross_thread_one_at_a_time");
    macro_rules! run {
        ($name:literal, $bridge:ident) => {
            group.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        for i in 0..iters {
                            black_box($bridge(worker, i).await.unwrap());
                        }
                        start.elapsed()
                    })
                })
            });
            allocs.push((
                format!("2_cross_thread_one_at_a_time/{}", $name),
                allocations_per_op(10_000, |i| {
                    black_box(runtime.block_on($bridge(worker, i as u64)).unwrap());
                }),
            ));
        };
    }
    each_variant!(run);
    group.finish();
}

/// 3. `n` operations in flight on the legacy worker at once; time per batch.
fn cross_thread_in_flight(c: &mut Criterion, worker: Worker, n: usize) {
    let runtime = current_thread();
    let mut group = c.benchmark_group(format!("3_in_flight_{n}"));
    group.sample_size(10);
    macro_rules! run {
        ($name:literal, $bridge:ident) => {
            group.bench_function($name, |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        let all =
                            futures::future::join_all((0..n as u64).map(|i| $bridge(worker, i)))
                                .await;
                        black_box(all.len())
                    })
                })
            });
        };
    }
    each_variant!(run);
    group.finish();
}

/// 4. Future to APM, driven from a plain thread: `begin` + blocking `end` and `begin` +
///    callback, against `spawn` + oneshot + blocking receive.
fn future_to_apm(c: &mut Criterion, allocs: &mut Vec<(String, f64)>) {
    let runtime = multi_thread();
    let handle = runtime.handle().clone();
    let job = |v: u64| async move {
        tokio::task::yield_now().await;
        v
    };
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    let mut group = c.benchmark_group("4_future_to_apm");
    let mut both = |name: &str, op: &mut dyn FnMut(u64) -> u64| {
        group.bench_function(name, |b| b.iter(|| op(black_box(7))));
        allocs.push((
            format!("4_future_to_apm/{name}"),
            allocations_per_op(10_000, |i| {
                black_box(op(i as u64));
            }),
        ));
    };
    both("apm_tap_begin_end", &mut |v| {
        apm_tap::begin_on(&handle, job(v)).end().unwrap()
    });
    both("tokio_spawn_oneshot_blocking_recv", &mut |v| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        handle.spawn(async move {
            let _ = tx.send(job(v).await);
        });
        rx.blocking_recv().unwrap()
    });
    both("oneshot_crate_spawn_recv", &mut |v| {
        let (tx, rx) = oneshot::channel();
        handle.spawn(async move {
            let _ = tx.send(job(v).await);
        });
        rx.recv().unwrap()
    });
    both("apm_tap_begin_callback", &mut |v| {
        let tx = done_tx.clone();
        let callback =
            AsyncCallback::new(move |h: AsyncResult<u64>| tx.send(h.end().unwrap()).unwrap());
        drop(
            apm_tap::Builder::new()
                .callback(callback)
                .spawner(&handle)
                .begin(job(v)),
        );
        done_rx.recv().unwrap()
    });
    both("tokio_spawn_callback", &mut |v| {
        let tx = done_tx.clone();
        handle.spawn(async move { tx.send(job(v).await).unwrap() });
        done_rx.recv().unwrap()
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// Scenarios L1-L7: the same questions over a legacy operation as real ones are written,
// so that each row carries the legacy side's own cost (a boxed callback, a shared
// handle) and the ratios are what a user's program sees.

/// What a legacy Begin/End operation (a C# class, a C library) keeps: its result,
/// written by whoever completes it, and how it completed.
struct OpState {
    value: std::sync::atomic::AtomicU64,
    synchronously: bool,
}

/// The handle a legacy Begin returns and its callback receives (an `IAsyncResult`):
/// shared by an `Arc`.
struct OpHandle(Arc<OpState>);

impl OpHandle {
    /// The legacy End: reads the result out of the handle.
    fn end(self) -> u64 {
        self.0.value.load(SeqCst)
    }
}

impl AsyncHandle for OpHandle {
    fn completed_synchronously(&self) -> bool {
        self.0.synchronously
    }
}

/// The legacy completion callback: boxed, as a delegate or a C function with its
/// `void *` is.
type OpCallback = Box<dyn FnOnce(OpHandle) + Send>;

/// Where a legacy operation completes.
#[derive(Clone, Copy)]
enum Site {
    /// Inside Begin, on the caller's thread.
    Inline,
    /// On the legacy library's worker thread.
    Worker(&'static mpsc::SyncSender<(OpCallback, OpHandle)>),
}

impl Site {
    fn worker() -> Site {
        let (tx, rx) = mpsc::sync_channel::<(OpCallback, OpHandle)>(200_000);
        thread::Builder::new()
            .name("legacy-begin-end".into())
            .spawn(move || {
                for (callback, handle) in rx {
                    // The worker computes the result into the handle, then calls back.
                    handle.0.value.fetch_add(1, SeqCst);
                    callback(handle);
                }
            })
            .unwrap();
        Site::Worker(Box::leak(Box::new(tx)))
    }
}

/// The legacy Begin: boxes nothing more than its caller's callback, allocates its
/// handle, and calls back inline or on its worker.
fn legacy_begin(site: Site, value: u64, callback: OpCallback) -> OpHandle {
    let state = Arc::new(OpState {
        value: std::sync::atomic::AtomicU64::new(value),
        synchronously: matches!(site, Site::Inline),
    });
    let for_callback = OpHandle(Arc::clone(&state));
    match site {
        Site::Inline => callback(for_callback),
        Site::Worker(tx) => tx.send((callback, for_callback)).unwrap(),
    }
    OpHandle(state)
}

fn legacy_from_apm(
    site: Site,
    value: u64,
) -> impl Future<Output = Result<u64, apm_tap::Error>> + Send {
    apm_tap::from_apm(
        move |callback| legacy_begin(site, value, Box::new(move |_| callback.call())),
        OpHandle::end,
    )
}

fn legacy_from_callback(
    site: Site,
    value: u64,
) -> impl Future<Output = Result<u64, apm_tap::Error>> + Send {
    apm_tap::from_callback(move |done: Completer<u64>| {
        legacy_begin(
            site,
            value,
            Box::new(move |handle| {
                let _ = done.complete(handle.end());
            }),
        )
    })
}

/// The hand-rolled bridges run End inside the callback and send its result.
fn legacy_tokio_oneshot(
    site: Site,
    value: u64,
) -> impl Future<Output = Result<u64, impl std::fmt::Debug>> + Send {
    let (tx, rx) = tokio::sync::oneshot::channel();
    legacy_begin(
        site,
        value,
        Box::new(move |handle| {
            let _ = tx.send(handle.end());
        }),
    );
    rx
}

fn legacy_futures_oneshot(
    site: Site,
    value: u64,
) -> impl Future<Output = Result<u64, impl std::fmt::Debug>> + Send {
    let (tx, rx) = futures::channel::oneshot::channel();
    legacy_begin(
        site,
        value,
        Box::new(move |handle| {
            let _ = tx.send(handle.end());
        }),
    );
    rx
}

fn legacy_oneshot_crate(
    site: Site,
    value: u64,
) -> impl Future<Output = Result<u64, impl std::fmt::Debug>> + Send {
    let (tx, rx) = oneshot::channel();
    legacy_begin(
        site,
        value,
        Box::new(move |handle| {
            let _ = tx.send(handle.end());
        }),
    );
    std::future::IntoFuture::into_future(rx)
}

/// Runs `$body!(name, bridge_fn)` for apm-tap's two legacy bridges and each baseline.
macro_rules! each_legacy_variant {
    ($body:ident) => {
        $body!("apm_tap_from_apm", legacy_from_apm);
        $body!("apm_tap_from_callback", legacy_from_callback);
        $body!("tokio_oneshot", legacy_tokio_oneshot);
        $body!("futures_oneshot", legacy_futures_oneshot);
        $body!("oneshot_crate", legacy_oneshot_crate);
    };
}

/// L1-L3: a legacy Begin/End operation awaited, completing inside Begin, on the worker
/// one at a time, and 1,000 in flight on the worker.
fn legacy_to_future(c: &mut Criterion, worker: Site, allocs: &mut Vec<(String, f64)>) {
    let mut group = c.benchmark_group("L1_legacy_sync_in_begin");
    macro_rules! sync {
        ($name:literal, $bridge:ident) => {
            group.bench_function($name, |b| {
                b.iter(|| ready($bridge(Site::Inline, black_box(7))).unwrap())
            });
            allocs.push((
                format!("L1_legacy_sync_in_begin/{}", $name),
                allocations_per_op(10_000, |i| {
                    black_box(ready($bridge(Site::Inline, i as u64)).unwrap());
                }),
            ));
        };
    }
    each_legacy_variant!(sync);
    group.finish();

    let runtime = current_thread();
    let mut group = c.benchmark_group("L2_legacy_cross_thread_one");
    macro_rules! one {
        ($name:literal, $bridge:ident) => {
            group.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    runtime.block_on(async {
                        let start = Instant::now();
                        for i in 0..iters {
                            black_box($bridge(worker, i).await.unwrap());
                        }
                        start.elapsed()
                    })
                })
            });
            allocs.push((
                format!("L2_legacy_cross_thread_one/{}", $name),
                allocations_per_op(10_000, |i| {
                    black_box(runtime.block_on($bridge(worker, i as u64)).unwrap());
                }),
            ));
        };
    }
    each_legacy_variant!(one);
    group.finish();

    let mut group = c.benchmark_group("L3_legacy_in_flight_1000");
    group.sample_size(20);
    macro_rules! many {
        ($name:literal, $bridge:ident) => {
            let batch = || {
                runtime.block_on(async {
                    let all =
                        futures::future::join_all((0..1_000).map(|i| $bridge(worker, i))).await;
                    black_box(all.len())
                })
            };
            group.bench_function($name, |b| b.iter(batch));
            allocs.push((
                format!("L3_legacy_in_flight_1000/{}", $name),
                allocations_per_op(20, |_| {
                    batch();
                }) / 1_000.0,
            ));
        };
    }
    each_legacy_variant!(many);
    group.finish();
}

/// The legacy caller's completion callback in L4-L7: boxed by the caller, as in
/// L1-L3; it reports the value on a channel.
type ValueCallback = Box<dyn FnOnce(u64) + Send>;

/// L4-L7: a future exposed to a legacy caller, who passes a boxed callback or blocks in
/// End: through apm-tap (`begin_on` with the runtime, `begin` inside it), and through a
/// hand-rolled Begin (spawn, a oneshot channel as the handle, the callback called by the
/// task). `yields` says whether the future yields once (so it cannot finish inside
/// Begin) or is ready at once.
fn future_to_legacy(c: &mut Criterion, allocs: &mut Vec<(String, f64)>) {
    let runtime = multi_thread();
    let handle = runtime.handle().clone();
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    for (yields, group_name, end_name) in [
        (
            true,
            "L4_future_to_callback_1000",
            "L5_future_to_blocking_end",
        ),
        (
            false,
            "L6_ready_future_to_callback_1000",
            "L7_ready_future_to_blocking_end",
        ),
    ] {
        let job = move |v: u64| async move {
            if yields {
                tokio::task::yield_now().await;
            }
            v
        };
        let callback = |tx: &mpsc::Sender<u64>| -> ValueCallback {
            let tx = tx.clone();
            Box::new(move |v| tx.send(v).unwrap())
        };
        // The same callback as the legacy caller gives an APM Begin: one box too.
        let apm_callback = |tx: &mpsc::Sender<u64>| {
            let tx = tx.clone();
            AsyncCallback::new(move |h: AsyncResult<u64>| tx.send(h.end().unwrap()).unwrap())
        };
        let mut group = c.benchmark_group(group_name);
        group.sample_size(20);
        // 1,000 operations outstanding at once, each with its callback; time per batch.
        let mut batch = |name: &str, begin_one: &mut dyn FnMut(u64)| {
            let mut run = || {
                for v in 0..1_000 {
                    begin_one(v);
                }
                for _ in 0..1_000 {
                    black_box(done_rx.recv().unwrap());
                }
            };
            group.bench_function(name, |b| b.iter(&mut run));
            allocs.push((
                format!("{group_name}/{name}"),
                allocations_per_op(20, |_| run()) / 1_000.0,
            ));
        };
        batch("apm_tap_begin_on", &mut |v| {
            let legacy = apm_callback(&done_tx);
            drop(
                apm_tap::Builder::new()
                    .callback(legacy)
                    .spawner(&handle)
                    .begin(job(v)),
            );
        });
        batch("apm_tap_begin", &mut |v| {
            let legacy = apm_callback(&done_tx);
            let _inside = handle.enter();
            drop(apm_tap::Builder::new().callback(legacy).begin(job(v)));
        });
        batch("tokio_spawn_oneshot", &mut |v| {
            let callback = callback(&done_tx);
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle.spawn(async move {
                let value = job(v).await;
                let _ = tx.send(value);
                callback(value);
            });
            drop(rx);
        });
        batch("oneshot_crate_spawn", &mut |v| {
            let callback = callback(&done_tx);
            let (tx, rx) = oneshot::channel();
            handle.spawn(async move {
                let value = job(v).await;
                let _ = tx.send(value);
                callback(value);
            });
            drop(rx);
        });
        group.finish();

        // One operation, its caller blocked in End.
        let mut group = c.benchmark_group(end_name);
        let mut both = |name: &str, op: &mut dyn FnMut(u64) -> u64| {
            group.bench_function(name, |b| b.iter(|| op(black_box(7))));
            allocs.push((
                format!("{end_name}/{name}"),
                allocations_per_op(10_000, |i| {
                    black_box(op(i as u64));
                }),
            ));
        };
        both("apm_tap_begin_on", &mut |v| {
            apm_tap::begin_on(&handle, job(v)).end().unwrap()
        });
        both("apm_tap_begin", &mut |v| {
            let begun = {
                let _inside = handle.enter();
                apm_tap::begin(job(v))
            };
            begun.end().unwrap()
        });
        both("tokio_spawn_oneshot", &mut |v| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            handle.spawn(async move {
                let _ = tx.send(job(v).await);
            });
            rx.blocking_recv().unwrap()
        });
        both("oneshot_crate_spawn", &mut |v| {
            let (tx, rx) = oneshot::channel();
            handle.spawn(async move {
                let _ = tx.send(job(v).await);
            });
            rx.recv().unwrap()
        });
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------
// Custom measurements: blocking hand-off, CPU time of a long wait, scale.

/// A thread that spins (never parks) waiting for jobs, so that a job runs a few
/// microseconds after it is sent, not after an OS wake-up.
struct Spinner {
    tx: mpsc::Sender<Job>,
    thread: thread::JoinHandle<()>,
}

impl Spinner {
    fn start() -> Spinner {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = thread::spawn(move || loop {
            match rx.try_recv() {
                Ok(job) => job(),
                Err(mpsc::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        });
        Spinner { tx, thread }
    }

    fn stop(self) {
        drop(self.tx);
        self.thread.join().unwrap();
    }
}

fn spin_for(duration: Duration) {
    let start = Instant::now();
    while start.elapsed() < duration {
        std::hint::spin_loop();
    }
}

/// Starts an operation whose result the spinner sends after a delay, and blocks for it.
type Waiter = fn(&Spinner, Duration) -> Instant;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Median time from the moment the result is sent to the moment the blocked receiver
/// has it, when the result comes `delay` after the receiver started waiting.
/// `wait(send)` starts the operation, hands `send` (which stamps and delivers the
/// completion instant) to the spinner, blocks for the instant and returns it.
fn handoff(
    delay: Duration,
    samples: usize,
    wait: &mut dyn FnMut(&Spinner, Duration) -> Instant,
) -> Duration {
    let spinner = Spinner::start();
    let latencies = (0..samples)
        .map(|_| {
            let sent_at = wait(&spinner, delay);
            Instant::now() - sent_at
        })
        .collect();
    spinner.stop();
    median(latencies)
}

fn handoff_apm_tap(spinner: &Spinner, delay: Duration) -> Instant {
    let (completer, handle) = Completer::new();
    spinner
        .tx
        .send(Box::new(move || {
            spin_for(delay);
            let _ = completer.complete(Instant::now());
        }))
        .unwrap();
    handle.end().unwrap()
}

fn handoff_oneshot_crate(spinner: &Spinner, delay: Duration) -> Instant {
    let (tx, rx) = oneshot::channel();
    spinner
        .tx
        .send(Box::new(move || {
            spin_for(delay);
            let _ = tx.send(Instant::now());
        }))
        .unwrap();
    rx.recv().unwrap()
}

fn handoff_tokio_oneshot(spinner: &Spinner, delay: Duration) -> Instant {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spinner
        .tx
        .send(Box::new(move || {
            spin_for(delay);
            let _ = tx.send(Instant::now());
        }))
        .unwrap();
    rx.blocking_recv().unwrap()
}

/// The floor of a plain park/unpark hand-off.
fn handoff_park(spinner: &Spinner, delay: Duration) -> Instant {
    let slot = Arc::new((AtomicBool::new(false), std::sync::Mutex::new(None)));
    let (s, me) = (Arc::clone(&slot), thread::current());
    spinner
        .tx
        .send(Box::new(move || {
            spin_for(delay);
            *s.1.lock().unwrap() = Some(Instant::now());
            s.0.store(true, SeqCst);
            me.unpark();
        }))
        .unwrap();
    while !slot.0.load(SeqCst) {
        thread::park();
    }
    let sent = slot.1.lock().unwrap().take().unwrap();
    sent
}

/// CPU time this thread has used so far, from the kernel's scheduler statistics.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

/// Median CPU time the waiting thread burns while `end` waits 10 ms for its result.
fn cpu_of_long_wait(
    samples: usize,
    wait: &mut dyn FnMut(&Spinner, Duration) -> Instant,
) -> Duration {
    let spinner = Spinner::start();
    let cpu = (0..samples)
        .map(|_| {
            let before = thread_cpu_time();
            wait(&spinner, Duration::from_millis(10));
            thread_cpu_time() - before
        })
        .collect();
    spinner.stop();
    median(cpu)
}

struct Scale {
    heap_bytes_per_op: f64,
    inline_bytes: usize,
    complete_ns_per_op: f64,
}

/// `n` bridged operations pending at once (each awaited once, so it holds a waker),
/// then all completed and collected.
fn scale_apm_tap(n: usize) -> Scale {
    let mut completers = Vec::with_capacity(n);
    let mut futures = Vec::with_capacity(n);
    let before = LIVE_BYTES.load(SeqCst);
    for _ in 0..n {
        let (completer, mut handle) = Completer::<u64>::new();
        assert!(handle
            .poll_end(&mut Context::from_waker(noop_waker_ref()))
            .is_pending());
        completers.push(completer);
        futures.push(handle);
    }
    let heap = (LIVE_BYTES.load(SeqCst) - before) as f64 / n as f64;
    let start = Instant::now();
    for (i, completer) in completers.drain(..).enumerate() {
        let _ = completer.complete(i as u64);
    }
    for handle in &mut futures {
        assert!(handle
            .poll_end(&mut Context::from_waker(noop_waker_ref()))
            .is_ready());
    }
    drop(futures);
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    Scale {
        heap_bytes_per_op: heap,
        inline_bytes: std::mem::size_of::<AsyncResult<u64>>(),
        complete_ns_per_op: ns,
    }
}

fn scale_tokio_oneshot(n: usize) -> Scale {
    let mut senders = Vec::with_capacity(n);
    let mut receivers = Vec::with_capacity(n);
    let before = LIVE_BYTES.load(SeqCst);
    for _ in 0..n {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<u64>();
        assert!(Pin::new(&mut rx)
            .poll(&mut Context::from_waker(noop_waker_ref()))
            .is_pending());
        senders.push(tx);
        receivers.push(rx);
    }
    let heap = (LIVE_BYTES.load(SeqCst) - before) as f64 / n as f64;
    let start = Instant::now();
    for (i, tx) in senders.drain(..).enumerate() {
        let _ = tx.send(i as u64);
    }
    for rx in &mut receivers {
        assert!(Pin::new(rx)
            .poll(&mut Context::from_waker(noop_waker_ref()))
            .is_ready());
    }
    drop(receivers);
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    Scale {
        heap_bytes_per_op: heap,
        inline_bytes: std::mem::size_of::<tokio::sync::oneshot::Receiver<u64>>(),
        complete_ns_per_op: ns,
    }
}

// ---------------------------------------------------------------------------------------
// The summary

/// When this run started: estimates written before it are from another run.
static RUN_STARTED: std::sync::OnceLock<std::time::SystemTime> = std::sync::OnceLock::new();

/// Criterion's median for `group/function`, in nanoseconds, if this run measured it.
fn criterion_median(group: &str, function: &str) -> Option<f64> {
    // The workspace's target directory, beside this member's.
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
    let path = format!("{target}/criterion/{group}/{function}/new/estimates.json");
    // Written before this run started: measured by another run, or filtered out of this one.
    if std::fs::metadata(&path).ok()?.modified().ok()? < *RUN_STARTED.get()? {
        return None;
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn show(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} us", ns / 1_000.0)
    } else {
        format!("{ns:.1} ns")
    }
}

/// One table row per criterion group: each variant's median and apm-tap's ratio to the
/// fastest baseline.
fn ratio_rows(group: &str, per: f64, apm: &[&str], baselines: &[&str], allocs: &[(String, f64)]) {
    let alloc = |f: &str| {
        allocs
            .iter()
            .find(|(name, _)| name == &format!("{group}/{f}"))
            .map_or("-".to_owned(), |(_, a)| format!("{a:.2}"))
    };
    let fastest = baselines
        .iter()
        .filter_map(|b| criterion_median(group, b).map(|m| (m / per, *b)))
        .min_by(|a, b| a.0.total_cmp(&b.0));
    for b in baselines {
        if let Some(m) = criterion_median(group, b) {
            println!("| {group} | {b} | {} | | {} |", show(m / per), alloc(b));
        }
    }
    for a in apm {
        if let (Some(m), Some((base, name))) = (criterion_median(group, a), fastest) {
            println!(
                "| {group} | **{a}** | {} | **{:.2}** (vs {name}) | {} |",
                show(m / per),
                m / per / base,
                alloc(a)
            );
        }
    }
}

fn summary(allocs: &[(String, f64)]) {
    println!("\n## Summary (medians of this run; time per operation)\n");
    println!("| scenario | variant | median | apm-tap / fastest baseline | allocations per op |");
    println!("|---|---|---|---|---|");
    let bridges = ["tokio_oneshot", "futures_oneshot", "oneshot_crate"];
    ratio_rows(
        "1_sync_completion",
        1.0,
        &["apm_tap", "apm_tap_eager", "apm_tap_from_apm_sync_handle"],
        &bridges,
        allocs,
    );
    ratio_rows(
        "2_cross_thread_one_at_a_time",
        1.0,
        &["apm_tap", "apm_tap_eager"],
        &bridges,
        allocs,
    );
    let apm = ["apm_tap", "apm_tap_eager"];
    ratio_rows("3_in_flight_1000", 1_000.0, &apm, &bridges, allocs);
    ratio_rows("3_in_flight_100000", 100_000.0, &apm, &bridges, allocs);
    ratio_rows(
        "4_future_to_apm",
        1.0,
        &["apm_tap_begin_end"],
        &[
            "tokio_spawn_oneshot_blocking_recv",
            "oneshot_crate_spawn_recv",
        ],
        allocs,
    );
    ratio_rows(
        "4_future_to_apm",
        1.0,
        &["apm_tap_begin_callback"],
        &["tokio_spawn_callback"],
        allocs,
    );

    let legacy_bridges = ["tokio_oneshot", "futures_oneshot", "oneshot_crate"];
    let legacy_apm = ["apm_tap_from_apm", "apm_tap_from_callback"];
    ratio_rows(
        "L1_legacy_sync_in_begin",
        1.0,
        &legacy_apm,
        &legacy_bridges,
        allocs,
    );
    ratio_rows(
        "L2_legacy_cross_thread_one",
        1.0,
        &legacy_apm,
        &legacy_bridges,
        allocs,
    );
    ratio_rows(
        "L3_legacy_in_flight_1000",
        1_000.0,
        &legacy_apm,
        &legacy_bridges,
        allocs,
    );
    let begins = ["apm_tap_begin_on", "apm_tap_begin"];
    let spawns = ["tokio_spawn_oneshot", "oneshot_crate_spawn"];
    for (group, per) in [
        ("L4_future_to_callback_1000", 1_000.0),
        ("L5_future_to_blocking_end", 1.0),
        ("L6_ready_future_to_callback_1000", 1_000.0),
        ("L7_ready_future_to_blocking_end", 1.0),
    ] {
        ratio_rows(group, per, &begins, &spawns, allocs);
    }

    interleaved_sync();

    println!(
        "\n## Blocking hand-off (result arrives 5 us after the waiter blocks; median of 2,000)\n"
    );
    println!("| variant | resume latency | CPU time of a 10 ms wait (median of 20) |");
    println!("|---|---|---|");
    let variants: [(&str, Waiter); 4] = [
        ("apm_tap end", handoff_apm_tap),
        ("oneshot crate recv", handoff_oneshot_crate),
        ("tokio oneshot blocking_recv", handoff_tokio_oneshot),
        ("plain park/unpark", handoff_park),
    ];
    for (name, mut wait) in variants {
        let latency = handoff(Duration::from_micros(5), 2_000, &mut wait);
        let cpu = cpu_of_long_wait(20, &mut wait);
        println!(
            "| {name} | {} | {} |",
            show(latency.as_nanos() as f64),
            show(cpu.as_nanos() as f64)
        );
    }

    println!("\n## Scale: operations pending at once, then all completed (median round)\n");
    println!("| variant | pending | heap bytes per pending op | inline bytes (handle) | complete + collect per op |");
    println!("|---|---|---|---|---|");
    for n in [1_000, 1_000_000] {
        // Median over rounds: 1,000 rounds of 10^3, 3 of 10^6.
        let rounds = (3_000_000 / n).clamp(3, 1_000);
        let a = median_scale((0..rounds).map(|_| scale_apm_tap(n)).collect());
        let t = median_scale((0..rounds).map(|_| scale_tokio_oneshot(n)).collect());
        println!(
            "| apm_tap | {n} | {:.1} | {} | {} |",
            a.heap_bytes_per_op,
            a.inline_bytes,
            show(a.complete_ns_per_op)
        );
        println!(
            "| tokio_oneshot | {n} | {:.1} | {} | {} |",
            t.heap_bytes_per_op,
            t.inline_bytes,
            show(t.complete_ns_per_op)
        );
    }
}

/// The synchronous rows again, with rounds interleaved: each round times 20,000
/// operations of every variant, in turn, so that a change of the machine's speed during
/// the run (this VM's baselines move by up to 2x between criterion groups) hits every
/// variant alike. Prints each variant's median time per operation, and the median over
/// rounds of its ratio to the fastest baseline of the same round.
fn interleaved_sync() {
    const OPS: u64 = 20_000;
    const ROUNDS: usize = 61;
    type Row = (&'static str, bool, fn(u64) -> u64);
    let rows: [Row; 8] = [
        ("L1 tokio_oneshot", false, |v| {
            ready(legacy_tokio_oneshot(Site::Inline, v)).unwrap()
        }),
        ("L1 futures_oneshot", false, |v| {
            ready(legacy_futures_oneshot(Site::Inline, v)).unwrap()
        }),
        ("L1 oneshot_crate", false, |v| {
            ready(legacy_oneshot_crate(Site::Inline, v)).unwrap()
        }),
        ("L1 apm_tap_from_apm", true, |v| {
            ready(legacy_from_apm(Site::Inline, v)).unwrap()
        }),
        ("L1 apm_tap_from_callback", true, |v| {
            ready(legacy_from_callback(Site::Inline, v)).unwrap()
        }),
        ("1 oneshot_crate", false, |v| {
            ready(oneshot_crate(Inline, v)).unwrap()
        }),
        ("1 apm_tap", true, |v| ready(apm_tap(Inline, v)).unwrap()),
        ("1 apm_tap_eager", true, |v| {
            ready(apm_tap_eager(Inline, v)).unwrap()
        }),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for round in 0..ROUNDS {
        let mut this_round = vec![0.0; rows.len()];
        for k in 0..rows.len() {
            // A different variant goes first in each round.
            let i = (k + round) % rows.len();
            let start = Instant::now();
            for v in 0..OPS {
                black_box((rows[i].2)(black_box(v)));
            }
            this_round[i] = start.elapsed().as_nanos() as f64 / OPS as f64;
        }
        for (i, row) in rows.iter().enumerate() {
            times[i].push(this_round[i]);
            // Baselines of the same scenario (the label's first word).
            let scenario = row.0.split(' ').next();
            let fastest = rows
                .iter()
                .zip(&this_round)
                .filter(|(r, _)| !r.1 && r.0.split(' ').next() == scenario)
                .map(|(_, t)| *t)
                .fold(f64::INFINITY, f64::min);
            ratios[i].push(this_round[i] / fastest);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "\n## Synchronous rows, rounds interleaved ({ROUNDS} rounds of {OPS} operations per variant)\n"
    );
    println!(
        "| scenario, variant | median time per op | median ratio to the round's fastest baseline |"
    );
    println!("|---|---|---|");
    for (i, row) in rows.iter().enumerate() {
        let ratio = if row.1 {
            format!("**{:.2}**", median(&mut ratios[i]))
        } else {
            String::new()
        };
        println!("| {} | {} | {ratio} |", row.0, show(median(&mut times[i])));
    }
}

/// The round with the median completion time.
fn median_scale(mut rounds: Vec<Scale>) -> Scale {
    rounds.sort_by(|a, b| a.complete_ns_per_op.total_cmp(&b.complete_ns_per_op));
    rounds.swap_remove(rounds.len() / 2)
}

fn main() {
    RUN_STARTED.get_or_init(std::time::SystemTime::now);
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .configure_from_args();
    let worker = Worker::start();
    let mut allocs = Vec::new();
    sync_completion(&mut criterion, &mut allocs);
    cross_thread_one(&mut criterion, worker, &mut allocs);
    cross_thread_in_flight(&mut criterion, worker, 1_000);
    cross_thread_in_flight(&mut criterion, worker, 100_000);
    future_to_apm(&mut criterion, &mut allocs);
    legacy_to_future(&mut criterion, Site::worker(), &mut allocs);
    future_to_legacy(&mut criterion, &mut allocs);
    criterion.final_summary();
    summary(&allocs);
}
