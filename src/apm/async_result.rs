use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::FusedFuture;
use tokio::runtime::Id;

use crate::cell::{Callback, CallbackFn, Entry, Shared};
use crate::runtime::blocking;
use crate::{AsyncHandle, Dispatch, Error, PollHandle, State};

/// The handle of an operation in flight: the crate's `IAsyncResult`.
///
/// Begin methods return it ([`begin`](crate::begin), [`Completer::new`](crate::Completer::new));
/// the callback receives a clone of it. Clones are cheap and share one operation: each
/// reports the same [`is_completed`](Self::is_completed),
/// [`completed_synchronously`](Self::completed_synchronously) and
/// [`state`](Self::state), and exactly one [`end`](Self::end) (or `.await`) gets the
/// value; the others get [`Error::AlreadyEnded`].
///
/// It is also a [`Future`] (an awaitable End), so a legacy handle can be `.await`ed.
/// Dropping a handle does not stop the operation; [`cancel`](Self::cancel) does.
///
/// `AsyncResult<T>` is `Send + Sync` when `T: Send`.
///
/// # Examples
///
/// ```
/// use apm_tap::State;
///
/// let handle = apm_tap::Builder::new().state(State::new("job")).begin(async { 6 * 7 });
/// assert_eq!(handle.state().downcast_ref::<&str>(), Some(&"job"));
/// handle.wait().unwrap();
/// assert!(handle.is_completed());
/// assert_eq!(handle.end(), Ok(42));
/// ```
#[doc(alias = "IAsyncResult")]
pub struct AsyncResult<T> {
    cell: Shared<T>,
    /// This handle's entry in the cell's waker list, once it has been polled.
    entry: Entry,
    /// This handle's `poll_end` returned `Ready`: as a future, it is done.
    ended: bool,
}

impl<T> AsyncResult<T> {
    pub(super) fn shared(&self) -> &Shared<T> {
        &self.cell
    }

    pub(crate) fn from_shared(cell: Shared<T>) -> Self {
        AsyncResult {
            cell,
            entry: Entry::default(),
            ended: false,
        }
    }

    /// Whether the operation has finished: its result (or error) is stored and
    /// [`end`](Self::end) will not block.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Completer;
    ///
    /// let (completer, handle) = Completer::new();
    /// assert!(!handle.is_completed());
    /// completer.complete(()).unwrap();
    /// assert!(handle.is_completed());
    /// ```
    #[doc(alias = "IsCompleted")]
    pub fn is_completed(&self) -> bool {
        self.cell.is_completed()
    }

    /// Whether the operation finished inside Begin, on the caller's thread. Never changes
    /// once the operation has completed, and is `false` before.
    ///
    /// # Examples
    ///
    /// ```
    /// // A future that is ready at once completes inside `begin`.
    /// let handle = apm_tap::begin(async { 1 });
    /// assert!(handle.completed_synchronously());
    /// ```
    #[doc(alias = "CompletedSynchronously")]
    pub fn completed_synchronously(&self) -> bool {
        self.cell.completed_synchronously()
    }

    /// The state given to Begin (`IAsyncResult.AsyncState`), the same on every clone.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::State;
    ///
    /// let handle = apm_tap::Builder::new().state(State::new(9_i32)).begin(async {});
    /// assert_eq!(handle.clone().state().downcast_ref::<i32>(), Some(&9));
    /// ```
    #[doc(alias = "AsyncState")]
    pub fn state(&self) -> &State {
        self.cell.state()
    }

    /// Blocks until the operation completes, without taking the result
    /// (`AsyncWaitHandle.WaitOne()`).
    ///
    /// # Errors
    ///
    /// [`Error::WouldDeadlock`] as for [`end`](Self::end).
    ///
    /// # Blocking
    ///
    /// As [`end`](Self::end).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Completer;
    ///
    /// let (completer, handle) = Completer::new();
    /// std::thread::spawn(move || completer.complete(5).unwrap());
    /// handle.wait().unwrap();
    /// assert!(handle.is_completed());
    /// ```
    #[doc(alias = "WaitOne")]
    #[doc(alias = "AsyncWaitHandle")]
    pub fn wait(&self) -> Result<(), Error> {
        wait(
            self.is_completed(),
            None,
            || self.cell.task_runtime(),
            |deadline| self.cell.wait_until(deadline),
        )
        .map(drop)
    }

