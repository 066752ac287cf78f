//! The in-flight registry (`diagnostics` feature): every operation, in both directions,
//! listed with its kind, location, status and callback from where it starts until it
//! ends; exact counts under 8 threads; the leak check's report; the feature's cost.
//! `tests/tracing.rs` checks the `tracing` feature's events.
//!
//! The tests find their own operations by the line that began them, and take turns
//! (`serial`), so that the allocation count sees no other test's operation.
#![cfg(feature = "diagnostics")]
// The counting allocator can only be written with `unsafe`: it forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use apm_tap::diagnostics::{self, Kind, LeakCheck, Operation, Status};
use apm_tap::{
    Abandonment, ApmCallback, AsyncHandle, AsyncResult, Builder, Completer, Error, PollHandle,
};
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
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
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

/// One test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The operations in flight that began at `line` of this file.
fn at(line: u32) -> Vec<Operation> {
    diagnostics::in_flight()
        .filter(|op| op.location().file() == file!() && op.location().line() == line)
        .into_iter()
        .collect()
}

/// What the one operation begun at `line` looks like, if it is in flight.
fn seen(line: u32) -> Option<(Kind, Status, Option<bool>)> {
    let ops = at(line);
    assert!(ops.len() <= 1, "{} operations at line {line}", ops.len());
    ops.first()
        .map(|op| (op.kind(), op.status(), op.callback_ran()))
}

fn poll<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(noop_waker_ref()))
}

/// A legacy handle that never completes synchronously.
struct Handle;

impl AsyncHandle for Handle {
    fn completed_synchronously(&self) -> bool {
        false
    }
}

#[test]
fn a_begin_that_drops_its_callback_shows_as_abandoned_with_its_location() {
    let _turn = serial();
    let (go, gone) = (mpsc::channel::<()>(), mpsc::channel());
    let (go_tx, go_rx) = go;
    let (gone_tx, gone_rx) = gone;
    let ends = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ends);
    // A legacy thread that loses the callback on its error path.
    let begin = move |callback: ApmCallback| {
        thread::spawn(move || {
            go_rx.recv().unwrap();
            drop(callback);
            gone_tx.send(()).unwrap();
        });
        Handle
    };
    let end = move |_: Handle| counted.fetch_add(1, SeqCst);
    let (line, mut read) = (line!(), apm_tap::from_apm(begin, end));
    assert_eq!(seen(line), None, "nothing begins before the first poll");
    assert!(poll(&mut read).is_pending());
    assert_eq!(
        seen(line),
        Some((Kind::FromApm, Status::Pending, Some(false)))
    );

    go_tx.send(()).unwrap();
    gone_rx.recv().unwrap();
    assert_eq!(
        seen(line),
        Some((Kind::FromApm, Status::Abandoned, Some(false)))
    );
    let op = &at(line)[0];
    assert_eq!(op.location().file(), "tests/diagnostics.rs");
    let said = op.to_string();
    let begun = format!(
        "the from_apm begun at tests/diagnostics.rs:{line}:{} ",
        op.location().column()
    );
    assert!(said.starts_with(&begun), "{said}");
    assert!(
        said.ends_with(" ago: abandoned: callback dropped uncalled"),
        "{said}"
    );

    assert_eq!(
        poll(&mut read),
        Poll::Ready(Err(Error::Abandoned(Abandonment::CallbackDropped)))
    );
    assert_eq!(seen(line), None, "the future took the error: over");
    assert_eq!(
        ends.load(SeqCst),
        0,
        "End is not called for an abandoned operation"
    );
}

#[test]
fn a_begin_that_keeps_its_callback_shows_as_pending_with_its_age() {
    let _turn = serial();
    let kept: Arc<Mutex<Vec<ApmCallback>>> = Arc::default();
    let keeper = Arc::clone(&kept);
    let begin = move |callback| {
        keeper.lock().unwrap().push(callback);
        Handle
    };
    let (line, mut read) = (line!(), apm_tap::from_apm(begin, |_: Handle| 5));
    assert!(poll(&mut read).is_pending());
    // Only to let the operation age: nothing is ordered by it.
    thread::sleep(Duration::from_millis(30));
    let op = at(line).remove(0);
    assert!(op.age() >= Duration::from_millis(30), "{:?}", op.age());
    assert_eq!(
        (op.status(), op.callback_ran()),
        (Status::Pending, Some(false))
    );
    assert!(op.to_string().ends_with(" ago: never called back"), "{op}");

    let callback = kept.lock().unwrap().pop().unwrap();
    callback.call();
    assert_eq!(
        seen(line),
        Some((Kind::FromApm, Status::Completed, Some(true)))
    );
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: completed, the future not polled since"));
    assert_eq!(poll(&mut read), Poll::Ready(Ok(5)));
    assert_eq!(seen(line), None);
}

