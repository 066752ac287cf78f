//! Allocation counts: one allocation per bridged operation for the cell (none when the
//! thread's last operation freed one of the same layout), and nothing allocated for
//! blocking unless someone blocks (rule 11).
//!
//! These pin the cost without the `diagnostics` feature, which adds a record per
//! operation (`tests/diagnostics.rs` pins that cost): `.ci/run` runs them without
//! features, and Miri does too.
#![cfg(not(feature = "diagnostics"))]
// A global allocator can only be written with `unsafe`: it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use apm_tap::{AsyncHandle, Completer, Task};
use futures::task::noop_waker_ref;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from the allocator.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call forwards to `System` with the caller's arguments unchanged; the
// counter is a thread-local `Cell` that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` on a thread of its own: the crate keeps one freed block per thread for
/// the next operation (`src/spare.rs`), so each test starts from a thread without one.
fn on_a_fresh_thread(f: impl FnOnce() + Send) {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap());
}

/// Allocations made on this thread while `f` runs.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = f();
    (ALLOCATIONS.with(Cell::get) - before, result)
}

#[test]
fn completer_operation_allocates_only_its_cell() {
    on_a_fresh_thread(|| {
        let (count, value) = allocations(|| {
            let (completer, handle) = Completer::new();
            completer.complete(5_u64).unwrap();
            handle.wait().unwrap();
            handle.end()
        });
        assert_eq!(value, Ok(5));
        assert_eq!(
            count, 1,
            "more than the cell was allocated, or a blocking primitive was made"
        );
    });
}

/// A legacy handle that allocates nothing, completing inside Begin.
struct Inline;

impl AsyncHandle for Inline {
    fn completed_synchronously(&self) -> bool {
        false
    }
}

/// One `from_apm` operation over an `Inline` handle whose Begin calls back at once,
/// polled once.
fn from_apm_called_inside_begin() -> Poll<Result<u64, apm_tap::Error>> {
    let mut future = apm_tap::from_apm(
        |callback| {
            callback.call();
            Inline
        },
        |_| 7,
    );
    std::pin::Pin::new(&mut future).poll(&mut Context::from_waker(noop_waker_ref()))
}

#[test]
fn from_apm_allocates_only_its_cell() {
    on_a_fresh_thread(|| {
        let (count, outcome) = allocations(from_apm_called_inside_begin);
        assert_eq!(outcome, Poll::Ready(Ok(7)));
        assert_eq!(count, 1);
    });
}

/// A legacy handle that completes inside Begin and says so.
struct Synchronous;

impl AsyncHandle for Synchronous {
    fn completed_synchronously(&self) -> bool {
        true
    }
}

#[test]
fn unused_callback_allocates_nothing_more() {
    on_a_fresh_thread(|| {
        // Begin completes synchronously and drops its callback: the dropped `Completer`
        // inside stores `Abandoned`, which must not allocate.
        let (count, outcome) = allocations(|| {
            let mut future = apm_tap::from_apm(|_callback| Synchronous, |_| 8);
            std::pin::Pin::new(&mut future).poll(&mut Context::from_waker(noop_waker_ref()))
        });
        assert_eq!(outcome, Poll::Ready(Ok(8)));
        assert_eq!(count, 1);
        let (count, ended) = allocations(|| {
            let (completer, handle) = Completer::<u8>::new();
            drop(completer);
            handle.end()
        });
        assert_eq!(
            (count, ended),
            (
                1,
                Err(apm_tap::Error::Abandoned(
                    apm_tap::Abandonment::CompleterDropped
                ))
            )
        );
    });
}

/// `begin` of a future that is ready at once, with no callback: one allocation, which
/// holds the operation and the future, and none for the next one of the same future
/// type. Nothing is allocated to watch for a cancel that nobody can send before `begin`
/// returns.
#[test]
fn ready_begin_allocates_only_its_cell() {
    on_a_fresh_thread(|| {
        let never_used = |_: Task| unreachable!("a ready future is not spawned");
        let (count, handle) = allocations(|| apm_tap::begin_on(&never_used, async { 1_u64 }));
        assert!(handle.completed_synchronously());
        assert_eq!((count, handle.end()), (1, Ok(1)));

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            // The first one's memory, freed by its `end`, is this one's.
            let (count, handle) = allocations(|| apm_tap::begin(async { 2_u64 }));
            assert_eq!((count, handle.end()), (0, Ok(2)));
        });
    });
}

#[test]
fn blocking_allocates_only_when_someone_blocks() {
    on_a_fresh_thread(|| {
        let (completer, handle) = Completer::new();
        // Unfinished: the wait has to block, and registers this thread to be woken.
        let (count, waited) = allocations(|| handle.wait_timeout(Duration::from_millis(1)));
        assert_eq!(waited, Ok(false));
        assert!(count >= 1, "a blocking wait registered nothing");
        completer.complete(1_u8).unwrap();
        // Finished: no blocking, so nothing is allocated for it.
        let (count, value) = allocations(|| {
            handle.wait().unwrap();
            assert_eq!(handle.wait_timeout(Duration::from_secs(1)), Ok(true));
            handle.end()
        });
        assert_eq!((count, value), (0, Ok(1)));
    });
}

