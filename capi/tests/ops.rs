//! The C ABI called as C calls it (through the `extern "C"` functions), from Rust: every
//! status, who consumes the reference, and which thread runs the callback.

use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Mutex};
use std::thread::{self, ThreadId};

use apm_tap::{AsyncResult, Completer};
use apm_tap_capi::{
    apm_tap_op_cancel, apm_tap_op_completed_synchronously, apm_tap_op_is_completed,
    apm_tap_op_release, apm_tap_op_state, apm_tap_op_wait, apm_tap_status_name, Op, Status,
    APM_TAP_WAIT_FOREVER,
};

apm_tap_capi::export! {
    /// Ready at once.
    fn t_add_begin / t_add_end(a: i32, b: i32) -> i32 {
        a + b
    }

    /// Ready at once, with the output type of `t_yield`.
    fn t_ready_begin / t_ready_end(value: u64) -> u64 {
        value
    }

    /// Ready after one yield: completes on a worker.
    fn t_yield_begin / t_yield_end(value: u64) -> u64 {
        tokio::task::yield_now().await;
        value
    }

    /// Ready once the gate opens.
    fn t_gated_begin / t_gated_end(gate: usize) -> u8 {
        let opened = gate_handle(gate);
        let _ = opened.await;
        7
    }

    /// Panics on its first poll.
    fn t_panic_begin / t_panic_end(x: i32) -> i32 {
        if x >= 0 {
            panic!("exported future panicked");
        }
        x
    }
}

/// A gate: the completer that opens it, and the handle its waiters clone.
type Gate = (Option<Completer<()>>, AsyncResult<()>);

static GATES: Mutex<Vec<Gate>> = Mutex::new(Vec::new());

/// A closed gate's number.
fn gate() -> usize {
    let (completer, handle) = Completer::new();
    let mut gates = GATES.lock().unwrap();
    gates.push((Some(completer), handle));
    gates.len() - 1
}

fn gate_handle(gate: usize) -> AsyncResult<()> {
    GATES.lock().unwrap()[gate].1.clone()
}

fn open(gate: usize) {
    let completer = GATES.lock().unwrap()[gate].0.take().unwrap();
    completer.complete(()).unwrap();
}

thread_local! {
    static IN_BEGIN: Cell<bool> = const { Cell::new(false) };
}

/// Calls `begin` with this thread marked as inside Begin.
fn inside_begin(begin: impl FnOnce() -> *mut Op) -> *mut Op {
    IN_BEGIN.with(|b| b.set(true));
    let op = begin();
    IN_BEGIN.with(|b| b.set(false));
    op
}

/// What a callback saw.
#[derive(Debug)]
struct Seen {
    thread: ThreadId,
    inside_begin: bool,
    synchronously: bool,
    state: *mut c_void,
}

// SAFETY: `state` is only compared, never dereferenced.
unsafe impl Send for Seen {}

/// A callback that reports what it saw on the channel in `state`.
unsafe extern "C" fn report(op: *mut Op, state: *mut c_void) {
    let mut synchronously = false;
    // SAFETY: the op is valid while the callback runs.
    let asked = unsafe { apm_tap_op_completed_synchronously(op, &mut synchronously) };
    assert_eq!(asked, Status::Ok);
    let mut given = ptr::null_mut();
    // SAFETY: as above.
    assert_eq!(unsafe { apm_tap_op_state(op, &mut given) }, Status::Ok);
    // SAFETY: `state` is the `Sender` that the test leaked for this operation.
    let tx = unsafe { &*state.cast::<mpsc::Sender<Seen>>() };
    tx.send(Seen {
        thread: thread::current().id(),
        inside_begin: IN_BEGIN.with(Cell::get),
        synchronously,
        state: given,
    })
    .unwrap();
}

/// A reporting callback's state: a channel that outlives every callback of the test.
fn reporter() -> (*mut c_void, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let tx: &'static mut mpsc::Sender<Seen> = Box::leak(Box::new(tx));
    (ptr::from_mut(tx).cast(), rx)
}

#[test]
fn synchronous_completion_runs_the_callback_inside_begin() {
    let (state, seen) = reporter();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = inside_begin(|| unsafe { t_add_begin(2, 3, Some(report), state) });
    let seen = seen.try_recv().expect("the callback ran inside Begin");
    assert_eq!(seen.thread, thread::current().id());
    assert!(seen.inside_begin && seen.synchronously);
    assert_eq!(seen.state, state);
    let mut sum = 0;
    // SAFETY: `op` is Begin's reference, consumed once; `sum` is an `i32`.
    assert_eq!(unsafe { t_add_end(op, &mut sum) }, Status::Ok);
    assert_eq!(sum, 5);
}

