//! A real C library's callback API wrapped into futures: POSIX AIO, as glibc implements
//! it. `aio_read` with `SIGEV_THREAD` is the Begin (glibc calls a C function on a
//! thread of its own when the read is done), `aio_error` + `aio_return` the End, and
//! `aio_cancel` the `on_cancel` hook.
//!
//! `cargo run --example posix_aio` (Linux, glibc, 64-bit). `.ci/run` also runs it under
//! valgrind, which would report the control block freed while glibc still writes it.
//!
//! What it shows: the `ApmCallback` travels through C as a `void *` and comes back in
//! an `extern "C"` notify function, where calling it is safe (it never unwinds); End
//! runs exactly once, also for the read whose future was dropped before it completed,
//! and only after the notification, so that the control block outlives glibc's use of
//! it.

// Binding a C library takes `unsafe`: each block says why it holds.
#![allow(unsafe_code)]

#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
mod aio {
    use std::ffi::c_void;
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::ptr;
    use std::sync::mpsc;

    use apm_tap::{ApmCallback, AsyncHandle};

    /// glibc's `struct sigevent` in its `SIGEV_THREAD` form: the `libc` crate exposes
    /// only the thread-id member of the union that holds the function to call.
    #[repr(C)]
    struct SigeventThread {
        value: libc::sigval,
        signo: libc::c_int,
        notify: libc::c_int,
        function: Option<extern "C" fn(libc::sigval)>,
        attributes: *mut libc::pthread_attr_t,
        _pad: [libc::c_int; 8],
    }

    // The layouts must agree, as in glibc's <bits/types/sigevent_t.h>.
    const _: () = assert!(size_of::<SigeventThread>() == size_of::<libc::sigevent>());

    /// A read in flight: the control block and the buffer glibc writes until it calls
    /// back. Dropping it frees them, so it must not be dropped before the callback:
    /// `from_apm` guarantees that by running End (which drops it) only then.
    pub struct Read {
        block: *mut Block,
    }

    struct Block {
        control: libc::aiocb,
        buffer: Vec<u8>,
        _file: File,
    }

    // SAFETY: the block is owned by the `Read` alone, and glibc's thread touches it only
    // before it calls back, which happens-before End (the callback completes the
    // operation that End waits for).
    unsafe impl Send for Read {}

    impl AsyncHandle for Read {
        /// glibc always calls back, on its own thread, even for a read that finished
        /// at once.
        fn completed_synchronously(&self) -> bool {
            false
        }
    }

    impl Drop for Read {
        fn drop(&mut self) {
            // SAFETY: made by `Box::into_raw` in `begin_read`, freed only here.
            drop(unsafe { Box::from_raw(self.block) });
        }
    }

    /// The notify function glibc calls on its thread: the callback travels as the
    /// `sigval`'s pointer. `ApmCallback::call` never unwinds, so nothing unwinds into C.
    extern "C" fn notify(value: libc::sigval) {
        // SAFETY: made by `Box::into_raw` in `begin_read`; glibc calls this once.
        let callback = unsafe { Box::from_raw(value.sival_ptr.cast::<ApmCallback>()) };
        callback.call();
    }

    /// Begin: starts reading `len` bytes of `file` at `offset`.
    pub fn begin_read(
        file: File,
        offset: i64,
        len: usize,
        callback: ApmCallback,
    ) -> io::Result<Read> {
        let callback = Box::into_raw(Box::new(callback)).cast::<c_void>();
        // SAFETY: `aiocb` is plain C data, valid all zero.
        let control: libc::aiocb = unsafe { std::mem::zeroed() };
        let block = Box::into_raw(Box::new(Block {
            control,
            buffer: vec![0; len],
            _file: file,
        }));
        let read = Read { block };
        // SAFETY: `block` is ours until `aio_read` succeeds; from then on glibc writes
        // `control` and `buffer` until it calls back, and nothing here touches them.
        let started = unsafe {
            let block = &mut *block;
            block.control.aio_fildes = block._file.as_raw_fd();
            block.control.aio_buf = block.buffer.as_mut_ptr().cast();
            block.control.aio_nbytes = len;
            block.control.aio_offset = offset;
            let event = SigeventThread {
                value: libc::sigval {
                    sival_ptr: callback,
                },
                signo: 0,
                notify: libc::SIGEV_THREAD,
                function: Some(notify),
                attributes: ptr::null_mut(),
                _pad: [0; 8],
            };
            ptr::addr_of_mut!(block.control.aio_sigevent)
                .cast::<SigeventThread>()
                .write(event);
            libc::aio_read(&mut block.control)
        };
        if started != 0 {
            // Refused: glibc will not call back; take the callback back and drop it
            // (`try_from_apm` then returns this error, without End).
            // SAFETY: made just above and not handed to glibc.
            drop(unsafe { Box::from_raw(callback.cast::<ApmCallback>()) });
            return Err(io::Error::last_os_error());
        }
        Ok(read)
    }

