//! What the attributes check in a signature's types: borrows, `impl Trait`, and the
//! last segment of a path (`AsyncCallback<T>`, `Progress<P>`, `Result<T, E>`).

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::visit::{self, Visit};
use syn::{
    GenericArgument, Lifetime, PathArguments, PathSegment, Type, TypeImplTrait, TypeReference,
};

/// The first thing in `ty` that keeps it from outliving the call: a reference or a
/// lifetime other than `'static`, or an `impl Trait` (a generic parameter).
/// Each holds the offending tokens, for an error that spans them.
pub(crate) enum Unowned {
    Borrow(TokenStream),
    ImplTrait(TokenStream),
}

pub(crate) fn unowned(ty: &Type) -> Option<Unowned> {
    let mut finder = Finder(None);
    finder.visit_type(ty);
    finder.0
}

struct Finder(Option<Unowned>);

impl<'ast> Visit<'ast> for Finder {
    fn visit_type_reference(&mut self, reference: &'ast TypeReference) {
        let is_static = reference
            .lifetime
            .as_ref()
            .is_some_and(|lifetime| lifetime.ident == "static");
        if !is_static && self.0.is_none() {
            self.0 = Some(Unowned::Borrow(reference.to_token_stream()));
        }
        visit::visit_type_reference(self, reference);
    }

    fn visit_lifetime(&mut self, lifetime: &'ast Lifetime) {
        if lifetime.ident != "static" && self.0.is_none() {
            self.0 = Some(Unowned::Borrow(lifetime.to_token_stream()));
        }
    }

    // A function pointer's or an `Fn(..)` bound's own references are higher-ranked: they
    // borrow nothing the operation keeps.
    fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}

    fn visit_parenthesized_generic_arguments(
        &mut self,
        _: &'ast syn::ParenthesizedGenericArguments,
    ) {
    }

    fn visit_type_impl_trait(&mut self, impl_trait: &'ast TypeImplTrait) {
        if self.0.is_none() {
            self.0 = Some(Unowned::ImplTrait(impl_trait.to_token_stream()));
        }
    }
}

/// The last segment of a path type (`Progress` in `apm_tap::progress::Progress<P>`).
pub(crate) fn last_segment(ty: &Type) -> Option<&PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// Whether `ty` is a path whose last segment is `name`.
pub(crate) fn is_named(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|segment| segment.ident == name)
}

/// The one type argument of a path type (`P` in `Progress<P>`).
pub(crate) fn only_type_argument(ty: &Type) -> Option<&Type> {
    let PathArguments::AngleBracketed(arguments) = &last_segment(ty)?.arguments else {
        return None;
    };
    let mut types = arguments.args.iter().filter_map(|argument| match argument {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let first = types.next()?;
    types.next().is_none().then_some(first)
}

/// Whether `ty` is a `Result` End can flatten: a path named `Result` with type
/// arguments (`Result<T, E>`, `io::Result<T>`); a user's own non-generic `Result` is
/// not one.
pub(crate) fn is_result(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|segment| {
        segment.ident == "Result" && matches!(segment.arguments, PathArguments::AngleBracketed(_))
    })
}

/// How a Begin's callback parameter is typed.
pub(crate) enum Callback {
    /// `AsyncCallback<T>` or `ApmCallback`.
    Named,
    /// `impl Into<AsyncCallback<T>>`, as `#[apm]` generates.
    ImplInto,
}

/// Whether `ty` is a Begin's callback parameter, and how it is typed.
pub(crate) fn is_callback(ty: &Type) -> Option<Callback> {
    if is_named(ty, "AsyncCallback") || is_named(ty, "ApmCallback") {
        return Some(Callback::Named);
    }
    let Type::ImplTrait(impl_trait) = ty else {
        return None;
    };
    impl_trait.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let into = bound
            .path
            .segments
            .last()
            .filter(|segment| segment.ident == "Into")?;
        let PathArguments::AngleBracketed(arguments) = &into.arguments else {
            return None;
        };
        arguments
            .args
            .iter()
            .any(|argument| {
                matches!(argument, GenericArgument::Type(ty) if is_named(ty, "AsyncCallback"))
            })
            .then_some(Callback::ImplInto)
    })
}
