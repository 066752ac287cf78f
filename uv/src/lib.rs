//! libuv, a real C callback library, wrapped with apm-tap: its file system, DNS and
//! thread-pool requests as futures (await them on any executor, with `timeout`,
//! `select!`, `join_all`) and as Begin/End pairs for plain threads.
//!
//! A [`Uv`] runs one libuv loop on a thread of its own. Every request is started on that
//! thread (libuv is not thread-safe), and its callback completes the future through
//! [`apm_tap::ffi::from_c`]: the request's memory lives until libuv's callback, and
//! dropping a future issues `uv_cancel` once, on the loop thread. The result is then
//! the cancellation when the cancel won, and the real result when it did not, for
//! anyone still waiting (a Begin/End caller that cancelled through its handle).
//!
//! Links the system libuv (Debian: `apt-get install libuv1-dev`).
//!
//! # Examples
//!
//! ```
//! # futures::executor::block_on(async {
//! let uv = apm_tap_uv::Uv::new().unwrap();
//! let stat = uv.stat(env!("CARGO_MANIFEST_DIR")).await.unwrap();
//! assert!(stat.is_dir());
//! let addresses = uv.getaddrinfo("localhost", None).await.unwrap();
//! assert!(addresses.iter().any(|a| a.ip().is_loopback()));
//! # });
//! ```

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ffi::{c_int, c_void, CStr, CString};
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle, ThreadId};

use apm_tap::ffi::{from_c, UserData};
use apm_tap::{AsyncCallback, AsyncResult, Builder, Completer, State};

pub mod sys;

/// Room for one libuv request, of any type this crate uses: checked against
/// `uv_req_size` when a [`Uv`] starts.
const REQUEST_WORDS: usize = 128;

/// The result of a request as its callback reports it: libuv's negative error code, or
/// the value.
type Outcome<T> = Result<T, c_int>;

/// Not a libuv code: the loop had stopped, so the request never started.
const STOPPED: c_int = c_int::MIN;

