//! A real C library (`tests/c/legacy.c`, compiled here with the system C compiler and
//! loaded with `dlopen`) wrapped with `apm_tap::ffi`: callbacks from worker threads,
//! inside start, never, twice, and a cancel storm. Every request the library allocates
//! is freed exactly once: its live count ends at 0 (and `.ci/run` runs this under
//! valgrind).
#![cfg(all(feature = "ffi", target_os = "linux"))]
// Loading a C library and calling it is `unsafe`: that is what this test exercises.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CString};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use apm_tap::ffi::{self, from_c, UserData};
use apm_tap::{Abandonment, Error};
use futures::executor::block_on;
use futures::future::join_all;
use futures::FutureExt;

type Callback = extern "C" fn(*mut c_void, c_int);

type StartFn = unsafe extern "C" fn(c_int, c_int, Callback, *mut c_void) -> *mut c_void;
type RequestFn = unsafe extern "C" fn(*mut c_void);
type DestroyFn = unsafe extern "C" fn(extern "C" fn(*mut c_void)) -> c_int;
type LiveFn = unsafe extern "C" fn() -> c_int;

/// The library's functions, from `legacy.c`.
struct Legacy {
    start: StartFn,
    release: RequestFn,
    cancel: RequestFn,
    free: RequestFn,
    destroy_pending: DestroyFn,
    live: LiveFn,
}

const WORKER: c_int = 0;
const INLINE: c_int = 1;
const NEVER: c_int = 2;
const TWICE: c_int = 3;
const HELD: c_int = 4;
const CANCELLED: c_int = -125;
/// What the wrapper returns when `legacy_start` refuses (returns `NULL`).
const REFUSED: c_int = -22;

/// Compiles `legacy.c` and loads it, once.
fn legacy() -> &'static Legacy {
    static LEGACY: OnceLock<Legacy> = OnceLock::new();
    LEGACY.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let library: PathBuf = exe.parent().unwrap().join("liblegacy_c.so");
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/legacy.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(&cc)
            .args([
                "-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-shared", "-fPIC",
            ])
            .args(["-D_GNU_SOURCE", "-pthread", "-o"])
            .arg(&library)
            .arg(source)
            .status()
            .unwrap_or_else(|error| panic!("cannot run the C compiler `{cc}`: {error}"));
        assert!(status.success(), "legacy.c did not compile");
        let path = CString::new(library.to_str().unwrap()).unwrap();
        // SAFETY: a library we just built; its initialisers do nothing.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
        assert!(!handle.is_null(), "dlopen failed");
        let symbol = |name: &str| {
            let name = CString::new(name).unwrap();
            // SAFETY: `handle` is a loaded library; the name is NUL-terminated.
            let address = unsafe { libc::dlsym(handle, name.as_ptr().cast::<c_char>()) };
            assert!(!address.is_null(), "{name:?} is missing");
            address
        };
        // SAFETY: each symbol is the function `legacy.c` defines with this signature.
        unsafe {
            Legacy {
                start: std::mem::transmute::<*mut c_void, StartFn>(symbol("legacy_start")),
                release: std::mem::transmute::<*mut c_void, RequestFn>(symbol("legacy_release")),
                cancel: std::mem::transmute::<*mut c_void, RequestFn>(symbol("legacy_cancel")),
                free: std::mem::transmute::<*mut c_void, RequestFn>(symbol("legacy_request_free")),
                destroy_pending: std::mem::transmute::<*mut c_void, DestroyFn>(symbol(
                    "legacy_destroy_pending",
                )),
                live: std::mem::transmute::<*mut c_void, LiveFn>(symbol("legacy_live_requests")),
            }
        }
    })
}

/// How many callbacks the library made.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// The callback given to the library: counts, then hands over to apm-tap's trampoline.
extern "C" fn counted(user_data: *mut c_void, result: c_int) {
    CALLS.fetch_add(1, SeqCst);
    ffi::trampoline::<c_int>(user_data, result);
}

/// Told by `legacy_destroy_pending` that a callback will never come.
extern "C" fn never(user_data: *mut c_void) {
    UserData::from_ptr(user_data)
        .unwrap()
        .never::<c_int>()
        .unwrap();
}

/// The library's request, freed once the callback has come (or never will).
struct Request(*mut c_void);

