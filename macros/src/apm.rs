//! `#[apm]`: an `async fn` exposed as a Begin/End pair, plus the blocking call.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Error, Expr, FnArg, Ident, ItemFn, LitBool, Pat, Path, ReturnType, Type};

use crate::options;
use crate::types::{is_named, is_result, only_type_argument, unowned, Unowned};

/// The attribute's options:
/// `#[apm(dispatch = expr, progress = name, cancel = name, flatten = bool, c_abi)]`.
#[derive(Default)]
pub(crate) struct Options {
    dispatch: Option<Expr>,
    progress: Option<Ident>,
    cancel: Option<Ident>,
    flatten: Option<LitBool>,
    c_abi: bool,
    krate: Option<Path>,
}

impl Options {
    pub(crate) fn parse(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        if meta.path.is_ident("crate") {
            options::set_crate(&meta, &mut self.krate)?;
        } else if meta.path.is_ident("dispatch") {
            options::set(&meta, &mut self.dispatch)?;
        } else if meta.path.is_ident("progress") {
            options::set(&meta, &mut self.progress)?;
        } else if meta.path.is_ident("cancel") {
            options::set(&meta, &mut self.cancel)?;
        } else if meta.path.is_ident("flatten") {
            options::set(&meta, &mut self.flatten)?;
        } else if meta.path.is_ident("c_abi") {
            options::flag(&meta, &mut self.c_abi)?;
        } else {
            return Err(meta.error(
                "unknown `#[apm]` option: expected `dispatch = <Dispatch>`, \
                 `progress = <argument>`, `cancel = <argument>`, `flatten = <bool>`, \
                 `c_abi` or `crate = \"<path>\"`",
            ));
        }
        Ok(())
    }
}

/// Names Begin gives its own parameters: an argument of the same name would clash.
const RESERVED: [&str; 3] = ["callback", "state", "on_progress"];

/// One argument of the async fn, as Begin forwards it.
struct Argument {
    name: Ident,
    ty: Type,
}