/// One libuv loop, running on a thread of its own, and the requests started on it.
///
/// Dropping it stops the loop once every request in flight has called back, and joins
/// its thread (unless it is dropped on that thread). Requests begun afterwards fail
/// with [`io::ErrorKind::NotConnected`].
pub struct Uv {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

/// What the loop thread and every request share.
struct Inner {
    jobs: Mutex<Jobs>,
    /// The loop's `uv_async_t`, which wakes it to run the jobs; set before any job is
    /// queued, valid while `Jobs::open`.
    wake: AtomicPtr<c_void>,
    /// The loop, for libuv's synchronous mode, which only stores it in the request.
    loop_: AtomicPtr<c_void>,
}

/// What runs on the loop thread, given the loop.
type Job = Box<dyn FnOnce(*mut sys::uv_loop_t) + Send>;

struct Jobs {
    queue: VecDeque<Job>,
    /// Cleared by `Uv`'s drop: no job is queued after the last one, which stops the
    /// loop.
    open: bool,
}

impl Inner {
    /// Runs `job` on the loop thread; hands it back if the loop is stopping.
    fn submit(&self, job: Job) -> Result<(), Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if !jobs.open {
            return Err(job);
        }
        jobs.queue.push_back(job);
        drop(jobs);
        let wake = self.wake.load(Ordering::Acquire);
        // SAFETY: `wake` is the loop's async handle, open while the queue is (it is
        // closed by the job queued last, after `open` is cleared under the lock), and
        // `uv_async_send` may be called from any thread.
        unsafe { sys::uv_async_send(wake) };
        Ok(())
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the libuv loop has stopped")
}

/// A libuv error code as an `io::Error`: Unix error codes are negated `errno`s; the
/// others (getaddrinfo's) keep libuv's message.
fn uv_error(code: c_int) -> io::Error {
    if (-4095..0).contains(&code) {
        return io::Error::from_raw_os_error(-code);
    }
    // SAFETY: `uv_strerror` returns a static string for any code.
    let message = unsafe { CStr::from_ptr(sys::uv_strerror(code)) };
    io::Error::other(message.to_string_lossy().into_owned())
}

/// A buffer of `words` 8-byte words for a libuv handle or loop, never moved.
fn block(bytes: usize) -> Box<[MaybeUninit<u64>]> {
    let words = bytes.div_ceil(8);
    (0..words).map(|_| MaybeUninit::uninit()).collect()
}

/// The loop's memory, freed by the loop thread when the loop has closed.
struct LoopMemory {
    loop_: Box<[MaybeUninit<u64>]>,
    wake: Box<[MaybeUninit<u64>]>,
}

impl Uv {
    /// Starts a loop on a new thread.
    ///
    /// # Errors
    ///
    /// libuv's error if the loop or its async handle cannot be initialised.
    ///
    /// # Panics
    ///
    /// If this libuv's requests need more room than this crate leaves for them (a libuv
    /// with a different layout than 1.x).
    ///
    /// # Examples
    ///
    /// See the [crate docs](crate).
    pub fn new() -> io::Result<Uv> {
        for kind in [sys::UV_FS, sys::UV_WORK, sys::UV_GETADDRINFO] {
            // SAFETY: a pure function of its argument.
            let size = unsafe { sys::uv_req_size(kind) };
            assert!(
                size <= REQUEST_WORDS * 8,
                "libuv's request type {kind} needs {size} bytes"
            );
        }
        let inner = Arc::new(Inner {
            jobs: Mutex::new(Jobs {
                queue: VecDeque::new(),
                open: true,
            }),
            wake: AtomicPtr::new(ptr::null_mut()),
            loop_: AtomicPtr::new(ptr::null_mut()),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let shared = Arc::clone(&inner);
        let thread = thread::Builder::new()
            .name("apm-tap-uv".into())
            .spawn(move || run_loop(&shared, &ready_tx))?;
        let thread_id = thread.thread().id();
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Uv {
                inner,
                thread: Some(thread),
                thread_id,
            }),
            Ok(Err(code)) => {
                let _ = thread.join();
                Err(uv_error(code))
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("the libuv loop thread failed to start"))
            }
        }
    }
}

/// The loop thread: initialises the loop and its async handle, reports, runs the loop
/// until the last job closes the handle and no request is left, then frees the loop.
fn run_loop(inner: &Arc<Inner>, ready: &mpsc::Sender<Result<(), c_int>>) {
    // SAFETY: pure functions of their arguments.
    let (loop_size, async_size) =
        unsafe { (sys::uv_loop_size(), sys::uv_handle_size(sys::UV_ASYNC)) };
    let mut memory = LoopMemory {
        loop_: block(loop_size),
        wake: block(async_size),
    };
    let loop_ = memory.loop_.as_mut_ptr().cast::<c_void>();
    let wake = memory.wake.as_mut_ptr().cast::<c_void>();
    // SAFETY: `loop_` is room for a loop, not yet initialised.
    let code = unsafe { sys::uv_loop_init(loop_) };
    if code != 0 {
        let _ = ready.send(Err(code));
        return;
    }
    // SAFETY: an initialised loop and room for an async handle.
    let code = unsafe { sys::uv_async_init(loop_, wake, Some(run_jobs)) };
    if code != 0 {
        // SAFETY: the loop has no handle, so it closes.
        unsafe { sys::uv_loop_close(loop_) };
        let _ = ready.send(Err(code));
        return;
    }
    // SAFETY: the handle is initialised; its data is `inner`, which this thread's
    // `Arc` keeps alive for as long as the loop runs.
    unsafe { sys::uv_handle_set_data(wake, Arc::as_ptr(inner).cast_mut().cast()) };
    inner.loop_.store(loop_, Ordering::Release);
    inner.wake.store(wake, Ordering::Release);
    let _ = ready.send(Ok(()));
    // SAFETY: the loop is initialised and run on this thread only.
    unsafe { sys::uv_run(loop_, sys::UV_RUN_DEFAULT) };
    // SAFETY: `uv_run` returned: the async handle is closed and no request is left.
    unsafe { sys::uv_loop_close(loop_) };
    drop(memory);
}

