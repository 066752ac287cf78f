//! `#[from_apm]`: a Begin method and its End, awaited as one `async fn`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Error, Expr, FnArg, Ident, ItemFn, LitBool, Pat, Path, ReturnType, Type};

use crate::options;
use crate::types::{is_callback, is_named, is_result};

/// The attribute's options:
/// `#[from_apm(end = f, output = T, on_cancel = f, name = ident, flatten = bool)]`.
#[derive(Default)]
pub(crate) struct Options {
    end: Option<Expr>,
    output: Option<Type>,
    on_cancel: Option<Expr>,
    name: Option<Ident>,
    flatten: Option<LitBool>,
    krate: Option<Path>,
}

impl Options {
    pub(crate) fn parse(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        if meta.path.is_ident("crate") {
            options::set_crate(&meta, &mut self.krate)?;
        } else if meta.path.is_ident("end") {
            options::set(&meta, &mut self.end)?;
        } else if meta.path.is_ident("output") {
            options::set(&meta, &mut self.output)?;
        } else if meta.path.is_ident("on_cancel") {
            options::set(&meta, &mut self.on_cancel)?;
        } else if meta.path.is_ident("name") {
            options::set(&meta, &mut self.name)?;
        } else if meta.path.is_ident("flatten") {
            options::set(&meta, &mut self.flatten)?;
        } else {
            return Err(meta.error(
                "unknown `#[from_apm]` option: expected `end = <fn>`, `output = <type>`, \
                 `on_cancel = <fn>`, `name = <ident>`, `flatten = <bool>` or \
                 `crate = \"<path>\"`",
            ));
        }
        Ok(())
    }
}

