//! The few libuv declarations this crate needs, written by hand from `uv.h` (1.x).
//!
//! Handles and requests are opaque: their sizes come from `uv_loop_size`,
//! `uv_handle_size` and `uv_req_size` at run time, checked against the room this crate
//! leaves for them, and their fields are read with libuv's accessors. `tests/sizes.rs`
//! compiles a C program against the real header and checks every constant and layout
//! written here.

// The C names, as in `uv.h`, whose documentation (docs.libuv.org) covers each item.
#![allow(non_camel_case_types, missing_docs)]

use std::ffi::{c_char, c_int, c_uint, c_void};

/// `uv_loop_t`, opaque.
pub type uv_loop_t = c_void;
/// `uv_handle_t` and its subtypes, opaque.
pub type uv_handle_t = c_void;
/// `uv_req_t` and its subtypes, opaque.
pub type uv_req_t = c_void;

/// `uv_run_mode::UV_RUN_DEFAULT`.
pub const UV_RUN_DEFAULT: c_int = 0;
/// `uv_handle_type::UV_ASYNC`.
pub const UV_ASYNC: c_int = 1;
/// `uv_req_type::UV_FS`.
pub const UV_FS: c_int = 6;
/// `uv_req_type::UV_WORK`.
pub const UV_WORK: c_int = 7;
/// `uv_req_type::UV_GETADDRINFO`.
pub const UV_GETADDRINFO: c_int = 8;
/// `UV_ECANCELED` (`-ECANCELED` on Unix).
pub const UV_ECANCELED: c_int = -libc::ECANCELED;

/// `uv_timespec_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct uv_timespec_t {
    pub tv_sec: libc::c_long,
    pub tv_nsec: libc::c_long,
}

/// `uv_stat_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct uv_stat_t {
    pub st_dev: u64,
    pub st_mode: u64,
    pub st_nlink: u64,
    pub st_uid: u64,
    pub st_gid: u64,
    pub st_rdev: u64,
    pub st_ino: u64,
    pub st_size: u64,
    pub st_blksize: u64,
    pub st_blocks: u64,
    pub st_flags: u64,
    pub st_gen: u64,
    pub st_atim: uv_timespec_t,
    pub st_mtim: uv_timespec_t,
    pub st_ctim: uv_timespec_t,
    pub st_birthtim: uv_timespec_t,
}

/// `uv_buf_t` on Unix.
#[repr(C)]
pub struct uv_buf_t {
    pub base: *mut c_char,
    pub len: usize,
}

pub type uv_async_cb = extern "C" fn(handle: *mut uv_handle_t);
pub type uv_close_cb = extern "C" fn(handle: *mut uv_handle_t);
pub type uv_fs_cb = extern "C" fn(req: *mut uv_req_t);
pub type uv_work_cb = extern "C" fn(req: *mut uv_req_t);
pub type uv_after_work_cb = extern "C" fn(req: *mut uv_req_t, status: c_int);
pub type uv_getaddrinfo_cb =
    extern "C" fn(req: *mut uv_req_t, status: c_int, res: *mut libc::addrinfo);

extern "C" {
    pub fn uv_loop_size() -> usize;
    pub fn uv_loop_init(loop_: *mut uv_loop_t) -> c_int;
    pub fn uv_loop_close(loop_: *mut uv_loop_t) -> c_int;
    pub fn uv_run(loop_: *mut uv_loop_t, mode: c_int) -> c_int;

    pub fn uv_handle_size(kind: c_int) -> usize;
    pub fn uv_handle_get_data(handle: *const uv_handle_t) -> *mut c_void;
    pub fn uv_handle_set_data(handle: *mut uv_handle_t, data: *mut c_void);
    pub fn uv_close(handle: *mut uv_handle_t, cb: Option<uv_close_cb>);
    pub fn uv_async_init(
        loop_: *mut uv_loop_t,
        handle: *mut uv_handle_t,
        cb: Option<uv_async_cb>,
    ) -> c_int;
    pub fn uv_async_send(handle: *mut uv_handle_t) -> c_int;

    pub fn uv_req_size(kind: c_int) -> usize;
    pub fn uv_req_get_data(req: *const uv_req_t) -> *mut c_void;
    pub fn uv_req_set_data(req: *mut uv_req_t, data: *mut c_void);
    pub fn uv_cancel(req: *mut uv_req_t) -> c_int;

    pub fn uv_fs_get_result(req: *const uv_req_t) -> isize;
    pub fn uv_fs_get_statbuf(req: *mut uv_req_t) -> *mut uv_stat_t;
    pub fn uv_fs_req_cleanup(req: *mut uv_req_t);
    pub fn uv_fs_open(
        loop_: *mut uv_loop_t,
        req: *mut uv_req_t,
        path: *const c_char,
        flags: c_int,
        mode: c_int,
        cb: Option<uv_fs_cb>,
    ) -> c_int;
    pub fn uv_fs_read(
        loop_: *mut uv_loop_t,
        req: *mut uv_req_t,
        file: c_int,
        bufs: *const uv_buf_t,
        nbufs: c_uint,
        offset: i64,
        cb: Option<uv_fs_cb>,
    ) -> c_int;
    pub fn uv_fs_close(
        loop_: *mut uv_loop_t,
        req: *mut uv_req_t,
        file: c_int,
        cb: Option<uv_fs_cb>,
    ) -> c_int;
    pub fn uv_fs_stat(
        loop_: *mut uv_loop_t,
        req: *mut uv_req_t,
        path: *const c_char,
        cb: Option<uv_fs_cb>,
    ) -> c_int;

    pub fn uv_queue_work(
        loop_: *mut uv_loop_t,
        req: *mut uv_req_t,
        work_cb: Option<uv_work_cb>,
        after_work_cb: Option<uv_after_work_cb>,
    ) -> c_int;

    pub fn uv_getaddrinfo(
        loop_: *mut uv_loop_t,
        req: *mut uv_req_t,
        cb: Option<uv_getaddrinfo_cb>,
        node: *const c_char,
        service: *const c_char,
        hints: *const libc::addrinfo,
    ) -> c_int;
    pub fn uv_freeaddrinfo(ai: *mut libc::addrinfo);

    pub fn uv_strerror(err: c_int) -> *const c_char;
}
