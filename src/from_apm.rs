//! APM to future: turn a Begin/End pair, or a handle already started, into a future.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::mem;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::FusedFuture;

use crate::cell::signal::{signal, Finish, Receiver, Sender};
use crate::reaper::{ErasedEnd, OnCancel, Reaper};
use crate::track::{CallbackTracker, Kind, Origin, Tracker};
use crate::unwind::{catch, drop_quietly, quietly};
use crate::{Abandonment, AsyncCallback, AsyncHandle, AsyncResult, Error, PollHandle};

/// The completion callback that [`from_apm`] gives to a Begin method.
///
/// Call it once when the operation completes, from any thread, inside Begin or later.
/// Dropping it uncalled tells the future that the operation will never complete: it
/// resolves to [`Error::Abandoned`]. A Begin method that takes an
/// [`AsyncCallback`] gets one with `.into()`.
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncHandle, ApmCallback};
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
///
/// #[derive(Clone, Default)]
/// struct Flag(Arc<AtomicBool>);
/// impl AsyncHandle for Flag {
///     fn completed_synchronously(&self) -> bool { false }
/// }
///
/// let future = apm_tap::from_apm(
///     |callback: ApmCallback| {
///         let handle = Flag::default();
///         let done = handle.clone();
///         std::thread::spawn(move || {
///             done.0.store(true, Ordering::SeqCst);
///             callback.call();
///         });
///         handle
///     },
///     |handle: Flag| handle.0.load(Ordering::SeqCst),
/// );
/// assert_eq!(futures::executor::block_on(future), Ok(true));
/// ```
pub struct ApmCallback(Sender, CallbackTracker);

impl ApmCallback {
    /// Reports that the operation completed.
    ///
    /// Never panics, so it is safe to call from an `extern "C"` function (a C library's
    /// notify callback): if the future was dropped, End runs here, and its panic is
    /// discarded (see the crate docs' [Panics](crate#panics)).
    ///
    /// # Examples
    ///
    /// ```
    /// let future = apm_tap::from_apm(
    ///     |callback| {
    ///         // A Begin that finishes at once and calls back inside Begin.
    ///         let handle = apm_tap::begin(async {});
    ///         callback.call();
    ///         handle
    ///     },
    ///     |handle| handle.end(),
    /// );
    /// assert_eq!(futures::executor::block_on(future), Ok(Ok(())));
    /// ```
    #[inline]
    pub fn call(self) {
        let ApmCallback(sender, tracker) = self;
        tracker.called();
        sender.call();
    }
}

impl fmt::Debug for ApmCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApmCallback")
    }
}

/// Lets a Begin method that takes an [`AsyncCallback`] receive an [`ApmCallback`].
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, AsyncResult, Builder, State};
///
/// fn begin_op(callback: AsyncCallback<u8>, state: State) -> AsyncResult<u8> {
///     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
///     std::thread::spawn(move || completer.complete(8).unwrap());
///     handle
/// }
///
/// let future = apm_tap::from_apm(|cb| begin_op(cb.into(), State::none()), |h| h.end());
/// assert_eq!(futures::executor::block_on(future), Ok(Ok(8)));
/// ```
impl<T> From<ApmCallback> for AsyncCallback<T> {
    fn from(callback: ApmCallback) -> Self {
        // `call` runs no user code: the legacy side's own callback is not this one.
        AsyncCallback::internal(move |_: AsyncResult<T>| callback.call())
    }
}

