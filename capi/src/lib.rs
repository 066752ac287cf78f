//! apm-tap's C ABI: Rust futures exposed to C (and to every language that calls C) as
//! Begin/End operations, the shape of .NET's APM.
//!
//! A Rust library exports an async operation as two C functions: `xxx_begin(args...,
//! callback, state)`, which starts it and returns an [`Op`] handle, and `xxx_end(op,
//! out)`, which waits for it and writes its result. [`export!`] writes both from an async
//! block. The functions every operation shares (`apm_tap_op_is_completed`,
//! `apm_tap_op_wait`, `apm_tap_op_cancel`, `apm_tap_op_release`, ...) are defined here,
//! once per binary (`links = "apm_tap"`), and declared with the types in
//! `include/apm_tap.h`, which cbindgen generates from this file.
//!
//! # The contract, as C sees it
//!
//! - `xxx_begin` returns the operation's one reference. Exactly one call consumes it:
//!   `xxx_end` (which takes the result) or [`apm_tap_op_release`] (which gives it up
//!   without the result), from any thread, inside the callback or not. After that call
//!   the pointer is invalid, as after `free` (except inside the callback, see below).
//! - The callback, if not `NULL`, runs exactly once, after the result is stored: inside
//!   `xxx_begin` if the operation completed there (then
//!   [`apm_tap_op_completed_synchronously`] says so), otherwise never inside it, on the
//!   thread that completed the operation (a worker of the runtime it runs on: the ambient
//!   tokio runtime of Begin's caller, or apm-tap's), the thread that cancelled it, or the
//!   thread that dropped it unfinished. It receives the handle and the `state` given to
//!   Begin; the handle stays valid until the callback returns, even if the reference was
//!   consumed, so that the callback may end the operation. A callback that ends or releases the reference
//!   must be the only one to: the caller must then not touch the pointer that Begin
//!   returned, which may already be invalid when Begin returns.
//! - Every function may be called from any thread, and calls that consume nothing may
//!   overlap each other. A call may overlap the consuming one only if it began before
//!   it: to cancel from another thread, block in [`apm_tap_op_wait`] (which consumes
//!   nothing) rather than in `end`. `state` is handed to whichever thread runs the
//!   callback.
//! - Every result is a [`Status`]: no `0 or NULL means success` to guess. A `NULL`
//!   handle or out pointer, or a handle passed to the `end` of another operation, is
//!   [`Status::InvalidArgument`] and consumes nothing. A reference used after it was
//!   consumed is caught ([`Status::AlreadyEnded`] from `end`, `InvalidArgument` from the
//!   rest) for as long as the operation lives: while its future runs or its callback
//!   runs. Once nothing keeps it, its memory is freed, and the pointer is as undefined
//!   as a freed one.
//! - Panics never cross into C: the future's panic is the operation's outcome
//!   ([`Status::Panicked`]), and every function catches any other (apm-tap's own, a
//!   bug) and returns [`Status::Panicked`]:
//!
//!   | where | a panic of | becomes |
//!   |---|---|---|
//!   | the future, polled inside Begin or on the runtime | the future | `end`: `PANICKED` |
//!   | `xxx_begin` | apm-tap (a bug) | `NULL`, nothing left behind |
//!   | `xxx_end` and the `apm_tap_op_*` functions | apm-tap (a bug) | `PANICKED` |
//!   | the callback's trampoline | none: C's callback cannot unwind | |
//!
//! # Examples
//!
//! A Rust library exporting `add` to C:
//!
//! ```
//! apm_tap_capi::export! {
//!     /// Adds `a` and `b`, as an operation.
//!     fn example_add_begin / example_add_end(a: i32, b: i32) -> i32 {
//!         a + b
//!     }
//! }
//!
//! // What a C caller does, written in Rust.
//! // SAFETY: no callback, no state.
//! let op = unsafe { example_add_begin(2, 3, None, std::ptr::null_mut()) };
//! let mut sum = 0;
//! // SAFETY: `op` came from Begin and is ended once; `sum` is an `i32`.
//! let status = unsafe { example_add_end(op, &mut sum) };
//! assert_eq!((status, sum), (apm_tap_capi::Status::Ok, 5));
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::future::Future;
use std::mem;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::time::Duration;

