//! Which operations are in flight, where they began, and how long ago: the operation
//! that never completed, found.
//!
//! The bug every bridge to callback code meets is the operation that never finishes: a
//! legacy Begin that forgets its callback on one error path, a C library that drops it,
//! a handle whose End nobody calls. Its symptom is a future that stays pending or a
//! thread blocked in `end`, and nothing says which operation it is. With the
//! `diagnostics` feature, every operation, in both directions, is listed from where it
//! starts until its result is taken (or every part of it is gone), with:
//!
//! - its [`Kind`] (which entry point made it) and the [`Location`] of that call, found
//!   by `#[track_caller]`;
//! - its age;
//! - its [`Status`]: pending, completed but not ended, cancelled, or abandoned;
//! - whether its callback ran.
//!
//! [`in_flight`] takes a snapshot, which prints as a table, oldest first. In a test,
//! [`LeakCheck`] fails with that table when operations begun in a scope are still in
//! flight at its end.
//!
//! # Cost
//!
//! With the feature off (the default) none of this exists: no field, no instruction.
//! With it on, each operation allocates its record (80 bytes, 120 with
//! `tracing`), reads the clock once, and is listed and unlisted under one of 64 locks,
//! chosen by the thread that begins it, so that threads beginning operations do not
//! wait for one another. `BENCHMARKS.md` has the measured ratio.
//!
//! # Examples
//!
//! A legacy Begin that keeps its callback and never calls it:
//!
//! ```
//! use apm_tap::diagnostics::{self, Kind, Status};
//! use apm_tap::{ApmCallback, AsyncHandle};
//! use futures::FutureExt;
//! use std::sync::Mutex;
//!
//! struct Handle;
//! impl AsyncHandle for Handle {
//!     fn completed_synchronously(&self) -> bool { false }
//! }
//!
//! static FORGOTTEN: Mutex<Vec<ApmCallback>> = Mutex::new(Vec::new());
//!
//! let mut read = apm_tap::from_apm(
//!     |callback| {
//!         FORGOTTEN.lock().unwrap().push(callback); // kept, never called
//!         Handle
//!     },
//!     |_handle| 0_usize,
//! );
//! let line = line!() - 7;
//! assert!((&mut read).now_or_never().is_none());
//!
//! let stuck = diagnostics::in_flight()
//!     .into_iter()
//!     .find(|op| op.location().line() == line)
//!     .unwrap();
//! assert_eq!((stuck.kind(), stuck.status(), stuck.callback_ran()), (Kind::FromApm, Status::Pending, Some(false)));
//! println!("{stuck}"); // the from_apm begun at src/main.rs:17:20 0 ms ago: never called back
//! ```
//!
//! [`Location`]: std::panic::Location

use std::cmp::Reverse;
use std::error::Error as StdError;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::track::Record;

/// Which of the crate's entry points made an operation.
///
/// # Examples
///
/// ```
/// use apm_tap::diagnostics::{self, Kind};
///
/// let (_completer, _handle) = apm_tap::Completer::<u8>::new();
/// let here = line!() - 1;
/// let mine = diagnostics::in_flight().into_iter().find(|op| op.location().line() == here);
/// assert_eq!(mine.unwrap().kind(), Kind::Completer);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// [`from_apm`](fn@crate::from_apm) or [`try_from_apm`](crate::try_from_apm): a
    /// Begin/End pair, begun at the future's first poll.
    FromApm,
    /// [`from_async_result`](crate::from_async_result): a handle started elsewhere.
    FromAsyncResult,
    /// [`from_callback`](crate::from_callback) (or `ffi::from_c`, with the `ffi`
    /// feature): a plain completion callback, begun at the future's first poll.
    FromCallback,
    /// [`begin`](crate::begin), [`begin_on`](crate::begin_on),
    /// [`callbackify`](crate::callbackify) or [`Builder::begin`](crate::Builder::begin):
    /// a future exposed as an operation; also [`progress::begin`](crate::progress::begin)
    /// and a [`stream::subscribe`](crate::stream::subscribe)'s subscription.
    Begin,
    /// [`Completer::new`](crate::Completer::new) or
    /// [`Builder::completer`](crate::Builder::completer): an operation that code
    /// completes by hand; also a [`Puller`](crate::stream::Puller)'s pull.
    Completer,
}

