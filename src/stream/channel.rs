//! The state a callback stream's producers ([`Emitter`](super::Emitter)s) share with its
//! one consumer ([`EventStream`](super::EventStream)): the buffer, how the stream
//! ended, the consumer's waker and the producers waiting for room, all behind one lock.
//!
//! No user code runs under the lock (rule 18): an item evicted or refused is handed back
//! to the producer, the consumer's waker is cloned before the lock is taken and woken
//! after it is released, and the producers waiting for room are notified after it too.

use std::collections::VecDeque;
use std::mem;
use std::task::{Context, Poll, Waker};

use tokio::runtime::Id;

use crate::sync::Ordering::Relaxed;

use super::buffer::{credit_batch, hand, Pushed, Queue};
use super::{Buffer, Emit, Overflow};
use crate::runtime::blocking;
use crate::sync::{
    current, park, spin_until, AtomicUsize, Mutex, MutexGuard, PoisonError, Thread, ThreadId,
};
use crate::unwind::{drop_quietly, drop_quietly_if_some, quietly};

/// The producers' and the consumer's shared state.
pub(crate) struct Channel<T, E> {
    inner: Mutex<Inner<T, E>>,
    overflow: Option<Overflow>,
    /// Bumped by each pop while a producer spins for room (`Inner::spinning`): what
    /// the spinning producer watches, without taking the lock.
    pops: AtomicUsize,
}

struct Inner<T, E> {
    queue: Queue<T>,
    end: End<E>,
    /// The waker of the consumer's latest poll that found nothing; taken by the emit
    /// that wakes it.
    consumer: Option<Waker>,
    /// Producers waiting for room in a full [`Overflow::Suspend`] buffer, or for the
    /// end of the stream: all notified by the pop that leaves the buffer half empty
    /// (one wake-up per half buffer, not per item), or at the end.
    waiting: Vec<Ready>,
    /// A blocked producer spins for room before it parks: each pop bumps
    /// `Channel::pops` while this is set.
    spinning: bool,
    /// Live [`Emitter`](super::Emitter)s: the last one dropped while the stream is open
    /// abandons it.
    emitters: usize,
    /// The current-thread runtime the consumer runs on, if it does: a blocking emit on
    /// the thread that drives it would wait forever (rule 12).
    consumer_runtime: Option<Id>,
    /// The thread running user code inside the consumer's poll (the register closure,
    /// a waker clone, `when_ready` callbacks), if any: a blocking emit there would wait
    /// for the very poll it runs in.
    inside_consumer: Option<ThreadId>,
    /// Set by [`Channel::keep_newest`]: a copy of the newest item accepted, made by a
    /// function that only exists for `T: Copy` (a bitwise copy, no user code).
    newest: Option<Newest<T>>,
}

/// How to copy an item (made where `T: Copy`), and the copy of the newest one.
type Newest<T> = (fn(&T) -> T, Option<T>);

/// Whether and how the stream ended. Every state but `Open` refuses new items.
enum End<E> {
    Open,
    /// The producer finished: the consumer reads the buffer, then the end.
    Finished,
    /// The producer failed: the consumer reads the buffer, then this error.
    Failed(E),
    /// An [`Overflow::Fail`] buffer overflowed.
    Overflowed,
    /// Every emitter was dropped while the stream was open.
    Abandoned,
    /// The consumer took the end, or dropped the stream.
    Closed,
}

/// How the stream ended, as its consumer reads it after the last item.
pub(crate) enum Ended<E> {
    Finished,
    Failed(E),
    Overflowed,
    Abandoned,
}

/// A producer waiting for room.
pub(crate) enum Ready {
    /// A thread parked in a blocking emit.
    Thread(Thread),
    /// A callback given to `when_ready`.
    Callback(Box<dyn FnOnce() + Send>),
}

/// The consumer's own state, outside the lock: the batch of items it took out of the
/// buffer and has not yielded yet, and an empty list to swap for the list of waiting
/// producers, so that notifying them allocates nothing.
pub(crate) struct Hand<T> {
    items: VecDeque<T>,
    /// Items yielded from `items` whose room is not yet given back to the producers.
    yielded: usize,
    /// How many yielded items are given back at once.
    credit_batch: usize,
    spare: Vec<Ready>,
}

impl<T> Hand<T> {
    pub(crate) fn new(buffer: Buffer) -> Hand<T> {
        Hand {
            items: hand(buffer),
            yielded: 0,
            credit_batch: credit_batch(buffer),
            spare: waiting_list(buffer),
        }
    }

    /// Drops the items never yielded, each panic caught: the stream is being dropped.
    pub(crate) fn drop_items_quietly(&mut self) {
        for item in self.items.drain(..) {
            drop_quietly(item);
        }
    }
}

