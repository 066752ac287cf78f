//! The one policy for panics in user code that runs where nobody can catch them.
//!
//! User code runs in places whose caller did not write it and cannot catch its panic:
//! `Drop` impls, a legacy thread that only calls back, an executor running a task. There
//! a panic is caught and its payload dropped: the panic hook (by default, the message on
//! standard error) has already reported it when it was raised. Where the caller can
//! catch it (`poll`, `begin`), it is re-raised instead. The crate docs carry the table.

use std::any::Any;
use std::mem;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A caught panic's payload.
pub(crate) type Payload = Box<dyn Any + Send>;

/// Runs `f`, catching a panic.
///
/// `AssertUnwindSafe`: every caller leaves its own state consistent before it runs user
/// code, and user state that a panic leaves half-updated is the user's, as after any
/// caught panic.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Payload> {
    catch_unwind(AssertUnwindSafe(f))
}

/// Drops the payload of a panic that nobody can receive. A payload whose own `Drop`
/// panics is leaked rather than allowed to unwind.
pub(crate) fn discard(payload: Payload) {
    if let Err(again) = catch(move || drop(payload)) {
        mem::forget(again);
    }
}

/// Runs user code whose panic nobody can receive.
pub(crate) fn quietly(f: impl FnOnce()) {
    if let Err(payload) = catch(f) {
        discard(payload);
    }
}

/// Drops a value that may hold user code (a waker, a callback, a result, a state)
/// where a panic must not escape. A type with no drop glue costs nothing.
#[inline]
pub(crate) fn drop_quietly<T>(value: T) {
    if std::mem::needs_drop::<T>() {
        quietly(move || drop(value));
    }
}

/// [`drop_quietly`] for what an `Option` holds: an empty one costs nothing.
#[inline]
pub(crate) fn drop_quietly_if_some<T>(value: Option<T>) {
    if let Some(value) = value {
        drop_quietly(value);
    }
}
