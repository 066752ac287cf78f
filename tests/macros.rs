//! `#[apm]` and `#[from_apm]`: the generated pairs keep the rules the hand-written ones
//! keep (9-16 for a Begin/End made from an async fn, 1-7 for an async fn made from a
//! Begin/End), and a round trip through both gives back values, errors, panics and
//! cancellations.
#![cfg(feature = "macros")]

mod common;

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use apm_tap::progress::Progress;
use apm_tap::Cancellation;
use apm_tap::{
    Abandonment, ApmCallback, AsyncCallback, AsyncResult, Builder, CallbackThread, Dispatch, Error,
    State,
};
use futures::FutureExt;

use common::{
    current_thread, legacy_begin, panic_message, poll_with, CountingWaker, Fire, LegacyHandle,
    Probe,
};

thread_local! {
    /// Set while this thread is inside a Begin.
    static IN_BEGIN: Cell<bool> = const { Cell::new(false) };
}

/// A service exposed to legacy callers with `#[apm]`.
struct Service {
    /// Gates the operations wait on, by number.
    gates: Mutex<Vec<Option<futures::channel::oneshot::Receiver<u32>>>>,
}

impl Service {
    fn new() -> Arc<Service> {
        Arc::new(Service {
            gates: Mutex::new(Vec::new()),
        })
    }

    /// A gate: the sender opens it with a value.
    fn gate(&self) -> (usize, futures::channel::oneshot::Sender<u32>) {
        let (tx, rx) = futures::channel::oneshot::channel();
        let mut gates = self.gates.lock().unwrap();
        gates.push(Some(rx));
        (gates.len() - 1, tx)
    }

    /// `x + 1`, at once.
    #[apm_tap::apm]
    async fn ready(self: Arc<Self>, x: u32) -> u32 {
        x + 1
    }

    /// The value gate `gate` opens with; pending until then.
    #[apm_tap::apm]
    async fn gated(self: Arc<Self>, gate: usize, dropped: Option<Dropped>) -> u32 {
        let _dropped = dropped;
        let rx = self.gates.lock().unwrap()[gate].take().unwrap();
        rx.await.expect("the gate's sender is kept")
    }

    /// The operation's own `Result`, flattened by End.
    #[apm_tap::apm]
    async fn checked(self: Arc<Self>, x: i64) -> io::Result<u64> {
        u64::try_from(x).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative"))
    }

    /// The same, with `flatten = false`.
    #[apm_tap::apm(flatten = false)]
    async fn nested(self: Arc<Self>, x: i64) -> io::Result<u64> {
        u64::try_from(x).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative"))
    }

    /// Panics on its first poll.
    #[apm_tap::apm]
    async fn panics(self: Arc<Self>, message: &'static str) -> u32 {
        panic!("{message}")
    }

    /// Reports `1..=count` through `progress`, then returns `count`.
    #[apm_tap::apm(progress = progress)]
    async fn counted(self: Arc<Self>, count: u32, progress: Progress<u32>, tail: u32) -> u32 {
        for i in 1..=count {
            let _ = progress.report(i);
            tokio::task::yield_now().await;
        }
        count + tail
    }

    /// Pending until cancelled; its legacy Cancel reports on `cancels`.
    #[apm_tap::apm(cancel = cancellation)]
    async fn watched(
        self: Arc<Self>,
        cancels: mpsc::Sender<bool>,
        cancellation: Cancellation,
    ) -> u32 {
        let token = cancellation.clone();
        cancellation.on_cancel(move || cancels.send(token.is_cancelled()).unwrap());
        std::future::pending().await
    }

    /// Reports once, then completes: a `cancel` token that never trips.
    #[apm_tap::apm(progress = progress, cancel = cancellation)]
    async fn finished(
        self: Arc<Self>,
        progress: Progress<u32>,
        cancellation: Cancellation,
        cancels: mpsc::Sender<bool>,
    ) -> u32 {
        cancellation.on_cancel(move || cancels.send(true).unwrap());
        let _ = progress.report(1);
        u32::from(cancellation.is_cancelled())
    }

    /// Its callback runs where `dispatch` says.
    #[apm_tap::apm(dispatch = Dispatch::thread(callbacks()))]
    async fn dispatched(self: Arc<Self>) -> String {
        "done".to_owned()
    }
}