impl Kind {
    /// The entry point's name, as the in-flight table prints it.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(apm_tap::diagnostics::Kind::FromApm.name(), "from_apm");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Kind::FromApm => "from_apm",
            Kind::FromAsyncResult => "from_async_result",
            Kind::FromCallback => "from_callback",
            Kind::Begin => "begin",
            Kind::Completer => "Completer",
        }
    }
}

/// Where an operation stands, as [`in_flight`] saw it.
///
/// # Examples
///
/// ```
/// use apm_tap::diagnostics::{self, Status};
///
/// let (completer, handle) = apm_tap::Completer::<u8>::new();
/// let line = line!() - 1;
/// let status = || diagnostics::in_flight().into_iter().find(|op| op.location().line() == line).map(|op| op.status());
/// assert_eq!(status(), Some(Status::Pending));
/// completer.complete(1).unwrap();
/// assert_eq!(status(), Some(Status::Completed));
/// assert_eq!(handle.end(), Ok(1));
/// assert_eq!(status(), None); // ended: no longer in flight
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Not completed: the callback never came, the future has not finished, the
    /// completer has not completed it.
    Pending,
    /// Completed, but its result was not taken: End was not called, or the future not
    /// polled since.
    Completed,
    /// Cancelled first: a handle cancelled it, or its future was dropped. A converted
    /// legacy operation stays listed until the legacy side calls back (End then runs).
    Cancelled,
    /// The producer went away without an outcome (a callback or completer dropped
    /// uncalled, a task dropped unfinished), and nobody has taken that error yet.
    Abandoned,
}

/// One operation in flight, in a snapshot taken by [`in_flight`].
///
/// Its `Display` is one sentence: `the from_apm begun at src/legacy.rs:88:17 2300 ms ago:
/// never called back`.
///
/// # Examples
///
/// ```
/// use apm_tap::diagnostics::{self, Kind, Status};
///
/// let handle = apm_tap::begin(std::future::pending::<()>());
/// let line = line!() - 1;
/// let op = diagnostics::in_flight().into_iter().find(|op| op.location().line() == line).unwrap();
/// assert_eq!((op.kind(), op.status(), op.callback_ran()), (Kind::Begin, Status::Pending, None));
/// assert!(op.to_string().ends_with("ago: its future has not finished"));
/// # handle.cancel();
/// ```
#[derive(Clone, Debug)]
pub struct Operation {
    id: u64,
    kind: Kind,
    location: &'static Location<'static>,
    age: Duration,
    status: Status,
    callback: Option<bool>,
}

impl Operation {
    fn new(record: &Record, now: Instant) -> Self {
        let (status, callback) = record.status();
        Operation {
            id: record.id,
            kind: record.kind,
            location: record.location,
            age: now.saturating_duration_since(record.started),
            status,
            callback,
        }
    }

    /// The operation's number, unique in the process (not consecutive: each of the
    /// registry's shards numbers its own); also the `id` field of its `tracing` span.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Which entry point made it.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Where the entry point was called: the line that began the operation (for
    /// [`from_apm`](fn@crate::from_apm) and [`from_callback`](crate::from_callback), the
    /// line that made the future).
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// How long before the snapshot it began.
    pub fn age(&self) -> Duration {
        self.age
    }

