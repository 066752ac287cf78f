//! Misuse and bad input: each gets a clear error, never a hang, a double delivery or
//! undefined behaviour.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread;

use apm_tap::{Abandonment, ApmCallback, AsyncHandle, AsyncResult, Completer, Error, State};
use common::{poll_with, CountingWaker, Probe};

#[test]
fn end_twice_gets_already_ended() {
    let handle = apm_tap::begin(async { 1 });
    assert_eq!(handle.clone().end(), Ok(1));
    assert_eq!(handle.clone().end(), Err(Error::AlreadyEnded));
    assert_eq!(
        futures::executor::block_on(handle),
        Err(Error::AlreadyEnded)
    );
}

#[test]
fn dropped_completer_abandons_and_still_calls_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let (completer, handle) = apm_tap::Builder::new()
        .callback(move |h: AsyncResult<u8>| {
            assert!(h.is_completed());
            c.fetch_add(1, SeqCst);
        })
        .completer();
    let waiter = {
        let handle = handle.clone();
        thread::spawn(move || handle.end())
    };
    thread::spawn(move || drop(completer)).join().unwrap();
    assert_eq!(
        waiter.join().unwrap(),
        Err(Error::Abandoned(Abandonment::CompleterDropped))
    );
    assert_eq!(calls.load(SeqCst), 1);
    assert!(!handle.completed_synchronously());
}

#[test]
fn callback_dropped_by_legacy_api_is_abandoned() {
    let probe = Probe::new();
    let p = Arc::clone(&probe);
    let (tx, rx) = mpsc::channel::<ApmCallback>();
    let future = apm_tap::from_apm(
        move |cb| common::legacy_begin(&Probe::default(), cb, 0, false, common::Fire::Later(tx)),
        move |h| p.end(h),
    );
    let dropper = thread::spawn(move || drop(rx.recv().unwrap()));
    assert_eq!(
        futures::executor::block_on(future),
        Err(Error::Abandoned(Abandonment::CallbackDropped))
    );
    dropper.join().unwrap();
    assert_eq!(probe.ends(), 0);
}

#[test]
fn panicking_future_reports_message_and_runtime_survives() {
    for _ in 0..3 {
        let handle = apm_tap::begin(async {
            tokio::task::yield_now().await;
            panic!("{}", String::from("owned message"))
        });
        assert_eq!(
            common::panic_message(handle.end()),
            Ok(Some("owned message".to_owned()))
        );
    }
    let odd = apm_tap::begin(async { std::panic::panic_any(42_u32) });
    match odd.end() {
        Err(Error::Panicked(panic)) => {
            assert_eq!(panic.message(), None);
            assert_eq!(panic.into_panic().downcast_ref::<u32>(), Some(&42));
        }
        other => panic!("not a panic: {other:?}"),
    }
    let fine = apm_tap::begin(async {
        tokio::task::yield_now().await;
        "still serving"
    });
    assert_eq!(fine.end(), Ok("still serving"));
}

#[test]
fn cancel_after_completion_keeps_result() {
    let (completer, handle) = Completer::new();
    completer.complete("kept").unwrap();
    handle.cancel();
    assert_eq!(handle.end(), Ok("kept"));
}

#[test]
fn completing_after_cancel_hands_the_value_back() {
    let (completer, handle) = Completer::new();
    handle.cancel();
    assert!(completer.is_cancelled());
    assert_eq!(completer.complete(vec![1, 2]), Err(vec![1, 2]));
    assert_eq!(handle.end(), Err(Error::Cancelled));
}

/// A handle that answers `completed_synchronously` differently each time it is asked.
struct Liar {
    asked: Arc<AtomicUsize>,
    first_answer: bool,
}

impl AsyncHandle for Liar {
    fn completed_synchronously(&self) -> bool {
        let n = self.asked.fetch_add(1, SeqCst);
        (n % 2 == 0) == self.first_answer
    }
}