/// `begin` with a callback: the callback's own box and the cell, which keeps the
/// callback in its header (no side block), whether the future is ready at once or not.
/// Handing the task to the spawner allocates nothing: it is two words pointing into
/// the cell.
#[test]
fn begin_allocates_the_cell_and_nothing_for_its_callback_or_its_spawn() {
    on_a_fresh_thread(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Task>(1);
        let keep = move |task: Task| tx.send(task).unwrap();
        let (done, called) = std::sync::mpsc::sync_channel::<Result<u64, apm_tap::Error>>(2);
        let callback = {
            let done = done.clone();
            move |h: apm_tap::AsyncResult<u64>| done.send(h.end()).unwrap()
        };
        let (count, handle) = allocations(|| {
            let callback = apm_tap::AsyncCallback::new(callback);
            apm_tap::Builder::new()
                .callback(callback)
                .spawner(&keep)
                .begin(async { 3_u64 })
        });
        assert!(handle.completed_synchronously());
        assert_eq!((count, called.recv().unwrap()), (2, Ok(3)));

        let callback = move |h: apm_tap::AsyncResult<u64>| done.send(h.end()).unwrap();
        let (count, handle) = allocations(|| {
            let callback = apm_tap::AsyncCallback::new(callback);
            apm_tap::Builder::new()
                .callback(callback)
                .spawner(&keep)
                .begin(async {
                    yield_once().await;
                    4_u64
                })
        });
        assert!(!handle.completed_synchronously());
        assert_eq!(count, 2, "the callback's box and the cell, nothing else");
        let mut task = rx.recv().unwrap();
        let (count, ()) = allocations(|| {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            while std::pin::Pin::new(&mut task).poll(&mut cx).is_pending() {}
        });
        assert_eq!(count, 0, "running the spawned task allocated");
        assert_eq!(called.recv().unwrap(), Ok(4));
        assert_eq!(
            handle.end(),
            Err(apm_tap::Error::AlreadyEnded),
            "the callback ended it"
        );
    });
}

