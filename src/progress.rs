//! Progress reporting both ways: an operation reports through a [`Progress`]; whoever
//! awaits it reads the reports as a `Stream` of [`Update`]s, or hands them to a
//! handler ([`Reporting::on_progress`]), on the APM side too ([`begin`]). Every report
//! made before the operation completed is delivered before its result.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Fuse, FutureExt};
use futures::stream::{FusedStream, Stream};
use pin_project::{pin_project, pinned_drop};

use crate::stream::channel::{Channel, Hand};
use crate::stream::{Buffer, Emit};
use crate::unwind::drop_quietly;
use crate::{AsyncResult, Error};

/// What an operation reports progress through: cheap to clone, `Send` and `Sync` when
/// `P` is `Send`, usable from any thread (a legacy progress callback can call it).
///
/// [`report`](Progress::report) never blocks and allocates nothing; it says what became
/// of the value, as a stream's [`Emitter::emit`](crate::stream::Emitter::emit) does:
/// with the default conflating buffer, a value not yet delivered is replaced by the
/// newer one (and handed back). Once the operation has completed, reports are refused
/// with [`Emit::Closed`]: progress never outlives completion.
///
/// # Examples
///
/// A legacy copy routine that calls a progress callback, bridged:
///
/// ```
/// use apm_tap::progress::{self, Update};
/// use futures::StreamExt;
///
/// // Legacy: calls `on_progress` with the percentage done.
/// fn copy_files(count: u32, on_progress: impl Fn(u32)) -> u32 {
///     for i in 1..=count {
///         on_progress(i * 100 / count);
///     }
///     count
/// }
///
/// let copy = progress::reporting(|progress| async move {
///     copy_files(4, |percent| {
///         let _ = progress.report(percent);
///     })
/// });
/// let updates: Vec<Update<u32, u32>> = futures::executor::block_on(copy.collect());
/// // Conflated: the reports made while nobody read come as the latest one.
/// assert_eq!(updates, [Update::Progress(100), Update::Done(4)]);
/// ```
pub struct Progress<P> {
    channel: Option<Arc<Channel<P, Error>>>,
}

impl<P> Progress<P> {
    /// A reporter that nobody reads: every report is refused with [`Emit::Closed`], at
    /// the cost of one branch. For calling an operation that takes a `Progress` without
    /// wanting its progress.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::progress::Progress;
    /// use apm_tap::stream::Emit;
    ///
    /// assert_eq!(Progress::none().report(50), Emit::Closed(50));
    /// ```
    pub const fn none() -> Progress<P> {
        Progress { channel: None }
    }

    /// Reports `value`, and says what became of it (see [`Emit`]): queued for delivery,
    /// queued after evicting an older report (handed back), or refused (handed back)
    /// because the operation has completed, its reader is gone, or a bounded queue is
    /// full. Never blocks, never panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::progress;
    /// use apm_tap::stream::Emit;
    ///
    /// let job = progress::reporting(|progress| async move {
    ///     assert_eq!(progress.report(10), Emit::Queued);
    ///     assert_eq!(progress.report(20), Emit::Evicted(10)); // nobody read 10 yet
    ///     progress
    /// });
    /// # use futures::StreamExt;
    /// let mut job = std::pin::pin!(job);
    /// let (first, done) = futures::executor::block_on(async { (job.next().await, job.next().await) });
    /// assert!(matches!(first, Some(progress::Update::Progress(20))));
    /// let Some(progress::Update::Done(progress)) = done else { unreachable!() };
    /// assert_eq!(progress.report(30), Emit::Closed(30)); // completed: refused
    /// ```
    #[inline]
    pub fn report(&self, value: P) -> Emit<P> {
        match &self.channel {
            Some(channel) => channel.emit(value),
            None => Emit::Closed(value),
        }
    }

    /// Whether reports are refused: the operation completed, its reader is gone, or this
    /// is [`Progress::none`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(apm_tap::progress::Progress::<u8>::none().is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.channel
            .as_ref()
            .is_none_or(|channel| channel.is_closed())
    }
}

impl<P> Clone for Progress<P> {
    fn clone(&self) -> Self {
        Progress {
            channel: self.channel.clone(),
        }
    }
}

impl<P> fmt::Debug for Progress<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// One item of a [`Reporting`] stream: a progress report, then, last, the operation's
/// result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update<P, T> {
    /// A progress report (the latest one, with the default conflating buffer).
    Progress(P),
    /// The operation's result: the last item.
    Done(T),
}

/// Runs the operation that `start` builds with a conflating [`Progress`] (only the
/// newest report waits to be read; no allocation per report), and yields its reports,
/// then its result, as a stream of [`Update`]s. Await it with a handler instead with
/// [`on_progress`](Reporting::on_progress).
///
/// Nothing runs until the first poll. Every report made before the operation completed
/// is yielded (or conflated into a later one) before [`Update::Done`]; later reports are
/// refused. Reports are yielded in the order they were queued, one at a time.
///
/// # Cancel safety
///
/// Dropping the stream drops the operation, refuses later reports, and drops the
/// reports not yet read.
///
/// # Examples
///
/// See [`Progress`].
pub fn reporting<P, F, Fut>(start: F) -> Reporting<Fut, P>
where
    F: FnOnce(Progress<P>) -> Fut,
    Fut: Future,
{
    reporting_with(Buffer::latest(), start)
}

