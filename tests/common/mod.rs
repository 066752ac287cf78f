//! Test doubles shared by the integration tests: a counting waker, a legacy Begin/End
//! API with its own (foreign) handle type, and a drop-counting payload.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, ThreadId};

use apm_tap::{ApmCallback, AsyncHandle};

/// A waker that counts wakes; its clones are visible through `Arc::strong_count`.
pub struct CountingWaker {
    wakes: AtomicUsize,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, SeqCst);
    }
}

impl CountingWaker {
    pub fn new() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker {
            wakes: AtomicUsize::new(0),
        });
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    pub fn wakes(&self) -> usize {
        self.wakes.load(SeqCst)
    }

    /// Clones of the waker held by others: the count minus ours and the test's `Waker`.
    pub fn clones_held(self: &Arc<Self>) -> usize {
        Arc::strong_count(self) - 2
    }
}

/// Polls `future` once with `waker`.
pub fn poll_with<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    Pin::new(future).poll(&mut Context::from_waker(waker))
}

/// The handle type of a legacy API this crate did not write.
pub struct LegacyHandle {
    pub value: u32,
    pub synchronous: bool,
    pub completed: Arc<AtomicBool>,
}

impl LegacyHandle {
    pub fn is_completed(&self) -> bool {
        self.completed.load(SeqCst)
    }
}

impl AsyncHandle for LegacyHandle {
    fn completed_synchronously(&self) -> bool {
        self.synchronous
    }
}

/// Counts what a bridged legacy operation went through.
#[derive(Default)]
pub struct Probe {
    pub begins: AtomicUsize,
    pub ends: AtomicUsize,
    pub cancels: AtomicUsize,
    pub inside_begin: AtomicBool,
    pub ended_inside_begin: AtomicBool,
    pub end_thread: Mutex<Option<ThreadId>>,
}

impl Probe {
    pub fn new() -> Arc<Probe> {
        Arc::new(Probe::default())
    }

    pub fn begins(&self) -> usize {
        self.begins.load(SeqCst)
    }

    pub fn ends(&self) -> usize {
        self.ends.load(SeqCst)
    }

    pub fn cancels(&self) -> usize {
        self.cancels.load(SeqCst)
    }

    /// Runs `body` as the legacy Begin: counts it and marks its extent on the stack.
    pub fn begin<R>(&self, body: impl FnOnce() -> R) -> R {
        self.begins.fetch_add(1, SeqCst);
        self.inside_begin.store(true, SeqCst);
        let handle = body();
        self.inside_begin.store(false, SeqCst);
        handle
    }

    /// The legacy End: counts it and records where it ran.
    pub fn end(&self, handle: LegacyHandle) -> u32 {
        self.ends.fetch_add(1, SeqCst);
        if self.inside_begin.load(SeqCst) {
            self.ended_inside_begin.store(true, SeqCst);
        }
        *self.end_thread.lock().unwrap() = Some(thread::current().id());
        handle.value
    }
}

/// How the legacy Begin treats the callback.
pub enum Fire {
    /// Calls it inside Begin, before returning.
    InsideBegin,
    /// Gives it back to the test, which calls (or drops) it when it likes.
    Later(std::sync::mpsc::Sender<ApmCallback>),
    /// Drops it uncalled inside Begin.
    Drop,
}

/// A legacy Begin: returns a handle for `value`; `synchronous` is what the handle says.
pub fn legacy_begin(
    probe: &Probe,
    callback: ApmCallback,
    value: u32,
    synchronous: bool,
    fire: Fire,
) -> LegacyHandle {
    probe.begin(|| {
        let completed = Arc::new(AtomicBool::new(synchronous));
        match fire {
            Fire::InsideBegin => {
                completed.store(true, SeqCst);
                callback.call();
            }
            Fire::Later(tx) => tx.send(callback).unwrap(),
            Fire::Drop => drop(callback),
        }
        LegacyHandle {
            value,
            synchronous,
            completed,
        }
    })
}

/// A payload that counts its drops.
pub struct DropCounter(pub Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// The message of an `Err(Error::Panicked(..))`, or what the result was instead.
pub fn panic_message<T: std::fmt::Debug>(
    result: Result<T, apm_tap::Error>,
) -> Result<Option<String>, String> {
    match result {
        Err(apm_tap::Error::Panicked(panic)) => Ok(panic.message().map(str::to_owned)),
        other => Err(format!("not a panic: {other:?}")),
    }
}

/// A tokio current-thread runtime.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A tokio multi-thread runtime whose workers are named `name`.
pub fn multi_thread(workers: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

/// A callback that reports each call on a channel, and the receiving end. The callback
/// runs after the result is stored, so `end` may return before it has run: wait for it
/// with [`CallbackProbe::ran_once`].
pub fn callback_probe<T: Send + 'static>() -> (apm_tap::AsyncCallback<T>, CallbackProbe) {
    let (tx, rx) = std::sync::mpsc::channel();
    let callback = apm_tap::AsyncCallback::new(move |h: apm_tap::AsyncResult<T>| {
        assert!(
            h.is_completed(),
            "the callback ran before the result was stored"
        );
        tx.send(()).unwrap();
    });
    (callback, CallbackProbe(rx))
}

pub struct CallbackProbe(std::sync::mpsc::Receiver<()>);

impl CallbackProbe {
    /// Waits for the callback's call and asserts there was no second one. The time
    /// limit only turns a callback that never runs into a failure instead of a hang.
    pub fn ran_once(&self) {
        self.0
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the callback never ran");
        assert!(self.0.try_recv().is_err(), "the callback ran twice");
    }
}

/// How many rounds a race test runs: fewer under Miri, which interprets every step and
/// explores schedules through its seeds instead.
pub fn rounds(native: usize) -> usize {
    if cfg!(miri) {
        3
    } else {
        native
    }
}

/// `from_apm` over [`legacy_begin`], counted by `probe`: Begin, End and `on_cancel`.
pub fn probed(
    probe: &Arc<Probe>,
    value: u32,
    synchronous: bool,
    fire: Fire,
) -> impl Future<Output = Result<u32, apm_tap::Error>> + Unpin + Send {
    let (b, e, c) = (Arc::clone(probe), Arc::clone(probe), Arc::clone(probe));
    apm_tap::from_apm(
        move |cb| legacy_begin(&b, cb, value, synchronous, fire),
        move |h| e.end(h),
    )
    .on_cancel(move |_| {
        c.cancels.fetch_add(1, SeqCst);
    })
}

/// Asserts that `runtime` still runs new operations after one of its tasks panicked.
pub fn assert_still_serving(runtime: &tokio::runtime::Runtime) {
    let next = apm_tap::begin_on(runtime, async {
        tokio::task::yield_now().await;
        1
    });
    assert_eq!(
        next.end(),
        Ok(1),
        "the runtime stopped serving after a panic"
    );
}
