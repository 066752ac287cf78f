//! The inventory service: three operations, each declared once as an `async fn` under
//! `#[apm_tap::apm(c_abi)]`. Rust callers get `begin_xxx` / `end_xxx` / `blocking_xxx`
//! beside the fn; C callers get `xxx_begin` / `xxx_end`, declared in `inventory.h`
//! (generated from the `XXX_C_DECLARATION` consts by `tests/inventory.rs`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use apm_tap::{Cancellation, Completer};

/// The stock of each item.
fn stock() -> &'static Mutex<BTreeMap<u32, u64>> {
    static STOCK: Mutex<BTreeMap<u32, u64>> = Mutex::new(BTreeMap::new());
    &STOCK
}

/// Adds `count` units of `item` to the stock and returns the item's new stock. Ready at
/// once: it completes inside Begin.
#[apm_tap::apm(c_abi)]
pub async fn stock_add(item: u32, count: u32) -> u64 {
    let mut stock = stock().lock().unwrap();
    let units = stock.entry(item).or_default();
    *units += u64::from(count);
    *units
}

/// The stock of `item`, read after yielding once: it completes on a worker of the
/// runtime.
#[apm_tap::apm(c_abi)]
pub async fn stock_get(item: u32) -> u64 {
    tokio::task::yield_now().await;
    stock().lock().unwrap().get(&item).copied().unwrap_or(0)
}

/// The total stock of items `0..items`, counted on a thread of its own, as a slow
/// legacy scan would be.
#[apm_tap::apm(c_abi, cancel = cancellation)]
pub async fn stock_total(items: u32, cancellation: Cancellation) -> u64 {
    let (counted, total) = Completer::new();
    std::thread::spawn(move || {
        let mut sum = 0;
        for item in 0..items {
            // The caller's cancel (`handle.cancel()`, C's `apm_tap_op_cancel`) stops
            // the scan between items.
            if cancellation.is_cancelled() {
                return;
            }
            sum += stock().lock().unwrap().get(&item).copied().unwrap_or(0);
        }
        // Nobody cancels this handle: it is awaited below, or dropped with the scan.
        let _ = counted.complete(sum);
    });
    total
        .await
        .expect("the scan completes unless the operation was cancelled")
}