/// An empty list of waiting producers. For a [`Overflow::Suspend`] buffer it has room
/// for a few: the consumer swaps it with its spare one, and a producer parks with at
/// most two entries in it (one more after a stray wake-up), so that waiting for room
/// allocates nothing.
fn waiting_list(buffer: Buffer) -> Vec<Ready> {
    if buffer.overflow() == Some(Overflow::Suspend) {
        Vec::with_capacity(4)
    } else {
        Vec::new()
    }
}

/// What to do once the lock is released: wake the consumer, notify waiting producers.
#[must_use]
struct Wakeups {
    consumer: Option<Waker>,
    producers: Vec<Ready>,
}

impl Wakeups {
    const NONE: Wakeups = Wakeups {
        consumer: None,
        producers: Vec::new(),
    };

    /// Runs them, catching every panic: the thread running them only called the crate
    /// (an emit, a drop), so no panic of another party's code may reach it.
    fn run(self) {
        if let Some(waker) = self.consumer {
            quietly(|| waker.wake());
        }
        notify(self.producers);
    }
}

fn notify(producers: impl IntoIterator<Item = Ready>) {
    for ready in producers {
        match ready {
            Ready::Thread(thread) => thread.unpark(),
            Ready::Callback(callback) => quietly(callback),
        }
    }
}

impl<T, E> Inner<T, E> {
    /// Ends an open stream and takes out whom to tell.
    fn end(&mut self, end: End<E>) -> Wakeups {
        self.end = end;
        Wakeups {
            consumer: self.consumer.take(),
            producers: mem::take(&mut self.waiting),
        }
    }

    fn is_open(&self) -> bool {
        matches!(self.end, End::Open)
    }

    /// Whether an [`Overflow::Suspend`] emit would have to wait now.
    fn must_wait(&self, overflow: Option<Overflow>) -> bool {
        self.is_open() && overflow == Some(Overflow::Suspend) && self.queue.is_full()
    }
}

impl<T, E> Channel<T, E> {
    pub(crate) fn new(buffer: Buffer) -> Channel<T, E> {
        Channel {
            inner: Mutex::new(Inner {
                queue: Queue::new(buffer),
                end: End::Open,
                consumer: None,
                waiting: waiting_list(buffer),
                spinning: false,
                emitters: 0,
                consumer_runtime: None,
                inside_consumer: None,
                newest: None,
            }),
            overflow: buffer.overflow(),
            pops: AtomicUsize::new(0),
        }
    }

    /// The lock. No user code runs under it, so a poisoned lock only means that a
    /// panic of the crate's own unwound through it; the state is still consistent
    /// (every update is a single assignment).
    fn lock(&self) -> MutexGuard<'_, Inner<T, E>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on, keeps a copy of the newest item accepted; starts from the newest
    /// one not yet read (in the buffer, else in `hand`).
    pub(crate) fn keep_newest(&self, hand: &Hand<T>)
    where
        T: Copy,
    {
        let mut inner = self.lock();
        if inner.newest.is_none() {
            let seed = inner.queue.newest().or(hand.items.back()).copied();
            inner.newest = Some((|item: &T| *item, seed));
        }
    }

    /// The copy [`Channel::keep_newest`] keeps, if any item was accepted since.
    pub(crate) fn newest(&self) -> Option<T>
    where
        T: Copy,
    {
        self.lock().newest.as_ref().and_then(|(_, newest)| *newest)
    }

    pub(crate) fn emit(&self, item: T) -> Emit<T> {
        let mut inner = self.lock();
        let (emit, wakeups) = inner.emit(item);
        drop(inner);
        wakeups.run();
        emit
    }

    /// Emits, waiting for room in a full [`Overflow::Suspend`] buffer; refuses with
    /// [`Emit::WouldDeadlock`] where waiting would block the consumer itself.
    pub(crate) fn emit_blocking(&self, item: T) -> Emit<T> {
        let item = match self.emit(item) {
            Emit::Full(item) => item,
            done => return done,
        };
        let (consumer_runtime, inside_consumer) = {
            let inner = self.lock();
            (inner.consumer_runtime, inner.inside_consumer)
        };
        if inside_consumer == Some(current().id()) {
            return Emit::WouldDeadlock(item);
        }
        let mut slot = Some(item);
        let waited = blocking(consumer_runtime, || {
            let thread = current();
            let mut spun = false;
            loop {
                let mut inner = self.lock();
                if inner.must_wait(self.overflow) && !spun {
                    // Room usually comes within microseconds, while the consumer reads:
                    // spin for it (briefly, see `spin_until`) rather than sleep and be
                    // woken, which costs both threads a system call.
                    inner.spinning = true;
                    // ORDERING: a hint only; the lock is taken again to check.
                    let seen = self.pops.load(Relaxed);
                    drop(inner);
                    spun = true;
                    // ORDERING: as above.
                    spin_until(|| self.pops.load(Relaxed) != seen, None);
                    continue;
                }
                if inner.must_wait(self.overflow) {
                    inner.waiting.push(Ready::Thread(thread.clone()));
                    drop(inner);
                    park();
                    continue;
                }
                let Some(item) = slot.take() else {
                    unreachable!("the item stays in its slot until it is emitted")
                };
                let (emit, wakeups) = inner.emit(item);
                drop(inner);
                wakeups.run();
                return emit;
            }
        });
        match (waited, slot) {
            (Ok(emit), _) => emit,
            (Err(_), Some(item)) => Emit::WouldDeadlock(item),
            (Err(_), None) => unreachable!("a refused wait never took the item"),
        }
    }

