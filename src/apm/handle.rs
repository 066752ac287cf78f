use std::task::{Context, Poll};

/// What [`from_apm`](fn@crate::from_apm) asks of the handle a Begin method returns: the
/// `IAsyncResult.CompletedSynchronously` of the APM model.
///
/// Implement it for the handle type of a callback API this crate did not write.
/// [`AsyncResult`](crate::AsyncResult) implements it too.
///
/// # Examples
///
/// ```
/// use apm_tap::AsyncHandle;
///
/// /// A legacy handle that finishes inside Begin.
/// struct Done(u32);
///
/// impl AsyncHandle for Done {
///     fn completed_synchronously(&self) -> bool { true }
/// }
///
/// let value = futures::executor::block_on(apm_tap::from_apm(|_callback| Done(5), |h: Done| h.0));
/// assert_eq!(value, Ok(5));
/// ```
#[doc(alias = "IAsyncResult")]
pub trait AsyncHandle {
    /// Whether the operation finished on the thread that called Begin, before Begin
    /// returned (`IAsyncResult.CompletedSynchronously`).
    ///
    /// [`from_apm`](fn@crate::from_apm) reads this once, right after Begin returns: `true`
    /// makes it call End at once and ignore the callback; `false` makes it wait for the
    /// callback. An answer that changes later is never read, so a handle that flips it
    /// cannot make End run twice. A panic here is taken for `false` (End runs when the
    /// callback comes) and re-raised from `poll`.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::AsyncHandle;
    ///
    /// let handle = apm_tap::begin(async {});
    /// assert!(AsyncHandle::completed_synchronously(&handle));
    /// ```
    #[doc(alias = "CompletedSynchronously")]
    fn completed_synchronously(&self) -> bool;
}

/// A handle that can wake a task when its operation finishes: the Rust stand-in for
/// `IAsyncResult.AsyncWaitHandle`, needed by
/// [`from_async_result`](crate::from_async_result) to await an operation started
/// elsewhere.
///
/// # Examples
///
/// ```
/// use apm_tap::PollHandle;
/// use std::future::poll_fn;
///
/// let mut handle = apm_tap::begin(async { 1 });
/// futures::executor::block_on(poll_fn(|cx| handle.poll_completed(cx)));
/// assert!(handle.is_completed());
/// ```
#[doc(alias = "AsyncWaitHandle")]
pub trait PollHandle {
    /// Ready once the operation has finished; otherwise arranges for `cx`'s waker to be
    /// woken when it does. Must not consume the result: End still has to find it.
    ///
    /// Spurious wakes are allowed, also from inside this call, and so is waking while
    /// holding a lock that this method takes: the crate's wakers only schedule a poll,
    /// they never poll inside `wake` (see [`from_async_result`](crate::from_async_result)).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{Completer, PollHandle};
    /// use futures::FutureExt;
    /// use std::future::poll_fn;
    ///
    /// let (completer, mut handle) = Completer::new();
    /// assert!(poll_fn(|cx| handle.poll_completed(cx)).now_or_never().is_none());
    /// completer.complete(1).unwrap();
    /// assert!(poll_fn(|cx| handle.poll_completed(cx)).now_or_never().is_some());
    /// assert_eq!(handle.end(), Ok(1)); // not consumed by the polls
    /// ```
    fn poll_completed(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}
