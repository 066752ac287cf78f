//! Where futures given to [`begin`](crate::begin) run, and how blocking calls decide
//! whether they may block.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Builder, Handle, Id, Runtime, RuntimeFlavor};

use crate::cell::{Driver, RawTask, TaskWriter};
use crate::unwind::{catch, discard};
use crate::Error;

/// A begun operation's task: the future that [`begin_on`](crate::begin_on) hands to a
/// [`Spawner`] to run in the background.
///
/// Poll it to completion, or drop it; it is `Send`, `Unpin` and `'static`, and two
/// words in size: it points into the operation's own allocation, so spawning it costs
/// no allocation of apm-tap's (an executor that needs a `BoxFuture` boxes it). Dropping
/// it unfinished completes the operation with [`Error::Abandoned`].
///
/// # Examples
///
/// ```
/// use apm_tap::Task;
/// use std::sync::mpsc;
///
/// // An executor of our own: runs each task on a new thread.
/// let spawner = |task: Task| {
///     std::thread::spawn(move || futures::executor::block_on(task));
/// };
/// let handle = apm_tap::begin_on(&spawner, async {
///     futures::future::ready(()).await;
///     2 + 2
/// });
/// assert_eq!(handle.end(), Ok(4));
/// ```
#[must_use = "a task does nothing unless polled; dropping it abandons its operation"]
pub struct Task(RawTask);

impl Task {
    pub(crate) fn new<D: Driver, F>(task: TaskWriter<F>) -> Task
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Task(RawTask::new::<D, F>(task))
    }
}

impl Future for Task {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.poll(cx)
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Task")
    }
}

/// Something that runs futures to completion in the background: an executor.
///
/// [`begin_on`](crate::begin_on) polls the future once inline (inside
/// [`enter`](Self::enter)) and hands it to [`spawn`](Self::spawn) only if it is not
/// ready yet. Implemented for tokio's [`Handle`] and [`Runtime`], and for any
/// `Fn(Task)`: a closure that hands the task to any other executor, such as one
/// calling `futures`' `spawn_ok`:
///
/// # Examples
///
/// ```
/// use futures::executor::ThreadPool;
///
/// let pool = ThreadPool::new().unwrap();
/// let spawner = |task| pool.spawn_ok(task);
/// let handle = apm_tap::begin_on(&spawner, async { 3 });
/// assert_eq!(handle.end(), Ok(3));
/// ```
pub trait Spawner {
    /// Runs `task` to completion in the background. An executor that cannot take it
    /// drops it: the operation then completes with [`Error::Abandoned`]. If it does so
    /// within this call, on the calling thread (or runs the task to completion there),
    /// the operation completes inside Begin: synchronously, its callback run by `begin`
    /// once `spawn` returned.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Spawner;
    ///
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let recorder = |task: apm_tap::Task| tx.send(task).unwrap();
    /// let handle = apm_tap::begin_on(&recorder, async { tokio::task::yield_now().await; 1 });
    /// Spawner::spawn(&runtime, rx.recv().unwrap());
    /// assert_eq!(handle.end(), Ok(1));
    /// ```
    fn spawn(&self, task: Task);

    /// Runs `f` inside this executor's context, so that the inline first poll can use
    /// the executor's resources (tokio's timers and I/O). The default just calls `f`.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Spawner;
    ///
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let mut inside = false;
    /// Spawner::enter(&runtime, &mut || inside = tokio::runtime::Handle::try_current().is_ok());
    /// assert!(inside);
    /// ```
    fn enter(&self, f: &mut dyn FnMut()) {
        f();
    }

    /// The tokio runtime that runs what this spawner spawns, if it is one. A blocking
    /// [`AsyncResult::end`](crate::AsyncResult::end) uses it to tell whether this thread
    /// is the one that must run the task (rule 12). The default: `None`, not a tokio
    /// runtime (or one the spawner does not tell).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Spawner;
    ///
    /// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    /// assert_eq!(Spawner::tokio_handle(&runtime).map(|h| h.id()), Some(runtime.handle().id()));
    /// ```
    fn tokio_handle(&self) -> Option<&Handle> {
        None
    }
}

impl Spawner for Handle {
    fn spawn(&self, task: Task) {
        drop(Handle::spawn(self, task));
    }

    fn enter(&self, f: &mut dyn FnMut()) {
        let _context = Handle::enter(self);
        f();
    }

    fn tokio_handle(&self) -> Option<&Handle> {
        Some(self)
    }
}

impl Spawner for Runtime {
    fn spawn(&self, task: Task) {
        Spawner::spawn(self.handle(), task);
    }

    fn enter(&self, f: &mut dyn FnMut()) {
        Spawner::enter(self.handle(), f);
    }

    fn tokio_handle(&self) -> Option<&Handle> {
        Some(self.handle())
    }
}

impl<F> Spawner for F
where
    F: Fn(Task),
{
    fn spawn(&self, task: Task) {
        self(task);
    }
}

/// The runtime used by [`begin`](crate::begin) when the caller is outside any tokio
/// runtime: a multi-thread tokio runtime, built on first use and kept for the life of
/// the process.
///
/// # Panics
///
/// If it cannot be started (the process may not create threads).
pub(crate) fn default_handle() -> &'static Handle {
    try_default_handle().expect("apm-tap could not start its default runtime")
}