/// The async handle's callback, on the loop thread: runs the queued jobs.
extern "C" fn run_jobs(handle: *mut sys::uv_handle_t) {
    // SAFETY: the handle's data is the loop thread's `Inner`, alive while it runs.
    let inner = unsafe { &*sys::uv_handle_get_data(handle).cast::<Inner>() };
    let (queue, open) = {
        let mut jobs = inner.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut jobs.queue), jobs.open)
    };
    let loop_ = inner.loop_.load(Ordering::Acquire);
    for job in queue {
        // A job is this crate's code; a panic in it is a bug, and must not unwind
        // into libuv.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(loop_))).is_err() {
            std::process::abort();
        }
    }
    if !open
        && inner
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue
            .is_empty()
    {
        // The last job ran: close the handle, so that the loop ends once the
        // requests in flight have called back.
        // SAFETY: an open handle of this loop, closed once (`open` stays false).
        unsafe { sys::uv_close(handle, None) };
        inner.wake.store(ptr::null_mut(), Ordering::Release);
    }
}

impl Drop for Uv {
    fn drop(&mut self) {
        {
            let mut jobs = self
                .inner
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            jobs.open = false;
        }
        let wake = self.inner.wake.load(Ordering::Acquire);
        if !wake.is_null() {
            // SAFETY: the handle is closed only by `run_jobs` after this wake-up.
            unsafe { sys::uv_async_send(wake) };
        }
        if thread::current().id() != self.thread_id {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl std::fmt::Debug for Uv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uv").finish_non_exhaustive()
    }
}

/// A libuv request and what it needs (its path, its buffer, its work), in one
/// allocation that lives until libuv's callback: the `uv_*_t` first, so that the
/// pointer libuv hands back finds the rest.
#[repr(C)]
struct Request<X> {
    uv: UnsafeCell<[MaybeUninit<u64>; REQUEST_WORDS]>,
    /// Set on the loop thread when the callback came: a cancel after it does nothing.
    done: AtomicBool,
    extra: X,
}

/// The part of every `Request` that a callback reads without knowing its `X`.
#[repr(C)]
struct Head {
    uv: UnsafeCell<[MaybeUninit<u64>; REQUEST_WORDS]>,
    done: AtomicBool,
}

// SAFETY: libuv writes `uv` only on the loop thread and the thread pool, between the
// request's start and its callback, which libuv orders; the rest is `Sync` or is read
// after the callback.
unsafe impl<X: Send> Send for Request<X> {}
// SAFETY: as above.
unsafe impl<X: Sync> Sync for Request<X> {}

impl<X> Request<X> {
    fn new(extra: X) -> Arc<Request<X>> {
        Arc::new(Request {
            uv: UnsafeCell::new([MaybeUninit::uninit(); REQUEST_WORDS]),
            done: AtomicBool::new(false),
            extra,
        })
    }

    fn uv(&self) -> *mut sys::uv_req_t {
        self.uv.get().cast()
    }
}

/// Marks the request at `req` done and returns its user data: what every callback does
/// first.
///
/// # Safety
///
/// `req` is the `uv` of a live `Request`.
unsafe fn finish(req: *mut sys::uv_req_t) -> Option<UserData> {
    // SAFETY: `Request` is `#[repr(C)]` with `Head`'s fields first.
    let head = unsafe { &*req.cast::<Head>() };
    head.done.store(true, Ordering::Relaxed);
    // SAFETY: a request whose data was set when it started.
    UserData::from_ptr(unsafe { sys::uv_req_get_data(req) })
}

/// Delivers a callback's outcome; a refusal (which libuv cannot cause) is dropped.
fn deliver<T: Send + 'static>(user_data: Option<UserData>, outcome: Outcome<T>) {
    if let Some(user_data) = user_data {
        let _ = user_data.complete(outcome);
    }
}

