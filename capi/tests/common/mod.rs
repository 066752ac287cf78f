//! Building and running C programs against an example's static library: what a C
//! caller of a Rust library does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The profile directory this test runs from (`target/debug`): its executable is in
/// `deps/` below it.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds example `example` of this package as a static library, so that the test also
/// runs on its own (`cargo test` builds the examples anyway, so this is then a no-op).
fn static_library(profile: &Path, example: &str) -> PathBuf {
    let target_dir = profile.parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build.args([
        "build",
        "--quiet",
        "-p",
        "apm-tap-capi",
        "--example",
        example,
    ]);
    build.arg("--target-dir").arg(target_dir);
    if profile.file_name().unwrap() == "release" {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "building the {example} example failed");
    profile.join(format!("examples/lib{example}.a"))
}

/// Compiles `source` (relative to this package) with the system C compiler, with
/// `include/` and `include_dir` on the include path, links it with example `example`'s
/// static library, runs it and returns what it did, after asserting that it succeeded.
pub fn compile_and_run(source: &str, include_dir: &str, example: &str) -> Output {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profile = profile_dir();
    let library = static_library(&profile, example);
    let program = profile.join(Path::new(source).file_stem().unwrap());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let compiled = Command::new(&cc)
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-g",
            "-D_GNU_SOURCE",
        ])
        .arg("-I")
        .arg(dir.join("include"))
        .arg("-I")
        .arg(dir.join(include_dir))
        .arg("-o")
        .arg(&program)
        .arg(dir.join(source))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C compiler `{cc}`: {error}"));
    assert!(compiled.success(), "{source} did not compile");
    let run = Command::new(&program)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{source} failed:\n{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    run
}