#[test]
fn asynchronous_completion_never_runs_the_callback_inside_begin() {
    let (state, seen) = reporter();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = inside_begin(|| unsafe { t_yield_begin(9, Some(report), state) });
    let seen = seen.recv().unwrap();
    assert_ne!(seen.thread, thread::current().id());
    assert!(!seen.inside_begin && !seen.synchronously);
    let mut out = 0;
    // SAFETY: as above.
    assert_eq!(unsafe { t_yield_end(op, &mut out) }, Status::Ok);
    assert_eq!(out, 9);
}

/// The .NET pattern: the callback ends the operation. A second end and a release of the
/// consumed reference inside the callback are caught, and the callback can still ask
/// about the operation; the caller never touches Begin's pointer.
#[test]
fn the_callback_ends_the_operation_and_a_second_end_is_caught() {
    /// Ends a `t_ready` operation (`READY`) or a `t_yield` one, twice.
    unsafe extern "C" fn end_twice<const READY: bool>(op: *mut Op, state: *mut c_void) {
        let end = if READY { t_ready_end } else { t_yield_end };
        let mut out = 0;
        // SAFETY: the op is valid while the callback runs; `out` is a `u64`.
        let first = unsafe { end(op, &mut out) };
        // SAFETY: as above: caught, since the callback's own handle keeps it alive.
        let second = unsafe { end(op, &mut out) };
        // SAFETY: as above.
        let released = unsafe { apm_tap_op_release(op) };
        let mut completed = false;
        // SAFETY: as above.
        let queried = unsafe { apm_tap_op_is_completed(op, &mut completed) };
        assert!(completed);
        // SAFETY: `state` is the test's `Sender`.
        let tx = unsafe { &*state.cast::<mpsc::Sender<[Status; 4]>>() };
        tx.send([first, second, released, queried]).unwrap();
        assert_eq!(out, 11);
    }
    for synchronous in [true, false] {
        let (tx, rx) = mpsc::channel::<[Status; 4]>();
        // Leaked: the callback may still be inside `send` when `recv` returns here.
        let tx: &'static mpsc::Sender<[Status; 4]> = Box::leak(Box::new(tx));
        let state = ptr::from_ref(tx).cast_mut().cast();
        // Begin's pointer is the callback's to consume: not touched here.
        if synchronous {
            // SAFETY: the callback (if any) runs on any thread; its state outlives it.
            let _ = unsafe { t_ready_begin(11, Some(end_twice::<true>), state) };
        } else {
            // SAFETY: the callback (if any) runs on any thread; its state outlives it.
            let _ = unsafe { t_yield_begin(11, Some(end_twice::<false>), state) };
        }
        assert_eq!(
            rx.recv().unwrap(),
            [
                Status::Ok,
                Status::AlreadyEnded,
                Status::InvalidArgument,
                Status::Ok
            ]
        );
    }
}

#[test]
fn null_pointers_and_the_wrong_end_are_invalid_arguments_that_consume_nothing() {
    let mut flag = false;
    let mut state = ptr::null_mut();
    // SAFETY: `NULL` is allowed everywhere.
    unsafe {
        assert_eq!(
            apm_tap_op_is_completed(ptr::null(), &mut flag),
            Status::InvalidArgument
        );
        assert_eq!(
            apm_tap_op_completed_synchronously(ptr::null(), &mut flag),
            Status::InvalidArgument
        );
        assert_eq!(
            apm_tap_op_state(ptr::null(), &mut state),
            Status::InvalidArgument
        );
        assert_eq!(apm_tap_op_wait(ptr::null(), 0), Status::InvalidArgument);
        assert_eq!(apm_tap_op_cancel(ptr::null()), Status::InvalidArgument);
        assert_eq!(apm_tap_op_release(ptr::null_mut()), Status::InvalidArgument);
        assert_eq!(t_add_end(ptr::null_mut(), &mut 0), Status::InvalidArgument);
    }
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = unsafe { t_add_begin(1, 1, None, ptr::null_mut()) };
    let mut wrong = 0_u64;
    // SAFETY: `op` is a live reference; each call below but the last consumes nothing.
    unsafe {
        assert_eq!(
            apm_tap_op_is_completed(op, ptr::null_mut()),
            Status::InvalidArgument
        );
        assert_eq!(
            apm_tap_op_completed_synchronously(op, ptr::null_mut()),
            Status::InvalidArgument
        );
        assert_eq!(
            apm_tap_op_state(op, ptr::null_mut()),
            Status::InvalidArgument
        );
        assert_eq!(t_add_end(op, ptr::null_mut()), Status::InvalidArgument);
        assert_eq!(t_yield_end(op, &mut wrong), Status::InvalidArgument);
        assert_eq!(apm_tap_op_state(op, &mut state), Status::Ok);
        assert!(state.is_null());
        let mut sum = 0;
        assert_eq!(t_add_end(op, &mut sum), Status::Ok);
        assert_eq!(sum, 2);
    }
}