pub(crate) fn expand(options: Options, begin: ItemFn) -> syn::Result<TokenStream> {
    let signature = &begin.sig;
    let Some(end) = &options.end else {
        return Err(Error::new(
            signature.ident.span(),
            "`#[from_apm]` needs the End: `#[from_apm(end = end_read, output = T)]`",
        ));
    };
    let Some(output) = &options.output else {
        return Err(Error::new_spanned(
            end,
            "`#[from_apm]` needs the End's output type, which a macro cannot read from \
             its signature: `#[from_apm(end = end_read, output = T)]`",
        ));
    };
    if let Some(token) = signature.asyncness {
        return Err(Error::new(
            token.span,
            "`#[from_apm]` goes on a Begin, a plain `fn` that returns a handle",
        ));
    }
    if let Some(token) = signature.unsafety {
        return Err(Error::new(
            token.span,
            "`#[from_apm]` does not take an `unsafe fn`: wrap it in a safe Begin first",
        ));
    }
    let handle = match &signature.output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => {
            return Err(Error::new(
                signature.ident.span(),
                "`#[from_apm]` goes on a Begin, which returns the operation's handle",
            ))
        }
    };
    let name = match &options.name {
        Some(name) => name.clone(),
        None => {
            let begin_name = signature.ident.to_string();
            match begin_name
                .strip_prefix("begin_")
                .filter(|rest| !rest.is_empty())
            {
                Some(rest) => format_ident!("{}", rest, span = signature.ident.span()),
                None => {
                    return Err(Error::new(
                        signature.ident.span(),
                        "`#[from_apm]` names the async fn after a Begin called `begin_xxx`; \
                         name it: `#[from_apm(end = .., output = .., name = xxx)]`",
                    ))
                }
            }
        }
    };

    let krate = options::krate(options.krate.as_ref());
    let mut receiver = None;
    let mut parameters = Vec::new();
    let mut arguments = Vec::new();
    let mut callback = false;
    // Whether the previous parameter was the callback: a `State` right after it is
    // Begin's state.
    let mut after_callback = false;
    for input in &signature.inputs {
        match input {
            FnArg::Receiver(self_) => receiver = Some(self_),
            FnArg::Typed(typed) => {
                let was_after_callback = std::mem::take(&mut after_callback);
                if let Some(callback_type) = is_callback(&typed.ty) {
                    if callback {
                        return Err(Error::new_spanned(
                            &typed.ty,
                            "`#[from_apm]`: a Begin takes one callback",
                        ));
                    }
                    callback = true;
                    after_callback = true;
                    arguments.push(match callback_type {
                        // The parameter's type is known: convert to it.
                        crate::types::Callback::Named => {
                            quote!(::core::convert::Into::into(__apm_tap_callback))
                        }
                        // `impl Into<AsyncCallback<T>>`: the `ApmCallback` is one.
                        crate::types::Callback::ImplInto => quote!(__apm_tap_callback),
                    });
                } else if was_after_callback && is_named(&typed.ty, "State") {
                    arguments.push(quote!(#krate::State::none()));
                } else {
                    let Pat::Ident(pattern) = &*typed.pat else {
                        return Err(Error::new_spanned(
                            &typed.pat,
                            "`#[from_apm]` needs a plain name for each argument: the \
                             async fn forwards it by name",
                        ));
                    };
                    let argument = &pattern.ident;
                    let ty = &typed.ty;
                    parameters.push(quote!(#argument: #ty));
                    arguments.push(quote!(#argument));
                }
            }
        }
    }
    if !callback {
        return Err(Error::new(
            signature.paren_token.span.join(),
            "`#[from_apm]` needs the Begin's callback parameter, an \
             `apm_tap::AsyncCallback<T>` (or `apm_tap::ApmCallback`): the async fn \
             passes the callback that wakes it",
        ));
    }

    let flatten = match &options.flatten {
        Some(flatten) => flatten.value,
        None => is_result(output),
    };
    let (future_output, result, errors) = if flatten {
        (
            quote!(#output),
            quote!(#krate::__private::flatten_end(__apm_tap_future.await)),
            "The End's own error, or the bridge's converted into it with \
             `From<apm_tap::Error>`: `Abandoned` if the Begin's callback was dropped \
             uncalled (then End does not run: it would block forever).",
        )
    } else {
        (
            quote!(::core::result::Result<#output, #krate::Error>),
            quote!(__apm_tap_future.await),
            "`apm_tap::Error::Abandoned` if the Begin's callback was dropped uncalled (then \
             End does not run: it would block forever).",
        )
    };

    let begin_name = &signature.ident;
    let (call, receiver_parameter) = match receiver {
        Some(self_) => (quote!(self.#begin_name), Some(quote!(#self_))),
        None => (quote!(#begin_name), None),
    };
    let receiver_parameter = receiver_parameter.iter();
    let on_cancel = options
        .on_cancel
        .as_ref()
        .map(|on_cancel| quote_spanned!(on_cancel.span()=> .on_cancel(#on_cancel)));
    let end_check = quote_spanned! {end.span()=>
        let __apm_tap_end = #krate::__private::end_fn::<#handle, #output, _>(#end);
    };
    let cancel_doc = match &options.on_cancel {
        Some(on_cancel) => format!(
            "Dropping the future before the operation completed runs `{}` once with the \
             handle (the legacy Cancel); End still runs once, when the callback comes, \
             and its result is dropped there.",
            quote!(#on_cancel)
        ),
        None => "Dropping the future before the operation completed leaves the operation \
                 running; End still runs once, when the callback comes, and its result \
                 is dropped there."
            .to_owned(),
    };
    let doc = format!(
        "`{begin_name}` and its End as one future (.NET's `Task.Factory.FromAsync`).\n\n\
         Lazy: `{begin_name}` runs at the first poll, once, with a callback that wakes \
         this future; End (`{end}`) then runs exactly once for the handle it returned. \
         A Begin that completed synchronously has End run after it returned, never \
         inside it.\n\n\
         Generated by `#[apm_tap::from_apm]`.\n\n\
         # Errors\n\n{errors}\n\n\
         # Panics\n\nA panic in `{begin_name}` or in End propagates out of the poll that \
         ran it.\n\n\
         # Cancel safety\n\n{cancel_doc}",
        end = quote!(#end),
    );
    let vis = &begin.vis;
    let generics = &signature.generics;
    let where_clause = &generics.where_clause;
    Ok(quote! {
        #begin

        #[doc = #doc]
        #vis async fn #name #generics (
            #(#receiver_parameter,)*
            #(#parameters),*
        ) -> #future_output #where_clause {
            #end_check
            let __apm_tap_future = #krate::from_apm(
                |__apm_tap_callback: #krate::ApmCallback| #call(#(#arguments),*),
                __apm_tap_end,
            )
            #on_cancel;
            #result
        }
    })
}