use apm_tap::{AnyAsyncResult, AsyncResult, Builder, Error, State};

/// An operation in flight: opaque to C, which holds it by pointer.
///
/// It points into the operation's own allocation (an erased `AnyAsyncResult`):
/// nothing is allocated for the handle.
pub struct Op {
    _opaque: [u8; 0],
}

/// What a call did. Every function of the C ABI returns one.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// It did what was asked: for `end`, the result was written.
    Ok = 0,
    /// The operation was cancelled before it completed.
    Cancelled = 1,
    /// The operation's future panicked, or apm-tap itself did (never across into C).
    Panicked = 2,
    /// The operation can never complete: its future was dropped unfinished (the runtime
    /// shut down).
    Abandoned = 3,
    /// `end` of a reference that was consumed already (by an earlier `end` or
    /// `apm_tap_op_release`), caught while the operation still lives.
    AlreadyEnded = 4,
    /// The operation has not completed: a wait timed out.
    NotComplete = 5,
    /// Blocking here would deadlock (this thread drives the runtime that must finish the
    /// operation); nothing was consumed.
    WouldDeadlock = 6,
    /// A `NULL` pointer, a handle given to the `end` of another operation, or (for any
    /// function but `end`) a reference that was consumed already, caught while the
    /// operation still lives; nothing was consumed.
    InvalidArgument = 7,
}

/// The callback of an operation: runs once, with the operation's handle and the state
/// given to Begin. `NULL` for none.
pub type Callback = Option<unsafe extern "C" fn(op: *mut Op, state: *mut c_void)>;

/// The output of an operation exported with [`export!`]: its value, tagged with its
/// Begin's name ([`tag`]), so that the End of another operation refuses its handle even
/// when the two have the same output type.
#[derive(Debug)]
pub struct Tagged<T, const OP: u64>(pub T);

