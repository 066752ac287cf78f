//! An async service offered to callers that cannot `.await`: plain threads using a
//! callback, polling `is_completed`, `wait_timeout`, a blocking `end`, and `cancel`.
//!
//! `cargo run --example expose_to_threads`

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use apm_tap::{AsyncCallback, AsyncResult, State};

/// The async service: looks up a price, slowly.
async fn price(item: &'static str, delay_ms: u64) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    match item {
        "apple" => Ok(3),
        "pear" => Ok(4),
        other => Err(format!("no price for {other}")),
    }
}

/// The Begin/End pair the legacy callers see.
fn begin_price(
    item: &'static str,
    delay_ms: u64,
    callback: AsyncCallback<Result<u32, String>>,
    state: State,
) -> AsyncResult<Result<u32, String>> {
    apm_tap::Builder::new()
        .callback(callback)
        .state(state)
        .begin(price(item, delay_ms))
}

/// End: the service's own error, or the bridge's (cancelled, panicked) as text.
fn end_price(handle: AsyncResult<Result<u32, String>>) -> Result<u32, String> {
    handle.end().map_err(|e| e.to_string())?
}

fn main() {
    // Callback style: the callback calls End; it never blocks there.
    let (done, finished) = mpsc::channel();
    thread::spawn(move || {
        begin_price(
            "apple",
            10,
            AsyncCallback::new(move |h: AsyncResult<Result<u32, String>>| {
                let who = *h.state().downcast_ref::<&str>().unwrap();
                done.send(format!("callback for {who}: {:?}", end_price(h)))
                    .unwrap();
            }),
            State::new("caller A"),
        );
    });
    println!("{}", finished.recv().unwrap());

    // Polling: do other work until the handle reports completion.
    thread::spawn(|| {
        let handle = begin_price("pear", 30, AsyncCallback::none(), State::none());
        let mut chores = 0;
        while !handle.is_completed() {
            chores += 1;
            thread::sleep(Duration::from_millis(5));
        }
        println!(
            "polling: did {} chores, then {:?}",
            if chores > 0 { "some" } else { "no" },
            end_price(handle)
        );
    })
    .join()
    .unwrap();

    // Waiting with a timeout, without consuming the result.
    thread::spawn(|| {
        let handle = begin_price("plum", 30, AsyncCallback::none(), State::none());
        println!(
            "wait_timeout(1 ms) -> {:?}",
            handle.wait_timeout(Duration::from_millis(1))
        );
        println!(
            "wait_timeout(5 s)  -> {:?}",
            handle.wait_timeout(Duration::from_secs(5))
        );
        println!("end after waiting  -> {:?}", end_price(handle));
    })
    .join()
    .unwrap();

    // Blocking End, twice: the second call is refused, not a hang.
    thread::spawn(|| {
        let handle = begin_price("apple", 5, AsyncCallback::none(), State::none());
        let again = handle.clone();
        println!("blocking end       -> {:?}", end_price(handle));
        println!("second end         -> {:?}", again.end());
    })
    .join()
    .unwrap();

    // Cancellation: the future is dropped on the runtime, the callback still runs once.
    thread::spawn(|| {
        let (called, callback_ran) = mpsc::channel();
        let handle = begin_price(
            "apple",
            60_000,
            AsyncCallback::new(move |h: AsyncResult<Result<u32, String>>| {
                called.send(h.is_completed()).unwrap()
            }),
            State::none(),
        );
        handle.cancel();
        let completed = callback_ran.recv().unwrap();
        println!(
            "cancelled: callback ran (completed = {completed}), end -> {:?}",
            end_price(handle)
        );
    })
    .join()
    .unwrap();
}