    /// Runs `ready` once there is room for an emit, or the stream is closed: now if so.
    pub(crate) fn when_ready(&self, ready: impl FnOnce() + Send + 'static) {
        let mut inner = self.lock();
        if inner.must_wait(self.overflow) {
            inner.waiting.push(Ready::Callback(Box::new(ready)));
            return;
        }
        drop(inner);
        ready();
    }

    /// Whether the stream refuses new items.
    pub(crate) fn is_closed(&self) -> bool {
        !self.lock().is_open()
    }

    /// Ends the stream after the buffered items, with `end`; hands `end` back when it
    /// had already ended.
    fn end_with(&self, end: End<E>) -> Result<(), End<E>> {
        let mut inner = self.lock();
        if !inner.is_open() {
            return Err(end);
        }
        let wakeups = inner.end(end);
        drop(inner);
        wakeups.run();
        Ok(())
    }

    pub(crate) fn finish(&self) -> bool {
        self.end_with(End::Finished).is_ok()
    }

    pub(crate) fn fail(&self, error: E) -> Result<(), E> {
        match self.end_with(End::Failed(error)) {
            Ok(()) => Ok(()),
            Err(End::Failed(error)) => Err(error),
            Err(_) => unreachable!("end_with hands back what it was given"),
        }
    }

    pub(crate) fn add_emitter(&self) {
        self.lock().emitters += 1;
    }

    /// Forgets a dropped emitter; the last one abandons an open stream.
    pub(crate) fn remove_emitter(&self) {
        let mut inner = self.lock();
        inner.emitters -= 1;
        if inner.emitters > 0 || !inner.is_open() {
            return;
        }
        let wakeups = inner.end(End::Abandoned);
        drop(inner);
        wakeups.run();
    }

