//! The buffer of a callback stream: its capacity and what a full one does with the next
//! item ([`Buffer`], [`Overflow`]), and what each emit reports ([`Emit`]).

use std::collections::VecDeque;
use std::fmt;
use std::mem;

/// How many items a callback stream holds for its consumer, and what happens to an item
/// emitted into a full buffer.
///
/// There is no default: every stream says which buffer it has. [`Buffer::bounded`]
/// takes the capacity and an [`Overflow`] policy; [`Buffer::latest`] keeps only the
/// newest item (conflation); [`Buffer::unbounded`] never refuses an item and grows
/// without limit.
///
/// | buffer | 100 items emitted, none read, the stream keeps | an emit into a full buffer returns |
/// |---|---|---|
/// | `bounded(3, Overflow::Suspend)` | 0, 1, 2 | [`Emit::Full`]: wait for room ([`Emitter::when_ready`](super::Emitter::when_ready), [`Emitter::emit_blocking`](super::Emitter::emit_blocking)), then emit again |
/// | `bounded(3, Overflow::DropNewest)` | 0, 1, 2 | [`Emit::Rejected`] with the new item |
/// | `bounded(3, Overflow::DropOldest)` | 97, 98, 99 | [`Emit::Evicted`] with the oldest item |
/// | `bounded(3, Overflow::Fail)` | 0, 1, 2, then the error [`Error::Overflow`](crate::Error::Overflow) | [`Emit::Rejected`] with the new item; the stream ends |
/// | `latest()` | 99 | [`Emit::Evicted`] with the item it replaced |
/// | `unbounded()` | 0 to 99 | never full |
///
/// A bounded buffer allocates its capacity once, when the stream is built: emitting
/// allocates nothing.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Buffer, Overflow};
///
/// let buffer = Buffer::bounded(64, Overflow::DropOldest);
/// assert_eq!(buffer.capacity(), Some(64));
/// assert_eq!(Buffer::latest().capacity(), Some(1));
/// assert_eq!(Buffer::unbounded().capacity(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bounded { capacity: usize, overflow: Overflow },
    Latest,
    Unbounded,
}

/// What a bounded [`Buffer`] does with an item emitted while it is full.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Buffer, Overflow};
///
/// let buffer = Buffer::bounded(3, Overflow::Suspend);
/// assert_eq!(buffer.overflow(), Some(Overflow::Suspend));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Refuse the item with [`Emit::Full`] and let the producer wait for room: the
    /// backpressure of a producer that can pause (as libcurl's write callback returns
    /// `CURL_WRITEFUNC_PAUSE`). A waiting producer ([`Emitter::when_ready`],
    /// [`Emitter::emit_blocking`]) is told once the buffer is down to half its capacity.
    /// The consumer reads a full buffer in batches and gives the room back a quarter of
    /// the capacity at a time, so an emit may find the buffer full while up to a quarter
    /// of it was read but not yet given back; the capacity always bounds the items
    /// emitted and not yet yielded.
    ///
    /// [`Emitter::when_ready`]: super::Emitter::when_ready
    /// [`Emitter::emit_blocking`]: super::Emitter::emit_blocking
    Suspend,
    /// Make room by evicting the oldest buffered item, handed back in [`Emit::Evicted`].
    DropOldest,
    /// Refuse the new item, handed back in [`Emit::Rejected`]; the buffer keeps the
    /// oldest items.
    DropNewest,
    /// Refuse the new item, handed back in [`Emit::Rejected`], and end the stream: the
    /// consumer reads the buffered items, then
    /// [`Error::Overflow`](crate::Error::Overflow).
    Fail,
}