/// The tag of an exported operation: a hash (FNV-1a) of its Begin's name, which the
/// linker keeps unique in a binary.
///
/// # Examples
///
/// ```
/// assert_ne!(apm_tap_capi::tag("a_begin"), apm_tap_capi::tag("b_begin"));
/// ```
pub const fn tag(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// A C header declaring operations exported with `#[apm_tap::apm(c_abi)]`: each such
/// `async fn xxx` comes with a const `XXX_C_DECLARATION`, the C declarations of
/// `xxx_begin` and `xxx_end`. The header includes `apm_tap.h` (this crate's
/// `include/`), guards against double inclusion with `guard`, and declares the
/// operations in the order given, in an `extern "C"` block for C++.
///
/// Write it from a test or a build step and check it in, as this crate does for
/// `apm_tap.h`: cbindgen cannot see through the attribute.
///
/// # Examples
///
/// ```
/// let header = apm_tap_capi::header(
///     "DEMO_H",
///     &["apm_tap_op *demo_begin(int32_t x, apm_tap_callback callback, void *state);\n\
///        apm_tap_status demo_end(apm_tap_op *op, int32_t *out);\n"],
/// );
/// assert!(header.starts_with("/*"));
/// assert!(header.contains("#ifndef DEMO_H\n#define DEMO_H\n"));
/// assert!(header.contains("#include \"apm_tap.h\"\n"));
/// assert!(header.contains("apm_tap_op *demo_begin(int32_t x, apm_tap_callback callback, void *state);"));
/// ```
pub fn header(guard: &str, declarations: &[&str]) -> String {
    let mut header = format!(
        "/*\n * Generated by apm_tap_capi::header from #[apm_tap::apm(c_abi)] declarations; \
         do not edit.\n * Each operation follows apm_tap.h's contract.\n */\n\
         #ifndef {guard}\n#define {guard}\n\n\
         #include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n\n\
         #include \"apm_tap.h\"\n\n\
         #ifdef __cplusplus\nextern \"C\" {{\n#endif\n"
    );
    for declaration in declarations {
        header.push('\n');
        header.push_str(declaration);
    }
    header.push_str(&format!(
        "\n#ifdef __cplusplus\n}}  // extern \"C\"\n#endif\n\n#endif /* {guard} */\n"
    ));
    header
}

/// The timeout of `apm_tap_op_wait` that waits until the operation completes.
pub const APM_TAP_WAIT_FOREVER: u32 = u32::MAX;

/// The C caller's `state` pointer. C promises, by the header, that it may be used from
/// the thread that runs the callback.
struct CState(*mut c_void);

// SAFETY: the pointer is only handed back to C, which the header tells that any
// thread may receive it; Rust never dereferences it.
unsafe impl Send for CState {}
// SAFETY: as above.
unsafe impl Sync for CState {}

/// Starts `future` as an operation for a C caller: what an exported `xxx_begin` calls
/// (see [`export!`]).
///
/// The future is polled once here: if it is ready, the operation completed
/// synchronously and `callback` runs here. Otherwise it runs on the ambient tokio
/// runtime or apm-tap's, and `callback` runs on the thread that completes it (a worker
/// of that runtime), cancels it, or drops it unfinished. `state` is stored for
/// [`apm_tap_op_state`] and handed to `callback`.
///
/// Returns the operation's one reference, to be consumed by [`end`] or
/// [`apm_tap_op_release`]; `NULL` only if apm-tap itself panicked (a bug), and then
/// nothing is left behind.
///
/// # Safety
///
/// `callback`, if not `NULL`, may be called once, from any thread, with the
/// operation's handle and `state`; `state` must be valid for that call, wherever it
/// runs.
///
/// # Examples
///
/// ```
/// // SAFETY: no callback, no state.
/// let op = unsafe { apm_tap_capi::begin(async { 7_u8 }, None, std::ptr::null_mut()) };
/// let mut out = 0_u8;
/// // SAFETY: `op` came from `begin` and is ended once; `out` is a `u8`.
/// assert_eq!(unsafe { apm_tap_capi::end(op, &mut out) }, apm_tap_capi::Status::Ok);
/// assert_eq!(out, 7);
/// ```
pub unsafe fn begin<F>(future: F, callback: Callback, state: *mut c_void) -> *mut Op
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let started = catch_unwind(AssertUnwindSafe(|| {
        let mut builder = Builder::new();
        if !state.is_null() {
            builder = builder.state(State::new(CState(state)));
        }
        if let Some(callback) = callback {
            let state = CState(state);
            builder = builder.callback(move |handle: AsyncResult<F::Output>| {
                // Moved whole into the closure (not its non-`Send` field).
                let state = state;
                call(callback, handle, state.0);
            });
        }
        // Out before the first poll: a callback inside Begin may already consume it.
        builder.begin_raw(future).cast::<Op>().as_ptr()
    }));
    started.unwrap_or_else(|payload| {
        discard(payload);
        ptr::null_mut()
    })
}

/// A future's handle, erased.
fn erase<T: Send + 'static>(handle: AsyncResult<T>) -> AnyAsyncResult {
    handle
        .into_any()
        .unwrap_or_else(|_| unreachable!("a future's handle can be erased"))
}

/// Runs C's callback with the operation's pointer, which the callback's own handle
/// keeps valid until it returns, whatever the callback consumes.
fn call<T: Send + 'static>(
    callback: unsafe extern "C" fn(*mut Op, *mut c_void),
    handle: AsyncResult<T>,
    state: *mut c_void,
) {
    let handle = erase(handle);
    let op = handle.as_ptr().cast::<Op>().as_ptr();
    // While C's callback runs, the functions that do not consume find the operation
    // here even after its reference was consumed (`borrow`). A thread whose locals are
    // being destroyed has no list: the callback still runs, kept alive by `handle`.
    // The handle moves into the list (no count added), or stays here if there is none.
    let mut unlisted = Some(handle);
    let listed = CALLING
        .try_with(|calling| calling.borrow_mut().extend(unlisted.take()))
        .is_ok();
    // SAFETY: C's function, called as `begin`'s caller promised: with a live handle and
    // the caller's state.
    unsafe { callback(op, state) };
    // Dropped once the list is no longer borrowed: the drop may free the operation.
    let popped = if listed {
        CALLING
            .try_with(|calling| calling.borrow_mut().pop())
            .ok()
            .flatten()
    } else {
        None
    };
    drop((popped, unlisted));
}

