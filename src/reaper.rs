//! What finishes a [`from_async_result`](crate::from_async_result) future that was
//! dropped before its operation completed: it polls the handle and runs End once the
//! handle reports completion (rule 2).
//!
//! The dropping thread polls first, with a waker of the reaper's own. If the handle is
//! still pending, the first wake hands the polling to a task of the crate's default
//! runtime, which polls it as any task would and runs End; a wake never polls the
//! handle or runs End itself, inside `Waker::wake`: a handle commonly wakes under its
//! own lock, which `poll_completed` takes again (.NET's `FromAsync(IAsyncResult)` runs
//! End on a thread-pool thread for the same reason).
//!
//! # States
//!
//! One atomic byte hands the handle and End (`parts`) over:
//!
//! ```text
//!   RUNNING (the dropping thread polls) --pending, no wake meanwhile--> idle (0)
//!      |                                                                   |
//!      | a wake came: poll again, at most INLINE_POLLS in all              | the first wake
//!      v                                                                   v
//!   ...then a task of the default runtime takes over ------------> RUNNING for ever
//! ```
//!
//! - Whoever sets `RUNNING` owns `parts` until it clears `RUNNING` (or for good, once End
//!   ran or the task took over). The mutex around `parts` is never contended and is
//!   never held while user code runs (rule 18): the holder takes the parts out, polls,
//!   and puts them back.
//! - A wake that comes while the dropping thread polls (or runs the `on_cancel` hook: a
//!   legacy Cancel that completes the operation at once) sets `NOTIFIED`, and is
//!   answered by another poll there, up to `INLINE_POLLS` in all. A handle may wake its
//!   poller from inside `poll_completed` and stay pending (spurious wakes are allowed);
//!   looping on it would spin the dropping thread for ever (rule 19), so after that many
//!   polls the task takes over.
//! - If the default runtime cannot be started (the process may not create threads),
//!   the handle and End are leaked: never freed, never run. Nothing else is safe there:
//!   the handle may own memory the legacy side still writes.
//!
//! # Panics
//!
//! No panic leaves this module: it runs on a dropping thread, a waking thread or an
//! executor, none of which can catch it (see `crate::unwind`). A `poll_completed` that
//! panics can no longer be trusted to report completion, so End runs on a blocking
//! thread of the default runtime, where it may block until the operation completes, as
//! an APM End does.

use std::future::Future;
#[cfg(not(apm_tap_loom))]
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::{waker, ArcWake};

use crate::sync::{AtomicU8, Mutex, MutexGuard, Ordering, PoisonError};
use crate::unwind::{catch, discard, drop_quietly, quietly};
use crate::PollHandle;

/// End with its return type erased, so that `drop` (which cannot name it) can run it.
pub(crate) type ErasedEnd<H> = Box<dyn FnOnce(H) + Send>;

/// The `on_cancel` hook of a dropped future.
pub(crate) type OnCancel<H> = Box<dyn FnOnce(&H) + Send>;

/// A thread (or the executor task) holds `parts`. Set by whoever finds it clear.
const RUNNING: u8 = 1 << 0;
/// A wake came while `RUNNING` was set: the holder must not let go without another poll.
/// Cleared by the holder.
const NOTIFIED: u8 = 1 << 1;

/// How many times the dropping thread polls before it hands the polling over.
const INLINE_POLLS: usize = 3;

/// The poller of one dropped future's handle; its waker is an `Arc` of it.
pub(crate) struct Reaper<H> {
    state: AtomicU8,
    /// The handle and End, while End has not run. See the module docs for who may
    /// touch them.
    parts: Mutex<Option<Parts<H>>>,
}

struct Parts<H> {
    handle: H,
    end: ErasedEnd<H>,
}

impl<H> Parts<H> {
    /// Runs End, where nobody can catch its panic.
    fn end(self) {
        let Parts { handle, end } = self;
        quietly(move || end(handle));
    }
}

/// What one poll of the handle said.
enum Polled {
    Ready,
    Pending,
    /// `poll_completed` panicked.
    Broken,
}

