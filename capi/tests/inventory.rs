//! The inventory example's C side: `inventory.h` is what the `#[apm(c_abi)]`
//! declarations of `examples/inventory/ops.rs` generate (regenerated and compared;
//! `APM_TAP_BLESS=1` rewrites it), and `examples/inventory/caller.c` calls the
//! operations through it. `.ci/run` also runs the C caller under valgrind.

mod common;

#[path = "../examples/inventory/ops.rs"]
mod ops;

use std::path::Path;

#[test]
fn the_checked_in_header_is_the_generated_one() {
    let generated = apm_tap_capi::header(
        "INVENTORY_H",
        &[
            ops::STOCK_ADD_C_DECLARATION,
            ops::STOCK_GET_C_DECLARATION,
            ops::STOCK_TOTAL_C_DECLARATION,
        ],
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/inventory/inventory.h");
    if std::env::var_os("APM_TAP_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "examples/inventory/inventory.h differs from what the declarations generate; \
         rerun with APM_TAP_BLESS=1 and commit the header. Generated:\n{generated}"
    );
}

#[test]
fn the_c_caller_drives_the_service_through_the_generated_header() {
    let run = common::compile_and_run(
        "examples/inventory/caller.c",
        "examples/inventory",
        "inventory_c",
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        stdout,
        "stock_add: item 7 has 5 units (completed inside Begin), item 8 has 3\n\
         stock_get: item 7 has 5 units\n\
         stock_total: 8 units over items 0..10, ended in the callback\n"
    );
}
