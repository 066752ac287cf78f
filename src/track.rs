//! Each operation's record, for [`crate::diagnostics`] and the `tracing` feature.
//!
//! Every operation carries a [`Tracker`] from where it starts (an [`Origin`]: its kind
//! and the `#[track_caller]` location of the public call) to where it ends. Its parts
//! report what happens to it: the callback ran, it completed, was cancelled or
//! abandoned, its result was taken.
//!
//! With the `diagnostics` feature off, [`Origin`] and [`Tracker`] are zero-sized and
//! every method is an empty inline function: no field takes space and no instruction is
//! emitted. With it on, a tracker is an `Arc` of the operation's [`Record`], listed in
//! the registry until the result is taken or every part of the operation is gone.

#[cfg(feature = "diagnostics")]
use std::panic::Location;
#[cfg(feature = "diagnostics")]
use std::sync::atomic::{AtomicU8, Ordering::AcqRel};
#[cfg(feature = "diagnostics")]
use std::sync::Arc;
#[cfg(feature = "diagnostics")]
use std::time::Instant;
#[cfg(feature = "tracing")]
use tracing::{debug, error, warn};

use crate::{Abandonment, Error};

#[cfg(feature = "diagnostics")]
pub(crate) use crate::diagnostics::Kind;

/// Which entry point made an operation: `diagnostics::Kind`, which only exists with the
/// feature.
#[cfg(not(feature = "diagnostics"))]
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    FromApm,
    FromAsyncResult,
    FromCallback,
    Begin,
    Completer,
}

/// Where an operation was made: its kind and the location of the public call; no
/// location for the crate's own plumbing (the task that serves a pull, the task that
/// runs a posted callback), which is part of an operation listed already.
#[derive(Clone, Copy)]
pub(crate) struct Origin {
    #[cfg(feature = "diagnostics")]
    kind: Kind,
    #[cfg(feature = "diagnostics")]
    location: Option<&'static Location<'static>>,
}

impl Origin {
    /// The origin of an operation of `kind` made by the caller of the `#[track_caller]`
    /// chain this is called from.
    #[cfg_attr(feature = "diagnostics", track_caller)]
    #[inline(always)]
    pub(crate) fn caller(kind: Kind) -> Self {
        #[cfg(feature = "diagnostics")]
        return Origin {
            kind,
            location: Some(Location::caller()),
        };
        #[cfg(not(feature = "diagnostics"))]
        {
            let _ = kind;
            Origin {}
        }
    }

    /// The origin of the crate's own plumbing: not listed.
    #[inline(always)]
    pub(crate) fn plumbing() -> Self {
        Origin {
            #[cfg(feature = "diagnostics")]
            kind: Kind::Begin,
            #[cfg(feature = "diagnostics")]
            location: None,
        }
    }
}

/// An operation's part of its record: the operation's future, handle, cell or callback
/// holds one. Cloned for each part that reports.
#[derive(Clone)]
pub(crate) struct Tracker {
    /// None for the crate's plumbing.
    #[cfg(feature = "diagnostics")]
    record: Option<Arc<Record>>,
}

/// Emits a `tracing` event. The subscriber is user code that may panic where nothing
/// may unwind (rule 17): its panic is discarded.
#[cfg(feature = "tracing")]
macro_rules! quiet {
    ($event:expr) => {
        crate::unwind::quietly(|| $event)
    };
}

/// A `WARN` or `ERROR` event of one operation (`$record`), with what locates it: in the
/// operation's span where that is on, else in whatever span is current where it happens.
/// At `INFO` the operation's `DEBUG` span is off, and the user's own span (a request's,
/// a task's) then gives the event its context.
#[cfg(feature = "tracing")]
macro_rules! alert {
    ($record:expr, $level:ident, $($rest:tt)*) => {{
        let record: &Record = $record;
        if record.span.is_disabled() {
            quiet!($level!(
                id = record.id,
                kind = record.kind.name(),
                location = %record.location,
                $($rest)*
            ))
        } else {
            quiet!($level!(
                parent: &record.span,
                id = record.id,
                kind = record.kind.name(),
                location = %record.location,
                $($rest)*
            ))
        }
    }};
}

/// What happened to an operation: bits of [`Record::flags`].
#[cfg(feature = "diagnostics")]
mod flag {
    /// The operation has a callback (the table says whether it ran).
    pub(super) const HAS_CALLBACK: u8 = 1;
    /// The callback ran (for an `AsyncCallback`: was called or handed to its dispatch).
    pub(super) const CALLED_BACK: u8 = 1 << 1;
    /// The outcome is there (a value or an error).
    pub(super) const COMPLETED: u8 = 1 << 2;
    /// The consumer gave up: a handle cancelled, or the future was dropped first.
    pub(super) const CANCELLED: u8 = 1 << 3;
    /// The producer went away without an outcome.
    pub(super) const ABANDONED: u8 = 1 << 4;
    /// The result was taken: the operation is over and no longer listed.
    pub(super) const ENDED: u8 = 1 << 5;
}