thread_local! {
    /// The handles of the operations whose callbacks run on this thread, innermost last
    /// (a callback may begin an operation that completes inside its Begin).
    static CALLING: RefCell<Vec<AnyAsyncResult>> = const { RefCell::new(Vec::new()) };
}

/// Waits for the operation, takes its result and writes it to `out`: what an exported
/// `xxx_end` calls (see [`export!`]).
///
/// Consumes the caller's reference, except when the status is
/// [`Status::InvalidArgument`], [`Status::WouldDeadlock`] or [`Status::AlreadyEnded`]
/// (then nothing happened). `out` is written only when the status is [`Status::Ok`].
///
/// # Safety
///
/// `op` is `NULL` or a live reference from [`begin`] (not yet consumed), and `out` is
/// `NULL` or valid for writing a `T`.
///
/// # Blocking
///
/// Until the operation completes, as [`AsyncResult::end`]; never on the thread that
/// drives a current-thread runtime that must run it ([`Status::WouldDeadlock`]).
///
/// # Examples
///
/// See [`begin`].
pub unsafe fn end<T: 'static>(op: *mut Op, out: *mut T) -> Status {
    // SAFETY: by this function's contract.
    unsafe { end_map::<T, T>(op, out, |value| value) }
}

/// [`end`] for an operation exported with [`export!`], whose output is [`Tagged`] with
/// its Begin's name: the End of another operation, even one with the same output type,
/// is refused.
///
/// # Safety
///
/// As [`end`], with `out` valid for writing a `T`.
///
/// # Examples
///
/// See [`export!`].
pub unsafe fn end_tagged<T: 'static, const OP: u64>(op: *mut Op, out: *mut T) -> Status {
    // SAFETY: by this function's contract.
    unsafe { end_map::<Tagged<T, OP>, T>(op, out, |tagged| tagged.0) }
}

/// [`end`], for an operation whose output is `R`, writing `into(output)`.
///
/// # Safety
///
/// As [`end`], with `out` valid for writing a `T`.
unsafe fn end_map<R: 'static, T>(op: *mut Op, out: *mut T, into: impl FnOnce(R) -> T) -> Status {
    guard(|| {
        let (Some(op), Some(out)) = (NonNull::new(op), NonNull::new(out)) else {
            return Status::InvalidArgument;
        };
        // Checked and waited for without consuming the reference, which stays C's if
        // this fails.
        // SAFETY: by this function's contract, the operation is alive.
        let ready = unsafe {
            AnyAsyncResult::with_raw(op.cast(), |handle| {
                if !handle.is::<R>() {
                    return Err(Status::InvalidArgument);
                }
                handle.wait().map_err(status)
            })
        };
        match ready {
            None => return Status::AlreadyEnded,
            Some(Err(status)) => return status,
            Some(Ok(())) => {}
        }
        // SAFETY: as above. `None`: another thread consumed it meanwhile.
        let Some(handle) = (unsafe { AnyAsyncResult::from_raw(op.cast()) }) else {
            return Status::AlreadyEnded;
        };
        let result = handle
            .downcast::<R>()
            .unwrap_or_else(|_| unreachable!("the type was checked"))
            .end();
        match result {
            Ok(value) => {
                // SAFETY: by this function's contract, `out` is valid for a `T`.
                unsafe { out.as_ptr().write(into(value)) };
                Status::Ok
            }
            Err(error) => status(error),
        }
    })
}

