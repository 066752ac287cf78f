//! [`Puller`]: any `Stream` read the APM way, one `begin_next` / `end_next` pair per
//! item.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::stream::{Fuse, Stream, StreamExt};

use crate::sync::{Mutex, MutexGuard, PoisonError};
use crate::track::Origin;
use crate::unwind::{catch, drop_quietly};
use crate::{AsyncCallback, AsyncResult, Builder, Completer, Error, State};

/// A stream read with Begin/End pairs: each [`begin_next`](Puller::begin_next) starts
/// reading the next item, and its handle's `end` (or [`Puller::end_next`]) returns it,
/// `None` once the stream has ended.
///
/// A pull whose item is already there (buffered in a callback stream, say) completes
/// inside `begin_next`: [`completed_synchronously`](AsyncResult::completed_synchronously)
/// is true and its callback has run when `begin_next` returns, as with any
/// [`begin`](crate::begin) (so a legacy loop checks the flag, or relies on rule 28).
/// Pulls are served one at a time, in the order they were begun. A cancelled pull
/// ([`AsyncResult::cancel`]) loses no item: an item it read after its cancel goes to
/// the next pull. A pull cancelled while it waits for the stream keeps its turn until
/// the stream's next item or end (which then goes to the next pull): the stream has
/// no way to be told.
///
/// Clones share the stream. A pull that must wait runs on the ambient tokio runtime, or
/// the crate's default one.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::Puller;
/// use apm_tap::{AsyncCallback, State};
///
/// let pull = Puller::new(futures::stream::iter(["a", "b"]));
/// let first = pull.begin_next(AsyncCallback::none(), State::none());
/// assert!(first.completed_synchronously()); // the item was there
/// assert_eq!(pull.end_next(first), Ok(Some("a")));
/// assert_eq!(pull.begin_next(AsyncCallback::none(), State::none()).end(), Ok(Some("b")));
/// assert_eq!(pull.begin_next(AsyncCallback::none(), State::none()).end(), Ok(None));
/// ```
#[doc(alias = "BeginRead")]
pub struct Puller<S: Stream> {
    shared: Arc<Mutex<Turns<S>>>,
}

/// The stream and whose turn it is, behind a lock under which no user code runs.
struct Turns<S: Stream> {
    /// `None` while the pull being served holds it, or for good once it panicked.
    stream: Option<Pin<Box<Fuse<S>>>>,
    /// The stream panicked: every later pull reads the end.
    gone: bool,
    /// An item that a cancelled pull read: the next pull's.
    returned: Option<S::Item>,
    /// The next ticket to hand out, and the one being served.
    next_ticket: u64,
    serving: u64,
    /// The wakers of pulls waiting for their turn, by ticket.
    waiting: Vec<(u64, Waker)>,
    /// Tickets whose pulls were dropped before their turn: skipped when it comes.
    skipped: Vec<u64>,
}

impl<S: Stream> Turns<S> {
    /// Serves the next ticket that still has a pull; returns that pull's waker.
    fn advance(&mut self) -> Option<Waker> {
        self.serving += 1;
        while let Some(at) = self.skipped.iter().position(|t| *t == self.serving) {
            self.skipped.swap_remove(at);
            self.serving += 1;
        }
        let serving = self.serving;
        let at = self.waiting.iter().position(|(t, _)| *t == serving)?;
        Some(self.waiting.swap_remove(at).1)
    }
}

/// The last owner drops the stream and any returned item; a panic there is discarded
/// (rule 17).
impl<S: Stream> Drop for Turns<S> {
    fn drop(&mut self) {
        drop_quietly(self.stream.take());
        drop_quietly(self.returned.take());
    }
}

impl<S: Stream> Clone for Puller<S> {
    fn clone(&self) -> Self {
        Puller {
            shared: Arc::clone(&self.shared),
        }
    }
}