#[test]
fn wait_times_out_then_returns_once_completed() {
    let gate = gate();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = unsafe { t_gated_begin(gate, None, ptr::null_mut()) };
    let mut completed = true;
    // SAFETY: `op` is a live reference until `t_gated_end`.
    unsafe {
        assert_eq!(apm_tap_op_wait(op, 0), Status::NotComplete);
        assert_eq!(apm_tap_op_wait(op, 1), Status::NotComplete);
        assert_eq!(apm_tap_op_is_completed(op, &mut completed), Status::Ok);
        assert!(!completed);
        open(gate);
        assert_eq!(apm_tap_op_wait(op, APM_TAP_WAIT_FOREVER), Status::Ok);
        assert_eq!(apm_tap_op_is_completed(op, &mut completed), Status::Ok);
        assert!(completed);
        let mut out = 0;
        assert_eq!(t_gated_end(op, &mut out), Status::Ok);
        assert_eq!(out, 7);
    }
}

#[test]
fn cancel_runs_the_callback_once_on_the_cancelling_thread() {
    let (state, seen) = reporter();
    let gate = gate();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = unsafe { t_gated_begin(gate, Some(report), state) };
    // SAFETY: `op` is a live reference until `t_gated_end`.
    unsafe {
        assert_eq!(apm_tap_op_cancel(op), Status::Ok);
        let first = seen.try_recv().expect("the callback ran inside cancel");
        assert_eq!(first.thread, thread::current().id());
        assert!(!first.synchronously);
        assert_eq!(apm_tap_op_cancel(op), Status::Ok);
        open(gate);
        let mut out = 0;
        assert_eq!(t_gated_end(op, &mut out), Status::Cancelled);
        assert_eq!(out, 0);
    }
    assert!(seen.try_recv().is_err(), "the callback ran twice");
}

#[test]
fn a_panicking_future_ends_as_panicked() {
    let (state, seen) = reporter();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = inside_begin(|| unsafe { t_panic_begin(1, Some(report), state) });
    assert!(seen.try_recv().unwrap().synchronously);
    let mut out = 0;
    // SAFETY: Begin's reference, consumed once.
    assert_eq!(unsafe { t_panic_end(op, &mut out) }, Status::Panicked);
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = unsafe { t_panic_begin(-4, None, ptr::null_mut()) };
    // SAFETY: as above.
    assert_eq!(unsafe { t_panic_end(op, &mut out) }, Status::Ok);
    assert_eq!(out, -4);
}

/// A released reference is caught while the operation lives (its future runs); the
/// operation runs on, and its callback runs once.
#[test]
fn a_second_release_of_a_running_operation_is_caught() {
    let (state, seen) = reporter();
    let gate = gate();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = unsafe { t_gated_begin(gate, Some(report), state) };
    // SAFETY: the gate is closed, so the running future keeps the operation alive.
    unsafe {
        assert_eq!(apm_tap_op_release(op), Status::Ok);
        assert_eq!(apm_tap_op_release(op), Status::InvalidArgument);
        assert_eq!(apm_tap_op_wait(op, 0), Status::InvalidArgument);
        assert_eq!(t_gated_end(op, &mut 0), Status::AlreadyEnded);
    }
    open(gate);
    assert!(!seen.recv().unwrap().synchronously);
    assert!(seen.try_recv().is_err(), "the callback ran twice");
}