/// The status of each error of apm-tap.
fn status(error: Error) -> Status {
    match error {
        Error::Cancelled => Status::Cancelled,
        Error::Abandoned(_) => Status::Abandoned,
        Error::AlreadyEnded => Status::AlreadyEnded,
        Error::Panicked(_) => Status::Panicked,
        Error::WouldDeadlock => Status::WouldDeadlock,
        other => unreachable!("no operation of apm-tap ends with this error: {other}"),
    }
}

/// Runs the body of a C entry point: a panic becomes [`Status::Panicked`].
fn guard(body: impl FnOnce() -> Status) -> Status {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        discard(payload);
        Status::Panicked
    })
}

/// Drops a caught panic's payload; one whose own `Drop` panics is leaked.
fn discard(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        mem::forget(again);
    }
}

/// Runs `f` with the handle C lends to a function that does not consume it: its
/// reference, or, inside its callback, the callback's handle. [`Status::InvalidArgument`]
/// for `NULL` or a consumed reference outside the callback.
///
/// # Safety
///
/// `op` is `NULL` or points to a live operation from [`begin`].
unsafe fn borrow(op: *const Op, f: impl FnOnce(&AnyAsyncResult) -> Status) -> Status {
    let Some(op) = NonNull::new(op.cast_mut()) else {
        return Status::InvalidArgument;
    };
    let calling = CALLING.try_with(|calling| {
        let calling = calling.borrow();
        let handle = calling
            .iter()
            .rev()
            .find(|handle| handle.as_ptr() == op.cast());
        handle.cloned()
    });
    if let Ok(Some(handle)) = calling {
        return f(&handle);
    }
    // SAFETY: by this function's contract.
    unsafe { AnyAsyncResult::with_raw(op.cast(), f) }.unwrap_or(Status::InvalidArgument)
}

/// Writes `value` to `out`: [`Status::InvalidArgument`] if it is `NULL`.
///
/// # Safety
///
/// `out` is `NULL` or valid for writes.
unsafe fn write<T>(out: *mut T, value: T) -> Status {
    let Some(out) = NonNull::new(out) else {
        return Status::InvalidArgument;
    };
    // SAFETY: by this function's contract.
    unsafe { out.as_ptr().write(value) };
    Status::Ok
}

/// Writes whether the operation has completed (its result is stored, and `end` will
/// not block) to `*completed`.
///
/// Returns `APM_TAP_STATUS_INVALID_ARGUMENT` for a `NULL` pointer, else `APM_TAP_STATUS_OK`.
///
/// # Safety
///
/// `op` is `NULL` or a live reference; `completed` is `NULL` or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn apm_tap_op_is_completed(op: *const Op, completed: *mut bool) -> Status {
    // SAFETY: by this function's contract.
    guard(|| unsafe { borrow(op, |op| write(completed, op.is_completed())) })
}

/// Writes whether the operation completed inside its Begin (so the callback, if any,
/// ran inside Begin) to `*synchronously`.
///
/// Returns `APM_TAP_STATUS_INVALID_ARGUMENT` for a `NULL` pointer, else `APM_TAP_STATUS_OK`.
///
/// # Safety
///
/// `op` is `NULL` or a live reference; `synchronously` is `NULL` or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn apm_tap_op_completed_synchronously(
    op: *const Op,
    synchronously: *mut bool,
) -> Status {
    // SAFETY: by this function's contract.
    guard(|| unsafe { borrow(op, |op| write(synchronously, op.completed_synchronously())) })
}

/// Writes the `state` pointer given to Begin to `*state`.
///
/// Returns `APM_TAP_STATUS_INVALID_ARGUMENT` for a `NULL` pointer, else `APM_TAP_STATUS_OK`.
///
/// # Safety
///
/// `op` is `NULL` or a live reference; `state` is `NULL` or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn apm_tap_op_state(op: *const Op, state: *mut *mut c_void) -> Status {
    // SAFETY: by this function's contract.
    guard(|| unsafe {
        borrow(op, |op| {
            let value = op.state().downcast_ref::<CState>();
            write(state, value.map_or(ptr::null_mut(), |state| state.0))
        })
    })
}

