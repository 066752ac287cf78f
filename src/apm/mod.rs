//! The legacy model's vocabulary: the handle, the callback, the completer and the
//! traits that foreign handle types implement.

mod async_result;
mod completer;
mod handle;

pub use async_result::{AsyncCallback, AsyncResult};
pub use completer::Completer;
pub use handle::{AsyncHandle, PollHandle};
