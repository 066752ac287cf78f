//! `src/sys.rs` is written by hand: a C program compiled against the system's `uv.h`
//! prints every size, offset and constant it declares, and each must match.

use std::mem::{offset_of, size_of};
use std::process::Command;

use apm_tap_uv::sys;

#[test]
fn the_hand_written_declarations_match_uv_h() {
    let exe = std::env::current_exe().unwrap();
    let program = exe.parent().unwrap().join("uv_sizes");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let cflags = Command::new("pkg-config")
        .args(["--cflags", "libuv"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let compiled = Command::new(&cc)
        .args(cflags.split_whitespace())
        .args(["-Wall", "-Werror", "-o"])
        .arg(&program)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/c/sizes.c"))
        .status()
        .unwrap_or_else(|error| panic!("cannot run the C compiler `{cc}`: {error}"));
    assert!(compiled.success(), "sizes.c did not compile against uv.h");
    let output = Command::new(&program).output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let value = |name: &str| -> i64 {
        printed
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not printed:\n{printed}"))
    };
    let size = |n: usize| i64::try_from(n).unwrap();
    assert_eq!(value("uv_stat_t"), size(size_of::<sys::uv_stat_t>()));
    assert_eq!(
        value("uv_stat_t.st_size"),
        size(offset_of!(sys::uv_stat_t, st_size))
    );
    assert_eq!(
        value("uv_stat_t.st_mtim"),
        size(offset_of!(sys::uv_stat_t, st_mtim))
    );
    assert_eq!(
        value("uv_timespec_t"),
        size(size_of::<sys::uv_timespec_t>())
    );
    assert_eq!(value("uv_buf_t"), size(size_of::<sys::uv_buf_t>()));
    assert_eq!(
        value("uv_buf_t.base"),
        size(offset_of!(sys::uv_buf_t, base))
    );
    assert_eq!(value("uv_buf_t.len"), size(offset_of!(sys::uv_buf_t, len)));
    assert_eq!(value("UV_RUN_DEFAULT"), i64::from(sys::UV_RUN_DEFAULT));
    assert_eq!(value("UV_ASYNC"), i64::from(sys::UV_ASYNC));
    assert_eq!(value("UV_FS"), i64::from(sys::UV_FS));
    assert_eq!(value("UV_WORK"), i64::from(sys::UV_WORK));
    assert_eq!(value("UV_GETADDRINFO"), i64::from(sys::UV_GETADDRINFO));
    assert_eq!(value("UV_ECANCELED"), i64::from(sys::UV_ECANCELED));
    // The requests fit the room the crate leaves (`Uv::new` checks it at run time too).
    for request in ["uv_fs_t", "uv_work_t", "uv_getaddrinfo_t"] {
        assert!(
            value(request) <= 1024,
            "{request} needs {} bytes",
            value(request)
        );
    }
    // SAFETY: pure functions of their arguments.
    let (fs, work, lookup) = unsafe {
        (
            sys::uv_req_size(sys::UV_FS),
            sys::uv_req_size(sys::UV_WORK),
            sys::uv_req_size(sys::UV_GETADDRINFO),
        )
    };
    assert_eq!(size(fs), value("uv_fs_t"));
    assert_eq!(size(work), value("uv_work_t"));
    assert_eq!(size(lookup), value("uv_getaddrinfo_t"));
}
