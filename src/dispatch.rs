//! Where user callbacks run: [`Dispatch`], a policy, and [`CallbackThread`], a thread
//! of its own for thread-affine legacy code.

use std::fmt;
use std::io;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, ThreadId};

use tokio::runtime::Handle;

use crate::runtime::{default_handle, Spawner};
use crate::unwind::quietly;
use crate::{AsyncCallback, AsyncResult, Builder};

type Job = Box<dyn FnOnce() + Send>;

/// Where a callback runs: the thread that completes the operation (the default), or
/// posted elsewhere.
///
/// | policy | the callback runs | use it for |
/// |---|---|---|
/// | [`Dispatch::inline`] (the default) | on the thread that completes the operation: inside `begin` when it completes there (rule 9), else the executor's or the completer's thread | callbacks that are quick and touch nothing thread-bound |
/// | [`Dispatch::tokio`] | in a task spawned on that runtime | callbacks that may take a while, off the completing thread |
/// | [`Dispatch::spawner`] | in a task of any [`Spawner`] | the same, on an executor of your own |
/// | [`Dispatch::blocking`] | on a thread of tokio's blocking pool (the ambient runtime's, else the crate's default runtime's) | callbacks that block |
/// | [`Dispatch::thread`] | on one [`CallbackThread`], in the order posted | thread-affine legacy code (a COM STA, a UI thread, a libuv loop) |
///
/// A posted callback runs after its operation's result is stored (rule 10), never
/// inside `begin` (unless a [`Spawner`] runs its tasks inside `spawn`);
/// `completed_synchronously` still reports where the operation completed. Its panic is
/// caught there and discarded (that thread only ran the crate's job). It runs exactly
/// once: a target that drops it unrun (a runtime shutting down, a spawner refusing it)
/// runs it where it drops it.
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncResult, Builder, CallbackThread, Dispatch};
/// use std::sync::mpsc;
///
/// let ui = CallbackThread::spawn("ui").unwrap();
/// let (tx, rx) = mpsc::channel();
/// let handle = Builder::new()
///     .dispatch(Dispatch::thread(&ui))
///     .callback(move |h: AsyncResult<u8>| {
///         tx.send((std::thread::current().id(), h.end())).unwrap();
///     })
///     .begin(async { 4 });
/// assert!(handle.completed_synchronously()); // it completed inside `begin`...
/// assert_eq!(rx.recv().unwrap(), (ui.id(), Ok(4))); // ...and called back on "ui"
/// ```
#[derive(Clone, Default)]
pub struct Dispatch(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    Inline,
    Tokio(Handle),
    Spawner(Arc<dyn Spawner + Send + Sync>),
    Blocking,
    Thread(mpsc::Sender<Job>),
}

impl Dispatch {
    /// Run callbacks where the operation completes: the default, which costs nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncResult, Builder, Dispatch};
    ///
    /// let here = std::thread::current().id();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let _ = Builder::new()
    ///     .dispatch(Dispatch::inline())
    ///     .callback(move |_: AsyncResult<()>| tx.send(std::thread::current().id()).unwrap())
    ///     .begin(async {});
    /// assert_eq!(rx.try_recv(), Ok(here)); // ran inside `begin`
    /// ```
    pub const fn inline() -> Dispatch {
        Dispatch(Kind::Inline)
    }

    /// Post callbacks as tasks on a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncResult, Builder, Dispatch};
    ///
    /// let runtime = tokio::runtime::Builder::new_multi_thread()
    ///     .worker_threads(1)
    ///     .thread_name("callbacks")
    ///     .build()
    ///     .unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let _ = Builder::new()
    ///     .dispatch(Dispatch::tokio(runtime.handle().clone()))
    ///     .callback(move |_: AsyncResult<()>| {
    ///         tx.send(std::thread::current().name().map(str::to_owned)).unwrap()
    ///     })
    ///     .begin(async {});
    /// assert_eq!(rx.recv().unwrap().as_deref(), Some("callbacks"));
    /// ```
    pub fn tokio(handle: Handle) -> Dispatch {
        Dispatch(Kind::Tokio(handle))
    }