#[test]
fn a_dropped_from_apm_future_stays_listed_as_cancelled_until_the_callback_runs_end() {
    let _turn = serial();
    let kept: Arc<Mutex<Vec<ApmCallback>>> = Arc::default();
    let keeper = Arc::clone(&kept);
    let (ends_tx, ends) = mpsc::channel();
    let begin = move |callback| {
        keeper.lock().unwrap().push(callback);
        Handle
    };
    let end = move |_: Handle| ends_tx.send(()).unwrap();
    let (line, mut read) = (line!(), apm_tap::from_apm(begin, end));
    assert!(poll(&mut read).is_pending());
    drop(read);
    assert_eq!(
        seen(line),
        Some((Kind::FromApm, Status::Cancelled, Some(false)))
    );
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: cancelled, never called back"));

    let callback = kept.lock().unwrap().pop().unwrap();
    thread::spawn(move || callback.call()).join().unwrap();
    assert_eq!(
        ends.try_iter().count(),
        1,
        "End ran once, on the callback's thread"
    );
    assert_eq!(seen(line), None);
}

#[test]
fn a_begin_of_a_future_is_listed_until_end() {
    let _turn = serial();
    let (finish, finished) = futures::channel::oneshot::channel::<u8>();
    let (line, handle) = (line!(), apm_tap::begin(async { finished.await.unwrap() }));
    assert_eq!(seen(line), Some((Kind::Begin, Status::Pending, None)));
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: its future has not finished"));
    finish.send(4).unwrap();
    handle.wait().unwrap();
    assert_eq!(seen(line), Some((Kind::Begin, Status::Completed, None)));
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: completed, End not called"));
    let other = handle.clone();
    assert_eq!(handle.end(), Ok(4));
    assert_eq!(
        seen(line),
        None,
        "ended, though a clone of the handle remains"
    );
    assert_eq!(other.end(), Err(Error::AlreadyEnded));
}

#[test]
fn a_begin_with_a_callback_says_when_it_ran() {
    let _turn = serial();
    let (finish, finished) = futures::channel::oneshot::channel::<u8>();
    let (called_tx, called) = mpsc::channel();
    let builder = Builder::new().callback(move |h: AsyncResult<u8>| called_tx.send(h).unwrap());
    let (line, _handle) = (line!(), builder.begin(async { finished.await.unwrap() }));
    assert_eq!(
        seen(line),
        Some((Kind::Begin, Status::Pending, Some(false)))
    );
    finish.send(6).unwrap();
    let handle = called.recv().unwrap();
    assert_eq!(
        seen(line),
        Some((Kind::Begin, Status::Completed, Some(true)))
    );
    assert_eq!(handle.end(), Ok(6));
    assert_eq!(seen(line), None);
}

#[test]
fn a_cancelled_begin_is_listed_until_end() {
    let _turn = serial();
    let (line, handle) = (line!(), apm_tap::begin(std::future::pending::<()>()));
    handle.cancel();
    assert_eq!(seen(line), Some((Kind::Begin, Status::Cancelled, None)));
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: cancelled, its task or a handle still held"));
    assert_eq!(handle.end(), Err(Error::Cancelled));
    assert_eq!(seen(line), None);
}

#[test]
fn a_begin_whose_runtime_shut_down_shows_as_abandoned() {
    let _turn = serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let never = std::future::pending::<()>();
    let (line, handle) = (line!(), apm_tap::begin_on(&runtime, never));
    assert_eq!(seen(line), Some((Kind::Begin, Status::Pending, None)));
    drop(runtime);
    assert_eq!(seen(line), Some((Kind::Begin, Status::Abandoned, None)));
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: abandoned: its task was dropped unfinished"));
    assert_eq!(
        handle.end(),
        Err(Error::Abandoned(Abandonment::TaskDropped))
    );
    assert_eq!(seen(line), None);
}