impl Buffer {
    /// A buffer of `capacity` items; `overflow` says what an emit into a full one does.
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is zero: a stream whose buffer holds nothing could deliver
    /// nothing. (For "only the newest item", use [`Buffer::latest`].)
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Overflow};
    ///
    /// let buffer = Buffer::bounded(3, Overflow::DropNewest);
    /// assert_eq!(buffer.capacity(), Some(3));
    /// assert!(std::panic::catch_unwind(|| Buffer::bounded(0, Overflow::Suspend)).is_err());
    /// ```
    #[track_caller]
    pub const fn bounded(capacity: usize, overflow: Overflow) -> Buffer {
        assert!(
            capacity > 0,
            "a bounded stream buffer needs a capacity of at least 1"
        );
        Buffer {
            kind: Kind::Bounded { capacity, overflow },
        }
    }

    /// A buffer that keeps only the newest item: each emit replaces the item the
    /// consumer has not read yet, handed back in [`Emit::Evicted`] (conflation, as for
    /// a progress value or the latest state of something).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::Buffer;
    ///
    /// assert_eq!(Buffer::latest().overflow(), None);
    /// ```
    pub const fn latest() -> Buffer {
        Buffer { kind: Kind::Latest }
    }

    /// A buffer with no limit: no emit is ever refused for room, and a producer faster
    /// than its consumer grows it until memory runs out. Say so only when the producer
    /// is known to be bounded.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::Buffer;
    ///
    /// assert_eq!(Buffer::unbounded().capacity(), None);
    /// ```
    pub const fn unbounded() -> Buffer {
        Buffer {
            kind: Kind::Unbounded,
        }
    }

    /// How many items the buffer holds at most; `None` when unbounded.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Overflow};
    ///
    /// assert_eq!(Buffer::bounded(8, Overflow::Fail).capacity(), Some(8));
    /// ```
    pub const fn capacity(&self) -> Option<usize> {
        match self.kind {
            Kind::Bounded { capacity, .. } => Some(capacity),
            Kind::Latest => Some(1),
            Kind::Unbounded => None,
        }
    }

    /// The overflow policy of a [`bounded`](Buffer::bounded) buffer; `None` for the
    /// others.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::{Buffer, Overflow};
    ///
    /// assert_eq!(Buffer::bounded(8, Overflow::Fail).overflow(), Some(Overflow::Fail));
    /// assert_eq!(Buffer::unbounded().overflow(), None);
    /// ```
    pub const fn overflow(&self) -> Option<Overflow> {
        match self.kind {
            Kind::Bounded { overflow, .. } => Some(overflow),
            Kind::Latest | Kind::Unbounded => None,
        }
    }
}

/// What became of an emitted item. Nothing is dropped silently: every item the stream
/// did not keep is handed back.
///
/// # Examples
///
/// ```
/// use apm_tap::stream::{Buffer, Emit};
///
/// let mut events = apm_tap::stream::from_events(Buffer::latest(), |emitter| {
///     assert_eq!(emitter.emit(1), Emit::Queued);
///     assert_eq!(emitter.emit(2), Emit::Evicted(1));
///     Ok::<_, apm_tap::Error>(|| {})
/// });
/// # use futures::StreamExt;
/// assert_eq!(futures::executor::block_on(events.next()), Some(Ok(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an emit that was not queued hands the item back"]
pub enum Emit<T> {
    /// The item is in the buffer; the consumer will read it, or drop it with the stream.
    Queued,
    /// The item is in the buffer, and this older one was evicted to make room
    /// ([`Overflow::DropOldest`], [`Buffer::latest`]).
    Evicted(T),
    /// The buffer is full and the policy refused the item ([`Overflow::DropNewest`],
    /// [`Overflow::Fail`], which also ended the stream).
    Rejected(T),
    /// The buffer is full ([`Overflow::Suspend`]): emit the item again once there is
    /// room, which [`Emitter::when_ready`](super::Emitter::when_ready) reports.
    Full(T),
    /// The stream no longer takes items: its consumer dropped it, or the producer
    /// finished, failed or overflowed it.
    Closed(T),
    /// [`Emitter::emit_blocking`](super::Emitter::emit_blocking) refused to block: this
    /// thread drives the current-thread runtime that the stream's consumer runs on, so
    /// no room could ever come.
    WouldDeadlock(T),
}

impl<T> Emit<T> {
    /// Whether the emitted item is in the buffer ([`Queued`](Emit::Queued) or
    /// [`Evicted`](Emit::Evicted)).
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::Emit;
    ///
    /// assert!(Emit::Evicted(1).is_queued());
    /// assert!(!Emit::Full(1).is_queued());
    /// ```
    pub fn is_queued(&self) -> bool {
        matches!(self, Emit::Queued | Emit::Evicted(_))
    }

    /// The item handed back, if any: the evicted one, or the emitted one when it was not
    /// queued.
    ///
    /// # Examples
    ///
    /// ```
    /// use apm_tap::stream::Emit;
    ///
    /// assert_eq!(Emit::Closed("late").into_inner(), Some("late"));
    /// assert_eq!(Emit::<&str>::Queued.into_inner(), None);
    /// ```
    pub fn into_inner(self) -> Option<T> {
        match self {
            Emit::Queued => None,
            Emit::Evicted(item)
            | Emit::Rejected(item)
            | Emit::Full(item)
            | Emit::Closed(item)
            | Emit::WouldDeadlock(item) => Some(item),
        }
    }
}

/// The buffered items and the policy that admits them; the channel keeps it behind its
/// lock.
///
/// The consumer may take a batch of items out at once, into its hand (`Hand`), so that
/// it reads them without the lock: `in_hand` counts those not yielded yet, and they
/// still fill the buffer, so that the capacity holds for every item emitted and not
/// yet yielded. Only policies that never evict let the consumer take a batch: an
/// item in the consumer's hand cannot be evicted.
pub(crate) struct Queue<T> {
    items: VecDeque<T>,
    buffer: Buffer,
    in_hand: usize,
}

