//! The per-thread trampoline that keeps a legacy loop "Begin -> callback -> Begin" from
//! diving down the stack when every operation completes synchronously.
//!
//! A callback runs where its operation completes: inside `begin` for a future that is
//! ready at once (rule 9), inside `Completer::complete` for a hand-written Begin. If
//! that callback begins the next operation, which also completes at once, its callback
//! runs one frame deeper, and so on: 10^6 iterations would overflow any stack. So a
//! thread runs callbacks nested in one another only up to [`MAX_DEPTH`]; a callback that
//! would start deeper is queued, and the frame just below the limit runs the queue, in
//! order, once its own callback returns: same thread, bounded depth (asio's "defer",
//! Kotlin's Unconfined event loop). The chain finishes before control goes back to
//! shallower frames, so a callback that begins a chain of synchronous completions and
//! waits for its end (on this thread) still works, unless it is itself 15 callbacks
//! deep.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crate::unwind::{catch, discard, Payload};

/// How many of the crate's callbacks may run nested in one another on one thread.
pub(crate) const MAX_DEPTH: usize = 16;

type Deferred = Box<dyn FnOnce()>;

// Loom's `thread_local!` under loom (each loom thread has its own); it takes no
// `const` initialiser.
#[cfg(not(apm_tap_loom))]
std::thread_local! {
    /// How many callbacks run through [`run`] are on this thread's stack.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Callbacks queued at [`MAX_DEPTH`], for the outermost [`run`] to run.
    static QUEUE: RefCell<VecDeque<Deferred>> = const { RefCell::new(VecDeque::new()) };
}
#[cfg(apm_tap_loom)]
loom::thread_local! {
    static DEPTH: Cell<usize> = Cell::new(0);
    static QUEUE: RefCell<VecDeque<Deferred>> = RefCell::new(VecDeque::new());
}

/// Runs `callback` now, or, at [`MAX_DEPTH`], queues it for the `run` just below the
/// limit on this thread, which runs every queued callback in turn after its own.
///
/// Returns the first panic among the callbacks this call ran, for the caller to
/// re-raise or discard as its place in the panic table says; a panic never keeps the
/// queued callbacks from running.
pub(crate) fn run(callback: impl FnOnce() + 'static) -> Result<(), Payload> {
    let Ok(depth) = DEPTH.try_with(|depth| depth.replace(depth.get() + 1)) else {
        // This thread's locals are gone (a thread-local destructor completes an
        // operation): no trampoline, the callback runs here.
        return catch(callback);
    };
    let outcome = if depth < MAX_DEPTH {
        catch(callback)
    } else {
        let mut callback = Some(callback);
        // The queue is gone once this thread's locals are being destroyed: then the
        // callback runs here.
        let _ = QUEUE.try_with(|queue| {
            if let Some(callback) = callback.take() {
                queue.borrow_mut().push_back(Box::new(callback));
            }
        });
        callback.map_or(Ok(()), catch)
    };
    // The frame just below the limit runs what was queued above it, before it returns
    // to shallower frames: the stack stays bounded, and a callback that waits (on this
    // thread) for a long chain of synchronous completions sees the chain finish.
    let outcome = if depth == MAX_DEPTH - 1 {
        drain(outcome)
    } else {
        outcome
    };
    let _ = DEPTH.try_with(|d| d.set(depth));
    outcome
}

/// Runs the queued callbacks, each at the limit (a callback they complete at once is
/// queued in turn, and run by this loop); keeps the first panic.
fn drain(mut outcome: Result<(), Payload>) -> Result<(), Payload> {
    while let Some(next) = QUEUE
        .try_with(|queue| queue.borrow_mut().pop_front())
        .ok()
        .flatten()
    {
        if let Err(payload) = catch(next) {
            match outcome {
                Ok(()) => outcome = Err(payload),
                Err(_) => discard(payload),
            }
        }
    }
    outcome
}