#[test]
fn a_completer_is_listed_until_end_and_a_dropped_one_as_abandoned() {
    let _turn = serial();
    let (line, (completer, handle)) = (line!(), Completer::<u8>::new());
    assert_eq!(seen(line), Some((Kind::Completer, Status::Pending, None)));
    assert!(at(line)[0].to_string().ends_with(" ago: never completed"));
    completer.complete(1).unwrap();
    assert_eq!(seen(line), Some((Kind::Completer, Status::Completed, None)));
    assert_eq!(handle.end(), Ok(1));
    assert_eq!(seen(line), None);

    let (line, (completer, handle)) = (line!(), Builder::<u8>::new().completer());
    drop(completer);
    assert_eq!(seen(line), Some((Kind::Completer, Status::Abandoned, None)));
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: abandoned: completer dropped uncalled"));
    drop(handle);
    assert_eq!(seen(line), None, "every part is gone: over");
}

#[test]
fn a_from_callback_is_listed_from_its_first_poll() {
    let _turn = serial();
    let (tx, rx) = mpsc::channel();
    let start = move |completer: Completer<u8>| tx.send(completer).unwrap();
    let (line, mut future) = (line!(), apm_tap::from_callback(start));
    assert_eq!(seen(line), None, "nothing begins before the first poll");
    assert!(poll(&mut future).is_pending());
    assert_eq!(
        seen(line),
        Some((Kind::FromCallback, Status::Pending, Some(false)))
    );
    rx.recv().unwrap().complete(3).unwrap();
    assert_eq!(
        seen(line),
        Some((Kind::FromCallback, Status::Completed, Some(true)))
    );
    assert_eq!(poll(&mut future), Poll::Ready(Ok(3)));
    assert_eq!(seen(line), None);
}

/// A handle completed by a flag, waking the waker it was last polled with.
#[derive(Clone, Default)]
struct Flag(Arc<Mutex<(bool, Option<std::task::Waker>)>>);

impl Flag {
    fn set(&self) {
        let waker = {
            let mut state = self.0.lock().unwrap();
            state.0 = true;
            state.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl PollHandle for Flag {
    fn poll_completed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock().unwrap();
        if state.0 {
            return Poll::Ready(());
        }
        state.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[test]
fn a_dropped_from_async_result_is_listed_as_cancelled_until_its_end_runs() {
    let _turn = serial();
    let flag = Flag::default();
    let (ends_tx, ends) = mpsc::channel();
    let end = move |_| ends_tx.send(()).unwrap();
    let (line, future) = (line!(), apm_tap::from_async_result(flag.clone(), end));
    assert_eq!(
        seen(line),
        Some((Kind::FromAsyncResult, Status::Pending, None))
    );
    assert!(at(line)[0]
        .to_string()
        .ends_with(" ago: the handle never completed"));
    drop(future);
    assert_eq!(
        seen(line),
        Some((Kind::FromAsyncResult, Status::Cancelled, None))
    );
    flag.set();
    ends.recv().unwrap();
    assert_eq!(seen(line), None);
}

/// A completer's operation, begun at the line this returns.
fn new_op() -> (u32, (Completer<usize>, AsyncResult<usize>)) {
    (line!(), Completer::new())
}

#[test]
fn counts_stay_exact_under_eight_threads() {
    let _turn = serial();
    const THREADS: usize = 8;
    // 10^5 operations in all; 400 under Miri, which runs them far slower.
    const EACH: usize = if cfg!(miri) { 50 } else { 100_000 / THREADS };
    let line = new_op().0;
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let ops: Vec<_> = (0..EACH).map(|_| new_op().1).collect();
                barrier.wait(); // 1: all begun
                barrier.wait(); // 2: counted
                let mut handles = Vec::with_capacity(EACH);
                for (i, (completer, handle)) in ops.into_iter().enumerate() {
                    if i % 2 == 0 {
                        completer.complete(i).unwrap();
                    } else {
                        drop(completer);
                    }
                    handles.push(handle);
                }
                barrier.wait(); // 3: half completed, half abandoned
                barrier.wait(); // 4: counted
                for (i, handle) in handles.into_iter().enumerate() {
                    let expected = if i % 2 == 0 {
                        Ok(i)
                    } else {
                        Err(Error::Abandoned(Abandonment::CompleterDropped))
                    };
                    assert_eq!(handle.end(), expected);
                }
            })
        })
        .collect();
    // While they begin, the count only grows.
    let mut last = 0;
    loop {
        let now = at(line).len();
        assert!(now >= last && now <= THREADS * EACH, "{last} then {now}");
        last = now;
        if now == THREADS * EACH {
            break;
        }
    }
    barrier.wait(); // 1
    let count = |status| at(line).iter().filter(|op| op.status() == status).count();
    assert_eq!(at(line).len(), THREADS * EACH);
    assert_eq!(count(Status::Pending), THREADS * EACH);
    barrier.wait(); // 2
    barrier.wait(); // 3
    assert_eq!(count(Status::Completed), THREADS * EACH / 2);
    assert_eq!(count(Status::Abandoned), THREADS * EACH / 2);
    assert_eq!(count(Status::Pending), 0);
    barrier.wait(); // 4
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(at(line).len(), 0);
    let ids: std::collections::HashSet<u64> =
        diagnostics::in_flight().iter().map(Operation::id).collect();
    assert_eq!(ids.len(), diagnostics::in_flight().len(), "ids are unique");
}