impl Inner {
    /// The future of one request: `start` runs on the loop thread with the loop and the
    /// request (its data already set), and returns libuv's code; its callback delivers an
    /// `Outcome<T>`. Dropping the future cancels the request on the loop thread.
    fn request<X, T>(
        self: &Arc<Self>,
        extra: X,
        start: impl FnOnce(*mut sys::uv_loop_t, &Request<X>) -> c_int + Send + 'static,
    ) -> impl Future<Output = io::Result<T>> + Send + 'static
    where
        X: Send + Sync + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(self);
        let cancel = Arc::clone(self);
        let request = Request::new(extra);
        let future = from_c(move |user_data| {
            let started = Arc::clone(&request);
            // SAFETY: the request is not started yet: nobody else touches it.
            unsafe { sys::uv_req_set_data(request.uv(), user_data.as_ptr()) };
            let job: Job = Box::new(move |loop_| {
                let code = start(loop_, &started);
                if code < 0 {
                    // Refused at once: no callback will come.
                    started.done.store(true, Ordering::Relaxed);
                    let _ = user_data.complete::<Outcome<T>>(Err(code));
                }
            });
            match inner.submit(job) {
                Ok(()) => Ok(request),
                Err(_) => Err(Err(STOPPED)),
            }
        })
        .on_cancel(move |request: &mut Arc<Request<X>>| {
            let request = Arc::clone(request);
            let _ = cancel.submit(Box::new(move |_| {
                if !request.done.load(Ordering::Relaxed) {
                    // SAFETY: a started request whose callback has not come, on the loop
                    // thread; `request` keeps its memory.
                    unsafe { sys::uv_cancel(request.uv()) };
                }
            }));
        });
        async move {
            match future.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(STOPPED)) => Err(stopped()),
                Ok(Err(code)) => Err(uv_error(code)),
                Err(error) => Err(io::Error::from(error)),
            }
        }
    }
}

/// A file's metadata, from `uv_fs_stat`.
#[derive(Debug, Clone, Copy)]
pub struct Stat(sys::uv_stat_t);

impl Stat {
    /// The size in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// let stat = uv.stat(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).await.unwrap();
    /// assert!(stat.size() > 0);
    /// # });
    /// ```
    pub fn size(&self) -> u64 {
        self.0.st_size
    }

    /// Whether it is a directory.
    ///
    /// # Examples
    ///
    /// See the [crate docs](crate).
    pub fn is_dir(&self) -> bool {
        (self.0.st_mode & u64::from(libc::S_IFMT)) == u64::from(libc::S_IFDIR)
    }

    /// libuv's whole `uv_stat_t`.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// let stat = uv.stat(env!("CARGO_MANIFEST_DIR")).await.unwrap();
    /// assert!(stat.raw().st_nlink >= 1);
    /// # });
    /// ```
    pub fn raw(&self) -> &sys::uv_stat_t {
        &self.0
    }
}

/// A path for libuv.
fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// `uv_fs_*`'s callback for a request whose outcome is its result (a file, a count).
extern "C" fn fs_result(req: *mut sys::uv_req_t) {
    // SAFETY: libuv calls back once, with the request it was given.
    let result = unsafe { sys::uv_fs_get_result(req) };
    // SAFETY: as above; the request is not used by libuv after its callback.
    unsafe { sys::uv_fs_req_cleanup(req) };
    // SAFETY: a `Request`'s `uv`.
    let user_data = unsafe { finish(req) };
    let outcome = if result < 0 {
        Err(c_int::try_from(result).unwrap_or(-libc::EOVERFLOW))
    } else {
        Ok(result as i64)
    };
    deliver(user_data, outcome);
}

