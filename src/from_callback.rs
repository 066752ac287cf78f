//! A plain single-shot completion callback to a future (Node's `util.promisify`).

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::FusedFuture;

use crate::track::{Kind, Origin};
use crate::unwind::{drop_quietly, drop_quietly_if_some, quietly};
use crate::{AsyncCallback, AsyncResult, Completer, Error, State};

/// Turns a function that reports its result through a completion callback into a
/// future.
///
/// On the first poll, `start` runs once with a [`Completer`]; the legacy code calls
/// [`Completer::complete`] with the value from any thread, at any time (inside `start`
/// too). A callback that delivers several values completes with a tuple. The future
/// resolves to `Ok(value)`, or to [`Error::Abandoned`] if the completer is dropped
/// unused. No runtime is needed.
///
/// What `start` returns (say, the legacy request to cancel) is kept until the
/// operation completes: dropping the future before that cancels the operation
/// ([`Completer::is_cancelled`] turns true, a late `complete` hands its value back) and
/// gives it to the [`on_cancel`](FromCallback::on_cancel) hook, the place to call the
/// legacy Cancel.
///
/// # Panics
///
/// A panic in `start` propagates out of `poll`; the completer it dropped completes the
/// operation with `Abandoned`. What `start` returned is dropped by the `poll` that
/// returns the result; a panic in its `Drop` is discarded, and the result returned.
///
/// # Examples
///
/// ```
/// // Legacy: reports (status, body) through a callback on another thread.
/// fn fetch(url: &str, callback: impl FnOnce(u16, String) + Send + 'static) {
///     let body = format!("<html>{url}</html>");
///     std::thread::spawn(move || callback(200, body));
/// }
///
/// # futures::executor::block_on(async {
/// let response = apm_tap::from_callback(|done| {
///     fetch("example", move |status, body| {
///         let _ = done.complete((status, body));
///     })
/// })
/// .await;
/// assert_eq!(response, Ok((200, "<html>example</html>".to_owned())));
/// # });
/// ```
#[doc(alias = "promisify")]
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn from_callback<F, T, R>(start: F) -> FromCallback<F, T, R>
where
    F: FnOnce(Completer<T>) -> R,
{
    FromCallback {
        stage: Stage::Start(start),
        on_cancel: None,
        origin: Origin::caller(Kind::FromCallback),
    }
}

/// Future for the [`from_callback`] function.
///
/// # Examples
///
/// ```
/// let future = apm_tap::from_callback(|done| done.complete(3).unwrap());
/// assert_eq!(futures::executor::block_on(future), Ok(3));
/// ```
///
/// Equivalent to:
///
/// ```text
/// async fn from_callback(start) -> Result<T, Error> {
///     let (completer, handle) = Completer::new();
///     let registration = start(completer);
///     handle.await // dropped before this: handle.cancel(); on_cancel(registration)
/// }
/// ```
#[must_use = "futures do nothing unless polled; dropping this one before completion cancels the operation"]
pub struct FromCallback<F, T, R = (), C = fn(R)>
where
    C: FnOnce(R),
{
    stage: Stage<F, T, R>,
    on_cancel: Option<C>,
    /// Where the future was made, for the operation's record.
    origin: Origin,
}

enum Stage<F, T, R> {
    Start(F),
    /// `start` is running (`None`) or returned the registration, kept until the
    /// operation completes.
    Waiting(AsyncResult<T>, Option<R>),
    /// Only while `on_cancel` moves the stage into a new future.
    Moved,
}

