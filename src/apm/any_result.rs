use std::fmt;
use std::ptr::NonNull;
use std::time::Duration;

use super::async_result::wait;
use crate::cell::AnyShared;
use crate::{AsyncResult, Error, State};

/// The handle of an operation whose output type is erased: .NET's `IAsyncResult`, which
/// is not generic either. One pointer, so that a C caller can hold it
/// ([`into_raw`](Self::into_raw)), and a list can hold operations of different types.
///
/// It does what a handle does without its value: report completion, state and
/// `completed_synchronously`, wait, cancel. To end the operation, get the typed
/// [`AsyncResult`] back with [`downcast`](Self::downcast), as a typed `EndXxx` does.
///
/// Only the handle of an operation that runs a future ([`begin`](crate::begin),
/// [`begin_on`](crate::begin_on), [`Builder::begin`](crate::Builder::begin)) can be
/// erased: its allocation has room for the functions an erased handle calls, so that
/// erasing costs nothing.
///
/// # Examples
///
/// ```
/// use apm_tap::{AnyAsyncResult, Error};
///
/// let pending: Vec<AnyAsyncResult> = vec![
///     apm_tap::begin(async { 1_u8 }).into_any().unwrap(),
///     apm_tap::begin(async { "two" }).into_any().unwrap(),
/// ];
/// for handle in &pending {
///     handle.wait().unwrap();
/// }
/// let mut pending = pending.into_iter();
/// let one = pending.next().unwrap().downcast::<u8>().unwrap();
/// assert_eq!(one.end(), Ok(1));
/// let two = pending.next().unwrap();
/// assert!(!two.is::<u8>());
/// assert_eq!(two.downcast::<&str>().unwrap().end(), Ok("two"));
/// ```
#[doc(alias = "IAsyncResult")]
#[derive(Clone)]
pub struct AnyAsyncResult {
    cell: AnyShared,
}

impl<T: Send + 'static> AsyncResult<T> {
    /// Erases the output type.
    ///
    /// # Errors
    ///
    /// Hands the handle back when the operation does not run a future (a
    /// [`Completer`](crate::Completer)'s): only a future's operation has room for what an
    /// erased handle needs. Wrap it in one to erase it: `begin(handle)`.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { 7 });
    /// let erased = handle.into_any().unwrap();
    /// assert!(erased.is::<i32>());
    ///
    /// let (_completer, handle) = apm_tap::Completer::<i32>::new();
    /// assert!(handle.into_any().is_err());
    /// ```
    pub fn into_any(self) -> Result<AnyAsyncResult, AsyncResult<T>> {
        match self.shared().clone().into_any() {
            Ok(cell) => Ok(AnyAsyncResult { cell }),
            Err(_) => Err(self),
        }
    }
}

