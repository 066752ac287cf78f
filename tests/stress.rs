//! Stress: many bridged operations across threads in both directions, with a
//! drop-counting payload and a counting global allocator. Nothing lost, nothing
//! delivered twice, every payload dropped once, every allocation freed.
//!
//! 10^6 operations per direction in release (`.ci/run` runs
//! `cargo test --release --test stress -- --nocapture`), 10^4 in debug builds.

// The counting allocator needs `unsafe impl GlobalAlloc`; it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::thread;

use apm_tap::{AsyncCallback, AsyncResult, Completer};
use futures::StreamExt;

struct Counting;

/// Allocations minus deallocations.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: both methods forward to `System` with the caller's arguments; the counter is
// an atomic that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(1, SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(1, SeqCst);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static CREATED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// The value each operation produces: counts its creations and drops.
struct Payload(usize);

impl Payload {
    fn new(id: usize) -> Self {
        CREATED.fetch_add(1, SeqCst);
        Payload(id)
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, SeqCst);
    }
}

/// Marks each operation's delivery; a second delivery of the same id is a duplicate.
struct Ledger(Vec<AtomicBool>);

impl Ledger {
    fn new(n: usize) -> Self {
        Ledger((0..n).map(|_| AtomicBool::new(false)).collect())
    }
    fn deliver(&self, payload: Payload) {
        assert!(
            !self.0[payload.0].swap(true, SeqCst),
            "operation {} delivered twice",
            payload.0
        );
    }
    fn lost(&self) -> usize {
        self.0.iter().filter(|d| !d.load(SeqCst)).count()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Legacy callbacks -> futures: legacy worker threads complete `Completer`s; tasks on a
/// multi-thread runtime await `from_apm` futures, 1,000 in flight.
fn apm_to_future(n: usize) -> usize {
    let ledger = Arc::new(Ledger::new(n));
    let (tx, rx) = mpsc::channel::<(Completer<Payload>, usize)>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let rx = Arc::clone(&rx);
            thread::spawn(move || loop {
                let next = rx.lock().unwrap().recv();
                match next {
                    Ok((completer, id)) => assert!(completer.complete(Payload::new(id)).is_ok()),
                    Err(_) => return,
                }
            })
        })
        .collect();
    let runtime = runtime();
    let l = Arc::clone(&ledger);
    runtime.block_on(async move {
        futures::stream::iter(0..n)
            .map(|id| {
                let tx = tx.clone();
                apm_tap::from_apm(
                    move |cb| {
                        let (completer, handle) = apm_tap::Builder::new().callback(cb).completer();
                        tx.send((completer, id)).unwrap();
                        handle
                    },
                    |handle: AsyncResult<Payload>| handle.end(),
                )
            })
            .buffer_unordered(1_000)
            .for_each(|outcome| {
                l.deliver(outcome.unwrap().unwrap());
                async {}
            })
            .await;
    });
    drop(runtime);
    for worker in workers {
        worker.join().unwrap();
    }
    ledger.lost()
}

/// Futures -> Begin/End: plain threads `begin_on` a runtime, 1,000 handles in flight per
/// thread, every third with a callback, every other future pending on its first poll.
fn future_to_apm(n: usize) -> usize {
    let ledger = Arc::new(Ledger::new(n));
    let callbacks = Arc::new(AtomicUsize::new(0));
    let runtime = Arc::new(runtime());
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (ledger, callbacks, runtime) = (
                Arc::clone(&ledger),
                Arc::clone(&callbacks),
                Arc::clone(&runtime),
            );
            thread::spawn(move || {
                let ids: Vec<usize> = (0..n).filter(|id| id % 2 == t).collect();
                for batch in ids.chunks(1_000) {
                    let handles: Vec<_> = batch
                        .iter()
                        .map(|&id| {
                            let callback = if id % 3 == 0 {
                                let c = Arc::clone(&callbacks);
                                AsyncCallback::new(move |h: AsyncResult<Payload>| {
                                    assert!(h.is_completed());
                                    c.fetch_add(1, SeqCst);
                                })
                            } else {
                                AsyncCallback::none()
                            };
                            let future = async move {
                                if id % 2 == 0 {
                                    tokio::task::yield_now().await;
                                }
                                Payload::new(id)
                            };
                            apm_tap::Builder::new()
                                .callback(callback)
                                .spawner(&*runtime)
                                .begin(future)
                        })
                        .collect();
                    for handle in handles {
                        ledger.deliver(handle.end().unwrap());
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // Callbacks run after `end` can return: the runtime's shutdown waits for them.
    drop(Arc::into_inner(runtime).expect("the threads are done with the runtime"));
    assert_eq!(
        callbacks.load(SeqCst),
        (0..n).filter(|id| id % 3 == 0).count()
    );
    ledger.lost()
}

#[test]
fn both_directions_lose_nothing_and_leak_nothing() {
    let n = if cfg!(debug_assertions) {
        10_000
    } else {
        1_000_000
    };
    // Warm up once so that lazily created process-wide state is not counted as a leak.
    apm_to_future(100);
    future_to_apm(100);
    let baseline = LIVE.load(SeqCst);
    let (created, dropped) = (CREATED.load(SeqCst), DROPPED.load(SeqCst));

    let lost_in = apm_to_future(n);
    let lost_out = future_to_apm(n);

    let created = CREATED.load(SeqCst) - created;
    let dropped = DROPPED.load(SeqCst) - dropped;
    let leaked = LIVE.load(SeqCst) - baseline;
    println!(
        "stress: {n} ops per direction; lost {lost_in} (apm->future) + {lost_out} (future->apm), \
         duplicated 0, payloads created {created} dropped {dropped}, allocations leaked {leaked}"
    );
    assert_eq!((lost_in, lost_out), (0, 0));
    assert_eq!((created, dropped), (2 * n, 2 * n));
    #[cfg(not(feature = "diagnostics"))]
    assert_eq!(leaked, 0);
    // With `diagnostics`, every operation is over (none is listed), and the registry
    // keeps one small buffer, for reuse, in each of its 64 shards that the run's new
    // threads listed in.
    #[cfg(feature = "diagnostics")]
    {
        let listed = apm_tap::diagnostics::in_flight().filter(|op| op.location().file() == file!());
        assert!(listed.is_empty(), "{listed}");
        assert!((0..=64).contains(&leaked), "{leaked} allocations");
    }
}