/// Rule 12 through C: ending on the thread that drives the current-thread runtime the
/// operation runs on would deadlock; the reference stays the caller's.
#[test]
fn end_on_the_runtimes_own_thread_would_deadlock_and_consumes_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let gate = gate();
        // SAFETY: the callback (if any) runs on any thread; its state outlives it.
        let op = unsafe { t_gated_begin(gate, None, ptr::null_mut()) };
        let mut out = 0;
        // SAFETY: `op` is a live reference until the last `t_gated_end`.
        unsafe {
            assert_eq!(
                apm_tap_op_wait(op, APM_TAP_WAIT_FOREVER),
                Status::WouldDeadlock
            );
            assert_eq!(t_gated_end(op, &mut out), Status::WouldDeadlock);
            open(gate);
            let mut completed = false;
            while !completed {
                tokio::task::yield_now().await;
                assert_eq!(apm_tap_op_is_completed(op, &mut completed), Status::Ok);
            }
            assert_eq!(t_gated_end(op, &mut out), Status::Ok);
        }
        assert_eq!(out, 7);
    });
}

#[test]
fn an_operation_whose_runtime_shuts_down_is_abandoned() {
    let (state, seen) = reporter();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let gate = gate();
    let op = {
        let _entered = runtime.enter();
        // SAFETY: the callback (if any) runs on any thread; its state outlives it.
        unsafe { t_gated_begin(gate, Some(report), state) }
    };
    drop(runtime);
    assert!(!seen.recv().unwrap().synchronously);
    let mut out = 0;
    // SAFETY: Begin's reference, consumed once.
    assert_eq!(unsafe { t_gated_end(op, &mut out) }, Status::Abandoned);
}

/// Callbacks that end their operations, arriving on the runtime's workers from
/// operations begun on 8 threads: each runs once, and every value arrives.
#[test]
fn callbacks_from_operations_begun_on_eight_threads() {
    unsafe extern "C" fn add_up(op: *mut Op, state: *mut c_void) {
        let mut out = 0;
        // SAFETY: the op is valid while the callback runs; `out` is a `u64`.
        assert_eq!(unsafe { t_yield_end(op, &mut out) }, Status::Ok);
        // SAFETY: `state` is the test's counters, which outlive every callback.
        let totals = unsafe { &*state.cast::<[AtomicUsize; 2]>() };
        // The value first: the test reads the sum once it sees every call counted.
        totals[1].fetch_add(usize::try_from(out).unwrap(), SeqCst);
        totals[0].fetch_add(1, SeqCst);
    }
    const PER_THREAD: u64 = if cfg!(miri) { 4 } else { 500 };
    let totals: &'static [AtomicUsize; 2] =
        Box::leak(Box::new([AtomicUsize::new(0), AtomicUsize::new(0)]));
    let state = ptr::from_ref(totals).cast_mut().cast::<c_void>() as usize;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
                    let _ = unsafe {
                        t_yield_begin(t * PER_THREAD + i, Some(add_up), state as *mut c_void)
                    };
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let n = 8 * PER_THREAD;
    let (calls, sum) = loop {
        let calls = totals[0].load(SeqCst);
        if calls as u64 == n {
            break (calls, totals[1].load(SeqCst));
        }
        thread::yield_now();
    };
    assert_eq!(calls as u64, n);
    assert_eq!(sum as u64, n * (n - 1) / 2);
}

#[test]
fn every_status_has_its_name() {
    let statuses = [
        (Status::Ok, "APM_TAP_STATUS_OK"),
        (Status::Cancelled, "APM_TAP_STATUS_CANCELLED"),
        (Status::Panicked, "APM_TAP_STATUS_PANICKED"),
        (Status::Abandoned, "APM_TAP_STATUS_ABANDONED"),
        (Status::AlreadyEnded, "APM_TAP_STATUS_ALREADY_ENDED"),
        (Status::NotComplete, "APM_TAP_STATUS_NOT_COMPLETE"),
        (Status::WouldDeadlock, "APM_TAP_STATUS_WOULD_DEADLOCK"),
        (Status::InvalidArgument, "APM_TAP_STATUS_INVALID_ARGUMENT"),
    ];
    for (status, name) in statuses {
        // SAFETY: a static, NUL-terminated string.
        let got = unsafe { CStr::from_ptr(apm_tap_status_name(status as c_int)) };
        assert_eq!(got.to_str(), Ok(name));
    }
    // Any int C passes is defined.
    for unknown in [-1, 8, c_int::MAX] {
        // SAFETY: as above.
        let got = unsafe { CStr::from_ptr(apm_tap_status_name(unknown)) };
        assert_eq!(got.to_str(), Ok("APM_TAP_STATUS_UNKNOWN"));
    }
}

