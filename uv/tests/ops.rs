//! libuv's requests through apm-tap: results, errors, Begin/End (asynchronous and
//! synchronous), cancellation, and a storm of 10^4 work items half cancelled, after
//! which every request has called back once and been freed once.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use apm_tap::{AsyncCallback, AsyncResult, Error, State};
use apm_tap_uv::{Stat, Uv};
use futures::executor::block_on;

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

#[test]
fn a_real_file_is_opened_read_stated_and_closed() {
    let uv = Uv::new().unwrap();
    block_on(async {
        let expected = std::fs::read(MANIFEST).unwrap();
        let stat = uv.stat(MANIFEST).await.unwrap();
        assert_eq!(stat.size(), expected.len() as u64);
        assert!(!stat.is_dir());
        let fd = uv.open(MANIFEST, libc::O_RDONLY, 0).await.unwrap();
        let head = uv.read(fd, 9, 0).await.unwrap();
        assert_eq!(head, &expected[..9]);
        let tail = uv.read(fd, 1 << 20, 9).await.unwrap();
        assert_eq!(tail, &expected[9..]);
        uv.close(fd).await.unwrap();
        // Not `fd` again: another test of this process may have been given that number
        // since (CI saw it, under valgrind). No descriptor has number -1.
        let not_open = uv.close(-1).await.unwrap_err();
        assert_eq!(not_open.raw_os_error(), Some(libc::EBADF));
    });
}

#[test]
fn errors_are_the_operating_systems() {
    let uv = Uv::new().unwrap();
    let missing = block_on(uv.stat("/no/such/file")).unwrap_err();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    let nul = block_on(uv.stat("a\0b")).unwrap_err();
    assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn localhost_resolves_to_a_loopback_address() {
    let uv = Uv::new().unwrap();
    let addresses = block_on(uv.getaddrinfo("localhost", Some("80"))).unwrap();
    assert!(!addresses.is_empty());
    assert!(
        addresses
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 80),
        "{addresses:?}"
    );
}

#[test]
fn work_runs_on_the_thread_pool_and_its_panic_reaches_the_awaiter() {
    let uv = Uv::new().unwrap();
    let caller = thread::current().id();
    let (value, ran_on) = block_on(uv.queue_work(move || (6 * 7, thread::current().id()))).unwrap();
    assert_eq!(value, 42);
    assert_ne!(ran_on, caller);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        block_on(uv.queue_work(|| -> u8 { panic!("work panicked") }))
    }));
    let payload = panicked.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"work panicked"));
}

#[test]
fn begin_end_from_a_plain_thread_runs_the_callback_once() {
    let uv = Uv::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let callback = AsyncCallback::new(move |handle: AsyncResult<io::Result<Stat>>| {
        tx.send((
            handle.completed_synchronously(),
            handle.end().map(|s| s.map(|s| s.size())),
        ))
        .unwrap();
    });
    let handle = uv.begin_stat(MANIFEST, callback, State::new("request 1"));
    assert_eq!(handle.state().downcast_ref::<&str>(), Some(&"request 1"));
    let (synchronously, size) = rx.recv().unwrap();
    assert!(!synchronously);
    let size = size.unwrap().unwrap();
    assert_eq!(size, std::fs::metadata(MANIFEST).unwrap().len());
    assert!(rx.try_recv().is_err(), "the callback ran twice");
    assert_eq!(handle.end().map(drop), Err(Error::AlreadyEnded));
}

/// libuv's synchronous mode (no callback) is a synchronous completion.
#[test]
fn libuvs_synchronous_mode_completes_synchronously() {
    let uv = Uv::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let callback = AsyncCallback::new(move |handle: AsyncResult<io::Result<Stat>>| {
        tx.send(handle.completed_synchronously()).unwrap();
    });
    let handle = uv.begin_stat_sync(MANIFEST, callback, State::none());
    assert_eq!(rx.try_recv(), Ok(true), "the callback ran inside Begin");
    assert!(handle.completed_synchronously());
    let size = handle.end().unwrap().unwrap().size();
    assert_eq!(size, std::fs::metadata(MANIFEST).unwrap().len());
}

