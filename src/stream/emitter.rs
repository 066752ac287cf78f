//! [`Emitter`]: the producer's side of a callback stream, handed to the register closure
//! of [`from_events`](super::from_events) and usable from any thread.

use std::fmt;
use std::sync::Arc;

use super::channel::Channel;
use super::Emit;
use crate::Error;

/// The producer's side of a callback stream: what the legacy event callback calls with
/// each item, and when the events end.
///
/// [`from_events`](super::from_events) gives one to its register closure. It is `Clone`,
/// `Send` and `Sync` (when the item and error are `Send`): any thread may emit, in any
/// number of clones. Every call returns at once except
/// [`emit_blocking`](Emitter::emit_blocking), and none runs the consumer's code on the
/// calling thread except its waker (whose panic is caught).
///
/// The stream ends with the first of [`finish`](Emitter::finish),
/// [`fail`](Emitter::fail), an [`Overflow::Fail`](super::Overflow::Fail) overflow, or
/// the drop of the last emitter, which ends it with
/// [`Error::Abandoned`]`(`[`EmittersDropped`](crate::Abandonment::EmittersDropped)`)`:
/// nobody waits forever for a producer that went away.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Buffer, Emit};
/// use futures::StreamExt;
///
/// let events = apm_tap::stream::from_events(Buffer::unbounded(), |emitter| {
///     let producer = std::thread::spawn(move || {
///         for i in 0..3 {
///             assert_eq!(emitter.emit(i), Emit::Queued);
///         }
///         emitter.finish();
///     });
///     Ok::<_, apm_tap::Error>(move || producer.join().unwrap())
/// });
/// let items: Vec<_> = futures::executor::block_on(events.collect());
/// assert_eq!(items, [Ok(0), Ok(1), Ok(2)]);
/// ```
pub struct Emitter<T, E = Error> {
    channel: Arc<Channel<T, E>>,
}

impl<T, E> Emitter<T, E> {
    pub(crate) fn new(channel: Arc<Channel<T, E>>) -> Emitter<T, E> {
        channel.add_emitter();
        Emitter { channel }
    }

    /// Offers `item` to the stream, and says what became of it (see [`Emit`]): queued,
    /// queued after evicting the oldest item (handed back), or refused (handed back)
    /// because the buffer is full or the stream is closed. Never blocks, never panics.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Emit, Overflow};
    ///
    /// let events = apm_tap::stream::from_events(Buffer::bounded(2, Overflow::DropNewest), |emitter| {
    ///     assert_eq!(emitter.emit('a'), Emit::Queued);
    ///     assert_eq!(emitter.emit('b'), Emit::Queued);
    ///     assert_eq!(emitter.emit('c'), Emit::Rejected('c'));
    ///     emitter.finish();
    ///     assert_eq!(emitter.emit('d'), Emit::Closed('d'));
    ///     Ok::<_, apm_tap::Error>(|| {})
    /// });
    /// # use futures::StreamExt;
    /// let items: Vec<_> = futures::executor::block_on(events.collect());
    /// assert_eq!(items, [Ok('a'), Ok('b')]);
    /// ```
    pub fn emit(&self, item: T) -> Emit<T> {
        self.channel.emit(item)
    }

    /// Emits `item`, waiting while an [`Overflow::Suspend`](super::Overflow::Suspend)
    /// buffer is full; for every other buffer it is [`emit`](Emitter::emit). Returns
    /// once the item is queued or the stream is closed.
    ///
    /// # Blocking
    ///
    /// Spins briefly (a few microseconds at most, less for a thread whose waits have been
    /// long), since the consumer usually makes room within that time; then parks the
    /// thread until the consumer has read the full buffer down to half its capacity, or
    /// the stream closes. On a
    /// multi-thread tokio worker it blocks inside `block_in_place`. On the thread that
    /// drives the current-thread runtime the consumer was first polled on, it returns
    /// [`Emit::WouldDeadlock`] at once with the item, since that consumer could never
    /// make room (rule 12), and so it does inside the consumer's own poll (in the
    /// register closure, a `when_ready` callback or a waker the consumer's poll clones).
    /// Meant for a plain producer thread; a callback that must not block uses
    /// [`when_ready`](Emitter::when_ready).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Emit, Overflow};
    /// use futures::StreamExt;
    ///
    /// let events = apm_tap::stream::from_events(Buffer::bounded(1, Overflow::Suspend), |emitter| {
    ///     let producer = std::thread::spawn(move || {
    ///         for i in 0..100 {
    ///             assert_eq!(emitter.emit_blocking(i), Emit::Queued);
    ///         }
    ///         emitter.finish();
    ///     });
    ///     Ok::<_, apm_tap::Error>(move || producer.join().unwrap())
    /// });
    /// let sum = futures::executor::block_on(events.map(Result::unwrap).fold(0, |a, b| async move { a + b }));
    /// assert_eq!(sum, 4950);
    /// ```
    pub fn emit_blocking(&self, item: T) -> Emit<T> {
        self.channel.emit_blocking(item)
    }

