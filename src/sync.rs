//! Every synchronisation primitive of the completion machinery, in one place, so that
//! loom can swap them in: build with `RUSTFLAGS="--cfg apm_tap_loom"` to run
//! `tests/loom.rs`.
//!
//! `State` keeps `std::sync::Arc` (it is immutable data behind an `Arc<dyn Any>`, which
//! loom's `Arc` cannot hold), and so does the `Arc` behind the reaper's waker in
//! `from_apm.rs` (`futures::task::ArcWake` needs std's).

use std::time::Instant;

#[cfg(not(apm_tap_loom))]
pub(crate) use std::{
    sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering},
    sync::{Mutex, MutexGuard, PoisonError},
    thread::{current, park, Thread, ThreadId},
    thread_local,
};

#[cfg(apm_tap_loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering},
    sync::{Mutex, MutexGuard},
    thread::{current, park, Thread, ThreadId},
    thread_local,
};
#[cfg(apm_tap_loom)]
pub(crate) use std::sync::PoisonError;

/// `std`'s `UnsafeCell` with (the part the crate uses of) loom's closure-based API, so that loom can check every
/// access to the cell's slots for data races.
#[cfg(not(apm_tap_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(apm_tap_loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }

    /// Runs `f` with a pointer for reading.
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a pointer for writing.
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Parks the current thread until `deadline` at the latest (spurious wake-ups allowed);
/// returns `true` once the deadline has passed.
#[cfg(not(apm_tap_loom))]
pub(crate) fn park_until(deadline: Instant) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return true;
    }
    std::thread::park_timeout(deadline - now);
    false
}

/// Loom has no clock: a timed park is modelled as a yield after which the deadline has
/// passed, so loom explores the timeout firing at every point.
#[cfg(apm_tap_loom)]
pub(crate) fn park_until(_deadline: Instant) -> bool {
    loom::thread::yield_now();
    true
}

/// The adaptive spin of blocking waits (not under loom or Miri, which only spin once).
///
/// A waiter spins briefly before it registers and parks: a result that arrives within
/// microseconds is then picked up without an OS sleep and wake-up, which costs tens of
/// microseconds (80-100 on small VMs). The spin is bounded by a per-thread budget,
/// between `MIN_SPIN` and `MAX_SPIN`, that follows how long this thread's waits really
/// take: after a wait that ended within `MAX_SPIN`, the next spin is long enough to
/// catch one like it (twice its length); after a longer one the budget halves, so a
/// thread whose waits are long soon stops burning CPU on them.
#[cfg(not(any(apm_tap_loom, miri)))]
mod spin {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    const MIN_SPIN: Duration = Duration::from_micros(2);
    const MAX_SPIN: Duration = Duration::from_micros(50);
    const YIELD_EVERY: Duration = Duration::from_micros(10);

    thread_local! {
        static BUDGET: Cell<Duration> = const { Cell::new(Duration::from_micros(20)) };
    }

    /// Spins until `done()` holds or the budget (at most until `deadline`) runs out;
    /// returns `done()`.
    ///
    /// Between checks it spins on the CPU (`spin_loop`, at most 16 at a time, so that
    /// a result is seen within about 100 ns), and gives the CPU up (`yield_now`) only
    /// once every `YIELD_EVERY`: a yield is a system call that costs more than the
    /// hand-off itself (300-600 ns on small VMs), but lets a completer that shares
    /// this CPU run.
    pub(crate) fn spin_until(done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
        let start = Instant::now();
        let mut budget = BUDGET.with(Cell::get);
        if let Some(deadline) = deadline {
            // A wait with a timeout spins no longer than it may wait.
            budget = budget.min(deadline.saturating_duration_since(start));
        }
        let mut yielded = Duration::ZERO;
        let mut backoff = 1_u32;
        loop {
            if done() {
                return true;
            }
            let spun = start.elapsed();
            if spun >= budget {
                return false;
            }
            if spun.saturating_sub(yielded) >= YIELD_EVERY {
                std::thread::yield_now();
                yielded = spun;
            }
            for _ in 0..backoff {
                std::hint::spin_loop();
            }
            backoff = (backoff * 2).min(16);
        }
    }

    /// Records how long a wait that had to park took in all, and whether it ended
    /// with the result (not its timeout).
    pub(crate) fn record_wait(waited: Duration, completed: bool) {
        BUDGET.with(|budget| {
            let next = if waited > MAX_SPIN {
                budget.get() / 2
            } else if completed {
                waited * 2
            } else {
                // A short timeout says nothing of how long results take to come.
                return;
            };
            budget.set(next.clamp(MIN_SPIN, MAX_SPIN));
        });
    }
}

#[cfg(any(apm_tap_loom, miri))]
mod spin {
    use std::time::Instant;

    pub(crate) fn spin_until(done: impl Fn() -> bool, _deadline: Option<Instant>) -> bool {
        done()
    }

    pub(crate) fn record_wait(_waited: std::time::Duration, _completed: bool) {}
}

pub(crate) use spin::{record_wait, spin_until};
