//! Future to APM: run a future and expose it as a Begin/End pair.

use std::cell::RefCell;
use std::future::Future;
use std::mem;
use std::panic::resume_unwind;
use std::task::{Context, Poll};

use futures::task::noop_waker_ref;
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::cell::{self, Completion, Driver, TaskWriter, Wake};
use crate::runtime::{default_handle, Spawner, Task};
use crate::track::{Kind, Origin, Tracker};
use crate::unwind::{catch, discard, drop_quietly, Payload};
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
#[doc(alias = "BeginInvoke")]
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn begin<F>(future: F) -> AsyncResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let origin = Origin::caller(Kind::Begin);
    start_here(future, AsyncCallback::none(), State::none(), false, origin)
}

/// [`begin`] on a chosen executor: a tokio [`Handle`] or `Runtime`, or any
/// [`Spawner`].
///
/// # Panics
///
/// Propagates a panic of the spawner, after completing the operation with
/// [`Error::Abandoned`] (inside Begin, callback first) if the task was lost; a task
/// the spawner kept runs on.
///
/// # Examples
///
/// ```
/// let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
/// let handle = apm_tap::begin_on(&runtime, async { tokio::task::yield_now().await; 'k' });
/// assert!(!handle.completed_synchronously());
/// assert_eq!(handle.end(), Ok('k'));
/// ```
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn begin_on<S, F>(spawner: &S, future: F) -> AsyncResult<F::Output>
where
    S: Spawner + ?Sized,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let origin = Origin::caller(Kind::Begin);
    start(
        spawner,
        future,
        AsyncCallback::none(),
        State::none(),
        false,
        origin,
    )
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
#[cfg_attr(feature = "diagnostics", track_caller)]
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
    raw: bool,
    origin: Origin,
) -> AsyncResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match Handle::try_current() {
        // Inside the runtime already: entering it again for the first poll would only
        // clone and drop its handle (two contended reference-count updates).
        Ok(handle) => start(&NoEnter(&handle), future, callback, state, raw, origin),
        // This thread's tokio context is gone (`begin` runs in a thread-local
        // destructor): the default runtime, without entering it, which needs that context.
        Err(error) if error.is_thread_local_destroyed() => start(
            &NoEnter(default_handle()),
            future,
            callback,
            state,
            raw,
            origin,
        ),
        Err(_) => start(default_handle(), future, callback, state, raw, origin),
    }
}

/// A tokio runtime whose context the first poll does not enter: it is this thread's
/// current one, or this thread cannot enter any.
struct NoEnter<'a>(&'a Handle);

impl Spawner for NoEnter<'_> {
    fn spawn(&self, task: Task) {
        drop(self.0.spawn(task));
    }

    fn tokio_handle(&self) -> Option<&Handle> {
        Some(self.0)
    }
}

/// Starts `future` on `spawner`: the one implementation behind [`begin`], [`begin_on`]
/// and [`Builder::begin`].
///
/// The future is polled once, inline. If that finishes it, the outcome is stored as a
/// synchronous completion and the callback runs here. Otherwise the task is spawned;
/// should the spawner run it to completion, or drop it, inside `spawn` on this thread,
/// that too completes inside Begin: synchronously, with the callback run here once
/// `spawn` has returned (rule 9), not inside the spawner. With `raw`, the operation's
/// raw handle is out before the first poll (see [`Builder::begin_raw`]).
pub(crate) fn start<S, F>(
    spawner: &S,
    future: F,
    callback: AsyncCallback<F::Output>,
    state: State,
    raw: bool,
    origin: Origin,
) -> AsyncResult<F::Output>
where
    S: Spawner + ?Sized,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    // Every call into the spawner is user code: a panic there completes the operation
    // inside Begin (`TaskDropped`, callback run first), then leaves `begin`.
    let runtime = catch(|| {
        spawner
            .tokio_handle()
            .filter(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread)
            .map(Handle::id)
    });
    let (runtime, mut spawner_panic) = match runtime {
        Ok(runtime) => (runtime, None),
        Err(payload) => (None, Some(payload)),
    };
    let callback = callback.into_inner();
    let tracker = Tracker::start(origin, callback.is_some());
    let (mut task, handle) = cell::new_task(future, callback, state, runtime, raw, tracker);
    let mut first = Poll::Pending;
    if spawner_panic.is_none() {
        let mut polled = false;
        let entered = catch(|| {
            spawner.enter(&mut || {
                // Once, whatever `enter` does with `f`.
                if !polled {
                    polled = true;
                    let mut cx = Context::from_waker(noop_waker_ref());
                    first = task.poll_future(&mut cx);
                }
            });
        });
        spawner_panic = entered.err();
    }
    let finished_here = match first {
        Poll::Ready(outcome) => Some(outcome),
        // The spawner panicked before the future could finish: nobody will run it.
        Poll::Pending if spawner_panic.is_some() => {
            Some(Err(Error::Abandoned(Abandonment::TaskDropped)))
        }
        Poll::Pending => None,
    };
    let callback_panic = match finished_here {
        Some(outcome) => run_here(task.complete(outcome, true)),
        None => {
            let id = task.id();
            let (spawned, deferred) =
                spawning(id, || catch(|| spawner.spawn(Task::new::<Run, F>(task))));
            spawner_panic = spawned.err();
            deferred.and_then(|run| run())
        }
    };
    if raw && (spawner_panic.is_some() || callback_panic.is_some()) {
        // Nobody will receive the raw pointer: its count goes with the panic.
        handle.give_up_raw();
    }
    if let Some(payload) = spawner_panic {
        if let Some(second) = callback_panic {
            discard(second);
        }
        resume_unwind(payload);
    }
    if let Some(payload) = callback_panic {
        resume_unwind(payload);
    }
    AsyncResult::from_shared(handle)
}

