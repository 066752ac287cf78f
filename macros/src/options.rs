//! What both attributes' options share: each given once, and `crate = "path"`.

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::parse::Parse;
use syn::{LitStr, Path};

fn twice(meta: &ParseNestedMeta<'_>) -> syn::Error {
    meta.error(format!("`{}` is given twice", meta.path.to_token_stream()))
}

/// Parses `option = value` into `slot`, refusing a second one.
pub(crate) fn set<T: Parse>(meta: &ParseNestedMeta<'_>, slot: &mut Option<T>) -> syn::Result<()> {
    if slot.is_some() {
        return Err(twice(meta));
    }
    *slot = Some(meta.value()?.parse()?);
    Ok(())
}

/// Sets a flag option (`c_abi`), refusing a second one.
pub(crate) fn flag(meta: &ParseNestedMeta<'_>, slot: &mut bool) -> syn::Result<()> {
    if *slot {
        return Err(twice(meta));
    }
    *slot = true;
    Ok(())
}

/// Parses `crate = "path"` (a string, as tokio's attributes take it) into `slot`.
pub(crate) fn set_crate(meta: &ParseNestedMeta<'_>, slot: &mut Option<Path>) -> syn::Result<()> {
    let mut path: Option<LitStr> = None;
    set(meta, &mut path)?;
    if slot.is_some() {
        return Err(twice(meta));
    }
    *slot = path.map(|path| path.parse()).transpose()?;
    Ok(())
}

/// Where apm-tap is: the `crate` option, or `::apm_tap`.
pub(crate) fn krate(path: Option<&Path>) -> TokenStream {
    match path {
        Some(path) => quote!(#path),
        None => quote!(::apm_tap),
    }
}