impl AnyAsyncResult {
    /// Whether the operation has finished, as [`AsyncResult::is_completed`].
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { 1 }).into_any().unwrap();
    /// assert!(handle.is_completed());
    /// ```
    #[doc(alias = "IsCompleted")]
    pub fn is_completed(&self) -> bool {
        self.cell.is_completed()
    }

    /// Whether the operation completed inside Begin, as
    /// [`AsyncResult::completed_synchronously`].
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { 1 }).into_any().unwrap();
    /// assert!(handle.completed_synchronously());
    /// ```
    #[doc(alias = "CompletedSynchronously")]
    pub fn completed_synchronously(&self) -> bool {
        self.cell.completed_synchronously()
    }

    /// The caller's state given to Begin, as [`AsyncResult::state`].
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{Builder, State};
    ///
    /// let handle = Builder::new().state(State::new(5_u32)).begin(async {});
    /// let handle = handle.into_any().unwrap();
    /// assert_eq!(handle.state().downcast_ref::<u32>(), Some(&5));
    /// ```
    #[doc(alias = "AsyncState")]
    pub fn state(&self) -> &State {
        self.cell.state()
    }

    /// Blocks until the operation completes, as [`AsyncResult::wait`].
    ///
    /// # Errors
    ///
    /// [`Error::WouldDeadlock`] as for [`AsyncResult::end`].
    ///
    /// # Blocking
    ///
    /// As [`AsyncResult::end`].
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { 1 }).into_any().unwrap();
    /// handle.wait().unwrap();
    /// assert!(handle.is_completed());
    /// ```
    #[doc(alias = "WaitOne")]
    pub fn wait(&self) -> Result<(), Error> {
        self.wait_for(None).map(drop)
    }

    /// Blocks until the operation completes or `timeout` passes, as
    /// [`AsyncResult::wait_timeout`]; returns whether it completed.
    ///
    /// # Errors
    ///
    /// [`Error::WouldDeadlock`] as for [`AsyncResult::end`].
    ///
    /// # Blocking
    ///
    /// As [`AsyncResult::end`], for at most `timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let handle = apm_tap::begin(std::future::pending::<()>()).into_any().unwrap();
    /// assert_eq!(handle.wait_timeout(Duration::from_millis(1)), Ok(false));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.wait_for(Some(timeout))
    }

    fn wait_for(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        wait(
            self.is_completed(),
            timeout,
            || self.cell.task_runtime(),
            |deadline| self.cell.wait_until(deadline),
        )
    }

    /// Asks the operation to stop, as [`AsyncResult::cancel`].
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::Error;
    ///
    /// let handle = apm_tap::begin(std::future::pending::<()>()).into_any().unwrap();
    /// handle.cancel();
    /// assert_eq!(handle.downcast::<()>().unwrap().end(), Err(Error::Cancelled));
    /// ```
    pub fn cancel(&self) {
        self.cell.cancel();
    }

    /// Whether the operation's output type is `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { 1_u8 }).into_any().unwrap();
    /// assert!(handle.is::<u8>());
    /// assert!(!handle.is::<u16>());
    /// ```
    pub fn is<T: 'static>(&self) -> bool {
        self.cell.is::<T>()
    }

    /// The typed handle, to end the operation.
    ///
    /// # Errors
    ///
    /// Hands the erased handle back when the output type is not `T`.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async { 1_u8 }).into_any().unwrap();
    /// let handle = handle.downcast::<u16>().unwrap_err();
    /// assert_eq!(handle.downcast::<u8>().unwrap().end(), Ok(1));
    /// ```
    pub fn downcast<T: 'static>(self) -> Result<AsyncResult<T>, AnyAsyncResult> {
        match self.cell.downcast::<T>() {
            Ok(cell) => Ok(AsyncResult::from_shared(cell)),
            Err(cell) => Err(AnyAsyncResult { cell }),
        }
    }

    /// Whether `self` and `other` are handles of the same operation.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async {}).into_any().unwrap();
    /// assert!(handle.ptr_eq(&handle.clone()));
    /// ```
    pub fn ptr_eq(&self, other: &AnyAsyncResult) -> bool {
        self.cell.ptr_eq(&other.cell)
    }

    /// Gives up this handle as the operation's raw pointer, for code that holds it as
    /// an opaque pointer (a C caller); [`from_raw`](Self::from_raw) takes it back. The
    /// pointer points into the operation's one allocation: nothing is allocated for it.
    ///
    /// An operation has at most one raw handle out at a time, so that taking it back
    /// twice is caught (while the operation lives) instead of releasing another
    /// handle's ownership.
    ///
    /// # Errors
    ///
    /// Hands the handle back if the operation's raw handle is already out.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::AnyAsyncResult;
    ///
    /// let handle = apm_tap::begin(async { 3 }).into_any().unwrap();
    /// let raw = handle.clone().into_raw().unwrap();
    /// let handle = handle.into_raw().unwrap_err();
    /// // SAFETY: `handle` keeps the operation alive.
    /// let taken = unsafe { AnyAsyncResult::from_raw(raw) }.unwrap();
    /// assert_eq!(taken.downcast::<i32>().unwrap().end(), Ok(3));
    /// // SAFETY: as above.
    /// assert!(unsafe { AnyAsyncResult::from_raw(raw) }.is_none(), "taken back twice");
    /// drop(handle);
    /// ```
    pub fn into_raw(self) -> Result<NonNull<()>, AnyAsyncResult> {
        self.cell.into_raw().map_err(|cell| AnyAsyncResult { cell })
    }

    /// Gives up a handle whose operation [`Builder::begin_raw`](crate::Builder::begin_raw)
    /// made with its raw handle out: that raw handle's count keeps the operation.
    pub(crate) fn assume_raw<T: Send + 'static>(handle: AsyncResult<T>) -> NonNull<()> {
        let handle = handle
            .into_any()
            .unwrap_or_else(|_| unreachable!("a future's handle can be erased"));
        handle.cell.assume_raw()
    }

    /// The address that the operation's raw handle has, whether or not it is out: for
    /// telling C which operation a callback is about. It owns nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// let handle = apm_tap::begin(async {}).into_any().unwrap();
    /// let address = handle.as_ptr();
    /// assert_eq!(handle.into_raw().unwrap(), address);
    /// # // SAFETY: taken back once, while alive.
    /// # drop(unsafe { apm_tap::AnyAsyncResult::from_raw(address) });
    /// ```
    pub fn as_ptr(&self) -> NonNull<()> {
        self.cell.as_ptr()
    }

    /// Takes back the raw handle that [`into_raw`](Self::into_raw) or
    /// [`Builder::begin_raw`](crate::Builder::begin_raw) gave out.
    ///
    /// Returns `None` if it was taken back already (and the operation is still alive, kept
    /// by another handle): a second take is caught instead of giving up another
    /// handle's ownership. Caught only until the operation's next raw handle is given
    /// out ([`into_raw`](Self::into_raw)): that one a stale pointer would take.
    ///
    /// # Safety
    ///
    /// `ptr` is an operation's raw pointer, and the operation is alive: its raw handle
    /// has not been taken back, or another handle (a clone, the running callback, the
    /// unfinished task) still keeps it. As for a freed pointer, nothing can tell a
    /// pointer to a freed operation from a live one.
    ///
    /// # Examples
    ///
    /// See [`into_raw`](Self::into_raw).
    #[allow(unsafe_code)] // An `unsafe fn` for raw pointers; its body calls the cell's.
    pub unsafe fn from_raw(ptr: NonNull<()>) -> Option<AnyAsyncResult> {
        // SAFETY: by this function's contract.
        unsafe { AnyShared::from_raw(ptr) }.map(|cell| AnyAsyncResult { cell })
    }

    /// Runs `f` with a handle of the raw handle's operation, without taking the raw
    /// handle back: for the calls that do not consume a C caller's reference. The handle
    /// `f` gets owns the operation (a count of its own), so that another thread may take
    /// the raw handle back and drop it while `f` runs. `None` (and `f` does not run) if
    /// the raw handle was taken back already.
    ///
    /// # Safety
    ///
    /// As [`from_raw`](Self::from_raw), when this is called.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::AnyAsyncResult;
    ///
    /// let raw = apm_tap::begin(async { 3 }).into_any().unwrap().into_raw().unwrap();
    /// // SAFETY: the raw handle keeps the operation alive.
    /// let completed = unsafe { AnyAsyncResult::with_raw(raw, |handle| handle.is_completed()) };
    /// assert_eq!(completed, Some(true));
    /// // SAFETY: taken back once, while alive.
    /// drop(unsafe { AnyAsyncResult::from_raw(raw) });
    /// ```
    #[allow(unsafe_code)] // As `from_raw`.
    pub unsafe fn with_raw<R>(ptr: NonNull<()>, f: impl FnOnce(&AnyAsyncResult) -> R) -> Option<R> {
        // SAFETY: by this function's contract.
        let cell = unsafe { AnyShared::borrow_raw(ptr) }?;
        // A count of its own: the operation lives until `f` returns, even if another
        // thread takes the raw handle back and drops it meanwhile.
        Some(f(&AnyAsyncResult { cell }))
    }
}

impl fmt::Debug for AnyAsyncResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyAsyncResult")
            .field("is_completed", &self.is_completed())
            .field("completed_synchronously", &self.completed_synchronously())
            .finish_non_exhaustive()
    }
}