    /// End: the read's outcome, once glibc called back.
    pub fn end_read(read: Read) -> io::Result<Vec<u8>> {
        // SAFETY: End runs after the callback: glibc is done with the block.
        let block = unsafe { &mut *read.block };
        // SAFETY: as above; these read the finished request's status.
        let (error, count) = unsafe {
            let error = libc::aio_error(&block.control);
            (error, libc::aio_return(&mut block.control))
        };
        if error != 0 {
            return Err(io::Error::from_raw_os_error(error));
        }
        let mut bytes = std::mem::take(&mut block.buffer);
        bytes.truncate(usize::try_from(count).expect("a finished read's count"));
        Ok(bytes)
    }

    /// The cancel hook: asks glibc to drop the request. A cancelled request still
    /// calls back (with `ECANCELED`), so End still runs; one that already finished
    /// calls back as usual.
    pub fn cancel(read: &Read) {
        // SAFETY: glibc may be writing the block, so no reference to it is made: the
        // descriptor, which glibc never writes, is read through the raw pointer, and
        // `aio_cancel` is the call glibc allows on a request in flight.
        unsafe {
            let control = ptr::addr_of_mut!((*read.block).control);
            libc::aio_cancel((*control).aio_fildes, control);
        }
    }

    /// Reads `len` bytes at `offset` of the file at `path`, as a future; `ended` hears
    /// from End, to show that it ran.
    pub fn read_at(
        path: &std::path::Path,
        offset: i64,
        len: usize,
        ended: mpsc::Sender<i64>,
    ) -> impl std::future::Future<Output = io::Result<Vec<u8>>> + Send + Unpin {
        read(File::open(path), offset, len, ended)
    }

    /// An empty pipe: a read of its reading end (the first) stays in flight until
    /// something is written to the second, or the second is dropped.
    pub fn pipe() -> io::Result<(File, File)> {
        let mut ends = [0; 2];
        // SAFETY: `pipe` writes two descriptors into the array it is given.
        if unsafe { libc::pipe(ends.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened, and nothing else owns them.
        Ok(unsafe { (File::from_raw_fd(ends[0]), File::from_raw_fd(ends[1])) })
    }

    /// Reads `len` bytes at `offset` of `file` (glibc ignores the offset of a pipe).
    pub fn read(
        file: io::Result<File>,
        offset: i64,
        len: usize,
        ended: mpsc::Sender<i64>,
    ) -> impl std::future::Future<Output = io::Result<Vec<u8>>> + Send + Unpin {
        apm_tap::try_from_apm(
            move |callback| begin_read(file?, offset, len, callback),
            move |read| {
                let outcome = end_read(read);
                let _ = ended.send(offset);
                outcome
            },
        )
        .on_cancel(cancel)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
fn main() -> std::io::Result<()> {
    use futures::FutureExt;
    use std::sync::mpsc;

    let path = std::env::temp_dir().join(format!("apm-tap-aio-{}.txt", std::process::id()));
    std::fs::write(&path, "alpha bravo charlie delta")?;
    let (ended, end_ran) = mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;

    // 1. One read, awaited.
    let first = runtime.block_on(aio::read_at(&path, 0, 5, ended.clone()))?;
    println!("1. aio_read awaited: {:?}", String::from_utf8_lossy(&first));

    // 2. Four reads in flight at once, on glibc's threads.
    let words = runtime.block_on(futures::future::join_all(
        [(6, 5), (12, 7), (20, 5), (0, 25)]
            .map(|(offset, len)| aio::read_at(&path, offset, len, ended.clone())),
    ));
    let words: Vec<String> = words
        .into_iter()
        .map(|word| Ok(String::from_utf8_lossy(&word?).into_owned()))
        .collect::<std::io::Result<_>>()?;
    println!("2. four reads at once:  {words:?}");

    // 3. A read whose future is dropped after its first poll: `on_cancel` calls
    //    aio_cancel, and End still runs once, when glibc calls back. The read is of an
    //    empty pipe, so it is surely still in flight when the future is dropped.
    let (empty, writer) = aio::pipe()?;
    let mut dropped = aio::read(Ok(empty), 0, 5, ended.clone());
    assert!(
        (&mut dropped).now_or_never().is_none(),
        "nothing was written to the pipe"
    );
    drop(dropped);
    drop(ended);
    // Closing the pipe ends a read that aio_cancel could not stop: glibc calls back.
    drop(writer);
    // Every sender is gone once every End ran, the dropped read's included.
    let ends: Vec<i64> = end_ran.iter().collect();
    println!(
        "3. a read dropped before completion: aio_cancel called, End ran anyway ({} Ends for 6 reads)",
        ends.len()
    );
    assert_eq!(ends.len(), 6);
    std::fs::remove_file(&path)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64")))]
fn main() {
    println!("this example wraps glibc's POSIX AIO: it runs on 64-bit Linux with glibc");
}
