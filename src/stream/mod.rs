//! Multi-shot callbacks and streams: [`from_events`] turns an event subscription into a
//! [`Stream`](futures::Stream) with an explicit [`Buffer`].
//!
//! A legacy API that calls back many times (`OnData`, `OnChange`, a chunked read, a
//! progress callback) is a stream, not a future. [`from_events`] registers the callback
//! on the stream's first poll and hands it an [`Emitter`]; every emit says what became
//! of the item ([`Emit`]); the [`Registration`] it returns is undone exactly once.
//!
//! Rules (numbered after the crate's first 19):
//!
//! 20. Nothing starts until the first poll; then the register closure runs exactly once.
//! 21. The registration is undone exactly once: when the stream yields its end, or when
//!     it is dropped; never for a registration that failed.
//! 22. The buffer is explicit ([`Buffer`]): no hidden default capacity. Every emit
//!     reports what happened ([`Emit`]), handing back any item the stream did not keep;
//!     no emit blocks but [`Emitter::emit_blocking`], which follows rule 12.
//! 23. Every item emitted is either yielded or dropped exactly once: refused and
//!     evicted items go back to the producer; the stream's drop drops what it still
//!     buffers.
//! 24. A stream whose producers all went away without finishing ends with
//!     [`Error::Abandoned`](crate::Error::Abandoned): nobody waits forever.

mod buffer;
mod channel;
mod emitter;
mod from_events;

pub use buffer::{Buffer, Emit, Overflow};
pub use emitter::Emitter;
pub use from_events::{from_events, EventStream, Registration};
