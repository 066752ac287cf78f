use std::fmt;

use crate::cell::{self, Writer};
use crate::track::{Kind, Origin, Tracker};
use crate::{AsyncCallback, AsyncResult, State};

/// What the implementation of a Begin method holds to finish its operation: the
/// counterpart of .NET's `TaskCompletionSource`.
///
/// [`Completer::new`] makes the pair: the `Completer` for the code that does the work,
/// the [`AsyncResult`] to return from Begin ([`Builder::completer`](crate::Builder::completer)
/// when Begin received a callback and a state). Completing consumes the completer, so a
/// second completion does not compile.
///
/// The operation's own failure is part of its value: make `T` a `Result` (what
/// `TaskCompletionSource.SetException` does). Cancellation comes from the handle's side
/// ([`AsyncResult::cancel`]), which the completer sees in [`is_cancelled`](Self::is_cancelled).
///
/// Dropping a completer unfinished completes the operation with
/// [`Error::Abandoned`](crate::Error::Abandoned)`(`[`CompleterDropped`](crate::Abandonment::CompleterDropped)`)`:
/// the callback still runs and nobody waits forever. The drop never panics, also while
/// its thread unwinds from a panic of its own.
///
/// # Examples
///
/// A Begin/End pair written by hand, completing synchronously when it can:
///
/// ```
/// use apm_tap::{AsyncCallback, AsyncResult, Builder, State};
///
/// fn begin_double(x: u32, callback: AsyncCallback<u32>, state: State) -> AsyncResult<u32> {
///     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
///     if x < 100 {
///         // Cheap: finish on the caller's thread, inside Begin.
///         let _ = completer.complete_synchronously(x * 2);
///     } else {
///         std::thread::spawn(move || {
///             let _ = completer.complete(x * 2);
///         });
///     }
///     handle
/// }
///
/// fn end_double(handle: AsyncResult<u32>) -> Result<u32, apm_tap::Error> {
///     handle.end()
/// }
///
/// let h = begin_double(4, AsyncCallback::none(), State::none());
/// assert!(h.completed_synchronously());
/// assert_eq!(end_double(h), Ok(8));
///
/// let h = begin_double(400, AsyncCallback::none(), State::none());
/// assert_eq!(end_double(h), Ok(800));
/// ```
#[doc(alias = "TaskCompletionSource")]
pub struct Completer<T> {
    /// Dropped unfinished (with the completer), it completes the operation with
    /// `Abandoned`.
    writer: Writer<T>,
}

impl<T> Completer<T> {
    /// Makes a pending operation with no callback and no state: the completer that
    /// finishes it, and the handle to wait on, await or end. A Begin method that received
    /// a callback and a state uses [`Builder::completer`](crate::Builder::completer).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Completer;
    ///
    /// let (completer, handle) = Completer::<&str>::new();
    /// assert!(!handle.is_completed());
    /// completer.complete("done").unwrap();
    /// assert_eq!(handle.end(), Ok("done"));
    /// ```
    #[cfg_attr(feature = "diagnostics", track_caller)]
    pub fn new() -> (Completer<T>, AsyncResult<T>) {
        Completer::with(
            AsyncCallback::none(),
            State::none(),
            Origin::caller(Kind::Completer),
        )
    }

    /// Makes a pending operation whose `callback` runs once when it completes, on the
    /// thread that completes it, and whose handle returns `state`.
    pub(crate) fn with(
        callback: AsyncCallback<T>,
        state: State,
        origin: Origin,
    ) -> (Completer<T>, AsyncResult<T>) {
        let callback = callback.into_inner();
        let tracker = Tracker::start(origin, callback.is_some());
        let (writer, handle) = cell::new(callback, state, tracker);
        (Completer { writer }, AsyncResult::from_shared(handle))
    }

    /// Finishes the operation asynchronously: `completed_synchronously` stays `false`.
    /// Wakes every waiter, then runs the callback on this thread.
    ///
    /// # Errors
    ///
    /// Hands `value` back if the operation was already cancelled
    /// ([`AsyncResult::cancel`]); nobody will read it.
    ///
    /// Never panics, so it is safe to call from an `extern "C"` function: a panic of a
    /// waker or of the callback is discarded (see the crate docs'
    /// [Panics](crate#panics)); the value is stored before either runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Completer;
    ///
    /// let (completer, handle) = Completer::new();
    /// std::thread::spawn(move || completer.complete(3).unwrap());
    /// assert_eq!(handle.end(), Ok(3));
    /// ```
    #[doc(alias = "SetResult")]
    #[doc(alias = "TrySetResult")]
    pub fn complete(self, value: T) -> Result<(), T> {
        self.finish(value, false)
    }

    /// Finishes the operation on the thread that called Begin, before Begin returns:
    /// `completed_synchronously` becomes `true`. Call it only from inside Begin.
    ///
    /// # Errors
    ///
    /// Hands `value` back if the operation was already cancelled.
    ///
    /// Never panics, as [`complete`](Self::complete).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Completer;
    ///
    /// let (completer, handle) = Completer::new();
    /// completer.complete_synchronously('x').unwrap();
    /// assert!(handle.completed_synchronously());
    /// ```
    pub fn complete_synchronously(self, value: T) -> Result<(), T> {
        self.finish(value, true)
    }

    /// Finishes the operation with `Abandoned(why)`: for a callback that will never come.
    #[cfg(feature = "ffi")]
    pub(crate) fn abandon(self, why: crate::Abandonment) {
        self.fail(crate::Error::Abandoned(why), false);
    }

    /// Stores `value` without waking anyone or running the callback: the caller runs
    /// the returned wake-ups once it is ready (after giving up what the callback might
    /// wait for). Hands `value` back if the operation was cancelled.
    pub(crate) fn complete_deferred(self, value: T) -> Result<Option<cell::Wake<T>>, T> {
        self.writer
            .complete(Ok(value), false)
            .map_err(|back| match back {
                Ok(value) => value,
                Err(_) => unreachable!("the completer only stores values"),
            })
    }

    /// Finishes the operation with the bridge's `error`.
    pub(crate) fn fail(self, error: crate::Error, synchronous: bool) {
        // Only a cancel can refuse it, and then nobody waits for the error.
        let _ = self.writer.complete_quietly(Err(error), synchronous);
    }

    #[inline]
    fn finish(self, value: T, synchronous: bool) -> Result<(), T> {
        self.writer
            .complete_quietly(Ok(value), synchronous)
            .map_err(|back| match back {
                Ok(value) => value,
                Err(_) => unreachable!("the completer only stores values"),
            })
    }

    /// Whether the operation was cancelled ([`AsyncResult::cancel`]): the work can stop,
    /// its result would be handed back.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{Completer, Error};
    ///
    /// let (completer, handle) = Completer::new();
    /// handle.cancel();
    /// assert!(completer.is_cancelled());
    /// assert_eq!(completer.complete(1), Err(1));
    /// assert_eq!(handle.end(), Err(Error::Cancelled));
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.writer.is_completed()
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}
