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
//!   completes, possibly before Begin has even returned. Any API of the shape "start
//!   it, get a handle, get called back later" is this model: C libraries with a
//!   completion function and a `void *user_data`, POSIX AIO, libuv, COM.
//! - **TAP**, the Task-based Asynchronous Pattern: `Task<T>` plus `async`/`await`. In
//!   Rust this is [`Future`](std::future::Future) plus `async`/`await`.
//!
//! This crate converts between them, with the exactly-once guarantees spelled out and
//! tested.
//!
//! | .NET | apm-tap |
//! |---|---|
//! | `Task.Factory.FromAsync(begin, end)` | [`from_apm`](fn@from_apm), [`try_from_apm`] |
//! | `Task.Factory.FromAsync(asyncResult, end)` | [`from_async_result`] |
//! | `TaskToAsyncResult.Begin` / `.End` | [`begin`], [`begin_on`], [`Builder::begin`] / [`AsyncResult::end`] |
//! | `IAsyncResult` | [`AsyncResult`]; [`AsyncHandle`], [`PollHandle`] for foreign handles |
//! | `AsyncCallback` | [`AsyncCallback`] (given to Begin), [`ApmCallback`] (given by [`from_apm`](fn@from_apm)) |
//! | `TaskCompletionSource` | [`Completer`] |
//! | (Node) `util.promisify` / `util.callbackify` | [`from_callback`] / [`callbackify`] |
//! | an event (`OnData += handler`); (Kotlin) `callbackFlow`; (Swift) `AsyncStream` | [`stream::from_events`] |
//!
//! # Example: both directions
//!
//! ```
//! use apm_tap::{AsyncCallback, AsyncResult, Builder, State};
//!
//! // A legacy Begin/End API: the work finishes on a thread of its own.
//! fn begin_square(x: u64, callback: AsyncCallback<u64>, state: State) -> AsyncResult<u64> {
//!     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
//!     std::thread::spawn(move || completer.complete(x * x));
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
//! let handle = Builder::new().state(State::new("sum")).begin(add(2, 3));
//! assert_eq!(handle.state().downcast_ref::<&str>(), Some(&"sum"));
//! assert_eq!(handle.end(), Ok(5));
//! ```
//!
//! # Declare it once
//!
//! With the `macros` feature, two attributes write that glue: `#[apm_tap::apm]` on an
//! `async fn read(..)` adds `begin_read(.., callback, state)`, `end_read(handle)` and
//! `blocking_read(..)` beside it, and `#[apm_tap::from_apm(end = .., output = ..)]` on
//! a legacy `begin_read` adds the `async fn read` that awaits it. The generated code
//! calls the functions below, so every guarantee holds for it. Their options reach the
//! rest of the crate: a [`progress::Progress`] argument, a [`Cancellation`] argument
//! that receives the caller's cancel, a [`Dispatch`] policy for the callback, and
//! (with `apm-tap-capi`) the same operation exported to C.
//!
//! # Finding the operation that never completed
//!
//! With the `diagnostics` feature, every operation, in both directions, is listed from
//! where it starts until its result is taken: `apm_tap::diagnostics::in_flight()` says
//! which Begin never called back, at which line it was called, how long ago, and
//! whether it was cancelled, abandoned, or completed with nobody calling End; a test's
//! `LeakCheck` fails with that table. The `tracing` feature adds a span per operation,
//! and at the `INFO` level shows only failures and abandonments, each with the line
//! that began the operation. Both are off by default, and cost nothing then.
//!
//! # Guarantees
//!
//! APM to future ([`from_apm`](fn@from_apm), [`from_async_result`], [`from_callback`]):
//!
//! 1. Lazy: nothing starts until the first poll; then Begin runs exactly once.
//! 2. End runs exactly once for every Begin that returned a handle: in `poll`, in `drop`
//!    if the future is dropped after completion, or from the callback when the future
//!    was dropped before ([`from_async_result`], which has no callback: on a task of
//!    the default runtime, scheduled by the handle's wake).
//! 3. A handle that reports `completed_synchronously` gets End at once, after Begin
//!    returned; the callback then does nothing. No stack dives.
//! 4. The callback may run inside Begin, on another thread, later, or never; dropped
//!    uncalled, it resolves the future with [`Error::Abandoned`].
//! 5. Panics in Begin or End surface in `poll`; a failing Begin ([`try_from_apm`])
//!    resolves the future to its error without End.
//! 6. Dropping the future early runs the `on_cancel` hook once; a racing completion is
//!    neither lost nor delivered twice.
//! 7. The latest poll's waker is woken exactly once; an equal waker is not cloned again.
//! 8. No runtime is needed to await them.
//!
//! Future to APM ([`begin`], [`begin_on`], [`Builder`], [`AsyncResult`]):
//!
//! 9. `begin` polls the future once inline. If the operation completes inside `begin`
//!    (that poll finishes it, or the spawner runs or drops the task within `spawn`),
//!    `completed_synchronously` is true and the callback runs on the calling thread
//!    before `begin` returns (after the callback it is nested in, if that one is
//!    already 16 callbacks deep: rule 28); otherwise it is false forever and the
//!    callback never runs inside `begin`.
//! 10. The callback runs exactly once, after the result is stored, with a clone of the
//!     handle: `end` inside it does not block.
//! 11. `end` returns the value exactly once; later calls get [`Error::AlreadyEnded`].
//!     `wait` and `wait_timeout` do not consume; nothing is allocated for blocking
//!     unless someone blocks.
//! 12. A blocking `end`, `wait` or `wait_timeout` refuses with
//!     [`Error::WouldDeadlock`] exactly where it would block the thread that must run
//!     the operation's task; see [Blocking and deadlocks](#blocking-and-deadlocks) for
//!     what is detected and what cannot be.
//! 13. A panicking future completes with [`Error::Panicked`], which keeps the payload;
//!     a panicking callback cannot lose the result, which is stored first.
//! 14. [`AsyncResult::cancel`] completes with [`Error::Cancelled`] unless a result is
//!     already stored, and drops the future on its executor.
//! 15. [`begin`] uses the ambient tokio runtime, or a default runtime started lazily.
//! 16. The [`State`] given to Begin is returned by every clone and in the callback.
//!
//! Wherever user code runs:
//!
//! 17. A panic in user code never loses a result, never skips End, never skips the
//!     other waiters or the callback. It is re-raised only in the `poll` or call that
//!     ran it, never out of a `Drop` and never into a thread that only called the crate
//!     (a legacy thread calling back, an `extern "C"` function): see
//!     [Panics](#panics).
//! 18. No user code runs while the crate holds a lock, `Waker::clone` included.
//! 19. Dropping any of the crate's futures returns promptly: no blocking, no spinning.
//!
//! Multi-shot callbacks to a stream ([`stream::from_events`]):
//!
//! 20. Lazy: nothing registers until the first poll; then the register closure runs
//!     exactly once.
//! 21. The registration is undone exactly once: by the poll that yields the stream's
//!     end, or by the stream's drop; a registration that failed has nothing to undo.
//! 22. The buffer is explicit ([`stream::Buffer`]: bounded with an
//!     [`Overflow`](stream::Overflow) policy, latest only, or unbounded by name), and
//!     every emit reports what became of the item ([`stream::Emit`]), handing back any
//!     item the stream did not keep. No emit blocks except
//!     [`emit_blocking`](stream::Emitter::emit_blocking), which follows rule 12.
//! 23. Every item emitted is yielded, handed back, or dropped by the stream exactly
//!     once; items are yielded in the order they were queued.
//! 24. The stream ends after the items it holds: with the end, the producer's error,
//!     [`Error::Overflow`], or, when every emitter was dropped first,
//!     [`Error::Abandoned`]: nobody waits forever for a producer that went away.
//!
//! A stream pushed to callbacks ([`stream::subscribe`]):
//!
//! 25. A subscriber gets at most as many items as were requested; its calls are
//!     serial, and none follows `on_complete`, `on_error`, a cancel, or a panic of its
//!     own (which ends the subscription with [`Error::Panicked`], reported once). The
//!     end is delivered without demand. `request` adds up, saturating; `request(0)`
//!     ends the subscription with [`Error::ZeroDemand`]; `cancel` is idempotent and
//!     thread-safe; `request` inside `on_next` returns at once, never recursing.
//!
//! Progress ([`progress`]):
//!
//! 26. Progress never outlives completion: every report made before the operation
//!     completed is delivered (or conflated into a later delivered one) before its
//!     result is observable (the stream's [`Update::Done`](progress::Update::Done), the
//!     future's output, the APM callback, `end`); reports after it are refused with
//!     [`Emit::Closed`](stream::Emit::Closed).
//! 27. Reports are delivered in the order they were queued, one at a time (a handler
//!     never runs twice at once); the default buffer conflates, with no allocation per
//!     report, and [`Progress::none`](progress::Progress::none) costs a branch.
//!
//! Wherever callbacks run:
//!
//! 28. No stack dives: a thread runs at most 16 of the crate's callbacks nested in one
//!     another; a callback that would start deeper (a legacy loop "Begin -> callback ->
//!     Begin" whose operations complete at once, in `begin` or in
//!     [`Completer::complete`]) runs on the same thread, in order, once the callback
//!     15 deep returns, before control goes back to shallower callbacks. Such a loop runs 10^6 iterations on a 128 KiB stack, and so
//!     does `request` inside [`Subscriber::on_next`](stream::Subscriber::on_next).
//!
//! 29. A Begin-side callback runs where [`Builder::dispatch`] says ([`Dispatch`]): by
//!     default inline, on the thread that completes the operation (rules 9 and 10); else
//!     posted to a tokio runtime, a [`Spawner`], the blocking pool or a
//!     [`CallbackThread`], after the result is stored and never inside `begin` (unless
//!     a spawner runs its tasks inside `spawn`), exactly once (a target that drops it
//!     unrun runs it where it drops it). A posted callback may end, cancel or begin on
//!     its own handle's operation. A [`Dispatch`] is also a [`Spawner`]: given to
//!     [`stream::subscribe_on`] or [`Builder::spawner`] (for a progress handler), it
//!     polls the task where it says, never inside `begin` unless inline, one poll at a
//!     time, so a subscriber's or progress handler's calls stay in order and never
//!     overlap under every policy; inline polls on the waking thread without recursing.
//!
//! # Blocking and deadlocks
//!
//! [`AsyncResult::end`], [`wait`](AsyncResult::wait) and
//! [`wait_timeout`](AsyncResult::wait_timeout) block only when the operation is not
//! complete yet. Where they would block, they ask tokio which scheduler, if any, the
//! calling thread drives:
//!
//! | the calling thread | what a blocking call does |
//! |---|---|
//! | drives no scheduler: a plain thread, a `spawn_blocking` thread, the thread in a multi-thread runtime's `block_on` | parks until the operation completes |
//! | a worker of a multi-thread runtime | blocks inside [`block_in_place`](tokio::task::block_in_place), which first hands the worker's other tasks to a new thread |
//! | drives the current-thread runtime that the operation's task was spawned on (its `block_on`, or one of its tasks) | returns [`Error::WouldDeadlock`] at once: blocking would stop the very runtime that must finish the operation |
//! | drives a current-thread runtime, and the operation is finished elsewhere (by another thread, another runtime) | parks: no deadlock, but this runtime's other tasks wait meanwhile |
//!
//! What cannot be detected, because tokio does not say:
//!
//! - A task spawned on a current-thread runtime that *no* thread drives (its `block_on`
//!   returned, or never ran). A wait waits until some thread drives the runtime again,
//!   or the runtime is dropped: then the operation ends with
//!   [`Abandonment::TaskDropped`]. Use `wait_timeout`, or spawn such operations on a
//!   multi-thread runtime.
//! - A spawner that hides which runtime runs its tasks (a closure around a tokio
//!   handle): implement [`Spawner::tokio_handle`] to tell.
//! - Another runtime's handle entered with `Handle::enter` inside a task or a
//!   `block_on`: tokio says which runtime's context is entered, not which runtime's
//!   scheduler the thread runs, so the decision follows the entered runtime. It may
//!   then refuse an operation it could have waited for, or wait for one whose task only
//!   this thread can run; and a task of a current-thread runtime that entered a
//!   multi-thread runtime's handle reaches `block_in_place`, which tokio refuses with a
//!   panic. In a current-thread runtime's own `block_on` with a multi-thread handle
//!   entered, the thread is known to drive *a* current-thread runtime, not which: it
//!   refuses for every task on a current-thread runtime, and waits for the rest. A
//!   multi-thread worker outside any task (in its park hooks) is taken for a
//!   current-thread driver in the same way.
//! - An operation whose completer, not a task, finishes it: a [`Completer`] held by a
//!   task of the current-thread runtime that this thread drives cannot complete while
//!   it blocks, and nothing tells the crate where a completer lives.
//!
//! Awaiting the handle never blocks: inside async code, `.await` it instead.
//!
//! # Panics
//!
//! User code runs in many places; a panic in each goes where somebody can catch it, and
//! nowhere else. Where nobody can (a `Drop`, a legacy thread that only calls back, an
//! executor), the panic is caught and its payload dropped: the panic hook (by default,
//! the message on standard error) has already reported it when it was raised. Where
//! somebody waits for the result, the payload is kept: [`Error::Panicked`] carries a
//! [`Panic`], which [`Panic::into_panic`] re-raises.
//!
//! | user code | runs on | a panic there |
//! |---|---|---|
//! | [`from_apm`](fn@from_apm)'s Begin closure | the thread polling the future | propagates out of `poll`; no handle, so no End |
//! | [`AsyncHandle::completed_synchronously`] | the polling thread, after Begin | propagates out of `poll`; the handle is taken for asynchronous, and End runs when the callback comes |
//! | End, in `poll` | the polling thread | propagates out of `poll` (End ran) |
//! | End, in the future's `drop` (the callback came first) | the dropping thread | discarded; `drop` returns |
//! | End, after the future was dropped | the thread calling [`ApmCallback::call`] ([`from_apm`](fn@from_apm)); a task of the default runtime ([`from_async_result`]) | discarded: `call` returns normally, also into an `extern "C"` caller |
//! | `on_cancel` ([`FromApm`], [`TryFromApm`], [`FromAsyncResult`], [`FromCallback`]) | the dropping thread | discarded; End still runs once |
//! | [`PollHandle::poll_completed`], in `poll` | the polling thread | propagates out of `poll`; the future may be polled again or dropped |
//! | [`PollHandle::poll_completed`], after the future was dropped | the dropping thread, then a task of the default runtime | discarded; End then runs on a blocking thread of the default runtime, where it may block until the operation completes, as an APM End does |
//! | [`from_callback`]'s start | the polling thread | propagates out of `poll`; the completer it dropped completes the operation with `Abandoned` |
//! | `Drop` of what [`from_callback`]'s start returned, once the operation completed | the thread polling the future | discarded; `poll` returns the result |
//! | the future given to [`begin`]: its `poll` | the caller of `begin`, then the executor | caught: the operation completes with [`Error::Panicked`], the callback still runs |
//! | the future's `Drop` | the caller of `begin` or the executor | discarded; the result is delivered |
//! | the callback, when the operation completes inside `begin` | the caller of `begin` | propagates out of `begin`, after the result is stored |
//! | a callback queued by rule 28 (nested 16 deep) | the same thread, after the callback 15 deep returns | as that callback's panic would: out of the `begin` that ran it inline, else discarded; the other queued callbacks still run |
//! | the callback, anywhere else: [`Completer::complete`] or its drop, [`ApmCallback::call`], [`AsyncResult::cancel`], the executor | the completing thread | discarded; the result is stored first |
//! | `Waker::wake`, and `Drop` of a waker, when the operation completes | the completing thread | discarded; every other waiter, blocked thread and the callback still run |
//! | `Waker::clone` | the polling thread | propagates out of `poll`; the handle stays usable (no lock is held, so the clone may call back into the operation) |
//! | the spawner of a [`Dispatch::spawner`], posting a callback | the completing thread | as the callback's own panic would: out of `begin` when the operation completes there, else discarded; the callback still runs, once, where the spawner dropped it |
//! | [`Spawner::spawn`], [`Spawner::enter`], [`Spawner::tokio_handle`] | the caller of `begin` | propagates out of `begin`. If the task was lost (never handed over, or dropped within `spawn`), the operation first completes inside Begin with [`Abandonment::TaskDropped`] and its callback runs; a task the spawner kept runs on |
//! | [`stream::from_events`]' register closure, and the unregister call when the stream ends | the thread polling the stream | propagates out of `poll`; a stream whose register panicked has ended |
//! | the unregister call in the stream's drop, `Drop` of the items it still holds | the dropping thread | discarded |
//! | [`Emitter::when_ready`](stream::Emitter::when_ready)'s callback | the caller, when there is room already (propagates); else the thread that made room or closed the stream | discarded there |
//! | the stream's `Waker::wake`, on an emit | the producer's thread | discarded: the emit returns what became of the item |
//! | a progress handler ([`Reporting::on_progress`](progress::Reporting::on_progress)) | the task polling the operation | propagates out of `poll`; under [`progress::begin`], ends the operation with [`Error::Panicked`] |
//! | a [`Subscriber`](stream::Subscriber)'s methods | the subscription's task (its first poll inside [`stream::subscribe`]) | caught: the subscription ends with [`Error::Panicked`], the stream is dropped, no call follows |
//! | a [`Cancellation`] hook, when the operation's future is dropped before it completed | the dropping thread (the executor, or the caller of `cancel`) | discarded; the other hooks still run |
//! | a [`Cancellation`] hook given after the cancellation | the caller of [`on_cancel`](Cancellation::on_cancel) | propagates out of `on_cancel` |
//! | the `tracing` subscriber (feature `tracing`), told of an operation's span or event | the thread where the operation's step happens | discarded: the span is empty, the event lost, the operation unchanged |
//! | `Drop` of a result nobody took, of a [`State`], of a callback that never ran, of the closures given to the crate | whichever owner drops it | discarded |
//!
//! So [`Completer::complete`], a `Completer`'s drop, [`ApmCallback::call`] and
//! [`AsyncResult::cancel`] never unwind: they are safe to call from an `extern "C"`
//! function.

