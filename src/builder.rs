//! Options for an operation that the zero-option constructors leave out: its callback,
//! its state and, for a future, its executor.

use std::fmt;
use std::future::Future;
use std::ptr::NonNull;

use crate::runtime::Spawner;
use crate::track::{Kind, Origin};
use crate::{to_apm, AnyAsyncResult, AsyncCallback, AsyncResult, Completer, Dispatch, State};

/// Starts an operation with a callback, a state or a chosen executor: the options that
/// [`begin`](crate::begin) and [`Completer::new`] leave out, the way
/// `std::thread::Builder` adds to `std::thread::spawn`.
///
/// A Begin method receives the caller's callback and state and hands them on:
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, AsyncResult, Builder, State};
/// use std::sync::mpsc;
///
/// // Future -> APM: the Begin method of an async fn.
/// fn begin_len(s: String, callback: AsyncCallback<usize>, state: State) -> AsyncResult<usize> {
///     Builder::new().callback(callback).state(state).begin(async move { s.len() })
/// }
///
/// let (tx, rx) = mpsc::channel();
/// let handle = begin_len(
///     "four".into(),
///     AsyncCallback::new(move |h: AsyncResult<usize>| tx.send(h.end()).unwrap()),
///     State::new("request 1"),
/// );
/// assert_eq!(handle.state().downcast_ref::<&str>(), Some(&"request 1"));
/// assert_eq!(rx.recv().unwrap(), Ok(4));
///
/// // A hand-written Begin method: the completer finishes the operation.
/// fn begin_double(x: u32, callback: AsyncCallback<u32>, state: State) -> AsyncResult<u32> {
///     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
///     std::thread::spawn(move || completer.complete(x * 2));
///     handle
/// }
/// assert_eq!(begin_double(21, AsyncCallback::none(), State::none()).end(), Ok(42));
/// ```
#[must_use = "a builder does nothing until `begin` or `completer` is called"]
pub struct Builder<'a, T> {
    callback: AsyncCallback<T>,
    state: State,
    spawner: Option<&'a dyn Spawner>,
    /// Set by [`dispatch`](Builder::dispatch): makes the callback run where the policy
    /// says, applied when the operation starts (so before or after `callback`).
    dispatch: Option<Redirect<T>>,
}

/// What [`Builder::dispatch`] does to the callback: the policy, and the function that
/// applies it (made where `T: Send + 'static` is known).
type Redirect<T> = (Dispatch, fn(Dispatch, AsyncCallback<T>) -> AsyncCallback<T>);

impl<T> Builder<'static, T> {
    /// No callback, no state, the ambient or default executor.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::Builder::new().begin(async { 1 });
    /// assert_eq!(handle.end(), Ok(1));
    /// ```
    pub fn new() -> Self {
        Builder {
            callback: AsyncCallback::none(),
            state: State::none(),
            spawner: None,
            dispatch: None,
        }
    }
}

impl<T> Default for Builder<'static, T> {
    fn default() -> Self {
        Builder::new()
    }
}

impl<'a, T> Builder<'a, T> {
    /// The callback to run once when the operation completes (`AsyncCallback` in .NET):
    /// an [`AsyncCallback`], or any `FnOnce(AsyncResult<T>) + Send + 'static`. A
    /// closure states its argument's type (`|h: AsyncResult<u8>|`): this method takes
    /// either kind, so the compiler cannot infer it.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncResult, Builder};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let _handle = Builder::new()
    ///     .callback(move |h: AsyncResult<u8>| tx.send(h.end()).unwrap())
    ///     .begin(async { 5 });
    /// assert_eq!(rx.recv().unwrap(), Ok(5));
    /// ```
    pub fn callback(self, callback: impl Into<AsyncCallback<T>>) -> Self {
        Builder {
            callback: callback.into(),
            ..self
        }
    }

    /// The state every handle of the operation returns from
    /// [`AsyncResult::state`] (`AsyncState` in .NET).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{Builder, State};
    ///
    /// let handle = Builder::new().state(State::new(7_u8)).begin(async {});
    /// assert_eq!(handle.state().downcast_ref::<u8>(), Some(&7));
    /// ```
    pub fn state(self, state: State) -> Self {
        Builder { state, ..self }
    }