/// `uv_fs_stat`'s callback.
extern "C" fn fs_stat(req: *mut sys::uv_req_t) {
    // SAFETY: libuv calls back once, with the request it was given.
    let result = unsafe { sys::uv_fs_get_result(req) };
    let outcome = if result < 0 {
        Err(c_int::try_from(result).unwrap_or(-libc::EOVERFLOW))
    } else {
        // SAFETY: a successful stat filled the request's `statbuf`.
        Ok(Stat(unsafe { *sys::uv_fs_get_statbuf(req) }))
    };
    // SAFETY: as in `fs_result`.
    unsafe { sys::uv_fs_req_cleanup(req) };
    // SAFETY: a `Request`'s `uv`.
    let user_data = unsafe { finish(req) };
    deliver(user_data, outcome);
}

/// A read's buffer: written by libuv between the read's start and its callback.
struct ReadBuffer(UnsafeCell<Vec<u8>>);

// SAFETY: see `Request`: libuv writes it only while the read runs.
unsafe impl Sync for ReadBuffer {}

/// `uv_fs_read`'s callback: the bytes read.
extern "C" fn fs_read(req: *mut sys::uv_req_t) {
    // SAFETY: libuv calls back once, with the request it was given.
    let result = unsafe { sys::uv_fs_get_result(req) };
    // SAFETY: as in `fs_result`.
    unsafe { sys::uv_fs_req_cleanup(req) };
    // SAFETY: this is a read's `Request<ReadBuffer>`; libuv is done with the buffer.
    let buffer = unsafe { &*(*req.cast::<Request<ReadBuffer>>()).extra.0.get() };
    let outcome = match usize::try_from(result) {
        Ok(read) => Ok(buffer[..read].to_vec()),
        Err(_) => Err(c_int::try_from(result).unwrap_or(-libc::EOVERFLOW)),
    };
    // SAFETY: a `Request`'s `uv`.
    let user_data = unsafe { finish(req) };
    deliver(user_data, outcome);
}

/// The work of a `queue_work` request: taken by the thread pool, whose output the
/// callback takes.
struct Work<R> {
    job: Mutex<Option<Box<dyn FnOnce() -> R + Send>>>,
    output: Mutex<Option<thread::Result<R>>>,
}

/// `uv_queue_work`'s work callback, on libuv's thread pool.
extern "C" fn work_run<R: Send + 'static>(req: *mut sys::uv_req_t) {
    // SAFETY: a `Request<Work<R>>`, alive until the after-work callback.
    let work = unsafe { &(*req.cast::<Request<Work<R>>>()).extra };
    let job = work
        .job
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(job) = job {
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        *work.output.lock().unwrap_or_else(PoisonError::into_inner) = Some(output);
    }
}

/// `uv_queue_work`'s after-work callback, on the loop thread: the work's output, or
/// `UV_ECANCELED` if the cancel won.
extern "C" fn work_done<R: Send + 'static>(req: *mut sys::uv_req_t, status: c_int) {
    // SAFETY: a `Request<Work<R>>`, alive until this returns.
    let work = unsafe { &(*req.cast::<Request<Work<R>>>()).extra };
    let output = work
        .output
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    // SAFETY: a `Request`'s `uv`.
    let user_data = unsafe { finish(req) };
    let outcome = match (status, output) {
        (0, Some(output)) => Ok(output),
        (0, None) => Err(sys::UV_ECANCELED),
        (code, _) => Err(code),
    };
    deliver::<thread::Result<R>>(user_data, outcome);
}

/// What a name lookup needs while it runs.
struct Lookup {
    node: CString,
    service: Option<CString>,
}

