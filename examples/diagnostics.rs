//! Finding the operation that never completed.
//!
//! A legacy sensor library in Begin/End style has two bugs: on one error path it drops
//! the callback, and it parks reads of a busy channel in a retry queue that nothing
//! services. The program reads eight channels at once, each under a timeout, then asks
//! apm-tap which operations are still in flight, and where they began. `tracing` prints
//! the abandoned read as it happens.
//!
//! ```text
//! cargo run --example diagnostics --features tracing
//! ```

use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use apm_tap::{AsyncCallback, AsyncResult, Builder, Completer, State};

/// The legacy library.
struct Sensor {
    /// Reads waiting for a busy channel. Nothing ever retries them: the bug.
    retry_queue: Mutex<Vec<Completer<u16>>>,
}

impl Sensor {
    /// Begins reading `channel`; `callback` runs when the value is there.
    fn begin_read(
        &self,
        channel: u8,
        callback: AsyncCallback<u16>,
        state: State,
    ) -> AsyncResult<u16> {
        let (completer, handle) = Builder::new().callback(callback).state(state).completer();
        match channel {
            // Busy: parked for a retry that never comes.
            7 => self.retry_queue.lock().unwrap().push(completer),
            // A bad channel: the error path forgets the completion.
            3 => drop(completer),
            _ => {
                thread::spawn(move || {
                    let _ = completer.complete(u16::from(channel) * 100);
                });
            }
        }
        handle
    }

    fn end_read(handle: AsyncResult<u16>) -> Result<u16, apm_tap::Error> {
        handle.end()
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .without_time()
        .init();
    let sensor: &'static Sensor = Box::leak(Box::new(Sensor {
        retry_queue: Mutex::new(Vec::new()),
    }));

    let reads = (1..=8).map(|channel| async move {
        let read = apm_tap::from_apm(
            |callback| sensor.begin_read(channel, callback.into(), State::none()),
            Sensor::end_read,
        );
        let outcome = tokio::time::timeout(Duration::from_millis(200), read).await;
        (channel, outcome.map(apm_tap::flatten))
    });
    for (channel, outcome) in futures::future::join_all(reads).await {
        match outcome {
            Ok(Ok(value)) => println!("channel {channel}: {value}"),
            Ok(Err(error)) => println!("channel {channel}: failed: {error}"),
            Err(_) => println!("channel {channel}: timed out"),
        }
    }

    println!();
    print!("{}", apm_tap::diagnostics::in_flight());
}