// Denied everywhere but in the completion machinery (`cell/`: the cell, `from_apm`'s
// signal, the spare blocks), which allows it for its lock-free protocols, and on the two
// `unsafe fn`s of `AnyAsyncResult` that take raw pointers for C callers.
#![deny(unsafe_code)]

// Implementation notes
//
// - One allocation per operation holds its completion: `cell::Cell`, owned by its one
//   writer (the `Completer`, or the task running a `begin` future) and by every
//   `AsyncResult` clone (including the callback's handle), counted in the cell's atomic
//   state word. The last owner frees it, dropping any result nobody took; its memory is
//   kept for the thread's next operation of the same layout (`cell/spare.rs`). A `begin`
//   future lives in the same allocation (`cell/task.rs`), dropped by the writer as soon
//   as it finished.
// - Only the cell decides who wins: the writer stores the result unless a handle
//   cancelled first, and then gets it back. A dropped `Completer` or task stores
//   `Abandoned`.
// - `from_apm` needs none of the cell's features (no value, state, callback, clones
//   or blocking), so its signal between the legacy callback and the future is a
//   smaller one-shot of its own (`cell/signal.rs`: a state word, the future's waker, and the
//   End a dropped future leaves behind, which runs on whichever side comes second). `from_async_result` has no callback to hook: its
//   dropped future hands the handle to a `Reaper` (`reaper.rs`), which polls it.
// - A `begin` task's header points at a `'static` table of erased functions
//   (`cell/task.rs`), so that an `AnyAsyncResult` is one pointer (the table field's
//   address) whatever the output type: what a C caller holds. Its raw handle owns one
//   count, marked by the `RAW` flag, so that a second take-back is caught.
// - `ffi`'s `user_data` is a slot number and generation in a registry
//   (`ffi/registry.rs`), never an address, so that a C library's second or late
//   callback finds nothing to free.
// - No user code (wakers, callbacks, End, hooks) runs while a lock is held. Completing
//   an operation takes its wake-ups and callback out of the cell and gives up the
//   completer's ownership first, then runs them, each under `catch_unwind`
//   (`unwind.rs` holds the one policy for panics nobody can catch).

