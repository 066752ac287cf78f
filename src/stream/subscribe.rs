//! [`subscribe`]: any `Stream` pushed to a set of callbacks ([`Subscriber`]), with
//! demand ([`Demand::request`]) and cancellation, the Reactive Streams way.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::stream::Stream;
use pin_project::pin_project;

use crate::runtime::Spawner;
use crate::sync::{Mutex, MutexGuard, PoisonError};
use crate::unwind::catch;
use crate::{AsyncResult, Builder, Error};

/// The callbacks a [`subscribe`]d stream calls: `on_next` for each item, up to the
/// demand requested, then exactly one of `on_error` and `on_complete`, unless the
/// subscription was cancelled or a method panicked first.
///
/// Calls are serial (never two at once, each one finished before the next begins) and
/// none comes after `on_error` or `on_complete`, after a `cancel` returned (but the one
/// running then), or after a method panicked.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Demand, Subscriber};
///
/// struct Print;
///
/// impl Subscriber<u32, apm_tap::Error> for Print {
///     fn on_next(&mut self, item: u32, demand: &Demand) {
///         println!("got {item}");
///         demand.request(1);
///     }
///     fn on_error(&mut self, error: apm_tap::Error) {
///         println!("failed: {error}");
///     }
///     fn on_complete(&mut self) {
///         println!("done");
///     }
/// }
///
/// let items = futures::stream::iter([1, 2, 3]).map(Ok);
/// # use futures::StreamExt;
/// let subscription = apm_tap::stream::subscribe(items, Print);
/// subscription.request(1);
/// assert_eq!(subscription.end(), Ok(()));
/// ```
pub trait Subscriber<T, E>: Send + 'static {
    /// The next item. `demand` requests more ([`Demand::request`]) or cancels; a
    /// request made here returns at once and never calls `on_next` recursively.
    fn on_next(&mut self, item: T, demand: &Demand);
    /// The stream's error; [`Error::ZeroDemand`] converted after a request of zero
    /// items; or [`Error::Panicked`] converted when the stream panicked: the last call.
    fn on_error(&mut self, error: E);
    /// The stream ended: the last call.
    fn on_complete(&mut self);
}

/// Requests items of a [`subscribe`]d stream, or cancels the subscription: what
/// [`Subscriber::on_next`] receives, and what [`Subscription::demand`] gives to other
/// threads. Cheap to clone; every method is thread-safe and returns at once.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Demand, Subscriber};
/// use futures::StreamExt;
///
/// struct Count(u32);
///
/// impl Subscriber<u32, apm_tap::Error> for Count {
///     fn on_next(&mut self, _: u32, _: &Demand) {
///         self.0 += 1;
///     }
///     fn on_error(&mut self, _: apm_tap::Error) {}
///     fn on_complete(&mut self) {}
/// }
///
/// let subscription = apm_tap::stream::subscribe(futures::stream::repeat(1).map(Ok), Count(0));
/// let demand = subscription.demand();
/// std::thread::spawn(move || demand.cancel()).join().unwrap();
/// assert_eq!(subscription.end(), Err(apm_tap::Error::Cancelled));
/// ```
#[derive(Clone)]
pub struct Demand {
    shared: Arc<Mutex<Requested>>,
}

/// The demand's state, behind a lock under which no user code runs.
struct Requested {
    /// Items requested and not yet taken by the driving task; saturating.
    items: u64,
    cancelled: bool,
    /// A request of zero items was made (Reactive Streams rule 3.9).
    zero: bool,
    /// The driving task's waker, taken by the request or cancel that wakes it.
    waker: Option<Waker>,
}

/// What the driving task finds when it takes the demand.
enum Taken {
    Items(u64),
    Cancelled,
    Zero,
    Nothing,
}

