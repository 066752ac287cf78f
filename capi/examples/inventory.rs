//! A legacy-facing service declared once: the three `async fn`s of `inventory/ops.rs`,
//! each under `#[apm_tap::apm(c_abi)]`, called from plain threads (Begin with a
//! callback, and the blocking call), from async code (the fns themselves), and from C
//! (`inventory/caller.c`, through the generated `inventory/inventory.h`).
//!
//! `cargo run -p apm-tap-capi --example inventory`; the C caller is built and run by
//! `cargo test -p apm-tap-capi --test inventory`.

#[path = "inventory/ops.rs"]
mod ops;

use std::sync::mpsc;
use std::thread;

use apm_tap::State;

fn main() {
    // Plain threads: the blocking call, which begins and ends the operation.
    let threads: Vec<_> = (0..4)
        .map(|i| thread::spawn(move || ops::blocking_stock_add(i % 2, 10)))
        .collect();
    for thread in threads {
        thread.join().unwrap().expect("stock_add completed");
    }
    println!("threads: 4 blocking_stock_add calls of 10 units over items 0 and 1");

    // A plain thread, APM style: Begin with a callback and a state, End inside it.
    let (totals, total) = mpsc::channel();
    let handle = ops::begin_stock_total(
        2,
        move |handle: apm_tap::AsyncResult<u64>| {
            let audit = *handle.state().downcast_ref::<&str>().unwrap();
            totals.send((audit, ops::end_stock_total(handle))).unwrap();
        },
        State::new("audit #1"),
    );
    println!(
        "begin_stock_total returned: completed synchronously: {}",
        handle.completed_synchronously()
    );
    let (audit, total) = total.recv().unwrap();
    println!("callback of {audit}: end_stock_total = {total:?}");

    // Async code: the fns themselves, awaited together.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (zero, one) =
        runtime.block_on(async { futures::join!(ops::stock_get(0), ops::stock_get(1)) });
    println!("async: stock_get(0) = {zero}, stock_get(1) = {one}");

    // C: what `inventory.h` declares for one of them.
    print!("C declares:\n{}", ops::STOCK_GET_C_DECLARATION);
}
