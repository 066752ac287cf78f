//! The bridge's own failures.

use std::io;

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
/// use apm_tap::{AsyncCallback, Error, State};
///
/// let handle = apm_tap::begin(async { 7 }, AsyncCallback::none(), State::none());
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
    /// The side that should have finished the operation went away without finishing it:
    /// a [`Completer`](crate::Completer) or an [`ApmCallback`](crate::ApmCallback) was
    /// dropped unused, or the runtime running the future shut down first.
    #[error("operation was abandoned before it completed")]
    Abandoned,
    /// The result was already taken by an earlier `end` (or `.await`) on this handle or
    /// one of its clones.
    #[error("operation was already ended")]
    AlreadyEnded,
    /// The future panicked; the payload's message, when it was a string.
    #[error("operation panicked: {0}")]
    Panicked(String),
    /// Blocking here would stop the runtime that has to finish the operation (the thread
    /// belongs to a current-thread tokio runtime). `.await` the handle instead.
    #[error("blocking here would deadlock the runtime that must finish the operation")]
    WouldDeadlock,
}

impl Error {
    /// Builds [`Error::Panicked`] from a payload caught by `catch_unwind`.
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_owned(),
                Err(_) => "non-string panic payload".to_owned(),
            },
        };
        Error::Panicked(message)
    }
}

/// Converts into an I/O error whose `source` is the [`Error`].
///
/// Kinds: `Cancelled` becomes [`io::ErrorKind::Interrupted`], `Abandoned` becomes
/// [`io::ErrorKind::BrokenPipe`] (the other side went away), every other variant
/// [`io::ErrorKind::Other`].
///
/// # Examples
///
/// ```
/// let e: std::io::Error = apm_tap::Error::Abandoned.into();
/// assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
/// ```
impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e {
            Error::Cancelled => io::ErrorKind::Interrupted,
            Error::Abandoned => io::ErrorKind::BrokenPipe,
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
/// assert_eq!(apm_tap::flatten(cancelled).unwrap_err().kind(), io::ErrorKind::Interrupted);
/// ```
pub fn flatten<U, E: From<Error>>(result: Result<Result<U, E>, Error>) -> Result<U, E> {
    result.map_err(E::from)?
}
