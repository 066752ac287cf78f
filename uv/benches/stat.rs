//! A bridged `uv_fs_stat` (`Uv::stat`) against the hand-written bridge a user would
//! write without apm-tap: a libuv callback that sends the result through a
//! `tokio::sync::oneshot`, started on the same loop thread. Same loop, same file, same
//! run; `cargo bench -p apm-tap-uv`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_void, CString};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use apm_tap_uv::{sys, Uv};
use criterion::{criterion_group, criterion_main, Criterion};

/// Counts allocations, to print how many each kind of operation makes.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`, counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations per operation of `op`, over 1,000 operations after a warm-up.
fn allocations_per_op<'a>(
    runtime: &tokio::runtime::Runtime,
    mut op: impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>,
) -> f64 {
    runtime.block_on(async {
        for _ in 0..100 {
            op().await;
        }
        let before = ALLOCATIONS.load(Relaxed);
        for _ in 0..1000 {
            op().await;
        }
        // Less the boxing of `op`'s future, one per operation.
        (ALLOCATIONS.load(Relaxed) - before) as f64 / 1000.0 - 1.0
    })
}

/// The hand-written request: room for a `uv_fs_t`, then the sender and the path.
#[repr(C)]
struct Manual {
    uv: [MaybeUninit<u64>; 128],
    tx: Option<tokio::sync::oneshot::Sender<isize>>,
    path: CString,
}

extern "C" fn manual_done(req: *mut c_void) {
    // SAFETY: the `Manual` boxed by `manual_stat`, handed back once.
    let mut manual = unsafe { Box::from_raw(req.cast::<Manual>()) };
    // SAFETY: the request libuv calls back with.
    let result = unsafe { sys::uv_fs_get_result(req) };
    // SAFETY: as above; cleaned up once.
    unsafe { sys::uv_fs_req_cleanup(req) };
    if let Some(tx) = manual.tx.take() {
        let _ = tx.send(result);
    }
}

async fn manual_stat(uv: &Uv, path: &CString) -> isize {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let manual = Box::new(Manual {
        uv: [MaybeUninit::uninit(); 128],
        tx: Some(tx),
        path: path.clone(),
    });
    let manual = Box::into_raw(manual) as usize;
    uv.run_on_loop(move |loop_| {
        let manual = manual as *mut Manual;
        // SAFETY: on the loop thread; the request and its path live until the callback.
        unsafe {
            sys::uv_fs_stat(
                loop_,
                manual.cast(),
                (*manual).path.as_ptr(),
                Some(manual_done),
            )
        };
    })
    .expect("the loop runs");
    rx.await.unwrap()
}

fn stat(c: &mut Criterion) {
    let uv = Uv::new().unwrap();
    let path = env!("CARGO_MANIFEST_DIR");
    let c_path = CString::new(path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let manual = allocations_per_op(&runtime, || {
        Box::pin(async { assert!(manual_stat(&uv, &c_path).await >= 0) })
    });
    let bridged = allocations_per_op(&runtime, || {
        Box::pin(async { assert!(uv.stat(path).await.is_ok()) })
    });
    println!("allocations per uv_fs_stat: hand-written {manual:.2}, apm-tap-uv {bridged:.2}");
    let mut group = c.benchmark_group("uv_fs_stat");
    group.bench_function("hand-written callback + oneshot", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            runtime.block_on(async {
                for _ in 0..iters {
                    assert!(manual_stat(&uv, &c_path).await >= 0);
                }
            });
            start.elapsed()
        });
    });
    group.bench_function("apm-tap-uv Uv::stat", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            runtime.block_on(async {
                for _ in 0..iters {
                    assert!(uv.stat(path).await.is_ok());
                }
            });
            start.elapsed()
        });
    });
    group.finish();
}

criterion_group!(benches, stat);
criterion_main!(benches);