/// What [`Queue::push`] did.
pub(crate) enum Pushed<T> {
    Queued,
    Evicted(T),
    Rejected(T),
    Full(T),
    /// Rejected by [`Overflow::Fail`]: the stream must end with `Error::Overflow`.
    Overflowed(T),
}

impl<T> Queue<T> {
    /// An empty queue; a bounded one allocates its whole capacity now.
    pub(crate) fn new(buffer: Buffer) -> Queue<T> {
        Queue {
            items: empty(buffer),
            buffer,
            in_hand: 0,
        }
    }

    pub(crate) fn push(&mut self, item: T) -> Pushed<T> {
        if !self.is_full() {
            self.items.push_back(item);
            return Pushed::Queued;
        }
        match self.buffer.kind {
            Kind::Bounded {
                overflow: Overflow::Suspend,
                ..
            } => Pushed::Full(item),
            Kind::Bounded {
                overflow: Overflow::DropNewest,
                ..
            } => Pushed::Rejected(item),
            Kind::Bounded {
                overflow: Overflow::Fail,
                ..
            } => Pushed::Overflowed(item),
            // (An unbounded buffer is never full.)
            Kind::Bounded {
                overflow: Overflow::DropOldest,
                ..
            }
            | Kind::Latest
            | Kind::Unbounded => {
                // Full, and nothing is in the consumer's hand for these policies: the
                // oldest item is here.
                let oldest = self.items.pop_front();
                self.items.push_back(item);
                oldest.map_or(Pushed::Queued, Pushed::Evicted)
            }
        }
    }

    /// The next item, for a consumer with an empty hand: a batch of them moves into
    /// `hand` (which must be empty) when the policy allows, and the first is returned.
    pub(crate) fn pop_into(&mut self, hand: &mut VecDeque<T>) -> Option<T> {
        if !batches(self.buffer) || self.items.len() < 2 {
            return self.items.pop_front();
        }
        mem::swap(&mut self.items, hand);
        let first = hand.pop_front();
        self.in_hand = hand.len();
        first
    }

    /// The consumer yielded `yielded` items from its hand: they no longer fill the
    /// buffer.
    pub(crate) fn yielded(&mut self, yielded: usize) {
        // Saturating: a closed queue forgot the hand (`take`).
        self.in_hand = self.in_hand.saturating_sub(yielded);
    }

    /// The newest item in the buffer, if any.
    pub(crate) fn newest(&self) -> Option<&T> {
        self.items.back()
    }

    /// Whether the buffer is full of items: a [`Overflow::Suspend`] emit would wait.
    pub(crate) fn is_full(&self) -> bool {
        self.buffer
            .capacity()
            .is_some_and(|capacity| self.items.len() + self.in_hand >= capacity)
    }

    /// Whether at most half the capacity is used.
    pub(crate) fn is_half_empty(&self) -> bool {
        self.buffer
            .capacity()
            .is_none_or(|capacity| self.items.len() + self.in_hand <= capacity / 2)
    }

    /// Takes every buffered item out, to drop them outside the lock.
    pub(crate) fn take(&mut self) -> VecDeque<T> {
        self.in_hand = 0;
        mem::take(&mut self.items)
    }
}

/// An empty list of items for `buffer`, with room for all of them when it is bounded.
fn empty<T>(buffer: Buffer) -> VecDeque<T> {
    match buffer.capacity() {
        Some(capacity) => VecDeque::with_capacity(capacity),
        None => VecDeque::new(),
    }
}

/// Whether the consumer may take batches of items into its hand: only when the policy
/// never evicts (an item in the hand cannot be) and a full buffer only makes the
/// producer wait. The room of the items the consumer yields from its hand is given back
/// a few at a time, so a `DropNewest` or `Fail` buffer would refuse items it has room
/// for.
fn batches(buffer: Buffer) -> bool {
    matches!(
        buffer.kind,
        Kind::Unbounded
            | Kind::Bounded {
                overflow: Overflow::Suspend,
                ..
            }
    )
}

/// The consumer's hand for `buffer`: as large as the queue it swaps with, so that the
/// swaps allocate nothing; empty when the policy takes no batches.
pub(crate) fn hand<T>(buffer: Buffer) -> VecDeque<T> {
    if batches(buffer) {
        empty(buffer)
    } else {
        VecDeque::new()
    }
}

/// How many items the consumer yields from its hand before it gives their room back to
/// the producers (one lock per batch, not per item): a quarter of the capacity.
pub(crate) fn credit_batch(buffer: Buffer) -> usize {
    buffer
        .capacity()
        .map_or(usize::MAX, |capacity| (capacity / 4).max(1))
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.items.len())
            .field("in_hand", &self.in_hand)
            .field("buffer", &self.buffer)
            .finish()
    }
}