    /// Where it stands.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether its callback ran: `None` if it has none (a `begin` or `Completer`
    /// without an [`AsyncCallback`](crate::AsyncCallback), a
    /// [`from_async_result`](crate::from_async_result)). An `AsyncCallback` with a
    /// [`Dispatch`](crate::Dispatch) counts as run once it is handed to its dispatch.
    pub fn callback_ran(&self) -> Option<bool> {
        self.callback
    }

    /// The status column: what is wrong, said for this kind.
    fn what(&self) -> String {
        let legacy = matches!(self.kind, Kind::FromApm | Kind::FromCallback);
        match self.status {
            Status::Pending => match self.kind {
                Kind::FromApm | Kind::FromCallback => "never called back",
                Kind::FromAsyncResult => "the handle never completed",
                Kind::Begin => "its future has not finished",
                Kind::Completer => "never completed",
            }
            .into(),
            Status::Completed if legacy || self.kind == Kind::FromAsyncResult => {
                "completed, the future not polled since".into()
            }
            Status::Completed => "completed, End not called".into(),
            Status::Cancelled if legacy => "cancelled, never called back".into(),
            Status::Cancelled if self.kind == Kind::FromAsyncResult => {
                "cancelled, the handle never completed".into()
            }
            Status::Cancelled if self.kind == Kind::Begin => {
                "cancelled, its task or a handle still held".into()
            }
            Status::Cancelled => "cancelled, its completer or a handle still held".into(),
            Status::Abandoned => match self.kind {
                Kind::FromApm | Kind::FromCallback => "abandoned: callback dropped uncalled",
                Kind::Begin => "abandoned: its task was dropped unfinished",
                _ => "abandoned: completer dropped uncalled",
            }
            .into(),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} begun at {} {} ago: {}",
            self.kind.name(),
            self.location,
            Age(self.age),
            self.what()
        )
    }
}

/// A duration as the table prints it: milliseconds below ten seconds, else seconds.
struct Age(Duration);

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_secs(10) {
            write!(f, "{} ms", self.0.as_millis())
        } else {
            write!(f, "{:.1} s", self.0.as_secs_f64())
        }
    }
}

/// A snapshot of the operations in flight, oldest first: what [`in_flight`] returns.
///
/// Its `Display` is a table, one operation per line.
///
/// # Examples
///
/// ```
/// let (_completer, _handle) = apm_tap::Completer::<u8>::new();
/// let table = apm_tap::diagnostics::in_flight().to_string();
/// assert!(table.contains("Completer  never completed"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    operations: Vec<Operation>,
}

impl InFlight {
    /// The operations, oldest first.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// The operations, oldest first.
    pub fn iter(&self) -> std::slice::Iter<'_, Operation> {
        self.operations.iter()
    }

    /// Keeps only the operations `keep` says yes to.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::diagnostics::{self, Kind};
    ///
    /// let mine = diagnostics::in_flight().filter(|op| op.location().file() == file!());
    /// assert!(mine.iter().all(|op| op.location().file() == file!()));
    /// ```
    #[must_use]
    pub fn filter(mut self, mut keep: impl FnMut(&Operation) -> bool) -> Self {
        self.operations.retain(|op| keep(op));
        self
    }
}

impl IntoIterator for InFlight {
    type Item = Operation;
    type IntoIter = std::vec::IntoIter<Operation>;

    fn into_iter(self) -> Self::IntoIter {
        self.operations.into_iter()
    }
}

impl<'a> IntoIterator for &'a InFlight {
    type Item = &'a Operation;
    type IntoIter = std::slice::Iter<'a, Operation>;

    fn into_iter(self) -> Self::IntoIter {
        self.operations.iter()
    }
}