/// One operation's record, shared by its parts and listed in the registry.
#[cfg(feature = "diagnostics")]
pub(crate) struct Record {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) location: &'static Location<'static>,
    pub(crate) started: Instant,
    /// The registry's own number for the thread that made the operation.
    pub(crate) thread: u64,
    /// The bits of `flag`, each set once, never cleared.
    flags: AtomicU8,
    /// Where the registry lists it.
    place: crate::diagnostics::Place,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

#[cfg(feature = "diagnostics")]
impl Record {
    /// What happened so far, as the bits of `flag`.
    fn flags(&self) -> u8 {
        // ORDERING: Acquire, for a reader on another thread; each flag is a fact on its
        // own, published with AcqRel.
        self.flags.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What the in-flight table shows.
    pub(crate) fn status(&self) -> (crate::diagnostics::Status, Option<bool>) {
        use crate::diagnostics::Status;
        let flags = self.flags();
        let status = if flags & flag::ABANDONED != 0 {
            Status::Abandoned
        } else if flags & flag::CANCELLED != 0 {
            Status::Cancelled
        } else if flags & flag::COMPLETED != 0 {
            Status::Completed
        } else {
            Status::Pending
        };
        // A `from_callback`'s callback is its completer: completing it is calling back.
        let (has, called) = if self.kind == Kind::FromCallback {
            (true, flags & (flag::CALLED_BACK | flag::COMPLETED) != 0)
        } else {
            (
                flags & flag::HAS_CALLBACK != 0,
                flags & flag::CALLED_BACK != 0,
            )
        };
        let callback = has.then_some(called);
        (status, callback)
    }

    /// The warning for an abandoned operation, with what locates it.
    #[cfg(feature = "tracing")]
    fn warn_abandoned(&self, why: &dyn std::fmt::Display) {
        alert!(self, warn, age = ?self.started.elapsed(), "abandoned: {why}");
    }

    /// Sets `bits`; returns the flags before.
    fn set(&self, bits: u8) -> u8 {
        // ORDERING: AcqRel: each flag is independent; a reader acquires what was set.
        self.flags.fetch_or(bits, AcqRel)
    }
}

#[cfg(feature = "diagnostics")]
impl Drop for Record {
    /// Every part of the operation is gone: it is no longer listed, if it still was.
    fn drop(&mut self) {
        // Closing the span calls the subscriber: quietly.
        #[cfg(feature = "tracing")]
        crate::unwind::drop_quietly(std::mem::replace(&mut self.span, tracing::Span::none()));
        let flags = self.flags();
        if flags & flag::ENDED == 0 {
            crate::diagnostics::unlist(&self.place);
            // A cancelled operation's abandonment is its legacy Cancel at work (one
            // that drops the callback), not a failure.
            #[cfg(feature = "tracing")]
            if flags & (flag::ABANDONED | flag::CANCELLED) == flag::ABANDONED {
                self.warn_abandoned(&"nobody took the error");
            }
        }
    }
}

/// The operation's span, its `id` to be recorded once it has one; none if the
/// subscriber panicked making it.
#[cfg(feature = "tracing")]
fn new_span(kind: Kind, location: &'static Location<'static>) -> tracing::Span {
    let made = crate::unwind::catch(|| {
        tracing::debug_span!(
            "apm_tap::operation",
            id = tracing::field::Empty,
            kind = kind.name(),
            location = %location,
        )
    });
    made.unwrap_or_else(|payload| {
        crate::unwind::discard(payload);
        tracing::Span::none()
    })
}

impl Tracker {
    /// Records a new operation, listed until its result is taken or all its parts are
    /// gone. `callback`: whether it has a callback to report on.
    #[inline(always)]
    pub(crate) fn start(origin: Origin, callback: bool) -> Self {
        #[cfg(feature = "diagnostics")]
        return Tracker {
            record: origin
                .location
                .map(|location| Record::list(origin.kind, location, callback)),
        };
        #[cfg(not(feature = "diagnostics"))]
        {
            let _ = (origin, callback);
            Tracker {}
        }
    }

    /// The operation's callback ran (or, for an `AsyncCallback` with a dispatch, was
    /// handed to it).
    #[inline(always)]
    pub(crate) fn called_back(&self) {
        #[cfg(feature = "diagnostics")]
        if let Some(record) = &self.record {
            record.step(flag::CALLED_BACK, "called back");
        }
    }

    /// The operation's outcome was stored.
    #[inline(always)]
    pub(crate) fn completed<T>(&self, outcome: &Result<T, Error>) {
        #[cfg(feature = "diagnostics")]
        if let Some(record) = &self.record {
            record.completed(outcome);
        }
        #[cfg(not(feature = "diagnostics"))]
        let _ = outcome;
    }

    /// The consumer gave up before the outcome: a handle cancelled, or the future was
    /// dropped.
    #[inline(always)]
    pub(crate) fn cancelled(&self) {
        #[cfg(feature = "diagnostics")]
        if let Some(record) = &self.record {
            record.step(flag::CANCELLED, "cancelled");
        }
    }