/// The callback thread `Service::dispatched` posts to.
fn callbacks() -> &'static CallbackThread {
    static THREAD: std::sync::OnceLock<CallbackThread> = std::sync::OnceLock::new();
    THREAD.get_or_init(|| CallbackThread::spawn("macro-callbacks").unwrap())
}

/// A `Clone` service taken by value.
#[derive(Default)]
struct Counted {
    clones: Arc<AtomicUsize>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Counted {
            clones: Arc::clone(&self.clones),
        }
    }
}

impl Counted {
    #[apm_tap::apm]
    async fn twice(self, x: u32) -> u32 {
        x * 2
    }
}

/// A free function.
#[apm_tap::apm]
async fn add(a: u32, b: u32) -> u32 {
    a + b
}

/// Sends on its channel when dropped.
struct Dropped(mpsc::Sender<()>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// What a callback saw: the value End returned, whether it ran inside Begin, and
/// whether the handle said it completed synchronously.
type Seen<R> = mpsc::Receiver<(R, bool, bool)>;

/// A callback that sends what it saw.
fn reporting<T: Send + 'static, R: Send + 'static>(
    end: fn(AsyncResult<T>) -> R,
) -> (impl FnOnce(AsyncResult<T>) + Send + 'static, Seen<R>) {
    let (tx, rx) = mpsc::channel();
    let callback = move |handle: AsyncResult<T>| {
        let synchronously = handle.completed_synchronously();
        tx.send((end(handle), IN_BEGIN.get(), synchronously))
            .unwrap();
    };
    (callback, rx)
}

/// Calls `begin` marked as inside Begin.
fn in_begin<R>(begin: impl FnOnce() -> R) -> R {
    IN_BEGIN.set(true);
    let handle = begin();
    IN_BEGIN.set(false);
    handle
}

#[test]
fn rule_9_a_ready_operation_completes_inside_begin_and_calls_back_there() {
    let service = Service::new();
    let (callback, seen) = reporting(Service::end_ready);
    let handle = in_begin(|| service.begin_ready(41, callback, State::none()));
    assert!(handle.completed_synchronously());
    assert_eq!(seen.try_recv().unwrap(), (Ok(42), true, true));
    assert!(seen.try_recv().is_err(), "the callback ran twice");
    assert_eq!(Service::end_ready(handle), Err(Error::AlreadyEnded));
}

#[test]
fn rules_9_10_a_pending_operation_calls_back_once_outside_begin() {
    let service = Service::new();
    let (gate, open) = service.gate();
    let (callback, seen) = reporting(Service::end_gated);
    let handle = in_begin(|| service.begin_gated(gate, None, callback, State::none()));
    assert!(!handle.is_completed());
    assert!(!handle.completed_synchronously());
    open.send(7).unwrap();
    assert_eq!(seen.recv().unwrap(), (Ok(7), false, false));
    assert!(seen.try_recv().is_err(), "the callback ran twice");
}

#[test]
fn rule_11_end_blocks_then_a_second_end_is_already_ended() {
    let service = Service::new();
    let (gate, open) = service.gate();
    let handle = service.begin_gated(gate, None, AsyncCallback::none(), State::none());
    let clone = handle.clone();
    let opener = thread::spawn(move || open.send(5).unwrap());
    assert_eq!(Service::end_gated(handle), Ok(5));
    assert_eq!(Service::end_gated(clone), Err(Error::AlreadyEnded));
    opener.join().unwrap();
}

#[test]
fn rule_12_the_blocking_call_refuses_to_deadlock_a_current_thread_runtime() {
    let service = Service::new();
    let (gate, _open) = service.gate();
    let runtime = current_thread();
    let result = runtime.block_on(async { service.blocking_gated(gate, None) });
    assert!(
        matches!(result, Err(Error::WouldDeadlock)),
        "got {result:?}"
    );
}

#[test]
fn rule_12_the_blocking_call_from_a_plain_thread_returns_the_output() {
    let service = Service::new();
    let (gate, open) = service.gate();
    let opener = thread::spawn(move || open.send(9).unwrap());
    assert_eq!(service.blocking_gated(gate, None), Ok(9));
    assert_eq!(service.blocking_ready(1), Ok(2));
    opener.join().unwrap();
}

#[test]
fn rule_13_a_panic_is_the_operations_outcome_and_the_callback_still_runs() {
    let service = Service::new();
    let (callback, seen) = reporting(Service::end_panics);
    let _handle = service.begin_panics("macro boom", callback, State::none());
    let (ended, _, _) = seen.recv().unwrap();
    assert_eq!(panic_message(ended), Ok(Some("macro boom".to_owned())));
    assert_eq!(
        panic_message(service.blocking_panics("again")),
        Ok(Some("again".to_owned()))
    );
}

#[test]
fn rule_14_cancel_drops_the_future_calls_back_once_and_end_says_cancelled() {
    let service = Service::new();
    let (gate, _open) = service.gate();
    let (dropped, drops) = mpsc::channel();
    let (callback, seen) = reporting(Service::end_gated);
    let handle = service.begin_gated(gate, Some(Dropped(dropped)), callback, State::none());
    handle.cancel();
    assert_eq!(seen.recv().unwrap(), (Err(Error::Cancelled), false, false));
    assert!(seen.try_recv().is_err(), "the callback ran twice");
    // The future is dropped on its executor, maybe after the callback ran.
    drops.recv().unwrap();
    assert!(drops.try_recv().is_err(), "the future was dropped twice");
}

#[test]
fn rule_16_state_is_returned_by_every_clone_and_inside_the_callback() {
    let service = Service::new();
    let (tx, rx) = mpsc::channel();
    let handle = service.begin_ready(
        1,
        move |handle: AsyncResult<u32>| {
            tx.send(handle.state().downcast_ref::<&str>().copied())
                .unwrap();
        },
        State::new("ticket"),
    );
    assert_eq!(rx.recv().unwrap(), Some("ticket"));
    assert_eq!(
        handle.clone().state().downcast_ref::<&str>(),
        Some(&"ticket")
    );
}

#[test]
fn a_result_output_is_flattened_by_end_with_the_bridges_errors_converted() {
    let service = Service::new();
    assert_eq!(service.blocking_checked(3).unwrap(), 3);
    let refused = service.blocking_checked(-1).unwrap_err();
    assert_eq!(
        (refused.kind(), refused.to_string()),
        (io::ErrorKind::InvalidInput, "negative".to_owned())
    );
    // The bridge's error, converted by `From<apm_tap::Error>`.
    let handle = service.begin_checked(1, AsyncCallback::none(), State::none());
    let _ = Service::end_checked(handle.clone());
    let again = Service::end_checked(handle).unwrap_err();
    assert_eq!(
        again.into_inner().unwrap().downcast::<Error>().unwrap(),
        Box::new(Error::AlreadyEnded)
    );
}

#[test]
fn flatten_false_keeps_the_operations_result_inside_the_bridges() {
    let service = Service::new();
    let nested: Result<io::Result<u64>, Error> = service.blocking_nested(-1);
    assert_eq!(
        nested.unwrap().unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn progress_reaches_on_progress_in_order_before_the_callback() {
    let service = Service::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (reports, done) = (Arc::clone(&log), Arc::clone(&log));
    let (tx, rx) = mpsc::channel();
    let _handle = service.begin_counted(
        3,
        100,
        move |report| reports.lock().unwrap().push(report),
        move |handle: AsyncResult<u32>| {
            done.lock().unwrap().push(0);
            tx.send(Service::end_counted(handle)).unwrap();
        },
        State::none(),
    );
    assert_eq!(rx.recv().unwrap(), Ok(103));
    let log = log.lock().unwrap();
    // Conflated reports may skip values, never reorder them; the callback comes last.
    assert_eq!(log.last(), Some(&0));
    let reports = &log[..log.len() - 1];
    assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
    assert_eq!(reports.last(), Some(&3), "{reports:?}");
    // The blocking call takes the handler too.
    let count = AtomicUsize::new(0);
    let count = Arc::new(count);
    let seen = Arc::clone(&count);
    assert_eq!(
        service.blocking_counted(2, 0, move |_| {
            seen.fetch_add(1, SeqCst);
        }),
        Ok(2)
    );
    assert!((1..=2).contains(&count.load(SeqCst)));
}

#[test]
fn dispatch_runs_the_callback_where_the_policy_says() {
    let service = Service::new();
    let (tx, rx) = mpsc::channel();
    let _handle = service.begin_dispatched(
        move |handle: AsyncResult<String>| {
            let thread = thread::current().name().map(str::to_owned);
            tx.send((Service::end_dispatched(handle), thread)).unwrap();
        },
        State::none(),
    );
    assert_eq!(
        rx.recv().unwrap(),
        (Ok("done".to_owned()), Some("macro-callbacks".to_owned()))
    );
}

#[test]
fn a_clone_receiver_is_cloned_once_per_begin() {
    let counted = Counted::default();
    assert_eq!(counted.blocking_twice(4), Ok(8));
    assert_eq!(counted.blocking_twice(5), Ok(10));
    assert_eq!(counted.clones.load(SeqCst), 2);
}

#[test]
fn a_free_fn_gets_a_free_pair() {
    let handle = begin_add(2, 3, AsyncCallback::none(), State::none());
    assert_eq!(end_add(handle), Ok(5));
    assert_eq!(blocking_add(4, 5), Ok(9));
}

#[test]
fn the_async_fn_is_kept_for_async_callers() {
    let service = Service::new();
    assert_eq!(
        futures::executor::block_on(Arc::clone(&service).ready(1)),
        2
    );
    assert_eq!(futures::executor::block_on(add(1, 1)), 2);
}

/// A legacy service with a Begin in .NET's shape, awaited through `#[from_apm]`. End and
/// Cancel are closures over the probe, made at the first poll.
struct Legacy {
    probe: Arc<Probe>,
}

impl Legacy {
    #[apm_tap::from_apm(
        end = { let probe = Arc::clone(&self.probe); move |handle| probe.end(handle) },
        output = u32,
        on_cancel = {
            let probe = Arc::clone(&self.probe);
            move |_: &LegacyHandle| { probe.cancels.fetch_add(1, SeqCst); }
        },
    )]
    fn begin_fetch(
        &self,
        value: u32,
        synchronous: bool,
        fire: Fire,
        callback: ApmCallback,
    ) -> LegacyHandle {
        legacy_begin(&self.probe, callback, value, synchronous, fire)
    }

    /// Panics instead of beginning.
    #[apm_tap::from_apm(end = |handle: LegacyHandle| handle.value, output = u32, name = broken)]
    fn begin_panicking(&self, callback: ApmCallback) -> LegacyHandle {
        drop(callback);
        panic!("legacy begin panicked")
    }
}

fn legacy() -> (Legacy, Arc<Probe>) {
    let probe = Probe::new();
    (
        Legacy {
            probe: Arc::clone(&probe),
        },
        probe,
    )
}

#[test]
fn rule_1_nothing_begins_before_the_first_poll_then_begin_runs_once() {
    let (legacy, probe) = legacy();
    let (tx, rx) = mpsc::channel();
    let mut future = Box::pin(legacy.fetch(3, false, Fire::Later(tx)));
    assert_eq!(probe.begins(), 0);
    let (_counter, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    assert!(poll_with(&mut future, &waker).is_pending());
    assert_eq!(probe.begins(), 1);
    rx.recv().unwrap().call();
    assert_eq!(
        poll_with(&mut future, &waker),
        std::task::Poll::Ready(Ok(3))
    );
    assert_eq!((probe.begins(), probe.ends(), probe.cancels()), (1, 1, 0));
}

#[test]
fn rule_3_a_synchronous_completion_ends_after_begin_returned() {
    let (legacy, probe) = legacy();
    let value = futures::executor::block_on(legacy.fetch(4, true, Fire::InsideBegin));
    assert_eq!(value, Ok(4));
    assert_eq!((probe.begins(), probe.ends()), (1, 1));
    assert!(
        !probe.ended_inside_begin.load(SeqCst),
        "End ran inside Begin"
    );
}

#[test]
fn rules_2_6_a_drop_before_completion_cancels_once_and_end_still_runs_once() {
    let (legacy, probe) = legacy();
    let (tx, rx) = mpsc::channel();
    let mut future = Box::pin(legacy.fetch(5, false, Fire::Later(tx)));
    let (_counter, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    drop(future);
    assert_eq!((probe.ends(), probe.cancels()), (0, 1));
    rx.recv().unwrap().call();
    assert_eq!((probe.ends(), probe.cancels()), (1, 1));
}

#[test]
fn rule_4_a_callback_dropped_uncalled_is_abandoned_and_end_does_not_run() {
    let (legacy, probe) = legacy();
    let result = futures::executor::block_on(legacy.fetch(6, false, Fire::Drop));
    assert_eq!(result, Err(Error::Abandoned(Abandonment::CallbackDropped)));
    assert_eq!(probe.ends(), 0);
}

#[test]
fn rule_5_a_panic_in_begin_propagates_out_of_poll() {
    let (legacy, _probe) = legacy();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        legacy.broken().now_or_never()
    }))
    .unwrap_err();
    assert_eq!(
        panicked.downcast_ref::<&str>(),
        Some(&"legacy begin panicked")
    );
}

