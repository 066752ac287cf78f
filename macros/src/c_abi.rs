//! `#[apm(c_abi)]`: the operation also exported to C, as `xxx_begin` / `xxx_end`
//! through `apm_tap_capi::export!`, with its C declarations in a const for the header.
//! C's `apm_tap_op_cancel` drops the future, which trips a `cancel` argument.

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::{Attribute, Error, Expr, ExprLit, Ident, Lit, Meta, Type, Visibility};

use crate::types::last_segment;

/// The C type of a Rust scalar, as cbindgen spells it (`usize_is_size_t`).
fn c_type(ty: &Type) -> Option<&'static str> {
    let segment = last_segment(ty)?;
    if !segment.arguments.is_empty() {
        return None;
    }
    Some(match segment.ident.to_string().as_str() {
        "i8" => "int8_t",
        "i16" => "int16_t",
        "i32" => "int32_t",
        "i64" => "int64_t",
        "u8" => "uint8_t",
        "u16" => "uint16_t",
        "u32" => "uint32_t",
        "u64" => "uint64_t",
        "isize" => "ptrdiff_t",
        "usize" => "size_t",
        "f32" | "c_float" => "float",
        "f64" | "c_double" => "double",
        "bool" => "bool",
        "c_char" => "char",
        "c_schar" => "signed char",
        "c_uchar" => "unsigned char",
        "c_short" => "short",
        "c_ushort" => "unsigned short",
        "c_int" => "int",
        "c_uint" => "unsigned int",
        "c_long" => "long",
        "c_ulong" => "unsigned long",
        "c_longlong" => "long long",
        "c_ulonglong" => "unsigned long long",
        _ => return None,
    })
}

fn c_type_or_error(ty: &Type, what: &str) -> syn::Result<&'static str> {
    c_type(ty).ok_or_else(|| {
        Error::new_spanned(
            ty,
            format!(
                "`c_abi` exports {what} to C, so it must be a C scalar: an integer \
                 (`i32`, `u64`, `usize`, `c_int`, ...), `f32`, `f64` or `bool`"
            ),
        )
    })
}

/// The first paragraph of the fn's doc comment, for the C declaration's comment.
fn summary(attributes: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attribute in attributes {
        let Meta::NameValue(name_value) = &attribute.meta else {
            continue;
        };
        if !name_value.path.is_ident("doc") {
            continue;
        }
        if let Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) = &name_value.value
        {
            let line = text.value().trim().to_owned();
            if line.is_empty() {
                if lines.is_empty() {
                    continue;
                }
                break;
            }
            lines.push(line);
        }
    }
    // Nothing in it may end the comment, or open a nested one (`-Wcomment`).
    lines.join(" ").replace("*/", "* /").replace("/*", "/ *")
}

/// Words C or C++ reserve (keywords, and the standard library's macros a name could
/// meet), which a Rust argument may be called.
const RESERVED_IN_C: &[&str] = &[
    "alignas",
    "alignof",
    "and",
    "asm",
    "assert",
    "auto",
    "bool",
    "break",
    "case",
    "catch",
    "char",
    "class",
    "compl",
    "const",
    "constexpr",
    "continue",
    "decltype",
    "default",
    "delete",
    "do",
    "double",
    "else",
    "enum",
    "errno",
    "explicit",
    "export",
    "extern",
    "false",
    "float",
    "for",
    "friend",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "mutable",
    "namespace",
    "new",
    "noexcept",
    "not",
    "nullptr",
    "operator",
    "or",
    "private",
    "protected",
    "public",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "template",
    "this",
    "throw",
    "true",
    "try",
    "typedef",
    "typeid",
    "typename",
    "union",
    "unsigned",
    "using",
    "virtual",
    "void",
    "volatile",
    "while",
    "xor",
];

/// An argument's name in the C declaration (which does not change the ABI): the Rust
/// name, unless C or C++ reserves it.
fn c_name(argument: &Ident) -> String {
    let name = argument.unraw().to_string();
    if RESERVED_IN_C.contains(&name.as_str()) || name.starts_with("__") {
        format!("{name}_")
    } else {
        name
    }
}

/// The exported pair and the const with its C declarations.
pub(crate) fn expand(
    attributes: &[Attribute],
    vis: &Visibility,
    name: &Ident,
    arguments: &[(&Ident, &Type)],
    output: &Type,
    future: &TokenStream,
    forwarded: &[TokenStream],
) -> syn::Result<TokenStream> {
    let out = c_type_or_error(output, "the output")?;
    let mut parameters = Vec::new();
    for (argument, ty) in arguments {
        let c = c_type_or_error(ty, &format!("`{argument}`"))?;
        parameters.push(format!("{c} {}", c_name(argument)));
    }
    parameters.push("apm_tap_callback callback".to_owned());
    parameters.push("void *state".to_owned());
    let plain = name.unraw();
    let begin = format_ident!("{}_begin", plain);
    let end = format_ident!("{}_end", plain);
    let summary = summary(attributes);
    let comment = if summary.is_empty() {
        String::new()
    } else {
        format!("/* {summary} */\n")
    };
    let declaration = format!(
        "{comment}apm_tap_op *{begin}({});\napm_tap_status {end}(apm_tap_op *op, {out} *out);\n",
        parameters.join(", "),
    );
    let constant = format_ident!("{}_C_DECLARATION", plain.to_string().to_uppercase());
    let constant_doc = format!(
        "The C declarations of `{begin}` and `{end}` (generated by `#[apm(c_abi)]`), for \
         a header: see `apm_tap_capi::header`."
    );
    let pair_doc = format!(
        "`{plain}` exported to C (generated by `#[apm(c_abi)]`); declared in C by \
         [`{constant}`]."
    );
    let names = arguments.iter().map(|(argument, _)| argument);
    let types = arguments.iter().map(|(_, ty)| ty);
    Ok(quote! {
        ::apm_tap_capi::export! {
            #[doc = #pair_doc]
            #(#forwarded)*
            fn #begin / #end(#(#names: #types),*) -> #output {
                #future.await
            }
        }

        #[doc = #constant_doc]
        #(#forwarded)*
        #vis const #constant: &str = #declaration;
    })
}