/// Wraps a Begin/End pair into a future: .NET's `Task.Factory.FromAsync(begin, end)`.
///
/// `begin` receives the [`ApmCallback`] to pass to the legacy Begin method and returns
/// the handle it gets back; `end` takes that handle and returns the result. The future
/// resolves to `Ok(end(handle))`, or to [`Error::Abandoned`] if the callback is dropped
/// uncalled (then `end` is not called: it would block forever).
///
/// Guarantees:
///
/// - Nothing starts until the first poll; then `begin` runs once, on the polling thread.
/// - `end` runs exactly once for every handle `begin` returned: in `poll`, or in `drop`
///   if the future is dropped after completion, or in the callback (on the thread that
///   calls it) if the future is dropped before; its result is then dropped there.
/// - If the handle reports `completed_synchronously`, `end` runs at once, after `begin`
///   returned, and the callback does nothing, whether or not it was called.
/// - The callback may be called inside `begin`, on another thread before `begin`
///   returns, or later.
/// - Dropping the future before completion runs the [`on_cancel`](FromApm::on_cancel)
///   hook once with the handle; a completion racing the drop is neither lost nor
///   delivered twice.
/// - The waker of the latest poll is woken once on completion. No runtime is needed.
///
/// # Panics
///
/// A panic in `begin`, `end` or the handle's `completed_synchronously` propagates out
/// of `poll` (End still runs once, when the callback comes, after a panicking
/// `completed_synchronously`). Where nobody can catch it (End or `on_cancel` in `drop`,
/// End on the callback's thread), a panic is discarded; see the crate docs'
/// [Panics](crate#panics). Polling again after completion panics.
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, AsyncResult, Builder, State};
///
/// // A legacy API in Begin/End style.
/// fn begin_len(s: String, callback: AsyncCallback<usize>, state: State) -> AsyncResult<usize> {
///     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
///     std::thread::spawn(move || completer.complete(s.len()).unwrap());
///     handle
/// }
/// fn end_len(handle: AsyncResult<usize>) -> usize {
///     handle.end().unwrap()
/// }
///
/// # futures::executor::block_on(async {
/// let len = apm_tap::from_apm(|cb| begin_len("four".into(), cb.into(), State::none()), end_len).await;
/// assert_eq!(len, Ok(4));
/// # });
/// ```
#[doc(alias = "FromAsync")]
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn from_apm<B, H, E, R>(begin: B, end: E) -> FromApm<B, H, E>
where
    B: FnOnce(ApmCallback) -> H,
    H: AsyncHandle + Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    FromApm {
        op: Op::new(begin, end, Origin::caller(Kind::FromApm)),
    }
}

/// [`from_apm`] for a Begin that can fail before starting and an End that returns the
/// operation's own `Result`: the future resolves to that `Result`, with the bridge's
/// errors converted by `X: From<Error>`.
///
/// A Begin that returns `Err` resolves the future to that error without calling `end`.
///
/// # Panics
///
/// As [`from_apm`].
///
/// # Examples
///
/// ```
/// use std::io;
///
/// let refused = apm_tap::try_from_apm(
///     |_callback| -> io::Result<apm_tap::AsyncResult<()>> { Err(io::ErrorKind::NotFound.into()) },
///     |handle| -> io::Result<()> { Ok(handle.end()?) },
/// );
/// let error = futures::executor::block_on(refused).unwrap_err();
/// assert_eq!(error.kind(), io::ErrorKind::NotFound);
/// ```
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn try_from_apm<B, H, E, U, X>(begin: B, end: E) -> TryFromApm<B, H, E>
where
    B: FnOnce(ApmCallback) -> Result<H, X>,
    H: AsyncHandle + Send + 'static,
    E: FnOnce(H) -> Result<U, X> + Send + 'static,
    X: From<Error>,
{
    TryFromApm {
        op: Op::new(begin, end, Origin::caller(Kind::FromApm)),
    }
}

/// Future for the [`from_apm`] function.
///
/// # Examples
///
/// ```
/// let future = apm_tap::from_apm(
///     |cb| apm_tap::Builder::new().callback(cb).begin(async { 1 }),
///     |handle| handle.end(),
/// );
/// assert_eq!(futures::executor::block_on(future), Ok(Ok(1)));
/// ```
/// Equivalent to:
///
/// ```text
/// async fn from_apm(begin, end) -> Result<R, Error> {
///     let (callback, called) = /* a one-shot signal */;
///     let handle = begin(callback);
///     if !handle.completed_synchronously() {
///         called.await?; // Err(Abandoned) if the callback was dropped uncalled
///     }
///     Ok(end(handle))
/// }
/// ```
/// plus the drop behaviour described on [`from_apm`].
#[must_use = "futures do nothing unless polled; dropping this one before completion cancels the operation"]
pub struct FromApm<B, H, E> {
    op: Op<B, H, E>,
}

