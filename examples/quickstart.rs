//! Both directions of the bridge in one short program:
//! `cargo run --example quickstart`.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use apm_tap::{AsyncCallback, AsyncResult, Error, State};

/// A legacy API in APM style: `begin_read` starts a reading and returns a handle at
/// once; `end_read` collects it. The device answers on a thread of its own.
struct Thermometer;

impl Thermometer {
    fn begin_read(&self, callback: AsyncCallback<f64>, state: State) -> AsyncResult<f64> {
        let (completer, handle) = apm_tap::Builder::new()
            .callback(callback)
            .state(state)
            .completer();
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

fn main() {
    // 1. Legacy -> future: wrap the Begin/End pair and await it.
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
    });
    println!("awaited the legacy reading: {reading:?}");

    // 2. Future -> legacy: a plain thread, with no runtime of its own, drives an async
    //    fn through Begin (with callback and state) and a blocking End.
    thread::spawn(|| {
        let (told, heard) = mpsc::channel();
        let handle = apm_tap::Builder::new()
            .callback(move |h: AsyncResult<String>| {
                let state = h.state().downcast_ref::<&str>().copied();
                told.send(format!(
                    "callback ran for {state:?}, completed = {}",
                    h.is_completed()
                ))
                .unwrap();
            })
            .state(State::new("request 1"))
            .begin(forecast("Oslo"));
        println!(
            "begin returned; completed_synchronously = {}",
            handle.completed_synchronously()
        );
        println!("blocking end returned: {:?}", handle.end());
        println!("{}", heard.recv().unwrap());
    })
    .join()
    .unwrap();
}