/// A handle that flips `completed_synchronously` is asked once, right after Begin:
/// that answer decides, and `end` runs exactly once whatever the callback does.
#[test]
fn lying_handle_is_asked_once_and_ended_once() {
    for first_answer in [true, false] {
        let asked = Arc::new(AtomicUsize::new(0));
        let ends = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let (a, e) = (Arc::clone(&asked), Arc::clone(&ends));
        let mut future = apm_tap::from_apm(
            move |cb| {
                tx.send(cb).unwrap();
                Liar {
                    asked: a,
                    first_answer,
                }
            },
            move |_| e.fetch_add(1, SeqCst),
        );
        let (_, waker) = CountingWaker::new();
        let first = poll_with(&mut future, &waker);
        assert_eq!(first.is_ready(), first_answer);
        rx.recv().unwrap().call();
        let outcome = if first_answer {
            first
        } else {
            poll_with(&mut future, &waker)
        };
        assert_eq!(outcome, Poll::Ready(Ok(0)));
        drop(future);
        assert_eq!(ends.load(SeqCst), 1);
        assert_eq!(asked.load(SeqCst), 1);
    }
}

/// A handle that claims synchronous completion while the operation is still running:
/// `end` runs at once (as the legacy End would be called), the late callback does nothing.
#[test]
fn handle_claiming_sync_while_running_ends_once() {
    let ends = Arc::new(AtomicUsize::new(0));
    let e = Arc::clone(&ends);
    let (tx, rx) = mpsc::channel();
    let future = apm_tap::from_apm(
        move |cb| {
            tx.send(cb).unwrap();
            common::LegacyHandle {
                value: 1,
                synchronous: true,
                completed: Arc::new(AtomicBool::new(false)),
            }
        },
        move |h| {
            e.fetch_add(1, SeqCst);
            h.is_completed()
        },
    );
    assert_eq!(futures::executor::block_on(future), Ok(false));
    rx.recv().unwrap().call();
    assert_eq!(ends.load(SeqCst), 1);
}

#[test]
fn polling_a_finished_from_apm_future_panics() {
    let mut future = apm_tap::from_apm(
        |cb| common::legacy_begin(&Probe::default(), cb, 2, true, common::Fire::Drop),
        |h| h.value,
    );
    let (_, waker) = CountingWaker::new();
    assert_eq!(poll_with(&mut future, &waker), Poll::Ready(Ok(2)));
    let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_with(&mut future, &waker)
    }));
    assert!(again.is_err());
}