impl fmt::Display for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["age", "id", "kind", "status", "callback", "began at"];
        let rows: Vec<[String; 6]> = self
            .operations
            .iter()
            .map(|op| {
                let callback = match op.callback {
                    None => "-",
                    Some(true) => "ran",
                    Some(false) => "not run",
                };
                [
                    Age(op.age).to_string(),
                    op.id.to_string(),
                    op.kind.name().to_string(),
                    op.what(),
                    callback.to_string(),
                    op.location.to_string(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        match self.operations.len() {
            1 => writeln!(f, "1 operation in flight:")?,
            n => writeln!(f, "{n} operations in flight, oldest first:")?,
        }
        let mut line = |cells: [&str; 6]| {
            let [age, id, kind, status, callback, location] = cells;
            let [w0, w1, w2, w3, w4, _] = widths;
            writeln!(
                f,
                "  {age:>w0$}  {id:>w1$}  {kind:<w2$}  {status:<w3$}  {callback:<w4$}  {location}"
            )
        };
        line(header)?;
        for row in &rows {
            line(row.each_ref().map(String::as_str))?;
        }
        Ok(())
    }
}

/// Every operation in flight now, oldest first.
///
/// An operation is listed from where it starts (the first poll of a
/// [`from_apm`](fn@crate::from_apm) or [`from_callback`](crate::from_callback) future;
/// the call, for the others) until its result is taken (by End, or by the future's
/// last poll) or every part of it is gone. The snapshot holds no lock and no reference
/// to any operation.
///
/// # Examples
///
/// ```
/// let (completer, handle) = apm_tap::Completer::<u8>::new();
/// let line = line!() - 1;
/// let listed = || apm_tap::diagnostics::in_flight().iter().any(|op| op.location().line() == line);
/// assert!(listed());
/// completer.complete(1).unwrap();
/// assert_eq!(handle.end(), Ok(1));
/// assert!(!listed());
/// ```
pub fn in_flight() -> InFlight {
    snapshot(|_| true)
}

/// The listed operations `keep` says yes to, oldest first.
fn snapshot(keep: impl Fn(&Record) -> bool) -> InFlight {
    let now = Instant::now();
    let mut operations = Vec::new();
    for shard in &REGISTRY {
        // Upgraded under the lock, read and dropped after it: dropping the last `Arc`
        // of a record unlists it, which takes this lock.
        let live: Vec<Arc<Record>> = lock(shard)
            .slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Listed(record) => record.upgrade(),
                Slot::Free(_) => None,
            })
            .collect();
        operations.extend(
            live.iter()
                .filter(|record| keep(record))
                .map(|record| Operation::new(record, now)),
        );
    }
    operations.sort_by_key(|op| (Reverse(op.age), op.id));
    InFlight { operations }
}

/// Fails a test when operations begun in a scope are still in flight at its end.
///
/// Made at the start of the scope, it looks at the operations begun after it, on one
/// of two sets of threads:
///
/// - [`this_thread`](Self::this_thread): the thread that made it. Exact when other
///   tests of the binary run in parallel (the default), but it does not see an
///   operation begun on another thread: a `tokio::spawn`ed task on a multi-thread
///   runtime's worker, a thread the test started. A test on a current-thread runtime
///   (`#[tokio::test]`'s default) begins everything on its own thread.
/// - [`all_threads`](Self::all_threads): every thread, so also every other test that
///   runs at the same time. For a test binary whose tests run one at a time
///   (`cargo test -- --test-threads=1`, or a binary of one test).
///
/// Operations begun before it are not its business. At the end of the scope,
/// [`finish`](Self::finish) returns the ones still in flight as [`Leaks`]; dropped
/// without `finish`, it panics with the same text (not while the thread is already
/// panicking).
///
/// # Panics
///
/// `Drop` panics if operations begun in the scope are still in flight.
///
/// # Examples
///
/// ```
/// use apm_tap::diagnostics::LeakCheck;
///
/// let check = LeakCheck::this_thread();
/// let (completer, handle) = apm_tap::Completer::<u8>::new();
/// let leaked = check.finish().unwrap_err();
/// assert_eq!(leaked.in_flight().len(), 1);
/// assert!(leaked.to_string().contains(" is still in flight:\n"));
/// # drop((completer, handle));
///
/// let check = LeakCheck::this_thread();
/// let (completer, handle) = apm_tap::Completer::<u8>::new();
/// completer.complete(2).unwrap();
/// assert_eq!(handle.end(), Ok(2));
/// assert!(check.finish().is_ok());
/// ```
#[must_use = "dropped at once, it checks an empty scope"]
#[derive(Debug)]
pub struct LeakCheck {
    since: Instant,
    thread: Option<u64>,
    /// Where it was made, for the report.
    made_at: &'static Location<'static>,
    armed: bool,
}