/// The report with every age and id replaced by a mark and the table's padding
/// collapsed, so that it can be compared exactly.
fn normalized(report: &str, ids: &[u64]) -> String {
    report
        .lines()
        .map(|line| {
            let mut words: Vec<String> = line.split_whitespace().map(String::from).collect();
            for i in 1..words.len() {
                if words[i] == "ms" && words[i - 1].parse::<u64>().is_ok() {
                    words[i - 1] = "<age>".into();
                }
            }
            for word in &mut words {
                if word.parse::<u64>().is_ok_and(|n| ids.contains(&n)) {
                    *word = "<id>".into();
                }
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Begins, on this thread, a from_apm whose callback is kept and a completer's
/// operation that completes without End; returns what keeps them and their locations.
fn two_leaks() -> (impl Sized, String, String) {
    let kept: Arc<Mutex<Vec<ApmCallback>>> = Arc::default();
    let keeper = Arc::clone(&kept);
    let begin = move |callback| {
        keeper.lock().unwrap().push(callback);
        Handle
    };
    let (first, mut read) = (line!(), apm_tap::from_apm(begin, |_: Handle| ()));
    assert!(poll(&mut read).is_pending());
    let (second, (completer, handle)) = (line!(), Completer::<u8>::new());
    completer.complete(9).unwrap();
    let location = |line| {
        let location = at(line)[0].location().to_string();
        assert!(location.starts_with(&format!("{}:{line}:", file!())));
        location
    };
    let (first, second) = (location(first), location(second));
    ((kept, read, handle), first, second)
}

/// Where the report says the check was made, checked to be at `line` of this file.
fn check_location(report: &str, line: u32) -> String {
    let at = report.split(" LeakCheck at ").nth(1).unwrap();
    let at = at.split(' ').next().unwrap();
    assert!(at.starts_with(&format!("{}:{line}:", file!())), "{at}");
    at.to_string()
}

fn expected_report(check_at: &str, first: &str, second: &str) -> String {
    format!(
        "2 operations begun in the scope of the LeakCheck at {check_at} are still in flight:\n\
         2 operations in flight, oldest first:\n\
         age id kind status callback began at\n\
         <age> ms <id> from_apm never called back not run {first}\n\
         <age> ms <id> Completer completed, End not called - {second}"
    )
}

#[test]
fn the_leak_check_fails_with_the_table() {
    let _turn = serial();
    let (line, check) = (line!(), LeakCheck::this_thread());
    let (kept, first, second) = two_leaks();
    let leaks = check.finish().unwrap_err();
    let ids: Vec<u64> = leaks.in_flight().iter().map(Operation::id).collect();
    assert_eq!(ids.len(), 2);
    let report = leaks.to_string();
    let check_at = check_location(&report, line);
    assert_eq!(
        normalized(&report, &ids),
        expected_report(&check_at, &first, &second)
    );
    // `unwrap` prints the same table.
    assert_eq!(format!("{leaks:?}"), format!("\n{report}"));
    drop(kept);
}

#[test]
fn the_leak_check_dropped_at_the_end_of_its_scope_panics_with_the_table() {
    let _turn = serial();
    let mut locations = (String::new(), String::new());
    let mut keep = None;
    let mut line = 0;
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _check;
        (line, _check) = (line!(), LeakCheck::this_thread());
        let (kept, first, second) = two_leaks();
        locations = (first, second);
        keep = Some(kept);
    }))
    .unwrap_err();
    let message = failed.downcast::<String>().unwrap();
    let (first, second) = locations;
    let ids: Vec<u64> = diagnostics::in_flight()
        .filter(|op| [&first, &second].contains(&&op.location().to_string()))
        .iter()
        .map(Operation::id)
        .collect();
    let check_at = check_location(&message, line);
    assert_eq!(
        normalized(&message, &ids),
        expected_report(&check_at, &first, &second)
    );
    drop(keep);
}

#[test]
fn the_leak_check_passes_a_clean_scope_and_keeps_to_its_thread() {
    let _turn = serial();
    let check = LeakCheck::this_thread();
    let (completer, handle) = Completer::<u8>::new();
    completer.complete(2).unwrap();
    assert_eq!(handle.end(), Ok(2));
    let elsewhere = thread::spawn(Completer::<u8>::new).join().unwrap();
    assert!(
        check.finish().is_ok(),
        "another thread's operation is not this scope's"
    );

    let check = LeakCheck::all_threads();
    let (line, elsewhere_too) = thread::spawn(|| (line!(), Completer::<u8>::new()))
        .join()
        .unwrap();
    let leaks = check.finish().unwrap_err();
    assert!(leaks
        .in_flight()
        .iter()
        .any(|op| op.location().line() == line));
    assert!(leaks
        .to_string()
        .starts_with("1 operation begun in the scope of the LeakCheck at tests/diagnostics.rs:"));
    drop((elsewhere, elsewhere_too));

    // Begun before the scope: not its business.
    let before = Completer::<u8>::new();
    let check = LeakCheck::this_thread();
    assert!(check.finish().is_ok());
    drop(before);
}

#[test]
fn the_leak_check_does_not_panic_again_while_its_thread_panics() {
    let _turn = serial();
    let failed = std::panic::catch_unwind(|| {
        let _check = LeakCheck::this_thread();
        let _leak = Completer::<u8>::new();
        panic!("the test's own failure");
    })
    .unwrap_err();
    assert_eq!(
        *failed.downcast::<&str>().unwrap(),
        "the test's own failure"
    );
}

#[test]
fn the_table_lists_oldest_first() {
    let _turn = serial();
    let (first, older) = (line!(), Completer::<u8>::new());
    // Only so that the two differ in age.
    thread::sleep(Duration::from_millis(2));
    let (second, newer) = (line!(), Completer::<u8>::new());
    let ours = diagnostics::in_flight().filter(|op| {
        [first, second].contains(&op.location().line()) && op.location().file() == file!()
    });
    let lines: Vec<u32> = ours.iter().map(|op| op.location().line()).collect();
    assert_eq!(lines, [first, second]);
    assert!(ours.operations()[0].age() > ours.operations()[1].age());
    drop((older, newer));
}

/// Allocations made by `f` on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let result = f();
    (ALLOCATIONS.with(Cell::get) - before, result)
}

