//! A plain single-shot completion callback to a future (Node's `util.promisify`).

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::{AsyncResult, Completer, Error};

/// Turns a function that reports its result through a completion callback into a
/// future.
///
/// On the first poll, `start` runs once with a [`Completer`]; the legacy code calls
/// [`Completer::complete`] with the value from any thread, at any time (inside `start`
/// too). A callback that delivers several values completes with a tuple. The future
/// resolves to `Ok(value)`, or to [`Error::Abandoned`] if the completer is dropped
/// unused. Dropping the future first drops the value when it arrives. No runtime is
/// needed.
///
/// # Panics
///
/// A panic in `start` propagates out of `poll`.
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
pub fn from_callback<F, T>(start: F) -> FromCallback<F, T>
where
    F: FnOnce(Completer<T>),
{
    FromCallback {
        stage: Stage::Start(start),
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
///     start(completer);
///     handle.await
/// }
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct FromCallback<F, T> {
    stage: Stage<F, T>,
}

/// Two variants only, so that the future is as small as it can be (the handle's non-null
/// pointer tells them apart): futures are moved around a lot.
enum Stage<F, T> {
    Start(F),
    Waiting(AsyncResult<T>),
}

// `start` is moved out before it runs, never pinned.
impl<F, T> Unpin for FromCallback<F, T> {}

impl<F, T> Future for FromCallback<F, T>
where
    F: FnOnce(Completer<T>),
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Stage::Start(_) = this.stage {
            let (completer, handle) = Completer::new();
            // The handle is in place before `start` runs: if `start` panics, the completer
            // it dropped has completed the operation with `Abandoned`.
            if let Stage::Start(start) = mem::replace(&mut this.stage, Stage::Waiting(handle)) {
                start(completer);
            }
        }
        match &mut this.stage {
            Stage::Waiting(handle) => handle.poll_end(cx),
            Stage::Start(_) => unreachable!("started just above"),
        }
    }
}

impl<F, T> fmt::Debug for FromCallback<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FromCallback")
            .field("started", &matches!(self.stage, Stage::Waiting(_)))
            .finish()
    }
}