#[test]
fn requests_after_the_loop_stopped_fail() {
    let uv = Uv::new().unwrap();
    // Made before the loop stops, started (first polled) after.
    let late = uv.stat(MANIFEST);
    drop(uv);
    let error = block_on(late).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotConnected);
}

/// A small pseudo-random sequence, so that the storm's cancels fall at varied moments
/// and the run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

/// Counts the drops of a work item's closure: once whether it ran or was cancelled.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// A gate the first work items wait at, so that libuv's thread pool is busy and the
/// rest stay queued (cancellable) until it opens.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

/// 10^4 work items begun from a plain thread; every other one cancelled, in a
/// pseudo-random order: half of those while the thread pool is held busy (so libuv's
/// cancel wins, which the test waits to see), the rest while the items run. Each handle ends with its value, or with
/// `Cancelled` only if it was cancelled; every closure is dropped once (run or not);
/// no callback is refused (none came twice); and the loop, which ends only when every
/// request has called back, stops.
#[test]
fn a_storm_of_cancelled_work_calls_back_once_each() {
    const N: usize = 10_000;
    let uv = Uv::new().unwrap();
    let refused_before = apm_tap::ffi::refused_callbacks();
    let drops = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Gate::default());
    let handles: Vec<_> = (0..N)
        .map(|i| {
            let counted = Counted(Arc::clone(&drops));
            let ran = Arc::clone(&ran);
            let gate = Arc::clone(&gate);
            apm_tap::begin(uv.queue_work(move || {
                let _counted = counted;
                if i < 16 {
                    gate.wait();
                }
                ran.fetch_add(1, SeqCst);
                i * 3
            }))
        })
        .collect();
    let mut random = Lcg(7);
    let mut order: Vec<usize> = (0..N).filter(|i| i % 2 == 0).collect();
    for i in (1..order.len()).rev() {
        let j = usize::try_from(random.next()).unwrap() % (i + 1);
        order.swap(i, j);
    }
    let (while_held, while_running) = order.split_at(order.len() / 2);
    for i in while_held {
        handles[*i].cancel();
    }
    // The pool is held busy by the gated items (the first 16 at most), so every other
    // item cancelled so far is still queued: libuv's cancel wins, and its request is
    // freed without running. Wait for that before letting the pool go.
    let cancelled_in_libuv = while_held.iter().filter(|i| **i >= 16).count();
    let deadline = Instant::now() + Duration::from_secs(120);
    while drops.load(SeqCst) < cancelled_in_libuv {
        assert!(Instant::now() < deadline, "libuv's cancels never came back");
        thread::yield_now();
    }
    gate.open();
    for (k, i) in while_running.iter().enumerate() {
        handles[*i].cancel();
        if k % 64 == 0 {
            thread::yield_now();
        }
    }
    let mut cancelled = 0;
    for (i, handle) in handles.into_iter().enumerate() {
        match handle.end() {
            Ok(Ok(value)) => assert_eq!(value, i * 3),
            Err(Error::Cancelled) if i % 2 == 0 => cancelled += 1,
            other => panic!("item {i}: {other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while drops.load(SeqCst) < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} requests freed",
            drops.load(SeqCst)
        );
        thread::yield_now();
    }
    // The loop ends only once every request has called back.
    let (stopped_tx, stopped_rx) = mpsc::channel();
    thread::spawn(move || {
        drop(uv);
        stopped_tx.send(()).unwrap();
    });
    stopped_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a request never called back: the loop did not stop");
    assert_eq!(drops.load(SeqCst), N);
    assert_eq!(apm_tap::ffi::refused_callbacks(), refused_before);
    assert!(ran.load(SeqCst) >= N - cancelled);
    assert!(ran.load(SeqCst) <= N - cancelled_in_libuv);
    println!(
        "storm: {N} work items, {cancelled} ended cancelled, {} ran, {} closures dropped",
        ran.load(SeqCst),
        drops.load(SeqCst)
    );
}
