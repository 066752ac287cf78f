//! The bridge's own failures.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

/// A failure of the bridge itself, as opposed to the operation's own error.
///
/// The operation's result type (often `Result<U, E>`) passes through untouched, the way
/// tokio's `JoinHandle` does it: awaiting a bridged operation yields
/// `Result<Output, Error>`. Use [`flatten`] to merge the two when `E: From<Error>`.
///
/// The enum is `#[non_exhaustive]`: later versions may learn new ways to fail, so match
/// with a wildcard arm.
///
/// # Examples
///
/// ```
/// use apm_tap::Error;
///
/// let handle = apm_tap::begin(async { 7 });
/// let again = handle.clone();
/// assert_eq!(handle.end(), Ok(7));
/// assert_eq!(again.end(), Err(Error::AlreadyEnded));
/// assert_eq!(Error::AlreadyEnded.to_string(), "operation was already ended");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation was cancelled before it produced a result
    /// ([`AsyncResult::cancel`](crate::AsyncResult::cancel)).
    #[error("operation was cancelled")]
    Cancelled,
    /// The side that should have finished the operation went away without finishing it;
    /// the [`Abandonment`] says which.
    #[error("operation was abandoned: {0}")]
    Abandoned(Abandonment),
    /// The result was already taken by an earlier `end` (or `.await`) on this handle or
    /// one of its clones.
    #[error("operation was already ended")]
    AlreadyEnded,
    /// The future panicked. The [`Panic`] keeps the payload, so that the caller can
    /// re-raise it with [`std::panic::resume_unwind`].
    #[error("operation panicked{0}")]
    Panicked(Panic),
    /// Blocking here would stop the runtime that has to finish the operation: this
    /// thread drives the current-thread tokio runtime that runs the operation's task.
    #[error(
        "blocking here would deadlock: this thread drives the current-thread runtime that \
         must run the operation; `.await` the handle instead, or end it from a thread \
         outside that runtime (for example in `tokio::task::spawn_blocking`)"
    )]
    WouldDeadlock,
    /// A callback stream's bounded buffer with [`Overflow::Fail`](crate::stream::Overflow::Fail)
    /// was full when the producer emitted: the stream ends with this error after the
    /// items it holds.
    #[error("stream buffer overflowed")]
    Overflow,
    /// A [`Subscriber`](crate::stream::Subscriber) requested zero items, which ends its
    /// subscription (Reactive Streams rule 3.9).
    #[error("a subscriber requested zero items")]
    ZeroDemand,
}

/// Which side went away without finishing an operation: the reason inside
/// [`Error::Abandoned`].
///
/// # Examples
///
/// ```
/// use apm_tap::{Abandonment, Completer, Error};
///
/// let (completer, handle) = Completer::<u8>::new();
/// drop(completer);
/// assert_eq!(handle.end(), Err(Error::Abandoned(Abandonment::CompleterDropped)));
/// assert_eq!(
///     Abandonment::CompleterDropped.to_string(),
///     "the completer was dropped before it completed the operation"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Abandonment {
    /// The legacy code dropped the [`ApmCallback`](crate::ApmCallback) that
    /// [`from_apm`](fn@crate::from_apm) gave to Begin without calling it.
    #[error("the legacy callback was dropped without being called")]
    CallbackDropped,
    /// A [`Completer`](crate::Completer) was dropped before it completed the operation.
    #[error("the completer was dropped before it completed the operation")]
    CompleterDropped,
    /// The executor dropped the task running the future before it finished: the runtime
    /// shut down, or the spawner refused the task.
    #[error(
        "the executor dropped the future before it finished (runtime shut down or task refused)"
    )]
    TaskDropped,
    /// Every [`Emitter`](crate::stream::Emitter) of a callback stream was dropped before
    /// the producer finished or failed the stream.
    #[error("every emitter of the stream was dropped before it finished")]
    EmittersDropped,
}

/// The payload of a panic caught in a future, kept so that it can be re-raised (the model
/// is tokio's `JoinError`).
///
/// Clones share one payload: the first [`into_panic`](Self::into_panic) takes it. Two
/// `Panic`s are equal when their messages are.
///
/// # Examples
///
/// ```
/// use apm_tap::Error;
///
/// let handle = apm_tap::begin(async { std::panic::panic_any(42_u32) });
/// let Err(Error::Panicked(panic)) = handle.end() else { unreachable!() };
/// assert_eq!(panic.message(), None); // not a string
/// let payload = panic.into_panic();
/// assert_eq!(payload.downcast_ref::<u32>(), Some(&42));
/// ```
#[derive(Clone)]
pub struct Panic {
    message: Option<Arc<str>>,
    payload: Arc<Mutex<Option<Box<dyn Any + Send>>>>,
}