/// `uv_getaddrinfo`'s callback: the addresses, deduplicated in order.
extern "C" fn resolved(req: *mut sys::uv_req_t, status: c_int, res: *mut libc::addrinfo) {
    let mut addresses = Vec::new();
    let mut next = res;
    while !next.is_null() {
        // SAFETY: a list from getaddrinfo, valid until `uv_freeaddrinfo`.
        let info = unsafe { &*next };
        // SAFETY: `ai_addr` points to a socket address of `ai_addrlen` bytes.
        if let Some(address) = unsafe { socket_address(info.ai_addr, info.ai_addrlen) } {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        next = info.ai_next;
    }
    // SAFETY: the list libuv handed over, freed once (a `NULL` list is allowed).
    unsafe { sys::uv_freeaddrinfo(res) };
    // SAFETY: a `Request`'s `uv`.
    let user_data = unsafe { finish(req) };
    let outcome = if status < 0 {
        Err(status)
    } else {
        Ok(addresses)
    };
    deliver(user_data, outcome);
}

/// A C socket address as Rust's.
///
/// # Safety
///
/// `address` is `NULL` or points to `len` readable bytes of a socket address.
unsafe fn socket_address(
    address: *const libc::sockaddr,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    if address.is_null() {
        return None;
    }
    // SAFETY: by this function's contract.
    let family = c_int::from(unsafe { (*address).sa_family });
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: an IPv4 address of the right size.
            let v4 = unsafe { &*address.cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: an IPv6 address of the right size.
            let v6 = unsafe { &*address.cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(v6.sin6_port))))
        }
        _ => None,
    }
}

impl Uv {
    fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Runs `job` on the loop thread with the loop: the way to call a libuv function this
    /// crate does not wrap (libuv is not thread-safe, so requests start there).
    ///
    /// # Errors
    ///
    /// `NotConnected` if the loop is stopping (`job` is dropped without running).
    ///
    /// # Examples
    ///
    /// ```
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// uv.run_on_loop(move |loop_| tx.send(!loop_.is_null()).unwrap()).unwrap();
    /// assert!(rx.recv().unwrap());
    /// ```
    pub fn run_on_loop<F>(&self, job: F) -> io::Result<()>
    where
        F: FnOnce(*mut sys::uv_loop_t) + Send + 'static,
    {
        self.inner.submit(Box::new(job)).map_err(|_| stopped())
    }

