//! The C test program (`tests/c/ops_test.c`), compiled with the system C compiler
//! against `apm_tap.h` and the `demo_ops` example's static library, then run: what a C
//! caller of a Rust library does. `.ci/run` also runs it under valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The profile directory this test runs from (`target/debug`): its executable is in
/// `deps/` below it.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Builds the static library, so that this test also runs on its own (`cargo test`
/// builds the examples anyway, so this is then a no-op).
fn demo_library(profile: &Path) -> PathBuf {
    let target_dir = profile.parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build.args([
        "build",
        "--quiet",
        "-p",
        "apm-tap-capi",
        "--example",
        "demo_ops",
    ]);
    build.arg("--target-dir").arg(target_dir);
    if profile.file_name().unwrap() == "release" {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "building the demo_ops example failed");
    profile.join("examples/libdemo_ops.a")
}

#[test]
fn the_c_program_drives_the_exported_operations() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let profile = profile_dir();
    let library = demo_library(&profile);
    let program = profile.join("ops_test");
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
        .arg(dir.join("tests/c"))
        .arg("-o")
        .arg(&program)
        .arg(dir.join("tests/c/ops_test.c"))
        .arg(&library)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C compiler `{cc}`: {error}"));
    assert!(compiled.success(), "the C program did not compile");
    let run = Command::new(&program)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the C program failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 9, "{stdout}");
    assert_eq!(
        lines[0],
        "synchronous completion: callback inside Begin, on this thread"
    );
    assert_eq!(
        lines[8],
        "8 threads x 1000 operations: 8000 callbacks, each once"
    );
    // The one panic is the demo future's, reported by the panic hook, caught by the task.
    assert_eq!(stderr.matches("panicked at").count(), 1, "{stderr}");
    assert!(stderr.contains("demo panic"), "{stderr}");
}