/// Blocks until the operation completes or `timeout_ms` milliseconds pass
/// (`APM_TAP_WAIT_FOREVER`: no limit; 0: a poll). Consumes nothing.
///
/// Returns `APM_TAP_STATUS_OK` once completed, `APM_TAP_STATUS_NOT_COMPLETE` on timeout,
/// `APM_TAP_STATUS_WOULD_DEADLOCK` on a thread that drives the current-thread runtime
/// that must run the operation, `APM_TAP_STATUS_INVALID_ARGUMENT` for `NULL`.
///
/// # Safety
///
/// `op` is `NULL` or a live reference.
#[no_mangle]
pub unsafe extern "C" fn apm_tap_op_wait(op: *const Op, timeout_ms: u32) -> Status {
    // SAFETY: by this function's contract.
    guard(|| unsafe {
        borrow(op, |op| {
            let waited = if timeout_ms == APM_TAP_WAIT_FOREVER {
                op.wait().map(|()| true)
            } else {
                op.wait_timeout(Duration::from_millis(timeout_ms.into()))
            };
            match waited {
                Ok(true) => Status::Ok,
                Ok(false) => Status::NotComplete,
                Err(error) => status(error),
            }
        })
    })
}

/// Asks the operation to stop. Unless it already has a result, it completes at once
/// as cancelled (the callback runs on this thread; `end` returns
/// `APM_TAP_STATUS_CANCELLED`) and its future is dropped on the runtime. Consumes nothing.
///
/// Returns `APM_TAP_STATUS_INVALID_ARGUMENT` for `NULL`, else `APM_TAP_STATUS_OK`.
///
/// # Safety
///
/// `op` is `NULL` or a live reference.
#[no_mangle]
pub unsafe extern "C" fn apm_tap_op_cancel(op: *const Op) -> Status {
    // SAFETY: by this function's contract.
    guard(|| unsafe {
        borrow(op, |op| {
            op.cancel();
            Status::Ok
        })
    })
}

/// Gives up the caller's reference without taking the result: for an operation that is
/// never ended. The operation runs on (cancel it first to stop it), its callback still
/// runs, and its result is dropped.
///
/// Returns `APM_TAP_STATUS_INVALID_ARGUMENT` for `NULL`, else `APM_TAP_STATUS_OK`.
///
/// # Safety
///
/// `op` is `NULL` or a live reference, not used again.
#[no_mangle]
pub unsafe extern "C" fn apm_tap_op_release(op: *mut Op) -> Status {
    guard(|| {
        let Some(op) = NonNull::new(op) else {
            return Status::InvalidArgument;
        };
        // SAFETY: by this function's contract, the operation is alive; the reference
        // is given up here.
        match unsafe { AnyAsyncResult::from_raw(op.cast()) } {
            Some(handle) => {
                drop(handle);
                Status::Ok
            }
            None => Status::InvalidArgument,
        }
    })
}