impl<F, T, R> FromCallback<F, T, R> {
    /// Sets the hook run, once, with what `start` returned when the future is dropped
    /// before the operation completed: the place to call the legacy Cancel. It runs on
    /// the dropping thread; a panic in it is discarded (it runs inside `drop`).
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    /// use std::sync::mpsc;
    ///
    /// /// Legacy: starts a request and returns its id; the callback comes later.
    /// fn start_request(done: apm_tap::Completer<String>, pending: &mpsc::Sender<apm_tap::Completer<String>>) -> u32 {
    ///     pending.send(done).unwrap();
    ///     17
    /// }
    ///
    /// let (pending, requests) = mpsc::channel();
    /// let (cancelled, cancel_calls) = mpsc::channel();
    /// let mut future = apm_tap::from_callback(move |done| start_request(done, &pending))
    ///     .on_cancel(move |id: u32| cancelled.send(id).unwrap());
    /// assert!((&mut future).now_or_never().is_none());
    /// drop(future);
    /// assert_eq!(cancel_calls.recv().unwrap(), 17); // the legacy Cancel got the id
    /// let late = requests.recv().unwrap();
    /// assert!(late.is_cancelled());
    /// assert_eq!(late.complete("too late".into()), Err("too late".into()));
    /// ```
    pub fn on_cancel<C>(mut self, hook: C) -> FromCallback<F, T, R, C>
    where
        C: FnOnce(R),
    {
        FromCallback {
            stage: mem::replace(&mut self.stage, Stage::Moved),
            on_cancel: Some(hook),
            origin: self.origin,
        }
    }
}

// `start` is moved out before it runs, never pinned.
impl<F, T, R, C: FnOnce(R)> Unpin for FromCallback<F, T, R, C> {}

impl<F, T, R, C> Future for FromCallback<F, T, R, C>
where
    F: FnOnce(Completer<T>) -> R,
    C: FnOnce(R),
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Stage::Start(_) = this.stage {
            let (completer, handle) =
                Completer::with(AsyncCallback::none(), State::none(), this.origin);
            // The handle is in place before `start` runs: if `start` panics, the
            // completer it dropped has completed the operation with `Abandoned`, which
            // a later poll reports.
            let Stage::Start(start) = mem::replace(&mut this.stage, Stage::Waiting(handle, None))
            else {
                unreachable!("matched just above")
            };
            let registration = start(completer);
            if let Stage::Waiting(_, slot) = &mut this.stage {
                *slot = Some(registration);
            }
        }
        let Stage::Waiting(handle, registration) = &mut this.stage else {
            unreachable!("started just above")
        };
        let polled = handle.poll_end(cx);
        if polled.is_ready() {
            // Complete: the registration has served. Its `Drop` must not cost the
            // result just taken: a panic there is discarded.
            drop_quietly_if_some(registration.take());
        }
        polled
    }
}

impl<F, T, R, C> FusedFuture for FromCallback<F, T, R, C>
where
    F: FnOnce(Completer<T>) -> R,
    C: FnOnce(R),
{
    fn is_terminated(&self) -> bool {
        matches!(&self.stage, Stage::Waiting(handle, _) if handle.is_terminated())
    }
}

impl<F, T, R, C: FnOnce(R)> Drop for FromCallback<F, T, R, C> {
    /// Before completion: cancels the operation and runs the hook. Never unwinds: the
    /// hook's panic, and those of values dropped here, are discarded.
    fn drop(&mut self) {
        if let (Stage::Waiting(handle, None), None) = (&self.stage, &self.on_cancel) {
            if handle.is_terminated() {
                // Done, without a hook: only the handle is left, whose drop never
                // unwinds.
                return;
            }
        }
        let on_cancel = self.on_cancel.take();
        match mem::replace(&mut self.stage, Stage::Moved) {
            Stage::Waiting(handle, registration) => {
                // Only a cancel that wins against a completion runs the hook.
                let cancelled = handle.cancel_pending();
                match (on_cancel, registration) {
                    (Some(hook), Some(registration)) if cancelled => {
                        quietly(move || hook(registration));
                    }
                    unused => drop_quietly(unused),
                }
                // A handle's drop never unwinds.
                drop(handle);
            }
            Stage::Start(start) => drop_quietly((start, on_cancel)),
            Stage::Moved => drop_quietly(on_cancel),
        }
    }
}

impl<F, T, R, C: FnOnce(R)> fmt::Debug for FromCallback<F, T, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromCallback")
            .field("started", &matches!(self.stage, Stage::Waiting(..)))
            .finish()
    }
}