fn lock<S: Stream>(shared: &Mutex<Turns<S>>) -> MutexGuard<'_, Turns<S>> {
    // No user code runs under the lock: a poisoned one is consistent.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S> Puller<S>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    /// Reads `stream` with Begin/End pairs.
    ///
    /// # Examples
    ///
    /// See [`Puller`].
    pub fn new(stream: S) -> Puller<S> {
        Puller {
            shared: Arc::new(Mutex::new(Turns {
                stream: Some(Box::pin(stream.fuse())),
                gone: false,
                returned: None,
                next_ticket: 0,
                serving: 0,
                waiting: Vec::new(),
                skipped: Vec::new(),
            })),
        }
    }

    /// Begins reading the next item: `callback` runs once it is read (or the stream has
    /// ended), with the handle whose `end` returns it ([`AsyncCallback::none`] for no
    /// callback).
    ///
    /// # Panics
    ///
    /// Propagates a panic of `callback` when the item was there and the callback runs
    /// inside this call, after the item is stored. A panic in the stream's `poll_next`
    /// ends that pull with [`Error::Panicked`]; the stream is then dropped, and every
    /// later pull ends with `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{from_events, Buffer, Puller};
    /// use apm_tap::{AsyncResult, State};
    /// use std::sync::mpsc;
    ///
    /// let (give, take) = mpsc::channel();
    /// let events = from_events(Buffer::unbounded(), move |emitter| {
    ///     give.send(emitter).unwrap();
    ///     Ok::<_, apm_tap::Error>(|| {})
    /// });
    /// let pull = Puller::new(events);
    /// let (tx, rx) = mpsc::channel();
    /// let handle = pull.begin_next(
    ///     move |h: AsyncResult<Option<Result<u32, apm_tap::Error>>>| tx.send(h.end()).unwrap(),
    ///     State::new("first"),
    /// );
    /// assert!(!handle.completed_synchronously()); // nothing was emitted yet
    /// let _ = take.recv().unwrap().emit(7);
    /// assert_eq!(rx.recv().unwrap(), Ok(Some(Ok(7))));
    /// ```
    #[cfg_attr(feature = "diagnostics", track_caller)]
    pub fn begin_next(
        &self,
        callback: impl Into<AsyncCallback<Option<S::Item>>>,
        state: State,
    ) -> AsyncResult<Option<S::Item>> {
        let (completer, handle) = Builder::new().callback(callback).state(state).completer();
        let ticket = {
            let mut turns = lock(&self.shared);
            turns.next_ticket += 1;
            turns.next_ticket - 1
        };
        let mut pull = Pull {
            shared: Arc::clone(&self.shared),
            ticket,
            completer: Some(completer),
            stream: None,
            polling: false,
            released: false,
            first: true,
        };
        // Served at once, with the item there: the pull completes inside this call,
        // synchronously. Otherwise a task finishes it, which `begin`'s own inline poll
        // does not touch (a completion there would not be synchronous any more).
        let waker = futures::task::noop_waker();
        if pull
            .poll_pull(&mut Context::from_waker(&waker), true)
            .is_pending()
        {
            // The task is plumbing of the operation listed by `completer()`: not listed.
            let none = AsyncCallback::none();
            let origin = Origin::plumbing();
            drop(crate::to_apm::start_here(
                pull,
                none,
                State::none(),
                false,
                origin,
            ));
        }
        handle
    }

    /// Ends a pull: the item, `None` once the stream has ended.
    ///
    /// # Errors
    ///
    /// As [`AsyncResult::end`]: [`Error::Cancelled`] for a cancelled pull,
    /// [`Error::Panicked`], [`Error::WouldDeadlock`].
    ///
    /// # Blocking
    ///
    /// As [`AsyncResult::end`]: until the item is read.
    ///
    /// # Examples
    ///
    /// See [`Puller`].
    pub fn end_next(&self, handle: AsyncResult<Option<S::Item>>) -> Result<Option<S::Item>, Error> {
        handle.end()
    }
}

/// One pull: waits for its ticket to be served, reads one item, completes its handle.
/// Dropped at any point, it gives the stream and the turn on.
struct Pull<S: Stream> {
    shared: Arc<Mutex<Turns<S>>>,
    ticket: u64,
    completer: Option<Completer<Option<S::Item>>>,
    /// The stream, while this pull is served and reading.
    stream: Option<Pin<Box<Fuse<S>>>>,
    /// Set while the stream's `poll_next` runs: still set at the release, it panicked.
    polling: bool,
    /// The stream and the turn were given on.
    released: bool,
    /// The next poll as a future is `begin`'s inline one, inside `begin_next`, right
    /// after `begin_next`'s own: it does nothing (tokio polls a spawned task anyway).
    first: bool,
}

