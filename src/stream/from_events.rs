//! [`from_events`]: a multi-shot callback (an event subscription) becomes a `Stream`.

use std::fmt;
use std::mem;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::stream::{FusedStream, Stream};

use super::channel::{Channel, Ended, Hand};
use super::{Buffer, Emitter};
use crate::runtime::current_thread_runtime;
use crate::unwind::{catch, drop_quietly, quietly};
use crate::{Abandonment, Error};

/// What a register closure returns: the live subscription, undone exactly once by
/// [`unregister`](Registration::unregister).
///
/// Any `FnOnce() + Send + 'static` closure is one (the closure is the unregister call),
/// and a subscription type of a legacy API can implement it. There is deliberately no
/// implementation for `()`: a source with nothing to undo says so with `|| {}`.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Buffer, Registration};
///
/// struct Subscription(u32);
///
/// impl Registration for Subscription {
///     fn unregister(self) {
///         // legacy_unsubscribe(self.0)
///     }
/// }
///
/// let events = apm_tap::stream::from_events(Buffer::latest(), |emitter: apm_tap::stream::Emitter<u8>| {
///     drop(emitter);
///     Ok::<_, apm_tap::Error>(Subscription(7))
/// });
/// # drop(events);
/// ```
pub trait Registration: Send + 'static {
    /// Undoes the registration: after it returns, the legacy source calls the
    /// emitter no more.
    fn unregister(self);
}

impl<F: FnOnce() + Send + 'static> Registration for F {
    fn unregister(self) {
        self();
    }
}

type Unregister = Box<dyn FnOnce() + Send>;
type Register<T, E> = Box<dyn FnOnce(Emitter<T, E>) -> Result<Unregister, E> + Send>;

/// Turns a multi-shot callback (an event subscription, a chunked read, a progress
/// callback) into a [`Stream`] of `Result<T, E>`.
///
/// On the first poll, and only then, `register` runs once with an [`Emitter`], which
/// the legacy callback calls with each item; it returns the [`Registration`] (or an
/// unregister closure), or the error of a registration that failed. The stream yields
/// the items in the order they were queued, then ends:
///
/// | the producer | the stream yields, after the buffered items |
/// |---|---|
/// | [`Emitter::finish`] | the end (`None`) |
/// | [`Emitter::fail`]`(e)` | `Err(e)`, then the end |
/// | an emit into a full [`Overflow::Fail`](super::Overflow::Fail) buffer | `Err(`[`Error::Overflow`]`.into())`, then the end |
/// | dropped its last emitter | `Err(`[`Error::Abandoned`]`(`[`Abandonment::EmittersDropped`]`).into())`, then the end |
/// | `register` returned `Err(e)` | `Err(e)`, then the end (items emitted inside `register` are dropped) |
///
/// The registration is undone exactly once: by the poll that yields the stream's end
/// (before it returns), or by the drop of the stream. A registration that failed has
/// nothing to undo.
///
/// The buffer and what a full one does are the [`Buffer`]'s: there is no default.
///
/// # Panics
///
/// A panic in `register` propagates out of the poll that ran it, and the stream ends
/// (later polls return `None`). A panic in the unregister call propagates out of the poll
/// that ran it, and the next poll yields the end it found (the producer's error, if
/// any); in the stream's drop it is caught and discarded.
///
/// # Cancel safety
///
/// `next()` on the stream is cancel safe: an item is taken from the buffer only by the
/// poll that returns it. Dropping the stream unregisters, refuses later emits with
/// [`Emit::Closed`](super::Emit::Closed), and drops the buffered items.
///
/// # Examples
///
/// A legacy event source that calls back on its own thread:
///
/// ```
/// use apm_tap::stream::{Buffer, Overflow};
/// use futures::StreamExt;
/// use std::sync::{Arc, Mutex};
///
/// type Handler = Box<dyn Fn(u32) + Send>;
///
/// #[derive(Clone, Default)]
/// struct Sensor {
///     handlers: Arc<Mutex<Vec<(u64, Handler)>>>,
/// }
///
/// impl Sensor {
///     fn subscribe(&self, id: u64, handler: Handler) {
///         self.handlers.lock().unwrap().push((id, handler));
///     }
///     fn unsubscribe(&self, id: u64) {
///         self.handlers.lock().unwrap().retain(|(other, _)| *other != id);
///     }
///     fn fire(&self, reading: u32) {
///         for (_, handler) in self.handlers.lock().unwrap().iter() {
///             handler(reading);
///         }
///     }
/// }
///
/// let sensor = Sensor::default();
/// let source = sensor.clone();
/// let readings = apm_tap::stream::from_events(Buffer::bounded(16, Overflow::DropOldest), move |emitter| {
///     source.subscribe(1, Box::new(move |reading| {
///         let _ = emitter.emit(reading); // an evicted reading is simply dropped here
///     }));
///     Ok::<_, apm_tap::Error>(move || source.unsubscribe(1))
/// });
///
/// let mut readings = readings.take(3);
/// futures::executor::block_on(async {
///     // The first poll subscribes; then the sensor fires.
///     assert!(futures::poll!(readings.next()).is_pending());
///     std::thread::spawn(move || (1..=3).for_each(|r| sensor.fire(r))).join().unwrap();
///     let got: Vec<u32> = readings.map(Result::unwrap).collect().await;
///     assert_eq!(got, [1, 2, 3]);
/// });
/// ```
pub fn from_events<T, E, R, F>(buffer: Buffer, register: F) -> EventStream<T, E>
where
    T: 'static,
    E: From<Error> + 'static,
    R: Registration,
    F: FnOnce(Emitter<T, E>) -> Result<R, E> + Send + 'static,
{
    let register: Register<T, E> = Box::new(move |emitter| {
        register(emitter)
            .map(|registration| Box::new(move || registration.unregister()) as Unregister)
    });
    EventStream {
        channel: Arc::new(Channel::new(buffer)),
        stage: Stage::Unregistered(register),
        hand: Hand::new(buffer),
    }
}

