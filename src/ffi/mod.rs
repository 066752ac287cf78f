//! Wrapping C callback APIs into futures (feature `ffi`).
//!
//! Most C libraries start an operation with `start(args..., callback, void *user_data)`
//! and later call `callback(..., user_data)` once, on a thread of their own. [`from_c`]
//! turns that into a future:
//!
//! - The `user_data` it hands to `start` ([`UserData`]) names the operation by number (a
//!   slot and a generation), not by address: the callback gives it back to
//!   [`UserData::complete`], which finds the operation once. A second call, or one after
//!   the operation was given up, finds nothing and is refused: nothing is freed twice,
//!   nothing is read after it was freed, and [`refused_callbacks`] counts it.
//! - [`trampoline`] and [`trampoline_last`] are ready-made `extern "C"` callbacks for the
//!   two commonest shapes, `void cb(void *user_data, T value)` and
//!   `void cb(T value, void *user_data)`; other shapes write a three-line one.
//! - What `start` returns (the request the library writes to, say) is kept until the
//!   callback has come. Dropping the future first runs the cancel hook
//!   ([`FromC::on_cancel`], where libuv's `uv_cancel` goes) and leaves that request for
//!   the callback to drop when it confirms, so that the library never writes to freed
//!   memory.
//! - A library that promises the callback will never come (c-ares on destroy, libuv's
//!   `uv_close` of a handle with pending requests) says so with [`UserData::never`]: the
//!   future ends with `Abandoned(CallbackDropped)` and the request is dropped.
//!
//! # Examples
//!
//! A C library with a worker thread, written in Rust here:
//!
//! ```
//! use std::ffi::c_void;
//!
//! /// `int lib_double(int x, void (*cb)(void *user_data, int result), void *user_data)`:
//! /// returns 0 and calls `cb` later from another thread, or -1 at once for a negative `x`.
//! extern "C" fn lib_double(x: i32, cb: extern "C" fn(*mut c_void, i32), user_data: *mut c_void) -> i32 {
//!     if x < 0 {
//!         return -1;
//!     }
//!     let user_data = user_data as usize;
//!     std::thread::spawn(move || cb(user_data as *mut c_void, 2 * x));
//!     0
//! }
//!
//! async fn double(x: i32) -> Result<i32, apm_tap::Error> {
//!     apm_tap::ffi::from_c(|user_data| {
//!         match lib_double(x, apm_tap::ffi::trampoline::<i32>, user_data.as_ptr()) {
//!             0 => Ok(()),        // the callback will come
//!             failed => Err(failed), // it will not: this is the result
//!         }
//!     })
//!     .await
//! }
//!
//! futures::executor::block_on(async {
//!     assert_eq!(double(21).await, Ok(42));
//!     assert_eq!(double(-1).await, Ok(-1));
//! });
//! ```

use std::ffi::c_void;
use std::fmt;
use std::future::Future;
use std::mem;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::FusedFuture;

use crate::track::{Kind, Origin};
use crate::unwind::{drop_quietly, drop_quietly_if_some, quietly};
use crate::{Abandonment, AsyncCallback, AsyncResult, Completer, Error, State};

mod registry;

use registry::Taken;

/// The `void *user_data` of one operation: a number that names it, handed to the C
/// library as a pointer that is never dereferenced.
///
/// # Examples
///
/// ```
/// use apm_tap::ffi::UserData;
///
/// assert_eq!(UserData::from_ptr(std::ptr::null_mut()), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserData(NonZeroUsize);

impl UserData {
    /// The pointer to give the C library.
    ///
    /// # Examples
    ///
    /// See the [module docs](self).
    pub fn as_ptr(self) -> *mut c_void {
        // A number carried as a pointer: never dereferenced, so no provenance is needed.
        std::ptr::without_provenance_mut(self.0.get())
    }

    /// The user data a callback received; `None` for `NULL`.
    ///
    /// # Examples
    ///
    /// See [`complete`](Self::complete).
    pub fn from_ptr(ptr: *mut c_void) -> Option<UserData> {
        NonZeroUsize::new(ptr.addr()).map(UserData)
    }