impl LeakCheck {
    /// Watches the operations begun on this thread from now on.
    ///
    /// # Examples
    ///
    /// ```
    /// let _check = apm_tap::diagnostics::LeakCheck::this_thread();
    /// let handle = apm_tap::begin(async { 1 });
    /// assert_eq!(handle.end(), Ok(1));
    /// // `_check` is dropped here, and finds nothing in flight.
    /// ```
    #[track_caller]
    pub fn this_thread() -> Self {
        LeakCheck {
            since: Instant::now(),
            thread: Some(this_thread().1),
            made_at: Location::caller(),
            armed: true,
        }
    }

    /// Watches the operations begun on any thread from now on.
    ///
    /// # Examples
    ///
    /// ```
    /// let check = apm_tap::diagnostics::LeakCheck::all_threads();
    /// let handle = std::thread::spawn(|| apm_tap::begin(async { 1 })).join().unwrap();
    /// assert_eq!(check.in_flight().len(), 1);
    /// assert_eq!(handle.end(), Ok(1));
    /// assert!(check.finish().is_ok());
    /// ```
    #[track_caller]
    pub fn all_threads() -> Self {
        LeakCheck {
            since: Instant::now(),
            thread: None,
            made_at: Location::caller(),
            armed: true,
        }
    }

    /// The operations begun in the scope so far that are still in flight, oldest first.
    pub fn in_flight(&self) -> InFlight {
        snapshot(|record| {
            record.started >= self.since && self.thread.is_none_or(|t| record.thread == t)
        })
    }

    /// Ends the scope.
    ///
    /// # Errors
    ///
    /// The operations begun in the scope that are still in flight, if any.
    pub fn finish(mut self) -> Result<(), Leaks> {
        self.armed = false;
        self.leaks()
    }

    fn leaks(&self) -> Result<(), Leaks> {
        let in_flight = self.in_flight();
        if in_flight.is_empty() {
            return Ok(());
        }
        Err(Leaks {
            in_flight,
            made_at: self.made_at,
        })
    }
}

impl Drop for LeakCheck {
    fn drop(&mut self) {
        if !self.armed || thread::panicking() {
            return;
        }
        if let Err(leaks) = self.leaks() {
            panic!("{leaks}");
        }
    }
}

/// The operations still in flight at the end of a [`LeakCheck`]'s scope.
///
/// Its `Display` is the report a failing test prints: one line saying how many, and
/// where the check was made, then the table of [`InFlight`]. Its `Debug` is the same,
/// so that `check.finish().unwrap()` prints the table too.
///
/// # Examples
///
/// ```
/// let check = apm_tap::diagnostics::LeakCheck::this_thread();
/// let (completer, handle) = apm_tap::Completer::<u8>::new();
/// let leaks = check.finish().unwrap_err();
/// let op = &leaks.in_flight().operations()[0];
/// assert_eq!(op.location().line(), line!() - 3);
/// # drop((completer, handle));
/// ```
#[derive(Clone)]
pub struct Leaks {
    in_flight: InFlight,
    made_at: &'static Location<'static>,
}