/// [`reporting`] with another buffer for the reports: [`Buffer::unbounded`] or a
/// bounded one keeps every report (under its overflow policy), in order.
///
/// # Examples
///
/// ```
/// use apm_tap::progress::{self, Update};
/// use apm_tap::stream::Buffer;
/// use futures::StreamExt;
///
/// let job = progress::reporting_with(Buffer::unbounded(), |progress| async move {
///     for step in 1..=3 {
///         let _ = progress.report(step);
///     }
///     "done"
/// });
/// let updates: Vec<_> = futures::executor::block_on(job.collect());
/// assert_eq!(
///     updates,
///     [Update::Progress(1), Update::Progress(2), Update::Progress(3), Update::Done("done")]
/// );
/// ```
pub fn reporting_with<P, F, Fut>(buffer: Buffer, start: F) -> Reporting<Fut, P>
where
    F: FnOnce(Progress<P>) -> Fut,
    Fut: Future,
{
    let channel = Arc::new(Channel::new(buffer));
    let future = start(Progress {
        channel: Some(Arc::clone(&channel)),
    });
    Reporting {
        future: future.fuse(),
        output: None,
        completed: false,
        channel,
        hand: Hand::new(buffer),
        ended: false,
    }
}

/// Stream for the [`reporting`] and [`reporting_with`] functions.
#[must_use = "streams do nothing unless polled"]
#[pin_project(PinnedDrop)]
pub struct Reporting<Fut: Future, P> {
    #[pin]
    future: Fuse<Fut>,
    /// The operation's result, held until the reports made before it are read.
    output: Option<Fut::Output>,
    /// Whether the operation completed. Kept here rather than asked of `future`: a
    /// shared borrow of a pinned future that holds borrows of itself would invalidate
    /// them (Miri's Stacked Borrows reports it).
    completed: bool,
    channel: Arc<Channel<P, Error>>,
    hand: Hand<P>,
    ended: bool,
}

impl<Fut: Future, P> Reporting<Fut, P> {
    /// A future of the operation's result that hands each report to `handler` first, in
    /// the poll that reads it: the handler runs on the awaiting task, never two calls at
    /// once, in order, and all of them before the future resolves.
    ///
    /// # Panics
    ///
    /// A panic in `handler` propagates out of the poll that ran it.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::progress;
    /// use apm_tap::stream::Buffer;
    ///
    /// let mut seen = Vec::new();
    /// let job = progress::reporting_with(Buffer::unbounded(), |progress| async move {
    ///     let _ = progress.report(1);
    ///     let _ = progress.report(2);
    ///     'k'
    /// });
    /// let result = futures::executor::block_on(job.on_progress(|p| seen.push(p)));
    /// assert_eq!((result, seen), ('k', vec![1, 2]));
    /// ```
    pub fn on_progress<H: FnMut(P)>(self, handler: H) -> OnProgress<Fut, P, H> {
        OnProgress {
            reporting: self,
            handler,
        }
    }
}

impl<Fut: Future, P: Copy> Reporting<Fut, P> {
    /// A handle that reads the newest report, from any thread, without taking it: for a
    /// caller that shows the current progress (a UI refreshed on a timer) while the
    /// operation runs elsewhere. The stream still yields every report as before.
    ///
    /// For `Copy` reports only: the copy is made under the reports' lock, where no user
    /// code may run (rule 18), and a `Copy` type has no `Clone` code to run. Keeping it
    /// costs one copy per report accepted from this call on. Call it before the
    /// operation starts: a report read before the call is not known to it.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::progress;
    ///
    /// let job = progress::reporting(|progress| async move {
    ///     let _ = progress.report(25);
    ///     let _ = progress.report(50);
    ///     "copied"
    /// });
    /// let latest = job.latest();
    /// assert_eq!(latest.get(), None); // nothing reported yet
    /// let handle = apm_tap::begin(job.on_progress(|_: u32| {}));
    /// assert_eq!(handle.end(), Ok("copied"));
    /// assert_eq!(latest.get(), Some(50));
    /// ```
    pub fn latest(&self) -> Latest<P> {
        self.channel.keep_newest(&self.hand);
        Latest {
            channel: Arc::clone(&self.channel),
        }
    }
}

/// Reads the newest report of an operation: see [`Reporting::latest`].
pub struct Latest<P> {
    channel: Arc<Channel<P, Error>>,
}

impl<P: Copy> Latest<P> {
    /// The newest report accepted since [`Reporting::latest`] was called (read by the
    /// stream's reader or not), else the newest one still unread at that call, else
    /// `None`: a report already read before that call is not known. Reports refused
    /// (after completion, by a full bounded queue) do not count. Never blocks for
    /// longer than the reports' lock is held by a report.
    ///
    /// # Examples
    ///
    /// See [`Reporting::latest`].
    pub fn get(&self) -> Option<P> {
        self.channel.newest()
    }
}