    /// Completes the operation with `value`: what the C callback calls. Its future
    /// wakes; what `start` returned is dropped once the future is done with it. Call
    /// it when the callback no longer needs that (the library's request): it may be
    /// dropped by then.
    ///
    /// Never panics, and never unwinds into the C library: safe in an `extern "C"`
    /// function.
    ///
    /// # Errors
    ///
    /// Hands `value` back, counted by [`refused_callbacks`]: [`Refused::Stale`] if no
    /// operation has this user data any more (a second call of the callback, or one
    /// after [`never`](Self::never)), [`Refused::WrongType`] if its result type is not
    /// `T`. A completed operation whose future was dropped accepts the value and drops
    /// it.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::ffi::{from_c, Refused, UserData};
    /// use std::ffi::c_void;
    ///
    /// extern "C" fn callback(user_data: *mut c_void, value: u32) {
    ///     let user_data = UserData::from_ptr(user_data).unwrap();
    ///     assert_eq!(user_data.complete(value), Ok(()));
    ///     // A buggy library calls back twice: refused, nothing freed twice.
    ///     assert_eq!(user_data.complete(value), Err(Refused::Stale(value)));
    /// }
    ///
    /// let future = from_c(|user_data| {
    ///     callback(user_data.as_ptr(), 8); // a library that calls back inside start
    ///     Ok::<(), u32>(())
    /// });
    /// assert_eq!(futures::executor::block_on(future), Ok(8));
    /// ```
    pub fn complete<T: Send + 'static>(self, value: T) -> Result<(), Refused<T>> {
        match registry::take::<T>(self.0.get()) {
            Taken::Completer(completer) => {
                // Refused only when the future was dropped: nobody wants the value.
                if let Err(unwanted) = completer.complete(value) {
                    drop_quietly(unwanted);
                }
                Ok(())
            }
            Taken::Stale => Err(Refused::Stale(value)),
            Taken::WrongType => Err(Refused::WrongType(value)),
        }
    }

    /// Says the callback will never come: the future ends with
    /// `Err(Error::Abandoned(Abandonment::CallbackDropped))`, and what `start` returned is
    /// dropped. `T` is the operation's result type.
    ///
    /// # Errors
    ///
    /// As [`complete`](Self::complete), with nothing to hand back.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{ffi, Abandonment, Error};
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let future = ffi::from_c(move |user_data| {
    ///     tx.send(user_data).unwrap(); // the library keeps it
    ///     Ok::<(), i32>(())
    /// });
    /// let waiter = std::thread::spawn(move || futures::executor::block_on(future));
    /// let user_data = rx.recv().unwrap();
    /// user_data.never::<i32>().unwrap(); // the library was destroyed
    /// assert_eq!(waiter.join().unwrap(), Err(Error::Abandoned(Abandonment::CallbackDropped)));
    /// ```
    pub fn never<T: Send + 'static>(self) -> Result<(), Refused<()>> {
        match registry::take::<T>(self.0.get()) {
            Taken::Completer(completer) => {
                completer.abandon(Abandonment::CallbackDropped);
                Ok(())
            }
            Taken::Stale => Err(Refused::Stale(())),
            Taken::WrongType => Err(Refused::WrongType(())),
        }
    }
}

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserData({:#x})", self.0)
    }
}

/// Why a callback's value was refused, with the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused<T> {
    /// No operation has this user data: the callback already came (this is a second
    /// call), or the library said it never would.
    #[error("no operation has this user data: a second or late callback")]
    Stale(T),
    /// The operation's result type is another.
    #[error("the operation of this user data has another result type")]
    WrongType(T),
}

/// How many callbacks this process refused (see [`UserData::complete`]): a number to
/// log or assert on, since a C library that calls back twice has a bug.
///
/// # Examples
///
/// ```
/// let before = apm_tap::ffi::refused_callbacks();
/// let user_data = apm_tap::ffi::UserData::from_ptr(std::ptr::without_provenance_mut(4)).unwrap();
/// assert!(user_data.complete(1_u8).is_err());
/// assert!(apm_tap::ffi::refused_callbacks() > before);
/// ```
pub fn refused_callbacks() -> usize {
    registry::refused()
}

