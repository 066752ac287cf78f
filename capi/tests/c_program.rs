//! The C test program (`tests/c/ops_test.c`), compiled with the system C compiler
//! against `apm_tap.h` and the `demo_ops` example's static library, then run: what a C
//! caller of a Rust library does. `.ci/run` also runs it under valgrind.

mod common;

#[test]
fn the_c_program_drives_the_exported_operations() {
    let run = common::compile_and_run("tests/c/ops_test.c", "tests/c", "demo_ops");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
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
