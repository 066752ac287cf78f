//! Both directions of the bridge in one short program:
//! `cargo run --example quickstart`.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use apm_tap::{AsyncCallback, AsyncResult, Builder, Error, State};

/// A legacy API in APM style: `begin_read` starts a reading and returns a handle at
/// once; `end_read` collects it. The device answers on a thread of its own.
struct Thermometer;

impl Thermometer {
    fn begin_read(&self, callback: AsyncCallback<f64>, state: State) -> AsyncResult<f64> {
        let (completer, handle) = Builder::new().callback(callback).state(state).completer();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20)); // the slow device
            let _ = completer.complete(21.5);
        });
        handle
    }

    fn end_read(&self, handle: AsyncResult<f64>) -> Result<f64, Error> {
        handle.end()
    }
}

/// New code, written with async/await.
async fn forecast(city: &'static str) -> String {
    tokio::time::sleep(Duration::from_millis(10)).await;
    format!("sunny in {city}")
}

fn main() -> Result<(), Error> {
    // 1. Legacy -> future: wrap the Begin/End pair and await it, here on tokio.
    let thermometer = Arc::new(Thermometer);
    let (begin_side, end_side) = (Arc::clone(&thermometer), thermometer);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let reading = runtime.block_on(async {
        let outcome = apm_tap::from_apm(
            move |callback| begin_side.begin_read(callback.into(), State::none()),
            move |handle| end_side.end_read(handle),
        )
        .await;
        apm_tap::flatten(outcome) // the bridge's error and End's, merged
    })?;
    println!("1. legacy -> future: awaited the thermometer's Begin/End pair: {reading} degrees");

    // 2. Future -> legacy: a plain thread, with no runtime of its own, drives an async
    //    fn through Begin (with a callback and a state) and a blocking End.
    thread::spawn(|| -> Result<(), Error> {
        println!("2. future -> legacy, from a plain thread:");
        let (told, heard) = mpsc::channel();
        let handle = Builder::new()
            .callback(move |h: AsyncResult<String>| {
                let state = *h.state().downcast_ref::<&str>().expect("a &str state");
                let thread = std::thread::current().name().map(str::to_owned);
                told.send((state, h.is_completed(), thread)).unwrap();
            })
            .state(State::new("request 1"))
            .begin(forecast("Oslo"));
        println!(
            "   begin returned at once; completed_synchronously = {} (the forecast was still running)",
            handle.completed_synchronously()
        );
        let forecast = handle.end()?;
        println!("   end blocked until the forecast was ready: {forecast:?}");
        let (state, completed, thread) = heard.recv().expect("the callback runs once");
        println!(
            "   the callback ran on thread {thread:?} (the runtime's), for state {state:?}; \
             is_completed = {completed} inside it: the result is stored before the callback \
             runs, and end did not wait for the callback"
        );
        Ok(())
    })
    .join()
    .expect("the plain thread")
}
