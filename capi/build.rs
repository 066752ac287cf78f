//! Tells crates that build C against this one where the header is: `links = "apm_tap"`
//! makes this `DEP_APM_TAP_INCLUDE` in their build scripts.

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::metadata=include={manifest}/include");
}