impl<P> Clone for Latest<P> {
    fn clone(&self) -> Self {
        Latest {
            channel: Arc::clone(&self.channel),
        }
    }
}

impl<P> fmt::Debug for Latest<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latest").finish_non_exhaustive()
    }
}

impl<Fut: Future, P> Stream for Reporting<Fut, P> {
    type Item = Update<P, Fut::Output>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if !*this.completed {
            if let Poll::Ready(output) = this.future.poll(cx) {
                *this.completed = true;
                *this.output = Some(output);
                // Reports made from now on are refused; the ones queued come first.
                this.channel.finish();
            }
        }
        match this.channel.poll_next(cx, this.hand) {
            Poll::Ready(Ok(report)) => Poll::Ready(Some(Update::Progress(report))),
            // `finish` ended the channel: the result is there.
            Poll::Ready(Err(_)) if *this.completed => {
                *this.ended = true;
                Poll::Ready(this.output.take().map(Update::Done))
            }
            // An overflowed `Fail` buffer refuses later reports, but the operation runs
            // on: its poll above registered the waker for its result.
            Poll::Ready(Err(_)) => Poll::Pending,
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<Fut: Future, P> FusedStream for Reporting<Fut, P> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// Refuses later reports and drops the unread ones and a result nobody took (each
/// panic caught).
#[pinned_drop]
impl<Fut: Future, P> PinnedDrop for Reporting<Fut, P> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        this.channel.close();
        this.hand.drop_items_quietly();
        // A result nobody took: its drop's panic is discarded (rule 17).
        drop_quietly(this.output.take());
    }
}

impl<Fut: Future, P> fmt::Debug for Reporting<Fut, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporting")
            .field("completed", &self.completed)
            .field("ended", &self.ended)
            .finish()
    }
}

/// How many reports [`OnProgress`] hands over in one poll before it lets the executor
/// run other tasks.
const BUDGET: usize = 64;

/// Future for the [`Reporting::on_progress`] method.
#[must_use = "futures do nothing unless polled"]
#[pin_project]
pub struct OnProgress<Fut: Future, P, H> {
    #[pin]
    reporting: Reporting<Fut, P>,
    handler: H,
}

impl<Fut: Future, P, H: FnMut(P)> Future for OnProgress<Fut, P, H> {
    type Output = Fut::Output;

    /// # Panics
    ///
    /// Panics if polled after it returned its output.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        for _ in 0..BUDGET {
            match this.reporting.as_mut().poll_next(cx) {
                Poll::Ready(Some(Update::Progress(report))) => (this.handler)(report),
                Poll::Ready(Some(Update::Done(output))) => return Poll::Ready(output),
                Poll::Ready(None) => panic!("`OnProgress` polled after it completed"),
                Poll::Pending => return Poll::Pending,
            }
        }
        // An operation that reports without end must not keep the executor's thread.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<Fut: Future, P, H> fmt::Debug for OnProgress<Fut, P, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnProgress")
            .field("reporting", &self.reporting)
            .finish_non_exhaustive()
    }
}

/// [`begin`](crate::begin) with progress: runs the operation that `start` builds, calls
/// `on_progress` with its reports (conflated), and completes the handle with its result.
/// Every report made before the operation completed reaches `on_progress` before the
/// result is stored, so before the callback runs and before `end` returns. For a
/// callback, state or spawner, give the same future to a [`Builder`](crate::Builder):
/// `Builder::new().callback(..).begin(progress::reporting(start).on_progress(handler))`.
///
/// `on_progress` runs where the operation's task runs (inline in `begin`'s first poll,
/// then on the executor), one call at a time. To choose where, give a
/// [`Dispatch`](crate::Dispatch) as the spawner:
/// `Builder::new().spawner(&Dispatch::thread(&ui)).begin(progress::reporting(start).on_progress(handler))`.
///
/// # Panics
///
/// A panic in `on_progress` ends the operation with [`Error::Panicked`], as any panic of
/// the future does (rule 13).
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = Arc::clone(&seen);
/// let handle = apm_tap::progress::begin(
///     |progress| async move {
///         let _ = progress.report(50);
///         tokio::task::yield_now().await;
///         let _ = progress.report(100);
///         "copied"
///     },
///     move |percent: u32| log.lock().unwrap().push(percent),
/// );
/// assert_eq!(handle.end(), Ok("copied"));
/// assert_eq!(*seen.lock().unwrap(), [50, 100]);
/// ```
#[cfg_attr(feature = "diagnostics", track_caller)]
pub fn begin<P, F, Fut, H>(start: F, on_progress: H) -> AsyncResult<Fut::Output>
where
    F: FnOnce(Progress<P>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
    P: Send + 'static,
    H: FnMut(P) + Send + 'static,
{
    crate::begin(reporting(start).on_progress(on_progress))
}