    /// Runs `f`, user code called from inside the consumer's poll, with this thread
    /// marked as the consumer's (see `Inner::inside_consumer`).
    pub(crate) fn as_consumer<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Unmark<'a, T, E>(&'a Channel<T, E>);
        impl<T, E> Drop for Unmark<'_, T, E> {
            fn drop(&mut self) {
                self.0.lock().inside_consumer = None;
            }
        }
        self.lock().inside_consumer = Some(current().id());
        let _unmark = Unmark(self);
        f()
    }

    /// Records the current-thread runtime the consumer runs on, if any.
    pub(crate) fn set_consumer_runtime(&self, runtime: Option<Id>) {
        self.lock().consumer_runtime = runtime;
    }

    /// The consumer's poll: the next item (from its hand, without the lock, when it
    /// holds some), else the end, else `Pending` with the waker stored.
    pub(crate) fn poll_next(
        &self,
        cx: &mut Context<'_>,
        hand: &mut Hand<T>,
    ) -> Poll<Result<T, Ended<E>>> {
        if let Some(item) = hand.items.pop_front() {
            hand.yielded += 1;
            if hand.yielded >= hand.credit_batch {
                self.give_back(hand);
            }
            return Poll::Ready(Ok(item));
        }
        let mut inner = self.lock();
        if let Some(ready) = self.take_next(&mut inner, hand) {
            drop(inner);
            self.notify_from_consumer(&mut hand.spare);
            return Poll::Ready(ready);
        }
        if inner
            .consumer
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        // Rule 18: the clone is user code, so it runs with the lock released, and the
        // state is read again after.
        drop(inner);
        let waker = self.as_consumer(|| cx.waker().clone());
        let mut inner = self.lock();
        if let Some(ready) = self.take_next(&mut inner, hand) {
            drop(inner);
            self.notify_from_consumer(&mut hand.spare);
            // The item is taken: a panicking waker drop must not lose it (rule 17).
            drop_quietly(waker);
            return Poll::Ready(ready);
        }
        let replaced = inner.consumer.replace(waker);
        drop(inner);
        drop(replaced);
        Poll::Pending
    }

    /// Gives the room of the items yielded from the hand back to the producers.
    fn give_back(&self, hand: &mut Hand<T>) {
        let mut inner = self.lock();
        inner.queue.yielded(mem::take(&mut hand.yielded));
        self.made_room(&mut inner, &mut hand.spare);
        drop(inner);
        self.notify_from_consumer(&mut hand.spare);
    }

    /// Notifies the producers moved to `spare`, on the consumer's thread: a
    /// `when_ready` callback runs here, marked as inside the consumer's poll.
    fn notify_from_consumer(&self, spare: &mut Vec<Ready>) {
        if spare.is_empty() {
            return;
        }
        if spare
            .iter()
            .any(|ready| matches!(ready, Ready::Callback(_)))
        {
            self.as_consumer(|| notify(spare.drain(..)));
        } else {
            notify(spare.drain(..));
        }
    }

    /// The next item or the end, for a consumer whose hand is empty; moves the producers
    /// to notify to the hand's spare list.
    fn take_next(
        &self,
        inner: &mut Inner<T, E>,
        hand: &mut Hand<T>,
    ) -> Option<Result<T, Ended<E>>> {
        inner.queue.yielded(mem::take(&mut hand.yielded));
        if let Some(item) = inner.queue.pop_into(&mut hand.items) {
            self.made_room(inner, &mut hand.spare);
            return Some(Ok(item));
        }
        let ended = match mem::replace(&mut inner.end, End::Closed) {
            End::Open => {
                inner.end = End::Open;
                return None;
            }
            End::Finished => Ended::Finished,
            End::Failed(error) => Ended::Failed(error),
            End::Overflowed => Ended::Overflowed,
            End::Abandoned => Ended::Abandoned,
            End::Closed => Ended::Finished,
        };
        Some(Err(ended))
    }

    /// The consumer made room: tell a spinning producer at once, and move the parked
    /// ones and the `when_ready` callbacks to `spare` once the buffer is half empty.
    fn made_room(&self, inner: &mut Inner<T, E>, spare: &mut Vec<Ready>) {
        if inner.spinning {
            inner.spinning = false;
            // ORDERING: a hint for the spinning producer, which takes the lock to read
            // the state.
            self.pops.fetch_add(1, Relaxed);
        }
        if !inner.waiting.is_empty() && inner.queue.is_half_empty() {
            mem::swap(&mut inner.waiting, spare);
        }
    }

    /// The consumer is gone: refuse every later item, and drop (outside the lock, each
    /// panic caught) what the stream still held.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        let items: VecDeque<T> = inner.queue.take();
        let end = mem::replace(&mut inner.end, End::Closed);
        let wakeups = Wakeups {
            consumer: inner.consumer.take(),
            producers: mem::take(&mut inner.waiting),
        };
        drop(inner);
        for item in items {
            drop_quietly(item);
        }
        if let End::Failed(error) = end {
            drop_quietly(error);
        }
        drop_quietly_if_some(wakeups.consumer);
        notify(wakeups.producers);
    }
}

impl<T, E> Inner<T, E> {
    /// Puts `item` in the buffer as its policy says; returns the outcome and whom to
    /// tell once the lock is released.
    fn emit(&mut self, item: T) -> (Emit<T>, Wakeups) {
        if !self.is_open() {
            return (Emit::Closed(item), Wakeups::NONE);
        }
        // A copy only for `T: Copy` (see `newest`): no user code under the lock. The
        // copy it replaces has no drop glue either.
        let copy = self.newest.as_ref().map(|(copy, _)| copy(&item));
        match self.queue.push(item) {
            Pushed::Queued => {
                self.keep(copy);
                (Emit::Queued, self.wake_consumer())
            }
            Pushed::Evicted(oldest) => {
                self.keep(copy);
                (Emit::Evicted(oldest), self.wake_consumer())
            }
            Pushed::Rejected(item) => (Emit::Rejected(item), Wakeups::NONE),
            Pushed::Full(item) => (Emit::Full(item), Wakeups::NONE),
            Pushed::Overflowed(item) => (Emit::Rejected(item), self.end(End::Overflowed)),
        }
    }

    /// Keeps `copy` (of an accepted item) as the newest, if newest items are kept.
    fn keep(&mut self, copy: Option<T>) {
        if let (Some((_, newest)), Some(copy)) = (self.newest.as_mut(), copy) {
            *newest = Some(copy);
        }
    }

    /// Takes the consumer's waker out, to wake it after the lock is released.
    fn wake_consumer(&mut self) -> Wakeups {
        Wakeups {
            consumer: self.consumer.take(),
            producers: Vec::new(),
        }
    }
}