pub(crate) fn expand(options: Options, function: ItemFn) -> syn::Result<TokenStream> {
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        return Err(Error::new(
            signature.fn_token.span,
            "`#[apm]` goes on an `async fn`: it exposes the future the fn returns as a \
             Begin/End pair",
        ));
    }
    if let Some(token) = signature.constness {
        return Err(Error::new(
            token.span,
            "`#[apm]` does not take a `const fn`",
        ));
    }
    if let Some(token) = signature.unsafety {
        return Err(Error::new(
            token.span,
            "`#[apm]` does not take an `unsafe fn`: Begin would have to be unsafe too",
        ));
    }
    if let Some(abi) = &signature.abi {
        return Err(Error::new(
            abi.span(),
            "`#[apm]` does not take an `extern fn`",
        ));
    }
    if !signature.generics.params.is_empty() || signature.generics.where_clause.is_some() {
        return Err(Error::new_spanned(
            &signature.generics,
            "`#[apm]` does not take generic parameters: a Begin/End pair has one concrete \
             output type; write a non-generic `async fn` that calls the generic one",
        ));
    }

    let mut receiver = None;
    let mut arguments = Vec::new();
    let mut progress = None;
    let mut cancel = None;
    // The call that makes the future: every argument, in its declared order.
    let mut call_arguments = Vec::new();
    for input in &signature.inputs {
        match input {
            FnArg::Receiver(self_) => {
                let borrowed = self_.reference.is_some() || unowned(&self_.ty).is_some();
                if borrowed {
                    return Err(Error::new_spanned(
                        self_,
                        "`#[apm]` needs an owned receiver: the operation outlives the call \
                         to Begin, so it cannot borrow `self`; take `self: Arc<Self>` (or \
                         `self` on a `Clone` type)",
                    ));
                }
                receiver = Some(if self_.colon_token.is_some() {
                    let ty = &self_.ty;
                    quote!(self: &#ty)
                } else {
                    quote!(&self)
                });
            }
            FnArg::Typed(typed) => {
                let Pat::Ident(pattern) = &*typed.pat else {
                    return Err(Error::new_spanned(
                        &typed.pat,
                        "`#[apm]` needs a plain name for each argument: Begin forwards \
                         it by name",
                    ));
                };
                if pattern.by_ref.is_some() || pattern.subpat.is_some() {
                    return Err(Error::new_spanned(
                        &typed.pat,
                        "`#[apm]` needs a plain name for each argument: Begin forwards \
                         it by name",
                    ));
                }
                let name = pattern.ident.clone();
                call_arguments.push(name.clone());
                if cancel.is_none() && options.cancel.as_ref() == Some(&name) {
                    if !is_named(&typed.ty, "Cancellation") {
                        return Err(Error::new_spanned(
                            &typed.ty,
                            "the `cancel` argument must be an `apm_tap::Cancellation`",
                        ));
                    }
                    cancel = Some(name);
                    continue;
                }
                if progress.is_none()
                    && options
                        .progress
                        .as_ref()
                        .is_some_and(|progress| *progress == name)
                {
                    let reports = only_type_argument(&typed.ty)
                        .filter(|_| is_named(&typed.ty, "Progress"))
                        .ok_or_else(|| {
                            Error::new_spanned(
                                &typed.ty,
                                "the `progress` argument must be an \
                                 `apm_tap::progress::Progress<P>`",
                            )
                        })?;
                    progress = Some((name, reports.clone()));
                    continue;
                }
                if RESERVED.iter().any(|reserved| name == reserved) {
                    return Err(Error::new(
                        name.span(),
                        format!(
                            "`{name}` is the name of one of Begin's own parameters \
                             (`callback`, `state`, `on_progress`): rename this argument"
                        ),
                    ));
                }
                match unowned(&typed.ty) {
                    Some(Unowned::Borrow(tokens)) => {
                        return Err(Error::new_spanned(
                            tokens,
                            format!(
                                "`#[apm]` needs owned arguments: the operation outlives \
                                 the call to Begin, so `{name}` cannot borrow; take an \
                                 owned type (`String` for `&str`, `Vec<T>` for `&[T]`, \
                                 `Arc<T>` for `&T`) or a `'static` reference"
                            ),
                        ))
                    }
                    Some(Unowned::ImplTrait(tokens)) => {
                        return Err(Error::new_spanned(
                            tokens,
                            "`#[apm]` does not take `impl Trait` arguments (generic \
                             parameters): name a concrete type, or a `Box<dyn Trait>`",
                        ))
                    }
                    None => {}
                }
                arguments.push(Argument {
                    name,
                    ty: (*typed.ty).clone(),
                });
            }
        }
    }
    if let (Some(wanted), None) = (&options.progress, &progress) {
        return Err(Error::new(
            wanted.span(),
            format!("`progress = {wanted}` names no argument of this fn"),
        ));
    }
    if let (Some(wanted), None) = (&options.cancel, &cancel) {
        return Err(Error::new(
            wanted.span(),
            format!("`cancel = {wanted}` names no argument of this fn"),
        ));
    }

    let output = match &signature.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => {
            match unowned(ty) {
                Some(Unowned::Borrow(tokens)) => {
                    return Err(Error::new_spanned(
                        tokens,
                        "`#[apm]` needs an owned output: End hands it over after the call \
                         to Begin returned",
                    ))
                }
                Some(Unowned::ImplTrait(tokens)) => {
                    return Err(Error::new_spanned(
                        tokens,
                        "`#[apm]` needs an output type it can name: End returns it",
                    ))
                }
                None => {}
            }
            quote!(#ty)
        }
    };
    let flatten = match &options.flatten {
        Some(flatten) => flatten.value,
        None => match &signature.output {
            ReturnType::Type(_, ty) => is_result(ty),
            ReturnType::Default => false,
        },
    };

    let vis = &function.vis;
    let name = &signature.ident;
    let krate = options::krate(options.krate.as_ref());
    let forwarded = forwarded(&function.attrs);
    let begin = format_ident!("begin_{}", name);
    let end = format_ident!("end_{}", name);
    let blocking = format_ident!("blocking_{}", name);
    let is_method = receiver.is_some();
    let scope = if is_method { quote!(Self::) } else { quote!() };
    // Doc links by path, except to a raw identifier (`r#type`), which rustdoc cannot
    // resolve: those are plain code.
    let plain = name.unraw();
    let link = |item: &dyn std::fmt::Display| {
        if name.to_string().starts_with("r#") {
            format!("`{item}`")
        } else if is_method {
            format!("[`{item}`](Self::{item})")
        } else {
            format!("[`{item}`]({item})")
        }
    };
    let (name_link, begin_link, end_link) = (link(&plain), link(&begin), link(&end));

    let names: Vec<&Ident> = arguments.iter().map(|argument| &argument.name).collect();
    let types: Vec<&Type> = arguments.iter().map(|argument| &argument.ty).collect();
    let receiver_parameter = receiver.iter();
    let receiver_parameter2 = receiver.iter();
    let this_binding =
        is_method.then(|| quote!(let __apm_tap_this = ::core::clone::Clone::clone(self);));
    let this = is_method.then(|| quote!(__apm_tap_this,));
    let this_argument = is_method.then(|| quote!(self,));

    let future = quote!(#scope #name(#this #(#call_arguments),*));
    let (future, cancel_doc) = match &cancel {
        Some(cancel) => (
            quote!(#krate::cancellable(move |#cancel| #future)),
            format!(
                " The operation's `{cancel}` trips then: its hooks run and \
                 `is_cancelled()` turns true."
            ),
        ),
        None => (future, String::new()),
    };
    let cancellable_future = future.clone();
    let (future, on_progress_parameter, on_progress_argument, progress_doc) = match &progress {
        Some((argument, reports)) => (
            quote! {
                #krate::progress::reporting(move |#argument| #future).on_progress(on_progress)
            },
            quote!(on_progress: impl ::core::ops::FnMut(#reports) + ::core::marker::Send + 'static,),
            quote!(on_progress,),
            format!(
                "\n\n`on_progress` is called with each report the operation makes \
                 through its `{argument}`, in order, one call at a time, before the \
                 callback."
            ),
        ),
        None => (future, quote!(), quote!(), String::new()),
    };

    let dispatch = options
        .dispatch
        .as_ref()
        .map(|dispatch| quote_spanned!(dispatch.span()=> .dispatch(#dispatch)));
    let dispatch_doc = match &options.dispatch {
        Some(dispatch) => format!(" (the callback is dispatched by `{}`)", quote!(#dispatch)),
        None => String::new(),
    };

    let refused = if flatten {
        quote!(#krate::__private::flatten_end(::core::result::Result::Err(refused)))
    } else {
        quote!(::core::result::Result::Err(refused))
    };
    let (end_output, end_body, end_errors) = if flatten {
        (
            quote!(#output),
            quote!(#krate::__private::flatten_end(handle.end())),
            "The operation's own error, or the bridge's converted into it with \
             `From<apm_tap::Error>`: `Cancelled` if it was cancelled, `Panicked` if it \
             panicked, `Abandoned` if its future was dropped unfinished, `AlreadyEnded` \
             if a clone of the handle was ended already, `WouldDeadlock` where blocking \
             would stop the runtime that must finish it.",
        )
    } else {
        (
            quote!(::core::result::Result<#output, #krate::Error>),
            quote!(handle.end()),
            "`apm_tap::Error::Cancelled` if the operation was cancelled, `Panicked` if \
             it panicked, `Abandoned` if its future was dropped unfinished, \
             `AlreadyEnded` if a clone of the handle was ended already, `WouldDeadlock` \
             where blocking would stop the runtime that must finish it.",
        )
    };
    let blocking_doc = "Blocks the calling thread until the operation completes, on \
        an OS wait created only then; returns at once if it has. On a worker of a \
        multi-thread tokio runtime it blocks in place (`block_in_place`); on the thread \
        that drives a current-thread runtime the operation runs on, it returns \
        `WouldDeadlock` instead of blocking.";

    // `read_all` -> `ReadAll`, for the .NET names.
    let pascal: String = plain
        .to_string()
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_uppercase().chain(chars).collect()
            })
        })
        .collect();
    let begin_doc = format!(
        "Begins {name_link} as an APM operation (.NET's `Begin{pascal}`): starts it \
         at once and returns its handle.\n\n\
         `callback` (a closure, an `AsyncCallback`, or `AsyncCallback::none()`) runs once \
         when the operation completes{dispatch_doc}: inside this call if it completed here \
         (then the handle's `completed_synchronously()` is true), otherwise on the thread \
         that completed, cancelled or abandoned it. `state` is what `state()` returns on \
         every clone of the handle. The handle can be polled, waited on, awaited, or \
         ended with {end_link}.{progress_doc}\n\n\
         Generated by `#[apm_tap::apm]`.\n\n\
         # Cancel safety\n\n\
         `handle.cancel()` stops the operation (its future is dropped where it runs); \
         the callback still runs once, and End returns `Cancelled` unless the result was \
         stored first.{cancel_doc} Dropping every handle does not stop it."
    );
    let end_doc = format!(
        "Ends an operation begun by {begin_link} (.NET's `End{pascal}`): \
         returns its output, waiting for it if needed.\n\n\
         Generated by `#[apm_tap::apm]`.\n\n\
         # Errors\n\n{end_errors}\n\n# Blocking\n\n{blocking_doc}"
    );
    let blocking_doc = format!(
        "Runs {name_link} to completion from a thread that cannot `.await`: \
         {begin_link} without callback or state, then {end_link}.\n\n\
         Generated by `#[apm_tap::apm]`.\n\n\
         # Errors\n\nAs {end_link}, and `WouldDeadlock` before anything begins where \
         waiting would deadlock.\n\n# Blocking\n\n{blocking_doc}"
    );

    let exported = if options.c_abi {
        if is_method {
            return Err(Error::new_spanned(
                &signature.inputs,
                "`c_abi` needs a free function: C has no `self`; export a free \
                 `#[apm(c_abi)] async fn` that calls the method",
            ));
        }
        if let Some(progress) = &options.progress {
            return Err(Error::new_spanned(
                progress,
                "`c_abi` does not take `progress`: the C ABI has no progress callback",
            ));
        }
        if let Some(dispatch) = &options.dispatch {
            return Err(Error::new_spanned(
                dispatch,
                "`c_abi` does not take `dispatch`: the C callback runs where the C ABI \
                 says",
            ));
        }
        let ReturnType::Type(_, output) = &signature.output else {
            return Err(Error::new_spanned(
                &signature.ident,
                "`c_abi` exports the output to C, so the fn must return a C scalar",
            ));
        };
        let arguments: Vec<(&Ident, &Type)> = arguments
            .iter()
            .map(|argument| (&argument.name, &argument.ty))
            .collect();
        crate::c_abi::expand(
            &function.attrs,
            vis,
            name,
            &arguments,
            output,
            &cancellable_future,
            &forwarded,
        )?
    } else {
        TokenStream::new()
    };

    // At the fn's name, all of it, so that a future that is not `Send` gets one error
    // there, not a second one at the attribute from `Builder::begin`'s bound.
    let krate_at_name = match &options.krate {
        Some(path) => quote!(#path),
        None => quote_spanned!(signature.ident.span()=> ::apm_tap),
    };
    let send_check = quote_spanned! {signature.ident.span()=>
        #krate_at_name::__private::send_future(__apm_tap_future)
    };
    Ok(quote! {
        #function

        #[doc = #begin_doc]
        #(#forwarded)*
        // Begin adds `callback` and `state` (and `on_progress`) to the fn's arguments.
        #[allow(clippy::too_many_arguments)]
        #vis fn #begin(
            #(#receiver_parameter,)*
            #(#names: #types,)*
            #on_progress_parameter
            callback: impl ::core::convert::Into<#krate::AsyncCallback<#output>>,
            state: #krate::State,
        ) -> #krate::AsyncResult<#output> {
            #this_binding
            let __apm_tap_future = #future;
            #krate::Builder::new()
                .callback(callback)
                .state(state)
                #dispatch
                .begin(#send_check)
        }

        #[doc = #end_doc]
        #(#forwarded)*
        #vis fn #end(handle: #krate::AsyncResult<#output>) -> #end_output {
            #end_body
        }

        #[doc = #blocking_doc]
        #(#forwarded)*
        #vis fn #blocking(
            #(#receiver_parameter2,)*
            #(#names: #types,)*
            #on_progress_parameter
        ) -> #end_output {
            // Refused before anything begins, so that nothing runs behind the error.
            if let ::core::result::Result::Err(refused) = #krate::__private::may_block() {
                return #refused;
            }
            #scope #end(#scope #begin(
                #this_argument
                #(#names,)*
                #on_progress_argument
                #krate::AsyncCallback::none(),
                #krate::State::none(),
            ))
        }

        #exported
    })
}

/// The attributes of the fn that its Begin, End and blocking call share: `cfg`, lint
/// levels, `deprecated` and `doc(hidden)`. A deprecated fn's pair calls it, so the
/// pair allows that use.
fn forwarded(attributes: &[Attribute]) -> Vec<TokenStream> {
    let mut forwarded = Vec::new();
    for attribute in attributes {
        let path = attribute.path();
        let shared = [
            "cfg", "cfg_attr", "allow", "expect", "warn", "deny", "forbid",
        ]
        .iter()
        .any(|name| path.is_ident(name));
        let hidden = path.is_ident("doc")
            && matches!(&attribute.meta, syn::Meta::List(list) if list.tokens.to_string() == "hidden");
        if shared || hidden {
            forwarded.push(quote!(#attribute));
        } else if path.is_ident("deprecated") {
            forwarded.push(quote!(#attribute));
            forwarded.push(quote!(#[allow(deprecated)]));
        }
    }
    forwarded
}
