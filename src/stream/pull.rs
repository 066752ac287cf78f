//! [`Puller`]: any `Stream` read the APM way, one `begin_next` / `end_next` pair per
//! item.

use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::{Fuse, Stream, StreamExt};

use crate::sync::{Mutex, PoisonError};
use crate::{AsyncCallback, AsyncResult, Builder, Completer, Error, State};

type Slot<S> = Arc<Mutex<Option<Pin<Box<Fuse<S>>>>>>;

/// A stream read with Begin/End pairs: each [`begin_next`](Puller::begin_next) starts
/// reading the next item, and its handle's `end` (or [`Puller::end_next`]) returns it,
/// `None` once the stream has ended.
///
/// A pull whose item is already there (buffered in a callback stream, say) completes
/// inside `begin_next`: [`completed_synchronously`](AsyncResult::completed_synchronously)
/// is true and its callback has run when `begin_next` returns, as with any
/// [`begin`](crate::begin) (so a legacy loop checks the flag, or relies on rule 28). The
/// pulls are served in the order they were begun, one at a time. A pull that is
/// cancelled ([`AsyncResult::cancel`]) loses no item: the next pull reads it.
///
/// Clones share the stream. `begin_next` runs on the ambient tokio runtime, or the
/// crate's default one.
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
    stream: Slot<S>,
    /// Completed by the latest pull when it gives the stream back: what the next pull
    /// waits for.
    last: Arc<Mutex<Option<AsyncResult<()>>>>,
}

impl<S: Stream> Clone for Puller<S> {
    fn clone(&self) -> Self {
        Puller {
            stream: Arc::clone(&self.stream),
            last: Arc::clone(&self.last),
        }
    }
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
            stream: Arc::new(Mutex::new(Some(Box::pin(stream.fuse())))),
            last: Arc::new(Mutex::new(None)),
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
    pub fn begin_next(
        &self,
        callback: impl Into<AsyncCallback<Option<S::Item>>>,
        state: State,
    ) -> AsyncResult<Option<S::Item>> {
        let (done, turn) = Completer::<()>::new();
        let previous = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(turn);
        let mut turn = Turn {
            slot: Arc::clone(&self.stream),
            stream: None,
            done: Some(done),
            polling: false,
        };
        Builder::new()
            .callback(callback)
            .state(state)
            .begin(async move {
                if let Some(previous) = previous {
                    // Its outcome does not matter: only that it gave the stream back.
                    let _ = previous.await;
                }
                turn.next().await
            })
    }

    /// Ends a pull: the item, `None` once the stream has ended.
    ///
    /// # Errors
    ///
    /// As [`AsyncResult::end`]: [`Error::Cancelled`] for a cancelled pull (its item, if
    /// any, goes to the next pull), [`Error::Panicked`], [`Error::WouldDeadlock`].
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

/// One pull's turn with the stream: takes it out of the slot, and puts it back and
/// lets the next pull go when it is dropped, whether the pull finished or was
/// cancelled.
struct Turn<S: Stream> {
    slot: Slot<S>,
    stream: Option<Pin<Box<Fuse<S>>>>,
    done: Option<Completer<()>>,
    /// Set while the stream's `poll_next` runs: still set at the drop, it panicked,
    /// and the stream is not given back.
    polling: bool,
}

impl<S: Stream> Turn<S> {
    async fn next(&mut self) -> Option<S::Item> {
        self.stream = self
            .slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let polling = &mut self.polling;
        let stream = self.stream.as_mut()?;
        poll_fn(|cx| {
            *polling = true;
            let polled = stream.as_mut().poll_next(cx);
            *polling = false;
            polled
        })
        .await
    }
}

impl<S: Stream> Drop for Turn<S> {
    fn drop(&mut self) {
        let stream = self.stream.take();
        if self.polling {
            // The stream panicked: later pulls find none, and end with `None`.
            crate::unwind::drop_quietly_if_some(stream);
        } else if let Some(stream) = stream {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(stream);
        }
        if let Some(done) = self.done.take() {
            let _ = done.complete(());
        }
    }
}

impl<S: Stream> fmt::Debug for Puller<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Puller").finish_non_exhaustive()
    }
}