    /// `uv_fs_stat`: the metadata of `path`.
    ///
    /// # Errors
    ///
    /// The operating system's error (`NotFound`, ...); `NotConnected` if the loop has
    /// stopped; `Interrupted`'s kind never: a dropped future's cancel is not reported.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the request on the loop thread (`uv_cancel`); its
    /// memory lives until libuv's callback.
    ///
    /// # Examples
    ///
    /// See [`Stat::size`].
    pub fn stat(
        &self,
        path: impl AsRef<Path>,
    ) -> impl Future<Output = io::Result<Stat>> + Send + 'static {
        let path = c_path(path.as_ref());
        let inner = Arc::clone(self.inner());
        async move {
            let path = path?;
            inner
                .request(path, |loop_, request| {
                    // SAFETY: on the loop thread, with room for a `uv_fs_t` and a path
                    // that lives as long as the request.
                    unsafe {
                        sys::uv_fs_stat(loop_, request.uv(), request.extra.as_ptr(), Some(fs_stat))
                    }
                })
                .await
        }
    }

    /// `uv_fs_open`: opens `path` with `flags` (`libc::O_RDONLY`, ...) and `mode`; the
    /// file descriptor.
    ///
    /// # Errors
    ///
    /// As [`stat`](Self::stat).
    ///
    /// # Cancel safety
    ///
    /// As [`stat`](Self::stat); a file opened after all is closed by nobody: close what
    /// you open.
    ///
    /// # Examples
    ///
    /// See [`read`](Self::read).
    pub fn open(
        &self,
        path: impl AsRef<Path>,
        flags: c_int,
        mode: c_int,
    ) -> impl Future<Output = io::Result<c_int>> + Send + 'static {
        let path = c_path(path.as_ref());
        let inner = Arc::clone(self.inner());
        async move {
            let path = path?;
            let fd: i64 = inner
                .request(path, move |loop_, request| {
                    // SAFETY: as in `stat`.
                    unsafe {
                        sys::uv_fs_open(
                            loop_,
                            request.uv(),
                            request.extra.as_ptr(),
                            flags,
                            mode,
                            Some(fs_result),
                        )
                    }
                })
                .await?;
            c_int::try_from(fd).map_err(|_| io::Error::other("a file descriptor out of range"))
        }
    }

    /// `uv_fs_read`: up to `len` bytes of `fd` from `offset`.
    ///
    /// # Errors
    ///
    /// As [`stat`](Self::stat).
    ///
    /// # Cancel safety
    ///
    /// As [`stat`](Self::stat).
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    /// let fd = uv.open(path, libc::O_RDONLY, 0).await.unwrap();
    /// let bytes = uv.read(fd, 9, 0).await.unwrap();
    /// uv.close(fd).await.unwrap();
    /// assert_eq!(bytes, b"[package]");
    /// # });
    /// ```
    pub fn read(
        &self,
        fd: c_int,
        len: usize,
        offset: i64,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send + 'static {
        let buffer = ReadBuffer(UnsafeCell::new(vec![0; len]));
        self.inner().request(buffer, move |loop_, request| {
            // SAFETY: the buffer is the request's, untouched until its callback.
            let bytes = unsafe { &mut *request.extra.0.get() };
            let buf = sys::uv_buf_t {
                base: bytes.as_mut_ptr().cast(),
                len: bytes.len(),
            };
            // SAFETY: on the loop thread; libuv copies `buf` and writes the bytes
            // into the request's buffer, which lives until the callback.
            unsafe { sys::uv_fs_read(loop_, request.uv(), fd, &buf, 1, offset, Some(fs_read)) }
        })
    }

    /// `uv_fs_close`: closes `fd`.
    ///
    /// # Errors
    ///
    /// As [`stat`](Self::stat).
    ///
    /// # Cancel safety
    ///
    /// As [`stat`](Self::stat).
    ///
    /// # Examples
    ///
    /// See [`read`](Self::read).
    pub fn close(&self, fd: c_int) -> impl Future<Output = io::Result<()>> + Send + 'static {
        let closed = self.inner().request((), move |loop_, request| {
            // SAFETY: on the loop thread, with room for a `uv_fs_t`.
            unsafe { sys::uv_fs_close(loop_, request.uv(), fd, Some(fs_result)) }
        });
        async move { closed.await.map(|_: i64| ()) }
    }

    /// `uv_getaddrinfo`: the addresses of `node` (and `service`, a port number or name).
    ///
    /// # Errors
    ///
    /// libuv's lookup error (as `io::ErrorKind::Other` with its message), or as
    /// [`stat`](Self::stat).
    ///
    /// # Cancel safety
    ///
    /// As [`stat`](Self::stat).
    ///
    /// # Examples
    ///
    /// See the [crate docs](crate).
    pub fn getaddrinfo(
        &self,
        node: &str,
        service: Option<&str>,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static {
        let lookup = CString::new(node).and_then(|node| {
            let service = service.map(CString::new).transpose()?;
            Ok(Lookup { node, service })
        });
        let inner = Arc::clone(self.inner());
        async move {
            let lookup = lookup.map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte")
            })?;
            inner
                .request(lookup, |loop_, request| {
                    let service = request
                        .extra
                        .service
                        .as_ref()
                        .map_or(ptr::null(), |s| s.as_ptr());
                    // SAFETY: on the loop thread; the names live as long as the request.
                    unsafe {
                        sys::uv_getaddrinfo(
                            loop_,
                            request.uv(),
                            Some(resolved),
                            request.extra.node.as_ptr(),
                            service,
                            ptr::null(),
                        )
                    }
                })
                .await
        }
    }

    /// `uv_queue_work`: runs `job` on libuv's thread pool; its output.
    ///
    /// # Errors
    ///
    /// `ECANCELED` if the work was cancelled before it started (only through a
    /// Begin/End handle: a dropped future takes nothing), or as [`stat`](Self::stat).
    ///
    /// # Panics
    ///
    /// Resumes a panic of `job` in the task that awaits it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the work if libuv has not started it.
    ///
    /// # Examples
    ///
    /// ```
    /// # futures::executor::block_on(async {
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// assert_eq!(uv.queue_work(|| 6 * 7).await.unwrap(), 42);
    /// # });
    /// ```
    pub fn queue_work<R, F>(&self, job: F) -> impl Future<Output = io::Result<R>> + Send + 'static
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let work = Work::<R> {
            job: Mutex::new(Some(Box::new(job))),
            output: Mutex::new(None),
        };
        let done = self.inner().request(work, |loop_, request| {
            // SAFETY: on the loop thread, with room for a `uv_work_t`.
            unsafe {
                sys::uv_queue_work(
                    loop_,
                    request.uv(),
                    Some(work_run::<R>),
                    Some(work_done::<R>),
                )
            }
        });
        async move {
            match done.await? {
                Ok(output) => Ok(output),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    }

    /// Begin/End for plain threads: [`stat`](Self::stat) begun as an operation whose
    /// `callback` runs once with its handle (on a worker of apm-tap's runtime) and whose
    /// handle returns `state`. `end` blocks until libuv called back.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncCallback, State};
    ///
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// let handle = uv.begin_stat(env!("CARGO_MANIFEST_DIR"), AsyncCallback::none(), State::none());
    /// assert!(handle.end().unwrap().unwrap().is_dir());
    /// ```
    pub fn begin_stat(
        &self,
        path: impl AsRef<Path>,
        callback: AsyncCallback<io::Result<Stat>>,
        state: State,
    ) -> AsyncResult<io::Result<Stat>> {
        Builder::new()
            .callback(callback)
            .state(state)
            .begin(self.stat(path))
    }

    /// Begin/End in libuv's synchronous mode: `uv_fs_stat` without a callback, run on
    /// this thread inside this call. The handle reports `completed_synchronously`, and
    /// `callback` has run before this returns.
    ///
    /// # Blocking
    ///
    /// For as long as the file system takes.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::{AsyncCallback, State};
    ///
    /// let uv = apm_tap_uv::Uv::new().unwrap();
    /// let handle = uv.begin_stat_sync("/no/such/path", AsyncCallback::none(), State::none());
    /// assert!(handle.completed_synchronously());
    /// let error = handle.end().unwrap().unwrap_err();
    /// assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    /// ```
    pub fn begin_stat_sync(
        &self,
        path: impl AsRef<Path>,
        callback: AsyncCallback<io::Result<Stat>>,
        state: State,
    ) -> AsyncResult<io::Result<Stat>> {
        let (completer, handle): (Completer<io::Result<Stat>>, _) =
            Builder::new().callback(callback).state(state).completer();
        let _ = completer.complete_synchronously(self.stat_sync(path.as_ref()));
        handle
    }

    /// `uv_fs_stat` in libuv's synchronous mode, on this thread.
    fn stat_sync(&self, path: &Path) -> io::Result<Stat> {
        let path = c_path(path)?;
        let request = Request::new(());
        let loop_ = self.inner.loop_.load(Ordering::Acquire);
        // SAFETY: synchronous mode: libuv runs the stat on this thread and only stores
        // the loop pointer in the request; the request is this thread's alone.
        let code = unsafe { sys::uv_fs_stat(loop_, request.uv(), path.as_ptr(), None) };
        let stat = (code >= 0).then(|| {
            // SAFETY: a successful stat filled the request's `statbuf`.
            Stat(unsafe { *sys::uv_fs_get_statbuf(request.uv()) })
        });
        // SAFETY: the request is done; cleaned up once.
        unsafe { sys::uv_fs_req_cleanup(request.uv()) };
        stat.ok_or_else(|| uv_error(code))
    }
}