mod apm;
mod builder;
mod cancellation;
mod cell;
#[cfg(feature = "diagnostics")]
pub mod diagnostics;
mod dispatch;
mod error;
#[cfg(feature = "ffi")]
pub mod ffi;
mod from_apm;
mod from_callback;
pub mod progress;
mod reaper;
mod runtime;
mod state;
pub mod stream;
mod sync;
mod to_apm;
mod track;
mod trampoline;
mod unwind;

pub use apm::{AnyAsyncResult, AsyncCallback, AsyncHandle, AsyncResult, Completer, PollHandle};
pub use builder::Builder;
pub use cancellation::{cancellable, Cancellable, Cancellation};
pub use dispatch::{CallbackThread, Dispatch};
pub use error::{flatten, Abandonment, Error, Panic};
pub use from_apm::{
    from_apm, from_async_result, try_from_apm, ApmCallback, FromApm, FromAsyncResult, TryFromApm,
};
pub use from_callback::{from_callback, FromCallback};
pub use runtime::{Spawner, Task};
pub use state::State;
pub use to_apm::{begin, begin_on, callbackify};

#[cfg(feature = "macros")]
pub use apm_tap_macros::{apm, from_apm};

#[cfg(feature = "macros")]
#[doc(hidden)]
pub mod __private;

/// The README's code blocks, run as doctests by the README's `cargo test --all-features`
/// (they use the `macros`, `ffi` and `diagnostics` features).
#[cfg(all(doctest, feature = "macros", feature = "ffi", feature = "diagnostics"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