    /// Runs `ready` once a full [`Overflow::Suspend`](super::Overflow::Suspend) buffer
    /// has room again, or the stream is closed: at once, on this thread, if the buffer is
    /// not full (or the stream closed); otherwise on the thread that makes room (the
    /// consumer's poll) or closes the stream. A full buffer reports room once the
    /// consumer has read it down to half its capacity, so that a paused producer resumes
    /// for a batch of items, not for each one. This is the "pause, and resume
    /// when told" of a C producer: on [`Emit::Full`], keep the item, return "pause" to
    /// the library, and resume it from `ready`.
    ///
    /// # Panics
    ///
    /// A panic in `ready` propagates when it runs at once; on another thread it is
    /// caught and discarded (that thread only read or closed the stream).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Emit, Overflow};
    /// use futures::StreamExt;
    /// use std::sync::mpsc;
    ///
    /// let (resume, resumed) = mpsc::channel();
    /// let mut events = apm_tap::stream::from_events(Buffer::bounded(1, Overflow::Suspend), move |emitter| {
    ///     assert_eq!(emitter.emit(1), Emit::Queued);
    ///     assert_eq!(emitter.emit(2), Emit::Full(2));
    ///     emitter.when_ready(move || resume.send(()).unwrap());
    ///     Ok::<_, apm_tap::Error>(move || drop(emitter))
    /// });
    /// futures::executor::block_on(async {
    ///     assert_eq!(events.next().await, Some(Ok(1)));
    /// });
    /// // Reading the item made room: the producer was told.
    /// assert_eq!(resumed.try_recv(), Ok(()));
    /// ```
    pub fn when_ready(&self, ready: impl FnOnce() + Send + 'static) {
        self.channel.when_ready(ready);
    }

    /// Ends the stream: the consumer reads the items already buffered, then the end.
    /// Returns `false`, and does nothing, if the stream had already ended or closed.
    ///
    /// # Examples
    ///
    /// ```
    /// let events = apm_tap::stream::from_events(apm_tap::stream::Buffer::unbounded(), |emitter| {
    ///     let _ = emitter.emit(1);
    ///     assert!(emitter.finish());
    ///     assert!(!emitter.finish());
    ///     Ok::<_, apm_tap::Error>(|| {})
    /// });
    /// # use futures::StreamExt;
    /// assert_eq!(futures::executor::block_on(events.collect::<Vec<_>>()), [Ok(1)]);
    /// ```
    pub fn finish(&self) -> bool {
        self.channel.finish()
    }

    /// Ends the stream with `error`: the consumer reads the items already buffered,
    /// then `Err(error)`, then the end.
    ///
    /// # Errors
    ///
    /// Hands `error` back if the stream had already ended or closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io;
    ///
    /// let events = apm_tap::stream::from_events(apm_tap::stream::Buffer::unbounded(), |emitter| {
    ///     let _ = emitter.emit(1);
    ///     assert!(emitter.fail(io::Error::other("disconnected")).is_ok());
    ///     assert!(emitter.fail(io::Error::other("twice")).is_err());
    ///     Ok::<_, io::Error>(|| {})
    /// });
    /// # use futures::StreamExt;
    /// let items: Vec<io::Result<i32>> = futures::executor::block_on(events.collect());
    /// assert_eq!(items[0].as_ref().unwrap(), &1);
    /// assert_eq!(items[1].as_ref().unwrap_err().to_string(), "disconnected");
    /// assert_eq!(items.len(), 2);
    /// ```
    pub fn fail(&self, error: E) -> Result<(), E> {
        self.channel.fail(error)
    }

    /// Whether the stream refuses new items: it ended, or its consumer dropped it.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Emit};
    ///
    /// let (give, take) = std::sync::mpsc::channel();
    /// let mut events = apm_tap::stream::from_events(Buffer::unbounded(), move |emitter| {
    ///     give.send(emitter.clone()).unwrap();
    ///     Ok::<_, apm_tap::Error>(move || drop(emitter))
    /// });
    /// # use futures::StreamExt;
    /// let _ = futures::executor::block_on(futures::future::poll_fn(|cx| {
    ///     std::task::Poll::Ready(events.poll_next_unpin(cx).is_pending())
    /// }));
    /// let emitter = take.recv().unwrap();
    /// assert!(!emitter.is_closed());
    /// drop(events);
    /// assert!(emitter.is_closed());
    /// assert_eq!(emitter.emit(1), Emit::Closed(1));
    /// ```
    pub fn is_closed(&self) -> bool {
        self.channel.is_closed()
    }
}

impl<T, E> Clone for Emitter<T, E> {
    fn clone(&self) -> Self {
        Emitter::new(Arc::clone(&self.channel))
    }
}

/// The last emitter dropped while the stream is open ends it with
/// [`Error::Abandoned`]`(`[`EmittersDropped`](crate::Abandonment::EmittersDropped)`)`.
impl<T, E> Drop for Emitter<T, E> {
    fn drop(&mut self) {
        self.channel.remove_emitter();
    }
}

impl<T, E> fmt::Debug for Emitter<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("closed", &self.is_closed())
            .finish()
    }
}