/// A completer's operation, completed and ended.
fn completed_and_ended() {
    let (completer, handle) = Completer::new();
    completer.complete(5_u64).unwrap();
    assert_eq!(handle.end(), Ok(5));
}

/// A from_apm called back inside Begin, polled to its value.
fn from_apm_called_inside_begin() {
    let mut read = apm_tap::from_apm(
        |callback: ApmCallback| {
            callback.call();
            Handle
        },
        |_: Handle| 7,
    );
    assert_eq!(poll(&mut read), Poll::Ready(Ok(7)));
}

/// What the feature costs: one allocation per operation, its record. The thread keeps
/// one operation in flight so that its shard's storage is there already.
#[test]
fn an_operation_allocates_one_record_more() {
    let _turn = serial();
    // Each path once on another thread: what is made once per process (`tracing`'s
    // callsites) is not counted.
    thread::spawn(|| {
        completed_and_ended();
        from_apm_called_inside_begin();
    })
    .join()
    .unwrap();
    thread::spawn(|| {
        let _kept = Completer::<u8>::new();
        let counts: Vec<usize> = (0..3).map(|_| allocations(completed_and_ended).0).collect();
        // As without the feature, the next operation reuses the thread's last cell.
        assert_eq!(
            counts,
            [2, 1, 1],
            "the cell and the record, then the record"
        );
        let counts: Vec<usize> = (0..3)
            .map(|_| allocations(from_apm_called_inside_begin).0)
            .collect();
        assert_eq!(
            counts,
            [2, 1, 1],
            "the signal and the record, then the record"
        );
    })
    .join()
    .unwrap();
}

