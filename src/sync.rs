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
    sync::atomic::{AtomicU8, Ordering},
    sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError},
    thread::{current, park, Thread},
};

#[cfg(apm_tap_loom)]
pub(crate) use loom::{
    sync::atomic::{AtomicU8, Ordering},
    sync::{Arc, Mutex, MutexGuard},
    thread::{current, park, Thread},
};
#[cfg(apm_tap_loom)]
pub(crate) use std::sync::{PoisonError, TryLockError};

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

/// Spins briefly until `done()` holds, before a waiter registers itself and parks: a
/// result that arrives within microseconds is then picked up without an OS sleep and
/// wake-up, which costs tens of microseconds (80-100 on small VMs). Returns `done()`.
///
/// The spin is bounded by a per-thread budget that adapts: it doubles (up to
/// `MAX_SPIN`) each time a spin sees the result arrive, and halves (down to
/// `MIN_SPIN`) each time the thread had to park anyway, so a thread whose waits are long
/// soon stops burning CPU on them. Loom and Miri skip the spin.
pub(crate) fn spin_until(done: impl Fn() -> bool) -> bool {
    #[cfg(not(any(apm_tap_loom, miri)))]
    {
        use std::cell::Cell;
        use std::time::Duration;

        const MIN_SPIN: Duration = Duration::from_micros(2);
        const MAX_SPIN: Duration = Duration::from_micros(50);
        thread_local! {
            static BUDGET: Cell<Duration> = const { Cell::new(Duration::from_micros(20)) };
        }
        let budget = BUDGET.with(Cell::get);
        let start = Instant::now();
        let mut backoff = 1_u32;
        loop {
            if done() {
                BUDGET.with(|b| b.set((budget * 2).min(MAX_SPIN)));
                return true;
            }
            if start.elapsed() >= budget {
                BUDGET.with(|b| b.set((budget / 2).max(MIN_SPIN)));
                return false;
            }
            if backoff <= 64 {
                for _ in 0..backoff {
                    std::hint::spin_loop();
                }
                backoff *= 2;
            } else {
                std::thread::yield_now();
            }
        }
    }
    #[cfg(any(apm_tap_loom, miri))]
    done()
}
