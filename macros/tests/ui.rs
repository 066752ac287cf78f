//! The signatures `#[apm]` and `#[from_apm]` refuse, each with its compiler message
//! checked in (`tests/ui/*.stderr`; `TRYBUILD=overwrite` rewrites them).

#[test]
fn rejected_signatures_name_the_fix() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