impl<H: PollHandle + Send + 'static> Reaper<H> {
    /// Takes over the handle of a future dropped before its operation completed, on the
    /// dropping thread: polls it once, runs `on_cancel` if it is still pending, and
    /// leaves the rest to the first wake. Returns promptly; never unwinds.
    pub(crate) fn start(handle: H, end: ErasedEnd<H>, on_cancel: Option<OnCancel<H>>) {
        let reaper = Arc::new(Reaper {
            state: AtomicU8::new(RUNNING),
            parts: Mutex::new(None),
        });
        let mut parts = Parts { handle, end };
        let polled = reaper.poll(&mut parts);
        match on_cancel {
            Some(cancel) if !matches!(polled, Polled::Ready) => quietly(|| cancel(&parts.handle)),
            unused => drop_quietly(unused),
        }
        reaper.finish_turn(parts, polled);
    }

    /// Polls the handle once with this reaper's waker.
    fn poll(self: &Arc<Self>, parts: &mut Parts<H>) -> Polled {
        let waker = waker(Arc::clone(self));
        let mut cx = Context::from_waker(&waker);
        match catch(|| parts.handle.poll_completed(&mut cx)) {
            Ok(Poll::Ready(())) => Polled::Ready,
            Ok(Poll::Pending) => Polled::Pending,
            Err(payload) => {
                discard(payload);
                Polled::Broken
            }
        }
    }

    /// Ends the dropping thread's turn after its first poll: runs End if the operation
    /// completed; otherwise puts the parts back and lets go of them, polling again while
    /// wakes keep coming during the turn, up to `INLINE_POLLS`, then handing the polling
    /// over to a task.
    fn finish_turn(self: &Arc<Self>, mut parts: Parts<H>, mut polled: Polled) {
        let mut polls = 1;
        loop {
            match polled {
                Polled::Ready => return parts.end(),
                Polled::Broken => return end_elsewhere(parts),
                Polled::Pending => {}
            }
            *self.lock() = Some(parts);
            // ORDERING: AcqRel: Release hands `parts` to the next holder (the mutex does
            // too); Acquire pairs with the waker's update when the exchange fails.
            let let_go =
                self.state
                    .compare_exchange(RUNNING, 0, Ordering::AcqRel, Ordering::Acquire);
            if let_go.is_ok() {
                return;
            }
            if polls == INLINE_POLLS {
                return hand_off(Takeover(Arc::clone(self)));
            }
            // ORDERING: AcqRel, as every update of the state; consumes the wakes so far.
            self.state.fetch_and(!NOTIFIED, Ordering::AcqRel);
            parts = self.lock().take().expect("the holder's parts are in place");
            polls += 1;
            polled = self.poll(&mut parts);
        }
    }

    /// A wake, from any thread: the first to find `RUNNING` clear hands the polling to a
    /// task; one that finds it set leaves `NOTIFIED` for the dropping thread. It never
    /// polls the handle here, inside `Waker::wake`.
    fn wake(self: &Arc<Self>) {
        // ORDERING: Acquire pairs with the AcqRel updates below and in `finish_turn`.
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let new = if state & RUNNING == 0 {
                RUNNING
            } else {
                state | NOTIFIED
            };
            // ORDERING: AcqRel: Acquire to see `parts` as the dropping thread left them,
            // Release so that a holder that finds NOTIFIED polls after this wake.
            match self
                .state
                .compare_exchange_weak(state, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => state = actual,
            }
        }
        if state & RUNNING == 0 {
            hand_off(Takeover(Arc::clone(self)));
        }
    }
}

impl<H> Reaper<H> {
    /// The parts' lock. Only the holder of `RUNNING` takes it, never across user code,
    /// so a poisoned lock (impossible but for a panicking allocator) is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, Option<Parts<H>>> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<H: PollHandle + Send + 'static> ArcWake for Reaper<H> {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.wake();
    }
}

impl<H> Drop for Reaper<H> {
    /// Every waker is gone and End never ran: the handle dropped its waker without
    /// reporting completion. The parts are dropped, quietly: this runs inside whatever
    /// dropped the last waker.
    fn drop(&mut self) {
        let parts = self.lock().take();
        drop_quietly(parts);
    }
}

/// The executor task that polls a handle once its reaper handed the polling over. It
/// holds `RUNNING` for good; it is woken by its own task waker, given to
/// `poll_completed` in place of the reaper's.
struct Takeover<H>(Arc<Reaper<H>>);

impl<H: PollHandle + Send + 'static> Future for Takeover<H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(mut parts) = self.0.lock().take() else {
            return Poll::Ready(());
        };
        match catch(|| parts.handle.poll_completed(cx)) {
            Ok(Poll::Ready(())) => parts.end(),
            Ok(Poll::Pending) => {
                *self.0.lock() = Some(parts);
                return Poll::Pending;
            }
            Err(payload) => {
                discard(payload);
                end_elsewhere(parts);
            }
        }
        Poll::Ready(())
    }
}

/// Runs `takeover` on the crate's default runtime (a loom thread under loom), or leaks
/// it if that runtime cannot be started.
#[cfg(not(apm_tap_loom))]
fn hand_off<H: PollHandle + Send + 'static>(takeover: Takeover<H>) {
    match crate::runtime::try_default_handle() {
        Some(runtime) => drop(runtime.spawn(takeover)),
        None => mem::forget(takeover),
    }
}

#[cfg(apm_tap_loom)]
fn hand_off<H: PollHandle + Send + 'static>(takeover: Takeover<H>) {
    loom::thread::spawn(move || loom::future::block_on(takeover));
}

/// Runs End on a blocking thread of the default runtime: the handle panicked in
/// `poll_completed`, so nothing will say when the operation completes, and End (which
/// blocks until then, as an APM End does) is the only way left to finish it. Leaks the
/// handle and End if that runtime cannot be started.
#[cfg(not(apm_tap_loom))]
fn end_elsewhere<H: Send + 'static>(parts: Parts<H>) {
    match crate::runtime::try_default_handle() {
        Some(runtime) => drop(runtime.spawn_blocking(move || parts.end())),
        None => mem::forget(parts),
    }
}

#[cfg(apm_tap_loom)]
fn end_elsewhere<H: Send + 'static>(parts: Parts<H>) {
    loom::thread::spawn(move || parts.end());
}
