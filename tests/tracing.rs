//! The `tracing` feature: a span per operation, events at its steps, and at `INFO` only
//! failures and abandonments, each with the operation's kind and location. A panicking
//! subscriber changes no outcome (rule 17).
//!
//! Each test installs its subscriber for its own thread (`with_default`), and keeps its
//! operations there.
#![cfg(feature = "tracing")]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use apm_tap::{Abandonment, ApmCallback, AsyncHandle, Completer, Error};
use futures::task::noop_waker_ref;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;

/// What the subscriber writes.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

/// The lines a `fmt` subscriber at `level` writes while `f` runs on this thread.
fn traced(level: Level, f: impl FnOnce()) -> Vec<String> {
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buffer.clone())
        .with_max_level(level)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let written = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    written.lines().map(String::from).collect()
}

fn poll<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(noop_waker_ref()))
}

struct Handle;

impl AsyncHandle for Handle {
    fn completed_synchronously(&self) -> bool {
        false
    }
}

#[test]
fn info_shows_nothing_for_operations_that_succeed_or_are_cancelled() {
    let lines = traced(Level::INFO, || {
        assert_eq!(apm_tap::begin(async { 1 }).end(), Ok(1));
        let (completer, handle) = Completer::new();
        completer.complete(2).unwrap();
        assert_eq!(handle.end(), Ok(2));
        let mut read = apm_tap::from_apm(
            |callback: ApmCallback| {
                callback.call();
                Handle
            },
            |_: Handle| 3,
        );
        assert_eq!(poll(&mut read), Poll::Ready(Ok(3)));
        let pending = apm_tap::begin(std::future::pending::<()>());
        pending.cancel();
        assert_eq!(pending.end(), Err(Error::Cancelled));
    });
    assert_eq!(lines, Vec::<String>::new());
}

