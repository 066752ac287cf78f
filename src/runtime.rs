//! Where futures given to [`begin`](crate::begin) run, and how blocking calls decide
//! whether they may block.

use std::sync::OnceLock;

use futures::future::BoxFuture;
use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};

use crate::Error;

/// Something that runs futures to completion in the background: an executor.
///
/// [`begin_on`](crate::begin_on) polls the future once inline (inside
/// [`enter`](Self::enter)) and hands it to [`spawn`](Self::spawn) only if it is not
/// ready yet. Implemented for tokio's [`Handle`] and [`Runtime`], and for any
/// `Fn(BoxFuture<'static, ()>)`, which covers every `futures::task::Spawn`:
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, State};
/// use futures::executor::ThreadPool;
///
/// let pool = ThreadPool::new().unwrap();
/// let spawner = |task| pool.spawn_ok(task);
/// let handle = apm_tap::begin_on(&spawner, async { 3 });
/// assert_eq!(handle.end(), Ok(3));
/// ```
pub trait Spawner {
    /// Runs `task` to completion in the background. An executor that cannot take it
    /// drops it: the operation then completes with [`Error::Abandoned`].
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Spawner;
    ///
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// Spawner::spawn(&runtime, Box::pin(async move { tx.send(1).unwrap() }));
    /// assert_eq!(rx.recv().unwrap(), 1);
    /// ```
    fn spawn(&self, task: BoxFuture<'static, ()>);

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
}

impl Spawner for Handle {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        drop(Handle::spawn(self, task));
    }

    fn enter(&self, f: &mut dyn FnMut()) {
        let _context = Handle::enter(self);
        f();
    }
}

impl Spawner for Runtime {
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        Spawner::spawn(self.handle(), task);
    }

    fn enter(&self, f: &mut dyn FnMut()) {
        Spawner::enter(self.handle(), f);
    }
}

impl<F> Spawner for F
where
    F: Fn(BoxFuture<'static, ()>),
{
    fn spawn(&self, task: BoxFuture<'static, ()>) {
        self(task);
    }
}

/// The runtime used by [`begin`](crate::begin) when the caller is outside any tokio
/// runtime: a multi-thread tokio runtime, built on first use and kept for the life of
/// the process.
pub(crate) fn default_handle() -> &'static Handle {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .thread_name("apm-tap-worker")
                .enable_all()
                .build()
                .expect("apm-tap could not start its default runtime")
        })
        .handle()
}

/// Runs the blocking wait `f`, unless blocking this thread could stop the runtime that
/// must finish the operation.
///
/// - Outside tokio: just blocks.
/// - On a current-thread runtime's thread: refuses with `WouldDeadlock`, since nothing
///   else can run that runtime's tasks while this thread waits.
/// - On a multi-thread runtime: blocks inside `block_in_place`, which hands this worker's
///   other tasks to a new thread first.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> Result<R, Error> {
    match Handle::try_current() {
        Err(_) => Ok(f()),
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::CurrentThread => {
            Err(Error::WouldDeadlock)
        }
        Ok(_) => Ok(tokio::task::block_in_place(f)),
    }
}