/// A ready-made C callback `void cb(void *user_data, T value)`: completes the operation
/// of `user_data` with `value`, or refuses it (see [`UserData::complete`]). `T` is the
/// C type of the value (an integer, a pointer, a `#[repr(C)]` struct).
///
/// # Examples
///
/// See the [module docs](self).
pub extern "C" fn trampoline<T: Send + 'static>(user_data: *mut c_void, value: T) {
    deliver(user_data, value);
}

/// A ready-made C callback `void cb(T value, void *user_data)`, as [`trampoline`].
///
/// # Examples
///
/// ```
/// use std::ffi::c_void;
///
/// let future = apm_tap::ffi::from_c(|user_data| {
///     let cb: extern "C" fn(i64, *mut c_void) = apm_tap::ffi::trampoline_last::<i64>;
///     cb(-3, user_data.as_ptr());
///     Ok::<(), i64>(())
/// });
/// assert_eq!(futures::executor::block_on(future), Ok(-3));
/// ```
pub extern "C" fn trampoline_last<T: Send + 'static>(value: T, user_data: *mut c_void) {
    deliver(user_data, value);
}

/// What both trampolines do; nothing unwinds into C.
fn deliver<T: Send + 'static>(user_data: *mut c_void, value: T) {
    match UserData::from_ptr(user_data) {
        Some(user_data) => {
            if let Err(refused) = user_data.complete(value) {
                drop_quietly(refused);
            }
        }
        None => quietly(move || {
            registry::refuse();
            drop(value);
        }),
    }
}

/// Starts a C library's operation and awaits its callback: the future of the C shape
/// `start(args..., callback, user_data)`. See the [module docs](self).
///
/// `start` runs on the first poll with the operation's [`UserData`]. It returns
/// `Ok(request)` once the library accepted the operation (the callback will come;
/// `request` is kept until it has), or `Err(value)` if the library refused it at once (the
/// callback will never come; the future's result is `value`).
///
/// # Panics
///
/// A panic of `start` propagates to the poll, after the operation is given up.
///
/// # Cancel safety
///
/// Dropping the future before the callback cancels the operation: the
/// [`on_cancel`](FromC::on_cancel) hook runs with the request, which is then kept until
/// the callback comes (or [`UserData::never`]), and the callback's value is dropped.
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn from_c<T, S, F>(start: F) -> FromC<T, S, F>
where
    T: Send + 'static,
    S: Send + 'static,
    F: FnOnce(UserData) -> Result<S, T>,
{
    FromC {
        stage: Stage::Start(start),
        on_cancel: None,
        origin: Origin::caller(Kind::FromCallback),
    }
}

/// Future for the [`from_c`] function.
#[must_use = "futures do nothing unless polled; dropping this one before completion cancels the operation"]
pub struct FromC<T, S, F, H = fn(&mut S)>
where
    T: Send + 'static,
    S: Send + 'static,
    H: FnOnce(&mut S),
{
    stage: Stage<T, S, F>,
    on_cancel: Option<H>,
    /// Where the future was made, for the operation's record.
    origin: Origin,
}

enum Stage<T, S, F> {
    Start(F),
    /// Started: the operation's handle, its user data, and the request kept until the
    /// callback has come.
    Waiting(AsyncResult<T>, UserData, Option<S>),
    Moved,
}