/// Future for the [`try_from_apm`] function.
///
/// # Examples
///
/// ```
/// use apm_tap::State;
///
/// let future = apm_tap::try_from_apm(
///     |cb| Ok::<_, std::io::Error>(apm_tap::Builder::new().callback(cb).begin(async { 2 })),
///     |handle| Ok(handle.end()?),
/// );
/// assert_eq!(futures::executor::block_on(future).unwrap(), 2);
/// ```
/// Equivalent to [`FromApm`], with `begin`'s error returned as is and the bridge's
/// errors converted into the operation's error type.
#[must_use = "futures do nothing unless polled; dropping this one before completion cancels the operation"]
pub struct TryFromApm<B, H, E> {
    op: Op<B, H, E>,
}

impl<B, H, E> FromApm<B, H, E> {
    /// Sets the hook run, once, with the handle when the future is dropped before the
    /// operation completed: the place to call the legacy Cancel. `end` still runs once,
    /// when the operation finishes.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{Builder, Completer, Error, State};
    /// use futures::FutureExt;
    /// use std::sync::mpsc;
    ///
    /// let (ended, end_result) = mpsc::channel();
    /// let mut unfinished: Vec<Completer<u8>> = Vec::new(); // the legacy side never completes by itself
    /// let mut future = Box::pin(
    ///     apm_tap::from_apm(
    ///         |cb| {
    ///             let (completer, handle) = Builder::new().callback(cb).completer();
    ///             unfinished.push(completer);
    ///             handle
    ///         },
    ///         move |handle| ended.send(handle.end()).unwrap(),
    ///     )
    ///     .on_cancel(|handle| handle.cancel()), // the legacy Cancel
    /// );
    /// assert!((&mut future).now_or_never().is_none());
    /// drop(future);
    /// assert_eq!(end_result.recv().unwrap(), Err(Error::Cancelled));
    /// ```
    pub fn on_cancel<C>(mut self, on_cancel: C) -> Self
    where
        C: FnOnce(&H) + Send + 'static,
    {
        self.op.on_cancel = Some(Box::new(on_cancel));
        self
    }
}

impl<B, H, E> TryFromApm<B, H, E> {
    /// Sets the cancellation hook, as [`FromApm::on_cancel`].
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{Builder, Completer, State};
    /// use futures::FutureExt;
    ///
    /// let (cancelled, was_cancelled) = std::sync::mpsc::channel();
    /// let mut unfinished: Vec<Completer<u8>> = Vec::new();
    /// let mut future = Box::pin(
    ///     apm_tap::try_from_apm(
    ///         |cb| {
    ///             let (completer, handle) = Builder::new().callback(cb).completer();
    ///             unfinished.push(completer);
    ///             Ok::<_, apm_tap::Error>(handle)
    ///         },
    ///         |handle| handle.end(),
    ///     )
    ///     .on_cancel(move |handle| {
    ///         handle.cancel();
    ///         cancelled.send(()).unwrap();
    ///     }),
    /// );
    /// assert!((&mut future).now_or_never().is_none());
    /// drop(future);
    /// assert!(was_cancelled.try_recv().is_ok());
    /// ```
    pub fn on_cancel<C>(mut self, on_cancel: C) -> Self
    where
        C: FnOnce(&H) + Send + 'static,
    {
        self.op.on_cancel = Some(Box::new(on_cancel));
        self
    }
}

// The closures and the handle are moved around but never pinned.
impl<B, H, E> Unpin for FromApm<B, H, E> {}
impl<B, H, E> Unpin for TryFromApm<B, H, E> {}

impl<B, H, E, R> Future for FromApm<B, H, E>
where
    B: FnOnce(ApmCallback) -> H,
    H: AsyncHandle + Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = |begin: B, callback| Ok::<H, Infallible>(begin(callback));
        self.get_mut()
            .op
            .poll_op(cx, started)
            .map(|outcome| match outcome {
                Ok(result) => result,
                Err(never) => match never {},
            })
    }
}

impl<B, H, E, U, X> Future for TryFromApm<B, H, E>
where
    B: FnOnce(ApmCallback) -> Result<H, X>,
    H: AsyncHandle + Send + 'static,
    E: FnOnce(H) -> Result<U, X> + Send + 'static,
    X: From<Error>,
{
    type Output = Result<U, X>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let started = |begin: B, callback| begin(callback);
        self.get_mut()
            .op
            .poll_op(cx, started)
            .map(|outcome| match outcome {
                Ok(Ok(result)) => result,
                Ok(Err(error)) => Err(X::from(error)),
                Err(begin_error) => Err(begin_error),
            })
    }
}