impl Leaks {
    /// The operations, oldest first.
    pub fn in_flight(&self) -> &InFlight {
        &self.in_flight
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.made_at;
        match self.in_flight.len() {
            1 => write!(
                f,
                "1 operation begun in the scope of the LeakCheck at {at} is"
            )?,
            n => write!(
                f,
                "{n} operations begun in the scope of the LeakCheck at {at} are"
            )?,
        }
        write!(f, " still in flight:\n{}", self.in_flight)
    }
}

impl fmt::Debug for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // On a line of its own: `unwrap` writes its own words before it.
        write!(f, "\n{self}")
    }
}

impl StdError for Leaks {}

// The registry.

/// How many locks the registry is split into. A thread lists its operations under the
/// lock of its own shard (threads are given shards in turn), so that up to this many
/// threads begin operations without waiting for one another; unlisting takes the lock of
/// the shard that listed it.
const SHARDS: usize = 64;

/// How many slots a shard that lists nothing keeps room for: a thread that has a few
/// operations in flight at a time does not allocate the shard's storage again for each,
/// and a burst of operations leaves no more than this behind.
const KEPT: usize = 64;

/// One shard: a slab of the records it lists.
struct Shard {
    slots: Vec<Slot>,
    /// The first free slot; each free slot names the next.
    free: Option<u32>,
    /// How many slots are listed.
    listed: usize,
    /// This shard's next operation number: the id is `next * SHARDS + shard`, unique
    /// without a shared counter.
    next: u64,
}

enum Slot {
    Listed(Weak<Record>),
    /// Free, with the next free slot.
    Free(Option<u32>),
}

static REGISTRY: [Mutex<Shard>; SHARDS] = [const {
    Mutex::new(Shard {
        slots: Vec::new(),
        free: None,
        listed: 0,
        next: 0,
    })
}; SHARDS];

/// Where a record is listed.
pub(crate) struct Place {
    shard: usize,
    slot: u32,
}

/// Numbers threads in the order they first make an operation.
static THREADS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's shard and number.
    static THREAD: (usize, u64) = {
        // ORDERING: Relaxed: only uniqueness matters.
        let n = THREADS.fetch_add(1, Relaxed);
        (usize::try_from(n % SHARDS as u64).expect("below SHARDS"), n)
    };
}

/// This thread's shard and number; a thread being torn down lists in shard 0 as an
/// unknown thread.
fn this_thread() -> (usize, u64) {
    THREAD.try_with(|thread| *thread).unwrap_or((0, u64::MAX))
}

/// The shard's lock. A shard's state is consistent at every point (no user code runs
/// under it, and nothing there panics but allocation), so a poisoned lock is kept.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lists the record `make` makes from its id, its place and this thread's number.
pub(crate) fn list(make: impl FnOnce(u64, Place, u64) -> Record) -> Arc<Record> {
    let (index, thread) = this_thread();
    let mut shard = lock(&REGISTRY[index]);
    let slot = match shard.free {
        Some(slot) => {
            let Slot::Free(next) = shard.slots[slot as usize] else {
                unreachable!("the free list holds free slots")
            };
            shard.free = next;
            slot
        }
        None => {
            shard.slots.push(Slot::Free(None));
            u32::try_from(shard.slots.len() - 1).expect("fewer than 2^32 operations per shard")
        }
    };
    let id = shard.next * SHARDS as u64 + index as u64;
    shard.next += 1;
    shard.listed += 1;
    let record = Arc::new(make(id, Place { shard: index, slot }, thread));
    shard.slots[slot as usize] = Slot::Listed(Arc::downgrade(&record));
    record
}

/// Unlists the record at `place`.
pub(crate) fn unlist(place: &Place) {
    let mut shard = lock(&REGISTRY[place.shard]);
    shard.listed -= 1;
    if shard.listed == 0 {
        if shard.slots.capacity() > KEPT {
            shard.slots = Vec::new();
        } else {
            shard.slots.clear();
        }
        shard.free = None;
        return;
    }
    let free = shard.free.replace(place.slot);
    shard.slots[place.slot as usize] = Slot::Free(free);
}