impl<T: Send + 'static, S: Send + 'static, F> FromC<T, S, F> {
    /// Sets the hook run, once, with the request when the future is dropped before the
    /// callback came: the place to call the library's cancel (`uv_cancel`). It runs on
    /// the dropping thread; a panic in it is discarded (it runs inside `drop`). The
    /// request stays alive afterwards, until the callback confirms.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::FutureExt;
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let mut future = apm_tap::ffi::from_c(move |user_data| {
    ///     tx.send(user_data).unwrap(); // the library will call back later
    ///     Ok::<u32, u8>(17) // the library's request id
    /// })
    /// .on_cancel(|request: &mut u32| assert_eq!(*request, 17)); // the library's cancel
    /// assert!((&mut future).now_or_never().is_none());
    /// drop(future);
    /// // The library confirms the cancel by calling back: accepted, the value dropped.
    /// assert_eq!(rx.recv().unwrap().complete(0_u8), Ok(()));
    /// ```
    pub fn on_cancel<H>(mut self, hook: H) -> FromC<T, S, F, H>
    where
        H: FnOnce(&mut S),
    {
        FromC {
            stage: mem::replace(&mut self.stage, Stage::Moved),
            on_cancel: Some(hook),
            origin: self.origin,
        }
    }
}

// `start` is moved out before it runs, never pinned; the request is never pinned.
impl<T: Send + 'static, S: Send + 'static, F, H: FnOnce(&mut S)> Unpin for FromC<T, S, F, H> {}

/// Gives the operation up if `start` unwinds, so that its slot does not outlive it.
struct GiveUp<T: Send + 'static>(Option<UserData>, std::marker::PhantomData<T>);

impl<T: Send + 'static> Drop for GiveUp<T> {
    fn drop(&mut self) {
        if let Some(user_data) = self.0 {
            // The completer dropped here completes the operation with `Abandoned`.
            let _ = user_data.never::<T>();
        }
    }
}

impl<T, S, F, H> Future for FromC<T, S, F, H>
where
    T: Send + 'static,
    S: Send + 'static,
    F: FnOnce(UserData) -> Result<S, T>,
    H: FnOnce(&mut S),
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Stage::Start(_) = this.stage {
            let Stage::Start(start) = mem::replace(&mut this.stage, Stage::Moved) else {
                unreachable!("matched just above")
            };
            let (completer, handle) =
                Completer::with(AsyncCallback::none(), State::none(), this.origin);
            let key = registry::insert(completer);
            let user_data = UserData(NonZeroUsize::new(key).expect("keys are never 0"));
            let mut give_up = GiveUp::<T>(Some(user_data), std::marker::PhantomData);
            let started = start(user_data);
            give_up.0 = None;
            let request = match started {
                Ok(request) => Some(request),
                Err(value) => {
                    // Refused at once: the callback will not come (if it came already,
                    // its value stands).
                    if let Err(refused) = user_data.complete(value) {
                        drop_quietly(refused);
                    }
                    None
                }
            };
            this.stage = Stage::Waiting(handle, user_data, request);
        }
        let Stage::Waiting(handle, _, request) = &mut this.stage else {
            unreachable!("started just above")
        };
        let polled = handle.poll_end(cx);
        if polled.is_ready() {
            // The callback came (or never will): the library is done with the request.
            drop_quietly_if_some(request.take());
        }
        polled
    }
}

impl<T, S, F, H> FusedFuture for FromC<T, S, F, H>
where
    T: Send + 'static,
    S: Send + 'static,
    F: FnOnce(UserData) -> Result<S, T>,
    H: FnOnce(&mut S),
{
    fn is_terminated(&self) -> bool {
        matches!(&self.stage, Stage::Waiting(handle, ..) if handle.is_terminated())
    }
}

impl<T: Send + 'static, S: Send + 'static, F, H: FnOnce(&mut S)> Drop for FromC<T, S, F, H> {
    /// Before the callback: runs the hook, then leaves the request for the callback to
    /// drop. Never unwinds.
    fn drop(&mut self) {
        let on_cancel = self.on_cancel.take();
        let Stage::Waiting(handle, user_data, request) =
            mem::replace(&mut self.stage, Stage::Moved)
        else {
            drop_quietly(on_cancel);
            return;
        };
        let Some(mut request) = request else {
            drop_quietly(on_cancel);
            return;
        };
        // Only a cancel that wins against the callback runs the hook; the request then
        // waits for the callback.
        if !handle.cancel_pending() {
            drop_quietly((request, on_cancel));
            return;
        }
        if let Some(hook) = on_cancel {
            quietly(|| hook(&mut request));
        }
        if let Err(request) = registry::orphan(user_data.0.get(), Box::new(request)) {
            drop_quietly(request);
        }
    }
}

impl<T: Send + 'static, S: Send + 'static, F, H: FnOnce(&mut S)> fmt::Debug for FromC<T, S, F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user_data = match &self.stage {
            Stage::Waiting(_, user_data, _) => Some(*user_data),
            _ => None,
        };
        f.debug_struct("FromC")
            .field("user_data", &user_data)
            .finish_non_exhaustive()
    }
}