impl Demand {
    fn new() -> Demand {
        Demand {
            shared: Arc::new(Mutex::new(Requested {
                items: 0,
                cancelled: false,
                zero: false,
                waker: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Requested> {
        // No user code runs under the lock: a poisoned one is consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests `n` more items. Requests add up, saturating at `u64::MAX` (effectively
    /// unbounded). A request of zero ends the subscription: the subscriber gets
    /// `on_error` with [`Error::ZeroDemand`] converted, and the subscription ends with
    /// it (Reactive Streams rule 3.9). After the subscription ended it does nothing.
    ///
    /// # Examples
    ///
    /// See [`Subscriber`].
    pub fn request(&self, n: u64) {
        let mut requested = self.lock();
        if n == 0 {
            requested.zero = true;
        } else {
            requested.items = requested.items.saturating_add(n);
        }
        let waker = requested.waker.take();
        drop(requested);
        wake(waker);
    }

    /// Cancels the subscription: the subscriber gets no call after the one running now
    /// (if any), the stream is dropped on the executor, and the subscription ends with
    /// [`Error::Cancelled`] unless it had already ended. Idempotent and thread-safe.
    ///
    /// # Examples
    ///
    /// See [`Demand`].
    pub fn cancel(&self) {
        let mut requested = self.lock();
        requested.cancelled = true;
        let waker = requested.waker.take();
        drop(requested);
        wake(waker);
    }

    /// Whether [`cancel`](Demand::cancel) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Demand, Subscriber};
    ///
    /// struct Ignore;
    ///
    /// impl Subscriber<u8, apm_tap::Error> for Ignore {
    ///     fn on_next(&mut self, _: u8, _: &Demand) {}
    ///     fn on_error(&mut self, _: apm_tap::Error) {}
    ///     fn on_complete(&mut self) {}
    /// }
    ///
    /// let subscription = apm_tap::stream::subscribe(futures::stream::pending::<Result<u8, apm_tap::Error>>(), Ignore);
    /// assert!(!subscription.demand().is_cancelled());
    /// subscription.cancel();
    /// assert!(subscription.demand().is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Takes every item requested so far; or says why the task must stop; or stores the
    /// waker (cloned outside the lock, rule 18) for the next request or cancel.
    fn take(&self, cx: &mut Context<'_>) -> Poll<Taken> {
        match self.take_now() {
            Taken::Nothing => {}
            taken => return Poll::Ready(taken),
        }
        self.register(cx);
        match self.take_now() {
            Taken::Nothing => Poll::Pending,
            taken => Poll::Ready(taken),
        }
    }

    fn take_now(&self) -> Taken {
        let mut requested = self.lock();
        if requested.cancelled {
            Taken::Cancelled
        } else if requested.zero {
            Taken::Zero
        } else if requested.items > 0 {
            Taken::Items(std::mem::take(&mut requested.items))
        } else {
            Taken::Nothing
        }
    }

    /// Stores the task's waker for the next request or cancel; an equal one is not
    /// cloned again.
    fn register(&self, cx: &mut Context<'_>) {
        let requested = self.lock();
        if requested
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return;
        }
        drop(requested);
        let waker = cx.waker().clone();
        let replaced = self.lock().waker.replace(waker);
        drop(replaced);
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        crate::unwind::quietly(|| waker.wake());
    }
}

impl fmt::Debug for Demand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let requested = self.lock();
        f.debug_struct("Demand")
            .field("items", &requested.items)
            .field("cancelled", &requested.cancelled)
            .finish()
    }
}

/// How many items the driving task delivers in one poll before it lets the executor
/// run other tasks.
const BUDGET: usize = 64;

/// The task that drives a subscription: takes demand, polls the stream, calls the
/// subscriber.
#[pin_project]
struct Drive<S: Stream, Sub> {
    #[pin]
    stream: S,
    subscriber: Sub,
    demand: Demand,
    /// Items taken from the demand and not delivered yet.
    held: u64,
    /// An item read ahead of demand, so that the stream's end is delivered without
    /// demand (Reactive Streams rule 1.4); delivered at the next request.
    ahead: Option<S::Item>,
}

/// What the driving task does next.
enum Step<T, E> {
    Deliver(T),
    Fail(E),
    Complete,
    Stop(Error),
}

impl<S, T, E, Sub> Drive<S, Sub>
where
    S: Stream<Item = Result<T, E>>,
    E: From<Error>,
    Sub: Subscriber<T, E>,
{
    /// Adds what was requested to the items held; `Err` when the task must stop.
    fn take(held: &mut u64, taken: Taken) -> Result<(), Error> {
        match taken {
            Taken::Items(n) => *held = held.saturating_add(n),
            Taken::Cancelled => return Err(Error::Cancelled),
            Taken::Zero => return Err(Error::ZeroDemand),
            Taken::Nothing => {}
        }
        Ok(())
    }

    /// The next step, or `Pending` with the task registered for whatever it waits for:
    /// demand, or the stream (and a cancel).
    fn next_step(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Step<T, E>> {
        let this = self.project();
        if let Err(stop) = Self::take(this.held, this.demand.take_now()) {
            return Poll::Ready(Step::Stop(stop));
        }
        let result = match this.ahead.take() {
            Some(result) => result,
            None => match catch(|| this.stream.poll_next(cx)) {
                // A panicking stream fails the subscription: the subscriber is told
                // (`on_error`), and the subscription ends with the same panic.
                Err(payload) => return Poll::Ready(Step::Stop(Error::from_panic(payload))),
                Ok(Poll::Ready(Some(result))) => result,
                Ok(Poll::Ready(None)) => return Poll::Ready(Step::Complete),
                Ok(Poll::Pending) => {
                    // The stream wakes the task for an item; the demand must wake it
                    // for a cancel.
                    this.demand.register(cx);
                    return match Self::take(this.held, this.demand.take_now()) {
                        Err(stop) => Poll::Ready(Step::Stop(stop)),
                        Ok(()) => Poll::Pending,
                    };
                }
            },
        };
        let item = match result {
            Ok(item) => item,
            Err(error) => return Poll::Ready(Step::Fail(error)),
        };
        if *this.held > 0 {
            *this.held -= 1;
            return Poll::Ready(Step::Deliver(item));
        }
        // An item, and no demand: keep it, and wait for a request.
        *this.ahead = Some(Ok(item));
        match this.demand.take(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(taken) => match Self::take(this.held, taken) {
                Err(stop) => Poll::Ready(Step::Stop(stop)),
                // Demand came meanwhile: the caller loops.
                Ok(()) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            },
        }
    }
}

impl<S, T, E, Sub> Future for Drive<S, Sub>
where
    S: Stream<Item = Result<T, E>>,
    E: From<Error>,
    Sub: Subscriber<T, E>,
{
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        for _ in 0..BUDGET {
            let step = match self.as_mut().next_step(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(step) => step,
            };
            let this = self.as_mut().project();
            // A cancel that returned before this point wins: the subscriber hears
            // nothing more (the item, if any, is dropped with the task).
            if this.demand.is_cancelled() {
                return Poll::Ready(Err(Error::Cancelled));
            }
            match step {
                Step::Deliver(item) => this.subscriber.on_next(item, this.demand),
                Step::Fail(error) => {
                    this.subscriber.on_error(error);
                    return Poll::Ready(Ok(()));
                }
                Step::Complete => {
                    this.subscriber.on_complete();
                    return Poll::Ready(Ok(()));
                }
                Step::Stop(stop @ (Error::ZeroDemand | Error::Panicked(_))) => {
                    this.subscriber.on_error(stop.clone().into());
                    return Poll::Ready(Err(stop));
                }
                Step::Stop(stop) => return Poll::Ready(Err(stop)),
            }
        }
        // A stream that is always ready, with demand to match, must not keep the
        // executor's thread.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Pushes `stream`'s items to `subscriber`, as many as it requests: the Reactive
/// Streams shape (`subscribe`, `request(n)`, `cancel`) over any `Stream` of results.
///
/// No item is delivered until something requests it ([`Subscription::request`], or
/// [`Demand::request`] inside `on_next`); the stream's end or error is delivered
/// without demand, so the subscription reads one item ahead of demand and holds it. A task on the ambient tokio runtime (else the
/// crate's default one, as for [`begin`](crate::begin)) polls the stream while there
/// is demand and calls the subscriber; [`subscribe_on`] chooses the executor. The first
/// poll runs inline, as `begin`'s does.
///
/// The subscription ends when the stream does (`on_complete`, or `on_error` with the
/// stream's error: [`end`](Subscription::end) returns `Ok(())`), when it is cancelled
/// ([`Error::Cancelled`]: no call follows once `cancel` returned, but the one running
/// then), after a request of zero items ([`Error::ZeroDemand`], also given to
/// `on_error`), when the stream panics ([`Error::Panicked`], also given to `on_error`),
/// or when a subscriber method panics ([`Error::Panicked`]: no call follows, the stream
/// is dropped, the panic is reported once, there).
///
/// # Panics
///
/// Panics if the default runtime is needed and cannot be started. A panic of the
/// subscriber never propagates, not even from the first poll that runs inside this
/// call: it ends the subscription with [`Error::Panicked`].
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Demand, Subscriber};
/// use futures::StreamExt;
/// use std::sync::mpsc;
///
/// struct Collect(mpsc::Sender<u32>);
///
/// impl Subscriber<u32, apm_tap::Error> for Collect {
///     fn on_next(&mut self, item: u32, demand: &Demand) {
///         self.0.send(item).unwrap();
///         demand.request(1); // one at a time
///     }
///     fn on_error(&mut self, _: apm_tap::Error) {}
///     fn on_complete(&mut self) {}
/// }
///
/// let (tx, rx) = mpsc::channel();
/// let items = futures::stream::iter(1..=3).map(Ok);
/// let subscription = apm_tap::stream::subscribe(items, Collect(tx));
/// assert!(rx.try_recv().is_err()); // no demand yet
/// subscription.request(1);
/// assert_eq!(subscription.end(), Ok(()));
/// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2, 3]);
/// ```
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn subscribe<S, T, E, Sub>(stream: S, subscriber: Sub) -> Subscription
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    Sub: Subscriber<T, E>,
{
    start(Builder::new(), stream, subscriber)
}

/// [`subscribe`] on a chosen executor: a tokio `Handle` or `Runtime`, any
/// [`Spawner`], or a [`Dispatch`](crate::Dispatch) policy (the subscriber's calls then
/// run where it says: on a [`CallbackThread`](crate::CallbackThread), on the thread
/// that emits for [`Dispatch::inline`](crate::Dispatch::inline)), one at a time.
///
/// # Panics
///
/// Propagates a panic of the spawner, as [`begin_on`](crate::begin_on) does.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Demand, Subscriber};
/// use futures::StreamExt;
///
/// struct Sum(u64);
///
/// impl Subscriber<u64, apm_tap::Error> for Sum {
///     fn on_next(&mut self, item: u64, _: &Demand) {
///         self.0 += item;
///     }
///     fn on_error(&mut self, _: apm_tap::Error) {}
///     fn on_complete(&mut self) {
///         assert_eq!(self.0, 6);
///     }
/// }
///
/// let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
/// let items = futures::stream::iter([1, 2, 3]).map(Ok);
/// let subscription = apm_tap::stream::subscribe_on(&runtime, items, Sum(0));
/// subscription.request(u64::MAX);
/// assert_eq!(subscription.end(), Ok(()));
/// ```
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn subscribe_on<P, S, T, E, Sub>(spawner: &P, stream: S, subscriber: Sub) -> Subscription
where
    P: Spawner,
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    Sub: Subscriber<T, E>,
{
    start(Builder::new().spawner(spawner), stream, subscriber)
}

#[cfg_attr(feature = "diagnostics", track_caller)]
fn start<S, T, E, Sub>(
    builder: Builder<'_, Result<(), Error>>,
    stream: S,
    subscriber: Sub,
) -> Subscription
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    Sub: Subscriber<T, E>,
{
    let demand = Demand::new();
    let handle = builder.begin(Drive {
        stream,
        subscriber,
        demand: demand.clone(),
        held: 0,
        ahead: None,
    });
    Subscription { demand, handle }
}

/// A running [`subscribe`]: request items, cancel, and learn how it ended, by blocking
/// ([`end`](Subscription::end)) or by `.await`.
///
/// Dropping it does not cancel: the subscription runs on while it has demand (the
/// subscriber holds a [`Demand`] too).
#[must_use = "a subscription delivers nothing until items are requested"]
pub struct Subscription {
    demand: Demand,
    handle: AsyncResult<Result<(), Error>>,
}

impl Subscription {
    /// [`Demand::request`].
    ///
    /// # Examples
    ///
    /// See [`subscribe`].
    pub fn request(&self, n: u64) {
        self.demand.request(n);
    }

    /// [`Demand::cancel`].
    ///
    /// # Examples
    ///
    /// See [`Demand`].
    pub fn cancel(&self) {
        self.demand.cancel();
    }

    /// A [`Demand`] for this subscription, for another thread.
    ///
    /// # Examples
    ///
    /// See [`Demand`].
    pub fn demand(&self) -> Demand {
        self.demand.clone()
    }

    /// Whether the subscription has ended.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Demand, Subscriber};
    ///
    /// struct Ignore;
    ///
    /// impl Subscriber<u8, apm_tap::Error> for Ignore {
    ///     fn on_next(&mut self, _: u8, _: &Demand) {}
    ///     fn on_error(&mut self, _: apm_tap::Error) {}
    ///     fn on_complete(&mut self) {}
    /// }
    ///
    /// let subscription = apm_tap::stream::subscribe(futures::stream::pending::<Result<u8, apm_tap::Error>>(), Ignore);
    /// assert!(!subscription.is_completed());
    /// subscription.cancel();
    /// subscription.wait().unwrap();
    /// assert!(subscription.is_completed());
    /// ```
    pub fn is_completed(&self) -> bool {
        self.handle.is_completed()
    }

    /// Blocks until the subscription ends, without taking its outcome.
    ///
    /// # Errors
    ///
    /// [`Error::WouldDeadlock`] where blocking would stop the runtime that drives the
    /// subscription, as [`AsyncResult::wait`] says.
    ///
    /// # Blocking
    ///
    /// As [`AsyncResult::wait`].
    ///
    /// # Examples
    ///
    /// See [`is_completed`](Subscription::is_completed).
    pub fn wait(&self) -> Result<(), Error> {
        self.handle.wait()
    }

    /// Blocks until the subscription ends, and says how.
    ///
    /// # Errors
    ///
    /// [`Error::Cancelled`], [`Error::ZeroDemand`], [`Error::Panicked`] (a subscriber
    /// method panicked), [`Error::Abandoned`] (the executor dropped the task), or
    /// [`Error::WouldDeadlock`] as [`AsyncResult::end`] says. `Ok(())` when the stream
    /// ended and the subscriber was told (`on_complete` or `on_error`).
    ///
    /// # Blocking
    ///
    /// As [`AsyncResult::end`].
    ///
    /// # Examples
    ///
    /// See [`subscribe`].
    pub fn end(self) -> Result<(), Error> {
        crate::flatten(self.handle.end())
    }
}

/// Awaiting a subscription is its non-blocking [`end`](Subscription::end).
impl Future for Subscription {
    type Output = Result<(), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.handle.poll_end(cx).map(crate::flatten)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("demand", &self.demand)
            .field("completed", &self.is_completed())
            .finish()
    }
}
