//! Operations a Rust library exports to C with `export!`: what `tests/c/ops_test.c`
//! drives through the header. Built as a static library (`libdemo_ops.a`) that also
//! carries the shared `apm_tap_op_*` functions.
//!
//! `cargo build -p apm-tap-capi --example demo_ops`, then link
//! `target/debug/examples/libdemo_ops.a` into a C program with `-lpthread -ldl -lm`.
//! cbindgen does not expand macros, so `tests/c/demo.h` declares these by hand.

use std::sync::{Arc, Mutex, OnceLock};

use apm_tap::{AsyncResult, Completer};

apm_tap_capi::export! {
    /// Adds `a` and `b`: ready at once, so it completes inside Begin.
    fn demo_add_begin / demo_add_end(a: i32, b: i32) -> i32 {
        a + b
    }

    /// Returns `value` after yielding once: completes on a worker of apm-tap's runtime.
    fn demo_yield_begin / demo_yield_end(value: i64) -> i64 {
        Yield(false).await;
        value
    }

    /// Returns `value` once gate `gate` (from `demo_gate_new`) is opened.
    fn demo_gated_begin / demo_gated_end(gate: u32, value: i32) -> i32 {
        let opened = gate_handle(gate);
        // Every waiter sees the gate open: one takes its `()`, the others `AlreadyEnded`.
        let _ = opened.await;
        value
    }

    /// Panics with "demo panic" on its first poll, inside Begin.
    fn demo_panic_begin / demo_panic_end(unused: i32) -> i32 {
        let _ = unused;
        panic!("demo panic")
    }
}

/// A future that is pending once, then ready.
struct Yield(bool);

impl std::future::Future for Yield {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Gates, by number: a completer that opens it, and the handle its waiters clone.
type Gate = (Mutex<Option<Completer<()>>>, AsyncResult<()>);

fn gates() -> &'static Mutex<Vec<Arc<Gate>>> {
    static GATES: OnceLock<Mutex<Vec<Arc<Gate>>>> = OnceLock::new();
    GATES.get_or_init(Mutex::default)
}

fn gate_handle(gate: u32) -> AsyncResult<()> {
    let gates = gates().lock().unwrap();
    gates[gate as usize].1.clone()
}

/// A new closed gate's number.
#[no_mangle]
pub extern "C" fn demo_gate_new() -> u32 {
    let (completer, handle) = Completer::new();
    let mut gates = gates().lock().unwrap();
    gates.push(Arc::new((Mutex::new(Some(completer)), handle)));
    u32::try_from(gates.len() - 1).expect("fewer than 2^32 gates")
}

/// Opens gate `gate`: every operation waiting on it completes.
#[no_mangle]
pub extern "C" fn demo_gate_open(gate: u32) {
    let gate = Arc::clone(&gates().lock().unwrap()[gate as usize]);
    let completer = gate.0.lock().unwrap().take();
    if let Some(completer) = completer {
        // The gate's own handle is never cancelled.
        let _ = completer.complete(());
    }
}

/// Drops every gate: what a C program calls before it exits, so that nothing is left
/// for valgrind to report.
#[no_mangle]
pub extern "C" fn demo_gates_free() {
    gates().lock().unwrap().clear();
}