    /// Blocks until the operation completes or `timeout` passes; returns whether it
    /// completed. A zero timeout never blocks (a poll of `is_completed`).
    ///
    /// # Errors
    ///
    /// [`Error::WouldDeadlock`] as for [`wait`](Self::wait).
    ///
    /// # Blocking
    ///
    /// As [`wait`](Self::wait), for at most `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Completer;
    /// use std::time::Duration;
    ///
    /// let (completer, handle) = Completer::<u8>::new();
    /// assert_eq!(handle.wait_timeout(Duration::from_millis(1)), Ok(false));
    /// drop(completer);
    /// assert_eq!(handle.wait_timeout(Duration::from_secs(5)), Ok(true));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        wait(
            self.is_completed(),
            Some(timeout),
            || self.cell.task_runtime(),
            |deadline| self.cell.wait_until(deadline),
        )
    }

    /// Waits for the operation and takes its result (`EndXxx`).
    ///
    /// Returns immediately when the operation is complete, as it always is inside the
    /// callback.
    ///
    /// # Errors
    ///
    /// - [`Error::AlreadyEnded`] if this handle or a clone already took the result;
    /// - [`Error::Cancelled`], [`Error::Abandoned`] or [`Error::Panicked`] if that is how
    ///   the operation ended;
    /// - [`Error::WouldDeadlock`] if the operation is not complete and this thread drives
    ///   the current-thread tokio runtime that its task was spawned on (its `block_on`,
    ///   or one of its tasks): blocking would stop the runtime that must finish it.
    ///   `.await` the handle there instead, or end it in `spawn_blocking`. `end` consumes
    ///   the handle, so keep a clone (or ask [`wait_timeout`](Self::wait_timeout) first,
    ///   which does not consume) where this can happen: the result stays in the
    ///   operation for a clone to take.
    ///
    /// # Blocking
    ///
    /// When the operation is not complete: spins for a few microseconds (the result is
    /// often that close), then parks the thread until the result arrives; nothing is
    /// allocated for blocking unless it parks. On a multi-thread tokio worker the wait
    /// runs inside [`block_in_place`](tokio::task::block_in_place), so that the runtime
    /// keeps running. On a current-thread runtime's thread, for an operation that
    /// another thread or runtime finishes, it parks that runtime's thread: its other
    /// tasks wait meanwhile. A task on a current-thread runtime that no thread drives is
    /// waited for until one does, or until the runtime is dropped (then `Abandoned`).
    /// The crate docs' [Blocking and deadlocks](crate#blocking-and-deadlocks) has the
    /// whole table.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { "value" });
    /// assert_eq!(handle.end(), Ok("value"));
    /// ```
    #[doc(alias = "EndInvoke")]
    pub fn end(mut self) -> Result<T, Error> {
        if let Some(result) = self.cell.try_take() {
            return result;
        }
        blocking(self.cell.task_runtime(), || self.cell.wait_until(None))?;
        self.cell
            .try_take()
            .expect("the cell is complete once an unbounded wait returns")
    }

    /// Asks the operation to stop.
    ///
    /// Unless the operation already has a result (a completion that won the race is
    /// kept), it completes at once with [`Error::Cancelled`]: waiters wake, the callback
    /// runs once (on this thread), `end` returns `Cancelled`. A future started with
    /// [`begin`](crate::begin) is then dropped on its executor; a
    /// [`Completer`](crate::Completer) sees [`is_cancelled`](crate::Completer::is_cancelled).
    ///
    /// Never panics: a panic of a waker or of the callback run here is discarded (see
    /// the crate docs' [Panics](crate#panics)).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Error;
    ///
    /// let handle = apm_tap::begin(std::future::pending::<()>());
    /// handle.cancel();
    /// assert_eq!(handle.end(), Err(Error::Cancelled));
    /// ```
    pub fn cancel(&self) {
        // Refused when a result is already stored: that result is kept.
        self.cancel_pending();
    }

    /// [`cancel`](Self::cancel); whether it completed the operation (it was pending).
    pub(crate) fn cancel_pending(&self) -> bool {
        self.cell.cancel()
    }

    /// Whether `self` and `other` are handles of the same operation.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = apm_tap::begin(async {});
    /// let b = apm_tap::begin(async {});
    /// assert!(a.ptr_eq(&a.clone()));
    /// assert!(!a.ptr_eq(&b));
    /// ```
    pub fn ptr_eq(&self, other: &AsyncResult<T>) -> bool {
        self.cell.ptr_eq(&other.cell)
    }

    /// Polls for the result: the `Future` impl, for people writing their own futures.
    /// Takes the result when ready, like [`end`](Self::end); the waker of the latest
    /// poll is the one woken, and re-polling with an equal waker does not clone it.
    ///
    /// # Errors
    ///
    /// As [`end`](Self::end), except that it never returns `WouldDeadlock`.
    ///
    /// # Cancel safety
    ///
    /// The result is taken only when `Ready` is returned; a handle dropped while pending
    /// leaves it for a clone.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::future::poll_fn;
    ///
    /// let mut handle = apm_tap::begin(async { 2 });
    /// let value = futures::executor::block_on(poll_fn(|cx| handle.poll_end(cx)));
    /// assert_eq!(value, Ok(2));
    /// ```
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        let polled = self.cell.poll_take(cx, &mut self.entry);
        self.ended |= polled.is_ready();
        polled
    }
}