#[test]
fn rule_7_the_latest_waker_is_woken_once() {
    let (legacy, _probe) = legacy();
    let (tx, rx) = mpsc::channel();
    let mut future = Box::pin(legacy.fetch(7, false, Fire::Later(tx)));
    let (first, first_waker) = CountingWaker::new();
    let (latest, latest_waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &first_waker).is_pending());
    assert!(poll_with(&mut future, &latest_waker).is_pending());
    rx.recv().unwrap().call();
    assert_eq!((first.wakes(), latest.wakes()), (0, 1));
    assert_eq!(
        poll_with(&mut future, &latest_waker),
        std::task::Poll::Ready(Ok(7))
    );
}

/// A free Begin in the crate's own shape (callback and state), with an End that returns
/// the operation's `io::Result`.
#[apm_tap::from_apm(end = end_parse, output = io::Result<u32>)]
fn begin_parse(
    text: String,
    callback: AsyncCallback<io::Result<u32>>,
    state: State,
) -> AsyncResult<io::Result<u32>> {
    let (completer, handle) = Builder::new().callback(callback).state(state).completer();
    thread::spawn(move || {
        let parsed = text
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not a number"));
        let _ = completer.complete(parsed);
    });
    handle
}

fn end_parse(handle: AsyncResult<io::Result<u32>>) -> io::Result<u32> {
    apm_tap::flatten(handle.end())
}

