//! Attributes that declare a Begin/End pair once, for [apm-tap](https://docs.rs/apm-tap):
//! `#[apm]` exposes an `async fn` to callers that cannot `.await`, `#[from_apm]` awaits
//! a legacy Begin/End pair. Use them through `apm_tap` with its `macros` feature, as
//! `apm_tap::apm` and `apm_tap::from_apm`.
//!
//! The generated code calls apm-tap's public functions only (`Builder::begin`,
//! `AsyncResult::end`, `from_apm`), so it keeps every rule of apm-tap's contract.

use proc_macro::TokenStream;
use syn::{parse_macro_input, ItemFn};

mod apm;
mod c_abi;
mod from_apm;
mod options;
mod types;

/// Exposes an `async fn` as a Begin/End pair (.NET's APM shape), for callers that
/// cannot `.await`: plain threads, legacy code, callbacks.
///
/// On `async fn read(self: Arc<Self>, len: usize) -> io::Result<Vec<u8>>`, it keeps the
/// fn and adds, with the same visibility:
///
/// - `begin_read(&self, len, callback, state) -> AsyncResult<io::Result<Vec<u8>>>`:
///   starts the operation at once (`apm_tap::Builder::begin`);
/// - `end_read(handle) -> io::Result<Vec<u8>>`: waits for it and returns its output;
/// - `blocking_read(&self, len) -> io::Result<Vec<u8>>`: both, for a thread that just
///   wants the result.
///
/// An output whose type is a `Result<..>` is flattened: End returns it, with apm-tap's
/// own errors (cancelled, panicked, abandoned, would deadlock) converted by
/// `From<apm_tap::Error>` (`io::Error` has it). Any other output `T` is returned as
/// `Result<T, apm_tap::Error>`. `flatten = false` keeps a `Result` nested.
///
/// Begin, End and the blocking call carry the fn's `cfg`, lint, `deprecated` and
/// `doc(hidden)` attributes. In a trait's `impl` the attribute cannot add them (they are
/// not the trait's): put the operation in an inherent `impl`.
///
/// The operation outlives the call to Begin, so the receiver and the arguments must be
/// owned: `self: Arc<Self>` (Begin then takes `self: &Arc<Self>` and clones it) or
/// `self` on a `Clone` type, and no borrowed argument; borrowing is a compile error that
/// names the fix. Generic parameters and `impl Trait` arguments are refused too: a pair
/// has one concrete output type.
///
/// Options:
///
/// | option | effect |
/// |---|---|
/// | `dispatch = <expr>` | the callback runs where this `apm_tap::Dispatch` says (evaluated at each Begin) |
/// | `progress = <argument>` | the named `apm_tap::progress::Progress<P>` argument leaves Begin's and the blocking call's signatures; they take an `on_progress: impl FnMut(P) + Send + 'static` instead |
/// | `cancel = <argument>` | the named `apm_tap::Cancellation` argument leaves Begin's and the blocking call's signatures; it trips when the caller cancels (`handle.cancel()`, C's `apm_tap_op_cancel`): hand it to a worker thread, or register the legacy Cancel on it |
/// | `flatten = <bool>` | whether End returns the output's own `Result` (default: whether it is a `Result<..>`; an alias is not seen) |
/// | `crate = "<path>"` | where apm-tap is, for a crate that renamed it (default `::apm_tap`; `c_abi` uses `::apm_tap_capi`) |
/// | `c_abi` | also exports a free fn over C scalars to C as `xxx_begin` / `xxx_end` (the C ABI of `apm-tap-capi`, which must be among your dependencies), with their C declarations in a const `XXX_C_DECLARATION` for `apm_tap_capi::header` |
///
/// Async callers call the fn itself. With `progress` or `cancel`, they give those
/// arguments as Begin does: `apm_tap::progress::reporting(|progress| ..)` (or
/// `Progress::none()`) and `apm_tap::cancellable(|cancellation| ..)` make them, tied to
/// the future they are given to.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
///
/// struct Store {
///     items: Vec<u32>,
/// }
///
/// impl Store {
///     /// Sums the first `count` items.
///     #[apm_tap::apm]
///     pub async fn sum(self: Arc<Self>, count: usize) -> u32 {
///         self.items.iter().take(count).sum()
///     }
/// }
///
/// let store = Arc::new(Store { items: vec![1, 2, 3] });
/// // A plain thread, APM style: Begin with a callback, End inside it.
/// let (sums, sum) = std::sync::mpsc::channel();
/// let _handle = store.begin_sum(2, move |handle| {
///     sums.send(Store::end_sum(handle)).unwrap();
/// }, apm_tap::State::none());
/// assert_eq!(sum.recv().unwrap(), Ok(3));
/// // Or just block.
/// assert_eq!(store.blocking_sum(3), Ok(6));
/// ```
///
/// What it generates for `sum`, doc comments left out (`snapshots/sum.rs`, which a test
/// keeps current):
///
/// ```text
#[doc = include_str!("../snapshots/sum.rs")]
/// ```
#[proc_macro_attribute]
pub fn apm(attribute: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = apm::Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(attribute with parser);
    let function = parse_macro_input!(item as ItemFn);
    let kept = function.clone();
    apm::expand(options, function)
        .unwrap_or_else(|error| refused(error, kept))
        .into()
}