#[test]
fn info_shows_an_abandoned_operation_with_its_kind_and_location() {
    let mut line = 0;
    let lines = traced(Level::INFO, || {
        let lose = |callback: ApmCallback| {
            drop(callback);
            Handle
        };
        let mut read;
        (line, read) = (line!(), apm_tap::from_apm(lose, |_: Handle| 0));
        let abandoned = Err(Error::Abandoned(Abandonment::CallbackDropped));
        assert_eq!(poll(&mut read), Poll::Ready(abandoned));
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let said = &lines[0];
    let location = format!("location=tests/tracing.rs:{line}:");
    assert!(
        said.starts_with(" WARN abandoned: the legacy callback was dropped without being called"),
        "{said}"
    );
    assert!(said.contains(" kind=\"from_apm\" "), "{said}");
    assert!(said.contains(&location), "{said}");
}

#[test]
fn info_shows_a_dropped_completer_where_its_error_is_taken_or_lost() {
    let lines = traced(Level::INFO, || {
        let (completer, handle) = Completer::<u8>::new();
        drop(completer);
        let abandoned = Err(Error::Abandoned(Abandonment::CompleterDropped));
        assert_eq!(handle.end(), abandoned);
        // Nobody takes this one's error: said when its last part goes.
        let (completer, handle) = Completer::<u8>::new();
        drop((completer, handle));
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let expected = [
        " WARN abandoned: the completer was dropped before it completed the operation",
        " WARN abandoned: nobody took the error",
    ];
    for (said, expected) in lines.iter().zip(expected) {
        assert!(said.starts_with(expected), "{said}");
        assert!(said.contains(" kind=\"Completer\" "), "{said}");
    }
}

#[test]
fn a_panicking_future_is_an_error_with_its_message() {
    let lines = traced(Level::INFO, || {
        let handle = apm_tap::begin(async { panic!("out of cheese") });
        assert!(matches!(handle.end(), Err(Error::Panicked(_))));
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("ERROR the operation's future panicked"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" kind=\"begin\" "), "{}", lines[0]);
    assert!(
        lines[0].contains(" panic=\"out of cheese\""),
        "{}",
        lines[0]
    );
}

/// Each line's message and the span it names, without the span's fields.
fn steps(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let line = line.trim_start_matches("DEBUG ");
            let span = line.split('{').next().unwrap();
            let message = line.split("}: ").nth(1).unwrap_or(line);
            format!("{span}: {message}")
        })
        .collect()
}

#[test]
fn debug_shows_each_step_in_the_operations_span() {
    let kept: Arc<Mutex<Option<ApmCallback>>> = Arc::default();
    let keeper = Arc::clone(&kept);
    let lines = traced(Level::DEBUG, move || {
        let mut read = apm_tap::from_apm(
            move |callback| {
                *keeper.lock().unwrap() = Some(callback);
                Handle
            },
            |_: Handle| 1,
        );
        assert!(poll(&mut read).is_pending());
        kept.lock().unwrap().take().unwrap().call();
        assert_eq!(poll(&mut read), Poll::Ready(Ok(1)));

        let pending = apm_tap::begin(std::future::pending::<()>());
        pending.cancel();
        assert_eq!(pending.end(), Err(Error::Cancelled));
    });
    assert_eq!(
        steps(&lines),
        [
            "apm_tap::operation: began",
            "apm_tap::operation: called back",
            "apm_tap::operation: ended",
            "apm_tap::operation: began",
            "apm_tap::operation: cancelled",
            "apm_tap::operation: ended",
        ]
    );
    assert!(
        lines[0].contains("kind=\"from_apm\" location=tests/tracing.rs:"),
        "{}",
        lines[0]
    );
}

/// A subscriber that panics when it is told of an event, and when it makes a span
/// (`at_new_span`) or closes one.
struct Panicky {
    at_new_span: bool,
}

impl Subscriber for Panicky {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        assert!(!self.at_new_span, "the subscriber's new_span panics");
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {
        panic!("the subscriber's event panics");
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}

    fn try_close(&self, _: Id) -> bool {
        panic!("the subscriber's try_close panics");
    }
}

#[test]
fn a_panicking_subscriber_changes_no_outcome() {
    for at_new_span in [false, true] {
        tracing::subscriber::with_default(Panicky { at_new_span }, || {
            assert_eq!(apm_tap::begin(async { 1 }).end(), Ok(1));
            let (completer, handle) = Completer::new();
            completer.complete(2).unwrap();
            assert_eq!(handle.end(), Ok(2));
            let mut read = apm_tap::from_apm(
                |callback: ApmCallback| {
                    drop(callback);
                    Handle
                },
                |_: Handle| 3,
            );
            let abandoned = Err(Error::Abandoned(Abandonment::CallbackDropped));
            assert_eq!(poll(&mut read), Poll::Ready(abandoned));
            drop(read);
            // Its record goes in `drop`, which must not unwind.
            drop(Completer::<u8>::new());
        });
    }
}

/// A subscriber that calls back into apm-tap whenever it is told of a span or an
/// event: it takes a snapshot of the operations in flight, and begins and ends one.
struct Reentrant;

thread_local! {
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Reentrant {
    fn call_back_into_apm_tap() {
        if INSIDE.with(|inside| inside.replace(true)) {
            return;
        }
        let _ = apm_tap::diagnostics::in_flight();
        let (completer, handle) = Completer::new();
        completer.complete(1).unwrap();
        assert_eq!(handle.end(), Ok(1));
        INSIDE.with(|inside| inside.set(false));
    }
}

impl Subscriber for Reentrant {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Reentrant::call_back_into_apm_tap();
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {
        Reentrant::call_back_into_apm_tap();
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Rule 18: the subscriber is user code, and runs under none of the registry's locks,
/// so that it can use apm-tap (a subscriber told of a span under the lock of its
/// thread's shard deadlocked here).
#[test]
fn a_subscriber_may_call_back_into_apm_tap() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tracing::subscriber::with_default(Reentrant, || {
            assert_eq!(apm_tap::begin(async { 2 }).end(), Ok(2));
            let (completer, handle) = Completer::new();
            completer.complete(3).unwrap();
            assert_eq!(handle.end(), Ok(3));
        });
        done.send(()).unwrap();
    });
    // Not a timing assertion: a deadlock never finishes, and this says so instead of
    // hanging the test run.
    let waited = finished.recv_timeout(std::time::Duration::from_secs(60));
    assert!(waited.is_ok(), "deadlocked");
}

#[test]
fn a_cancel_whose_legacy_cancel_drops_the_callback_is_not_a_warning() {
    let lines = traced(Level::INFO, || {
        let kept: Arc<Mutex<Option<ApmCallback>>> = Arc::default();
        let keeper = Arc::clone(&kept);
        let begin = move |callback| {
            *keeper.lock().unwrap() = Some(callback);
            Handle
        };
        // The legacy Cancel drops the pending callback.
        let cancel = move |_: &Handle| drop(kept.lock().unwrap().take());
        let mut read = apm_tap::from_apm(begin, |_: Handle| 0).on_cancel(cancel);
        assert!(poll(&mut read).is_pending());
        drop(read);
    });
    assert_eq!(lines, Vec::<String>::new());
}

#[test]
fn a_begin_that_panics_or_fails_is_said_so() {
    let mut line = 0;
    let lines = traced(Level::INFO, || {
        let panics = |_: ApmCallback| -> Handle { panic!("no such device") };
        let caught = std::panic::catch_unwind(|| {
            let mut read = apm_tap::from_apm(panics, |_: Handle| 0);
            let _ = poll(&mut read);
        });
        assert!(caught.is_err());
        let fails = |_: ApmCallback| Err::<Handle, _>(io::Error::other("refused"));
        let mut read;
        (line, read) = (line!(), apm_tap::try_from_apm(fails, |_: Handle| Ok(0)));
        let Poll::Ready(Err(error)) = poll(&mut read) else {
            panic!("the Begin's error")
        };
        assert_eq!(error.to_string(), "refused");
    });
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("ERROR Begin panicked"), "{}", lines[0]);
    assert!(
        lines[0].contains(" panic=\"no such device\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(" WARN Begin returned an error"),
        "{}",
        lines[1]
    );
    let location = format!("location=tests/tracing.rs:{line}:");
    assert!(lines[1].contains(&location), "{}", lines[1]);
}

#[test]
fn at_info_a_warning_keeps_the_users_span() {
    let lines = traced(Level::INFO, || {
        let request = tracing::info_span!("request", rid = 42);
        let _inside = request.enter();
        let (completer, handle) = Completer::<u8>::new();
        drop(completer);
        assert!(handle.end().is_err());
    });
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(" WARN request{rid=42}: abandoned"),
        "{}",
        lines[0]
    );
}