impl<B, H, E, R> FusedFuture for FromApm<B, H, E>
where
    B: FnOnce(ApmCallback) -> H,
    H: AsyncHandle + Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.op.is_done()
    }
}

impl<B, H, E, U, X> FusedFuture for TryFromApm<B, H, E>
where
    B: FnOnce(ApmCallback) -> Result<H, X>,
    H: AsyncHandle + Send + 'static,
    E: FnOnce(H) -> Result<U, X> + Send + 'static,
    X: From<Error>,
{
    fn is_terminated(&self) -> bool {
        self.op.is_done()
    }
}

impl<B, H, E> fmt::Debug for FromApm<B, H, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromApm")
            .field("stage", &self.op.stage_name())
            .finish()
    }
}

impl<B, H, E> fmt::Debug for TryFromApm<B, H, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TryFromApm")
            .field("stage", &self.op.stage_name())
            .finish()
    }
}

/// The state machine shared by [`FromApm`] and [`TryFromApm`].
struct Op<B, H, E> {
    stage: Stage<B, H, E>,
    on_cancel: Option<OnCancel<H>>,
    /// Where the future was made, for the operation's record.
    origin: Origin,
}

enum Stage<B, H, E> {
    /// Not polled yet: nothing has started.
    Start { begin: B, end: E },
    /// `begin` returned `handle`; waiting for the callback to complete `signal`.
    Waiting {
        handle: H,
        end: E,
        signal: Receiver,
        /// `defer_end::<H, E, R>`, chosen in `poll_op` where `R` and `H: Send` are known,
        /// so that `drop` (which can name neither) can still hand End and the handle to
        /// the callback's thread.
        defer: fn(H, E) -> Finish,
        tracker: Tracker,
    },
    /// `end` ran or is running, or the operation failed: nothing left to do.
    Done,
}

/// End with its handle, to run on the callback's thread after the future was dropped.
fn defer_end<H, E, R>(handle: H, end: E) -> Finish
where
    H: Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    Box::new(move || drop(end(handle)))
}

impl<B, H, E> Op<B, H, E> {
    fn new(begin: B, end: E, origin: Origin) -> Self {
        Op {
            stage: Stage::Start { begin, end },
            on_cancel: None,
            origin,
        }
    }

    /// The future returned `Ready` (or `begin` panicked): it must not be polled again.
    fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    fn stage_name(&self) -> &'static str {
        match self.stage {
            Stage::Start { .. } => "not started",
            Stage::Waiting { .. } => "waiting for the callback",
            Stage::Done => "done",
        }
    }

    /// Drives the operation. `start` calls `begin` and says whether it failed. Outer
    /// `Err`: `begin` failed; inner `Err`: the callback was abandoned.
    fn poll_op<R, X>(
        &mut self,
        cx: &mut Context<'_>,
        start: impl FnOnce(B, ApmCallback) -> Result<H, X>,
    ) -> Poll<Result<Result<R, Error>, X>>
    where
        H: AsyncHandle + Send + 'static,
        E: FnOnce(H) -> R + Send + 'static,
    {
        if let Stage::Start { .. } = self.stage {
            let Stage::Start { begin, end } = mem::replace(&mut self.stage, Stage::Done) else {
                unreachable!("matched just above")
            };
            let tracker = Tracker::start(self.origin, true);
            let (callback, signal) = signal();
            let callback = ApmCallback(
                callback,
                CallbackTracker::new(&tracker, Abandonment::CallbackDropped),
            );
            // End is dropped unused if Begin fails or panics: quietly, so that its own
            // `Drop` can neither hide Begin's error nor panic during Begin's unwind.
            let handle = match catch(|| start(begin, callback)) {
                Ok(Ok(handle)) => handle,
                Ok(Err(begin_error)) => {
                    tracker.begin_failed(None);
                    drop_quietly(end);
                    return Poll::Ready(Err(begin_error));
                }
                Err(payload) => {
                    tracker.begin_failed(Some(&payload));
                    drop_quietly(end);
                    resume_unwind(payload);
                }
            };
            // Read once: a handle that changes its answer later cannot cause a second End.
            let synchronous = catch(|| handle.completed_synchronously());
            if let Ok(true) = synchronous {
                tracker.ended(None);
                return Poll::Ready(Ok(Ok(end(handle))));
            }
            self.stage = Stage::Waiting {
                handle,
                end,
                signal,
                defer: defer_end::<H, E, R>,
                tracker,
            };
            // A handle that panics when asked is taken for asynchronous: End runs when
            // the callback comes (here or, if the future is dropped, on its thread), and
            // the panic goes to the caller of `poll`.
            if let Err(payload) = synchronous {
                resume_unwind(payload);
            }
        }
        let Stage::Waiting { signal, .. } = &mut self.stage else {
            panic!("`from_apm` future polled after completion");
        };
        let called = match signal.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(called) => called,
        };
        let Stage::Waiting {
            handle,
            end,
            tracker,
            ..
        } = mem::replace(&mut self.stage, Stage::Done)
        else {
            unreachable!("matched just above")
        };
        if !called {
            // The legacy code dropped the `ApmCallback`: End would block forever.
            tracker.ended(Some(Abandonment::CallbackDropped));
            drop(handle);
            return Poll::Ready(Ok(Err(Error::Abandoned(Abandonment::CallbackDropped))));
        }
        tracker.ended(None);
        Poll::Ready(Ok(Ok(end(handle))))
    }
}