/// A subscriber that ignores everything.
struct Ignore;

impl apm_tap::stream::Subscriber<u8, Error> for Ignore {
    fn on_next(&mut self, _: u8, _: &apm_tap::stream::Demand) {}
    fn on_error(&mut self, _: Error) {}
    fn on_complete(&mut self) {}
}

/// The crate's own tasks (the one serving a pull, the one running a posted callback)
/// are not listed; the wrappers over `begin` and `Builder::completer` give their
/// caller's line.
#[test]
fn wrappers_give_the_callers_line_and_plumbing_is_not_listed() {
    let _turn = serial();
    let own_files =
        || diagnostics::in_flight().filter(|op| op.location().file().starts_with("src/"));

    let report = |_: u8| {};
    let copy = |_: apm_tap::progress::Progress<u8>| std::future::pending::<()>();
    let (line, handle) = (line!(), apm_tap::progress::begin(copy, report));
    assert_eq!(seen(line), Some((Kind::Begin, Status::Pending, None)));
    handle.cancel();
    assert_eq!(handle.end(), Err(Error::Cancelled));

    let never = futures::stream::pending::<Result<u8, Error>>();
    let (line, subscription) = (line!(), apm_tap::stream::subscribe(never, Ignore));
    assert_eq!(seen(line), Some((Kind::Begin, Status::Pending, None)));
    subscription.cancel();
    assert_eq!(subscription.end(), Err(Error::Cancelled));

    let pull = apm_tap::stream::Puller::new(futures::stream::pending::<u8>());
    let none = apm_tap::AsyncCallback::none();
    let (line, handle) = (line!(), pull.begin_next(none, apm_tap::State::none()));
    assert_eq!(seen(line), Some((Kind::Completer, Status::Pending, None)));
    assert_eq!(own_files().len(), 0, "{}", own_files());
    handle.cancel();
    assert_eq!(handle.end(), Err(Error::Cancelled));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dispatch = apm_tap::Dispatch::spawner(runtime.handle().clone());
    let (called_tx, called) = mpsc::channel();
    let (completer, handle) = Builder::new()
        .dispatch(dispatch)
        .callback(move |h: AsyncResult<u8>| called_tx.send(h.end()).unwrap())
        .completer();
    completer.complete(4).unwrap();
    assert_eq!(
        own_files().len(),
        0,
        "the posted callback's task: {}",
        own_files()
    );
    runtime.block_on(async {
        while called.try_recv().is_err() {
            tokio::task::yield_now().await
        }
    });
    drop(handle);
}

#[test]
fn a_cancelled_operation_says_what_still_holds_it() {
    let _turn = serial();
    let (line, (completer, handle)) = (line!(), Completer::<u8>::new());
    handle.cancel();
    drop(handle);
    assert_eq!(seen(line), Some((Kind::Completer, Status::Cancelled, None)));
    let said = at(line)[0].to_string();
    assert!(
        said.ends_with(" ago: cancelled, its completer or a handle still held"),
        "{said}"
    );
    assert_eq!(completer.complete(1), Err(1));
    assert_eq!(seen(line), None);
}