/// Awaiting a handle is an asynchronous [`end`](AsyncResult::end).
///
/// # Cancel safety
///
/// Cancel safe: dropping the `.await` before it is ready leaves the result in place.
///
/// # Examples
///
/// ```
/// # futures::executor::block_on(async {
/// let handle = apm_tap::begin(async { 5 });
/// assert_eq!(handle.await, Ok(5));
/// # });
/// ```
impl<T> Future for AsyncResult<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_end(cx)
    }
}

/// Done once this handle's `.await` (or [`poll_end`](AsyncResult::poll_end)) returned,
/// so that `select!` needs no `.fuse()`. Polled again, it returns
/// [`Error::AlreadyEnded`].
///
/// # Examples
///
/// ```
/// use apm_tap::Completer;
/// use futures::future::FusedFuture;
///
/// # futures::executor::block_on(async {
/// let (completer, mut handle) = Completer::new();
/// let mut other = std::future::pending::<()>();
/// completer.complete(1).unwrap();
/// futures::select! {
///     value = handle => assert_eq!(value, Ok(1)),
///     _ = futures::FutureExt::fuse(&mut other) => unreachable!(),
/// }
/// assert!(handle.is_terminated());
/// # });
/// ```
impl<T> FusedFuture for AsyncResult<T> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// How every handle waits: returns at once when `completed` or the timeout is zero,
/// else blocks (rule 12 checked against the task's runtime) until completion or the
/// timeout; `None` waits for completion.
pub(super) fn wait(
    completed: bool,
    timeout: Option<Duration>,
    task_runtime: impl FnOnce() -> Option<Id>,
    wait_until: impl FnOnce(Option<Instant>) -> bool,
) -> Result<bool, Error> {
    if completed || timeout.is_some_and(|timeout| timeout.is_zero()) {
        return Ok(completed);
    }
    // A timeout too large to represent waits without a deadline.
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    blocking(task_runtime(), || wait_until(deadline))
}

impl<T> Clone for AsyncResult<T> {
    fn clone(&self) -> Self {
        AsyncResult::from_shared(self.cell.clone())
    }
}

impl<T> Drop for AsyncResult<T> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.get() {
            self.cell.release_entry(entry);
        }
    }
}

impl<T> AsyncHandle for AsyncResult<T> {
    fn completed_synchronously(&self) -> bool {
        AsyncResult::completed_synchronously(self)
    }
}

impl<T> PollHandle for AsyncResult<T> {
    fn poll_completed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.cell.poll_completed(cx, &mut self.entry)
    }
}

impl<T> fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("is_completed", &self.is_completed())
            .field("completed_synchronously", &self.completed_synchronously())
            .field("state", self.state())
            .finish()
    }
}