impl<B, H, E> Drop for Op<B, H, E> {
    /// Before completion: runs `on_cancel`, then hands End to the callback (or runs it
    /// here if the callback already came). Never unwinds: a panic of `on_cancel`, of End
    /// or of a `Drop` here is discarded (see `crate::unwind`), and End still runs.
    #[inline]
    fn drop(&mut self) {
        if let (Stage::Done, None) = (&self.stage, &self.on_cancel) {
            // The common case, completed without a hook: nothing to drop.
            return;
        }
        self.cancel();
    }
}

impl<B, H, E> Op<B, H, E> {
    /// `drop`'s work when there is some.
    #[cold]
    fn cancel(&mut self) {
        let on_cancel = self.on_cancel.take();
        let stage = mem::replace(&mut self.stage, Stage::Done);
        let Stage::Waiting {
            handle,
            end,
            signal,
            defer,
            tracker,
        } = stage
        else {
            // Not started (`begin` and End are dropped unused), or done.
            drop_quietly((stage, on_cancel));
            return;
        };
        if !signal.is_done() {
            // The callback keeps the record until it comes (End runs then).
            tracker.cancelled();
        }
        match on_cancel {
            Some(on_cancel) if !signal.is_done() => quietly(|| on_cancel(&handle)),
            unused => drop_quietly(unused),
        }
        // Hand End to the callback; if the callback already came, End runs here. If the
        // callback is dropped uncalled, End is dropped unused: it would block forever.
        signal.close(defer(handle, end));
    }
}

/// Wraps an operation that was already started into a future: .NET's
/// `Task.Factory.FromAsync(asyncResult, end)`.
///
/// The future resolves to `end(handle)` once the handle reports completion through
/// [`PollHandle::poll_completed`]. If it is dropped before that, `drop` polls the
/// handle once; if it is still pending, the [`on_cancel`](FromAsyncResult::on_cancel)
/// hook runs once with the handle, and `end` still runs exactly once when the operation
/// completes: on a task of the crate's default runtime (started on first use), which
/// the handle's next wake schedules, as .NET's `FromAsync(IAsyncResult)` runs End on a
/// thread-pool thread. Never inside the handle's `Waker::wake`: a handle may wake under
/// its own lock. `drop` never blocks or spins, also over a handle that wakes itself.
///
/// # Panics
///
/// A panic in `end` or `poll_completed` propagates out of `poll`. After the future was
/// dropped, such panics are discarded (see the crate docs' [Panics](crate#panics)).
/// Polling again after completion panics.
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, State};
///
/// // Started by someone else, earlier:
/// let handle = apm_tap::begin(async { 21 * 2 });
///
/// let value = futures::executor::block_on(apm_tap::from_async_result(handle, |h| h.end()));
/// assert_eq!(value, Ok(42));
/// ```
#[doc(alias = "FromAsync")]
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn from_async_result<H, E, R>(handle: H, end: E) -> FromAsyncResult<H, E>
where
    H: PollHandle + Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    let tracker = Tracker::start(Origin::caller(Kind::FromAsyncResult), false);
    FromAsyncResult {
        parts: Some((handle, end, tracker)),
        on_cancel: None,
        erase: erase_end::<H, E, R>,
    }
}

