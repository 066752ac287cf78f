//! Where user callbacks run: [`Dispatch`], a policy, and [`CallbackThread`], a thread
//! of its own for thread-affine legacy code.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::thread::{self, ThreadId};

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::runtime::{default_handle, Spawner};
use crate::sync::{Mutex, MutexGuard, PoisonError};
use crate::track::Origin;
use crate::unwind::quietly;
use crate::{to_apm, AsyncCallback, AsyncResult, Builder, State, Task};

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
    Thread(mpsc::UnboundedSender<Job>, Handle),
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
        Dispatch(Kind::Thread(thread.jobs.clone(), thread.runtime.clone()))
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
                let posted = async move {
                    YieldOnce(false).await;
                    job.run();
                };
                // Plumbing of the operation whose callback this is: not listed.
                let none = AsyncCallback::none();
                let origin = Origin::plumbing();
                drop(to_apm::start(
                    &*spawner,
                    posted,
                    none,
                    State::none(),
                    false,
                    origin,
                ));
            }
            Kind::Blocking => {
                let job = move || job.run();
                match Handle::try_current() {
                    Ok(handle) => drop(handle.spawn_blocking(job)),
                    Err(_) => drop(default_handle().spawn_blocking(job)),
                }
            }
            Kind::Thread(jobs, _) => {
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
            // A user's callback takes the policy into its own box: no wrapper.
            Some(mut inner) => match inner.post_to(dispatch) {
                Ok(()) => AsyncCallback::from_inner(Some(inner)),
                Err(dispatch) => AsyncCallback::internal(move |handle: AsyncResult<T>| {
                    dispatch.run(move || inner.call(handle));
                }),
            },
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
            Kind::Thread(..) => "Dispatch::Thread",
        })
    }
}

/// A thread of its own that runs posted callbacks one at a time, in order: for legacy
/// code that must be called on one thread (a COM single-threaded apartment, a UI
/// thread, a libuv loop). Post to it with [`Dispatch::thread`].
///
/// The thread drives a current-thread tokio runtime: as a [`Spawner`] (through
/// [`Dispatch::thread`]) it also runs tasks, such as a
/// [subscription](crate::stream::subscribe_on) or an operation with progress, all
/// on this one thread, between the posted callbacks. A posted callback runs outside
/// that runtime's context, as on a plain thread. A blocking `end` or `wait` on this
/// thread for an operation whose task runs here returns
/// [`Error::WouldDeadlock`](crate::Error::WouldDeadlock) (rule 12).
///
/// The thread ends once this handle and every `Dispatch` of it are dropped and it has
/// run the callbacks posted; tasks still pending then are dropped, and their operations
/// end with [`Error::Abandoned`](crate::Error::Abandoned). A pending task that holds a
/// `Dispatch` of this thread (an operation whose callback, subscriber or progress
/// handler is posted here too) keeps it alive until that task ends: cancel it to let
/// the thread go. For a thread you already have (a UI loop), use
/// [`Dispatch::spawner`] with a closure that sends each [`Task`] to that loop, which
/// runs it: `futures::executor::block_on(task)` for a posted callback (its task is
/// ready at once), but a task that waits (a subscription, an operation with progress)
/// must be polled each time it is woken, as an executor does, or it holds the loop.
///
/// # Examples
///
/// See [`Dispatch`].
pub struct CallbackThread {
    jobs: mpsc::UnboundedSender<Job>,
    runtime: Handle,
    id: ThreadId,
}