#[test]
fn a_result_output_is_flattened_by_the_async_fn() {
    assert_eq!(futures::executor::block_on(parse("12".into())).unwrap(), 12);
    let error = futures::executor::block_on(parse("twelve".into())).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

/// What the round trip's operation does.
enum Mode {
    Value(u32),
    Fail,
    Panic,
    /// Waits for the gate; `Dropped` reports the future's drop.
    Wait(futures::channel::oneshot::Receiver<u32>, Dropped),
}

#[derive(Debug, PartialEq)]
enum RoundError {
    Refused,
    Bridge(Error),
}

impl From<Error> for RoundError {
    fn from(error: Error) -> Self {
        RoundError::Bridge(error)
    }
}

/// The async side of the round trip.
struct Remote;

impl Remote {
    #[apm_tap::apm]
    async fn op(self: Arc<Self>, mode: Mode) -> Result<u32, RoundError> {
        match mode {
            Mode::Value(value) => Ok(value),
            Mode::Fail => Err(RoundError::Refused),
            Mode::Panic => panic!("round trip panic"),
            Mode::Wait(gate, _dropped) => Ok(gate.await.expect("the gate's sender is kept")),
        }
    }
}

type RoundResult = Result<u32, RoundError>;

/// `Remote::begin_op` awaited again; the handle is also sent to `handles`. The output
/// is an alias, which the attribute cannot see is a `Result`: `flatten = true` says so.
#[apm_tap::from_apm(
    end = Remote::end_op,
    output = RoundResult,
    flatten = true,
    on_cancel = |handle: &AsyncResult<RoundResult>| handle.cancel(),
)]
fn begin_round_trip(
    remote: Arc<Remote>,
    mode: Mode,
    handles: mpsc::Sender<AsyncResult<RoundResult>>,
    callback: AsyncCallback<RoundResult>,
    state: State,
) -> AsyncResult<RoundResult> {
    let handle = remote.begin_op(mode, callback, state);
    handles.send(handle.clone()).unwrap();
    handle
}

