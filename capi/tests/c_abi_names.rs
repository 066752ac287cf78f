//! `#[apm(c_abi)]` with names that C, C++ or `export!`'s own items use: the exported
//! pair passes every argument through unchanged, and the generated declarations compile
//! as C11 and C++17 with every warning an error.

use std::path::Path;
use std::process::Command;
use std::ptr;

use apm_tap_capi::Status;

/// Adds /* its */ arguments: a doc comment that would open a nested C comment.
// `OP` shadowed `export!`'s own `const OP` before it was renamed: keep its name.
#[allow(non_snake_case)]
#[apm_tap::apm(c_abi)]
pub async fn keywords(int: i32, default: i32, OP: u64, output: i32, r#type: i32) -> u64 {
    OP + u64::try_from(int + default + output + r#type).unwrap()
}

/// A raw identifier as the operation's name.
#[apm_tap::apm(c_abi)]
pub async fn r#type(x: i32) -> i32 {
    -x
}

#[test]
fn arguments_named_like_exports_items_reach_the_fn_unchanged() {
    // SAFETY: no callback, no state.
    let op = unsafe { keywords_begin(1, 2, 1000, 3, 4, None, ptr::null_mut()) };
    let mut out = 0;
    // SAFETY: `op` came from Begin and is ended once; `out` is a `u64`.
    assert_eq!(unsafe { keywords_end(op, &mut out) }, Status::Ok);
    assert_eq!(out, 1010);
    assert_eq!(blocking_keywords(1, 2, 1000, 3, 4), Ok(1010));
}

#[test]
fn a_raw_identifier_loses_its_prefix_in_c() {
    // SAFETY: no callback, no state.
    let op = unsafe { type_begin(5, None, ptr::null_mut()) };
    let mut out = 0;
    // SAFETY: `op` came from Begin and is ended once; `out` is an `i32`.
    assert_eq!(unsafe { type_end(op, &mut out) }, Status::Ok);
    assert_eq!(out, -5);
    assert_eq!(
        TYPE_C_DECLARATION,
        "/* A raw identifier as the operation's name. */\n\
         apm_tap_op *type_begin(int32_t x, apm_tap_callback callback, void *state);\n\
         apm_tap_status type_end(apm_tap_op *op, int32_t *out);\n"
    );
}

#[test]
fn the_declarations_compile_as_c_and_cpp() {
    assert_eq!(
        KEYWORDS_C_DECLARATION,
        "/* Adds / * its * / arguments: a doc comment that would open a nested C comment. */\n\
         apm_tap_op *keywords_begin(int32_t int_, int32_t default_, uint64_t OP, \
         int32_t output, int32_t type, apm_tap_callback callback, void *state);\n\
         apm_tap_status keywords_end(apm_tap_op *op, uint64_t *out);\n"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let header = out.join("c_abi_names.h");
    std::fs::write(
        &header,
        apm_tap_capi::header(
            "C_ABI_NAMES_H",
            &[KEYWORDS_C_DECLARATION, TYPE_C_DECLARATION],
        ),
    )
    .unwrap();
    let source = out.join("c_abi_names.c");
    std::fs::write(&source, "#include \"c_abi_names.h\"\n").unwrap();
    for (compiler, standard) in [("cc", "-std=c11"), ("c++", "-std=c++17")] {
        let status = Command::new(compiler)
            .args([standard, "-x"])
            .arg(if compiler == "cc" { "c" } else { "c++" })
            .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only"])
            .arg("-I")
            .arg(dir.join("include"))
            .arg("-I")
            .arg(out)
            .arg(&source)
            .status()
            .unwrap_or_else(|error| panic!("cannot run `{compiler}`: {error}"));
        assert!(status.success(), "{compiler} refused the header");
    }
}
