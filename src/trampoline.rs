//! The per-thread trampoline that keeps a legacy loop "Begin -> callback -> Begin" from
//! diving down the stack when every operation completes synchronously.
//!
//! A callback runs where its operation completes: inside `begin` for a future that is
//! ready at once (rule 9), inside `Completer::complete` for a hand-written Begin. If
//! that callback begins the next operation, which also completes at once, its callback
//! runs one frame deeper, and so on: 10^6 iterations would overflow any stack. So a
//! thread runs callbacks nested in one another only up to [`MAX_DEPTH`]; a callback that
//! would start deeper is queued, and the outermost callback's frame runs the queue, in
//! order, once that callback returns: same thread, bounded depth (asio's "defer",
//! Kotlin's Unconfined event loop). Shallow nesting stays inline, so a callback that
//! completes another operation and then waits for that one's callback (on this thread)
//! still works, unless it is itself 16 callbacks deep.

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

/// Runs `callback` now, or, at [`MAX_DEPTH`], queues it for the outermost `run` on this
/// thread, which runs every queued callback in turn after its own.
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
    let outcome = if depth == 0 { drain(outcome) } else { outcome };
    let _ = DEPTH.try_with(|d| d.set(depth));
    outcome
}

/// Runs the queued callbacks, each at depth 1 (so that they too may nest up to the
/// limit); keeps the first panic.
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