/// The default runtime's handle, starting it if need be; `None` if it cannot be started.
/// For the clean-up paths that run inside `drop` or a waker, which must not panic.
pub(crate) fn try_default_handle() -> Option<&'static Handle> {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Some(runtime.handle());
    }
    let built = catch(|| {
        Builder::new_multi_thread()
            .thread_name("apm-tap-worker")
            .enable_all()
            .build()
    });
    match built {
        Ok(Ok(runtime)) => {
            // Another thread may have won the race: its runtime stays, this one goes,
            // without blocking (this may run inside an async context).
            if let Err(loser) = RUNTIME.set(runtime) {
                loser.shutdown_background();
            }
            RUNTIME.get().map(Runtime::handle)
        }
        Ok(Err(_)) => None,
        Err(payload) => {
            discard(payload);
            None
        }
    }
}

/// The current-thread runtime whose context this thread is in, if any: where a consumer
/// runs, for a later blocking producer to check against (rule 12).
pub(crate) fn current_thread_runtime() -> Option<Id> {
    Handle::try_current()
        .ok()
        .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread)
        .map(|handle| handle.id())
}

std::thread_local! {
    /// The current-thread runtime this thread drives between other work (a
    /// [`CallbackThread`](crate::CallbackThread)'s), even outside its context.
    static DRIVES: std::cell::Cell<Option<Id>> = const { std::cell::Cell::new(None) };
}

/// Marks this thread as the one that drives `runtime`, for [`blocking`] to refuse
/// waiting here for its tasks.
pub(crate) fn drives(runtime: Id) {
    DRIVES.with(|drives| drives.set(Some(runtime)));
}

/// Runs the blocking wait `f`, unless this thread is the one that must run the
/// operation's task: then blocking would deadlock, and it refuses (rule 12).
///
/// `task_runtime` is the current-thread runtime that runs the operation's task, if it
/// has one (see `Spawner::tokio_handle`). tokio tells which scheduler, if any, this
/// thread drives (`worker_index`), and which runtime's context is entered; from those:
///
/// - A [`CallbackThread`](crate::CallbackThread) between its callbacks, outside its
///   runtime's context: it refuses for that runtime's tasks (only it runs them).
/// - No scheduler runs on this thread (a plain thread, a `spawn_blocking` thread, the
///   thread in a multi-thread runtime's `block_on`, one that only entered a handle):
///   it parks. Nothing it stops can be needed by the operation.
/// - A multi-thread runtime's worker: it blocks inside `block_in_place`, which first
///   hands the worker's other tasks to a new thread.
/// - The driver of a current-thread runtime (its `block_on`, and the tasks polled
///   there): it refuses if the operation's task runs on that very runtime, and parks
///   otherwise (stalling this runtime, but nothing it must run). If the entered runtime
///   is not the one it drives (a multi-thread handle entered inside `block_on`), it
///   cannot tell which current-thread runtime it drives, and refuses for every task on
///   a current-thread runtime.
///
/// tokio cannot tell a multi-thread worker from a task of a current-thread runtime that
/// entered a multi-thread runtime's handle; the second is taken for the first.
pub(crate) fn blocking<R>(task_runtime: Option<Id>, f: impl FnOnce() -> R) -> Result<R, Error> {
    // Inside an inline task's poll, the operation may need a poll queued behind it.
    crate::dispatch::run_queued_inline();
    match how_to_wait(task_runtime) {
        Wait::Park => Ok(f()),
        Wait::InPlace => Ok(tokio::task::block_in_place(f)),
        Wait::Refuse => Err(Error::WouldDeadlock),
    }
}

/// How [`blocking`] waits here for an operation whose task runs on `task_runtime`.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// Park this thread: nothing it stops can be needed by the operation.
    Park,
    /// A multi-thread runtime's worker: `block_in_place`.
    InPlace,
    /// Refuse: this thread must run the operation's task.
    Refuse,
}

fn how_to_wait(task_runtime: Option<Id>) -> Wait {
    // A callback thread waiting, outside its runtime's context, for one of its tasks.
    if task_runtime.is_some()
        && DRIVES.try_with(|drives| drives.get()).ok().flatten() == task_runtime
    {
        return Wait::Refuse;
    }
    if tokio::runtime::worker_index().is_none() {
        return Wait::Park;
    }
    let entered = Handle::try_current().ok();
    let entered_current_thread = entered
        .as_ref()
        .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread);
    // Only a current-thread runtime's driver runs `block_on`'s own future (outside any
    // task) with a worker index.
    let drives_current_thread = tokio::task::try_id().is_none() || entered_current_thread.is_some();
    if !drives_current_thread {
        return Wait::InPlace;
    }
    match (task_runtime, entered_current_thread) {
        (None, _) => Wait::Park,
        (Some(task), Some(driven)) if task != driven.id() => Wait::Park,
        (Some(_), _) => Wait::Refuse,
    }
}

/// Whether a blocking wait here, for an operation [`begin`](crate::begin) would start
/// now (on the ambient runtime, or the default one), would refuse with
/// [`Error::WouldDeadlock`]: so that a blocking call can refuse before it begins
/// anything.
#[cfg(feature = "macros")]
pub(crate) fn would_refuse_new_operation() -> bool {
    how_to_wait(current_thread_runtime()) == Wait::Refuse
}