/// The name of `status` (`"APM_TAP_STATUS_OK"`, ...), for messages: a static string,
/// never `NULL`; `"APM_TAP_STATUS_UNKNOWN"` for a value that is no status. Takes an
/// `int`, so that any value C passes is defined.
#[no_mangle]
pub extern "C" fn apm_tap_status_name(status: c_int) -> *const c_char {
    let names: [(Status, &'static CStr); 8] = [
        (Status::Ok, c"APM_TAP_STATUS_OK"),
        (Status::Cancelled, c"APM_TAP_STATUS_CANCELLED"),
        (Status::Panicked, c"APM_TAP_STATUS_PANICKED"),
        (Status::Abandoned, c"APM_TAP_STATUS_ABANDONED"),
        (Status::AlreadyEnded, c"APM_TAP_STATUS_ALREADY_ENDED"),
        (Status::NotComplete, c"APM_TAP_STATUS_NOT_COMPLETE"),
        (Status::WouldDeadlock, c"APM_TAP_STATUS_WOULD_DEADLOCK"),
        (Status::InvalidArgument, c"APM_TAP_STATUS_INVALID_ARGUMENT"),
    ];
    let name = names
        .iter()
        .find(|(known, _)| *known as c_int == status)
        .map_or(c"APM_TAP_STATUS_UNKNOWN", |(_, name)| name);
    name.as_ptr()
}

/// Exports async operations to C: for each, a `begin` function that starts the body (an
/// async block's) and an `end` function that writes its output, both `#[no_mangle]
/// extern "C"`.
///
/// ```text
/// fn BEGIN_NAME / END_NAME(ARG: TYPE, ...) -> OUTPUT { BODY }
/// ```
///
/// declares, for C:
///
/// ```c
/// apm_tap_op *BEGIN_NAME(TYPE ARG, ..., apm_tap_callback callback, void *state);
/// apm_tap_status END_NAME(apm_tap_op *op, OUTPUT *out);
/// ```
///
/// The arguments move into the body, so they must be `Send + 'static` (wrap a pointer in
/// a type that says why it may cross threads). A panic in the body is the operation's
/// outcome: `end` returns `APM_TAP_STATUS_PANICKED`. `end` refuses
/// (`APM_TAP_STATUS_INVALID_ARGUMENT`) the handle of any other operation: the output is
/// [`Tagged`] with the Begin's name.
///
/// cbindgen does not expand macros: declare the pair in your header as above (the
/// `demo_ops` example's `tests/c/demo.h` does), or write the two functions by hand over
/// [`begin`] and [`end`] where cbindgen can see them.
///
/// # Examples
///
/// ```
/// apm_tap_capi::export! {
///     /// Doubles `x`, after a yield.
///     fn example_twice_begin / example_twice_end(x: u64) -> u64 {
///         tokio::task::yield_now().await;
///         x * 2
///     }
/// }
///
/// // SAFETY: no callback, no state.
/// let op = unsafe { example_twice_begin(21, None, std::ptr::null_mut()) };
/// let mut out = 0;
/// // SAFETY: `op` came from Begin and is ended once; `out` is a `u64`.
/// let status = unsafe { example_twice_end(op, &mut out) };
/// assert_eq!((status, out), (apm_tap_capi::Status::Ok, 42));
/// ```
#[macro_export]
macro_rules! export {
    ($(
        $(#[$attr:meta])*
        fn $begin:ident / $end:ident ($($arg:ident : $ty:ty),* $(,)?) -> $out:ty $body:block
    )*) => {$(
        $(#[$attr])*
        ///
        /// Starts the operation; returns its one reference, which the matching `end` or
        /// `apm_tap_op_release` consumes. `callback` (or `NULL`) runs once with `state`.
        ///
        /// # Safety
        ///
        /// As [`apm_tap_capi::begin`]: `callback` may be called once, from any thread,
        /// with the handle and `state`.
        #[no_mangle]
        pub unsafe extern "C" fn $begin(
            $($arg: $ty,)*
            callback: $crate::Callback,
            state: *mut ::std::ffi::c_void,
        ) -> *mut $crate::Op {
            // Items are not hygienic: their names must not shadow an argument's.
            /// Ties the body's output to the declared type.
            fn __apm_tap_output<F: ::std::future::Future<Output = $out>>(future: F) -> F {
                future
            }
            const __APM_TAP_OP: u64 = $crate::tag(stringify!($begin));
            let body = __apm_tap_output(async move $body);
            let tagged = async move { $crate::Tagged::<$out, __APM_TAP_OP>(body.await) };
            // SAFETY: by this function's contract.
            unsafe { $crate::begin(tagged, callback, state) }
        }

        #[doc = concat!("Waits for the operation that `", stringify!($begin), "` started and writes its output to `*out`.")]
        ///
        /// # Safety
        ///
        /// `op` is `NULL` or a live reference from the matching Begin; `out` is `NULL` or
        /// valid for writes.
        #[no_mangle]
        pub unsafe extern "C" fn $end(op: *mut $crate::Op, out: *mut $out) -> $crate::Status {
            const __APM_TAP_OP: u64 = $crate::tag(stringify!($begin));
            // SAFETY: by this function's contract.
            unsafe { $crate::end_tagged::<$out, __APM_TAP_OP>(op, out) }
        }
    )*};
}