#[test]
fn a_round_trip_gives_back_values_errors_panics_and_cancellations() {
    let remote = Arc::new(Remote);
    let run = |mode| {
        let (handles, _kept) = mpsc::channel();
        futures::executor::block_on(round_trip(Arc::clone(&remote), mode, handles))
    };
    assert_eq!(run(Mode::Value(8)), Ok(8));
    assert_eq!(run(Mode::Fail), Err(RoundError::Refused));
    match run(Mode::Panic) {
        Err(RoundError::Bridge(error)) => {
            assert_eq!(
                panic_message::<()>(Err(error)),
                Ok(Some("round trip panic".into()))
            )
        }
        other => panic!("not a panic: {other:?}"),
    }

    // Cancelled on the APM side: the awaiting side sees `Cancelled`.
    let (_gate, gate) = futures::channel::oneshot::channel();
    let (dropped, drops) = mpsc::channel();
    let (handles, handle) = mpsc::channel();
    let mode = Mode::Wait(gate, Dropped(dropped));
    let mut future = Box::pin(round_trip(Arc::clone(&remote), mode, handles));
    let (_counter, waker) = CountingWaker::new();
    assert!(poll_with(&mut future, &waker).is_pending());
    handle.recv().unwrap().cancel();
    assert_eq!(
        futures::executor::block_on(future),
        Err(RoundError::Bridge(Error::Cancelled))
    );
    // Dropped on its executor, maybe after End returned.
    drops.recv().unwrap();
    assert!(drops.try_recv().is_err());

    // Cancelled on the awaiting side: dropping the future cancels the operation.
    let (_gate, gate) = futures::channel::oneshot::channel();
    let (dropped, drops) = mpsc::channel();
    let (handles, handle) = mpsc::channel();
    let mode = Mode::Wait(gate, Dropped(dropped));
    let mut future = Box::pin(round_trip(Arc::clone(&remote), mode, handles));
    assert!(poll_with(&mut future, &waker).is_pending());
    let handle = handle.recv().unwrap();
    drop(future);
    // `on_cancel` cancelled the handle, whose callback ran inside that call, on this
    // thread: the bridge's End ran there, once, so this End comes second.
    assert!(handle.is_completed());
    assert_eq!(
        Remote::end_op(handle),
        Err(RoundError::Bridge(Error::AlreadyEnded))
    );
    // Dropped on its executor, maybe after End returned.
    drops.recv().unwrap();
    assert!(drops.try_recv().is_err());
}

