//! Cancellation an operation can see: a [`Cancellation`] token handed to the future by
//! [`cancellable`], tripped when that future is dropped before it completed.

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project::{pin_project, pinned_drop};

use crate::sync::{Mutex, PoisonError};
use crate::unwind;

/// A hook registered with [`Cancellation::on_cancel`].
type Hook = Box<dyn FnOnce() + Send>;

/// Where an operation's cancellation stands.
enum Stage {
    /// Running: the hooks wait.
    Running(Vec<Hook>),
    /// Dropped before it completed: hooks given now run at once.
    Cancelled,
    /// Completed: hooks given now are dropped, never run.
    Completed,
}

/// What an operation's future holds to learn that it was cancelled, and to hand on to
/// work the future does not own: a legacy worker thread checking
/// [`is_cancelled`](Cancellation::is_cancelled), a legacy Cancel registered with
/// [`on_cancel`](Cancellation::on_cancel). Made by [`cancellable`]; cheap to clone;
/// `Send` and `Sync`.
///
/// In Rust, cancelling an operation drops its future: `AsyncResult::cancel`, a caller's
/// `apm_tap_op_cancel`, a `select!` that picks another branch. The future simply stops
/// at the `.await` it was at, and whatever it owned is dropped with it. What it does
/// not own (a thread it started, a request a C library holds) learns of the
/// cancellation through this token.
///
/// "Cancelled" here means dropped before completing, which includes a runtime shutting
/// down under it (an abandoned operation) and a future dropped after its `poll`
/// panicked (the operation's End then says `Panicked`).
///
/// # Examples
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// // A legacy scan on a thread of its own, which checks for cancellation between steps.
/// let (started, running) = mpsc::channel();
/// let (stopped, stop) = mpsc::channel();
/// let scan = apm_tap::cancellable(|cancellation| async move {
///     let (done, result) = futures::channel::oneshot::channel();
///     std::thread::spawn(move || {
///         started.send(()).unwrap();
///         while !cancellation.is_cancelled() {
///             std::thread::sleep(Duration::from_millis(1));
///         }
///         stopped.send("scan stopped").unwrap();
///         let _ = done.send(0_u64);
///     });
///     result.await
/// });
/// let handle = apm_tap::begin(scan);
/// running.recv().unwrap();
/// handle.cancel();
/// assert_eq!(stop.recv().unwrap(), "scan stopped");
/// assert_eq!(handle.end(), Err(apm_tap::Error::Cancelled));
/// ```
#[derive(Clone)]
pub struct Cancellation(Arc<Mutex<Stage>>);

impl Cancellation {
    /// Whether the operation was cancelled: its future dropped before it completed.
    /// Stays `false` once it completed.
    ///
    /// # Examples
    ///
    /// See [`Cancellation`].
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.lock(), Stage::Cancelled)
    }

    /// Runs `hook` once if the operation is cancelled: on the thread that drops its
    /// future, after the future was dropped, or here at once if it was cancelled
    /// already (from another thread, or from inside another hook). If the operation
    /// completes instead, `hook` is dropped unrun. The hooks given before the
    /// cancellation run in the order they were given.
    ///
    /// # Panics
    ///
    /// A panic of `hook` run here, at once, propagates. One run where the future is
    /// dropped is caught and discarded (the panic hook reports it), and the other hooks
    /// still run.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (cancels, cancelled) = mpsc::channel();
    /// let waiting = apm_tap::cancellable(|cancellation| async move {
    ///     // The legacy Cancel of whatever this operation started.
    ///     cancellation.on_cancel(move || cancels.send("legacy cancel").unwrap());
    ///     std::future::pending::<()>().await
    /// });
    /// let handle = apm_tap::begin(waiting);
    /// handle.cancel();
    /// // The hook runs where the future is dropped, maybe after `cancel` returned.
    /// assert_eq!(cancelled.recv(), Ok("legacy cancel"));
    /// ```
    pub fn on_cancel(&self, hook: impl FnOnce() + Send + 'static) {
        let mut stage = self.lock();
        match &mut *stage {
            Stage::Running(hooks) => hooks.push(Box::new(hook)),
            Stage::Cancelled => {
                drop(stage);
                hook();
            }
            Stage::Completed => {
                drop(stage);
                drop(hook);
            }
        }
    }

    fn lock(&self) -> crate::sync::MutexGuard<'_, Stage> {
        // No user code runs under this lock: it cannot be poisoned by one.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves to `next` and returns the hooks that were waiting.
    fn finish(&self, next: Stage) -> Vec<Hook> {
        let mut stage = self.lock();
        match &mut *stage {
            Stage::Running(hooks) => {
                let hooks = mem::take(hooks);
                *stage = next;
                hooks
            }
            // Finished already (not reached: a `Cancellable` finishes once).
            _ => Vec::new(),
        }
    }
}

impl fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match *self.lock() {
            Stage::Running(_) => "running",
            Stage::Cancelled => "cancelled",
            Stage::Completed => "completed",
        };
        f.debug_tuple("Cancellation").field(&stage).finish()
    }
}

/// The future `start(cancellation)` returns, with a [`Cancellation`] that trips if
/// this future is dropped before it completed. Give it to [`begin`](crate::begin) and
/// the caller's `cancel()` reaches what the operation handed the token to.
///
/// It costs one allocation (the token), and one per hook.
///
/// # Panics
///
/// Polling the future after it completed panics. A panic of the future's `poll`
/// propagates; the future has not completed, so dropping it then trips the token.
///
/// # Examples
///
/// See [`Cancellation`].
pub fn cancellable<F, Fut>(start: F) -> Cancellable<Fut>
where
    F: FnOnce(Cancellation) -> Fut,
    Fut: Future,
{
    let cancellation = Cancellation(Arc::new(Mutex::new(Stage::Running(Vec::new()))));
    Cancellable {
        future: Some(start(cancellation.clone())),
        cancellation,
    }
}

/// Future for the [`cancellable`] function.
///
/// # Examples
///
/// ```
/// let ready = apm_tap::cancellable(|_cancellation| async { 5 });
/// assert_eq!(futures::executor::block_on(ready), 5);
/// ```
#[pin_project(PinnedDrop)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancellable<Fut> {
    #[pin]
    future: Option<Fut>,
    cancellation: Cancellation,
}

impl<Fut: Future> Future for Cancellable<Fut> {
    type Output = Fut::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fut::Output> {
        let mut this = self.project();
        let future = this
            .future
            .as_mut()
            .as_pin_mut()
            .expect("`Cancellable` polled after completion");
        let output = futures::ready!(future.poll(cx));
        // A panic of the finished future's `Drop` must not lose its output (rule 17).
        unwind::quietly(|| this.future.set(None));
        // Hooks never run now: drop them, quietly, as nobody could catch their panic.
        for hook in this.cancellation.finish(Stage::Completed) {
            unwind::drop_quietly(hook);
        }
        Poll::Ready(output)
    }
}

#[pinned_drop]
impl<Fut> PinnedDrop for Cancellable<Fut> {
    fn drop(self: Pin<&mut Self>) {
        let mut this = self.project();
        if this.future.is_none() {
            return;
        }
        // The future first, so that hooks run after what it owned was released.
        unwind::quietly(|| this.future.set(None));
        for hook in this.cancellation.finish(Stage::Cancelled) {
            unwind::quietly(hook);
        }
    }
}

impl<Fut> fmt::Debug for Cancellable<Fut> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancellable")
            .field("cancellation", &self.cancellation)
            .finish_non_exhaustive()
    }
}