/// Runs a completion's wake-ups on this thread, inside `begin`; returns a panic to
/// re-raise there.
fn run_here<T>(completion: Completion<T>) -> Option<Payload> {
    match completion {
        Ok(wake) => wake.and_then(Wake::run),
        // Cancelled first: the value is dropped here.
        Err(refused) => {
            drop_quietly(refused);
            None
        }
    }
}

/// What a task that completed inside `spawn` left for `start` to run.
type Deferred = Box<dyn FnOnce() -> Option<Payload>>;

/// The operation that `start` is handing to its spawner on this thread, and the
/// wake-ups its completion left there.
struct Spawning {
    id: Option<usize>,
    deferred: Option<Deferred>,
}

// loom's `thread_local!` under loom, so that each loom thread has its own.
crate::sync::thread_local! {
    static SPAWNING: RefCell<Spawning> = RefCell::new(Spawning { id: None, deferred: None });
}

/// Runs `spawn` with operation `id` marked as being spawned on this thread; returns
/// its result and what a completion of that operation inside it deferred. `spawn` must
/// not unwind.
fn spawning<R>(id: Option<usize>, spawn: impl FnOnce() -> R) -> (R, Option<Deferred>) {
    let mark = Spawning { id, deferred: None };
    let Ok(outer) = SPAWNING.try_with(|s| mem::replace(&mut *s.borrow_mut(), mark)) else {
        // This thread's locals are gone (a thread-local destructor began the
        // operation): a completion inside `spawn` is then reported as asynchronous.
        return (spawn(), None);
    };
    let result = spawn();
    let mine = SPAWNING.with(|s| mem::replace(&mut *s.borrow_mut(), outer));
    (result, mine.deferred)
}

/// Whether operation `id` completes inside `spawn`, called by `start` on this thread.
fn inside_begin(id: Option<usize>) -> bool {
    id.is_some() && SPAWNING.try_with(|s| s.borrow().id == id).unwrap_or(false)
}

/// What a spawned task of `start` does: polls the future on the executor and stores
/// its outcome.
struct Run;

impl Driver for Run {
    fn poll<F: Future + 'static>(task: &mut TaskWriter<F>, cx: &mut Context<'_>) -> Poll<()> {
        if task.is_done() {
            return Poll::Ready(());
        }
        // Checks for a `cancel` and, in the same step, registers to be woken by one.
        if task.poll_cancelled(cx).is_ready() {
            // Cancelled: the future is dropped here, on its executor (rule 14).
            task.drop_future();
            return Poll::Ready(());
        }
        match task.poll_future(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(outcome) => {
                finish(task, outcome);
                Poll::Ready(())
            }
        }
    }

    fn drop<F: Future + 'static>(task: &mut TaskWriter<F>) {
        // Dropped inside `spawn` by a spawner that refused it: the operation completes
        // inside Begin. Anywhere else, the `TaskWriter` abandons it by itself.
        if !task.is_done() && inside_begin(task.id()) {
            finish(task, Err(Error::Abandoned(Abandonment::TaskDropped)));
        }
    }
}

/// Stores a task's outcome. Inside `begin` (a spawner that ran or refused the task
/// within `spawn`) that is a synchronous completion whose wake-ups `start` runs once
/// `spawn` has returned; anywhere else they run here, on the executor, where nobody can
/// catch their panics (see `crate::unwind`).
fn finish<F: Future + 'static>(task: &mut TaskWriter<F>, outcome: Result<F::Output, Error>) {
    let synchronous = inside_begin(task.id());
    match task.complete(outcome, synchronous) {
        Ok(Some(wake)) if synchronous => {
            let deferred: Deferred = Box::new(move || wake.run());
            SPAWNING.with(|s| s.borrow_mut().deferred = Some(deferred));
        }
        Ok(Some(wake)) => wake.run_quietly(),
        Ok(None) => {}
        // Cancelled first: the value is dropped here.
        Err(refused) => drop_quietly(refused),
    }
}