/// Awaits a legacy Begin/End pair as one `async fn` (.NET's `Task.Factory.FromAsync`),
/// through `apm_tap::from_apm`.
///
/// On a Begin such as `fn begin_read(&self, len: usize, callback: AsyncCallback<Vec<u8>>,
/// state: State) -> AsyncResult<Vec<u8>>`, `#[from_apm(end = Self::end_read, output =
/// io::Result<Vec<u8>>)]` keeps the Begin and adds `async fn read(&self, len: usize) ->
/// io::Result<Vec<u8>>`: lazy (Begin runs at the first poll, once), End exactly once
/// for every handle Begin returned, no stack dive when Begin completes synchronously.
///
/// The Begin's parameter typed `AsyncCallback<T>`, `impl Into<AsyncCallback<T>>` or
/// `ApmCallback` receives the callback that wakes the future, and a `State` right after
/// it receives `State::none()`; the others become the async fn's parameters, in order.
///
/// Options:
///
/// | option | effect |
/// |---|---|
/// | `end = <expr>` | the End: an `FnOnce(Handle) -> output + Send + 'static`, evaluated at the first poll, so it may use the arguments, or a clone of an `Arc` `self` (`{ let this = self.clone(); move \|h\| this.end_read(h) }`); required |
/// | `output = <type>` | what End returns; required, as a macro cannot read `end`'s signature |
/// | `on_cancel = <expr>` | an `FnOnce(&Handle) + Send + 'static`, evaluated like `end`, run once if the future is dropped before completion: the legacy Cancel |
/// | `name = <ident>` | the async fn's name; by default the Begin's without `begin_` |
/// | `flatten = <bool>` | whether the async fn returns `output`'s own `Result`, with apm-tap's errors converted by `From<apm_tap::Error>` (default: whether `output` is a `Result<..>`; an alias is not seen), or `Result<output, apm_tap::Error>` |
/// | `crate = "<path>"` | where apm-tap is, for a crate that renamed it (default `::apm_tap`) |
///
/// # Examples
///
/// ```
/// use apm_tap::{AsyncCallback, AsyncResult, Builder, State};
///
/// /// A legacy Begin/End pair: the length of `text`, computed on another thread.
/// #[apm_tap::from_apm(end = end_len, output = usize)]
/// fn begin_len(text: String, callback: AsyncCallback<usize>, state: State) -> AsyncResult<usize> {
///     let (completer, handle) = Builder::new().callback(callback).state(state).completer();
///     std::thread::spawn(move || completer.complete(text.len()));
///     handle
/// }
///
/// fn end_len(handle: AsyncResult<usize>) -> usize {
///     handle.end().expect("completed, not cancelled")
/// }
///
/// # futures::executor::block_on(async {
/// assert_eq!(len("four".into()).await, Ok(4));
/// # });
/// ```
#[proc_macro_attribute]
pub fn from_apm(attribute: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = from_apm::Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(attribute with parser);
    let begin = parse_macro_input!(item as ItemFn);
    let kept = begin.clone();
    from_apm::expand(options, begin)
        .unwrap_or_else(|error| refused(error, kept))
        .into()
}

/// The error, and the function as written, so that the error is the only one: no
/// "cannot find" for the function itself, no unused imports.
fn refused(error: syn::Error, function: ItemFn) -> proc_macro2::TokenStream {
    let mut tokens = error.into_compile_error();
    quote::ToTokens::to_tokens(&function, &mut tokens);
    tokens
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use quote::quote;
    use syn::{Attribute, File, ImplItem, Item};

    fn without_docs(attributes: &mut Vec<Attribute>) {
        attributes.retain(|attribute| !attribute.path().is_ident("doc"));
    }

    /// `snapshots/sum.rs` is what `#[apm]` makes of the doc example's `sum`, pretty
    /// printed without doc comments. `APM_TAP_BLESS=1` rewrites it.
    #[test]
    fn the_documented_expansion_is_current() {
        let function = syn::parse2(quote! {
            /// Sums the first `count` items.
            pub async fn sum(self: Arc<Self>, count: usize) -> u32 {
                self.items.iter().take(count).sum()
            }
        })
        .unwrap();
        let expanded = crate::apm::expand(crate::apm::Options::default(), function).unwrap();
        let mut file: File = syn::parse2(quote!(impl Store { #expanded })).unwrap();
        for item in &mut file.items {
            let Item::Impl(block) = item else { continue };
            for item in &mut block.items {
                if let ImplItem::Fn(function) = item {
                    without_docs(&mut function.attrs);
                }
            }
        }
        let generated = prettyplease::unparse(&file);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/sum.rs");
        if std::env::var_os("APM_TAP_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "snapshots/sum.rs is stale; rerun with APM_TAP_BLESS=1. Generated:\n{generated}"
        );
    }
}
