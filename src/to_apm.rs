//! Future to APM: run a future and expose it as a Begin/End pair.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::task::noop_waker_ref;
use pin_project::{pin_project, pinned_drop};
use tokio::runtime::Handle;

use crate::cell::{self, Writer};
use crate::runtime::{default_handle, Spawner};
use crate::{Abandonment, AsyncCallback, AsyncResult, Builder, Error, State};

/// Starts `future` and returns its handle: the Begin half of a Begin/End pair
/// (.NET's `TaskToAsyncResult.Begin`). End is [`AsyncResult::end`].
///
/// The future is polled once at once, on this thread. If that poll finishes it,
/// `completed_synchronously` is `true`. Otherwise the future is spawned and
/// `completed_synchronously` stays `false`.
///
/// The future runs on the tokio runtime this thread is in, if any, else on the crate's
/// default runtime (a multi-thread tokio runtime started on first use), so a plain
/// thread needs no set-up. [`begin_on`] chooses the executor; [`Builder`] adds a
/// callback and a state.
///
/// A panic in the future completes the operation with [`Error::Panicked`]. If the
/// executor drops the future unfinished (it shut down), the operation completes with
/// [`Error::Abandoned`].
///
/// # Panics
///
/// Panics if the default runtime is needed and cannot be started.
///
/// # Examples
///
/// ```
/// let handle = apm_tap::begin(async {
///     std::thread::sleep(std::time::Duration::from_millis(1));
///     40 + 2
/// });
/// assert_eq!(handle.end(), Ok(42));
/// ```
#[doc(alias = "TaskToAsyncResult")]
pub fn begin<F>(future: F) -> AsyncResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    start_here(future, AsyncCallback::none(), State::none())
}

/// [`begin`] on a chosen executor: a tokio [`Handle`] or `Runtime`, or any
/// [`Spawner`].
///
/// # Panics
///
/// Propagates a panic of the spawner.
///
/// # Examples
///
/// ```
/// let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
/// let handle = apm_tap::begin_on(&runtime, async { tokio::task::yield_now().await; 'k' });
/// assert!(!handle.completed_synchronously());
/// assert_eq!(handle.end(), Ok('k'));
/// ```
pub fn begin_on<S, F>(spawner: &S, future: F) -> AsyncResult<F::Output>
where
    S: Spawner + ?Sized,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    start(spawner, future, AsyncCallback::none(), State::none())
}

/// Runs `future` and hands its result to `callback`, the way Node's
/// `util.callbackify` turns a promise into a completion callback.
///
/// The callback runs once, on this thread if the future is ready at once, otherwise on
/// the executor. Its argument is the future's output, or the bridge's [`Error`]
/// (`Panicked`, `Abandoned`). Use [`Builder::begin`] to also get a handle (to wait or
/// cancel).
///
/// # Panics
///
/// Propagates a panic of `callback` when it runs inside `callbackify`.
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
///
/// let (tx, rx) = mpsc::channel();
/// apm_tap::callbackify(async { "hello" }, move |result| tx.send(result).unwrap());
/// assert_eq!(rx.recv().unwrap(), Ok("hello"));
/// ```
pub fn callbackify<F, C>(future: F, callback: C)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    C: FnOnce(Result<F::Output, Error>) + Send + 'static,
{
    let callback = move |handle: AsyncResult<F::Output>| callback(handle.end());
    drop(Builder::new().callback(callback).begin(future));
}

/// Starts `future` on the ambient tokio runtime, or on the default one.
pub(crate) fn start_here<F>(
    future: F,
    callback: AsyncCallback<F::Output>,
    state: State,
) -> AsyncResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Handle::try_current() {
        Ok(handle) => start(&handle, future, callback, state),
        Err(_) => start(default_handle(), future, callback, state),
    }
}

/// Starts `future` on `spawner`: the one implementation behind [`begin`], [`begin_on`]
/// and [`Builder::begin`].
pub(crate) fn start<S, F>(
    spawner: &S,
    future: F,
    callback: AsyncCallback<F::Output>,
    state: State,
) -> AsyncResult<F::Output>
where
    S: Spawner + ?Sized,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (writer, handle) = cell::new(callback.into_inner(), state);
    let mut task = Box::pin(Task {
        future,
        writer: Some(writer),
    });
    let mut first = Poll::Pending;
    spawner.enter(&mut || {
        let mut cx = Context::from_waker(noop_waker_ref());
        first = task.as_mut().poll_step(&mut cx, true);
    });
    if first.is_pending() {
        spawner.spawn(task);
    }
    AsyncResult::from_shared(handle)
}

/// The task that runs a future for [`begin_on`] and stores its outcome.
#[pin_project(PinnedDrop)]
struct Task<F: Future> {
    #[pin]
    future: F,
    /// Registers the task's waker so that `cancel` wakes it. `None` once the outcome is
    /// stored. Dropped unfinished (the executor shut down or refused the task), it
    /// completes the operation with `Abandoned(TaskDropped)`.
    writer: Option<Writer<F::Output>>,
}

impl<F: Future> Task<F> {
    fn poll_step(self: Pin<&mut Self>, cx: &mut Context<'_>, synchronous: bool) -> Poll<()> {
        let this = self.project();
        let Some(writer) = this.writer.as_mut() else {
            return Poll::Ready(());
        };
        // Checks for a `cancel` and, in the same step, registers to be woken by one.
        if writer.poll_cancelled(cx).is_ready() {
            // Cancelled: finishing the task drops the future, on this executor.
            return Poll::Ready(());
        }
        let outcome = match catch_unwind(AssertUnwindSafe(|| this.future.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(value)) => Ok(value),
            Err(payload) => Err(Error::from_panic(payload)),
        };
        if let Some(writer) = this.writer.take() {
            // Refused when `cancel` won the race: the value is dropped here.
            let _ = writer.complete(outcome, synchronous);
        }
        Poll::Ready(())
    }
}

impl<F: Future> Future for Task<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_step(cx, false)
    }
}

#[pinned_drop]
impl<F: Future> PinnedDrop for Task<F> {
    fn drop(self: Pin<&mut Self>) {
        if let Some(writer) = self.project().writer.take() {
            writer.abandon(Abandonment::TaskDropped);
        }
    }
}
