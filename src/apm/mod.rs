//! The legacy model's vocabulary: the handle, the callback, the completer and the
//! traits that foreign handle types implement.

mod any_result;
mod async_result;
mod completer;
mod handle;

pub use any_result::AnyAsyncResult;
pub use async_result::{AsyncCallback, AsyncResult};
pub use completer::Completer;
pub use handle::{AsyncHandle, PollHandle};