/// Future for the [`from_async_result`] function.
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, State};
///
/// let handle = apm_tap::begin(async { 'z' });
/// let future = apm_tap::from_async_result(handle, |h| h.end());
/// assert_eq!(futures::executor::block_on(future), Ok('z'));
/// ```
/// Equivalent to:
///
/// ```text
/// async fn from_async_result(mut handle, end) -> R {
///     poll_fn(|cx| handle.poll_completed(cx)).await;
///     end(handle)
/// }
/// ```
/// plus the drop behaviour described on [`from_async_result`].
#[must_use = "futures do nothing unless polled; dropping this one before completion cancels the operation"]
pub struct FromAsyncResult<H: PollHandle + Send + 'static, E: Send + 'static> {
    parts: Option<(H, E, Tracker)>,
    on_cancel: Option<OnCancel<H>>,
    /// `erase_end::<H, E, R>`, chosen where `R` is known, for `drop`.
    erase: fn(E, Tracker) -> ErasedEnd<H>,
}

impl<H: PollHandle + Send + 'static, E: Send + 'static> FromAsyncResult<H, E> {
    /// Sets the hook run, once, with the handle when the future is dropped before the
    /// operation completed. `end` still runs once, when the operation finishes.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Error;
    /// use futures::FutureExt;
    ///
    /// let handle = apm_tap::begin(std::future::pending::<()>());
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut future = Box::pin(
    ///     apm_tap::from_async_result(handle, move |h| tx.send(h.end()).unwrap())
    ///         .on_cancel(|h| h.cancel()),
    /// );
    /// assert!((&mut future).now_or_never().is_none());
    /// drop(future);
    /// assert_eq!(rx.recv().unwrap(), Err(Error::Cancelled));
    /// ```
    pub fn on_cancel<C>(mut self, on_cancel: C) -> Self
    where
        C: FnOnce(&H) + Send + 'static,
    {
        self.on_cancel = Some(Box::new(on_cancel));
        self
    }
}

impl<H: PollHandle + Send + 'static, E: Send + 'static> Unpin for FromAsyncResult<H, E> {}

impl<H, E, R> Future for FromAsyncResult<H, E>
where
    H: PollHandle + Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    type Output = R;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<R> {
        let this = self.get_mut();
        let (handle, _, _) = this
            .parts
            .as_mut()
            .expect("`from_async_result` future polled after completion");
        if handle.poll_completed(cx).is_pending() {
            return Poll::Pending;
        }
        let (handle, end, tracker) = this.parts.take().expect("checked just above");
        tracker.ended(None);
        Poll::Ready(end(handle))
    }
}

impl<H, E, R> FusedFuture for FromAsyncResult<H, E>
where
    H: PollHandle + Send + 'static,
    E: FnOnce(H) -> R + Send + 'static,
{
    fn is_terminated(&self) -> bool {
        self.parts.is_none()
    }
}

impl<H: PollHandle + Send + 'static, E: Send + 'static> Drop for FromAsyncResult<H, E> {
    /// Before completion, hands the handle and End to a `Reaper`, which polls the handle
    /// once here, runs `on_cancel` if it is still pending, and runs End once it
    /// completes. Never unwinds, never blocks or spins.
    fn drop(&mut self) {
        let on_cancel = self.on_cancel.take();
        let Some((handle, end, tracker)) = self.parts.take() else {
            drop_quietly(on_cancel);
            return;
        };
        // Listed as cancelled until End runs (at once, if the handle completed).
        tracker.cancelled();
        Reaper::start(handle, (self.erase)(end, tracker), on_cancel);
    }
}

impl<H: PollHandle + Send + 'static, E: Send + 'static> fmt::Debug for FromAsyncResult<H, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromAsyncResult")
            .field("done", &self.parts.is_none())
            .finish()
    }
}

fn erase_end<H, E, R>(end: E, tracker: Tracker) -> ErasedEnd<H>
where
    E: FnOnce(H) -> R + Send + 'static,
{
    Box::new(move |handle| {
        tracker.ended(None);
        drop(end(handle));
    })
}