    /// A legacy Begin failed (`panic`: with this panic's payload) before the operation
    /// could start: it is over.
    #[inline(always)]
    pub(crate) fn begin_failed(&self, panic: Option<&crate::unwind::Payload>) {
        #[cfg(feature = "diagnostics")]
        if let Some(record) = &self.record {
            #[cfg(feature = "tracing")]
            match panic {
                Some(payload) => {
                    let message = crate::error::panic_message(payload);
                    let message = message.unwrap_or("(not a string)");
                    alert!(record, error, panic = message, "Begin panicked");
                }
                None => alert!(record, warn, "Begin returned an error"),
            }
            record.ended(None);
        }
        let _ = panic;
    }

    /// The result was taken: the operation is over, and no longer listed. `abandoned`:
    /// the result taken is that error.
    #[inline(always)]
    pub(crate) fn ended(&self, abandoned: Option<Abandonment>) {
        #[cfg(feature = "diagnostics")]
        if let Some(record) = &self.record {
            record.ended(abandoned);
        }
        let _ = abandoned;
    }
}

#[cfg(feature = "diagnostics")]
impl Record {
    /// Makes and lists the record of a new operation.
    fn list(kind: Kind, location: &'static Location<'static>, callback: bool) -> Arc<Record> {
        let started = Instant::now();
        // Made before the operation is listed: the subscriber is user code, and runs
        // under no lock of the registry's (rule 18).
        #[cfg(feature = "tracing")]
        let span = new_span(kind, location);
        let record = crate::diagnostics::list(|id, place, thread| Record {
            id,
            kind,
            location,
            started,
            thread,
            flags: AtomicU8::new(if callback { flag::HAS_CALLBACK } else { 0 }),
            place,
            #[cfg(feature = "tracing")]
            span,
        });
        #[cfg(feature = "tracing")]
        quiet!({
            record.span.record("id", record.id);
            debug!(parent: &record.span, "began");
        });
        record
    }

    /// Sets `bits`, and says `step` at `DEBUG`.
    fn step(&self, bits: u8, step: &str) {
        self.set(bits);
        #[cfg(feature = "tracing")]
        quiet!(debug!(parent: &self.span, "{step}"));
        #[cfg(not(feature = "tracing"))]
        let _ = step;
    }

    fn completed<T>(&self, outcome: &Result<T, Error>) {
        match outcome {
            Err(Error::Abandoned(why)) => self.abandoned(*why),
            _ => {
                self.set(flag::COMPLETED);
                #[cfg(feature = "tracing")]
                self.trace_outcome(outcome);
            }
        }
    }

    #[cfg(feature = "tracing")]
    fn trace_outcome<T>(&self, outcome: &Result<T, Error>) {
        match outcome {
            Ok(_) => quiet!(debug!(parent: &self.span, "completed")),
            Err(Error::Panicked(panic)) => alert!(
                self,
                error,
                panic = panic.message().unwrap_or("(not a string)"),
                "the operation's future panicked",
            ),
            Err(error) => alert!(self, warn, %error, "failed"),
        }
    }

    /// The legacy side called back: for `from_apm`, the callback is the completion.
    fn called_back_completed(&self) {
        self.step(flag::CALLED_BACK | flag::COMPLETED, "called back");
    }

    /// The producer went away without an outcome. Reported (a `tracing` warning) where
    /// the consumer learns it ([`ended`](Self::ended)), or, if none does, when the
    /// record goes.
    fn abandoned(&self, why: Abandonment) {
        self.set(flag::ABANDONED);
        #[cfg(feature = "tracing")]
        quiet!(debug!(parent: &self.span, "abandoned: {why}"));
        #[cfg(not(feature = "tracing"))]
        let _ = why;
    }

    fn ended(&self, abandoned: Option<Abandonment>) {
        if self.set(flag::ENDED) & flag::ENDED == 0 {
            crate::diagnostics::unlist(&self.place);
            #[cfg(feature = "tracing")]
            match abandoned {
                Some(why) => self.warn_abandoned(&why),
                None => quiet!(debug!(parent: &self.span, "ended")),
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = abandoned;
    }
}

/// A legacy callback's tracker: dropped before [`called`](Self::called), it records
/// the operation as abandoned (`why`).
pub(crate) struct CallbackTracker {
    /// Taken when the callback is called.
    #[cfg(feature = "diagnostics")]
    record: Option<Arc<Record>>,
    #[cfg(feature = "diagnostics")]
    why: Abandonment,
}

impl CallbackTracker {
    #[inline(always)]
    pub(crate) fn new(tracker: &Tracker, why: Abandonment) -> Self {
        #[cfg(feature = "diagnostics")]
        return CallbackTracker {
            record: tracker.record.clone(),
            why,
        };
        #[cfg(not(feature = "diagnostics"))]
        {
            let _ = (tracker, why);
            CallbackTracker {}
        }
    }

    /// The callback was called: the operation completed.
    #[inline(always)]
    pub(crate) fn called(self) {
        #[cfg(feature = "diagnostics")]
        {
            let mut this = self;
            if let Some(record) = this.record.take() {
                record.called_back_completed();
            }
        }
    }
}

#[cfg(feature = "diagnostics")]
impl Drop for CallbackTracker {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.abandoned(self.why);
        }
    }
}
