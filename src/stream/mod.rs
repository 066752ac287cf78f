//! Multi-shot callbacks and streams: [`from_events`] turns an event subscription into a
//! [`Stream`](futures::Stream) with an explicit [`Buffer`]; [`subscribe`] pushes any
//! stream to a set of callbacks, with demand; [`Puller`] reads one with Begin/End
//! pairs.
//!
//! A legacy API that calls back many times (`OnData`, `OnChange`, a chunked read, a
//! progress callback) is a stream, not a future. [`from_events`] registers the callback
//! on the stream's first poll and hands it an [`Emitter`]; every emit says what became
//! of the item ([`Emit`]); the [`Registration`] it returns is undone exactly once.
//!
//! The crate's rules 20 to 25 are this module's contract: see
//! [Guarantees](crate#guarantees).
//!
//! # Examples
//!
//! ```
//! use apm_tap::stream::{from_events, Buffer, Overflow};
//! use futures::StreamExt;
//!
//! let lines = from_events(Buffer::bounded(16, Overflow::Suspend), |emitter| {
//!     let reader = std::thread::spawn(move || {
//!         for line in ["one", "two"] {
//!             let _ = emitter.emit_blocking(line.to_owned());
//!         }
//!         emitter.finish();
//!     });
//!     Ok::<_, apm_tap::Error>(move || reader.join().unwrap())
//! });
//! let lines: Vec<String> = futures::executor::block_on(lines.map(Result::unwrap).collect());
//! assert_eq!(lines, ["one", "two"]);
//! ```

mod buffer;
pub(crate) mod channel;
mod emitter;
mod from_events;
mod pull;
mod subscribe;

pub use buffer::{Buffer, Emit, Overflow};
pub use emitter::Emitter;
pub use from_events::{from_events, EventStream, Registration};
pub use pull::Puller;
pub use subscribe::{subscribe, subscribe_on, Demand, Subscriber, Subscription};