impl CallbackThread {
    /// Starts the thread, named `name`.
    ///
    /// # Errors
    ///
    /// The operating system's error, if it could not start a thread or its runtime.
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (jobs, mut posted) = mpsc::unbounded_channel::<Job>();
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            crate::runtime::drives(runtime.handle().id());
            // Tasks run while the thread waits for the next callback; each callback
            // runs outside the runtime's context, as on any plain thread (it may start
            // a runtime of its own, or begin on the default one and block on it).
            // The yield first lets the tasks run (up to a scheduler tick's worth) even
            // while callbacks keep coming: `block_on` returns as soon as one is there.
            while let Some(job) = runtime.block_on(async {
                tokio::task::yield_now().await;
                posted.recv().await
            }) {
                quietly(job);
            }
        })?;
        Ok(CallbackThread {
            jobs,
            runtime: handle,
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

/// A policy is an executor too, so that the crate's other callbacks (a
/// [subscriber](crate::stream::subscribe_on), a progress handler) run where it says:
/// give it where a [`Spawner`] is asked for. The task's every poll, the first one
/// included, runs there; it is never polled inside `begin`, except under
/// [`Dispatch::inline`].
///
/// | policy | the task is polled |
/// |---|---|
/// | [`Dispatch::inline`] | on the thread that wakes it, inside the wake (the first time inside `begin`), outside any runtime's context (a future that needs tokio's timers or I/O belongs on [`Dispatch::tokio`]); a wake during a poll makes that poll's thread poll again, and a poll that wakes another inline task has that one polled after it, on the same thread, so nothing dives down the stack (a poll that blocks first runs the polls queued behind it) |
/// | [`Dispatch::tokio`] | as a task of that runtime |
/// | [`Dispatch::spawner`] | as a task of that spawner |
/// | [`Dispatch::blocking`] | on a blocking-pool thread, each poll a job of its own (a pending task holds no thread) |
/// | [`Dispatch::thread`] | on the [`CallbackThread`], between its posted callbacks |
///
/// One task is polled by one thread at a time, so a subscriber's or a progress
/// handler's calls never overlap, whatever the policy.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// let ui = apm_tap::CallbackThread::spawn("ui").unwrap();
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let handle = apm_tap::Builder::new()
///     .spawner(&apm_tap::Dispatch::thread(&ui))
///     .begin(apm_tap::progress::reporting(|progress| async move {
///         let _ = progress.report(1);
///         2
///     })
///     .on_progress(move |p: u8| log.lock().unwrap().push((p, std::thread::current().id()))));
/// assert_eq!(handle.end(), Ok(2));
/// assert_eq!(*seen.lock().unwrap(), [(1, ui.id())]);
/// ```
impl Spawner for Dispatch {
    fn spawn(&self, task: Task) {
        match &self.0 {
            Kind::Tokio(handle) | Kind::Thread(_, handle) => drop(handle.spawn(task)),
            Kind::Spawner(spawner) => spawner.spawn(task),
            Kind::Inline | Kind::Blocking => Woken::start(task, self.clone()),
        }
    }

    /// Polls nothing here: [`spawn`](Spawner::spawn) polls an inline task itself, and
    /// every other policy leaves every poll to its target.
    fn enter(&self, _: &mut dyn FnMut()) {}

    fn tokio_handle(&self) -> Option<&Handle> {
        match &self.0 {
            Kind::Tokio(handle) | Kind::Thread(_, handle) => Some(handle),
            Kind::Spawner(spawner) => spawner.tokio_handle(),
            Kind::Inline | Kind::Blocking => None,
        }
    }
}

/// A task that [`Dispatch::inline`] or [`Dispatch::blocking`] runs: each wake of an
/// idle task runs a poll as the policy runs a callback (inline: inside the wake, on the
/// waking thread, as Kotlin's `Dispatchers.Unconfined` does, without its stack dive).
/// A wake while a poll runs (on any thread, the polling one included) only asks that
/// poll's thread to poll again when it is done: one poll at a time, no recursion.
struct Woken {
    slot: Mutex<Slot>,
    dispatch: Dispatch,
}

/// Runs the inline polls queued on this thread, if it is inside one: a poll about to
/// block may be waiting for a task it woke, which would otherwise run only after it.
pub(crate) fn run_queued_inline() {
    while let Some((next, task)) = INLINE
        .try_with(|inline| {
            let mut inline = inline.borrow_mut();
            if inline.polling {
                inline.queued.pop_front()
            } else {
                None
            }
        })
        .ok()
        .flatten()
    {
        next.run(task);
    }
}

/// This thread's inline polls: whether one runs, and the ones woken inside it.
#[derive(Default)]
struct Inline {
    polling: bool,
    queued: VecDeque<(Arc<Woken>, Task)>,
}

// Loom's `thread_local!` under loom; it takes no `const` initialiser.
#[cfg(not(apm_tap_loom))]
std::thread_local! {
    static INLINE: RefCell<Inline> = RefCell::default();
}
#[cfg(apm_tap_loom)]
loom::thread_local! {
    static INLINE: RefCell<Inline> = RefCell::default();
}

enum Slot {
    /// Nobody polls it; the next wake does.
    Idle(Task),
    /// A poll runs or is posted.
    Running,
    /// A poll runs, and it was woken since: that poll's thread polls again.
    Notified,
    /// It finished.
    Done,
}

impl Woken {
    /// Polls `task` as `dispatch` says, now and whenever it is woken.
    fn start(task: Task, dispatch: Dispatch) {
        let this = Arc::new(Woken {
            slot: Mutex::new(Slot::Running),
            dispatch,
        });
        this.post(task, true);
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Only this file's code runs under the lock, and it cannot panic there.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs [`Woken::run`] as the policy says. Inline, a poll woken from inside another
    /// inline task's poll on this thread (which may wake a third...) is queued for the
    /// outermost one to run when its own poll is done: the stack stays flat (rule 28),
    /// and a poll woken anywhere else runs at once. A `first` poll (inside `begin`)
    /// always runs at once: a task begun inside a poll is polled inside its `begin`.
    fn post(self: Arc<Self>, task: Task, first: bool) {
        if !self.dispatch.is_inline() {
            let dispatch = self.dispatch.clone();
            return dispatch.run(move || self.run(task));
        }
        let mut polled = Some((self, task));
        let mut nested = false;
        let _ = INLINE.try_with(|inline| {
            let mut inline = inline.borrow_mut();
            if !inline.polling {
                inline.polling = true;
            } else if first {
                nested = true;
            } else {
                inline.queued.extend(polled.take());
            }
        });
        let Some((this, task)) = polled else {
            return; // queued
        };
        this.run(task);
        if nested {
            return; // the outer poll's thread runs what this one queued
        }
        // Run what this poll (and those it ran) queued, then stand down.
        while let Some((next, task)) = INLINE
            .try_with(|inline| {
                let mut inline = inline.borrow_mut();
                let next = inline.queued.pop_front();
                inline.polling = next.is_some();
                next
            })
            .ok()
            .flatten()
        {
            next.run(task);
        }
    }

    /// Polls `task` (taken out of the slot) until it finishes or is left idle.
    fn run(self: Arc<Self>, mut task: Task) {
        let waker = Waker::from(Arc::clone(&self));
        let mut cx = Context::from_waker(&waker);
        loop {
            // `Task::poll` catches the future's panic itself: it never unwinds here.
            if Pin::new(&mut task).poll(&mut cx).is_ready() {
                *self.slot() = Slot::Done;
                // Its result is stored; dropping it runs no user code.
                return drop(task);
            }
            let mut slot = self.slot();
            match *slot {
                Slot::Notified => *slot = Slot::Running,
                _ => {
                    *slot = Slot::Idle(task);
                    return;
                }
            }
        }
    }
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        let mut slot = self.slot();
        match std::mem::replace(&mut *slot, Slot::Done) {
            Slot::Idle(task) => {
                *slot = Slot::Running;
                drop(slot);
                self.post(task, false);
            }
            Slot::Running | Slot::Notified => *slot = Slot::Notified,
            Slot::Done => {}
        }
    }
}