#[test]
fn a_cancel_argument_trips_when_the_caller_cancels() {
    let service = Service::new();
    let (cancels, cancelled) = mpsc::channel();
    let (callback, seen) = reporting(Service::end_watched);
    let handle = service.begin_watched(cancels, callback, State::none());
    handle.cancel();
    assert_eq!(seen.recv().unwrap(), (Err(Error::Cancelled), false, false));
    // The hook runs where the future is dropped, after the token tripped.
    assert_eq!(cancelled.recv(), Ok(true));
    assert!(cancelled.try_recv().is_err(), "the hook ran twice");
}

#[test]
fn a_cancel_argument_never_trips_when_the_operation_completes() {
    let service = Service::new();
    let (cancels, cancelled) = mpsc::channel();
    let reports = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&reports);
    let result = service.blocking_finished(cancels, move |report| {
        counted.fetch_add(report as usize, SeqCst);
    });
    assert_eq!(result, Ok(0));
    assert_eq!(reports.load(SeqCst), 1);
    // The hook was dropped unrun: its sender with it.
    assert!(cancelled.recv().is_err());
}

/// Counts the first polls of `write_once`.
static WRITES: AtomicUsize = AtomicUsize::new(0);

/// Writes once, on its first poll.
#[apm_tap::apm]
async fn write_once() -> u32 {
    WRITES.fetch_add(1, SeqCst);
    tokio::task::yield_now().await;
    1
}