impl<S: Stream> Pull<S> {
    /// Serves this pull as far as it goes; `Ready` once its handle is completed.
    /// `inline`: inside `begin_next`, where a completion is synchronous.
    fn poll_pull(&mut self, cx: &mut Context<'_>, inline: bool) -> Poll<()> {
        if self.stream.is_none() {
            let mut turns = lock(&self.shared);
            if turns.serving != self.ticket {
                drop(turns);
                self.wait_turn(cx);
                return Poll::Pending;
            }
            // Served. A cancelled pull reads nothing: the turn goes on (at the drop).
            if self.completer.as_ref().is_none_or(Completer::is_cancelled) {
                return Poll::Ready(());
            }
            if let Some(item) = turns.returned.take() {
                drop(turns);
                return self.complete(Some(item), inline);
            }
            if turns.gone {
                drop(turns);
                return self.complete(None, inline);
            }
            self.stream = turns.stream.take();
        }
        let Some(stream) = self.stream.as_mut() else {
            unreachable!("a served pull holds the stream")
        };
        self.polling = true;
        let polled = catch(|| stream.as_mut().poll_next(cx));
        self.polling = false;
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(item)) => self.complete(item, inline),
            Err(payload) => {
                self.polling = true; // the stream is dropped, not given back
                self.release();
                if let Some(completer) = self.completer.take() {
                    completer.fail(Error::from_panic(payload), inline);
                }
                Poll::Ready(())
            }
        }
    }

    /// Stores this pull's waker for its turn (cloned outside the lock, rule 18).
    fn wait_turn(&mut self, cx: &mut Context<'_>) {
        let known = lock(&self.shared)
            .waiting
            .iter()
            .any(|(ticket, waker)| *ticket == self.ticket && waker.will_wake(cx.waker()));
        if known {
            return;
        }
        let waker = cx.waker().clone();
        let mut turns = lock(&self.shared);
        let replaced = match turns.waiting.iter_mut().find(|(t, _)| *t == self.ticket) {
            Some((_, old)) => Some(std::mem::replace(old, waker)),
            None => {
                turns.waiting.push((self.ticket, waker));
                None
            }
        };
        let served = turns.serving == self.ticket;
        drop(turns);
        drop(replaced);
        if served {
            // Served meanwhile: whoever served it may have missed the new waker.
            cx.waker().wake_by_ref();
        }
    }

    /// Completes the handle with `item`; an item refused by a cancelled handle goes
    /// back for the next pull.
    fn complete(&mut self, item: Option<S::Item>, inline: bool) -> Poll<()> {
        let Some(completer) = self.completer.take() else {
            self.release();
            return Poll::Ready(());
        };
        if inline {
            // The turn goes on first, so that a callback that begins the next pull (a
            // legacy loop) is served inside its own `begin_next` too. Nobody has the
            // handle yet, so nothing can have cancelled it.
            self.release();
            if let Err(Some(item)) = completer.complete_synchronously(item) {
                drop_quietly(item);
            }
        } else {
            // The item is stored first; an item a cancel refused is the next pull's and
            // goes back before the turn. Then the turn passes, and only then does the
            // callback run: it may begin the next pull and wait for it.
            match completer.complete_deferred(item) {
                Ok(wake) => {
                    self.release();
                    if let Some(wake) = wake {
                        wake.run_quietly();
                    }
                }
                Err(refused) => {
                    if let Some(item) = refused {
                        lock(&self.shared).returned = Some(item);
                    }
                    self.release();
                }
            }
        }
        Poll::Ready(())
    }

    /// Gives the stream back (unless it panicked) and the turn on, waking the next
    /// pull; a pull released before its turn is skipped when the turn comes.
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let stream = self.stream.take();
        let mut turns = lock(&self.shared);
        let mut dropped = None;
        if self.polling {
            turns.gone = true;
            dropped = stream;
        } else if stream.is_some() {
            turns.stream = stream;
        }
        let next = if turns.serving == self.ticket {
            turns.advance()
        } else {
            if turns.serving < self.ticket {
                turns.skipped.push(self.ticket);
                turns.waiting.retain(|(t, _)| *t != self.ticket);
            }
            None
        };
        drop(turns);
        drop_quietly(dropped);
        if let Some(waker) = next {
            crate::unwind::quietly(|| waker.wake());
        }
    }
}

impl<S: Stream> Future for Pull<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // `Pull` is `Unpin`: the stream is boxed.
        let this = self.get_mut();
        if std::mem::replace(&mut this.first, false) {
            return Poll::Pending;
        }
        this.poll_pull(cx, false)
    }
}

impl<S: Stream> Unpin for Pull<S> {}

/// A pull dropped unfinished (cancelled and served, or its executor went away) gives
/// the stream and its turn on; its handle, if not completed, ends with `Abandoned`.
impl<S: Stream> Drop for Pull<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: Stream> fmt::Debug for Puller<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Puller").finish_non_exhaustive()
    }
}