// SAFETY: the library's requests may be used from any thread (its functions lock).
unsafe impl Send for Request {}

impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: dropped once, after the callback came or never will: the library is
        // done with it.
        unsafe { (legacy().free)(self.0) }
    }
}

/// The wrapped operation: the future of `legacy_start(value, mode)`, whose drop cancels.
/// `held` receives a held request's pointer, to release it.
fn double(
    value: c_int,
    mode: c_int,
    held: Option<&std::sync::mpsc::Sender<usize>>,
) -> impl std::future::Future<Output = Result<c_int, Error>> + Unpin {
    let held = held.cloned();
    from_c(move |user_data| {
        // SAFETY: `counted` is a valid callback for the library's whole life.
        let request = unsafe { (legacy().start)(value, mode, counted, user_data.as_ptr()) };
        if request.is_null() {
            return Err(REFUSED);
        }
        if let Some(held) = held {
            held.send(request as usize).unwrap();
        }
        Ok(Request(request))
    })
    .on_cancel(|request: &mut Request| {
        // SAFETY: the request is alive until its callback, which has not come.
        unsafe { (legacy().cancel)(request.0) }
    })
}

/// Waits, with a generous limit that only turns a hang into a failure, until `done`.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::yield_now();
    }
}

fn live() -> c_int {
    // SAFETY: a plain getter.
    unsafe { (legacy().live)() }
}

/// One test, so that the library's global counts are this test's alone.
#[test]
fn a_c_library_wrapped_into_futures() {
    let refused_before = ffi::refused_callbacks();

    // Worker-thread callbacks, 100 operations awaited together.
    let results = block_on(join_all((0..100).map(|i| double(i, WORKER, None))));
    assert_eq!(results, (0..100).map(|i| Ok(2 * i)).collect::<Vec<_>>());

    // A callback inside start; a refused start (no callback at all).
    assert_eq!(block_on(double(21, INLINE, None)), Ok(42));
    assert_eq!(block_on(double(-1, WORKER, None)), Ok(REFUSED));

    // Callbacks that never come, until the library says so.
    let mut waiting: Vec<_> = (0..10).map(|i| double(i, NEVER, None)).collect();
    for future in &mut waiting {
        assert!(future.now_or_never().is_none());
    }
    // SAFETY: `never` is a valid function for the call.
    assert_eq!(unsafe { (legacy().destroy_pending)(never) }, 10);
    for future in waiting {
        assert_eq!(
            block_on(future),
            Err(Error::Abandoned(Abandonment::CallbackDropped))
        );
    }

    // A library that calls back twice: the second call is refused, nothing is freed
    // twice.
    assert_eq!(block_on(double(4, TWICE, None)), Ok(8));
    eventually("the second callback", || {
        ffi::refused_callbacks() > refused_before
    });

    // The cancel storm: 10^4 held requests; every other future is dropped (the library
    // is told to cancel), the others are released. Each callback comes exactly once, the
    // cancelled ones' with LEGACY_CANCELLED, into a dropped future.
    let n = if cfg!(miri) { 10 } else { 10_000 };
    let calls_before = CALLS.load(SeqCst);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let mut futures: Vec<_> = (0..n).map(|i| double(i, HELD, Some(&held_tx))).collect();
    for future in &mut futures {
        assert!(future.now_or_never().is_none());
    }
    let requests: Vec<usize> = held_rx.try_iter().collect();
    assert_eq!(requests.len(), futures.len());
    let mut kept = Vec::new();
    for (i, (future, request)) in futures.into_iter().zip(requests).enumerate() {
        if i % 2 == 0 {
            drop(future);
        } else {
            // SAFETY: a held request, alive until its callback.
            unsafe { (legacy().release)(request as *mut c_void) };
            kept.push((i as c_int, future));
        }
    }
    for (i, future) in kept {
        assert_eq!(block_on(future), Ok(2 * i));
    }
    let expected = usize::try_from(n).unwrap();
    eventually("every callback of the storm", || {
        CALLS.load(SeqCst) - calls_before == expected
    });
    eventually("every request freed", || live() == 0);
    assert_eq!(CALLS.load(SeqCst) - calls_before, expected);
    assert_eq!(CANCELLED, -125);
}
