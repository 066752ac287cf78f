//! Links the system libuv, found with pkg-config (Debian: `apt-get install libuv1-dev`).

use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let libs = Command::new("pkg-config")
        .args(["--libs", "libuv"])
        .output()
        .ok()
        .filter(|output| output.status.success());
    match libs {
        Some(output) => {
            for flag in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                if let Some(dir) = flag.strip_prefix("-L") {
                    println!("cargo::rustc-link-search=native={dir}");
                } else if let Some(lib) = flag.strip_prefix("-l") {
                    println!("cargo::rustc-link-lib={lib}");
                }
            }
        }
        None => {
            println!(
                "cargo::warning=pkg-config does not know libuv: install it (Debian: \
                 apt-get install libuv1-dev); linking with -luv"
            );
            println!("cargo::rustc-link-lib=uv");
        }
    }
}