/// Stream for the [`from_events`] function.
///
/// One consumer: the stream is not `Clone`. It is `Send` when `T` and `E` are, and
/// `Unpin`.
#[must_use = "streams do nothing unless polled; the first poll registers"]
pub struct EventStream<T, E = Error> {
    channel: Arc<Channel<T, E>>,
    stage: Stage<T, E>,
    /// The consumer's side of the channel: items taken out in a batch, not yet yielded.
    hand: Hand<T>,
}

enum Stage<T, E> {
    /// Not polled yet.
    Unregistered(Register<T, E>),
    /// Registered: the unregister call is still to run.
    Registered(Unregister),
    /// The unregister call panicked out of the poll that found the stream's end: the
    /// next poll yields this error (if the end was one), then the end.
    Ending(Option<E>),
    /// The end was yielded (or the registration failed or panicked): nothing is left
    /// to undo.
    Done,
}

impl<T, E: From<Error>> EventStream<T, E> {
    /// Runs the register closure; returns the failure to yield, if it failed.
    fn register(&mut self, register: Register<T, E>) -> Option<E> {
        self.channel.set_consumer_runtime(current_thread_runtime());
        let emitter = Emitter::new(Arc::clone(&self.channel));
        // Marked as the consumer's thread: a blocking emit inside `register` would wait
        // for this very poll.
        let channel = Arc::clone(&self.channel);
        match channel.as_consumer(|| catch(move || register(emitter))) {
            Ok(Ok(unregister)) => {
                self.stage = Stage::Registered(unregister);
                None
            }
            Ok(Err(error)) => {
                self.channel.close();
                Some(error)
            }
            Err(payload) => {
                self.channel.close();
                resume_unwind(payload)
            }
        }
    }
}

impl<T, E: From<Error>> Stream for EventStream<T, E> {
    type Item = Result<T, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match mem::replace(&mut this.stage, Stage::Done) {
            Stage::Unregistered(register) => {
                if let Some(error) = this.register(register) {
                    return Poll::Ready(Some(Err(error)));
                }
            }
            Stage::Done => return Poll::Ready(None),
            Stage::Ending(error) => return Poll::Ready(error.map(Err)),
            registered @ Stage::Registered(_) => this.stage = registered,
        }
        let ended = match this.channel.poll_next(cx, &mut this.hand) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(item)) => return Poll::Ready(Some(Ok(item))),
            Poll::Ready(Err(ended)) => ended,
        };
        let error = match ended {
            Ended::Finished => None,
            Ended::Failed(error) => Some(error),
            Ended::Overflowed => Some(Error::Overflow.into()),
            Ended::Abandoned => Some(Error::Abandoned(Abandonment::EmittersDropped).into()),
        };
        if let Stage::Registered(unregister) = mem::replace(&mut this.stage, Stage::Done) {
            if let Err(payload) = catch(unregister) {
                // The panic goes out of this poll; the end is not lost: the next poll
                // yields it (rule 17).
                this.stage = Stage::Ending(error);
                resume_unwind(payload);
            }
        }
        Poll::Ready(error.map(Err))
    }
}

/// Items are moved out of the buffer, never pinned in it.
impl<T, E> Unpin for EventStream<T, E> {}

impl<T, E: From<Error>> FusedStream for EventStream<T, E> {
    fn is_terminated(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }
}

/// Refuses later emits, drops the buffered items and undoes the registration; a panic
/// in any of them is caught and discarded.
impl<T, E> Drop for EventStream<T, E> {
    fn drop(&mut self) {
        self.channel.close();
        self.hand.drop_items_quietly();
        match mem::replace(&mut self.stage, Stage::Done) {
            Stage::Unregistered(register) => drop_quietly(register),
            Stage::Registered(unregister) => quietly(unregister),
            Stage::Ending(error) => drop_quietly(error),
            Stage::Done => {}
        }
    }
}

impl<T, E> fmt::Debug for EventStream<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Unregistered(_) => "unregistered",
            Stage::Registered(_) => "registered",
            Stage::Ending(_) | Stage::Done => "done",
        };
        f.debug_struct("EventStream")
            .field("stage", &stage)
            .finish()
    }
}
