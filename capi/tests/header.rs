//! `include/apm_tap.h` is what cbindgen makes of `src/lib.rs` today: regenerated and
//! compared, so that a change to the C ABI cannot ship with a stale header.
//! `APM_TAP_BLESS=1 cargo test -p apm-tap-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn the_checked_in_header_is_the_generated_one() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .unwrap()
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = dir.join("include/apm_tap.h");
    if std::env::var_os("APM_TAP_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/apm_tap.h differs from what cbindgen generates from src/lib.rs; \
         rerun with APM_TAP_BLESS=1 and commit the header. Generated:\n{generated}"
    );
}