    /// Post callbacks as tasks of any [`Spawner`].
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncResult, Builder, Dispatch};
    ///
    /// let pool = futures::executor::ThreadPool::builder().name_prefix("pool-").create().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let _ = Builder::new()
    ///     .dispatch(Dispatch::spawner(move |task| pool.spawn_ok(task)))
    ///     .callback(move |_: AsyncResult<()>| {
    ///         tx.send(std::thread::current().name().map(str::to_owned)).unwrap()
    ///     })
    ///     .begin(async {});
    /// assert!(rx.recv().unwrap().unwrap().starts_with("pool-"));
    /// ```
    pub fn spawner(spawner: impl Spawner + Send + Sync + 'static) -> Dispatch {
        Dispatch(Kind::Spawner(Arc::new(spawner)))
    }

    /// Run callbacks on tokio's blocking pool: the ambient runtime's where the callback
    /// is posted from inside one, else the crate's default runtime's.
    ///
    /// # Panics
    ///
    /// Posting panics if the default runtime is needed and cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncResult, Builder, Dispatch};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let _ = Builder::new()
    ///     .dispatch(Dispatch::blocking())
    ///     .callback(move |h: AsyncResult<u8>| {
    ///         std::thread::sleep(std::time::Duration::from_millis(1)); // may block
    ///         tx.send(h.end()).unwrap()
    ///     })
    ///     .begin(async { 9 });
    /// assert_eq!(rx.recv().unwrap(), Ok(9));
    /// ```
    pub const fn blocking() -> Dispatch {
        Dispatch(Kind::Blocking)
    }

    /// Run callbacks on `thread`, one at a time, in the order posted.
    ///
    /// # Examples
    ///
    /// See [`Dispatch`].
    pub fn thread(thread: &CallbackThread) -> Dispatch {
        Dispatch(Kind::Thread(thread.jobs.clone()))
    }

    /// Whether this is [`Dispatch::inline`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(apm_tap::Dispatch::default().is_inline());
    /// assert!(!apm_tap::Dispatch::blocking().is_inline());
    /// ```
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Kind::Inline)
    }

    /// Runs `job` as this policy says: now, on this thread, for [`Dispatch::inline`];
    /// else posted, with its panic caught and discarded where it runs.
    ///
    /// A posted job runs exactly once: one that its target drops unrun (a runtime that
    /// shuts down, a spawner that refuses the task or panics) runs on the thread that
    /// drops it. A spawner that runs its tasks inside `spawn` runs the job there.
    ///
    /// # Panics
    ///
    /// An inline job's panic propagates. For [`Dispatch::blocking`], panics if the
    /// default runtime is needed and cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// let ui = apm_tap::CallbackThread::spawn("ui").unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// apm_tap::Dispatch::thread(&ui).run(move || tx.send(std::thread::current().id()).unwrap());
    /// assert_eq!(rx.recv().unwrap(), ui.id());
    /// ```
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        if let Kind::Inline = self.0 {
            return job();
        }
        // Posted jobs run exactly once: one the target drops unrun (a runtime shutting
        // down, a spawner that refuses or panics) runs where it is dropped. The job
        // goes into the target's task as it is: only the thread's queue boxes it.
        let job = Once(Some(job));
        match &self.0 {
            Kind::Inline => unreachable!("returned above"),
            Kind::Tokio(handle) => drop(handle.spawn(async move { job.run() })),
            Kind::Spawner(spawner) => {
                let spawner = Arc::clone(spawner);
                // `begin_on` polls inline first: the job waits for one yield, so that
                // it runs on the spawner's executor, not here (unless the spawner runs
                // its tasks inside `spawn`).
                drop(crate::begin_on(&*spawner, async move {
                    YieldOnce(false).await;
                    job.run();
                }));
            }
            Kind::Blocking => {
                let job = move || job.run();
                match Handle::try_current() {
                    Ok(handle) => drop(handle.spawn_blocking(job)),
                    Err(_) => drop(default_handle().spawn_blocking(job)),
                }
            }
            Kind::Thread(jobs) => {
                // The thread runs until every sender is gone, and this is one: the send
                // cannot fail. Were it to, the job would come back and run here.
                if let Err(refused) = jobs.send(Box::new(move || job.run())) {
                    quietly(refused.0);
                }
            }
        }
    }

    /// `callback`, made to run as `dispatch` says.
    pub(crate) fn wrap<T: Send + 'static>(
        dispatch: Dispatch,
        callback: AsyncCallback<T>,
    ) -> AsyncCallback<T> {
        if dispatch.is_inline() {
            return callback;
        }
        match callback.into_inner() {
            None => AsyncCallback::none(),
            // `inner` went through the trampoline when it was made; posting it starts a
            // new stack anyway.
            Some(inner) => AsyncCallback::internal(move |handle: AsyncResult<T>| {
                dispatch.run(move || inner(handle));
            }),
        }
    }
}