impl Panic {
    /// Keeps a payload caught by `catch_unwind`.
    pub(crate) fn new(payload: Box<dyn Any + Send>) -> Self {
        let message = panic_message(&payload).map(Arc::from);
        Panic {
            message,
            payload: Arc::new(Mutex::new(Some(payload))),
        }
    }

    /// The panic's message, when its payload is a string (as `panic!` with a message
    /// makes it).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Error;
    ///
    /// let handle = apm_tap::begin(async { panic!("out of {}", "cheese") });
    /// match handle.end() {
    ///     Err(Error::Panicked(panic)) => assert_eq!(panic.message(), Some("out of cheese")),
    ///     other => unreachable!("{other:?}"),
    /// }
    /// ```
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The original payload, to re-raise with [`std::panic::resume_unwind`]. If a clone
    /// already took it, the message instead (as a `String`; `"Box<dyn Any>"` for a
    /// payload that was not a string).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Error;
    ///
    /// let handle = apm_tap::begin(async { panic!("boom") });
    /// let Err(Error::Panicked(panic)) = handle.end() else { unreachable!() };
    /// let caught = std::panic::catch_unwind(|| std::panic::resume_unwind(panic.into_panic()));
    /// assert_eq!(caught.unwrap_err().downcast_ref::<&str>(), Some(&"boom"));
    /// ```
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        let taken = self
            .payload
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        taken.unwrap_or_else(|| {
            let message = self.message.as_deref().unwrap_or("Box<dyn Any>");
            Box::new(message.to_owned())
        })
    }
}

impl fmt::Debug for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Panic")
            .field("message", &self.message())
            .finish_non_exhaustive()
    }
}

/// `": message"`, or nothing for a payload that is not a string: the tail of
/// [`Error::Panicked`]'s message.
impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message() {
            Some(message) => write!(f, ": {message}"),
            None => Ok(()),
        }
    }
}

impl PartialEq for Panic {
    fn eq(&self, other: &Panic) -> bool {
        self.message == other.message
    }
}

impl Eq for Panic {}

impl Error {
    /// Builds [`Error::Panicked`] from a payload caught by `catch_unwind`.
    pub(crate) fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        Error::Panicked(Panic::new(payload))
    }
}

/// Converts into an I/O error whose `source` is the [`Error`].
///
/// No variant becomes [`io::ErrorKind::Interrupted`], which std's `read_exact`,
/// `read_to_end` and `write_all` retry forever. `Abandoned` becomes
/// [`io::ErrorKind::BrokenPipe`] (the other side went away), every other variant
/// [`io::ErrorKind::Other`], as for tokio's `JoinError`.
///
/// # Examples
///
/// ```
/// use apm_tap::{Abandonment, Error};
///
/// let e: std::io::Error = Error::Abandoned(Abandonment::TaskDropped).into();
/// assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
/// let e: std::io::Error = Error::Cancelled.into();
/// assert_eq!(e.kind(), std::io::ErrorKind::Other);
/// ```
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::Abandoned(_) => io::ErrorKind::BrokenPipe,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Merges the bridge's error into the operation's own error type.
///
/// Bridged operations whose output is a `Result<U, E>` resolve to
/// `Result<Result<U, E>, Error>`; this turns that into `Result<U, E>`.
///
/// # Errors
///
/// Returns the operation's error as is, or the bridge's [`Error`] converted with
/// `E::from`.
///
/// # Examples
///
/// ```
/// use std::io;
///
/// let ok: Result<Result<u8, io::Error>, apm_tap::Error> = Ok(Ok(3));
/// assert_eq!(apm_tap::flatten(ok).unwrap(), 3);
///
/// let cancelled: Result<Result<u8, io::Error>, apm_tap::Error> = Err(apm_tap::Error::Cancelled);
/// let error = apm_tap::flatten(cancelled).unwrap_err();
/// assert_eq!(error.kind(), io::ErrorKind::Other);
/// assert_eq!(error.to_string(), "operation was cancelled");
/// ```
pub fn flatten<U, E: From<Error>>(result: Result<Result<U, E>, Error>) -> Result<U, E> {
    result.map_err(E::from)?
}

/// A panic payload's message, when it is a string (as `panic!` with a message makes it).
/// It takes the box, not `&dyn Any`: a `&Box<dyn Any>` would coerce to a `&dyn Any` of
/// the box itself, which is neither string.
pub(crate) fn panic_message(payload: &Box<dyn Any + Send>) -> Option<&str> {
    let payload: &(dyn Any + Send) = &**payload;
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&'static str>().copied())
}