#[test]
fn rule_12_the_blocking_call_refuses_before_it_begins_anything() {
    let runtime = current_thread();
    runtime.block_on(async {
        assert_eq!(blocking_write_once(), Err(Error::WouldDeadlock));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(
        WRITES.load(SeqCst),
        0,
        "the refused call began the operation"
    );
    assert_eq!(blocking_write_once(), Ok(1));
    assert_eq!(WRITES.load(SeqCst), 1);
}

/// `begin_add` as generated, wrapped again: its callback is `impl Into<AsyncCallback<T>>`.
#[apm_tap::from_apm(end = end_add, output = Result<u32, Error>, name = add_again)]
fn begin_add_again(
    a: u32,
    b: u32,
    callback: impl Into<AsyncCallback<u32>>,
    state: State,
) -> AsyncResult<u32> {
    begin_add(a, b, callback, state)
}

#[test]
fn from_apm_wraps_the_begin_that_apm_generates() {
    assert_eq!(futures::executor::block_on(add_again(20, 22)), Ok(42));
}

/// A legacy API with a `State` and a `Result` of its own, which the attributes must not
/// take for apm-tap's.
mod own_types {
    use apm_tap::{AsyncCallback, AsyncResult, Builder};

    /// The legacy mode: not `apm_tap::State`.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum State {
        Fast,
        Slow,
    }

    /// A verdict: a non-generic `Result` that End cannot flatten.
    #[derive(Debug, PartialEq)]
    pub enum Result {
        Good,
        Bad,
    }

    #[apm_tap::from_apm(end = end_speed, output = u32)]
    pub fn begin_speed(mode: State, callback: AsyncCallback<u32>) -> AsyncResult<u32> {
        let speed = if mode == State::Fast { 2 } else { 1 };
        Builder::new()
            .callback(callback)
            .begin(async move { speed })
    }

    pub fn end_speed(handle: AsyncResult<u32>) -> u32 {
        handle.end().unwrap_or(0)
    }

    #[apm_tap::apm]
    pub async fn verdict(good: bool) -> Result {
        if good {
            Result::Good
        } else {
            Result::Bad
        }
    }
}

#[test]
fn a_users_own_state_and_result_are_left_alone() {
    use own_types::{speed, State};
    assert_eq!(futures::executor::block_on(speed(State::Fast)), Ok(2));
    assert_eq!(futures::executor::block_on(speed(State::Slow)), Ok(1));
    assert_eq!(
        own_types::blocking_verdict(false),
        Ok(own_types::Result::Bad)
    );
}

/// Function pointers and `Fn` bounds borrow only for their own calls: owned arguments.
#[apm_tap::apm]
async fn parse_with(
    text: String,
    parser: fn(&str) -> usize,
    boxed: Box<dyn Fn(&str) -> usize + Send + Sync>,
) -> usize {
    parser(&text) + boxed(&text)
}

#[test]
fn higher_ranked_references_are_owned_arguments() {
    assert_eq!(
        blocking_parse_with("four".into(), str::len, Box::new(|text| text.len() * 10)),
        Ok(44)
    );
}

/// Deprecated, with six arguments: its Begin has eight. Clippy (`-D warnings` in
/// `.ci/run`) and the deprecation lint must stay quiet about the generated items.
#[deprecated(note = "kept to test that the attributes reach the generated items")]
#[apm_tap::apm]
async fn six(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> u8 {
    a + b + c + d + e + f
}

#[test]
#[allow(deprecated)] // Calls the deprecated `six`, on purpose.
fn attributes_and_lints_reach_the_generated_items() {
    assert_eq!(blocking_six(1, 2, 3, 4, 5, 6), Ok(21));
}

/// apm-tap under another path, as a crate that renamed the dependency has it.
mod renamed {
    pub use apm_tap::*;
}

#[apm_tap::apm(crate = "crate::renamed")]
async fn through_renamed(x: u8) -> u8 {
    x
}

#[apm_tap::from_apm(crate = "crate::renamed", end = end_through_renamed, output = Result<u8, Error>)]
fn begin_again_renamed(
    x: u8,
    callback: impl Into<AsyncCallback<u8>>,
    state: State,
) -> AsyncResult<u8> {
    begin_through_renamed(x, callback, state)
}

#[test]
fn crate_names_where_apm_tap_is() {
    assert_eq!(blocking_through_renamed(3), Ok(3));
    assert_eq!(futures::executor::block_on(again_renamed(4)), Ok(4));
}