/// The state given to Begin comes back from `apm_tap_op_state`.
#[test]
fn state_comes_back() {
    let mut marker = 0_u8;
    let given: *mut c_void = ptr::from_mut(&mut marker).cast();
    // SAFETY: the callback (if any) runs on any thread; its state outlives it.
    let op = unsafe { t_add_begin(0, 0, None, given) };
    let mut state = ptr::null_mut();
    // SAFETY: Begin's reference, consumed once at the end.
    unsafe {
        assert_eq!(apm_tap_op_state(op, &mut state), Status::Ok);
        assert_eq!(state, given);
        assert_eq!(apm_tap_op_release(op), Status::Ok);
    }
}

/// Review finding: `end` checked only the output type, so the End of another operation
/// with the same output type took the result and consumed the reference. `export!`
/// tags each operation's output with its Begin's name.
#[test]
fn the_end_of_another_operation_with_the_same_output_type_is_refused() {
    // SAFETY: no callback, no state.
    let op = unsafe { t_yield_begin(5, None, ptr::null_mut()) };
    let mut out = 0_u64;
    // SAFETY: `op` is a live reference until `t_yield_end`; `out` is a `u64`.
    unsafe {
        assert_eq!(t_ready_end(op, &mut out), Status::InvalidArgument);
        assert_eq!(out, 0);
        assert_eq!(t_yield_end(op, &mut out), Status::Ok);
    }
    assert_eq!(out, 5);
}

/// How many times `count_call` ran.
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe extern "C" fn count_call(_op: *mut Op, _state: *mut c_void) {
    CALLS.fetch_add(1, SeqCst);
}

/// What the thread-local destructor of `calls_from_a_thread_local_destructor` saw.
static AT_EXIT: Mutex<Option<[Status; 3]>> = Mutex::new(None);

/// Runs C ABI calls in its destructor, after the thread's other locals are gone.
struct AtExit(std::cell::Cell<Option<(usize, usize)>>);

impl Drop for AtExit {
    fn drop(&mut self) {
        let Some((op, gate)) = self.0.take() else {
            return;
        };
        let op = op as *mut Op;
        let mut done = false;
        let mut out = 0;
        // SAFETY: `op` is a live reference, consumed once below; the callback is valid.
        let statuses = unsafe {
            let cancelled = apm_tap_op_cancel(op);
            let queried = apm_tap_op_is_completed(op, &mut done);
            let sync = t_ready_begin(1, Some(count_call), ptr::null_mut());
            let ended = t_ready_end(sync, &mut out);
            [cancelled, queried, ended]
        };
        *AT_EXIT.lock().unwrap() = Some(statuses);
        open(gate);
        // SAFETY: the one consuming call.
        let _ = unsafe { t_gated_end(op, &mut 0) };
    }
}

thread_local! {
    static AT_EXIT_GUARD: AtExit = const { AtExit(std::cell::Cell::new(None)) };
}

/// Review finding: from a thread-local destructor (a thread exiting), every entry point
/// failed with `PANICKED` and C's callback was skipped, because the list of running
/// callbacks was gone. They now work without it.
#[test]
fn calls_from_a_thread_local_destructor() {
    let gate = gate();
    // SAFETY: no callback, no state.
    let op = unsafe { t_gated_begin(gate, None, ptr::null_mut()) } as usize;
    let before = CALLS.load(SeqCst);
    thread::spawn(move || {
        // Registered first, so that its destructor runs after the callback list's.
        AT_EXIT_GUARD.with(|guard| guard.0.set(Some((op, gate))));
        // SAFETY: a valid callback, no state.
        let other = unsafe { t_ready_begin(1, Some(count_call), ptr::null_mut()) };
        // SAFETY: consumed once.
        assert_eq!(unsafe { t_ready_end(other, &mut 0) }, Status::Ok);
    })
    .join()
    .unwrap();
    assert_eq!(
        AT_EXIT.lock().unwrap().take(),
        Some([Status::Ok, Status::Ok, Status::Ok])
    );
    assert_eq!(CALLS.load(SeqCst) - before, 2, "a callback did not run");
}