/// A posted job that runs exactly once: by [`Once::run`], or, if the target drops it
/// unrun, by its drop on the dropping thread. Its panic is discarded either way.
struct Once<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Once<F> {
    fn run(mut self) {
        if let Some(job) = self.0.take() {
            quietly(job);
        }
    }
}

impl<F: FnOnce()> Drop for Once<F> {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            quietly(job);
        }
    }
}

/// Returns `Pending` once (waking itself), then `Ready`.
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::Inline => "Dispatch::Inline",
            Kind::Tokio(_) => "Dispatch::Tokio",
            Kind::Spawner(_) => "Dispatch::Spawner",
            Kind::Blocking => "Dispatch::Blocking",
            Kind::Thread(_) => "Dispatch::Thread",
        })
    }
}

/// A thread of its own that runs posted callbacks one at a time, in order: for legacy
/// code that must be called on one thread (a COM single-threaded apartment, a UI
/// thread, a libuv loop). Post to it with [`Dispatch::thread`].
///
/// The thread ends once this handle and every `Dispatch` of it are dropped and it has
/// run what was posted. For a thread you already have (a UI loop), use
/// [`Dispatch::spawner`] with a closure that sends each [`Task`](crate::Task) to that
/// loop, which runs it (`futures::executor::block_on(task)`).
///
/// # Examples
///
/// See [`Dispatch`].
pub struct CallbackThread {
    jobs: mpsc::Sender<Job>,
    id: ThreadId,
}

impl CallbackThread {
    /// Starts the thread, named `name`.
    ///
    /// # Errors
    ///
    /// The operating system's error, if it could not start a thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let ui = apm_tap::CallbackThread::spawn("ui").unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// apm_tap::Dispatch::thread(&ui).run(move || {
    ///     tx.send(std::thread::current().name().map(str::to_owned)).unwrap()
    /// });
    /// assert_eq!(rx.recv().unwrap().as_deref(), Some("ui"));
    /// ```
    pub fn spawn(name: impl Into<String>) -> io::Result<CallbackThread> {
        let (jobs, posted) = mpsc::channel::<Job>();
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            for job in posted {
                quietly(job);
            }
        })?;
        Ok(CallbackThread {
            jobs,
            id: thread.thread().id(),
        })
    }

    /// The thread's id, to check where a callback runs.
    ///
    /// # Examples
    ///
    /// See [`Dispatch`].
    pub fn id(&self) -> ThreadId {
        self.id
    }
}

impl fmt::Debug for CallbackThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackThread")
            .field("id", &self.id)
            .finish()
    }
}

impl<T> Builder<'_, T> {
    /// Where the callback runs (see [`Dispatch`]); the default is
    /// [`Dispatch::inline`].
    ///
    /// # Examples
    ///
    /// See [`Dispatch`].
    pub fn dispatch(self, dispatch: Dispatch) -> Self
    where
        T: Send + 'static,
    {
        if dispatch.is_inline() {
            // The default: nothing to wrap, nothing to allocate.
            return self.with_dispatch(None);
        }
        // A function pointer, made here where `T: Send + 'static` is known: storing it
        // allocates nothing.
        self.with_dispatch(Some((dispatch, Dispatch::wrap::<T>)))
    }
}