/// Pending once, then ready: a future that cannot finish inside Begin.
async fn yield_once() {
    let mut yielded = false;
    futures::future::poll_fn(move |cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Each operation's memory, freed on the thread that makes the next one, is the next
/// one's: a loop of operations that complete inside Begin allocates only the legacy
/// side's own memory after the first.
#[test]
fn the_next_operation_on_a_thread_reuses_the_last_ones_memory() {
    on_a_fresh_thread(|| {
        let counts: Vec<usize> = (0..3)
            .map(|_| allocations(from_apm_called_inside_begin).0)
            .collect();
        assert_eq!(counts, [1, 0, 0], "from_apm");

        let operation = || {
            let (completer, handle) = Completer::new();
            completer.complete(5_u64).unwrap();
            handle.end()
        };
        let counts: Vec<usize> = (0..3).map(|_| allocations(operation).0).collect();
        assert_eq!(counts, [1, 0, 0], "a Completer's operation");

        // Another layout takes the thread's one spare block: the next `u64`
        // operation allocates again, once.
        assert_eq!(allocations(|| drop(Completer::<[u64; 8]>::new())).0, 1);
        let counts: Vec<usize> = (0..2).map(|_| allocations(operation).0).collect();
        assert_eq!(counts, [1, 0], "after another layout");
    });
}

/// A registered callback stream over `buffer`, and its emitter.
fn registered_stream(
    buffer: apm_tap::stream::Buffer,
) -> (
    apm_tap::stream::EventStream<u64>,
    apm_tap::stream::Emitter<u64>,
) {
    use futures::StreamExt;
    let (give, take) = std::sync::mpsc::channel();
    let mut stream = apm_tap::stream::from_events(buffer, move |emitter| {
        give.send(emitter).unwrap();
        Ok::<_, apm_tap::Error>(|| {})
    });
    let cx = &mut Context::from_waker(noop_waker_ref());
    assert!(stream.poll_next_unpin(cx).is_pending());
    (stream, take.recv().unwrap())
}

#[test]
fn a_bounded_callback_stream_allocates_nothing_per_item() {
    use apm_tap::stream::{Buffer, Emit, Overflow};
    use futures::StreamExt;
    on_a_fresh_thread(|| {
        for buffer in [
            Buffer::bounded(4, Overflow::Suspend),
            Buffer::bounded(4, Overflow::DropOldest),
            Buffer::latest(),
        ] {
            let (mut stream, emitter) = registered_stream(buffer);
            let items = if cfg!(miri) { 100 } else { 10_000 };
            let (count, sum) = allocations(|| {
                let cx = &mut Context::from_waker(noop_waker_ref());
                let mut sum = 0;
                for i in 0..items {
                    assert_eq!(emitter.emit(i), Emit::Queued);
                    let Poll::Ready(Some(Ok(item))) = stream.poll_next_unpin(cx) else {
                        unreachable!("an item was emitted")
                    };
                    sum += item;
                    // Pending: the waker is stored, and taken by the next emit.
                    assert!(stream.poll_next_unpin(cx).is_pending());
                }
                sum
            });
            assert_eq!(sum, items * (items - 1) / 2);
            assert_eq!(count, 0, "{buffer:?} allocated per item");
        }
    });
}

#[test]
fn a_blocked_producer_and_its_consumer_allocate_nothing_per_item() {
    use apm_tap::stream::{Buffer, Emit, Overflow};
    use futures::StreamExt;
    let (warm_up, items) = if cfg!(miri) {
        (20, 200)
    } else {
        (1_000, 20_000)
    };
    let (mut stream, emitter) = registered_stream(Buffer::bounded(1, Overflow::Suspend));
    let producer = std::thread::spawn(move || {
        // Warm up: the list of waiting producers gets its capacity.
        for i in 0..warm_up {
            assert_eq!(emitter.emit_blocking(i), Emit::Queued);
        }
        let (count, ()) = allocations(|| {
            for i in warm_up..items {
                assert_eq!(emitter.emit_blocking(i), Emit::Queued);
            }
        });
        emitter.finish();
        count
    });
    let waker = futures::task::noop_waker();
    let cx = &mut Context::from_waker(&waker);
    let mut next = 0;
    let mut consumer_allocations = 0;
    loop {
        let (count, polled) = allocations(|| stream.poll_next_unpin(cx));
        if next >= warm_up {
            consumer_allocations += count;
        }
        match polled {
            Poll::Ready(Some(Ok(item))) => {
                assert_eq!(item, next);
                next += 1;
            }
            Poll::Ready(None) => break,
            Poll::Ready(Some(Err(error))) => panic!("{error}"),
            Poll::Pending => std::thread::yield_now(),
        }
    }
    assert_eq!(next, items);
    assert_eq!(
        producer.join().unwrap(),
        0,
        "the producer allocated per item"
    );
    assert_eq!(consumer_allocations, 0, "the consumer allocated per item");
}

#[test]
fn a_million_conflated_progress_reports_allocate_nothing() {
    use apm_tap::stream::Emit;
    on_a_fresh_thread(|| {
        let reports = if cfg!(miri) { 1_000 } else { 1_000_000 };
        let (give, take) = std::sync::mpsc::channel();
        let job = apm_tap::progress::reporting(move |progress| {
            give.send(progress).unwrap();
            std::future::pending::<()>()
        });
        // Keeping the newest report costs a copy per report, no allocation.
        let latest = job.latest();
        let mut job = Box::pin(job);
        let cx = &mut Context::from_waker(noop_waker_ref());
        assert!(futures::Stream::poll_next(job.as_mut(), cx).is_pending());
        let progress = take.recv().unwrap();
        assert_eq!(progress.report(0_u64), Emit::Queued);
        let (count, ()) = allocations(|| {
            for i in 1..reports {
                assert_eq!(progress.report(i), Emit::Evicted(i - 1));
            }
        });
        assert_eq!(count, 0);
        assert_eq!(latest.get(), Some(reports - 1));
    });
}

#[test]
fn inline_dispatch_adds_no_allocation() {
    on_a_fresh_thread(|| {
        let never_used = |_: Task| unreachable!("a ready future is not spawned");
        let (count, handle) = allocations(|| {
            apm_tap::Builder::new()
                .dispatch(apm_tap::Dispatch::inline())
                .spawner(&never_used)
                .begin(async { 1_u64 })
        });
        assert!(handle.completed_synchronously());
        assert_eq!((count, handle.end()), (1, Ok(1)), "only the cell");
    });
}

#[test]
fn posted_dispatch_allocates_only_the_posting() {
    on_a_fresh_thread(|| {
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(1)));
        let posted = std::sync::Arc::clone(&tasks);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let callback = apm_tap::AsyncCallback::new(move |h: apm_tap::AsyncResult<u64>| {
            tx.send(h.end()).unwrap()
        });
        std::thread::scope(|scope| {
            let spawner = move |task: Task| posted.lock().unwrap().push(task);
            let dispatch = apm_tap::Dispatch::spawner(spawner);
            let never_used = |_: Task| unreachable!("a ready future is not spawned");
            let (count, handle) = allocations(|| {
                apm_tap::Builder::new()
                    .dispatch(dispatch)
                    .spawner(&never_used)
                    .callback(callback)
                    .begin(async { 3_u64 })
            });
            assert!(handle.completed_synchronously());
            assert_eq!(
                count, 2,
                "the cell and the posted task's cell: the callback takes the policy into \
                 its own box"
            );
            let task = tasks
                .lock()
                .unwrap()
                .pop()
                .expect("the callback was posted");
            scope.spawn(move || futures::executor::block_on(task));
            assert_eq!(rx.recv().unwrap(), Ok(3));
        });
    });
}