/// The callback a Begin method runs once when its operation completes
/// (`System.AsyncCallback`), or none.
///
/// It receives a clone of the handle Begin returned; inside it the operation is
/// complete, so [`AsyncResult::end`] returns at once.
///
/// # Examples
///
/// ```
/// use apm_tap::AsyncCallback;
/// use std::sync::mpsc;
///
/// let (tx, rx) = mpsc::channel();
/// let callback = AsyncCallback::new(move |handle: apm_tap::AsyncResult<u32>| {
///     tx.send(handle.end()).unwrap();
/// });
/// let _handle = apm_tap::Builder::new().callback(callback).begin(async { 11 });
/// assert_eq!(rx.recv().unwrap(), Ok(11));
/// ```
pub struct AsyncCallback<T>(Option<Callback<T>>);

impl<T> AsyncCallback<T> {
    /// A callback that runs `f`.
    ///
    /// # Examples
    ///
    /// ```
    /// let callback = apm_tap::AsyncCallback::new(|handle: apm_tap::AsyncResult<()>| {
    ///     assert!(handle.is_completed());
    /// });
    /// assert!(!callback.is_none());
    /// ```
    pub fn new<F>(f: F) -> Self
    where
        F: FnOnce(AsyncResult<T>) + Send + 'static,
        T: Send + 'static,
    {
        AsyncCallback(Some(Box::new(UserCallback { f, post: None })))
    }

    /// A callback of the crate's own that runs no user code (so needs no trampoline),
    /// for any `T`.
    pub(crate) fn internal<F>(f: F) -> Self
    where
        F: FnOnce(AsyncResult<T>) + Send + 'static,
    {
        AsyncCallback(Some(Box::new(f)))
    }

    /// No callback (`null` in .NET): the caller will poll, wait or end instead.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(apm_tap::AsyncCallback::<u8>::none().is_none());
    /// ```
    pub const fn none() -> Self {
        AsyncCallback(None)
    }

    /// Whether this is [`AsyncCallback::none`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!apm_tap::AsyncCallback::new(|_: apm_tap::AsyncResult<u8>| {}).is_none());
    /// ```
    pub fn is_none(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn into_inner(self) -> Option<Callback<T>> {
        self.0
    }

    pub(crate) fn from_inner(callback: Option<Callback<T>>) -> Self {
        AsyncCallback(callback)
    }
}

/// A user's callback, and where to post it (set by `Builder::dispatch`): in one box, so
/// that posting allocates no wrapper.
struct UserCallback<F> {
    f: F,
    post: Option<Dispatch>,
}

impl<T: Send + 'static, F> CallbackFn<T> for UserCallback<F>
where
    F: FnOnce(AsyncResult<T>) + Send + 'static,
{
    fn call(self: Box<Self>, handle: AsyncResult<T>) {
        let UserCallback { f, post } = *self;
        match post {
            None => run_user(f, handle),
            // `Dispatch::run` discards the panic where the job runs.
            Some(dispatch) => dispatch.run(move || run_user(f, handle)),
        }
    }

    fn post_to(&mut self, dispatch: Dispatch) -> Result<(), Dispatch> {
        self.post = Some(dispatch);
        Ok(())
    }
}

/// Runs a user's callback through the per-thread trampoline (`crate::trampoline`), so
/// that a callback that begins an operation completing at once does not run that one's
/// callback ever deeper down the stack; re-raises its panic.
fn run_user<T: 'static>(f: impl FnOnce(AsyncResult<T>) + Send + 'static, handle: AsyncResult<T>) {
    if let Err(payload) = crate::trampoline::run(move || f(handle)) {
        std::panic::resume_unwind(payload);
    }
}

/// Any `FnOnce(AsyncResult<T>)` is a callback, so that
/// [`Builder::callback`](crate::Builder::callback) takes closures as they are.
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, AsyncResult};
///
/// let callback: AsyncCallback<u8> = (|h: AsyncResult<u8>| drop(h)).into();
/// assert!(!callback.is_none());
/// ```
impl<T, F> From<F> for AsyncCallback<T>
where
    F: FnOnce(AsyncResult<T>) + Send + 'static,
    T: Send + 'static,
{
    fn from(f: F) -> Self {
        AsyncCallback::new(f)
    }
}

impl<T> fmt::Debug for AsyncCallback<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_none() {
            "AsyncCallback(None)"
        } else {
            "AsyncCallback(..)"
        })
    }
}