    /// The executor [`begin`](Self::begin) runs the future on: a tokio `Handle` or
    /// `Runtime`, or any [`Spawner`]. Without one, the ambient tokio runtime or the
    /// crate's default runtime.
    ///
    /// # Examples
    ///
    /// ```
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let handle = apm_tap::Builder::new()
    ///     .spawner(&runtime)
    ///     .begin(async { tokio::task::yield_now().await; 'k' });
    /// assert_eq!(handle.end(), Ok('k'));
    /// ```
    pub fn spawner<'b>(self, spawner: &'b dyn Spawner) -> Builder<'b, T> {
        Builder {
            callback: self.callback,
            state: self.state,
            spawner: Some(spawner),
            dispatch: self.dispatch,
        }
    }

    /// Starts `future` with these options, as [`begin`](crate::begin) does.
    ///
    /// # Panics
    ///
    /// Propagates a panic of the callback when the operation completes inside this call
    /// (after the result is stored), and of the spawner (as [`begin_on`](crate::begin_on)
    /// says). Panics if the default runtime is needed and cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::Builder::new().begin(async { "done" });
    /// assert!(handle.completed_synchronously());
    /// assert_eq!(handle.end(), Ok("done"));
    /// ```
    #[doc(alias = "TaskToAsyncResult")]
    #[cfg_attr(feature = "diagnostics", track_caller)]
    pub fn begin<F>(self, future: F) -> AsyncResult<T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let origin = Origin::caller(Kind::Begin);
        let (callback, state, spawner) = self.into_parts();
        match spawner {
            Some(spawner) => to_apm::start(spawner, future, callback, state, false, origin),
            None => to_apm::start_here(future, callback, state, false, origin),
        }
    }

    /// [`begin`](Self::begin), with the handle given out as the operation's raw pointer
    /// (as [`AnyAsyncResult::into_raw`] gives it) from the start: before the first poll,
    /// so that a callback that runs inside Begin can already take it back with
    /// [`AnyAsyncResult::from_raw`]. What a Begin function exported to C returns.
    ///
    /// The pointer may no longer be valid when this returns, if the callback took it
    /// back and nothing else keeps the operation: a caller that lets its callback end
    /// the operation must not use it.
    ///
    /// # Panics
    ///
    /// As [`begin`](Self::begin).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AnyAsyncResult, Builder};
    ///
    /// let raw = Builder::new().begin_raw(async { 5_u8 });
    /// // SAFETY: nothing else took the raw handle back, so the operation is alive.
    /// let handle = unsafe { AnyAsyncResult::from_raw(raw) }.unwrap();
    /// assert_eq!(handle.downcast::<u8>().unwrap().end(), Ok(5));
    /// ```
    #[cfg_attr(feature = "diagnostics", track_caller)]
    pub fn begin_raw<F>(self, future: F) -> NonNull<()>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let origin = Origin::caller(Kind::Begin);
        let (callback, state, spawner) = self.into_parts();
        let handle = match spawner {
            Some(spawner) => to_apm::start(spawner, future, callback, state, true, origin),
            None => to_apm::start_here(future, callback, state, true, origin),
        };
        AnyAsyncResult::assume_raw(handle)
    }

    /// Makes a pending operation with these options: the [`Completer`] that finishes
    /// it, and the handle Begin returns. The spawner, if any, is not used.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncResult, Builder, State};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let (completer, handle) = Builder::new()
    ///     .callback(move |h: AsyncResult<u8>| tx.send(h.completed_synchronously()).unwrap())
    ///     .state(State::new("mine"))
    ///     .completer();
    /// completer.complete(1).unwrap();
    /// assert_eq!(rx.recv().unwrap(), false);
    /// assert_eq!(handle.state().downcast_ref::<&str>(), Some(&"mine"));
    /// ```
    #[cfg_attr(feature = "diagnostics", track_caller)]
    pub fn completer(self) -> (Completer<T>, AsyncResult<T>) {
        let origin = Origin::caller(Kind::Completer);
        let (callback, state, _) = self.into_parts();
        Completer::with(callback, state, origin)
    }

    /// The callback (redirected as [`dispatch`](Builder::dispatch) said), the state and
    /// the spawner.
    fn into_parts(self) -> (AsyncCallback<T>, State, Option<&'a dyn Spawner>) {
        let callback = match self.dispatch {
            Some((dispatch, wrap)) => wrap(dispatch, self.callback),
            None => self.callback,
        };
        (callback, self.state, self.spawner)
    }

    /// Stores what [`dispatch`](Builder::dispatch) does to the callback (`None`:
    /// nothing, the callback runs inline).
    pub(crate) fn with_dispatch(self, redirect: Option<Redirect<T>>) -> Self {
        Builder {
            dispatch: redirect,
            ..self
        }
    }
}

impl<T> fmt::Debug for Builder<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("callback", &self.callback)
            .field("state", &self.state)
            .field("spawner", &self.spawner.map(|_| ".."))
            .finish()
    }
}
