//! Bridge callback-style asynchronous code and Rust futures, in both directions.
//!
//! # Two models of asynchronous code
//!
//! .NET went through two models, and legacy code everywhere still speaks the first.
//!
//! - **APM**, the Asynchronous Programming Model: an operation is a pair of calls.
//!   `BeginRead(args, callback, state)` starts it and returns at once with a handle (an
//!   `IAsyncResult`); `EndRead(handle)` returns the result, blocking if the operation is
//!   not done yet. The handle reports `IsCompleted`, `CompletedSynchronously` (it
//!   finished inside Begin), `AsyncState` (the `state` given to Begin) and a wait
//!   handle to block on. The optional `callback(handle)` runs once when the operation
//!   completes, possibly before Begin has even returned. Any Rust API of the shape
//!   "start it, get a handle, get a callback later" is this model.
//! - **TAP**, the Task-based Asynchronous Pattern: `Task<T>` plus `async`/`await`. In
//!   Rust this is [`Future`](std::future::Future) plus `async`/`await`.
//!
//! This crate converts between them, with the exactly-once guarantees spelled out and
//! tested.
//!
//! | .NET | apm-tap |
//! |---|---|
//! | `Task.Factory.FromAsync(begin, end)` | [`from_apm`], [`try_from_apm`] |
//! | `Task.Factory.FromAsync(asyncResult, end)` | [`from_async_result`] |
//! | `TaskToAsyncResult.Begin` / `.End` | [`begin`], [`begin_on`] / [`AsyncResult::end`] |
//! | `IAsyncResult` | [`AsyncResult`]; [`AsyncHandle`] for foreign handles |
//! | `AsyncCallback` | [`AsyncCallback`] (given to Begin), [`ApmCallback`] (given by [`from_apm`]) |
//! | `TaskCompletionSource` | [`Completer`] |
//!
//! # Example: both directions
//!
//! ```
//! use apm_tap::{AsyncCallback, AsyncResult, Builder, Completer, State};
//!
//! // A legacy Begin/End API: the work finishes on a thread of its own.
//! fn begin_square(x: u64, callback: AsyncCallback<u64>, state: State) -> AsyncResult<u64> {
//!     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
//!     std::thread::spawn(move || {
//!         let _ = completer.complete(x * x);
//!     });
//!     handle
//! }
//! fn end_square(handle: AsyncResult<u64>) -> Result<u64, apm_tap::Error> {
//!     handle.end()
//! }
//!
//! // APM -> future: await the legacy operation.
//! let squared = futures::executor::block_on(apm_tap::from_apm(
//!     |callback| begin_square(12, callback.into(), State::none()),
//!     end_square,
//! ));
//! assert_eq!(squared, Ok(Ok(144)));
//!
//! // Future -> APM: a plain thread drives an async fn with Begin/End.
//! async fn add(a: u64, b: u64) -> u64 { a + b }
//! let handle = apm_tap::Builder::new().state(State::new("sum")).begin(add(2, 3));
//! assert_eq!(handle.state().downcast_ref::<&str>(), Some(&"sum"));
//! assert_eq!(handle.end(), Ok(5));
//! ```
//!
//! # Guarantees
//!
//! APM to future ([`from_apm`], [`from_async_result`], [`from_callback`]):
//!
//! 1. Lazy: nothing starts until the first poll; then Begin runs exactly once.
//! 2. End runs exactly once for every Begin that returned a handle: in `poll`, in `drop`
//!    if the future is dropped after completion, or from the callback when the future
//!    was dropped before.
//! 3. A handle that reports `completed_synchronously` gets End at once, after Begin
//!    returned; the callback then does nothing. No stack dives.
//! 4. The callback may run inside Begin, on another thread, later, or never; dropped
//!    uncalled, it resolves the future with [`Error::Abandoned`].
//! 5. Panics in Begin or End surface in `poll`; a failing Begin ([`try_from_apm`])
//!    resolves the future to its error without End.
//! 6. Dropping the future early runs the `on_cancel` hook once; a racing completion is
//!    neither lost nor delivered twice.
//! 7. The latest poll's waker is woken exactly once; an equal waker is not cloned again.
//! 8. No runtime is needed.
//!
//! Future to APM ([`begin`], [`begin_on`], [`AsyncResult`]):
//!
//! 9. `begin` polls the future once inline: if that finishes it,
//!    `completed_synchronously` is true and the callback runs before `begin` returns;
//!    otherwise it is false forever and the callback never runs inside `begin`.
//! 10. The callback runs exactly once, after the result is stored, with a clone of the
//!     handle: `end` inside it does not block.
//! 11. `end` returns the value exactly once; later calls get [`Error::AlreadyEnded`].
//!     `wait` and `wait_timeout` do not consume; nothing is allocated for blocking
//!     unless someone blocks.
//! 12. `end` never deadlocks silently: on a current-thread runtime it returns
//!     [`Error::WouldDeadlock`]; on a multi-thread runtime it blocks in place.
//! 13. A panicking future completes with [`Error::Panicked`]; a panicking callback
//!     cannot lose the result.
//! 14. [`AsyncResult::cancel`] completes with [`Error::Cancelled`] unless a result is
//!     already stored, and drops the future on its executor.
//! 15. [`begin`] uses the ambient tokio runtime, or a default runtime started lazily.
//! 16. The [`State`] given to Begin is returned by every clone and in the callback.

// Denied everywhere but in the completion cell (`cell.rs`), which allows it for its
// lock-free protocol.
#![deny(unsafe_code)]

// Implementation notes
//
// - One allocation per operation holds its completion: `cell::Cell`, owned by its one
//   writer (the `Completer` or spawned `Task`) and by every `AsyncResult` clone
//   (including the callback's handle), counted in the cell's atomic state word. The
//   last owner frees it, dropping any result nobody took.
// - Only the cell decides who wins: the writer stores the result unless a handle
//   cancelled first, and then gets it back. A dropped `Completer` or `Task` stores
//   `Abandoned`.
// - `from_apm` uses a cell of its own, `AsyncResult<()>`, as the signal between the
//   legacy callback (`ApmCallback` wraps its `Completer<()>`) and the future. When the
//   future is dropped early it installs End as that cell's callback, so End runs on
//   whichever side comes second.
// - No user code (wakers, callbacks, End, on_cancel) runs while a lock is held, except
//   `Waker::clone` for a second concurrent waiter of one operation.

mod apm;
mod builder;
mod cell;
mod error;
mod from_apm;
mod from_callback;
mod reaper;
mod runtime;
mod state;
mod sync;
mod to_apm;
mod unwind;

pub use apm::{AsyncCallback, AsyncHandle, AsyncResult, Completer, PollHandle};
pub use builder::Builder;
pub use error::{flatten, Abandonment, Error, Panic};
pub use from_apm::{
    from_apm, from_async_result, try_from_apm, ApmCallback, FromApm, FromAsyncResult, TryFromApm,
};
pub use from_callback::{from_callback, FromCallback};
pub use runtime::Spawner;
pub use state::State;
pub use to_apm::{begin, begin_on, callbackify};

/// The README's code blocks, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