/// Every variant's message, and the I/O error kind it becomes: never `Interrupted`,
/// which std's I/O loops retry forever.
#[test]
fn errors_display_and_convert() {
    let panicked = apm_tap::begin(async { panic!("x") }).end().unwrap_err();
    let cases = [
        (
            Error::Cancelled,
            "operation was cancelled",
            io::ErrorKind::Other,
        ),
        (
            Error::Abandoned(Abandonment::CallbackDropped),
            "operation was abandoned: the legacy callback was dropped without being called",
            io::ErrorKind::BrokenPipe,
        ),
        (
            Error::Abandoned(Abandonment::CompleterDropped),
            "operation was abandoned: the completer was dropped before it completed the operation",
            io::ErrorKind::BrokenPipe,
        ),
        (
            Error::Abandoned(Abandonment::TaskDropped),
            "operation was abandoned: the executor dropped the future before it finished \
             (runtime shut down or task refused)",
            io::ErrorKind::BrokenPipe,
        ),
        (
            Error::AlreadyEnded,
            "operation was already ended",
            io::ErrorKind::Other,
        ),
        (panicked, "operation panicked: x", io::ErrorKind::Other),
        (
            Error::WouldDeadlock,
            "blocking here would deadlock: this thread drives the current-thread runtime \
             that must run the operation; `.await` the handle instead, or end it from a \
             thread outside that runtime (for example in `tokio::task::spawn_blocking`)",
            io::ErrorKind::Other,
        ),
    ];
    for (error, text, kind) in cases {
        assert_eq!(error.to_string(), text);
        let io_error = io::Error::from(error.clone());
        assert_eq!(io_error.kind(), kind);
        assert_eq!(
            io_error.into_inner().unwrap().downcast::<Error>().unwrap(),
            Box::new(error)
        );
    }
    let not_a_string = apm_tap::begin(async { std::panic::panic_any(7_u8) });
    assert_eq!(
        not_a_string.end().unwrap_err().to_string(),
        "operation panicked"
    );
    let nested: Result<Result<u8, io::Error>, Error> = Err(Error::Cancelled);
    assert_eq!(
        apm_tap::flatten(nested).unwrap_err().kind(),
        io::ErrorKind::Other
    );
    let inner: Result<Result<u8, io::Error>, Error> = Ok(Err(io::ErrorKind::NotFound.into()));
    assert_eq!(
        apm_tap::flatten(inner).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn state_downcast_and_debug() {
    let state = State::new(5_u16);
    assert_eq!(state.downcast_ref::<u16>(), Some(&5));
    assert_eq!(state.downcast_ref::<u32>(), None);
    assert_eq!(format!("{state:?}"), "State(..)");
    assert_eq!(format!("{:?}", State::none()), "State(None)");
    assert!(State::default().is_none());
    let (completer, handle) = Completer::<u8>::new();
    assert_eq!(
        format!("{handle:?}"),
        "AsyncResult { is_completed: false, completed_synchronously: false, state: State(None) }"
    );
    assert_eq!(format!("{completer:?}"), "Completer { cancelled: false }");
}

/// `Error::Panicked` keeps the payload: the first `into_panic` (of any clone) gets it,
/// to re-raise; later ones get the message as a `String`.
#[test]
fn panic_payload_is_taken_once() {
    let handle = apm_tap::begin(async { std::panic::panic_any(String::from("mine")) });
    let Err(Error::Panicked(panic)) = handle.end() else {
        panic!("not a panic");
    };
    let again = panic.clone();
    assert_eq!(panic, again);
    assert_eq!(
        format!("{panic:?}"),
        "Panic { message: Some(\"mine\"), .. }"
    );
    let payload = panic.into_panic();
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("mine")
    );
    let message = again.into_panic();
    assert_eq!(
        message.downcast_ref::<String>().map(String::as_str),
        Some("mine")
    );
    let raised = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        std::panic::resume_unwind(payload)
    }));
    assert_eq!(
        raised
            .unwrap_err()
            .downcast_ref::<String>()
            .map(String::as_str),
        Some("mine")
    );

    let odd = apm_tap::begin(async { std::panic::panic_any(7_u8) });
    let Err(Error::Panicked(panic)) = odd.end() else {
        panic!("not a panic");
    };
    let again = panic.clone();
    assert_eq!(panic.into_panic().downcast_ref::<u8>(), Some(&7));
    assert_eq!(
        again
            .into_panic()
            .downcast_ref::<String>()
            .map(String::as_str),
        Some("Box<dyn Any>")
    );
}

/// An `io::Read` whose reads end an operation that was cancelled, as one that cancels
/// on a timeout does: `read_exact` must give up at once, not retry (it retries only
/// `ErrorKind::Interrupted`, which `Cancelled` used to become).
struct CancelledReads {
    reads: usize,
}

impl io::Read for CancelledReads {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads > 3 {
            // Ends a retrying loop all the same, with a different error.
            return Ok(0);
        }
        let handle = apm_tap::begin(std::future::pending::<io::Result<usize>>());
        handle.cancel();
        apm_tap::flatten(handle.end())
    }
}

#[test]
fn cancelled_read_is_not_retried_by_read_exact() {
    let mut reader = CancelledReads { reads: 0 };
    let error = io::Read::read_exact(&mut reader, &mut [0; 4]).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Other);
    assert_eq!(error.to_string(), "operation was cancelled");
    assert_eq!(reader.reads, 1);
}
